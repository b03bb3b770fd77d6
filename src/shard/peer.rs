//! The peer thread: raft messages between members over ringd's peer wire (docs/peer-wire.md).
//!
//! One monoio executor (io_uring, with the same epoll fallback as the client shards) runs:
//! - an accept loop per `--listen-peer-urls` address: each connection's first HTTP request is
//!   `GET /members`, `GET /version`, or `POST /ringd/raft`, which is checked (cluster id, both
//!   member ids) and turns the connection into an inbound stream of framed raft messages that
//!   go to the raft shard's peer inbox;
//! - a router that takes the raft shard's outgoing messages that have no link yet (and every
//!   snapshot) and puts each in its peer's bounded queue, dropping it (and reporting the peer
//!   unreachable) when the queue is full;
//! - a writer per peer that dials the peer's advertised peer URL, keeps the connection, and
//!   writes every queued message in one write; it redials with backoff.
//!
//! The raft shard sends on a peer's plain TCP connection itself, with one non-blocking send,
//! when nothing is queued for that peer and no write is in flight ([`PeerSender`]): that
//! saves the peer thread a wake-up per Ready round and peer. Otherwise (TLS, not connected,
//! busy, a send the socket did not take whole) the frames go to the writer's queue. The raft
//! shard never waits on this thread: it hands messages over with `try_send`.

use super::raft_wait::RaftTx;
use super::tls::{Acceptor, Connector, Stream};
use super::Shared;
use crate::http::response::{json, message_response, peer_stream_request, respond};
use crate::limits::{PEER_MESSAGE_BYTES_MAX, PEER_QUEUE_MESSAGES_MAX};
use crate::members::Membership;
use monoio::net::{TcpListener, TcpStream};
use protobuf::Message as _;
use raft::eraftpb::Message;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the peer thread tells the raft shard.
pub enum PeerIn {
    /// A raft message from a peer, already checked against the stream's handshake.
    Message(Box<Message>),
    /// An accepted plain-TCP raft stream from `from`, for the raft thread to read itself;
    /// `buffered` is what was read past its handshake.
    Stream {
        from: u64,
        tcp: std::net::TcpStream,
        buffered: Vec<u8>,
    },
    /// Messages to this peer were dropped: raft-rs should probe it instead of streaming.
    Unreachable(u64),
    /// A snapshot to this peer was delivered (true) or failed (false): raft-rs's
    /// `report_snapshot`, without which a lost snapshot would stall that follower.
    SnapshotStatus(u64, bool),
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Bytes of frames gathered into one write.
const WRITE_BATCH_BYTES: usize = 1 << 20;
/// A handshake or an HTTP request head on the peer port must arrive within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const HEAD_BYTES_MAX: usize = 16 * 1024;

/// What a peer's writer sends, in queue order.
enum Out {
    /// A message from the router (encoded by the writer).
    Msg(Message),
    /// Whole frames the raft shard encoded.
    Frames(Vec<u8>),
    /// The rest of a frame the raft shard sent in part on connection `conn`: only that
    /// connection may carry it (on another it would split a frame).
    Rest { conn: u64, bytes: Vec<u8> },
}

/// A peer's writer queue and the state under which the raft shard may bypass it.
pub struct Link {
    tx: flume::Sender<Out>,
    state: std::sync::Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    /// The plain TCP connection's socket while the writer holds it open (None: TLS, or not
    /// connected). The writer clears it, under this lock, before it closes the socket, so a
    /// send under the lock never reaches a closed or reused descriptor.
    fd: Option<std::os::fd::RawFd>,
    /// Counts the writer's connections: a `Rest` belongs to one.
    conn: u64,
    /// The peer URL `fd` was dialled at: after a `PUT /v2/members` the writer redials.
    url: String,
    /// Something is queued or being written: bytes sent now could overtake or split those.
    /// Set by whoever queues (under this lock); cleared by the writer, under this lock, only
    /// when its queue is empty and no write is in flight.
    busy: bool,
}

impl Link {
    fn state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `out` for the writer (marking the link busy); false when the queue is full or
    /// the writer ended.
    fn queue(&self, st: &mut LinkState, out: Out) -> bool {
        let ok = self.tx.try_send(out).is_ok();
        st.busy |= ok;
        ok
    }
}

/// The links of the peers that have a writer, shared by the peer thread and the raft shard.
#[derive(Default)]
pub struct Links(std::sync::Mutex<HashMap<u64, Arc<Link>>>);

impl Links {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Link>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, to: u64) -> Option<Arc<Link>> {
        self.map().get(&to).cloned()
    }
}

/// The raft shard's end of the peer transport (see the module's comment).
pub struct PeerSender {
    links: Arc<Links>,
    /// To the peer thread's router: snapshots, and peers without a writer yet.
    outgoing: flume::Sender<Message>,
    buf: Vec<u8>,
}

impl PeerSender {
    pub fn new(links: Arc<Links>, outgoing: flume::Sender<Message>) -> PeerSender {
        PeerSender {
            links,
            outgoing,
            buf: Vec::new(),
        }
    }

    /// Sends a Ready round's messages; returns the peers some of whose messages were dropped
    /// (a full queue: raft-rs should probe them).
    /// `membership` says each peer's URL now (None: send nothing directly).
    pub fn send(&mut self, membership: Option<&Membership>, messages: Vec<Message>) -> Vec<u64> {
        let mut dropped = Vec::new();
        let mut rest = messages;
        while let Some(to) = rest.first().map(|m| m.to) {
            // Each peer's messages, in raft's order.
            let (mine, others): (Vec<Message>, Vec<Message>) =
                rest.into_iter().partition(|m| m.to == to);
            rest = others;
            if !self.send_to(membership, to, mine) {
                dropped.push(to);
            }
        }
        dropped
    }

    fn send_to(
        &mut self,
        membership: Option<&Membership>,
        to: u64,
        messages: Vec<Message>,
    ) -> bool {
        use raft::eraftpb::MessageType::MsgSnapshot;
        let link = self.links.get(to);
        let mut ok = true;
        let mut framed = Vec::new();
        for m in messages {
            match &link {
                // A snapshot takes a connection of its own; a peer without a writer gets one
                // from the router.
                Some(_) if m.get_msg_type() != MsgSnapshot => framed.push(m),
                _ => ok &= self.outgoing.try_send(m).is_ok(),
            }
        }
        let Some(link) = link.filter(|_| !framed.is_empty()) else {
            return ok;
        };
        self.buf.clear();
        for m in &framed {
            encode_frame(m, &mut self.buf);
        }
        let url = membership.and_then(|m| peer_url(m, to));
        let mut st = link.state();
        let mut sent = 0;
        if let Some(fd) = st
            .fd
            .filter(|_| !st.busy && url.as_deref() == Some(st.url.as_str()))
        {
            // An error here (the peer closed) is the writer's to find: the frames go to its
            // queue, its write fails, and it redials.
            sent = super::tls::send_now(fd, &self.buf).unwrap_or(0);
            if sent == self.buf.len() {
                return ok;
            }
        }
        let out = if sent > 0 {
            Out::Rest {
                conn: st.conn,
                bytes: self.buf[sent..].to_vec(),
            }
        } else {
            Out::Frames(std::mem::take(&mut self.buf))
        };
        if link.queue(&mut st, out) {
            return ok;
        }
        if sent > 0 {
            // Not reachable while `busy` holds (an empty queue has room), but a frame cut in
            // half must never be followed by another: end the connection instead.
            if let Some(fd) = st.fd {
                // SAFETY: `fd` is open while the lock is held (see `LinkState::fd`).
                unsafe { libc::shutdown(fd, libc::SHUT_WR) };
            }
        }
        false
    }
}

struct PeerCtx {
    shared: Arc<Shared>,
    inbox: RaftTx<PeerIn>,
    links: Arc<Links>,
    /// Last time a cluster-id mismatch was logged, per remote IP (rate limit).
    mismatch_logged: RefCell<HashMap<std::net::IpAddr, Instant>>,
    /// Dials https peer URLs (None: no peer TLS configured).
    tls: Option<Connector>,
}

/// Runs the peer executor until the process exits.
pub fn peer_main(
    shared: Arc<Shared>,
    listeners: Vec<(std::net::TcpListener, Option<Acceptor>)>,
    tls: Option<Connector>,
    outgoing: flume::Receiver<Message>,
    inbox: RaftTx<PeerIn>,
    links: Arc<Links>,
) {
    let mut rt = super::runtime::build("peer");
    rt.block_on(async move {
        let ctx = Rc::new(PeerCtx {
            shared,
            inbox,
            links,
            mismatch_logged: RefCell::new(HashMap::new()),
            tls,
        });
        for (l, tls) in listeners {
            match TcpListener::from_std(l) {
                Ok(l) => {
                    monoio::spawn(accept_loop(ctx.clone(), l, tls));
                }
                Err(e) => tracing::error!(error = %e, "cannot adopt peer listener"),
            }
        }
        monoio::spawn(keep_dialled(ctx.clone()));
        route(ctx, outgoing).await;
    });
}

/// Puts each outgoing message in its peer's queue, starting the peer's writer on first use.
async fn route(ctx: Rc<PeerCtx>, outgoing: flume::Receiver<Message>) {
    while let Ok(m) = outgoing.recv_async().await {
        let to = m.to;
        if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            // Its own connection, so a large snapshot never holds up the heartbeats and
            // appends of the normal stream. raft-rs sends one at a time per follower.
            monoio::spawn(send_snapshot(ctx.clone(), m));
            continue;
        }
        let link = writer_for(&ctx, to);
        let mut st = link.state();
        if !link.queue(&mut st, Out::Msg(m)) {
            // Full (the peer is slow or down) or its writer ended (removed member).
            let _ = ctx.inbox.try_send(PeerIn::Unreachable(to));
            if link.tx.is_disconnected() {
                ctx.links.map().remove(&to);
            }
        }
    }
}

/// `to`'s link, starting its writer (and its connection) if there is none.
fn writer_for(ctx: &Rc<PeerCtx>, to: u64) -> Arc<Link> {
    ctx.links
        .map()
        .entry(to)
        .or_insert_with(|| {
            let (tx, rx) = flume::bounded(PEER_QUEUE_MESSAGES_MAX);
            let link = Arc::new(Link {
                tx,
                state: Default::default(),
            });
            monoio::spawn(write_loop(ctx.clone(), to, link.clone(), rx));
            link
        })
        .clone()
}

/// Keeps a stream open to every other member, messages or not (as etcd does): a follower
/// otherwise talks only to the leader, and the members API's strict checks count the peers
/// this member has been connected to.
async fn keep_dialled(ctx: Rc<PeerCtx>) {
    loop {
        let membership = ctx.shared.membership.load_full();
        for id in membership.members.keys() {
            if *id != ctx.shared.self_id {
                writer_for(&ctx, *id);
            }
        }
        monoio::time::sleep(BACKOFF_MAX).await;
    }
}

fn peer_url(m: &Membership, id: u64) -> Option<String> {
    m.members
        .get(&id)
        .and_then(|m| m.peer_urls.first().cloned())
}

/// `http://host:port` -> its `host:port`.
fn authority(url: &str) -> &str {
    url.split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(url)
        .trim_end_matches('/')
}

/// `http://host:port` -> a socket address (numeric hosts, or a resolver lookup). Blocking.
fn resolve(url: &str) -> std::io::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    authority(url)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{url}: no address")))
}

/// `resolve` without blocking the executor: a numeric address at once, a host name on a
/// short-lived thread of its own. The lookup (getaddrinfo) can take seconds when a name
/// server is slow or gone, and meanwhile the executor serves every other peer: their
/// queued writes, TLS streams, snapshots and handshakes.
async fn resolve_async(url: &str) -> std::io::Result<std::net::SocketAddr> {
    if let Ok(addr) = authority(url).parse::<std::net::SocketAddr>() {
        return Ok(addr);
    }
    let (tx, rx) = flume::bounded(1);
    let owned = url.to_string();
    std::thread::Builder::new()
        .name("peer-dns".to_string())
        .spawn(move || {
            let _ = tx.send(resolve(&owned));
        })?;
    match monoio::time::timeout(HEAD_TIMEOUT, rx.recv_async()).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(std::io::Error::other("the name lookup thread ended")),
        // The thread finishes on its own; its answer then goes nowhere.
        Err(_) => Err(std::io::Error::other(format!(
            "{url}: name lookup timed out"
        ))),
    }
}

/// Dials `to`, keeps the stream, writes its queue; redials with backoff. Ends when `to` is
/// no longer a member.
async fn write_loop(ctx: Rc<PeerCtx>, to: u64, link: Arc<Link>, rx: flume::Receiver<Out>) {
    let mut backoff = BACKOFF_MIN;
    let mut was_connected = true;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    // Frames taken from the queue for a connection that had to be redialled first.
    let mut carried: Option<Out> = None;
    loop {
        let membership = ctx.shared.membership.load_full();
        let Some(url) = peer_url(&membership, to) else {
            tracing::info!(peer = %format!("{to:x}"), "peer is no longer a member; its writer stops");
            ctx.links.map().remove(&to);
            return;
        };
        let stream = match dial(&ctx, &url, to, "/ringd/raft").await {
            Ok(s) => s,
            Err(e) => {
                if was_connected {
                    tracing::warn!(peer = %format!("{to:x}"), url = %url, error = %e, "cannot reach peer");
                } else {
                    tracing::debug!(peer = %format!("{to:x}"), url = %url, error = %e, "cannot reach peer");
                }
                was_connected = false;
                // What queued meanwhile is stale: drop it and let raft probe later.
                if rx.drain().count() > 0 || carried.take().is_some() {
                    let _ = ctx.inbox.try_send(PeerIn::Unreachable(to));
                }
                monoio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        tracing::info!(peer = %format!("{to:x}"), url = %url, "peer connected");
        ctx.shared
            .peer_active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(to)
            .or_insert_with(Instant::now);
        backoff = BACKOFF_MIN;
        was_connected = true;
        let mut stream = stream;
        let conn = {
            let mut st = link.state();
            st.conn += 1;
            st.fd = match &stream {
                Stream::Plain(tcp) => Some(std::os::fd::AsRawFd::as_raw_fd(tcp)),
                _ => None,
            };
            st.url = url.clone();
            st.busy = carried.is_some() || !rx.is_empty();
            st.conn
        };
        let reason = loop {
            let first = match carried.take() {
                Some(m) => m,
                None => match rx.recv_async().await {
                    Ok(m) => m,
                    Err(_) => {
                        // Not reached while `link` holds the sender; the socket closes here.
                        link.state().fd = None;
                        return;
                    }
                },
            };
            // The member's URL may have changed (PUT /v2/members): redial the new one, and
            // send these frames there (they may hold a forwarded proposal: losing it would
            // leave its client waiting for the timeout).
            let current = peer_url(&ctx.shared.membership.load(), to);
            if current.as_deref() != Some(url.as_str()) {
                carried = Some(first).filter(|o| !matches!(o, Out::Rest { .. }));
                break "peer URL changed".to_string();
            }
            buf.clear();
            add_out(first, conn, &mut buf);
            while buf.len() < WRITE_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(o) => add_out(o, conn, &mut buf),
                    Err(_) => break,
                }
            }
            let (res, b) = stream.write_all(std::mem::take(&mut buf)).await;
            buf = b;
            if let Err(e) = res {
                let _ = ctx.inbox.try_send(PeerIn::Unreachable(to));
                break e.to_string();
            }
            let mut st = link.state();
            if rx.is_empty() {
                st.busy = false;
            }
        };
        // Before the socket closes: the raft shard must not send on it any more.
        link.state().fd = None;
        drop(stream);
        tracing::warn!(peer = %format!("{to:x}"), reason = %reason, "peer disconnected");
        ctx.shared
            .peer_active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&to);
    }
}

/// Appends what `out` puts on connection `conn` to `buf`.
fn add_out(out: Out, conn: u64, buf: &mut Vec<u8>) {
    match out {
        Out::Msg(m) => encode_frame(&m, buf),
        Out::Frames(b) => buf.extend_from_slice(&b),
        Out::Rest { conn: c, bytes } if c == conn => buf.extend_from_slice(&bytes),
        // Begun on a connection that is gone: the peer never saw that frame's start.
        Out::Rest { .. } => {}
    }
}

pub(super) fn encode_frame(m: &Message, out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&[0u8; 8]);
    if m.write_to_vec(out).is_err() {
        out.truncate(at);
        return;
    }
    let payload = &out[at + 8..];
    let len = payload.len() as u32;
    let crc = crc32c::crc32c(payload);
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Bytes of a snapshot per chunk on the snapshot stream, each with its own CRC.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// How long a snapshot transfer (sent, checked, handed to the follower's raft) may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends one MsgSnapshot on a connection of its own (docs/peer-wire.md, "Snapshots") and
/// reports the outcome to raft.
async fn send_snapshot(ctx: Rc<PeerCtx>, m: Message) {
    let to = m.to;
    let ok = match monoio::time::timeout(SNAPSHOT_TIMEOUT, snapshot_transfer(&ctx, &m)).await {
        Ok(Ok(bytes)) => {
            tracing::info!(peer = %format!("{to:x}"), bytes, "snapshot sent");
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(peer = %format!("{to:x}"), error = %e, "snapshot not sent");
            false
        }
        Err(_) => {
            tracing::warn!(peer = %format!("{to:x}"), "snapshot transfer timed out");
            false
        }
    };
    // The raft shard must hear this one: a snapshot left pending stalls the follower.
    let _ = ctx.inbox.send_async(PeerIn::SnapshotStatus(to, ok)).await;
}

async fn snapshot_transfer(ctx: &PeerCtx, m: &Message) -> Result<usize, String> {
    let url = peer_url(&ctx.shared.membership.load(), m.to).ok_or("not a member")?;
    let mut stream = dial(ctx, &url, m.to, "/ringd/snapshot").await?;
    let payload = m.write_to_bytes().map_err(|e| e.to_string())?;
    let mut out =
        Vec::with_capacity(payload.len() + 8 + 8 * (payload.len() / SNAPSHOT_CHUNK_BYTES + 1));
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    for chunk in payload.chunks(SNAPSHOT_CHUNK_BYTES) {
        out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(chunk).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    let (res, _) = stream.write_all(out).await;
    res.map_err(|e| e.to_string())?;
    // One byte back once the follower checked it and handed it to its raft.
    let (res, ack) = stream.read_into(Vec::with_capacity(1)).await;
    match res {
        Ok(1) if ack[0] == 1 => Ok(payload.len()),
        Ok(_) => Err("the follower closed the snapshot stream".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Receives one snapshot (after the handshake): the total length, then chunks with their
/// CRCs; hands the message to the raft shard and acknowledges with one byte.
async fn read_snapshot(
    ctx: &PeerCtx,
    mut stream: Stream,
    mut buf: Vec<u8>,
    from: u64,
) -> Result<(), String> {
    while buf.len() < 8 {
        buf = read_more(&mut stream, buf).await?;
    }
    let total = u64::from_le_bytes(buf[..8].try_into().map_err(|_| "short")?) as usize;
    if total > PEER_MESSAGE_BYTES_MAX {
        return Err(format!(
            "snapshot of {total} bytes from {from:x} is over the limit"
        ));
    }
    let mut payload = Vec::with_capacity(total);
    let mut pos = 8;
    while payload.len() < total {
        while buf.len() - pos < 8 {
            buf = read_more(&mut stream, buf).await?;
        }
        let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().map_err(|_| "short")?) as usize;
        let crc = u32::from_le_bytes(buf[pos + 4..pos + 8].try_into().map_err(|_| "short")?);
        if len > SNAPSHOT_CHUNK_BYTES || payload.len() + len > total {
            return Err(format!("bad snapshot chunk of {len} bytes from {from:x}"));
        }
        while buf.len() - pos < 8 + len {
            buf = read_more(&mut stream, buf).await?;
        }
        let chunk = &buf[pos + 8..pos + 8 + len];
        if crc32c::crc32c(chunk) != crc {
            return Err(format!("snapshot chunk from {from:x} fails its CRC"));
        }
        payload.extend_from_slice(chunk);
        buf.drain(..pos + 8 + len);
        pos = 0;
    }
    let m = Message::parse_from_bytes(&payload).map_err(|e| e.to_string())?;
    if m.from != from
        || m.to != ctx.shared.self_id
        || m.get_msg_type() != raft::eraftpb::MessageType::MsgSnapshot
    {
        return Err(format!("not a snapshot for this member from {from:x}"));
    }
    tracing::info!(from = %format!("{from:x}"), bytes = total, "snapshot received");
    ctx.inbox
        .send_async(PeerIn::Message(Box::new(m)))
        .await
        .map_err(|_| "the raft shard stopped")?;
    let (res, _) = stream.write_all(vec![1u8]).await;
    res.map_err(|e| e.to_string())?;
    Ok(())
}

/// Connects and performs the stream handshake on `path`; Ok when the peer answered 200.
async fn dial(ctx: &PeerCtx, url: &str, to: u64, path: &str) -> Result<Stream, String> {
    let addr = resolve_async(url).await.map_err(|e| e.to_string())?;
    let connect = TcpStream::connect(addr);
    let tcp = match monoio::time::timeout(HEAD_TIMEOUT, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("connect timed out".to_string()),
    };
    let _ = tcp.set_nodelay(true);
    let host = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let mut stream = if url.starts_with("https://") {
        let Some(tls) = &ctx.tls else {
            return Err("https peer URL but no peer TLS configured (--peer-trusted-ca-file, --peer-cert-file, --peer-key-file or --peer-auto-tls)".to_string());
        };
        let name = match host.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => host,
        };
        tls.connect(tcp, name).await?
    } else {
        Stream::Plain(tcp)
    };
    let head = peer_stream_request(
        path,
        host,
        ctx.shared.membership.load().cluster_id,
        ctx.shared.self_id,
        to,
    );
    let (res, _) = stream.write_all(head).await;
    res.map_err(|e| e.to_string())?;
    let (status, body) = match monoio::time::timeout(HEAD_TIMEOUT, read_response(&mut stream)).await
    {
        Ok(r) => r?,
        Err(_) => return Err("handshake timed out".to_string()),
    };
    if status == 410 {
        // Peers answer a removed member this way: it learns of its removal even if it missed
        // the conf change (partitioned, or down, when it was applied).
        tracing::warn!("the member has been permanently removed from the cluster");
        tracing::warn!("the data-dir used by this member must be removed");
        std::process::exit(0);
    }
    if status != 200 {
        return Err(format!("peer refused the stream: {status} {body}"));
    }
    Ok(stream)
}

/// Reads an HTTP response head and its (small) body.
async fn read_response(stream: &mut Stream) -> Result<(u16, String), String> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.unwrap_or(0);
                let len = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value)
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    })
                    .unwrap_or(0)
                    .min(HEAD_BYTES_MAX);
                while buf.len() < n + len {
                    buf = read_more(stream, buf).await?;
                }
                let body = String::from_utf8_lossy(&buf[n..n + len]).into_owned();
                return Ok((status, body));
            }
            Ok(httparse::Status::Partial) if buf.len() < HEAD_BYTES_MAX => {
                buf = read_more(stream, buf).await?;
            }
            Ok(httparse::Status::Partial) => return Err("response head too large".to_string()),
            Err(e) => return Err(format!("bad response: {e}")),
        }
    }
}

async fn read_more(stream: &mut Stream, mut buf: Vec<u8>) -> Result<Vec<u8>, String> {
    let len = buf.len();
    if buf.capacity() - len < 4096 {
        buf.reserve(8192);
    }
    let (res, buf) = stream.read_into(buf).await;
    match res {
        Ok(0) => Err("connection closed".to_string()),
        Ok(_) => Ok(buf),
        Err(e) => Err(e.to_string()),
    }
}

async fn accept_loop(ctx: Rc<PeerCtx>, listener: TcpListener, tls: Option<Acceptor>) {
    let tls = tls.map(Rc::new);
    loop {
        match listener.accept().await {
            Ok((tcp, addr)) => {
                let _ = tcp.set_nodelay(true);
                let ctx = ctx.clone();
                let tls = tls.clone();
                monoio::spawn(async move {
                    // A peer whose certificate is refused is logged (rate-limited) by `tls`.
                    let stream = match tls {
                        None => Stream::Plain(tcp),
                        Some(tls) => match tls.accept(tcp, addr).await {
                            Some(a) => a.stream,
                            None => return,
                        },
                    };
                    if let Err(e) = serve_peer(&ctx, stream, addr).await {
                        tracing::debug!(remote = %addr, error = %e, "peer connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A parsed request head on the peer port.
struct Head {
    method: String,
    path: String,
    cluster: Option<u64>,
    from: Option<u64>,
    to: Option<u64>,
    consumed: usize,
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let hex = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            };
            Ok(Some(Head {
                method: req.method.unwrap_or("").to_string(),
                path: req.path.unwrap_or("").to_string(),
                cluster: hex("x-ringd-cluster-id"),
                from: hex("x-ringd-from"),
                to: hex("x-ringd-to"),
                consumed: n,
            }))
        }
        Ok(httparse::Status::Partial) if buf.len() < HEAD_BYTES_MAX => Ok(None),
        Ok(httparse::Status::Partial) => Err("request head too large".to_string()),
        Err(e) => Err(format!("bad request: {e}")),
    }
}

async fn serve_peer(
    ctx: &PeerCtx,
    mut stream: Stream,
    remote: std::net::SocketAddr,
) -> Result<(), String> {
    let mut buf = Vec::with_capacity(4096);
    let head = loop {
        if let Some(h) = parse_head(&buf)? {
            break h;
        }
        buf = match monoio::time::timeout(HEAD_TIMEOUT, read_more(&mut stream, buf)).await {
            Ok(r) => r?,
            Err(_) => return Err("request head timed out".to_string()),
        };
    };
    let membership = ctx.shared.membership.load_full();
    let snapshot = head.path == "/ringd/snapshot";
    let cid = format!("{:x}", membership.cluster_id);
    let mut reply = Vec::with_capacity(512);
    let stream_from = match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/members") => {
            let mut body = Vec::new();
            crate::http::render::peer_member_list(&mut body, membership.members.values());
            // etcd's peer handler names the cluster in this header; joining members read it.
            json(
                &mut reply,
                false,
                200,
                &[("X-Etcd-Cluster-Id", &cid)],
                &body,
            );
            None
        }
        ("GET", "/version") => {
            let body = br#"{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}"#;
            json(&mut reply, false, 200, &[], body);
            None
        }
        ("POST", "/ringd/raft" | "/ringd/snapshot") => {
            match check_handshake(ctx, &membership, &head, remote) {
                Ok(from) => {
                    respond(&mut reply, false, 200, None, &[], b"");
                    Some(from)
                }
                Err((status, msg)) => {
                    message_response(&mut reply, false, status, msg);
                    None
                }
            }
        }
        _ => {
            respond(
                &mut reply,
                false,
                404,
                Some("text/plain; charset=utf-8"),
                &[],
                b"404 page not found\n",
            );
            None
        }
    };
    let (res, _) = stream.write_all(reply).await;
    res.map_err(|e| e.to_string())?;
    let Some(from) = stream_from else {
        return Ok(());
    };
    buf.drain(..head.consumed);
    if snapshot {
        return read_snapshot(ctx, stream, buf, from).await;
    }
    read_frames(ctx, stream, buf, from).await
}

fn check_handshake(
    ctx: &PeerCtx,
    membership: &Membership,
    head: &Head,
    remote: std::net::SocketAddr,
) -> Result<u64, (u16, &'static str)> {
    if head.cluster != Some(membership.cluster_id) {
        let mut logged = ctx.mismatch_logged.borrow_mut();
        let now = Instant::now();
        let due = logged
            .get(&remote.ip())
            .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(30));
        if due {
            logged.insert(remote.ip(), now);
            tracing::warn!(
                local = %format!("{:x}", membership.cluster_id),
                remote = %head.cluster.map(|c| format!("{c:x}")).unwrap_or_default(),
                addr = %remote,
                "request cluster ID mismatch"
            );
        }
        return Err((412, "cluster ID mismatch"));
    }
    if head.to != Some(ctx.shared.self_id) {
        return Err((412, "member ID mismatch"));
    }
    let from = head.from.unwrap_or(0);
    if membership.removed.contains(&from) {
        return Err((
            410,
            "the member has been permanently removed from the cluster",
        ));
    }
    if !membership.members.contains_key(&from) {
        return Err((404, "unknown member"));
    }
    Ok(from)
}

/// What `next_frame` found at the start of some bytes.
pub(super) enum Frame {
    /// A whole frame's message, and the bytes it took.
    Message(Message, usize),
    /// Not a whole frame yet: it is this many bytes long (header included), or at least 8.
    Need(usize),
}

/// Decodes the frame at the start of `bytes`, read from `from`'s stream to `me`. Err: the
/// stream must be closed (an oversized frame, a CRC mismatch, a message not from `from` or
/// not to `me`); raft retransmits what was lost.
pub(super) fn next_frame(bytes: &[u8], from: u64, me: u64) -> Result<Frame, String> {
    let Some(head) = bytes.get(..8) else {
        return Ok(Frame::Need(8));
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > PEER_MESSAGE_BYTES_MAX {
        return Err(format!(
            "frame of {len} bytes from {from:x} is over the limit"
        ));
    }
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let Some(payload) = bytes.get(8..8 + len) else {
        return Ok(Frame::Need(8 + len));
    };
    if crc32c::crc32c(payload) != crc {
        return Err(format!("frame from {from:x} fails its CRC"));
    }
    let m = Message::parse_from_bytes(payload).map_err(|e| e.to_string())?;
    if m.from != from || m.to != me {
        return Err(format!(
            "message from {:x} to {:x} on the stream from {from:x}",
            m.from, m.to
        ));
    }
    Ok(Frame::Message(m, 8 + len))
}

/// Reads frames from an accepted stream and hands them to the raft shard: a plain TCP
/// stream is handed over whole (the raft thread reads it itself, `raft_wait.rs`), a TLS one
/// is read here.
async fn read_frames(
    ctx: &PeerCtx,
    stream: Stream,
    mut buf: Vec<u8>,
    from: u64,
) -> Result<(), String> {
    let mut stream = match stream {
        Stream::Plain(tcp) => {
            let tcp = hand_over(tcp)?;
            return ctx
                .inbox
                .send_async(PeerIn::Stream {
                    from,
                    tcp,
                    buffered: buf,
                })
                .await
                .map_err(|_| "the raft shard stopped".to_string());
        }
        tls => tls,
    };
    let me = ctx.shared.self_id;
    let mut start = 0;
    loop {
        while let Frame::Message(m, used) = next_frame(&buf[start..], from, me)? {
            start += used;
            // Backpressure: a full inbox stops this reader, never drops what it accepted.
            if ctx
                .inbox
                .send_async(PeerIn::Message(Box::new(m)))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        if start > 0 {
            buf.drain(..start);
            start = 0;
        }
        buf = read_more(&mut stream, buf).await?;
    }
}

/// The executor's socket as a std one the raft thread can own: a duplicate of the
/// descriptor (the executor closes its own when `tcp` drops; nothing is in flight on it).
fn hand_over(tcp: TcpStream) -> Result<std::net::TcpStream, String> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: F_DUPFD_CLOEXEC of a live socket; the result is checked.
    let fd = unsafe { libc::fcntl(tcp.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "cannot hand the stream over: {}",
            std::io::Error::last_os_error()
        ));
    }
    drop(tcp);
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { std::net::TcpStream::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    fn append(to: u64, bytes: usize) -> Message {
        let mut m = Message {
            from: 1,
            to,
            term: 2,
            ..Default::default()
        };
        m.set_msg_type(raft::eraftpb::MessageType::MsgAppend);
        m.entries = vec![raft::eraftpb::Entry {
            data: vec![7u8; bytes].into(),
            ..Default::default()
        }]
        .into();
        m
    }

    /// Every frame of `bytes`, decoded.
    fn frames(mut bytes: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        while bytes.len() >= 8 {
            let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            assert!(bytes.len() >= 8 + len, "a cut frame");
            assert_eq!(crc32c::crc32c(&bytes[8..8 + len]), crc);
            out.push(Message::parse_from_bytes(&bytes[8..8 + len]).unwrap_or_default());
            bytes = &bytes[8 + len..];
        }
        assert!(bytes.is_empty(), "trailing bytes");
        out
    }

    #[test]
    fn peer_urls_resolve_off_the_executor_numeric_or_by_name() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let (numeric, named, bad) = rt.block_on(async {
            (
                resolve_async("http://127.0.0.3:2380").await.ok(),
                resolve_async("http://localhost:2380/").await.ok(),
                resolve_async("http://no-such-host.invalid:2380")
                    .await
                    .is_err(),
            )
        });
        assert_eq!(numeric, "127.0.0.3:2380".parse().ok());
        assert_eq!(
            named.map(|a| (a.ip().is_loopback(), a.port())),
            Some((true, 2380))
        );
        assert!(bad);
    }

    #[test]
    fn the_raft_shard_sends_itself_only_on_an_idle_plain_link_and_never_splits_a_frame() {
        let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
            panic!("bind")
        };
        // Small socket buffers on both ends (fixed, so the kernel does not grow them): a
        // message of a few MiB is then sure to be taken only in part, whatever the machine's
        // tcp_rmem/tcp_wmem.
        let small = |s: socket2::SockRef<'_>| {
            s.set_recv_buffer_size(64 << 10)
                .and_then(|()| s.set_send_buffer_size(64 << 10))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        small(socket2::SockRef::from(&listener));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let client = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
        small(socket2::SockRef::from(&client));
        let (mut server, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
        let url = format!("http://{addr}");
        let membership = Membership {
            members: [(
                2,
                crate::members::Member {
                    id: 2,
                    name: "b".into(),
                    peer_urls: vec![url.clone()],
                    client_urls: vec![],
                },
            )]
            .into(),
            ..Default::default()
        };
        let links = Arc::new(Links::default());
        let (tx, rx) = flume::bounded(PEER_QUEUE_MESSAGES_MAX);
        let link = Arc::new(Link {
            tx,
            state: std::sync::Mutex::new(LinkState {
                fd: Some(client.as_raw_fd()),
                conn: 1,
                url,
                busy: false,
            }),
        });
        links.map().insert(2, link.clone());
        let (out_tx, out_rx) = flume::bounded(16);
        let mut sender = PeerSender::new(links, out_tx);
        let read_exactly = |server: &mut std::net::TcpStream, n: usize| {
            let mut got = vec![0u8; n];
            server
                .read_exact(&mut got)
                .unwrap_or_else(|e| panic!("{e}"));
            got
        };

        // Idle: straight onto the socket, nothing queued.
        let sent = vec![append(2, 10), append(2, 20)];
        let mut wire = Vec::new();
        sent.iter().for_each(|m| encode_frame(m, &mut wire));
        assert!(sender.send(Some(&membership), sent.clone()).is_empty());
        assert!(rx.is_empty() && !link.state().busy);
        assert_eq!(frames(&read_exactly(&mut server, wire.len())), sent);

        // Without the membership (so no URL to check) or with a stale URL: the queue.
        assert!(sender.send(None, vec![append(2, 1)]).is_empty());
        assert!(matches!(rx.try_recv(), Ok(Out::Frames(_))));
        assert!(link.state().busy, "queued frames keep the link busy");
        // Busy: queued too, behind what is queued.
        assert!(sender
            .send(Some(&membership), vec![append(2, 3)])
            .is_empty());
        assert!(matches!(rx.try_recv(), Ok(Out::Frames(_))));
        link.state().busy = false;

        // No link: the router's queue (it starts the writer).
        assert!(sender
            .send(Some(&membership), vec![append(3, 1)])
            .is_empty());
        assert_eq!(out_rx.try_recv().map(|m| m.to), Ok(3));

        // A message the socket does not take whole: the rest is queued for this connection
        // only, and the link is busy until the writer has written it.
        let big = append(2, 4 << 20);
        assert!(sender.send(Some(&membership), vec![big.clone()]).is_empty());
        let Ok(Out::Rest { conn: 1, bytes }) = rx.try_recv() else {
            panic!("the rest of a partly sent frame is queued for its connection")
        };
        assert!(link.state().busy);
        assert!(sender
            .send(Some(&membership), vec![append(2, 5)])
            .is_empty());
        let Ok(Out::Frames(after)) = rx.try_recv() else {
            panic!("frames behind a rest are queued")
        };
        // The writer's part: the rest, then what followed, on the same connection.
        let mut tail = Vec::new();
        add_out(Out::Rest { conn: 1, bytes }, 1, &mut tail);
        add_out(Out::Frames(after), 1, &mut tail);
        let mut expect = Vec::new();
        encode_frame(&big, &mut expect);
        encode_frame(&append(2, 5), &mut expect);
        let head = expect.len() - tail.len();
        let reader = std::thread::spawn(move || read_exactly(&mut server, expect.len()));
        let mut c = &client;
        std::io::Write::write_all(&mut c, &tail).unwrap_or_else(|e| panic!("{e}"));
        let got = reader.join().unwrap_or_else(|_| panic!("reader"));
        assert!(head > 0);
        assert_eq!(frames(&got), vec![big, append(2, 5)]);
        // A rest never goes on another connection.
        let mut other = Vec::new();
        add_out(
            Out::Rest {
                conn: 1,
                bytes: vec![1, 2, 3],
            },
            2,
            &mut other,
        );
        assert!(other.is_empty());
    }

    #[test]
    fn frames_round_trip_and_heads_parse() {
        let m = Message {
            from: 1,
            to: 2,
            term: 3,
            ..Default::default()
        };
        let mut buf = Vec::new();
        encode_frame(&m, &mut buf);
        encode_frame(&m, &mut buf);
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        assert_eq!(buf.len(), 2 * (8 + len));
        let back = Message::parse_from_bytes(&buf[8..8 + len]).unwrap_or_default();
        assert_eq!(back, m);
        let raw = b"POST /ringd/raft HTTP/1.1\r\nX-Ringd-Cluster-Id: ff\r\nX-Ringd-From: a\r\nX-Ringd-To: b\r\n\r\nxx";
        let h = parse_head(raw).ok().flatten();
        let h = h.unwrap_or_else(|| panic!("head"));
        assert_eq!(
            (h.cluster, h.from, h.to),
            (Some(0xff), Some(0xa), Some(0xb))
        );
        assert_eq!(&raw[h.consumed..], b"xx");
        assert!(matches!(parse_head(b"GET /mem"), Ok(None)));
        assert!(parse_head(b"\x00\x01garbage\r\n\r\n").is_err());
    }
}
