use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::record::{self, HARD_STATE_RECORD_LEN, HEADER_LEN};
use super::sim::{CrashMode, SimStorage};
use super::*;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "ringd-wal-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn wal(&self) -> PathBuf {
        wal_dir(&self.0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn entry(index: u64, term: u64, n: usize) -> LogEntry {
    LogEntry {
        index,
        term,
        kind: (index % 3) as u8,
        data: (0..n)
            .map(|i| (index as usize * 31 + i) as u8 | 1)
            .collect(),
    }
}

fn entries(lo: u64, hi: u64, term: u64, n: usize) -> Vec<LogEntry> {
    (lo..hi).map(|i| entry(i, term, n)).collect()
}

fn open(dir: &Path, after: u64, seg: u64) -> (Wal, Recovered) {
    Wal::open(dir, after, seg).unwrap_or_else(|e| panic!("open: {e}"))
}

fn flip(path: &Path, off: u64) {
    let mut b = fs::read(path).unwrap();
    b[off as usize] ^= 0x40;
    fs::write(path, b).unwrap();
}

fn segments_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

#[test]
fn fresh_log_round_trip_every_write_mode() {
    for mode in [WriteMode::Pwrite, WriteMode::Mmap, WriteMode::Direct] {
        let t = TempDir::new("roundtrip");
        let (mut wal, rec) =
            Wal::open_with(FsStorage::with_mode(mode), &t.wal(), 0, 1 << 20).unwrap();
        assert_eq!(rec, Recovered::default());
        assert_eq!((wal.first_index(), wal.last_index()), (1, 0));
        let want = entries(1, 101, 1, 100);
        wal.append(&want).unwrap();
        // Served from the write buffer before the sync, from the map after.
        assert_eq!(wal.entries(1, 101).unwrap(), want);
        wal.set_hard_state(HardState {
            term: 1,
            vote: 1,
            commit: 100,
        })
        .unwrap();
        wal.sync().unwrap();
        assert_eq!(wal.entries(40, 60).unwrap(), want[39..59]);
        drop(wal);
        let (wal, rec) = Wal::open_with(FsStorage::with_mode(mode), &t.wal(), 0, 1 << 20).unwrap();
        assert_eq!(rec.entries, want);
        assert_eq!(
            rec.hard_state,
            HardState {
                term: 1,
                vote: 1,
                commit: 100
            }
        );
        assert_eq!(rec.torn_tail, None);
        assert_eq!(wal.last_index(), 100);
        // after_index filters what is returned.
        drop(wal);
        let (_, rec) = Wal::open_with(FsStorage::with_mode(mode), &t.wal(), 90, 1 << 20).unwrap();
        assert_eq!(rec.entries, want[90..]);
    }
}

#[test]
fn unsynced_appends_are_not_durable_but_synced_ones_are() {
    let sim = SimStorage::new();
    let dir = Path::new("/sim/wal");
    let (mut wal, _) = Wal::open_with(sim.clone(), dir, 0, 8192).unwrap();
    wal.append(&entries(1, 6, 1, 10)).unwrap();
    wal.sync().unwrap();
    wal.append(&entries(6, 9, 1, 10)).unwrap();
    sim.crash(CrashMode::Clean);
    drop(wal);
    let (_, rec) = Wal::open_with(sim.clone(), dir, 0, 8192).unwrap();
    assert_eq!(rec.entries, entries(1, 6, 1, 10));
}

#[test]
fn one_fdatasync_per_batch() {
    let sim = SimStorage::new();
    let dir = Path::new("/sim/wal");
    let (mut wal, _) = Wal::open_with(sim.clone(), dir, 0, 1 << 20).unwrap();
    let before = sim.syncs();
    for b in 0..10u64 {
        wal.append(&entries(b * 8 + 1, b * 8 + 9, 1, 64)).unwrap();
        wal.set_hard_state(HardState {
            term: 1,
            vote: 0,
            commit: b * 8,
        })
        .unwrap();
        wal.sync().unwrap();
    }
    assert_eq!(sim.syncs() - before, 10);
    // Nothing new: no sync at all.
    wal.sync().unwrap();
    assert_eq!(sim.syncs() - before, 10);
}

#[test]
fn torn_tail_is_truncated_reported_and_start_succeeds() {
    let t = TempDir::new("torn");
    let (mut wal, _) = open(&t.wal(), 0, 1 << 20);
    wal.append(&entries(1, 11, 1, 200)).unwrap();
    wal.sync().unwrap();
    let last = wal.pos[9];
    let path = wal.segment_paths()[0].clone();
    drop(wal);
    // Zero the second half of the last record: a write that only partly reached the disk.
    let mut b = fs::read(&path).unwrap();
    let (from, to) = (last.off as usize + 100, last.off as usize + 232);
    b[from..to].fill(0);
    fs::write(&path, b).unwrap();
    let (mut wal, rec) = open(&t.wal(), 0, 1 << 20);
    let note = rec.torn_tail.expect("torn tail reported");
    assert!(note.contains(&format!("offset {}", last.off)), "{note}");
    assert_eq!(rec.entries, entries(1, 10, 1, 200));
    assert_eq!(wal.last_index(), 9);
    // The log continues, and the next start is clean.
    wal.append(&entries(10, 13, 2, 20)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, rec) = open(&t.wal(), 0, 1 << 20);
    assert_eq!(rec.torn_tail, None);
    assert_eq!(rec.entries.len(), 12);
    assert_eq!(rec.entries[9..], entries(10, 13, 2, 20));
}

#[test]
fn flipped_byte_in_a_middle_record_refuses_to_start() {
    let t = TempDir::new("corrupt");
    let (mut wal, _) = open(&t.wal(), 0, 1 << 20);
    wal.append(&entries(1, 21, 1, 50)).unwrap();
    wal.sync().unwrap();
    let p = wal.pos[9];
    let path = wal.segment_paths()[0].clone();
    drop(wal);
    flip(&path, p.off + 40);
    match Wal::open(&t.wal(), 0, 1 << 20) {
        Err(WalError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert_eq!(file, path);
            assert_eq!(offset, p.off);
            let msg = WalError::Corrupt {
                file,
                offset,
                reason,
            }
            .to_string();
            assert!(msg.contains(&path.display().to_string()) && msg.contains(&p.off.to_string()));
            assert!(msg.starts_with("wal: corrupt"), "{msg}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a corrupt log"),
    }
    // The length field, too.
    flip(&path, p.off + 40);
    flip(&path, p.off + 1);
    assert!(
        matches!(Wal::open(&t.wal(), 0, 1 << 20), Err(WalError::Corrupt { offset, .. }) if offset == p.off)
    );
}

#[test]
fn flipped_byte_in_the_last_record_is_a_torn_tail() {
    let t = TempDir::new("lastflip");
    let (mut wal, _) = open(&t.wal(), 0, 1 << 20);
    wal.append(&entries(1, 21, 1, 50)).unwrap();
    wal.sync().unwrap();
    let p = wal.pos[19];
    let path = wal.segment_paths()[0].clone();
    drop(wal);
    flip(&path, p.off + 40);
    let (wal, rec) = open(&t.wal(), 0, 1 << 20);
    assert!(rec
        .torn_tail
        .unwrap()
        .contains(&format!("offset {}", p.off)));
    assert_eq!(rec.entries, entries(1, 20, 1, 50));
    assert_eq!(wal.last_index(), 19);
    // The record was zeroed on disk.
    let b = fs::read(&path).unwrap();
    assert!(b[p.off as usize..].iter().all(|&x| x == 0));
}

#[test]
fn garbage_after_the_end_is_discarded() {
    let t = TempDir::new("garbage");
    let (mut wal, _) = open(&t.wal(), 0, 1 << 20);
    wal.append(&entries(1, 4, 1, 50)).unwrap();
    wal.sync().unwrap();
    let end = wal.write_off;
    let path = wal.segment_paths()[0].clone();
    drop(wal);
    // An unsynced later write that landed while the one before it did not.
    let mut b = fs::read(&path).unwrap();
    b[end as usize + 4096..end as usize + 4200].fill(0x5a);
    fs::write(&path, b).unwrap();
    let (_, rec) = open(&t.wal(), 0, 1 << 20);
    let note = rec.torn_tail.unwrap();
    assert!(
        note.contains(&format!("between offsets {end} and {}", end + 4200)),
        "{note}"
    );
    assert_eq!(rec.entries.len(), 3);
    assert!(fs::read(&path).unwrap()[end as usize..]
        .iter()
        .all(|&x| x == 0));
}

#[test]
fn missing_segment_is_refused() {
    let t = TempDir::new("missing");
    let (mut wal, _) = open(&t.wal(), 0, 4096);
    for i in 0..40 {
        wal.append(&entries(i * 5 + 1, i * 5 + 6, 1, 100)).unwrap();
        wal.sync().unwrap();
    }
    drop(wal);
    let segs = segments_in(&t.wal());
    assert!(segs.len() >= 4, "{segs:?}");
    fs::remove_file(&segs[2]).unwrap();
    match Wal::open(&t.wal(), 0, 4096) {
        Err(
            e @ WalError::MissingSegment {
                expected_seq: 2, ..
            },
        ) => {
            assert!(e.to_string().contains("0000000000000002"), "{e}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a log with a hole"),
    }
}

#[test]
fn newer_format_version_is_refused() {
    let t = TempDir::new("newer");
    let (wal, _) = open(&t.wal(), 0, 4096);
    let path = wal.segment_paths()[0].clone();
    drop(wal);
    let mut b = fs::read(&path).unwrap();
    b[8..12].copy_from_slice(&7u32.to_le_bytes());
    fs::write(&path, b).unwrap();
    match Wal::open(&t.wal(), 0, 4096) {
        Err(WalError::NewerFormat {
            found: 7,
            supported: FORMAT_VERSION,
            file,
        }) => assert_eq!(file, path),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a newer format"),
    }
}

#[test]
fn second_open_is_locked() {
    let t = TempDir::new("lock");
    let (wal, _) = open(&t.wal(), 0, 4096);
    match Wal::open(&t.wal(), 0, 4096) {
        Err(e @ WalError::Locked(_)) => assert!(e.to_string().contains("LOCK"), "{e}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("two opens of one log"),
    }
    drop(wal);
    open(&t.wal(), 0, 4096);
}

#[test]
fn compaction_deletes_only_whole_segments_before_the_index() {
    let t = TempDir::new("compact");
    let (mut wal, _) = open(&t.wal(), 0, 4096);
    for i in 0..60u64 {
        wal.append(&[entry(i + 1, 1, 300)]).unwrap();
        wal.set_hard_state(HardState {
            term: 1,
            vote: 1,
            commit: i + 1,
        })
        .unwrap();
        wal.sync().unwrap();
    }
    let firsts: Vec<u64> = wal.segments.iter().map(|s| s.first_index).collect();
    assert!(firsts.len() >= 5, "{firsts:?}");
    // An index inside segment 2 deletes segments 0 and 1 only.
    let index = firsts[2] + 1;
    wal.compact(index).unwrap();
    assert_eq!(wal.segments.len(), firsts.len() - 2);
    assert_eq!(wal.first_index(), firsts[2]);
    assert_eq!(segments_in(&t.wal()).len(), firsts.len() - 2);
    assert!(matches!(
        wal.entries(1, 5),
        Err(WalError::OutOfRange { .. })
    ));
    assert_eq!(
        wal.entries(firsts[2], 61).unwrap(),
        entries(firsts[2], 61, 1, 300)
    );
    // Compacting to the end keeps the active segment.
    wal.compact(1000).unwrap();
    assert_eq!(wal.segments.len(), 1);
    drop(wal);
    let (wal, rec) = open(&t.wal(), 60, 4096);
    assert_eq!(
        rec.hard_state,
        HardState {
            term: 1,
            vote: 1,
            commit: 60
        }
    );
    assert!(rec.entries.is_empty());
    assert_eq!(wal.last_index(), 60);
    drop(wal);
    // A caller whose snapshot is older than the log gets MissingEntries.
    assert!(matches!(
        Wal::open(&t.wal(), 3, 4096),
        Err(WalError::MissingEntries { after_index: 3, .. })
    ));
}

#[test]
fn append_of_a_lower_index_truncates_the_suffix() {
    let t = TempDir::new("truncate");
    let (mut wal, _) = open(&t.wal(), 0, 4096);
    wal.append(&entries(1, 31, 1, 100)).unwrap();
    wal.sync().unwrap();
    // A new leader's entries replace 20.. (across a segment boundary, at term 2).
    wal.append(&entries(20, 24, 2, 60)).unwrap();
    assert_eq!(wal.last_index(), 23);
    wal.sync().unwrap();
    let mut want = entries(1, 20, 1, 100);
    want.extend(entries(20, 24, 2, 60));
    assert_eq!(wal.entries(1, 24).unwrap(), want);
    assert!(matches!(
        wal.append(&entries(30, 31, 2, 1)),
        Err(WalError::OutOfOrder { .. })
    ));
    assert!(!wal.poisoned, "a rejected append does not poison");
    drop(wal);
    let (wal, rec) = open(&t.wal(), 0, 4096);
    assert_eq!(rec.entries, want);
    drop(wal);
    // Truncating below the first segment's start, after compaction, also replays.
    let (mut wal, _) = open(&t.wal(), 0, 4096);
    wal.append(&entries(22, 40, 3, 100)).unwrap();
    wal.sync().unwrap();
    wal.compact(21).unwrap();
    drop(wal);
    let (wal, rec) = open(&t.wal(), 21, 4096);
    assert_eq!(rec.entries, entries(22, 40, 3, 100));
    assert_eq!(wal.last_index(), 39);
}

#[test]
fn rotation_across_many_records() {
    let t = TempDir::new("rotate");
    let (mut wal, _) = open(&t.wal(), 0, 8192);
    let mut want = Vec::new();
    let mut i = 1u64;
    for batch in 0..50usize {
        let n = batch % 7 + 1;
        let es: Vec<_> = (0..n)
            .map(|k| entry(i + k as u64, 1, (batch * 37 + k * 11) % 1100))
            .collect();
        i += n as u64;
        wal.append(&es).unwrap();
        want.extend(es);
        wal.sync().unwrap();
    }
    // One record larger than a segment gets a segment of its own.
    let big = entry(i, 1, 20_000);
    wal.append(std::slice::from_ref(&big)).unwrap();
    want.push(big);
    wal.sync().unwrap();
    assert!(wal.segments.len() > 10, "{}", wal.segments.len());
    assert_eq!(wal.entries(1, i + 1).unwrap(), want);
    drop(wal);
    let (wal, rec) = open(&t.wal(), 0, 8192);
    assert_eq!(rec.entries, want);
    assert_eq!(wal.entries(1, i + 1).unwrap(), want);
}

#[test]
fn hard_state_is_recovered_and_survives_rotation_and_compaction() {
    let t = TempDir::new("hs");
    let (mut wal, _) = open(&t.wal(), 0, 4096);
    wal.set_hard_state(HardState {
        term: 3,
        vote: 2,
        commit: 0,
    })
    .unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (mut wal, rec) = open(&t.wal(), 0, 4096);
    assert_eq!(
        rec.hard_state,
        HardState {
            term: 3,
            vote: 2,
            commit: 0
        }
    );
    // Many segments without a new hard state: each new segment carries it.
    for i in 1..=40 {
        wal.append(&[entry(i, 3, 500)]).unwrap();
        wal.sync().unwrap();
    }
    wal.compact(35).unwrap();
    drop(wal);
    let (_, rec) = open(&t.wal(), 35, 4096);
    assert_eq!(
        rec.hard_state,
        HardState {
            term: 3,
            vote: 2,
            commit: 0
        }
    );
    assert_eq!(rec.entries, entries(36, 41, 3, 500));
}

#[test]
fn snapshot_beyond_the_log_restarts_it() {
    let t = TempDir::new("restart");
    let (mut wal, _) = open(&t.wal(), 0, 4096);
    wal.append(&entries(1, 6, 1, 10)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (mut wal, rec) = open(&t.wal(), 100, 4096);
    assert!(rec.entries.is_empty());
    assert_eq!((wal.first_index(), wal.last_index()), (101, 100));
    assert!(matches!(
        wal.append(&entries(6, 7, 1, 1)),
        Err(WalError::OutOfOrder { .. })
    ));
    wal.append(&entries(101, 103, 2, 10)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, rec) = open(&t.wal(), 100, 4096);
    assert_eq!(rec.entries, entries(101, 103, 2, 10));
}

#[test]
fn fsync_error_is_returned_and_poisons() {
    let sim = SimStorage::new();
    let dir = Path::new("/sim/wal");
    let (mut wal, _) = Wal::open_with(sim.clone(), dir, 0, 8192).unwrap();
    wal.append(&entries(1, 3, 1, 10)).unwrap();
    sim.inject_fsync_error();
    match wal.sync() {
        Err(WalError::Io(e)) => assert!(e.to_string().contains("injected"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(wal.sync(), Err(WalError::Poisoned)));
    assert!(matches!(
        wal.append(&entries(3, 4, 1, 1)),
        Err(WalError::Poisoned)
    ));
}

#[test]
fn crash_during_segment_creation_is_a_torn_tail() {
    for n in 1..=6 {
        for mode in [
            CrashMode::Clean,
            CrashMode::TearLast(n),
            CrashMode::Scramble(n * 7),
        ] {
            let sim = SimStorage::new();
            let dir = Path::new("/sim/wal");
            let (mut wal, _) = Wal::open_with(sim.clone(), dir, 0, 4096).unwrap();
            let mut i = 1;
            // Fill the first segment.
            while wal.segments.len() == 1 {
                wal.append(&[entry(i, 1, 300)]).unwrap();
                wal.sync().unwrap();
                i += 1;
            }
            let acked = i - 1; // entries 1..i were synced
            sim.crash_at_op(n, mode);
            let r = (|| {
                wal.append(&entries(i, i + 20, 1, 300))?;
                wal.sync()
            })();
            assert!(r.is_err());
            drop(wal);
            let (wal, rec) = Wal::open_with(sim.clone(), dir, 0, 4096)
                .unwrap_or_else(|e| panic!("n={n} {mode:?}: {e}"));
            assert!(rec.entries.len() as u64 >= acked, "n={n}");
            assert_eq!(rec.entries[..acked as usize], entries(1, acked + 1, 1, 300));
            drop(wal);
        }
    }
}

#[test]
fn header_layout_is_as_documented() {
    let t = TempDir::new("layout");
    let (mut wal, _) = open(&t.wal(), 41, 4096);
    wal.append(&[LogEntry {
        index: 42,
        term: 7,
        kind: 1,
        data: b"abc".to_vec(),
    }])
    .unwrap();
    wal.sync().unwrap();
    let path = wal.segment_paths()[0].clone();
    assert!(
        path.ends_with("0000000000000000-000000000000002a.wal"),
        "{path:?}"
    );
    drop(wal);
    let b = fs::read(&path).unwrap();
    assert_eq!(b.len(), 4096);
    assert_eq!(&b[..8], b"RINGDWAL");
    assert_eq!(b[8..12], 1u32.to_le_bytes());
    assert_eq!(b[24..32], 42u64.to_le_bytes());
    let r = HEADER_LEN + HARD_STATE_RECORD_LEN;
    assert_eq!(b[r..r + 4], 27u32.to_le_bytes()); // 24 + 3 payload bytes
    assert_eq!((b[r + 8], b[r + 9]), (record::TYPE_ENTRY, 1));
    assert_eq!(b[r + 16..r + 24], 42u64.to_le_bytes());
    assert_eq!(b[r + 24..r + 32], 7u64.to_le_bytes());
    assert_eq!(&b[r + 32..r + 35], b"abc");
    assert!(b[r + 40..].iter().all(|&x| x == 0));
}

#[test]
fn wal_moves_to_the_raft_thread() {
    fn is_send<T: Send>() {}
    is_send::<Wal>();
    is_send::<Wal<SimStorage>>();
    is_send::<WalError>();
}

#[test]
fn zeroes_ahead_never_overwrite_data_and_stay_inside_the_segment() {
    let d = TempDir::new("zero-ahead");
    // A segment of 3 zero-ahead chunks plus a bit: the zeroes must stop at its end, and a
    // rotation must start a new segment's zeroes from its own data.
    let seg = 3 * ZERO_AHEAD_CHUNK as u64 + 4096;
    let (mut wal, _) = open(&d.wal(), 0, seg);
    let mut next = 1;
    // Small batches, one sync each, across several chunk boundaries and two rotations.
    while next < 8000 {
        wal.append(&entries(next, next + 7, 1, 300)).unwrap();
        wal.sync().unwrap();
        next += 7;
        let a = wal.active();
        assert!(
            a.zeroed <= a.len,
            "zeroed {} past the segment ({})",
            a.zeroed,
            a.len
        );
        assert!(
            a.zeroed >= a.end.min(a.len),
            "zeroed {} behind the data {}",
            a.zeroed,
            a.end
        );
    }
    assert!(segments_in(&d.wal()).len() >= 3);
    assert_eq!(wal.entries(1, next).unwrap(), entries(1, next, 1, 300));
    drop(wal);
    let (_, rec) = open(&d.wal(), 0, seg);
    assert_eq!(rec.entries, entries(1, next, 1, 300));
}

#[test]
fn detached_segments_are_removed_later_in_order_and_recovery_accepts_either_state() {
    let t = TempDir::new("detach");
    let (mut wal, _) = open(&t.wal(), 0, 4096);
    for i in 0..60u64 {
        wal.append(&[entry(i + 1, 1, 300)]).unwrap();
        wal.sync().unwrap();
    }
    let before = segments_in(&t.wal());
    let firsts: Vec<u64> = wal.segments.iter().map(|s| s.first_index).collect();
    assert!(firsts.len() >= 5, "{firsts:?}");
    let index = firsts[3] + 1;
    let detached = wal.detach(index).unwrap();
    // The three oldest, oldest first; nothing removed yet, but the log forgot them.
    assert_eq!(detached, before[..3].to_vec());
    assert_eq!(segments_in(&t.wal()), before);
    assert_eq!(wal.first_index(), firsts[3]);
    assert_eq!(
        wal.entries(firsts[3], 61).unwrap(),
        entries(firsts[3], 61, 1, 300)
    );
    wal.append(&[entry(61, 1, 300)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    // A crash before the removal: the old segments are still there, and recovery from a
    // snapshot at `index` takes them.
    let (wal, rec) = open(&t.wal(), index, 4096);
    assert_eq!(rec.entries, entries(index + 1, 62, 1, 300));
    drop(wal);
    // Removal, then once more (a retry after a crash finds some files gone).
    remove_detached(&FsStorage::default(), &t.wal(), &detached).unwrap();
    remove_detached(&FsStorage::default(), &t.wal(), &detached).unwrap();
    assert_eq!(segments_in(&t.wal()), before[3..].to_vec());
    let (_, rec) = open(&t.wal(), index, 4096);
    assert_eq!(rec.entries, entries(index + 1, 62, 1, 300));
}

/// This process's resident bytes in its maps of `path` (/proc/self/smaps).
fn mapped_rss(path: &Path) -> u64 {
    let smaps = fs::read_to_string("/proc/self/smaps").unwrap();
    let name = path.to_str().unwrap();
    let (mut in_map, mut total) = (false, 0);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_map = line.ends_with(name);
        } else if in_map && line.starts_with("Rss:") {
            let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            total += kb * 1024;
        }
    }
    total
}

#[test]
fn recovery_leaves_no_segment_pages_mapped() {
    // Recovery reads every record through the map and the last segment to its end; none of
    // it may stay counted in the process's memory (a 64 MiB segment was, after a restart).
    let t = TempDir::new("resident");
    let seg = 8 << 20;
    let (mut wal, _) = open(&t.wal(), 0, seg);
    for lo in (1..6001).step_by(500) {
        wal.append(&entries(lo, lo + 500, 1, 1000)).unwrap();
        wal.sync().unwrap();
    }
    drop(wal);
    let (wal, rec) = open(&t.wal(), 0, seg);
    assert_eq!(rec.entries.len(), 6000);
    let path = wal.segment_paths()[0].clone();
    assert_eq!(mapped_rss(&path), 0, "segment pages left mapped");
    // The map still serves reads: this one maps its pages again.
    assert_eq!(
        wal.entries(3000, 3001).unwrap(),
        entries(3000, 3001, 1, 1000)
    );
    assert!(mapped_rss(&path) > 0);
}

#[test]
fn the_tail_check_reads_the_file_as_the_map_would() {
    // `StorageFile::last_nonzero_end` reads a MiB at a time from the end, outside the map:
    // every chunk boundary and both ends give what a scan of the bytes gives.
    let t = TempDir::new("tail");
    let path = t.0.join("segment");
    let len = (3 << 20) + 100;
    let mib = 1usize << 20;
    for nonzero in [
        vec![],
        vec![0],
        vec![mib - 1],
        vec![mib],
        vec![len - mib - 1, len - mib],
        vec![len / 2, 5],
        vec![len - 1],
    ] {
        let mut b = vec![0u8; len];
        for &i in &nonzero {
            b[i] = 7;
        }
        fs::write(&path, &b).unwrap();
        let f = FsStorage::default().open(&path).unwrap();
        for from in [0, 1, mib - 1, mib, len / 2, len - mib, len - 1, len] {
            assert_eq!(
                f.last_nonzero_end(from as u64).unwrap(),
                record::last_nonzero_end(&b, from).map(|e| e as u64),
                "nonzero at {nonzero:?}, from {from}"
            );
        }
    }
}
