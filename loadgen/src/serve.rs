//! `loadgen serve-static`: a tiny HTTP/1.1 responder answering every request
//! (pipelined or not, with or without a body) with one fixed 200 response.
//! It is the reference target for measuring loadgen itself and for tests.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::{ListenerOpts, TcpListener};

use crate::cli::ServeArgs;
use crate::runner::{build_runtime, read_more, write_all};

/// What serve-static needs of one complete request at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Bytes of the request (head and body).
    pub len: usize,
    /// `Connection: close`: answer, then close (as Go's net/http does).
    pub close: bool,
    /// The Authorization header is the one wanted (always true when none is wanted).
    pub authorized: bool,
}

/// Frames one complete request at the start of `buf`, if there is one; `want_auth`: the
/// Authorization header value every request must carry (`--basic-auth`). Err for a request
/// that is not HTTP.
pub fn request(buf: &[u8], want_auth: Option<&[u8]>) -> Result<Option<Request>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > 64 * 1024 {
                Err(())
            } else {
                Ok(None)
            }
        }
        Err(_) => return Err(()),
    };
    let mut body = 0usize;
    let mut close = false;
    let mut authorization: Option<&[u8]> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(())?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(()); // not needed by loadgen
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorization = Some(h.value);
        }
    }
    if body > 16 << 20 {
        return Err(());
    }
    let authorized = want_auth.is_none() || authorization == want_auth;
    Ok((buf.len() >= head + body).then_some(Request {
        len: head + body,
        close,
        authorized,
    }))
}

fn reply(status: &str, index: &str, body: &str, close: bool) -> Vec<u8> {
    let mut r = Vec::new();
    let _ = write!(
        r,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Etcd-Index: {index}\r\n{}Content-Length: {}\r\n\r\n{body}",
        if close { "Connection: close\r\n" } else { "" },
        body.len()
    );
    r
}

/// Every answer serve-static gives, rendered once.
struct Replies {
    ok: Vec<u8>,
    ok_close: Vec<u8>,
    /// etcd's 401 on keys (WIRE.md), for requests without the wanted Authorization header.
    denied: Vec<u8>,
    denied_close: Vec<u8>,
    want_auth: Option<Vec<u8>>,
}

impl Replies {
    fn new(body: &str, basic_auth: Option<&str>) -> Result<Replies, String> {
        let want_auth = match basic_auth {
            None => None,
            Some(u) => {
                let (name, password) = u
                    .split_once(':')
                    .ok_or("--basic-auth wants NAME:PASSWORD")?;
                Some(crate::http::basic_authorization(name, password).into_bytes())
            }
        };
        const DENIED: &str = r#"{"errorCode":110,"message":"The request requires user authentication","cause":"Insufficient credentials","index":0}"#;
        Ok(Replies {
            ok: reply("200 OK", "4", body, false),
            ok_close: reply("200 OK", "4", body, true),
            denied: reply("401 Unauthorized", "0", DENIED, false),
            denied_close: reply("401 Unauthorized", "0", DENIED, true),
            want_auth,
        })
    }

    fn to(&self, r: &Request) -> &[u8] {
        match (r.authorized, r.close) {
            (true, false) => &self.ok,
            (true, true) => &self.ok_close,
            (false, false) => &self.denied,
            (false, true) => &self.denied_close,
        }
    }
}

pub fn serve(args: &ServeArgs) -> Result<(), String> {
    let addr: SocketAddr = args
        .listen
        .parse()
        .map_err(|e| format!("--listen {}: {e}", args.listen))?;
    let threads = args.threads.max(1);
    // bind the first listener here so that port 0 resolves to one port for all threads
    let first = std::net::TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let local = first.local_addr().map_err(|e| e.to_string())?;
    drop(first);
    let replies = Arc::new(Replies::new(&args.body, args.basic_auth.as_deref())?);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(crate::tls::server_config(
            c,
            k,
            args.tls_client_ca.as_deref(),
        )?),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    let mut handles = Vec::new();
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
    for _ in 0..threads {
        let replies = replies.clone();
        let tx = tx.clone();
        let tls = tls.clone();
        handles.push(std::thread::spawn(move || {
            let mut rt = match build_runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("event loop: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let opts = ListenerOpts::new()
                    .reuse_port(true)
                    .reuse_addr(true)
                    .backlog(1024);
                let listener = match TcpListener::bind_with_config(local, &opts) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(format!("bind {local}: {e}")));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                let acceptor = tls.map(monoio_rustls::TlsAcceptor::from);
                loop {
                    if let Ok((s, _)) = listener.accept().await {
                        let _ = s.set_nodelay(true);
                        let replies = replies.clone();
                        match &acceptor {
                            None => {
                                monoio::spawn(handle(s, replies));
                            }
                            Some(a) => {
                                let a = a.clone();
                                monoio::spawn(async move {
                                    // a failed handshake just drops the connection
                                    if let Ok(t) = a.accept(s).await {
                                        handle(t, replies).await;
                                    }
                                });
                            }
                        }
                    }
                }
            });
        }));
    }
    drop(tx);
    for _ in 0..threads {
        rx.recv()
            .map_err(|_| "a server thread died".to_string())??;
    }
    if args.tls_cert.is_some() {
        eprintln!("serve-static: https on {local}");
    }
    println!("listening on {local}");
    let _ = std::io::stdout().flush();
    match args.exit_after {
        Some(s) if s.is_finite() && s >= 0.0 => {
            std::thread::sleep(Duration::from_secs_f64(s));
            Ok(())
        }
        _ => {
            for h in handles {
                let _ = h.join();
            }
            Ok(())
        }
    }
}

async fn handle<S: AsyncReadRent + AsyncWriteRent>(mut s: S, replies: Arc<Replies>) {
    let mut rbuf = Vec::with_capacity(16 * 1024);
    let mut rpos = 0usize;
    let mut wbuf = Vec::with_capacity(16 * 1024);
    let want_auth = replies.want_auth.as_deref();
    loop {
        match read_more(&mut s, &mut rbuf, &mut rpos).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
        let mut close = false;
        loop {
            match request(&rbuf[rpos..], want_auth) {
                Ok(Some(r)) => {
                    rpos += r.len;
                    wbuf.extend_from_slice(replies.to(&r));
                    if r.close {
                        close = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(()) => {
                    wbuf.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    let _ = write_all(&mut s, &mut wbuf).await;
                    return;
                }
            }
        }
        if !wbuf.is_empty() && write_all(&mut s, &mut wbuf).await.is_err() {
            return;
        }
        if close {
            // TLS: close_notify, as Go's server sends when it closes
            let _ = s.shutdown().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(buf: &[u8]) -> Result<Option<usize>, ()> {
        request(buf, None).map(|r| r.map(|r| r.len))
    }

    #[test]
    fn request_framing() {
        assert_eq!(len(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET"), Ok(Some(27)));
        assert_eq!(len(b"GET / HTTP/1.1\r\nHost: h\r\n"), Ok(None));
        assert_eq!(
            len(b"PUT / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab"),
            Ok(None)
        );
        assert_eq!(
            len(b"PUT / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            Ok(Some(40))
        );
        assert_eq!(len(b"\x00\x01 nonsense\r\n\r\n"), Err(()));
        let r = reply("200 OK", "4", "{}", false);
        assert!(crate::http::parse_response(&r).unwrap().is_some());
    }

    /// --basic-auth: only the exact header passes (etcd's 401 otherwise); `Connection: close`
    /// gets an answer that says so.
    #[test]
    fn auth_and_close() {
        let replies = Replies::new("{}", Some("root:pw")).unwrap();
        let want = replies.want_auth.as_deref();
        let get = |h: &str| format!("GET / HTTP/1.1\r\nHost: h\r\n{h}\r\n");
        let r = request(
            get("Authorization: Basic cm9vdDpwdw==\r\n").as_bytes(),
            want,
        )
        .unwrap()
        .unwrap();
        assert!(r.authorized && !r.close);
        let a = crate::http::parse_response(replies.to(&r))
            .unwrap()
            .unwrap();
        assert_eq!((a.status, a.close), (200, false));
        for bad in ["", "Authorization: Basic cm9vdDpwdg==\r\n"] {
            let r = request(get(bad).as_bytes(), want).unwrap().unwrap();
            assert!(!r.authorized, "{bad}");
            let a = crate::http::parse_response(replies.to(&r))
                .unwrap()
                .unwrap();
            assert_eq!(a.status, 401);
            assert!(std::str::from_utf8(&a.body)
                .unwrap()
                .contains("\"errorCode\":110"));
        }
        let r = request(get("Connection: keep-alive, close\r\n").as_bytes(), None)
            .unwrap()
            .unwrap();
        assert!(r.authorized && r.close);
        let a = crate::http::parse_response(replies.to(&r))
            .unwrap()
            .unwrap();
        assert_eq!((a.status, a.close), (200, true));
        assert!(Replies::new("{}", Some("nocolon")).is_err());
    }
}
