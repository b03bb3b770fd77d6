//! A connection: its buffers, its loop (read, frame, answer in order, flush) and the
//! dispatch of one framed request to its handler. The bytes of every answer are written by
//! `http::response`.
//!
//! A connection is one task. Requests may be pipelined: each is answered into the one output
//! buffer, which is flushed when the input runs dry (or grows past
//! `RESPONSE_BUFFER_FLUSH_BYTES`). A framing error is answered and closes the connection.
//!
//! The task is kept small, because an idle watcher is nothing but its connection's task: a
//! plain GET is answered without an await; any request that may wait (a proposal, bcrypt, a
//! watch's set-up) runs in a boxed future of its own, so the task's own state does not carry
//! the largest of them; a registered watch is waited on here, at the top of the loop, with
//! the buffers let go (`watch::wait`).

use super::admin::{member_change, serve_other};
use super::auth::{Caller, Credentials};
use super::keys::keys;
use super::{ShardCtx, Watcher};
use crate::auth::AuthState;
use crate::http::form::unescape;
use crate::http::parse::{Method, Parsed, Request, RequestParser};
use crate::http::response;
use crate::http::route::{route, KeyOp, KeyRequest, Route, KEYS_PREFIX};
use crate::limits::RESPONSE_BUFFER_FLUSH_BYTES;
use crate::shard::tls::{Accepted, Acceptor, Stream};
use monoio::net::TcpStream;
use ringd_store::{Error, ErrorCode};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connection with a partial request buffered for this long is closed (slowloris).
const PARTIAL_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Input buffer bytes kept free for the next read.
const READ_BUFFER_BYTES: usize = 4096;

/// What to do with the connection after a response.
pub(super) enum Flow {
    KeepAlive,
    Close,
    /// A watch is registered and its response head written: wait for its event(s).
    Watch(Rc<Watcher>),
}

pub(super) struct Conn {
    pub(super) stream: Stream,
    /// The CN of the client certificate under `--client-cert-auth`: the v2 user of requests
    /// without an Authorization header (WIRE.md, "TLS and client certificates").
    pub(super) client_cn: Option<String>,
    /// Bytes read and not yet parsed are `inbuf[start..]`.
    pub(super) inbuf: Vec<u8>,
    pub(super) start: usize,
    pub(super) out: Vec<u8>,
}

impl Conn {
    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.out);
        let (res, mut buf) = self.stream.write_all(buf).await;
        buf.clear();
        self.out = buf;
        res.map(|_| ())
    }

    /// `flush` for a small answer on a plain connection (a watch's head): sent from here
    /// when the socket takes it whole, through the ring otherwise. Not for every answer:
    /// 64 connections of GETs cost 7.1-8.3 us of server CPU per request through the ring,
    /// 9.4-10.3 with every answer sent this way (`perf/ab.sh`, alternating; PUT 15-18 vs
    /// 18-21): the ring batches the sends of a busy shard into one system call.
    pub(super) async fn flush_now(&mut self) -> std::io::Result<()> {
        if let (Some(fd), false) = (self.stream.plain_fd(), self.out.is_empty()) {
            match crate::shard::tls::send_now(fd, &self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        self.flush().await
    }

    fn compact(&mut self) {
        if self.start == self.inbuf.len() {
            self.inbuf.clear();
        } else if self.start > 0 {
            self.inbuf.drain(..self.start);
        }
        self.start = 0;
    }

    /// Lets go of the buffers before the connection waits idle on a watcher (they come back
    /// on demand): unread input is kept, whatever its size.
    pub(super) fn release_buffers(&mut self) {
        self.compact();
        if self.inbuf.is_empty() {
            self.inbuf = Vec::new();
        }
        if self.out.is_empty() {
            self.out = Vec::new();
        }
        self.stream.release_buffers();
    }

    /// After a large request or response: back to the usual sizes, so a connection that
    /// once sent a 1.5 MiB value does not hold it while idle.
    fn shrink(&mut self) {
        if self.out.capacity() > RESPONSE_BUFFER_FLUSH_BYTES / 4 {
            self.out = Vec::with_capacity(READ_BUFFER_BYTES);
        }
        if self.inbuf.is_empty() && self.inbuf.capacity() > 4 * READ_BUFFER_BYTES {
            self.inbuf = Vec::with_capacity(READ_BUFFER_BYTES);
        }
    }
}

/// An accepted connection, before its TLS handshake if any (boxed: the task's arguments stay
/// in its state for its whole life, so they are kept to a pointer).
pub(super) struct Accept {
    pub(super) tcp: TcpStream,
    pub(super) remote: SocketAddr,
    pub(super) tls: Option<Rc<Acceptor>>,
}

/// A connection's task, from its accept to its close. Its state is what an idle watcher
/// costs: the connection and the wait, nothing else (the TLS handshake, reading and
/// answering run in boxed futures, let go when done).
pub(super) async fn serve_conn(ctx: Rc<ShardCtx>, accept: Box<Accept>) {
    // One `Option<Conn>` used in place: a binding moved out of it would be a second copy of
    // the connection in the task's state (and so would a nested `async fn` taking it).
    let mut conn = open(accept).await;
    if let Some(c) = conn.as_mut() {
        let clean = loop {
            // Reading and answering run in a boxed future, let go while the connection
            // waits on a watcher.
            let (w, close_after) = match Box::pin(serve_requests(&ctx, c)).await {
                Ok(Some(watch)) => watch,
                Ok(None) => break true,
                Err(_) => break false,
            };
            match super::watch::wait(&ctx, c, w, !close_after).await {
                Ok(Flow::KeepAlive) if !close_after => {}
                Ok(_) => break Box::pin(c.flush()).await.is_ok(),
                Err(_) => break false,
            }
        };
        // A TLS session says close_notify when the connection ends cleanly.
        if clean {
            c.stream.close().await;
        }
    }
    drop(conn);
    ctx.connections.set(ctx.connections.get() - 1);
    ctx.shared.counters[ctx.id]
        .connections
        .fetch_sub(1, Ordering::Relaxed);
}

/// The connection with its buffers, after the TLS handshake on an https listener (None: it
/// failed, and was logged by `tls`).
async fn open(accept: Box<Accept>) -> Option<Conn> {
    let Accept { tcp, remote, tls } = *accept;
    let Accepted { stream, client_cn } = match tls {
        None => Accepted {
            stream: Stream::Plain(tcp),
            client_cn: None,
        },
        Some(tls) => Box::pin(async move { tls.accept(tcp, remote).await }).await?,
    };
    Some(Conn {
        stream,
        client_cn,
        inbuf: Vec::with_capacity(READ_BUFFER_BYTES),
        start: 0,
        out: Vec::with_capacity(READ_BUFFER_BYTES),
    })
}

/// The connection's loop: read, frame, answer, flush. Ok(None) when it ends cleanly;
/// Ok(Some) when a watch was registered and its head flushed: the watcher, and whether the
/// connection closes after its response. The parser starts afresh each time: it is between
/// requests when a watch returns.
async fn serve_requests(
    ctx: &Rc<ShardCtx>,
    conn: &mut Conn,
) -> std::io::Result<Option<(Rc<Watcher>, bool)>> {
    let mut parser = RequestParser::new(ctx.shared.max_request_bytes);
    loop {
        loop {
            let (n, parsed) = parser.parse(&conn.inbuf[conn.start..]);
            conn.start += n;
            match parsed {
                Parsed::Request(req) => {
                    let close_after = !req.keep_alive;
                    let flow = match handle(ctx, req, conn) {
                        Handled::Now(flow) => flow,
                        Handled::Later(answer) => answer.await?,
                    };
                    match flow {
                        Flow::Watch(w) => {
                            if let Err(e) = conn.flush_now().await {
                                super::watch::unregister(ctx, &w);
                                return Err(e);
                            }
                            return Ok(Some((w, close_after)));
                        }
                        Flow::Close => return conn.flush().await.map(|_| None),
                        Flow::KeepAlive if close_after => return conn.flush().await.map(|_| None),
                        Flow::KeepAlive => {}
                    }
                    if conn.out.len() >= RESPONSE_BUFFER_FLUSH_BYTES {
                        conn.flush().await?;
                    }
                }
                Parsed::NeedMore { send_continue } => {
                    if send_continue {
                        response::continue_100(&mut conn.out);
                    }
                    break;
                }
                Parsed::Error(e) => {
                    response::framing_error(&mut conn.out, e);
                    return conn.flush().await.map(|_| None);
                }
            }
        }
        conn.flush().await?;
        conn.compact();
        conn.shrink();
        if conn.inbuf.capacity() - conn.inbuf.len() < READ_BUFFER_BYTES {
            conn.inbuf.reserve(2 * READ_BUFFER_BYTES);
        }
        let len = conn.inbuf.len();
        let buf = std::mem::take(&mut conn.inbuf);
        let read = conn.stream.read_into(buf);
        let (res, buf) = if parser.is_idle() && len == 0 {
            read.await
        } else {
            match monoio::time::timeout(PARTIAL_REQUEST_TIMEOUT, read).await {
                Ok(r) => r,
                Err(_) => return Ok(None),
            }
        };
        conn.inbuf = buf;
        match res {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// etcd's `hasKeyPrefixAccess` on the unescaped path after `/v2/keys` (a trailing slash
/// kept), with the request's `recursive` flag whatever the verb (a PUT or POST with
/// `recursive=true` needs a `*` pattern, as in etcd); every verb but GET and HEAD writes.
fn keys_allowed(auth: &AuthState, who: &Caller, req: &Request, kr: &KeyRequest) -> bool {
    let (raw, _) = req.path_and_query();
    let path = unescape(raw, false).unwrap_or_default();
    let key = path.strip_prefix(KEYS_PREFIX).unwrap_or(&path);
    let write = !matches!(req.method, Method::Get | Method::Head);
    super::auth::key_access(auth, who, key, kr.recursive, write)
}

/// A request answered at once, or the future that answers it.
enum Handled<'a> {
    Now(Flow),
    Later(Pin<Box<dyn Future<Output = std::io::Result<Flow>> + 'a>>),
}

/// Answers one request. A plain GET without auth is answered here, without an await;
/// anything else is answered (and recorded) by a boxed future, dropped once it has answered.
fn handle<'a>(ctx: &'a Rc<ShardCtx>, req: Request, conn: &'a mut Conn) -> Handled<'a> {
    let started = Instant::now();
    let before = conn.out.len();
    // The auth state only when checks are on: no shared reference count touched otherwise.
    let auth = {
        let p = ctx.shared.published.load();
        p.auth.enabled.then(|| p.auth.clone())
    };
    match route(&req) {
        Route::Keys(Ok(KeyRequest {
            op:
                KeyOp::Get {
                    key,
                    recursive,
                    sorted,
                    quorum: false,
                },
            head,
            ..
        })) if auth.is_none() => {
            super::keys::get(ctx, &mut conn.out, head, &key, recursive, sorted);
            record(ctx, &req, &conn.out[before..], started);
            Handled::Now(keep_alive(&req))
        }
        route => Handled::Later(Box::pin(async move {
            let flow = answer(ctx, &req, route, auth, conn).await?;
            record(ctx, &req, &conn.out[before.min(conn.out.len())..], started);
            Ok(flow)
        })),
    }
}

/// Counts a request by method and status (read back from its response) with its latency.
fn record(ctx: &ShardCtx, req: &Request, response: &[u8], started: Instant) {
    let status = response::parse_status(response).unwrap_or(200);
    let micros = started.elapsed().as_micros() as u64;
    ctx.shared.counters[ctx.id].record(req.method.as_str(), status, micros);
}

fn keep_alive(req: &Request) -> Flow {
    if req.keep_alive {
        Flow::KeepAlive
    } else {
        Flow::Close
    }
}

/// Any request but a plain GET without auth: credentials, permission checks, then its
/// handler.
async fn answer(
    ctx: &Rc<ShardCtx>,
    req: &Request,
    route: Route,
    auth: Option<Arc<AuthState>>,
    conn: &mut Conn,
) -> std::io::Result<Flow> {
    let head = req.method == Method::Head;
    let keep = keep_alive(req);
    let creds = Credentials {
        authorization: req.authorization.as_deref(),
        client_cn: conn.client_cn.as_deref(),
    };
    // Credentials are checked (bcrypt on a cache miss) only where etcd checks them.
    let needs_credentials = match &route {
        Route::Keys(Ok(_)) => true,
        Route::Members { method, .. } => !matches!(method, Method::Get | Method::Head),
        Route::Snapshot => true,
        _ => false,
    };
    let who = match &auth {
        Some(a) if needs_credentials => Some(super::auth::caller(ctx, a, creds).await),
        _ => None,
    };
    let flow = match route {
        Route::Keys(Ok(kr))
            if auth
                .as_ref()
                .zip(who.as_ref())
                .is_some_and(|(a, w)| !keys_allowed(a, w, req, &kr)) =>
        {
            let e = Error::new(ErrorCode::Unauthorized, "Insufficient credentials", 0);
            super::keys::error_response(&mut conn.out, head, &ctx.cid, &e);
            keep
        }
        Route::Auth {
            method,
            target,
            body,
        } => {
            let out = &mut conn.out;
            super::auth::auth_api(ctx, method, target, &body, creds, head, out).await;
            keep
        }
        Route::Members { ref method, .. }
            if !matches!(method, Method::Get | Method::Head)
                && auth
                    .as_ref()
                    .is_some_and(|a| !super::auth::has_root_access(a, who.as_ref())) =>
        {
            super::auth::no_auth(&mut conn.out, head);
            keep
        }
        // Root only, as etcd's v3 snapshot when auth is on.
        Route::Snapshot
            if auth
                .as_ref()
                .is_some_and(|a| !super::auth::has_root_access(a, who.as_ref())) =>
        {
            super::auth::no_auth(&mut conn.out, head);
            keep
        }
        Route::Snapshot => {
            super::backup::snapshot(ctx, conn).await?;
            keep
        }
        Route::Keys(Ok(kr)) => match keys(ctx, kr, conn).await? {
            Flow::KeepAlive => keep,
            flow => flow,
        },
        Route::Malformed => {
            response::malformed(&mut conn.out);
            Flow::Close
        }
        other => {
            if let Some(change) = serve_other(ctx, other, head, &mut conn.out) {
                member_change(ctx, change, head, &mut conn.out).await;
            }
            keep
        }
    };
    Ok(flow)
}
