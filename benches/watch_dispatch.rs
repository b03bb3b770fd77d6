//! Event dispatch in a shard's watcher registry, with the shard's own payload (the event
//! rendered once, as its watchers' chunk, shared by reference count):
//! - `fanout/N`: one event to N long-poll watchers of its key (they all take it and leave;
//!   each iteration registers N fresh ones, not timed);
//! - `unrelated/N`: one event to one stream watcher of its key beside N watchers of other
//!   keys, recursive ones on sibling dirs among them: flat in N, as the registry visits only
//!   the event key's path prefixes;
//! - `recursive/N`: one event under a dir to N recursive stream watchers of the dir.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use ringd::http::response::watch_event;
use ringd::watch::registry::{Delivery, Registry, Watch};
use ringd_store::{Command, Event, Store};
use std::rc::Rc;
use std::sync::Arc;

fn set(store: &mut Store, key: &str) -> Arc<Event> {
    let cmd = Command::Set {
        key: key.into(),
        dir: false,
        value: "a value of some 32 bytes, say...".into(),
        expire: None,
        refresh: false,
        at: 1_700_000_000_000_000_000,
    };
    Arc::new(store.apply(&cmd).expect("set"))
}

fn render(ev: &Event) -> Bytes {
    Bytes::from(watch_event(ev, 0))
}

/// Takes what a stream watcher was sent, so it never falls behind.
fn drain(w: &Watch<Bytes>) {
    while let Some(Delivery::Event(b)) = w.try_next() {
        black_box(b);
    }
}

fn fanout(c: &mut Criterion) {
    let mut store = Store::new();
    let events = [set(&mut store, "/svc/a/config")];
    let mut g = c.benchmark_group("watch_dispatch/fanout");
    for n in [1usize, 100, 10_000] {
        g.bench_function(n.to_string(), |b| {
            b.iter_batched(
                || {
                    let mut reg = Registry::default();
                    let ws: Vec<Rc<Watch<Bytes>>> = (0..n)
                        .map(|_| {
                            reg.register("/svc/a/config", false, false, 1)
                                .expect("room")
                        })
                        .collect();
                    (reg, ws)
                },
                |(mut reg, ws)| {
                    reg.dispatch(&events, render);
                    (reg, ws)
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn unrelated(c: &mut Criterion) {
    let mut store = Store::new();
    let events = [set(&mut store, "/svc/a/config")];
    let mut g = c.benchmark_group("watch_dispatch/unrelated");
    for n in [0usize, 1000, 100_000] {
        let mut reg = Registry::default();
        let mine = reg.register("/svc/a/config", false, true, 1).expect("room");
        let others: Vec<Rc<Watch<Bytes>>> = (0..n)
            .map(|i| {
                // Half on other keys, half recursive on other service dirs.
                let (key, recursive) = if i % 2 == 0 {
                    (format!("/svc/b{i}/config"), false)
                } else {
                    (format!("/svc/c{i}"), true)
                };
                reg.register(&key, recursive, false, 1).expect("room")
            })
            .collect();
        g.bench_function(n.to_string(), |b| {
            b.iter(|| {
                reg.dispatch(&events, render);
                drain(&mine);
            })
        });
        black_box(others);
    }
    g.finish();
}

fn recursive(c: &mut Criterion) {
    let mut store = Store::new();
    let events = [set(&mut store, "/svc/a/config")];
    let mut g = c.benchmark_group("watch_dispatch/recursive");
    for n in [1usize, 1000] {
        let mut reg = Registry::default();
        let ws: Vec<Rc<Watch<Bytes>>> = (0..n)
            .map(|_| reg.register("/svc", true, true, 1).expect("room"))
            .collect();
        g.bench_function(n.to_string(), |b| {
            b.iter(|| {
                reg.dispatch(&events, render);
                for w in &ws {
                    drain(w);
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fanout, unrelated, recursive);
criterion_main!(benches);
