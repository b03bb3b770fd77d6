//! The v2 auth API (`/v2/auth`, etcd's authHandler) and the credential checks every route
//! makes once auth is enabled: HTTP basic auth verified with bcrypt, remembered in a bounded
//! per-shard cache keyed by a keyed hash of user and password (never the password itself).
//! The permission rules are `crate::auth`'s pure functions over the published state.

use super::keys::propose;
use super::ShardCtx;
use crate::auth::{http_err, AuthCommand, AuthOutcome, AuthState, Role};
use crate::http::parse::Method;
use crate::http::render;
use crate::http::response::json;
use crate::http::route::AuthTarget;
use crate::limits::{AUTH_CACHE_ENTRIES_MAX, BCRYPT_COST, BCRYPT_THREADS_PER_SHARD_MAX};
use crate::shard::Proposal;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::rc::Rc;

/// Credentials already verified on this shard, for one version of the credentials.
pub(super) struct CredentialCache {
    /// SipHash with this process's random keys: the cache never holds anything from which
    /// a password could be read back.
    key: std::collections::hash_map::RandomState,
    version: u64,
    verified: HashMap<u64, String>,
}

impl CredentialCache {
    pub(super) fn new() -> CredentialCache {
        CredentialCache {
            key: Default::default(),
            version: 0,
            verified: HashMap::new(),
        }
    }

    /// What the cache knows of `user:password` under `state`: Some(true) verified, Some(false)
    /// no such user, None: bcrypt must decide (with the hash returned).
    fn lookup(&mut self, state: &AuthState, user: &str, password: &str) -> Result<bool, String> {
        if self.version != state.credentials_version {
            self.verified.clear();
            self.version = state.credentials_version;
        }
        let Some(u) = state.users.get(user) else {
            return Ok(false);
        };
        let h = self.key.hash_one((user, password));
        if self.verified.get(&h).is_some_and(|v| v == user) {
            return Ok(true);
        }
        Err(u.password_hash.clone())
    }

    /// Records a verification made against credentials version `version`.
    fn remember(&mut self, version: u64, user: &str, password: &str) {
        if version != self.version {
            return; // the credentials changed while bcrypt ran
        }
        if self.verified.len() >= AUTH_CACHE_ENTRIES_MAX {
            self.verified.clear();
        }
        let h = self.key.hash_one((user, password));
        self.verified.insert(h, user.to_string());
    }
}

/// Counts a shard's bcrypt threads running; decremented even if the waiting task is dropped.
struct Running<'a>(&'a std::cell::Cell<usize>);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Runs bcrypt (`f`, ~50 ms of CPU at cost 10) on a thread of its own, so the shard's other
/// connections are served meanwhile. At most `BCRYPT_THREADS_PER_SHARD_MAX` per shard: beyond
/// that (a flood of wrong passwords) it runs here, which slows this shard down, not the
/// machine. `failed`: the answer when no thread can be started.
async fn bcrypt_off_executor<T: Send + 'static>(
    ctx: &ShardCtx,
    f: impl FnOnce() -> T + Send + 'static,
    failed: T,
) -> T {
    if ctx.bcrypt_running.get() >= BCRYPT_THREADS_PER_SHARD_MAX {
        return f();
    }
    ctx.bcrypt_running.set(ctx.bcrypt_running.get() + 1);
    let _running = Running(&ctx.bcrypt_running);
    let (tx, rx) = flume::bounded(1);
    let spawned = std::thread::Builder::new()
        .name("bcrypt".to_string())
        .spawn(move || {
            let _ = tx.send(f());
        });
    match spawned {
        Ok(_) => rx.recv_async().await.unwrap_or(failed),
        Err(_) => failed,
    }
}

/// What a request brings to prove who sent it.
#[derive(Clone, Copy)]
pub(super) struct Credentials<'a> {
    /// The Authorization header.
    pub authorization: Option<&'a str>,
    /// The verified client certificate's CN (`--client-cert-auth`).
    pub client_cn: Option<&'a str>,
}

/// Who sent a request, once auth is enabled.
pub(super) enum Caller {
    /// No Authorization header: the guest role applies.
    Guest,
    User(String),
    /// Credentials that do not check out (unknown user, wrong password, bad header).
    Refused,
}

/// etcd's `userFromBasicAuth` (CheckPassword through the cache), or without an
/// Authorization header `userFromClientCertificate`: under `--client-cert-auth` the verified
/// client certificate's CN names the user (no password), else the guest role applies.
pub(super) async fn caller(ctx: &ShardCtx, state: &AuthState, creds: Credentials<'_>) -> Caller {
    let Some(header) = creds.authorization else {
        return match creds.client_cn {
            Some(cn) if state.users.contains_key(cn) => Caller::User(cn.to_string()),
            _ => Caller::Guest,
        };
    };
    let Some((user, password)) = crate::auth::basic_auth(header) else {
        return Caller::Refused;
    };
    let lookup = ctx.credentials.borrow_mut().lookup(state, &user, &password);
    let ok = match lookup {
        Ok(known) => known,
        Err(hash) => {
            let p = password.clone();
            let ok = bcrypt_off_executor(
                ctx,
                move || bcrypt::verify(p, &hash).unwrap_or(false),
                false,
            )
            .await;
            if ok {
                let version = state.credentials_version;
                ctx.credentials
                    .borrow_mut()
                    .remember(version, &user, &password);
            }
            ok
        }
    };
    if ok {
        Caller::User(user)
    } else {
        Caller::Refused
    }
}

/// etcd's `hasRootAccess`: auth disabled, or root's valid credentials.
pub(super) fn has_root_access(state: &AuthState, who: Option<&Caller>) -> bool {
    !state.enabled || matches!(who, Some(Caller::User(u)) if state.is_root(u))
}

/// etcd's `writeNoAuth`: the auth and members APIs' 401.
pub(super) fn no_auth(out: &mut Vec<u8>, head: bool) {
    let mut b = Vec::new();
    render::message(&mut b, "Insufficient credentials");
    json(out, head, 401, &[], &b);
}

/// etcd's `hasKeyPrefixAccess` for a keys request.
pub(super) fn key_access(
    state: &AuthState,
    who: &Caller,
    key: &str,
    recursive: bool,
    write: bool,
) -> bool {
    match who {
        Caller::Guest => state.allows(None, key, recursive, write),
        Caller::User(u) => state.allows(Some(u), key, recursive, write),
        Caller::Refused => !state.enabled,
    }
}

/// A user as a request body carries it (`auth.User`).
#[derive(serde::Deserialize)]
struct UserIn {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    grant: Option<Vec<String>>,
    #[serde(default)]
    revoke: Option<Vec<String>>,
}

/// Answers a `/v2/auth` request; changes go through raft and are answered once applied.
pub(super) async fn auth_api(
    ctx: &Rc<ShardCtx>,
    method: Method,
    target: AuthTarget,
    body: &[u8],
    creds: Credentials<'_>,
    head: bool,
    out: &mut Vec<u8>,
) {
    let cid = ctx.cid.clone();
    let extra = [("X-Etcd-Cluster-Id", cid.as_str())];
    let state = ctx.shared.published.load().auth.clone();
    let public = target == AuthTarget::InvalidPath
        || (method == Method::Get && target == AuthTarget::Enable);
    let who = if state.enabled && !public {
        Some(caller(ctx, &state, creds).await)
    } else {
        None
    };
    let outcome = match (&method, target) {
        (_, AuthTarget::InvalidPath) => {
            let mut b = Vec::new();
            render::message(&mut b, "Invalid path");
            return json(out, head, 400, &[], &b);
        }
        (Method::Get, AuthTarget::Enable) => {
            let b = format!("{{\"enabled\":{}}}\n", state.enabled);
            return json(out, head, 200, &extra, b.as_bytes());
        }
        _ if !has_root_access(&state, who.as_ref()) => return no_auth(out, head),
        (Method::Put, AuthTarget::Enable) => change(ctx, AuthCommand::Enable).await,
        (_, AuthTarget::Enable) => change(ctx, AuthCommand::Disable).await,
        (_, AuthTarget::Users) => state.list_users(),
        (_, AuthTarget::Roles) => state.list_roles(),
        (Method::Get, AuthTarget::User(name)) => state.get_user(&name),
        (Method::Get, AuthTarget::Role(name)) => state.get_role(&name),
        (Method::Delete, AuthTarget::User(name)) => {
            change(ctx, AuthCommand::DeleteUser(name)).await
        }
        (Method::Delete, AuthTarget::Role(name)) => {
            change(ctx, AuthCommand::DeleteRole(name)).await
        }
        (_, AuthTarget::User(name)) => match put_user(ctx, &name, body).await {
            Ok(cmd) => change(ctx, cmd).await,
            Err(e) => Err(e),
        },
        (_, AuthTarget::Role(name)) => match crate::auth::decode_go::<Role>(body) {
            None => Err(http_err(400, "Invalid JSON in request body.")),
            Some(r) if r.role != name => Err(http_err(
                400,
                "Role JSON name does not match the name in the URL",
            )),
            Some(r) => change(ctx, AuthCommand::PutRole(r)).await,
        },
    };
    match outcome {
        Ok(a) => json(out, head, a.status, &extra, a.body.as_bytes()),
        Err(e) => {
            let mut b = Vec::new();
            render::message(&mut b, &e.message);
            json(out, head, e.status, &extra, &b);
        }
    }
}

/// A user PUT's command: the password hashed here, before proposing, so applying is cheap
/// and every member stores the same hash.
async fn put_user(
    ctx: &ShardCtx,
    name: &str,
    body: &[u8],
) -> Result<AuthCommand, crate::auth::AuthError> {
    let u: UserIn = crate::auth::decode_go(body)
        .ok_or_else(|| http_err(400, "Invalid JSON in request body."))?;
    if u.user != name {
        return Err(http_err(
            400,
            "User JSON name does not match the name in the URL",
        ));
    }
    let password_hash = if u.password.is_empty() {
        None
    } else {
        let password = u.password.clone();
        let hash = bcrypt_off_executor(
            ctx,
            move || bcrypt::hash(password, BCRYPT_COST).map_err(|e| e.to_string()),
            Err("no thread to hash on".to_string()),
        )
        .await
        .map_err(|e| http_err(500, &format!("auth: cannot hash the password: {e}")))?;
        Some(hash)
    };
    Ok(AuthCommand::PutUser {
        user: u.user,
        password_hash,
        roles: u.roles,
        grant: u.grant,
        revoke: u.revoke,
    })
}

async fn change(ctx: &Rc<ShardCtx>, cmd: AuthCommand) -> AuthOutcome {
    let reply = propose(ctx, |reply| Proposal::Auth { cmd, reply }).await;
    match reply.auth {
        Some(outcome) => outcome,
        None => Err(http_err(500, "etcdserver: request timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::User;

    fn state(hash: &str, version: u64) -> AuthState {
        let mut s = AuthState {
            enabled: true,
            credentials_version: version,
            ..Default::default()
        };
        s.users.insert(
            "u".into(),
            User {
                user: "u".into(),
                password_hash: hash.into(),
                roles: None,
            },
        );
        s
    }

    /// What bcrypt verified is remembered (under a keyed hash, no password); a new credentials
    /// version empties the cache, so a changed password is checked against the new hash.
    #[test]
    fn credential_cache() {
        let mut c = CredentialCache::new();
        let s1 = state("h1", 1);
        assert_eq!(c.lookup(&s1, "u", "p"), Err("h1".to_string()));
        assert_eq!(c.lookup(&s1, "nobody", "p"), Ok(false));
        c.remember(1, "u", "p");
        assert_eq!(c.lookup(&s1, "u", "p"), Ok(true));
        assert_eq!(c.lookup(&s1, "u", "bad"), Err("h1".to_string()));
        assert!(c.verified.values().all(|u| u == "u"));
        let s2 = state("h2", 2);
        assert_eq!(c.lookup(&s2, "u", "p"), Err("h2".to_string()));
        // A verification made under the old version is not remembered under the new one.
        c.remember(1, "u", "p");
        assert_eq!(c.lookup(&s2, "u", "p"), Err("h2".to_string()));
        let mut gone = s2.clone();
        gone.users.clear();
        assert_eq!(c.lookup(&gone, "u", "p"), Ok(false));
    }
}
