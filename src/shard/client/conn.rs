//! A connection: its buffers, its loop (read, frame, answer in order, flush) and the
//! dispatch of one framed request to its handler, plus the HTTP heads and bodies every
//! handler writes with.
//!
//! A connection is one task. Requests may be pipelined: each is answered into the one output
//! buffer, which is flushed when the input runs dry (or grows past
//! `RESPONSE_BUFFER_FLUSH_BYTES`). A framing error is answered and closes the connection.

use super::admin::serve_other;
use super::keys::keys;
use super::ShardCtx;
use crate::http::parse::{FramingError, Method, Parsed, Request, RequestParser};
use crate::http::render;
use crate::http::route::{route, Route};
use crate::limits::RESPONSE_BUFFER_FLUSH_BYTES;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::cell::RefCell;
use std::io::Write;
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
    pub(super) stream: TcpStream,
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

pub(super) async fn serve_conn(ctx: &Rc<ShardCtx>, stream: TcpStream) -> std::io::Result<()> {
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
    let now = crate::shard::unix_now_ns() / 1_000_000_000;
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
pub(super) fn write_head(
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
pub(super) fn respond(
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

pub(super) fn json(
    out: &mut Vec<u8>,
    head: bool,
    status: u16,
    extra: &[(&str, &str)],
    body: &[u8],
) {
    respond(out, head, status, Some("application/json"), extra, body);
}

pub(super) fn message_response(out: &mut Vec<u8>, head: bool, status: u16, msg: &str) {
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
