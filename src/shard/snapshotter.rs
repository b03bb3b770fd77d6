//! The snapshot thread: encodes and writes snapshots from an O(1) frozen copy of the store,
//! then removes the log segments the raft shard detached and the old snapshots, at a lowered
//! priority so that it only uses the time the shards and the raft shard leave.
//!
//! The raft shard drives it through `Snapshotter` (start a snapshot, collect a finished one)
//! and never waits for it.

use super::raft_shard::{fatal, Token};
use super::Shared;
use crate::raft::Replica;
use crate::wal::{FsStorage, Wal};
use crate::watch::ring::EventRing;
use std::path::PathBuf;
use std::time::Instant;

/// Nice +10 for the calling thread (Linux nice values are per thread). The snapshot thread
/// encodes the whole store (~280 ms of CPU for 900k keys) every `--snapshot-count` writes;
/// at normal priority it takes its share of the cores from the shards and the raft shard,
/// and write latency suffers while it runs. Lowered, it uses the time they leave; writes
/// never wait for it (the log keeps everything until it finishes).
pub(super) fn lower_this_threads_priority() {
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

/// A snapshot to write (or to send a `ringd snapshot save`, `backup.rs`): a frozen store, the
/// event history and the membership at one index.
pub(super) struct WriteJob {
    pub(super) index: u64,
    pub(super) term: u64,
    pub(super) source: ringd_store::SnapshotSource,
    events: crate::watch::ring::FrozenHistory,
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

impl WriteJob {
    /// The applied state, frozen: the store in O(1), the event history (the last 1000 events,
    /// encoded here: cheap), the membership and the auth state. Called after the batch's
    /// events are in the ring, so the history reaches the store's index.
    pub(super) fn freeze(ring: &EventRing, replica: &Replica<Token>, transfer: bool) -> WriteJob {
        // The whole history the ring keeps (`--watch-history`): a restart answers the same
        // `waitIndex` window, the log's replay adding what came after.
        let events = ring.freeze(replica.store().index().0);
        // The term of the applied entry, not the current term: raft checks a follower's log
        // against it.
        let point = replica.snapshot_point();
        WriteJob {
            index: point.index,
            term: point.term,
            source: replica.store().snapshot_source(),
            events,
            membership: replica.membership().encode(),
            // Strings and maps: serializing cannot fail.
            auth: serde_json::to_vec(&**replica.auth()).unwrap_or_default(),
            voters: point.voters,
            transfer,
        }
    }

    /// The snapshot file's bytes (the store's encoding is the costly part: ~280 ms of CPU for
    /// 900k keys; never on the raft shard).
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut store = Vec::new();
        self.source.snapshot(&mut store);
        // The history's events, encoded here (the archived ones already are).
        let history = |f: &mut dyn FnMut(&[u8])| self.events.for_each_encoded(f);
        crate::snapshot::encode(
            self.index,
            self.term,
            &store,
            history,
            self.events.encoded_bytes_hint(),
            &self.membership,
            &self.auth,
        )
    }
}

/// A snapshot the thread made durable; with its bytes when they are to be sent to a follower.
pub(super) struct Written {
    index: u64,
    transfer: Option<(crate::raft::SnapshotPoint, Vec<u8>)>,
}

/// Snapshots are encoded and written on their own thread from an O(1) frozen copy of the
/// store, so writes keep flowing meanwhile (no stop-the-world). The raft shard only freezes
/// the event history (O(1) for its encoded blocks, at most 1000 `Arc` copies for the newest
/// events) and, when the file is durable, detaches the old log segments, which the snapshot
/// thread then removes.
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
                while let Ok(job) = rx.recv() {
                    let job = match job {
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
                    let buf = job.encode();
                    let WriteJob {
                        index,
                        term,
                        voters,
                        transfer,
                        ..
                    } = job;
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
        let job = SnapJob::Write(Box::new(WriteJob::freeze(&shared.ring, replica, transfer)));
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
