//! HTTP/1.1 request framing on httparse: request line and headers, Content-Length and
//! chunked bodies, Expect: 100-continue, keep-alive. Incremental and bounded: every byte is
//! looked at a bounded number of times, and no buffer grows past the configured limits.

use crate::limits::{REQUEST_HEADERS_COUNT_MAX, REQUEST_HEADER_BYTES_MAX};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Post,
    Delete,
    Options,
    Other(String),
}

impl Method {
    fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other(s) => s,
        }
    }
}

/// One complete request.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    /// The raw request target: path and query, still escaped.
    pub target: String,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    pub keep_alive: bool,
    pub body: Vec<u8>,
}

impl Request {
    /// The escaped path and the raw query (without '?').
    pub fn path_and_query(&self) -> (&str, &str) {
        match self.target.split_once('?') {
            Some((p, q)) => (p, q),
            None => (self.target.as_str(), ""),
        }
    }
}

/// A framing error: answered with this status and the connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramingError {
    pub status: u16,
    pub reason: &'static str,
}

#[derive(Debug)]
pub enum Parsed {
    Request(Request),
    /// More bytes are needed. `send_continue`: the client asked for `100 Continue` and has not
    /// sent its body yet; answer it once.
    NeedMore {
        send_continue: bool,
    },
    Error(FramingError),
}

enum State {
    Head,
    Body { req: Request, remaining: usize },
    Chunked { req: Request, chunk: ChunkState },
}

#[derive(Clone, Copy, Debug)]
enum ChunkState {
    Size,
    Data(usize),
    DataEnd,
    Trailer,
}

/// An incremental request parser, one per connection.
pub struct RequestParser {
    body_bytes_max: usize,
    state: State,
}

/// Longest chunk-size or trailer line accepted.
const CHUNK_LINE_BYTES_MAX: usize = 4096;

fn err(status: u16, reason: &'static str) -> Parsed {
    Parsed::Error(FramingError { status, reason })
}

impl RequestParser {
    pub fn new(body_bytes_max: usize) -> RequestParser {
        RequestParser {
            body_bytes_max,
            state: State::Head,
        }
    }

    /// True when no request is partially parsed (used for idle timeouts).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Head)
    }

    /// Parses from `input`, returning how many bytes were consumed and the outcome.
    pub fn parse(&mut self, input: &[u8]) -> (usize, Parsed) {
        let mut consumed = 0;
        loop {
            let rest = &input[consumed..];
            match std::mem::replace(&mut self.state, State::Head) {
                State::Head => {
                    let (n, outcome) = self.parse_head(rest);
                    consumed += n;
                    match outcome {
                        HeadOutcome::Done(parsed) => return (consumed, parsed),
                        HeadOutcome::Continue { send_continue } => {
                            if consumed == input.len() {
                                return (consumed, Parsed::NeedMore { send_continue });
                            }
                        }
                    }
                }
                State::Body { mut req, remaining } => {
                    let take = remaining.min(rest.len());
                    req.body.extend_from_slice(&rest[..take]);
                    consumed += take;
                    if take == remaining {
                        return (consumed, Parsed::Request(req));
                    }
                    self.state = State::Body {
                        req,
                        remaining: remaining - take,
                    };
                    return (
                        consumed,
                        Parsed::NeedMore {
                            send_continue: false,
                        },
                    );
                }
                State::Chunked { mut req, chunk } => {
                    match self.parse_chunked(&mut req, chunk, rest) {
                        (n, Ok(None)) => {
                            consumed += n;
                            return (consumed, Parsed::Request(req));
                        }
                        (n, Ok(Some(next))) => {
                            consumed += n;
                            self.state = State::Chunked { req, chunk: next };
                            return (
                                consumed,
                                Parsed::NeedMore {
                                    send_continue: false,
                                },
                            );
                        }
                        (n, Err(e)) => return (consumed + n, Parsed::Error(e)),
                    }
                }
            }
        }
    }

    fn parse_head(&mut self, input: &[u8]) -> (usize, HeadOutcome) {
        let mut headers = [httparse::EMPTY_HEADER; REQUEST_HEADERS_COUNT_MAX];
        let mut parsed = httparse::Request::new(&mut headers);
        let n = match parsed.parse(input) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if input.len() > REQUEST_HEADER_BYTES_MAX {
                    return (
                        0,
                        HeadOutcome::Done(err(431, "Request Header Fields Too Large")),
                    );
                }
                return (
                    0,
                    HeadOutcome::Done(Parsed::NeedMore {
                        send_continue: false,
                    }),
                );
            }
            Err(httparse::Error::TooManyHeaders) => {
                return (
                    0,
                    HeadOutcome::Done(err(431, "Request Header Fields Too Large")),
                )
            }
            Err(_) => return (0, HeadOutcome::Done(err(400, "Bad Request"))),
        };
        if n > REQUEST_HEADER_BYTES_MAX {
            return (
                0,
                HeadOutcome::Done(err(431, "Request Header Fields Too Large")),
            );
        }
        let version = parsed.version.unwrap_or(1);
        let method = Method::parse(parsed.method.unwrap_or(""));
        let target = parsed.path.unwrap_or("/").to_string();
        let mut content_type = None;
        let mut authorization = None;
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        let mut expect_continue = false;
        let mut keep_alive = version == 1;
        let mut hosts = 0;
        for h in parsed.headers.iter() {
            let value = match std::str::from_utf8(h.value) {
                Ok(v) => v.trim(),
                Err(_) => return (0, HeadOutcome::Done(err(400, "Bad Request"))),
            };
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                hosts += 1;
            } else if name.eq_ignore_ascii_case("content-length") {
                let len = match value.parse::<usize>() {
                    Ok(l) if value.bytes().all(|b| b.is_ascii_digit()) => l,
                    _ => return (0, HeadOutcome::Done(err(400, "Bad Request"))),
                };
                if content_length.is_some_and(|prev| prev != len) {
                    return (0, HeadOutcome::Done(err(400, "Bad Request")));
                }
                content_length = Some(len);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                if value.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if !value.eq_ignore_ascii_case("identity") {
                    return (0, HeadOutcome::Done(err(501, "Not Implemented")));
                }
            } else if name.eq_ignore_ascii_case("content-type") {
                content_type = Some(value.to_string());
            } else if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.to_string());
            } else if name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        keep_alive = true;
                    }
                }
            } else if name.eq_ignore_ascii_case("expect") {
                if value.eq_ignore_ascii_case("100-continue") {
                    expect_continue = version == 1;
                } else {
                    return (0, HeadOutcome::Done(err(417, "Expectation Failed")));
                }
            }
        }
        // Go's order: two Host headers fail with the head, a missing one after the framing
        // headers were checked; HTTP/1.0 needs none.
        if hosts > 1 || (chunked && content_length.is_some()) {
            return (0, HeadOutcome::Done(err(400, "Bad Request")));
        }
        let connect = matches!(&method, Method::Other(m) if m == "CONNECT");
        if hosts == 0 && version == 1 && !connect {
            return (
                0,
                HeadOutcome::Done(err(400, "Bad Request: missing required Host header")),
            );
        }
        let req = Request {
            method,
            target,
            content_type,
            authorization,
            keep_alive,
            body: Vec::new(),
        };
        if chunked {
            self.state = State::Chunked {
                req,
                chunk: ChunkState::Size,
            };
            return (
                n,
                HeadOutcome::Continue {
                    send_continue: expect_continue,
                },
            );
        }
        let len = content_length.unwrap_or(0);
        if len > self.body_bytes_max {
            return (n, HeadOutcome::Done(err(413, "Request Entity Too Large")));
        }
        if len == 0 {
            return (n, HeadOutcome::Done(Parsed::Request(req)));
        }
        let mut req = req;
        req.body.reserve_exact(len.min(64 * 1024));
        self.state = State::Body {
            req,
            remaining: len,
        };
        (
            n,
            HeadOutcome::Continue {
                send_continue: expect_continue,
            },
        )
    }

    /// Advances the chunked decoder. Returns bytes consumed and `Ok(None)` when the body is
    /// complete, `Ok(Some(state))` when more input is needed.
    fn parse_chunked(
        &self,
        req: &mut Request,
        mut chunk: ChunkState,
        input: &[u8],
    ) -> (usize, Result<Option<ChunkState>, FramingError>) {
        let bad = FramingError {
            status: 400,
            reason: "Bad Request",
        };
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match chunk {
                ChunkState::Size | ChunkState::Trailer => {
                    let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                        if rest.len() > CHUNK_LINE_BYTES_MAX {
                            return (pos, Err(bad));
                        }
                        return (pos, Ok(Some(chunk)));
                    };
                    let line = &rest[..eol];
                    pos += eol + 2;
                    if matches!(chunk, ChunkState::Trailer) {
                        if line.is_empty() {
                            return (pos, Ok(None));
                        }
                        continue;
                    }
                    let size_part = line.split(|&b| b == b';').next().unwrap_or(&[]);
                    let size_str = std::str::from_utf8(size_part).map(str::trim).unwrap_or("");
                    let size = match usize::from_str_radix(size_str, 16) {
                        Ok(s) if !size_str.is_empty() && size_str.len() <= 16 => s,
                        _ => return (pos, Err(bad)),
                    };
                    if size == 0 {
                        chunk = ChunkState::Trailer;
                    } else if req.body.len().saturating_add(size) > self.body_bytes_max {
                        return (
                            pos,
                            Err(FramingError {
                                status: 413,
                                reason: "Request Entity Too Large",
                            }),
                        );
                    } else {
                        chunk = ChunkState::Data(size);
                    }
                }
                ChunkState::Data(remaining) => {
                    let take = remaining.min(rest.len());
                    req.body.extend_from_slice(&rest[..take]);
                    pos += take;
                    if take < remaining {
                        return (pos, Ok(Some(ChunkState::Data(remaining - take))));
                    }
                    chunk = ChunkState::DataEnd;
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return (pos, Ok(Some(chunk)));
                    }
                    if &rest[..2] != b"\r\n" {
                        return (pos, Err(bad));
                    }
                    pos += 2;
                    chunk = ChunkState::Size;
                }
            }
        }
    }
}

enum HeadOutcome {
    Done(Parsed),
    Continue { send_continue: bool },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the requests and the final error.
    fn check(input: &[u8], step: usize) -> (Vec<Request>, Option<FramingError>) {
        let mut p = RequestParser::new(1024);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                let (n, parsed) = p.parse(&buf);
                buf.drain(..n);
                match parsed {
                    Parsed::Request(r) => out.push(r),
                    Parsed::NeedMore { .. } => break,
                    Parsed::Error(e) => return (out, Some(e)),
                }
                if buf.is_empty() {
                    break;
                }
            }
        }
        (out, None)
    }

    #[test]
    fn pipelined_requests_in_any_split() {
        let input = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPUT /b?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\nvalue=1POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, 1000] {
            let (reqs, e) = check(input, step);
            assert!(e.is_none(), "step {step}: {e:?}");
            assert_eq!(reqs.len(), 3, "step {step}");
            assert_eq!(reqs[0].target, "/a");
            assert_eq!(reqs[1].body, b"value=1");
            assert_eq!(reqs[1].path_and_query(), ("/b", "x=1"));
            assert_eq!(reqs[2].body, b"abcde");
        }
    }

    #[test]
    fn keep_alive_rules() {
        let (r, _) = check(b"GET / HTTP/1.0\r\n\r\n", 100);
        assert!(!r[0].keep_alive);
        let (r, _) = check(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            100,
        );
        assert!(!r[0].keep_alive);
        let (r, _) = check(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 100);
        assert!(r[0].keep_alive);
    }

    #[test]
    fn limits_and_garbage() {
        let (_, e) = check(
            b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n",
            100,
        );
        assert_eq!(e.unwrap().status, 413);
        let (_, e) = check(b"\x00\x01garbage\r\n\r\n", 100);
        assert_eq!(e.unwrap().status, 400);
        let (_, e) = check(
            b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            100,
        );
        assert_eq!(e.unwrap().status, 400);
        let (_, e) = check(
            b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n",
            100,
        );
        assert_eq!(e.unwrap().status, 413);
        let (_, e) = check(
            b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            100,
        );
        assert_eq!(e.unwrap().status, 400);
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', REQUEST_HEADER_BYTES_MAX + 10));
        let (_, e) = check(&long, 4096);
        assert_eq!(e.unwrap().status, 431);
    }

    #[test]
    fn http_1_1_needs_exactly_one_host_header_as_in_go() {
        let status = |input: &[u8]| check(input, 100).1.map(|e| (e.status, e.reason));
        assert_eq!(
            status(b"GET /v2/keys/a HTTP/1.1\r\n\r\n"),
            Some((400, "Bad Request: missing required Host header"))
        );
        assert_eq!(
            status(b"GET /v2/keys/a HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
            Some((400, "Bad Request"))
        );
        // HTTP/1.0 needs no Host; one Host (any case) is fine.
        assert_eq!(status(b"GET /v2/keys/a HTTP/1.0\r\n\r\n"), None);
        assert_eq!(status(b"GET /v2/keys/a HTTP/1.1\r\nHOST: a\r\n\r\n"), None);
        // etcd 3.4's exact bytes for the missing Host.
        let mut out = Vec::new();
        crate::http::response::framing_error(
            &mut out,
            check(b"GET / HTTP/1.1\r\n\r\n", 100).1.unwrap(),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 400 Bad Request: missing required Host header\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request: missing required Host header"
        );
    }

    #[test]
    fn expect_continue_is_signalled_before_the_body() {
        let mut p = RequestParser::new(100);
        let head =
            b"PUT /k HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        let (n, parsed) = p.parse(head);
        assert_eq!(n, head.len());
        assert!(matches!(
            parsed,
            Parsed::NeedMore {
                send_continue: true
            }
        ));
        let (_, parsed) = p.parse(b"a=1");
        assert!(matches!(parsed, Parsed::Request(r) if r.body == b"a=1"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut bytes = Vec::new();
            for _ in 0..(seed % 300) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let alphabet = b"GET PUT /a?=&%\r\n:0123456789abcdefHTTP/1.1 chunked Content-Length Transfer-Encoding\x00\xff";
                bytes.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let _ = check(&bytes, (seed % 17) as usize + 1);
        }
    }
}
