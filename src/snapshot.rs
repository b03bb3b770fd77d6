//! Snapshot files: the store (with absolute TTL expirations) and the event history at one
//! raft index, written to a temp file, fsynced, renamed, and the directory fsynced.
//!
//! The history section holds as many events as `--watch-history` keeps (1000 by default, up
//! to millions): the layout below has carried any number since version 1, so a longer
//! history needed no new version, and an older ringd reads these files (keeping what its own
//! history holds).
//!
//! File layout (little endian), `<data-dir>/member/snap/<raft index, 16 hex>.snap`:
//! ```text
//! magic "RINGSNAP" | version u32 | raft_index u64 | raft_term u64
//! store_len u64 | store bytes (ringd-store's snapshot encoding)
//! events u32 | { len u32 | event bytes (ringd-store's event encoding) } * events
//! membership_len u32 | membership JSON (`members::Membership`)    -- version 2 and later
//! auth_len u32 | auth JSON (`auth::AuthState`)                      -- version 3 and later
//! crc32c u32 over every preceding byte
//! ```
//! The same bytes are what a leader sends a follower that needs a snapshot (the
//! `snapshot.data` of raft's MsgSnapshot): the follower checks them with `decode` and writes
//! them as its own snapshot file with `write_encoded`.
//! Loading takes the newest file that is complete and checks out; a damaged newest file falls
//! back to the previous one (the log keeps the entries after it, see `keep_index`), and the
//! caller refuses to start if the log cannot bridge the gap.

use std::fs;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"RINGSNAP";
pub const SNAPSHOT_VERSION: u32 = 3;

/// A decoded snapshot file, before its parts are turned into a store and events.
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub raft_index: u64,
    pub raft_term: u64,
    pub store: Vec<u8>,
    /// The event history, oldest first.
    pub events: Events,
    /// The membership at `raft_index` (None in version 1 files, from before clusters).
    pub membership: Option<Vec<u8>>,
    /// The v2 auth state at `raft_index` (None before version 3: auth did not exist).
    pub auth: Option<Vec<u8>>,
}

/// A snapshot's event history as the file holds it (`len u32 | event bytes` each, checked
/// by `decode`): one allocation, however many events.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Events {
    count: usize,
    section: Vec<u8>,
}

impl Events {
    /// Each event's encoding, oldest first.
    pub fn iter(&self) -> EventsIter<'_> {
        EventsIter {
            rest: &self.section,
            left: self.count,
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The events of an `Events`, oldest first.
pub struct EventsIter<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for EventsIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.rest.split_first_chunk::<4>()?;
        let (event, rest) = rest.split_at_checked(u32::from_le_bytes(*len) as usize)?;
        self.rest = rest;
        self.left -= 1;
        Some(event)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for EventsIter<'_> {}

fn name(index: u64) -> String {
    format!("{index:016x}.snap")
}

/// Encodes a snapshot (file body and CRC trailer). `events` hands each history event's
/// encoding, oldest first, to the function it is given; `events_bytes` is a size hint.
pub fn encode(
    raft_index: u64,
    raft_term: u64,
    store: &[u8],
    events: impl FnOnce(&mut dyn FnMut(&[u8])),
    events_bytes: usize,
    membership: &[u8],
    auth: &[u8],
) -> Vec<u8> {
    let put_store = |buf: &mut Vec<u8>| buf.extend_from_slice(store);
    let hint = store.len();
    encode_with(
        raft_index,
        raft_term,
        (put_store, hint),
        events,
        events_bytes,
        membership,
        auth,
    )
}

/// `encode`, with the store's section appended by `store.0` (the store's own encoder) into
/// the snapshot's buffer, which starts with room for `store.1` bytes: one buffer of the
/// snapshot's size, where encoding the store apart and copying it held two (the snapshot
/// thread's transient memory was twice the store's encoding: 80 MB for a million keys).
pub fn encode_with(
    raft_index: u64,
    raft_term: u64,
    store: (impl FnOnce(&mut Vec<u8>), usize),
    events: impl FnOnce(&mut dyn FnMut(&[u8])),
    events_bytes: usize,
    membership: &[u8],
    auth: &[u8],
) -> Vec<u8> {
    let (put_store, store_hint) = store;
    let mut buf =
        Vec::with_capacity(store_hint + membership.len() + auth.len() + 64 + events_bytes);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    buf.extend_from_slice(&raft_index.to_le_bytes());
    buf.extend_from_slice(&raft_term.to_le_bytes());
    // The store's length goes before it: written once the store is.
    let len_at = buf.len();
    buf.extend_from_slice(&0u64.to_le_bytes());
    put_store(&mut buf);
    let store_len = (buf.len() - len_at - 8) as u64;
    buf[len_at..len_at + 8].copy_from_slice(&store_len.to_le_bytes());
    // The count is filled in once the events are written.
    let count_at = buf.len();
    buf.extend_from_slice(&0u32.to_le_bytes());
    let mut count: u32 = 0;
    events(&mut |e: &[u8]| {
        buf.extend_from_slice(&(e.len() as u32).to_le_bytes());
        buf.extend_from_slice(e);
        count += 1;
    });
    buf[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    buf.extend_from_slice(&(membership.len() as u32).to_le_bytes());
    buf.extend_from_slice(membership);
    buf.extend_from_slice(&(auth.len() as u32).to_le_bytes());
    buf.extend_from_slice(auth);
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

/// Writes a snapshot durably (events already encoded: tests). Returns the file path.
pub fn write(
    dir: &Path,
    raft_index: u64,
    raft_term: u64,
    store: &[u8],
    events: &[Vec<u8>],
    membership: &[u8],
    auth: &[u8],
) -> std::io::Result<PathBuf> {
    let all = |f: &mut dyn FnMut(&[u8])| events.iter().for_each(|e| f(e));
    let bytes = events.iter().map(|e| e.len() + 4).sum();
    let buf = encode(raft_index, raft_term, store, all, bytes, membership, auth);
    write_encoded(dir, raft_index, &buf)
}

/// Writes already encoded snapshot bytes durably as the snapshot at `raft_index`: temp file,
/// fsync, rename, directory fsync.
pub fn write_encoded(dir: &Path, raft_index: u64, buf: &[u8]) -> std::io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{}.tmp", name(raft_index)));
    {
        let f = fs::File::create(&tmp)?;
        write_behind(&f, buf)?;
        f.sync_all()?;
    }
    let path = dir.join(name(raft_index));
    fs::rename(&tmp, &path)?;
    fs::File::open(dir)?.sync_all()?;
    Ok(path)
}

/// Writes `data` at the start of `f` a MiB at a time, starting each MiB's writeback as soon
/// as it is written and waiting for the one before: at most ~2 MiB are ever in flight, so the
/// disk queue stays short for the log's fdatasyncs, instead of one burst of the whole
/// snapshot (tens of MB for a million keys) at the final fsync.
fn write_behind(f: &fs::File, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    const CHUNK: usize = 1 << 20;
    let fd = f.as_raw_fd();
    let mut prev: Option<(i64, i64)> = None;
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        let off = (i * CHUNK) as u64;
        f.write_all_at(chunk, off)?;
        let range = (off as i64, chunk.len() as i64);
        // SAFETY: plain syscalls on an open descriptor. They only schedule and wait for
        // writeback; durability still comes from the fsync after this, which reports errors.
        unsafe {
            libc::sync_file_range(fd, range.0, range.1, libc::SYNC_FILE_RANGE_WRITE);
            if let Some((o, l)) = prev {
                libc::sync_file_range(
                    fd,
                    o,
                    l,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
            }
        }
        prev = Some(range);
    }
    Ok(())
}

/// Parses one snapshot file, checking framing and CRC.
pub fn read(path: &Path) -> Result<SnapshotFile, String> {
    let bytes =
        fs::read(path).map_err(|e| format!("cannot read snapshot {}: {e}", path.display()))?;
    decode(&bytes, path)
}

/// Parses snapshot bytes (a file's, or a leader's MsgSnapshot data), checking framing and
/// CRC; `path` names them in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<SnapshotFile, String> {
    let bad = |why: &str| format!("snapshot {} is damaged: {why}", path.display());
    if bytes.len() < 8 + 4 + 8 + 8 + 8 + 4 + 4 {
        return Err(bad("too short"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != crc {
        return Err(bad("checksum mismatch"));
    }
    if &body[..8] != MAGIC {
        return Err(bad("not a ringd snapshot"));
    }
    let mut pos: usize = 8;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let end = pos.checked_add(n).ok_or_else(|| bad("length overflow"))?;
        let s = body.get(pos..end).ok_or_else(|| bad("truncated"))?;
        pos += n;
        Ok(s)
    };
    let u32_of = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let u64_of = |s: &[u8]| {
        let mut b = [0u8; 8];
        b.copy_from_slice(s);
        u64::from_le_bytes(b)
    };
    let version = u32_of(take(4)?);
    if version > SNAPSHOT_VERSION {
        return Err(format!(
            "snapshot {} has format version {version}, newer than this ringd supports ({SNAPSHOT_VERSION})",
            path.display()
        ));
    }
    let raft_index = u64_of(take(8)?);
    let raft_term = u64_of(take(8)?);
    let store_len = u64_of(take(8)?) as usize;
    let store = take(store_len)?.to_vec();
    let count = u32_of(take(4)?) as usize;
    // The section follows magic, version, index, term, the store's length, the store and
    // the count (`take` has checked every length).
    let section_at = 8 + 4 + 8 + 8 + 8 + store_len + 4;
    let mut section_len: usize = 0;
    for _ in 0..count {
        let len = u32_of(take(4)?) as usize;
        take(len)?;
        section_len += 4 + len;
    }
    let events = Events {
        count,
        section: body[section_at..section_at + section_len].to_vec(),
    };
    let membership = if version >= 2 {
        let len = u32_of(take(4)?) as usize;
        Some(take(len)?.to_vec())
    } else {
        None
    };
    let auth = if version >= 3 {
        let len = u32_of(take(4)?) as usize;
        Some(take(len)?.to_vec())
    } else {
        None
    };
    if pos != body.len() {
        return Err(bad("trailing bytes"));
    }
    Ok(SnapshotFile {
        path: path.to_path_buf(),
        raft_index,
        raft_term,
        store,
        events,
        membership,
        auth,
    })
}

/// Snapshot files in `dir`, newest first (temp files from an interrupted write are removed).
pub fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
            continue;
        }
        if let Some(hex) = file.strip_suffix(".snap") {
            if let Ok(index) = u64::from_str_radix(hex, 16) {
                out.push((index, entry.path()));
            }
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.0));
    Ok(out)
}

/// Deletes every snapshot older than `keep_from` (the caller keeps the newest two).
pub fn prune(dir: &Path, keep_from: u64) -> std::io::Result<()> {
    for (index, path) in list(dir)? {
        if index < keep_from {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ringd-snap-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_store_written_into_the_buffer_gives_the_same_bytes() {
        // The store section goes in through `encode_with`'s writer, which fills in its length
        // afterwards: every section must come back whole and in place, whatever the hint.
        let store = b"the store, longer than some hints".as_slice();
        let events = |f: &mut dyn FnMut(&[u8])| {
            f(b"e1");
            f(b"event two");
        };
        for hint in [0, 3, 1 << 10] {
            let put = |b: &mut Vec<u8>| b.extend_from_slice(store);
            let bytes = encode_with(7, 2, (put, hint), events, 6, b"{\"m\":1}", b"{\"a\":2}");
            let s = decode(&bytes, Path::new("t")).unwrap();
            assert_eq!((s.raft_index, s.raft_term), (7, 2));
            assert_eq!(s.store, store, "hint {hint}");
            let got: Vec<&[u8]> = s.events.iter().collect();
            assert_eq!(got, [b"e1".as_slice(), b"event two"], "hint {hint}");
            assert_eq!(s.membership.as_deref(), Some(b"{\"m\":1}".as_slice()));
            assert_eq!(s.auth.as_deref(), Some(b"{\"a\":2}".as_slice()));
        }
    }

    #[test]
    fn round_trip_and_damage_detection() {
        let d = tmpdir("rt");
        let p = write(
            &d,
            42,
            3,
            b"store-bytes",
            &[b"e1".to_vec(), b"e2".to_vec()],
            b"{}",
            b"{\"enabled\":false}",
        )
        .unwrap();
        let s = read(&p).unwrap();
        assert_eq!(s.membership.as_deref(), Some(&b"{}"[..]));
        assert_eq!(s.auth.as_deref(), Some(&b"{\"enabled\":false}"[..]));
        assert_eq!(
            (s.raft_index, s.raft_term, s.store.as_slice()),
            (42, 3, &b"store-bytes"[..])
        );
        let events: Vec<&[u8]> = s.events.iter().collect();
        assert_eq!(events, vec![&b"e1"[..], &b"e2"[..]]);
        assert_eq!(s.events.iter().len(), 2);
        let mut bytes = fs::read(&p).unwrap();
        bytes[20] ^= 1;
        fs::write(&p, &bytes).unwrap();
        assert!(read(&p).unwrap_err().contains("checksum"));
        fs::write(&p, b"").unwrap();
        assert!(read(&p).unwrap_err().contains("too short"));
        fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        assert!(read(&p).is_err());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn version_2_files_load_without_auth() {
        let d = tmpdir("v2");
        let v3 = encode(7, 1, b"s", |_| {}, 0, b"{}", b"");
        // A version 2 file is a version 3 one without the (empty) auth section.
        let mut body = v3[..v3.len() - 8].to_vec();
        body[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let s = decode(&body, &d).unwrap();
        assert_eq!((s.raft_index, s.auth), (7, None));
        assert_eq!(s.membership.as_deref(), Some(&b"{}"[..]));
    }

    #[test]
    fn absurd_lengths_with_a_valid_checksum_are_errors_not_panics() {
        let d = tmpdir("absurd");
        fs::create_dir_all(&d).unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(MAGIC);
        body.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        body.extend_from_slice(&[0u8; 8]);
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let p = d.join("0000000000000001.snap");
        fs::write(&p, &body).unwrap();
        assert!(read(&p).is_err());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn list_is_newest_first_and_prunes() {
        let d = tmpdir("list");
        for i in [1u64, 300, 20] {
            write(&d, i, 1, b"s", &[], b"", b"").unwrap();
        }
        fs::write(d.join("0000000000000400.snap.tmp"), b"partial").unwrap();
        let l: Vec<u64> = list(&d).unwrap().iter().map(|x| x.0).collect();
        assert_eq!(l, vec![300, 20, 1]);
        prune(&d, 20).unwrap();
        let l: Vec<u64> = list(&d).unwrap().iter().map(|x| x.0).collect();
        assert_eq!(l, vec![300, 20]);
        let _ = fs::remove_dir_all(&d);
    }
}
