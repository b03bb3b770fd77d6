//! Store apply (set/CAS/delete mix), get (deep key, recursive listing), and per value size
//! the costs a key's representation decides: overwriting and inserting keys in a dir of 100k
//! (a view held across every write, as the raft shard publishes one per batch, so each write
//! path-copies) and getting one.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use ringd_store::{Command, Store};

/// The server's allocator: the per-key costs measured here are its block sizes and paths.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Keys in the dir of the per-size benches.
const KEYS: u64 = 100_000;

/// A store holding `/bench/k%06d` for `0..KEYS` with values of `size` bytes.
fn loaded(size: usize) -> Store {
    let mut store = Store::new();
    let value = "v".repeat(size);
    for i in 0..KEYS {
        let _ = store.apply(&set(format!("/bench/k{i:06}"), &value));
    }
    store
}

/// A cheap scrambled walk over `0..KEYS` (an odd multiplier modulo a power of two would
/// be a permutation; this is close enough for spreading accesses).
fn scrambled(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYS
}

fn per_value_size(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_key");
    for size in [8usize, 32, 256] {
        let value = "w".repeat(size);
        let mut store = loaded(size);
        let mut i = 0u64;
        g.bench_function(BenchmarkId::new("overwrite", size), |b| {
            b.iter(|| {
                i += 1;
                let view = store.view();
                let key = format!("/bench/k{:06}", scrambled(i));
                let r = store.apply(&set(key, &value));
                black_box((r, view))
            })
        });
        let mut n = KEYS;
        g.bench_function(BenchmarkId::new("insert", size), |b| {
            b.iter(|| {
                n += 1;
                let view = store.view();
                let r = store.apply(&set(format!("/bench/k{n:07}"), &value));
                black_box((r, view))
            })
        });
        let view = store.view();
        g.bench_function(BenchmarkId::new("get", size), |b| {
            b.iter(|| {
                i += 1;
                black_box(view.get(&format!("/bench/k{:06}", scrambled(i)), false, false))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, apply, get, per_value_size);
criterion_main!(benches);
