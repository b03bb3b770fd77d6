//! The raft shard: the single writer. It owns the `Replica` (raft-rs + the store), the log
//! and the snapshots, and it is the only thread that mutates the store, the event ring and
//! the published view.
//!
//! Loop: wait for a proposal, the next raft tick or the TTL wheel's next deadline; drain up to
//! `PROPOSAL_BATCH_MAX` proposals; stamp writes with the wall clock (their time and TTL
//! expirations: the only place time enters a command) and propose them; propose an expiry pass when the wheel says one is due; run
//! the Ready round, whose persist step appends every new entry and the hard state to the log
//! and makes them durable with ONE fdatasync (group commit); then, once per batch and in this
//! order: events into the ring, the new view published, replies sent, one wake per shard.
//! Publishing before replying lets a client read its own write on any shard; ring-before-
//! view lets a watcher that saw index V find every event <= V in the ring. A failed fsync is
//! fatal: the process exits and recovers from disk (never retry: the page cache may have
//! dropped the dirty pages).

use super::{unix_now_ns, Outbox, Proposal, Published, Reply, ReplyTo, ShardMsg, Shared};
use crate::limits::{EVENT_HISTORY_CAPACITY, PROPOSAL_BATCH_MAX};
use crate::raft::{Bootstrap, HardState, LogEntry, Replica};
use crate::ttl::TtlWheel;
use crate::wal::{FsStorage, Wal, WAL_SEGMENT_BYTES};
use ringd_store::{Command, Error, ErrorCode, Event, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who is waiting for a proposal.
pub enum Token {
    Client(ReplyTo),
    /// An expiry pass the raft shard proposed itself.
    Expiry,
}

/// Where the durable state lives: `<data-dir>/member/{wal,snap}` as in etcd.
pub struct Paths {
    pub wal: PathBuf,
    pub snap: PathBuf,
}

impl Paths {
    pub fn new(data_dir: &Path) -> Paths {
        Paths {
            wal: data_dir.join("member").join("wal"),
            snap: data_dir.join("member").join("snap"),
        }
    }
}

/// Everything recovered at start-up, ready for `raft_main`.
pub struct Recovered {
    pub replica: Replica<Token>,
    pub wal: Wal,
    /// Event history from the snapshot plus the events replayed from the log, in order.
    pub history: Vec<Arc<Event>>,
    pub snapshot_index: u64,
    pub paths: Paths,
}

/// Loads the newest valid snapshot, opens (and locks) the log, replays it. Refuses to start
/// on corruption, a gap between snapshot and log, or a newer format.
pub fn recover(
    data_dir: &Path,
    id: u64,
    voters: Vec<u64>,
    election_tick: usize,
    heartbeat_tick: usize,
) -> Result<Recovered, String> {
    let paths = Paths::new(data_dir);
    std::fs::create_dir_all(&paths.snap)
        .map_err(|e| format!("cannot create {}: {e}", paths.snap.display()))?;
    let mut store = Store::new();
    let mut history: Vec<Arc<Event>> = Vec::new();
    let (mut snap_index, mut snap_term) = (0, 0);
    let snaps =
        crate::snapshot::list(&paths.snap).map_err(|e| format!("cannot list snapshots: {e}"))?;
    for (_, path) in &snaps {
        let file = match crate::snapshot::read(path) {
            Ok(f) => f,
            Err(e) if e.contains("newer than") => return Err(e),
            Err(e) => {
                tracing::warn!("{e}; trying an older snapshot");
                continue;
            }
        };
        store =
            Store::restore(&file.store).map_err(|e| format!("snapshot {}: {e}", path.display()))?;
        history = file
            .events
            .iter()
            .map(|b| Event::decode(b).map(Arc::new))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("snapshot {} events: {e}", path.display()))?;
        snap_index = file.raft_index;
        snap_term = file.raft_term;
        tracing::info!(snapshot = %path.display(), raft_index = snap_index, keys = store.node_count(), "loaded snapshot");
        break;
    }
    let (wal, rec) =
        Wal::open(&paths.wal, snap_index, segment_bytes()).map_err(|e| e.to_string())?;
    if let Some(t) = &rec.torn_tail {
        tracing::warn!("log: {t}");
    }
    if let Some(first) = rec.entries.first() {
        if first.index > snap_index + 1 {
            return Err(format!(
                "the log starts at raft index {} but the newest usable snapshot ends at {snap_index}: entries are missing, refusing to start",
                first.index
            ));
        }
    } else if rec.hard_state.commit > snap_index {
        return Err(format!(
            "the log is empty but the hard state says {} entries were committed after snapshot {snap_index}: refusing to start",
            rec.hard_state.commit - snap_index
        ));
    }
    let replayed = rec.entries.len();
    let replica = Replica::new(Bootstrap {
        id,
        voters,
        store,
        snapshot_index: snap_index,
        snapshot_term: snap_term,
        entries: rec.entries,
        hard_state: rec.hard_state,
        election_tick,
        heartbeat_tick,
    })?;
    tracing::info!(
        snapshot_index = snap_index,
        log_entries = replayed,
        "recovered"
    );
    Ok(Recovered {
        replica,
        wal,
        history,
        snapshot_index: snap_index,
        paths,
    })
}

/// The size of new log segments: `WAL_SEGMENT_BYTES`, or `RINGD_WAL_SEGMENT_BYTES` (a
/// multiple of 4096, at least 64 KiB) so that tests can fill and remove segments quickly.
fn segment_bytes() -> u64 {
    std::env::var("RINGD_WAL_SEGMENT_BYTES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&b| b >= 64 << 10 && b.is_multiple_of(4096))
        .unwrap_or(WAL_SEGMENT_BYTES)
}

fn persist(
    wal: &mut Wal,
    entries: &[LogEntry],
    hs: Option<HardState>,
    must_sync: bool,
) -> Result<(), crate::wal::WalError> {
    if !entries.is_empty() {
        wal.append(entries)?;
    }
    if let Some(hs) = hs {
        wal.set_hard_state(hs)?;
    }
    if must_sync {
        wal.sync()?;
    }
    Ok(())
}

fn fatal(what: &str, e: impl std::fmt::Display) -> ! {
    tracing::error!("{what}: {e}; exiting (the data directory is consistent up to the last fsync)");
    std::process::exit(1);
}

/// Runs Ready rounds until raft has nothing more to do; returns the applied answers and events.
fn drive(
    replica: &mut Replica<Token>,
    wal: &mut Wal,
    stats: &mut BatchStats,
) -> (Vec<crate::raft::Applied<Token>>, Vec<Arc<Event>>) {
    let mut applied = Vec::new();
    let mut events = Vec::new();
    loop {
        let out = match replica.step(|entries, hs, must_sync| persist(wal, entries, hs, must_sync))
        {
            Ok(out) => out,
            Err(e) => fatal("log write or fsync failed", e),
        };
        if out.persisted_entries > 0 {
            stats.syncs += 1;
            stats.entries += out.persisted_entries as u64;
        }
        let done = out.applied.is_empty() && out.events.is_empty() && out.persisted_entries == 0;
        applied.extend(out.applied);
        events.extend(out.events);
        if done {
            return (applied, events);
        }
    }
}

/// Start-up: elects this member (single voter) and replays the log into the store, returning
/// the replayed events for the ring. Runs before any shard serves.
pub fn replay(rec: &mut Recovered) -> Vec<Arc<Event>> {
    let mut stats = BatchStats::default();
    let (_, events) = drive(&mut rec.replica, &mut rec.wal, &mut stats);
    if let Err(e) = rec.replica.shrink_mem_log() {
        // Only memory is at stake: the log as it is stays correct.
        tracing::warn!("cannot shrink raft's in-memory log after replay: {e}");
    }
    events
}

/// Group-commit figures, logged at info every so often and exported as metrics.
#[derive(Default)]
pub struct BatchStats {
    pub syncs: u64,
    pub entries: u64,
}

pub struct RaftShardConfig {
    pub snapshot_count: u64,
    pub tick: Duration,
}

pub fn raft_main(
    shared: Arc<Shared>,
    rec: Recovered,
    cfg: RaftShardConfig,
    mailbox: flume::Receiver<Proposal>,
    shards: Vec<flume::Sender<ShardMsg>>,
) {
    let Recovered {
        mut replica,
        mut wal,
        history: _,
        snapshot_index,
        paths,
    } = rec;
    let mut stats = BatchStats::default();
    let mut wheel = TtlWheel::new(unix_now_ns());
    if let Some(next) = replica.store().next_expiration() {
        // Keys whose TTL ran out while we were down expire at once, through the log.
        wheel.schedule(next);
    }
    let mut snapshotter = Snapshotter::start(paths.snap.clone(), paths.wal.clone(), snapshot_index);
    let mut batch: Vec<Proposal> = Vec::with_capacity(PROPOSAL_BATCH_MAX);
    let mut next_tick = Instant::now() + cfg.tick;
    loop {
        let mut wake = next_tick;
        if let Some(at) = wheel.next_wake() {
            let wait_ns = at.saturating_sub(unix_now_ns());
            wake = wake.min(Instant::now() + Duration::from_nanos(wait_ns));
        }
        match mailbox.recv_deadline(wake) {
            Ok(p) => batch.push(p),
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => return,
        }
        while batch.len() < PROPOSAL_BATCH_MAX {
            match mailbox.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let now = unix_now_ns();
        let mut replies = Outbox::new(shards.len());
        let mut quorum_gets = Vec::new();
        for p in batch.drain(..) {
            match p {
                Proposal::Write {
                    mut cmd,
                    ttl_secs,
                    reply,
                } => {
                    cmd.stamp(now, ttl_secs);
                    if let Err((Token::Client(tx), e)) = replica.propose(&cmd, Token::Client(reply))
                    {
                        replies.push(
                            tx,
                            Reply {
                                result: Err(e),
                                raft_index: replica.applied_index(),
                                raft_term: replica.term(),
                            },
                        );
                    }
                }
                Proposal::QuorumGet {
                    key,
                    recursive,
                    sorted,
                    reply,
                } => quorum_gets.push((key, recursive, sorted, reply)),
            }
        }
        if Instant::now() >= next_tick {
            replica.tick();
            next_tick = Instant::now() + cfg.tick;
        }
        let expiry_due = wheel.advance(now);
        if expiry_due && replica.is_leader() {
            let _ = replica.propose(&Command::Expire { cutoff: now }, Token::Expiry);
        }
        let (applied, events) = drive(&mut replica, &mut wal, &mut stats);
        shared
            .wal_syncs
            .store(stats.syncs, std::sync::atomic::Ordering::Relaxed);
        shared
            .wal_entries
            .store(stats.entries, std::sync::atomic::Ordering::Relaxed);
        if expiry_due {
            // The wheel only knows deadlines written while this process ran; TTLs recovered
            // from the snapshot and the log are chained here: after each pass, the store's
            // earliest remaining expiration is scheduled.
            if let Some(next) = replica.store().next_expiration() {
                wheel.schedule(next);
            }
        }
        for a in applied {
            if let Token::Client(tx) = a.token {
                let result = a.result;
                replies.push(
                    tx,
                    Reply {
                        result,
                        raft_index: a.raft_index,
                        raft_term: a.raft_term,
                    },
                );
            }
        }
        // A single voter that leads has applied everything acknowledged before this batch, so
        // answering from its store now is linearizable (issue "cluster" moves this to
        // ReadIndex).
        for (key, recursive, sorted, reply) in quorum_gets {
            let result = if replica.is_leader() {
                replica
                    .store()
                    .view()
                    .get(&key, recursive, sorted)
                    .map(Arc::new)
            } else {
                Err(Error::new(
                    ErrorCode::LeaderElect,
                    "",
                    replica.store().index().0,
                ))
            };
            replies.push(
                reply,
                Reply {
                    result,
                    raft_index: replica.applied_index(),
                    raft_term: replica.term(),
                },
            );
        }
        if !events.is_empty() || !replies.is_empty() {
            publish(&shared, &replica, &shards, events, &mut wheel, &mut replies);
        }
        snapshotter.collect(&mut replica, &mut wal);
        snapshotter.maybe_start(&shared, &replica, cfg.snapshot_count);
    }
}

fn publish(
    shared: &Shared,
    replica: &Replica<Token>,
    shards: &[flume::Sender<ShardMsg>],
    events: Vec<Arc<Event>>,
    wheel: &mut TtlWheel,
    replies: &mut Outbox,
) {
    for ev in &events {
        if let Some(at) = ev.node.expiration {
            wheel.schedule(at);
        }
        shared.ring.publish(ev.clone());
    }
    let store = replica.store();
    shared.published.store(Arc::new(Published {
        view: store.view(),
        raft_index: replica.applied_index(),
        raft_term: replica.term(),
        write_stats: store.write_stats().clone(),
    }));
    let events: Option<Arc<[Arc<Event>]>> = (!events.is_empty()).then(|| events.into());
    replies.send(shards, events);
}

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

/// Work for the snapshot thread.
enum SnapJob {
    /// Write a snapshot.
    Write {
        index: u64,
        term: u64,
        source: ringd_store::SnapshotSource,
        events: Vec<Vec<u8>>,
    },
    /// After a snapshot: remove the log segments the raft shard detached (in order) and the
    /// snapshots older than `keep_from`. File removal takes milliseconds (~5 ms for a 64 MiB
    /// segment here), so the raft shard does not do it.
    Remove {
        segments: Vec<PathBuf>,
        keep_from: u64,
    },
}

/// Snapshots are encoded and written on their own thread from an O(1) frozen copy of the
/// store, so writes keep flowing meanwhile (no stop-the-world). The raft shard only collects
/// the last 1000 events (cheap) and, when the file is durable, detaches the old log segments,
/// which the snapshot thread then removes.
pub struct Snapshotter {
    jobs: flume::Sender<SnapJob>,
    done: flume::Receiver<Result<u64, String>>,
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
                    let (index, term, source, events) = match job {
                        SnapJob::Write {
                            index,
                            term,
                            source,
                            events,
                        } => (index, term, source, events),
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
                    let mut store = Vec::new();
                    source.snapshot(&mut store);
                    let res = crate::snapshot::write(&dir, index, term, &store, &events)
                        .map(|_| {
                            tracing::info!(
                                raft_index = index,
                                bytes = store.len(),
                                ms = started.elapsed().as_millis() as u64,
                                "snapshot written"
                            );
                            index
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
    fn maybe_start(&mut self, shared: &Shared, replica: &Replica<Token>, count: u64) {
        if self.in_flight || replica.applied_index().0 < self.last.saturating_add(count) {
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
        let job = SnapJob::Write {
            index: replica.applied_index().0,
            term: replica.term(),
            source: replica.store().snapshot_source(),
            events,
        };
        self.in_flight = self.jobs.try_send(job).is_ok();
    }

    /// Compacts the log once a snapshot is durable.
    fn collect(&mut self, replica: &mut Replica<Token>, wal: &mut Wal) {
        let Ok(res) = self.done.try_recv() else {
            return;
        };
        self.in_flight = false;
        match res {
            Ok(index) => {
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
                self.last = index;
            }
            // Nothing is lost: the log still holds every entry. Try again later.
            Err(e) => tracing::warn!("{e}"),
        }
    }
}
