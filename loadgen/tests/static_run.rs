//! Starts `loadgen serve-static` on a free loopback port and runs a short real
//! load through the binary, then checks the JSON report.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_loadgen");

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the static responder; returns it and the address it listens on.
fn start_server() -> (Server, String) {
    let mut child = Command::new(BIN)
        .args([
            "serve-static",
            "--listen",
            "127.0.0.1:0",
            "--exit-after",
            "300",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start serve-static");
    let stdout = child.stdout.take().expect("stdout");
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    // bounded wait until the port accepts connections
    let mut ok = false;
    for _ in 0..200 {
        if TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_millis(100))
            .is_ok()
        {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ok, "serve-static never accepted connections on {addr}");
    (server, addr)
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
