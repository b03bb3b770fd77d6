//! The v2 auth API and its enforcement, black-box, request by request as etcd 3.4 answers
//! (WIRE.md "Auth (v2)"). `V2_AUTH_TARGET=etcd` runs the same table against the reference
//! etcd. Bodies of keys writes are not compared: etcd keeps its auth records in the key space,
//! so its etcd indexes run ahead of ringd's (see README).

mod support;

use support::{Kind, Server};

fn start() -> Server {
    match std::env::var("V2_AUTH_TARGET").as_deref() {
        Ok("etcd") => Server::etcd(),
        _ => Server::of(Kind::Ringd, &[]),
    }
}

const ROOT: &str = "root:pw";
const NONE: &str = "";
/// Do not compare the body.
const ANY: &str = "*";

/// One request: method, path, `user:password` (or NONE), body; the status and exact body.
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    u16,
    &'static str,
);

fn run(server: &Server, cases: &[Case]) {
    use base64::Engine as _;
    for &(method, path, cred, body, status, want) in cases {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(cred)
        );
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        if !cred.is_empty() {
            headers.push(("Authorization", &basic));
        }
        let r = server.request(method, path, &headers, body.as_bytes());
        let what = format!("{method} {path} as {cred:?} {body}");
        assert_eq!(r.status, status, "{what}: {}", r.text());
        if want != ANY {
            support::assert_eq_text(want, &r.text());
        }
    }
}

#[test]
fn users_roles_enable_and_key_permissions() {
    let server = start();
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("GET", "/v2/auth/enable", NONE, "", 200, "{\"enabled\":false}\n"),
        ("PUT", "/v2/auth/enable", NONE, "", 409, r#"{"message":"auth: No root user available, please create one"}"#),
        ("GET", "/v2/auth/users", NONE, "", 200, "{\"users\":null}\n"),
        ("PUT", "/v2/auth/users/root", NONE, r#"{"user":"root"}"#, 400, r#"{"message":"auth: Cannot create user root with an empty password"}"#),
        ("PUT", "/v2/auth/users/root", NONE, r#"{"user":"root","password":"pw"}"#, 201, "{\"user\":\"root\",\"roles\":[\"root\"]}\n"),
        ("PUT", "/v2/auth/users/u", NONE, r#"{"user":"u","password":"p","roles":["x"]}"#, 200, "{\"user\":\"u\",\"roles\":[\"x\"]}\n"),
        ("GET", "/v2/auth/users/u", NONE, "", 404, r#"{"message":"auth: Role x does not exist."}"#),
        ("PUT", "/v2/auth/users/u", NONE, r#"{"user":"u","grant":["nope"]}"#, 200, "{\"user\":\"u\",\"roles\":[\"nope\",\"x\"]}\n"),
        ("PUT", "/v2/auth/users/u", NONE, r#"{"user":"u","grant":["x"]}"#, 409, r#"{"message":"auth: Granting duplicate role x for user u"}"#),
        ("PUT", "/v2/auth/users/u", NONE, r#"{"user":"u","revoke":["r"]}"#, 409, r#"{"message":"auth: Revoking ungranted role r for user u"}"#),
        ("PUT", "/v2/auth/users/u", NONE, r#"{"user":"u","roles":["a"],"grant":["b"]}"#, 400, r#"{"message":"User JSON contains both roles and grant/revoke"}"#),
        ("PUT", "/v2/auth/users/u", NONE, r#"{"user":"u"}"#, 400, r#"{"message":"auth: User not updated. Use grant/revoke/password to update the user."}"#),
        ("PUT", "/v2/auth/users/u", NONE, r#"{"user":"u","revoke":["nope","x"]}"#, 200, "{\"user\":\"u\",\"roles\":[]}\n"),
        ("PUT", "/v2/auth/users/u", NONE, r#"{"user":"v"}"#, 400, r#"{"message":"User JSON name does not match the name in the URL"}"#),
        ("PUT", "/v2/auth/users/u", NONE, "xx", 400, r#"{"message":"Invalid JSON in request body."}"#),
        ("GET", "/v2/auth/users/a/b", NONE, "", 400, r#"{"message":"Invalid path"}"#),
        ("GET", "/v2/auth/users/x", NONE, "", 404, r#"{"message":"auth: User x does not exist."}"#),
        ("DELETE", "/v2/auth/users/x", NONE, "", 404, r#"{"message":"auth: User x does not exist"}"#),
        ("PUT", "/v2/auth/users/x", NONE, r#"{"user":"x","grant":["r"]}"#, 404, r#"{"message":"auth: User x does not exist."}"#),
        ("POST", "/v2/auth/users", NONE, "", 405, "Method Not Allowed\n"),
        ("PUT", "/v2/auth/roles/root", NONE, r#"{"role":"root"}"#, 403, r#"{"message":"auth: Cannot modify role root: is root role."}"#),
        ("DELETE", "/v2/auth/roles/root", NONE, "", 403, r#"{"message":"auth: Cannot modify role root: is root role."}"#),
        ("GET", "/v2/auth/roles/r", NONE, "", 404, r#"{"message":"auth: Role r does not exist."}"#),
        ("DELETE", "/v2/auth/roles/r", NONE, "", 404, r#"{"message":"auth: Role r doesn't exist."}"#),
        ("PUT", "/v2/auth/roles/r", NONE, r#"{"role":"r","grant":{"kv":{"read":["/a"]}}}"#, 404, r#"{"message":"auth: Role r does not exist."}"#),
        ("PUT", "/v2/auth/roles/e", NONE, r#"{"role":"e"}"#, 201, "{\"role\":\"e\",\"permissions\":{\"kv\":{\"read\":null,\"write\":null}}}\n"),
        ("PUT", "/v2/auth/roles/e", NONE, r#"{"role":"e","revoke":{"kv":{"read":["/x"]}}}"#, 200, "{\"role\":\"e\",\"permissions\":{\"kv\":{\"read\":[],\"write\":[]}}}\n"),
        ("PUT", "/v2/auth/roles/e", NONE, r#"{"role":"e","revoke":{"kv":{"read":["/x"]}}}"#, 400, r#"{"message":"auth: Role not updated. Use grant/revoke to update the role."}"#),
        ("PUT", "/v2/auth/roles/r", NONE, r#"{"role":"r","permissions":{"kv":{"read":["/foo/*"],"write":["/foo/*"]}}}"#, 201, "{\"role\":\"r\",\"permissions\":{\"kv\":{\"read\":[\"/foo/*\"],\"write\":[\"/foo/*\"]}}}\n"),
        ("PUT", "/v2/auth/roles/r", NONE, r#"{"role":"r","grant":{"kv":{"read":["/foo/*"]}}}"#, 409, r#"{"message":"auth: Granting duplicate read permission /foo/*"}"#),
        ("PUT", "/v2/auth/roles/r", NONE, r#"{"role":"r","grant":{"kv":{"read":["/bar"]}}}"#, 200, "{\"role\":\"r\",\"permissions\":{\"kv\":{\"read\":[\"/bar\",\"/foo/*\"],\"write\":[\"/foo/*\"]}}}\n"),
        ("PUT", "/v2/auth/users/u", NONE, r#"{"user":"u","grant":["r"]}"#, 200, "{\"user\":\"u\",\"roles\":[\"r\"]}\n"),
        ("PUT", "/v2/auth/enable", NONE, "", 200, ""),
        ("GET", "/v2/auth/enable", NONE, "", 200, "{\"enabled\":true}\n"),
        ("PUT", "/v2/auth/enable", NONE, "", 401, r#"{"message":"Insufficient credentials"}"#),
        ("PUT", "/v2/auth/enable", ROOT, "", 409, r#"{"message":"auth: already enabled"}"#),
        ("GET", "/v2/auth/users", NONE, "", 401, r#"{"message":"Insufficient credentials"}"#),
        ("GET", "/v2/auth/users", "root:bad", "", 401, r#"{"message":"Insufficient credentials"}"#),
        ("GET", "/v2/auth/users", "u:p", "", 401, r#"{"message":"Insufficient credentials"}"#),
        ("GET", "/v2/auth/users/u", ROOT, "", 200, "{\"user\":\"u\",\"roles\":[{\"role\":\"r\",\"permissions\":{\"kv\":{\"read\":[\"/bar\",\"/foo/*\"],\"write\":[\"/foo/*\"]}}}]}\n"),
        ("GET", "/v2/auth/roles", ROOT, "", 200, "{\"roles\":[{\"role\":\"e\",\"permissions\":{\"kv\":{\"read\":[],\"write\":[]}}},{\"role\":\"guest\",\"permissions\":{\"kv\":{\"read\":[\"/*\"],\"write\":[\"/*\"]}}},{\"role\":\"r\",\"permissions\":{\"kv\":{\"read\":[\"/bar\",\"/foo/*\"],\"write\":[\"/foo/*\"]}}},{\"role\":\"root\",\"permissions\":{\"kv\":{\"read\":[\"/*\"],\"write\":[\"/*\"]}}}]}\n"),
        ("DELETE", "/v2/auth/users/root", ROOT, "", 403, r#"{"message":"auth: Cannot delete root user while auth is enabled."}"#),
        // Keys: the guest role allows everything until its write is revoked.
        ("PUT", "/v2/keys/a", NONE, "value=1", 201, ANY),
        ("PUT", "/v2/keys/a", "u:p", "value=1", 401, r#"{"errorCode":110,"message":"The request requires user authentication","cause":"Insufficient credentials","index":0}
"#),
        ("PUT", "/v2/keys/foo/a", "u:p", "value=1", 201, ANY),
        ("GET", "/v2/keys/foo/a", "u:bad", "", 401, ANY),
        ("GET", "/v2/keys/foo/a", "nobody:p", "", 401, ANY),
        ("GET", "/v2/keys/foo", "u:p", "", 401, ANY),
        ("GET", "/v2/keys/foo/", "u:p", "", 200, ANY),
        ("GET", "/v2/keys/foo/?recursive=true", "u:p", "", 200, ANY),
        ("GET", "/v2/keys/?recursive=true", "u:p", "", 401, ANY),
        ("GET", "/v2/keys/bar", "u:p", "", 404, ANY),
        ("GET", "/v2/keys/bar?recursive=true", "u:p", "", 401, ANY),
        ("GET", "/v2/keys/foo/a?wait=true&waitIndex=1", "u:p", "", 200, ANY),
        ("GET", "/v2/keys/a?wait=true&waitIndex=1", "u:p", "", 401, ANY),
        ("POST", "/v2/keys/foo/q", "u:p", "value=1", 201, ANY),
        ("DELETE", "/v2/keys/foo/a", "u:p", "", 200, ANY),
        ("GET", "/v2/keys/a", ROOT, "", 200, ANY),
        ("PUT", "/v2/auth/roles/guest", ROOT, r#"{"role":"guest","revoke":{"kv":{"write":["/*"]}}}"#, 200, "{\"role\":\"guest\",\"permissions\":{\"kv\":{\"read\":[\"/*\"],\"write\":[]}}}\n"),
        ("PUT", "/v2/keys/b", NONE, "value=1", 401, ANY),
        ("GET", "/v2/keys/a", NONE, "", 200, ANY),
        // A write's `recursive` flag counts too (etcd passes rr.Recursive whatever the method):
        // an exact write pattern does not grant a PUT or POST with recursive=true.
        ("PUT", "/v2/auth/roles/x", ROOT, r#"{"role":"x","permissions":{"kv":{"read":[],"write":["/x","/y*"]}}}"#, 201, ANY),
        ("PUT", "/v2/auth/users/v", ROOT, r#"{"user":"v","password":"p","roles":["x"]}"#, 200, ANY),
        ("PUT", "/v2/keys/x", "v:p", "value=1", 201, ANY),
        ("PUT", "/v2/keys/x?recursive=true", "v:p", "value=1", 401, ANY),
        ("PUT", "/v2/keys/x", "v:p", "value=1&recursive=true", 401, ANY),
        ("POST", "/v2/keys/x?recursive=true", "v:p", "value=1", 401, ANY),
        ("PUT", "/v2/keys/y?recursive=true", "v:p", "value=1", 201, ANY),
        // Members: reads open, writes root only.
        ("GET", "/v2/members", NONE, "", 200, ANY),
        ("DELETE", "/v2/members/1234", "u:p", "", 401, r#"{"message":"Insufficient credentials"}"#),
        ("DELETE", "/v2/members/1234", ROOT, "", 404, ANY),
        // A new password: the old one no longer works (the verified-credentials cache forgets).
        ("PUT", "/v2/auth/users/u", ROOT, r#"{"user":"u","password":"p2"}"#, 200, "{\"user\":\"u\",\"roles\":[\"r\"]}\n"),
        ("GET", "/v2/keys/foo/q", "u:p", "", 401, ANY),
        ("GET", "/v2/keys/foo/q", "u:p2", "", 200, ANY),
        ("DELETE", "/v2/auth/users/u", ROOT, "", 200, ""),
        ("GET", "/v2/keys/foo/q", "u:p2", "", 401, ANY),
        ("DELETE", "/v2/auth/enable", NONE, "", 401, r#"{"message":"Insufficient credentials"}"#),
        ("DELETE", "/v2/auth/enable", ROOT, "", 200, ""),
        ("DELETE", "/v2/auth/enable", ROOT, "", 409, r#"{"message":"auth: already disabled"}"#),
        ("PUT", "/v2/keys/b", NONE, "value=1", 201, ANY),
    ];
    run(&server, cases);
}
