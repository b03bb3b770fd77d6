//! The snapshot thread: encodes and writes snapshots from an O(1) frozen copy of the store,
//! then removes the log segments the raft shard detached and the old snapshots, at a lowered
//! priority so that it only uses the time the shards and the raft shard leave.
//!
//! The raft shard drives it through `Snapshotter` (start a snapshot, collect a finished one)
//! and never waits for it.

use super::raft_shard::{fatal, Token};
use super::Shared;
use crate::limits::EVENT_HISTORY_CAPACITY;
use crate::raft::Replica;
use crate::wal::{FsStorage, Wal};
use std::path::PathBuf;
use std::time::Instant;

/// Nice +10 for the calling thread (Linux nice values are per thread). The snapshot thread
/// encodes the whole store (~280 ms of CPU for 900k keys) every `--snapshot-count` writes;
/// at normal priority it takes its share of the cores from the shards and the raft shard,
/// and write latency suffers while it runs. Lowered, it uses the time they leave; writes
/// never wait for it (the log keeps everything until it finishes).
fn lower_this_threads_priority() {
    // SAFETY: plain syscalls; gettid cannot fail, setpriority on our own tid only.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    let Ok(tid) = libc::id_t::try_from(tid) else {
        return;
    };
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 10) } != 0 {
        tracing::debug!(
            "cannot lower the snapshot thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A snapshot to write: a frozen store, the event history and the membership at one index.
struct WriteJob {
    index: u64,
    term: u64,
    source: ringd_store::SnapshotSource,
    events: Vec<Vec<u8>>,
    membership: Vec<u8>,
    auth: Vec<u8>,
    voters: Vec<u64>,
    /// Hand the encoded bytes back: a follower needs this snapshot (raft-rs asked).
    transfer: bool,
}

/// Work for the snapshot thread.
enum SnapJob {
    /// Write a snapshot.
    Write(Box<WriteJob>),
    /// After a snapshot: remove the log segments the raft shard detached (in order) and the
    /// snapshots older than `keep_from`. File removal takes milliseconds (~5 ms for a 64 MiB
    /// segment here), so the raft shard does not do it.
    Remove {
        segments: Vec<PathBuf>,
        keep_from: u64,
    },
}

/// A snapshot the thread made durable; with its bytes when they are to be sent to a follower.
pub(super) struct Written {
    index: u64,
    transfer: Option<(crate::raft::SnapshotPoint, Vec<u8>)>,
}

/// Snapshots are encoded and written on their own thread from an O(1) frozen copy of the
/// store, so writes keep flowing meanwhile (no stop-the-world). The raft shard only collects
/// the last 1000 events (cheap) and, when the file is durable, detaches the old log segments,
/// which the snapshot thread then removes.
pub struct Snapshotter {
    jobs: flume::Sender<SnapJob>,
    done: flume::Receiver<Result<Written, String>>,
    in_flight: bool,
    /// Raft index of the newest durable snapshot; the log keeps the entries after the one
    /// before it, so a damaged newest snapshot can fall back to the previous one.
    last: u64,
}

impl Snapshotter {
    pub fn start(dir: PathBuf, wal_dir: PathBuf, last: u64) -> Snapshotter {
        // At most one write and one removal are ever queued (`in_flight`).
        let (jobs, rx) = flume::bounded::<SnapJob>(2);
        let (done_tx, done) = flume::bounded(1);
        let spawned = std::thread::Builder::new()
            .name("snapshot".to_string())
            .spawn(move || {
                lower_this_threads_priority();
                let mut last_bytes = 0usize;
                while let Ok(job) = rx.recv() {
                    let WriteJob {
                        index,
                        term,
                        source,
                        events,
                        membership,
                        auth,
                        voters,
                        transfer,
                    } = match job {
                        SnapJob::Write(job) => *job,
                        SnapJob::Remove {
                            segments,
                            keep_from,
                        } => {
                            // A failure leaves old files behind, nothing more: they are
                            // removed at the next compaction after a restart.
                            if let Err(e) = crate::wal::remove_detached(
                                &FsStorage::default(),
                                &wal_dir,
                                &segments,
                            ) {
                                tracing::warn!("cannot remove old log segments: {e}");
                            }
                            if let Err(e) = crate::snapshot::prune(&dir, keep_from) {
                                tracing::warn!("cannot prune old snapshots: {e}");
                            }
                            continue;
                        }
                    };
                    let started = Instant::now();
                    // Room for the whole file at once (the last one's size, or ~64 B per key
                    // for the first): the buffer never grows by copying, and pages reserved
                    // but never written cost no memory.
                    let hint = last_bytes.max(source.node_count() as usize * 64);
                    let buf = crate::snapshot::encode_with(
                        index,
                        term,
                        (|b: &mut Vec<u8>| source.snapshot(b), hint),
                        &events,
                        &membership,
                        &auth,
                    );
                    last_bytes = buf.len() + buf.len() / 16;
                    let res = crate::snapshot::write_encoded(&dir, index, &buf)
                        .map(|_| {
                            tracing::info!(
                                raft_index = index,
                                bytes = buf.len(),
                                ms = started.elapsed().as_millis() as u64,
                                "snapshot written"
                            );
                            let point = crate::raft::SnapshotPoint {
                                index,
                                term,
                                voters,
                            };
                            Written {
                                index,
                                transfer: transfer.then_some((point, buf)),
                            }
                        })
                        .map_err(|e| format!("snapshot at raft index {} failed: {e}", index));
                    if done_tx.send(res).is_err() {
                        return;
                    }
                    // The encoding buffer (unless a follower takes it) is freed: out of the
                    // RSS now, not at the next snapshot.
                    super::release_freed_memory();
                }
            });
        if let Err(e) = spawned {
            fatal("cannot spawn the snapshot thread", e);
        }
        Snapshotter {
            jobs,
            done,
            in_flight: false,
            last,
        }
    }

    /// Starts a snapshot when `count` entries were applied since the last one.
    /// Starts a snapshot when `count` entries were applied since the last one, or at once
    /// when `transfer` (a follower needs one: its bytes come back from `collect`).
    pub(super) fn maybe_start(
        &mut self,
        shared: &Shared,
        replica: &Replica<Token>,
        count: u64,
        transfer: bool,
    ) {
        if self.in_flight
            || (!transfer && replica.applied_index().0 < self.last.saturating_add(count))
        {
            return;
        }
        let current = replica.store().index().0;
        let start = shared
            .ring
            .start_index(current)
            .max(current.saturating_sub(EVENT_HISTORY_CAPACITY as u64 - 1))
            .max(1);
        let mut events = Vec::new();
        for i in start..=current {
            if let Some(ev) = shared.ring.get(i) {
                let mut b = Vec::new();
                ev.encode(&mut b);
                events.push(b);
            }
        }
        // The term of the applied entry, not the current term: raft checks a follower's log
        // against it.
        let point = replica.snapshot_point();
        let job = SnapJob::Write(Box::new(WriteJob {
            index: point.index,
            term: point.term,
            source: replica.store().snapshot_source(),
            events,
            membership: replica.membership().encode(),
            // Strings and maps: serializing cannot fail.
            auth: serde_json::to_vec(&**replica.auth()).unwrap_or_default(),
            voters: point.voters,
            transfer,
        }));
        self.in_flight = self.jobs.try_send(job).is_ok();
    }

    /// A snapshot from the leader was installed at `index` (the log restarts after it).
    pub(super) fn installed(&mut self, index: u64) {
        self.last = self.last.max(index);
    }

    /// Compacts the log once a snapshot is durable; returns it for a follower when it was
    /// taken for one.
    pub(super) fn collect(
        &mut self,
        replica: &mut Replica<Token>,
        wal: &mut Wal,
    ) -> Option<(crate::raft::SnapshotPoint, Vec<u8>)> {
        let Ok(res) = self.done.try_recv() else {
            return None;
        };
        self.in_flight = false;
        match res {
            Ok(Written { index, transfer }) => {
                let segments = match wal.detach(self.last) {
                    Ok(s) => s,
                    Err(e) => fatal("log compaction failed", e),
                };
                replica.compact(self.last);
                let job = SnapJob::Remove {
                    segments,
                    keep_from: self.last,
                };
                if self.jobs.try_send(job).is_err() {
                    tracing::warn!("snapshot thread busy: the old log segments stay on disk until after a restart");
                }
                self.last = self.last.max(index);
                transfer
            }
            // Nothing is lost: the log still holds every entry. Try again later.
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }
}
