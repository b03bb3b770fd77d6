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

pub mod client;
pub mod raft_shard;
pub mod recovery;
pub mod snapshotter;

use crate::config::Resolved;
use crate::limits::{MAILBOX_CAPACITY, SHARD_EVENT_QUEUE_CAPACITY};
use crate::members::{cluster_id, member_id, Member};
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
}

/// State shared by every thread.
pub struct Shared {
    pub published: ArcSwap<Published>,
    pub ring: EventRing,
    pub counters: Box<[ShardCounters]>,
    pub members: Vec<Member>,
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
}

/// The reply to a proposal: the outcome and the raft position it was applied at.
pub struct Reply {
    pub result: Result<Arc<Event>, Error>,
    pub raft_index: crate::raft::RaftIndex,
    pub raft_term: u64,
}

/// A request to the raft shard.
pub enum Proposal {
    Write {
        cmd: Command,
        ttl_secs: Option<u64>,
        reply: ReplyTo,
    },
    /// quorum=true: answered by the raft shard after every earlier write is applied.
    QuorumGet {
        key: String,
        recursive: bool,
        sorted: bool,
        reply: ReplyTo,
    },
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
    pub fn send(&mut self, shards: &[flume::Sender<ShardMsg>], events: Option<Arc<[Arc<Event>]>>) {
        for (i, tx) in shards.iter().enumerate() {
            let replies = self
                .per_shard
                .get_mut(i)
                .map(std::mem::take)
                .unwrap_or_default();
            if replies.is_empty() && events.is_none() {
                continue;
            }
            let _ = tx.send(ShardMsg {
                events: events.clone(),
                replies,
            });
        }
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
    let mut listeners = Vec::new();
    for shard in 0..cfg.shards {
        let mut per_shard = Vec::new();
        for url in &cfg.listen_client {
            let addr = url.socket_addr()?;
            let l = bind_reuseport(addr)
                .map_err(|e| format!("cannot listen on {addr} (shard {shard}): {e}"))?;
            per_shard.push(l);
        }
        listeners.push(per_shard);
    }
    let members: Vec<Member> = cfg
        .initial_cluster
        .iter()
        .map(|(name, peers)| Member {
            id: member_id(peers, &cfg.initial_cluster_token),
            name: name.clone(),
            peer_urls: peers.clone(),
            client_urls: if name == &cfg.name {
                cfg.advertise_client_urls.clone()
            } else {
                vec![]
            },
        })
        .collect();
    let self_id = members
        .iter()
        .find(|m| m.name == cfg.name)
        .map(|m| m.id)
        .unwrap_or(0);
    let cid = cluster_id(&members.iter().map(|m| m.id).collect::<Vec<_>>());
    // Recover before serving anything: the shards must never answer from a store that is not
    // yet the recovered one.
    let election_tick = (cfg.election_timeout_ms / cfg.heartbeat_interval_ms).max(2) as usize;
    let mut rec = recovery::recover(
        std::path::Path::new(&cfg.data_dir),
        self_id,
        members.iter().map(|m| m.id).collect(),
        election_tick,
        1,
    )?;
    let replayed = recovery::replay(&mut rec);
    let ring = EventRing::new();
    for ev in rec.history.drain(..).chain(replayed) {
        ring.publish(ev);
    }
    let store = rec.replica.store();
    let shared = Arc::new(Shared {
        published: ArcSwap::from_pointee(Published {
            view: store.view(),
            raft_index: rec.replica.applied_index(),
            raft_term: rec.replica.term(),
            write_stats: store.write_stats().clone(),
        }),
        ring,
        counters: (0..cfg.shards).map(|_| ShardCounters::default()).collect(),
        members,
        self_id,
        cluster_id: cid,
        name: cfg.name.clone(),
        start_unix_ns: unix_now_ns(),
        start: Instant::now(),
        max_request_bytes: cfg.max_request_bytes,
        driver: std::sync::Mutex::new(Vec::new()),
        wal_syncs: Default::default(),
        wal_entries: Default::default(),
    });
    let (mailbox_tx, mailbox_rx) = flume::bounded::<Proposal>(MAILBOX_CAPACITY);
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
    let raft_shared = shared.clone();
    let raft_cfg = raft_shard::RaftShardConfig {
        snapshot_count: cfg.snapshot_count.max(1),
        tick: std::time::Duration::from_millis(cfg.heartbeat_interval_ms),
    };
    let raft = std::thread::Builder::new()
        .name("raft".to_string())
        .spawn(move || raft_shard::raft_main(raft_shared, rec, raft_cfg, mailbox_rx, event_txs))
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
    let _ = raft.join();
    for h in handles {
        let _ = h.join();
    }
    Err("server threads exited".to_string())
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
