//! The command line: etcd's flags and ETCD_* variables, help, bad input with exit code 2,
//! several listen URLs.

mod support;

use std::process::Command;

fn ringd() -> Command {
    Command::new(support::ringd_binary())
}

#[test]
fn help_lists_etcds_flags() {
    let out = ringd().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--name",
        "--data-dir",
        "--listen-client-urls",
        "--advertise-client-urls",
        "--listen-peer-urls",
        "--initial-advertise-peer-urls",
        "--initial-cluster",
        "--initial-cluster-state",
        "--initial-cluster-token",
        "--snapshot-count",
        "--heartbeat-interval",
        "--election-timeout",
        "--max-request-bytes",
        "--shards",
        "--watch-history",
        "RINGD_WATCH_HISTORY",
        "ETCD_NAME",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn unknown_flags_and_bad_values_exit_with_2() {
    for args in [
        &["--no-such-flag"][..],
        &["--snapshot-count", "many"],
        &["--listen-client-urls", "ftp://127.0.0.1:1"],
        &["--initial-cluster-state", "maybe"],
        &["--shards", "0"],
        &["--watch-history", "0"],
        &["--watch-history", "10000001"],
        &["--watch-history", "-5"],
        &["--watch-history", "lots"],
    ] {
        let out = ringd().args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn watch_history_out_of_range_is_named() {
    for value in ["0", "99999999999"] {
        let out = ringd().env("RINGD_WATCH_HISTORY", value).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--watch-history must be between 1 and 10000000"),
            "{err}"
        );
    }
}

#[test]
fn etcd_environment_variables_are_honoured() {
    let port = support::free_port();
    let out = ringd()
        .env(
            "ETCD_LISTEN_CLIENT_URLS",
            format!("http://127.0.0.1:{port}"),
        )
        .env("ETCD_INITIAL_CLUSTER_STATE", "bogus")
        .output()
        .unwrap();
    // The variable is read (and here rejected) exactly like the flag.
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
}

/// Kills the child on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn await_version(addr: &str) -> support::Response {
    for _ in 0..2000 {
        if let Ok(r) = support::request_timeout(
            addr,
            "GET",
            "/version",
            &[],
            b"",
            std::time::Duration::from_secs(5),
        ) {
            return r;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no answer on {addr}");
}

#[test]
fn go_style_single_dash_flags_and_several_listen_urls() {
    let (p1, p2, p3) = (
        support::free_port(),
        support::free_port(),
        support::free_port(),
    );
    let dir = support::TempDir::new("ringd-cli");
    let peer = format!("http://127.0.0.1:{p3}");
    let _child = Child(
        ringd()
            .args(["-data-dir", &dir.path().display().to_string()])
            .args([
                "-listen-peer-urls",
                &peer,
                "-initial-advertise-peer-urls",
                &peer,
            ])
            .args(["-initial-cluster", &format!("default={peer}")])
            .args([
                "-listen-client-urls",
                &format!("http://127.0.0.1:{p1},http://127.0.0.2:{p2}"),
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    for addr in [format!("127.0.0.1:{p1}"), format!("127.0.0.2:{p2}")] {
        assert_eq!(await_version(&addr).status, 200, "{addr}");
    }
}

/// A second process on a busy client or peer port exits 1 as etcd does, instead of sharing
/// the port through SO_REUSEPORT and serving half the connections from other data.
#[test]
fn a_second_server_on_a_busy_port_exits_with_address_in_use() {
    let first = support::Server::ringd(&[]);
    let dir = support::TempDir::new("ringd-cli-busy");
    let free = format!("http://127.0.0.1:{}", support::free_port());
    for (client, peer) in [
        (first.url(), free.clone()),
        (free.clone(), first.peer_url()),
    ] {
        let out = ringd()
            .args(["--data-dir", &dir.path().join("d").display().to_string()])
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{client} {peer}");
        let err = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(err.contains("bind: address already in use"), "{err}");
    }
    // The first server still serves its own data.
    assert_eq!(first.get("/version").status, 200);
}
