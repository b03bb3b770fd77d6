//! Fan-out: one event reaching thousands of watchers of its key, rendered as etcd renders it
//! (each watcher's body is the write's own body, byte for byte, on ringd and on etcd), while
//! watchers of other paths get nothing of it; and a watcher that stops reading, or whose
//! client went away, holds up no other watcher.
//!
//! Deterministic: every wait is for an event (a response, a watcher count), bounded.

mod support;

use std::time::Duration;
use support::{Kind, Response, Server, Stream};

/// Long polls of the one key: above 2,000, and spread over the shards.
const WATCHERS: usize = 2100;
/// Each socket operation of a watcher.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Raises this process's soft limit on open files to the hard one (the servers it starts
/// inherit it): the test holds a connection per watcher, and so does the server.
fn raise_fd_limit(need: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit pointers.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    assert!(ok, "getrlimit failed");
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: a valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
    assert!(
        lim.rlim_max >= need,
        "this test needs {need} open files; the hard limit is {}",
        lim.rlim_max
    );
}

fn watchers(s: &Server) -> u64 {
    s.get("/v2/stats/store").json()["watchers"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Waits (bounded) until the server counts `n` watchers.
fn await_watchers(s: &Server, n: u64) {
    for _ in 0..6000 {
        if watchers(s) == n {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{}: {} watchers, never {n}", s.kind().name(), watchers(s));
}

/// Opens a watch and reads its response head (a 200: the watch is registered).
fn watch(s: &Server, path: &str) -> Stream {
    let st = Stream::open(&s.addr(), "GET", path, &[], b"", TIMEOUT)
        .unwrap_or_else(|e| panic!("{}: watch {path}: {e}", s.kind().name()));
    assert_eq!(
        st.response().status,
        200,
        "{}: watch {path}",
        s.kind().name()
    );
    st
}

/// The whole body of a long poll.
fn body(mut st: Stream) -> String {
    st.read_all().expect("long poll body");
    st.into_response().text()
}

fn text(r: &Response) -> String {
    assert!(r.status / 100 == 2, "{} {}", r.status, r.text());
    r.text()
}

/// The scenario on one server: WATCHERS long polls, a stream and a recursive watcher of
/// `/d/fan` and `/d`, and watchers of paths the event must not reach.
fn one_event_to_thousands(kind: Kind) {
    let s = Server::of(kind, &["--shards", "2"]);
    let name = kind.name();
    text(&s.put_form("/v2/keys/d/fan", "value=0"));
    let polls: Vec<Stream> = (0..WATCHERS)
        .map(|_| watch(&s, "/v2/keys/d/fan?wait=true"))
        .collect();
    let mut stream = watch(&s, "/v2/keys/d/fan?wait=true&stream=true");
    let recursive = watch(&s, "/v2/keys/d?wait=true&recursive=true");
    // Not reached by an event on /d/fan: a non-recursive watch of its dir, a sibling whose
    // name is a prefix of the key's, a watch under the key.
    let dir = watch(&s, "/v2/keys/d?wait=true");
    let sibling = watch(&s, "/v2/keys/d/fa?wait=true");
    let other = watch(&s, "/v2/keys/other?wait=true");
    await_watchers(&s, WATCHERS as u64 + 5);

    let event = text(&s.put_form("/v2/keys/d/fan", "value=go"));
    for (i, st) in polls.into_iter().enumerate() {
        assert_eq!(body(st), event, "{name}: long poll {i} of /d/fan");
    }
    let chunk = stream
        .next_chunk()
        .expect("stream chunk")
        .expect("stream open");
    assert_eq!(String::from_utf8_lossy(&chunk), event, "{name}: stream");
    assert_eq!(body(recursive), event, "{name}: recursive watch of /d");

    // The others fire on their own events only: each gets exactly its write's body.
    let e = text(&s.put_form("/v2/keys/d/fa", "value=s"));
    assert_eq!(body(sibling), e, "{name}: watch of /d/fa");
    let e = text(&s.put_form("/v2/keys/other", "value=o"));
    assert_eq!(body(other), e, "{name}: watch of /other");
    let e = text(&s.delete("/v2/keys/d?recursive=true"));
    assert_eq!(body(dir), e, "{name}: watch of /d");
    let chunk = stream
        .next_chunk()
        .expect("stream chunk")
        .expect("stream open");
    assert_eq!(
        String::from_utf8_lossy(&chunk),
        e,
        "{name}: stream after the delete"
    );
}

#[test]
fn thousands_of_watchers_of_one_key_all_get_its_event_as_etcd_renders_it() {
    raise_fd_limit(2 * WATCHERS as u64 + 500);
    one_event_to_thousands(Kind::Ringd);
    if support::etcd_available() {
        one_event_to_thousands(Kind::Etcd);
    } else {
        eprintln!("etcd is not installed: ringd only");
    }
}

#[test]
fn a_stalled_or_gone_watcher_holds_up_no_other() {
    const EVENTS: usize = 200;
    const LIVE_POLLS: usize = 50;
    raise_fd_limit(2000);
    // One shard: every watcher on the same executor and registry.
    let s = Server::ringd(&["--shards", "1"]);
    text(&s.put_form("/v2/keys/s", "value=0"));
    let first = s.etcd_index() + 1;
    let q = format!("/v2/keys/s?wait=true&waitIndex={first}");
    // Gone before the event: clients that closed, some after the server registered them
    // (awaited below), some just before the writes (the server may not have noticed yet).
    let gone: Vec<Stream> = (0..300).map(|_| watch(&s, &q)).collect();
    drop(gone);
    await_watchers(&s, 0);
    // A stream whose client never reads: its socket fills, then its buffer of events.
    let stalled = Stream::send(
        &s.addr(),
        "GET",
        "/v2/keys/s?wait=true&stream=true",
        &[],
        b"",
        TIMEOUT,
    )
    .expect("stalled stream");
    let mut live = watch(&s, "/v2/keys/s?wait=true&stream=true");
    let polls: Vec<Stream> = (0..LIVE_POLLS).map(|_| watch(&s, &q)).collect();
    let late: Vec<Stream> = (0..300).map(|_| watch(&s, &q)).collect();
    await_watchers(&s, 2 + LIVE_POLLS as u64 + 300);
    drop(late);

    // 200 values of 64 KiB: 12.5 MiB for the stalled stream, far beyond what its socket and
    // its buffer of events hold. The live stream is read meanwhile (a client that keeps up).
    let big = "v".repeat(64 * 1024);
    let (bodies, got) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            (0..EVENTS)
                .map(|i| text(&s.put_form("/v2/keys/s", &format!("value={i}{big}"))))
                .collect::<Vec<String>>()
        });
        let got: Vec<Vec<u8>> = (0..EVENTS)
            .map(|_| {
                live.next_chunk()
                    .expect("live stream")
                    .expect("stream open")
            })
            .collect();
        (writer.join().expect("writer"), got)
    });
    for (i, (chunk, want)) in got.iter().zip(&bodies).enumerate() {
        assert!(
            chunk == want.as_bytes(),
            "live stream event {i}: {} bytes, want {}",
            chunk.len(),
            want.len()
        );
    }
    for (i, st) in polls.into_iter().enumerate() {
        assert_eq!(body(st), bodies[0], "long poll {i}");
    }
    // The stalled stream fell behind and was let go by the registry (its client still has
    // not read a byte); the live one is all that is left.
    await_watchers(&s, 1);
    drop(live);
    await_watchers(&s, 0);
    drop(stalled);
}
