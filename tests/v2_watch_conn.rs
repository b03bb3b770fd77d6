//! Watch behaviour tied to connections, which the differential test cannot show: a watcher
//! is freed the moment its client disconnects; a stream keeps streaming after a history hit
//! (etcd falls silent there); many watchers of one key all get the event; a pipelined request
//! sent behind a long poll is answered after it.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::Server;

fn watchers(s: &Server) -> u64 {
    s.get("/v2/stats/store").json()["watchers"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Waits (bounded) until the watcher count satisfies `ok`.
fn await_watchers(s: &Server, ok: impl Fn(u64) -> bool) {
    for _ in 0..4000 {
        if ok(watchers(s)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "watcher count never reached the expected value: {}",
        watchers(s)
    );
}

#[test]
fn a_disconnecting_client_frees_its_watcher_at_once() {
    let s = Server::ringd(&["--shards", "3"]);
    let mut conns = Vec::new();
    for _ in 0..10 {
        let mut c = TcpStream::connect(s.addr()).unwrap();
        c.write_all(b"GET /v2/keys/w?wait=true HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        conns.push(c);
    }
    await_watchers(&s, |n| n == 10);
    drop(conns);
    await_watchers(&s, |n| n == 0);
}

#[test]
fn stream_keeps_streaming_after_a_history_hit() {
    let s = Server::ringd(&["--shards", "3"]);
    let first = s.put_form("/v2/keys/st", "value=1").json()["node"]["modifiedIndex"]
        .as_u64()
        .unwrap();
    s.put_form("/v2/keys/st", "value=2");
    let mut st = support::Stream::open(
        &s.addr(),
        "GET",
        &format!("/v2/keys/st?wait=true&stream=true&waitIndex={first}"),
        &[],
        b"",
        Duration::from_secs(10),
    )
    .unwrap();
    let mut values = Vec::new();
    while values.len() < 3 {
        let line = st.next_line().unwrap().expect("stream ended");
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        values.push(v["node"]["value"].as_str().unwrap().to_string());
        if values.len() == 2 {
            s.put_form("/v2/keys/st", "value=3");
        }
    }
    assert_eq!(values, ["1", "2", "3"]);
}

#[test]
fn many_watchers_of_one_key_all_get_the_event() {
    let s = Server::ringd(&["--shards", "3"]);
    let n = 500;
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut c = TcpStream::connect(s.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(b"GET /v2/keys/fan?wait=true HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        conns.push(c);
    }
    await_watchers(&s, |w| w == n);
    s.put_form("/v2/keys/fan", "value=go");
    for c in &mut conns {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"0\r\n\r\n") {
            let k = c.read(&mut buf).unwrap();
            assert!(k > 0);
            got.extend_from_slice(&buf[..k]);
        }
        assert!(String::from_utf8_lossy(&got).contains("\"value\":\"go\""));
    }
    await_watchers(&s, |w| w == 0);
}

#[test]
fn a_request_pipelined_behind_a_long_poll_is_answered_after_it() {
    let s = Server::ringd(&["--shards", "3"]);
    let mut c = TcpStream::connect(s.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /v2/keys/pp?wait=true HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    await_watchers(&s, |w| w == 1);
    c.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.put_form("/v2/keys/pp", "value=1");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("etcdcluster") {
        let k = c.read(&mut buf).unwrap();
        assert!(k > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..k]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.find("\"value\":\"1\"").unwrap() < text.find("etcdcluster").unwrap());
}
