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
//! Two tests: each target on one server (`diff_against_etcd`), and each as a 3-member cluster
//! whose follower receives every request (`diff_against_a_3_member_etcd_through_a_follower`):
//! writes are forwarded to the leader and must answer as on one member. In a cluster, ids,
//! names and addresses are normalized by the member's role (the follower itself, the leader,
//! the other member); `support::diff` has the details.
//!
//! Both targets run in parallel, the cases in sequence. Before a case the harness reads the
//! current `X-Etcd-Index` (the case's base `i`); after it, it deletes every visible top-level
//! node, so cases start from an empty tree and leave no pending TTLs. A cluster is started
//! only once every member has published and the cluster version is decided (both are etcd
//! store writes), so that its index then moves only with the cases' writes.

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};
use support::diff::*;
use support::{Kind, Response, Stream};

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

// ---------------------------------------------------------------------------------------------
// Normalization
// ---------------------------------------------------------------------------------------------

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
    let prev_index = param(req, path, body, "prevIndex").filter(|v| !v.is_empty() && v != "0");
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

fn run_case(addr: String, subs: &Subs, case: &Case) -> Vec<Answer> {
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

/// Runs all cases on `kind` deployed in `topology`, restarting it if a process dies.
fn run_all(kind: Kind, topology: Topology, extra: &[String], cases: &[Case]) -> Vec<Vec<Answer>> {
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (mut servers, mut subs) = Deployment::start(kind, topology, &extra);
    let mut results = Vec::new();
    for case in cases {
        if !servers.is_running() {
            eprintln!(
                "{} died before case {}; log tail:\n{}\nrestarting it",
                kind.name(),
                case.name,
                servers.log_tail()
            );
            (servers, subs) = Deployment::start(kind, topology, &extra);
        }
        if topology != Topology::Single {
            // A leader change between cases changes the members' roles: say so (cases that
            // show roles would differ), and normalize by the new roles.
            let now = learn_subs(&servers.addr());
            if now != subs {
                eprintln!(
                    "{} cluster: members changed before case {}: {subs:?} -> {now:?}",
                    kind.name(),
                    case.name
                );
                subs = now;
            }
        }
        results.push(run_case(servers.addr(), &subs, case));
    }
    results
}

// ---------------------------------------------------------------------------------------------
// Comparing
// ---------------------------------------------------------------------------------------------

#[test]
fn diff_against_etcd() {
    diff(Topology::Single);
}

/// The same cases against a 3-member etcd and a 3-member ringd, each through a follower:
/// writes are forwarded to the leader (etcd forwards the proposal, ringd too, through raft)
/// and must answer exactly as on one member; members and stats show the cluster.
#[test]
fn diff_against_a_3_member_etcd_through_a_follower() {
    diff(Topology::FollowerOf3);
}

fn diff(topology: Topology) {
    if !reference_available() {
        return;
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
    let target = Target::from_env();
    let (other, other_name) = (target.kind, target.name);
    let started = Instant::now();
    let (reference, target) = std::thread::scope(|s| {
        let r = s.spawn(|| run_all(Kind::Etcd, topology, &[], &cases));
        let t = s.spawn(|| run_all(other, topology, &target.extra, &cases));
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
         [etcd vs {other_name}, {topology:?}, {:.1}s]",
        cases.len(),
        differ + expected,
        started.elapsed().as_secs_f64()
    );
    eprintln!("{report}");
    assert_eq!(
        differ, 0,
        "{differ} cases differ between etcd and {other_name} ({topology:?}); see above"
    );
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
        members: vec![MemberSubs {
            role: Role::Target,
            id: "abc".into(),
            name: "m1".into(),
            client_addr: "127.0.0.1:1".into(),
            peer_addr: "127.0.0.1:2".into(),
        }],
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
    assert_eq!(
        norm_prev_index_mismatch("[2 != v] [11 != 12]", "11", 10),
        "[2 != v] [i+1 != i+2]"
    );
    assert_eq!(norm_prev_index_mismatch("[2 != v]", "11", 10), "[2 != v]");
    assert_eq!(
        norm_prev_index_mismatch("[11 != 12]", "11", 10),
        "[i+1 != i+2]"
    );
}

#[test]
fn cluster_members_normalize_by_role() {
    let member = |role, id: &str, name: &str, host: &str| MemberSubs {
        role,
        id: id.into(),
        name: name.into(),
        client_addr: format!("{host}:1"),
        peer_addr: format!("{host}:2"),
    };
    let subs = Subs {
        members: vec![
            member(Role::Target, "abc", "m2", "127.0.0.2"),
            member(Role::Leader, "def", "m1", "127.0.0.1"),
            member(Role::Other, "123", "m3", "127.0.0.3"),
        ],
        cluster_id: Some("c1".into()),
    };
    // A longer port that starts with a member's is another address.
    assert_eq!(
        norm_ports(
            "http://127.0.0.1:1, http://127.0.0.1:12, http://127.0.0.3:2/x",
            &subs
        ),
        "http://<leader-client-addr>, http://127.0.0.1:12, http://<other-peer-addr>/x"
    );
    assert_eq!(norm_id("abc", &subs).as_deref(), Some("<self-id>"));
    assert_eq!(norm_id("c1", &subs).as_deref(), Some("<cluster-id>"));
    assert_eq!(norm_id("m1", &subs), None);
    assert_eq!(norm_name("m1", &subs).as_deref(), Some("<leader-name>"));
    let ctx = Ctx {
        addr: String::new(),
        subs: &subs,
        base: 10,
    };
    assert_eq!(
        expand("{client_url} {peer_url} {member_id}", &ctx, 0),
        "http://127.0.0.2:1 http://127.0.0.2:2 abc"
    );
    let opts = Opts::default();
    let nctx = NormCtx {
        subs: &subs,
        base: 10,
        sorted: false,
        prev_index: None,
        opts: &opts,
    };
    // /v2/machines and members lists come in host and id order: compared sorted by role.
    let mut out = String::new();
    render_body(
        &mut out,
        b"http://127.0.0.1:1, http://127.0.0.2:1, http://127.0.0.3:1",
        &nctx,
    );
    assert_eq!(
        out,
        "body: text \"http://<leader-client-addr>, http://<other-client-addr>, \
         http://<self-client-addr>\"\n"
    );
    let mut out = String::new();
    render_body(
        &mut out,
        br#"{"members":[{"id":"abc","name":"m2"},{"id":"def","name":"m1"}],"leader":"def"}"#,
        &nctx,
    );
    let v: serde_json::Value = serde_json::from_str(out.split_once('\n').unwrap().1).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"leader": "<leader-id>", "members": [
            {"id": "<leader-id>", "name": "<leader-name>"},
            {"id": "<self-id>", "name": "<self-name>"},
        ]})
    );
}
