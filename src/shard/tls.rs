//! TLS on the client and peer ports: rustls (ring provider) driven by hand over monoio's
//! `TcpStream`, the certificate files re-read when they change, `--auto-tls` certificates, and
//! the small DER reading the rest needs (a certificate's expiry and subject CN).
//!
//! `Stream` is what a connection reads and writes: a plain `TcpStream` (the http hot path: one
//! well-predicted branch per read or write, no dynamic dispatch, no extra copy) or a TLS
//! session over one. The session is driven here rather than through monoio-rustls because
//! the connection needs what that crate hides: the client certificate (its CN is the v2 user
//! under `--client-cert-auth`), and a ciphertext read that a watch may cancel without losing
//! bytes (the TCP read is cancelable; the ciphertext it returns is kept here).

use crate::config::TlsSettings;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A TLS handshake must complete within this (a silent client holds no slot for longer).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The certificate files are looked at (stat) at most this often.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Ciphertext read from the socket at a time.
const CIPHERTEXT_READ_BYTES: usize = 16 * 1024;
/// The first byte of a TLS handshake record: anything else on an https port is not TLS.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// ring's suites with the AES-128-GCM ones first (TLS 1.3 and 1.2), the server's choice
/// whatever the client's order (`ignore_client_order`): Go's servers, etcd among them, pick
/// AES-128-GCM on CPUs with AES instructions, where rustls's default order puts
/// AES-256-GCM-SHA384 first. AES-128 is cheaper per record, and SHA-256 per handshake
/// (this machine has no SHA-512 instructions: SHA-384's blocks were 11 % of a handshake).
fn provider() -> Arc<CryptoProvider> {
    use rustls::CipherSuite as C;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            C::TLS13_AES_128_GCM_SHA256
                | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    Arc::new(p)
}

/// One connection: plain TCP, or a TLS session (server side on accepted connections, client
/// side on the peer streams this member dials).
pub enum Stream {
    Plain(TcpStream),
    Server(Box<Tls<ServerConnection>>),
    Client(Box<Tls<ClientConnection>>),
}

impl Stream {
    /// Reads into `buf[buf.len()..buf.capacity()]` (at least one byte of room is reserved)
    /// and returns the buffer with what was read appended. Ok(0): the peer closed.
    ///
    /// The TLS paths of this and the other I/O methods run in boxed futures: a connection's
    /// task would otherwise carry their state (rustls's record handling, several awaits) in
    /// its size for its whole life, plain or not; an idle watcher is little but that task.
    pub async fn read_into(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        if buf.capacity() == buf.len() {
            buf.reserve(4096);
        }
        match self {
            Stream::Plain(s) => {
                let len = buf.len();
                let (res, slice) = s.read(monoio::buf::IoBufMut::slice_mut(buf, len..)).await;
                (res, slice.into_inner())
            }
            Stream::Server(t) => Box::pin(t.read_into(buf)).await,
            Stream::Client(t) => Box::pin(t.read_into(buf)).await,
        }
    }

    /// Writes all of `buf`; returns it (for reuse).
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Stream::Plain(s) => {
                let (res, buf) = s.write_all(buf).await;
                (res.map(|_| ()), buf)
            }
            Stream::Server(t) => Box::pin(t.write_all(buf)).await,
            Stream::Client(t) => Box::pin(t.write_all(buf)).await,
        }
    }

    /// Ends a TLS session with close_notify (as Go's `Close` does), so clients tell a complete
    /// response from a truncated one. Plain TCP: nothing to say.
    pub async fn close(&mut self) {
        match self {
            Stream::Plain(_) => {}
            Stream::Server(t) => {
                t.conn.send_close_notify();
                let _ = Box::pin(t.send_pending()).await;
            }
            Stream::Client(t) => {
                t.conn.send_close_notify();
                let _ = Box::pin(t.send_pending()).await;
            }
        }
    }

    /// Writes a shared byte string (a watch event rendered once for all the shard's
    /// watchers): plain TCP sends it as it is, without a copy.
    pub async fn write_shared(&mut self, mut bytes: bytes::Bytes) -> io::Result<()> {
        match self {
            Stream::Plain(s) => {
                // One send as a rule; monoio's `write_all` would do, but its future is twice
                // the size, and every idle watcher's task carries this one.
                while !bytes.is_empty() {
                    let (res, back) = s.write(bytes).await;
                    bytes = back;
                    match res? {
                        0 => return Err(io::ErrorKind::WriteZero.into()),
                        n => bytes::Buf::advance(&mut bytes, n),
                    }
                }
                Ok(())
            }
            Stream::Server(t) => Box::pin(t.write_all_slice(&bytes)).await,
            Stream::Client(t) => Box::pin(t.write_all_slice(&bytes)).await,
        }
    }

    /// Waits until the socket has something to read (or the peer closed), holding no buffer:
    /// an idle watcher waits on this beside its watcher, and costs no read buffer while it
    /// waits. Dropping the future cancels the wait. Plaintext a TLS session already holds
    /// counts as readable.
    pub async fn readable(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.readable(false).await,
            Stream::Server(t) => {
                if t.has_input() {
                    return Ok(());
                }
                t.tcp.readable(false).await
            }
            Stream::Client(t) => t.tcp.readable(false).await,
        }
    }

    /// After `readable`: appends to `out` the plaintext that can be read without waiting for
    /// more from the peer (TLS: possibly none yet, a record may be incomplete). Ok(false):
    /// the peer closed.
    pub async fn read_ready(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        match self {
            // After readiness a plain socket is read at once, without a ring round trip
            // (nothing there after all: Ok(true), and the caller waits again).
            Stream::Plain(s) => {
                out.reserve(READY_READ_BYTES);
                let spare = out.spare_capacity_mut();
                let n = loop {
                    // SAFETY: a non-blocking recv into the Vec's spare capacity, which the
                    // kernel writes at most `spare.len()` bytes of; the fd is the open socket
                    // `s` owns.
                    let n = unsafe {
                        libc::recv(
                            s.as_raw_fd(),
                            spare.as_mut_ptr().cast(),
                            spare.len(),
                            libc::MSG_DONTWAIT,
                        )
                    };
                    if n >= 0 {
                        break n as usize;
                    }
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::Interrupted => continue,
                        io::ErrorKind::WouldBlock => return Ok(true),
                        _ => return Err(e),
                    }
                };
                // SAFETY: the kernel initialized the first `n` bytes of the spare capacity.
                unsafe { out.set_len(out.len() + n) };
                Ok(n > 0)
            }
            Stream::Client(_) => {
                out.reserve(READY_READ_BYTES);
                let (res, buf) = self.read_into(std::mem::take(out)).await;
                *out = buf;
                Ok(res? > 0)
            }
            Stream::Server(t) => Box::pin(t.read_ready(out)).await,
        }
    }

    /// The socket of a plain connection (TLS: None), for `send_now`.
    pub fn plain_fd(&self) -> Option<std::os::fd::RawFd> {
        match self {
            Stream::Plain(s) => Some(s.as_raw_fd()),
            _ => None,
        }
    }
}

/// Sends what the socket `fd` takes now, without waiting and without the ring: the bytes
/// sent (WouldBlock when none fit). A watch's answer and a watch's head are a few hundred
/// bytes that an idle socket takes whole; sending them from the task that has them saves a
/// submission, a completion and a wake-up per watcher, which is most of a fan-out's cost
/// beside the TCP send itself.
pub fn send_now(fd: std::os::fd::RawFd, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: a non-blocking send of a live slice on a socket the caller owns.
        let n = unsafe {
            libc::send(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Stream {
    /// Lets go of buffers that hold nothing (TLS: the ciphertext read buffer, up to 16 KiB, and
    /// the record output buffer), before a connection waits idle on a watcher.
    pub fn release_buffers(&mut self) {
        match self {
            Stream::Plain(_) => {}
            Stream::Server(t) => t.shrink_idle(),
            Stream::Client(t) => t.shrink_idle(),
        }
    }
}

/// Bytes reserved for a read of what a watcher's client sends while it waits (normally
/// nothing; a pipelined request at most).
const READY_READ_BYTES: usize = 1024;

/// A rustls session over a TCP stream. `ciphertext[consumed..]` was read from the socket
/// and not yet handed to rustls.
pub struct Tls<C> {
    tcp: TcpStream,
    conn: C,
    ciphertext: Vec<u8>,
    consumed: usize,
    out: Vec<u8>,
    /// Plaintext rustls holds, as its last `IoState` said (less what was read since), and
    /// whether the peer's close_notify has come: `read_into` sizes its read by it.
    plain: usize,
    peer_closed: bool,
}

impl<C, D> Tls<C>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    fn new(tcp: TcpStream, conn: C) -> Self {
        Tls {
            tcp,
            conn,
            ciphertext: Vec::with_capacity(CIPHERTEXT_READ_BYTES),
            consumed: 0,
            out: Vec::new(),
            plain: 0,
            peer_closed: false,
        }
    }

    /// Runs the handshake to its end (the final flight written).
    async fn handshake(&mut self) -> io::Result<()> {
        while self.conn.is_handshaking() {
            if self.conn.wants_write() {
                self.send_pending().await?;
            } else if self.feed()? == 0 && self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during the handshake",
                ));
            }
        }
        self.send_pending().await
    }

    /// Hands buffered ciphertext to rustls; returns how many bytes it took. A TLS error
    /// leaves its alert queued (sent by the caller's next `send_pending`).
    fn feed(&mut self) -> io::Result<usize> {
        let mut taken = 0;
        while self.consumed < self.ciphertext.len() {
            let mut rest = &self.ciphertext[self.consumed..];
            let n = match self.conn.read_tls(&mut rest) {
                Ok(n) => n,
                // rustls' plaintext buffer is full: the reader must drain it first.
                Err(e) if e.kind() == io::ErrorKind::Other && taken > 0 => break,
                Err(e) => return Err(e),
            };
            self.consumed += n;
            taken += n;
            let state = self
                .conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.plain = state.plaintext_bytes_to_read();
            self.peer_closed = state.peer_has_closed();
            if n == 0 {
                break;
            }
        }
        if self.consumed == self.ciphertext.len() {
            self.ciphertext.clear();
            self.consumed = 0;
        }
        Ok(taken)
    }

    /// Reads more ciphertext from the socket; Ok(0) at its end.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut buf = std::mem::take(&mut self.ciphertext);
        buf.reserve(CIPHERTEXT_READ_BYTES);
        let len = buf.len();
        let (res, slice) = self
            .tcp
            .read(monoio::buf::IoBufMut::slice_mut(buf, len..))
            .await;
        self.ciphertext = slice.into_inner();
        res
    }

    /// Writes every TLS record rustls has queued.
    async fn send_pending(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            let mut out = std::mem::take(&mut self.out);
            out.clear();
            self.conn.write_tls(&mut out)?;
            let (res, buf) = self.tcp.write_all(out).await;
            self.out = buf;
            res?;
        }
        Ok(())
    }

    /// Moves the plaintext rustls holds into `out` (after feeding it what is buffered).
    fn plaintext_into(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            self.feed()?;
            let mut chunk = [0u8; 4096];
            match self.conn.reader().read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    self.plain = self.plain.saturating_sub(n);
                    out.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.plain = 0;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn read_into(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        loop {
            // Only the bytes rustls holds are made room for (zeroed, as its reader wants an
            // initialized slice): zeroing the whole spare capacity, 4-8 KiB per read for a
            // request of a few hundred bytes, was ~3% of an https GET's server CPU. Nothing
            // held and no close_notify: nothing to read, so no read is tried.
            if self.plain > 0 || self.peer_closed {
                if buf.capacity() == buf.len() {
                    buf.reserve(4096);
                }
                let len = buf.len();
                let room = buf.capacity() - len;
                let want = self.plain.max(1).min(room);
                buf.resize(len + want, 0);
                let res = self.conn.reader().read(&mut buf[len..]);
                match res {
                    Ok(n) => {
                        buf.truncate(len + n);
                        self.plain = self.plain.saturating_sub(n);
                        return (Ok(n), buf);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        buf.truncate(len);
                        self.plain = 0;
                    }
                    Err(e) => {
                        buf.truncate(len);
                        return (Err(e), buf);
                    }
                }
            }
            let progress = match self.feed() {
                Ok(n) => n,
                Err(e) => {
                    let _ = self.send_pending().await;
                    return (Err(e), buf);
                }
            };
            if self.conn.wants_write() {
                // Key updates, alerts: answer them before waiting for more.
                if let Err(e) = self.send_pending().await {
                    return (Err(e), buf);
                }
            }
            if progress == 0 {
                match self.fill().await {
                    Ok(0) => return (Ok(0), buf),
                    Ok(_) => {}
                    Err(e) => return (Err(e), buf),
                }
            }
        }
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let res = self.write_all_slice(&buf).await;
        (res, buf)
    }

    async fn write_all_slice(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut at = 0;
        while at < buf.len() {
            at += self.conn.writer().write(&buf[at..])?;
            self.send_pending().await?;
        }
        Ok(())
    }

    /// `Stream::read_ready` of a TLS session: one read of the ciphertext the socket holds.
    async fn read_ready(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        let before = out.len();
        self.plaintext_into(out)?;
        if out.len() > before {
            return Ok(true);
        }
        let open = self.fill().await? > 0;
        self.plaintext_into(out)?;
        Ok(open || out.len() > before)
    }

    /// Ciphertext buffered and not yet handed to rustls, or plaintext rustls holds.
    fn has_input(&mut self) -> bool {
        self.consumed < self.ciphertext.len()
            || self
                .conn
                .process_new_packets()
                .map_or(true, |s| s.plaintext_bytes_to_read() > 0)
    }

    /// Lets go of the ciphertext and output buffers when they hold nothing (an idle watcher
    /// keeps no 16 KiB read buffer).
    fn shrink_idle(&mut self) {
        if self.consumed == self.ciphertext.len() {
            self.ciphertext = Vec::new();
            self.consumed = 0;
        }
        self.out = Vec::new();
    }
}

/// Counts and rate-limits a kind of TLS failure: one log line per second at most, saying how
/// many were not logged.
pub struct RateLimited {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimited {
    pub const fn new() -> Self {
        RateLimited {
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Some(count of failures not logged since the last line) when this one may be logged.
    pub fn allow(&self) -> Option<u64> {
        let now = crate::shard::unix_now_ns() / 1_000_000;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for RateLimited {
    fn default() -> Self {
        Self::new()
    }
}

static HANDSHAKE_FAILURES: RateLimited = RateLimited::new();

/// What an https listener needs: the shared server configuration and whether the client
/// certificate's CN names the user (`--client-cert-auth`).
#[derive(Clone)]
pub struct Acceptor {
    config: Arc<ServerConfig>,
    cn_is_user: bool,
    /// "client" or "peer", for the log lines.
    port: &'static str,
}

/// An accepted TLS connection: the stream and, under `--client-cert-auth`, the CN of the
/// client certificate (the v2 user when no Authorization header is sent).
pub struct Accepted {
    pub stream: Stream,
    pub client_cn: Option<String>,
}

impl Acceptor {
    /// The TLS handshake on an accepted connection. Plaintext (anything but a TLS handshake
    /// record first) is closed without a byte, as etcd does; every failure is logged
    /// (rate-limited) and the connection closed.
    pub async fn accept(&self, tcp: TcpStream, remote: std::net::SocketAddr) -> Option<Accepted> {
        let res = monoio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(tcp)).await;
        let err = match res {
            Ok(Ok(a)) => return Some(a),
            Ok(Err(e)) => e,
            Err(_) => "handshake timed out".to_string(),
        };
        if let Some(suppressed) = HANDSHAKE_FAILURES.allow() {
            tracing::warn!(
                port = self.port, remote = %remote, error = %err, suppressed,
                "rejected TLS connection"
            );
        }
        None
    }

    async fn handshake(&self, mut tcp: TcpStream) -> Result<Accepted, String> {
        match first_byte(&tcp).await {
            Ok(Some(TLS_HANDSHAKE_RECORD)) => {}
            Ok(Some(_)) => {
                // Take what was sent (Go's TLS reader does), so the close is a FIN rather than
                // a reset: curl then says "Empty reply from server", as with etcd.
                let _ = tcp.read(Vec::with_capacity(CIPHERTEXT_READ_BYTES)).await;
                return Err("not TLS (plaintext on an https port?)".to_string());
            }
            Ok(None) => return Err("closed before the handshake".to_string()),
            Err(e) => return Err(e.to_string()),
        }
        let conn = ServerConnection::new(self.config.clone()).map_err(|e| e.to_string())?;
        let mut tls = Tls::new(tcp, conn);
        if let Err(e) = tls.handshake().await {
            let _ = tls.send_pending().await;
            return Err(e.to_string());
        }
        let client_cn = if self.cn_is_user {
            tls.conn
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| subject_cn(c.as_ref()))
        } else {
            None
        };
        Ok(Accepted {
            stream: Stream::Server(Box::new(tls)),
            client_cn,
        })
    }
}

/// The first byte the client sent, without taking it from the socket (None: closed).
async fn first_byte(tcp: &TcpStream) -> io::Result<Option<u8>> {
    loop {
        tcp.readable(false).await?;
        let mut byte = 0u8;
        // SAFETY: one byte is written into `byte`, which outlives the call.
        let n = unsafe {
            libc::recv(
                tcp.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            1 => return Ok(Some(byte)),
            0 => return Ok(None),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// What dialling peers over https needs.
#[derive(Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
}

impl Connector {
    /// The client side of a TLS handshake to `host` (the peer URL's host).
    pub async fn connect(&self, tcp: TcpStream, host: &str) -> Result<Stream, String> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host}: not a TLS server name: {e}"))?;
        let conn = ClientConnection::new(self.config.clone(), name).map_err(|e| e.to_string())?;
        let mut tls = Tls::new(tcp, conn);
        match monoio::time::timeout(HANDSHAKE_TIMEOUT, tls.handshake()).await {
            Ok(Ok(())) => Ok(Stream::Client(Box::new(tls))),
            Ok(Err(e)) => {
                let _ = tls.send_pending().await;
                Err(format!("TLS handshake: {e}"))
            }
            Err(_) => Err("TLS handshake timed out".to_string()),
        }
    }
}

impl Connector {
    /// A blocking exchange for start-up (`--initial-cluster-state existing` reads the members
    /// from a peer): sends `request`, reads the answer to its end (at most `limit` bytes).
    pub fn blocking_exchange(
        &self,
        tcp: std::net::TcpStream,
        host: &str,
        request: &[u8],
        limit: u64,
    ) -> Result<Vec<u8>, String> {
        let mut s = self.blocking_stream(tcp, host)?;
        s.write_all(request).map_err(|e| format!("TLS: {e}"))?;
        let mut buf = Vec::new();
        match s.take(limit).read_to_end(&mut buf) {
            Ok(_) => Ok(buf),
            // A peer that closes without close_notify after a complete answer.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !buf.is_empty() => Ok(buf),
            Err(e) => Err(format!("TLS: {e}")),
        }
    }
}

impl Connector {
    /// A blocking TLS session to `host` over `tcp` (the handshake runs at the first read or
    /// write): for start-up and the one-off commands, which run no executor.
    pub fn blocking_stream(
        &self,
        tcp: std::net::TcpStream,
        host: &str,
    ) -> Result<rustls::StreamOwned<ClientConnection, std::net::TcpStream>, String> {
        let name = ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        )
        .map_err(|e| format!("{host}: not a TLS server name: {e}"))?;
        let conn = ClientConnection::new(self.config.clone(), name).map_err(|e| e.to_string())?;
        Ok(rustls::StreamOwned::new(conn, tcp))
    }
}

/// A certificate and key from files, re-read when the files change (checked at most once a
/// second, at a handshake): a renewed certificate is served to the next connections without a
/// restart. A file that cannot be loaded (half written, expired) is logged and the previous
/// certificate kept.
#[derive(Debug)]
pub struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<ReloadState>,
}

#[derive(Debug)]
struct ReloadState {
    checked: Instant,
    stamp: Option<FileStamp>,
    key: Arc<CertifiedKey>,
}

/// What tells that a file changed: its modification time, size and inode.
type FileStamp = [(SystemTime, u64, u64); 2];

fn stamp_of(cert: &Path, key: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len(), m.ino()))
    };
    Some([one(cert)?, one(key)?])
}

impl Reloading {
    pub fn open(cert: &Path, key: &Path) -> Result<Reloading, String> {
        let provider = provider();
        let stamp = stamp_of(cert, key);
        let certified = load_certified(cert, key, &provider)?;
        Ok(Reloading {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            state: Mutex::new(ReloadState {
                checked: Instant::now(),
                stamp,
                key: certified,
            }),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= RELOAD_CHECK_INTERVAL {
            state.checked = Instant::now();
            let stamp = stamp_of(&self.cert, &self.key);
            if stamp.is_some() && stamp != state.stamp {
                match load_certified(&self.cert, &self.key, &self.provider) {
                    Ok(k) => {
                        tracing::info!(cert = %self.cert.display(), "certificate reloaded");
                        state.key = k;
                        state.stamp = stamp;
                    }
                    Err(e) => {
                        // The stamp stays old: the next check tries again (a file half
                        // written now is whole then).
                        tracing::warn!(error = %e, "certificate not reloaded; serving the previous one");
                    }
                }
            }
        }
        state.key.clone()
    }
}

impl rustls::server::ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for Reloading {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// Loads a certificate chain and its key; refuses an expired (or not yet valid) leaf, and a
/// key that is not the certificate's.
fn load_certified(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let certs = load_certs(cert, "certificate")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (not_before, not_after) = validity(certs[0].as_ref())
        .ok_or_else(|| format!("certificate {}: cannot read its validity", cert.display()))?;
    if now > not_after {
        return Err(format!(
            "certificate {} expired at {} (unix seconds; now {now}): renew it",
            cert.display(),
            not_after
        ));
    }
    if now < not_before {
        return Err(format!(
            "certificate {} is not valid before {} (unix seconds; now {now})",
            cert.display(),
            not_before
        ));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("key {}: no usable PEM private key: {e}", key.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("key {}: {e}", key.display()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "key {} does not match certificate {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(certified))
}

fn roots_from(path: &Path, what: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path, what)? {
        roots
            .add(c)
            .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The server side of a port (`port`: "client" or "peer", for messages). The certificate
/// and key are the settings' files (made by `auto_tls` before for `--auto-tls`).
pub fn acceptor(s: &TlsSettings, port: &'static str) -> Result<Acceptor, String> {
    let (cert, key) = s.files()?;
    let resolver = Arc::new(Reloading::open(cert, key)?);
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match &s.trusted_ca_file {
        // etcd: a trusted CA alone already demands client certificates at the TLS level.
        Some(ca) => {
            let roots = Arc::new(roots_from(Path::new(ca), "trusted CA file")?);
            let v = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| format!("trusted CA file {ca}: {e}"))?;
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.ignore_client_order = true;
    Ok(Acceptor {
        config: Arc::new(config),
        cn_is_user: s.client_cert_auth,
        port,
    })
}

/// The client side of the peer port: peer certificates are checked against
/// `--peer-trusted-ca-file`; with `--peer-auto-tls` and no trusted CA they are not checked
/// (self-signed certificates cannot be, as etcd). This member shows its peer certificate.
pub fn connector(s: &TlsSettings) -> Result<Connector, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match &s.trusted_ca_file {
        Some(ca) => builder.with_root_certificates(roots_from(Path::new(ca), "trusted CA file")?),
        None if s.auto_tls => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider()))),
        None => return Err(
            "peer TLS needs --peer-trusted-ca-file to check the other members' certificates (or --peer-auto-tls)"
                .to_string(),
        ),
    };
    let config = match s.files() {
        Ok((cert, key)) => builder.with_client_cert_resolver(Arc::new(Reloading::open(cert, key)?)),
        Err(_) => builder.with_no_client_auth(),
    };
    Ok(Connector {
        config: Arc::new(config),
    })
}

/// `--peer-auto-tls` without a trusted CA: any certificate (the handshake signatures are still
/// checked).
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `--auto-tls`: a self-signed certificate (subject O=etcd, as etcd's) for `hosts`, kept in
/// `dir` (`cert.pem`, `key.pem`) and reused while it is valid.
pub fn auto_tls(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), String> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() && load_certified(&cert, &key, &provider()).is_ok() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut names: Vec<String> = hosts.to_vec();
    for n in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|h| h == n) {
            names.push(n.to_string());
        }
    }
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| format!("--auto-tls: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "etcd");
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + Duration::from_secs(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
    params.not_before = now - Duration::from_secs(60);
    params.not_after = now + Duration::from_secs(365 * 24 * 3600);
    let pair = rcgen::KeyPair::generate().map_err(|e| format!("--auto-tls: {e}"))?;
    let signed = params
        .self_signed(&pair)
        .map_err(|e| format!("--auto-tls: {e}"))?;
    std::fs::write(&cert, signed.pem())
        .map_err(|e| format!("cannot write {}: {e}", cert.display()))?;
    std::fs::write(&key, pair.serialize_pem())
        .map_err(|e| format!("cannot write {}: {e}", key.display()))?;
    Ok((cert, key))
}

// DER reading: just what is needed of an X.509 certificate (RFC 5280 4.1): the validity and
// the subject's CN.

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The TBSCertificate's fields after the serial number: signature, issuer, validity, subject.
fn tbs_fields(cert: &[u8]) -> Option<[&[u8]; 4]> {
    let (_, cert, _) = der(cert)?;
    let (_, tbs, _) = der(cert)?;
    let (tag, _, mut rest) = der(tbs)?;
    if tag == 0xa0 {
        rest = der(rest)?.2; // the version was explicit: the serial follows it
    }
    let mut fields = [&[][..]; 4];
    for f in &mut fields {
        let (_, value, next) = der(rest)?;
        *f = value;
        rest = next;
    }
    Some(fields)
}

/// (notBefore, notAfter) in unix seconds.
pub fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    let [_, _, validity, _] = tbs_fields(cert)?;
    let (t1, before, rest) = der(validity)?;
    let (t2, after, _) = der(rest)?;
    Some((der_time(t1, before)?, der_time(t2, after)?))
}

/// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ) in unix seconds.
fn der_time(tag: u8, text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = text.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    if rest.len() != 10 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |i: usize| rest[i..i + 2].parse::<i64>().ok();
    let (month, day, h, m, s) = (num(0)?, num(2)?, num(4)?, num(6)?, num(8)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// The subject's common name (OID 2.5.4.3), if it has one.
pub fn subject_cn(cert: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let [_, _, _, mut subject] = tbs_fields(cert)?;
    while let Some((_, set, next)) = der(subject) {
        let (_, attr, _) = der(set)?;
        let (_, oid, value) = der(attr)?;
        if oid == CN {
            let (_, text, _) = der(value)?;
            return String::from_utf8(text.to_vec()).ok();
        }
        subject = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_picks_aes_128_gcm_whatever_the_clients_order() {
        let dir = std::env::temp_dir().join(format!("ringd-suite-{}", std::process::id()));
        let (cert, key) = auto_tls(&dir, &["localhost".to_string()]).unwrap();
        let settings = crate::config::TlsSettings {
            cert_file: Some(cert.display().to_string()),
            key_file: Some(key.display().to_string()),
            ..Default::default()
        };
        let server_config = acceptor(&settings, "client").unwrap().config;
        // rustls's own default order (AES-256-GCM-SHA384 first), as loadgen's client offers.
        let plain = Arc::new(rustls::crypto::ring::default_provider());
        let client_config = ClientConfig::builder_with_provider(plain.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(plain)))
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = rustls::ServerConnection::new(server_config).unwrap();
        for _ in 0..10 {
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).unwrap();
            server.read_tls(&mut bytes.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut bytes = Vec::new();
            server.write_tls(&mut bytes).unwrap();
            client.read_tls(&mut bytes.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        let suite = server.negotiated_cipher_suite().map(|s| s.suite());
        assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn cert(cn: &str, not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "etcd");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.not_before = rcgen::date_time_ymd(2001, 2, 3);
        p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn validity_and_cn_are_read_from_der() {
        let c = cert("root", (2049, 12, 31));
        // 2001-02-03T00:00:00Z and 2049-12-31T00:00:00Z (UTCTime both).
        assert_eq!(validity(&c), Some((981_158_400, 2_524_521_600)));
        assert_eq!(subject_cn(&c).as_deref(), Some("root"));
        // GeneralizedTime from 2050 on.
        let c = cert("user one", (2051, 1, 1));
        assert_eq!(validity(&c).map(|v| v.1), Some(2_556_143_999 + 1));
        assert_eq!(subject_cn(&c).as_deref(), Some("user one"));
        assert_eq!(validity(&c[..20]), None);
        assert_eq!(subject_cn(b"garbage"), None);
    }

    #[test]
    fn the_rate_limit_lets_one_line_a_second_through() {
        let r = RateLimited::new();
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        r.last_ms.store(0, Ordering::Relaxed);
        assert_eq!(r.allow(), Some(2));
    }
}
