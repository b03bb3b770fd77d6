//! The replica: raft-rs's RawNode plus the state machine it drives (the store and the
//! membership), sans I/O.
//!
//! The raft shard (src/shard/raft_shard.rs) owns a `Replica` and feeds it proposals, peer
//! messages and ticks; each `step` runs one raft-rs Ready round in raft-rs's order (see its
//! `examples/five_mem_node`), handing every part of the Ready to an `Io`:
//! 1. messages the leader may send before persisting (appends go out in parallel with the
//!    leader's own fsync);
//! 2. a snapshot received from the leader, installed and made durable;
//! 3. committed entries, applied;
//! 4. new entries and the hard state, made durable (one fdatasync);
//! 5. messages that may only leave after that persist (votes, append responses);
//! 6. after `advance`: the commit index, more messages, more committed entries, applied.
//!
//! Read states (ReadIndex) are collected on the way and answered once applied reaches them.
//! Nothing in a Ready is dropped.
//!
//! Every proposal carries a request id (this member's id and a sequence number) inside the
//! entry, so the member that took the client request matches the applied entry to its waiter
//! even when a follower forwarded the proposal to the leader, and every waiter has a deadline
//! in ticks: a request that is never applied (no leader, lost quorum, a forwarded proposal
//! dropped) gets etcd's "request timed out", never a hang.
//!
//! Architecture invariant: nothing here touches sockets, threads, files or clocks; time enters
//! only as ticks and as the stamps (write times, absolute expirations) already in proposed
//! commands. The same code runs under the deterministic simulator (tests/sim.rs).

use crate::auth::{AuthCommand, AuthOutcome, AuthState};
use crate::limits::{RAFT_MEM_LOG_KEEP, RECENT_PROPOSALS_MAX, REPLAY_READY_BYTES_MAX};
use crate::members::{Member, Membership};
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState as RaftHardState, Message,
    Snapshot,
};
use raft::storage::{MemStorage, MemStorageCore};
use raft::{Config, RawNode, StateRole, Storage};
use ringd_store::{Command, Error, ErrorCode, Event, Store};
use std::collections::BTreeMap;
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

/// The first byte of an entry payload that carries a request id. Entries written before
/// request ids existed start with the command codec's version byte (1) and decode as a bare
/// command with no requester.
const ENVELOPE_V1: u8 = 0x80;
/// Envelope tags: what follows the request id.
const TAG_COMMAND: u8 = 0;
const TAG_PUBLISH: u8 = 1;
const TAG_UPDATE_PEERS: u8 = 2;
const TAG_AUTH: u8 = 3;

/// Who asked for an entry: the member that took the client request, and its sequence number
/// there. Sequence numbers start at a value the caller gives at each start (the raft shard
/// uses the wall clock in ns) so a restarted member never mistakes an old entry for a new
/// request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestId {
    pub member: u64,
    pub seq: u64,
}

/// What a replicated entry asks of the state machine.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// A keys write or an expiry pass.
    Command(Command),
    /// A member's name and client URLs, published by the member itself after it starts.
    Publish {
        name: String,
        client_urls: Vec<String>,
    },
    /// New peer URLs for a member (`PUT /v2/members/<id>`); no voter changes.
    UpdatePeers { id: u64, peer_urls: Vec<String> },
    /// A change to the v2 auth state (users, roles, the enabled flag).
    Auth(AuthCommand),
}

/// Encodes an entry payload with its request id.
pub fn encode_payload(id: RequestId, payload: &Payload, out: &mut Vec<u8>) {
    out.push(ENVELOPE_V1);
    out.extend_from_slice(&id.member.to_le_bytes());
    out.extend_from_slice(&id.seq.to_le_bytes());
    match payload {
        Payload::Command(cmd) => {
            out.push(TAG_COMMAND);
            cmd.encode(out);
        }
        Payload::Publish { name, client_urls } => {
            out.push(TAG_PUBLISH);
            // Strings and a list of strings: serializing cannot fail.
            let _ = serde_json::to_writer(&mut *out, &(name, client_urls));
        }
        Payload::UpdatePeers { id, peer_urls } => {
            out.push(TAG_UPDATE_PEERS);
            let _ = serde_json::to_writer(&mut *out, &(id, peer_urls));
        }
        Payload::Auth(cmd) => {
            out.push(TAG_AUTH);
            let _ = serde_json::to_writer(&mut *out, cmd);
        }
    }
}

/// Decodes an entry payload: the request id (None for entries from before request ids) and
/// what it asks.
pub fn decode_payload(data: &[u8]) -> Result<(Option<RequestId>, Payload), String> {
    if data.first() != Some(&ENVELOPE_V1) {
        let cmd = Command::decode(data).map_err(|e| e.to_string())?;
        return Ok((None, Payload::Command(cmd)));
    }
    let u64_at = |at: usize| -> Result<u64, String> {
        data.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| "short entry envelope".to_string())
    };
    let id = RequestId {
        member: u64_at(1)?,
        seq: u64_at(9)?,
    };
    let body = data.get(18..).ok_or("short entry envelope")?;
    let payload = match data.get(17) {
        Some(&TAG_COMMAND) => Payload::Command(Command::decode(body).map_err(|e| e.to_string())?),
        Some(&TAG_PUBLISH) => {
            let (name, client_urls): (String, Vec<String>) =
                serde_json::from_slice(body).map_err(|e| format!("publish entry: {e}"))?;
            Payload::Publish { name, client_urls }
        }
        Some(&TAG_UPDATE_PEERS) => {
            let (id, peer_urls): (u64, Vec<String>) =
                serde_json::from_slice(body).map_err(|e| format!("update entry: {e}"))?;
            Payload::UpdatePeers { id, peer_urls }
        }
        Some(&TAG_AUTH) => {
            Payload::Auth(serde_json::from_slice(body).map_err(|e| format!("auth entry: {e}"))?)
        }
        other => return Err(format!("unknown entry tag {other:?}")),
    };
    Ok((Some(id), payload))
}

/// The result of one of this member's requests, handed back with its token.
pub struct Applied<T> {
    pub token: T,
    /// Shared with `StepOutput::events`: each event is built once.
    pub result: Result<Arc<Event>, Error>,
    pub raft_index: RaftIndex,
    pub raft_term: u64,
}

/// What one `step` produced for the caller to act on.
pub struct StepOutput<T> {
    /// Answers to this member's proposals, in log order.
    pub applied: Vec<Applied<T>>,
    /// Quorum reads whose read index is now applied: answer them from the store.
    pub reads: Vec<T>,
    /// Every event applied this step (including expiries and other members' writes).
    pub events: Vec<Arc<Event>>,
    /// Entries persisted this step (for the batch-size metric).
    pub persisted_entries: usize,
    /// This member's membership requests (conf changes, peer URL updates) now applied.
    pub members: Vec<T>,
    /// The membership changed (a conf change, a publish, a peer URL update).
    pub membership_changed: bool,
    /// This member's auth requests now applied, with their answers.
    pub auth: Vec<(T, AuthOutcome)>,
    /// A snapshot from the leader replaced the store: the caller rebuilds what it derived from
    /// the old one (the event history, the TTL schedule).
    pub snapshot_installed: bool,
}

impl<T> Default for StepOutput<T> {
    fn default() -> Self {
        StepOutput {
            applied: Vec::new(),
            reads: Vec::new(),
            events: Vec::new(),
            persisted_entries: 0,
            members: Vec::new(),
            membership_changed: false,
            auth: Vec::new(),
            snapshot_installed: false,
        }
    }
}

/// The replica's side effects, supplied by its driver (the raft shard, or the simulator).
pub trait Io {
    type Error;
    /// Hands raft messages to the transport. Must not block: a full peer queue drops them
    /// (raft retransmits) and reports the peer unreachable.
    fn send(&mut self, messages: Vec<Message>);
    /// Writes the entries and the hard state, and when `must_sync` makes them durable before
    /// returning. An Err is fatal to the caller (a failed fsync is never retried).
    fn persist(
        &mut self,
        entries: &[LogEntry],
        hs: Option<HardState>,
        must_sync: bool,
    ) -> Result<(), Self::Error>;
    /// Makes a snapshot received from the leader durable (the snapshot data at `index`,
    /// `term`), and restarts the log after it.
    fn persist_snapshot(&mut self, index: u64, term: u64, data: &[u8]) -> Result<(), Self::Error>;
}

/// What a snapshot sent to a follower holds, produced by the caller off the raft path
/// (`Replica::snapshot_wanted`, `Replica::offer_snapshot`) and decoded by `install`.
pub struct SnapshotData {
    pub store: Store,
    pub events: Vec<Arc<Event>>,
    pub membership: Membership,
    pub auth: AuthState,
}

/// Encoding and decoding of snapshot payloads, injected so the replica stays free of the
/// snapshot file format.
pub type SnapshotDecoder = fn(&[u8]) -> Result<SnapshotData, String>;

/// What a conf change entry carries besides the raft node id: the member record (peer URLs)
/// and who asked, so the member that took the request answers it once applied.
#[derive(serde::Serialize, serde::Deserialize)]
struct ConfContext {
    member: Member,
    request_member: u64,
    request_seq: u64,
}

/// A quorum read group: the tokens waiting for one ReadIndex request.
struct ReadGroup<T> {
    issued_tick: u64,
    waiters: Vec<(u64, T)>,
}

/// raft-rs's storage: its in-memory log, plus snapshots produced by the caller. raft-rs asks
/// for a snapshot when a follower needs entries the in-memory log no longer holds; the
/// replica never hands it one without the state machine's data (MemStorage's own snapshot
/// is metadata only, and installing that would empty a follower's store).
pub struct ReplicaStorage {
    mem: MemStorage,
    snap: std::sync::Mutex<SnapState>,
}

#[derive(Default)]
struct SnapState {
    ready: Option<Snapshot>,
    wanted: bool,
}

impl ReplicaStorage {
    fn snap_state(&self) -> std::sync::MutexGuard<'_, SnapState> {
        // Only the raft thread touches it; a poisoned lock means it already panicked.
        self.snap.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Storage for ReplicaStorage {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        self.mem.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let first = self.mem.first_index()?;
        let mut st = self.snap_state();
        if let Some(s) = &st.ready {
            let idx = s.get_metadata().index;
            // Usable while the log still holds the entries right after it.
            if idx >= request_index && idx + 1 >= first {
                return Ok(s.clone());
            }
        }
        st.ready = None;
        st.wanted = true;
        Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

/// A snapshot point: the applied raft index and term and the voters there.
pub struct SnapshotPoint {
    pub index: u64,
    pub term: u64,
    pub voters: Vec<u64>,
}

pub struct Replica<T> {
    node: RawNode<ReplicaStorage>,
    store: Store,
    membership: Membership,
    /// The v2 auth state, shared with the published view (copied on write).
    auth: Arc<AuthState>,
    applied_index: u64,
    ticks: u64,
    request_timeout_ticks: u64,
    next_seq: u64,
    /// This member's writes waiting to be applied, by sequence number. Deadlines grow with
    /// the sequence number, so the first entry is always the next to time out.
    pending: BTreeMap<u64, (u64, T)>,
    /// Quorum reads not yet sent as a ReadIndex request (one request per step serves all).
    reads_unissued: Vec<(u64, T)>,
    /// ReadIndex requests in flight, by their sequence number.
    reads_inflight: BTreeMap<u64, ReadGroup<T>>,
    /// Reads whose read index is known, waiting for applied to reach it.
    reads_ready: Vec<(u64, Vec<(u64, T)>)>,
    decode_snapshot: SnapshotDecoder,
    removed: bool,
    /// Proposals made while no leader was known (raft-rs would drop them): proposed as soon
    /// as one is, unless their request timed out meanwhile. (seq, encoded payload)
    unsent: Vec<(u64, Vec<u8>)>,
    /// Request ids of the forwarded proposals this member received, newest last.
    recent_ids: std::collections::HashSet<(u64, u64)>,
    recent_order: std::collections::VecDeque<(u64, u64)>,
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
    /// The membership as of `membership.applied_index` (the data dir's record of it).
    pub membership: Membership,
    pub store: Store,
    /// The auth state as of the snapshot (replay rebuilds the rest from the log).
    pub auth: AuthState,
    /// Raft index and term the store's snapshot covers (0, 0 for a new member).
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    pub entries: Vec<LogEntry>,
    pub hard_state: HardState,
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// Ticks a request may wait to be applied before it gets etcd's timeout error.
    pub request_timeout_ticks: u64,
    /// The first request sequence number of this run (must exceed every earlier run's).
    pub seq_start: u64,
    pub decode_snapshot: SnapshotDecoder,
}

/// The seq of the ReadIndex context bytes (a request id, 16 bytes).
fn read_ctx(id: RequestId) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&id.member.to_le_bytes());
    v.extend_from_slice(&id.seq.to_le_bytes());
    v
}

fn parse_read_ctx(ctx: &[u8]) -> Option<RequestId> {
    Some(RequestId {
        member: u64::from_le_bytes(ctx.get(..8)?.try_into().ok()?),
        seq: u64::from_le_bytes(ctx.get(8..16)?.try_into().ok()?),
    })
}

/// Quorum reads not answered after this many ticks are asked again: raft-rs drops a ReadIndex
/// silently when there is no leader or the leader has not yet committed in its term.
const READ_RETRY_TICKS: u64 = 3;

impl<T> Replica<T> {
    pub fn new(b: Bootstrap) -> Result<Replica<T>, String> {
        let storage = ReplicaStorage {
            mem: MemStorage::new(),
            snap: Default::default(),
        };
        let hs = RaftHardState {
            term: b.hard_state.term.max(b.snapshot_term),
            vote: b.hard_state.vote,
            commit: b.hard_state.commit.max(b.snapshot_index),
            ..Default::default()
        };
        let voters = b.membership.voters();
        *storage.mem.wl() = mem_log(
            (b.snapshot_index, b.snapshot_term),
            ConfState::from((voters.clone(), vec![])),
            b.entries.into_iter().map(to_raft_entry),
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
            max_size_per_msg: 1 << 20,
            // A batch of proposals goes to each follower as one append, not one append per
            // request: followers received 2.0 append messages per client write without it,
            // 0.08 with it; CPU per write summed over 3 members -20 %, p99 7 -> 4.8 ms
            // (perf/results/2026-12-06-cluster-notes.md).
            batch_append: true,
            ..Config::default()
        };
        cfg.validate().map_err(|e| format!("raft config: {e}"))?;
        let logger = slog::Logger::root(TracingDrain, slog::o!());
        let mut node = RawNode::new(&cfg, storage, &logger).map_err(|e| format!("raft: {e}"))?;
        // Start-up's replay in bounded rounds; `shrink_mem_log` lifts the bound after it.
        node.raft
            .set_max_committed_size_per_ready(REPLAY_READY_BYTES_MAX);
        if voters == [b.id] {
            // A single voter needs no election timeout to lead.
            node.campaign().map_err(|e| format!("raft campaign: {e}"))?;
        }
        Ok(Replica {
            node,
            store: b.store,
            membership: b.membership,
            auth: Arc::new(b.auth),
            applied_index: b.snapshot_index,
            ticks: 0,
            request_timeout_ticks: b.request_timeout_ticks.max(1),
            next_seq: b.seq_start,
            pending: BTreeMap::new(),
            reads_unissued: Vec::new(),
            reads_inflight: BTreeMap::new(),
            reads_ready: Vec::new(),
            decode_snapshot: b.decode_snapshot,
            removed: false,
            unsent: Vec::new(),
            recent_ids: Default::default(),
            recent_order: Default::default(),
        })
    }

    pub fn id(&self) -> u64 {
        self.node.raft.id
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn role(&self) -> StateRole {
        self.node.raft.state
    }

    /// The leader this member knows of (0: none).
    pub fn leader_id(&self) -> u64 {
        self.node.raft.leader_id
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    pub fn applied_index(&self) -> RaftIndex {
        RaftIndex(self.applied_index)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn auth(&self) -> &Arc<AuthState> {
        &self.auth
    }

    /// This member applied its own removal: it must stop (etcd exits 0).
    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// Requests waiting for their entry or read (for a bound on them and for metrics).
    pub fn pending_count(&self) -> usize {
        self.pending.len()
            + self.reads_unissued.len()
            + self
                .reads_inflight
                .values()
                .map(|g| g.waiters.len())
                .sum::<usize>()
            + self.reads_ready.iter().map(|(_, w)| w.len()).sum::<usize>()
    }

    /// Drops raft's in-memory copy of the log up to `index` (after a snapshot).
    pub fn compact(&mut self, index: u64) {
        let index = index.min(self.applied_index);
        if index > 0 {
            // Compacting below the first index is a no-op error raft-rs reports; nothing to do.
            let _ = self.node.mut_store().mem.wl().compact(index);
        }
    }

    /// Sets the election timeout raft-rs waits for before campaigning, to `election_tick +
    /// draw % election_tick` ticks (its own range). raft-rs draws it from the thread's RNG at
    /// every term or role change; the deterministic simulation (tests/sim.rs) draws it from
    /// its seed instead, after every call into the replica, so that a seed replays exactly.
    pub fn set_election_timeout(&mut self, draw: u64) {
        let e = self.node.raft.election_timeout();
        let ticks = e + (draw % e.max(1) as u64) as usize;
        self.node.raft.set_randomized_election_timeout(ticks);
    }

    /// Advances raft's clock by one heartbeat interval and returns the requests whose deadline
    /// passed (answer them with etcd's timeout error).
    pub fn tick(&mut self) -> Vec<T> {
        self.node.tick();
        self.ticks += 1;
        let now = self.ticks;
        let mut expired = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().0 > now {
                break;
            }
            expired.push(entry.remove().1);
        }
        let pending = &self.pending;
        self.unsent.retain(|(seq, _)| pending.contains_key(seq));
        let mut keep = Vec::new();
        for (deadline, t) in self.reads_unissued.drain(..) {
            if deadline <= now {
                expired.push(t);
            } else {
                keep.push((deadline, t));
            }
        }
        self.reads_unissued = keep;
        for group in self.reads_inflight.values_mut() {
            expire_waiters(&mut group.waiters, now, &mut expired);
        }
        self.reads_inflight.retain(|_, g| !g.waiters.is_empty());
        for (_, waiters) in &mut self.reads_ready {
            expire_waiters(waiters, now, &mut expired);
        }
        self.reads_ready.retain(|(_, w)| !w.is_empty());
        // Ask again for reads raft-rs may have dropped (no leader yet, or a new leader that
        // has not committed in its term).
        let stale: Vec<u64> = self
            .reads_inflight
            .iter()
            .filter(|(_, g)| now >= g.issued_tick + READ_RETRY_TICKS)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in stale {
            if let Some(g) = self.reads_inflight.get_mut(&seq) {
                g.issued_tick = now;
            }
            let ctx = read_ctx(RequestId {
                member: self.id(),
                seq,
            });
            self.node.read_index(ctx);
        }
        expired
    }

    fn next_request_id(&mut self) -> RequestId {
        self.next_seq += 1;
        RequestId {
            member: self.id(),
            seq: self.next_seq,
        }
    }

    /// Proposes a command (expirations already stamped), on any member: a follower's raft-rs
    /// forwards it to the leader. The token comes back from a later `step` once the entry is
    /// durable on a quorum and applied here, or from `tick` when its deadline passes (no
    /// leader, lost quorum, or the forwarded proposal was dropped: etcd's timeout).
    /// Returns the request id the entry carries (the simulator matches log entries to its
    /// requests with it).
    pub fn propose(&mut self, cmd: Command, token: T) -> RequestId {
        self.propose_payload(Payload::Command(cmd), Some(token))
    }

    /// Proposes a payload; with no token nobody waits for it (expiry passes, publishes).
    pub fn propose_payload(&mut self, payload: Payload, token: Option<T>) -> RequestId {
        let id = self.next_request_id();
        let mut data = Vec::with_capacity(64);
        encode_payload(id, &payload, &mut data);
        if self.leader_id() == 0 {
            // raft-rs drops a proposal when no leader is known (during an election, or right
            // after a restart): keep it until one is, so the client sees a slow answer rather
            // than a timeout. Only requests someone waits for are kept.
            if token.is_some() {
                self.unsent.push((id.seq, data));
            }
        } else {
            // Other errors (a leader transfer in progress) leave the request to its deadline,
            // which is what etcd's clients see then.
            let _ = self.node.propose(Vec::new(), data);
        }
        if let Some(token) = token {
            let deadline = self.ticks + self.request_timeout_ticks;
            self.pending.insert(id.seq, (deadline, token));
        }
        id
    }

    /// Proposes a membership change (voters) with the member record and the request id as
    /// its context. The token comes back in `StepOutput::members` once applied here, or from
    /// `tick` at its deadline (raft-rs drops a conf change proposed while another is pending).
    pub fn propose_conf_change(&mut self, change: ConfChangeType, member: &Member, token: T) {
        let id = self.next_request_id();
        let mut cc = ConfChange::default();
        cc.set_change_type(change);
        cc.node_id = member.id;
        let context = ConfContext {
            member: member.clone(),
            request_member: id.member,
            request_seq: id.seq,
        };
        cc.context = serde_json::to_vec(&context).unwrap_or_default().into();
        if let Err(e) = self.node.propose_conf_change(Vec::new(), cc) {
            tracing::warn!("conf change not proposed: {e}");
        }
        let deadline = self.ticks + self.request_timeout_ticks;
        self.pending.insert(id.seq, (deadline, token));
    }

    /// Proposes new peer URLs for a member; the token comes back in `StepOutput::members`.
    pub fn propose_peer_update(&mut self, member: u64, peer_urls: Vec<String>, token: T) {
        self.propose_payload(
            Payload::UpdatePeers {
                id: member,
                peer_urls,
            },
            Some(token),
        );
    }

    /// A linearizable read (`quorum=true`): the token comes back in `StepOutput::reads` once
    /// this member has applied everything committed when the read was made (ReadIndex, no
    /// log write), or from `tick` when its deadline passes.
    pub fn read(&mut self, token: T) {
        let deadline = self.ticks + self.request_timeout_ticks;
        self.reads_unissued.push((deadline, token));
    }

    /// A raft message from a peer.
    pub fn step_message(&mut self, mut m: Message) {
        if m.get_msg_type() == raft::eraftpb::MessageType::MsgPropose {
            // A forwarded proposal that arrives twice (a network that duplicates, a retry)
            // must not be appended twice: a CAS or an in-order POST would apply twice. Every
            // copy of a message goes to the member it was addressed to, so that member drops
            // the request ids it has seen, leader or not: a copy that reaches an old leader
            // after it stepped down would otherwise be forwarded to the new one and appended
            // again (simulation seed 15096).
            let mut entries: Vec<Entry> = m.take_entries().into();
            entries.retain(|e| self.first_sight(e));
            if entries.is_empty() {
                return;
            }
            m.set_entries(entries.into());
        }
        // An acknowledgement that advances the commit index makes raft-rs broadcast the new
        // commit to every follower at once (an empty append each, and each one answered).
        // While later entries are still unacknowledged, their acknowledgement will advance it
        // again, and the next append carries the commit index anyway: the broadcast is skipped
        // then, and made by the acknowledgement of the last entry (or a heartbeat, if that one
        // is lost). At low load every acknowledgement is of the last entry, so nothing waits.
        let skip = m.get_msg_type() == raft::eraftpb::MessageType::MsgAppendResponse
            && !m.reject
            && m.index < self.node.raft.raft_log.last_index();
        self.node.skip_bcast_commit(skip);
        if let Err(e) = self.node.step(m) {
            tracing::debug!("raft message ignored: {e}");
        }
        self.node.skip_bcast_commit(false);
    }

    pub fn report_unreachable(&mut self, id: u64) {
        self.node.report_unreachable(id);
    }

    pub fn report_snapshot(&mut self, id: u64, ok: bool) {
        if ok {
            // Delivered: do not keep a whole store's bytes around for the next one (raft-rs
            // asks again, and gets a fresher snapshot, if a follower ever needs one).
            self.node.store().snap_state().ready = None;
        }
        let status = if ok {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.node.report_snapshot(id, status);
    }

    /// The voter, other than this leader, whose log matches the most of it: the one to hand
    /// leadership to (None when there is no other voter).
    pub fn best_transferee(&self) -> Option<u64> {
        let me = self.id();
        let voters = self.node.raft.prs().conf().voters().ids();
        voters
            .iter()
            .filter(|&id| id != me)
            .filter_map(|id| self.node.raft.prs().get(id).map(|pr| (pr.matched, id)))
            .max()
            .map(|(_, id)| id)
    }

    /// Hands leadership to `to` (a leader being removed hands over first).
    pub fn transfer_leader(&mut self, to: u64) {
        self.node.transfer_leader(to);
    }

    /// Whether a forwarded entry's request id is new to this member (entries without one,
    /// conf changes and leader no-ops, always are).
    fn first_sight(&mut self, e: &Entry) -> bool {
        if e.get_entry_type() != EntryType::EntryNormal || e.data.first() != Some(&ENVELOPE_V1) {
            return true;
        }
        let Ok((Some(id), _)) = decode_payload(&e.data) else {
            return true;
        };
        let key = (id.member, id.seq);
        if !self.recent_ids.insert(key) {
            tracing::debug!(member = %format!("{:x}", id.member), seq = id.seq, "duplicate proposal dropped");
            return false;
        }
        self.recent_order.push_back(key);
        if self.recent_order.len() > RECENT_PROPOSALS_MAX {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent_ids.remove(&old);
            }
        }
        true
    }

    /// raft-rs asked for a snapshot to send a follower: the caller should produce one at
    /// `snapshot_point()` and hand it to `offer_snapshot`.
    pub fn snapshot_wanted(&self) -> bool {
        self.node.store().snap_state().wanted
    }

    /// The point a snapshot taken now describes (the applied state).
    pub fn snapshot_point(&self) -> SnapshotPoint {
        SnapshotPoint {
            index: self.applied_index,
            term: self.node.store().term(self.applied_index).unwrap_or(0),
            voters: self.membership.voters(),
        }
    }

    /// A snapshot for followers, encoded by the caller at `point`.
    pub fn offer_snapshot(&mut self, point: SnapshotPoint, data: Vec<u8>) {
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = point.index;
        meta.term = point.term;
        meta.set_conf_state(ConfState::from((point.voters, vec![])));
        let mut st = self.node.store().snap_state();
        st.ready = Some(snap);
        st.wanted = false;
    }

    /// Runs one Ready round (see the module comment for the order).
    pub fn step<I: Io>(&mut self, io: &mut I) -> Result<StepOutput<T>, I::Error> {
        let mut out = StepOutput::default();
        if !self.unsent.is_empty() && self.leader_id() != 0 {
            for (seq, data) in std::mem::take(&mut self.unsent) {
                // A request that timed out meanwhile is not proposed late.
                if self.pending.contains_key(&seq) {
                    let _ = self.node.propose(Vec::new(), data);
                }
            }
        }
        if !self.reads_unissued.is_empty() {
            let id = self.next_request_id();
            let waiters = std::mem::take(&mut self.reads_unissued);
            self.reads_inflight.insert(
                id.seq,
                ReadGroup {
                    issued_tick: self.ticks,
                    waiters,
                },
            );
            self.node.read_index(read_ctx(id));
        }
        if !self.node.has_ready() {
            self.answer_reads(&mut out);
            return Ok(out);
        }
        let mut ready = self.node.ready();
        if !ready.messages().is_empty() {
            io.send(ready.take_messages());
        }
        if *ready.snapshot() != Snapshot::default() {
            self.install_snapshot(ready.snapshot().clone(), io, &mut out)?;
            out.snapshot_installed = true;
            out.membership_changed = true;
        }
        self.take_read_states(ready.take_read_states());
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
            io.persist(&entries, hs, ready.must_sync())?;
            out.persisted_entries = entries.len();
            let mut core = self.node.mut_store().mem.wl();
            // Appending to MemStorage cannot fail for entries raft itself produced in order.
            if let Err(e) = core.append(ready.entries()) {
                panic!("raft produced entries MemStorage rejects: {e}");
            }
            if let Some(h) = ready.hs() {
                core.set_hardstate(h.clone());
            }
        }
        if !ready.persisted_messages().is_empty() {
            io.send(ready.take_persisted_messages());
        }
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().mem.wl().mut_hard_state().commit = commit;
        }
        if !light.messages().is_empty() {
            io.send(light.take_messages());
        }
        let committed = light.take_committed_entries();
        self.apply_entries(committed, &mut out);
        self.node.advance_apply();
        self.answer_reads(&mut out);
        self.trim_mem_log();
        Ok(out)
    }

    fn install_snapshot<I: Io>(
        &mut self,
        snap: Snapshot,
        io: &mut I,
        out: &mut StepOutput<T>,
    ) -> Result<(), I::Error> {
        let meta = snap.get_metadata();
        let (index, term) = (meta.index, meta.term);
        let data = match (self.decode_snapshot)(&snap.data) {
            Ok(d) => d,
            // Only a leader of this cluster sends snapshots, CRC-checked on the way; one that
            // does not decode is a bug, and applying half of it would diverge.
            Err(e) => panic!("snapshot at raft index {index} from the leader: {e}"),
        };
        io.persist_snapshot(index, term, &snap.data)?;
        if let Err(e) = self.node.mut_store().mem.wl().apply_snapshot(snap) {
            panic!("cannot install snapshot at raft index {index}: {e}");
        }
        tracing::info!(
            raft_index = index,
            keys = data.store.node_count(),
            "installed a snapshot from the leader"
        );
        // The snapshot's history events this member had not applied go out like applied
        // ones: into the ring and to the watchers, in order.
        let before = self.store.index().0;
        out.events
            .extend(data.events.into_iter().filter(|e| e.index() > before));
        self.store = data.store;
        self.membership = data.membership;
        self.auth = Arc::new(data.auth);
        self.applied_index = index;
        Ok(())
    }

    fn take_read_states(&mut self, states: Vec<raft::ReadState>) {
        for rs in states {
            let Some(id) = parse_read_ctx(&rs.request_ctx) else {
                continue;
            };
            if id.member != self.id() {
                continue;
            }
            if let Some(group) = self.reads_inflight.remove(&id.seq) {
                self.reads_ready.push((rs.index, group.waiters));
            }
        }
    }

    fn answer_reads(&mut self, out: &mut StepOutput<T>) {
        if self.reads_ready.is_empty() {
            return;
        }
        let applied = self.applied_index;
        let mut keep = Vec::new();
        for (index, waiters) in self.reads_ready.drain(..) {
            if index <= applied {
                out.reads.extend(waiters.into_iter().map(|(_, t)| t));
            } else {
                keep.push((index, waiters));
            }
        }
        self.reads_ready = keep;
    }

    /// Rebuilds raft's in-memory log with only the entries it still holds, in a Vec of their
    /// size. After recovery it held every replayed entry (~100k for a snapshot count of
    /// 100000); trimming drops them but keeps the Vec's capacity, which nothing ever reuses.
    /// Called once start-up's replay is done, it also lifts the replay's bound on the
    /// committed entries of one Ready (`REPLAY_READY_BYTES_MAX`).
    pub fn shrink_mem_log(&mut self) -> Result<(), String> {
        use raft::GetEntriesContext;
        self.end_replay();
        let store = &self.node.store().mem;
        let (first, last) = (
            store.first_index().map_err(|e| e.to_string())?,
            store.last_index().map_err(|e| e.to_string())?,
        );
        if last < first {
            return Ok(());
        }
        let kept = store
            .entries(first, last + 1, None, GetEntriesContext::empty(false))
            .map_err(|e| e.to_string())?;
        // raft-rs's compaction forgets the term before the first entry, so the first entry
        // kept becomes the boundary (it is applied: trimming only ever drops applied ones).
        let Some((boundary, rest)) = kept.split_first() else {
            return Ok(());
        };
        if boundary.index > self.applied_index {
            return Ok(());
        }
        let state = store.initial_state().map_err(|e| e.to_string())?;
        let fresh = mem_log(
            (boundary.index, boundary.term),
            state.conf_state,
            rest.iter().cloned(),
            state.hard_state,
        )?;
        *self.node.mut_store().mem.wl() = fresh;
        Ok(())
    }

    /// Lifts start-up's bound on the committed entries one Ready hands over
    /// (`REPLAY_READY_BYTES_MAX`): from here on a Ready applies all that is committed.
    pub fn end_replay(&mut self) {
        self.node.raft.set_max_committed_size_per_ready(u64::MAX);
    }

    /// Drops applied entries from raft's in-memory log beyond `RAFT_MEM_LOG_KEEP`, in chunks
    /// of that size so the drain's memmove stays amortized.
    fn trim_mem_log(&mut self) {
        // `Storage::first_index` never fails for MemStorage.
        let first = self.node.store().mem.first_index().unwrap_or(0);
        if self.applied_index >= first + 2 * RAFT_MEM_LOG_KEEP {
            self.compact(self.applied_index - RAFT_MEM_LOG_KEEP);
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, out: &mut StepOutput<T>) {
        for e in entries {
            if e.index <= self.applied_index {
                // Already in the snapshot installed this round.
                continue;
            }
            assert!(
                e.index == self.applied_index + 1,
                "applied {} then {}",
                self.applied_index,
                e.index
            );
            self.applied_index = e.index;
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {} // a leader's no-op
                EntryType::EntryNormal => self.apply_normal(&e, out),
                _ => self.apply_conf_change(&e, out),
            }
        }
    }

    fn apply_normal(&mut self, e: &Entry, out: &mut StepOutput<T>) {
        let (id, payload) = match decode_payload(&e.data) {
            Ok(d) => d,
            // Entries come from this cluster's members only, and are CRC-checked on disk and
            // on the wire: an undecodable one is a bug. Refuse to diverge silently.
            Err(err) => panic!("undecodable log entry at raft index {}: {err}", e.index),
        };
        let is_membership = !matches!(payload, Payload::Command(_) | Payload::Auth(_));
        let result = match payload {
            Payload::Auth(cmd) => {
                let outcome = Arc::make_mut(&mut self.auth).apply(&cmd);
                if let Some(id) = id.filter(|id| id.member == self.id()) {
                    if let Some((_, token)) = self.pending.remove(&id.seq) {
                        out.auth.push((token, outcome));
                    }
                }
                return;
            }
            Payload::Command(Command::Expire { cutoff }) => {
                let before = out.events.len();
                out.events
                    .extend(self.store.expire(cutoff).into_iter().map(Arc::new));
                match out.events.get(before..).and_then(|e| e.last()) {
                    Some(last) => Ok(last.clone()),
                    None => Err(Error::new(ErrorCode::KeyNotFound, "", self.store.index().0)),
                }
            }
            Payload::Command(cmd) => {
                let r = self.store.apply(&cmd).map(Arc::new);
                if let Ok(ev) = &r {
                    out.events.push(ev.clone());
                }
                r
            }
            Payload::Publish { .. } | Payload::UpdatePeers { .. }
                if e.index <= self.membership.applied_index =>
            {
                // Already in the recorded membership this member started from.
                Err(Error::new(ErrorCode::KeyNotFound, "", self.store.index().0))
            }
            Payload::Publish { name, client_urls } => {
                if let Some(m) = id.and_then(|id| self.membership.members.get_mut(&id.member)) {
                    m.name = name;
                    m.client_urls = client_urls;
                    out.membership_changed = true;
                }
                self.membership.applied_index = e.index;
                Err(Error::new(ErrorCode::KeyNotFound, "", self.store.index().0))
            }
            Payload::UpdatePeers {
                id: member,
                peer_urls,
            } => {
                if let Some(m) = self.membership.members.get_mut(&member) {
                    m.peer_urls = peer_urls;
                    out.membership_changed = true;
                }
                self.membership.applied_index = e.index;
                Err(Error::new(ErrorCode::KeyNotFound, "", self.store.index().0))
            }
        };
        let Some(id) = id.filter(|id| id.member == self.id()) else {
            return;
        };
        if is_membership {
            if let Some((_, token)) = self.pending.remove(&id.seq) {
                out.members.push(token);
            }
            return;
        }
        if let Some((_, token)) = self.pending.remove(&id.seq) {
            out.applied.push(Applied {
                token,
                result,
                raft_index: RaftIndex(e.index),
                raft_term: e.term,
            });
        }
    }

    fn apply_conf_change(&mut self, e: &Entry, out: &mut StepOutput<T>) {
        use protobuf::Message as _;
        if e.index <= self.membership.applied_index {
            // Already in the recorded membership (and the conf state built from it).
            return;
        }
        let cc = match ConfChange::parse_from_bytes(&e.data) {
            Ok(cc) => cc,
            Err(err) => panic!("undecodable conf change at raft index {}: {err}", e.index),
        };
        let cs = match self.node.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(err) => panic!("conf change at raft index {} refused: {err}", e.index),
        };
        self.node.mut_store().mem.wl().set_conf_state(cs);
        let context = serde_json::from_slice::<ConfContext>(&cc.context).ok();
        match cc.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let member = context
                    .as_ref()
                    .map(|c| c.member.clone())
                    .unwrap_or(Member {
                        id: cc.node_id,
                        name: String::new(),
                        peer_urls: Vec::new(),
                        client_urls: Vec::new(),
                    });
                self.membership.members.insert(cc.node_id, member);
            }
            ConfChangeType::RemoveNode => {
                self.membership.members.remove(&cc.node_id);
                self.membership.removed.insert(cc.node_id);
                if cc.node_id == self.id() {
                    self.removed = true;
                }
            }
        }
        self.membership.applied_index = e.index;
        out.membership_changed = true;
        if let Some(c) = context.filter(|c| c.request_member == self.id()) {
            if let Some((_, token)) = self.pending.remove(&c.request_seq) {
                out.members.push(token);
            }
        }
    }
}

fn expire_waiters<T>(waiters: &mut Vec<(u64, T)>, now: u64, expired: &mut Vec<T>) {
    let mut i = 0;
    while i < waiters.len() {
        if waiters[i].0 <= now {
            expired.push(waiters.swap_remove(i).1);
        } else {
            i += 1;
        }
    }
}

/// A log entry as raft-rs holds it; its payload moves over, uncopied.
fn to_raft_entry(e: LogEntry) -> Entry {
    let mut r = Entry {
        index: e.index,
        term: e.term,
        data: bytes::Bytes::from(e.data),
        ..Default::default()
    };
    r.set_entry_type(if e.kind == ENTRY_CONF_CHANGE {
        EntryType::EntryConfChange
    } else {
        EntryType::EntryNormal
    });
    r
}

/// Entries handed to raft-rs's in-memory log at a time when it is built.
const MEM_LOG_APPEND_CHUNK: usize = 1024;

/// raft-rs's in-memory log: `entries` after the snapshot boundary `(index, term)` (`(0, 0)`:
/// none, the log starts at 1), with the membership and hard state. Built at start-up and,
/// once replay is done, again at the size of what it still holds (`shrink_mem_log`).
fn mem_log(
    boundary: (u64, u64),
    conf_state: ConfState,
    entries: impl IntoIterator<Item = Entry>,
    hs: RaftHardState,
) -> Result<MemStorageCore, String> {
    let mut core = MemStorageCore::default();
    if boundary.0 > 0 {
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = boundary.0;
        snap.mut_metadata().term = boundary.1;
        snap.mut_metadata().set_conf_state(conf_state);
        core.apply_snapshot(snap)
            .map_err(|e| format!("raft snapshot: {e}"))?;
    } else {
        core.set_conf_state(conf_state);
    }
    // Appended a chunk at a time (`append` copies what it is given): the log's entries were
    // held three times at the start of a replay (the log's, raft's converted ones, raft's
    // own copy), ~40 MB for a snapshot count's worth.
    let mut chunk = Vec::with_capacity(MEM_LOG_APPEND_CHUNK);
    for e in entries {
        chunk.push(e);
        if chunk.len() == MEM_LOG_APPEND_CHUNK {
            core.append(&chunk).map_err(|e| format!("raft log: {e}"))?;
            chunk.clear();
        }
    }
    core.append(&chunk).map_err(|e| format!("raft log: {e}"))?;
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
mod tests;
