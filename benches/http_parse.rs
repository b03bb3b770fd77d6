//! Parse + route on recorded requests, and the JSON of a PUT's answer: the per-request CPU
//! floor of a shard.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringd::http::parse::{Parsed, RequestParser};
use ringd::http::route::route;

const GET: &[u8] = b"GET /v2/keys/service/web/10.0.0.1 HTTP/1.1\r\nHost: 127.0.0.1:2379\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n";
const PUT: &[u8] = b"PUT /v2/keys/service/web/10.0.0.1?ttl=30 HTTP/1.1\r\nHost: 127.0.0.1:2379\r\nContent-Length: 23\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\nvalue=%7B%22port%22%3A1";

fn parse_route(c: &mut Criterion) {
    for (name, req) in [("get", GET), ("put", PUT)] {
        c.bench_function(&format!("parse_route_{name}"), |b| {
            b.iter(|| {
                let mut p = RequestParser::new(1 << 20);
                let (_, parsed) = p.parse(black_box(req));
                match parsed {
                    Parsed::Request(r) => black_box(route(&r)),
                    _ => unreachable!("recorded request is complete"),
                };
            })
        });
    }
}

/// The body of `loadgen put`'s answer: node and prevNode, 64-byte values.
fn render_put_answer(c: &mut Criterion) {
    use ringd_store::{Action, Event, NodeRepr};
    let node = |i: u64| NodeRepr {
        key: Some("/loadgen/k1234".to_string()),
        dir: false,
        value: Some("x".repeat(64)),
        expiration: None,
        modified_index: i,
        created_index: i,
        nodes: None,
    };
    let ev = Event {
        action: Action::Set,
        node: node(20_001),
        prev_node: Some(node(10_001)),
        etcd_index: 20_001,
        refresh: false,
        time: None,
    };
    let mut out = Vec::with_capacity(512);
    c.bench_function("render_put_answer", |b| {
        b.iter(|| {
            out.clear();
            ringd::http::render::event(&mut out, black_box(&ev), 0, false);
            black_box(out.len())
        })
    });
}

criterion_group!(benches, parse_route, render_put_answer);
criterion_main!(benches);
