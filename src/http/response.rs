//! HTTP/1.1 responses as etcd's Go server writes them: the head (status line, the CORS headers
//! etcd sends on every response, content type, extra headers, Date, Content-Length or chunked),
//! whole responses, the chunks of a watch, and the fixed answers to requests that cannot be
//! framed. The shards decide what to answer; the bytes are written here, so that every byte
//! on the wire comes from `http`.
//!
//! The `Date` header is the one place `http` reads the wall clock: the value is cached per
//! thread and re-rendered once a second.

use super::parse::FramingError;
use super::render;
use ringd_store::Event;
use std::cell::RefCell;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// The interim response to `Expect: 100-continue`.
pub fn continue_100(out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
}

/// The answer to a request that was framed but cannot be routed (Go's net/http answers these
/// itself, before any handler, and closes).
pub fn malformed(out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request",
    );
}

/// The answer to a request that cannot be framed; the connection closes after it.
pub fn framing_error(out: &mut Vec<u8>, e: FramingError) {
    // Go's server writes these bytes itself, before any handler: the status line carries
    // the reason ("400 Bad Request: missing required Host header"), the body repeats it, and
    // there is no CORS header, Date or Content-Length (the connection closes).
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Connection: close\r\n\r\n{status} {reason}",
        status = e.status,
        reason = e.reason
    );
}

thread_local! {
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

fn unix_now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn write_date(out: &mut Vec<u8>) {
    let now = unix_now_secs();
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
pub fn write_head(
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
pub fn respond(
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

pub fn json(out: &mut Vec<u8>, head: bool, status: u16, extra: &[(&str, &str)], body: &[u8]) {
    respond(out, head, status, Some("application/json"), extra, body);
}

pub fn message_response(out: &mut Vec<u8>, head: bool, status: u16, msg: &str) {
    let mut body = Vec::new();
    render::message(&mut body, msg);
    json(out, head, status, &[], &body);
}

/// A 301 to `location`, with the small HTML body Go's http.Redirect writes for GET and HEAD
/// (`html_body`).
pub fn redirect(out: &mut Vec<u8>, head: bool, location: &str, html_body: bool) {
    if html_body {
        let body = format!(
            "<a href=\"{}\">Moved Permanently</a>.\n\n",
            html_escape(location)
        );
        respond(
            out,
            head,
            301,
            Some("text/html; charset=utf-8"),
            &[("Location", location)],
            body.as_bytes(),
        );
    } else {
        respond(out, head, 301, None, &[("Location", location)], b"");
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

/// One event of a watch as a chunk of a chunked response; `now` is for the nodes' `ttl`.
pub fn chunk(out: &mut Vec<u8>, ev: &Event, now: u64) {
    let mut body = Vec::with_capacity(256);
    render::event(&mut body, ev, now, false);
    let _ = write!(out, "{:x}\r\n", body.len());
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\r\n");
}

/// The zero-length chunk that ends a chunked response.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The zero-length chunk that ends a chunked response.
pub fn last_chunk(out: &mut Vec<u8>) {
    out.extend_from_slice(LAST_CHUNK);
}

/// A live watch event as a long poll ends with it: its chunk, then the last chunk. A stream
/// sends the same bytes without the last `LAST_CHUNK.len()`. A shard renders each event once
/// for all its watchers, as etcd renders an event once.
pub fn watch_event(ev: &Event, now: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    chunk(&mut out, ev, now);
    out.extend_from_slice(LAST_CHUNK);
    out
}

/// The status code of a response written by this module, read back from its status line.
pub fn parse_status(resp: &[u8]) -> Option<u16> {
    let s = resp.get(9..12)?;
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// The request that opens a raft or snapshot stream on a peer (docs/peer-wire.md).
pub fn peer_stream_request(path: &str, host: &str, cluster: u64, from: u64, to: u64) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nX-Ringd-Cluster-Id: {cluster:x}\r\nX-Ringd-From: {from:x}\r\nX-Ringd-To: {to:x}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(out: &[u8]) -> String {
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn a_head_carries_cors_date_and_length_and_head_drops_the_body() {
        let mut out = Vec::new();
        respond(
            &mut out,
            true,
            404,
            Some("text/plain"),
            &[("X-A", "b")],
            b"gone",
        );
        let s = text(&out);
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\nAccess-Control-Allow-Headers: "));
        assert!(s.contains("\r\nContent-Type: text/plain\r\nX-A: b\r\nDate: "));
        assert!(s.ends_with(" GMT\r\nContent-Length: 4\r\n\r\n"), "{s}");
        assert_eq!(parse_status(&out), Some(404));
    }

    #[test]
    fn a_redirect_escapes_its_html_body_as_go_does() {
        let mut out = Vec::new();
        redirect(&mut out, false, "/v2/keys/a?x=<'&\">", true);
        let s = text(&out);
        assert!(s.contains("Location: /v2/keys/a?x=<'&\">\r\n"));
        assert!(s.ends_with(
            "\r\n\r\n<a href=\"/v2/keys/a?x=&lt;&#39;&amp;&#34;&gt;\">Moved Permanently</a>.\n\n"
        ));
    }

    #[test]
    fn framing_errors_close_and_chunks_are_sized_in_hex() {
        let mut out = Vec::new();
        framing_error(
            &mut out,
            FramingError {
                status: 431,
                reason: "Request Header Fields Too Large",
            },
        );
        let s = text(&out);
        assert!(s.contains("\r\nConnection: close\r\n"));
        assert!(s.ends_with("\r\n\r\n431 Request Header Fields Too Large"));
        let mut out = Vec::new();
        last_chunk(&mut out);
        assert_eq!(text(&out), "0\r\n\r\n");
    }
}
