//! The replica: raft-rs's RawNode plus the store it drives, sans I/O.
//!
//! The raft shard (src/shard/raft.rs) owns a `Replica` and feeds it proposals and ticks; each
//! `step` runs one raft-rs Ready round and hands the entries and hard state to a `persist`
//! callback, which must make them durable (one fdatasync) before returning. Only then are
//! entries committed and applied, so an answer never precedes its fsync. The same code can be
//! driven by a simulator with an in-memory log.
//!
//! Architecture invariant: nothing here touches sockets, threads or files; time enters only
//! as the absolute expirations already stamped into proposed commands.

use raft::eraftpb::{ConfState, Entry, EntryType, HardState as RaftHardState};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};
use ringd_store::{Command, Error, ErrorCode, Event, Store};
use std::collections::VecDeque;
use std::sync::Arc;

/// An entry or hard state to persist, in the log's own types (no raft-rs types leak out).
pub use crate::wal::{HardState, LogEntry};

/// A position in the raft log. Not an etcd index (`ringd_store::EtcdIndex`): conf changes,
/// leader no-ops and expiry passes that expire nothing consume raft indexes only, so the two
/// drift apart and must never be mixed up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RaftIndex(pub u64);

impl std::fmt::Display for RaftIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Kinds of log entries (the `kind` byte of a log record).
pub const ENTRY_NORMAL: u8 = 0;
pub const ENTRY_CONF_CHANGE: u8 = 1;

/// The result of applying one proposal, handed back with its token.
pub struct Applied<T> {
    pub token: T,
    /// Shared with `StepOutput::events`: each event is built once.
    pub result: Result<Arc<Event>, Error>,
    pub raft_index: RaftIndex,
    pub raft_term: u64,
}

/// What one `step` produced.
pub struct StepOutput<T> {
    /// Answers to proposals, in log order.
    pub applied: Vec<Applied<T>>,
    /// Every event applied this step (including expiries nobody proposed from a client).
    pub events: Vec<Arc<Event>>,
    /// Entries persisted this step (for the batch-size metric).
    pub persisted_entries: usize,
}

pub struct Replica<T> {
    node: RawNode<MemStorage>,
    store: Store,
    applied_index: u64,
    /// Proposals waiting for their entry to be applied: (raft index, token).
    pending: VecDeque<(u64, T)>,
}

/// A slog drain that forwards raft-rs's log lines to tracing.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", record.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::debug!(target: "raft", "{}", record.msg()),
            _ => tracing::trace!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

/// Everything a replica starts from: what the snapshot and the log recovered.
pub struct Bootstrap {
    pub id: u64,
    pub voters: Vec<u64>,
    pub store: Store,
    /// Raft index and term the store's snapshot covers (0, 0 for a new member).
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    pub entries: Vec<LogEntry>,
    pub hard_state: HardState,
    pub election_tick: usize,
    pub heartbeat_tick: usize,
}

impl<T> Replica<T> {
    pub fn new(b: Bootstrap) -> Result<Replica<T>, String> {
        let storage = MemStorage::new();
        {
            let mut core = storage.wl();
            if b.snapshot_index > 0 {
                let mut snap = raft::eraftpb::Snapshot::default();
                snap.mut_metadata().index = b.snapshot_index;
                snap.mut_metadata().term = b.snapshot_term;
                snap.mut_metadata()
                    .set_conf_state(ConfState::from((b.voters.clone(), vec![])));
                core.apply_snapshot(snap)
                    .map_err(|e| format!("raft snapshot: {e}"))?;
            } else {
                core.set_conf_state(ConfState::from((b.voters.clone(), vec![])));
            }
            let entries: Vec<Entry> = b.entries.iter().map(to_raft_entry).collect();
            core.append(&entries)
                .map_err(|e| format!("raft log: {e}"))?;
            let hs = RaftHardState {
                term: b.hard_state.term.max(b.snapshot_term),
                vote: b.hard_state.vote,
                commit: b.hard_state.commit.max(b.snapshot_index),
                ..Default::default()
            };
            core.set_hardstate(hs);
        }
        let cfg = Config {
            id: b.id,
            election_tick: b.election_tick,
            heartbeat_tick: b.heartbeat_tick,
            applied: b.snapshot_index,
            pre_vote: true,
            check_quorum: true,
            max_inflight_msgs: 256,
            ..Config::default()
        };
        cfg.validate().map_err(|e| format!("raft config: {e}"))?;
        let logger = slog::Logger::root(TracingDrain, slog::o!());
        let mut node = RawNode::new(&cfg, storage, &logger).map_err(|e| format!("raft: {e}"))?;
        if b.voters == [b.id] {
            // A single voter needs no election timeout to lead.
            node.campaign().map_err(|e| format!("raft campaign: {e}"))?;
        }
        Ok(Replica {
            node,
            store: b.store,
            applied_index: b.snapshot_index,
            pending: VecDeque::new(),
        })
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    pub fn applied_index(&self) -> RaftIndex {
        RaftIndex(self.applied_index)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Drops raft's in-memory copy of the log up to `index` (after a snapshot).
    pub fn compact(&mut self, index: u64) {
        let index = index.min(self.applied_index);
        if index > 0 {
            // Compacting below the first index is a no-op error raft-rs reports; nothing to do.
            let _ = self.node.mut_store().wl().compact(index);
        }
    }

    pub fn tick(&mut self) {
        self.node.tick();
    }

    /// Proposes a command (expirations already stamped). On success the token comes back
    /// from a later `step` once the entry is durable and applied.
    pub fn propose(&mut self, cmd: &Command, token: T) -> Result<(), (T, Error)> {
        if !self.is_leader() {
            return Err((
                token,
                Error::new(ErrorCode::LeaderElect, "", self.store.index().0),
            ));
        }
        let mut data = Vec::with_capacity(64);
        cmd.encode(&mut data);
        match self.node.propose(Vec::new(), data) {
            Ok(()) => {
                let index = self.node.raft.raft_log.last_index();
                self.pending.push_back((index, token));
                Ok(())
            }
            Err(e) => Err((
                token,
                Error::new(ErrorCode::RaftInternal, e.to_string(), self.store.index().0),
            )),
        }
    }

    /// Runs one Ready round. `persist(entries, hard_state, must_sync)` must write both, and
    /// when `must_sync` make them durable before it returns Ok; an Err is fatal to the caller
    /// (we never retry a failed fsync).
    pub fn step<E>(
        &mut self,
        mut persist: impl FnMut(&[LogEntry], Option<HardState>, bool) -> Result<(), E>,
    ) -> Result<StepOutput<T>, E> {
        let mut out = StepOutput {
            applied: Vec::new(),
            events: Vec::new(),
            persisted_entries: 0,
        };
        if !self.node.has_ready() {
            return Ok(out);
        }
        let mut ready = self.node.ready();
        // Single member: no messages to send. (Issue "cluster" sends ready.messages() here.)
        let committed = ready.take_committed_entries();
        self.apply_entries(committed, &mut out);
        let entries: Vec<LogEntry> = ready.entries().iter().map(from_raft_entry).collect();
        let hs = ready.hs().map(|h| HardState {
            term: h.term,
            vote: h.vote,
            commit: h.commit,
        });
        if !entries.is_empty() || hs.is_some() {
            // raft-rs's must_sync: new entries, or a new term or vote. A hard state that only
            // moved its commit index need not be durable before anything is answered (after a
            // crash the leader re-commits what the log holds), so it rides along unsynced
            // until the next batch's fdatasync: one fsync per batch, not two.
            persist(&entries, hs, ready.must_sync())?;
            out.persisted_entries = entries.len();
            let store = self.node.mut_store();
            let mut core = store.wl();
            // Appending to MemStorage cannot fail for entries raft itself produced in order.
            if let Err(e) = core.append(ready.entries()) {
                panic!("raft produced entries MemStorage rejects: {e}");
            }
            if let Some(h) = ready.hs() {
                core.set_hardstate(h.clone());
            }
        }
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().wl().mut_hard_state().commit = commit;
        }
        let committed = light.take_committed_entries();
        self.apply_entries(committed, &mut out);
        self.node.advance_apply();
        Ok(out)
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, out: &mut StepOutput<T>) {
        for e in entries {
            assert!(
                e.index == self.applied_index + 1,
                "applied {} then {}",
                self.applied_index,
                e.index
            );
            self.applied_index = e.index;
            let result = if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
                // Leader no-ops and conf changes consume raft indexes only.
                None
            } else {
                match Command::decode(&e.data) {
                    Ok(Command::Expire { cutoff }) => {
                        let before = out.events.len();
                        out.events
                            .extend(self.store.expire(cutoff).into_iter().map(Arc::new));
                        Some(match out.events.get(before..).and_then(|e| e.last()) {
                            Some(last) => Ok(last.clone()),
                            None => Err(Error::new(
                                ErrorCode::KeyNotFound,
                                "",
                                self.store.index().0,
                            )),
                        })
                    }
                    Ok(cmd) => {
                        let r = self.store.apply(&cmd).map(Arc::new);
                        if let Ok(ev) = &r {
                            out.events.push(ev.clone());
                        }
                        Some(r)
                    }
                    Err(err) => {
                        // Only this process writes entries: an undecodable one is a bug or a
                        // corrupted log that passed its CRC. Refuse to diverge silently.
                        panic!("undecodable log entry at raft index {}: {err}", e.index);
                    }
                }
            };
            while let Some((idx, _)) = self.pending.front() {
                if *idx > e.index {
                    break;
                }
                let Some((idx, token)) = self.pending.pop_front() else {
                    break;
                };
                let result = match (&result, idx == e.index) {
                    (Some(r), true) => r.clone(),
                    // The proposal's entry was replaced (lost leadership): etcd answers
                    // "during leader election" and the client retries.
                    _ => Err(Error::new(ErrorCode::LeaderElect, "", self.store.index().0)),
                };
                out.applied.push(Applied {
                    token,
                    result,
                    raft_index: RaftIndex(e.index),
                    raft_term: e.term,
                });
            }
        }
    }
}

fn to_raft_entry(e: &LogEntry) -> Entry {
    let mut r = Entry {
        index: e.index,
        term: e.term,
        data: bytes::Bytes::from(e.data.clone()),
        ..Default::default()
    };
    r.set_entry_type(if e.kind == ENTRY_CONF_CHANGE {
        EntryType::EntryConfChange
    } else {
        EntryType::EntryNormal
    });
    r
}

fn from_raft_entry(e: &Entry) -> LogEntry {
    let kind = match e.get_entry_type() {
        EntryType::EntryNormal => ENTRY_NORMAL,
        _ => ENTRY_CONF_CHANGE,
    };
    LogEntry {
        index: e.index,
        term: e.term,
        kind,
        data: e.data.to_vec(),
    }
}
