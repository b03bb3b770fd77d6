//! Routing and the keys-request mapping: bytes already framed into a `Request` become a
//! typed `Route`. Pure: no I/O, no shared state, so it is unit-tested and fuzzed directly.
//!
//! The keys mapping is etcd's parseKeyRequest (v2http/client.go) followed by the PUT/POST/
//! DELETE dispatch of applyV2Request (etcdserver/apply_v2.go): same checks, same order, same
//! error texts.

use super::form::{clean_path, mux_clean_path, parse_bool, parse_u64, unescape, Form};
use super::parse::{Method, Request};
use crate::limits::KEY_DEPTH_MAX;
use ringd_store::{Command, Error, ErrorCode};

/// A parsed keys request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyOp {
    Get {
        key: String,
        recursive: bool,
        sorted: bool,
        quorum: bool,
    },
    Watch {
        key: String,
        recursive: bool,
        stream: bool,
        since: u64,
    },
    /// `ttl_secs`: the raft shard stamps the command with its clock (`Command::stamp`): the
    /// write's time, and `now + ttl` as its expiration.
    Write { cmd: Command, ttl_secs: Option<u64> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRequest {
    pub op: KeyOp,
    pub no_value_on_success: bool,
    pub head: bool,
    /// The `recursive` flag whatever the method: etcd's auth check (`hasKeyPrefixAccess` with
    /// `rr.Recursive`) wants a `*` pattern for a PUT or POST with `recursive=true` too.
    pub recursive: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatsKind {
    SelfStats,
    Leader,
    Store,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Keys(Result<KeyRequest, Error>),
    /// Go's ServeMux 301 to the cleaned path (query kept); `html_body` only for GET/HEAD, as
    /// Go's http.Redirect writes it.
    Redirect {
        location: String,
        html_body: bool,
    },
    Options,
    /// 405 as http.Error writes it; `cluster_id`: etcd's members handler sets
    /// X-Etcd-Cluster-Id before it checks the method.
    MethodNotAllowed {
        allow: Option<&'static str>,
        cluster_id: bool,
    },
    NotFound,
    Version,
    Health,
    Metrics,
    Machines,
    Stats(StatsKind),
    /// Any /v2/members request with an allowed method.
    Members {
        method: Method,
        rest: String,
        content_type: Option<String>,
        body: Vec<u8>,
    },
    /// A `/v2/auth` request with an allowed method (etcd's authHandler).
    Auth {
        method: Method,
        target: AuthTarget,
        body: Vec<u8>,
    },
    /// `GET /ringd/snapshot`: a consistent snapshot file of the member's state (ringd's own,
    /// for `ringd snapshot save`).
    Snapshot,
    /// A request Go's server rejects before any handler runs: plain 400, connection closed.
    Malformed,
}

/// What a `/v2/auth` request names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthTarget {
    Enable,
    Users,
    User(String),
    Roles,
    Role(String),
    /// `/v2/auth/users/a/b`: 400 `Invalid path`, whatever the method.
    InvalidPath,
}

pub const KEYS_PREFIX: &str = "/v2/keys";

/// Routes one request.
pub fn route(req: &Request) -> Route {
    let (raw_path, query) = req.path_and_query();
    let Ok(path) = unescape(raw_path, false) else {
        return Route::Malformed;
    };
    if !path.starts_with('/') {
        return Route::Malformed;
    }
    if req.method == Method::Options {
        return Route::Options;
    }
    let cleaned = mux_clean_path(&path);
    if cleaned != path {
        // Go redirects to the cleaned, still-escaped path; re-escaping is only needed for the
        // characters that break a Location header.
        let mut location = escape_location(&cleaned);
        if !query.is_empty() {
            location.push('?');
            location.push_str(query);
        }
        let html_body = matches!(req.method, Method::Get | Method::Head);
        return Route::Redirect {
            location,
            html_body,
        };
    }
    let allow = |methods: &[Method], allow: &'static str, r: Route| -> Route {
        if methods.contains(&req.method) {
            r
        } else {
            Route::MethodNotAllowed {
                allow: Some(allow),
                cluster_id: false,
            }
        }
    };
    const GET: &[Method] = &[Method::Get];
    const GET_HEAD: &[Method] = &[Method::Get, Method::Head];
    if path == KEYS_PREFIX || path.starts_with("/v2/keys/") {
        let keys = &[
            Method::Head,
            Method::Get,
            Method::Put,
            Method::Post,
            Method::Delete,
        ];
        if !keys.contains(&req.method) {
            return Route::MethodNotAllowed {
                allow: Some("HEAD,GET,PUT,POST,DELETE"),
                cluster_id: false,
            };
        }
        return Route::Keys(keys_request(req, &path[KEYS_PREFIX.len()..], query));
    }
    if path == "/v2/members" || path.starts_with("/v2/members/") {
        let members = &[Method::Get, Method::Post, Method::Delete, Method::Put];
        if !members.contains(&req.method) {
            return Route::MethodNotAllowed {
                allow: Some("GET,POST,DELETE,PUT"),
                cluster_id: false,
            };
        }
        let rest = path
            .strip_prefix("/v2/members")
            .unwrap_or("")
            .trim_start_matches('/')
            .to_string();
        return Route::Members {
            method: req.method.clone(),
            rest,
            content_type: req.content_type.clone(),
            body: req.body.clone(),
        };
    }
    match path.as_str() {
        "/version" => allow(GET, "GET", Route::Version),
        "/health" => allow(GET, "GET", Route::Health),
        "/metrics" => allow(GET_HEAD, "GET,HEAD", Route::Metrics),
        "/v2/machines" => allow(GET_HEAD, "GET,HEAD", Route::Machines),
        "/v2/stats/self" => allow(GET, "GET", Route::Stats(StatsKind::SelfStats)),
        "/v2/stats/leader" => allow(GET, "GET", Route::Stats(StatsKind::Leader)),
        "/v2/stats/store" => allow(GET, "GET", Route::Stats(StatsKind::Store)),
        "/ringd/snapshot" => allow(GET, "GET", Route::Snapshot),
        p if p.starts_with("/v2/auth/") => auth_route(req, p),
        _ => Route::NotFound,
    }
}

/// etcd's auth mux: `/v2/auth/enable`, `/v2/auth/{users,roles}` and the subtrees under them
/// (a name, or `Invalid path` for deeper paths); method checks as etcd's `allowMethod`.
fn auth_route(req: &Request, path: &str) -> Route {
    let sub = &path["/v2/auth".len()..];
    let one_of = |allowed: &'static [Method], allow: &'static str, target: AuthTarget| {
        if allowed.contains(&req.method) {
            Route::Auth {
                method: req.method.clone(),
                target,
                body: req.body.clone(),
            }
        } else {
            Route::MethodNotAllowed {
                allow: Some(allow),
                cluster_id: false,
            }
        }
    };
    const ONE: &[Method] = &[Method::Get, Method::Put, Method::Delete];
    const BASE: &[Method] = &[Method::Get];
    if sub == "/enable" {
        return one_of(ONE, "GET,PUT,DELETE", AuthTarget::Enable);
    }
    for (base, is_users) in [("/users", true), ("/roles", false)] {
        let Some(rest) = sub.strip_prefix(base) else {
            continue;
        };
        let rest = match rest.strip_prefix('/') {
            Some(r) => r.trim_end_matches('/'),
            None if rest.is_empty() => "",
            None => continue,
        };
        let base_target = if is_users {
            AuthTarget::Users
        } else {
            AuthTarget::Roles
        };
        return match rest {
            "" => one_of(BASE, "GET", base_target),
            r if r.contains('/') => Route::Auth {
                method: req.method.clone(),
                target: AuthTarget::InvalidPath,
                body: Vec::new(),
            },
            name if is_users => one_of(ONE, "GET,PUT,DELETE", AuthTarget::User(name.to_string())),
            name => one_of(ONE, "GET,PUT,DELETE", AuthTarget::Role(name.to_string())),
        };
    }
    Route::NotFound
}

fn escape_location(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn form_error(code: ErrorCode, cause: &str) -> Error {
    Error::new(code, cause, 0)
}

fn get_bool(form: &Form, name: &str, cause: &str) -> Result<bool, Error> {
    match form.get(name) {
        None => Ok(false),
        Some(v) => parse_bool(v).ok_or_else(|| form_error(ErrorCode::InvalidField, cause)),
    }
}

fn get_u64(form: &Form, name: &str) -> Result<u64, Error> {
    match form.get(name) {
        None => Ok(0),
        Some(v) => parse_u64(v).ok_or_else(|| {
            form_error(
                ErrorCode::IndexNaN,
                &format!("invalid value for \"{name}\""),
            )
        }),
    }
}

fn is_form_content_type(ct: Option<&str>) -> bool {
    ct.and_then(|ct| ct.split(';').next()).is_some_and(|m| {
        m.trim()
            .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    })
}

/// etcd's parseKeyRequest plus the method dispatch. `rest` is the decoded path after
/// `/v2/keys`.
fn keys_request(req: &Request, rest: &str, query: &str) -> Result<KeyRequest, Error> {
    let mut form = Form::default();
    // Go's ParseForm: for PUT/POST with a form content type, body values come first (so they
    // win), then the query's. Other bodies are never parsed.
    let mut form_err = None;
    if matches!(req.method, Method::Put | Method::Post)
        && is_form_content_type(req.content_type.as_deref())
    {
        let body = String::from_utf8_lossy(&req.body);
        if let Err(e) = form.parse_into(&body) {
            form_err = Some(e);
        }
    }
    if let Err(e) = form.parse_into(query) {
        form_err.get_or_insert(e);
    }
    if let Some(e) = form_err {
        return Err(form_error(ErrorCode::InvalidForm, &e));
    }
    let key = clean_path(&format!("/{rest}"));
    // etcd has no depth limit, but recursion over the tree (listing, dropping) does: a bound
    // keeps a 1.5 MiB path of "/a/a/a..." from exhausting a thread's stack.
    if key.split('/').filter(|c| !c.is_empty()).count() > KEY_DEPTH_MAX {
        return Err(form_error(
            ErrorCode::InvalidField,
            &format!("key depth exceeds {KEY_DEPTH_MAX} levels"),
        ));
    }
    let prev_index = get_u64(&form, "prevIndex")?;
    let wait_index = get_u64(&form, "waitIndex")?;
    let recursive = get_bool(&form, "recursive", "invalid value for \"recursive\"")?;
    let sorted = get_bool(&form, "sorted", "invalid value for \"sorted\"")?;
    let wait = get_bool(&form, "wait", "invalid value for \"wait\"")?;
    let dir = get_bool(&form, "dir", "invalid value for \"dir\"")?;
    let quorum = get_bool(&form, "quorum", "invalid value for \"quorum\"")?;
    let stream = get_bool(&form, "stream", "invalid value for \"stream\"")?;
    if wait && req.method != Method::Get {
        return Err(form_error(
            ErrorCode::InvalidField,
            "\"wait\" can only be used with GET requests",
        ));
    }
    let prev_value = form.value("prevValue").to_string();
    if form.has("prevValue") && prev_value.is_empty() {
        return Err(form_error(
            ErrorCode::PrevValueRequired,
            "\"prevValue\" cannot be empty",
        ));
    }
    let no_value_on_success = get_bool(
        &form,
        "noValueOnSuccess",
        "invalid value for \"noValueOnSuccess\"",
    )?;
    let ttl_secs = match form.value("ttl") {
        "" => None,
        v => Some(
            parse_u64(v)
                .ok_or_else(|| form_error(ErrorCode::TtlNaN, "invalid value for \"ttl\""))?,
        ),
    };
    let prev_exist =
        match form.get("prevExist") {
            None => None,
            Some(v) => Some(parse_bool(v).ok_or_else(|| {
                form_error(ErrorCode::InvalidField, "invalid value for prevExist")
            })?),
        };
    let mut refresh = false;
    if let Some(v) = form.get("refresh") {
        refresh = parse_bool(v)
            .ok_or_else(|| form_error(ErrorCode::InvalidField, "invalid value for refresh"))?;
        if refresh {
            if form.has("value") && !form.value("value").is_empty() {
                return Err(form_error(
                    ErrorCode::RefreshValue,
                    "A value was provided on a refresh",
                ));
            }
            if ttl_secs.is_none() {
                return Err(form_error(
                    ErrorCode::RefreshTtlRequired,
                    "No TTL value set",
                ));
            }
        }
    }
    let value = form.value("value").to_string();
    let head = req.method == Method::Head;
    let write = |cmd: Command| KeyOp::Write { cmd, ttl_secs };
    let op = match req.method {
        // etcd turns GET+quorum into QGET before it looks at `wait`.
        Method::Get if quorum => KeyOp::Get {
            key,
            recursive,
            sorted,
            quorum: true,
        },
        Method::Get | Method::Head if wait => KeyOp::Watch {
            key,
            recursive,
            stream,
            since: wait_index,
        },
        Method::Get | Method::Head => KeyOp::Get {
            key,
            recursive,
            sorted,
            quorum: quorum && !head,
        },
        Method::Post => write(Command::Create {
            key,
            dir,
            value,
            expire: None,
            unique: true,
            at: 0,
        }),
        Method::Put => match prev_exist {
            Some(true) if prev_index == 0 && prev_value.is_empty() => write(Command::Update {
                key,
                value,
                expire: None,
                refresh,
                at: 0,
            }),
            Some(true) => write(Command::CompareAndSwap {
                key,
                prev_value,
                prev_index,
                value,
                expire: None,
                refresh,
                at: 0,
            }),
            Some(false) => write(Command::Create {
                key,
                dir,
                value,
                expire: None,
                unique: false,
                at: 0,
            }),
            None if prev_index > 0 || !prev_value.is_empty() => write(Command::CompareAndSwap {
                key,
                prev_value,
                prev_index,
                value,
                expire: None,
                refresh,
                at: 0,
            }),
            None => write(Command::Set {
                key,
                dir,
                value,
                expire: None,
                refresh,
                at: 0,
            }),
        },
        Method::Delete if prev_index > 0 || !prev_value.is_empty() => {
            write(Command::CompareAndDelete {
                key,
                prev_value,
                prev_index,
                at: 0,
            })
        }
        Method::Delete => write(Command::Delete {
            key,
            dir,
            recursive,
            at: 0,
        }),
        // route() answers OPTIONS itself and keys() is only reached for these methods; any
        // other is rejected by the caller with 405 before mapping.
        Method::Options | Method::Other(_) => {
            return Err(form_error(ErrorCode::InvalidForm, "method not allowed"))
        }
    };
    Ok(KeyRequest {
        op,
        no_value_on_success,
        head,
        recursive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, target: &str, ct: Option<&str>, body: &str) -> Request {
        Request {
            method,
            target: target.to_string(),
            content_type: ct.map(String::from),
            authorization: None,
            keep_alive: true,
            body: body.as_bytes().to_vec(),
        }
    }

    fn keys(method: Method, target: &str, body: &str) -> Result<KeyRequest, Error> {
        match route(&req(
            method,
            target,
            Some("application/x-www-form-urlencoded"),
            body,
        )) {
            Route::Keys(k) => k,
            other => panic!("not a keys route: {other:?}"),
        }
    }

    fn cause(r: Result<KeyRequest, Error>) -> (u16, String) {
        let e = r.unwrap_err();
        assert_eq!(e.index, 0);
        (e.code.code(), e.cause)
    }

    #[test]
    fn path_cleaning_redirects_with_query() {
        let r = route(&req(Method::Get, "/v2/keys//p/a/?recursive=true", None, ""));
        assert_eq!(
            r,
            Route::Redirect {
                location: "/v2/keys/p/a/?recursive=true".into(),
                html_body: true
            }
        );
        let r = route(&req(Method::Get, "/v2/keys/p/./a", None, ""));
        assert_eq!(
            r,
            Route::Redirect {
                location: "/v2/keys/p/a".into(),
                html_body: true
            }
        );
    }

    #[test]
    fn keys_are_decoded_and_cleaned() {
        let k = keys(Method::Get, "/v2/keys/p/hello%20world", "").unwrap();
        assert!(matches!(k.op, KeyOp::Get { ref key, .. } if key == "/p/hello world"));
        let k = keys(Method::Get, "/v2/keys/a%2Fb/", "").unwrap();
        assert!(matches!(k.op, KeyOp::Get { ref key, .. } if key == "/a/b"));
        let k = keys(Method::Get, "/v2/keys", "").unwrap();
        assert!(matches!(k.op, KeyOp::Get { ref key, .. } if key == "/"));
    }

    #[test]
    fn body_wins_over_query_and_needs_content_type() {
        let k = keys(Method::Put, "/v2/keys/a?value=q", "value=b").unwrap();
        assert!(
            matches!(k.op, KeyOp::Write { cmd: Command::Set { ref value, .. }, .. } if value == "b")
        );
        let r = route(&req(Method::Put, "/v2/keys/a", None, "value=b"));
        let Route::Keys(Ok(k)) = r else { panic!() };
        assert!(
            matches!(k.op, KeyOp::Write { cmd: Command::Set { ref value, .. }, .. } if value.is_empty())
        );
        // DELETE bodies are never parsed.
        let k = keys(Method::Delete, "/v2/keys/a", "recursive=true").unwrap();
        assert!(matches!(
            k.op,
            KeyOp::Write {
                cmd: Command::Delete {
                    recursive: false,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn form_errors_have_etcds_texts() {
        let cases: &[(Method, &str, u16, &str)] = &[
            (
                Method::Put,
                "/v2/keys/a?ttl=x",
                202,
                "invalid value for \"ttl\"",
            ),
            (
                Method::Put,
                "/v2/keys/a?ttl=-1",
                202,
                "invalid value for \"ttl\"",
            ),
            (
                Method::Put,
                "/v2/keys/a?prevIndex=-1",
                203,
                "invalid value for \"prevIndex\"",
            ),
            (
                Method::Get,
                "/v2/keys/a?waitIndex=",
                203,
                "invalid value for \"waitIndex\"",
            ),
            (
                Method::Put,
                "/v2/keys/a?prevValue=",
                201,
                "\"prevValue\" cannot be empty",
            ),
            (
                Method::Get,
                "/v2/keys/a?recursive=yes",
                209,
                "invalid value for \"recursive\"",
            ),
            (
                Method::Put,
                "/v2/keys/a?prevExist=",
                209,
                "invalid value for prevExist",
            ),
            (
                Method::Put,
                "/v2/keys/a?wait=true",
                209,
                "\"wait\" can only be used with GET requests",
            ),
            (
                Method::Put,
                "/v2/keys/a?a=%zz",
                210,
                "invalid URL escape \"%zz\"",
            ),
            (
                Method::Put,
                "/v2/keys/a?refresh=true&value=x&ttl=1",
                211,
                "A value was provided on a refresh",
            ),
            (
                Method::Put,
                "/v2/keys/a?refresh=true",
                212,
                "No TTL value set",
            ),
        ];
        for (method, target, code, expected) in cases {
            assert_eq!(
                cause(keys(method.clone(), target, "")),
                (*code, expected.to_string()),
                "{target}"
            );
        }
    }

    #[test]
    fn put_dispatch_follows_apply_v2() {
        let op = |q: &str| {
            keys(Method::Put, &format!("/v2/keys/a?{q}"), "")
                .unwrap()
                .op
        };
        assert!(matches!(
            op("prevExist=true"),
            KeyOp::Write {
                cmd: Command::Update { .. },
                ..
            }
        ));
        assert!(matches!(
            op("prevExist=true&prevIndex=3"),
            KeyOp::Write {
                cmd: Command::CompareAndSwap { prev_index: 3, .. },
                ..
            }
        ));
        assert!(matches!(
            op("prevExist=false"),
            KeyOp::Write {
                cmd: Command::Create { unique: false, .. },
                ..
            }
        ));
        assert!(matches!(
            op("prevValue=x"),
            KeyOp::Write {
                cmd: Command::CompareAndSwap { .. },
                ..
            }
        ));
        assert!(matches!(
            op("prevIndex=0"),
            KeyOp::Write {
                cmd: Command::Set { .. },
                ..
            }
        ));
        assert!(matches!(
            op("ttl=5"),
            KeyOp::Write {
                ttl_secs: Some(5),
                ..
            }
        ));
        assert!(matches!(op("ttl="), KeyOp::Write { ttl_secs: None, .. }));
    }

    #[test]
    fn other_routes() {
        assert_eq!(
            route(&req(Method::Get, "/version", None, "")),
            Route::Version
        );
        assert_eq!(route(&req(Method::Get, "/nope", None, "")), Route::NotFound);
        assert_eq!(
            route(&req(Method::Options, "/v2/keys/a", None, "")),
            Route::Options
        );
        assert!(matches!(
            route(&req(Method::Put, "/v2/stats/self", None, "")),
            Route::MethodNotAllowed { .. }
        ));
        assert_eq!(
            route(&req(Method::Get, "/ringd/snapshot", None, "")),
            Route::Snapshot
        );
        assert_eq!(
            route(&req(Method::Post, "/ringd/snapshot", None, "")),
            Route::MethodNotAllowed {
                allow: Some("GET"),
                cluster_id: false
            }
        );
    }

    /// etcd's auth mux: targets, `Invalid path` whatever the method, 405s with etcd's Allow.
    #[test]
    fn auth_routes() {
        let target = |m: Method, t: &str| match route(&req(m, t, None, "")) {
            Route::Auth { target, .. } => format!("{target:?}"),
            Route::MethodNotAllowed { allow, .. } => format!("405 {allow:?}"),
            Route::NotFound => "404".to_string(),
            other => format!("{other:?}"),
        };
        #[rustfmt::skip]
        let table = [
            (Method::Get, "/v2/auth/enable", "Enable"),
            (Method::Delete, "/v2/auth/enable", "Enable"),
            (Method::Head, "/v2/auth/enable", "405 Some(\"GET,PUT,DELETE\")"),
            (Method::Get, "/v2/auth/users", "Users"),
            (Method::Get, "/v2/auth/users/", "Users"),
            (Method::Put, "/v2/auth/users", "405 Some(\"GET\")"),
            (Method::Put, "/v2/auth/users/u", "User(\"u\")"),
            (Method::Get, "/v2/auth/users/u/", "User(\"u\")"),
            (Method::Post, "/v2/auth/users/u", "405 Some(\"GET,PUT,DELETE\")"),
            (Method::Post, "/v2/auth/users/a/b", "InvalidPath"),
            (Method::Get, "/v2/auth/roles/r%2Fx", "InvalidPath"),
            (Method::Delete, "/v2/auth/roles/r", "Role(\"r\")"),
            (Method::Get, "/v2/auth/usersx", "404"),
            (Method::Get, "/v2/auth/nope", "404"),
        ];
        for (m, t, want) in table {
            assert_eq!(target(m.clone(), t), want, "{m:?} {t}");
        }
    }
}
