//! Event ring (`--watch-history` N = 1000, etcd's and the default, and N = 1,000,000):
//! publish, a lookup in the newest 1000 events and one far behind (the encoded archive), and
//! a history scan that misses: the whole window at N = 1000, one bounded step
//! (`WATCH_SCAN_CHUNK_EVENTS` events) at N = 1,000,000.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use ringd::limits::WATCH_SCAN_CHUNK_EVENTS;
use ringd::watch::ring::EventRing;
use ringd_store::{Command, Event, Store};
use std::sync::Arc;

/// `count` set events of 100 keys (32-byte values), in index order from 1.
fn events(count: u64) -> Vec<Arc<Event>> {
    let mut store = Store::new();
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count {
        let cmd = Command::Set {
            key: format!("/service/k{:03}", i % 100),
            dir: false,
            value: format!("{i:032}"),
            expire: None,
            refresh: false,
            at: 1,
        };
        if let Ok(ev) = store.apply(&cmd) {
            out.push(Arc::new(ev));
        }
    }
    out
}

fn ring(c: &mut Criterion) {
    for n in [1000u64, 1_000_000] {
        let evs = events(n + 2000);
        let ring = EventRing::new(n);
        for ev in &evs {
            ring.publish(ev.clone());
        }
        let current = evs.len() as u64;
        let oldest = ring.start_index(current);
        assert!(ring.get(oldest).is_some());
        c.bench_function(&format!("ring_get_recent_n{n}"), |b| {
            b.iter(|| black_box(ring.get(black_box(current - 5))))
        });
        c.bench_function(&format!("ring_get_oldest_n{n}"), |b| {
            b.iter(|| black_box(ring.get(black_box(oldest))))
        });
        let mut budget_events = 0;
        c.bench_function(&format!("ring_scan_miss_step_n{n}"), |b| {
            b.iter(|| {
                let mut budget = WATCH_SCAN_CHUNK_EVENTS;
                let r = ring.scan_from("/nope", true, oldest, oldest, current, &mut budget);
                budget_events = WATCH_SCAN_CHUNK_EVENTS - budget;
                black_box(r)
            })
        });
        eprintln!("ring_scan_miss_step_n{n}: {budget_events} events a step");
        // Publishing continues the indexes (a gap would restart the history); building the
        // event is setup, outside the measurement.
        let template = (*evs[evs.len() - 100]).clone();
        let mut next = current + 1;
        c.bench_function(&format!("ring_publish_n{n}"), |b| {
            b.iter_batched(
                || {
                    let mut e = template.clone();
                    e.node.modified_index = next;
                    e.etcd_index = next;
                    next += 1;
                    Arc::new(e)
                },
                |e| ring.publish(e),
                BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(benches, ring);
criterion_main!(benches);
