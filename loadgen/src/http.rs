//! A small HTTP/1.1 client codec: target URLs, request encoding and an
//! incremental response parser (httparse for the head; Content-Length and
//! chunked bodies). Nothing here panics on input from the network.

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use crate::tls::TlsTarget;

/// Largest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest response body accepted (and so the largest read buffer).
pub const MAX_BODY: usize = 64 << 20;
const MAX_HEADERS: usize = 48;
const MAX_CHUNK_LINE: usize = 1024;

/// Where requests go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The value for the Host header.
    pub host: String,
    pub addr: SocketAddr,
    /// An https:// URL: the name of the host to verify (and send as SNI),
    /// without brackets or port.
    pub https: Option<String>,
    /// Set by `with_tls` for https targets before a run.
    pub tls: Option<TlsTarget>,
    /// The value of the Authorization header of every request (`--user`), if any.
    pub authorization: Option<String>,
}

impl Target {
    /// Attaches the TLS client configuration to an https target.
    pub fn with_tls(mut self, config: &Arc<rustls::ClientConfig>) -> Result<Target, String> {
        if let Some(name) = &self.https {
            self.tls = Some(TlsTarget {
                config: config.clone(),
                name: crate::tls::server_name(name)?,
            });
        }
        Ok(self)
    }

    /// The header lines of every request to this target, rendered once per run.
    /// `close`: ask the server to close the connection after its answer (`--new-conn`).
    pub fn headers(&self, close: bool) -> ReqHeaders {
        ReqHeaders::new(&self.host, self.authorization.as_deref(), close)
    }
}

/// `Authorization: Basic ...` for `user:password` (RFC 7617, as etcdctl's `--username`
/// and Go's `Request.SetBasicAuth` send it).
pub fn basic_authorization(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// The constant header lines of every request of a run (Host, and Authorization and
/// `Connection: close` when asked for), each ending in CRLF: rendered once, so sending a
/// request copies one slice instead of formatting headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReqHeaders(Vec<u8>);

impl ReqHeaders {
    pub fn new(host: &str, authorization: Option<&str>, close: bool) -> ReqHeaders {
        let mut h = Vec::with_capacity(64);
        h.extend_from_slice(b"Host: ");
        h.extend_from_slice(host.as_bytes());
        h.extend_from_slice(b"\r\n");
        if let Some(a) = authorization {
            h.extend_from_slice(b"Authorization: ");
            h.extend_from_slice(a.as_bytes());
            h.extend_from_slice(b"\r\n");
        }
        if close {
            h.extend_from_slice(b"Connection: close\r\n");
        }
        ReqHeaders(h)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Parses `http://host[:port][/]` or `https://host[:port][/]` (ports 80 and
/// 443 by default).
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (rest, https) = if let Some(r) = url.strip_prefix("http://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, true)
    } else {
        return Err(format!(
            "{url}: the URL must start with http:// or https://"
        ));
    };
    let default_port = if https { 443 } else { 80 };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url}: no host"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, tail) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url}: bad IPv6 host"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| format!("{url}: bad port"))?,
            None if tail.is_empty() => default_port,
            None => return Err(format!("{url}: bad authority")),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>().map_err(|_| format!("{url}: bad port"))?,
            ),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("{url}: cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: {host} has no address"))?;
    Ok(Target {
        host: authority.to_string(),
        addr,
        https: https.then_some(host),
        tls: None,
        authorization: None,
    })
}

/// Percent-encodes a key path for /v2/keys (keeps '/' and unreserved bytes).
pub fn encode_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Appends a GET request. `path` is the full path including any query.
pub fn write_get(buf: &mut Vec<u8>, head: &ReqHeaders, path: &[&[u8]]) {
    buf.extend_from_slice(b"GET ");
    for p in path {
        buf.extend_from_slice(p);
    }
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    buf.extend_from_slice(head.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

/// Appends a request with a form body made of `body` pieces.
pub fn write_form(
    buf: &mut Vec<u8>,
    method: &str,
    head: &ReqHeaders,
    path: &[&[u8]],
    body: &[&[u8]],
) {
    let len: usize = body.iter().map(|b| b.len()).sum();
    buf.extend_from_slice(method.as_bytes());
    buf.push(b' ');
    for p in path {
        buf.extend_from_slice(p);
    }
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    buf.extend_from_slice(head.as_bytes());
    buf.extend_from_slice(b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: ");
    let _ = write!(buf, "{len}");
    buf.extend_from_slice(b"\r\n\r\n");
    for b in body {
        buf.extend_from_slice(b);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// httparse rejected the head.
    Head(String),
    HeadTooLarge,
    BodyTooLarge,
    BadContentLength,
    BadChunk,
    /// Neither Content-Length nor chunked on a response that has a body.
    NoLength,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Head(e) => write!(f, "bad response head: {e}"),
            HttpError::HeadTooLarge => write!(f, "response head too large"),
            HttpError::BodyTooLarge => write!(f, "response body too large"),
            HttpError::BadContentLength => write!(f, "bad Content-Length"),
            HttpError::BadChunk => write!(f, "bad chunked encoding"),
            HttpError::NoLength => write!(f, "response without length"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Length(usize),
    Chunked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the status line and headers including the blank line.
    pub len: usize,
    pub body: BodyKind,
    /// The server will close the connection after this response.
    pub close: bool,
    pub etcd_index: Option<u64>,
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |a, &d| {
        a.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn has_token(v: &[u8], token: &str) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses a response head from the start of `buf`; `Ok(None)` means more
/// bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD {
                Err(HttpError::HeadTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(e) => return Err(HttpError::Head(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    let mut close = resp.version == Some(0);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut etcd_index = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_u64(h.value).ok_or(HttpError::BadContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::BadContentLength);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                return Err(HttpError::NoLength);
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            if has_token(h.value, "close") {
                close = true;
            } else if has_token(h.value, "keep-alive") {
                close = false;
            }
        } else if h.name.eq_ignore_ascii_case("x-etcd-index") {
            etcd_index = parse_u64(h.value);
        }
    }
    let body = if (100..200).contains(&status) || status == 204 || status == 304 {
        BodyKind::Length(0)
    } else if chunked {
        BodyKind::Chunked
    } else {
        match length {
            Some(n) if n > MAX_BODY as u64 => return Err(HttpError::BodyTooLarge),
            Some(n) => BodyKind::Length(n as usize),
            None => return Err(HttpError::NoLength),
        }
    };
    Ok(Some(Head {
        status,
        len,
        body,
        close,
        etcd_index,
    }))
}

/// One piece of a chunked body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Chunk data at `buf[start..end]`; `consumed` bytes make up the chunk.
    Data {
        start: usize,
        end: usize,
        consumed: usize,
    },
    /// The last chunk and trailers: `consumed` bytes.
    Last { consumed: usize },
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| p + from)
}

/// Decodes the next chunk at the start of `buf`; `Ok(None)` means more
/// bytes are needed.
pub fn next_chunk(buf: &[u8]) -> Result<Option<Chunk>, HttpError> {
    let Some(eol) = find_crlf(buf, 0) else {
        return if buf.len() > MAX_CHUNK_LINE {
            Err(HttpError::BadChunk)
        } else {
            Ok(None)
        };
    };
    if eol > MAX_CHUNK_LINE {
        return Err(HttpError::BadChunk);
    }
    let line = &buf[..eol];
    let hex = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    if hex.is_empty() || hex.len() > 15 {
        return Err(HttpError::BadChunk);
    }
    let mut size: usize = 0;
    for &c in hex {
        let d = (c as char).to_digit(16).ok_or(HttpError::BadChunk)?;
        size = size * 16 + d as usize;
    }
    let start = eol + 2;
    if size == 0 {
        // trailer lines up to an empty line
        let mut pos = start;
        loop {
            let Some(e) = find_crlf(buf, pos) else {
                return if buf.len() - start > MAX_HEAD {
                    Err(HttpError::BadChunk)
                } else {
                    Ok(None)
                };
            };
            if e == pos {
                return Ok(Some(Chunk::Last { consumed: e + 2 }));
            }
            pos = e + 2;
        }
    }
    if size > MAX_BODY {
        return Err(HttpError::BodyTooLarge);
    }
    let end = start + size;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(HttpError::BadChunk);
    }
    Ok(Some(Chunk::Data {
        start,
        end,
        consumed: end + 2,
    }))
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response<'a> {
    pub status: u16,
    pub body: Cow<'a, [u8]>,
    /// Bytes of `buf` this response occupied.
    pub consumed: usize,
    pub close: bool,
    pub etcd_index: Option<u64>,
}

/// Parses one complete response from the start of `buf` (which may hold
/// several pipelined responses); `Ok(None)` means more bytes are needed.
pub fn parse_response(buf: &[u8]) -> Result<Option<Response<'_>>, HttpError> {
    let Some(head) = parse_head(buf)? else {
        return Ok(None);
    };
    let (body, consumed) = match head.body {
        BodyKind::Length(n) => {
            let end = head.len + n;
            if buf.len() < end {
                return Ok(None);
            }
            (Cow::Borrowed(&buf[head.len..end]), end)
        }
        BodyKind::Chunked => {
            let mut pos = head.len;
            let mut out: Vec<u8> = Vec::new();
            loop {
                match next_chunk(&buf[pos..])? {
                    None => return Ok(None),
                    Some(Chunk::Data {
                        start,
                        end,
                        consumed,
                    }) => {
                        if out.len() + (end - start) > MAX_BODY {
                            return Err(HttpError::BodyTooLarge);
                        }
                        out.extend_from_slice(&buf[pos + start..pos + end]);
                        pos += consumed;
                    }
                    Some(Chunk::Last { consumed }) => {
                        pos += consumed;
                        break;
                    }
                }
            }
            (Cow::Owned(out), pos)
        }
    };
    Ok(Some(Response {
        status: head.status,
        body,
        consumed,
        close: head.close,
        etcd_index: head.etcd_index,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Etcd-Index: 7\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn complete_response() {
        let r = parse_response(OK).unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(&*r.body, b"hello");
        assert_eq!(r.consumed, OK.len());
        assert_eq!(r.etcd_index, Some(7));
        assert!(!r.close);
    }

    #[test]
    fn partial_response_needs_more_at_every_split() {
        for cut in 0..OK.len() {
            assert_eq!(parse_response(&OK[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn pipelined_responses() {
        let mut buf = OK.to_vec();
        buf.extend_from_slice(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        );
        buf.extend_from_slice(&OK[..10]);
        let a = parse_response(&buf).unwrap().unwrap();
        assert_eq!(a.status, 200);
        let rest = &buf[a.consumed..];
        let b = parse_response(rest).unwrap().unwrap();
        assert_eq!((b.status, &*b.body, b.close), (404, &b"{}"[..], true));
        assert_eq!(parse_response(&rest[b.consumed..]), Ok(None));
    }

    #[test]
    fn chunked_response() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nB\r\n, world!!!!\r\n0\r\nX-Trailer: y\r\n\r\nNEXT";
        let r = parse_response(raw).unwrap().unwrap();
        assert_eq!(&*r.body, b"hello, world!!!!");
        assert_eq!(&raw[r.consumed..], b"NEXT");
        let n = raw.len() - 4;
        for cut in 0..n {
            assert_eq!(parse_response(&raw[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn chunk_stream_pieces() {
        let s = b"3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(
            next_chunk(s),
            Ok(Some(Chunk::Data {
                start: 3,
                end: 6,
                consumed: 8
            }))
        );
        assert_eq!(next_chunk(&s[8..]), Ok(Some(Chunk::Last { consumed: 5 })));
        assert_eq!(next_chunk(b"3\r\nab"), Ok(None));
        assert_eq!(next_chunk(b"zz\r\n"), Err(HttpError::BadChunk));
        assert_eq!(next_chunk(b"3\r\nabcXY"), Err(HttpError::BadChunk));
        assert_eq!(
            next_chunk(b"ffffffffffffffffff\r\n"),
            Err(HttpError::BadChunk)
        );
        assert_eq!(next_chunk(&[b'1'; 2000]), Err(HttpError::BadChunk));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_response(b"garbage garbage\r\n\r\n").is_err());
        assert!(parse_response(b"\x00\x01\x02\x03\r\n\r\n").is_err());
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n"),
            Err(HttpError::BadContentLength)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(HttpError::BadContentLength)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999\r\n\r\n"),
            Err(HttpError::BodyTooLarge)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\n\r\n"),
            Err(HttpError::NoLength)
        );
        let huge = vec![b'a'; MAX_HEAD + 10];
        let mut head = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        head.extend_from_slice(&huge);
        assert_eq!(parse_response(&head), Err(HttpError::HeadTooLarge));
        // random bytes never panic
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..2000 {
            let mut v = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push(b"0123456789abcdef\r\n;xz"[(x % 21) as usize]);
            }
            let _ = parse_response(&v);
            let _ = parse_response(&v[17..]);
        }
    }

    #[test]
    fn no_body_statuses_and_http10() {
        let r = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
        let r = parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.close);
    }

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:2379").unwrap();
        assert_eq!(t.addr, "127.0.0.1:2379".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:2379");
        assert_eq!(parse_url("http://127.0.0.1/").unwrap().addr.port(), 80);
        assert_eq!(
            parse_url("http://[::1]:5/").unwrap().addr,
            "[::1]:5".parse().unwrap()
        );
        let s = parse_url("https://127.0.0.1:2379/").unwrap();
        assert_eq!(s.addr, "127.0.0.1:2379".parse().unwrap());
        assert_eq!(s.host, "127.0.0.1:2379");
        assert_eq!(s.https.as_deref(), Some("127.0.0.1"));
        assert!(t.https.is_none());
        assert_eq!(parse_url("https://127.0.0.1").unwrap().addr.port(), 443);
        let v6 = parse_url("https://[::1]/").unwrap();
        assert_eq!(v6.addr, "[::1]:443".parse().unwrap());
        assert_eq!(v6.https.as_deref(), Some("::1"));
        assert_eq!(
            parse_url("https://localhost:9/").unwrap().https.as_deref(),
            Some("localhost")
        );
        assert!(parse_url("https://:5").is_err());
        assert!(parse_url("ftp://127.0.0.1:1").is_err());
        assert!(parse_url("127.0.0.1:1").is_err());
        assert!(parse_url("http://127.0.0.1:x").is_err());
        assert!(parse_url("http://").is_err());
    }

    #[test]
    fn requests_encode() {
        let mut b = Vec::new();
        let h1 = ReqHeaders::new("h:1", None, false);
        write_get(&mut b, &h1, &[b"/v2/keys/a", b"?quorum=true"]);
        assert_eq!(
            b,
            b"GET /v2/keys/a?quorum=true HTTP/1.1\r\nHost: h:1\r\n\r\n"
        );
        b.clear();
        let h = ReqHeaders::new("h", None, false);
        write_form(&mut b, "PUT", &h, &[b"/v2/keys/a"], &[b"value=", b"xy"]);
        let r = String::from_utf8(b).unwrap();
        assert!(r.starts_with("PUT /v2/keys/a HTTP/1.1\r\nHost: h\r\nContent-Type: "));
        assert!(r.ends_with("Content-Length: 8\r\n\r\nvalue=xy"));
        assert_eq!(encode_path("/a b/ü"), "/a%20b/%C3%BC");
    }

    /// --user and --new-conn: the headers go into every request, the requests stay valid HTTP
    /// (the head parses, the form body keeps its length).
    #[test]
    fn auth_and_close_headers() {
        // RFC 7617's example
        assert_eq!(
            basic_authorization("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        // the password may hold ':' (only the first one splits)
        assert_eq!(basic_authorization("root", "a:b"), "Basic cm9vdDphOmI=");
        let mut t = parse_url("http://127.0.0.1:2379").unwrap();
        t.authorization = Some(basic_authorization("root", "pw"));
        let mut b = Vec::new();
        write_get(&mut b, &t.headers(true), &[b"/v2/keys/a"]);
        assert_eq!(
            b,
            &b"GET /v2/keys/a HTTP/1.1\r\nHost: 127.0.0.1:2379\r\nAuthorization: Basic cm9vdDpwdw==\r\nConnection: close\r\n\r\n"[..]
        );
        b.clear();
        write_form(
            &mut b,
            "PUT",
            &t.headers(false),
            &[b"/v2/keys/a"],
            &[b"value=x"],
        );
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(&b).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("incomplete request"),
        };
        assert_eq!(&b[n..], b"value=x");
        let names: Vec<&str> = req.headers.iter().map(|h| h.name).collect();
        assert_eq!(
            names,
            ["Host", "Authorization", "Content-Type", "Content-Length"]
        );
    }
}
