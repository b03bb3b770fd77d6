//! Threads, sockets and the data flow between them. The only module that spawns threads or
//! touches sockets.
//!
//! - N client shards (one monoio executor per core, FusionDriver: io_uring with an explicit
//!   fallback to epoll), each with its own SO_REUSEPORT listener per listen URL. A shard
//!   parses, routes, answers reads from the published view and watches from the event ring
//!   and its own registry, and sends writes to the raft shard's bounded mailbox (`client/`).
//! - The raft shard (`raft_shard.rs`): the single writer. It drains the mailbox in batches,
//!   applies them to the store, publishes the new view and the events, then answers and wakes
//!   shards. It starts from what `recovery.rs` rebuilt from disk, and hands snapshots to the
//!   snapshot thread (`snapshotter.rs`).
//! - The peer thread (`peer.rs`): one monoio executor that carries raft messages to and from
//!   the other members (docs/peer-wire.md) and answers etcd's peer endpoints.

pub mod backup;
pub mod client;
pub mod fetch;
pub mod live;
pub mod peer;
pub mod raft_shard;
pub mod raft_wait;
pub mod recovery;
pub mod runtime;
pub mod shutdown;
pub mod snapshotter;
pub mod tls;

use crate::config::Resolved;
use crate::limits::{
    MAILBOX_CAPACITY, PEER_INBOX_CAPACITY, PEER_OUTBOX_CAPACITY, SHARD_EVENT_QUEUE_CAPACITY,
};
use crate::members::{Member, Membership};
use crate::stats::ShardCounters;
use crate::watch::ring::EventRing;
use arc_swap::ArcSwap;
use ringd_store::{Command, Error, Event, StoreView, WriteStats};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// What the raft shard publishes after each applied batch.
pub struct Published {
    pub view: StoreView,
    pub raft_index: crate::raft::RaftIndex,
    pub raft_term: u64,
    pub write_stats: WriteStats,
    /// The leader this member knows of (0: none), and this member's raft role as etcd's
    /// stats name it (`StateLeader`, `StateFollower`, `StateCandidate`, `StatePreCandidate`).
    pub leader: u64,
    pub state: &'static str,
    /// The v2 auth state: users, roles, whether checks are on.
    pub auth: Arc<crate::auth::AuthState>,
}

impl Published {
    pub fn of<T>(replica: &crate::raft::Replica<T>) -> Published {
        let store = replica.store();
        Published {
            view: store.view(),
            raft_index: replica.applied_index(),
            raft_term: replica.term(),
            write_stats: store.write_stats().clone(),
            leader: replica.leader_id(),
            state: match replica.role() {
                raft::StateRole::Leader => "StateLeader",
                raft::StateRole::Follower => "StateFollower",
                raft::StateRole::Candidate => "StateCandidate",
                raft::StateRole::PreCandidate => "StatePreCandidate",
            },
            auth: replica.auth().clone(),
        }
    }
}

/// State shared by every thread.
pub struct Shared {
    pub published: ArcSwap<Published>,
    pub ring: EventRing,
    pub counters: Box<[ShardCounters]>,
    /// The applied membership, republished by the raft shard when it changes.
    pub membership: ArcSwap<Membership>,
    pub self_id: u64,
    pub cluster_id: u64,
    pub name: String,
    pub start_unix_ns: u64,
    pub start: Instant,
    pub max_request_bytes: usize,
    pub driver: std::sync::Mutex<Vec<&'static str>>,
    /// fdatasyncs of the log, and the entries they made durable (group commit: the ratio is
    /// the average batch per fsync).
    pub wal_syncs: std::sync::atomic::AtomicU64,
    pub wal_entries: std::sync::atomic::AtomicU64,
    /// Leader changes seen and requests that failed (timed out), for /metrics.
    pub leader_changes: std::sync::atomic::AtomicU64,
    pub proposals_failed: std::sync::atomic::AtomicU64,
    /// Set by the raft shard when a shard's queue was full and a batch was dropped for it: the
    /// shard ends its watchers and fails its waiting requests (they may never be answered).
    pub shard_overflow: Box<[std::sync::atomic::AtomicBool]>,
    /// Per shard: it has watchers (or is registering one), so it wants every batch's events.
    /// A shard without watchers is not sent (nor woken for) batches that carry no reply for
    /// it: a follower's client shards sleep through a write load sent to the leader. The
    /// shard sets it (SeqCst) before it reads the published view; the raft shard reads it
    /// (SeqCst, after a fence) after it published: either the raft shard sees it set and sends
    /// the events, or the shard's read sees the view that holds them (and its watcher waits for
    /// what comes after). Only the shard clears it, when its registry is empty.
    pub watching: Box<[std::sync::atomic::AtomicBool]>,
    /// Set by the main thread on SIGTERM/SIGINT: the raft shard stops taking new requests and
    /// finishes those it proposed, then sets `drained`.
    pub stopping: std::sync::atomic::AtomicBool,
    pub drained: std::sync::atomic::AtomicBool,
    /// When this member last saw a new leader (unix ns), for /v2/stats/self's leaderInfo.
    pub leader_since_ns: std::sync::atomic::AtomicU64,
    /// Raft append messages this member received and sent (/v2/stats/self).
    pub appends_received: std::sync::atomic::AtomicU64,
    pub appends_sent: std::sync::atomic::AtomicU64,
    /// On the leader: each follower's round-trip figures (/v2/stats/leader). Written by the
    /// raft shard, read by the client shards: a small map, locked briefly on both sides.
    pub followers: std::sync::Mutex<std::collections::BTreeMap<u64, crate::stats::FollowerStats>>,
    /// The last appends received and sent (etcd's rates in /v2/stats/self); raft shard writes.
    pub append_rates: std::sync::Mutex<(crate::stats::RateWindow, crate::stats::RateWindow)>,
    /// Since when the peer thread has had a working stream to each peer (etcd's
    /// `ActiveSince`), for the strict reconfiguration checks.
    pub peer_active: std::sync::Mutex<std::collections::BTreeMap<u64, Instant>>,
    /// Snapshot saves running (`backup::SaveSlot`, at most `SNAPSHOT_SAVES_MAX`).
    pub snapshot_saves: std::sync::atomic::AtomicUsize,
}

/// The reply to a proposal: the outcome and the raft position it was applied at.
pub struct Reply {
    pub result: Result<Arc<Event>, Error>,
    pub raft_index: crate::raft::RaftIndex,
    pub raft_term: u64,
    /// The answer to a `Proposal::Member` (None for keys requests).
    pub member: Option<crate::members::MemberOutcome>,
    /// The answer to a `Proposal::Auth` (None otherwise).
    pub auth: Option<crate::auth::AuthOutcome>,
}

/// A request to the raft shard.
pub enum Proposal {
    Write {
        cmd: Command,
        ttl_secs: Option<u64>,
        reply: ReplyTo,
    },
    /// A members API change (add, remove, update peer URLs).
    Member {
        change: crate::members::MemberChange,
        reply: ReplyTo,
    },
    /// A v2 auth API change, password already hashed; answered once applied here.
    Auth {
        cmd: crate::auth::AuthCommand,
        reply: ReplyTo,
    },
    /// quorum=true: answered by the raft shard after every earlier write is applied.
    QuorumGet {
        key: String,
        recursive: bool,
        sorted: bool,
        reply: ReplyTo,
    },
    /// `GET /ringd/snapshot`: a snapshot of the state after every earlier write, answered on
    /// the request's own channel (`backup.rs`).
    Snapshot(backup::SaveRequest),
}

/// Where a reply goes: the shard that sent the proposal and its id there.
#[derive(Clone, Copy, Debug)]
pub struct ReplyTo {
    pub shard: usize,
    pub id: u64,
}

/// What the raft shard sends a client shard after a batch: the batch's events (for its
/// watchers) and the replies to that shard's proposals. One message, so one cross-thread
/// wake, per shard per batch.
pub struct ShardMsg {
    pub events: Option<Arc<[Arc<Event>]>>,
    pub replies: Vec<(u64, Reply)>,
}

/// Collects a batch's replies by shard.
pub struct Outbox {
    per_shard: Vec<Vec<(u64, Reply)>>,
}

impl Outbox {
    pub fn new(shards: usize) -> Outbox {
        Outbox {
            per_shard: (0..shards).map(|_| Vec::new()).collect(),
        }
    }

    pub fn push(&mut self, to: ReplyTo, reply: Reply) {
        if let Some(v) = self.per_shard.get_mut(to.shard) {
            v.push((to.id, reply));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.per_shard.iter().all(Vec::is_empty)
    }

    /// Sends every shard its replies plus the events. Bounded channels: a shard that fell
    /// SHARD_EVENT_QUEUE_CAPACITY batches behind makes the writer wait, which backpressures
    /// every writer instead of growing memory.
    pub fn send(
        &mut self,
        shards: &[flume::Sender<ShardMsg>],
        events: Option<Arc<[Arc<Event>]>>,
        overflow: &[std::sync::atomic::AtomicBool],
        watching: &[std::sync::atomic::AtomicBool],
    ) {
        use std::sync::atomic::Ordering::SeqCst;
        // Pairs with the fence in the client shard's watch: the view holding these events was
        // stored before this point (see `Shared::watching`).
        std::sync::atomic::fence(SeqCst);
        for (i, tx) in shards.iter().enumerate() {
            let replies = self
                .per_shard
                .get_mut(i)
                .map(std::mem::take)
                .unwrap_or_default();
            let events = events
                .as_ref()
                .filter(|_| watching.get(i).is_some_and(|w| w.load(SeqCst)));
            if replies.is_empty() && events.is_none() {
                continue;
            }
            // Never wait for a shard (the raft shard's heartbeats must not depend on client
            // load): a shard SHARD_EVENT_QUEUE_CAPACITY batches behind loses this one and is
            // told to end its watchers and fail its waiting requests.
            let msg = ShardMsg {
                events: events.cloned(),
                replies,
            };
            if let Err(flume::TrySendError::Full(_)) = tx.try_send(msg) {
                if let Some(flag) = overflow.get(i) {
                    if !flag.swap(true, std::sync::atomic::Ordering::AcqRel) {
                        tracing::warn!(shard = i, "shard queue full: its watchers are closed");
                    }
                }
            }
        }
    }
}

/// Reports the history's size and memory bound at start.
fn log_history_bound(ring: &EventRing) {
    if ring.archive_bytes_max() == 0 {
        tracing::info!(
            events = ring.capacity(),
            bound_bytes = ring.bound_bytes(),
            "watch history: the last {} events, held as written (etcd's history)",
            ring.capacity()
        );
    } else {
        tracing::info!(
            events = ring.capacity(),
            recent_events = ring.recent_capacity(),
            archive_bytes_max = ring.archive_bytes_max(),
            bound_bytes = ring.bound_bytes(),
            "watch history: the last {} events; memory bound {} bytes for the encoded history, beside the newest {} events held as written",
            ring.capacity(),
            ring.bound_bytes(),
            ring.recent_capacity()
        );
    }
}

pub fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Binds every listener, starts the raft shard and the client shards, and blocks forever.
/// Returns an error (before anything is served) if a listener cannot be bound.
pub fn run(cfg: Resolved) -> Result<(), String> {
    run_with(cfg, || {})
}

/// `run`, calling `serving` on this (the main) thread once every thread has started, just
/// before it blocks joining them: the binary uses it to hand the memory that recovery freed on
/// this thread back to its allocator's shared pool.
pub fn run_with(cfg: Resolved, serving: impl FnOnce()) -> Result<(), String> {
    // SO_REUSEPORT lets our shards share a port, but it would also let a second process
    // (same user) bind it and take half the connections. Probe each address exclusively
    // first: a busy port fails start-up as etcd's does.
    for url in cfg.listen_client.iter().chain(&cfg.listen_peer) {
        let addr = url.socket_addr()?;
        probe_exclusive(addr).map_err(|e| format!("listen tcp {addr}: bind: {e}"))?;
    }
    let tls = tls_setup(&cfg)?;
    let mut listeners = Vec::new();
    for shard in 0..cfg.shards {
        let mut per_shard = Vec::new();
        for url in &cfg.listen_client {
            let addr = url.socket_addr()?;
            let l = bind_reuseport(addr)
                .map_err(|e| format!("cannot listen on {addr} (shard {shard}): {e}"))?;
            let acceptor = (url.scheme == "https")
                .then(|| tls.client.clone())
                .flatten();
            per_shard.push((l, acceptor));
        }
        listeners.push(per_shard);
    }
    let mut peer_listeners = Vec::new();
    for url in &cfg.listen_peer {
        let addr = url.socket_addr()?;
        let l = bind_reuseport(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let acceptor = (url.scheme == "https").then(|| tls.peer.clone()).flatten();
        peer_listeners.push((l, acceptor));
    }
    let data_dir = std::path::Path::new(&cfg.data_dir);
    let record_path = recovery::membership_path(data_dir);
    let recorded = recovery::read_membership(&record_path)?;
    let is_new = recorded.is_none();
    let (self_id, membership) = match recorded {
        Some((id, m)) => {
            tracing::info!("existing data dir: --initial-cluster* flags are ignored");
            (id, m)
        }
        None if cfg.join_existing => join_existing(&cfg, tls.dial.as_ref())?,
        None => initial_membership(&cfg),
    };
    if !membership.members.contains_key(&self_id) {
        return Err(format!(
            "member {self_id:x} is not in the cluster membership recorded in {}",
            record_path.display()
        ));
    }
    let cid = membership.cluster_id;
    // Recover before serving anything: the shards must never answer from a store that is not
    // yet the recovered one.
    let election_tick = (cfg.election_timeout_ms / cfg.heartbeat_interval_ms).max(2) as usize;
    // etcd's request timeout: 5 s plus two election timeouts.
    let request_timeout_ticks =
        (5000 + 2 * cfg.election_timeout_ms) / cfg.heartbeat_interval_ms.max(1);
    let mut rec = recovery::recover(
        data_dir,
        recovery::Start {
            id: self_id,
            membership,
            force_new_cluster: cfg.force_new_cluster,
            election_tick,
            heartbeat_tick: 1,
            request_timeout_ticks,
        },
    )?;
    if is_new || cfg.force_new_cluster {
        recovery::write_membership(&record_path, self_id, rec.replica.membership())
            .map_err(|e| format!("cannot write {}: {e}", record_path.display()))?;
    }
    // The snapshot's history into the ring before the log's replay adds its events: its
    // encoded copy is freed before the replay allocates (a lower peak at restart).
    let ring = EventRing::new(cfg.watch_history);
    log_history_bound(&ring);
    ring.restore(rec.history.iter())
        .map_err(|e| format!("snapshot history: {e}"))?;
    rec.history = Default::default();
    recovery::replay(&mut rec, &ring);
    // A member that leads alone (a one-member cluster) publishes its name and client URLs
    // before it serves anyone, as etcd does; members of a larger cluster publish once they
    // know a leader (the raft shard retries until it is applied).
    if rec.replica.is_leader() {
        let me = rec.replica.membership().members.get(&self_id);
        if me.is_some_and(|m| m.name != cfg.name || m.client_urls != cfg.advertise_client_urls) {
            rec.replica.propose_payload(
                crate::raft::Payload::Publish {
                    name: cfg.name.clone(),
                    client_urls: cfg.advertise_client_urls.clone(),
                },
                None,
            );
            recovery::replay(&mut rec, &ring);
            recovery::write_membership(&record_path, self_id, rec.replica.membership())
                .map_err(|e| format!("cannot write {}: {e}", record_path.display()))?;
        }
    }
    let shared = Arc::new(Shared {
        published: ArcSwap::from_pointee(Published::of(&rec.replica)),
        ring,
        counters: (0..cfg.shards).map(|_| ShardCounters::default()).collect(),
        membership: ArcSwap::from_pointee(rec.replica.membership().clone()),
        self_id,
        cluster_id: cid,
        name: cfg.name.clone(),
        start_unix_ns: unix_now_ns(),
        start: Instant::now(),
        max_request_bytes: cfg.max_request_bytes,
        driver: std::sync::Mutex::new(Vec::new()),
        wal_syncs: Default::default(),
        wal_entries: Default::default(),
        leader_changes: Default::default(),
        proposals_failed: Default::default(),
        shard_overflow: (0..cfg.shards).map(|_| Default::default()).collect(),
        watching: (0..cfg.shards).map(|_| Default::default()).collect(),
        stopping: Default::default(),
        drained: Default::default(),
        leader_since_ns: unix_now_ns().into(),
        appends_received: Default::default(),
        appends_sent: Default::default(),
        followers: Default::default(),
        append_rates: Default::default(),
        peer_active: Default::default(),
        snapshot_saves: Default::default(),
    });
    let bell = raft_wait::Doorbell::new().map_err(|e| format!("cannot create an eventfd: {e}"))?;
    let (mailbox_tx, mailbox_rx) = flume::bounded::<Proposal>(MAILBOX_CAPACITY);
    let mailbox_tx = raft_wait::RaftTx::new(mailbox_tx, bell.clone());
    let mut event_txs = Vec::new();
    let mut handles = Vec::new();
    for (i, shard_listeners) in listeners.into_iter().enumerate() {
        let (etx, erx) = flume::bounded::<ShardMsg>(SHARD_EVENT_QUEUE_CAPACITY);
        event_txs.push(etx);
        let shared = shared.clone();
        let mailbox = mailbox_tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("shard-{i}"))
            .spawn(move || client::shard_main(i, shared, shard_listeners, mailbox, erx))
            .map_err(|e| format!("cannot spawn shard thread: {e}"))?;
        handles.push(h);
    }
    drop(mailbox_tx);
    let (peer_out_tx, peer_out_rx) = flume::bounded(PEER_OUTBOX_CAPACITY);
    let (peer_in_tx, peer_in_rx) = flume::bounded(PEER_INBOX_CAPACITY);
    let peer_in_tx = raft_wait::RaftTx::new(peer_in_tx, bell.clone());
    let peer_shared = shared.clone();
    let links = Arc::new(peer::Links::default());
    let peer_links = links.clone();
    let peer = std::thread::Builder::new()
        .name("peer".to_string())
        .spawn(move || {
            peer::peer_main(
                peer_shared,
                peer_listeners,
                tls.dial,
                peer_out_rx,
                peer_in_tx,
                peer_links,
            )
        })
        .map_err(|e| format!("cannot spawn peer thread: {e}"))?;
    handles.push(peer);
    let raft_shared = shared.clone();
    let raft_cfg = raft_shard::RaftShardConfig {
        snapshot_count: cfg.snapshot_count.max(1),
        tick: std::time::Duration::from_millis(cfg.heartbeat_interval_ms),
        name: cfg.name.clone(),
        client_urls: cfg.advertise_client_urls.clone(),
        membership_path: record_path,
        strict_reconfig_check: cfg.strict_reconfig_check,
    };
    let channels = raft_shard::RaftChannels {
        mailbox: mailbox_rx,
        peer_in: peer_in_rx,
        bell,
        peer_out: peer_out_tx,
        links,
        shards: event_txs,
    };
    let raft = std::thread::Builder::new()
        .name("raft".to_string())
        .spawn(move || raft_shard::raft_main(raft_shared, rec, raft_cfg, channels))
        .map_err(|e| format!("cannot spawn raft thread: {e}"))?;
    let urls: Vec<String> = cfg
        .listen_client
        .iter()
        .map(|u| format!("{}://{}:{}", u.scheme, u.host, u.port))
        .collect();
    tracing::info!(
        name = %cfg.name, member = %format!("{self_id:x}"), cluster = %format!("{cid:x}"),
        shards = cfg.shards, listen = ?urls, "ringd serving clients"
    );
    serving();
    // The threads serve until the process ends; this one waits for SIGTERM or SIGINT
    // (blocked in every thread by the binary's `main`, so they arrive here).
    let _ = (raft, handles);
    let Some(signal) = shutdown::wait_stop_signal(None) else {
        return Err("waiting for signals failed".to_string());
    };
    stop(&shared, signal)
}

/// Beyond the raft shard's own bound: how long the main thread waits for it and the shards.
const STOP_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(7);
/// After the last reply was handed to its connection: time for it to be written out.
const STOP_FLUSH_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// The graceful stop: new requests are refused, every write already proposed is finished
/// (acknowledged only once fsynced on a quorum, as always, or failed), a leader hands over,
/// then the process exits 0. A second signal exits at once (status 1).
fn stop(shared: &Shared, signal: &str) -> ! {
    use std::sync::atomic::Ordering;
    tracing::info!(signal, "received signal; shutting down");
    shutdown::sd_notify("STOPPING=1");
    shared.stopping.store(true, Ordering::Release);
    let deadline = Instant::now() + STOP_WAIT_MAX;
    let second = |wait| {
        if let Some(s) = shutdown::wait_stop_signal(Some(wait)) {
            tracing::warn!(signal = s, "second signal: stopping now");
            std::process::exit(1);
        }
    };
    loop {
        let awaiting: u64 = shared
            .counters
            .iter()
            .map(|c| c.awaiting.load(Ordering::Acquire))
            .sum();
        if shared.drained.load(Ordering::Acquire) && awaiting == 0 {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(awaiting, "requests still unanswered at the stop bound");
            break;
        }
        second(std::time::Duration::from_millis(10));
    }
    second(STOP_FLUSH_GRACE);
    tracing::info!("stopped");
    std::process::exit(0)
}

/// The TLS sides of the member: the client port's and the peer port's servers (when some of
/// their URLs are https) and the peer dialler (when peer TLS is configured).
struct TlsSides {
    client: Option<tls::Acceptor>,
    peer: Option<tls::Acceptor>,
    dial: Option<tls::Connector>,
}

/// Loads (or, for `--auto-tls`, generates under `<data-dir>/fixtures`) the certificates, so a
/// missing, unreadable or expired one fails start-up with its file named.
fn tls_setup(cfg: &Resolved) -> Result<TlsSides, String> {
    let hosts = |urls: &[crate::config::ListenUrl]| -> Vec<String> {
        urls.iter().map(|u| u.host.clone()).collect()
    };
    let fixtures = std::path::Path::new(&cfg.data_dir).join("fixtures");
    let prepare = |s: &crate::config::TlsSettings, kind: &str, hosts: Vec<String>| {
        let mut s = s.clone();
        if s.files().is_err() && s.auto_tls {
            let (cert, key) = tls::auto_tls(&fixtures.join(kind), &hosts)?;
            s.cert_file = Some(cert.display().to_string());
            s.key_file = Some(key.display().to_string());
        }
        Ok::<_, String>(s)
    };
    let client = if cfg.listen_client.iter().any(|u| u.scheme == "https") {
        let s = prepare(&cfg.client_tls, "client", hosts(&cfg.listen_client))?;
        Some(tls::acceptor(&s, "client")?)
    } else {
        None
    };
    let p = &cfg.peer_tls;
    let peer_configured = p.cert_file.is_some() || p.auto_tls || p.trusted_ca_file.is_some();
    let https_peers = cfg.listen_peer.iter().any(|u| u.scheme == "https");
    let (peer, dial) = if https_peers || peer_configured {
        let s = prepare(p, "peer", hosts(&cfg.listen_peer))?;
        let peer = if https_peers {
            Some(tls::acceptor(&s, "peer")?)
        } else {
            None
        };
        (peer, Some(tls::connector(&s)?))
    } else {
        (None, None)
    };
    Ok(TlsSides { client, peer, dial })
}

/// `--initial-cluster-state existing`: learns the cluster from the peers named in
/// `--initial-cluster` (etcd's GET /members on their peer URLs), and finds this member in it
/// by its advertised peer URLs (it was added with `etcdctl member add`).
fn join_existing(
    cfg: &Resolved,
    tls: Option<&tls::Connector>,
) -> Result<(u64, Membership), String> {
    let mut errors = Vec::new();
    for (name, urls) in &cfg.initial_cluster {
        if name == &cfg.name {
            continue;
        }
        for url in urls {
            match fetch_members(url, tls) {
                Ok((cluster_id, members)) => {
                    let mut mine = cfg.advertise_peer_urls.clone();
                    mine.sort();
                    let me = members.iter().find(|m| {
                        let mut p = m.peer_urls.clone();
                        p.sort();
                        p == mine
                    });
                    let Some(me) = me else {
                        return Err(format!(
                            "error validating peerURLs: member with peer URLs {} is not in the cluster {cluster_id:x} (add it with `etcdctl member add` first)",
                            cfg.advertise_peer_urls.join(",")
                        ));
                    };
                    let id = me.id;
                    let mut m = Membership {
                        cluster_id,
                        members: members.into_iter().map(|m| (m.id, m)).collect(),
                        removed: Default::default(),
                        applied_index: 0,
                        token: cfg.initial_cluster_token.clone(),
                    };
                    if let Some(me) = m.members.get_mut(&id) {
                        me.name = cfg.name.clone();
                    }
                    tracing::info!(member = %format!("{id:x}"), cluster = %format!("{cluster_id:x}"), from = %url, "joining an existing cluster");
                    return Ok((id, m));
                }
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
    }
    Err(format!(
        "cannot fetch cluster info from peer urls: {}",
        errors.join("; ")
    ))
}

/// GET /members on a peer URL: the cluster id (X-Etcd-Cluster-Id) and the members.
fn fetch_members(url: &str, tls: Option<&tls::Connector>) -> Result<(u64, Vec<Member>), String> {
    use std::io::Read;
    let host = url
        .split_once("://")
        .map_or(url, |(_, r)| r)
        .trim_end_matches('/');
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let timeout = std::time::Duration::from_secs(2);
    let s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let request = format!("GET /members HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let buf = if url.starts_with("https://") {
        let tls = tls.ok_or("https peer URL but no peer TLS configured")?;
        let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
        tls.blocking_exchange(s, name, request.as_bytes(), 16 << 20)?
    } else {
        use std::io::Write;
        let mut s = s;
        s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.take(16 << 20)
            .read_to_end(&mut buf)
            .map_err(|e| e.to_string())?;
        buf
    };
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("bad response")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or("").to_string());
    }
    let cluster_id = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("x-etcd-cluster-id")
                .then(|| u64::from_str_radix(v.trim(), 16).ok())
                .flatten()
        })
        .ok_or("no X-Etcd-Cluster-Id")?;
    #[derive(serde::Deserialize)]
    struct Wire {
        id: String,
        name: String,
        #[serde(rename = "peerURLs")]
        peer_urls: Vec<String>,
        #[serde(rename = "clientURLs")]
        client_urls: Vec<String>,
    }
    let list: Vec<Wire> = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let members = list
        .into_iter()
        .map(|w| {
            Ok(Member {
                id: u64::from_str_radix(&w.id, 16).map_err(|e| e.to_string())?,
                name: w.name,
                peer_urls: w.peer_urls,
                client_urls: w.client_urls,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((cluster_id, members))
}

/// The membership of a new cluster from `--initial-cluster`, and this member's id in it.
fn initial_membership(cfg: &Resolved) -> (u64, Membership) {
    let m = Membership::from_initial_cluster(&cfg.initial_cluster, &cfg.initial_cluster_token);
    let self_id = m
        .members
        .values()
        .find(|m| m.name == cfg.name)
        .map_or(0, |m| m.id);
    (self_id, m)
}

/// Binds `addr` without SO_REUSEPORT and lets it go: fails when any other socket listens
/// there. A process that just exited may still hold its listener for a few milliseconds
/// (io_uring tears a dead process's ring down asynchronously), so a busy port is retried
/// for up to a second before start-up gives up.
fn probe_exclusive(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match probe_once(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

fn probe_once(addr: std::net::SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR only so that our own connections in TIME_WAIT from a previous run do not
    // block a restart; a listening socket still makes the bind fail.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(e.kind(), "address already in use")
        } else {
            e
        }
    })
}

fn bind_reuseport(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

extern "C" {
    /// mimalloc's `mi_collect`, from the static library the `mimalloc` crate links (in test
    /// binaries, whose allocator is the system's, it finds mimalloc's heaps empty).
    fn mi_collect(force: bool);
}

/// Hands the memory the calling thread freed back to the OS now. mimalloc returns freed
/// pages after a delay, and only when the thread (or another) goes on allocating: a thread
/// that frees a big buffer and then sleeps or allocates little kept it counted in the RSS.
/// Called by recovery on the main thread (the snapshot file and its store section, before
/// the log's replay, and once serving) and by the snapshot thread after each snapshot (its
/// encoding buffer, ~46 MB for 1M keys, stayed resident until the next snapshot).
pub fn release_freed_memory() {
    // SAFETY: a plain call into the allocator the binary links, on the calling thread.
    unsafe { mi_collect(true) };
}
