//! Backup and restore (`ringd snapshot save|restore|status`) against real members on
//! loopback: a save under write load holds every write acknowledged before it began; a
//! restored member and a restored 3-member cluster serve exactly the saved tree and
//! `X-Etcd-Index` and take writes; a damaged file or a cut-short transfer is refused and
//! leaves nothing behind; with auth on, only root may save.
//!
//! Every wait is bounded and polls for what it waits for.

mod support;

use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::cluster::Cluster;
use support::{free_port, request_timeout, ringd_binary, Kind, Server, TempDir, FORM};

const WAIT: Duration = Duration::from_secs(30);

/// Runs `ringd ARGS`; (exit status 0, stdout and stderr).
fn ringd(args: &[&str]) -> (bool, String) {
    let out = Command::new(ringd_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ringd");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn save(file: &Path, endpoint: &str, extra: &[&str]) -> (bool, String) {
    let file = file.display().to_string();
    let mut args = vec!["snapshot", "save", &file, "--endpoint", endpoint];
    args.extend_from_slice(extra);
    ringd(&args)
}

/// `ringd snapshot status -w json FILE`.
fn status(file: &Path) -> Value {
    let (ok, out) = ringd(&[
        "snapshot",
        "status",
        "-w",
        "json",
        &file.display().to_string(),
    ]);
    assert!(ok, "{out}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A one-member ringd on a data dir of the test's (a restored one, or one to save offline).
struct Node {
    child: Child,
    addr: String,
    log: PathBuf,
}

/// Restores `file` into `dir/data` as member `name` of a new one-member cluster and starts
/// it.
fn restored(file: &Path, dir: &Path, name: &str) -> Node {
    let peer = format!("http://127.0.0.1:{}", free_port());
    let data = dir.join("data");
    let (ok, out) = ringd(&[
        "snapshot",
        "restore",
        &file.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
        "--name",
        name,
        "--initial-advertise-peer-urls",
        &peer,
    ]);
    assert!(ok, "{out}");
    Node::start(&data, name, &peer, &[])
}

impl Node {
    /// Starts ringd on `data` (peer URL `peer`) and returns once it answers as the leader of
    /// its one-member cluster.
    fn start(data: &Path, name: &str, peer: &str, extra: &[&str]) -> Node {
        let client = format!("http://127.0.0.1:{}", free_port());
        let log = data.with_extension("log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(ringd_binary())
            .args(["--name", name])
            .arg("--data-dir")
            .arg(data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(extra)
            .env("RINGD_FORCE_EPOLL", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut node = Node {
            child,
            addr: client.trim_start_matches("http://").to_string(),
            log,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = request_timeout(&node.addr, "GET", "/v2/stats/self", &[], b"", WAIT)
                .ok()
                .is_some_and(|s| s.status == 200 && s.json()["state"] == "StateLeader");
            if leader {
                return node;
            }
            if let Ok(Some(s)) = node.child.try_wait() {
                panic!("ringd exited with {s}: {}", node.log());
            }
            assert!(Instant::now() < deadline, "not ready: {}", node.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An acknowledged write: its key, value and when the 201 arrived.
type Acked = (String, String, Instant);

/// Writes unique keys to `addr` until `stop` (at most `max`), recording each acknowledged one.
fn writer(addr: String, who: usize, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<Acked>>>) {
    const WRITES_MAX: usize = 5000;
    for n in 0..WRITES_MAX {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let key = format!("/load/w{who}-{n}");
        let value = format!("v{n}");
        let path = format!("/v2/keys{key}");
        let body = format!("value={value}");
        let answer = request_timeout(&addr, "PUT", &path, &[FORM], body.as_bytes(), WAIT);
        if answer.is_ok_and(|r| r.status == 201) {
            acked.lock().unwrap().push((key, value, Instant::now()));
        }
    }
}

#[test]
fn a_save_under_write_load_holds_every_write_acknowledged_before_it_began() {
    let c = Cluster::start(3, &[]);
    let dir = TempDir::new("ringd-backup-load");
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    // One writer per member: writes acknowledged by the leader and by both followers.
    let writers: Vec<_> = c
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (addr, stop, acked) = (m.addr(), stop.clone(), acked.clone());
            std::thread::spawn(move || writer(addr, i, stop, acked))
        })
        .collect();
    c.wait("writes from every writer", WAIT, || {
        let a = acked.lock().unwrap();
        (0..3)
            .all(|w| {
                let prefix = format!("/load/w{w}-");
                a.iter().filter(|(k, _, _)| k.starts_with(&prefix)).count() >= 20
            })
            .then_some(())
    });
    // Saved from a follower: its read barrier goes through the leader.
    let follower = c.follower().expect("a follower");
    let file = dir.path().join("backup.snap");
    let began = Instant::now();
    let (ok, out) = save(&file, &c.members[follower].client_url(), &[]);
    // The writers went on during the save; a few more acknowledgements show they still do.
    let during = acked.lock().unwrap().len();
    c.wait("writes after the save", WAIT, || {
        (acked.lock().unwrap().len() >= during + 10).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert!(ok, "save failed: {out}\n{}", c.logs());
    assert!(out.contains("Snapshot saved at"), "{out}");
    assert!(!dir.path().join("backup.snap.part").exists());
    let acked = acked.lock().unwrap().clone();
    let before: Vec<&Acked> = acked.iter().filter(|a| a.2 < began).collect();
    assert!(before.len() >= 60, "{}", before.len());
    let st = status(&file);
    let restored = restored(&file, dir.path(), "restored");
    let get = |path: &str| support::get(&restored.addr, path);
    // The whole saved tree, and nothing newer: the index is the snapshot's.
    let listing = get("/v2/keys/load?recursive=true");
    assert_eq!(
        listing.header("X-Etcd-Index").unwrap(),
        st["etcdIndex"].to_string(),
        "{st}"
    );
    let present: std::collections::HashMap<String, String> = listing.json()["node"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let key = n["key"].as_str().unwrap().to_string();
            (key, n["value"].as_str().unwrap().to_string())
        })
        .collect();
    for (key, value, _) in &before {
        assert_eq!(
            present.get(key),
            Some(value),
            "{key}, acknowledged before the save began, is missing"
        );
    }
    // Writes after the restore work, at the next index.
    let put = support::put_form(&restored.addr, "/v2/keys/after", "value=1");
    assert_eq!(put.status, 201, "{}", put.text());
    let next = st["etcdIndex"].as_u64().unwrap() + 1;
    assert_eq!(put.json()["node"]["modifiedIndex"], next);
}

/// The recursive listing with each node's remaining `ttl` left out (it counts down between
/// two reads; `expiration`, the absolute time, stays).
fn tree(addr: &str) -> (Value, String) {
    let r = support::get(addr, "/v2/keys/?recursive=true&sorted=true");
    assert_eq!(r.status, 200, "{}", r.text());
    fn strip(v: &mut Value) {
        if let Some(o) = v.as_object_mut() {
            o.remove("ttl");
            o.values_mut().for_each(strip);
        } else if let Some(a) = v.as_array_mut() {
            a.iter_mut().for_each(strip);
        }
    }
    let mut v = r.json();
    strip(&mut v);
    (v, r.header("X-Etcd-Index").unwrap_or_default().to_string())
}

#[test]
fn a_restore_makes_a_new_three_member_cluster_serving_the_saved_tree() {
    let source = Server::ringd(&[]);
    for (path, form) in [
        ("/v2/keys/a", "value=1"),
        ("/v2/keys/dir/b", "value=2"),
        ("/v2/keys/dir/sub/c", "value=3"),
        ("/v2/keys/gone", "value=x"),
        ("/v2/keys/ttl", "value=t&ttl=3600"),
        ("/v2/keys/_hidden", "value=h"),
        ("/v2/keys/a", "value=1b"),
    ] {
        assert!(source.put_form(path, form).status < 300);
    }
    assert_eq!(source.delete("/v2/keys/gone").status, 200);
    assert_eq!(source.post_form("/v2/keys/queue", "value=q").status, 201);
    let dir = TempDir::new("ringd-backup-cluster");
    let file = dir.path().join("backup.snap");
    let (ok, out) = save(&file, &source.url(), &[]);
    assert!(ok, "{out}");
    let (saved_tree, saved_index) = tree(&source.addr());
    assert_eq!(status(&file)["etcdIndex"].to_string(), saved_index);

    let token = support::cluster::unique_token("restored");
    let mut c = Cluster::prepare(Kind::Ringd, 3, &token);
    let ic = c.initial_cluster();
    for m in &c.members {
        let (ok, out) = ringd(&[
            "snapshot",
            "restore",
            &file.display().to_string(),
            "--data-dir",
            &m.data_dir().display().to_string(),
            "--name",
            &m.name,
            "--initial-cluster",
            &ic,
            "--initial-advertise-peer-urls",
            &m.advertised_peer_url(),
            "--initial-cluster-token",
            c.token(),
        ]);
        assert!(ok, "{out}");
        assert!(out.contains("of a new cluster"), "{out}");
    }
    for i in 0..3 {
        c.spawn(i, &[]);
    }
    c.wait_started(3);
    let source_members = source.get("/v2/members");
    let source_cluster = source_members.header("X-Etcd-Cluster-Id");
    for m in &c.members {
        let (t, index) = tree(&m.addr());
        assert_eq!(t, saved_tree, "{} serves another tree", m.name);
        assert_eq!(index, saved_index, "{}", m.name);
        assert_eq!(m.get("/v2/keys/_hidden").json()["node"]["value"], "h");
        let members = m.get("/v2/members");
        assert_ne!(
            members.header("X-Etcd-Cluster-Id"),
            source_cluster,
            "a restore makes a new cluster"
        );
        assert_eq!(members.json()["members"].as_array().unwrap().len(), 3);
    }
    // Writes work on the new cluster, through a follower too, and every member has them.
    let f = c.follower().expect("a follower");
    let put = c.members[f].put("/v2/keys/after", "value=new");
    assert_eq!(put.status, 201, "{}", put.text());
    let next = saved_index.parse::<u64>().unwrap() + 1;
    assert_eq!(put.json()["node"]["modifiedIndex"], next);
    for m in &c.members {
        let got = m.get("/v2/keys/after?quorum=true");
        assert_eq!(got.json()["node"]["value"], "new", "{}", m.name);
    }
}

/// The names in `dir` that start with `prefix` (temp files a command should have removed).
fn names_starting(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// A saved snapshot of a member holding a few keys.
fn saved_snapshot(dir: &Path) -> PathBuf {
    let source = Server::ringd(&[]);
    for i in 0..20 {
        source.put_form(&format!("/v2/keys/k{i}"), "value=some");
    }
    let file = dir.join("good.snap");
    let (ok, out) = save(&file, &source.url(), &[]);
    assert!(ok, "{out}");
    file
}

#[test]
fn a_damaged_snapshot_is_refused_by_status_and_restore_and_writes_nothing() {
    let dir = TempDir::new("ringd-backup-damaged");
    let good = saved_snapshot(dir.path());
    let bytes = std::fs::read(&good).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x10;
    let damaged = [
        ("flipped.snap", flipped),
        ("truncated.snap", bytes[..bytes.len() - 100].to_vec()),
        ("empty.snap", Vec::new()),
    ];
    for (name, content) in damaged {
        let file = dir.path().join(name);
        std::fs::write(&file, content).unwrap();
        let file = file.display().to_string();
        let (ok, out) = ringd(&["snapshot", "status", &file]);
        assert!(
            !ok && out.contains("is damaged") && out.contains(&file),
            "{out}"
        );
        let target = dir.path().join(format!("restored-{name}"));
        let target_arg = target.display().to_string();
        let (ok, out) = ringd(&["snapshot", "restore", &file, "--data-dir", &target_arg]);
        assert!(!ok && out.contains("is damaged"), "{out}");
        assert!(!target.exists(), "restore wrote {target:?}");
    }
    // Nothing was left beside the targets either (the restore builds in a temp dir).
    let names = names_starting(dir.path(), ".");
    assert!(names.is_empty(), "left behind: {names:?}");
    // The good file restores, into an empty dir only.
    let target = dir.path().join("restored");
    let target_arg = target.display().to_string();
    let good_arg = good.display().to_string();
    let restore = ["snapshot", "restore", &good_arg, "--data-dir", &target_arg];
    let (ok, out) = ringd(&restore);
    assert!(ok, "{out}");
    let (ok, out) = ringd(&restore);
    assert!(!ok && out.contains("not empty"), "{out}");
}

/// A fake member answering `GET /ringd/snapshot` with `head` then `body`, then closing.
fn fake_endpoint(head: String, body: Vec<u8>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            s.set_read_timeout(Some(WAIT)).unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    url
}

#[test]
fn a_cut_short_or_corrupted_transfer_leaves_no_file() {
    let dir = TempDir::new("ringd-backup-transfer");
    let good = std::fs::read(saved_snapshot(dir.path())).unwrap();
    let head = |len: usize| {
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n")
    };
    let mut corrupted = good.clone();
    corrupted[10] ^= 1;
    let cases = [
        // The connection ends before Content-Length bytes arrived.
        (
            head(good.len()),
            good[..good.len() / 2].to_vec(),
            "cut short",
        ),
        // Every byte arrived, but they do not check out.
        (head(good.len()), corrupted, "is damaged"),
    ];
    for (i, (head, body, why)) in cases.into_iter().enumerate() {
        let url = fake_endpoint(head, body);
        let file = dir.path().join(format!("out-{i}.snap"));
        let (ok, out) = save(&file, &url, &[]);
        assert!(
            !ok && out.contains(why) && out.contains("nothing saved"),
            "{out}"
        );
        assert!(!file.exists());
        assert!(!dir.path().join(format!("out-{i}.snap.part")).exists());
    }
}

#[test]
fn with_auth_on_only_root_may_save() {
    let s = Server::ringd(&[]);
    let json = [("Content-Type", "application/json")];
    for (path, body) in [
        (
            "/v2/auth/users/root",
            r#"{"user":"root","password":"rootpw"}"#,
        ),
        ("/v2/auth/users/u", r#"{"user":"u","password":"upw"}"#),
    ] {
        let r = s.request("PUT", path, &json, body.as_bytes());
        assert_eq!(r.status, 201, "{}", r.text());
    }
    assert_eq!(s.request("PUT", "/v2/auth/enable", &[], b"").status, 200);
    let dir = TempDir::new("ringd-backup-auth");
    let file = dir.path().join("backup.snap");
    for user in [None, Some("u:upw"), Some("root:wrong")] {
        let extra: Vec<&str> = user.map(|u| vec!["--user", u]).unwrap_or_default();
        let (ok, out) = save(&file, &s.url(), &extra);
        assert!(!ok, "{out}");
        assert!(
            out.contains("401") && out.contains("Insufficient credentials"),
            "{out}"
        );
        assert!(!file.exists());
    }
    let (ok, out) = save(&file, &s.url(), &["--user", "root:rootpw"]);
    assert!(ok, "{out}");
    // The auth state travels in the snapshot: a restored member has the users, auth on.
    let restored = restored(&file, dir.path(), "restored");
    let enabled = support::get(&restored.addr, "/v2/auth/enable").json();
    assert_eq!(enabled["enabled"], true);
    let r = request_timeout(
        &restored.addr,
        "GET",
        "/v2/auth/users",
        &[("Authorization", "Basic cm9vdDpyb290cHc=")],
        b"",
        WAIT,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Every file under `dir` with its bytes, by path.
fn files(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.insert(path.clone(), std::fs::read(&path).unwrap());
        }
    }
    out
}

#[test]
fn a_stopped_members_data_dir_saves_with_its_log_and_is_left_as_it_was() {
    let dir = TempDir::new("ringd-backup-offline");
    let data = dir.path().join("member");
    let peer = format!("http://127.0.0.1:{}", free_port());
    // Small snapshots, so that the data dir holds snapshots and log entries after them.
    let node = Node::start(&data, "m", &peer, &["--snapshot-count", "7"]);
    for i in 0..30 {
        let r = support::put_form(&node.addr, &format!("/v2/keys/d/k{i}"), "value=v");
        assert_eq!(r.status, 201);
    }
    assert_eq!(support::delete(&node.addr, "/v2/keys/d/k3").status, 200);
    let (saved_tree, saved_index) = tree(&node.addr);
    let file = dir.path().join("offline.snap");
    let data_arg = data.display().to_string();
    let file_arg = file.display().to_string();
    let offline = ["snapshot", "save", &file_arg, "--data-dir", &data_arg];
    // A running member's data dir is refused.
    let (ok, out) = ringd(&offline);
    assert!(!ok && out.contains("in use by a running member"), "{out}");
    assert!(!file.exists());
    drop(node);
    let before = files(&data);
    assert!(before
        .keys()
        .any(|p| p.extension().is_some_and(|e| e == "snap")));
    let (ok, out) = ringd(&offline);
    assert!(ok, "{out}");
    assert_eq!(files(&data), before, "the saved data dir changed");
    let names = names_starting(dir.path(), "offline.snap.");
    assert!(names.is_empty(), "left behind: {names:?}");
    // Everything the member had acknowledged, the log's tail after its newest snapshot
    // included.
    let st = status(&file);
    assert_eq!(st["etcdIndex"].to_string(), saved_index);
    let newest_snap = before
        .keys()
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_string))
        .filter_map(|stem| u64::from_str_radix(&stem, 16).ok())
        .max()
        .unwrap();
    assert!(newest_snap < st["raftIndex"].as_u64().unwrap(), "{st}");
    let restored = restored(&file, dir.path(), "restored");
    assert_eq!(tree(&restored.addr), (saved_tree, saved_index));
}

#[test]
fn a_save_without_a_quorum_times_out_as_a_quorum_read_and_saves_nothing() {
    let mut c = Cluster::start(3, &[]);
    c.kill(1);
    c.kill(2);
    let dir = TempDir::new("ringd-backup-noquorum");
    let file = dir.path().join("backup.snap");
    // The read barrier cannot complete: etcd's request timeout (5 s + 2 election timeouts).
    let (ok, out) = save(&file, &c.members[0].client_url(), &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("500") && out.contains("request timed out"),
        "{out}"
    );
    assert!(!file.exists());
    assert!(names_starting(dir.path(), "backup.snap").is_empty());
    // The member still serves.
    assert_eq!(c.members[0].get("/version").status, 200);
}
