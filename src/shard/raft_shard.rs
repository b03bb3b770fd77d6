//! The raft shard: the single writer. It owns the `Replica` (raft-rs + the store), the log
//! and the snapshots, and it is the only thread that mutates the store, the event ring and
//! the published view.
//!
//! Loop: wait for a proposal, the next raft tick or the TTL wheel's next deadline; drain up to
//! `PROPOSAL_BATCH_MAX` proposals; stamp TTLs with the wall clock (the only place time enters
//! a command) and propose them; propose an expiry pass when the wheel says one is due; run
//! the Ready round, whose persist step appends every new entry and the hard state to the log
//! and makes them durable with ONE fdatasync (group commit); then, once per batch and in this
//! order: events into the ring, the new view published, replies sent, one wake per shard.
//! Publishing before replying lets a client read its own write on any shard; ring-before-
//! view lets a watcher that saw index V find every event <= V in the ring. A failed fsync is
//! fatal: the process exits and recovers from disk (never retry: the page cache may have
//! dropped the dirty pages).
//!
//! Recovery (`recovery.rs`) builds what this loop starts from; snapshots are written on
//! their own thread (`snapshotter.rs`).

use super::recovery::Recovered;
use super::snapshotter::Snapshotter;
use super::{unix_now_ns, Outbox, Proposal, Published, Reply, ReplyTo, ShardMsg, Shared};
use crate::limits::PROPOSAL_BATCH_MAX;
use crate::raft::{HardState, LogEntry, Replica};
use crate::ttl::TtlWheel;
use crate::wal::Wal;
use ringd_store::{Command, Error, ErrorCode, Event};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who is waiting for a proposal.
pub enum Token {
    Client(ReplyTo),
    /// An expiry pass the raft shard proposed itself.
    Expiry,
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

pub(super) fn fatal(what: &str, e: impl std::fmt::Display) -> ! {
    tracing::error!("{what}: {e}; exiting (the data directory is consistent up to the last fsync)");
    std::process::exit(1);
}

/// Runs Ready rounds until raft has nothing more to do; returns the applied answers and events.
pub(super) fn drive(
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
                    let expire =
                        ttl_secs.map(|t| now.saturating_add(t.saturating_mul(1_000_000_000)));
                    cmd.stamp_expiration(expire);
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
