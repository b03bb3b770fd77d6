//! Store apply (set/CAS/delete mix) and get (deep key, recursive listing).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringd_store::{Command, Store};

fn set(key: String, value: &str) -> Command {
    Command::Set {
        key,
        dir: false,
        value: value.into(),
        expire: None,
        refresh: false,
        at: 0,
    }
}

fn apply(c: &mut Criterion) {
    let mut store = Store::new();
    for i in 0..10_000 {
        let _ = store.apply(&set(format!("/bench/{i}"), "v"));
    }
    let mut i = 0u64;
    c.bench_function("store_apply_mix", |b| {
        b.iter(|| {
            i += 1;
            let key = format!("/bench/{}", i % 10_000);
            let cmd = match i % 4 {
                0 | 1 => set(key, "value"),
                2 => Command::CompareAndSwap {
                    key,
                    prev_value: "value".into(),
                    prev_index: 0,
                    value: "v2".into(),
                    expire: None,
                    refresh: false,
                    at: 0,
                },
                _ => Command::Delete {
                    key,
                    dir: false,
                    recursive: false,
                    at: 0,
                },
            };
            black_box(store.apply(&cmd))
        })
    });
}

fn get(c: &mut Criterion) {
    let mut store = Store::new();
    let _ = store.apply(&set("/a/b/c/d/e/f/g/h".into(), "deep"));
    for i in 0..1000 {
        let _ = store.apply(&set(format!("/list/{}/{}", i % 10, i), "v"));
    }
    let view = store.view();
    c.bench_function("store_get_deep", |b| {
        b.iter(|| black_box(view.get("/a/b/c/d/e/f/g/h", false, false)))
    });
    c.bench_function("store_get_recursive_1000", |b| {
        b.iter(|| black_box(view.get("/list", true, true)))
    });
}

criterion_group!(benches, apply, get);
criterion_main!(benches);
