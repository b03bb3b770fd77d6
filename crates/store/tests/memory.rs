//! Measures heap bytes per small key with a counting global allocator. It reports rather than
//! asserts the exact figure (it depends on the allocator-independent request sizes only, but
//! layout details may shift with dependency versions); it does assert a generous ceiling so a
//! gross regression fails. Alone in its own test binary because the counter is global.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use ringd_store::{Command, Store};

/// Live requested bytes (not the allocator's rounded-up chunk sizes).
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn measure(label: &str, keys: impl Iterator<Item = (String, String)>) -> f64 {
    let mut store = Store::new();
    let mut n = 0u64;
    let mut payload = 0usize;
    let before = LIVE.load(Ordering::Relaxed);
    for (key, value) in keys {
        // The command is dropped before the next measurement; only the tree stays.
        payload += key.len() + value.len();
        let cmd = Command::Set {
            key,
            dir: false,
            value,
            expire: None,
            refresh: false,
            at: 0,
        };
        store.apply(&cmd).expect("set");
        n += 1;
    }
    let used = LIVE.load(Ordering::Relaxed) - before;
    assert!(store.view().node_count() >= n);
    let overhead = (used as f64 - payload as f64) / n as f64;
    println!(
        "{label}: {n} keys, {used} heap bytes, {payload} key+value bytes, {overhead:.1} bytes/key overhead"
    );
    overhead
}

#[test]
fn heap_bytes_per_small_key() {
    // 100k keys in one dir, inserted in order (the worst case for B+ tree fill).
    let flat = measure(
        "flat /k/NNNNNN",
        (0..100_000).map(|i| (format!("/k/{i:06}"), format!("value{i}"))),
    );
    // 100k keys spread over 1000 dirs, inserted in a scrambled order.
    let spread = measure(
        "spread /dNNN/kNNNNNN",
        (0..100_000u64).map(|i| {
            let j = (i * 7919) % 100_000;
            (format!("/d{:03}/k{j:06}", j % 1000), format!("value{j}"))
        }),
    );
    // 65 and 64 today (issue 11: a node of 40 bytes in a B+ tree leaf and one text block of
    // 17 bytes plus name and value; the imbl maps before took 130 and 106).
    assert!(flat < 75.0, "flat overhead {flat:.1} bytes/key");
    assert!(spread < 75.0, "spread overhead {spread:.1} bytes/key");
}
