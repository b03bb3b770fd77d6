//! A blocking HTTP/1.1 GET for ringd's one-off commands (`ringd snapshot save`), which run
//! no executor: plain TCP, or TLS through `tls::Connector`; the response head parsed with
//! httparse, the body handed over as a reader bounded by its Content-Length, so a large body
//! streams to its destination instead of being held in memory.

use super::tls::Connector;
use crate::config::ListenUrl;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest response head accepted.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Most response headers accepted.
const HEADERS_COUNT_MAX: usize = 64;

/// One GET.
pub struct Get<'a> {
    /// `http://host:port` or `https://host:port`.
    pub url: &'a str,
    /// The request target (`/ringd/snapshot`).
    pub path: &'a str,
    /// Needed for an https URL.
    pub tls: Option<&'a Connector>,
    /// Extra request headers (`Authorization`).
    pub headers: &'a [(&'a str, &'a str)],
    pub dial_timeout: Duration,
    /// The longest the server may stay silent (each read), not the whole transfer.
    pub read_timeout: Duration,
}

/// A response whose head was read; the body is read from `body()`.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Content-Length, when the response has one.
    pub content_length: Option<u64>,
    body: Box<dyn Read>,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body: Content-Length bytes at most (without one, up to the connection's end).
    pub fn body(&mut self) -> &mut dyn Read {
        &mut self.body
    }
}

/// Sends the GET and reads the response head.
pub fn get(g: &Get) -> Result<Response, String> {
    let url = ListenUrl::parse(g.url)?;
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    let hostport = format!("{host}:{}", url.port);
    let addrs: Vec<_> = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", g.url))?
        .collect();
    let mut last = format!("{}: no address", g.url);
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, g.dial_timeout) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {}: {e}", g.url),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let timeouts = tcp
        .set_read_timeout(Some(g.read_timeout))
        .and_then(|()| tcp.set_write_timeout(Some(g.read_timeout)));
    timeouts.map_err(|e| format!("{}: {e}", g.url))?;
    let mut request = format!("GET {} HTTP/1.1\r\nHost: {hostport}\r\n", g.path);
    for (name, value) in g.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    if url.scheme == "https" {
        let tls = g
            .tls
            .ok_or_else(|| format!("{}: https needs TLS settings", g.url))?;
        let stream = tls.blocking_stream(tcp, &url.host)?;
        exchange(stream, &request, g.url)
    } else {
        exchange(tcp, &request, g.url)
    }
}

fn exchange<S: Read + Write + 'static>(
    mut stream: S,
    request: &str,
    url: &str,
) -> Result<Response, String> {
    let failed = |e: std::io::Error| format!("{url}: {e}");
    stream.write_all(request.as_bytes()).map_err(failed)?;
    stream.flush().map_err(failed)?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_len = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > HEAD_BYTES_MAX {
            return Err(format!(
                "{url}: response head larger than {HEAD_BYTES_MAX} bytes"
            ));
        }
        match stream.read(&mut chunk).map_err(failed)? {
            0 => return Err(format!("{url}: the connection closed before a response")),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_COUNT_MAX];
    let mut parsed = httparse::Response::new(&mut headers);
    parsed
        .parse(&buf[..head_len])
        .map_err(|e| format!("{url}: bad response head: {e}"))?;
    let status = parsed.code.unwrap_or(0);
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).trim().to_string();
            (h.name.to_string(), value)
        })
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<u64>())
        .transpose()
        .map_err(|_| format!("{url}: bad Content-Length"))?;
    let rest = std::io::Cursor::new(buf.split_off(head_len));
    let body = Box::new(rest.chain(stream).take(length.unwrap_or(u64::MAX)));
    Ok(Response {
        status,
        headers,
        content_length: length,
        body,
    })
}
