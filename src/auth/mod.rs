//! The v2 auth state (etcd's `etcdserver/api/v2auth`): users with bcrypt password hashes and
//! roles, roles with read/write key patterns, and the enabled flag. Changes are `AuthCommand`s
//! replicated through raft and applied by `AuthState::apply`; the permission checks
//! (`AuthState::allows`) are pure functions over a published copy of the state.
//!
//! Architecture invariant: pure and deterministic. No clock, no randomness, no hashing: the
//! member that takes a request computes the bcrypt hash before proposing, so applying is cheap
//! and every member applies the same bytes to the same state. Nothing here is visible in the
//! key space.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const ROOT: &str = "root";
pub const GUEST: &str = "guest";

/// A role's key patterns: `/foo` matches exactly, `/foo*` matches every key starting with
/// `/foo`. `None` is etcd's `null` (a role created without them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwPermission {
    #[serde(default)]
    pub read: Option<Vec<String>>,
    #[serde(default)]
    pub write: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    #[serde(default)]
    pub kv: RwPermission,
}

impl Permissions {
    /// etcd's `Permissions.IsEmpty`.
    fn is_empty(p: &Option<Permissions>) -> bool {
        p.as_ref().is_none_or(|p| {
            p.kv.read.as_ref().is_none_or(Vec::is_empty)
                && p.kv.write.as_ref().is_none_or(Vec::is_empty)
        })
    }
}

/// A role as etcd renders it (`grant`/`revoke` only in requests).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub role: String,
    #[serde(default)]
    pub permissions: Permissions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Permissions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke: Option<Permissions>,
}

/// A user as stored: the bcrypt hash, never the password.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub user: String,
    pub password_hash: String,
    pub roles: Option<Vec<String>>,
}

/// Everything auth knows. `version` counts the changes to credentials (a password set, a user
/// deleted), so caches of verified passwords know when to forget.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
    pub credentials_version: u64,
}

/// A replicated change. A user PUT carries the hash computed by the member that took it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    Enable,
    Disable,
    PutUser {
        user: String,
        password_hash: Option<String>,
        roles: Option<Vec<String>>,
        grant: Option<Vec<String>>,
        revoke: Option<Vec<String>>,
    },
    DeleteUser(String),
    PutRole(Role),
    DeleteRole(String),
}

/// An auth API answer: the status and the JSON body (empty for a bare 200).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthAnswer {
    pub status: u16,
    pub body: String,
}

/// An auth API error: the status and etcd's message, rendered as `{"message":...}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthError {
    pub status: u16,
    pub message: String,
}

pub type AuthOutcome = Result<AuthAnswer, AuthError>;

/// etcd's `authErr`: every store error starts with `auth: `.
fn auth_err(status: u16, message: String) -> AuthError {
    AuthError {
        status,
        message: format!("auth: {message}"),
    }
}

pub fn http_err(status: u16, message: &str) -> AuthError {
    AuthError {
        status,
        message: message.to_string(),
    }
}

fn answer(status: u16, body: &impl Serialize) -> AuthOutcome {
    // Strings, lists and maps: serializing cannot fail. Go's json.Encoder ends with '\n'.
    let mut body = go_escape(&serde_json::to_string(body).unwrap_or_default());
    body.push('\n');
    Ok(AuthAnswer { status, body })
}

/// Go's encoding/json escapes `<`, `>`, `&`, U+2028 and U+2029 inside strings. None of them
/// can appear in JSON outside a string, so replacing them in the whole text is exact.
fn go_escape(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

fn ok_empty() -> AuthOutcome {
    Ok(AuthAnswer {
        status: 200,
        body: String::new(),
    })
}

pub fn root_role() -> Role {
    Role {
        role: ROOT.to_string(),
        permissions: Permissions {
            kv: RwPermission {
                read: Some(vec!["/*".to_string()]),
                write: Some(vec!["/*".to_string()]),
            },
        },
        grant: None,
        revoke: None,
    }
}

fn guest_role() -> Role {
    Role {
        role: GUEST.to_string(),
        ..root_role()
    }
}

/// The user object answered to a PUT (`auth.User` with the password cleared).
#[derive(Serialize)]
struct UserOut<'a> {
    user: &'a str,
    roles: &'a Option<Vec<String>>,
}

/// A user with its roles expanded (`userWithRoles`: roles omitted when empty).
#[derive(Serialize)]
struct UserWithRoles {
    user: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    roles: Vec<Role>,
}

/// etcd's `getUser`: the user named root always has the root role, whatever is stored (a
/// revoke of it is stored, and undone by every read).
fn with_root_role(u: &User) -> User {
    let mut u = u.clone();
    if u.user == ROOT {
        let roles = u.roles.get_or_insert_with(Vec::new);
        if !roles.iter().any(|r| r == ROOT) {
            roles.push(ROOT.to_string());
        }
    }
    u
}

/// etcd's set values: the union, sorted (never null once merged).
fn merged(list: &Option<Vec<String>>) -> Vec<String> {
    let mut v = list.clone().unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

impl AuthState {
    /// A role by name; `root` always exists.
    pub fn role(&self, name: &str) -> Option<Role> {
        if name == ROOT {
            return Some(root_role());
        }
        self.roles.get(name).cloned()
    }

    pub fn apply(&mut self, cmd: &AuthCommand) -> AuthOutcome {
        match cmd {
            AuthCommand::Enable => {
                if self.enabled {
                    return Err(auth_err(409, "already enabled".into()));
                }
                if !self.users.contains_key(ROOT) {
                    return Err(auth_err(
                        409,
                        "No root user available, please create one".into(),
                    ));
                }
                self.roles
                    .entry(GUEST.to_string())
                    .or_insert_with(guest_role);
                self.enabled = true;
                ok_empty()
            }
            AuthCommand::Disable => {
                if !self.enabled {
                    return Err(auth_err(409, "already disabled".into()));
                }
                self.enabled = false;
                ok_empty()
            }
            AuthCommand::PutUser {
                user,
                password_hash,
                roles,
                grant,
                revoke,
            } => self.put_user(user, password_hash, roles, grant, revoke),
            AuthCommand::DeleteUser(name) => {
                if self.enabled && name == ROOT {
                    return Err(auth_err(
                        403,
                        "Cannot delete root user while auth is enabled.".into(),
                    ));
                }
                if self.users.remove(name).is_none() {
                    return Err(auth_err(404, format!("User {name} does not exist")));
                }
                self.credentials_version += 1;
                ok_empty()
            }
            AuthCommand::PutRole(role) => self.put_role(role),
            AuthCommand::DeleteRole(name) => {
                if name == ROOT {
                    return Err(auth_err(
                        403,
                        format!("Cannot modify role {name}: is root role."),
                    ));
                }
                if self.roles.remove(name).is_none() {
                    return Err(auth_err(404, format!("Role {name} doesn't exist.")));
                }
                ok_empty()
            }
        }
    }

    /// etcd's user PUT: create (with roles), create or update (without), or grant/revoke.
    fn put_user(
        &mut self,
        name: &str,
        hash: &Option<String>,
        roles: &Option<Vec<String>>,
        grant: &Option<Vec<String>>,
        revoke: &Option<Vec<String>>,
    ) -> AuthOutcome {
        let some = |l: &Option<Vec<String>>| l.as_ref().is_some_and(|l| !l.is_empty());
        if !some(grant) && !some(revoke) {
            if some(roles) || !self.users.contains_key(name) {
                return self.create_user(name, hash, roles.clone(), some(roles));
            }
        } else if some(roles) {
            return Err(http_err(
                400,
                "User JSON contains both roles and grant/revoke",
            ));
        }
        let Some(old) = self.users.get(name).map(with_root_role) else {
            return Err(auth_err(404, format!("User {name} does not exist.")));
        };
        let mut current = merged(&old.roles);
        for g in grant.iter().flatten() {
            if current.contains(g) {
                return Err(auth_err(
                    409,
                    format!("Granting duplicate role {g} for user {name}"),
                ));
            }
            current.push(g.clone());
        }
        for r in revoke.iter().flatten() {
            let Some(at) = current.iter().position(|c| c == r) else {
                return Err(auth_err(
                    409,
                    format!("Revoking ungranted role {r} for user {name}"),
                ));
            };
            current.remove(at);
        }
        current.sort();
        let new = User {
            user: name.to_string(),
            password_hash: hash.clone().unwrap_or_else(|| old.password_hash.clone()),
            roles: Some(current),
        };
        if old == new {
            return Err(auth_err(
                400,
                "User not updated. Use grant/revoke/password to update the user.".into(),
            ));
        }
        if hash.is_some() {
            self.credentials_version += 1;
        }
        let out = answer(
            200,
            &UserOut {
                user: name,
                roles: &new.roles,
            },
        );
        self.users.insert(name.to_string(), new);
        out
    }

    fn create_user(
        &mut self,
        name: &str,
        hash: &Option<String>,
        mut roles: Option<Vec<String>>,
        with_roles: bool,
    ) -> AuthOutcome {
        if name == ROOT {
            let list = roles.get_or_insert_with(Vec::new);
            if !list.iter().any(|r| r == ROOT) {
                list.push(ROOT.to_string());
            }
        }
        let Some(hash) = hash.clone() else {
            return Err(auth_err(
                400,
                format!("Cannot create user {name} with an empty password"),
            ));
        };
        if self.users.contains_key(name) {
            return Err(auth_err(409, format!("User {name} already exists.")));
        }
        let status = if with_roles { 200 } else { 201 };
        let out = answer(
            status,
            &UserOut {
                user: name,
                roles: &roles,
            },
        );
        self.users.insert(
            name.to_string(),
            User {
                user: name.to_string(),
                password_hash: hash,
                roles,
            },
        );
        self.credentials_version += 1;
        out
    }

    /// etcd's role PUT: create unless grant/revoke are given, then merge.
    fn put_role(&mut self, role: &Role) -> AuthOutcome {
        let name = &role.role;
        let root_err = || auth_err(403, format!("Cannot modify role {name}: is root role."));
        if Permissions::is_empty(&role.grant) && Permissions::is_empty(&role.revoke) {
            if name == ROOT {
                return Err(root_err());
            }
            if self.roles.contains_key(name) {
                return Err(auth_err(409, format!("Role {name} already exists.")));
            }
            let stored = Role {
                grant: None,
                revoke: None,
                ..role.clone()
            };
            self.roles.insert(name.clone(), stored);
            return answer(201, role);
        }
        if !Permissions::is_empty(&Some(role.permissions.clone())) {
            return Err(http_err(
                400,
                "Role JSON contains both permissions and grant/revoke",
            ));
        }
        if name == ROOT {
            return Err(root_err());
        }
        let Some(old) = self.roles.get(name) else {
            return Err(auth_err(404, format!("Role {name} does not exist.")));
        };
        let mut kv = old.permissions.kv.clone();
        if let Some(g) = &role.grant {
            let mut read = merged(&kv.read);
            for r in g.kv.read.iter().flatten() {
                if read.contains(r) {
                    return Err(auth_err(
                        409,
                        format!("Granting duplicate read permission {r}"),
                    ));
                }
                read.push(r.clone());
            }
            let mut write = merged(&kv.write);
            for w in g.kv.write.iter().flatten() {
                if write.contains(w) {
                    return Err(auth_err(
                        409,
                        format!("Granting duplicate write permission {w}"),
                    ));
                }
                write.push(w.clone());
            }
            read.sort();
            write.sort();
            kv = RwPermission {
                read: Some(read),
                write: Some(write),
            };
        }
        if let Some(r) = &role.revoke {
            let revoked = |list: &Option<Vec<String>>, gone: &Option<Vec<String>>| {
                let mut v = merged(list);
                v.retain(|p| !gone.iter().flatten().any(|g| g == p));
                Some(v)
            };
            kv = RwPermission {
                read: revoked(&kv.read, &r.kv.read),
                write: revoked(&kv.write, &r.kv.write),
            };
        }
        let new = Role {
            role: name.clone(),
            permissions: Permissions { kv },
            grant: None,
            revoke: None,
        };
        if *old == new {
            return Err(auth_err(
                400,
                "Role not updated. Use grant/revoke to update the role.".into(),
            ));
        }
        let out = answer(200, &new);
        self.roles.insert(name.clone(), new);
        out
    }

    /// `GET /v2/auth/users/<name>`: roles expanded; a missing role is a 404.
    pub fn get_user(&self, name: &str) -> AuthOutcome {
        let Some(u) = self.users.get(name).map(with_root_role) else {
            return Err(auth_err(404, format!("User {name} does not exist.")));
        };
        let mut roles = Vec::new();
        for r in u.roles.iter().flatten() {
            match self.role(r) {
                Some(role) => roles.push(role),
                None => return Err(auth_err(404, format!("Role {r} does not exist."))),
            }
        }
        answer(
            200,
            &UserWithRoles {
                user: u.user.clone(),
                roles,
            },
        )
    }

    /// `GET /v2/auth/users`: sorted, roles expanded (missing ones skipped), null when none.
    pub fn list_users(&self) -> AuthOutcome {
        let users: Vec<UserWithRoles> = self
            .users
            .values()
            .map(with_root_role)
            .map(|u| UserWithRoles {
                user: u.user.clone(),
                roles: u
                    .roles
                    .iter()
                    .flatten()
                    .filter_map(|r| self.role(r))
                    .collect(),
            })
            .collect();
        #[derive(Serialize)]
        struct Users {
            users: Option<Vec<UserWithRoles>>,
        }
        answer(
            200,
            &Users {
                users: (!users.is_empty()).then_some(users),
            },
        )
    }

    pub fn get_role(&self, name: &str) -> AuthOutcome {
        match self.role(name) {
            Some(r) => answer(200, &r),
            None => Err(auth_err(404, format!("Role {name} does not exist."))),
        }
    }

    /// `GET /v2/auth/roles`: root included, sorted.
    pub fn list_roles(&self) -> AuthOutcome {
        let mut roles: Vec<Role> = self.roles.values().cloned().collect();
        roles.push(root_role());
        roles.sort_by(|a, b| a.role.cmp(&b.role));
        #[derive(Serialize)]
        struct Roles {
            roles: Vec<Role>,
        }
        answer(200, &Roles { roles })
    }

    /// The user's roles when `user` is root (`hasRootAccess`, credentials already checked).
    pub fn is_root(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.user == ROOT || u.roles.iter().flatten().any(|r| r == ROOT))
    }

    /// etcd's `hasKeyPrefixAccess` once the credentials are checked: `user` None is a request
    /// without an Authorization header (the guest role, never recursive).
    pub fn allows(&self, user: Option<&str>, key: &str, recursive: bool, write: bool) -> bool {
        if !self.enabled {
            return true;
        }
        let Some(user) = user else {
            return self
                .roles
                .get(GUEST)
                .is_some_and(|r| r.permissions.kv.has_access(key, write, false));
        };
        let Some(u) = self.users.get(user) else {
            return false;
        };
        // The root user always has the root role (`with_root_role`).
        u.user == ROOT
            || u.roles.iter().flatten().any(|name| {
                name == ROOT
                    || self
                        .roles
                        .get(name)
                        .is_some_and(|r| r.permissions.kv.has_access(key, write, recursive))
            })
    }
}

impl RwPermission {
    /// etcd's simpleMatch (or prefixMatch for a recursive read: only `*` patterns count).
    fn has_access(&self, key: &str, write: bool, recursive: bool) -> bool {
        let list = if write { &self.write } else { &self.read };
        list.iter()
            .flatten()
            .any(|pat| match pat.strip_suffix('*') {
                Some(prefix) => key.starts_with(prefix),
                None => !recursive && !pat.is_empty() && key == pat,
            })
    }
}

/// Decodes a request body as Go's `json.NewDecoder(body).Decode(&v)` does for etcd's auth
/// types: the first JSON value only (trailing bytes ignored), an object, field names matched
/// case-insensitively with later members overriding earlier ones, `null` leaving a field unset.
/// Every field of those types has a lower-case name, so lower-casing the keys in document
/// order is Go's matching. None: etcd's `Invalid JSON in request body.`.
pub fn decode_go<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<GoJson>();
    match values.next() {
        Some(Ok(GoJson(v @ serde_json::Value::Object(_)))) => serde_json::from_value(v).ok(),
        _ => None,
    }
}

/// A JSON value whose object keys were lower-cased in document order (`decode_go`).
struct GoJson(serde_json::Value);

impl<'de> Deserialize<'de> for GoJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<GoJson, D::Error> {
        use serde_json::Value;
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = GoJson;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<GoJson, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some((k, GoJson(v))) = m.next_entry::<String, GoJson>()? {
                    let k = k.to_ascii_lowercase();
                    if v.is_null() {
                        out.remove(&k);
                    } else {
                        out.insert(k, v);
                    }
                }
                Ok(GoJson(Value::Object(out)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<GoJson, A::Error> {
                let mut out = Vec::new();
                while let Some(GoJson(v)) = a.next_element()? {
                    out.push(v);
                }
                Ok(GoJson(Value::Array(out)))
            }
            fn visit_str<E>(self, v: &str) -> Result<GoJson, E> {
                Ok(GoJson(Value::String(v.to_string())))
            }
            fn visit_bool<E>(self, v: bool) -> Result<GoJson, E> {
                Ok(GoJson(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<GoJson, E> {
                Ok(GoJson(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<GoJson, E> {
                Ok(GoJson(Value::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<GoJson, E> {
                Ok(GoJson(Value::from(v)))
            }
            fn visit_unit<E>(self) -> Result<GoJson, E> {
                Ok(GoJson(Value::Null))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Go's `Request.BasicAuth`: `Basic <base64(user:password)>`, the scheme case-insensitive.
pub fn basic_auth(header: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let (scheme, rest) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case("Basic ") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests;
