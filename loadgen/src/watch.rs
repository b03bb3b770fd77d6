//! The watch workload: N watchers (long-poll re-armed with
//! waitIndex=modifiedIndex+1, or one stream=true request each) on a key or a
//! prefix, plus one writer. An event's latency is the time from the writer
//! receiving the reply of the write to a watcher receiving the event.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cli::StopAt;
use crate::etcd::{parse_reply, push_value};
use crate::http::{
    encode_path, next_chunk, parse_head, parse_response, write_form, write_get, BodyKind, Chunk,
    ReqHeaders, Target, MAX_BODY,
};
use crate::runner::{
    build_runtime, connect, driver_name, io_kind, pace_until, read_more, ticker, write_all, Clock,
    FdGuard, Local, Shared, EARLY,
};
use crate::schedule::Schedule;
use crate::stats::{new_hist, ErrKind, RunResult, Stats};
use crate::tls::{BlockingConn, Conn};

pub struct WatchCfg {
    pub target: Target,
    pub watchers: usize,
    pub stream: bool,
    pub key: Option<String>,
    pub prefix: String,
    pub keys: u64,
    pub value_size: usize,
    pub threads: usize,
    pub stop: StopAt,
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub timeout: Duration,
    pub progress: bool,
}

struct WatchShared {
    /// Reply time of every write still tracked, by modifiedIndex.
    writes: Mutex<BTreeMap<u64, Option<Instant>>>,
    writer_done: AtomicBool,
    last_write: AtomicU64,
    writes_measured: AtomicU64,
    /// Last index each watcher has seen.
    seen: Vec<AtomicU64>,
    write_hist: Mutex<Histogram<u64>>,
}

/// One synchronous request on a fresh blocking connection (setup only).
pub fn blocking_request(
    target: &Target,
    req: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let tcp = std::net::TcpStream::connect_timeout(&target.addr, timeout)
        .map_err(|e| format!("connect {}: {e}", target.addr))?;
    tcp.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut s =
        BlockingConn::new(tcp, target.tls.as_ref()).map_err(|e| format!("{}: {e}", target.host))?;
    s.write_all(req).map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(r) = parse_response(&buf).map_err(|e| e.to_string())? {
            return Ok((r.status, r.body.into_owned()));
        }
        if buf.len() > MAX_BODY {
            return Err("response too large".into());
        }
        let n = s.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before a full response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

struct Paths {
    /// The constant headers of every request (Host, Authorization).
    head: ReqHeaders,
    /// Encoded path of the watched key or directory.
    watch: Vec<u8>,
    recursive: bool,
    /// Encoded path prefix of written keys; the index is appended unless
    /// `single` is set.
    write: Vec<u8>,
    single: bool,
    keys: u64,
    value_size: usize,
    filler: Vec<u8>,
}

impl Paths {
    fn write_req(&self, buf: &mut Vec<u8>, n: u64) {
        let k = if self.single { 0 } else { n % self.keys };
        let digits = k.to_string();
        let path: &[&[u8]] = if self.single {
            &[&self.write]
        } else {
            &[&self.write, digits.as_bytes()]
        };
        let mut body = b"value=".to_vec();
        push_value(&mut body, k, self.value_size, &self.filler);
        write_form(buf, "PUT", &self.head, path, &[&body]);
    }

    fn watch_req(&self, buf: &mut Vec<u8>, stream: bool, wait_index: Option<u64>) {
        let mut q = String::from("?wait=true");
        if stream {
            q.push_str("&stream=true");
        }
        if self.recursive {
            q.push_str("&recursive=true");
        }
        if let Some(i) = wait_index {
            q.push_str(&format!("&waitIndex={i}"));
        }
        write_get(buf, &self.head, &[&self.watch, q.as_bytes()]);
    }
}

struct Ctx {
    cfg: Arc<WatchCfg>,
    paths: Arc<Paths>,
    ws: Arc<WatchShared>,
    shared: Arc<Shared>,
    local: Rc<RefCell<Local>>,
    clock: Clock,
}

pub fn run_watch(cfg: WatchCfg, label: &str) -> Result<RunResult, String> {
    let (watch, recursive, write, single) = match &cfg.key {
        Some(k) => (k.clone(), false, k.clone(), true),
        None => {
            let dir = format!("{}/watch", cfg.prefix);
            (dir.clone(), true, format!("{dir}/k"), false)
        }
    };
    let paths = Arc::new(Paths {
        head: cfg.target.headers(false),
        watch: format!("/v2/keys{}", encode_path(&watch)).into_bytes(),
        recursive,
        write: format!("/v2/keys{}", encode_path(&write)).into_bytes(),
        single,
        keys: cfg.keys,
        value_size: cfg.value_size,
        filler: vec![b'x'; cfg.value_size],
    });
    // setup write: the watchers start right after its index
    let mut req = Vec::new();
    paths.write_req(&mut req, 0);
    let (status, body) = blocking_request(&cfg.target, &req, cfg.timeout)?;
    let first = match parse_reply(&body).and_then(|r| r.modified_index()) {
        Some(i) if status == 200 || status == 201 => i,
        _ => {
            return Err(format!(
                "setup write failed: status {status}: {}",
                String::from_utf8_lossy(&body)
            ))
        }
    };
    let ws = Arc::new(WatchShared {
        writes: Mutex::new(BTreeMap::new()),
        writer_done: AtomicBool::new(false),
        last_write: AtomicU64::new(first),
        writes_measured: AtomicU64::new(0),
        seen: (0..cfg.watchers).map(|_| AtomicU64::new(first)).collect(),
        write_hist: Mutex::new(new_hist()),
    });
    let cfg = Arc::new(cfg);
    let shared = Shared::new();
    let threads = cfg.threads.clamp(1, cfg.watchers);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let start_cell: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mut handles = Vec::new();
    for t in 0..threads {
        let (cfg, paths, ws, shared, barrier, start_cell) = (
            cfg.clone(),
            paths.clone(),
            ws.clone(),
            shared.clone(),
            barrier.clone(),
            start_cell.clone(),
        );
        let h = std::thread::Builder::new()
            .name(format!("loadgen-watch-{t}"))
            .spawn(move || {
                let r = watch_thread(
                    t,
                    threads,
                    first,
                    cfg,
                    paths,
                    ws,
                    shared.clone(),
                    &barrier,
                    &start_cell,
                );
                shared.finished.fetch_add(1, Relaxed);
                r
            })
            .map_err(|e| format!("cannot spawn a thread: {e}"))?;
        handles.push(h);
    }
    barrier.wait();
    let start = Instant::now();
    if let Ok(mut s) = start_cell.lock() {
        *s = Some(start);
    }
    barrier.wait();
    let clock = Clock::new(start, cfg.warmup, cfg.stop);
    // monitor: the generic bounds, plus the end of the run once every watcher
    // has seen the last write (or --timeout after the writer finished)
    let mon_shared = shared.clone();
    let mon_ws = ws.clone();
    let timeout = cfg.timeout;
    let ender = std::thread::spawn(move || {
        let mut writer_done_at: Option<Instant> = None;
        while mon_shared.finished.load(Relaxed) < threads && !mon_shared.stopped() {
            std::thread::sleep(Duration::from_millis(20));
            if mon_ws.writer_done.load(Relaxed) {
                let at = *writer_done_at.get_or_insert_with(Instant::now);
                let last = mon_ws.last_write.load(Relaxed);
                let all_seen = mon_ws.seen.iter().all(|s| s.load(Relaxed) >= last);
                if all_seen || at.elapsed() > timeout {
                    mon_shared.hard_stop();
                }
            }
        }
    });
    crate::runner::monitor(
        &shared,
        threads,
        clock.deadline.map(|d| d + Duration::from_secs(1)),
        cfg.timeout,
        cfg.progress,
        label,
    );
    let _ = ender.join();
    let mut stats = Stats::default();
    let mut last_done: Option<Instant> = None;
    for h in handles {
        match h.join() {
            Ok(Ok((s, ld))) => {
                stats.merge(&s);
                last_done = last_done.max(ld);
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a watch thread panicked".into()),
        }
    }
    // events never delivered
    let last = ws.last_write.load(Relaxed);
    let writes = ws.writes.lock().unwrap_or_else(|e| e.into_inner());
    let mut undelivered = 0u64;
    for s in &ws.seen {
        let seen = s.load(Relaxed);
        if seen < last {
            undelivered += writes
                .range(seen + 1..=last)
                .filter(|(_, r)| r.is_some())
                .count() as u64;
        }
    }
    stats.error(ErrKind::Undelivered, undelivered);
    let end = last_done.unwrap_or_else(Instant::now);
    let elapsed = end.saturating_duration_since(clock.measure_start);
    let write_hist = ws
        .write_hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| new_hist());
    let n_writes = ws.writes_measured.load(Relaxed);
    let mut extra = serde_json::Map::new();
    extra.insert("writes".into(), n_writes.into());
    extra.insert("watchers".into(), (cfg.watchers as u64).into());
    extra.insert("stream".into(), cfg.stream.into());
    extra.insert(
        "events_per_write".into(),
        (if n_writes > 0 {
            stats.requests as f64 / n_writes as f64
        } else {
            0.0
        })
        .into(),
    );
    Ok(RunResult {
        stats,
        elapsed,
        extra,
        extra_hists: vec![("write", write_hist)],
        driver: driver_name(),
    })
}

#[allow(clippy::too_many_arguments)]
fn watch_thread(
    t: usize,
    threads: usize,
    first: u64,
    cfg: Arc<WatchCfg>,
    paths: Arc<Paths>,
    ws: Arc<WatchShared>,
    shared: Arc<Shared>,
    barrier: &Barrier,
    start_cell: &Mutex<Option<Instant>>,
) -> Result<(Stats, Option<Instant>), String> {
    let mut rt = match build_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            barrier.wait();
            barrier.wait();
            return Err(format!("cannot build the event loop: {e}"));
        }
    };
    rt.block_on(async {
        let local = Rc::new(RefCell::new(Local::new()));
        // watchers connect (stream watchers also register) before the start
        let mut watchers = Vec::new();
        for w in (t..cfg.watchers).step_by(threads) {
            let mut state = Watcher {
                id: w,
                conn: None,
                rbuf: Vec::with_capacity(8192),
                rpos: 0,
                last: first,
                streaming: false,
            };
            if cfg.stream {
                if let Err(k) = state.open_stream(&cfg, &paths, &shared, None).await {
                    local.borrow_mut().stats.error(k, 1);
                }
            } else if let Ok(c) = connect(&cfg.target, &shared).await {
                state.conn = Some(c);
            }
            watchers.push(state);
        }
        barrier.wait();
        barrier.wait();
        let start = start_cell
            .lock()
            .ok()
            .and_then(|s| *s)
            .unwrap_or_else(Instant::now);
        let clock = Clock::new(start, cfg.warmup, cfg.stop);
        let mk = || Ctx {
            cfg: cfg.clone(),
            paths: paths.clone(),
            ws: ws.clone(),
            shared: shared.clone(),
            local: local.clone(),
            clock,
        };
        local.borrow_mut().active = watchers.len() + usize::from(t == 0);
        let tick = monoio::spawn(ticker(local.clone(), shared.clone()));
        let mut tasks = Vec::new();
        if t == 0 {
            tasks.push(monoio::spawn(writer(mk())));
        }
        for w in watchers {
            tasks.push(monoio::spawn(w.run(mk())));
        }
        for task in tasks {
            task.await;
        }
        tick.await;
        let mut l = local.borrow_mut();
        l.publish(&shared);
        Ok((std::mem::take(&mut l.stats), l.last_done))
    })
}

async fn writer(ctx: Ctx) {
    let cfg = &ctx.cfg;
    let mut conn: Option<(FdGuard, Conn)> = None;
    let mut wbuf = Vec::with_capacity(1024);
    let mut rbuf = Vec::with_capacity(8192);
    let mut rpos = 0;
    let mut sched = cfg.rate.map(|r| Schedule::new(ctx.clock.start, r, 0, 1));
    let mut quota = match cfg.stop {
        StopAt::Requests(n) => n,
        StopAt::Duration(_) => u64::MAX,
    };
    let mut n = 1u64;
    while !ctx.shared.stopped() && quota > 0 {
        let now = Instant::now();
        if ctx.clock.deadline.is_some_and(|d| now >= d) {
            break;
        }
        let t0 = match sched.as_mut() {
            Some(s) if s.next() > now + EARLY => {
                pace_until(s.next(), ctx.clock.deadline).await;
                continue;
            }
            Some(s) => s.take().min(now),
            None => now,
        };
        if conn.is_none() {
            match connect(&cfg.target, &ctx.shared).await {
                Ok(c) => {
                    conn = Some(c);
                    rbuf.clear();
                    rpos = 0;
                }
                Err(e) => {
                    ctx.local.borrow_mut().stats.error(e.kind, 1);
                    if e.fatal {
                        break;
                    }
                    monoio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some((_, s)) = conn.as_mut() else {
            continue;
        };
        let measured = t0 >= ctx.clock.measure_start;
        if measured && quota != u64::MAX {
            quota -= 1;
        }
        ctx.paths.write_req(&mut wbuf, n);
        n += 1;
        ctx.local.borrow_mut().add_outstanding(1);
        let res = roundtrip(s, &mut wbuf, &mut rbuf, &mut rpos).await;
        ctx.local.borrow_mut().add_outstanding(-1);
        let reply_at = Instant::now();
        match res {
            Ok((status, body, close)) => {
                if close {
                    conn = None;
                }
                let idx = parse_reply(&body).and_then(|r| r.modified_index());
                match idx {
                    Some(i) if status == 200 || status == 201 => {
                        ctx.ws
                            .writes
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(i, Some(reply_at));
                        ctx.ws.last_write.fetch_max(i, Relaxed);
                        if measured {
                            ctx.ws.writes_measured.fetch_add(1, Relaxed);
                            if let Ok(mut h) = ctx.ws.write_hist.lock() {
                                let ns = u64::try_from((reply_at - t0).as_nanos())
                                    .unwrap_or(u64::MAX)
                                    .max(1);
                                h.saturating_record(ns);
                            }
                        }
                        if n & 1023 == 0 {
                            prune(&ctx.ws);
                        }
                    }
                    _ if status != 200 && status != 201 => ctx
                        .local
                        .borrow_mut()
                        .stats
                        .error(ErrKind::Status(status), 1),
                    _ => ctx.local.borrow_mut().stats.error(ErrKind::Json, 1),
                }
            }
            Err(k) => {
                let k = if ctx.shared.stopped() {
                    ErrKind::Timeout
                } else {
                    k
                };
                ctx.local.borrow_mut().stats.error(k, 1);
                conn = None;
            }
        }
    }
    ctx.ws.writer_done.store(true, Relaxed);
    ctx.local.borrow_mut().active -= 1;
}

/// Forgets writes every watcher has already seen (keeps memory bounded).
fn prune(ws: &WatchShared) {
    let min = ws.seen.iter().map(|s| s.load(Relaxed)).min().unwrap_or(0);
    let mut w = ws.writes.lock().unwrap_or_else(|e| e.into_inner());
    let keep = w.split_off(&min);
    *w = keep;
    // a watcher stuck far behind must not make the map grow without bound
    while w.len() > 1_000_000 {
        w.pop_first();
    }
}

/// Sends `wbuf` and reads one whole response: (status, body, close).
async fn roundtrip(
    s: &mut Conn,
    wbuf: &mut Vec<u8>,
    rbuf: &mut Vec<u8>,
    rpos: &mut usize,
) -> Result<(u16, Vec<u8>, bool), ErrKind> {
    write_all(s, wbuf).await.map_err(|e| io_kind(&e))?;
    loop {
        match parse_response(&rbuf[*rpos..]) {
            Ok(Some(r)) => {
                let out = (r.status, r.body.to_vec(), r.close);
                *rpos += r.consumed;
                return Ok(out);
            }
            Ok(None) => {}
            Err(_) => return Err(ErrKind::Http),
        }
        match read_more(s, rbuf, rpos).await {
            Ok(0) => return Err(ErrKind::Eof),
            Ok(_) => {}
            Err(e) => return Err(io_kind(&e)),
        }
    }
}

struct Watcher {
    id: usize,
    conn: Option<(FdGuard, Conn)>,
    rbuf: Vec<u8>,
    rpos: usize,
    last: u64,
    streaming: bool,
}

impl Watcher {
    /// Connects and sends a stream=true watch; waits for the response head.
    async fn open_stream(
        &mut self,
        cfg: &WatchCfg,
        paths: &Paths,
        shared: &Arc<Shared>,
        from: Option<u64>,
    ) -> Result<(), ErrKind> {
        self.streaming = false;
        self.conn = None;
        let mut c = connect(&cfg.target, shared).await.map_err(|e| e.kind)?;
        let mut wbuf = Vec::with_capacity(256);
        paths.watch_req(&mut wbuf, true, from);
        write_all(&mut c.1, &mut wbuf)
            .await
            .map_err(|e| io_kind(&e))?;
        self.rbuf.clear();
        self.rpos = 0;
        loop {
            match parse_head(&self.rbuf) {
                Ok(Some(h)) => {
                    if h.status != 200 {
                        return Err(ErrKind::Status(h.status));
                    }
                    if h.body != BodyKind::Chunked {
                        return Err(ErrKind::Http);
                    }
                    self.rpos = h.len;
                    self.conn = Some(c);
                    self.streaming = true;
                    return Ok(());
                }
                Ok(None) => {}
                Err(_) => return Err(ErrKind::Http),
            }
            match read_more(&mut c.1, &mut self.rbuf, &mut self.rpos).await {
                Ok(0) => return Err(ErrKind::Eof),
                Ok(_) => {}
                Err(e) => return Err(io_kind(&e)),
            }
        }
    }

    /// Accounts one event (modifiedIndex `m`) received at `now`.
    fn event(&mut self, m: u64, now: Instant, ctx: &Ctx) {
        if m <= self.last {
            return;
        }
        let (missed, reply) = {
            let mut w = ctx.ws.writes.lock().unwrap_or_else(|e| e.into_inner());
            let missed = w
                .range(self.last + 1..m)
                .filter(|(_, r)| r.is_some())
                .count() as u64;
            let reply = *w.entry(m).or_insert(None);
            (missed, reply)
        };
        self.last = m;
        ctx.ws.seen[self.id].store(m, Relaxed);
        let mut l = ctx.local.borrow_mut();
        l.stats.error(ErrKind::MissedEvent, missed);
        let measured = now >= ctx.clock.measure_start;
        match reply {
            Some(r) => l.done(r, now, measured),
            None => {
                // the event arrived before the writer had read its reply
                l.done(now, now, measured);
                l.stats.outcome("event_before_reply");
            }
        }
    }

    fn finished(&self, ctx: &Ctx) -> bool {
        ctx.shared.stopped()
            || (ctx.ws.writer_done.load(Relaxed) && self.last >= ctx.ws.last_write.load(Relaxed))
    }

    async fn run(mut self, ctx: Ctx) {
        let mut wbuf = Vec::with_capacity(256);
        let mut line: Vec<u8> = Vec::new();
        while !self.finished(&ctx) {
            if self.conn.is_none() {
                let res = if ctx.cfg.stream {
                    self.open_stream(&ctx.cfg, &ctx.paths, &ctx.shared, Some(self.last + 1))
                        .await
                } else {
                    connect(&ctx.cfg.target, &ctx.shared)
                        .await
                        .map(|c| self.conn = Some(c))
                        .map_err(|e| e.kind)
                };
                if let Err(k) = res {
                    if !ctx.shared.stopped() {
                        ctx.local.borrow_mut().stats.error(k, 1);
                        monoio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
                line.clear();
            }
            if ctx.cfg.stream {
                // decode the chunks already buffered into newline-separated events
                let mut ended = false;
                loop {
                    match next_chunk(&self.rbuf[self.rpos..]) {
                        Ok(Some(Chunk::Data {
                            start,
                            end,
                            consumed,
                        })) => {
                            let base = self.rpos;
                            if line.len() + (end - start) > MAX_BODY {
                                ended = true;
                                ctx.local.borrow_mut().stats.error(ErrKind::Http, 1);
                                break;
                            }
                            line.extend_from_slice(&self.rbuf[base + start..base + end]);
                            self.rpos += consumed;
                        }
                        Ok(Some(Chunk::Last { .. })) => {
                            ended = true;
                            break;
                        }
                        Ok(None) => break,
                        Err(_) => {
                            ended = true;
                            ctx.local.borrow_mut().stats.error(ErrKind::Http, 1);
                            break;
                        }
                    }
                }
                let now = Instant::now();
                while let Some(nl) = line.iter().position(|&b| b == b'\n') {
                    let ev: Vec<u8> = line.drain(..=nl).collect();
                    let trimmed = ev.trim_ascii();
                    if trimmed.is_empty() {
                        continue;
                    }
                    match parse_reply(trimmed).and_then(|r| r.modified_index()) {
                        Some(m) => self.event(m, now, &ctx),
                        None => ctx.local.borrow_mut().stats.error(ErrKind::Json, 1),
                    }
                }
                if ended {
                    self.conn = None;
                    continue;
                }
                if self.finished(&ctx) {
                    break;
                }
                let Some((_, s)) = self.conn.as_mut() else {
                    continue;
                };
                match read_more(s, &mut self.rbuf, &mut self.rpos).await {
                    Ok(n) if n > 0 => {}
                    _ => {
                        if !ctx.shared.stopped() {
                            ctx.local.borrow_mut().stats.error(ErrKind::Eof, 1);
                        }
                        self.conn = None;
                    }
                }
                continue;
            }
            // long-poll: one request per event, re-armed after the last index seen
            ctx.paths.watch_req(&mut wbuf, false, Some(self.last + 1));
            let Some((_, s)) = self.conn.as_mut() else {
                continue;
            };
            let res = roundtrip(s, &mut wbuf, &mut self.rbuf, &mut self.rpos).await;
            let now = Instant::now();
            match res {
                Ok((status, body, close)) => {
                    if close {
                        self.conn = None;
                    }
                    let reply = parse_reply(&body);
                    match (status, reply) {
                        (200, Some(r)) => match r.modified_index() {
                            Some(m) => self.event(m, now, &ctx),
                            None => ctx.local.borrow_mut().stats.error(ErrKind::Field, 1),
                        },
                        (400, Some(r)) if r.error_code == Some(401) => {
                            // fell out of the history window: skip ahead
                            ctx.local.borrow_mut().stats.error(ErrKind::IndexCleared, 1);
                            let cur = index_of(&body).unwrap_or(self.last + 1);
                            self.last = self.last.max(cur);
                            ctx.ws.seen[self.id].store(self.last, Relaxed);
                        }
                        (200, None) => ctx.local.borrow_mut().stats.error(ErrKind::Json, 1),
                        (s, _) => {
                            ctx.local.borrow_mut().stats.error(ErrKind::Status(s), 1);
                            monoio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                Err(k) => {
                    if !ctx.shared.stopped() {
                        ctx.local.borrow_mut().stats.error(k, 1);
                    }
                    self.conn = None;
                }
            }
        }
        ctx.local.borrow_mut().active -= 1;
    }
}

/// The "index" member of an etcd error body.
fn index_of(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct E {
        index: Option<u64>,
    }
    serde_json::from_slice::<E>(body).ok()?.index
}
