//! Watch behaviour tied to connections, which the differential test cannot show: a watcher
//! is freed the moment its client disconnects; a stream keeps streaming after a history hit
//! (etcd falls silent there); many watchers of one key all get the event; a pipelined request
//! sent behind a long poll is answered after it; a long poll answered from its wait serves the
//! connection's next requests, or closes it under `Connection: close`.

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

/// Reads until `done` holds for what was read (bounded by the read timeout).
fn read_until(c: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&String::from_utf8_lossy(&got)) {
        let k = c.read(&mut buf).unwrap();
        assert!(k > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..k]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn a_kept_alive_long_poll_serves_the_next_requests_after_its_event() {
    // The answer is sent from the watcher's wait and the connection then waits for the next
    // request on the same readiness poll: it must serve it, and a second watch after it.
    let s = Server::ringd(&["--shards", "1"]);
    let mut c = TcpStream::connect(s.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /v2/keys/ka?wait=true HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    await_watchers(&s, |w| w == 1);
    s.put_form("/v2/keys/ka", "value=1");
    let first = read_until(&mut c, |t| t.ends_with("0\r\n\r\n"));
    assert!(first.contains("\"value\":\"1\""), "{first}");
    await_watchers(&s, |w| w == 0);
    c.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let version = read_until(&mut c, |t| t.contains("etcdcluster"));
    assert!(version.starts_with("HTTP/1.1 200"), "{version}");
    c.write_all(b"GET /v2/keys/ka?wait=true HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    await_watchers(&s, |w| w == 1);
    s.put_form("/v2/keys/ka", "value=2");
    let second = read_until(&mut c, |t| {
        t.contains("\"value\":\"2\"") && t.ends_with("0\r\n\r\n")
    });
    assert!(second.contains("\"value\":\"2\""), "{second}");
}

#[test]
fn a_long_poll_with_connection_close_is_closed_after_its_event() {
    let s = Server::ringd(&["--shards", "1"]);
    let mut c = TcpStream::connect(s.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /v2/keys/cc?wait=true HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    await_watchers(&s, |w| w == 1);
    s.put_form("/v2/keys/cc", "value=1");
    let mut got = Vec::new();
    // To the end of the stream: the server closes after the response.
    c.read_to_end(&mut got).unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("\"value\":\"1\""), "{text}");
    assert!(text.ends_with("0\r\n\r\n"), "{text}");
}
