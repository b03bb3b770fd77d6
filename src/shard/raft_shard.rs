//! The raft shard: the single writer. It owns the `Replica` (raft-rs + the store + the
//! membership), the log and the snapshots, and it is the only thread that mutates the store,
//! the event ring, the membership and the published view.
//!
//! Loop: wait for a client proposal, a peer message (on an inbound peer stream it reads
//! itself, or in the peer inbox), the next raft tick or the TTL wheel's next deadline
//! (`raft_wait.rs`); drain up to `PROPOSAL_BATCH_MAX` proposals and the peer messages that
//! arrived; stamp writes with the wall clock (their time and TTL expirations: the only place
//! time enters a command) and propose
//! them (a follower's raft-rs forwards them to the leader); quorum reads become one ReadIndex
//! request per batch; tick raft when due, answering requests whose deadline passed with
//! etcd's timeout error; on the leader, propose an expiry pass when the wheel says one is due;
//! run Ready rounds: messages go out (onto an idle peer socket, or to the peer thread; never
//! waited on), every new entry and the
//! hard state are made durable with ONE fdatasync (group commit), committed entries are
//! applied; then, once per batch and in this order: events into the ring, the new view
//! published, replies sent, one wake per shard. Publishing before replying lets a client read
//! its own write on any shard; ring-before-view lets a watcher that saw index V find every
//! event <= V in the ring. A failed fsync is fatal: the process exits and recovers from disk
//! (never retry: the page cache may have dropped the dirty pages).
//!
//! Recovery (`recovery.rs`) builds what this loop starts from; snapshots are written on
//! their own thread (`snapshotter.rs`); peers are served by the peer thread (`peer.rs`).

use super::backup::SaveRequest;
use super::peer::PeerIn;
use super::raft_wait::{Doorbell, Inbound};
use super::recovery::{write_membership, Recovered};
use super::snapshotter::Snapshotter;
use super::{unix_now_ns, Outbox, Proposal, Published, Reply, ReplyTo, ShardMsg, Shared};
use crate::auth::{http_err, AuthOutcome};
use crate::limits::{PEER_INBOX_CAPACITY, PENDING_REQUESTS_MAX, PROPOSAL_BATCH_MAX};
use crate::members::{member_id_at, Member, MemberChange, MemberError, MemberOutcome};
use crate::raft::{HardState, LogEntry, Payload, Replica};
use crate::ttl::TtlWheel;
use crate::wal::Wal;
use raft::eraftpb::ConfChangeType;
use raft::eraftpb::Message;
use ringd_store::{Command, Error, ErrorCode, Event};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who is waiting for a proposal or a quorum read.
pub enum Token {
    Client(ReplyTo),
    /// A members API change; an add answers with the member it added.
    Member(ReplyTo, Option<crate::members::Member>),
    /// A v2 auth API change: answered with what applying it said.
    Auth(ReplyTo),
    /// A `quorum=true` GET, answered from the store once its read index is applied.
    Read {
        key: String,
        recursive: bool,
        sorted: bool,
        reply: ReplyTo,
    },
    /// A snapshot save: started once its read index is applied (`backup.rs`).
    Snapshot(SaveRequest),
}

impl Token {
    /// Sends `reply` to whoever waits; a snapshot save gets its error on its own channel.
    fn answer(self, replies: &mut Outbox, reply: Reply) {
        match self {
            Token::Client(r)
            | Token::Member(r, _)
            | Token::Auth(r)
            | Token::Read { reply: r, .. } => replies.push(r, reply),
            Token::Snapshot(save) => {
                let why = reply.result.err().map_or(String::new(), |e| e.cause);
                save.fail(500, why);
            }
        }
    }
}

/// etcd's answer to a request that was not applied in time (no leader, no quorum).
fn timeout_error(replica: &Replica<Token>) -> Error {
    Error::new(
        ErrorCode::RaftInternal,
        "etcdserver: request timed out",
        replica.store().index().0,
    )
}

/// The raft shard's side of the replica: the log, and the peer thread's queue.
pub(super) struct ShardIo<'a> {
    pub wal: &'a mut Wal,
    pub peers: Option<&'a mut super::peer::PeerSender>,
    /// Peers whose messages could not be queued (reported to raft after the step).
    pub unreachable: Vec<u64>,
    pub rtt: &'a mut RoundTrips,
    /// None during recovery (nothing is sent then).
    pub shared: Option<&'a Shared>,
    /// Where snapshots from the leader are written (None during recovery).
    pub snap_dir: Option<&'a std::path::Path>,
}

/// The leader's round-trip clock per follower: when the oldest unanswered append or
/// heartbeat was sent. Its response gives /v2/stats/leader's latency.
#[derive(Default)]
pub(super) struct RoundTrips {
    sent_at: std::collections::BTreeMap<u64, Instant>,
    appends_sent: u64,
}

/// One append message into a rate window of /v2/stats/self (received or sent).
fn record_append(
    shared: &Shared,
    m: &Message,
    window: impl FnOnce(
        &mut (crate::stats::RateWindow, crate::stats::RateWindow),
    ) -> &mut crate::stats::RateWindow,
) {
    let size = u64::from(protobuf::Message::compute_size(m));
    let mut rates = shared
        .append_rates
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    window(&mut rates).push(unix_now_ns(), size);
}

impl RoundTrips {
    fn sent(&mut self, shared: &Shared, m: &Message) {
        use raft::eraftpb::MessageType::{MsgAppend, MsgHeartbeat};
        let t = m.get_msg_type();
        if t == MsgAppend {
            self.appends_sent += 1;
            record_append(shared, m, |rates| &mut rates.1);
        }
        if t == MsgAppend || t == MsgHeartbeat {
            self.sent_at.entry(m.to).or_insert_with(Instant::now);
        }
    }

    /// A message from a peer: a response closes that follower's round trip.
    fn received(&mut self, shared: &Shared, m: &Message) {
        use raft::eraftpb::MessageType::{MsgAppend, MsgAppendResponse, MsgHeartbeatResponse};
        let t = m.get_msg_type();
        if t == MsgAppend {
            shared.appends_received.fetch_add(1, Ordering::Relaxed);
            record_append(shared, m, |rates| &mut rates.0);
        }
        if t != MsgAppendResponse && t != MsgHeartbeatResponse {
            return;
        }
        let Some(at) = self.sent_at.remove(&m.from) else {
            return;
        };
        let mut followers = shared.followers.lock().unwrap_or_else(|e| e.into_inner());
        let f = followers.entry(m.from).or_default();
        if m.reject {
            f.failed();
        } else {
            f.succeed(at.elapsed().as_secs_f64() * 1000.0);
        }
    }

    fn unreachable(&mut self, shared: &Shared, id: u64) {
        self.sent_at.remove(&id);
        let mut followers = shared.followers.lock().unwrap_or_else(|e| e.into_inner());
        followers.entry(id).or_default().failed();
    }
}

impl crate::raft::Io for ShardIo<'_> {
    type Error = crate::wal::WalError;

    fn send(&mut self, messages: Vec<Message>) {
        let Some(peers) = self.peers.as_deref_mut() else {
            return;
        };
        if let Some(shared) = self.shared {
            for m in &messages {
                self.rtt.sent(shared, m);
            }
        }
        let membership = self.shared.map(|s| s.membership.load());
        // Never waits for the peer thread: raft retransmits what is dropped.
        for to in peers.send(membership.as_ref().map(|m| &***m), messages) {
            if !self.unreachable.contains(&to) {
                self.unreachable.push(to);
            }
        }
    }

    fn persist(
        &mut self,
        entries: &[LogEntry],
        hs: Option<HardState>,
        must_sync: bool,
    ) -> Result<(), crate::wal::WalError> {
        if !entries.is_empty() {
            self.wal.append(entries)?;
        }
        if let Some(hs) = hs {
            self.wal.set_hard_state(hs)?;
        }
        if must_sync {
            self.wal.sync()?;
        }
        Ok(())
    }

    fn persist_snapshot(
        &mut self,
        index: u64,
        _term: u64,
        data: &[u8],
    ) -> Result<(), crate::wal::WalError> {
        // The snapshot file first: once the log restarts after `index`, the file is the only
        // record of everything before it.
        let Some(dir) = self.snap_dir else {
            return Err(crate::wal::WalError::Io(std::io::Error::other(
                "a snapshot arrived during recovery",
            )));
        };
        crate::snapshot::write_encoded(dir, index, data)?;
        self.wal.restart(index)?;
        self.wal.sync()
    }
}

pub(super) fn fatal(what: &str, e: impl std::fmt::Display) -> ! {
    tracing::error!("{what}: {e}; exiting (the data directory is consistent up to the last fsync)");
    std::process::exit(1);
}

/// What Ready rounds produced until raft had nothing more to do.
#[derive(Default)]
pub(super) struct Drained {
    pub applied: Vec<crate::raft::Applied<Token>>,
    pub reads: Vec<Token>,
    pub events: Vec<Arc<Event>>,
    pub members: Vec<Token>,
    pub auth: Vec<(Token, AuthOutcome)>,
    pub membership_changed: bool,
    /// Raft index of a snapshot installed from the leader (0: none).
    pub snapshot_installed: u64,
}

/// Runs Ready rounds until raft has nothing more to do.
// One call site serves, one replays: the two sets of `Option`s say which.
#[allow(clippy::too_many_arguments)]
pub(super) fn drive(
    replica: &mut Replica<Token>,
    wal: &mut Wal,
    mut peers: Option<&mut super::peer::PeerSender>,
    stats: &mut BatchStats,
    rtt: &mut RoundTrips,
    shared: Option<&Shared>,
    snap_dir: Option<&std::path::Path>,
    mut replayed: Option<&mut dyn FnMut(Arc<Event>)>,
) -> Drained {
    let mut d = Drained::default();
    loop {
        let mut io = ShardIo {
            wal: &mut *wal,
            peers: peers.as_deref_mut(),
            unreachable: Vec::new(),
            rtt: &mut *rtt,
            shared,
            snap_dir,
        };
        let applied_before = replica.applied_index();
        let out = match replica.step(&mut io) {
            Ok(out) => out,
            Err(e) => fatal("log write or fsync failed", e),
        };
        for id in std::mem::take(&mut io.unreachable) {
            replica.report_unreachable(id);
        }
        if out.persisted_entries > 0 {
            stats.syncs += 1;
            stats.entries += out.persisted_entries as u64;
        }
        // Entries applied without an event or a waiter (a failed CAS, a no-op, an expiry
        // that removed nothing) are progress too: start-up's replay hands raft-rs's entries
        // over in bounded rounds, and a round of only such entries must not end it.
        let done = replica.applied_index() == applied_before
            && out.applied.is_empty()
            && out.events.is_empty()
            && out.persisted_entries == 0
            && out.reads.is_empty()
            && out.members.is_empty()
            && out.auth.is_empty()
            && !out.membership_changed
            && !out.snapshot_installed;
        d.applied.extend(out.applied);
        d.reads.extend(out.reads);
        d.members.extend(out.members);
        d.auth.extend(out.auth);
        match replayed.as_mut() {
            // Start-up's replay: each round's events go to the ring at once (it holds
            // `--watch-history` of them in bounded memory), not all of a replay's at the end.
            Some(sink) => out.events.into_iter().for_each(sink),
            None => d.events.extend(out.events),
        }
        d.membership_changed |= out.membership_changed;
        if out.snapshot_installed {
            d.snapshot_installed = replica.applied_index().0;
        }
        if done {
            return d;
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
    /// This member's name and client URLs, published through raft after start.
    pub name: String,
    pub client_urls: Vec<String>,
    /// Where the membership is recorded (rewritten when it changes).
    pub membership_path: PathBuf,
    /// `--strict-reconfig-check`: refuse membership changes that would risk the quorum.
    pub strict_reconfig_check: bool,
}

/// The raft shard's channels.
pub struct RaftChannels {
    pub mailbox: flume::Receiver<Proposal>,
    pub peer_in: flume::Receiver<PeerIn>,
    /// Rung by the senders of `mailbox` and `peer_in` (raft_wait.rs).
    pub bell: Arc<Doorbell>,
    pub peer_out: flume::Sender<Message>,
    /// The peers' links, for sending on their connections directly.
    pub links: Arc<super::peer::Links>,
    pub shards: Vec<flume::Sender<ShardMsg>>,
}

/// Publishing a member's attributes is retried this often (in ticks) until it is applied
/// (etcd retries every 7 s; a tick is a heartbeat interval).
const PUBLISH_RETRY_TICKS: u64 = 10;

pub fn raft_main(shared: Arc<Shared>, rec: Recovered, cfg: RaftShardConfig, ch: RaftChannels) {
    let Recovered {
        mut replica,
        mut wal,
        history: _,
        snapshot_index,
        paths,
    } = rec;
    let mut stats = BatchStats::default();
    let mut rtt = RoundTrips::default();
    let mut wheel = TtlWheel::new(unix_now_ns());
    if replica.is_leader() {
        if let Some(next) = replica.store().next_expiration() {
            // Keys whose TTL ran out while we were down expire at once, through the log.
            wheel.schedule(next);
        }
    }
    let mut snapshotter = Snapshotter::start(paths.snap.clone(), paths.wal.clone(), snapshot_index);
    let mut batch: Vec<Proposal> = Vec::with_capacity(PROPOSAL_BATCH_MAX);
    let mut next_tick = Instant::now() + cfg.tick;
    let mut ticks: u64 = 0;
    let mut last_publish_tick: Option<u64> = None;
    let mut leader_seen = (replica.leader_id(), replica.term());
    let mut peers = super::peer::PeerSender::new(ch.links.clone(), ch.peer_out.clone());
    // The wait, and the peers' inbound plain-TCP raft streams, read here (raft_wait.rs).
    let mut inbound = match Inbound::new(ch.bell.clone()) {
        Ok(i) => i,
        Err(e) => fatal("cannot set up the raft thread's epoll", e),
    };
    // Set once a stop signal was seen: until then the requests already proposed are finished.
    let mut stop_deadline: Option<Instant> = None;
    loop {
        let mut wake = next_tick;
        if let Some(at) = wheel.next_wake() {
            let wait_ns = at.saturating_sub(unix_now_ns());
            wake = wake.min(Instant::now() + Duration::from_nanos(wait_ns));
        }
        inbound.wait(wake, || ch.mailbox.is_empty() && ch.peer_in.is_empty());
        if ch.mailbox.is_disconnected() && ch.mailbox.is_empty() {
            return;
        }
        inbound.read_ready(shared.self_id, |m| {
            step_peer(&shared, &mut replica, &mut rtt, m)
        });
        while batch.len() < PROPOSAL_BATCH_MAX {
            match ch.mailbox.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        for _ in 0..PEER_INBOX_CAPACITY {
            match ch.peer_in.try_recv() {
                Ok(PeerIn::Stream {
                    from,
                    tcp,
                    buffered,
                }) => inbound.adopt(from, tcp, buffered, shared.self_id, |m| {
                    step_peer(&shared, &mut replica, &mut rtt, m)
                }),
                Ok(m) => peer_in(&shared, &mut replica, &mut rtt, m),
                Err(_) => break,
            }
        }
        let now = unix_now_ns();
        let mut replies = Outbox::new(ch.shards.len());
        if stop_deadline.is_none() && shared.stopping.load(Ordering::Acquire) {
            stop_deadline = Some(Instant::now() + STOP_DRAIN_MAX);
            // As etcd does on SIGTERM: a leader of several voters hands over first, so the
            // cluster has a leader again without waiting for an election timeout.
            if replica.is_leader() {
                if let Some(to) = replica.best_transferee() {
                    tracing::info!(to = %format!("{to:x}"), "stopping: transferring leadership");
                    replica.transfer_leader(to);
                }
            }
        }
        for p in batch.drain(..) {
            if stop_deadline.is_some() {
                // Arrived after the stop began: never proposed, so never acknowledged.
                stopped(&replica, p, &mut replies);
                continue;
            }
            match p {
                Proposal::Member { change, reply } => {
                    if let Err(e) = member_change(&shared, &mut replica, &cfg, change, reply) {
                        replies.push(reply, member_reply(&replica, Err(e)));
                    }
                }
                p => propose(&mut replica, p, now, &mut replies),
            }
        }
        if Instant::now() >= next_tick {
            for token in replica.tick() {
                shared.proposals_failed.fetch_add(1, Ordering::Relaxed);
                let member = matches!(token, Token::Member(..))
                    .then(|| Err(MemberError::new(500, "etcdserver: request timed out")));
                let auth = matches!(token, Token::Auth(..))
                    .then(|| Err(http_err(500, "etcdserver: request timed out")));
                token.answer(
                    &mut replies,
                    Reply {
                        result: Err(timeout_error(&replica)),
                        raft_index: replica.applied_index(),
                        raft_term: replica.term(),
                        member,
                        auth,
                    },
                );
            }
            ticks += 1;
            next_tick = Instant::now() + cfg.tick;
            if needs_publish(&replica, &cfg)
                && replica.leader_id() != 0
                && last_publish_tick.is_none_or(|t| ticks >= t + PUBLISH_RETRY_TICKS)
            {
                last_publish_tick = Some(ticks);
                replica.propose_payload(
                    Payload::Publish {
                        name: cfg.name.clone(),
                        client_urls: cfg.client_urls.clone(),
                    },
                    None,
                );
            }
        }
        let expiry_due = wheel.advance(now);
        if expiry_due && replica.is_leader() {
            // Only the leader decides when keys expire; followers apply its passes.
            replica.propose_payload(Payload::Command(Command::Expire { cutoff: now }), None);
        }
        let drained = drive(
            &mut replica,
            &mut wal,
            Some(&mut peers),
            &mut stats,
            &mut rtt,
            Some(&shared),
            Some(&paths.snap),
            None,
        );
        shared.wal_syncs.store(stats.syncs, Ordering::Relaxed);
        shared
            .appends_sent
            .store(rtt.appends_sent, Ordering::Relaxed);
        shared.wal_entries.store(stats.entries, Ordering::Relaxed);
        let leader_now = (replica.leader_id(), replica.term());
        let leader_changed = leader_now != leader_seen;
        if leader_changed {
            // A publish proposed under the old leader may have been dropped: retry at once.
            last_publish_tick = None;
            note_leader_change(&shared, &replica, leader_seen.0);
            leader_seen = leader_now;
            if replica.is_leader() {
                // A new leader takes over the expiry schedule from the store itself.
                if let Some(next) = replica.store().next_expiration() {
                    wheel.schedule(next);
                }
            }
        }
        if (expiry_due || leader_changed) && replica.is_leader() {
            // The wheel only knows deadlines written while this member led; TTLs recovered
            // from the snapshot and the log, or applied as a follower, are chained here: after
            // each pass, the store's earliest remaining expiration is scheduled.
            if let Some(next) = replica.store().next_expiration() {
                wheel.schedule(next);
            }
        }
        let (saves, reads): (Vec<Token>, Vec<Token>) = drained
            .reads
            .into_iter()
            .partition(|t| matches!(t, Token::Snapshot(_)));
        answer(&replica, drained.applied, reads, &mut replies);
        for (token, outcome) in drained.auth {
            token.answer(
                &mut replies,
                Reply {
                    result: Err(timeout_error(&replica)),
                    raft_index: replica.applied_index(),
                    raft_term: replica.term(),
                    member: None,
                    auth: Some(outcome),
                },
            );
        }
        for token in drained.members {
            if let Token::Member(reply, added) = token {
                replies.push(reply, member_reply(&replica, Ok(added)));
            }
        }
        if drained.membership_changed {
            membership_changed(&shared, &replica, &cfg);
        }
        if !drained.events.is_empty()
            || !replies.is_empty()
            || leader_changed
            || drained.snapshot_installed > 0
        {
            publish(
                &shared,
                &replica,
                &ch.shards,
                drained.events,
                &mut wheel,
                &mut replies,
            );
        }
        // After the publish: the ring holds every event up to the store's index.
        for token in saves {
            if let Token::Snapshot(save) = token {
                save.start(&shared.ring, &replica);
            }
        }
        if let Some(deadline) = stop_deadline {
            // Every write proposed before the stop is answered (applied, hence fsynced on a
            // quorum, or failed), or the bound passed: the main thread may end the process.
            if replica.pending_count() == 0 || Instant::now() >= deadline {
                shared.drained.store(true, Ordering::Release);
            }
        }
        if let Some((point, bytes)) = snapshotter.collect(&mut replica, &mut wal) {
            tracing::info!(
                raft_index = point.index,
                bytes = bytes.len(),
                "snapshot ready for a follower"
            );
            replica.offer_snapshot(point, bytes);
        }
        if drained.snapshot_installed > 0 {
            snapshotter.installed(drained.snapshot_installed);
        }
        // raft-rs wants a snapshot for a follower whose entries the log no longer holds.
        if replica.is_removed() {
            exit_removed();
        }
        let transfer = replica.snapshot_wanted();
        snapshotter.maybe_start(&shared, &replica, cfg.snapshot_count, transfer);
    }
}

/// A message from a peer's stream: into the round-trip figures, then into raft.
fn step_peer(shared: &Shared, replica: &mut Replica<Token>, rtt: &mut RoundTrips, m: Message) {
    rtt.received(shared, &m);
    replica.step_message(m);
}

fn peer_in(shared: &Shared, replica: &mut Replica<Token>, rtt: &mut RoundTrips, m: PeerIn) {
    match m {
        // Taken in the loop, which owns the epoll set.
        PeerIn::Stream { .. } => {}
        PeerIn::Message(m) => step_peer(shared, replica, rtt, *m),
        PeerIn::Unreachable(id) => {
            rtt.unreachable(shared, id);
            replica.report_unreachable(id);
        }
        PeerIn::SnapshotStatus(id, ok) => replica.report_snapshot(id, ok),
    }
}

fn propose(replica: &mut Replica<Token>, p: Proposal, now: u64, replies: &mut Outbox) {
    if replica.pending_count() >= PENDING_REQUESTS_MAX {
        // Bounded: a member that cannot commit (no quorum) must not queue without end.
        let reply = match p {
            Proposal::Write { reply, .. }
            | Proposal::QuorumGet { reply, .. }
            | Proposal::Member { reply, .. }
            | Proposal::Auth { reply, .. } => reply,
            Proposal::Snapshot(save) => {
                return save.fail(500, timeout_error(replica).cause);
            }
        };
        replies.push(
            reply,
            Reply {
                result: Err(timeout_error(replica)),
                raft_index: replica.applied_index(),
                raft_term: replica.term(),
                member: None,
                auth: None,
            },
        );
        return;
    }
    match p {
        Proposal::Write {
            mut cmd,
            ttl_secs,
            reply,
        } => {
            cmd.stamp(now, ttl_secs);
            replica.propose(cmd, Token::Client(reply));
        }
        Proposal::QuorumGet {
            key,
            recursive,
            sorted,
            reply,
        } => replica.read(Token::Read {
            key,
            recursive,
            sorted,
            reply,
        }),
        Proposal::Auth { cmd, reply } => {
            replica.propose_payload(Payload::Auth(cmd), Some(Token::Auth(reply)));
        }
        // A read barrier, as a quorum GET's.
        Proposal::Snapshot(save) => replica.read(Token::Snapshot(save)),
        // Handled by `member_change` before this is called.
        Proposal::Member { reply, .. } => replies.push(
            reply,
            member_reply(replica, Err(MemberError::new(500, "Internal Server Error"))),
        ),
    }
}

/// How long a stopping member keeps finishing the requests it had proposed (etcd's request
/// timeout is longer; a service manager's stop timeout is usually 90 s).
const STOP_DRAIN_MAX: Duration = Duration::from_secs(5);

/// The answer to a request that reached the raft shard after the stop began (etcd's
/// `ErrStopped`).
fn stopped(replica: &Replica<Token>, p: Proposal, replies: &mut Outbox) {
    const STOPPED: &str = "etcdserver: server stopped";
    let mut reply = Reply {
        result: Err(Error::new(
            ErrorCode::RaftInternal,
            STOPPED,
            replica.store().index().0,
        )),
        raft_index: replica.applied_index(),
        raft_term: replica.term(),
        member: None,
        auth: None,
    };
    let to = match p {
        Proposal::Write { reply, .. } | Proposal::QuorumGet { reply, .. } => reply,
        Proposal::Member { reply: to, .. } => {
            reply.member = Some(Err(MemberError::new(500, STOPPED)));
            to
        }
        Proposal::Auth { reply: to, .. } => {
            reply.auth = Some(Err(http_err(500, STOPPED)));
            to
        }
        Proposal::Snapshot(save) => return save.fail(500, STOPPED),
    };
    replies.push(to, reply);
}

fn member_reply(replica: &Replica<Token>, outcome: MemberOutcome) -> Reply {
    Reply {
        result: Err(timeout_error(replica)),
        raft_index: replica.applied_index(),
        raft_term: replica.term(),
        member: Some(outcome),
        auth: None,
    }
}

/// etcd's `HealthInterval`: how long a member must have had a working stream to a peer to
/// count it connected for a membership change.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// etcd's `numConnectedSince`: this member, plus the voters it has had a stream to for
/// `HEALTH_INTERVAL`.
fn connected_count(shared: &Shared, voters: impl Iterator<Item = u64>) -> usize {
    let active = shared.peer_active.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    voters
        .filter(|id| {
            *id == shared.self_id
                || active
                    .get(id)
                    .is_some_and(|t| now.duration_since(*t) >= HEALTH_INTERVAL)
        })
        .count()
}

/// Validates a members API change against the applied membership and proposes it (etcd's
/// AddMember/RemoveMember/UpdateMember with `--strict-reconfig-check`).
fn member_change(
    shared: &Shared,
    replica: &mut Replica<Token>,
    cfg: &RaftShardConfig,
    change: MemberChange,
    reply: ReplyTo,
) -> Result<(), MemberError> {
    let m = replica.membership().clone();
    let unhealthy = || {
        tracing::warn!("etcdserver: unhealthy cluster: the change would risk the quorum (--strict-reconfig-check)");
        MemberError::new(500, "Internal Server Error")
    };
    match change {
        MemberChange::Add { peer_urls } => {
            // etcd's order: the strict checks, then the membership's own (409).
            if cfg.strict_reconfig_check
                && (!m.ready_to_add()
                    || connected_count(shared, m.members.keys().copied()) < m.members.len())
            {
                return Err(unhealthy());
            }
            if m.peer_url_taken(&peer_urls, None) {
                return Err(MemberError::new(409, "membership: peerURL exists"));
            }
            let id = member_id_at(&peer_urls, &m.token, Some(unix_now_ns() / 1_000_000_000));
            if m.members.contains_key(&id) || m.removed.contains(&id) {
                return Err(MemberError::new(409, "membership: ID exists"));
            }
            let member = Member {
                id,
                name: String::new(),
                peer_urls,
                client_urls: Vec::new(),
            };
            replica.propose_conf_change(
                ConfChangeType::AddNode,
                &member,
                Token::Member(reply, Some(member.clone())),
            );
        }
        MemberChange::Remove { id } => {
            if m.removed.contains(&id) {
                return Err(MemberError::new(
                    410,
                    format!("Member permanently removed: {id:x}"),
                ));
            }
            let Some(member) = m.members.get(&id).cloned() else {
                return Err(MemberError::new(404, format!("No such member: {id:x}")));
            };
            if cfg.strict_reconfig_check {
                if !m.ready_to_remove(id) {
                    return Err(unhealthy());
                }
                // A member this one has no stream to is not part of the active quorum: it is
                // safe to remove. Otherwise the rest must stay a quorum (etcd's
                // mayRemoveMember).
                let down = id != shared.self_id
                    && !shared
                        .peer_active
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains_key(&id);
                let active = connected_count(shared, m.members.keys().copied());
                if !down && active.saturating_sub(1) < crate::members::quorum(m.members.len() - 1) {
                    return Err(unhealthy());
                }
            }
            replica.propose_conf_change(
                ConfChangeType::RemoveNode,
                &member,
                Token::Member(reply, None),
            );
        }
        MemberChange::Update { id, peer_urls } => {
            let Some(member) = m.members.get(&id) else {
                return Err(MemberError::new(404, format!("No such member: {id:x}")));
            };
            if m.peer_url_taken(&peer_urls, Some(id)) {
                return Err(MemberError::new(409, "membership: peerURL exists"));
            }
            let (mut a, mut b) = (member.peer_urls.clone(), peer_urls.clone());
            a.sort();
            b.sort();
            if a == b {
                return Err(MemberError::new(204, ""));
            }
            replica.propose_peer_update(id, peer_urls, Token::Member(reply, None));
        }
    }
    Ok(())
}

/// Replies to this member's applied writes and to the quorum reads now answerable.
fn answer(
    replica: &Replica<Token>,
    applied: Vec<crate::raft::Applied<Token>>,
    reads: Vec<Token>,
    replies: &mut Outbox,
) {
    for a in applied {
        a.token.answer(
            replies,
            Reply {
                result: a.result,
                raft_index: a.raft_index,
                raft_term: a.raft_term,
                member: None,
                auth: None,
            },
        );
    }
    // ReadIndex: every write committed before the read was made is applied now.
    for token in reads {
        let Token::Read {
            key,
            recursive,
            sorted,
            reply,
        } = token
        else {
            continue;
        };
        let result = replica
            .store()
            .view()
            .get(&key, recursive, sorted)
            .map(Arc::new);
        replies.push(
            reply,
            Reply {
                result,
                raft_index: replica.applied_index(),
                raft_term: replica.term(),
                member: None,
                auth: None,
            },
        );
    }
}

fn needs_publish(replica: &Replica<Token>, cfg: &RaftShardConfig) -> bool {
    replica
        .membership()
        .members
        .get(&replica.id())
        .is_some_and(|m| m.name != cfg.name || m.client_urls != cfg.client_urls)
}

fn note_leader_change(shared: &Shared, replica: &Replica<Token>, old: u64) {
    let new = replica.leader_id();
    if new == old {
        return; // a new term with the same (or still no) leader
    }
    if new == 0 {
        tracing::info!(member = %format!("{:x}", replica.id()), term = replica.term(),
            lost = %format!("{old:x}"), "raft lost the leader");
        return;
    }
    shared.leader_changes.fetch_add(1, Ordering::Relaxed);
    shared
        .leader_since_ns
        .store(unix_now_ns(), Ordering::Relaxed);
    if new != replica.id() {
        // Only the leader keeps follower figures; a new leader starts afresh.
        shared
            .followers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
    tracing::info!(member = %format!("{:x}", replica.id()), term = replica.term(),
        leader = %format!("{new:x}"), "raft elected leader");
}

/// Records and publishes a new membership.
fn membership_changed(shared: &Shared, replica: &Replica<Token>, cfg: &RaftShardConfig) {
    let m = replica.membership();
    if let Err(e) = write_membership(&cfg.membership_path, replica.id(), m) {
        fatal("cannot record the cluster membership", e);
    }
    shared.membership.store(Arc::new(m.clone()));
}

/// A member that applied its own removal stops as etcd's does (exit status 0), once the
/// replies of this batch (the DELETE that removed it, if it took it) had a moment to leave.
fn exit_removed() -> ! {
    tracing::warn!("the member has been permanently removed from the cluster");
    tracing::warn!("the data-dir used by this member must be removed");
    std::thread::sleep(Duration::from_millis(200));
    std::process::exit(0);
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
    shared.published.store(Arc::new(Published::of(replica)));
    let events: Option<Arc<[Arc<Event>]>> = (!events.is_empty()).then(|| events.into());
    replies.send(shards, events, &shared.shard_overflow, &shared.watching);
}
