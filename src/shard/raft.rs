//! The raft shard: the single writer of the store, the event ring and the published view.
//!
//! Loop: wait for a proposal or the TTL wheel's next deadline; drain up to
//! `PROPOSAL_BATCH_MAX` proposals; stamp TTLs with the wall clock (the only place time enters
//! a command); apply in order; run an expiry pass when the wheel says one is due; then, once
//! per batch and in this order: events into the ring, the new view published, replies sent,
//! one wake per shard with the batch's events. Publishing before replying is what lets a
//! client read its own write on any shard; ring-before-view lets a watcher that saw index V in
//! the view find every event <= V in the ring.
//!
//! Consensus seam: issue "durable" puts raft-rs and the log between "drain" and "apply";
//! nothing above this module changes then. Until then every applied write advances a local
//! log position reported as X-Raft-Index, with a fixed term.

use super::{unix_now_ns, Outbox, Proposal, Published, Reply, ShardMsg, Shared};
use crate::http::route::stamp_expiration;
use crate::limits::PROPOSAL_BATCH_MAX;
use crate::ttl::TtlWheel;
use ringd_store::{Command, Event, Store};
use std::sync::Arc;
use std::time::Duration;

const RAFT_TERM: u64 = 1;

pub fn raft_main(
    shared: Arc<Shared>,
    mut store: Store,
    mailbox: flume::Receiver<Proposal>,
    shards: Vec<flume::Sender<ShardMsg>>,
) {
    let mut wheel = TtlWheel::new(unix_now_ns());
    let mut raft_index: u64 = 0;
    let mut batch: Vec<Proposal> = Vec::with_capacity(PROPOSAL_BATCH_MAX);
    loop {
        let first = match wheel.next_wake() {
            None => mailbox
                .recv()
                .map_err(|_| flume::RecvTimeoutError::Disconnected),
            Some(at) => {
                let wait = at.saturating_sub(unix_now_ns());
                mailbox.recv_timeout(Duration::from_nanos(wait.max(1)))
            }
        };
        match first {
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
        let mut events: Vec<Arc<Event>> = Vec::new();
        let mut replies = Outbox::new(shards.len());
        for p in batch.drain(..) {
            match p {
                Proposal::Write {
                    mut cmd,
                    ttl_secs,
                    reply,
                } => {
                    let expire =
                        ttl_secs.map(|t| now.saturating_add(t.saturating_mul(1_000_000_000)));
                    stamp_expiration(&mut cmd, expire);
                    let result = store.apply(&cmd).map(Arc::new);
                    if let Ok(ev) = &result {
                        raft_index += 1;
                        if let Some(at) = expire {
                            wheel.schedule(at);
                        }
                        events.push(ev.clone());
                    }
                    replies.push(
                        reply,
                        Reply {
                            result,
                            raft_index,
                            raft_term: RAFT_TERM,
                        },
                    );
                }
                Proposal::QuorumGet {
                    key,
                    recursive,
                    sorted,
                    reply,
                } => {
                    let result = store.view().get(&key, recursive, sorted).map(Arc::new);
                    replies.push(
                        reply,
                        Reply {
                            result,
                            raft_index,
                            raft_term: RAFT_TERM,
                        },
                    );
                }
            }
        }
        if wheel.advance(now) {
            let expired = store.expire(now);
            if !expired.is_empty() {
                raft_index += 1;
            }
            events.extend(expired.into_iter().map(Arc::new));
        }
        if events.is_empty() && replies.is_empty() {
            continue;
        }
        for ev in &events {
            shared.ring.publish(ev.clone());
        }
        shared.published.store(Arc::new(Published {
            view: store.view(),
            raft_index,
            raft_term: RAFT_TERM,
            write_stats: store.write_stats().clone(),
        }));
        let events: Option<Arc<[Arc<Event>]>> = (!events.is_empty()).then(|| events.into());
        replies.send(&shards, events);
    }
}

/// Applies a command outside the loop (tests and tools).
pub fn apply_now(
    store: &mut Store,
    mut cmd: Command,
    ttl_secs: Option<u64>,
) -> Result<Event, ringd_store::Error> {
    let now = unix_now_ns();
    stamp_expiration(&mut cmd, ttl_secs.map(|t| now + t * 1_000_000_000));
    store.apply(&cmd)
}
