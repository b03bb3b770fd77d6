//! Where a key's bytes go: builds the store the way the raft shard does (one `Set` per key,
//! a view published per batch, so path copies and their garbage happen as in the server)
//! under a counting wrapper around mimalloc (the server's allocator), then restores it from
//! its snapshot (a restart), and prints the live heap per key by allocation size class, the
//! allocator's usable bytes and the process RSS.
//!
//! `cargo run --release --example store_memory -- [KEYS=1000000] [VALUE_BYTES=32] [BATCH=64]`
//! Keys are `/bench/k%06d`. `... --example store_memory -- bins` prints mimalloc's block sizes.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

use ringd_store::{Command, Store};

extern "C" {
    fn mi_usable_size(p: *const u8) -> usize;
    fn mi_collect(force: bool);
}

/// Live allocations and usable bytes per size class (index = usable size / 8, capped).
const CLASSES: usize = 1025;
static LIVE: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];
static REQUESTED: AtomicI64 = AtomicI64::new(0);
static USABLE: AtomicI64 = AtomicI64::new(0);

struct Counting;

fn class(usable: usize) -> usize {
    (usable / 8).min(CLASSES - 1)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded to mimalloc with the caller's layout.
        let p = unsafe { mimalloc::MiMalloc.alloc(l) };
        if !p.is_null() {
            // SAFETY: p was just returned by mimalloc.
            let u = unsafe { mi_usable_size(p) };
            LIVE[class(u)].fetch_add(1, Relaxed);
            REQUESTED.fetch_add(l.size() as i64, Relaxed);
            USABLE.fetch_add(u as i64, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: p is a live mimalloc block of layout l.
        let u = unsafe { mi_usable_size(p) };
        LIVE[class(u)].fetch_sub(1, Relaxed);
        REQUESTED.fetch_sub(l.size() as i64, Relaxed);
        USABLE.fetch_sub(u as i64, Relaxed);
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn status(field: &str) -> i64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<i64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn report(what: &str, keys: u64, base: &[i64], base_req: i64, base_use: i64, rss0: i64) {
    let per = |b: i64| b as f64 / keys as f64;
    let req = REQUESTED.load(Relaxed) - base_req;
    let usable = USABLE.load(Relaxed) - base_use;
    println!(
        "== {what}: requested {:.1} B/key, usable {:.1} B/key, RSS {:.1} B/key (RssAnon {:.1}, VmHWM {:.1})",
        per(req),
        per(usable),
        per(status("VmRSS:") - rss0),
        per(status("RssAnon:") - rss0),
        per(status("VmHWM:") - rss0),
    );
    println!("   usable size  live blocks  blocks/key  B/key");
    for (i, b) in base.iter().enumerate() {
        let n = LIVE[i].load(Relaxed) - b;
        let size = (i * 8) as i64;
        if n.abs() as f64 >= keys as f64 / 1000.0 {
            println!(
                "   {:>11}  {:>11}  {:>10.3}  {:>5.1}",
                if i == CLASSES - 1 {
                    ">8K".to_string()
                } else {
                    size.to_string()
                },
                n,
                n as f64 / keys as f64,
                per(n * size)
            );
        }
    }
}

fn snapshot_live() -> Vec<i64> {
    LIVE.iter().map(|a| a.load(Relaxed)).collect()
}

/// Prints mimalloc's block sizes ("request->block" where the block grows), for byte buffers
/// and for an 8-byte aligned request of 1280 bytes: the `mimalloc` crate allocates with the
/// alignment (`mi_malloc_aligned`), and above 1 KiB an aligned size that is not a power of two
/// is over-allocated into the next block (1536), which sized the store's B+ tree leaves.
fn bins() {
    let mut last = 0;
    for n in 1..2100usize {
        let v: Vec<u8> = Vec::with_capacity(n);
        // SAFETY: a live block of this allocator.
        let u = unsafe { mi_usable_size(v.as_ptr()) };
        if u != last {
            print!("{n}->{u} ");
            last = u;
        }
    }
    println!();
    let v: Vec<[u64; 5]> = Vec::with_capacity(32);
    // SAFETY: a live block of this allocator.
    let u = unsafe { mi_usable_size(v.as_ptr().cast()) };
    println!("1280 bytes aligned to 8: a {u}-byte block");
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("bins") {
        bins();
        return;
    }
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let keys = args.first().copied().unwrap_or(1_000_000);
    let value = "v".repeat(args.get(1).copied().unwrap_or(32) as usize);
    let batch = args.get(2).copied().unwrap_or(64).max(1);

    let base = snapshot_live();
    let (base_req, base_use) = (REQUESTED.load(Relaxed), USABLE.load(Relaxed));
    let rss0 = status("VmRSS:");
    let mut store = Store::new();
    let mut view = store.view();
    for i in 0..keys {
        let cmd = Command::Set {
            key: format!("/bench/k{i:06}"),
            dir: false,
            value: value.clone(),
            expire: None,
            refresh: false,
            at: 1,
        };
        store.apply(&cmd).expect("set");
        if i % batch == batch - 1 {
            view = store.view();
        }
    }
    drop(view);
    // SAFETY: a plain call into the allocator this binary is linked with.
    unsafe { mi_collect(true) };
    report("after the load", keys, &base, base_req, base_use, rss0);

    let mut bytes = Vec::new();
    store.snapshot(&mut bytes);
    println!("   snapshot: {:.1} B/key", bytes.len() as f64 / keys as f64);
    drop(store);
    // SAFETY: as above.
    unsafe { mi_collect(true) };
    let base = snapshot_live();
    let (base_req, base_use) = (REQUESTED.load(Relaxed), USABLE.load(Relaxed));
    let restored = Store::restore(&bytes).expect("restore");
    // The snapshot's bytes were counted in the base: take them out of it.
    let held = bytes.capacity() as i64;
    drop(bytes);
    let (base_req, base_use) = (base_req - held, base_use - held);
    let base: Vec<i64> = base
        .iter()
        .enumerate()
        .map(|(i, b)| if i == CLASSES - 1 { b - 1 } else { *b })
        .collect();
    // SAFETY: as above.
    unsafe { mi_collect(true) };
    report("restored", keys, &base, base_req, base_use, rss0);
    std::hint::black_box(&restored);
}
