//! `--watch-history N`: a `waitIndex` far behind is answered from a history of the last N
//! events, every event in order; older indexes get etcd's 401; the history survives a
//! restart; its memory stays within the bound the server reports at start. (At the default
//! 1000 the differential tests against etcd, tests/diff*.rs, check that nothing changed.)

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use support::{Node, Stream, TempDir, FORM, IO_TIMEOUT};

/// Starts (or restarts) ringd on `dir` with the client port recorded there.
fn start(dir: &Path, extra: &[&str]) -> Node {
    let port_file = dir.join("client_port");
    let port = match std::fs::read_to_string(&port_file) {
        Ok(p) => p.trim().parse().unwrap(),
        Err(_) => {
            let p = support::free_port();
            std::fs::write(&port_file, p.to_string()).unwrap();
            p
        }
    };
    support::start_on_dir(dir, port, extra).unwrap()
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

/// PUTs every `(key, value)` over 4 keep-alive connections, 64 requests pipelined at a time;
/// returns each write's index -> (key, value).
fn put_all(addr: &str, writes: &[(String, String)]) -> BTreeMap<u64, (String, String)> {
    let per = writes.len().div_ceil(4).max(1);
    let parts: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = writes
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut conn = Stream::connect(addr, IO_TIMEOUT).unwrap();
                    for batch in part.chunks(64) {
                        for (k, v) in batch {
                            let body = format!("value={v}");
                            conn.write_request(
                                "PUT",
                                &format!("/v2/keys{k}"),
                                &[FORM],
                                body.as_bytes(),
                            )
                            .unwrap();
                        }
                        for (k, v) in batch {
                            let r = conn.read_response().unwrap();
                            assert!(r.status == 200 || r.status == 201, "PUT {k}: {r:?}");
                            let index = r.json()["node"]["modifiedIndex"].as_u64().unwrap();
                            out.push((index, (k.clone(), v.clone())));
                        }
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    parts.into_iter().flatten().collect()
}

/// The `/metrics` gauge `name`.
fn metric(addr: &str, name: &str) -> u64 {
    let text = support::get(addr, "/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// etcd's 401 answer for a `waitIndex` older than the history, as WIRE.md records it.
fn assert_cleared(r: &support::Response, start: u64, asked: u64, current: u64) {
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.header("x-etcd-index"), Some(current.to_string().as_str()));
    assert_eq!(
        r.text(),
        format!(
            "{{\"errorCode\":401,\"message\":\"The event in requested index is outdated and cleared\",\"cause\":\"the requested history has been cleared [{start}/{asked}]\",\"index\":{current}}}\n"
        )
    );
}

/// Follows `dir` recursively from `from` as a client that fell behind does: one long poll
/// per event, each from the previous answer's modifiedIndex + 1, for `count` events. Returns
/// the events (index, key, value).
fn follow(addr: &str, dir: &str, from: u64, count: usize) -> Vec<(u64, String, String)> {
    let mut conn = Stream::connect(addr, IO_TIMEOUT).unwrap();
    let mut seen = Vec::new();
    let mut wait = from;
    while seen.len() < count {
        let path = format!("/v2/keys{dir}?wait=true&recursive=true&waitIndex={wait}");
        conn.write_request("GET", &path, &[], b"").unwrap();
        let r = conn.read_response().unwrap();
        assert_eq!(r.status, 200, "waitIndex={wait}: {r:?}");
        let v: Value = r.json();
        let index = v["node"]["modifiedIndex"].as_u64().unwrap();
        assert!(index >= wait, "waitIndex={wait} answered {index}");
        let key = v["node"]["key"].as_str().unwrap().to_string();
        let value = v["node"]["value"].as_str().unwrap_or("").to_string();
        seen.push((index, key, value));
        wait = index + 1;
    }
    seen
}

/// The writes under `dir` with an index in [from, until], in index order.
fn expected(
    writes: &BTreeMap<u64, (String, String)>,
    dir: &str,
    from: u64,
    until: u64,
) -> Vec<(u64, String, String)> {
    writes
        .range(from..=until)
        .filter(|(_, (k, _))| k.starts_with(&format!("{dir}/")))
        .map(|(i, (k, v))| (*i, k.clone(), v.clone()))
        .collect()
}

/// `count` writes alternating between `/hist/k<n>` and `/other/k<n>`.
fn writes(from: usize, count: usize) -> Vec<(String, String)> {
    (from..from + count)
        .map(|i| {
            let dir = if i % 2 == 0 { "hist" } else { "other" };
            (format!("/{dir}/k{}", i % 50), format!("v{i}"))
        })
        .collect()
}

#[test]
fn a_watcher_50000_events_behind_gets_every_event_in_order_and_an_older_one_gets_401() {
    let dir = TempDir::new("watch-history-behind");
    let node = start(dir.path(), &["--watch-history", "100000"]);
    let addr = node.addr.clone();
    let mut written = put_all(&addr, &writes(0, 60_000));
    let current = *written.keys().last().unwrap();
    let from = current - 50_000;
    let want = expected(&written, "/hist", from, current);
    assert!(want.len() > 24_000);
    let seen = follow(&addr, "/hist", from, want.len());
    assert!(seen == want, "the events differ from the writes");
    // A watch far behind on a prefix nothing was written to scans the whole window (in
    // bounded steps), registers, and is answered by the next write there.
    let path = format!("/v2/keys/nowhere?wait=true&waitIndex={from}");
    let mut watch = Stream::open(&addr, "GET", &path, &[], b"", IO_TIMEOUT).unwrap();
    assert_eq!(watch.response().status, 200);
    let put = support::put_form(&addr, "/v2/keys/nowhere", "value=here");
    let line = watch.next_line().unwrap().unwrap();
    let ev: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(ev["node"]["value"], "here");
    assert_eq!(
        ev["node"]["modifiedIndex"],
        put.json()["node"]["modifiedIndex"]
    );
    // A stream from as far behind gets the same events, then live ones.
    let path = format!("/v2/keys/hist?wait=true&recursive=true&stream=true&waitIndex={from}");
    let mut stream = Stream::open(&addr, "GET", &path, &[], b"", IO_TIMEOUT).unwrap();
    for (i, k, v) in &want {
        let line = stream.next_line().unwrap().unwrap();
        let ev: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            (
                ev["node"]["modifiedIndex"].as_u64(),
                ev["node"]["key"].as_str(),
                ev["node"]["value"].as_str()
            ),
            (Some(*i), Some(k.as_str()), Some(v.as_str()))
        );
    }
    let put = support::put_form(&addr, "/v2/keys/hist/live", "value=now");
    let line = stream.next_line().unwrap().unwrap();
    let ev: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(
        ev["node"]["modifiedIndex"],
        put.json()["node"]["modifiedIndex"]
    );
    drop(stream);
    // Past 100,000 events the oldest go: 401 with etcd's body, one index before the window.
    written.extend(put_all(&addr, &writes(60_000, 45_000)));
    let current = support::get(&addr, "/v2/keys/")
        .header("x-etcd-index")
        .unwrap()
        .parse::<u64>()
        .unwrap();
    let start = current - 99_999;
    assert_eq!(metric(&addr, "ringd_watch_history_oldest_index"), start);
    let r = support::get(
        &addr,
        &format!(
            "/v2/keys/hist?wait=true&recursive=true&waitIndex={}",
            start - 1
        ),
    );
    assert_cleared(&r, start, start - 1, current);
    let r = support::get(
        &addr,
        &format!("/v2/keys/other?wait=true&recursive=true&waitIndex={start}"),
    );
    assert_eq!(r.status, 200);
    let want = expected(&written, "/other", start, current)[0].0;
    assert_eq!(r.json()["node"]["modifiedIndex"].as_u64(), Some(want));
}

#[test]
fn the_history_survives_a_restart() {
    let dir = TempDir::new("watch-history-restart");
    // Snapshots every 5000 entries: the history comes back from a snapshot (the events
    // before it) and from the log's replay (the events after it).
    let flags = ["--watch-history", "100000", "--snapshot-count", "5000"];
    let node = start(dir.path(), &flags);
    let written = put_all(&node.addr, &writes(0, 24_000));
    let current = *written.keys().last().unwrap();
    let from = current - 20_000;
    let want = expected(&written, "/hist", from, current);
    let before = follow(&node.addr, "/hist", from, want.len());
    assert!(before == want, "the events differ from the writes");
    let first = support::get(
        &node.addr,
        &format!("/v2/keys/other?wait=true&recursive=true&waitIndex={from}"),
    );
    assert_eq!(first.status, 200);
    drop(node);
    assert!(
        log_of(dir.path()).contains("snapshot written"),
        "no snapshot was taken"
    );
    let node = start(dir.path(), &flags);
    assert!(
        log_of(dir.path()).contains("loaded snapshot"),
        "the restart did not load a snapshot"
    );
    let after = follow(&node.addr, "/hist", from, want.len());
    assert!(after == before, "the history differs after the restart");
    let again = support::get(
        &node.addr,
        &format!("/v2/keys/other?wait=true&recursive=true&waitIndex={from}"),
    );
    assert_eq!(again.body, first.body);
    drop(node);
    // Restarted with etcd's 1000: the newest 1000 only.
    let node = start(dir.path(), &[]);
    let r = support::get(
        &node.addr,
        &format!("/v2/keys/hist?wait=true&recursive=true&waitIndex={from}"),
    );
    assert_cleared(&r, current - 999, from, current);
    let want = expected(&written, "/hist", current - 999, current);
    let tail = follow(&node.addr, "/hist", current - 999, want.len());
    assert_eq!(tail, want);
}

#[test]
fn the_history_stays_within_the_memory_bound_reported_at_start() {
    let dir = TempDir::new("watch-history-bound");
    let node = start(dir.path(), &["--watch-history", "100000"]);
    let log = log_of(dir.path());
    let line = log
        .lines()
        .find(|l| l.contains("watch history"))
        .unwrap_or_else(|| panic!("no watch history line at start:\n{log}"));
    let field = |name: &str| -> u64 {
        let at = line
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("{name} in {line}"));
        let digits: String = line[at + name.len() + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    assert_eq!(field("events"), 100_000);
    let bound = field("bound_bytes");
    let archive_max = field("archive_bytes_max");
    // N x 256 bytes of encoded events, plus the slots.
    assert_eq!(archive_max, 100_000 * 256);
    assert!(
        bound > archive_max && bound < archive_max + (2 << 20),
        "{line}"
    );
    assert_eq!(metric(&node.addr, "ringd_watch_history_bytes_max"), bound);
    let idle = metric(&node.addr, "ringd_watch_history_bytes");
    assert!(idle < bound);
    // 2000 small writes: counted, well inside the bound.
    let small = put_all(&node.addr, &writes(0, 2000));
    let used = metric(&node.addr, "ringd_watch_history_bytes");
    assert!(
        used >= idle + 2000 * 40 && used <= bound,
        "{idle} -> {used}"
    );
    // 3000 writes of 8 KiB values (with their 8 KiB previous values: ~48 MB of events) are
    // more than the budget holds: the oldest go, the bytes stay within the bound, and the
    // window shrinks, never below the newest 1000.
    let big: Vec<(String, String)> = (0..3000)
        .map(|i| {
            (
                format!("/big/k{}", i % 20),
                format!("{i:08}{}", "x".repeat(8184)),
            )
        })
        .collect();
    let big = put_all(&node.addr, &big);
    let current = *big.keys().last().unwrap();
    let used = metric(&node.addr, "ringd_watch_history_bytes");
    assert!(used <= bound, "{used} > {bound}");
    assert!(used >= archive_max / 2, "the budget is not used: {used}");
    let oldest = metric(&node.addr, "ringd_watch_history_oldest_index");
    assert!(
        oldest > *small.keys().last().unwrap() && oldest <= current - 999,
        "oldest {oldest}"
    );
    let r = support::get(
        &node.addr,
        &format!(
            "/v2/keys/big?wait=true&recursive=true&waitIndex={}",
            oldest - 1
        ),
    );
    assert_cleared(&r, oldest, oldest - 1, current);
    let r = support::get(
        &node.addr,
        &format!("/v2/keys/big?wait=true&recursive=true&waitIndex={oldest}"),
    );
    assert_eq!(r.json()["node"]["modifiedIndex"].as_u64(), Some(oldest));
    assert_eq!(
        r.json()["node"]["value"].as_str(),
        Some(big[&oldest].1.as_str())
    );
}
