//! The fan-out workload: N long-poll watchers of one key (`wait=true&waitIndex=i`), then
//! one PUT of that key at a time. For each PUT it reports when its event reached the first,
//! the median and the last watcher, counted from the PUT's acknowledgement.
//!
//! Both ends of every interval are the kernel's receive timestamps (`SO_TIMESTAMPNS`, the
//! time the segment reached the socket; on loopback, the time the server sent it): the ack's
//! on the writer's socket, each event's on its watcher's socket. So the figures are the
//! server's, not this process's: a watcher read late because this one thread was busy with
//! 9,999 others still counts from when its bytes arrived. (Without the timestamp, which
//! only happens if the kernel does not give one, the read time is used and counted.)
//!
//! Every watcher re-arms (`waitIndex` = the event's index + 1) as soon as its response
//! ends, as a real client would; the next PUT is sent once every watcher's response head is
//! back (its watch is registered), so no watcher answers from the server's history.
//!
//! `--hold SECS` only opens and arms the watchers, prints `armed N`, and keeps them open
//! (idle) for SECS: the memory an idle watcher costs the server, or a GET load beside them,
//! is measured from outside.
//!
//! One thread, plain epoll, non-blocking sockets, a few hundred bytes per watcher: 10,000
//! watchers take 10,000 descriptors (the soft limit is raised to the hard one at start)
//! and a few MB.

use std::io;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::etcd::{parse_reply, push_value};
use crate::http::{
    encode_path, next_chunk, parse_head, parse_response, write_form, write_get, BodyKind, Chunk,
    ReqHeaders, Target, MAX_BODY,
};
use crate::rawnet::{
    connect_result, process_cpu_ms, raise_fd_limit, realtime_ns, recv_ts, send_now, set_int_opt,
    Epoll, Fd, Received,
};

pub struct FanoutCfg {
    pub target: Target,
    pub watchers: usize,
    /// Measured PUTs (after `warmup_puts` unmeasured ones).
    pub puts: usize,
    pub warmup_puts: usize,
    pub key: String,
    pub value_size: usize,
    /// Open and arm the watchers, keep them idle this long, and end (no PUT).
    pub hold: Option<Duration>,
    /// For each wait: all connections up, all heads back, all deliveries of one PUT.
    pub timeout: Duration,
    /// Quiet time between a PUT's last delivery (and re-arm) and the next PUT.
    pub pause: Duration,
    pub json: Option<PathBuf>,
    pub quiet: bool,
    /// The server's pid (on this machine): its CPU time over the measured PUTs is reported.
    pub server_pid: Option<u32>,
}

/// Connections opened at once (a burst beyond the listen backlog costs SYN retries of 1 s).
const CONNECT_BATCH: usize = 256;
/// Bytes read per recvmsg.
const READ_CHUNK: usize = 16 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Connecting,
    /// The watch request is sent; its response head is awaited.
    Sent,
    /// The head is back (the watch is registered): the event is awaited.
    Armed,
    Dead,
}

struct Watcher {
    fd: Fd,
    state: State,
    /// Received, not yet parsed.
    buf: Vec<u8>,
    /// Receive time of the last read into `buf`: the one that completed what it holds.
    buf_at_ns: Option<i64>,
    /// The index this watcher waits for (its waitIndex).
    wait_index: u64,
    /// The current PUT's event: its receive time.
    delivered_ns: Option<i64>,
}

/// Errors by kind, for the report.
#[derive(Default)]
struct Errors(std::collections::BTreeMap<String, u64>);

impl Errors {
    fn add(&mut self, kind: &str) {
        *self.0.entry(kind.to_string()).or_default() += 1;
    }
    fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

struct Fanout<'a> {
    cfg: &'a FanoutCfg,
    epoll: Epoll,
    ws: Vec<Watcher>,
    watch_path: Vec<u8>,
    headers: ReqHeaders,
    errors: Errors,
    armed: usize,
    delivered: usize,
    /// Deliveries timed by the read, the kernel having given no timestamp.
    user_timed: u64,
    read_buf: Vec<u8>,
}

/// `GET <path>?wait=true&waitIndex=<i>`.
fn watch_request(headers: &ReqHeaders, path: &[u8], wait_index: u64) -> Vec<u8> {
    let mut req = Vec::with_capacity(128);
    let q = format!("?wait=true&waitIndex={wait_index}");
    write_get(&mut req, headers, &[path, q.as_bytes()]);
    req
}

impl Fanout<'_> {
    /// Opens every watcher's connection and sends its watch (waitIndex = `first`), a batch
    /// at a time; then waits for every head.
    fn open(&mut self, first: u64) -> Result<(), String> {
        let n = self.cfg.watchers;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut start = 0;
        while start < n {
            let end = (start + CONNECT_BATCH).min(n);
            for i in start..end {
                let fd = self.epoll.connect(&self.cfg.target.addr, i)?;
                self.ws.push(Watcher {
                    fd,
                    state: State::Connecting,
                    buf: Vec::new(),
                    buf_at_ns: None,
                    wait_index: first,
                    delivered_ns: None,
                });
            }
            let deadline = Instant::now() + self.cfg.timeout;
            while self.ws[start..end]
                .iter()
                .any(|w| w.state == State::Connecting)
            {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!("connections not up after {:?}", self.cfg.timeout));
                }
                let k = self
                    .epoll
                    .wait(&mut events, left.min(Duration::from_millis(100)))
                    .map_err(|e| format!("epoll_wait: {e}"))?;
                for ev in &events[..k] {
                    let i = ev.u64 as usize;
                    if self.ws[i].state == State::Connecting {
                        self.connected(i)?;
                    } else {
                        self.readable(i);
                    }
                }
            }
            start = end;
        }
        self.await_armed()
    }

    /// A connection is up: read events from now on, and send the watch.
    fn connected(&mut self, i: usize) -> Result<(), String> {
        let fd = self.ws[i].fd.0;
        connect_result(fd).map_err(|e| format!("connect {}: {e}", self.cfg.target.addr))?;
        self.epoll
            .ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32, i)
            .map_err(|e| format!("epoll_ctl: {e}"))?;
        let req = watch_request(&self.headers, &self.watch_path, self.ws[i].wait_index);
        self.ws[i].state = State::Sent;
        if let Err(e) = send_now(fd, &req) {
            self.kill(i, &format!("send: {}", e.kind()));
        }
        Ok(())
    }

    fn kill(&mut self, i: usize, why: &str) {
        if self.ws[i].state != State::Dead {
            if self.ws[i].state == State::Armed {
                self.armed -= 1;
            }
            self.ws[i].state = State::Dead;
            let _ = self.epoll.ctl(libc::EPOLL_CTL_DEL, self.ws[i].fd.0, 0, i);
            self.errors.add(why);
        }
    }

    fn live(&self) -> usize {
        self.ws.iter().filter(|w| w.state != State::Dead).count()
    }

    /// Runs the loop until every live watcher is armed.
    fn await_armed(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + self.cfg.timeout;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        while self.armed < self.live() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{} of {} watchers armed after {:?}",
                    self.armed,
                    self.live(),
                    self.cfg.timeout
                ));
            }
            self.poll(&mut events, left.min(Duration::from_millis(100)))?;
        }
        Ok(())
    }

    fn poll(&mut self, events: &mut [libc::epoll_event], timeout: Duration) -> Result<(), String> {
        let k = self
            .epoll
            .wait(events, timeout)
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for ev in &events[..k] {
            self.readable(ev.u64 as usize);
        }
        Ok(())
    }

    /// Reads what the socket holds and moves the watcher along.
    fn readable(&mut self, i: usize) {
        loop {
            if self.ws[i].state == State::Dead {
                return;
            }
            let fd = self.ws[i].fd.0;
            let got = recv_ts(fd, &mut self.read_buf);
            match got {
                Ok(Received { n: 0, .. }) => return self.kill(i, "closed by the server"),
                Ok(Received { n, at_ns }) => {
                    let at = at_ns.unwrap_or_else(|| {
                        self.user_timed += 1;
                        realtime_ns()
                    });
                    let w = &mut self.ws[i];
                    // What this read completes arrived with it: a chunk begun in an earlier
                    // read is timed by the read that ends it.
                    w.buf_at_ns = Some(at);
                    if w.buf.len() + n > MAX_BODY {
                        return self.kill(i, "response too large");
                    }
                    w.buf.extend_from_slice(&self.read_buf[..n]);
                    self.parse(i);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.kill(i, &format!("read: {}", e.kind())),
            }
        }
    }

    /// Consumes complete parts of the watcher's buffer: the head, the event chunk, the last
    /// chunk (then the watch is re-armed).
    fn parse(&mut self, i: usize) {
        loop {
            let w = &mut self.ws[i];
            let used = match w.state {
                State::Sent => match parse_head(&w.buf) {
                    Ok(None) => return,
                    Ok(Some(h)) if h.status != 200 || h.body != BodyKind::Chunked => {
                        return self.kill(i, &format!("watch answered {}", h.status));
                    }
                    Ok(Some(h)) => {
                        w.state = State::Armed;
                        self.armed += 1;
                        h.len
                    }
                    Err(e) => return self.kill(i, &format!("bad head: {e}")),
                },
                State::Armed => match next_chunk(&w.buf) {
                    Ok(None) => return,
                    Ok(Some(Chunk::Data {
                        start,
                        end,
                        consumed,
                    })) => {
                        let index =
                            parse_reply(&w.buf[start..end]).and_then(|r| r.modified_index());
                        match index {
                            Some(m) if m >= w.wait_index => {
                                w.wait_index = m + 1;
                                if w.delivered_ns.is_none() {
                                    w.delivered_ns = w.buf_at_ns;
                                    self.delivered += 1;
                                }
                            }
                            _ => self.errors.add("unexpected event"),
                        }
                        consumed
                    }
                    Ok(Some(Chunk::Last { consumed })) => {
                        // The long poll is answered: watch again from the next index.
                        let req = watch_request(&self.headers, &self.watch_path, w.wait_index);
                        w.state = State::Sent;
                        self.armed -= 1;
                        if let Err(e) = send_now(w.fd.0, &req) {
                            return self.kill(i, &format!("send: {}", e.kind()));
                        }
                        consumed
                    }
                    Err(e) => return self.kill(i, &format!("bad chunk: {e}")),
                },
                State::Connecting | State::Dead => return,
            };
            let w = &mut self.ws[i];
            w.buf.drain(..used);
            if w.buf.is_empty() {
                w.buf_at_ns = None;
                if w.buf.capacity() > 4096 {
                    w.buf = Vec::new();
                }
            }
        }
    }
}

/// The writer: a blocking keep-alive connection with receive timestamps.
struct Writer {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
    read_buf: Vec<u8>,
}

impl Writer {
    fn connect(target: &Target, timeout: Duration) -> Result<Writer, String> {
        let stream = std::net::TcpStream::connect_timeout(&target.addr, timeout)
            .map_err(|e| format!("connect {}: {e}", target.addr))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        set_int_opt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            1,
        )
        .map_err(|e| e.to_string())?;
        Ok(Writer {
            stream,
            buf: Vec::new(),
            read_buf: vec![0; READ_CHUNK],
        })
    }

    /// Sends `req`; returns the response's `modifiedIndex` and the receive time of its first
    /// byte (an error, with the body, unless it is a 200 or 201).
    fn roundtrip(&mut self, req: &[u8]) -> Result<(u64, i64), String> {
        (&self.stream)
            .write_all(req)
            .map_err(|e| format!("write: {e}"))?;
        self.buf.clear();
        let mut first_at = None;
        loop {
            if let Some(r) = parse_response(&self.buf).map_err(|e| e.to_string())? {
                let index = parse_reply(&r.body).and_then(|x| x.modified_index());
                return match index {
                    Some(i) if r.status == 200 || r.status == 201 => {
                        Ok((i, first_at.unwrap_or_else(realtime_ns)))
                    }
                    _ => Err(format!(
                        "PUT answered {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body).trim_end()
                    )),
                };
            }
            let got = recv_ts(self.stream.as_raw_fd(), &mut self.read_buf)
                .map_err(|e| format!("read: {e}"))?;
            if got.n == 0 {
                return Err("the server closed the writer's connection".into());
            }
            if first_at.is_none() {
                first_at = Some(got.at_ns.unwrap_or_else(realtime_ns));
            }
            self.buf.extend_from_slice(&self.read_buf[..got.n]);
        }
    }
}

fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

fn summary(values: &[f64]) -> Value {
    if values.is_empty() {
        return json!(null);
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    json!({"min": v[0], "median": v[v.len() / 2], "max": v[v.len() - 1]})
}

pub fn run(cfg: &FanoutCfg) -> Result<i32, String> {
    if cfg.target.https.is_some() {
        return Err("fanout: https targets are not supported (plain http only)".into());
    }
    raise_fd_limit();
    let watch_path = format!("/v2/keys{}", encode_path(&cfg.key)).into_bytes();
    let mut writer = Writer::connect(&cfg.target, cfg.timeout)?;
    let filler = vec![b'x'; cfg.value_size];
    let headers = cfg.target.headers(false);
    let mut put = |writer: &mut Writer, n: u64| -> Result<(u64, i64), String> {
        let mut body = b"value=".to_vec();
        push_value(&mut body, n, cfg.value_size, &filler);
        let mut req = Vec::with_capacity(256);
        write_form(&mut req, "PUT", &headers, &[&watch_path], &[&body]);
        writer.roundtrip(&req)
    };
    // The key exists before the watchers start; they wait for the index after it.
    let first = put(&mut writer, 0)?.0 + 1;
    let mut f = Fanout {
        cfg,
        epoll: Epoll::new().map_err(|e| format!("epoll: {e}"))?,
        ws: Vec::with_capacity(cfg.watchers),
        watch_path: watch_path.clone(),
        headers: headers.clone(),
        errors: Errors::default(),
        armed: 0,
        delivered: 0,
        user_timed: 0,
        read_buf: vec![0; READ_CHUNK],
    };
    let t0 = Instant::now();
    f.open(first)?;
    let arm_secs = t0.elapsed().as_secs_f64();
    if !cfg.quiet {
        eprintln!(
            "fanout: {} watchers of {} armed in {arm_secs:.2}s",
            f.armed, cfg.key
        );
    }
    let mut out = json!({
        "workload": "fanout",
        "url": format!("http://{}", cfg.target.host),
        "key": cfg.key,
        "watchers": cfg.watchers,
        "armed": f.armed,
        "arm_secs": arm_secs,
    });
    if let Some(hold) = cfg.hold {
        println!("armed {}", f.armed);
        let _ = io::stdout().flush();
        let end = Instant::now() + hold;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            f.poll(&mut events, left.min(Duration::from_millis(200)))?;
        }
        out["still_armed"] = json!(f.armed);
    } else {
        measure(&mut f, &mut writer, &mut put, &mut out)?;
    }
    out["errors"] = json!(f.errors.0);
    out["errors_total"] = json!(f.errors.total());
    if let Some(path) = &cfg.json {
        let text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if f.errors.total() > 0 {
        eprintln!(
            "!!! loadgen fanout: {} errors: {:?}",
            f.errors.total(),
            f.errors.0
        );
        return Ok(1);
    }
    Ok(0)
}

type Put<'a> = dyn FnMut(&mut Writer, u64) -> Result<(u64, i64), String> + 'a;

/// One PUT at a time: its ack, every watcher's delivery, every watcher re-armed, a pause.
fn measure(
    f: &mut Fanout<'_>,
    writer: &mut Writer,
    put: &mut Put<'_>,
    out: &mut Value,
) -> Result<(), String> {
    let cfg = f.cfg;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut per_put = Vec::new();
    let (mut firsts, mut medians, mut lasts) = (Vec::new(), Vec::new(), Vec::new());
    let mut cpu_start = None;
    for n in 0..cfg.warmup_puts + cfg.puts {
        if n == cfg.warmup_puts {
            cpu_start = cfg.server_pid.and_then(process_cpu_ms);
        }
        for w in &mut f.ws {
            w.delivered_ns = None;
        }
        f.delivered = 0;
        let (index, ack_ns) = put(writer, n as u64 + 1)?;
        let deadline = Instant::now() + cfg.timeout;
        while f.delivered < f.live() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            f.poll(&mut events, left.min(Duration::from_millis(100)))?;
        }
        let mut d: Vec<i64> =
            f.ws.iter()
                .filter_map(|w| w.delivered_ns)
                .map(|t| t - ack_ns)
                .collect();
        // Live watchers the event never reached (a watcher that got it and then died counts
        // as delivered, not as missed).
        let missed =
            f.ws.iter()
                .filter(|w| w.state != State::Dead && w.delivered_ns.is_none())
                .count();
        for _ in 0..missed {
            f.errors.add("undelivered (timeout)");
        }
        f.await_armed()?;
        if d.is_empty() || n < cfg.warmup_puts {
            std::thread::sleep(cfg.pause);
            continue;
        }
        d.sort_unstable();
        let (a, m, z) = (ms(d[0]), ms(d[d.len() / 2]), ms(d[d.len() - 1]));
        if !cfg.quiet {
            eprintln!(
                "fanout: PUT {} (index {}): first {a:.2} ms, median {m:.2} ms, last {z:.2} ms after its ack ({} delivered)",
                n + 1 - cfg.warmup_puts,
                index,
                d.len()
            );
        }
        per_put.push(json!({"index": index, "delivered": d.len(), "first_ms": a, "median_ms": m, "last_ms": z}));
        firsts.push(a);
        medians.push(m);
        lasts.push(z);
        std::thread::sleep(cfg.pause);
    }
    println!(
        "fan-out to {} watchers of {}, {} PUTs: first {} ms, median {} ms, last {} ms after the ack (median over PUTs; max {} / {} / {})",
        cfg.watchers,
        cfg.key,
        lasts.len(),
        fmt(&firsts, 0.5),
        fmt(&medians, 0.5),
        fmt(&lasts, 0.5),
        fmt(&firsts, 1.0),
        fmt(&medians, 1.0),
        fmt(&lasts, 1.0),
    );
    let cpu_end = cfg.server_pid.and_then(process_cpu_ms);
    if let (Some(a), Some(b)) = (cpu_start, cpu_end) {
        // Every measured PUT's own work, its fan-out and the re-watches after it.
        out["server_cpu_ms_per_put"] = json!((b - a) / cfg.puts.max(1) as f64);
    }
    out["puts"] = json!(lasts.len());
    out["timestamps"] = json!(if f.user_timed == 0 { "kernel" } else { "mixed" });
    out["user_timed_reads"] = json!(f.user_timed);
    out["first_ms"] = summary(&firsts);
    out["median_ms"] = summary(&medians);
    out["last_ms"] = summary(&lasts);
    out["per_put"] = json!(per_put);
    Ok(())
}

fn fmt(v: &[f64], q: f64) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() - 1) as f64 * q).round() as usize;
    format!("{:.2}", s[i])
}
