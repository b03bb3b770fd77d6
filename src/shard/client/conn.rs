//! A connection: its buffers, its loop (read, frame, answer in order, flush) and the
//! dispatch of one framed request to its handler. The bytes of every answer are written by
//! `http::response`.
//!
//! A connection is one task. Requests may be pipelined: each is answered into the one output
//! buffer, which is flushed when the input runs dry (or grows past
//! `RESPONSE_BUFFER_FLUSH_BYTES`). A framing error is answered and closes the connection.

use super::admin::{member_change, serve_other};
use super::keys::keys;
use super::ShardCtx;
use crate::http::parse::{Method, Parsed, Request, RequestParser};
use crate::http::response;
use crate::http::route::{route, Route};
use crate::limits::RESPONSE_BUFFER_FLUSH_BYTES;
use crate::shard::tls::{Accepted, Stream};
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
    #[allow(dead_code)] // read by the v2 auth work (issue 10)
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
