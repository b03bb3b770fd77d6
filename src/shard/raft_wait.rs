//! How the raft thread sleeps and wakes: one epoll set holding a doorbell (an eventfd that
//! the senders of its two queues ring) and the peers' inbound plain-TCP raft streams, which
//! the raft thread reads itself.
//!
//! Why: a raft message used to cost two thread hand-offs on the way in (the peer thread
//! woke for the socket, then woke the raft thread through the peer inbox). A follower gets an
//! append per batch and a leader an acknowledgement per follower per batch, so on a 2-vCPU
//! machine those wake-ups were a large share of a replicated write's CPU. Reading the stream
//! where the message is stepped leaves one wake-up, the socket's. TLS streams, snapshots and
//! handshakes stay on the peer thread.
//!
//! The doorbell rings only when the raft thread announced it is about to sleep: a sender
//! pushes, then `swap(sleeping, false)`; the raft thread stores `sleeping = true`, then looks
//! at its queues, then sleeps. Either the raft thread sees the message or the sender sees it
//! sleeping and writes the eventfd (both orders are SeqCst), so no message waits for a
//! timeout, and a busy raft thread costs its senders one atomic swap.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Instant;

/// The eventfd the raft thread's senders write when it sleeps.
pub struct Doorbell {
    sleeping: AtomicBool,
    efd: OwnedFd,
}

impl Doorbell {
    pub fn new() -> io::Result<Arc<Doorbell>> {
        // SAFETY: plain eventfd creation; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(Doorbell {
            sleeping: AtomicBool::new(false),
            // SAFETY: `fd` was just created and is owned by nobody else.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
        }))
    }

    /// Wakes the raft thread if it sleeps (after something was pushed to one of its queues).
    pub fn ring(&self) {
        if self.sleeping.swap(false, SeqCst) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: an 8-byte write from a live buffer to our eventfd. A full counter
            // (EAGAIN) still leaves it readable, which is all a ring needs.
            unsafe { libc::write(self.efd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }

    fn drain(&self) {
        let mut v = [0u8; 8];
        // SAFETY: an 8-byte read into a live buffer from our non-blocking eventfd.
        unsafe { libc::read(self.efd.as_raw_fd(), v.as_mut_ptr().cast(), v.len()) };
    }
}

/// A bounded queue to the raft thread whose sends wake it.
pub struct RaftTx<T> {
    tx: flume::Sender<T>,
    bell: Arc<Doorbell>,
}

impl<T> Clone for RaftTx<T> {
    fn clone(&self) -> Self {
        RaftTx {
            tx: self.tx.clone(),
            bell: self.bell.clone(),
        }
    }
}

impl<T> RaftTx<T> {
    pub fn new(tx: flume::Sender<T>, bell: Arc<Doorbell>) -> RaftTx<T> {
        RaftTx { tx, bell }
    }

    pub fn try_send(&self, v: T) -> Result<(), flume::TrySendError<T>> {
        let r = self.tx.try_send(v);
        if r.is_ok() {
            self.bell.ring();
        }
        r
    }

    /// Waits for room (backpressure), then wakes the raft thread.
    pub async fn send_async(&self, v: T) -> Result<(), flume::SendError<T>> {
        let r = self.tx.send_async(v).await;
        if r.is_ok() {
            self.bell.ring();
        }
        r
    }
}

/// The raft thread's epoll set.
pub struct Poller {
    ep: OwnedFd,
    bell: Arc<Doorbell>,
    events: Vec<libc::epoll_event>,
}

const BELL: u64 = u64::MAX;

impl Poller {
    pub fn new(bell: Arc<Doorbell>) -> io::Result<Poller> {
        // SAFETY: plain epoll_create1; the result is checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        let p = Poller {
            // SAFETY: `ep` was just created and is owned by nobody else.
            ep: unsafe { OwnedFd::from_raw_fd(ep) },
            bell,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 64],
        };
        p.ctl(libc::EPOLL_CTL_ADD, p.bell.efd.as_raw_fd(), BELL)?;
        Ok(p)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: a valid epoll_event for our epoll fd.
        if unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watches `fd` for reading (level-triggered) under `token` (not `u64::MAX`).
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token)
    }

    pub fn remove(&self, fd: RawFd) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0);
    }

    /// Sleeps until `deadline`, a ring, or a watched fd is readable; puts the readable
    /// tokens in `ready`. `queues_empty` is asked after the sleep is announced: when it says
    /// no, this only polls the fds.
    pub fn wait(
        &mut self,
        deadline: Instant,
        queues_empty: impl Fn() -> bool,
        ready: &mut Vec<u64>,
    ) {
        self.bell.sleeping.store(true, SeqCst);
        let timeout = if queues_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            // Rounded up, so an early return does not spin until the deadline.
            left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int
        } else {
            0
        };
        // SAFETY: `events` is a live buffer of `events.len()` entries.
        let n = unsafe {
            libc::epoll_wait(
                self.ep.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                timeout,
            )
        };
        self.bell.sleeping.store(false, SeqCst);
        for ev in self.events.iter().take(n.max(0) as usize) {
            let token = ev.u64;
            if token == BELL {
                self.bell.drain();
            } else {
                ready.push(token);
            }
        }
    }
}

/// The raft thread's epoll set and the inbound streams it reads.
pub struct Inbound {
    poller: Poller,
    streams: std::collections::HashMap<u64, InStream>,
    next: u64,
    ready: Vec<u64>,
}

impl Inbound {
    pub fn new(bell: Arc<Doorbell>) -> io::Result<Inbound> {
        Ok(Inbound {
            poller: Poller::new(bell)?,
            streams: Default::default(),
            next: 0,
            ready: Vec::new(),
        })
    }

    /// See `Poller::wait`; the streams found readable are read by `read_ready`.
    pub fn wait(&mut self, deadline: Instant, queues_empty: impl Fn() -> bool) {
        self.poller.wait(deadline, queues_empty, &mut self.ready);
    }

    /// Hands every message the readable streams hold to `step`.
    pub fn read_ready(&mut self, me: u64, mut step: impl FnMut(raft::eraftpb::Message)) {
        let mut ready = std::mem::take(&mut self.ready);
        for token in ready.drain(..) {
            self.read(token, me, &mut step);
        }
        self.ready = ready;
    }

    /// Takes over `from`'s stream and steps what it already holds.
    pub fn adopt(
        &mut self,
        from: u64,
        tcp: std::net::TcpStream,
        buffered: Vec<u8>,
        me: u64,
        step: impl FnMut(raft::eraftpb::Message),
    ) {
        self.next += 1;
        let token = self.next;
        let added = InStream::new(from, tcp, buffered)
            .and_then(|s| self.poller.add(s.fd(), token).map(|()| s));
        match added {
            Ok(s) => {
                self.streams.insert(token, s);
                // What the handshake read past its head, and what came since.
                self.read(token, me, step);
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch a peer stream"),
        }
    }

    fn read(&mut self, token: u64, me: u64, step: impl FnMut(raft::eraftpb::Message)) {
        let Some(s) = self.streams.get_mut(&token) else {
            return;
        };
        if let Err(e) = s.read(me, step) {
            tracing::debug!(peer = %format!("{:x}", s.from), error = %e, "peer stream ended");
            if let Some(s) = self.streams.remove(&token) {
                self.poller.remove(s.fd());
            }
        }
    }
}

/// Bytes read from one stream per wake-up before the others get their turn (level-triggered
/// epoll reports the rest next time).
const READ_BUDGET: usize = 1 << 20;
const READ_CHUNK: usize = 64 * 1024;

/// An inbound raft stream the raft thread reads: frames (docs/peer-wire.md) from `from`.
pub struct InStream {
    pub from: u64,
    tcp: std::net::TcpStream,
    /// `buf[start..end]` holds what was read and not yet decoded.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl InStream {
    /// `tcp` is switched to non-blocking; `buffered` is what the handshake's reader read
    /// past the request head.
    pub fn new(from: u64, tcp: std::net::TcpStream, buffered: Vec<u8>) -> io::Result<InStream> {
        tcp.set_nonblocking(true)?;
        let end = buffered.len();
        Ok(InStream {
            from,
            tcp,
            buf: buffered,
            start: 0,
            end,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }

    /// Reads what the socket has (up to a budget) and hands every whole frame's message to
    /// `step`. Err: the stream ended or broke its framing; drop it (the peer redials).
    pub fn read(
        &mut self,
        me: u64,
        mut step: impl FnMut(raft::eraftpb::Message),
    ) -> Result<(), String> {
        let mut budget = READ_BUDGET;
        loop {
            // Every whole frame first: the handshake may have read some already.
            loop {
                match super::peer::next_frame(&self.buf[self.start..self.end], self.from, me)? {
                    super::peer::Frame::Message(m, used) => {
                        self.start += used;
                        step(m);
                    }
                    super::peer::Frame::Need(total) => {
                        self.make_room(total);
                        break;
                    }
                }
            }
            if budget == 0 {
                return Ok(());
            }
            match self.tcp.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err("peer closed the stream".to_string()),
                Ok(n) => {
                    self.end += n;
                    budget = budget.saturating_sub(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Room to read a frame of `total` bytes (header included; bounded by `next_frame`) and
    /// at least a chunk more: compacts what is left to the front when that makes room.
    fn make_room(&mut self, total: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let room = self.buf.len() - self.end;
        if self.start > 0 && (room < READ_CHUNK || self.start + total > self.buf.len()) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let want = (self.start + total).max(self.end + READ_CHUNK);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_wakes_a_sleeping_wait_and_a_busy_one_costs_no_write() {
        let bell = Doorbell::new().unwrap_or_else(|e| panic!("{e}"));
        let mut poller = Poller::new(bell.clone()).unwrap_or_else(|e| panic!("{e}"));
        let mut ready = Vec::new();
        // Not sleeping: no write, so a wait with a deadline now returns with nothing.
        bell.ring();
        poller.wait(Instant::now(), || true, &mut ready);
        assert!(ready.is_empty());
        // A ring from another thread while the wait sleeps ends it long before the deadline
        // (the test would hang for an hour otherwise).
        let b = bell.clone();
        let ringer = std::thread::spawn(move || {
            while !b.sleeping.load(SeqCst) {
                std::thread::yield_now();
            }
            b.ring();
        });
        poller.wait(
            Instant::now() + std::time::Duration::from_secs(3600),
            || true,
            &mut ready,
        );
        ringer.join().unwrap_or_else(|_| panic!("ringer"));
        assert!(ready.is_empty());
        assert!(!bell.sleeping.load(SeqCst));
    }

    #[test]
    fn an_inbound_stream_hands_over_frames_split_anywhere() {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let mut tx = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
        let (rx, _) = l.accept().unwrap_or_else(|e| panic!("{e}"));
        let msgs: Vec<raft::eraftpb::Message> = (0..40)
            .map(|i| raft::eraftpb::Message {
                from: 7,
                to: 9,
                term: i,
                context: vec![i as u8; (i as usize) * 5000].into(),
                ..Default::default()
            })
            .collect();
        let mut wire = Vec::new();
        for m in &msgs {
            super::super::peer::encode_frame(m, &mut wire);
        }
        // The first 3 bytes came with the handshake.
        let mut s = InStream::new(7, rx, wire[..3].to_vec()).unwrap_or_else(|e| panic!("{e}"));
        let bell = Doorbell::new().unwrap_or_else(|e| panic!("{e}"));
        let mut poller = Poller::new(bell).unwrap_or_else(|e| panic!("{e}"));
        poller.add(s.fd(), 1).unwrap_or_else(|e| panic!("{e}"));
        let mut got = Vec::new();
        let mut ready = Vec::new();
        for piece in wire[3..].chunks(7919) {
            tx.write_all(piece).unwrap_or_else(|e| panic!("{e}"));
            ready.clear();
            while ready.is_empty() {
                poller.wait(
                    Instant::now() + std::time::Duration::from_secs(60),
                    || true,
                    &mut ready,
                );
            }
            assert_eq!(ready, vec![1]);
            s.read(9, |m| got.push(m)).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(got, msgs);
        // A message for another member breaks the stream; so does its end.
        let mut bad = Vec::new();
        super::super::peer::encode_frame(
            &raft::eraftpb::Message {
                from: 7,
                to: 8,
                ..Default::default()
            },
            &mut bad,
        );
        tx.write_all(&bad).unwrap_or_else(|e| panic!("{e}"));
        // Awaited through the poller (the frame is readable once it arrived), never spun on:
        // a reader that took the frame would fail here instead of hanging.
        ready.clear();
        while ready.is_empty() {
            poller.wait(
                Instant::now() + std::time::Duration::from_secs(60),
                || true,
                &mut ready,
            );
        }
        let mut stepped = 0;
        let result = s.read(9, |_| stepped += 1);
        assert!(
            result.is_err(),
            "a message to another member ends the stream"
        );
        assert_eq!(stepped, 0);
        drop(tx);
    }
}
