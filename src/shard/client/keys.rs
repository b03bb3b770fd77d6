//! The keys API (`/v2/keys`): reads answered from the published view, quorum reads and
//! writes proposed to the raft shard (`propose` waits on a shard-local reply slot), watches
//! handed to `watch`, and the event and error responses they answer with.

use super::conn::{Conn, Flow};
use super::watch::watch;
use super::{ReplySlot, ShardCtx};
use crate::http::render;
use crate::http::response::json;
use crate::http::route::{KeyOp, KeyRequest};
use crate::shard::{Proposal, Reply, ReplyTo};
use ringd_store::{Action, Error, ErrorCode, Event};
use std::rc::Rc;

pub(super) fn error_response(out: &mut Vec<u8>, head: bool, cid: &str, e: &Error) {
    let mut body = Vec::with_capacity(128);
    render::error(&mut body, e);
    let index = e.index.to_string();
    json(
        out,
        head,
        e.code.http_status(),
        &[("X-Etcd-Cluster-Id", cid), ("X-Etcd-Index", &index)],
        &body,
    );
}

fn event_response(
    out: &mut Vec<u8>,
    head: bool,
    cid: &str,
    ev: &Event,
    raft_index: crate::raft::RaftIndex,
    raft_term: u64,
    no_value: bool,
) {
    let created =
        ev.action == Action::Create || (ev.action == Action::Set && ev.prev_node.is_none());
    let status = if created { 201 } else { 200 };
    let mut body = Vec::with_capacity(256);
    let omit = no_value
        && matches!(
            ev.action,
            Action::Set | Action::CompareAndSwap | Action::Create | Action::Update
        );
    render::event(&mut body, ev, crate::shard::unix_now_ns(), omit);
    let (ei, ri, rt) = (
        ev.etcd_index.to_string(),
        raft_index.to_string(),
        raft_term.to_string(),
    );
    json(
        out,
        head,
        status,
        &[
            ("X-Etcd-Cluster-Id", cid),
            ("X-Etcd-Index", &ei),
            ("X-Raft-Index", &ri),
            ("X-Raft-Term", &rt),
        ],
        &body,
    );
}

pub(super) async fn propose(ctx: &Rc<ShardCtx>, make: impl FnOnce(ReplyTo) -> Proposal) -> Reply {
    let id = ctx.next_id.get().wrapping_add(1);
    ctx.next_id.set(id);
    let slot = Rc::new(ReplySlot::default());
    ctx.pending.borrow_mut().insert(id, slot.clone());
    let awaiting = &ctx.shared.counters[ctx.id].awaiting;
    awaiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let reply = if ctx
        .mailbox
        .send_async(make(ReplyTo { shard: ctx.id, id }))
        .await
        .is_err()
    {
        ctx.pending.borrow_mut().remove(&id);
        Reply {
            result: Err(Error::new(ErrorCode::RaftInternal, "raft shard stopped", 0)),
            raft_index: crate::raft::RaftIndex(0),
            raft_term: 0,
            member: None,
            auth: None,
        }
    } else {
        slot.wait().await
    };
    awaiting.fetch_sub(1, std::sync::atomic::Ordering::Release);
    reply
}

/// A plain GET (not `quorum=true`): answered at once from the published view, no await.
pub(super) fn get(
    ctx: &ShardCtx,
    out: &mut Vec<u8>,
    head: bool,
    key: &str,
    recursive: bool,
    sorted: bool,
) {
    let counters = &ctx.shared.counters[ctx.id];
    let p = ctx.shared.published.load();
    match p.view.get(key, recursive, sorted) {
        Ok(ev) => {
            counters.get_ok();
            event_response(out, head, &ctx.cid, &ev, p.raft_index, p.raft_term, false);
        }
        Err(e) => {
            counters.get_fail();
            error_response(out, head, &ctx.cid, &e);
        }
    }
}

pub(super) async fn keys(
    ctx: &Rc<ShardCtx>,
    kr: KeyRequest,
    conn: &mut Conn,
) -> std::io::Result<Flow> {
    let cid = ctx.cid.as_str();
    let head = kr.head;
    let reply = match kr.op {
        KeyOp::Get {
            key,
            recursive,
            sorted,
            quorum: false,
        } => {
            get(ctx, &mut conn.out, head, &key, recursive, sorted);
            return Ok(Flow::KeepAlive);
        }
        KeyOp::Get {
            key,
            recursive,
            sorted,
            quorum: true,
        } => {
            propose(ctx, |reply| Proposal::QuorumGet {
                key,
                recursive,
                sorted,
                reply,
            })
            .await
        }
        KeyOp::Watch {
            key,
            recursive,
            stream,
            since,
        } => {
            return watch(ctx, conn, cid, &key, recursive, stream, since).await;
        }
        KeyOp::Write { cmd, ttl_secs } => {
            propose(ctx, |reply| Proposal::Write {
                cmd,
                ttl_secs,
                reply,
            })
            .await
        }
    };
    match &reply.result {
        Ok(ev) => event_response(
            &mut conn.out,
            head,
            cid,
            ev,
            reply.raft_index,
            reply.raft_term,
            kr.no_value_on_success,
        ),
        Err(e) => error_response(&mut conn.out, head, cid, e),
    }
    Ok(Flow::KeepAlive)
}
