//! One short real run of the bundled load generator (`loadgen`) against ringd: `put`, `get` and
//! `watch` with small `--requests` counts and `--json` reports, each checked for zero errors and
//! a positive rate. No timing is asserted; every wait is bounded.
//!
//! With auth enabled and the guest role's permissions revoked, the same workloads run with
//! `--user root:PASSWORD` (basic auth on every request, the preload and the watch setup
//! included); a wrong password is counted as 401 errors and fails the run, without hanging.
//!
//! loadgen is looked up next to the ringd binary (the same target dir; `cargo test --workspace`
//! builds it); if it is missing, it is built with `$CARGO build -p loadgen`.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long ringd may take to answer `GET /version`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one loadgen run may take (it ends by itself well before: `--requests`, `--timeout`).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        if port != 2379 && port != 2380 {
            return port;
        }
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "ringd-loadgen-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A ringd process, killed on drop.
struct Ringd {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for Ringd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `GET /version` on a fresh connection; true on a 200 answer.
fn version_ok(port: u16) -> bool {
    let addr = ([127, 0, 0, 1], port).into();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let req = "GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.take(64 * 1024).read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200")
}

fn start_ringd(data: &Path) -> Ringd {
    let mut last = String::new();
    // a free port can be taken by someone else before ringd binds it: a few attempts
    for attempt in 0..3 {
        let (port, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = data.join(format!("ringd-{attempt}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_ringd"))
            .args([
                "--data-dir",
                data.join(format!("data-{attempt}")).to_str().unwrap(),
            ])
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create ringd log"))
            .spawn()
            .expect("spawn ringd");
        let mut server = Ringd { child, url, log };
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if version_ok(port) {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                last = format!("ringd exited with {status}: {}", read_log(&server.log));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if last.is_empty() {
            last = format!(
                "ringd did not answer GET /version within {START_TIMEOUT:?}: {}",
                read_log(&server.log)
            );
        }
        drop(server);
    }
    panic!("could not start ringd: {last}");
}

fn read_log(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let tail: Vec<&str> = s.lines().rev().take(20).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// The loadgen binary next to ringd's; built with `$CARGO build -p loadgen` if missing.
fn loadgen_binary() -> PathBuf {
    let ringd = PathBuf::from(env!("CARGO_BIN_EXE_ringd"));
    let dir = ringd.parent().expect("ringd binary has a parent dir");
    let bin = dir.join(format!("loadgen{}", std::env::consts::EXE_SUFFIX));
    if bin.is_file() {
        return bin;
    }
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "loadgen"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build -p loadgen");
    assert!(status.success(), "cargo build -p loadgen failed: {status}");
    assert!(
        bin.is_file(),
        "cargo build -p loadgen did not produce {}",
        bin.display()
    );
    bin
}

/// Runs loadgen with `args` plus `--url`, `--json` and `--quiet` to its end (a run past
/// `RUN_TIMEOUT` fails the test); returns its exit status, its output and its JSON report.
fn run_loadgen(
    bin: &Path,
    server: &Ringd,
    dir: &Path,
    name: &str,
    args: &[&str],
) -> (std::process::ExitStatus, String, Option<serde_json::Value>) {
    let json = dir.join(format!("{name}.json"));
    let out = dir.join(format!("{name}.out"));
    let mut child = Command::new(bin)
        .args(args)
        .args(["--url", &server.url, "--quiet", "--json"])
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("create loadgen output"))
        .stderr(Stdio::from(
            std::fs::File::options()
                .append(true)
                .open(&out)
                .expect("open loadgen output"),
        ))
        .spawn()
        .expect("spawn loadgen");
    // loadgen ends by itself (after --requests, or --timeout without progress); this bound only
    // keeps a broken build from hanging the test suite
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for loadgen") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadgen {name} still running after {RUN_TIMEOUT:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(&out).unwrap_or_default();
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    (status, output, report)
}

/// Runs loadgen with `args` plus `--url`, `--json` and `--quiet`; returns the JSON report,
/// which must show a clean run (exit 0, no errors, a positive rate).
fn loadgen(bin: &Path, server: &Ringd, dir: &Path, name: &str, args: &[&str]) -> serde_json::Value {
    let (status, output, report) = run_loadgen(bin, server, dir, name, args);
    assert!(
        status.success(),
        "loadgen {name} ({args:?}) exited with {status}:\n{output}\nringd log:\n{}",
        read_log(&server.log)
    );
    let v =
        report.unwrap_or_else(|| panic!("loadgen {name} wrote no readable JSON report:\n{output}"));
    let text = v.to_string();
    assert_eq!(
        v["errors"], 0,
        "loadgen {name}: errors in the report:\n{text}"
    );
    let rps = v["requests_per_sec"]
        .as_f64()
        .expect("requests_per_sec is a number");
    assert!(rps > 0.0, "loadgen {name}: requests_per_sec {rps}:\n{text}");
    let requests = v["requests"].as_u64().expect("requests is a number");
    assert!(requests > 0, "loadgen {name}: no requests:\n{text}");
    for p in ["p50", "p99", "max"] {
        assert!(
            v["latency_us"][p].is_number(),
            "loadgen {name}: latency_us.{p} missing:\n{text}"
        );
    }
    v
}

#[test]
fn loadgen_put_get_watch_against_ringd() {
    let bin = loadgen_binary();
    let dir = TempDir::new();
    let server = start_ringd(&dir.0);

    let put = loadgen(
        &bin,
        &server,
        &dir.0,
        "put",
        &[
            "put",
            "--requests",
            "300",
            "--connections",
            "4",
            "--keys",
            "100",
        ],
    );
    assert_eq!(put["params"]["workload"], "put", "{put}");

    // preloads its 100 keys first, then reads random ones (each value checked by loadgen)
    let get = loadgen(
        &bin,
        &server,
        &dir.0,
        "get",
        &[
            "get",
            "--requests",
            "500",
            "--connections",
            "4",
            "--keys",
            "100",
        ],
    );
    assert_eq!(get["params"]["workload"], "get", "{get}");

    // 4 long-poll watchers of one prefix, one writer; requests are delivered events
    let watch = loadgen(
        &bin,
        &server,
        &dir.0,
        "watch",
        &[
            "watch",
            "--requests",
            "200",
            "--watchers",
            "4",
            "--threads",
            "2",
        ],
    );
    assert_eq!(watch["params"]["workload"], "watch", "{watch}");
    assert_eq!(watch["watchers"], 4, "{watch}");
    assert!(
        watch["writes"].as_u64().unwrap_or(0) > 0,
        "no writes: {watch}"
    );
}

/// `loadgen fanout` (long polls of one key, one PUT at a time) and `loadgen streams`
/// (recursive stream watchers under writers): clean runs whose reports account for every
/// watcher and every event (no timing asserted).
#[test]
fn loadgen_fanout_and_streams_against_ringd() {
    let bin = loadgen_binary();
    let dir = TempDir::new();
    let server = start_ringd(&dir.0);
    let clean = |name: &str, line: &str| {
        let (status, output, report) = run_loadgen(&bin, &server, &dir.0, name, &args(line));
        assert!(
            status.success(),
            "loadgen {line} exited with {status}:\n{output}"
        );
        let v = report.unwrap_or_else(|| panic!("loadgen {name}: no JSON report:\n{output}"));
        assert_eq!(v["errors"], serde_json::json!({}), "{v}");
        v
    };
    let f = clean(
        "fanout",
        "fanout --watchers 60 --puts 3 --warmup-puts 1 --pause-ms 1",
    );
    assert_eq!(f["armed"], 60, "{f}");
    assert_eq!(f["puts"], 3, "{f}");
    for put in f["per_put"].as_array().expect("per_put") {
        assert_eq!(put["delivered"], 60, "{f}");
    }
    for k in ["first_ms", "median_ms", "last_ms"] {
        assert!(f[k]["max"].is_number(), "{k}: {f}");
    }
    let s = clean(
        "streams",
        "streams --watchers 8 --writers 3 --duration 0.5 --keys 10",
    );
    let writes = s["writes"].as_u64().expect("writes");
    assert!(writes > 0, "{s}");
    // every write under the dir is an event for every watcher, none missed
    assert_eq!(s["events_total"], s["events_expected"], "{s}");
    assert!(s["counts"].get("events missed").is_none(), "{s}");
}

/// A command line's words.
fn args(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// One request to ringd as `user:password` (or none); the status and the body.
fn as_user(server: &Ringd, method: &str, path: &str, cred: &str, body: &str) -> (u16, String) {
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(cred)
    );
    let mut headers = vec![("Content-Type", "application/json")];
    if !cred.is_empty() {
        headers.push(("Authorization", &basic));
    }
    let addr = server.url.trim_start_matches("http://");
    let r = support::request(addr, method, path, &headers, body.as_bytes());
    (r.status, r.text())
}

#[test]
fn loadgen_with_basic_auth_against_ringd() {
    let bin = loadgen_binary();
    let dir = TempDir::new();
    let server = start_ringd(&dir.0);
    // auth on, and the guest role (created by enabling, read/write on /*) loses both: from
    // here on a request without root's credentials gets 401
    let root_user = r#"{"user":"root","password":"pw:1"}"#;
    for (method, path, cred, body, want) in [
        ("PUT", "/v2/auth/users/root", "", root_user, 201),
        ("PUT", "/v2/auth/enable", "", "", 200),
        (
            "PUT",
            "/v2/auth/roles/guest",
            "root:pw:1",
            r#"{"role":"guest","revoke":{"kv":{"read":["/*"],"write":["/*"]}}}"#,
            200,
        ),
    ] {
        let (status, text) = as_user(&server, method, path, cred, body);
        assert_eq!(status, want, "{method} {path}: {text}");
    }
    assert_eq!(as_user(&server, "GET", "/v2/keys/x", "", "").0, 401);

    // preload (100 PUTs) and random GETs, all as root
    let get = loadgen(
        &bin,
        &server,
        &dir.0,
        "auth-get",
        &args("get --requests 300 --connections 4 --keys 100 --user root:pw:1"),
    );
    assert_eq!(get["params"]["user"], "root", "{get}");
    // the watch workload's setup write and its watchers
    loadgen(
        &bin,
        &server,
        &dir.0,
        "auth-watch",
        &args("watch --requests 50 --watchers 2 --user root:pw:1"),
    );
    // a new connection per request, each with its header
    let nc = loadgen(
        &bin,
        &server,
        &dir.0,
        "auth-newconn",
        &args("get --key /loadgen/k1 --requests 100 --connections 2 --new-conn --user root:pw:1"),
    );
    assert_eq!(nc["connections_opened"], 100, "{nc}");

    // a wrong password and no credentials: every answer a 401, counted; the run ends by itself
    // with exit code 1 (a wrong password costs ringd a bcrypt per request: few requests)
    for (name, user) in [("wrong", Some("root:pw:2")), ("guest", None)] {
        let mut args = vec![
            "get",
            "--key",
            "/loadgen/k1",
            "--requests",
            "20",
            "--connections",
            "2",
        ];
        args.extend(user.iter().flat_map(|u| ["--user", *u]));
        let (status, output, report) = run_loadgen(&bin, &server, &dir.0, name, &args);
        assert_eq!(status.code(), Some(1), "{name}: {output}");
        let v = report.unwrap_or_else(|| panic!("{name}: no report: {output}"));
        assert_eq!(v["errors"], 20, "{name}: {v}");
        assert_eq!(v["errors_by_kind"]["status_401"], 20, "{name}: {v}");
    }
}
