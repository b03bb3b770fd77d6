//! Event ring: publish, lookup hit, and a history scan that misses the whole window.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringd::watch::ring::EventRing;
use ringd_store::{Command, Store};
use std::sync::Arc;

fn ring(c: &mut Criterion) {
    let mut store = Store::new();
    let ring = EventRing::new();
    let mut events = Vec::new();
    for i in 0..2000u64 {
        let cmd = Command::Set {
            key: format!("/k/{}", i % 100),
            dir: false,
            value: "v".into(),
            expire: None,
            refresh: false,
            at: 0,
        };
        if let Ok(ev) = store.apply(&cmd) {
            let ev = Arc::new(ev);
            ring.publish(ev.clone());
            events.push(ev);
        }
    }
    let current = store.index().0;
    let mut i = 0;
    c.bench_function("ring_publish", |b| {
        b.iter(|| {
            i = (i + 1) % events.len();
            ring.publish(events[i].clone())
        })
    });
    for ev in &events {
        ring.publish(ev.clone());
    }
    c.bench_function("ring_get_hit", |b| {
        b.iter(|| black_box(ring.get(black_box(current - 5))))
    });
    c.bench_function("ring_scan_miss_1000", |b| {
        b.iter(|| black_box(ring.scan("/nope", true, current - 999, current)))
    });
}

criterion_group!(benches, ring);
criterion_main!(benches);
