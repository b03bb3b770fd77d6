//! Watches (`wait=true`): a long poll or a stream, answered first from the event ring's
//! history and then from this shard's watcher registry, as chunked responses.
//!
//! `watch` scans the history, registers the watcher and writes the response head; the
//! connection's task then
//! waits on it with `wait`, which holds no buffer: the socket is watched for readability
//! (no read buffer pinned in the kernel), the input and output buffers are let go, and the
//! event arrives already rendered (once per shard, `dispatch_loop`), so a long poll's answer
//! is one write of shared bytes. While a watcher waits, its connection still notices the
//! client going away, and frees its watcher at once.

use super::conn::{Conn, Flow};
use super::keys::error_response;
use super::{ShardCtx, Watcher};
use crate::http::response::{chunk, last_chunk, message_response, write_head, LAST_CHUNK};
use crate::limits::{
    REQUEST_HEADER_BYTES_MAX, RESPONSE_BUFFER_FLUSH_BYTES, WATCH_SCAN_CHUNK_EVENTS,
    WATCH_SCAN_PAUSE,
};
use crate::shard::Published;
use crate::watch::registry::Delivery;
use crate::watch::ring::Scan;
use bytes::Bytes;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

/// A long poll or stream watch. The history is scanned in steps of at most
/// `WATCH_SCAN_CHUNK_EVENTS` events, yielding to the shard's other tasks between steps (a
/// `waitIndex` a million events behind on an unrelated prefix must not stall the shard). The
/// last step and the registration are synchronous, so no batch can be dispatched between
/// reading the current index and registering: the history covers every event <= current,
/// the registry every event > current.
pub(super) async fn watch(
    ctx: &Rc<ShardCtx>,
    conn: &mut Conn,
    cid: &str,
    key: &str,
    recursive: bool,
    stream: bool,
    since: u64,
) -> std::io::Result<Flow> {
    let mut p = watch_view(ctx);
    let mut current = p.view.index().0;
    let mut since = if since == 0 { current + 1 } else { since };
    // The index the watch asked for (a stream's next after each hit): 401's cause names it.
    let mut asked = since;
    let mut head_written = false;
    loop {
        let mut budget = WATCH_SCAN_CHUNK_EVENTS;
        while since <= current && budget > 0 {
            let step =
                ctx.shared
                    .ring
                    .scan_from(key, recursive, asked, since, current, &mut budget);
            match step {
                Err(e) if !head_written => {
                    error_response(&mut conn.out, false, cid, &e);
                    return Ok(Flow::KeepAlive);
                }
                Err(_) => {
                    // A stream whose next event the history dropped while it caught up (the
                    // writer lapped it): end it; the client's next watch from there gets 401.
                    last_chunk(&mut conn.out);
                    return Ok(Flow::KeepAlive);
                }
                Ok(Scan::Found(ev)) => {
                    if !head_written {
                        watch_head(conn, cid, &p, current);
                        head_written = true;
                    }
                    chunk(&mut conn.out, &ev, crate::shard::unix_now_ns());
                    // etcd's long poll answers with the first hit; a stream goes on (unlike
                    // etcd, which falls silent after a history hit).
                    if !stream {
                        last_chunk(&mut conn.out);
                        return Ok(Flow::KeepAlive);
                    }
                    since = ev.index() + 1;
                    asked = since;
                    if conn.out.len() >= RESPONSE_BUFFER_FLUSH_BYTES {
                        break;
                    }
                }
                Ok(Scan::NotFound) => since = current + 1,
                Ok(Scan::Paused(next)) => since = next,
            }
        }
        if since > current {
            break;
        }
        // More history to scan: let the shard's other connections run (a stream sends what it
        // found so far), then go on up to the index current by then. The pause is a timer, so
        // the shard polls its I/O first: a task that wakes itself goes to the front of monoio's
        // run queue and, with other tasks ready, runs many steps before the I/O is polled
        // (measured beside watches a million events behind: GET p99 45 ms with a self-wake,
        // 4.6 ms with a wake from a task spawned behind the others).
        if head_written && !conn.out.is_empty() {
            conn.flush().await?;
        } else {
            monoio::time::sleep(WATCH_SCAN_PAUSE).await;
        }
        p = watch_view(ctx);
        current = p.view.index().0;
    }
    // Caught up to `current` without answering: a long poll that had no history hit, or a
    // stream (whatever it sent). Registered in the same synchronous step as the last scan.
    let watcher = {
        let mut reg = ctx.registry.borrow_mut();
        let w = reg.register(key, recursive, stream, since);
        ctx.watchers_now(reg.len());
        match w {
            Some(w) => w,
            None => {
                drop(reg);
                if head_written {
                    // A stream that caught up from the history but cannot be registered.
                    last_chunk(&mut conn.out);
                } else {
                    message_response(&mut conn.out, false, 503, "too many watchers");
                }
                return Ok(Flow::KeepAlive);
            }
        }
    };
    if !head_written {
        watch_head(conn, cid, &p, current);
    }
    Ok(Flow::Watch(watcher))
}

/// The published view, read after marking this shard as watching: from then on the raft
/// shard sends this shard every batch's events, or this read sees the view that holds them
/// (`Shared::watching`). Done again before every read, as the shard may clear the mark while
/// a scan yields (its last watcher gone), and the last read precedes the registration.
fn watch_view(ctx: &Rc<ShardCtx>) -> Arc<Published> {
    ctx.shared.watching[ctx.id].store(true, Ordering::SeqCst);
    std::sync::atomic::fence(Ordering::SeqCst);
    ctx.shared.published.load_full()
}

/// The head of a watch's chunked answer: `X-Etcd-Index` is the index the watch started at
/// (for a history hit, the current index, as etcd).
fn watch_head(conn: &mut Conn, cid: &str, p: &Published, current: u64) {
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
}

pub(super) fn unregister(ctx: &ShardCtx, w: &Watcher) {
    let mut reg = ctx.registry.borrow_mut();
    reg.remove(w);
    ctx.watchers_now(reg.len());
}

/// Waits for a registered watcher's events (its response head is flushed) and writes them:
/// a long poll's one event ends its response; a stream goes on until its client goes away
/// or it falls behind. This is all an idle watcher's task holds: the buffers are let go.
/// `keep_alive`: the connection goes on after the response (a long poll may then be answered
/// from `next`, see there).
pub(super) async fn wait(
    ctx: &ShardCtx,
    conn: &mut Conn,
    w: Rc<Watcher>,
    keep_alive: bool,
) -> std::io::Result<Flow> {
    conn.release_buffers();
    loop {
        let res = match next(conn, &w, keep_alive).await {
            // A long poll answered by `next`; the client's next request, if it sent one, is
            // in the input buffer.
            Wake::Answered => return Ok(Flow::KeepAlive),
            Wake::Event(bytes) if !w.is_stream() => {
                // The long poll's answer: the event's chunk and the last chunk, as rendered.
                match conn.stream.write_shared(bytes).await {
                    Ok(()) => return Ok(Flow::KeepAlive),
                    Err(e) => Err(e),
                }
            }
            Wake::Event(bytes) if w.pending() == 0 => {
                let chunk = bytes.slice(..bytes.len() - LAST_CHUNK.len());
                conn.stream.write_shared(chunk).await
            }
            // A stream behind by several events: one write for all of them (boxed: its
            // state need not be part of every idle watcher's).
            Wake::Event(bytes) => Box::pin(write_pending(conn, &w, bytes)).await,
            Wake::Closed => {
                unregister(ctx, &w);
                return Ok(Flow::Close);
            }
            Wake::Ended => {
                // A stream that fell behind (or a shard that lost a batch): end the response.
                last_chunk(&mut conn.out);
                return Ok(Flow::KeepAlive);
            }
        };
        if let Err(e) = res {
            unregister(ctx, &w);
            return Err(e);
        }
    }
}

/// Writes `first` and every event the stream watcher has pending, in as few writes as the
/// response buffer's bound allows (a backlog of large values is never copied whole).
async fn write_pending(conn: &mut Conn, w: &Watcher, first: Bytes) -> std::io::Result<()> {
    conn.out
        .extend_from_slice(&first[..first.len() - LAST_CHUNK.len()]);
    while let Some(Delivery::Event(b)) = w.try_next() {
        if conn.out.len() >= RESPONSE_BUFFER_FLUSH_BYTES {
            conn.flush().await?;
        }
        conn.out.extend_from_slice(&b[..b.len() - LAST_CHUNK.len()]);
    }
    conn.flush().await?;
    conn.release_buffers();
    Ok(())
}

enum Wake {
    Event(Bytes),
    /// A long poll's event was sent (`next`) and the socket became readable after it.
    Answered,
    Closed,
    Ended,
}

impl From<Delivery<Bytes>> for Wake {
    fn from(d: Delivery<Bytes>) -> Wake {
        match d {
            Delivery::Event(b) => Wake::Event(b),
            Delivery::Ended => Wake::Ended,
        }
    }
}

enum Either<A, B> {
    Left(A),
    Right(B),
    /// A long poll's answer was sent (and a request is already buffered behind it).
    Answered,
}

/// Waits for the watcher's next event while watching the socket, so a client that goes away
/// frees its watcher at once. Bytes the client sends meanwhile (a pipelined request) are
/// read and kept, up to `REQUEST_HEADER_BYTES_MAX`.
///
/// A long poll on a plain keep-alive connection is answered from here: its event is sent
/// with `send_now` as soon as it arrives, and the wait for readability goes on, now for the
/// client's next request (`Wake::Answered` once it is readable). The pending readiness
/// poll is neither cancelled nor submitted again, and the answer costs no submission: in a
/// fan-out to 10,000 watchers, the cancellations alone were a tenth of the shard's time.
/// When the socket does not take the whole answer, the rest goes the usual way.
async fn next(conn: &mut Conn, w: &Watcher, keep_alive: bool) -> Wake {
    let answer_here = if keep_alive && !w.is_stream() {
        conn.stream.plain_fd()
    } else {
        None
    };
    let mut answered = false;
    loop {
        // A request the client pipelined behind the watch, already read: once the event is
        // sent, it is next.
        let buffered = conn.inbuf.len() > conn.start;
        if conn.inbuf.len() - conn.start >= REQUEST_HEADER_BYTES_MAX {
            if answered {
                return Wake::Answered;
            }
            return std::future::poll_fn(|cx| w.poll_next(cx)).await.into();
        }
        let ready = {
            let mut readable = pin!(conn.stream.readable());
            std::future::poll_fn(|cx| {
                if !answered {
                    if let Poll::Ready(d) = w.poll_next(cx) {
                        let (Delivery::Event(bytes), Some(fd)) = (&d, answer_here) else {
                            return Poll::Ready(Either::Left(d));
                        };
                        match crate::shard::tls::send_now(fd, bytes) {
                            Ok(n) if n == bytes.len() && buffered => {
                                return Poll::Ready(Either::Answered)
                            }
                            Ok(n) if n == bytes.len() => answered = true,
                            Ok(n) => {
                                let rest = bytes.slice(n..);
                                return Poll::Ready(Either::Left(Delivery::Event(rest)));
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                return Poll::Ready(Either::Left(d));
                            }
                            Err(e) => return Poll::Ready(Either::Right(Err(e))),
                        }
                    }
                }
                if let Poll::Ready(r) = readable.as_mut().poll(cx) {
                    return Poll::Ready(Either::Right(r));
                }
                Poll::Pending
            })
            .await
        };
        match ready {
            Either::Left(d) => return d.into(),
            Either::Answered => return Wake::Answered,
            Either::Right(Err(_)) => return Wake::Closed,
            // Boxed: rare (a pipelined request), and no part of an idle watcher's state.
            Either::Right(Ok(())) => {
                match Box::pin(conn.stream.read_ready(&mut conn.inbuf)).await {
                    Ok(true) if answered && conn.inbuf.len() > conn.start => return Wake::Answered,
                    Ok(true) => {}
                    Ok(false) | Err(_) => return Wake::Closed,
                }
            }
        }
    }
}
