//! `ringd migrate --from-endpoint URL --data-dir NEW`: live migration from a running etcd.
//! The sockets and threads of it (the copy itself is `migrate::live`):
//!
//! 1. `GET /v2/keys/?recursive=true&sorted=true` (and each `--hidden-key`): the tree and
//!    its X-Etcd-Index E;
//! 2. a follower thread long-polls `GET /v2/keys/?wait=true&recursive=true&waitIndex=N`
//!    from E+1 and applies each event at its index; a 401 (the watch fell more than etcd's
//!    1000 events behind) starts the copy again;
//! 3. the main thread waits for SIGTERM/SIGINT (blocked in every thread, as for the server),
//!    then reads the hidden keys again and writes NEW from the copy as it is then.
//!
//! Cut over: stop the writers, wait for the progress line to show etcd's index, Ctrl-C, start
//! ringd on NEW, point the clients at it.

use crate::migrate::live::LiveCopy;
use crate::migrate::{MigrateArgs, MigrateError, Summary};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bounds of one answer: the listing of a whole tree may be large, but not unbounded.
const BODY_BYTES_MAX: usize = 4 << 30;
const HEAD_BYTES_MAX: usize = 64 << 10;
/// Connect and read timeout of the copy's requests (a long poll waits without one).
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// A failed long poll is retried after this long (etcd restarting, a network blip).
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// At the cut-over: how long the copy may take to reach etcd's index, polled this often.
const CATCH_UP_MAX: Duration = Duration::from_secs(5);
const CATCH_UP_POLL: Duration = Duration::from_millis(10);
/// How often the progress line is logged while following.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// An answer: status, X-Etcd-Index and body.
struct Answer {
    status: u16,
    etcd_index: Option<u64>,
    body: Vec<u8>,
}

/// `http://host:port` -> `host:port`.
fn authority(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// endpoints can be followed"))?;
    Ok(rest.trim_end_matches('/').to_string())
}

/// One request on a connection of its own (`Connection: close`); `timeout` None waits as
/// long as the server takes (a long poll).
fn get(host: &str, path: &str, timeout: Option<Duration>) -> Result<Answer, String> {
    use std::net::ToSocketAddrs;
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let mut s =
        TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("{host}: {e}"))?;
    s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("{host}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 << 10];
    let (status, etcd_index, head_len, length, chunked) = loop {
        let n = s
            .read(&mut chunk)
            .map_err(|e| format!("{host}{path}: {e}"))?;
        if n == 0 {
            return Err(format!(
                "{host}{path}: the connection closed before an answer"
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let header = |name: &str| {
                    r.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                };
                let etcd_index = header("X-Etcd-Index").and_then(|v| v.trim().parse().ok());
                let length = header("Content-Length").and_then(|v| v.trim().parse().ok());
                let chunked = header("Transfer-Encoding")
                    .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
                break (r.code.unwrap_or(0), etcd_index, len, length, chunked);
            }
            Ok(httparse::Status::Partial) if buf.len() < HEAD_BYTES_MAX => continue,
            Ok(httparse::Status::Partial) => return Err(format!("{host}{path}: head too long")),
            Err(e) => return Err(format!("{host}{path}: {e}")),
        }
    };
    let mut raw = buf.split_off(head_len);
    // Connection: close: the body ends where the stream does (or at its length).
    loop {
        if length.is_some_and(|l: usize| raw.len() >= l) {
            break;
        }
        if raw.len() > BODY_BYTES_MAX {
            return Err(format!("{host}{path}: answer above {BODY_BYTES_MAX} bytes"));
        }
        let n = s
            .read(&mut chunk)
            .map_err(|e| format!("{host}{path}: {e}"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
    }
    let body = if chunked {
        dechunk(&raw).ok_or_else(|| format!("{host}{path}: bad chunked body"))?
    } else {
        raw.truncate(length.unwrap_or(raw.len()));
        raw
    };
    Ok(Answer {
        status,
        etcd_index,
        body,
    })
}

/// A complete chunked body's data (None if it is malformed or cut short).
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

fn json(a: &Answer, what: &str) -> Result<Value, String> {
    serde_json::from_slice(&a.body).map_err(|e| format!("{what}: {e}"))
}

/// The hidden keys, each `None` if it does not exist.
fn read_hidden(host: &str, keys: &[String]) -> Result<Vec<(String, Option<Value>)>, String> {
    keys.iter()
        .map(|k| {
            let a = get(
                host,
                &format!("/v2/keys{k}?recursive=true&sorted=true"),
                Some(IO_TIMEOUT),
            )?;
            match a.status {
                200 => Ok((k.clone(), Some(json(&a, k)?))),
                404 => Ok((k.clone(), None)),
                s => Err(format!("GET {k}: status {s}")),
            }
        })
        .collect()
}

/// etcd's index now (the head of a one-level listing).
fn current_index(host: &str) -> Result<u64, String> {
    let a = get(host, "/v2/keys/", Some(IO_TIMEOUT))?;
    a.etcd_index
        .ok_or_else(|| format!("GET /v2/keys/: status {}, no X-Etcd-Index", a.status))
}

/// Lists the tree and the hidden keys: a fresh copy.
fn copy(host: &str, hidden: &[String]) -> Result<LiveCopy, String> {
    let a = get(
        host,
        "/v2/keys/?recursive=true&sorted=true",
        Some(IO_TIMEOUT),
    )?;
    if a.status != 200 {
        return Err(format!(
            "GET /v2/keys/: status {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        ));
    }
    let index = a.etcd_index.ok_or("GET /v2/keys/: no X-Etcd-Index")?;
    let root = json(&a, "GET /v2/keys/")?;
    let hidden = read_hidden(host, hidden)?;
    let c = LiveCopy::from_listing(&root, index, &hidden)?;
    tracing::info!(index, "copied the tree; following it");
    Ok(c)
}

/// Follows etcd with long polls until `stop`; starts the copy again when the watch falls out
/// of etcd's history or the copy diverges. Errors of one poll are retried.
fn follow(host: &str, hidden: &[String], state: &Mutex<Option<LiveCopy>>, stop: &AtomicBool) {
    let mut last_progress = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let Some(from) = state
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|c| c.index() + 1))
        else {
            return; // taken: the migration is being written
        };
        let path = format!("/v2/keys/?wait=true&recursive=true&waitIndex={from}");
        let answer = match get(host, &path, None) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "watch failed; retrying");
                std::thread::sleep(RETRY_PAUSE);
                continue;
            }
        };
        let result = match answer.status {
            200 => json(&answer, "a watch event").and_then(|ev| {
                let now = crate::shard::unix_now_ns();
                let mut c = state.lock().map_err(|_| "the copy's lock is poisoned")?;
                match c.as_mut() {
                    Some(c) => c.apply(&ev, now),
                    None => Ok(()),
                }
            }),
            401 => Err("the watch fell out of etcd's event history".to_string()),
            s => Err(format!(
                "watch: status {s}: {}",
                String::from_utf8_lossy(&answer.body)
            )),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "copying the tree again");
            match copy(host, hidden) {
                Ok(fresh) => {
                    if let Ok(mut c) = state.lock() {
                        if c.is_some() {
                            *c = Some(fresh);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "copy failed; retrying");
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            if let Some(index) = state
                .lock()
                .ok()
                .and_then(|c| c.as_ref().map(LiveCopy::index))
            {
                tracing::info!(index, "following etcd");
            }
        }
    }
}

/// Runs a live migration until SIGTERM or SIGINT, then writes NEW.
pub fn run(args: &MigrateArgs) -> Result<(String, Summary), MigrateError> {
    let url = args.from_endpoint.as_deref().unwrap_or_default();
    let host = authority(url).map_err(|e| MigrateError::file(url, e))?;
    crate::migrate::check(args)?;
    let first = copy(&host, &args.hidden_key).map_err(|e| MigrateError::file(url, e))?;
    let state = Arc::new(Mutex::new(Some(first)));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (host, hidden, state, stop) = (
            host.clone(),
            args.hidden_key.clone(),
            state.clone(),
            stop.clone(),
        );
        std::thread::Builder::new()
            .name("follow".to_string())
            .spawn(move || follow(&host, &hidden, &state, &stop))
            .map_err(|e| MigrateError::file(url, format!("cannot start the follower: {e}")))?;
    }
    let signal = super::shutdown::wait_stop_signal(None).unwrap_or("?");
    // The cut-over: the copy follows to etcd's index of this moment (the writers are
    // stopped), bounded; the indexes it does not reach by then showed no event.
    let target = current_index(&host).map_err(|e| MigrateError::file(url, e))?;
    tracing::info!(
        signal,
        etcd_index = target,
        "stopping: catching up with etcd"
    );
    let deadline = Instant::now() + CATCH_UP_MAX;
    while Instant::now() < deadline
        && state
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(LiveCopy::index))
            .is_some_and(|i| i < target)
    {
        std::thread::sleep(CATCH_UP_POLL);
    }
    stop.store(true, Ordering::Release);
    let hidden_now =
        read_hidden(&host, &args.hidden_key).map_err(|e| MigrateError::file(url, e))?;
    // The follower may be inside a long poll: it is not waited for, only kept from the copy.
    let copy = state
        .lock()
        .map_err(|_| MigrateError::file(url, "the copy's lock is poisoned"))?
        .take()
        .ok_or_else(|| MigrateError::file(url, "no copy"))?;
    let mut copy = copy;
    copy.fill_to(target, super::unix_now_ns())
        .map_err(|e| MigrateError::file(url, e))?;
    let changed = copy.hidden_changed(&hidden_now);
    if !changed.is_empty() {
        return Err(MigrateError::file(
            url,
            format!(
                "hidden key(s) {} changed during the migration (etcd tells no watcher of hidden keys): stop writing them and migrate again",
                changed.join(", ")
            ),
        ));
    }
    let report = copy.unseen_report();
    let summary = copy.write(args)?;
    Ok((report, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined_and_cut_ones_refused() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").as_deref(),
            Some(&b"abcde"[..])
        );
        assert_eq!(dechunk(b"3\r\nabc\r\n"), None);
        assert_eq!(dechunk(b"zz\r\n"), None);
    }

    #[test]
    fn only_http_endpoints_are_followed() {
        assert_eq!(
            authority("http://127.0.0.1:2379/").unwrap(),
            "127.0.0.1:2379"
        );
        assert!(authority("https://127.0.0.1:2379").is_err());
    }
}
