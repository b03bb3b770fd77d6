//! The differential test: every case in `tests/data/diff/*.txt` (format documented at the top of
//! `tests/data/diff/00-keys.txt`) runs against the reference etcd and against ringd, and the
//! normalized answers must be identical.
//!
//! Environment:
//! - `DIFF_TARGET=etcd`: compare etcd against a second etcd (self-check of the normalization).
//! - `DIFF_CASE=a,b`: run only the named cases.
//! - `DIFF_SHOW=1`: print every answer of the reference side (for writing cases).
//! - `DIFF_RINGD_ARGS="--shards 3"`: extra ringd flags (default `--shards 2`).
//! - `RINGD_DIFF_SKIP=1`: pass (skipped) when etcd is not installed; otherwise that fails.
//!
//! Both targets run in parallel, each on one server, the cases in sequence. Before a case the
//! harness reads the current `X-Etcd-Index` (the case's base `i`); after it, it deletes every
//! visible top-level node, so cases start from an empty tree and leave no pending TTLs.

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{Kind, Response, Server, Stream};

const CASE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/diff");
/// How long a watch start waits for the response head (etcd flushes it at registration).
const WATCH_HEAD_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an `await` waits for a long poll's body.
const AWAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an `await` of a stream waits for each further event.
const STREAM_EVENT_TIMEOUT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Case files
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct Opts {
    /// Compare the body's shape (keys and value types) instead of its values.
    shape: bool,
    /// In shape mode, fields whose values are still compared.
    keep: Vec<String>,
    /// Do not compare the body at all.
    nobody: bool,
}

#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    body: Option<String>,
    /// Extra headers; an empty value removes a default header (Content-Type).
    headers: Vec<(String, String)>,
    opts: Opts,
}

#[derive(Clone, Debug)]
enum StepKind {
    Plain(Request),
    Watch {
        name: String,
        req: Request,
    },
    Stream {
        name: String,
        events: usize,
        req: Request,
    },
    Await {
        name: String,
    },
    Repeat {
        count: usize,
        req: Request,
    },
}

#[derive(Clone, Debug)]
struct Step {
    line: usize,
    source: String,
    kind: StepKind,
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    file: String,
    line: usize,
    steps: Vec<Step>,
    expect_differ: Option<String>,
}

fn parse_files(dir: &Path) -> Vec<Case> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {dir:?}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        cases.extend(parse_cases(&name, &text).unwrap_or_else(|e| panic!("{e}")));
    }
    let mut seen = std::collections::HashSet::new();
    for c in &cases {
        assert!(
            seen.insert(c.name.clone()),
            "duplicate case name {} ({}:{})",
            c.name,
            c.file,
            c.line
        );
    }
    cases
}

fn parse_cases(file: &str, text: &str) -> Result<Vec<Case>, String> {
    let mut cases: Vec<Case> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let at = |msg: String| format!("{file}:{line_no}: {msg}");
        let line = raw.trim_end();
        if let Some(name) = line.strip_prefix("===") {
            let name = name.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(at(format!("bad case name {name:?}")));
            }
            cases.push(Case {
                name: name.to_string(),
                file: file.to_string(),
                line: line_no,
                steps: Vec::new(),
                expect_differ: None,
            });
            continue;
        }
        let trimmed = line.trim_start();
        if let Some(reason) = trimmed.strip_prefix("# expect-differ:") {
            let case = cases
                .last_mut()
                .ok_or_else(|| at("expect-differ outside a case".into()))?;
            case.expect_differ = Some(reason.trim().to_string());
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let case = cases
            .last_mut()
            .ok_or_else(|| at("request before the first === case".into()))?;
        if line.starts_with(char::is_whitespace) {
            // A header of the previous request.
            let (n, v) = trimmed
                .split_once(':')
                .ok_or_else(|| at("expected `Header: value`".into()))?;
            let req = case.steps.last_mut().and_then(|s| match &mut s.kind {
                StepKind::Plain(r) | StepKind::Repeat { req: r, .. } => Some(r),
                StepKind::Watch { req, .. } | StepKind::Stream { req, .. } => Some(req),
                StepKind::Await { .. } => None,
            });
            let req = req.ok_or_else(|| at("header line without a request".into()))?;
            req.headers
                .push((n.trim().to_string(), v.trim().to_string()));
            continue;
        }
        let kind = parse_step(trimmed).map_err(at)?;
        if let StepKind::Await { name } = &kind {
            let started = case.steps.iter().any(|s| {
                matches!(&s.kind, StepKind::Watch { name: n, .. } | StepKind::Stream { name: n, .. } if n == name)
            });
            if !started {
                return Err(at(format!("await of unknown watch {name:?}")));
            }
        }
        case.steps.push(Step {
            line: line_no,
            source: trimmed.to_string(),
            kind,
        });
    }
    for c in &cases {
        if c.steps.is_empty() {
            return Err(format!("{file}:{}: case {} has no steps", c.line, c.name));
        }
    }
    Ok(cases)
}

/// Splits off the first space-separated word.
fn word(s: &str) -> (&str, &str) {
    match s.split_once(' ') {
        Some((w, rest)) => (w, rest.trim_start()),
        None => (s, ""),
    }
}

fn parse_step(line: &str) -> Result<StepKind, String> {
    let (first, rest) = word(line);
    match first {
        "await" => {
            let (name, extra) = word(rest);
            if name.is_empty() || !extra.is_empty() {
                return Err("expected `await NAME`".into());
            }
            Ok(StepKind::Await {
                name: name.to_string(),
            })
        }
        "watch" => {
            let (name, rest) = word(rest);
            Ok(StepKind::Watch {
                name: name.to_string(),
                req: parse_request(rest)?,
            })
        }
        "stream" => {
            let (name, rest) = word(rest);
            let (n, rest) = word(rest);
            let events = n.parse().map_err(|_| format!("bad event count {n:?}"))?;
            Ok(StepKind::Stream {
                name: name.to_string(),
                events,
                req: parse_request(rest)?,
            })
        }
        "repeat" => {
            let (n, rest) = word(rest);
            let count = n.parse().map_err(|_| format!("bad repeat count {n:?}"))?;
            Ok(StepKind::Repeat {
                count,
                req: parse_request(rest)?,
            })
        }
        _ => Ok(StepKind::Plain(parse_request(line)?)),
    }
}

/// `[shape] [keep=a,b] [nobody] METHOD PATH [BODY]`
fn parse_request(mut s: &str) -> Result<Request, String> {
    let mut opts = Opts::default();
    loop {
        let (w, rest) = word(s);
        if w.is_empty() {
            return Err("missing METHOD PATH".into());
        }
        if w.chars().all(|c| c.is_ascii_uppercase()) {
            break;
        }
        match w {
            "shape" => opts.shape = true,
            "nobody" => opts.nobody = true,
            _ if w.starts_with("keep=") => {
                opts.keep = w["keep=".len()..].split(',').map(String::from).collect()
            }
            _ => return Err(format!("unknown modifier or method {w:?}")),
        }
        s = rest;
    }
    let (method, rest) = word(s);
    let (path, _) = word(rest);
    if !path.starts_with('/') {
        return Err(format!("path must start with '/': {path:?}"));
    }
    // The body is the rest of the line after exactly one space, verbatim.
    let body = s[method.len() + 1..]
        .trim_start()
        .strip_prefix(path)
        .and_then(|b| b.strip_prefix(' '))
        .map(String::from);
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        body,
        headers: Vec::new(),
        opts,
    })
}

// ---------------------------------------------------------------------------------------------
// Targets and templates
// ---------------------------------------------------------------------------------------------

/// Per-server facts that differ between servers and are replaced before comparing.
#[derive(Clone, Debug, Default)]
struct Subs {
    client_port: u16,
    peer_port: u16,
    member_id: Option<String>,
    cluster_id: Option<String>,
}

/// Go's `%x` of a uint64: lowercase hex, no zero padding.
fn is_go_hex_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && (s == "0" || !s.starts_with('0'))
}

fn learn_subs(server: &Server) -> Subs {
    let mut subs = Subs {
        client_port: server.client_port(),
        peer_port: server.peer_port(),
        ..Subs::default()
    };
    let addr = server.addr();
    if let Ok(r) =
        support::request_timeout(&addr, "GET", "/v2/members", &[], b"", support::IO_TIMEOUT)
    {
        let id = serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v["members"][0]["id"].as_str().map(String::from));
        subs.member_id = id.filter(|id| is_go_hex_id(id));
    }
    if let Ok(r) =
        support::request_timeout(&addr, "GET", "/v2/keys/", &[], b"", support::IO_TIMEOUT)
    {
        subs.cluster_id = r
            .header("x-etcd-cluster-id")
            .filter(|id| is_go_hex_id(id))
            .map(String::from);
    }
    subs
}

struct Ctx<'a> {
    addr: String,
    subs: &'a Subs,
    base: u64,
}

/// Expands `{i}`, `{i+N}`, `{i-N}` (indexes relative to the case's base), `{k+N}` (the same as
/// an in-order key name, `%020d`), `{n}` (repeat counter), `{client_url}`, `{peer_url}`,
/// `{member_id}`. Other braces are left alone (JSON bodies).
fn expand(s: &str, ctx: &Ctx, n: usize) -> String {
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
            "client_url" => Some(format!("http://127.0.0.1:{}", ctx.subs.client_port)),
            "peer_url" => Some(format!("http://127.0.0.1:{}", ctx.subs.peer_port)),
            "member_id" => Some(
                ctx.subs
                    .member_id
                    .clone()
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

// ---------------------------------------------------------------------------------------------
// Normalization
// ---------------------------------------------------------------------------------------------

/// What the normalizer needs to know about the request.
struct NormCtx<'a> {
    subs: &'a Subs,
    base: u64,
    sorted: bool,
    prev_index: bool,
    opts: &'a Opts,
}

fn rel(v: u64, base: u64) -> String {
    if v == 0 {
        "0".to_string()
    } else if v >= base {
        format!("i+{}", v - base)
    } else {
        format!("i-{}", base - v)
    }
}

/// Go's ParseBool truth values.
fn go_true(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

/// The first value of `name` in the query, then (for form PUT/POST) in the body.
fn param(req: &Request, path: &str, body: Option<&str>, name: &str) -> Option<String> {
    let find = |s: &str| {
        s.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| v.to_string())
        })
    };
    // The body is a form when the case sends the default Content-Type or a form one.
    let form = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .all(|(_, v)| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    body.filter(|_| form && (req.method == "PUT" || req.method == "POST"))
        .and_then(find)
        .or_else(|| path.split_once('?').and_then(|(_, q)| find(q)))
}

/// Replaces every run of exactly 20 digits (an in-order key name) by `<i+K>`.
fn norm_inorder(s: &str, base: u64) -> String {
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
fn norm_numbers(s: &str, base: u64) -> String {
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

/// Replaces the server's own ports in a string.
fn norm_ports(s: &str, subs: &Subs) -> String {
    s.replace(
        &format!("127.0.0.1:{}", subs.client_port),
        "127.0.0.1:<client-port>",
    )
    .replace(
        &format!("127.0.0.1:{}", subs.peer_port),
        "127.0.0.1:<peer-port>",
    )
}

fn norm_id(s: &str, subs: &Subs) -> Option<&'static str> {
    if subs.member_id.as_deref() == Some(s) {
        Some("<member-id>")
    } else if subs.cluster_id.as_deref() == Some(s) {
        Some("<cluster-id>")
    } else {
        None
    }
}

/// Go's RFC3339Nano in UTC: `2006-01-02T15:04:05.999999999Z`, trailing zeros trimmed.
fn is_go_rfc3339nano_utc(s: &str) -> bool {
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

fn norm_json(v: &mut Value, ctx: &NormCtx, error_code: Option<u64>) {
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
                    ("cause", Value::String(s)) => {
                        let mut s = norm_inorder(s, ctx.base);
                        if code == Some(401) {
                            s = norm_numbers(&s, ctx.base);
                        } else if code == Some(101) && ctx.prev_index {
                            // The prevIndex mismatch is the last bracket: "[1 != 7]".
                            if let Some(open) = s.rfind('[') {
                                s = format!("{}{}", &s[..open], norm_numbers(&s[open..], ctx.base));
                            }
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
        }
        Value::Array(items) => items.iter_mut().for_each(|i| norm_json(i, ctx, error_code)),
        Value::String(s) => {
            *v = Value::String(match norm_id(s, ctx.subs) {
                Some(id) => id.to_string(),
                None => norm_ports(&norm_inorder(s, ctx.base), ctx.subs),
            });
        }
        _ => {}
    }
}

/// Replaces values by their types, except the fields named in `keep`.
fn shape(v: &Value, keep: &[String]) -> Value {
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
fn is_compact_json(s: &str) -> bool {
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
fn render_body(out: &mut String, body: &[u8], ctx: &NormCtx) {
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
            let _ = writeln!(out, "body: text {:?}", norm_ports(&text, ctx.subs));
        }
    }
}

/// The headers that matter, in a fixed order.
const COMPARED_HEADERS: &[&str] = &[
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

fn render_head(out: &mut String, r: &Response, ctx: &NormCtx) {
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
                    Some(id) => id.to_string(),
                    None => format!("<unexpected: {v}>"),
                },
                "location" => norm_ports(&norm_inorder(v, ctx.base), ctx.subs),
                _ => v.to_string(),
            };
            let _ = writeln!(out, "{name}: {v}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------------------

struct Answer {
    step_line: usize,
    source: String,
    text: String,
}

enum Pending {
    Watch {
        stream: Stream,
        head_early: bool,
        req: Request,
        path: String,
        body: Option<String>,
    },
    Stream {
        stream: Stream,
        head_early: bool,
        events: usize,
        req: Request,
        path: String,
    },
    Failed(String),
}

fn build_headers(req: &Request, ctx: &Ctx) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    let explicit_ct = req
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    if req.body.is_some() && !explicit_ct {
        headers.push((
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        ));
    }
    for (n, v) in &req.headers {
        if !v.is_empty() {
            headers.push((n.clone(), expand(v, ctx, 0)));
        }
    }
    headers
}

fn norm_ctx<'a>(req: &'a Request, path: &str, body: Option<&str>, ctx: &'a Ctx) -> NormCtx<'a> {
    let prev_index = param(req, path, body, "prevIndex").is_some_and(|v| !v.is_empty() && v != "0");
    let sorted = param(req, path, None, "sorted").is_some_and(|v| go_true(&v));
    NormCtx {
        subs: ctx.subs,
        base: ctx.base,
        sorted,
        prev_index,
        opts: &req.opts,
    }
}

fn send(
    req: &Request,
    ctx: &Ctx,
    n: usize,
    timeout: Duration,
) -> (String, Option<String>, Result<Stream, String>) {
    let path = expand(&req.path, ctx, n);
    let body = req.body.as_ref().map(|b| expand(b, ctx, n));
    let headers = build_headers(req, ctx);
    let hdrs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let stream = Stream::send(
        &ctx.addr,
        &req.method,
        &path,
        &hdrs,
        body.as_deref().unwrap_or("").as_bytes(),
        timeout,
    );
    (path, body, stream)
}

fn run_plain(
    req: &Request,
    ctx: &Ctx,
    n: usize,
) -> Result<(Response, String, Option<String>), String> {
    let (path, body, stream) = send(req, ctx, n, support::IO_TIMEOUT);
    let mut stream = stream?;
    stream.read_head()?;
    stream.read_all()?;
    Ok((stream.into_response(), path, body))
}

fn start_watch(req: &Request, ctx: &Ctx) -> (Result<Stream, String>, bool, String, Option<String>) {
    let (path, body, stream) = send(req, ctx, 0, support::IO_TIMEOUT);
    let Ok(mut stream) = stream else {
        return (stream, false, path, body);
    };
    stream.set_timeout(WATCH_HEAD_TIMEOUT);
    let head_early = match stream.read_head() {
        Ok(()) => true,
        Err(e) if e == "timeout" => false,
        Err(e) => return (Err(e), false, path, body),
    };
    (Ok(stream), head_early, path, body)
}

fn finish_head(stream: &mut Stream, head_early: bool) -> Result<(), String> {
    if !head_early {
        stream.set_timeout(AWAIT_TIMEOUT);
        stream.read_head()?;
    }
    Ok(())
}

fn head_note(head_early: bool) -> &'static str {
    if head_early {
        "head sent at once"
    } else {
        "head NOT sent before the event"
    }
}

fn run_case(server: &Server, subs: &Subs, case: &Case) -> Vec<Answer> {
    let addr = server.addr();
    let base =
        match support::request_timeout(&addr, "GET", "/v2/keys/", &[], b"", support::IO_TIMEOUT) {
            Ok(r) => r
                .header("x-etcd-index")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            Err(_) => 0,
        };
    let ctx = Ctx { addr, subs, base };
    let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
    let mut answers = Vec::new();
    for step in &case.steps {
        let mut out = String::new();
        match &step.kind {
            StepKind::Plain(req) => match run_plain(req, &ctx, 0) {
                Ok((r, path, body)) => {
                    let nctx = norm_ctx(req, &path, body.as_deref(), &ctx);
                    render_head(&mut out, &r, &nctx);
                    render_body(&mut out, &r.body, &nctx);
                }
                Err(e) => {
                    let _ = writeln!(out, "error: {e}");
                }
            },
            StepKind::Repeat { count, req } => {
                let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
                for n in 0..*count {
                    let key = match run_plain(req, &ctx, n) {
                        Ok((r, _, _)) => format!("HTTP {}", r.status),
                        Err(e) => format!("error: {e}"),
                    };
                    *statuses.entry(key).or_default() += 1;
                }
                for (k, v) in statuses {
                    let _ = writeln!(out, "{k}: {v} times");
                }
            }
            StepKind::Watch { name, req } => {
                let (stream, head_early, path, body) = start_watch(req, &ctx);
                let p = match stream {
                    Ok(stream) => Pending::Watch {
                        stream,
                        head_early,
                        req: req.clone(),
                        path,
                        body,
                    },
                    Err(e) => Pending::Failed(e),
                };
                let _ = writeln!(out, "watch started");
                pending.insert(name.clone(), p);
            }
            StepKind::Stream { name, events, req } => {
                let (stream, head_early, path, _) = start_watch(req, &ctx);
                let p = match stream {
                    Ok(stream) => Pending::Stream {
                        stream,
                        head_early,
                        events: *events,
                        req: req.clone(),
                        path,
                    },
                    Err(e) => Pending::Failed(e),
                };
                let _ = writeln!(out, "stream started");
                pending.insert(name.clone(), p);
            }
            StepKind::Await { name } => match pending.remove(name) {
                None => {
                    let _ = writeln!(out, "error: watch {name} already awaited");
                }
                Some(Pending::Failed(e)) => {
                    let _ = writeln!(out, "error: {e}");
                }
                Some(Pending::Watch {
                    mut stream,
                    head_early,
                    req,
                    path,
                    body,
                }) => {
                    let _ = writeln!(out, "{}", head_note(head_early));
                    let nctx = norm_ctx(&req, &path, body.as_deref(), &ctx);
                    let result = finish_head(&mut stream, head_early).and_then(|()| {
                        stream.set_timeout(AWAIT_TIMEOUT);
                        stream.read_all()
                    });
                    render_head(&mut out, stream.response(), &nctx);
                    match result {
                        Ok(()) => render_body(&mut out, &stream.response().body, &nctx),
                        Err(e) => {
                            let _ = writeln!(out, "error: {e}");
                        }
                    }
                }
                Some(Pending::Stream {
                    mut stream,
                    head_early,
                    events,
                    req,
                    path,
                }) => {
                    let _ = writeln!(out, "{}", head_note(head_early));
                    let nctx = norm_ctx(&req, &path, None, &ctx);
                    match finish_head(&mut stream, head_early) {
                        Ok(()) => {
                            render_head(&mut out, stream.response(), &nctx);
                            await_stream(&mut out, &mut stream, events, &nctx);
                        }
                        Err(e) => {
                            let _ = writeln!(out, "error: {e}");
                        }
                    }
                }
            },
        }
        answers.push(Answer {
            step_line: step.line,
            source: step.source.clone(),
            text: out,
        });
    }
    drop(pending);
    cleanup(&ctx.addr);
    answers
}

fn await_stream(out: &mut String, stream: &mut Stream, events: usize, nctx: &NormCtx) {
    let deadline = Instant::now() + AWAIT_TIMEOUT;
    for i in 0..events {
        // The first event may take a while (TTL expiry); later ones come with it or soon.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        stream.set_timeout(if i == 0 {
            left
        } else {
            STREAM_EVENT_TIMEOUT.min(left)
        });
        match stream.next_line() {
            Ok(Some(line)) => {
                let _ = writeln!(out, "event {}:", i + 1);
                render_body(out, &line, nctx);
            }
            Ok(None) => {
                let _ = writeln!(out, "stream ended after {i} events");
                return;
            }
            Err(e) => {
                let _ = writeln!(out, "{e} after {i} events");
                return;
            }
        }
    }
}

/// Deletes every visible top-level node.
fn cleanup(addr: &str) {
    let Ok(r) = support::request_timeout(addr, "GET", "/v2/keys/", &[], b"", support::IO_TIMEOUT)
    else {
        return;
    };
    let Ok(v) = serde_json::from_slice::<Value>(&r.body) else {
        return;
    };
    for node in v["node"]["nodes"].as_array().into_iter().flatten() {
        if let Some(key) = node["key"].as_str() {
            let path = format!("/v2/keys{key}?recursive=true");
            let _ = support::request_timeout(addr, "DELETE", &path, &[], b"", support::IO_TIMEOUT);
        }
    }
}

/// Starts a server of `kind` and moves its index off 0: a fresh ringd starts at index 0, where
/// an error's `"index":0` (the current index) could not be told from a parse error's
/// `"index":0` once normalized.
fn start_server(kind: Kind, extra: &[&str]) -> (Server, Subs) {
    let server = Server::of(kind, extra);
    let addr = server.addr();
    let put = support::request_timeout(
        &addr,
        "PUT",
        "/v2/keys/diff-warm-up",
        &[support::FORM],
        b"value=1",
        support::IO_TIMEOUT,
    );
    assert!(
        put.is_ok_and(|r| r.status < 300),
        "warm-up write failed on {}",
        kind.name()
    );
    cleanup(&addr);
    let subs = learn_subs(&server);
    (server, subs)
}

/// Runs all cases on one server of `kind`, restarting it if it dies.
fn run_all(kind: Kind, extra: &[String], cases: &[Case]) -> Vec<Vec<Answer>> {
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (mut server, mut subs) = start_server(kind, &extra);
    let mut results = Vec::new();
    for case in cases {
        if !server.is_running() {
            eprintln!(
                "{} died before case {}; log tail:\n{}\nrestarting it",
                kind.name(),
                case.name,
                server.log_tail()
            );
            (server, subs) = start_server(kind, &extra);
        }
        results.push(run_case(&server, &subs, case));
    }
    results
}

// ---------------------------------------------------------------------------------------------
// Comparing
// ---------------------------------------------------------------------------------------------

/// Lines equal, or equal up to a `"~N"` ttl within ±1.
fn lines_match(a: &str, b: &str) -> bool {
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

fn answers_match(a: &str, b: &str) -> bool {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    la.len() == lb.len() && la.iter().zip(&lb).all(|(x, y)| lines_match(x, y))
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

#[test]
fn diff_against_etcd() {
    if !support::etcd_available() {
        if env_flag("RINGD_DIFF_SKIP") {
            eprintln!("etcd is not installed: differential test SKIPPED (RINGD_DIFF_SKIP is set)");
            return;
        }
        panic!(
            "the differential test needs the reference etcd (`etcd` on PATH or $ETCD_BIN): \
             apt-get install -y etcd-server, or set RINGD_DIFF_SKIP=1 to skip"
        );
    }
    let mut cases = parse_files(Path::new(CASE_DIR));
    if let Ok(only) = std::env::var("DIFF_CASE") {
        let names: Vec<&str> = only
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        for n in &names {
            assert!(
                cases.iter().any(|c| c.name == *n),
                "DIFF_CASE: no case named {n:?}"
            );
        }
        cases.retain(|c| names.contains(&c.name.as_str()));
    }
    let other = match std::env::var("DIFF_TARGET").as_deref() {
        Ok("etcd") => Kind::Etcd,
        Ok("ringd") | Err(_) => Kind::Ringd,
        Ok(t) => panic!("DIFF_TARGET must be etcd or ringd, not {t:?}"),
    };
    // Two client shards by default, so requests of one case land on different shards (writes,
    // reads and watches crossing shards), whatever the machine's core count.
    let extra: Vec<String> = std::env::var("DIFF_RINGD_ARGS")
        .unwrap_or_else(|_| "--shards 2".to_string())
        .split_whitespace()
        .map(String::from)
        .collect();
    let other_name = if other == Kind::Etcd {
        "etcd#2"
    } else {
        "ringd"
    };
    let started = Instant::now();
    let (reference, target) = std::thread::scope(|s| {
        let r = s.spawn(|| run_all(Kind::Etcd, &[], &cases));
        let t = s.spawn(|| run_all(other, &extra, &cases));
        (
            r.join().expect("etcd runner panicked"),
            t.join().expect("target runner panicked"),
        )
    });
    let show = env_flag("DIFF_SHOW");
    let (mut identical, mut differ, mut expected) = (0, 0, 0);
    let mut report = String::new();
    for ((case, ra), ta) in cases.iter().zip(&reference).zip(&target) {
        if show {
            let _ = writeln!(report, "=== {} ({}:{})", case.name, case.file, case.line);
            for a in ra {
                let _ = writeln!(report, "> {}\n{}", a.source, a.text);
            }
        }
        let same = ra.len() == ta.len()
            && ra
                .iter()
                .zip(ta)
                .all(|(a, b)| answers_match(&a.text, &b.text));
        if same {
            identical += 1;
            if let Some(reason) = &case.expect_differ {
                let _ = writeln!(
                    report,
                    "note: case {} is marked expect-differ ({reason}) but is identical",
                    case.name
                );
            }
            continue;
        }
        match &case.expect_differ {
            Some(reason) => {
                expected += 1;
                let _ = writeln!(report, "\n=== {} differs as expected: {reason}", case.name);
            }
            None => {
                differ += 1;
                let _ = writeln!(
                    report,
                    "\n=== DIFFERS: {} ({}:{})",
                    case.name, case.file, case.line
                );
            }
        }
        for (a, b) in ra.iter().zip(ta) {
            if answers_match(&a.text, &b.text) {
                continue;
            }
            let _ = writeln!(
                report,
                "--- step {}:{}: {}",
                case.file, a.step_line, a.source
            );
            let _ = writeln!(report, "etcd answer:\n{}", indent(&a.text));
            let _ = writeln!(report, "{other_name} answer:\n{}", indent(&b.text));
            let _ = writeln!(
                report,
                "diff (- etcd, + {other_name}):\n{}",
                indent(&support::line_diff(&a.text, &b.text))
            );
        }
    }
    let _ = writeln!(
        report,
        "\n{} cases: {identical} identical, {} differ ({differ} unexpected, {expected} expected) \
         [etcd vs {other_name}, {:.1}s]",
        cases.len(),
        differ + expected,
        started.elapsed().as_secs_f64()
    );
    eprintln!("{report}");
    assert_eq!(
        differ, 0,
        "{differ} cases differ between etcd and {other_name}; see above"
    );
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

#[test]
fn case_format_parses() {
    let cases = parse_cases(
        "inline",
        "# c\n=== a\n# expect-differ: why\nPUT /v2/keys/x value=1\n  Content-Type: text/plain\n\
         watch w GET /v2/keys/x?wait=true\nshape keep=a,b GET /v\nawait w\nrepeat 3 PUT /v2/keys/y\n",
    )
    .unwrap();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].expect_differ.as_deref(), Some("why"));
    assert_eq!(cases[0].steps.len(), 5);
    match &cases[0].steps[0].kind {
        StepKind::Plain(r) => {
            assert_eq!(r.body.as_deref(), Some("value=1"));
            assert_eq!(
                r.headers,
                vec![("Content-Type".to_string(), "text/plain".to_string())]
            );
        }
        k => panic!("{k:?}"),
    }
    let subs = Subs {
        client_port: 1,
        peer_port: 2,
        member_id: Some("abc".into()),
        cluster_id: None,
    };
    let ctx = Ctx {
        addr: String::new(),
        subs: &subs,
        base: 10,
    };
    assert_eq!(
        expand(
            "{i+2} {k-1} {n} {\"a\":1} {member_id} {\"u\":[\"{peer_url}\"]}",
            &ctx,
            7
        ),
        "12 00000000000000000009 7 {\"a\":1} abc {\"u\":[\"http://127.0.0.1:2\"]}"
    );
    assert!(is_go_rfc3339nano_utc("2026-11-25T00:14:24.0725Z"));
    assert!(!is_go_rfc3339nano_utc("2026-11-25T00:14:24.07250Z"));
    assert!(!is_go_rfc3339nano_utc("2026-11-25T00:14:24+00:00"));
    assert!(is_go_hex_id("48276a8f75b6a87") && !is_go_hex_id("048276a8f75b6a87"));
    assert!(lines_match("  \"ttl\": \"~5\",", "  \"ttl\": \"~4\","));
    assert!(!lines_match("  \"ttl\": \"~5\",", "  \"ttl\": \"~3\","));
    assert_eq!(norm_inorder("/q/00000000000000000012", 10), "/q/<i+2>");
    assert_eq!(norm_numbers("[1 != 12]", 10), "[i-9 != i+2]");
}
