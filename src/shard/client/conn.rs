//! A connection: its buffers, its loop (read, frame, answer in order, flush) and the
//! dispatch of one framed request to its handler. The bytes of every answer are written by
//! `http::response`.
//!
//! A connection is one task. Requests may be pipelined: each is answered into the one output
//! buffer, which is flushed when the input runs dry (or grows past
//! `RESPONSE_BUFFER_FLUSH_BYTES`). A framing error is answered and closes the connection.

use super::admin::{member_change, serve_other};
use super::auth::{Caller, Credentials};
use super::keys::keys;
use super::ShardCtx;
use crate::auth::AuthState;
use crate::http::form::unescape;
use crate::http::parse::{Method, Parsed, Request, RequestParser};
use crate::http::response;
use crate::http::route::{route, KeyRequest, Route, KEYS_PREFIX};
use crate::limits::RESPONSE_BUFFER_FLUSH_BYTES;
use crate::shard::tls::{Accepted, Stream};
use ringd_store::{Error, ErrorCode};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A connection with a partial request buffered for this long is closed (slowloris).
const PARTIAL_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What to do with the connection after a response.
#[derive(PartialEq, Eq)]
pub(super) enum Flow {
    KeepAlive,
    Close,
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

    fn compact(&mut self) {
        if self.start == self.inbuf.len() {
            self.inbuf.clear();
        } else if self.start > 0 {
            self.inbuf.drain(..self.start);
        }
        self.start = 0;
    }
}

pub(super) async fn serve_conn(ctx: &Rc<ShardCtx>, accepted: Accepted) {
    let mut conn = Conn {
        stream: accepted.stream,
        client_cn: accepted.client_cn,
        inbuf: Vec::with_capacity(4096),
        start: 0,
        out: Vec::with_capacity(4096),
    };
    if serve_requests(ctx, &mut conn).await.is_ok() {
        conn.stream.close().await;
    }
}

/// The connection's loop: read, frame, answer, flush; Ok when it ends cleanly.
async fn serve_requests(ctx: &Rc<ShardCtx>, conn: &mut Conn) -> std::io::Result<()> {
    let mut parser = RequestParser::new(ctx.shared.max_request_bytes);
    loop {
        loop {
            let (n, parsed) = parser.parse(&conn.inbuf[conn.start..]);
            conn.start += n;
            match parsed {
                Parsed::Request(req) => {
                    if handle(ctx, req, conn).await? == Flow::Close {
                        return conn.flush().await;
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
                    return conn.flush().await;
                }
            }
        }
        conn.flush().await?;
        conn.compact();
        if conn.inbuf.capacity() - conn.inbuf.len() < 4096 {
            conn.inbuf.reserve(8192);
        }
        let len = conn.inbuf.len();
        let buf = std::mem::take(&mut conn.inbuf);
        let read = conn.stream.read_into(buf);
        let (res, buf) = if parser.is_idle() && len == 0 {
            read.await
        } else {
            match monoio::time::timeout(PARTIAL_REQUEST_TIMEOUT, read).await {
                Ok(r) => r,
                Err(_) => return Ok(()),
            }
        };
        conn.inbuf = buf;
        match res {
            Ok(0) | Err(_) => return Ok(()),
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

async fn handle(ctx: &Rc<ShardCtx>, req: Request, conn: &mut Conn) -> std::io::Result<Flow> {
    let started = Instant::now();
    let head = req.method == Method::Head;
    let keep = if req.keep_alive {
        Flow::KeepAlive
    } else {
        Flow::Close
    };
    let before = conn.out.len();
    // The auth state only when checks are on: no shared reference count touched otherwise.
    let auth = {
        let p = ctx.shared.published.load();
        p.auth.enabled.then(|| p.auth.clone())
    };
    let route = route(&req);
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
                .is_some_and(|(a, w)| !keys_allowed(a, w, &req, &kr)) =>
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
        Route::Keys(Ok(kr)) => {
            let f = keys(ctx, kr, conn).await?;
            if f == Flow::Close {
                Flow::Close
            } else {
                keep
            }
        }
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
    let status = response::parse_status(&conn.out[before.min(conn.out.len())..]).unwrap_or(200);
    let method = req.method.as_str();
    ctx.shared.counters[ctx.id].record(method, status, started.elapsed().as_micros() as u64);
    Ok(flow)
}
