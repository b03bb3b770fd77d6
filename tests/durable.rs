//! Durability of the real binary: kill -9 at random moments under concurrent writers, restart
//! on the same data dir, and check that nothing acknowledged was lost; corruption handling.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{start_on_dir as start, start_on_dir_env as start_env, TempDir};

/// xorshift64: the test's only source of randomness, seeded and printed.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[derive(Default)]
struct Acked {
    /// (key, value, modifiedIndex)
    writes: Vec<(String, String, u64)>,
    /// in-order keys by the index they were acknowledged with
    queue: Vec<(u64, String)>,
}

#[test]
fn kill9_at_random_moments_loses_no_acknowledged_write() {
    let mut seed: u64 = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd);
    eprintln!("reproduce with KILL_SEED={seed}");
    let dir = TempDir::new("ringd-kill9");
    let port = support::free_port();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let max_index_seen = Arc::new(AtomicU64::new(0));
    let mut ttl_keys = Vec::new();
    for round in 0..4 {
        // Small log segments: the kills also land during segment creation and removal.
        let node = start_env(
            dir.path(),
            port,
            &["--snapshot-count", "300"],
            &[("RINGD_WAL_SEGMENT_BYTES", "65536")],
        )
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        // Everything acknowledged in earlier rounds is there, with its value.
        verify(
            &node.addr,
            &acked.lock().unwrap(),
            max_index_seen.load(Ordering::SeqCst),
        );
        // A TTL key set before the crash still expires after the restart.
        let r = support::put_form(
            &node.addr,
            &format!("/v2/keys/ttl/{round}"),
            "value=t&ttl=1",
        );
        assert_eq!(r.status, 201);
        ttl_keys.push((
            format!("/ttl/{round}"),
            r.json()["node"]["modifiedIndex"].as_u64().unwrap_or(0),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let kill_after = 100 + next(&mut seed) % 400;
        let count = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (addr, acked, stop, count, max_seen) = (
                    node.addr.clone(),
                    acked.clone(),
                    stop.clone(),
                    count.clone(),
                    max_index_seen.clone(),
                );
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let (path, body) = if n.is_multiple_of(5) {
                            ("/v2/keys/queue".to_string(), "value=q".to_string())
                        } else {
                            (
                                format!("/v2/keys/w/{round}-{w}-{n}"),
                                format!("value={round}.{w}.{n}"),
                            )
                        };
                        let method = if n.is_multiple_of(5) { "POST" } else { "PUT" };
                        let Ok(r) = support::request_timeout(
                            &addr,
                            method,
                            &path,
                            &[support::FORM],
                            body.as_bytes(),
                            Duration::from_secs(5),
                        ) else {
                            break;
                        };
                        if r.status / 100 != 2 {
                            continue;
                        }
                        let v = r.json();
                        let idx = v["node"]["modifiedIndex"].as_u64().unwrap_or(0);
                        let key = v["node"]["key"].as_str().unwrap_or("").to_string();
                        max_seen.fetch_max(idx, Ordering::SeqCst);
                        let mut a = acked.lock().unwrap();
                        if method == "POST" {
                            a.queue.push((idx, key));
                        } else {
                            a.writes
                                .push((key, body["value=".len()..].to_string(), idx));
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        while count.load(Ordering::SeqCst) < kill_after {
            std::thread::sleep(Duration::from_millis(1));
        }
        // SIGKILL while the writers are mid-flight.
        drop(node);
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            w.join().unwrap();
        }
    }
    let node = start(dir.path(), port, &[]).expect("final restart");
    let a = acked.lock().unwrap();
    verify(&node.addr, &a, max_index_seen.load(Ordering::SeqCst));
    assert!(
        a.writes.len() > 400,
        "too few writes acknowledged: {}",
        a.writes.len()
    );
    // Every TTL key set before a crash expires: wait (bounded) for its expire event.
    for (key, idx) in &ttl_keys {
        let r = support::request_timeout(
            &node.addr,
            "GET",
            &format!("/v2/keys{key}?wait=true&waitIndex={}", idx + 1),
            &[],
            b"",
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| {
            let now = support::get(&node.addr, "/v2/keys/ttl?recursive=true");
            let put = support::request_timeout(
                &node.addr,
                "PUT",
                "/v2/keys/probe",
                &[support::FORM],
                b"value=1",
                Duration::from_secs(3),
            );
            eprintln!("probe write: {:?}", put.map(|r| r.status));
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "{key} (set at {idx}) never expired: {e}; now: {} {:?}\nlog:\n{tail}",
                now.text(),
                now.header("x-etcd-index")
            )
        });
        // The history may hold a later event for the key only if it is the expiry.
        let v = r.json();
        if v["errorCode"] == 401 {
            // More than 1000 events since the key was set: its expiry (if it happened) left
            // the history, as in etcd. Nothing but expiry removes /ttl keys, so either the
            // key is gone or its expiry is still to come: then await that event.
            let now = support::get(&node.addr, &format!("/v2/keys{key}"));
            if now.status == 404 {
                continue;
            }
            let next = support::request_timeout(
                &node.addr,
                "GET",
                &format!("/v2/keys{key}?wait=true"),
                &[],
                b"",
                Duration::from_secs(20),
            )
            .unwrap_or_else(|e| panic!("{key} (set at {idx}) never expired: {e}"));
            assert_eq!(next.json()["action"], "expire", "{key}: {}", next.text());
            continue;
        }
        assert_eq!(v["action"], "expire", "{key}: {v}");
    }
}

fn verify(addr: &str, a: &Acked, max_index: u64) {
    let root = support::get(addr, "/v2/keys/?recursive=true&sorted=true");
    let index: u64 = root
        .header("x-etcd-index")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        index >= max_index,
        "X-Etcd-Index went back: {index} < {max_index}"
    );
    for (key, value, _) in &a.writes {
        let r = support::get(addr, &format!("/v2/keys{key}"));
        assert_eq!(r.status, 200, "acknowledged {key} lost");
        assert_eq!(r.json()["node"]["value"], value.as_str(), "{key}");
    }
    if !a.queue.is_empty() {
        let q = support::get(addr, "/v2/keys/queue?sorted=true").json();
        let listed: Vec<String> = q["node"]["nodes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter_map(|x| x["key"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let mut acked = a.queue.clone();
        acked.sort();
        let acked_keys: Vec<String> = acked.into_iter().map(|(_, k)| k).collect();
        // Every acknowledged in-order key is there, and sorted names follow ack order.
        let in_listing: Vec<String> = listed
            .iter()
            .filter(|k| acked_keys.contains(k))
            .cloned()
            .collect();
        assert_eq!(in_listing, acked_keys);
    }
}

#[test]
fn corrupt_middle_record_refuses_to_start_and_names_the_file() {
    let dir = TempDir::new("ringd-corrupt");
    let port = support::free_port();
    {
        let node = start(dir.path(), port, &[]).unwrap();
        for i in 0..200 {
            assert_eq!(
                support::put_form(
                    &node.addr,
                    &format!("/v2/keys/c/{i}"),
                    "value=xxxxxxxxxxxxxxxx"
                )
                .status,
                201
            );
        }
    }
    let wal_dir = dir.path().join("data/member/wal");
    let seg = std::fs::read_dir(&wal_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    // Flip a byte in the middle of the written records (the file is preallocated with zeroes,
    // so find the end of the data first).
    let used = bytes.iter().rposition(|&b| b != 0).unwrap_or(0);
    bytes[used / 2] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let err = start(dir.path(), port, &[])
        .err()
        .expect("must refuse to start");
    let name = seg.file_name().unwrap().to_string_lossy().to_string();
    assert!(err.contains(&name), "error does not name the file: {err}");
}

#[test]
fn a_second_process_cannot_share_the_data_dir() {
    let dir = TempDir::new("ringd-lock");
    let _first = start(dir.path(), support::free_port(), &[]).unwrap();
    let err = start(dir.path(), support::free_port(), &[])
        .err()
        .expect("second start must fail");
    assert!(err.to_lowercase().contains("lock"), "{err}");
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_previous_one_and_loses_nothing() {
    let dir = TempDir::new("ringd-snapfall");
    let port = support::free_port();
    let metrics = |addr: &str| support::get(addr, "/metrics").text();
    {
        let node = start(dir.path(), port, &["--snapshot-count", "50"]).unwrap();
        for i in 0..220 {
            assert_eq!(
                support::put_form(
                    &node.addr,
                    &format!("/v2/keys/s/{i}"),
                    &format!("value={i}")
                )
                .status,
                201
            );
        }
        // The group-commit counters: every write is a durable entry, and with one client
        // writing one at a time no fsync carries more than a couple of entries.
        let text = metrics(&node.addr);
        let counter = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
                .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
        };
        let (syncs, entries) = (
            counter("ringd_wal_fsyncs_total "),
            counter("ringd_wal_entries_total "),
        );
        assert!(entries >= 220, "{entries} entries for 220 writes");
        assert!(
            syncs >= 110 && syncs <= entries,
            "{syncs} fsyncs for {entries} entries"
        );
    }
    let snaps = dir.path().join("data/member/snap");
    let mut files: Vec<_> = std::fs::read_dir(&snaps)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 2, "expected two snapshots, found {files:?}");
    let newest = files.last().unwrap().clone();
    let full = std::fs::read(&newest).unwrap();
    // A partial newest snapshot (a torn write), then an empty one (a crash between create
    // and write): each time the previous snapshot plus the log give back every write.
    for damaged in [&full[..full.len() / 2], &b""[..]] {
        std::fs::write(&newest, damaged).unwrap();
        let node = start(dir.path(), port, &[]).unwrap();
        for i in 0..220 {
            assert_eq!(
                support::get(&node.addr, &format!("/v2/keys/s/{i}")).json()["node"]["value"],
                format!("{i}"),
                "after a snapshot of {} of {} bytes",
                damaged.len(),
                full.len()
            );
        }
    }
}

#[test]
fn old_log_segments_are_removed_after_snapshots_and_a_kill_loses_nothing() {
    let dir = TempDir::new("ringd-segments");
    let port = support::free_port();
    let wal = dir.path().join("data/member/wal");
    let segments = || -> Vec<String> {
        std::fs::read_dir(&wal)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".wal"))
                    .collect()
            })
            .unwrap_or_default()
    };
    // 64 KiB segments and a snapshot every 100 entries: 1,500 writes of ~300-byte records
    // fill several segments, and the snapshot thread removes the old ones.
    let env = [("RINGD_WAL_SEGMENT_BYTES", "65536")];
    let node = start_env(dir.path(), port, &["--snapshot-count", "100"], &env).unwrap();
    let value = "v".repeat(200);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..1500 {
        let r = support::put_form(
            &node.addr,
            &format!("/v2/keys/seg/{i}"),
            &format!("value={value}{i}"),
        );
        assert_eq!(r.status, 201);
        seen.extend(segments());
    }
    assert!(
        seen.len() >= 5,
        "only {} segments were ever created",
        seen.len()
    );
    // Removal runs on the snapshot thread after a snapshot: await it (the log keeps what
    // follows the previous snapshot, so at most two segments stay).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while segments().len() > 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "segments remain: {:?}",
            segments()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The oldest segments went first: what is left is the newest of those ever seen.
    let left = segments();
    let newest: Vec<String> = seen.iter().rev().take(left.len()).cloned().collect();
    for n in &left {
        assert!(
            newest.contains(n),
            "{n} left while newer ones were removed: {seen:?}"
        );
    }
    drop(node); // kill -9
    let node = start_env(dir.path(), port, &["--snapshot-count", "100"], &env).unwrap();
    for i in 0..1500 {
        assert_eq!(
            support::get(&node.addr, &format!("/v2/keys/seg/{i}")).json()["node"]["value"],
            format!("{value}{i}")
        );
    }
}

/// After a restart the history serves each event as it happened: a `waitIndex` hit is the
/// write's own answer, with the TTLs of the event's time, whether the event comes back from
/// the snapshot's history or from the log's replay. See: issue 13.
#[test]
fn history_after_a_restart_renders_the_ttls_of_the_events_time() {
    let dir = TempDir::new("ringd-history-ttl");
    let port = support::free_port();
    let node = start(dir.path(), port, &["--snapshot-count", "12"]).unwrap();
    // (index, answer body) of each write.
    let write = |addr: &str, method: &str, path: &str, form: &str| {
        let path = format!("/v2/keys/h/{path}");
        let r = support::request(addr, method, &path, &[support::FORM], form.as_bytes());
        assert!(r.status < 300, "{method} {path} {form}: {r:?}");
        (
            r.json()["node"]["modifiedIndex"].as_u64().expect("index"),
            r.text(),
        )
    };
    // Two TTL events before the first snapshot (raft index 12), so they come back from its
    // history; the rest after it, so they come back from the log (no second snapshot: fewer
    // than 12 entries follow).
    let mut events = vec![
        write(&node.addr, "PUT", "t", "value=v&ttl=1000"),
        write(&node.addr, "PUT", "t?prevExist=true", "value=w&ttl=500"),
    ];
    for i in 0..12 {
        write(&node.addr, "PUT", &format!("f{i}"), "value=f");
    }
    let snaps = dir.path().join("data/member/snap");
    let snapshot_written = || {
        std::fs::read_dir(&snaps).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.path().extension().is_some_and(|x| x == "snap"))
        })
    };
    for _ in 0..500 {
        if snapshot_written() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(snapshot_written(), "no snapshot in {snaps:?}");
    events.push(write(&node.addr, "PUT", "u", "value=u&ttl=900"));
    events.push(write(&node.addr, "DELETE", "t", ""));
    // Let two seconds pass, event-driven: wait for a 2 s key's expiry.
    let (clock, _) = write(&node.addr, "PUT", "clock", "value=1&ttl=2");
    let r = support::get(
        &node.addr,
        &format!("/v2/keys/h/clock?wait=true&waitIndex={}", clock + 1),
    );
    assert_eq!(r.json()["action"], "expire", "{r:?}");
    let history = |addr: &str| -> Vec<(u64, String)> {
        events
            .iter()
            .map(|(i, _)| {
                let path = format!("/v2/keys/h?wait=true&recursive=true&waitIndex={i}");
                (*i, support::get(addr, &path).text())
            })
            .collect()
    };
    assert!(events[0].1.contains("\"ttl\":1000,"), "{}", events[0].1);
    assert_eq!(history(&node.addr), events);
    drop(node);
    let node = start(dir.path(), port, &["--snapshot-count", "12"]).unwrap();
    assert_eq!(history(&node.addr), events);
}

/// The auth state is rebuilt by log replay, and comes back from a snapshot once the entries
/// that made it are compacted away.
#[test]
fn auth_survives_restarts_from_the_log_and_from_a_snapshot() {
    let dir = TempDir::new("ringd-auth");
    let port = support::free_port();
    // root:pw
    let root = [("Authorization", "Basic cm9vdDpwdw==")];
    let check = |addr: &str| {
        assert_eq!(
            support::get(addr, "/v2/auth/enable").text(),
            "{\"enabled\":true}\n"
        );
        let users = support::request(addr, "GET", "/v2/auth/users", &root, b"");
        assert_eq!(users.status, 200, "{}", users.text());
        assert!(
            users.text().contains("\"user\":\"root\""),
            "{}",
            users.text()
        );
        let anon = support::get(addr, "/v2/auth/users");
        assert_eq!(anon.status, 401);
    };
    let snap_dir = dir.path().join("data/member/snap");
    {
        let node = start(dir.path(), port, &["--snapshot-count", "50"]).unwrap();
        let put = |path: &str, body: &str| {
            let r = support::request(&node.addr, "PUT", path, &root, body.as_bytes());
            assert!(r.status < 300, "PUT {path}: {} {}", r.status, r.text());
        };
        put("/v2/auth/users/root", r#"{"user":"root","password":"pw"}"#);
        put("/v2/auth/enable", "");
        check(&node.addr);
    }
    {
        let node = start(dir.path(), port, &["--snapshot-count", "50"]).unwrap();
        check(&node.addr);
        for i in 0..120 {
            let r = support::put_form(&node.addr, &format!("/v2/keys/k{i}"), "value=1");
            assert_eq!(r.status, 201);
        }
        // The snapshot thread works in the background: wait for a snapshot file.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_dir(&snap_dir).map_or(0, |d| d.count()) == 0 {
            assert!(std::time::Instant::now() < deadline, "no snapshot written");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let node = start(dir.path(), port, &["--snapshot-count", "50"]).unwrap();
    check(&node.addr);
}

/// SIGTERM under concurrent writers, as systemd stops a service: ringd tells the service
/// manager it is ready and then stopping (`NOTIFY_SOCKET`), logs the signal, finishes what it
/// had proposed and exits 0; after a restart every write it acknowledged is there (the ones it
/// never answered may or may not be).
#[test]
fn sigterm_under_writers_exits_zero_and_loses_no_acknowledged_write() {
    let dir = TempDir::new("ringd-sigterm");
    let port = support::free_port();
    let notify_path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let notify_env = notify_path.display().to_string();
    let mut node =
        start_env(dir.path(), port, &[], &[("NOTIFY_SOCKET", &notify_env)]).expect("start");
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 from ringd");
    assert_eq!(&buf[..n], b"READY=1");
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (addr, acked, stop, count) = (
                node.addr.clone(),
                acked.clone(),
                stop.clone(),
                count.clone(),
            );
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let (key, value) = (format!("/w/{w}-{n}"), format!("{w}.{n}"));
                    let Ok(r) = support::request_timeout(
                        &addr,
                        "PUT",
                        &format!("/v2/keys{key}"),
                        &[support::FORM],
                        format!("value={value}").as_bytes(),
                        Duration::from_secs(10),
                    ) else {
                        break; // the server stopped: this write was never acknowledged
                    };
                    if r.status / 100 == 2 {
                        let idx = r.json()["node"]["modifiedIndex"].as_u64().unwrap_or(0);
                        acked.lock().unwrap().writes.push((key, value, idx));
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    while count.load(Ordering::SeqCst) < 300 {
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: a signal to the child process we spawned (still running: it was just writing).
    assert_eq!(
        unsafe { libc::kill(node.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = node.child.wait().expect("wait for ringd");
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    assert!(status.success(), "ringd exited with {status} on SIGTERM");
    let n = notify.recv(&mut buf).expect("STOPPING=1 from ringd");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    assert!(log.contains("received signal; shutting down"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    drop(node);
    let node = start(dir.path(), port, &[]).expect("restart");
    let a = acked.lock().unwrap();
    let max = a.writes.iter().map(|w| w.2).max().unwrap_or(0);
    verify(&node.addr, &a, max);
}
