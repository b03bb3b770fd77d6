//! The differential tests' shared half (tests/diff.rs runs case files, tests/diff_random.rs
//! seeded random sequences): which servers to compare, per-server templates (`{i+N}`,
//! `{k+N}`, ports, ids), and the normalization that makes two servers' answers comparable:
//! indexes relative to a base, in-order names, expirations by format, ttl within ±1, member
//! ids, names and addresses by the member's role (the target, the leader, another member),
//! unsorted listings sorted, and the headers that matter. A target is one server, or a
//! follower of a 3-member cluster ([`Topology`]).

use super::cluster::{unique_token, Cluster};
use super::{Kind, Response, Server};
use serde_json::Value;
use std::fmt::Write as _;

/// The server compared against the reference etcd, from the environment:
/// - `DIFF_TARGET=etcd` compares etcd against a second etcd (the self-check of the
///   normalization), `ringd` (the default) against ringd;
/// - `DIFF_RINGD_ARGS` are extra ringd flags (default `--shards 2`, so that requests land on
///   different shards whatever the machine's core count).
pub struct Target {
    pub kind: Kind,
    /// `etcd#2` or `ringd`, for reports.
    pub name: &'static str,
    pub extra: Vec<String>,
}

impl Target {
    pub fn from_env() -> Target {
        let kind = match std::env::var("DIFF_TARGET").as_deref() {
            Ok("etcd") => Kind::Etcd,
            Ok("ringd") | Err(_) => Kind::Ringd,
            Ok(t) => panic!("DIFF_TARGET must be etcd or ringd, not {t:?}"),
        };
        let extra = std::env::var("DIFF_RINGD_ARGS")
            .unwrap_or_else(|_| "--shards 2".to_string())
            .split_whitespace()
            .map(String::from)
            .collect();
        let name = match kind {
            Kind::Etcd => "etcd#2",
            Kind::Ringd => "ringd",
        };
        Target { kind, name, extra }
    }
}

/// Whether the reference etcd is installed. Without it a differential test fails, unless
/// `RINGD_DIFF_SKIP=1` lets it pass as skipped (this returns false then).
pub fn reference_available() -> bool {
    if super::etcd_available() {
        return true;
    }
    if env_flag("RINGD_DIFF_SKIP") {
        eprintln!("etcd is not installed: differential test SKIPPED (RINGD_DIFF_SKIP is set)");
        return false;
    }
    panic!(
        "the differential test needs the reference etcd (`etcd` on PATH or $ETCD_BIN): \
         apt-get install -y etcd-server, or set RINGD_DIFF_SKIP=1 to skip"
    );
}

#[derive(Clone, Debug, Default)]
pub struct Opts {
    /// Compare the body's shape (keys and value types) instead of its values.
    pub shape: bool,
    /// In shape mode, fields whose values are still compared.
    pub keep: Vec<String>,
    /// Do not compare the body at all.
    pub nobody: bool,
}

/// A member's part in the comparison; its id, name and addresses are normalized by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The member the requests go to (a follower, in a cluster).
    Target,
    /// The leader, when it is not the target.
    Leader,
    /// Any other member.
    Other,
}

impl Role {
    fn placeholder(self, what: &str) -> String {
        let role = match self {
            Role::Target => "self",
            Role::Leader => "leader",
            Role::Other => "other",
        };
        format!("<{role}-{what}>")
    }
}

/// A member's facts that differ between servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSubs {
    pub role: Role,
    /// Go's `%x` of the member id.
    pub id: String,
    pub name: String,
    /// `host:port` of its first client URL and of its first (advertised) peer URL.
    pub client_addr: String,
    pub peer_addr: String,
}

/// Per-server facts that differ between servers and are replaced before comparing: the
/// members (the target first) and the cluster id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subs {
    pub members: Vec<MemberSubs>,
    pub cluster_id: Option<String>,
}

impl Subs {
    /// The member the requests go to.
    pub fn target(&self) -> Option<&MemberSubs> {
        self.members.iter().find(|m| m.role == Role::Target)
    }
}

/// Go's `%x` of a uint64: lowercase hex, no zero padding.
pub fn is_go_hex_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && (s == "0" || !s.starts_with('0'))
}

/// `host:port` of a URL `scheme://host:port[/...]`.
fn url_addr(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or("").to_string()
}

/// Learns the members from `/v2/members` and `/v2/stats/self` of the server at `addr` (the
/// target: `/v2/stats/self` says which member it is and which the leader), and the cluster
/// id from `X-Etcd-Cluster-Id`. Ids that are not Go's `%x` are not learned, so that they show
/// up unnormalized in the answers.
pub fn learn_subs(addr: &str) -> Subs {
    let json = |path: &str| {
        super::request_timeout(addr, "GET", path, &[], b"", super::IO_TIMEOUT)
            .ok()
            .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .unwrap_or(Value::Null)
    };
    let stats = json("/v2/stats/self");
    let members = json("/v2/members");
    let own = stats["id"].as_str().unwrap_or_default();
    let leader = stats["leaderInfo"]["leader"].as_str().unwrap_or_default();
    let first_url = |m: &Value, field: &str| m[field][0].as_str().map(url_addr).unwrap_or_default();
    let mut subs = Subs::default();
    for m in members["members"].as_array().into_iter().flatten() {
        let id = m["id"].as_str().unwrap_or_default();
        let role = if id == own {
            Role::Target
        } else if id == leader {
            Role::Leader
        } else {
            Role::Other
        };
        subs.members.push(MemberSubs {
            role,
            id: if is_go_hex_id(id) {
                id.to_string()
            } else {
                String::new()
            },
            name: m["name"].as_str().unwrap_or_default().to_string(),
            client_addr: first_url(m, "clientURLs"),
            peer_addr: first_url(m, "peerURLs"),
        });
    }
    subs.members.sort_by_key(|m| m.role != Role::Target);
    if let Ok(r) = super::request_timeout(addr, "GET", "/v2/keys/", &[], b"", super::IO_TIMEOUT) {
        subs.cluster_id = r
            .header("x-etcd-cluster-id")
            .filter(|id| is_go_hex_id(id))
            .map(String::from);
    }
    subs
}

pub struct Ctx<'a> {
    pub addr: String,
    pub subs: &'a Subs,
    pub base: u64,
}

/// Expands `{i}`, `{i+N}`, `{i-N}` (indexes relative to the case's base), `{k+N}` (the same as
/// an in-order key name, `%020d`), `{n}` (repeat counter), `{client_url}`, `{peer_url}`,
/// `{member_id}` (those of the target member). Other braces are left alone (JSON bodies).
pub fn expand(s: &str, ctx: &Ctx, n: usize) -> String {
    let target = ctx.subs.target();
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let inner = &after[..close];
        let rel = |t: &str| -> Option<u64> {
            if t.is_empty() {
                return Some(ctx.base);
            }
            if let Some(d) = t.strip_prefix('+') {
                return d.parse::<u64>().ok().map(|d| ctx.base + d);
            }
            t.strip_prefix('-')
                .and_then(|d| d.parse::<u64>().ok())
                .map(|d| ctx.base.saturating_sub(d))
        };
        let value = match inner {
            "n" => Some(n.to_string()),
            "client_url" => target.map(|m| format!("http://{}", m.client_addr)),
            "peer_url" => target.map(|m| format!("http://{}", m.peer_addr)),
            "member_id" => Some(
                target
                    .map(|m| m.id.clone())
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| "unknown".into()),
            ),
            _ if inner.starts_with('i') => rel(&inner[1..]).map(|v| v.to_string()),
            _ if inner.starts_with('k') => rel(&inner[1..]).map(|v| format!("{v:020}")),
            _ => None,
        };
        match value {
            Some(v) => {
                out.push_str(&v);
                rest = &after[close + 1..];
            }
            None => {
                // Not a template (a JSON brace): keep it and scan on after it.
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// What the normalizer needs to know about the request.
pub struct NormCtx<'a> {
    pub subs: &'a Subs,
    pub base: u64,
    pub sorted: bool,
    /// The `prevIndex` sent (not empty, not 0), to find its mismatch in a 101 cause.
    pub prev_index: Option<String>,
    pub opts: &'a Opts,
}

pub fn rel(v: u64, base: u64) -> String {
    if v == 0 {
        "0".to_string()
    } else if v >= base {
        format!("i+{}", v - base)
    } else {
        format!("i-{}", base - v)
    }
}

/// Go's ParseBool truth values.
pub fn go_true(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

/// Replaces every run of exactly 20 digits (an in-order key name) by `<i+K>`.
pub fn norm_inorder(s: &str, base: u64) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let run = &s[start..i];
            match run.parse::<u64>() {
                Ok(v) if run.len() == 20 => out.push_str(&format!("<{}>", rel(v, base))),
                _ => out.push_str(run),
            }
        } else {
            let ch = s[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Replaces every decimal number in `s` by its relative form.
pub fn norm_numbers(s: &str, base: u64) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    for ch in s.chars().chain(std::iter::once('\0')) {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        if !digits.is_empty() {
            match digits.parse::<u64>() {
                Ok(v) => out.push_str(&rel(v, base)),
                Err(_) => out.push_str(&digits),
            }
            digits.clear();
        }
        if ch != '\0' {
            out.push(ch);
        }
    }
    out
}

/// Replaces every occurrence of `addr` that no digit follows (so that `127.0.0.1:2379` is not
/// found in `127.0.0.1:23790`).
fn replace_addr(s: &str, addr: &str, with: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find(addr) {
        let after = &rest[at + addr.len()..];
        out.push_str(&rest[..at]);
        if after.starts_with(|c: char| c.is_ascii_digit()) {
            out.push_str(addr);
        } else {
            out.push_str(with);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Replaces the members' client and peer addresses (`host:port`) by their roles:
/// `<self-client-addr>`, `<leader-peer-addr>`, ...
pub fn norm_ports(s: &str, subs: &Subs) -> String {
    let mut s = s.to_string();
    for m in &subs.members {
        for (addr, what) in [(&m.client_addr, "client-addr"), (&m.peer_addr, "peer-addr")] {
            if !addr.is_empty() {
                s = replace_addr(&s, addr, &m.role.placeholder(what));
            }
        }
    }
    s
}

/// A member id (`<self-id>`, `<leader-id>`, `<other-id>`) or the cluster id (`<cluster-id>`).
pub fn norm_id(s: &str, subs: &Subs) -> Option<String> {
    if let Some(m) = subs.members.iter().find(|m| !m.id.is_empty() && m.id == s) {
        Some(m.role.placeholder("id"))
    } else if subs.cluster_id.as_deref() == Some(s) {
        Some("<cluster-id>".to_string())
    } else {
        None
    }
}

/// A member name (`<self-name>`, ...), in a `name` field.
pub fn norm_name(s: &str, subs: &Subs) -> Option<String> {
    subs.members
        .iter()
        .find(|m| !m.name.is_empty() && m.name == s)
        .map(|m| m.role.placeholder("name"))
}

/// Go's RFC3339Nano in UTC: `2006-01-02T15:04:05.999999999Z`, trailing zeros trimmed.
pub fn is_go_rfc3339nano_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() < 20 || !digits(0..4) || !digits(5..7) || !digits(8..10) || !digits(11..13) {
        return false;
    }
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return false;
    }
    if !digits(14..16) || !digits(17..19) || *b.last().unwrap() != b'Z' {
        return false;
    }
    let frac = &s[19..s.len() - 1];
    if frac.is_empty() {
        return true;
    }
    let Some(f) = frac.strip_prefix('.') else {
        return false;
    };
    !f.is_empty() && f.len() <= 9 && f.bytes().all(|d| d.is_ascii_digit()) && !f.ends_with('0')
}

pub fn norm_json(v: &mut Value, ctx: &NormCtx, error_code: Option<u64>) {
    match v {
        Value::Object(map) => {
            let code = map.get("errorCode").and_then(Value::as_u64).or(error_code);
            for (k, val) in map.iter_mut() {
                match (k.as_str(), &*val) {
                    ("modifiedIndex" | "createdIndex" | "index", Value::Number(n)) => {
                        if let Some(n) = n.as_u64() {
                            *val = Value::String(rel(n, ctx.base));
                        }
                    }
                    ("expiration", Value::String(s)) => {
                        *val = Value::String(if is_go_rfc3339nano_utc(s) {
                            "<expiration>".to_string()
                        } else {
                            format!("<bad expiration format: {s}>")
                        });
                    }
                    ("ttl", Value::Number(n)) => *val = Value::String(format!("~{n}")),
                    ("name", Value::String(s)) if norm_name(s, ctx.subs).is_some() => {
                        *val = Value::String(norm_name(s, ctx.subs).unwrap_or_default());
                    }
                    ("cause", Value::String(s)) => {
                        let mut s = norm_inorder(s, ctx.base);
                        if code == Some(401) {
                            s = norm_numbers(&s, ctx.base);
                        } else if let (Some(101), Some(sent)) = (code, &ctx.prev_index) {
                            s = norm_prev_index_mismatch(&s, sent, ctx.base);
                        }
                        *val = Value::String(s);
                    }
                    _ => norm_json(val, ctx, code),
                }
            }
            if !ctx.sorted {
                if let Some(Value::Array(nodes)) = map.get_mut("nodes") {
                    nodes.sort_by_key(|n| n.get("key").and_then(Value::as_str).map(String::from));
                }
            }
            // Members are listed by id, and ids (from the ports) differ between servers:
            // compare the normalized members in a fixed order.
            if let Some(Value::Array(members)) = map.get_mut("members") {
                members.sort_by_key(Value::to_string);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| norm_json(i, ctx, error_code)),
        Value::String(s) => {
            *v = Value::String(match norm_id(s, ctx.subs) {
                Some(id) => id,
                None => norm_ports(&norm_inorder(s, ctx.base), ctx.subs),
            });
        }
        _ => {}
    }
}

/// In a 101 cause (`[prevValue != value]`, `[prevIndex != modifiedIndex]`, or both), makes
/// the indexes of the prevIndex mismatch relative: the bracket that starts with the sent
/// prevIndex (a value mismatch alone, with a prevIndex that matched, is left as it is).
pub fn norm_prev_index_mismatch(cause: &str, sent: &str, base: u64) -> String {
    let prefix = format!("[{sent} != ");
    match cause.rfind(&prefix) {
        Some(open) => format!("{}{}", &cause[..open], norm_numbers(&cause[open..], base)),
        None => cause.to_string(),
    }
}

/// Replaces values by their types, except the fields named in `keep`.
pub fn shape(v: &Value, keep: &[String]) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, val)| {
                    let val = if keep.contains(k) {
                        val.clone()
                    } else {
                        shape(val, keep)
                    };
                    (k.clone(), val)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|i| shape(i, keep)).collect()),
        Value::String(_) => Value::String("<string>".into()),
        Value::Number(_) => Value::String("<number>".into()),
        Value::Bool(_) => Value::String("<bool>".into()),
        Value::Null => Value::Null,
    }
}

/// Whether `s` is compact JSON: no whitespace outside strings.
pub fn is_compact_json(s: &str) -> bool {
    let mut in_str = false;
    let mut escaped = false;
    for c in s.chars() {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
        } else if c.is_whitespace() {
            return false;
        }
    }
    true
}

/// Renders a body (one JSON document, or text) for comparison.
pub fn render_body(out: &mut String, body: &[u8], ctx: &NormCtx) {
    if ctx.opts.nobody {
        let _ = writeln!(out, "body: (not compared)");
        return;
    }
    if body.is_empty() {
        let _ = writeln!(out, "body: empty");
        return;
    }
    let text = String::from_utf8_lossy(body);
    match serde_json::from_slice::<Value>(body) {
        Ok(mut v) if v.is_object() || v.is_array() => {
            let stripped = text.strip_suffix('\n');
            let layout = match stripped {
                Some(s) if is_compact_json(s) => "compact, newline-terminated",
                Some(_) => "not compact, newline-terminated",
                None if is_compact_json(&text) => "compact, no final newline",
                None => "not compact, no final newline",
            };
            norm_json(&mut v, ctx, None);
            if ctx.opts.shape {
                v = shape(&v, &ctx.opts.keep);
            }
            let _ = writeln!(out, "body: json ({layout})");
            let _ = writeln!(out, "{}", serde_json::to_string_pretty(&v).unwrap());
        }
        _ => {
            let mut text = norm_ports(&norm_inorder(&text, ctx.base), ctx.subs);
            // `/v2/machines` lists the client URLs sorted, so by host, and which host has
            // which role differs between servers: compare the normalized URLs in a fixed order.
            let urls: Vec<&str> = text.split(", ").collect();
            if urls.len() > 1 && urls.iter().all(|u| u.starts_with("http")) {
                let mut urls: Vec<String> = urls.into_iter().map(String::from).collect();
                urls.sort();
                text = urls.join(", ");
            }
            let _ = writeln!(out, "body: text {text:?}");
        }
    }
}

/// The headers that matter, in a fixed order.
pub const COMPARED_HEADERS: &[&str] = &[
    "content-type",
    "x-etcd-index",
    "x-raft-index",
    "x-raft-term",
    "x-etcd-cluster-id",
    "location",
    "allow",
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
];

pub fn render_head(out: &mut String, r: &Response, ctx: &NormCtx) {
    let _ = writeln!(out, "HTTP {}", r.status);
    for &name in COMPARED_HEADERS {
        let values: Vec<&str> = r
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        for v in values {
            let v = match name {
                "x-etcd-index" => match v.parse::<u64>() {
                    Ok(n) => rel(n, ctx.base),
                    Err(_) => format!("<not a number: {v}>"),
                },
                "x-raft-index" | "x-raft-term" => match v.parse::<u64>() {
                    Ok(_) => "<number>".to_string(),
                    Err(_) => format!("<not a number: {v}>"),
                },
                "x-etcd-cluster-id" => match norm_id(v, ctx.subs) {
                    Some(id) => id,
                    None => format!("<unexpected: {v}>"),
                },
                "location" => norm_ports(&norm_inorder(v, ctx.base), ctx.subs),
                _ => v.to_string(),
            };
            let _ = writeln!(out, "{name}: {v}");
        }
    }
}

/// Deletes every visible top-level node.
pub fn cleanup(addr: &str) {
    let Ok(r) = super::request_timeout(addr, "GET", "/v2/keys/", &[], b"", super::IO_TIMEOUT)
    else {
        return;
    };
    let Ok(v) = serde_json::from_slice::<Value>(&r.body) else {
        return;
    };
    for node in v["node"]["nodes"].as_array().into_iter().flatten() {
        if let Some(key) = node["key"].as_str() {
            let path = format!("/v2/keys{key}?recursive=true");
            let _ = super::request_timeout(addr, "DELETE", &path, &[], b"", super::IO_TIMEOUT);
        }
    }
}

/// Starts a server of `kind` and moves its index off 0: a fresh ringd starts at index 0, where
/// an error's `"index":0` (the current index) could not be told from a parse error's
/// `"index":0` once normalized.
pub fn start_server(kind: Kind, extra: &[&str]) -> (Server, Subs) {
    let server = Server::of(kind, extra);
    let subs = warm_up(kind, &server.addr());
    (server, subs)
}

/// Moves the index of the server at `addr` off 0 (one write, then the cleanup) and learns its
/// [`Subs`].
fn warm_up(kind: Kind, addr: &str) -> Subs {
    let put = super::request_timeout(
        addr,
        "PUT",
        "/v2/keys/diff-warm-up",
        &[super::FORM],
        b"value=1",
        super::IO_TIMEOUT,
    );
    assert!(
        put.is_ok_and(|r| r.status < 300),
        "warm-up write failed on {} at {addr}",
        kind.name()
    );
    cleanup(addr);
    learn_subs(addr)
}

/// How the servers under comparison are deployed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One server.
    Single,
    /// A 3-member cluster, the requests sent to a follower (writes are forwarded to the
    /// leader; reads are served from the follower's store).
    FollowerOf3,
}

/// Members in a [`Topology::FollowerOf3`] cluster.
pub const CLUSTER_MEMBERS: usize = 3;

/// The running servers of one kind, and the one the requests go to.
pub enum Deployment {
    Single(Server),
    Cluster { cluster: Cluster, target: usize },
}

impl Deployment {
    /// Starts `kind` in `topology` (`extra` flags apply to ringd only), moves its index off 0
    /// (see [`start_server`]) through the target and learns the target's [`Subs`].
    pub fn start(kind: Kind, topology: Topology, extra: &[&str]) -> (Deployment, Subs) {
        let extra = if kind == Kind::Ringd { extra } else { &[] };
        if topology == Topology::Single {
            let (server, subs) = start_server(kind, extra);
            return (Deployment::Single(server), subs);
        }
        let cluster = Cluster::start_of(kind, CLUSTER_MEMBERS, &unique_token("diff"), extra);
        let target = cluster.wait("a follower", std::time::Duration::from_secs(10), || {
            cluster.follower()
        });
        let deployment = Deployment::Cluster { cluster, target };
        let subs = warm_up(kind, &deployment.addr());
        (deployment, subs)
    }

    /// `host:port` of the target's client URL.
    pub fn addr(&self) -> String {
        match self {
            Deployment::Single(server) => server.addr(),
            Deployment::Cluster { cluster, target } => cluster.members[*target].addr(),
        }
    }

    /// Whether every process still runs.
    pub fn is_running(&mut self) -> bool {
        match self {
            Deployment::Single(server) => server.is_running(),
            Deployment::Cluster { cluster, .. } => {
                cluster.members.iter_mut().all(|m| m.is_running())
            }
        }
    }

    pub fn log_tail(&self) -> String {
        match self {
            Deployment::Single(server) => server.log_tail(),
            Deployment::Cluster { cluster, .. } => cluster.logs(),
        }
    }
}

/// Lines equal, or equal up to a `"~N"` ttl within ±1.
pub fn lines_match(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let (Some(pa), Some(pb)) = (a.find("\"~"), b.find("\"~")) else {
        return false;
    };
    if a[..pa] != b[..pb] {
        return false;
    }
    let num = |s: &str| -> Option<(i64, usize)> {
        let end = s.find('"')?;
        Some((s[..end].parse().ok()?, end))
    };
    let (Some((na, ea)), Some((nb, eb))) = (num(&a[pa + 2..]), num(&b[pb + 2..])) else {
        return false;
    };
    (na - nb).abs() <= 1 && a[pa + 2 + ea..] == b[pb + 2 + eb..]
}

pub fn answers_match(a: &str, b: &str) -> bool {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    la.len() == lb.len() && la.iter().zip(&lb).all(|(x, y)| lines_match(x, y))
}

pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

pub fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}
