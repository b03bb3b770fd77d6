//! `--user` (HTTP basic auth on every request) and `--new-conn` (a new connection per request)
//! end to end through the binary, against `loadgen serve-static --basic-auth NAME:PASSWORD`:
//! it answers 200 only to requests carrying exactly that user's `Authorization` header and
//! etcd's 401 (errorCode 110) to any other, and closes a connection after answering a request
//! that says `Connection: close`.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{serve_static as start_server, BIN};

/// loadgen ends by itself (after --requests, or --timeout without progress); this bound only
/// turns a hang into a failure.
const RUN_BOUND: Duration = Duration::from_secs(60);

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A run refused before any load (exit code 2); its stderr.
fn refused(addr: &str, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["get", "--key", "/x", "--url", &format!("http://{addr}")])
        .args(["-n", "1", "-q"])
        .args(extra)
        .output()
        .expect("run loadgen");
    assert_eq!(out.status.code(), Some(2), "{extra:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `loadgen get --key /x` against `addr` with `extra`; the exit code, stderr and JSON report.
/// Fails the test if loadgen runs past `RUN_BOUND` (a hang).
fn run_get(dir: &Dir, addr: &str, name: &str, extra: &[&str]) -> (i32, String, serde_json::Value) {
    let json = dir.0.join(format!("{name}.json"));
    let err = dir.0.join(format!("{name}.err"));
    let mut child = Command::new(BIN)
        .args(["get", "--key", "/x", "--url", &format!("http://{addr}")])
        .args(["--threads", "2", "--quiet", "--timeout", "5", "--json"])
        .arg(&json)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("run loadgen");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > RUN_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadgen {name} hung: still running after {RUN_BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("loadgen {name}: no JSON report ({e}): {stderr}"));
    let v = serde_json::from_str(&text).expect("valid json");
    (status.code().unwrap_or(-1), stderr, v)
}

fn tmp(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("loadgen-auth-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    Dir(d)
}

#[test]
fn basic_auth_reaches_the_server_and_a_wrong_password_is_counted() {
    let dir = tmp("user");
    let (_server, addr) = start_server(&["--basic-auth", "root:s3:cret"]);
    let n = ["--requests", "600", "--connections", "4"];

    // the right user and password (the password holds a ':'): every answer is the 200
    let (code, stderr, v) = run_get(
        &dir,
        &addr,
        "ok",
        &[&n[..], &["--user", "root:s3:cret"]].concat(),
    );
    assert_eq!(code, 0, "{stderr}\n{v}");
    assert_eq!(
        (v["requests"].clone(), v["errors"].clone()),
        (600.into(), 0.into()),
        "{v}"
    );
    assert_eq!(v["params"]["user"], "root", "{v}");
    assert!(
        !v.to_string().contains("s3:cret"),
        "the password leaked into the report: {v}"
    );
    // keep-alive: one connection each for the whole run
    assert_eq!(v["connections_opened"], 4, "{v}");

    // a wrong password: every request is answered 401, each one counted as an error; the run
    // ends by itself with exit code 1
    let (code, stderr, v) = run_get(
        &dir,
        &addr,
        "wrong",
        &[&n[..], &["--username", "root:s3:crET"]].concat(),
    );
    assert_eq!(code, 1, "{stderr}\n{v}");
    assert_eq!(v["requests"], 600, "{v}");
    assert_eq!(v["errors"], 600, "{v}");
    let kinds = v["errors_by_kind"].as_object().expect("kinds");
    assert_eq!(kinds.len(), 1, "{v}");
    assert_eq!(kinds["status_401"], 600, "{v}");
    assert!(stderr.contains("THE RUN HAD 600 ERRORS"), "{stderr}");

    // no --user at all: the same 401s
    let (code, _, v) = run_get(&dir, &addr, "none", &n);
    assert_eq!(code, 1);
    assert_eq!(v["errors_by_kind"]["status_401"], 600, "{v}");

    // with a new connection per request the header still goes with every one
    let (code, stderr, v) = run_get(
        &dir,
        &addr,
        "newconn",
        &[&n[..], &["--user", "root:s3:cret", "--new-conn"]].concat(),
    );
    assert_eq!(code, 0, "{stderr}\n{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["connections_opened"], 600, "{v}");

    // bad --user values are refused before any load
    for bad in ["root", ":pw"] {
        assert!(refused(&addr, &["--user", bad]).contains("--user"));
    }
}

#[test]
fn new_connection_per_request() {
    let dir = tmp("newconn");
    let (_server, addr) = start_server(&[]);
    let n = ["--requests", "500", "--connections", "4"];

    let (code, stderr, v) = run_get(&dir, &addr, "keepalive", &n);
    assert_eq!(code, 0, "{stderr}\n{v}");
    assert_eq!(v["connections_opened"], 4, "{v}");

    // serve-static closes each connection after its answer (the request says
    // `Connection: close`): a request sent on an old connection would fail, so 0 errors and
    // 500 connections mean one connection per request
    let (code, stderr, v) = run_get(&dir, &addr, "newconn", &[&n[..], &["--new-conn"]].concat());
    assert_eq!(code, 0, "{stderr}\n{v}");
    assert_eq!(v["requests"], 500, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["connections_opened"], 500, "{v}");
    assert_eq!(v["params"]["new_conn"], true, "{v}");

    // open loop: connections are set up when their request is due, and still one each
    let (code, stderr, v) = run_get(
        &dir,
        &addr,
        "newconn-rate",
        &[
            "--requests",
            "300",
            "--connections",
            "4",
            "--rate",
            "1000",
            "--reconnect",
        ],
    );
    assert_eq!(code, 0, "{stderr}\n{v}");
    assert_eq!(v["connections_opened"], 300, "{v}");

    // pipelining contradicts a connection per request
    assert!(refused(&addr, &["--new-conn", "--pipeline", "4"]).contains("--pipeline"));
}
