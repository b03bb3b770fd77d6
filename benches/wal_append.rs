//! The log's append path: records of 64 B and 1 KiB, batches of 1, 8, 64 and 256, each batch
//! with a hard state, with and without the batch's sync, through pwrite, through the map and
//! through O_DIRECT, on the real disk (under target/) and on tmpfs (/dev/shm) when present.
//! Its result picks `WriteMode::DEFAULT` (docs/wal-format.md records the numbers).

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringd::wal::{FsStorage, HardState, LogEntry, Wal, WriteMode, WAL_SEGMENT_BYTES};

fn media() -> Vec<(&'static str, PathBuf)> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let mut v = vec![(
        "disk",
        target.join(format!("wal-bench-{}", std::process::id())),
    )];
    if std::path::Path::new("/dev/shm").is_dir() {
        v.push((
            "tmpfs",
            PathBuf::from(format!("/dev/shm/ringd-wal-bench-{}", std::process::id())),
        ));
    }
    v
}

fn wal_append(c: &mut Criterion) {
    for (medium, base) in media() {
        let mut g = c.benchmark_group(format!("wal_append_{medium}"));
        g.sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for mode in [WriteMode::Pwrite, WriteMode::Mmap, WriteMode::Direct] {
            for size in [64usize, 1024] {
                for batch in [1u64, 8, 64, 256] {
                    for sync in [true, false] {
                        let dir = base.join(format!("{mode:?}-{size}-{batch}-{sync}"));
                        let _ = std::fs::remove_dir_all(&dir);
                        let (mut wal, _) =
                            Wal::open_with(FsStorage::with_mode(mode), &dir, 0, WAL_SEGMENT_BYTES)
                                .expect("open the bench log");
                        let mut es: Vec<LogEntry> = (0..batch)
                            .map(|i| LogEntry {
                                index: i,
                                term: 1,
                                kind: 0,
                                data: vec![0x5a; size],
                            })
                            .collect();
                        let mut next = 1u64;
                        g.throughput(Throughput::Elements(batch));
                        let id = format!(
                            "{}/{size}B/batch{batch}/{}",
                            match mode {
                                WriteMode::Pwrite => "pwrite",
                                WriteMode::Mmap => "mmap",
                                WriteMode::Direct => "direct",
                            },
                            if sync { "sync" } else { "nosync" }
                        );
                        g.bench_function(id, |b| {
                            b.iter(|| {
                                for e in es.iter_mut() {
                                    e.index = next;
                                    next += 1;
                                }
                                wal.append(&es).expect("append");
                                wal.set_hard_state(HardState {
                                    term: 1,
                                    vote: 1,
                                    commit: next - 1,
                                })
                                .expect("hard state");
                                if sync {
                                    wal.sync().expect("sync");
                                }
                                // Keep the disk use to about two segments.
                                wal.compact(next - 1).expect("compact");
                            })
                        });
                        drop(wal);
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                }
            }
        }
        g.finish();
        let _ = std::fs::remove_dir_all(&base);
    }
}

criterion_group!(benches, wal_append);
criterion_main!(benches);
