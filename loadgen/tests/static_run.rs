//! Starts `loadgen serve-static` on a free loopback port and runs a short real
//! load through the binary, then checks the JSON report.

mod support;

use std::process::Command;

use support::BIN;

/// Starts the static responder; returns it and the address it listens on.
fn start_server() -> (support::Server, String) {
    support::serve_static(&[])
}

#[test]
fn get_run_against_static_responder_writes_json() {
    let (_server, addr) = start_server();
    let dir = std::env::temp_dir().join(format!("loadgen-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let json_path = dir.join("out.json");
    let out = Command::new(BIN)
        .args([
            "get",
            "--key",
            "/x",
            "--url",
            &format!("http://{addr}"),
            "--requests",
            "2000",
        ])
        .args([
            "--connections",
            "8",
            "--threads",
            "2",
            "--pipeline",
            "2",
            "--quiet",
            "--json",
        ])
        .arg(&json_path)
        .output()
        .expect("run loadgen");
    assert!(
        out.status.success(),
        "loadgen failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json_path).expect("json written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid json");
    assert_eq!(v["requests"], 2000, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["requests_per_sec"].as_f64().expect("rps") > 0.0);
    let lat = &v["latency_us"];
    let p = |k: &str| {
        lat[k]
            .as_f64()
            .unwrap_or_else(|| panic!("latency_us.{k} missing: {v}"))
    };
    assert!(
        p("p50") > 0.0
            && p("p50") <= p("p90")
            && p("p90") <= p("p99")
            && p("p99") <= p("p999")
            && p("p999") <= p("max")
    );
    assert!(
        v["histogram"]["percentiles"]
            .as_array()
            .expect("table")
            .len()
            > 10
    );
    assert_eq!(v["params"]["workload"], "get");
    assert_eq!(v["params"]["connections"], 8);
    assert!(v["errors_by_kind"]
        .as_object()
        .expect("errors_by_kind")
        .is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrong_answers_are_counted_and_fail_the_run() {
    // the static body names key /x; asking for /y must be flagged as an error
    let (_server, addr) = start_server();
    let out = Command::new(BIN)
        .args([
            "get",
            "--key",
            "/y",
            "--url",
            &format!("http://{addr}"),
            "--requests",
            "100",
            "--quiet",
        ])
        .output()
        .expect("run loadgen");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ERRORS") && stderr.contains("bad_key=100"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_target_fails_at_once_before_any_preload() {
    // A port nobody listens on: bound, its number taken, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let out = Command::new(BIN)
        .args(["get", "--url", &format!("http://127.0.0.1:{port}")])
        .args(["--duration", "30", "--quiet"])
        .output()
        .expect("run loadgen");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect to"), "{stderr}");
    // The preload (and the 30 s run) never started.
    assert!(!stderr.contains("preloaded"), "{stderr}");
}
