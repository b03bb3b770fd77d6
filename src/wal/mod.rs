//! The write-ahead log: preallocated, memory-mapped segments of CRC32C-framed records, one
//! fdatasync per batch. The byte layout and the recovery rules are in docs/wal-format.md.
//!
//! The log knows nothing of raft's types: it stores `LogEntry` (index, term, kind, bytes) and a
//! `HardState`. It runs on a `Storage` (the real file system, or `sim::SimStorage` in tests).

mod record;
pub mod sim;
mod storage;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use record::{Parsed, SegmentHeader};
pub use record::{FORMAT_VERSION, MAX_PAYLOAD};
pub use storage::{FsFile, FsStorage, Storage, StorageFile, WriteMode};

/// Default segment size. Each segment is preallocated to this size.
pub const WAL_SEGMENT_BYTES: u64 = 64 << 20;
const _: () = assert!(WAL_SEGMENT_BYTES.is_multiple_of(4096));

/// The write buffer is written (without sync) once it holds this much.
const FLUSH_BYTES: usize = 1 << 20;
/// Zeroes are written in chunks of this size when a torn tail is discarded.
const ZERO_CHUNK: usize = 64 << 10;
/// The active segment is kept overwritten with zeroes this far past the end of the data.
/// fallocate leaves "unwritten" extents, and an fdatasync after writing into one must also
/// write the extent change; over blocks already written it writes only data. Measured on
/// this machine's ext4 (4 KiB per fdatasync): 136-158 us per fdatasync after fallocate, 86
/// us with zeroes ahead, 91 us on a fully zero-filled file; `perf/ab.sh` put at 64
/// connections: +10 % req/s. Zeroes beyond the end change nothing on disk that recovery
/// reads (the preallocated tail is zeroes either way), so this needs no sync of its own.
const ZERO_AHEAD: u64 = 1 << 20;
/// Zeroes ahead are written in chunks of this size, and their writeback started at once so
/// the next fdatasync finds them mostly on disk already.
const ZERO_AHEAD_CHUNK: usize = storage::ZEROES_AHEAD_MAX;

/// Removes segments `Wal::detach` returned from `dir`, in order, syncing the directory after
/// each: a crash then leaves the oldest segments gone, never a gap between segments (a gap
/// refuses to start, `MissingSegment`). One already gone is fine (a retry after a crash).
/// `compact` uses it too; the raft shard has the snapshot thread call it.
pub fn remove_detached<S: Storage>(storage: &S, dir: &Path, paths: &[PathBuf]) -> io::Result<()> {
    for p in paths {
        match storage.remove(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        storage.sync_dir(dir)?;
    }
    Ok(())
}

/// `<data-dir>/member/wal`, the directory to give `Wal::open`.
pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("wal")
}

#[derive(Debug)]
pub enum WalError {
    Io(io::Error),
    /// A record or header that cannot be trusted, before valid data: the log refuses to start.
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A segment written by a newer ringd.
    NewerFormat {
        file: PathBuf,
        found: u32,
        supported: u32,
    },
    /// Another process (or another `Wal` in this one) holds the directory's lock.
    Locked(PathBuf),
    /// A hole in the segment sequence.
    MissingSegment {
        dir: PathBuf,
        expected_seq: u64,
        found: PathBuf,
    },
    /// The log starts after `after_index + 1`: the entries between are nowhere.
    MissingEntries {
        after_index: u64,
        first_index: u64,
    },
    /// An append whose first index is not in `[first, last + 1]`, or a batch with a hole.
    OutOfOrder {
        index: u64,
        first: u64,
        last: u64,
    },
    /// `entries(lo, hi)` outside `[first, last + 1]`.
    OutOfRange {
        lo: u64,
        hi: u64,
        first: u64,
        last: u64,
    },
    /// An entry whose payload exceeds `MAX_PAYLOAD`.
    TooLarge {
        index: u64,
        len: usize,
    },
    /// An earlier write or sync failed; the log must be reopened (the process should exit).
    Poisoned,
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Io(e) => write!(f, "wal: {e}"),
            WalError::Corrupt {
                file,
                offset,
                reason,
            } => write!(
                f,
                "wal: corrupt log file {} at offset {offset}: {reason}",
                file.display()
            ),
            WalError::NewerFormat {
                file,
                found,
                supported,
            } => write!(
                f,
                "wal: {} has format version {found}, newer than the supported version {supported}",
                file.display()
            ),
            WalError::Locked(p) => {
                write!(
                    f,
                    "wal: {} is locked: another ringd is using this data dir",
                    p.display()
                )
            }
            WalError::MissingSegment {
                dir,
                expected_seq,
                found,
            } => write!(
                f,
                "wal: segment {expected_seq:016x} is missing in {} (the next present is {})",
                dir.display(),
                found.display()
            ),
            WalError::MissingEntries {
                after_index,
                first_index,
            } => write!(
                f,
                "wal: the log starts at index {first_index}, so the entries after snapshot index \
                 {after_index} are missing"
            ),
            WalError::OutOfOrder { index, first, last } => write!(
                f,
                "wal: cannot append entry {index} to a log holding [{first}, {last}]"
            ),
            WalError::OutOfRange {
                lo,
                hi,
                first,
                last,
            } => write!(
                f,
                "wal: entries [{lo}, {hi}) requested from a log holding [{first}, {last}]"
            ),
            WalError::TooLarge { index, len } => write!(
                f,
                "wal: entry {index} has {len} bytes, more than the limit {MAX_PAYLOAD}"
            ),
            WalError::Poisoned => {
                write!(
                    f,
                    "wal: an earlier write or sync failed; the log must be reopened"
                )
            }
        }
    }
}

impl std::error::Error for WalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WalError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for WalError {
    fn from(e: io::Error) -> Self {
        WalError::Io(e)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub index: u64,
    pub term: u64,
    pub kind: u8,
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Every entry with index > `after_index`, in order.
    pub entries: Vec<LogEntry>,
    pub hard_state: HardState,
    /// What was discarded, if the log ended in a torn write.
    pub torn_tail: Option<String>,
}

struct Segment<F> {
    seq: u64,
    first_index: u64,
    path: PathBuf,
    file: F,
    len: u64,
    /// End of the valid data (where the next record goes, for the last segment).
    end: u64,
    /// Bytes before this offset have been written (data or zeroes): see `ZERO_AHEAD`.
    zeroed: u64,
}

/// Where an entry's record is.
#[derive(Clone, Copy, Debug)]
struct Pos {
    seq: u64,
    off: u64,
}

/// The log state rebuilt record by record, at recovery.
struct Replay {
    first: u64,
    pos: Vec<Pos>,
    hs: HardState,
}

impl Replay {
    fn last(&self) -> u64 {
        self.first + self.pos.len() as u64 - 1
    }

    fn apply(
        &mut self,
        r: &record::Record<'_>,
        seq: u64,
        at: u64,
        path: &Path,
    ) -> Result<(), WalError> {
        let corrupt = |reason: String| WalError::Corrupt {
            file: path.into(),
            offset: at,
            reason,
        };
        match r.rtype {
            record::TYPE_ENTRY => {
                let (e, last) = (r.index, self.last());
                if e == 0 || e > last + 1 {
                    return Err(corrupt(format!(
                        "entry {e} does not follow the last index {last}"
                    )));
                }
                if e < self.first {
                    self.first = e;
                    self.pos.clear();
                } else {
                    self.pos.truncate((e - self.first) as usize);
                }
                self.pos.push(Pos { seq, off: at });
            }
            record::TYPE_HARD_STATE => self.hs = record::decode_hard_state(r.payload),
            record::TYPE_RESTART => {
                self.first = r
                    .index
                    .checked_add(1)
                    .ok_or_else(|| corrupt("restart at u64::MAX".into()))?;
                self.pos.clear();
            }
            t => return Err(corrupt(format!("unknown record type {t}"))),
        }
        Ok(())
    }
}

enum Scan {
    /// The last segment was never completely created (crash during rotation).
    TornCreation(String),
    Data {
        end: u64,
        zero: Option<(u64, u64)>,
        torn: Option<String>,
    },
}

fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

/// What `scan_segment` asks of the segment's file beside its bytes.
struct ScanIo<'a> {
    /// The end of the last nonzero byte at or after an offset (`StorageFile::last_nonzero_end`),
    /// for the last segment's check for unsynced data after the end of the log.
    tail: &'a dyn Fn(usize) -> io::Result<Option<usize>>,
    /// The bytes before an offset are read (`StorageFile::release_map_below`).
    passed: &'a dyn Fn(usize),
}

/// How far the scan goes between two `ScanIo::passed`.
const SCAN_RELEASE_STEP: usize = 4 << 20;

/// Validates one segment's bytes and applies its records to `replay`.
fn scan_segment(
    b: &[u8],
    path: &Path,
    seq: u64,
    name_first: u64,
    is_last: bool,
    replay: &mut Option<Replay>,
    io: ScanIo<'_>,
) -> Result<Scan, WalError> {
    let corrupt = |offset: usize, reason: String| WalError::Corrupt {
        file: path.into(),
        offset: offset as u64,
        reason,
    };
    let header = match record::decode_header(b) {
        Ok(h) => h,
        Err(record::HeaderError::Newer(found)) => {
            return Err(WalError::NewerFormat {
                file: path.into(),
                found,
                supported: FORMAT_VERSION,
            })
        }
        Err(_)
            if is_last
                && record::last_nonzero_end(
                    b,
                    record::HEADER_LEN + record::HARD_STATE_RECORD_LEN,
                )
                .is_none() =>
        {
            return Ok(Scan::TornCreation(format!(
                "{}: removed a segment whose creation a crash interrupted",
                path.display()
            )))
        }
        Err(record::HeaderError::Missing) => {
            return Err(corrupt(0, "missing segment header".into()))
        }
        Err(record::HeaderError::Bad(r)) => return Err(corrupt(0, r)),
    };
    if header
        != (SegmentHeader {
            seq,
            first_index: name_first,
        })
        || header.first_index == 0
    {
        return Err(corrupt(
            0,
            format!(
                "header says sequence {:016x}, first index {:016x}; the file name disagrees",
                header.seq, header.first_index
            ),
        ));
    }
    let replay = match replay {
        Some(r) => {
            if header.first_index != r.last() + 1 {
                return Err(corrupt(
                    0,
                    format!(
                        "segment starts at index {} but the log before it ends at {}",
                        header.first_index,
                        r.last()
                    ),
                ));
            }
            r
        }
        None => replay.insert(Replay {
            first: header.first_index,
            pos: Vec::new(),
            hs: HardState::default(),
        }),
    };
    let mut x = record::HEADER_LEN;
    let (mut zero, mut torn) = (None, None);
    loop {
        match record::parse(b, x) {
            Ok(Parsed::End) => {
                if is_last {
                    if let Some(end) = (io.tail)(x)? {
                        zero = Some((x as u64, end as u64));
                        torn = Some(format!(
                            "{}: discarded unsynced data between offsets {x} and {end}, after the \
                             end of the log",
                            path.display(),
                        ));
                    }
                }
                break;
            }
            Ok(Parsed::Record(r)) => {
                replay.apply(&r, seq, x as u64, path)?;
                if r.next / SCAN_RELEASE_STEP > x / SCAN_RELEASE_STEP {
                    (io.passed)(x);
                }
                x = r.next;
            }
            Err(reason) => {
                if !is_last {
                    return Err(corrupt(x, reason));
                }
                let later = record::find_valid_after(b, x);
                if let Some(y) = later {
                    if !record::has_unwritten_sector(b, x, y) {
                        return Err(corrupt(
                            x,
                            format!("{reason}; a valid record follows at offset {y}"),
                        ));
                    }
                }
                let end = record::last_nonzero_end(b, x).unwrap_or(x);
                zero = Some((x as u64, end as u64));
                torn = Some(format!(
                    "{}: truncated a torn record at offset {x} ({reason}){}",
                    path.display(),
                    if later.is_some() {
                        " and the unsynced records after it"
                    } else {
                        ""
                    }
                ));
                break;
            }
        }
    }
    Ok(Scan::Data {
        end: x as u64,
        zero,
        torn,
    })
}

/// The durable log. `S` is the storage; `Wal` alone means the real file system.
pub struct Wal<S: Storage = FsStorage> {
    storage: S,
    dir: PathBuf,
    _lock: S::Lock,
    segment_bytes: u64,
    /// Ordered by sequence; the last one is the active segment.
    segments: Vec<Segment<S::File>>,
    /// Index of `pos[0]`; the log holds `[first, first + pos.len())`.
    first: u64,
    pos: Vec<Pos>,
    /// The last hard state encoded into the record stream.
    written_hs: HardState,
    pending_hs: Option<HardState>,
    /// Encoded records not yet written; they go at `write_off` of the active segment.
    pending: Vec<u8>,
    write_off: u64,
    /// The active segment is durable up to here.
    synced_off: u64,
    poisoned: bool,
}

impl Wal<FsStorage> {
    /// Opens (creating if needed) the log in `dir`, takes an exclusive lock on it (a second
    /// process gets `WalError::Locked`), validates every segment, truncates a torn tail
    /// (reporting it), refuses mid-log corruption (`Corrupt` naming file and byte offset),
    /// refuses a newer format version, and returns the entries after `after_index` (the caller's
    /// snapshot index) plus the last hard state.
    pub fn open(
        dir: &Path,
        after_index: u64,
        segment_bytes: u64,
    ) -> Result<(Wal, Recovered), WalError> {
        Wal::open_with(FsStorage::default(), dir, after_index, segment_bytes)
    }
}

impl<S: Storage> Wal<S> {
    /// `open` on any storage.
    pub fn open_with(
        storage: S,
        dir: &Path,
        after_index: u64,
        segment_bytes: u64,
    ) -> Result<(Self, Recovered), WalError> {
        let segment_bytes = segment_bytes.max(4096).div_ceil(4096) * 4096;
        storage.create_dir_all(dir)?;
        let lock = storage.lock(dir)?;
        let mut names = Vec::new();
        for n in storage.list(dir)? {
            if !n.ends_with(".wal") {
                continue;
            }
            let (seq, first) = parse_segment_name(&n).ok_or_else(|| WalError::Corrupt {
                file: dir.join(&n),
                offset: 0,
                reason: "unexpected segment file name".into(),
            })?;
            names.push((seq, first, n));
        }
        names.sort();
        for w in names.windows(2) {
            if w[1].0 != w[0].0 + 1 {
                return Err(WalError::MissingSegment {
                    dir: dir.into(),
                    expected_seq: w[0].0 + 1,
                    found: dir.join(&w[1].2),
                });
            }
        }

        let mut wal = Wal {
            storage,
            dir: dir.into(),
            _lock: lock,
            segment_bytes,
            segments: Vec::new(),
            first: after_index + 1,
            pos: Vec::new(),
            written_hs: HardState::default(),
            pending_hs: None,
            pending: Vec::new(),
            write_off: 0,
            synced_off: 0,
            poisoned: false,
        };
        let mut replay: Option<Replay> = None;
        let mut torn_notes = Vec::new();
        let mut next_seq = 0;
        let count = names.len();
        for (i, (seq, name_first, name)) in names.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let path = dir.join(&name);
            let mut file = wal.storage.open(&path)?;
            let len = file.len()?;
            let tail = |x: usize| -> io::Result<Option<usize>> {
                Ok(file
                    .last_nonzero_end(x as u64)?
                    .and_then(|e| usize::try_from(e).ok()))
            };
            let passed = |x: usize| file.release_map_below(x as u64);
            let scan = match file.mapped() {
                Some(b) => {
                    let io = ScanIo {
                        tail: &tail,
                        passed: &passed,
                    };
                    scan_segment(b, &path, seq, name_first, is_last, &mut replay, io)?
                }
                None => {
                    let mut b = vec![
                        0;
                        usize::try_from(len)
                            .map_err(|_| io::Error::other("segment too large"))?
                    ];
                    file.read_at(0, &mut b)?;
                    let io = ScanIo {
                        tail: &|x| Ok(record::last_nonzero_end(&b, x)),
                        passed: &|_| {},
                    };
                    scan_segment(&b, &path, seq, name_first, is_last, &mut replay, io)?
                }
            };
            match scan {
                Scan::TornCreation(note) => {
                    drop(file);
                    wal.storage.remove(&path)?;
                    wal.storage.sync_dir(dir)?;
                    tracing::warn!("{note}");
                    torn_notes.push(note);
                    next_seq = seq;
                }
                Scan::Data { end, zero, torn } => {
                    if let Some((from, to)) = zero {
                        let zeros = vec![0u8; ZERO_CHUNK.min((to - from) as usize)];
                        let mut at = from;
                        while at < to {
                            let n = zeros.len().min((to - at) as usize);
                            file.write_at(at, &zeros[..n])?;
                            at += n as u64;
                        }
                        file.sync_data(from, to - from)?;
                    }
                    if let Some(note) = torn {
                        tracing::warn!("{note}");
                        torn_notes.push(note);
                    }
                    file.release_map()?;
                    wal.segments.push(Segment {
                        seq,
                        first_index: name_first,
                        path,
                        file,
                        len,
                        end,
                        zeroed: end,
                    });
                    next_seq = seq + 1;
                }
            }
        }
        if let Some(r) = replay {
            wal.first = r.first;
            wal.pos = r.pos;
            wal.written_hs = r.hs;
        }
        if let Some(seg) = wal.segments.last_mut() {
            if seg.len < segment_bytes {
                seg.file.set_len(segment_bytes)?;
                seg.file.sync_all()?;
                seg.len = segment_bytes;
            }
            wal.write_off = seg.end;
            wal.synced_off = seg.end;
        } else {
            // A new log (or one whose only segment was torn at creation) starts after the
            // caller's snapshot.
            wal.first = after_index + 1;
            wal.pos.clear();
            wal.create_segment(next_seq, after_index + 1, 0)?;
            if let Some(parent) = dir.parent() {
                wal.storage.sync_dir(parent)?;
            }
        }

        let last = wal.last_index();
        if after_index + 1 < wal.first {
            return Err(WalError::MissingEntries {
                after_index,
                first_index: wal.first,
            });
        }
        if after_index > last {
            wal.restart(after_index)?;
        }
        let entries = wal.entries(after_index + 1, wal.last_index() + 1)?;
        for seg in &mut wal.segments {
            seg.file.release_map()?;
        }
        tracing::info!(
            dir = %dir.display(),
            segments = wal.segments.len(),
            first = wal.first,
            last = wal.last_index(),
            "wal opened"
        );
        let torn_tail = if torn_notes.is_empty() {
            None
        } else {
            Some(torn_notes.join("; "))
        };
        let hard_state = wal.written_hs;
        Ok((
            wal,
            Recovered {
                entries,
                hard_state,
                torn_tail,
            },
        ))
    }

    /// Buffers entries (appended in index order; an entry whose index is <= the last index
    /// truncates the log suffix from there, as raft requires for followers). Durable at the next
    /// `sync`.
    pub fn append(&mut self, entries: &[LogEntry]) -> Result<(), WalError> {
        self.check()?;
        let Some(e0) = entries.first() else {
            return Ok(());
        };
        let last = self.last_index();
        if e0.index < self.first || e0.index > last + 1 {
            return Err(WalError::OutOfOrder {
                index: e0.index,
                first: self.first,
                last,
            });
        }
        for w in entries.windows(2) {
            if w[1].index != w[0].index + 1 {
                return Err(WalError::OutOfOrder {
                    index: w[1].index,
                    first: self.first,
                    last: w[0].index,
                });
            }
        }
        if let Some(e) = entries.iter().find(|e| e.data.len() > MAX_PAYLOAD) {
            return Err(WalError::TooLarge {
                index: e.index,
                len: e.data.len(),
            });
        }
        let r = self.append_checked(entries);
        self.poison_on_err(r)
    }

    fn append_checked(&mut self, entries: &[LogEntry]) -> Result<(), WalError> {
        for e in entries {
            let p = self.push_record(record::TYPE_ENTRY, e.kind, e.index, e.term, &e.data)?;
            self.pos.truncate((e.index - self.first) as usize);
            self.pos.push(p);
        }
        Ok(())
    }

    /// Records the hard state; it is written after the entries of the same batch and made
    /// durable by the same `sync`.
    pub fn set_hard_state(&mut self, hs: HardState) -> Result<(), WalError> {
        self.check()?;
        self.pending_hs = Some(hs);
        Ok(())
    }

    /// Drops every entry and continues the log at `index + 1`, for a follower that installed a
    /// snapshot at `index` beyond its log. Durable at the next `sync`.
    pub fn restart(&mut self, index: u64) -> Result<(), WalError> {
        self.check()?;
        let r = self.push_record(record::TYPE_RESTART, 0, index, 0, &[]);
        self.poison_on_err(r)?;
        self.first = index + 1;
        self.pos.clear();
        Ok(())
    }

    /// Makes everything appended so far durable with exactly one fdatasync (plus, only when a
    /// segment was created, the fsyncs of rotation). Any error is fatal: the log is poisoned
    /// and the caller must exit and recover from disk.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check()?;
        let r = self.sync_inner();
        self.poison_on_err(r)
    }

    fn sync_inner(&mut self) -> Result<(), WalError> {
        if let Some(hs) = self.pending_hs.take() {
            if hs != self.written_hs {
                let last = self.last_index();
                self.ensure_room(record::HARD_STATE_RECORD_LEN)?;
                record::encode_hard_state(&mut self.pending, hs, last);
                self.written_hs = hs;
            }
        }
        self.flush()?;
        self.sync_active()
    }

    /// Deletes segments whose entries are all <= index (after a snapshot). Never the active one.
    pub fn compact(&mut self, index: u64) -> Result<(), WalError> {
        self.check()?;
        let r = self.compact_inner(index);
        self.poison_on_err(r)
    }

    fn compact_inner(&mut self, index: u64) -> Result<(), WalError> {
        let paths = self.detach_inner(index);
        Ok(remove_detached(&self.storage, &self.dir, &paths)?)
    }

    /// `compact` without the file system work: forgets the segments whose entries are all <=
    /// `index` and returns their paths, oldest first, for `remove_detached` on another thread
    /// (removing a 64 MiB segment takes ~5 ms here, which the raft shard must not wait for).
    /// Until they are removed they are only old entries before a snapshot, which recovery
    /// accepts.
    pub fn detach(&mut self, index: u64) -> Result<Vec<PathBuf>, WalError> {
        self.check()?;
        Ok(self.detach_inner(index))
    }

    fn detach_inner(&mut self, index: u64) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        while self.segments.len() > 1 && self.segments[1].first_index <= index.saturating_add(1) {
            let seg = self.segments.remove(0);
            drop(seg.file);
            paths.push(seg.path);
        }
        if !paths.is_empty() {
            let keep = self.segments[0].seq;
            let n = self.pos.iter().take_while(|p| p.seq < keep).count();
            self.pos.drain(..n);
            self.first += n as u64;
        }
        paths
    }

    /// Entries in `[lo, hi)`, read from the maps (or the write buffer).
    pub fn entries(&self, lo: u64, hi: u64) -> Result<Vec<LogEntry>, WalError> {
        let last = self.last_index();
        if lo > hi || lo < self.first || hi > last + 1 {
            return Err(WalError::OutOfRange {
                lo,
                hi,
                first: self.first,
                last,
            });
        }
        (lo..hi).map(|i| self.read_entry(i)).collect()
    }

    /// The last index held (first_index() - 1 when empty).
    pub fn last_index(&self) -> u64 {
        self.first + self.pos.len() as u64 - 1
    }

    /// The first index held.
    pub fn first_index(&self) -> u64 {
        self.first
    }

    /// The hard state as of the last `set_hard_state`.
    pub fn hard_state(&self) -> HardState {
        self.pending_hs.unwrap_or(self.written_hs)
    }

    /// Segment files, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }

    fn check(&self) -> Result<(), WalError> {
        if self.poisoned {
            Err(WalError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn poison_on_err<T>(&mut self, r: Result<T, WalError>) -> Result<T, WalError> {
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    fn active(&mut self) -> &mut Segment<S::File> {
        self.segments
            .last_mut()
            .expect("a wal always has an active segment")
    }

    /// Encodes one record into the write buffer, rotating first if it does not fit.
    fn push_record(
        &mut self,
        rtype: u8,
        kind: u8,
        index: u64,
        term: u64,
        payload: &[u8],
    ) -> Result<Pos, WalError> {
        self.ensure_room(record::record_len(payload.len()))?;
        let off = self.write_off + self.pending.len() as u64;
        let seq = self.active().seq;
        record::encode(&mut self.pending, rtype, kind, index, term, payload);
        if self.pending.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(Pos { seq, off })
    }

    fn ensure_room(&mut self, len: usize) -> Result<(), WalError> {
        let end = self.write_off + self.pending.len() as u64 + len as u64;
        if end <= self.active().len {
            return Ok(());
        }
        // Rotation: the old segment is complete and durable before the new one exists.
        self.flush()?;
        self.sync_active()?;
        let seq = self.active().seq + 1;
        let first = self.last_index() + 1;
        self.create_segment(seq, first, len)
    }

    /// Creates a segment with its header and the last written hard state, durably.
    fn create_segment(&mut self, seq: u64, first_index: u64, need: usize) -> Result<(), WalError> {
        let mut buf = Vec::with_capacity(record::HEADER_LEN + record::HARD_STATE_RECORD_LEN);
        record::encode_header(&mut buf, SegmentHeader { seq, first_index });
        record::encode_hard_state(&mut buf, self.written_hs, first_index - 1);
        let size = self
            .segment_bytes
            .max(((buf.len() + need) as u64).div_ceil(4096) * 4096);
        let path = self.dir.join(segment_name(seq, first_index));
        let mut file = self.storage.create(&path, size)?;
        file.write_at(0, &buf)?;
        file.sync_all()?;
        self.storage.sync_dir(&self.dir)?;
        let end = buf.len() as u64;
        self.segments.push(Segment {
            seq,
            first_index,
            path,
            file,
            len: size,
            end,
            zeroed: end,
        });
        self.write_off = end;
        self.synced_off = end;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), WalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let off = self.write_off;
        let seg = self
            .segments
            .last_mut()
            .expect("a wal always has an active segment");
        seg.file.write_at(off, &self.pending)?;
        self.write_off += self.pending.len() as u64;
        seg.end = self.write_off;
        self.pending.clear();
        // Keep zeroes ahead of the data (never over it: from the end of the data on).
        // From the next block boundary on: the block holding the data's end is written whole
        // with it (a page in `Pwrite`/`Mmap` mode, an aligned block in `Direct` mode), so
        // whole blocks of zeroes keep `Direct` writes and these apart.
        let want = (self.write_off + ZERO_AHEAD).min(seg.len);
        let mut at = seg.zeroed.max(self.write_off.next_multiple_of(4096));
        while at < want {
            let n = (ZERO_AHEAD_CHUNK as u64).min(seg.len - at);
            seg.file.write_zeroes_ahead(at, n as usize)?;
            at += n;
        }
        seg.zeroed = seg.zeroed.max(at);
        Ok(())
    }

    fn sync_active(&mut self) -> Result<(), WalError> {
        if self.write_off > self.synced_off {
            let (off, len) = (self.synced_off, self.write_off - self.synced_off);
            self.active().file.sync_data(off, len)?;
            self.synced_off = self.write_off;
        }
        Ok(())
    }

    fn read_entry(&self, index: u64) -> Result<LogEntry, WalError> {
        let p = self.pos[(index - self.first) as usize];
        let seg = &self.segments[(p.seq - self.segments[0].seq) as usize];
        let corrupt = |reason: String| WalError::Corrupt {
            file: seg.path.clone(),
            offset: p.off,
            reason,
        };
        let owned;
        let active = self.segments.last().map(|s| s.seq);
        let (buf, at): (&[u8], usize) = if Some(p.seq) == active && p.off >= self.write_off {
            (&self.pending, (p.off - self.write_off) as usize)
        } else if let Some(m) = seg.file.mapped() {
            (m, p.off as usize)
        } else {
            let mut head = [0u8; 8];
            seg.file.read_at(p.off, &mut head)?;
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            if len > MAX_PAYLOAD + record::RECORD_HEADER_LEN {
                return Err(corrupt(format!("record length {len} out of range")));
            }
            let mut b = vec![0u8; 8 + len];
            seg.file.read_at(p.off, &mut b)?;
            owned = b;
            (&owned[..], 0)
        };
        // The second of the pair of crc checks: the record is verified as it is read back.
        match record::parse(buf, at) {
            Ok(Parsed::Record(r)) if r.rtype == record::TYPE_ENTRY && r.index == index => {
                Ok(LogEntry {
                    index,
                    term: r.term,
                    kind: r.kind,
                    data: r.payload.to_vec(),
                })
            }
            Ok(Parsed::Record(r)) => Err(corrupt(format!(
                "expected entry {index}, found record type {} index {}",
                r.rtype, r.index
            ))),
            Ok(Parsed::End) => Err(corrupt(format!(
                "expected entry {index}, found the end of the data"
            ))),
            Err(reason) => Err(corrupt(reason)),
        }
    }
}
