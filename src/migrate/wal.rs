//! etcd's WAL (`member/wal/<seq>-<index>.wal`), read as etcd's `wal.ReadAll` reads it after
//! a snapshot: segment selection, frames, the CRC chain, entry overwrites, the last hard
//! state. Any damage is refused with the segment and the frame's offset (etcd repairs a torn
//! tail itself on start; a migration does not guess). docs/etcd-data-dir.md has the format.

use super::pb::{self, RECORD_CRC, RECORD_ENTRY, RECORD_METADATA, RECORD_SNAPSHOT, RECORD_STATE};
use super::MigrateError;
use protobuf::Message;
use raft::eraftpb::{Entry, HardState};
use std::path::{Path, PathBuf};

/// etcd's `minSectorSize`: a frame with an all-zero sector was torn, not corrupted.
const SECTOR_BYTES: usize = 512;

/// What the WAL holds after the snapshot.
#[derive(Debug)]
pub struct WalContents {
    /// Entries after the snapshot's index, in index order, overwrites applied.
    pub entries: Vec<Entry>,
    /// The last hard state recorded.
    pub hard_state: HardState,
}

/// A segment's name: `<seq:016x>-<index:016x>.wal`.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, index) = stem.split_once('-')?;
    if seq.len() != 16 || index.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(index, 16).ok()?,
    ))
}

/// The segments to read for a snapshot at `snap_index`: from the last one starting at or
/// before it, every later one, with consecutive sequence numbers (`searchIndex`,
/// `isValidSeq`).
fn segments(dir: &Path, snap_index: u64) -> Result<Vec<PathBuf>, MigrateError> {
    let rd = std::fs::read_dir(dir).map_err(|e| MigrateError::io(dir, e))?;
    let mut named = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| MigrateError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((seq, index)) = parse_name(&name) {
            named.push((name, seq, index));
        }
    }
    named.sort();
    let Some(start) = named.iter().rposition(|(_, _, index)| *index <= snap_index) else {
        return Err(MigrateError::file(
            dir,
            format!("no WAL segment holds raft index {snap_index} (etcd's ErrFileNotFound)"),
        ));
    };
    let chosen = &named[start..];
    for pair in chosen.windows(2) {
        if pair[1].1 != pair[0].1.wrapping_add(1) {
            return Err(MigrateError::file(
                dir.join(&pair[1].0),
                format!(
                    "WAL segment sequence jumps from {:x} to {:x}: a segment is missing",
                    pair[0].1, pair[1].1
                ),
            ));
        }
    }
    Ok(chosen.iter().map(|(n, _, _)| dir.join(n)).collect())
}

/// A running etcd holds a write lock on its WAL segments (an open file description lock on
/// Linux, `flock` where those are missing): reading a log that is being written would
/// migrate whatever it held at that moment, so that is refused.
fn refuse_if_locked(f: &std::fs::File, path: &Path) -> Result<(), MigrateError> {
    use std::os::unix::io::AsRawFd;
    let running = || {
        MigrateError::file(
            path,
            "locked: etcd is running on this data dir; stop it first",
        )
    };
    // SAFETY: F_OFD_GETLK only reads the lock state of our own open descriptor into `lk`.
    let mut lk: libc::flock = unsafe { std::mem::zeroed() };
    lk.l_type = libc::F_RDLCK as libc::c_short;
    lk.l_whence = libc::SEEK_SET as libc::c_short;
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut lk) };
    if r == 0 && lk.l_type != libc::F_UNLCK as libc::c_short {
        return Err(running());
    }
    match fs2::FileExt::try_lock_shared(f) {
        Ok(()) => {
            let _ = fs2::FileExt::unlock(f);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(running()),
        Err(e) => Err(MigrateError::io(path, e)),
    }
}

/// Whether a frame's bytes hold an all-zero sector (etcd's `isTornEntry`): the write was torn.
fn torn(file_offset: usize, data: &[u8]) -> bool {
    let mut off = file_offset;
    let mut rest = data;
    while !rest.is_empty() {
        let chunk = (SECTOR_BYTES - off % SECTOR_BYTES).min(rest.len());
        if rest[..chunk].iter().all(|&b| b == 0) {
            return true;
        }
        off += chunk;
        rest = &rest[chunk..];
    }
    false
}

/// The reading state carried across segments.
struct Reader {
    snap_index: u64,
    snap_term: u64,
    crc: u32,
    metadata: Option<Vec<u8>>,
    entries: Vec<Entry>,
    hard_state: HardState,
    snapshot_found: bool,
}

/// Reads the WAL in `dir` after the snapshot at (`snap_index`, `snap_term`).
pub fn read(dir: &Path, snap_index: u64, snap_term: u64) -> Result<WalContents, MigrateError> {
    let mut r = Reader {
        snap_index,
        snap_term,
        crc: 0,
        metadata: None,
        entries: Vec::new(),
        hard_state: HardState::default(),
        snapshot_found: false,
    };
    for path in segments(dir, snap_index)? {
        let bytes = {
            let mut f = std::fs::File::open(&path).map_err(|e| MigrateError::io(&path, e))?;
            refuse_if_locked(&f, &path)?;
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut b).map_err(|e| MigrateError::io(&path, e))?;
            b
        };
        r.segment(&path, &bytes)?;
    }
    if !r.snapshot_found {
        return Err(MigrateError::file(
            dir,
            format!(
                "the WAL records no snapshot at raft index {snap_index} term {snap_term} (etcd's ErrSnapshotNotFound; etcd 3.5 skips such a snap file, written just before a crash: move it aside and migrate again)"
            ),
        ));
    }
    Ok(WalContents {
        entries: r.entries,
        hard_state: r.hard_state,
    })
}

impl Reader {
    /// Decodes one segment's frames up to its end or its first zero length field.
    fn segment(&mut self, path: &Path, bytes: &[u8]) -> Result<(), MigrateError> {
        let mut pos = 0usize;
        while pos < bytes.len() {
            let at = |what: String| MigrateError::at(path, pos as u64, what);
            let Some(len) = bytes.get(pos..pos + 8) else {
                return Err(at(
                    "truncated frame length (a torn write: starting etcd once repairs it)".into(),
                ));
            };
            let mut b = [0u8; 8];
            b.copy_from_slice(len);
            let len = u64::from_le_bytes(b);
            if len == 0 {
                break; // the preallocated rest of the segment
            }
            // The low 56 bits are the record's size; a set top bit means the low 3 bits of
            // the top byte are padding (etcd's decodeFrameSize).
            let rec_bytes = len & !(0xff << 56);
            let pad = if len >> 63 == 1 { (len >> 56) & 7 } else { 0 };
            let body = pos + 8;
            let end = usize::try_from(rec_bytes + pad)
                .ok()
                .and_then(|n| body.checked_add(n))
                .filter(|&e| e <= bytes.len());
            let Some(end) = end else {
                return Err(at(format!(
                    "frame of {} bytes runs past the end of the segment ({} bytes): truncated (a torn write: starting etcd once repairs it)",
                    rec_bytes + pad,
                    bytes.len()
                )));
            };
            let frame = &bytes[body..end];
            let data = &frame[..rec_bytes as usize];
            let torn_note = if torn(body, frame) {
                " (a torn write: starting etcd once repairs it)"
            } else {
                ""
            };
            let rec = pb::wal_record(data)
                .map_err(|e| at(format!("undecodable record: {e}{torn_note}")))?;
            if rec.kind != RECORD_CRC {
                self.crc = crc32c::crc32c_append(self.crc, rec.data);
                if self.crc != rec.crc {
                    return Err(at(format!(
                        "crc mismatch: the record says {:08x}, the chain gives {:08x}{torn_note}",
                        rec.crc, self.crc
                    )));
                }
            }
            self.record(rec.kind, rec.crc, rec.data).map_err(at)?;
            pos = end;
        }
        Ok(())
    }

    /// Applies one checked record, as `ReadAll` does.
    fn record(&mut self, kind: i64, crc: u32, data: &[u8]) -> Result<(), String> {
        match kind {
            RECORD_ENTRY => {
                let e = Entry::parse_from_bytes(data).map_err(|e| format!("entry: {e}"))?;
                if e.index > self.snap_index {
                    let up = e.index - self.snap_index - 1;
                    if up > self.entries.len() as u64 {
                        return Err(format!(
                            "entry {} leaves a gap after entry {} (etcd's ErrSliceOutOfRange)",
                            e.index,
                            self.snap_index + self.entries.len() as u64
                        ));
                    }
                    // A later entry at an index replaces it and everything after it.
                    self.entries.truncate(up as usize);
                    self.entries.push(e);
                }
            }
            RECORD_STATE => {
                self.hard_state =
                    HardState::parse_from_bytes(data).map_err(|e| format!("hard state: {e}"))?;
            }
            RECORD_METADATA => {
                match &self.metadata {
                    Some(m) if m != data => return Err(
                        "metadata differs from the earlier segments' (etcd's ErrMetadataConflict)"
                            .into(),
                    ),
                    _ => self.metadata = Some(data.to_vec()),
                }
            }
            RECORD_CRC => {
                // The running crc so far; 0 only in the first segment read.
                if self.crc != 0 && crc != self.crc {
                    return Err(format!(
                        "crc record says {crc:08x}, the chain gives {:08x} (etcd's ErrCRCMismatch)",
                        self.crc
                    ));
                }
                self.crc = crc;
            }
            RECORD_SNAPSHOT => {
                let (index, term) =
                    pb::wal_snapshot(data).map_err(|e| format!("snapshot record: {e}"))?;
                if index == self.snap_index {
                    if term != self.snap_term {
                        return Err(format!(
                            "snapshot record at index {index} has term {term}, the snap file {} (etcd's ErrSnapshotMismatch)",
                            self.snap_term
                        ));
                    }
                    self.snapshot_found = true;
                }
            }
            other => return Err(format!("unexpected record type {other}")),
        }
        Ok(())
    }
}

/// Writers of etcd's WAL format, for the tests of this module and of `migrate`.
#[cfg(test)]
pub mod write {
    use super::super::pb::encode;
    use super::*;

    /// Appends records to a segment image, chaining the crc as etcd's encoder does.
    pub struct Segment {
        pub bytes: Vec<u8>,
        pub crc: u32,
        /// Where each frame starts.
        pub frames: Vec<usize>,
    }

    impl Segment {
        /// A segment starting with its crc record (the chain so far) and metadata.
        pub fn new(prev_crc: u32) -> Segment {
            let mut s = Segment {
                bytes: Vec::new(),
                crc: prev_crc,
                frames: Vec::new(),
            };
            s.raw(RECORD_CRC, prev_crc, &[]);
            s.record(RECORD_METADATA, b"meta");
            s
        }

        fn raw(&mut self, kind: i64, crc: u32, data: &[u8]) {
            let mut rec = Vec::new();
            encode::field_varint(&mut rec, 1, kind as u64);
            encode::field_varint(&mut rec, 2, crc.into());
            if !data.is_empty() {
                encode::field_bytes(&mut rec, 3, data);
            }
            self.frames.push(self.bytes.len());
            let pad = (8 - rec.len() % 8) % 8;
            let mut len = rec.len() as u64;
            if pad != 0 {
                len |= (0x80 | pad as u64) << 56;
            }
            self.bytes.extend_from_slice(&len.to_le_bytes());
            self.bytes.extend_from_slice(&rec);
            self.bytes.extend(std::iter::repeat_n(0u8, pad));
        }

        pub fn record(&mut self, kind: i64, data: &[u8]) {
            self.crc = crc32c::crc32c_append(self.crc, data);
            self.raw(kind, self.crc, data);
        }

        pub fn snapshot(&mut self, index: u64, term: u64) {
            let mut d = Vec::new();
            encode::field_varint(&mut d, 1, index);
            encode::field_varint(&mut d, 2, term);
            self.record(RECORD_SNAPSHOT, &d);
        }

        pub fn entry(&mut self, e: &Entry) {
            let bytes = e.write_to_bytes().expect("an entry encodes");
            self.record(RECORD_ENTRY, &bytes);
        }

        pub fn state(&mut self, term: u64, commit: u64) {
            let hs = HardState {
                term,
                commit,
                ..Default::default()
            };
            self.record(
                RECORD_STATE,
                &hs.write_to_bytes().expect("a hard state encodes"),
            );
        }
    }

    pub fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    pub fn name(seq: u64, index: u64) -> String {
        format!("{seq:016x}-{index:016x}.wal")
    }
}

#[cfg(test)]
mod tests {
    use super::write::*;
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ringd-etcdwal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Two segments: snapshot 0 then entries 1..=3 (3 rewritten by a later term), a
    /// snapshot record at 2, and in the second segment entry 4 and the last hard state.
    fn two_segments(dir: &Path) -> (PathBuf, PathBuf, Vec<usize>) {
        let mut a = Segment::new(0);
        a.snapshot(0, 0);
        for i in 1..=3 {
            a.entry(&entry(i, 1, format!("e{i}").as_bytes()));
        }
        a.state(1, 2);
        a.snapshot(2, 1);
        a.entry(&entry(3, 2, b"e3'"));
        let mut b = Segment::new(a.crc);
        b.entry(&entry(4, 2, b"e4"));
        b.state(2, 4);
        let (pa, pb) = (dir.join(name(0, 0)), dir.join(name(1, 4)));
        // The first segment was cut (truncated); the last is preallocated with zeros.
        std::fs::write(&pa, &a.bytes).unwrap();
        let mut tail = b.bytes.clone();
        tail.resize(tail.len() + 4096, 0);
        std::fs::write(&pb, &tail).unwrap();
        (pa, pb, a.frames)
    }

    #[test]
    fn reads_entries_after_the_snapshot_with_overwrites_and_the_last_hard_state() {
        let d = tmpdir("read");
        two_segments(&d);
        let w = read(&d, 0, 0).unwrap();
        let got: Vec<(u64, u64, Vec<u8>)> = w
            .entries
            .iter()
            .map(|e| (e.index, e.term, e.data.to_vec()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 1, b"e1".to_vec()),
                (2, 1, b"e2".to_vec()),
                (3, 2, b"e3'".to_vec()),
                (4, 2, b"e4".to_vec())
            ]
        );
        assert_eq!(w.hard_state.commit, 4);
        let w = read(&d, 2, 1).unwrap();
        assert_eq!(w.entries.first().map(|e| e.index), Some(3));
        // A snapshot the WAL does not record, or with another term, is refused.
        assert!(read(&d, 2, 7)
            .unwrap_err()
            .to_string()
            .contains("ErrSnapshotMismatch"));
        assert!(read(&d, 3, 2)
            .unwrap_err()
            .to_string()
            .contains("ErrSnapshotNotFound"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn damage_is_refused_with_the_segment_and_the_frame_offset() {
        let d = tmpdir("damage");
        let (pa, pb, frames) = two_segments(&d);
        let good_a = std::fs::read(&pa).unwrap();
        let good_b = std::fs::read(&pb).unwrap();
        // Truncated in the middle of the second segment's last frame.
        let cut = good_b.iter().rposition(|&x| x != 0).unwrap() - 3;
        std::fs::write(&pb, &good_b[..cut]).unwrap();
        let e = read(&d, 0, 0).unwrap_err().to_string();
        assert!(
            e.contains(&pb.display().to_string()) && e.contains("truncated"),
            "{e}"
        );
        std::fs::write(&pb, &good_b).unwrap();
        // A flipped bit in a record's crc field (the first entry's, after crc+meta+snap).
        let mut bad = good_a.clone();
        let third = frames[3];
        bad[third + 8 + 3] ^= 0x01; // inside the crc varint of the first entry
        std::fs::write(&pa, &bad).unwrap();
        let e = read(&d, 0, 0).unwrap_err().to_string();
        assert!(
            e.contains(&pa.display().to_string()) && e.contains(&format!("offset {third}")),
            "{e}"
        );
        std::fs::write(&pa, &good_a).unwrap();
        // A missing segment in the sequence.
        std::fs::rename(&pb, d.join(name(2, 4))).unwrap();
        assert!(read(&d, 0, 0).unwrap_err().to_string().contains("missing"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn torn_sectors_are_recognised() {
        assert!(torn(0, &[0u8; 600]));
        let mut d = vec![1u8; 1100];
        assert!(!torn(8, &d));
        d[504..1016].fill(0); // one whole sector (file offsets 512..1024) zero
        assert!(torn(8, &d));
    }
}
