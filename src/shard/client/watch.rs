//! Watches (`wait=true`): a long poll or a stream, answered first from the event ring's
//! history and then from this shard's watcher registry, as chunked responses.
//!
//! While a watcher waits, its connection keeps reading the socket (`wait_event`), so a client
//! that goes away frees its watcher at once.

use super::conn::{Conn, Flow};
use super::keys::error_response;
use super::ShardCtx;
use crate::http::response::{chunk, last_chunk, message_response, write_head};
use crate::limits::REQUEST_HEADER_BYTES_MAX;
use monoio::io::Canceller;
use ringd_store::Event;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

/// A long poll or stream watch. Everything up to registration is synchronous, so no batch
/// can be dispatched between reading the current index and registering: the history covers
/// every event <= current, the registry every event > current.
pub(super) async fn watch(
    ctx: &Rc<ShardCtx>,
    conn: &mut Conn,
    cid: &str,
    key: &str,
    recursive: bool,
    stream: bool,
    since: u64,
) -> std::io::Result<Flow> {
    // Before the view is read: from here on the raft shard sends this shard every batch's
    // events, or this read sees the view that holds them (`Shared::watching`).
    ctx.shared.watching[ctx.id].store(true, Ordering::SeqCst);
    std::sync::atomic::fence(Ordering::SeqCst);
    let p = ctx.shared.published.load_full();
    let current = p.view.index().0;
    let mut since = if since == 0 { current + 1 } else { since };
    let mut history = Vec::new();
    while since <= current {
        match ctx.shared.ring.scan(key, recursive, since, current) {
            Err(e) => {
                error_response(&mut conn.out, false, cid, &e);
                return Ok(Flow::KeepAlive);
            }
            Ok(Some(ev)) => {
                since = ev.index() + 1;
                history.push(ev);
                // etcd's long poll answers with the first hit; a stream goes on (unlike
                // etcd, which falls silent after a history hit).
                if !stream {
                    break;
                }
            }
            Ok(None) => since = current + 1,
        }
    }
    let handle = if stream || history.is_empty() {
        let mut reg = ctx.registry.borrow_mut();
        let h = reg.register(key, recursive, stream, since);
        ctx.watchers_now(reg.len());
        match h {
            Some(h) => Some(h),
            None => {
                drop(reg);
                message_response(&mut conn.out, false, 503, "too many watchers");
                return Ok(Flow::KeepAlive);
            }
        }
    } else {
        None
    };
    let (ei, ri, rt) = (
        current.to_string(),
        p.raft_index.to_string(),
        p.raft_term.to_string(),
    );
    write_head(
        &mut conn.out,
        200,
        Some("application/json"),
        &[
            ("X-Etcd-Cluster-Id", cid),
            ("X-Etcd-Index", &ei),
            ("X-Raft-Index", &ri),
            ("X-Raft-Term", &rt),
        ],
        None,
    );
    for ev in &history {
        chunk(&mut conn.out, ev, crate::shard::unix_now_ns());
    }
    let Some(handle) = handle else {
        last_chunk(&mut conn.out);
        return Ok(Flow::KeepAlive);
    };
    let unregister = |ctx: &Rc<ShardCtx>| {
        let mut reg = ctx.registry.borrow_mut();
        reg.remove(&handle.key, handle.id);
        ctx.watchers_now(reg.len());
    };
    if let Err(e) = conn.flush().await {
        unregister(ctx);
        return Err(e);
    }
    loop {
        match wait_event(conn, &handle.rx).await {
            Wake::Event(ev) => {
                chunk(&mut conn.out, &ev, crate::shard::unix_now_ns());
                if !stream {
                    last_chunk(&mut conn.out);
                    return Ok(Flow::KeepAlive);
                }
                if let Err(e) = conn.flush().await {
                    unregister(ctx);
                    return Err(e);
                }
            }
            Wake::Closed => {
                unregister(ctx);
                return Ok(Flow::Close);
            }
            Wake::WatcherGone => {
                // A stream that fell behind was dropped by the registry: end the response.
                last_chunk(&mut conn.out);
                return Ok(Flow::KeepAlive);
            }
        }
    }
}

enum Wake {
    Event(Arc<Event>),
    Closed,
    WatcherGone,
}

enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Waits for the watcher's next event while reading the socket, so a client that goes away
/// frees its watcher at once. Bytes the client sends meanwhile (a pipelined request) are kept.
async fn wait_event(conn: &mut Conn, rx: &flume::Receiver<Arc<Event>>) -> Wake {
    loop {
        if conn.inbuf.len() - conn.start >= REQUEST_HEADER_BYTES_MAX {
            return match rx.recv_async().await {
                Ok(ev) => Wake::Event(ev),
                Err(_) => Wake::WatcherGone,
            };
        }
        let canceller = Canceller::new();
        let mut got = Vec::new();
        let (event, read) = {
            let mut read = pin!(conn
                .stream
                .cancelable_read_into(&mut got, canceller.handle()));
            let mut recv = pin!(rx.recv_async());
            let which = std::future::poll_fn(|cx| {
                if let Poll::Ready(v) = recv.as_mut().poll(cx) {
                    return Poll::Ready(Either::Left(v));
                }
                if let Poll::Ready(v) = read.as_mut().poll(cx) {
                    return Poll::Ready(Either::Right(v));
                }
                Poll::Pending
            })
            .await;
            match which {
                Either::Left(ev) => {
                    // The read is cancelled; what it got before is kept (TLS: decrypted).
                    canceller.cancel();
                    (Some(ev), read.await)
                }
                Either::Right(res) => (None, res),
            }
        };
        conn.inbuf.extend_from_slice(&got);
        match (event, read) {
            (_, Ok(0)) | (None, Err(_)) => return Wake::Closed,
            (Some(Ok(ev)), _) => return Wake::Event(ev),
            (Some(Err(_)), _) => return Wake::WatcherGone,
            (None, Ok(_)) => {}
        }
    }
}
