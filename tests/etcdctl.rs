//! Drives the real `etcdctl` (API v2) against the server and checks its output and exit codes.
//!
//! Target: ringd by default; `ETCDCTL_TARGET=etcd` runs the same checks against the reference
//! etcd (to develop them). Fails with a clear message if etcdctl (or, for the etcd target, etcd)
//! is not installed.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{Kind, Server};

/// How long one etcdctl invocation may run.
const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a spawned watcher may take to print its line.
const WATCH_OUTPUT_TIMEOUT: Duration = Duration::from_secs(10);

fn target_kind() -> Kind {
    match std::env::var("ETCDCTL_TARGET").as_deref() {
        Ok("etcd") => Kind::Etcd,
        Ok("ringd") | Err(_) => Kind::Ringd,
        Ok(t) => panic!("ETCDCTL_TARGET must be etcd or ringd, not {t:?}"),
    }
}

/// Starts the target server; panics clearly when a needed binary is missing.
fn start() -> Server {
    assert!(
        support::etcdctl_binary().is_some(),
        "the etcdctl tests need `etcdctl` on PATH (apt-get install -y etcd-client) or $ETCDCTL_BIN"
    );
    let kind = target_kind();
    if kind == Kind::Etcd {
        assert!(
            support::etcd_available(),
            "ETCDCTL_TARGET=etcd needs `etcd` on PATH (apt-get install -y etcd-server)"
        );
    }
    Server::of(kind, &[])
}

fn etcdctl_command(server: &Server, args: &[&str]) -> Command {
    let mut cmd = Command::new(support::etcdctl_binary().expect("etcdctl"));
    cmd.env("ETCDCTL_API", "2")
        .env_remove("ETCDCTL_ENDPOINTS")
        .env_remove("ETCDCTL_ENDPOINT")
        .args(["--endpoints", &server.url()])
        .args(args)
        .stdin(Stdio::null());
    cmd
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout:\n{}stderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `etcdctl ARGS` to completion (bounded by [`ETCDCTL_TIMEOUT`]).
fn etcdctl(server: &Server, args: &[&str]) -> Output {
    let mut child = etcdctl_command(server, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl");
    let stdout = reader_thread(child.stdout.take().unwrap());
    let stderr = reader_thread(child.stderr.take().unwrap());
    let deadline = Instant::now() + ETCDCTL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait etcdctl") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("etcdctl {args:?} did not finish within {ETCDCTL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn reader_thread(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Runs etcdctl and asserts exit code 0 and the exact stdout.
#[track_caller]
fn ok(server: &Server, args: &[&str], stdout: &str) {
    let out = etcdctl(server, args);
    assert_eq!(out.code, 0, "etcdctl {args:?}: {out:?}");
    support::assert_eq_text(stdout, &out.stdout);
}

/// Runs etcdctl and asserts the etcd error line (`Error:  CODE: MESSAGE (CAUSE) [INDEX]`, index
/// = the current X-Etcd-Index) and exit code 4.
#[track_caller]
fn err(server: &Server, args: &[&str], code_message_cause: &str) {
    let index = server.etcd_index();
    let out = etcdctl(server, args);
    assert_eq!(out.code, 4, "etcdctl {args:?}: {out:?}");
    support::assert_eq_text(
        &format!("Error:  {code_message_cause} [{index}]\n"),
        &out.stderr,
    );
}

fn sorted_lines(s: &str) -> Vec<&str> {
    let mut v: Vec<&str> = s.lines().collect();
    v.sort_unstable();
    v
}

fn member_id(server: &Server) -> String {
    let v = server.get("/v2/members").json();
    v["members"][0]["id"]
        .as_str()
        .expect("member id")
        .to_string()
}

/// A spawned long-running etcdctl (watch, exec-watch) whose stdout lines arrive on a channel.
struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Spawned {
    fn new(server: &Server, args: &[&str]) -> Spawned {
        let mut child = etcdctl_command(server, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn etcdctl");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Spawned { child, lines }
    }

    fn line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Waits (bounded) for the process to exit by itself.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn set_get_mk_update_rm() {
    let s = start();
    ok(&s, &["set", "/p/a", "1"], "1\n");
    ok(&s, &["get", "/p/a"], "1\n");
    err(&s, &["get", "/p/nope"], "100: Key not found (/p/nope)");
    ok(&s, &["mk", "/p/b", "2"], "2\n");
    err(&s, &["mk", "/p/b", "2"], "105: Key already exists (/p/b)");
    ok(&s, &["update", "/p/a", "3"], "3\n");
    ok(&s, &["get", "/p/a"], "3\n");
    err(&s, &["update", "/p/zz", "3"], "100: Key not found (/p/zz)");
    ok(&s, &["set", "--swap-with-value", "3", "/p/a", "4"], "4\n");
    err(
        &s,
        &["set", "--swap-with-value", "nope", "/p/a", "5"],
        "101: Compare failed ([nope != 4])",
    );
    ok(&s, &["set", "/p/t", "v", "--ttl", "100"], "v\n");
    ok(&s, &["rm", "/p/a"], "PrevNode.Value: 4\n");
    err(&s, &["rm", "/p/a"], "100: Key not found (/p/a)");
    // A compareAndDelete prints no PrevNode.Value line.
    ok(&s, &["rm", "--with-value", "2", "/p/b"], "\n");
    let out = etcdctl(&s, &["get", "/p"]);
    assert_eq!(out.code, 1, "get of a dir: {out:?}");
    assert_eq!(out.stderr, "/p: is a directory\n", "{out:?}");
}

#[test]
fn mkdir_ls_rmdir_updatedir() {
    let s = start();
    ok(&s, &["mkdir", "/p/d"], "");
    err(&s, &["mkdir", "/p/d"], "105: Key already exists (/p/d)");
    ok(&s, &["set", "/p/d/x", "1"], "1\n");
    ok(&s, &["set", "/p/a", "1"], "1\n");
    ok(&s, &["mk", "/p/b", "2"], "2\n");
    let out = etcdctl(&s, &["ls", "/p"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        sorted_lines(&out.stdout),
        ["/p/a", "/p/b", "/p/d"],
        "{out:?}"
    );
    ok(
        &s,
        &["ls", "-r", "--sort", "/p"],
        "/p/a\n/p/b\n/p/d\n/p/d/x\n",
    );
    ok(
        &s,
        &["ls", "--sort", "-r", "-p", "/p"],
        "/p/a\n/p/b\n/p/d/\n/p/d/x\n",
    );
    let out = etcdctl(&s, &["ls", "-r", "/"]);
    assert_eq!(
        sorted_lines(&out.stdout),
        ["/p", "/p/a", "/p/b", "/p/d", "/p/d/x"],
        "{out:?}"
    );
    ok(&s, &["updatedir", "/p/d", "--ttl", "100"], "");
    let ttl = s.get("/v2/keys/p/d").json()["node"]["ttl"].as_i64();
    assert!(
        matches!(ttl, Some(99..=100)),
        "ttl after updatedir: {ttl:?}"
    );
    err(
        &s,
        &["updatedir", "/p/zz", "--ttl", "100"],
        "100: Key not found (/p/zz)",
    );
    err(&s, &["rmdir", "/p/d"], "108: Directory not empty (/p/d)");
    err(&s, &["rm", "/p/d"], "102: Not a file (/p/d)");
    ok(&s, &["rm", "-r", "/p/d"], "");
    err(&s, &["rmdir", "/p/e"], "100: Key not found (/p/e)");
    ok(&s, &["mkdir", "/p/e"], "");
    ok(&s, &["rmdir", "/p/e"], "");
    ok(&s, &["ls", "--sort", "/p"], "/p/a\n/p/b\n");
    ok(&s, &["rm", "--recursive", "/p"], "");
    ok(&s, &["ls", "/"], "");
}

#[test]
fn watch_prints_the_next_value() {
    let s = start();
    ok(&s, &["set", "/p/w", "before"], "before\n");
    // --after-index makes the watch see the write even if it registers after it.
    let after = s.etcd_index().to_string();
    let mut w = Spawned::new(&s, &["watch", "--after-index", &after, "/p/w"]);
    let r = s.put_form("/v2/keys/p/w", "value=hello");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(w.line(WATCH_OUTPUT_TIMEOUT).as_deref(), Some("hello"));
    assert_eq!(
        w.wait(WATCH_OUTPUT_TIMEOUT),
        Some(0),
        "watch exits 0 after one event"
    );

    // A recursive watch with --forever prints `[action] key` and the value for each event.
    let after = s.etcd_index().to_string();
    let w = Spawned::new(
        &s,
        &["watch", "--forever", "-r", "--after-index", &after, "/p"],
    );
    for v in ["one", "two"] {
        let r = s.put_form("/v2/keys/p/x", &format!("value={v}"));
        assert!(r.status == 200 || r.status == 201, "{r:?}");
    }
    for v in ["one", "two"] {
        assert_eq!(w.line(WATCH_OUTPUT_TIMEOUT).as_deref(), Some("[set] /p/x"));
        assert_eq!(w.line(WATCH_OUTPUT_TIMEOUT).as_deref(), Some(v));
    }
}

#[test]
fn exec_watch_runs_the_command() {
    let s = start();
    ok(&s, &["set", "/p/e", "start"], "start\n");
    // exec-watch has no usable --after-index, so the race with its registration is closed by
    // writing until the command runs. `--` is only honoured when a flag precedes the key.
    let w = Spawned::new(
        &s,
        &[
            "exec-watch",
            "--recursive",
            "/p/e",
            "--",
            "sh",
            "-c",
            "echo \"got $ETCD_WATCH_VALUE $ETCD_WATCH_ACTION $ETCD_WATCH_KEY\"",
        ],
    );
    let deadline = Instant::now() + WATCH_OUTPUT_TIMEOUT;
    let mut written = Vec::new();
    let line = loop {
        assert!(
            Instant::now() < deadline,
            "exec-watch ran nothing after writes {written:?}"
        );
        let v = format!("v{}", written.len());
        let r = s.put_form("/v2/keys/p/e", &format!("value={v}"));
        assert_eq!(r.status, 200, "{r:?}");
        written.push(v);
        if let Some(line) = w.line(Duration::from_millis(300)) {
            break line;
        }
    };
    assert!(
        written.iter().any(|v| line == format!("got {v} set /p/e")),
        "exec-watch printed {line:?}; written {written:?}"
    );
}

#[test]
fn member_list_and_cluster_health() {
    let s = start();
    let id = member_id(&s);
    ok(
        &s,
        &["member", "list"],
        &format!(
            "{id}: name=default peerURLs={} clientURLs={} isLeader=true\n",
            s.peer_url(),
            s.url()
        ),
    );
    ok(
        &s,
        &["cluster-health"],
        &format!(
            "member {id} is healthy: got healthy result from {}\ncluster is healthy\n",
            s.url()
        ),
    );
}

/// `etcdctl user|role|auth` (v2) and `--username`: etcd's output, line for line.
#[test]
fn user_role_and_auth_commands() {
    let s = start();
    let root = ["--username", "root:pw"];
    let with = |args: &[&'static str], user: &[&'static str]| -> Vec<&'static str> {
        user.iter().chain(args).copied().collect()
    };
    ok(&s, &["user", "add", "root:pw"], "User root created\n");
    ok(&s, &["user", "add", "alice:pa"], "User alice created\n");
    ok(&s, &["user", "get", "alice"], "User: alice\nRoles: \n");
    ok(&s, &["user", "list"], "alice\nroot\n");
    ok(&s, &["role", "add", "ra"], "Role ra created\n");
    ok(
        &s,
        &["role", "grant", "ra", "--path", "/x/*", "--readwrite"],
        "Role ra updated\n",
    );
    ok(
        &s,
        &["role", "get", "ra"],
        "Role: ra\nKV Read:\n\t/x/*\nKV Write:\n\t/x/*\n",
    );
    ok(
        &s,
        &["user", "grant", "alice", "--roles", "ra"],
        "User alice updated\n",
    );
    ok(&s, &["user", "get", "alice"], "User: alice\nRoles:  ra\n");
    ok(&s, &["role", "list"], "ra\nroot\n");
    ok(&s, &["auth", "enable"], "Authentication Enabled\n");
    let alice = ["--username", "alice:pa"];
    ok(&s, &with(&["set", "/x/a", "1"], &alice), "1\n");
    ok(&s, &with(&["get", "/x/a"], &alice), "1\n");
    ok(
        &s,
        &with(
            &["role", "revoke", "guest", "--path", "/*", "--write"],
            &root,
        ),
        "Role guest updated\n",
    );
    for args in [
        with(&["set", "/y", "1"], &[]),
        with(&["set", "/y", "1"], &alice),
    ] {
        let out = etcdctl(&s, &args);
        assert_eq!(out.code, 4, "{args:?}: {out:?}");
        support::assert_eq_text(
            "Error:  110: The request requires user authentication (Insufficient credentials) [0]\n",
            &out.stderr,
        );
    }
    ok(
        &s,
        &with(&["user", "revoke", "alice", "--roles", "ra"], &root),
        "User alice updated\n",
    );
    ok(
        &s,
        &with(&["user", "remove", "alice"], &root),
        "User alice removed\n",
    );
    ok(
        &s,
        &with(&["role", "remove", "ra"], &root),
        "Role ra removed\n",
    );
    ok(&s, &with(&["role", "list"], &root), "guest\nroot\n");
    // No terminal to read a new password from: etcdctl sends none, which changes nothing.
    let out = etcdctl(&s, &with(&["user", "passwd", "root"], &root));
    assert!(
        out.stderr.contains("auth: User not updated."),
        "user passwd: {out:?}"
    );
    ok(
        &s,
        &with(&["auth", "disable"], &root),
        "Authentication Disabled\n",
    );
    ok(&s, &["set", "/y", "1"], "1\n");
}
