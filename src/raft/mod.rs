//! The replica: raft-rs's RawNode plus the store it drives, sans I/O.
//!
//! The raft shard (src/shard/raft.rs) owns a `Replica` and feeds it proposals and ticks; each
//! `step` runs one raft-rs Ready round and hands the entries and hard state to a `persist`
//! callback, which must make them durable (one fdatasync) before returning. Only then are
//! entries committed and applied, so an answer never precedes its fsync. The same code can be
//! driven by a simulator with an in-memory log.
//!
//! Architecture invariant: nothing here touches sockets, threads or files; time enters only
//! as the stamps (write times, absolute expirations) already in proposed commands.

use crate::limits::RAFT_MEM_LOG_KEEP;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState as RaftHardState};
use raft::storage::{MemStorage, MemStorageCore};
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
        let entries: Vec<Entry> = b.entries.iter().map(to_raft_entry).collect();
        let hs = RaftHardState {
            term: b.hard_state.term.max(b.snapshot_term),
            vote: b.hard_state.vote,
            commit: b.hard_state.commit.max(b.snapshot_index),
            ..Default::default()
        };
        *storage.wl() = mem_log(
            (b.snapshot_index, b.snapshot_term),
            ConfState::from((b.voters.clone(), vec![])),
            &entries,
            hs,
        )?;
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
        self.trim_mem_log();
        Ok(out)
    }

    /// Rebuilds raft's in-memory log with only the entries it still holds, in a Vec of their
    /// size. After recovery it held every replayed entry (~100k for a snapshot count of
    /// 100000); trimming drops them but keeps the Vec's capacity, which nothing ever reuses.
    pub fn shrink_mem_log(&mut self) -> Result<(), String> {
        use raft::{GetEntriesContext, Storage};
        let store = self.node.store();
        let (first, last) = (
            store.first_index().map_err(|e| e.to_string())?,
            store.last_index().map_err(|e| e.to_string())?,
        );
        let kept = store
            .entries(first, last + 1, None, GetEntriesContext::empty(false))
            .map_err(|e| e.to_string())?;
        // raft-rs's compaction forgets the term before the first entry, so the first entry
        // kept becomes the boundary (it is applied: trimming only ever drops applied ones).
        let Some((boundary, rest)) = kept.split_first() else {
            return Ok(());
        };
        let state = store.initial_state().map_err(|e| e.to_string())?;
        let fresh = mem_log(
            (boundary.index, boundary.term),
            state.conf_state,
            rest,
            state.hard_state,
        )?;
        *self.node.mut_store().wl() = fresh;
        Ok(())
    }

    /// Drops applied entries from raft's in-memory log beyond `RAFT_MEM_LOG_KEEP`, in chunks
    /// of that size so the drain's memmove stays amortized.
    fn trim_mem_log(&mut self) {
        // `Storage::first_index` never fails for MemStorage.
        let first = raft::Storage::first_index(self.node.store()).unwrap_or(0);
        if self.applied_index >= first + 2 * RAFT_MEM_LOG_KEEP {
            self.compact(self.applied_index - RAFT_MEM_LOG_KEEP);
        }
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
                            None => {
                                Err(Error::new(ErrorCode::KeyNotFound, "", self.store.index().0))
                            }
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

/// raft-rs's in-memory log: `entries` after the snapshot boundary `(index, term)` (`(0, 0)`:
/// none, the log starts at 1), with the membership and hard state. Built at start-up and,
/// once replay is done, again at the size of what it still holds (`shrink_mem_log`).
fn mem_log(
    boundary: (u64, u64),
    conf_state: ConfState,
    entries: &[Entry],
    hs: RaftHardState,
) -> Result<MemStorageCore, String> {
    let mut core = MemStorageCore::default();
    if boundary.0 > 0 {
        let mut snap = raft::eraftpb::Snapshot::default();
        snap.mut_metadata().index = boundary.0;
        snap.mut_metadata().term = boundary.1;
        snap.mut_metadata().set_conf_state(conf_state);
        core.apply_snapshot(snap)
            .map_err(|e| format!("raft snapshot: {e}"))?;
    } else {
        core.set_conf_state(conf_state);
    }
    core.append(entries).map_err(|e| format!("raft log: {e}"))?;
    core.set_hardstate(hs);
    Ok(core)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> Command {
        Command::Set {
            key: key.to_string(),
            dir: false,
            value: value.to_string(),
            expire: None,
            refresh: false,
            at: 0,
        }
    }

    fn bootstrap(entries: Vec<LogEntry>, hard_state: HardState) -> Replica<u64> {
        let r = Replica::new(Bootstrap {
            id: 1,
            voters: vec![1],
            store: Store::new(),
            snapshot_index: 0,
            snapshot_term: 0,
            entries,
            hard_state,
            election_tick: 10,
            heartbeat_tick: 1,
        });
        r.unwrap_or_else(|e| panic!("bootstrap: {e}"))
    }

    /// Steps until raft is idle, persisting into `log`; returns the applied tokens in order.
    fn drive(r: &mut Replica<u64>, log: &mut Vec<LogEntry>, hs: &mut HardState) -> Vec<u64> {
        let mut tokens = Vec::new();
        loop {
            let out = r
                .step(|entries, h, _| {
                    for e in entries {
                        log.truncate((e.index - 1) as usize);
                        log.push(e.clone());
                    }
                    if let Some(h) = h {
                        *hs = h;
                    }
                    Ok::<(), ()>(())
                })
                .unwrap_or_else(|()| panic!("persist failed"));
            let idle = out.applied.is_empty() && out.persisted_entries == 0;
            tokens.extend(out.applied.into_iter().map(|a| {
                assert!(a.result.is_ok(), "write {} failed", a.token);
                a.token
            }));
            if idle {
                return tokens;
            }
        }
    }

    #[test]
    fn applies_in_order_trims_its_memory_log_and_recovers_from_the_persisted_one() {
        let mut log = Vec::new();
        let mut hs = HardState::default();
        let mut r = bootstrap(Vec::new(), HardState::default());
        drive(&mut r, &mut log, &mut hs);
        assert!(r.is_leader());
        let n = 5 * RAFT_MEM_LOG_KEEP;
        let mut applied = Vec::new();
        for i in 0..n {
            r.propose(&set(&format!("/k{}", i % 100), &i.to_string()), i)
                .unwrap_or_else(|_| panic!("propose {i}"));
            if i % 97 == 0 {
                applied.extend(drive(&mut r, &mut log, &mut hs));
            }
        }
        applied.extend(drive(&mut r, &mut log, &mut hs));
        assert_eq!(applied, (0..n).collect::<Vec<_>>());
        // raft's in-memory log keeps a window, not everything since the start.
        let first = raft::Storage::first_index(r.node.store()).unwrap_or(0);
        let applied_index = r.applied_index().0;
        assert!(
            first > applied_index - 2 * RAFT_MEM_LOG_KEEP,
            "first {first}"
        );
        assert!(
            first <= applied_index - RAFT_MEM_LOG_KEEP + 1,
            "first {first}"
        );
        // Writes keep working after the trim, and a replica rebuilt from the persisted log
        // (nothing in memory) reaches the same store.
        r.propose(&set("/after", "trim"), n)
            .unwrap_or_else(|_| panic!("propose"));
        assert_eq!(drive(&mut r, &mut log, &mut hs), vec![n]);
        let mut again = bootstrap(log.clone(), hs);
        let mut log2 = log.clone();
        let mut hs2 = hs;
        drive(&mut again, &mut log2, &mut hs2);
        assert_eq!(again.store().index(), r.store().index());
        for k in ["/k0", "/k99", "/after"] {
            let a = again
                .store()
                .view()
                .get(k, false, false)
                .map(|e| e.node.value);
            let b = r.store().view().get(k, false, false).map(|e| e.node.value);
            assert_eq!(a, b, "{k}");
        }
        // Shrinking the rebuilt replica's in-memory log keeps its window (less the boundary
        // entry) and its last entry, and writes go on.
        let bounds = |r: &Replica<u64>| {
            let s = r.node.store();
            (
                raft::Storage::first_index(s).unwrap_or(0),
                raft::Storage::last_index(s).unwrap_or(0),
            )
        };
        let (first, last) = bounds(&again);
        again
            .shrink_mem_log()
            .unwrap_or_else(|e| panic!("shrink: {e}"));
        assert_eq!(bounds(&again), (first + 1, last));
        again
            .propose(&set("/after", "shrink"), n + 1)
            .unwrap_or_else(|_| panic!("propose"));
        assert_eq!(drive(&mut again, &mut log2, &mut hs2), vec![n + 1]);
    }
}
