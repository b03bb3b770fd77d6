//! Parse + route + render on recorded requests: the per-request CPU floor of a shard.

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

criterion_group!(benches, parse_route);
criterion_main!(benches);
