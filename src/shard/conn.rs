//! A client shard: its executor, its listeners, its connections and its watcher registry.
//!
//! Each connection is one task: read into a bounded buffer, frame requests (pipelining
//! allowed), answer each in order into one output buffer, flush when the input runs dry.
//! Reads are answered here from the published view; writes go to the raft shard's mailbox
//! and wait for its reply; watches register in this shard's registry.

use super::{Proposal, Reply, ReplyTo, ShardMsg, Shared};
use crate::http::parse::{FramingError, Method, Parsed, Request, RequestParser};
use crate::http::render;
use crate::http::route::{route, KeyOp, KeyRequest, Route, StatsKind};
use crate::limits::{
    CONNECTIONS_PER_SHARD_MAX, REQUEST_HEADER_BYTES_MAX, RESPONSE_BUFFER_FLUSH_BYTES,
};
use crate::watch::registry::Registry;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, CancelableAsyncReadRent, Canceller};
use monoio::net::{TcpListener, TcpStream};
use ringd_store::{Action, Error, ErrorCode, Event};
use std::cell::RefCell;
use std::future::Future;
use std::io::Write;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// A connection with a partial request buffered for this long is closed (slowloris).
const PARTIAL_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

struct ShardCtx {
    id: usize,
    shared: Arc<Shared>,
    mailbox: flume::Sender<Proposal>,
    registry: RefCell<Registry>,
    connections: std::cell::Cell<usize>,
    /// Proposals of this shard waiting for the raft shard's reply, by id.
    pending: RefCell<std::collections::HashMap<u64, Rc<ReplySlot>>>,
    next_id: std::cell::Cell<u64>,
    /// X-Etcd-Cluster-Id, rendered once (it is on every keys response).
    cid: String,
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

/// Builds the shard's executor and serves until the process exits.
pub fn shard_main(
    id: usize,
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    mailbox: flume::Sender<Proposal>,
    events: flume::Receiver<ShardMsg>,
) {
    let force_epoll = std::env::var_os("RINGD_FORCE_EPOLL").is_some_and(|v| v == "1");
    let uring = if force_epoll {
        Err(std::io::Error::other("RINGD_FORCE_EPOLL=1"))
    } else {
        // IORING_SETUP_COOP_TASKRUN: completions are run when this thread next enters the
        // kernel (it does so to submit, and to wait) instead of by interrupting it with an
        // IPI. `perf/ab.sh` put at 64 connections: 56-71k -> 69-77k req/s, 12.9-16.6 ->
        // 11.5-12.8 us of server CPU per PUT; GET unchanged. Kernels before 5.19 refuse the
        // flag: then the ring is built without it.
        let mut coop = io_uring::IoUring::builder();
        coop.setup_coop_taskrun();
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .uring_builder(coop)
            .enable_timer()
            .build()
            .or_else(|e| {
                tracing::debug!(shard = id, error = %e, "io_uring without COOP_TASKRUN");
                monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build()
            })
    };
    let mut rt = match uring {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(shard = id, error = %e, "io_uring runtime unavailable, using epoll");
            match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
            {
                Ok(rt) => rt.into(),
                Err(e) => {
                    tracing::error!(shard = id, error = %e, "cannot build any runtime");
                    std::process::exit(1);
                }
            }
        }
    };
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
            id,
            shared,
            mailbox,
            registry: RefCell::new(Registry::default()),
            connections: std::cell::Cell::new(0),
            pending: RefCell::new(std::collections::HashMap::new()),
            next_id: std::cell::Cell::new(0),
        });
        monoio::spawn(dispatch_loop(ctx.clone(), events));
        let mut tasks = Vec::new();
        for l in listeners {
            match TcpListener::from_std(l) {
                Ok(l) => tasks.push(monoio::spawn(accept_loop(ctx.clone(), l))),
                Err(e) => tracing::error!(shard = id, error = %e, "cannot adopt listener"),
            }
        }
        for t in tasks {
            t.await;
        }
    });
}

async fn dispatch_loop(ctx: Rc<ShardCtx>, inbox: flume::Receiver<ShardMsg>) {
    while let Ok(msg) = inbox.recv_async().await {
        if let Some(events) = &msg.events {
            let mut reg = ctx.registry.borrow_mut();
            reg.dispatch(events);
            ctx.shared.counters[ctx.id]
                .watchers
                .store(reg.len() as u64, Ordering::Relaxed);
        }
        let mut pending = ctx.pending.borrow_mut();
        for (id, reply) in msg.replies {
            if let Some(slot) = pending.remove(&id) {
                slot.fill(reply);
            }
        }
    }
}

async fn accept_loop(ctx: Rc<ShardCtx>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if ctx.connections.get() >= CONNECTIONS_PER_SHARD_MAX {
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                ctx.connections.set(ctx.connections.get() + 1);
                ctx.shared.counters[ctx.id]
                    .connections
                    .fetch_add(1, Ordering::Relaxed);
                let ctx2 = ctx.clone();
                monoio::spawn(async move {
                    let _ = serve_conn(&ctx2, stream).await;
                    ctx2.connections.set(ctx2.connections.get() - 1);
                    ctx2.shared.counters[ctx2.id]
                        .connections
                        .fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(shard = ctx.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// What to do with the connection after a response.
#[derive(PartialEq, Eq)]
enum Flow {
    KeepAlive,
    Close,
}

struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet parsed are `inbuf[start..]`.
    inbuf: Vec<u8>,
    start: usize,
    out: Vec<u8>,
}

impl Conn {
    async fn flush(&mut self) -> std::io::Result<()> {
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

async fn serve_conn(ctx: &Rc<ShardCtx>, stream: TcpStream) -> std::io::Result<()> {
    let mut conn = Conn {
        stream,
        inbuf: Vec::with_capacity(4096),
        start: 0,
        out: Vec::with_capacity(4096),
    };
    let mut parser = RequestParser::new(ctx.shared.max_request_bytes);
    loop {
        loop {
            let (n, parsed) = parser.parse(&conn.inbuf[conn.start..]);
            conn.start += n;
            match parsed {
                Parsed::Request(req) => {
                    if handle(ctx, req, &mut conn).await? == Flow::Close {
                        return conn.flush().await;
                    }
                    if conn.out.len() >= RESPONSE_BUFFER_FLUSH_BYTES {
                        conn.flush().await?;
                    }
                }
                Parsed::NeedMore { send_continue } => {
                    if send_continue {
                        conn.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    break;
                }
                Parsed::Error(e) => {
                    framing_error(&mut conn.out, e);
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
        let read = conn
            .stream
            .read(monoio::buf::IoBufMut::slice_mut(buf, len..));
        let (res, slice) = if parser.is_idle() && len == 0 {
            read.await
        } else {
            match monoio::time::timeout(PARTIAL_REQUEST_TIMEOUT, read).await {
                Ok(r) => r,
                Err(_) => return Ok(()),
            }
        };
        conn.inbuf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

fn framing_error(out: &mut Vec<u8>, e: FramingError) {
    let body = format!("{} {}", e.status, e.reason);
    write_head(
        out,
        e.status,
        Some("text/plain; charset=utf-8"),
        &[("Connection", "close")],
        Some(body.len()),
    );
    out.extend_from_slice(body.as_bytes());
}

thread_local! {
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

fn write_date(out: &mut Vec<u8>) {
    let now = super::unix_now_ns() / 1_000_000_000;
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != now {
            *d = (now, render::http_date(now));
        }
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(d.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// Status line, CORS headers (etcd sends them on every response), content type, extra
/// headers, Date, and Content-Length (or chunked when `content_length` is None).
fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: Option<&str>,
    extra: &[(&str, &str)],
    content_length: Option<usize>,
) {
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status, render::reason(status));
    out.extend_from_slice(
        b"Access-Control-Allow-Headers: accept, content-type, authorization\r\n\
          Access-Control-Allow-Methods: POST, GET, OPTIONS, PUT, DELETE\r\n\
          Access-Control-Allow-Origin: *\r\n",
    );
    if let Some(ct) = content_type {
        let _ = write!(out, "Content-Type: {ct}\r\n");
    }
    for (k, v) in extra {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    write_date(out);
    match content_length {
        Some(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n\r\n");
        }
        None => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n"),
    }
}

/// A complete response with a body (dropped for HEAD, Content-Length kept).
fn respond(
    out: &mut Vec<u8>,
    head: bool,
    status: u16,
    content_type: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) {
    write_head(out, status, content_type, extra, Some(body.len()));
    if !head {
        out.extend_from_slice(body);
    }
}

fn json(out: &mut Vec<u8>, head: bool, status: u16, extra: &[(&str, &str)], body: &[u8]) {
    respond(out, head, status, Some("application/json"), extra, body);
}

fn message_response(out: &mut Vec<u8>, head: bool, status: u16, msg: &str) {
    let mut body = Vec::new();
    render::message(&mut body, msg);
    json(out, head, status, &[], &body);
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
    let flow = match route(&req) {
        Route::Keys(Ok(kr)) => {
            let f = keys(ctx, kr, conn).await?;
            if f == Flow::Close {
                Flow::Close
            } else {
                keep
            }
        }
        Route::Malformed => {
            conn.out.extend_from_slice(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request",
            );
            Flow::Close
        }
        other => {
            serve_other(ctx, other, head, &mut conn.out);
            keep
        }
    };
    let status = parse_status(&conn.out[before.min(conn.out.len())..]).unwrap_or(200);
    let method = req.method.as_str();
    ctx.shared.counters[ctx.id].record(method, status, started.elapsed().as_micros() as u64);
    Ok(flow)
}

fn parse_status(resp: &[u8]) -> Option<u16> {
    let s = resp.get(9..12)?;
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn serve_other(ctx: &Rc<ShardCtx>, r: Route, head: bool, out: &mut Vec<u8>) {
    let shared = &ctx.shared;
    let cid = format!("{:x}", shared.cluster_id);
    match r {
        Route::Keys(Err(e)) => error_response(out, head, &cid, &e),
        Route::Keys(Ok(_)) => {}
        Route::Redirect {
            location,
            html_body,
        } => {
            if html_body {
                let body = format!(
                    "<a href=\"{}\">Moved Permanently</a>.\n\n",
                    html_escape(&location)
                );
                respond(
                    out,
                    head,
                    301,
                    Some("text/html; charset=utf-8"),
                    &[("Location", &location)],
                    body.as_bytes(),
                );
            } else {
                respond(out, head, 301, None, &[("Location", &location)], b"");
            }
        }
        Route::Options => respond(out, true, 200, None, &[], b""),
        Route::MethodNotAllowed { allow, cluster_id } => {
            let mut extra: Vec<(&str, &str)> = Vec::new();
            if let Some(a) = allow {
                extra.push(("Allow", a));
            }
            if cluster_id {
                extra.push(("X-Etcd-Cluster-Id", &cid));
            }
            extra.push(("X-Content-Type-Options", "nosniff"));
            respond(
                out,
                head,
                405,
                Some("text/plain; charset=utf-8"),
                &extra,
                b"Method Not Allowed\n",
            );
        }
        Route::NotFound => respond(
            out,
            head,
            404,
            Some("text/plain; charset=utf-8"),
            &[("X-Content-Type-Options", "nosniff")],
            b"404 page not found\n",
        ),
        Route::Malformed => {}
        Route::Version => json(
            out,
            head,
            200,
            &[],
            br#"{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}"#,
        ),
        Route::Health => respond(
            out,
            head,
            200,
            Some("text/plain; charset=utf-8"),
            &[],
            br#"{"health":"true"}"#,
        ),
        Route::Machines => {
            let urls: Vec<&str> = shared
                .members
                .iter()
                .flat_map(|m| m.client_urls.iter().map(String::as_str))
                .collect();
            respond(
                out,
                head,
                200,
                Some("text/plain; charset=utf-8"),
                &[],
                urls.join(", ").as_bytes(),
            );
        }
        Route::Members {
            method,
            rest,
            content_type,
            body,
        } => members(
            ctx,
            &method,
            &rest,
            content_type.as_deref(),
            &body,
            head,
            out,
        ),
        Route::Stats(kind) => stats(ctx, kind, head, out),
        Route::Metrics => {
            let body = metrics(ctx);
            respond(
                out,
                head,
                200,
                Some("text/plain; version=0.0.4"),
                &[],
                body.as_bytes(),
            );
        }
        Route::AuthEnable => json(out, head, 200, &[], b"{\"enabled\":false}\n"),
        Route::AuthOther => message_response(
            out,
            head,
            501,
            "ringd: the v2 auth API is not implemented yet",
        ),
    }
}

/// Go's html.EscapeString as http.Redirect applies it to the href.
fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

/// etcd's membersHandler for a one-member cluster: listing, leader, and the validation of
/// add/update/remove exactly as etcd answers it; a change that would need reconfiguration is
/// answered 501 until issue "cluster" implements it.
fn members(
    ctx: &Rc<ShardCtx>,
    method: &Method,
    rest: &str,
    content_type: Option<&str>,
    body: &[u8],
    head: bool,
    out: &mut Vec<u8>,
) {
    let shared = &ctx.shared;
    let cid = format!("{:x}", shared.cluster_id);
    let msg = |out: &mut Vec<u8>, status: u16, m: &str| {
        let mut b = Vec::new();
        render::message(&mut b, m);
        json(out, head, status, &[("X-Etcd-Cluster-Id", &cid)], &b);
    };
    let find = |id: &str| {
        u64::from_str_radix(id, 16)
            .ok()
            .and_then(|id| shared.members.iter().find(|m| m.id == id))
    };
    match method {
        Method::Get => match rest {
            "" => {
                let mut b = b"{\"members\":[".to_vec();
                for (i, m) in shared.members.iter().enumerate() {
                    if i > 0 {
                        b.push(b',');
                    }
                    crate::members::render_member(&mut b, m);
                }
                b.extend_from_slice(b"]}\n");
                json(out, head, 200, &[("X-Etcd-Cluster-Id", &cid)], &b);
            }
            "leader" => {
                let mut b = Vec::new();
                if let Some(m) = shared.members.iter().find(|m| m.id == shared.self_id) {
                    crate::members::render_member(&mut b, m);
                }
                b.push(b'\n');
                json(out, head, 200, &[("X-Etcd-Cluster-Id", &cid)], &b);
            }
            _ => msg(out, 404, "Not found"),
        },
        Method::Delete | Method::Put if rest.is_empty() => respond(
            out,
            head,
            405,
            Some("text/plain; charset=utf-8"),
            &[
                ("X-Etcd-Cluster-Id", &cid),
                ("X-Content-Type-Options", "nosniff"),
            ],
            b"Method Not Allowed\n",
        ),
        Method::Delete => match find(rest) {
            None => msg(out, 404, &format!("No such member: {rest}")),
            Some(_) => msg(
                out,
                501,
                "ringd: member reconfiguration is not implemented yet",
            ),
        },
        Method::Post | Method::Put => {
            let urls = match crate::members::parse_member_request(content_type, body) {
                Ok(urls) => urls,
                Err((status, m)) => return msg(out, status, &m),
            };
            let taken = |id: Option<u64>| {
                shared
                    .members
                    .iter()
                    .any(|m| Some(m.id) != id && m.peer_urls.iter().any(|u| urls.contains(u)))
            };
            if *method == Method::Post {
                if taken(None) {
                    return msg(out, 409, "membership: peerURL exists");
                }
                return msg(
                    out,
                    501,
                    "ringd: member reconfiguration is not implemented yet",
                );
            }
            let Some(m) = find(rest) else {
                return msg(out, 404, &format!("No such member: {rest}"));
            };
            if taken(Some(m.id)) {
                return msg(out, 409, "membership: peerURL exists");
            }
            let mut same = m.peer_urls.clone();
            let mut new = urls.clone();
            same.sort();
            new.sort();
            if same == new {
                respond(out, head, 204, None, &[("X-Etcd-Cluster-Id", &cid)], b"");
            } else {
                msg(
                    out,
                    501,
                    "ringd: member reconfiguration is not implemented yet",
                );
            }
        }
        _ => msg(out, 404, "Not found"),
    }
}

fn stats(ctx: &Rc<ShardCtx>, kind: StatsKind, head: bool, out: &mut Vec<u8>) {
    let shared = &ctx.shared;
    let id = format!("{:x}", shared.self_id);
    let mut body = Vec::new();
    match kind {
        StatsKind::SelfStats => {
            let mut start = Vec::new();
            render::rfc3339_nano(&mut start, shared.start_unix_ns);
            let start = String::from_utf8_lossy(&start).into_owned();
            body.extend_from_slice(b"{\"name\":");
            render::json_str(&mut body, &shared.name);
            let uptime = crate::stats::go_duration(shared.start.elapsed().as_nanos() as u64);
            let _ = write!(
                body,
                ",\"id\":\"{id}\",\"state\":\"StateLeader\",\"startTime\":\"{start}\",\"leaderInfo\":{{\"leader\":\"{id}\",\"uptime\":\"{uptime}\",\"startTime\":\"{start}\"}},\"recvAppendRequestCnt\":0,\"sendAppendRequestCnt\":0}}"
            );
        }
        StatsKind::Leader => {
            let _ = write!(body, "{{\"leader\":\"{id}\",\"followers\":{{}}}}");
        }
        StatsKind::Store => {
            let p = shared.published.load();
            let w = &p.write_stats;
            let t = crate::stats::totals(&shared.counters);
            let _ = write!(
                body,
                "{{\"getsSuccess\":{},\"getsFail\":{},\"setsSuccess\":{},\"setsFail\":{},\"deleteSuccess\":{},\"deleteFail\":{},\"updateSuccess\":{},\"updateFail\":{},\"createSuccess\":{},\"createFail\":{},\"compareAndSwapSuccess\":{},\"compareAndSwapFail\":{},\"compareAndDeleteSuccess\":{},\"compareAndDeleteFail\":{},\"expireCount\":{},\"watchers\":{}}}",
                t.gets_success, t.gets_fail, w.sets_success, w.sets_fail, w.delete_success, w.delete_fail,
                w.update_success, w.update_fail, w.create_success, w.create_fail, w.compare_and_swap_success,
                w.compare_and_swap_fail, w.compare_and_delete_success, w.compare_and_delete_fail, w.expire_count, t.watchers
            );
        }
    }
    json(out, head, 200, &[], &body);
}

fn metrics(ctx: &Rc<ShardCtx>) -> String {
    use crate::stats::{CODES, LATENCY_BUCKETS_US, METHODS};
    let shared = &ctx.shared;
    let t = crate::stats::totals(&shared.counters);
    let p = shared.published.load();
    let mut s = String::new();
    use std::fmt::Write as _;
    s.push_str("# HELP ringd_http_requests_total HTTP requests by method and status code.\n# TYPE ringd_http_requests_total counter\n");
    for (m, c, v) in &t.requests {
        let code = CODES
            .get(*c)
            .map(|c| c.to_string())
            .unwrap_or_else(|| "other".into());
        let _ = writeln!(
            s,
            "ringd_http_requests_total{{method=\"{}\",code=\"{}\"}} {}",
            METHODS[*m], code, v
        );
    }
    s.push_str("# HELP ringd_http_request_duration_seconds Time from a request's arrival to its response being queued.\n# TYPE ringd_http_request_duration_seconds histogram\n");
    let mut cum = 0;
    for (i, le) in LATENCY_BUCKETS_US.iter().enumerate() {
        cum += t.latency[i];
        let _ = writeln!(
            s,
            "ringd_http_request_duration_seconds_bucket{{le=\"{}\"}} {}",
            *le as f64 / 1e6,
            cum
        );
    }
    cum += t.latency[LATENCY_BUCKETS_US.len()];
    let _ = writeln!(
        s,
        "ringd_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {cum}"
    );
    let _ = writeln!(
        s,
        "ringd_http_request_duration_seconds_sum {}",
        t.latency_sum_us as f64 / 1e6
    );
    let _ = writeln!(s, "ringd_http_request_duration_seconds_count {cum}");
    let gauges = [
        ("ringd_watchers", "Registered watchers.", t.watchers),
        (
            "ringd_client_connections",
            "Open client connections.",
            t.connections,
        ),
        (
            "ringd_keys",
            "Nodes (keys and directories) in the store.",
            p.view.node_count(),
        ),
        ("ringd_etcd_index", "Current etcd index.", p.view.index().0),
        (
            "ringd_raft_index",
            "Last applied log position.",
            p.raft_index.0,
        ),
        (
            "ringd_wal_fsyncs_total",
            "fdatasyncs of the log (one per raft batch).",
            shared.wal_syncs.load(Ordering::Relaxed),
        ),
        (
            "ringd_wal_entries_total",
            "Log entries made durable; divided by fsyncs, the average group-commit batch.",
            shared.wal_entries.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, v) in gauges {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
    s
}

fn error_response(out: &mut Vec<u8>, head: bool, cid: &str, e: &Error) {
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
    render::event(&mut body, ev, super::unix_now_ns(), omit);
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

async fn propose(ctx: &Rc<ShardCtx>, make: impl FnOnce(ReplyTo) -> Proposal) -> Reply {
    let id = ctx.next_id.get().wrapping_add(1);
    ctx.next_id.set(id);
    let slot = Rc::new(ReplySlot::default());
    ctx.pending.borrow_mut().insert(id, slot.clone());
    if ctx
        .mailbox
        .send_async(make(ReplyTo { shard: ctx.id, id }))
        .await
        .is_err()
    {
        ctx.pending.borrow_mut().remove(&id);
        return Reply {
            result: Err(Error::new(ErrorCode::RaftInternal, "raft shard stopped", 0)),
            raft_index: crate::raft::RaftIndex(0),
            raft_term: 0,
        };
    }
    slot.wait().await
}

async fn keys(ctx: &Rc<ShardCtx>, kr: KeyRequest, conn: &mut Conn) -> std::io::Result<Flow> {
    let cid = ctx.cid.as_str();
    let counters = &ctx.shared.counters[ctx.id];
    let head = kr.head;
    let reply = match kr.op {
        KeyOp::Get {
            key,
            recursive,
            sorted,
            quorum: false,
        } => {
            let p = ctx.shared.published.load();
            match p.view.get(&key, recursive, sorted) {
                Ok(ev) => {
                    counters.get_ok();
                    event_response(
                        &mut conn.out,
                        head,
                        cid,
                        &ev,
                        p.raft_index,
                        p.raft_term,
                        false,
                    );
                }
                Err(e) => {
                    counters.get_fail();
                    error_response(&mut conn.out, head, cid, &e);
                }
            }
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

fn chunk(out: &mut Vec<u8>, ev: &Event) {
    let mut body = Vec::with_capacity(256);
    render::event(&mut body, ev, super::unix_now_ns(), false);
    let _ = write!(out, "{:x}\r\n", body.len());
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\r\n");
}

/// A long poll or stream watch. Everything up to registration is synchronous, so no batch
/// can be dispatched between reading the current index and registering: the history covers
/// every event <= current, the registry every event > current.
async fn watch(
    ctx: &Rc<ShardCtx>,
    conn: &mut Conn,
    cid: &str,
    key: &str,
    recursive: bool,
    stream: bool,
    since: u64,
) -> std::io::Result<Flow> {
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
        ctx.shared.counters[ctx.id]
            .watchers
            .store(reg.len() as u64, Ordering::Relaxed);
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
        chunk(&mut conn.out, ev);
    }
    let Some(handle) = handle else {
        conn.out.extend_from_slice(b"0\r\n\r\n");
        return Ok(Flow::KeepAlive);
    };
    let unregister = |ctx: &Rc<ShardCtx>| {
        let mut reg = ctx.registry.borrow_mut();
        reg.remove(&handle.key, handle.id);
        ctx.shared.counters[ctx.id]
            .watchers
            .store(reg.len() as u64, Ordering::Relaxed);
    };
    if let Err(e) = conn.flush().await {
        unregister(ctx);
        return Err(e);
    }
    loop {
        match wait_event(conn, &handle.rx).await {
            Wake::Event(ev) => {
                chunk(&mut conn.out, &ev);
                if !stream {
                    conn.out.extend_from_slice(b"0\r\n\r\n");
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
                conn.out.extend_from_slice(b"0\r\n\r\n");
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
        let mut read = pin!(conn
            .stream
            .cancelable_read(Vec::with_capacity(1024), canceller.handle()));
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
                canceller.cancel();
                let (res, buf) = read.await;
                match res {
                    Ok(0) => return Wake::Closed,
                    Ok(n) => conn.inbuf.extend_from_slice(&buf[..n]),
                    Err(_) => {}
                }
                return match ev {
                    Ok(ev) => Wake::Event(ev),
                    Err(_) => Wake::WatcherGone,
                };
            }
            Either::Right((res, buf)) => match res {
                Ok(0) | Err(_) => return Wake::Closed,
                Ok(n) => conn.inbuf.extend_from_slice(&buf[..n]),
            },
        }
    }
}
