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
    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()>;
    /// Makes the data written so far durable (fdatasync). `off..off+len` is the range written
    /// since the last sync, a hint for implementations that sync ranges (msync).
    fn sync_data(&mut self, off: u64, len: u64) -> io::Result<()>;
    /// Makes data and metadata (size) durable (fsync).
    fn sync_all(&mut self) -> io::Result<()>;
    /// The whole file mapped in memory, if this storage maps files.
    fn mapped(&self) -> Option<&[u8]>;
    /// A hint: start writing `off..off+len` back to disk without waiting. Durability still
    /// comes only from `sync_data`.
    fn start_writeback(&self, _off: u64, _len: u64) {}
}

/// How records reach a segment on the real file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// `pwrite` the encoded batch, then `fdatasync`.
    Pwrite,
    /// Copy the encoded batch into a read-write shared map, then `msync(MS_SYNC)` the range.
    Mmap,
}

impl WriteMode {
    /// `benches/wal_append.rs` found the two level within noise (pwrite ahead by a few percent
    /// overall); pwrite wins the tie because its I/O errors are return values, not SIGBUS.
    /// docs/wal-format.md has the numbers.
    pub const DEFAULT: WriteMode = WriteMode::Pwrite;
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
            WriteMode::Pwrite => Map::Ro(unsafe { opts.map(&self.file) }.map_err(cannot)?),
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

    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
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

    fn start_writeback(&self, off: u64, len: u64) {
        let (Ok(off), Ok(len)) = (libc::off64_t::try_from(off), libc::off64_t::try_from(len))
        else {
            return;
        };
        // SAFETY: plain syscall on an open descriptor. A failure is ignored on purpose: this
        // only starts writeback early, and the next fdatasync reports any real I/O error.
        let _ = unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE)
        };
    }

    fn mapped(&self) -> Option<&[u8]> {
        match &self.map {
            Map::None => None,
            Map::Ro(m) => Some(&m[..]),
            Map::Rw(m) => Some(&m[..]),
        }
    }
}
