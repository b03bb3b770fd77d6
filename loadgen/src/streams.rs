//! The streams workload: N recursive stream watchers of one dir
//! (`wait=true&recursive=true&stream=true`) while W connections write keys under it as fast
//! as they are answered (closed loop), for a duration. Reports the events delivered per
//! second (all watchers together, counted by when they reached their sockets), the writes
//! per second, each event's delivery time from its write's acknowledgement (both kernel
//! receive timestamps, `rawnet`), the events a watcher missed, and the streams the server
//! ended (a watcher that falls behind is dropped by etcd and by ringd; it is re-opened from
//! its next index, as a client would).
//!
//! One thread, plain epoll. Each watcher's events are checked for gaps: every write under
//! the dir is an event for every watcher.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::etcd::push_value;
use crate::http::{
    encode_path, next_chunk, parse_head, parse_response, write_form, write_get, BodyKind, Chunk,
    Head, ReqHeaders, Target, MAX_BODY,
};
use crate::rawnet::{
    connect_result, process_cpu_ms, raise_fd_limit, realtime_ns, recv_ts, send_now, Epoll, Fd,
};
use crate::stats::new_hist;

pub struct StreamsCfg {
    pub target: Target,
    pub watchers: usize,
    pub writers: usize,
    /// The watched dir; writes go to `dir/k<n % keys>`.
    pub dir: String,
    pub keys: u64,
    pub value_size: usize,
    pub duration: Duration,
    /// For the connections, the heads, and the watchers' catching up after the writes.
    pub timeout: Duration,
    pub json: Option<PathBuf>,
    pub quiet: bool,
    /// The server's pid (on this machine): its CPU time while the writers write is reported.
    pub server_pid: Option<u32>,
}

const READ_CHUNK: usize = 64 * 1024;
const CONNECT_BATCH: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    /// Request sent, response head awaited.
    Sent,
    /// Watcher: events arrive. Writer: a PUT is in flight.
    Open,
    Dead,
}

struct Conn {
    fd: Fd,
    state: State,
    buf: Vec<u8>,
    /// Receive time of the last read into `buf`: the one that completed what it holds.
    buf_at_ns: Option<i64>,
    /// Watcher: the last index seen. Writer: unused.
    last: u64,
    /// Writer: PUTs sent.
    sent: u64,
}

/// Counts by kind, for the report.
#[derive(Default)]
struct Counts(std::collections::BTreeMap<&'static str, u64>);

impl Counts {
    fn add(&mut self, kind: &'static str, n: u64) {
        if n > 0 {
            *self.0.entry(kind).or_default() += n;
        }
    }
}

struct Run<'a> {
    cfg: &'a StreamsCfg,
    epoll: Epoll,
    /// Watchers first, then writers.
    conns: Vec<Conn>,
    headers: ReqHeaders,
    watch_path: Vec<u8>,
    write_prefix: Vec<u8>,
    filler: Vec<u8>,
    read_buf: Vec<u8>,
    /// Acknowledgement time of each write still wanted, by index.
    acks: HashMap<u64, i64>,
    /// Events read before their write's ack was: receive times by index.
    early: HashMap<u64, Vec<i64>>,
    latency: Histogram<u64>,
    writing: bool,
    writes: u64,
    last_write: u64,
    /// Events delivered while the writers wrote (by receive time), and after.
    window: (i64, i64),
    events_in_window: u64,
    events_total: u64,
    counts: Counts,
    errors: Counts,
}

/// The first `"modifiedIndex":N` of an event: the node's (it comes before prevNode's).
fn modified_index(json: &[u8]) -> Option<u64> {
    const TAG: &[u8] = b"\"modifiedIndex\":";
    let at = json.windows(TAG.len()).position(|w| w == TAG)? + TAG.len();
    let digits = &json[at..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

impl Run<'_> {
    fn is_writer(&self, i: usize) -> bool {
        i >= self.cfg.watchers
    }

    fn watch_request(&self, from: Option<u64>) -> Vec<u8> {
        let mut req = Vec::with_capacity(160);
        let mut q = String::from("?wait=true&recursive=true&stream=true");
        if let Some(i) = from {
            q.push_str(&format!("&waitIndex={i}"));
        }
        write_get(&mut req, &self.headers, &[&self.watch_path, q.as_bytes()]);
        req
    }

    fn put_request(&self, n: u64) -> Vec<u8> {
        let k = (n % self.cfg.keys).to_string();
        let mut body = b"value=".to_vec();
        push_value(&mut body, n, self.cfg.value_size, &self.filler);
        let mut req = Vec::with_capacity(256);
        write_form(
            &mut req,
            "PUT",
            &self.headers,
            &[&self.write_prefix, k.as_bytes()],
            &[&body],
        );
        req
    }

    fn add(&mut self, from: Option<u64>) -> Result<(), String> {
        let i = self.conns.len();
        let fd = self.epoll.connect(&self.cfg.target.addr, i)?;
        self.conns.push(Conn {
            fd,
            state: State::Connecting,
            buf: Vec::new(),
            buf_at_ns: None,
            last: from.map_or(0, |f| f - 1),
            sent: 0,
        });
        Ok(())
    }

    /// Opens `n` more connections, a batch at a time, until each is up and has sent its
    /// first request (watchers: also until every head is back).
    fn open(&mut self, n: usize, from: Option<u64>) -> Result<(), String> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let deadline = Instant::now() + self.cfg.timeout;
        let mut added = 0;
        while added < n {
            let batch = (n - added).min(CONNECT_BATCH);
            let first = self.conns.len();
            for _ in 0..batch {
                self.add(from)?;
            }
            added += batch;
            while self.conns[first..].iter().any(|c| {
                matches!(c.state, State::Connecting | State::Sent) && !self.writing_conn(c)
            }) {
                if Instant::now() > deadline {
                    return Err(format!("connections not up after {:?}", self.cfg.timeout));
                }
                self.poll(&mut events, Duration::from_millis(100))?;
            }
        }
        Ok(())
    }

    /// A writer that sent its PUT counts as up.
    fn writing_conn(&self, c: &Conn) -> bool {
        c.state == State::Sent && c.sent > 0
    }

    fn poll(&mut self, events: &mut [libc::epoll_event], timeout: Duration) -> Result<(), String> {
        let k = self
            .epoll
            .wait(events, timeout)
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for ev in &events[..k] {
            let i = ev.u64 as usize;
            if self.conns[i].state == State::Connecting {
                self.connected(i);
            } else {
                self.readable(i);
            }
        }
        Ok(())
    }

    fn connected(&mut self, i: usize) {
        let fd = self.conns[i].fd.0;
        if connect_result(fd).is_err() {
            return self.kill(i, "connect failed");
        }
        if self
            .epoll
            .ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32, i)
            .is_err()
        {
            return self.kill(i, "epoll_ctl failed");
        }
        self.send_next(i);
    }

    /// A writer's next PUT, or a watcher's (re-)watch from its next index.
    fn send_next(&mut self, i: usize) {
        let req = if self.is_writer(i) {
            if !self.writing {
                self.conns[i].state = State::Open;
                return;
            }
            let w = (i - self.cfg.watchers) as u64;
            let n = w + self.conns[i].sent * self.cfg.writers as u64;
            self.conns[i].sent += 1;
            self.put_request(n)
        } else {
            let from = self.conns[i].last + 1;
            self.watch_request(Some(from))
        };
        self.conns[i].state = State::Sent;
        if let Err(e) = send_now(self.conns[i].fd.0, &req) {
            self.kill(
                i,
                if e.kind() == io::ErrorKind::WouldBlock {
                    "send would block"
                } else {
                    "send failed"
                },
            );
        }
    }

    fn kill(&mut self, i: usize, why: &'static str) {
        if self.conns[i].state != State::Dead {
            self.conns[i].state = State::Dead;
            let _ = self
                .epoll
                .ctl(libc::EPOLL_CTL_DEL, self.conns[i].fd.0, 0, i);
            self.errors.add(why, 1);
        }
    }

    fn readable(&mut self, i: usize) {
        loop {
            if self.conns[i].state == State::Dead {
                return;
            }
            match recv_ts(self.conns[i].fd.0, &mut self.read_buf) {
                Ok(r) if r.n == 0 => {
                    if self.is_writer(i) {
                        return self.kill(i, "writer closed by the server");
                    }
                    // A stream the server ended: watch again from the next index.
                    self.counts.add("streams closed by the server", 1);
                    return self.reopen(i);
                }
                Ok(r) => {
                    let at = r.at_ns.unwrap_or_else(realtime_ns);
                    let c = &mut self.conns[i];
                    // What this read completes arrived with it: a chunk begun in an earlier
                    // read is timed by the read that ends it.
                    c.buf_at_ns = Some(at);
                    if c.buf.len() + r.n > MAX_BODY {
                        return self.kill(i, "response too large");
                    }
                    c.buf.extend_from_slice(&self.read_buf[..r.n]);
                    if self.is_writer(i) {
                        self.writer_parse(i);
                    } else {
                        self.watcher_parse(i);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.kill(i, "read failed"),
            }
        }
    }

    /// A new connection for watcher `i`, from its next index.
    fn reopen(&mut self, i: usize) {
        let _ = self
            .epoll
            .ctl(libc::EPOLL_CTL_DEL, self.conns[i].fd.0, 0, i);
        let fd = match self.epoll.connect(&self.cfg.target.addr, i) {
            Ok(fd) => fd,
            Err(_) => {
                self.conns[i].state = State::Dead;
                return self.errors.add("reconnect failed", 1);
            }
        };
        let c = &mut self.conns[i];
        c.fd = fd;
        c.state = State::Connecting;
        c.buf.clear();
        c.buf_at_ns = None;
    }

    fn writer_parse(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let parsed = match parse_response(&c.buf) {
            Ok(None) => return,
            Ok(Some(r)) => {
                let ok = r.status == 200 || r.status == 201;
                (ok, modified_index(&r.body), r.consumed, r.status)
            }
            Err(_) => return self.kill(i, "bad write response"),
        };
        let (ok, index, consumed, status) = parsed;
        let at = c.buf_at_ns.unwrap_or_else(realtime_ns);
        c.buf.drain(..consumed);
        c.buf_at_ns = None;
        match index {
            Some(m) if ok => {
                self.writes += 1;
                self.last_write = self.last_write.max(m);
                if let Some(early) = self.early.remove(&m) {
                    for rx in early {
                        self.record(rx - at);
                    }
                }
                self.acks.insert(m, at);
            }
            _ => self.errors.add(
                if status == 0 {
                    "write without index"
                } else {
                    "write refused"
                },
                1,
            ),
        }
        self.send_next(i);
    }

    fn record(&mut self, ns: i64) {
        self.latency.saturating_record(ns.max(1) as u64);
    }

    fn watcher_parse(&mut self, i: usize) {
        loop {
            let c = &mut self.conns[i];
            let used = match c.state {
                State::Sent => match parse_head(&c.buf) {
                    Ok(None) => return,
                    Ok(Some(h)) if h.status == 200 && h.body == BodyKind::Chunked => {
                        c.state = State::Open;
                        h.len
                    }
                    Ok(Some(Head { status, .. })) if status != 400 => {
                        // Not etcd's answer to a cleared index (400, errorCode 401): an
                        // error, not a gap to count.
                        return self.kill(i, "re-watch refused (not a cleared history)");
                    }
                    Ok(Some(_)) => {
                        // 400 (errorCode 401): the history no longer holds the next index;
                        // watch from the last write on, the events in between missed.
                        let skipped = self.last_write.saturating_sub(c.last);
                        c.last = c.last.max(self.last_write);
                        self.counts.add("re-watches refused (history cleared)", 1);
                        self.counts.add("events missed", skipped);
                        return self.reopen(i);
                    }
                    Err(_) => return self.kill(i, "bad watch head"),
                },
                State::Open => match next_chunk(&c.buf) {
                    Ok(None) => return,
                    Ok(Some(Chunk::Data {
                        start,
                        end,
                        consumed,
                    })) => {
                        let at = c.buf_at_ns.unwrap_or_else(realtime_ns);
                        let index = modified_index(&c.buf[start..end]);
                        let last = c.last;
                        match index {
                            Some(m) if m > last => {
                                self.conns[i].last = m;
                                self.event(m, at, m - last - 1);
                            }
                            _ => self.errors.add("event out of order", 1),
                        }
                        consumed
                    }
                    Ok(Some(Chunk::Last { .. })) => {
                        self.counts.add("streams ended by the server", 1);
                        return self.reopen(i);
                    }
                    Err(_) => return self.kill(i, "bad chunk"),
                },
                State::Connecting | State::Dead => return,
            };
            let c = &mut self.conns[i];
            c.buf.drain(..used);
            if c.buf.is_empty() {
                c.buf_at_ns = None;
                if c.buf.capacity() > READ_CHUNK {
                    c.buf = Vec::new();
                }
            }
        }
    }

    fn event(&mut self, index: u64, at: i64, missed: u64) {
        self.events_total += 1;
        if at >= self.window.0 && at <= self.window.1 {
            self.events_in_window += 1;
        }
        self.counts.add("events missed", missed);
        match self.acks.get(&index) {
            Some(&ack) => self.record(at - ack),
            None => self.early.entry(index).or_default().push(at),
        }
    }

    fn caught_up(&self) -> bool {
        self.conns[..self.cfg.watchers]
            .iter()
            .all(|c| c.state == State::Dead || c.last >= self.last_write)
    }

    fn writers_idle(&self) -> bool {
        self.conns[self.cfg.watchers..]
            .iter()
            .all(|c| c.state != State::Sent)
    }
}

pub fn run(cfg: &StreamsCfg) -> Result<i32, String> {
    if cfg.target.https.is_some() {
        return Err("streams: https targets are not supported (plain http only)".into());
    }
    raise_fd_limit();
    let headers = cfg.target.headers(false);
    let watch_path = format!("/v2/keys{}", encode_path(&cfg.dir)).into_bytes();
    let write_prefix = format!("/v2/keys{}/k", encode_path(&cfg.dir)).into_bytes();
    let mut r = Run {
        cfg,
        epoll: Epoll::new().map_err(|e| format!("epoll: {e}"))?,
        conns: Vec::with_capacity(cfg.watchers + cfg.writers),
        headers,
        watch_path,
        write_prefix,
        filler: vec![b'x'; cfg.value_size],
        read_buf: vec![0; READ_CHUNK],
        acks: HashMap::new(),
        early: HashMap::new(),
        latency: new_hist(),
        writing: false,
        writes: 0,
        last_write: 0,
        window: (i64::MAX, i64::MAX),
        events_in_window: 0,
        events_total: 0,
        counts: Counts::default(),
        errors: Counts::default(),
    };
    // The dir exists, and the watchers start right after this write.
    let setup = r.put_request(0);
    let (status, body) = crate::watch::blocking_request(&cfg.target, &setup, cfg.timeout)?;
    let first = match modified_index(&body) {
        Some(i) if status == 200 || status == 201 => i + 1,
        _ => return Err(format!("setup write answered {status}")),
    };
    r.last_write = first - 1;
    r.open(cfg.watchers, Some(first))?;
    if !cfg.quiet {
        eprintln!("streams: {} watchers of {} open", cfg.watchers, cfg.dir);
    }
    r.writing = true;
    let cpu_start = cfg.server_pid.and_then(process_cpu_ms);
    r.window.0 = realtime_ns();
    let started = Instant::now();
    r.open(cfg.writers, None)?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let end = started + cfg.duration;
    let mut last_prune = 0;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        r.poll(&mut events, left.min(Duration::from_millis(50)))?;
        if r.writes > last_prune + 65536 {
            // Acks every live watcher is past are not wanted any more.
            let low = r.conns[..cfg.watchers]
                .iter()
                .filter(|c| c.state != State::Dead)
                .map(|c| c.last)
                .min()
                .unwrap_or(0);
            r.acks.retain(|&i, _| i > low);
            last_prune = r.writes;
        }
    }
    r.writing = false;
    r.window.1 = realtime_ns();
    let cpu_ms = cfg
        .server_pid
        .and_then(process_cpu_ms)
        .zip(cpu_start)
        .map(|(b, a)| b - a);
    let wrote_secs = started.elapsed().as_secs_f64();
    let writes_in_window = r.writes;
    // The PUTs in flight are answered, then the watchers catch up (bounded).
    let deadline = Instant::now() + cfg.timeout;
    while (!r.writers_idle() || !r.caught_up()) && Instant::now() < deadline {
        r.poll(&mut events, Duration::from_millis(50))?;
    }
    // A server that could not deliver everything it acknowledged within --timeout after the
    // writes: counted (it is the result), not an error of the run.
    let behind = r.conns[..cfg.watchers]
        .iter()
        .filter(|c| c.state != State::Dead && c.last < r.last_write)
        .count() as u64;
    r.counts
        .add("watchers still behind after the catch-up time", behind);
    let window_secs = (r.window.1 - r.window.0) as f64 / 1e9;
    let lat = crate::stats::latency(&r.latency);
    let out = json!({
        "workload": "streams",
        "url": format!("http://{}", cfg.target.host),
        "dir": cfg.dir,
        "watchers": cfg.watchers,
        "writers": cfg.writers,
        "duration_secs": wrote_secs,
        "writes": writes_in_window,
        "writes_per_sec": writes_in_window as f64 / wrote_secs,
        "events_per_sec": r.events_in_window as f64 / window_secs,
        "events_in_window": r.events_in_window,
        "events_total": r.events_total,
        "events_expected": r.writes * cfg.watchers as u64,
        "server_cpu_ms": cpu_ms,
        "server_cpu_ms_per_1k_events": cpu_ms.map(|c| c * 1000.0 / r.events_in_window.max(1) as f64),
        "delivery_ms": {
            "p50": lat.p50 / 1e3, "p90": lat.p90 / 1e3, "p99": lat.p99 / 1e3,
            "p999": lat.p999 / 1e3, "max": lat.max / 1e3,
        },
        "counts": r.counts.0,
        "errors": r.errors.0,
    });
    println!(
        "streams: {} recursive stream watchers, {} writers, {:.1}s: {:.0} writes/s, {:.0} events/s delivered; delivery after the ack p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:?}",
        cfg.watchers,
        cfg.writers,
        wrote_secs,
        writes_in_window as f64 / wrote_secs,
        r.events_in_window as f64 / window_secs,
        lat.p50 / 1e3,
        lat.p99 / 1e3,
        lat.max / 1e3,
        r.counts.0,
    );
    if let Some(path) = &cfg.json {
        let text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let errors: u64 = r.errors.0.values().sum();
    if errors > 0 {
        eprintln!("!!! loadgen streams: {errors} errors: {:?}", r.errors.0);
        return Ok(1);
    }
    Ok(0)
}
