//! `loadgen serve-static`: a tiny HTTP/1.1 responder answering every request
//! (pipelined or not, with or without a body) with one fixed 200 response.
//! It is the reference target for measuring loadgen itself and for tests.

use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::{ListenerOpts, TcpListener};

use crate::cli::ServeArgs;
use crate::runner::{build_runtime, read_more, write_all};

/// Bytes of one complete request at the start of `buf`, if there is one.
/// Err for a request that is not HTTP.
pub fn request_len(buf: &[u8]) -> Result<Option<usize>, ()> {
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
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(())?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(()); // not needed by loadgen
        }
    }
    if body > 16 << 20 {
        return Err(());
    }
    Ok((buf.len() >= head + body).then_some(head + body))
}

pub fn response_bytes(body: &str) -> Vec<u8> {
    let mut r = Vec::new();
    let _ = write!(
        r,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Etcd-Index: 4\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    r
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
    let resp_bytes = response_bytes(&args.body);
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
        let resp_bytes = resp_bytes.clone();
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
                let resp: Rc<[u8]> = Rc::from(resp_bytes);
                let acceptor = tls.map(monoio_rustls::TlsAcceptor::from);
                loop {
                    if let Ok((s, _)) = listener.accept().await {
                        let _ = s.set_nodelay(true);
                        let resp = resp.clone();
                        match &acceptor {
                            None => {
                                monoio::spawn(handle(s, resp));
                            }
                            Some(a) => {
                                let a = a.clone();
                                monoio::spawn(async move {
                                    // a failed handshake just drops the connection
                                    if let Ok(t) = a.accept(s).await {
                                        handle(t, resp).await;
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

async fn handle<S: AsyncReadRent + AsyncWriteRent>(mut s: S, resp: Rc<[u8]>) {
    let mut rbuf = Vec::with_capacity(16 * 1024);
    let mut rpos = 0usize;
    let mut wbuf = Vec::with_capacity(16 * 1024);
    loop {
        match read_more(&mut s, &mut rbuf, &mut rpos).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
        loop {
            match request_len(&rbuf[rpos..]) {
                Ok(Some(n)) => {
                    rpos += n;
                    wbuf.extend_from_slice(&resp);
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_framing() {
        assert_eq!(
            request_len(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET"),
            Ok(Some(27))
        );
        assert_eq!(request_len(b"GET / HTTP/1.1\r\nHost: h\r\n"), Ok(None));
        assert_eq!(
            request_len(b"PUT / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab"),
            Ok(None)
        );
        assert_eq!(
            request_len(b"PUT / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            Ok(Some(40))
        );
        assert_eq!(request_len(b"\x00\x01 nonsense\r\n\r\n"), Err(()));
        let r = response_bytes("{}");
        assert!(crate::http::parse_response(&r).unwrap().is_some());
    }
}
