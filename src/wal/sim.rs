//! A simulated disk for crash tests. Each file keeps a "written" image (what reads see: the page
//! cache) and a "durable" image (what survives a crash); names likewise have a written and a
//! durable directory. `crash` drops everything not synced, optionally tearing the last
//! unsynced write or persisting random sectors of the unsynced writes; `inject_fsync_error`
//! makes the next sync fail; `crash_at_op` crashes in the middle of the log's own I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::storage::{Storage, StorageFile};
use super::WalError;

/// What a crash keeps of the writes that were not synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Nothing: the disk holds exactly what was synced.
    Clean,
    /// A random prefix (0..len bytes) of the last unsynced write survives (earlier unsynced
    /// writes are lost); unsynced creations and removals each survive with probability 1/2.
    TearLast(u64),
    /// Every 512-byte sector piece of every unsynced write survives with probability 1/2
    /// (writeback in any order); names as in `TearLast`.
    Scramble(u64),
}

#[derive(Default)]
struct Node {
    written: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since the last sync of this node, oldest first.
    unsynced: Vec<(u64, Vec<u8>)>,
}

#[derive(Default)]
struct State {
    epoch: u64,
    nodes: BTreeMap<u64, Node>,
    next_node: u64,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    /// The node of the most recent write, while that write is unsynced.
    last_write: Option<u64>,
    locks: BTreeSet<PathBuf>,
    fail_next_sync: bool,
    crash_at: Option<(u64, CrashMode)>,
    ops: u64,
    syncs: u64,
}

/// A simulated disk. Clones share the same disk.
#[derive(Clone, Default)]
pub struct SimStorage {
    state: Arc<Mutex<State>>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash")
}

fn write_into(img: &mut Vec<u8>, off: usize, data: &[u8]) {
    if img.len() < off + data.len() {
        img.resize(off + data.len(), 0);
    }
    img[off..off + data.len()].copy_from_slice(data);
}

impl State {
    /// Counts a mutating op; crashes the disk if `crash_at_op` says so. On a write, the write
    /// is applied (to the page cache) first, so a tearing crash can keep part of it.
    fn op(&mut self, write: Option<(u64, u64, &[u8])>) -> io::Result<()> {
        self.ops += 1;
        let Some((n, mode)) = self.crash_at else {
            return Ok(());
        };
        if self.ops < n {
            return Ok(());
        }
        if let Some((node, off, data)) = write {
            self.apply_write(node, off, data);
        }
        self.crash(mode);
        Err(crashed())
    }

    fn apply_write(&mut self, node: u64, off: u64, data: &[u8]) {
        if let Some(n) = self.nodes.get_mut(&node) {
            write_into(&mut n.written, off as usize, data);
            n.unsynced.push((off, data.to_vec()));
            self.last_write = Some(node);
        }
    }

    fn sync_node(&mut self, node: u64) -> io::Result<()> {
        self.syncs += 1;
        if std::mem::take(&mut self.fail_next_sync) {
            // Like Linux after a failed fsync: the dirty data is gone for good, though reads
            // may still see it until the crash.
            if let Some(n) = self.nodes.get_mut(&node) {
                n.unsynced.clear();
            }
            return Err(io::Error::other("injected fsync error"));
        }
        if let Some(n) = self.nodes.get_mut(&node) {
            n.durable.clone_from(&n.written);
            n.unsynced.clear();
        }
        if self.last_write == Some(node) {
            self.last_write = None;
        }
        Ok(())
    }

    fn crash(&mut self, mode: CrashMode) {
        self.crash_at = None;
        self.fail_next_sync = false;
        self.epoch += 1;
        self.locks.clear();
        let seed = match mode {
            CrashMode::Clean => None,
            CrashMode::TearLast(s) | CrashMode::Scramble(s) => Some(s),
        };
        if let Some(seed) = seed {
            let mut rng = Rng(seed ^ 0x9E37_79B9_7F4A_7C15);
            match mode {
                CrashMode::TearLast(_) => {
                    if let Some(node) = self.last_write {
                        if let Some(n) = self.nodes.get_mut(&node) {
                            if let Some((off, data)) = n.unsynced.last() {
                                let keep = (rng.next() % (data.len() as u64 + 1)) as usize;
                                let (off, piece) = (*off as usize, data[..keep].to_vec());
                                write_into(&mut n.durable, off, &piece);
                            }
                        }
                    }
                }
                CrashMode::Scramble(_) => {
                    for n in self.nodes.values_mut() {
                        for (off, data) in std::mem::take(&mut n.unsynced) {
                            let (off, end) = (off as usize, off as usize + data.len());
                            let mut s = off;
                            while s < end {
                                let e = ((s / 512 + 1) * 512).min(end);
                                if rng.next().is_multiple_of(2) {
                                    write_into(&mut n.durable, s, &data[s - off..e - off]);
                                }
                                s = e;
                            }
                        }
                    }
                }
                CrashMode::Clean => {}
            }
            // Unsynced directory changes each land or not.
            let created: Vec<_> = self
                .names
                .iter()
                .filter(|(p, id)| self.durable_names.get(*p) != Some(id))
                .map(|(p, id)| (p.clone(), *id))
                .collect();
            for (p, id) in created {
                if rng.next().is_multiple_of(2) {
                    self.durable_names.insert(p, id);
                }
            }
            let removed: Vec<_> = self
                .durable_names
                .keys()
                .filter(|p| !self.names.contains_key(*p))
                .cloned()
                .collect();
            for p in removed {
                if rng.next().is_multiple_of(2) {
                    self.durable_names.remove(&p);
                }
            }
        }
        self.names = self.durable_names.clone();
        let live: BTreeSet<u64> = self.names.values().copied().collect();
        self.nodes.retain(|id, _| live.contains(id));
        for n in self.nodes.values_mut() {
            n.written.clone_from(&n.durable);
            n.unsynced.clear();
        }
        self.last_write = None;
    }
}

impl SimStorage {
    pub fn new() -> Self {
        Self::default()
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Power loss now. Handles opened before the crash fail from now on.
    pub fn crash(&self, mode: CrashMode) {
        self.st().crash(mode);
    }

    /// The next sync (of a file or a directory) fails, and the data it should have made durable
    /// is lost.
    pub fn inject_fsync_error(&self) {
        self.st().fail_next_sync = true;
    }

    /// The `n`-th mutating operation from now (1 = the next) crashes the disk with `mode`
    /// instead of completing (a write first lands in the page cache, so it can be torn) and
    /// returns an error.
    pub fn crash_at_op(&self, n: u64, mode: CrashMode) {
        let mut st = self.st();
        let at = st.ops + n.max(1);
        st.crash_at = Some((at, mode));
    }

    /// Mutating operations so far (writes, syncs, creations, removals, resizes).
    pub fn ops(&self) -> u64 {
        self.st().ops
    }

    /// File and directory syncs so far.
    pub fn syncs(&self) -> u64 {
        self.st().syncs
    }

    /// Paths that currently exist.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.st().names.keys().cloned().collect()
    }

    /// The written image of a file.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.st();
        let id = st.names.get(path)?;
        st.nodes.get(id).map(|n| n.written.clone())
    }

    /// Overwrites bytes in both images of a file (simulated media corruption).
    pub fn corrupt(&self, path: &Path, off: usize, data: &[u8]) {
        let mut st = self.st();
        if let Some(id) = st.names.get(path).copied() {
            if let Some(n) = st.nodes.get_mut(&id) {
                write_into(&mut n.written, off, data);
                write_into(&mut n.durable, off, data);
            }
        }
    }
}

/// The lock of a directory on the simulated disk; a crash releases it.
pub struct SimLock {
    sim: SimStorage,
    dir: PathBuf,
    epoch: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut st = self.sim.st();
        if st.epoch == self.epoch {
            st.locks.remove(&self.dir);
        }
    }
}

/// An open file on the simulated disk.
pub struct SimFile {
    sim: SimStorage,
    node: u64,
    epoch: u64,
}

impl SimFile {
    fn live<'a>(&self, st: &'a mut MutexGuard<'_, State>) -> io::Result<&'a mut Node> {
        if st.epoch != self.epoch {
            return Err(io::Error::other(
                "stale file handle after a simulated crash",
            ));
        }
        st.nodes
            .get_mut(&self.node)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

impl Storage for SimStorage {
    type File = SimFile;
    type Lock = SimLock;

    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn lock(&self, dir: &Path) -> Result<SimLock, WalError> {
        let mut st = self.st();
        if !st.locks.insert(dir.to_path_buf()) {
            return Err(WalError::Locked(dir.join("LOCK")));
        }
        Ok(SimLock {
            sim: self.clone(),
            dir: dir.to_path_buf(),
            epoch: st.epoch,
        })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.st();
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(String::from))
            .collect())
    }

    fn create(&self, path: &Path, len: u64) -> io::Result<SimFile> {
        let mut st = self.st();
        st.op(None)?;
        if st.names.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let id = st.next_node;
        st.next_node += 1;
        st.nodes.insert(
            id,
            Node {
                written: vec![0; len as usize],
                ..Node::default()
            },
        );
        st.names.insert(path.to_path_buf(), id);
        Ok(SimFile {
            sim: self.clone(),
            node: id,
            epoch: st.epoch,
        })
    }

    fn open(&self, path: &Path) -> io::Result<SimFile> {
        let st = self.st();
        let id = *st
            .names
            .get(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(SimFile {
            sim: self.clone(),
            node: id,
            epoch: st.epoch,
        })
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.st();
        st.op(None)?;
        st.names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.st();
        st.op(None)?;
        st.syncs += 1;
        if std::mem::take(&mut st.fail_next_sync) {
            return Err(io::Error::other("injected fsync error"));
        }
        let st = &mut *st;
        st.durable_names.retain(|p, _| p.parent() != Some(dir));
        for (p, id) in &st.names {
            if p.parent() == Some(dir) {
                st.durable_names.insert(p.clone(), *id);
            }
        }
        Ok(())
    }
}

impl StorageFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        let mut st = self.sim.st();
        Ok(self.live(&mut st)?.written.len() as u64)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut st = self.sim.st();
        self.live(&mut st)?;
        st.op(None)?;
        self.live(&mut st)?.written.resize(len as usize, 0);
        Ok(())
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut st = self.sim.st();
        let n = self.live(&mut st)?;
        let src = usize::try_from(off)
            .ok()
            .and_then(|o| n.written.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.sim.st();
        self.live(&mut st)?;
        st.op(Some((self.node, off, data)))?;
        st.apply_write(self.node, off, data);
        Ok(())
    }

    fn sync_data(&mut self, _off: u64, _len: u64) -> io::Result<()> {
        self.sync_all()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        let mut st = self.sim.st();
        self.live(&mut st)?;
        st.op(None)?;
        st.sync_node(self.node)
    }

    fn mapped(&self) -> Option<&[u8]> {
        None
    }
}
