use super::*;

fn state(cmds: &[AuthCommand]) -> AuthState {
    let mut s = AuthState::default();
    for c in cmds {
        let _ = s.apply(c);
    }
    s
}

fn put_user(name: &str, roles: Option<&[&str]>) -> AuthCommand {
    AuthCommand::PutUser {
        user: name.into(),
        password_hash: Some("h".into()),
        roles: roles.map(|r| r.iter().map(|s| s.to_string()).collect()),
        grant: None,
        revoke: None,
    }
}

fn put_role(name: &str, read: &[&str], write: &[&str]) -> AuthCommand {
    let l = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
    AuthCommand::PutRole(Role {
        role: name.into(),
        permissions: Permissions {
            kv: RwPermission {
                read: l(read),
                write: l(write),
            },
        },
        grant: None,
        revoke: None,
    })
}

fn check(s: &AuthState, user: Option<&str>, key: &str, recursive: bool, write: bool, want: bool) {
    assert_eq!(
        s.allows(user, key, recursive, write),
        want,
        "user {user:?} key {key} recursive {recursive} write {write}"
    );
}

/// etcd's matching rules (WIRE.md "Permission matching"), one row per case.
#[test]
fn permission_table() {
    let s = state(&[
        put_user("root", None),
        put_user("u", Some(&["r"])),
        put_role("r", &["/foo/*", "/bar*", "/exact"], &["/w/*"]),
        AuthCommand::Enable,
    ]);
    #[rustfmt::skip]
    let table: &[(Option<&str>, &str, bool, bool, bool)] = &[
        // user, key, recursive, write, allowed
        (Some("u"), "/foo/a", false, false, true),
        (Some("u"), "/foo", false, false, false),
        (Some("u"), "/foo/", false, false, true),
        (Some("u"), "/foobar", false, false, false),
        (Some("u"), "/barbaz", false, false, true),
        (Some("u"), "/bar", false, false, true),
        (Some("u"), "/exact", false, false, true),
        (Some("u"), "/exact", true, false, false),
        (Some("u"), "/exactly", false, false, false),
        (Some("u"), "/foo/a", false, true, false),
        (Some("u"), "/w/x", false, true, true),
        (Some("u"), "/foo/dir", true, false, true),
        (Some("u"), "/", true, false, false),
        (Some("root"), "/anything", true, true, true),
        (Some("nobody"), "/foo/a", false, false, false),
        // guest: created on enable with /* both ways
        (None, "/x", false, true, true),
        (None, "/x", true, false, true),
    ];
    for &(user, key, recursive, write, want) in table {
        check(&s, user, key, recursive, write, want);
    }
    let mut s = s;
    let revoke = AuthCommand::PutRole(Role {
        role: "guest".into(),
        revoke: Some(Permissions {
            kv: RwPermission {
                read: None,
                write: Some(vec!["/*".into()]),
            },
        }),
        ..Default::default()
    });
    assert_eq!(s.apply(&revoke).map(|a| a.status), Ok(200));
    check(&s, None, "/x", false, true, false);
    check(&s, None, "/x", false, false, true);
    // Authenticated users never fall back to guest.
    check(&s, Some("u"), "/x", false, false, false);
}

#[test]
fn api_answers() {
    let mut s = AuthState::default();
    let r = |s: &mut AuthState, c: AuthCommand| match s.apply(&c) {
        Ok(a) => format!("{} {}", a.status, a.body.trim_end()),
        Err(e) => format!("{} {}", e.status, e.message),
    };
    assert_eq!(
        r(&mut s, AuthCommand::Enable),
        "409 auth: No root user available, please create one"
    );
    assert_eq!(
        r(&mut s, put_user("u", None)),
        r#"201 {"user":"u","roles":null}"#
    );
    assert_eq!(
        r(&mut s, put_user("v", Some(&["x"]))),
        r#"200 {"user":"v","roles":["x"]}"#
    );
    assert_eq!(
        s.get_user("v").unwrap_err().message,
        "auth: Role x does not exist."
    );
    assert_eq!(
        r(&mut s, put_user("root", None)),
        r#"201 {"user":"root","roles":["root"]}"#
    );
    assert_eq!(r(&mut s, AuthCommand::Enable), "200 ");
    assert_eq!(r(&mut s, AuthCommand::Enable), "409 auth: already enabled");
    assert_eq!(
        r(&mut s, AuthCommand::DeleteUser("root".into())),
        "403 auth: Cannot delete root user while auth is enabled."
    );
    assert_eq!(
        r(&mut s, AuthCommand::DeleteUser("x".into())),
        "404 auth: User x does not exist"
    );
    assert_eq!(
        r(&mut s, AuthCommand::DeleteRole("x".into())),
        "404 auth: Role x doesn't exist."
    );
    assert_eq!(
        r(&mut s, put_role("root", &[], &[])),
        "403 auth: Cannot modify role root: is root role."
    );
    let empty = AuthCommand::PutRole(Role {
        role: "e".into(),
        ..Default::default()
    });
    assert_eq!(
        r(&mut s, empty),
        r#"201 {"role":"e","permissions":{"kv":{"read":null,"write":null}}}"#
    );
    let rev = |read: &str| {
        AuthCommand::PutRole(Role {
            role: "e".into(),
            revoke: Some(Permissions {
                kv: RwPermission {
                    read: Some(vec![read.into()]),
                    write: None,
                },
            }),
            ..Default::default()
        })
    };
    assert_eq!(
        r(&mut s, rev("/x")),
        r#"200 {"role":"e","permissions":{"kv":{"read":[],"write":[]}}}"#
    );
    assert_eq!(
        r(&mut s, rev("/x")),
        "400 auth: Role not updated. Use grant/revoke to update the role."
    );
    let grant_user = |g: &str| AuthCommand::PutUser {
        user: "u".into(),
        password_hash: None,
        roles: None,
        grant: Some(vec![g.into()]),
        revoke: None,
    };
    assert_eq!(
        r(&mut s, grant_user("e")),
        r#"200 {"user":"u","roles":["e"]}"#
    );
    assert_eq!(
        r(&mut s, grant_user("e")),
        "409 auth: Granting duplicate role e for user u"
    );
    assert_eq!(
        s.list_roles().unwrap().body.trim_end(),
        r#"{"roles":[{"role":"e","permissions":{"kv":{"read":[],"write":[]}}},{"role":"guest","permissions":{"kv":{"read":["/*"],"write":["/*"]}}},{"role":"root","permissions":{"kv":{"read":["/*"],"write":["/*"]}}}]}"#
    );
}

#[test]
fn basic_auth_header() {
    assert_eq!(
        basic_auth("Basic cm9vdDpwdw=="),
        Some(("root".into(), "pw".into()))
    );
    assert_eq!(
        basic_auth("basic cm9vdDpwdw=="),
        Some(("root".into(), "pw".into()))
    );
    assert_eq!(basic_auth("Bearer x"), None);
    assert_eq!(basic_auth("Basic !!"), None);
}

#[test]
fn bodies_escape_as_go_does() {
    let mut s = AuthState::default();
    let a = s.apply(&put_user("a<b&c>", None)).unwrap();
    assert_eq!(
        a.body,
        "{\"user\":\"a\\u003cb\\u0026c\\u003e\",\"roles\":null}\n"
    );
}

/// etcd attaches the root role to the root user on every read: revoking it is stored but
/// changes nothing, and granting it again is a duplicate.
#[test]
fn the_root_user_keeps_the_root_role() {
    let mut s = state(&[put_user("root", None), AuthCommand::Enable]);
    let revoke = AuthCommand::PutUser {
        user: "root".into(),
        password_hash: None,
        roles: None,
        grant: None,
        revoke: Some(vec!["root".into()]),
    };
    assert_eq!(
        s.apply(&revoke).unwrap().body,
        "{\"user\":\"root\",\"roles\":[]}\n"
    );
    assert!(s.is_root("root"));
    check(&s, Some("root"), "/x", true, true, true);
    let grant = AuthCommand::PutUser {
        user: "root".into(),
        password_hash: None,
        roles: None,
        grant: Some(vec!["root".into()]),
        revoke: None,
    };
    assert_eq!(
        s.apply(&grant).unwrap_err().message,
        "auth: Granting duplicate role root for user root"
    );
    assert!(s
        .get_user("root")
        .unwrap()
        .body
        .contains("\"role\":\"root\""));
}

/// Request bodies decode as Go's encoding/json decodes them into etcd's types.
#[test]
fn bodies_decode_as_go_does() {
    #[derive(serde::Deserialize)]
    struct U {
        #[serde(default)]
        user: String,
        #[serde(default)]
        roles: Option<Vec<String>>,
    }
    let user = |body: &str| -> Option<(String, Option<Vec<String>>)> {
        decode_go::<U>(body.as_bytes()).map(|u| (u.user, u.roles))
    };
    let ok = |u: &str, r: Option<&[&str]>| {
        Some((
            u.to_string(),
            r.map(|r| r.iter().map(|s| s.to_string()).collect()),
        ))
    };
    assert_eq!(user(r#"{"user":"a","User":"b"}"#), ok("b", None));
    assert_eq!(
        user(r#"{"USER":"a","roles":["x"]} trailing"#),
        ok("a", Some(&["x"]))
    );
    assert_eq!(
        user(r#"{"user":"a","roles":["x"],"roles":null}"#),
        ok("a", None)
    );
    assert_eq!(user(r#"{"user":"a","other":{"x":1}}"#), ok("a", None));
    assert_eq!(user(r#"["a"]"#), None);
    assert_eq!(user(r#"{"user":1}"#), None);
    assert_eq!(user("xx"), None);
    let r: Role = decode_go(br#"{"Role":"r","Permissions":{"KV":{"Read":["/a"]}}}"#).unwrap();
    assert_eq!(r.permissions.kv.read, Some(vec!["/a".to_string()]));
}

/// A model check of `allows` against an independent transcription of etcd's v2 rules
/// (`etcdserver/api/v2http/client_auth.go` hasKeyPrefixAccess/hasGuestAccess and
/// `etcdserver/api/v2auth/auth.go` getUser, Role.HasKeyAccess/HasRecursiveAccess,
/// simpleMatch/prefixMatch), over random roles, users, callers, keys and verbs.
mod model {
    use super::*;
    use proptest::prelude::*;

    /// A keys request as the keys handler sees it.
    #[derive(Clone, Copy, Debug)]
    enum Verb {
        Get,
        RecursiveGet,
        /// etcd passes the request's `recursive` flag whatever the method.
        Set {
            recursive: bool,
        },
        Delete {
            recursive: bool,
        },
        Watch {
            recursive: bool,
        },
        /// In-order create: a POST on the directory's key.
        Post {
            recursive: bool,
        },
    }

    impl Verb {
        /// etcd: the key is the path after `/v2/keys`, `recursive` is the request's flag,
        /// and every method but GET and HEAD needs write access.
        fn check(self) -> (bool, bool) {
            match self {
                Verb::Get => (false, false),
                Verb::RecursiveGet => (true, false),
                Verb::Set { recursive } | Verb::Post { recursive } | Verb::Delete { recursive } => {
                    (recursive, true)
                }
                Verb::Watch { recursive } => (recursive, false),
            }
        }
    }

    /// etcd's `simpleMatch`: a trailing `*` is a prefix, anything else exact. (An empty
    /// pattern makes etcd index out of range, a panic net/http turns into a dropped
    /// connection; no access is the closest answer.)
    fn simple_match(pat: &str, key: &str) -> bool {
        if pat.is_empty() {
            return false;
        }
        match pat.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => key == pat,
        }
    }

    /// etcd's `prefixMatch`: only `*` patterns grant a recursive request.
    fn prefix_match(pat: &str, key: &str) -> bool {
        pat.strip_suffix('*')
            .is_some_and(|prefix| key.starts_with(prefix))
    }

    struct ModelRole {
        name: String,
        read: Vec<String>,
        write: Vec<String>,
    }

    struct ModelUser {
        name: String,
        roles: Vec<String>,
    }

    struct Model {
        enabled: bool,
        users: Vec<ModelUser>,
        roles: Vec<ModelRole>,
    }

    impl Model {
        fn role_allows(&self, name: &str, key: &str, recursive: bool, write: bool) -> bool {
            // GetRole("root") is the built-in root role, whose Has*Access is always true.
            if name == "root" {
                return true;
            }
            let Some(r) = self.roles.iter().find(|r| r.name == name) else {
                return false; // GetRole error: `continue`
            };
            let list = if write { &r.write } else { &r.read };
            list.iter().any(|p| {
                if recursive {
                    prefix_match(p, key)
                } else {
                    simple_match(p, key)
                }
            })
        }

        /// `caller` None: no Authorization header. Some: credentials already valid (an
        /// unknown user cannot have valid credentials).
        fn allows(&self, caller: Option<&str>, key: &str, verb: Verb) -> bool {
            if !self.enabled {
                return true;
            }
            let (recursive, write) = verb.check();
            let Some(name) = caller else {
                // hasGuestAccess: HasKeyAccess, the recursive flag ignored.
                return self.role_allows("guest", key, false, write);
            };
            let Some(u) = self.users.iter().find(|u| u.name == name) else {
                return false;
            };
            // getUser: the user named root always has the root role.
            let mut roles = u.roles.clone();
            if u.name == "root" {
                roles.push("root".into());
            }
            roles
                .iter()
                .any(|r| self.role_allows(r, key, recursive, write))
        }
    }

    const NAMES: &[&str] = &["root", "guest", "a", "b", "c"];
    const KEYS: &[&str] = &[
        "/", "/a", "/a/", "/a/b", "/a/b/c", "/ab", "/abc", "/b", "/b/a", "/_x", "/a*",
    ];

    fn name() -> impl Strategy<Value = String> {
        proptest::sample::select(NAMES).prop_map(String::from)
    }

    fn key() -> impl Strategy<Value = String> {
        proptest::sample::select(KEYS).prop_map(String::from)
    }

    /// A key, a key with `*`, a bare `*`, or empty.
    fn pattern() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => key(),
            4 => key().prop_map(|k| format!("{k}*")),
            1 => Just("*".to_string()),
            1 => Just(String::new()),
        ]
    }

    fn verb() -> impl Strategy<Value = Verb> {
        prop_oneof![
            Just(Verb::Get),
            Just(Verb::RecursiveGet),
            any::<bool>().prop_map(|recursive| Verb::Set { recursive }),
            any::<bool>().prop_map(|recursive| Verb::Delete { recursive }),
            any::<bool>().prop_map(|recursive| Verb::Watch { recursive }),
            any::<bool>().prop_map(|recursive| Verb::Post { recursive }),
        ]
    }

    fn patterns() -> impl Strategy<Value = Option<Vec<String>>> {
        proptest::option::weighted(0.9, proptest::collection::vec(pattern(), 0..4))
    }

    type RoleDraw = (String, Option<Vec<String>>, Option<Vec<String>>);
    type UserDraw = (String, Option<Vec<String>>);

    fn draw() -> impl Strategy<Value = (bool, Vec<RoleDraw>, Vec<UserDraw>)> {
        (
            proptest::bool::weighted(0.9),
            proptest::collection::vec((name(), patterns(), patterns()), 0..5),
            proptest::collection::vec(
                (
                    name(),
                    proptest::option::weighted(0.9, proptest::collection::vec(name(), 0..4)),
                ),
                0..5,
            ),
        )
    }

    /// The same draw as ringd's state (built directly, so states the API would refuse, a
    /// stored role named root or a root user stored without the root role, occur too) and
    /// as the model. Later duplicates replace earlier ones in both.
    fn build(enabled: bool, roles: &[RoleDraw], users: &[UserDraw]) -> (AuthState, Model) {
        let mut s = AuthState {
            enabled,
            ..AuthState::default()
        };
        let mut m = Model {
            enabled,
            users: Vec::new(),
            roles: Vec::new(),
        };
        for (name, read, write) in roles {
            let role = Role {
                role: name.clone(),
                permissions: Permissions {
                    kv: RwPermission {
                        read: read.clone(),
                        write: write.clone(),
                    },
                },
                grant: None,
                revoke: None,
            };
            s.roles.insert(name.clone(), role);
            m.roles.retain(|r| r.name != *name);
            m.roles.push(ModelRole {
                name: name.clone(),
                read: read.clone().unwrap_or_default(),
                write: write.clone().unwrap_or_default(),
            });
        }
        for (name, roles) in users {
            let user = User {
                user: name.clone(),
                password_hash: "h".into(),
                roles: roles.clone(),
            };
            s.users.insert(name.clone(), user);
            m.users.retain(|u| u.name != *name);
            m.users.push(ModelUser {
                name: name.clone(),
                roles: roles.clone().unwrap_or_default(),
            });
        }
        (s, m)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        #[test]
        fn allows_matches_etcds_rules(
            (enabled, roles, users) in draw(),
            requests in proptest::collection::vec(
                (proptest::option::weighted(0.8, name()), key(), verb()),
                1..16,
            ),
        ) {
            let (s, m) = build(enabled, &roles, &users);
            for (caller, key, verb) in &requests {
                let (recursive, write) = verb.check();
                let got = s.allows(caller.as_deref(), key, recursive, write);
                let want = m.allows(caller.as_deref(), key, *verb);
                prop_assert_eq!(got, want, "caller {:?} key {} {:?}", caller, key, verb);
            }
        }
    }
}
