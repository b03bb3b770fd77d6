//! `GET /ringd/snapshot` on a client shard: reserves a save slot, hands the save to the raft
//! shard (`shard::backup`: a read barrier, then a frozen copy encoded on a thread of its own)
//! and writes the snapshot file's bytes as the body, with `Content-Length` so the client can
//! tell a complete transfer from a cut one (the file also ends in a CRC32C).
//!
//! The shard never blocks: it awaits the save's one-message channel while serving its other
//! connections, then writes the bytes as any large response (the encoded snapshot is held
//! until the client has read it: see `shard::backup` for the memory).

use super::conn::Conn;
use super::ShardCtx;
use crate::http::response::{message_response, write_head};
use crate::shard::backup::{SaveError, SaveRequest, SaveSlot};
use crate::shard::Proposal;
use std::rc::Rc;
use std::sync::atomic::Ordering;

/// Answers the request into `conn` (the connection stays open after it).
pub(super) async fn snapshot(ctx: &Rc<ShardCtx>, conn: &mut Conn) -> std::io::Result<()> {
    let Some(slot) = SaveSlot::reserve(&ctx.shared) else {
        let why = "too many snapshot saves in progress: try again later";
        message_response(&mut conn.out, false, 503, why);
        return Ok(());
    };
    let (save, result) = SaveRequest::new(slot);
    // Counted like a proposal: a graceful stop waits (bounded) for a save it has taken.
    let awaiting = &ctx.shared.counters[ctx.id].awaiting;
    awaiting.fetch_add(1, Ordering::Relaxed);
    let failed = |message: &str| SaveError {
        status: 500,
        message: message.to_string(),
    };
    let result = match ctx.mailbox.send_async(Proposal::Snapshot(save)).await {
        Err(_) => Err(failed("raft shard stopped")),
        Ok(()) => match result.recv_async().await {
            Ok(r) => r,
            Err(_) => Err(failed(
                "the snapshot could not be made (see the member's log)",
            )),
        },
    };
    awaiting.fetch_sub(1, Ordering::Release);
    let saved = match result {
        Ok(saved) => saved,
        Err(e) => {
            message_response(&mut conn.out, false, e.status, &e.message);
            return Ok(());
        }
    };
    let (etcd_index, raft_index, raft_term) = (
        saved.etcd_index.to_string(),
        saved.raft_index.to_string(),
        saved.raft_term.to_string(),
    );
    write_head(
        &mut conn.out,
        200,
        Some("application/octet-stream"),
        &[
            ("X-Etcd-Cluster-Id", &ctx.cid),
            ("X-Etcd-Index", &etcd_index),
            ("X-Raft-Index", &raft_index),
            ("X-Raft-Term", &raft_term),
        ],
        Some(saved.bytes.len()),
    );
    conn.flush().await?;
    let (res, _) = conn.stream.write_all(saved.bytes).await;
    res
}
