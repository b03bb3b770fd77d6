//! The storage the log runs on: a small trait (a directory of files with positional reads and
//! writes, syncs and a lock), the real file system implementation, and (in `sim.rs`) a simulated
//! disk for crash tests.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut, MmapOptions};

use super::WalError;

/// A directory of files. Paths are always inside the log directory given to `Wal::open`.
pub trait Storage {
    type File: StorageFile;
    /// Held for as long as the log is open; dropping it releases the lock.
    type Lock;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Takes the exclusive lock on `dir`; `WalError::Locked` if someone else holds it.
    fn lock(&self, dir: &Path) -> Result<Self::Lock, WalError>;
    /// File names (not paths) in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a new file (failing if it exists) of `len` zero bytes, preallocated.
    fn create(&self, path: &Path, len: u64) -> io::Result<Self::File>;
    fn open(&self, path: &Path) -> io::Result<Self::File>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// One open file.
pub trait StorageFile {
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Grows the file to `len` zero bytes, preallocated (not durable until `sync_all`).
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Reads exactly `buf.len()` bytes at `off`.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()>;
    /// `read_at`, never through a map of the file (so none of it is counted in the process's
    /// memory: it stays in the page cache).
    fn read_unmapped(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_at(off, buf)
    }
    /// The end of the last nonzero byte at or after `from` (`None`: all zero up to the end of
    /// the file). Recovery's check for unsynced data after the end of the log reads the rest
    /// of the last segment, mostly preallocated zeroes: 64 MiB through the map were 64 MiB
    /// more of RSS at the peak of a restart. Read here from the end, a MiB at a time.
    fn last_nonzero_end(&self, from: u64) -> io::Result<Option<u64>> {
        const CHUNK: u64 = 1 << 20;
        let mut buf = vec![0u8; CHUNK as usize];
        let mut hi = self.len()?;
        while hi > from {
            let lo = hi.saturating_sub(CHUNK).max(from);
            let b = &mut buf[..(hi - lo) as usize];
            self.read_unmapped(lo, b)?;
            if let Some(p) = b.iter().rposition(|&x| x != 0) {
                return Ok(Some(lo + p as u64 + 1));
            }
            hi = lo;
        }
        Ok(None)
    }
    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()>;
    /// Makes the data written so far durable (fdatasync). `off..off+len` is the range written
    /// since the last sync, a hint for implementations that sync ranges (msync).
    fn sync_data(&mut self, off: u64, len: u64) -> io::Result<()>;
    /// Makes data and metadata (size) durable (fsync).
    fn sync_all(&mut self) -> io::Result<()>;
    /// The whole file mapped in memory, if this storage maps files.
    fn mapped(&self) -> Option<&[u8]>;
    /// Takes the pages of a read-only map out of this process (they stay in the page cache;
    /// the next read maps what it needs). Recovery reads whole segments through the map, the
    /// last one to its preallocated end, which left 64 MiB of it counted in the server's RSS.
    fn release_map(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// `release_map` for the bytes before `off` only, which a reader has gone past: recovery
    /// scans a segment's records through the map, and without this all of them (up to
    /// 64 MiB) were resident at once.
    fn release_map_below(&self, off: u64) {
        let _ = off;
    }
    /// Writes `len` zeroes at `off`, past the end of the data, and starts writing them back
    /// without waiting (the log's zeroes ahead). Durability still comes only from
    /// `sync_data`.
    fn write_zeroes_ahead(&mut self, off: u64, len: usize) -> io::Result<()> {
        self.write_at(off, &ZEROES[..len.min(ZEROES.len())])
    }
}

/// The largest `write_zeroes_ahead`.
pub const ZEROES_AHEAD_MAX: usize = 256 << 10;
static ZEROES: [u8; ZEROES_AHEAD_MAX] = [0; ZEROES_AHEAD_MAX];

/// How records reach a segment on the real file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// `pwrite` the encoded batch, then `fdatasync`.
    Pwrite,
    /// Copy the encoded batch into a read-write shared map, then `msync(MS_SYNC)` the range.
    Mmap,
    /// `pwrite` whole 4 KiB blocks through an `O_DIRECT` descriptor, then `fdatasync` (which
    /// then has no dirty pages to write back, only the device cache to flush). The bytes
    /// before the data in its first block come from the last partial block written (kept in
    /// memory) or are read back; the rest of its last block is written as zeroes, which the
    /// log guarantees they already are (everything past its data end is zero). Where the file
    /// system refuses `O_DIRECT` (at open, or its writes with EINVAL), the file falls back to
    /// `Pwrite`.
    Direct,
}

impl WriteMode {
    /// `benches/wal_append.rs` found `Pwrite` and `Mmap` level within noise (pwrite wins the
    /// tie: its I/O errors are return values, not SIGBUS), and `Direct` faster than both for
    /// synced batches up to 64 records, the raft shard's range: the fdatasync has no page
    /// cache to write back. `perf/ab.sh` put at 64 connections, 6 alternating rounds: +3 %
    /// req/s, -4 % server CPU per PUT. docs/wal-format.md has the numbers.
    pub const DEFAULT: WriteMode = WriteMode::Direct;
}

/// The real file system.
#[derive(Clone, Copy, Debug)]
pub struct FsStorage {
    mode: WriteMode,
}

impl Default for FsStorage {
    fn default() -> Self {
        FsStorage {
            mode: WriteMode::DEFAULT,
        }
    }
}

impl FsStorage {
    pub fn with_mode(mode: WriteMode) -> Self {
        FsStorage { mode }
    }

    pub fn mode(&self) -> WriteMode {
        self.mode
    }
}

fn ctx(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

impl Storage for FsStorage {
    type File = FsFile;
    type Lock = File;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir).map_err(|e| ctx(dir, "cannot create", e))
    }

    fn lock(&self, dir: &Path) -> Result<File, WalError> {
        let path = dir.join("LOCK");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| WalError::Io(ctx(&path, "cannot open", e)))?;
        match fs2::FileExt::try_lock_exclusive(&f) {
            Ok(()) => Ok(f),
            Err(e) if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() => {
                Err(WalError::Locked(path))
            }
            Err(e) => Err(WalError::Io(ctx(&path, "cannot lock", e))),
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in fs::read_dir(dir).map_err(|e| ctx(dir, "cannot list", e))? {
            let e = e.map_err(|e| ctx(dir, "cannot list", e))?;
            if let Some(n) = e.file_name().to_str() {
                names.push(n.to_string());
            }
        }
        Ok(names)
    }

    fn create(&self, path: &Path, len: u64) -> io::Result<FsFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| ctx(path, "cannot create", e))?;
        let mut f = FsFile {
            direct: None,
            direct_pending: self.mode == WriteMode::Direct,
            file,
            path: path.to_path_buf(),
            map: Map::None,
            mode: self.mode,
        };
        f.set_len(len)?;
        Ok(f)
    }

    fn open(&self, path: &Path) -> io::Result<FsFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| ctx(path, "cannot open", e))?;
        let mut f = FsFile {
            direct: None,
            direct_pending: self.mode == WriteMode::Direct,
            file,
            path: path.to_path_buf(),
            map: Map::None,
            mode: self.mode,
        };
        f.remap()?;
        Ok(f)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path).map_err(|e| ctx(path, "cannot remove", e))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ctx(dir, "cannot fsync", e))
    }
}

enum Map {
    None,
    Ro(Mmap),
    Rw(MmapMut),
}

/// A segment file on the real file system, mapped whole.
pub struct FsFile {
    file: File,
    path: PathBuf,
    map: Map,
    mode: WriteMode,
    /// `WriteMode::Direct` only, opened at the first write (most segments are only read).
    direct: Option<DirectWriter>,
    direct_pending: bool,
}

/// The alignment (offset, length and memory) of `O_DIRECT` writes.
const BLOCK: usize = 4096;

/// Block-aligned writes through an `O_DIRECT` descriptor of the same file.
struct DirectWriter {
    fd: File,
    /// Scratch for one aligned write; the aligned window is found inside it.
    buf: Vec<u8>,
    /// The number of the last partially written block (the next append starts inside it),
    /// whose content `image` holds.
    tail: Option<u64>,
    image: Vec<u8>,
}

impl DirectWriter {
    fn open(path: &Path) -> Option<DirectWriter> {
        use std::os::unix::fs::OpenOptionsExt;
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(fd) => Some(DirectWriter {
                fd,
                buf: Vec::new(),
                tail: None,
                image: vec![0; BLOCK],
            }),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "O_DIRECT refused; writing the log through the page cache");
                None
            }
        }
    }

    /// Writes `data` at `off` as whole blocks (see `WriteMode::Direct`). `file` is a buffered
    /// descriptor of the same file, for reading back the head of a block not in `tail`.
    fn write_at(&mut self, file: &File, off: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let b = BLOCK as u64;
        let start = off / b * b;
        let end = off + data.len() as u64;
        let aend = end.div_ceil(b) * b;
        let n = usize::try_from(aend - start).map_err(|_| io::Error::other("write too large"))?;
        self.buf.clear();
        self.buf.resize(n + BLOCK, 0);
        let pad = self.buf.as_ptr().align_offset(BLOCK);
        let w = &mut self.buf[pad..pad + n];
        let head = (off - start) as usize;
        let (first, last) = (start / b, (aend / b) - 1);
        if head > 0 {
            if self.tail == Some(first) {
                w[..head].copy_from_slice(&self.image[..head]);
            } else {
                file.read_exact_at(&mut w[..head], start)?;
            }
        }
        w[head..head + data.len()].copy_from_slice(data);
        let cut = (end - start) as usize;
        if self.tail == Some(last) && cut < n {
            // Keep what we know lies after the data in the last block.
            let from = cut - (n - BLOCK);
            w[cut..].copy_from_slice(&self.image[from..]);
        }
        self.fd.write_all_at(w, start)?;
        if !end.is_multiple_of(b) {
            self.image.copy_from_slice(&w[n - BLOCK..]);
            self.tail = Some(last);
        } else if self.tail.is_some_and(|blk| (first..=last).contains(&blk)) {
            self.tail = None;
        }
        Ok(())
    }
}

impl FsFile {
    fn remap(&mut self) -> io::Result<()> {
        self.map = Map::None;
        let len = self
            .file
            .metadata()
            .map_err(|e| ctx(&self.path, "cannot stat", e))?
            .len();
        if len == 0 {
            return Ok(());
        }
        let len = usize::try_from(len).map_err(|_| io::Error::other("segment too large"))?;
        // SAFETY: the log directory is locked (LOCK) for the life of the Wal, and the log
        // never shrinks a mapped file; the map is dropped before the file is removed or grown.
        let opts = MmapOptions::new().len(len).to_owned();
        let cannot = |e| ctx(&self.path, "cannot map", e);
        // SAFETY: the log directory is locked (LOCK) for the life of the Wal, and the log
        // never shrinks a mapped file; the map is dropped before the file is removed or grown.
        self.map = match self.mode {
            WriteMode::Pwrite | WriteMode::Direct => {
                Map::Ro(unsafe { opts.map(&self.file) }.map_err(cannot)?)
            }
            WriteMode::Mmap => Map::Rw(unsafe { opts.map_mut(&self.file) }.map_err(cannot)?),
        };
        Ok(())
    }
}

impl StorageFile for FsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self
            .file
            .metadata()
            .map_err(|e| ctx(&self.path, "cannot stat", e))?
            .len())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.map = Map::None;
        let off = libc::off_t::try_from(len).map_err(|_| io::Error::other("file too large"))?;
        // SAFETY: plain syscall on an open descriptor.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, 0, off) };
        if r != 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => self
                    .file
                    .set_len(len)
                    .map_err(|e| ctx(&self.path, "cannot size", e))?,
                _ => return Err(ctx(&self.path, "cannot preallocate", e)),
            }
        }
        self.remap()
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        if let Some(m) = self.mapped() {
            let start = usize::try_from(off).unwrap_or(usize::MAX);
            if let Some(src) = start
                .checked_add(buf.len())
                .and_then(|end| m.get(start..end))
            {
                buf.copy_from_slice(src);
                return Ok(());
            }
        }
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| ctx(&self.path, "cannot read", e))
    }

    fn read_unmapped(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| ctx(&self.path, "cannot read", e))
    }

    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        if self.direct_pending {
            self.direct_pending = false;
            self.direct = DirectWriter::open(&self.path);
        }
        if let Some(d) = &mut self.direct {
            match d.write_at(&self.file, off, data) {
                Ok(()) => return Ok(()),
                // EINVAL comes before any I/O: the file system took O_DIRECT at open but not
                // these writes (a larger block size, say). Nothing was written; go on through
                // the page cache.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "O_DIRECT write refused; writing the log through the page cache");
                    self.direct = None;
                }
                Err(e) => return Err(ctx(&self.path, "cannot write", e)),
            }
        }
        if let Map::Rw(m) = &mut self.map {
            let start = usize::try_from(off).unwrap_or(usize::MAX);
            if let Some(dst) = start
                .checked_add(data.len())
                .and_then(|end| m.get_mut(start..end))
            {
                dst.copy_from_slice(data);
                return Ok(());
            }
        }
        self.file
            .write_all_at(data, off)
            .map_err(|e| ctx(&self.path, "cannot write", e))
    }

    fn sync_data(&mut self, off: u64, len: u64) -> io::Result<()> {
        if let Map::Rw(m) = &self.map {
            let (o, l) = (usize::try_from(off), usize::try_from(len));
            if let (Ok(o), Ok(l)) = (o, l) {
                if o.checked_add(l).is_some_and(|end| end <= m.len()) {
                    return m
                        .flush_range(o, l)
                        .map_err(|e| ctx(&self.path, "cannot msync", e));
                }
            }
        }
        self.file
            .sync_data()
            .map_err(|e| ctx(&self.path, "cannot fdatasync", e))
    }

    fn sync_all(&mut self) -> io::Result<()> {
        if let Map::Rw(m) = &self.map {
            m.flush().map_err(|e| ctx(&self.path, "cannot msync", e))?;
        }
        self.file
            .sync_all()
            .map_err(|e| ctx(&self.path, "cannot fsync", e))
    }

    fn write_zeroes_ahead(&mut self, off: u64, len: usize) -> io::Result<()> {
        let zeroes = &ZEROES[..len.min(ZEROES.len())];
        // In `Direct` mode too these go through the page cache, with their writeback started
        // now: an O_DIRECT write would make the raft shard wait for the device. By the time
        // the data reaches them (ZERO_AHEAD later) the pages are clean, and the direct write
        // only drops them from the cache.
        if self.direct.is_some() || self.direct_pending {
            self.file
                .write_all_at(zeroes, off)
                .map_err(|e| ctx(&self.path, "cannot write", e))?;
        } else {
            self.write_at(off, zeroes)?;
        }
        let (Ok(o), Ok(l)) = (
            libc::off64_t::try_from(off),
            libc::off64_t::try_from(zeroes.len()),
        ) else {
            return Ok(());
        };
        // SAFETY: plain syscall on an open descriptor. A failure is ignored on purpose: this
        // only starts writeback early, and the next fdatasync reports any real I/O error.
        let _ = unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), o, l, libc::SYNC_FILE_RANGE_WRITE)
        };
        Ok(())
    }

    fn mapped(&self) -> Option<&[u8]> {
        match &self.map {
            Map::None => None,
            Map::Ro(m) => Some(&m[..]),
            Map::Rw(m) => Some(&m[..]),
        }
    }

    fn release_map_below(&self, off: u64) {
        if let Map::Ro(m) = &self.map {
            let len = usize::try_from(off).unwrap_or(usize::MAX).min(m.len());
            // SAFETY: a shared, read-only map of a file: MADV_DONTNEED only drops this
            // process's page table entries for the range; a later read maps the file's
            // (unchanged) pages again. Failure only leaves the pages resident.
            let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, 0, len) };
        }
    }

    fn release_map(&mut self) -> io::Result<()> {
        // A new map of the same file holds no pages yet. A read-write map (WriteMode::Mmap)
        // is the write path and stays.
        match self.map {
            Map::Ro(_) => self.remap(),
            Map::None | Map::Rw(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Direct` writes whole blocks, so every byte around an unaligned write must come back as
    /// it was: the head of its first block (from the kept tail, or read back after a reopen)
    /// and the rest of its last block. Checked against a model of the file after every write.
    #[test]
    fn direct_writes_keep_every_byte_around_unaligned_writes() {
        let dir = std::env::temp_dir().join(format!("ringd-direct-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("seg");
        let storage = FsStorage::with_mode(WriteMode::Direct);
        const LEN: usize = 256 << 10;
        let mut f = storage.create(&path, LEN as u64).unwrap();
        let mut model = vec![0u8; LEN];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut off = 0usize;
        let mut round = 0u8;
        while off < LEN - 3 * BLOCK {
            round = round.wrapping_add(1);
            // Appends of 1 byte to a few blocks, now and then across a gap, and now and then
            // zeroes ahead on a later block boundary.
            let len = 1 + next(if round.is_multiple_of(7) {
                3 * BLOCK as u64
            } else {
                300
            }) as usize;
            let len = len.min(LEN - off);
            let data: Vec<u8> = (0..len).map(|i| round ^ (i as u8) | 1).collect();
            f.write_at(off as u64, &data).unwrap();
            assert!(f.direct.is_some(), "O_DIRECT refused on {}", dir.display());
            model[off..off + len].copy_from_slice(&data);
            off += len;
            if round.is_multiple_of(11) {
                off += next(BLOCK as u64) as usize;
            }
            if round.is_multiple_of(13) {
                let at = off.next_multiple_of(BLOCK) + BLOCK;
                if at + BLOCK <= LEN {
                    f.write_zeroes_ahead(at as u64, BLOCK).unwrap();
                }
            }
            if round.is_multiple_of(17) {
                // A reopen forgets the tail: the head of the next block is read back.
                drop(f);
                f = storage.open(&path).unwrap();
            }
            assert_eq!(
                fs::read(&path).unwrap(),
                model,
                "after write {round} at {off}"
            );
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
