//! Shared support for ringd's black-box tests: start a server (ringd or the reference etcd) on
//! free loopback ports, talk HTTP/1.1 to it with a tiny blocking client, and print readable
//! diffs.
//!
//! Std only (plus `serde_json`, a normal dependency of the ringd package). Every socket
//! operation has a bounded timeout, so no test can hang forever; every wait loop is bounded.
#![allow(dead_code)]

pub mod diff;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Timeout of every socket operation of the blocking client.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to answer `GET /version` after it was spawned.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest response head or chunk-size line the client accepts.
const HEAD_BYTES_MAX: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Ports, binaries, temp dirs
// ---------------------------------------------------------------------------------------------

/// A free TCP port on 127.0.0.1 (never 2379/2380, the ports of a system etcd).
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if port != 2379 && port != 2380 {
            return port;
        }
    }
}

/// Path of the reference etcd: `$ETCD_BIN`, else `etcd` on `$PATH`.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    find_in_path("etcd")
}

/// Whether the reference etcd is installed.
pub fn etcd_available() -> bool {
    etcd_binary().is_some()
}

/// Path of `etcdctl` (`$ETCDCTL_BIN`, else on `$PATH`).
pub fn etcdctl_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ETCDCTL_BIN") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    find_in_path("etcdctl")
}

/// Finds an executable on `$PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Path of the ringd binary under test: `$RINGD_BIN`, else the one cargo built for this test.
pub fn ringd_binary() -> PathBuf {
    match std::env::var_os("RINGD_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_ringd")),
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos:08x}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {path:?}: {e}"));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Server guard
// ---------------------------------------------------------------------------------------------

/// Which server a [`Server`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Etcd,
    Ringd,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Etcd => "etcd",
            Kind::Ringd => "ringd",
        }
    }
}

/// A running server process on free loopback ports with its own temp data dir. Killed (and
/// waited for) on drop; the data dir is removed then.
pub struct Server {
    kind: Kind,
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    // Dropped after the child is killed.
    dir: TempDir,
}

impl Server {
    /// Starts the reference etcd. Panics if it is not installed or does not come up.
    pub fn etcd() -> Server {
        let bin = etcd_binary().expect("etcd is not installed (apt-get install etcd-server)");
        Server::start(Kind::Etcd, &bin, &["--enable-v2=true"])
    }

    /// Starts the reference etcd with more flags (`extra` comes last, so `--data-dir DIR`
    /// there replaces the server's own temp data dir: Go's flag package keeps the last value).
    pub fn etcd_with(extra: &[&str]) -> Server {
        let bin = etcd_binary().expect("etcd is not installed (apt-get install etcd-server)");
        let args: Vec<&str> = std::iter::once("--enable-v2=true")
            .chain(extra.iter().copied())
            .collect();
        Server::start(Kind::Etcd, &bin, &args)
    }

    /// Stops the server with SIGTERM (etcd and ringd shut down cleanly on it) and waits for
    /// it to exit, at most `START_TIMEOUT` (then it is killed and this panics).
    pub fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: a signal to our own child, which has not been waited for (its pid is ours).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{} did not exit on SIGTERM", self.kind.name());
                }
            }
        }
    }

    /// Starts ringd with the etcd flags plus `extra` (e.g. `["--shards", "2"]`).
    pub fn ringd(extra: &[&str]) -> Server {
        Server::start(Kind::Ringd, &ringd_binary(), extra)
    }

    /// Starts `kind` (extra args apply to ringd only).
    pub fn of(kind: Kind, extra: &[&str]) -> Server {
        match kind {
            Kind::Etcd => Server::etcd(),
            Kind::Ringd => Server::ringd(extra),
        }
    }

    fn start(kind: Kind, bin: &Path, extra: &[&str]) -> Server {
        // A port picked by free_port() can be taken by someone else before the server binds
        // it: retry a few times with fresh ports when the process exits early.
        let mut last_error = String::new();
        for _attempt in 0..3 {
            match Server::try_start(kind, bin, extra) {
                Ok(server) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("{} did not start: {last_error}", kind.name());
    }

    fn try_start(kind: Kind, bin: &Path, extra: &[&str]) -> Result<Server, String> {
        let dir = TempDir::new(&format!("{}-test", kind.name()));
        let client_port = free_port();
        let mut peer_port = free_port();
        while peer_port == client_port {
            peer_port = free_port();
        }
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).map_err(|e| format!("log file: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log file: {e}"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--data-dir")
            .arg(&data_dir)
            .args(["--name", "default"])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd.spawn().map_err(|e| format!("spawn {bin:?}: {e}"))?;
        let mut server = Server {
            kind,
            child: Some(child),
            client_port,
            peer_port,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "{} exited with {status} during startup; log:\n{}",
                    kind.name(),
                    server.log_tail()
                ));
            }
            let ready = request_timeout(
                &server.addr(),
                "GET",
                "/version",
                &[],
                b"",
                Duration::from_secs(2),
            )
            // etcd also writes the decided cluster version (/0/version) into its store a moment
            // after start, consuming another index: wait until /version shows it decided.
            .map(|r| r.status == 200 && !String::from_utf8_lossy(&r.body).contains("not_decided"))
            .unwrap_or(false);
            // etcd answers /version before it has published its member attributes, a write
            // that consumes a store index: wait until the member has its name too, so that
            // tests see a stable X-Etcd-Index from the start.
            let ready = ready
                && request_timeout(
                    &server.addr(),
                    "GET",
                    "/v2/members",
                    &[],
                    b"",
                    Duration::from_secs(2),
                )
                .ok()
                .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
                .is_some_and(|v| {
                    v["members"][0]["name"]
                        .as_str()
                        .is_some_and(|n| !n.is_empty())
                });
            if ready {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not answer GET /version within {START_TIMEOUT:?}; log:\n{}",
                    kind.name(),
                    server.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(server)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:PEERPORT`
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// `127.0.0.1:PORT`, for the HTTP client functions.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The last ~4 KB of the server's stdout+stderr.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read(self.dir.path().join("server.log")).unwrap_or_default();
        let start = text.len().saturating_sub(4096);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        request(&self.addr(), method, path, headers, body)
    }

    pub fn get(&self, path: &str) -> Response {
        get(&self.addr(), path)
    }

    pub fn put_form(&self, path: &str, form: &str) -> Response {
        put_form(&self.addr(), path, form)
    }

    pub fn post_form(&self, path: &str, form: &str) -> Response {
        post_form(&self.addr(), path, form)
    }

    pub fn delete(&self, path: &str) -> Response {
        delete(&self.addr(), path)
    }

    /// The current `X-Etcd-Index` (from `GET /v2/keys/`).
    pub fn etcd_index(&self) -> u64 {
        let r = self.get("/v2/keys/");
        r.header("x-etcd-index")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no X-Etcd-Index on GET /v2/keys/: {r:?}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A ringd process on a data dir that outlives it: restarts (`start_on_dir` again on the same
/// dir) reuse the dir, the log and the peer port. Killed (and waited for) on drop.
pub struct Node {
    pub child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts ringd on `dir/data` with its client URL on `port` (log appended to
/// `dir/server.log`) and waits until it answers `GET /version`.
pub fn start_on_dir(dir: &Path, port: u16, extra: &[&str]) -> Result<Node, String> {
    start_on_dir_env(dir, port, extra, &[])
}

/// [`start_on_dir`] with extra environment variables.
pub fn start_on_dir_env(
    dir: &Path,
    port: u16,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Node, String> {
    let url = format!("http://127.0.0.1:{port}");
    // A peer port of its own, the same for every restart on this data dir (the default,
    // 2380, would collide between tests running at once).
    let peer_file = dir.join("peer_port");
    let peer_port = match std::fs::read_to_string(&peer_file) {
        Ok(p) => p.trim().parse::<u16>().map_err(|e| e.to_string())?,
        Err(_) => {
            let p = free_port();
            std::fs::write(&peer_file, p.to_string()).map_err(|e| e.to_string())?;
            p
        }
    };
    let peer = format!("http://127.0.0.1:{peer_port}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .map_err(|e| e.to_string())?;
    let child = Command::new(ringd_binary())
        .args(["--data-dir", &dir.join("data").display().to_string()])
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("default={peer}"),
        ])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut node = Node {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    for _ in 0..3000 {
        if let Some(status) = node.child.try_wait().map_err(|e| e.to_string())? {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            return Err(format!("ringd exited with {status}: {log}"));
        }
        if request_timeout(
            &node.addr,
            "GET",
            "/version",
            &[],
            b"",
            Duration::from_secs(1),
        )
        .is_ok()
        {
            return Ok(node);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err("ringd did not come up".to_string())
}

// ---------------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------------

/// A complete HTTP response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// Sends one request on a fresh connection and reads the whole response. Panics on I/O errors
/// and timeouts (each socket operation is bounded by [`IO_TIMEOUT`]).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    request_timeout(addr, method, path, headers, body, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// [`request`] with an explicit per-operation timeout, returning errors instead of panicking.
pub fn request_timeout(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, String> {
    let mut stream = Stream::open(addr, method, path, headers, body, timeout)?;
    stream.read_all()?;
    Ok(stream.into_response())
}

pub fn get(addr: &str, path: &str) -> Response {
    request(addr, "GET", path, &[], b"")
}

pub fn delete(addr: &str, path: &str) -> Response {
    request(addr, "DELETE", path, &[], b"")
}

pub const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

pub fn put_form(addr: &str, path: &str, form: &str) -> Response {
    request(addr, "PUT", path, &[FORM], form.as_bytes())
}

pub fn post_form(addr: &str, path: &str, form: &str) -> Response {
    request(addr, "POST", path, &[FORM], form.as_bytes())
}

/// Body framing of a response being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

/// An open response whose head has been read and whose body can be read incrementally: one
/// chunk or one line at a time (watches), or all at once.
pub struct Stream {
    reader: BufReader<TcpStream>,
    response: Response,
    framing: Framing,
    /// A head or chunk-size line read partially before a timeout.
    line_buf: Vec<u8>,
    /// Body bytes read but not yet returned by `next_line`.
    pending: Vec<u8>,
    done: bool,
}

impl Stream {
    /// Connects, sends the request and reads the response head. `Host` and (when there is a
    /// body, or for PUT/POST) `Content-Length` are added unless given in `headers`.
    pub fn open(
        addr: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Stream, String> {
        let mut stream = Stream::send(addr, method, path, headers, body, timeout)?;
        stream.read_head()?;
        Ok(stream)
    }

    /// Connects and sends the request without reading anything.
    pub fn send(
        addr: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Stream, String> {
        let mut stream = Stream::connect(addr, timeout)?;
        stream.write_request(method, path, headers, body)?;
        if method == "HEAD" {
            stream.framing = Framing::None;
        }
        Ok(stream)
    }

    /// A keep-alive connection with nothing sent yet: `write_request` and `read_response`
    /// (requests may be pipelined: several written before their answers are read).
    pub fn connect(addr: &str, timeout: Duration) -> Result<Stream, String> {
        let sock = connect(addr, timeout)?;
        Ok(Stream {
            reader: BufReader::new(sock),
            response: Response::default(),
            framing: Framing::UntilClose,
            line_buf: Vec::new(),
            pending: Vec::new(),
            done: false,
        })
    }

    /// Writes one request on the connection. `Host` and (when there is a body, or for
    /// PUT/POST) `Content-Length` are added unless given in `headers`.
    pub fn write_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), String> {
        let sock = self.reader.get_ref();
        let addr = sock.peer_addr().map_err(|e| e.to_string())?.to_string();
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        let has = |n: &str| headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(n));
        if !has("host") {
            req.push_str(&format!("Host: {addr}\r\n"));
        }
        if !has("content-length") && (!body.is_empty() || method == "PUT" || method == "POST") {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        (&*sock)
            .write_all(&bytes)
            .map_err(|e| format!("write: {e}"))
    }

    /// Keep-alive: reads the next whole response on the connection (not for HEAD requests).
    pub fn read_response(&mut self) -> Result<Response, String> {
        self.response = Response::default();
        self.framing = Framing::UntilClose;
        self.pending.clear();
        self.done = false;
        self.read_head()?;
        self.read_all()?;
        Ok(std::mem::take(&mut self.response))
    }

    /// Sets the timeout of the following socket reads.
    pub fn set_timeout(&mut self, timeout: Duration) {
        let _ = self.reader.get_ref().set_read_timeout(Some(timeout));
    }

    /// Reads the status line and headers, and decides the body framing.
    pub fn read_head(&mut self) -> Result<(), String> {
        let status_line = self.read_crlf_line()?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(format!("bad status line {status_line:?}"));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        self.response.status = status;
        self.response.reason = parts.next().unwrap_or("").to_string();
        loop {
            let line = self.read_crlf_line()?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("bad header line {line:?}"))?;
            self.response
                .headers
                .push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        if self.framing == Framing::None || status == 204 || status == 304 || status < 200 {
            self.framing = Framing::None;
        } else if self
            .response
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            self.framing = Framing::Chunked;
            self.response.chunked = true;
        } else if let Some(len) = self.response.header("content-length") {
            let len = len
                .parse()
                .map_err(|_| format!("bad Content-Length {len:?}"))?;
            self.framing = Framing::Length(len);
        }
        if self.framing == Framing::None || self.framing == Framing::Length(0) {
            self.done = true;
        }
        Ok(())
    }

    /// The head read so far (and the body read by [`Stream::read_all`]).
    pub fn response(&self) -> &Response {
        &self.response
    }

    pub fn into_response(self) -> Response {
        self.response
    }

    /// Reads the rest of the body into the response.
    pub fn read_all(&mut self) -> Result<(), String> {
        let mut body = std::mem::take(&mut self.pending);
        while let Some(chunk) = self.next_chunk()? {
            body.extend_from_slice(&chunk);
        }
        self.response.body.extend_from_slice(&body);
        Ok(())
    }

    /// The next piece of body: one chunk for chunked bodies, otherwise the whole body. `None`
    /// at the end of the body. A read timeout is an `Err` starting with "timeout".
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        if self.done {
            return Ok(None);
        }
        match self.framing {
            Framing::None => {
                self.done = true;
                Ok(None)
            }
            Framing::Length(n) => {
                let mut buf = vec![0; n];
                self.reader.read_exact(&mut buf).map_err(io_err)?;
                self.done = true;
                Ok(Some(buf))
            }
            Framing::UntilClose => {
                let mut buf = Vec::new();
                self.reader.read_to_end(&mut buf).map_err(io_err)?;
                self.done = true;
                Ok(Some(buf))
            }
            Framing::Chunked => {
                let size_line = self.read_crlf_line()?;
                let size_hex = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_hex, 16)
                    .map_err(|_| format!("bad chunk size line {size_line:?}"))?;
                if size == 0 {
                    // Trailers, then the final empty line.
                    while !self.read_crlf_line()?.is_empty() {}
                    self.done = true;
                    return Ok(None);
                }
                let mut buf = vec![0; size];
                self.reader.read_exact(&mut buf).map_err(io_err)?;
                let crlf = self.read_crlf_line()?;
                if !crlf.is_empty() {
                    return Err(format!("chunk not followed by CRLF: {crlf:?}"));
                }
                Ok(Some(buf))
            }
        }
    }

    /// The next `\n`-terminated line of the body (the terminator included), or the rest of the
    /// body if it ends without one. `None` at the end of the body.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            if let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
                let rest = self.pending.split_off(pos + 1);
                return Ok(Some(std::mem::replace(&mut self.pending, rest)));
            }
            match self.next_chunk()? {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None if self.pending.is_empty() => return Ok(None),
                None => return Ok(Some(std::mem::take(&mut self.pending))),
            }
        }
    }

    fn read_crlf_line(&mut self) -> Result<String, String> {
        // Partial input survives a timeout in `line_buf`, so the caller may retry.
        let limit = HEAD_BYTES_MAX.saturating_sub(self.line_buf.len()) as u64;
        let n = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.line_buf)
            .map_err(io_err)?;
        if self.line_buf.last() != Some(&b'\n') {
            return Err(if n == 0 {
                "connection closed".to_string()
            } else {
                "line too long or connection closed mid-line".to_string()
            });
        }
        let mut line = std::mem::take(&mut self.line_buf);
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8(line).map_err(|_| "non-UTF-8 head line".to_string())
    }
}

fn io_err(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timeout".to_string(),
        _ => format!("read: {e}"),
    }
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let sock_addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    let sock =
        TcpStream::connect_timeout(&sock_addr, timeout).map_err(|e| format!("connect: {e}"))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let _ = sock.set_nodelay(true);
    Ok(sock)
}

// ---------------------------------------------------------------------------------------------
// Readable diffs
// ---------------------------------------------------------------------------------------------

/// A line diff of two texts (LCS based), `-` for lines only in `left`, `+` for lines only in
/// `right`, two spaces for common lines. Meant for short texts (answers of a few dozen lines).
pub fn line_diff(left: &str, right: &str) -> String {
    let a: Vec<&str> = left.lines().collect();
    let b: Vec<&str> = right.lines().collect();
    if a.len() * b.len() > 4_000_000 {
        return format!("--- left\n{left}\n+++ right\n{right}\n");
    }
    // lcs[i][j] = length of the LCS of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        }
    }
    out
}

/// Asserts that two texts are equal, printing a line diff (`-` expected, `+` actual) if not.
#[track_caller]
pub fn assert_eq_text(expected: &str, actual: &str) {
    if expected != actual {
        panic!(
            "texts differ (- expected, + actual):\n{}\n--- expected:\n{expected}\n--- actual:\n{actual}",
            line_diff(expected, actual)
        );
    }
}

/// `eqnice`: asserts equality of two values through their pretty `Debug` forms, with a diff.
#[macro_export]
macro_rules! eqnice {
    ($expected:expr, $actual:expr $(,)?) => {{
        let expected = format!("{:#?}", $expected);
        let actual = format!("{:#?}", $actual);
        $crate::support::assert_eq_text(&expected, &actual);
    }};
}
pub mod cluster;
