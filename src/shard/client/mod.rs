//! A client shard: its executor, its listeners, its connections and its watcher registry.
//!
//! Each connection is one task: read into a bounded buffer, frame requests (pipelining
//! allowed), answer each in order into one output buffer, flush when the input runs dry.
//! Reads are answered here from the published view; writes go to the raft shard's mailbox
//! and wait for its reply; watches register in this shard's registry.
//!
//! This file holds what the whole shard shares: `ShardCtx`, the executor's set-up
//! (`shard_main`), the dispatch task that delivers the raft shard's batch messages (replies
//! and events), and the accept loop. The rest is split by concern: `conn` (a connection's
//! loop and its framing), `keys` (the keys API and proposals), `watch` (long polls and
//! streams), `admin` (members, stats, metrics, version, health and every other route).

mod admin;
mod auth;
mod backup;
mod conn;
mod keys;
mod watch;

use conn::serve_conn;

use crate::http::response;
use crate::limits::CONNECTIONS_PER_SHARD_MAX;
use crate::shard::tls::Acceptor;
use crate::shard::{Proposal, Reply, ShardMsg, Shared};
use crate::watch::registry::{Registry, Watch};
use bytes::Bytes;
use monoio::net::TcpListener;
use ringd_store::{Error, ErrorCode};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// A live watcher on this shard; its payloads are events rendered once for the shard's
/// watchers (`http::response::watch_event`).
type Watcher = Watch<Bytes>;

struct ShardCtx {
    id: usize,
    shared: Arc<Shared>,
    mailbox: super::raft_wait::RaftTx<Proposal>,
    registry: RefCell<Registry<Bytes>>,
    connections: std::cell::Cell<usize>,
    /// Proposals of this shard waiting for the raft shard's reply, by id.
    pending: RefCell<std::collections::HashMap<u64, Rc<ReplySlot>>>,
    next_id: std::cell::Cell<u64>,
    /// X-Etcd-Cluster-Id, rendered once (it is on every keys response).
    cid: String,
    /// Basic auth credentials verified on this shard (keyed hashes, never passwords).
    credentials: RefCell<auth::CredentialCache>,
    /// bcrypt threads this shard is waiting for (bounded).
    bcrypt_running: std::cell::Cell<usize>,
}

/// A shard-local one-shot: filled by the dispatch task when the raft shard's batch message
/// arrives, awaited by the connection task. No cross-thread wake per reply.
#[derive(Default)]
struct ReplySlot {
    value: RefCell<Option<Reply>>,
    waker: RefCell<Option<std::task::Waker>>,
}

impl ReplySlot {
    fn fill(&self, reply: Reply) {
        *self.value.borrow_mut() = Some(reply);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    async fn wait(&self) -> Reply {
        std::future::poll_fn(|cx| match self.value.borrow_mut().take() {
            Some(v) => Poll::Ready(v),
            None => {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

impl ShardCtx {
    /// Records the registry's size; an empty registry stops the raft shard from sending
    /// this shard batches that hold only events (`Shared::watching`).
    fn watchers_now(&self, n: usize) {
        self.shared.counters[self.id]
            .watchers
            .store(n as u64, Ordering::Relaxed);
        if n == 0 {
            self.shared.watching[self.id].store(false, Ordering::SeqCst);
        }
    }
}

/// Builds the shard's executor and serves until the process exits.
pub fn shard_main(
    id: usize,
    shared: Arc<Shared>,
    listeners: Vec<(std::net::TcpListener, Option<super::tls::Acceptor>)>,
    mailbox: super::raft_wait::RaftTx<Proposal>,
    events: flume::Receiver<ShardMsg>,
) {
    let mut rt = super::runtime::build(&format!("shard-{id}"));
    rt.block_on(async move {
        let driver = if monoio::utils::is_legacy() {
            "epoll"
        } else {
            "io_uring"
        };
        if let Ok(mut d) = shared.driver.lock() {
            d.push(driver);
        }
        tracing::info!(shard = id, driver, "shard started");
        let cid = format!("{:x}", shared.cluster_id);
        let ctx = Rc::new(ShardCtx {
            cid,
            credentials: RefCell::new(auth::CredentialCache::new()),
            bcrypt_running: std::cell::Cell::new(0),
            id,
            shared,
            mailbox,
            registry: RefCell::new(Registry::default()),
            connections: std::cell::Cell::new(0),
            pending: RefCell::new(std::collections::HashMap::new()),
            next_id: std::cell::Cell::new(0),
        });
        monoio::spawn(dispatch_loop(ctx.clone(), events));
        monoio::spawn(trim_loop(ctx.clone()));
        let mut tasks = Vec::new();
        for (l, tls) in listeners {
            match TcpListener::from_std(l) {
                Ok(l) => tasks.push(monoio::spawn(accept_loop(ctx.clone(), l, tls))),
                Err(e) => tracing::error!(shard = id, error = %e, "cannot adopt listener"),
            }
        }
        for t in tasks {
            t.await;
        }
    });
}

/// How often a shard looks whether its connections or watchers changed (`trim_loop`).
const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Hands the memory this shard freed back to the OS once its connections and watchers have
/// stopped changing and it answered no request for a tick (after ticks with some change).
/// The answered count is what tells a quiet shard from a busy one whose connection and
/// watcher counts happen to match a second apart (long polls answered and re-armed). Thousands of watchers
/// arriving at once each read their request into a buffer and let it go once registered;
/// mimalloc purges such freed pages only as the thread goes on allocating, and a shard whose
/// watchers then sit idle kept them counted (~170-360 B per idle watcher of 10,000). While
/// connections or watchers keep coming and going the thread keeps allocating, so nothing is
/// forced then: a forced collect walks the whole heap.
async fn trim_loop(ctx: Rc<ShardCtx>) {
    let mut seen = (0, 0, 0);
    let mut changed = false;
    loop {
        monoio::time::sleep(TRIM_INTERVAL).await;
        let now = (
            ctx.connections.get(),
            ctx.registry.borrow().len(),
            ctx.shared.counters[ctx.id].answered(),
        );
        if now != seen {
            seen = now;
            changed = true;
        } else if changed {
            changed = false;
            crate::shard::release_freed_memory();
        }
    }
}

async fn dispatch_loop(ctx: Rc<ShardCtx>, inbox: flume::Receiver<ShardMsg>) {
    while let Ok(msg) = inbox.recv_async().await {
        // Replies first: a write's acknowledgement leaves before the fan-out of its event.
        let mut pending = ctx.pending.borrow_mut();
        for (id, reply) in msg.replies {
            if let Some(slot) = pending.remove(&id) {
                slot.fill(reply);
            }
        }
        if let Some(events) = &msg.events {
            // Each event is rendered once, for all of this shard's watchers (`ttl` against
            // the event's own time, or this one for the rare unstamped event), when the
            // first watcher that wants it is found; delivering it to a watcher is a
            // reference count and a wake.
            let now = crate::shard::unix_now_ns();
            let mut reg = ctx.registry.borrow_mut();
            reg.dispatch(events, |ev| Bytes::from(response::watch_event(ev, now)));
            ctx.watchers_now(reg.len());
        }
        if ctx.shared.shard_overflow[ctx.id].swap(false, Ordering::AcqRel) {
            // The raft shard dropped a batch for us (our queue was full): some events and
            // replies are lost. End every watcher (clients re-watch from their waitIndex and
            // find the events in the history) and fail every waiting request rather than
            // leave it hanging.
            ctx.registry.borrow_mut().clear();
            ctx.watchers_now(0);
            let index = ctx.shared.published.load().view.index().0;
            for (_, slot) in pending.drain() {
                slot.fill(Reply {
                    result: Err(Error::new(
                        ErrorCode::RaftInternal,
                        "etcdserver: request timed out",
                        index,
                    )),
                    raft_index: crate::raft::RaftIndex(0),
                    raft_term: 0,
                    member: None,
                    auth: None,
                });
            }
        }
    }
}

/// Accepts connections; on an https listener each is served after its TLS handshake (a
/// failed one is logged by `tls` and closed).
async fn accept_loop(ctx: Rc<ShardCtx>, listener: TcpListener, tls: Option<Acceptor>) {
    let tls = tls.map(Rc::new);
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                if ctx.connections.get() >= CONNECTIONS_PER_SHARD_MAX {
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                ctx.connections.set(ctx.connections.get() + 1);
                ctx.shared.counters[ctx.id]
                    .connections
                    .fetch_add(1, Ordering::Relaxed);
                let accept = Box::new(conn::Accept {
                    tcp: stream,
                    remote,
                    tls: tls.clone(),
                });
                monoio::spawn(serve_conn(ctx.clone(), accept));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(shard = ctx.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
