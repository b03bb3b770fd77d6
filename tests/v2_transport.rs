//! HTTP transport behaviour of the real binary: keep-alive, pipelining, HEAD, chunked request
//! bodies, Expect: 100-continue, limits, garbage, slow and half-closed clients.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;
use support::Server;

fn connect(s: &Server) -> TcpStream {
    let c = TcpStream::connect(s.addr()).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c
}

/// Reads until `n` complete responses (by Content-Length) have arrived.
fn read_responses(c: &mut TcpStream, n: usize) -> Vec<(u16, String)> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut tmp = [0u8; 65536];
    loop {
        let mut pos = 0;
        out.clear();
        while let Some(head_end) = find(&buf[pos..], b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[pos..pos + head_end]).to_string();
            let status: u16 = head[9..12].parse().expect("status");
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().expect("len"))
                })
                .unwrap_or(0);
            let body_start = pos + head_end + 4;
            if buf.len() < body_start + len {
                break;
            }
            out.push((
                status,
                String::from_utf8_lossy(&buf[body_start..body_start + len]).to_string(),
            ));
            pos = body_start + len;
        }
        if out.len() >= n {
            return out;
        }
        let k = c.read(&mut tmp).expect("read");
        assert!(
            k > 0,
            "connection closed after {} responses: {:?}",
            out.len(),
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&tmp[..k]);
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn read_to_close(c: &mut TcpStream) -> String {
    let mut s = Vec::new();
    let _ = c.read_to_end(&mut s);
    String::from_utf8_lossy(&s).into_owned()
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let s = Server::ringd(&["--shards", "2"]);
    let mut c = connect(&s);
    let mut reqs = String::new();
    for i in 0..50 {
        reqs.push_str(&format!(
            "PUT /v2/keys/p/{i} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\nvalue={i}",
            format!("value={i}").len()
        ));
        reqs.push_str(&format!("GET /v2/keys/p/{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    c.write_all(reqs.as_bytes()).unwrap();
    let resps = read_responses(&mut c, 100);
    for i in 0..50 {
        assert_eq!(resps[2 * i].0, 201);
        assert_eq!(resps[2 * i + 1].0, 200);
        assert!(
            resps[2 * i + 1].1.contains(&format!("\"value\":\"{i}\"")),
            "{:?}",
            resps[2 * i + 1]
        );
    }
}

#[test]
fn head_has_headers_and_length_but_no_body() {
    let s = Server::ringd(&[]);
    s.put_form("/v2/keys/h", "value=hello");
    let mut c = connect(&s);
    c.write_all(
        b"HEAD /v2/keys/h HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/keys/h HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while find(&got, b"\"hello\"").is_none() {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    let first = &text[..text.find("\r\n\r\n").unwrap()];
    assert!(first.starts_with("HTTP/1.1 200"));
    assert!(first.contains("X-Etcd-Index"));
    // The second response starts right after the first head: HEAD sent no body.
    assert!(
        text[first.len() + 4..].starts_with("HTTP/1.1 200"),
        "{text}"
    );
}

#[test]
fn chunked_request_body_and_expect_continue() {
    let s = Server::ringd(&[]);
    let mut c = connect(&s);
    c.write_all(b"PUT /v2/keys/c HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nvalu\r\n5\r\ne=abc\r\n0\r\n\r\n").unwrap();
    let r = read_responses(&mut c, 1);
    assert_eq!(r[0].0, 201);
    assert!(r[0].1.contains("\"value\":\"abc\""), "{:?}", r[0]);

    let mut c = connect(&s);
    c.write_all(b"PUT /v2/keys/e HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nExpect: 100-continue\r\nContent-Length: 7\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"value=1").unwrap();
    let r = read_responses(&mut c, 1);
    assert_eq!(r[0].0, 201);
}

#[test]
fn oversized_body_is_rejected_and_nothing_changes() {
    let s = Server::ringd(&["--max-request-bytes", "1000"]);
    let before = s.etcd_index();
    let mut c = connect(&s);
    let body = format!("value={}", "x".repeat(2000));
    let req = format!("PUT /v2/keys/big HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let _ = c.write_all(req.as_bytes());
    let text = read_to_close(&mut c);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert_eq!(s.etcd_index(), before);
    assert_eq!(s.get("/v2/keys/big").status, 404);
}

#[test]
fn oversized_headers_and_garbage_get_4xx_and_the_server_lives_on() {
    let s = Server::ringd(&[]);
    let mut c = connect(&s);
    let long = format!("GET /v2/keys/{} HTTP/1.1\r\n", "a".repeat(100_000));
    let _ = c.write_all(long.as_bytes());
    assert!(read_to_close(&mut c).starts_with("HTTP/1.1 431"));

    let mut c = connect(&s);
    c.write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n").unwrap();
    assert!(read_to_close(&mut c).starts_with("HTTP/1.1 400"));

    let mut c = connect(&s);
    c.write_all(
        b"PUT /v2/keys/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nnothex\r\n",
    )
    .unwrap();
    assert!(read_to_close(&mut c).starts_with("HTTP/1.1 400"));

    assert_eq!(s.get("/version").status, 200);
}

#[test]
fn slow_and_half_closed_clients_do_not_stall_others() {
    let s = Server::ringd(&["--shards", "1"]);
    // A slowloris holding a partial request, and a client that half-closes after a request.
    let mut slow = connect(&s);
    slow.write_all(b"GET /v2/keys/a HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut half = connect(&s);
    half.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    half.shutdown(Shutdown::Write).unwrap();
    let text = read_to_close(&mut half);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("etcdserver"));
    // The single shard still serves everyone else.
    for i in 0..20 {
        assert_eq!(s.put_form(&format!("/v2/keys/s{i}"), "value=1").status, 201);
    }
    slow.write_all(b"\r\n").unwrap();
    let r = read_responses(&mut slow, 1);
    assert_eq!(r[0].0, 404);
}

#[test]
fn connection_close_and_http10_are_honoured() {
    let s = Server::ringd(&[]);
    let mut c = connect(&s);
    c.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(read_to_close(&mut c).contains("etcdcluster"));
    let mut c = connect(&s);
    c.write_all(b"GET /version HTTP/1.0\r\n\r\n").unwrap();
    assert!(read_to_close(&mut c).contains("etcdcluster"));
}

#[test]
fn metrics_are_prometheus_text() {
    let s = Server::ringd(&[]);
    s.put_form("/v2/keys/m", "value=1");
    s.get("/v2/keys/m");
    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    let t = r.text();
    assert!(
        t.contains("ringd_http_requests_total{method=\"PUT\",code=\"201\"} 1"),
        "{t}"
    );
    assert!(t.contains("ringd_http_request_duration_seconds_bucket{le=\"+Inf\"}"));
    assert!(t.contains("ringd_keys 1"));
    assert!(t.contains("ringd_watchers 0"));
}
