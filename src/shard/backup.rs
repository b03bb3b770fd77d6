//! Consistent snapshots for `ringd snapshot save` (`GET /ringd/snapshot`), on the raft
//! shard's side.
//!
//! A client shard reserves one of `SNAPSHOT_SAVES_MAX` slots (`SaveSlot`) and sends
//! `Proposal::Snapshot` with a one-message channel of its own. The raft shard asks for a
//! read index (ReadIndex, as a `quorum=true` GET: on a follower the leader confirms its
//! leadership first) and, once the applied index has reached it and the batch's events are
//! in the ring, freezes the applied state (`WriteJob::freeze`: the store in O(1), the event
//! history, the membership and the auth state, as the snapshot thread's snapshots). Every
//! write acknowledged by any member before the request arrived was committed before the read
//! index was taken, so it is in the frozen state. A short-lived `snapshot-save` thread at
//! nice +10 encodes it into the snapshot file format (`crate::snapshot`, CRC32C trailer) and
//! sends the bytes back on the channel; the client shard writes them out.
//!
//! The raft shard never waits: freezing is O(1) plus at most 1000 small events, spawning a
//! thread is one system call, and the channel has room for its one message. Memory: the
//! encoded snapshot, once per running save (about the size of a snapshot file; the store's
//! encoding and the file's bytes both exist while it is put together), plus the old versions
//! of the tree nodes that writes replace while the frozen copy is alive.
//!
//! `save_stopped` makes the same file from a stopped member's data dir (`ringd snapshot save
//! --data-dir`), recovering a copy of it as a member starts.

use super::raft_shard::Token;
use super::snapshotter::{lower_this_threads_priority, WriteJob};
use super::Shared;
use crate::limits::SNAPSHOT_SAVES_MAX;
use crate::members::Membership;
use crate::raft::Replica;
use crate::watch::ring::EventRing;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A snapshot file's bytes and where it stands.
pub struct Saved {
    pub bytes: Vec<u8>,
    pub raft_index: u64,
    pub raft_term: u64,
    pub etcd_index: u64,
}

/// Why a save failed: the HTTP status and the message of etcd's `{"message"}` body.
#[derive(Debug)]
pub struct SaveError {
    pub status: u16,
    pub message: String,
}

pub type SaveResult = Result<Saved, SaveError>;

/// One of the `SNAPSHOT_SAVES_MAX` saves a member serves at once; freed when dropped,
/// wherever the save ends (answered, timed out, refused, its thread done).
pub struct SaveSlot(Arc<Shared>);

impl SaveSlot {
    /// A slot, or None when `SNAPSHOT_SAVES_MAX` saves are running.
    pub fn reserve(shared: &Arc<Shared>) -> Option<SaveSlot> {
        shared
            .snapshot_saves
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < SNAPSHOT_SAVES_MAX).then_some(n + 1)
            })
            .ok()
            .map(|_| SaveSlot(shared.clone()))
    }
}

impl Drop for SaveSlot {
    fn drop(&mut self) {
        self.0.snapshot_saves.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A save on its way through the raft shard: its slot, and where its one result goes.
pub struct SaveRequest {
    slot: SaveSlot,
    done: flume::Sender<SaveResult>,
}

impl SaveRequest {
    /// A request and the receiver of its result. The receiver also ends (disconnected) if
    /// the request is dropped without a result.
    pub fn new(slot: SaveSlot) -> (SaveRequest, flume::Receiver<SaveResult>) {
        let (done, result) = flume::bounded(1);
        (SaveRequest { slot, done }, result)
    }

    /// Answers with an error (the channel has room for its one message: never waits).
    pub(super) fn fail(self, status: u16, message: impl Into<String>) {
        let _ = self.done.try_send(Err(SaveError {
            status,
            message: message.into(),
        }));
    }

    /// The read index is applied and the batch's events are in the ring: freezes the state
    /// and encodes it on a thread of its own.
    pub(super) fn start(self, ring: &EventRing, replica: &Replica<Token>) {
        let job = WriteJob::freeze(ring, replica, false);
        let spawned = std::thread::Builder::new()
            .name("snapshot-save".to_string())
            .spawn(move || {
                lower_this_threads_priority();
                let started = std::time::Instant::now();
                let saved = Saved {
                    bytes: job.encode(0),
                    raft_index: job.index,
                    raft_term: job.term,
                    etcd_index: job.source.index(),
                };
                tracing::info!(
                    raft_index = saved.raft_index,
                    bytes = saved.bytes.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "snapshot encoded for a save"
                );
                // The client may have gone: then nobody wants the bytes.
                let _ = self.done.try_send(Ok(saved));
                drop(self.slot);
            });
        // The closure (and the request in it) is dropped on failure: the client shard sees
        // the channel end and answers 500.
        if let Err(e) = spawned {
            tracing::warn!("cannot spawn a thread for a snapshot save: {e}");
        }
    }
}

/// `ringd snapshot save FILE --data-dir D`: the state of a stopped member, as a snapshot file
/// with everything its log holds after its newest snapshot (the newest `member/snap/*.snap`
/// alone would miss those writes). The member's files are never changed: the data dir's lock
/// (`member/wal/LOCK`, created if a member never ran there) is held, so a member cannot start
/// on it meanwhile and a running member refuses the save, while its
/// snapshots, log and membership record are copied into `scratch`, where the usual recovery
/// replays the log (it may repair a torn tail or, for a member alone, elect itself: on the
/// copy); the copy is removed afterwards.
pub fn save_stopped(data_dir: &Path, scratch: &Path) -> Result<Saved, String> {
    use crate::wal::Storage;
    let record = super::recovery::membership_path(data_dir);
    let Some((id, membership)) = super::recovery::read_membership(&record)? else {
        return Err(format!(
            "{} is not a ringd data dir (no {})",
            data_dir.display(),
            record.display()
        ));
    };
    let paths = super::recovery::Paths::new(data_dir);
    let _lock = crate::wal::FsStorage::default()
        .lock(&paths.wal)
        .map_err(|e| match e {
            crate::wal::WalError::Locked(_) => format!(
                "{} is in use by a running member: save from it with --endpoint",
                data_dir.display()
            ),
            e => e.to_string(),
        })?;
    let saved =
        copy_member(data_dir, scratch).and_then(|()| recover_and_encode(scratch, id, membership));
    let _ = std::fs::remove_dir_all(scratch);
    saved
}

/// Copies the snapshots, log segments and membership record of `from` into a new `to`.
fn copy_member(from: &Path, to: &Path) -> Result<(), String> {
    let (src, dst) = (
        super::recovery::Paths::new(from),
        super::recovery::Paths::new(to),
    );
    for (dir, into, kind) in [
        (&src.wal, &dst.wal, ".wal"),
        (&src.snap, &dst.snap, ".snap"),
    ] {
        std::fs::create_dir_all(into)
            .map_err(|e| format!("cannot create {}: {e}", into.display()))?;
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(kind) {
                std::fs::copy(entry.path(), into.join(&name))
                    .map_err(|e| format!("cannot copy {}: {e}", entry.path().display()))?;
            }
        }
    }
    let record = super::recovery::membership_path(from);
    std::fs::copy(&record, super::recovery::membership_path(to))
        .map(|_| ())
        .map_err(|e| format!("cannot copy {}: {e}", record.display()))
}

/// Recovers the copy as a member would at start-up, and encodes its state.
fn recover_and_encode(dir: &Path, id: u64, membership: Membership) -> Result<Saved, String> {
    let mut rec = super::recovery::recover(
        dir,
        super::recovery::Start {
            id,
            membership,
            force_new_cluster: false,
            // Never ticked: only what raft-rs's configuration needs.
            election_tick: 10,
            heartbeat_tick: 1,
            request_timeout_ticks: 100,
        },
    )?;
    // The member's history as its snapshot kept it (`--watch-history`), at least etcd's 1000.
    let capacity = (rec.history.len() as u64).max(crate::limits::EVENT_HISTORY_CAPACITY as u64);
    let ring = EventRing::new(capacity);
    ring.restore(rec.history.iter())
        .map_err(|e| format!("snapshot history: {e}"))?;
    super::recovery::replay(&mut rec, &ring);
    let job = WriteJob::freeze(&ring, &rec.replica, false);
    Ok(Saved {
        bytes: job.encode(0),
        raft_index: job.index,
        raft_term: job.term,
        etcd_index: job.source.index(),
    })
}
