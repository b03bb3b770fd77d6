//! The engine: one monoio event loop per thread (io_uring, falling back to
//! epoll), one task per connection driving keep-alive HTTP/1.1 with up to
//! `pipeline` requests in flight, closed or open loop. The calling thread is
//! the monitor: it prints progress and enforces that every run ends (at the
//! deadline plus --timeout, or after --timeout without any progress) by
//! shutting the sockets down.

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::io;
use std::io::Write as _;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::cli::StopAt;
use crate::http::{parse_response, Target, MAX_BODY, MAX_HEAD};
use crate::schedule::Schedule;
use crate::stats::{latency, new_hist, ErrKind, RunResult, Stats};
use crate::tls::{self, Conn};
use crate::workload::{share, ConnWorkload, Op, Plan};

pub type Runtime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

pub fn build_runtime() -> io::Result<Runtime> {
    // COOP_TASKRUN: completions run when this thread next enters the kernel (to submit or to
    // wait), not through an IPI that interrupts it. Less of the machine goes to the load
    // generator and more to the server it measures: against one ringd, `loadgen put` at 64
    // connections went from 61-81k to 74-86k req/s (three alternating rounds). Kernels
    // before 5.19 refuse the flag: then a plain ring.
    let mut coop = io_uring::IoUring::builder();
    coop.setup_coop_taskrun();
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(1024)
        .uring_builder(coop)
        .enable_timer()
        .build()
        .or_else(|_| {
            monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .with_entries(1024)
                .enable_timer()
                .build()
        })
}

pub fn driver_name() -> &'static str {
    if monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "epoll"
    }
}

/// State shared by all threads of a run and the monitor.
pub struct Shared {
    pub stop: AtomicBool,
    /// All responses so far (warmup included), flushed periodically.
    pub responses: AtomicU64,
    pub errors: AtomicU64,
    pub outstanding: AtomicI64,
    pub progress: Mutex<Histogram<u64>>,
    fds: Mutex<HashSet<RawFd>>,
    pub finished: AtomicUsize,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            stop: AtomicBool::new(false),
            responses: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            outstanding: AtomicI64::new(0),
            progress: Mutex::new(new_hist()),
            fds: Mutex::new(HashSet::new()),
            finished: AtomicUsize::new(0),
        })
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// Stops the run: every registered socket is shut down so that pending
    /// reads end at once.
    pub fn hard_stop(&self) {
        self.stop.store(true, Relaxed);
        let fds = self.fds.lock().unwrap_or_else(|e| e.into_inner());
        for &fd in fds.iter() {
            // SAFETY: fd is registered only while its socket is open (the guard
            // removes it under this lock before the socket is closed).
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
    }

    pub fn register(self: &Arc<Self>, s: &TcpStream) -> FdGuard {
        let fd = s.as_raw_fd();
        self.fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fd);
        FdGuard {
            fd,
            shared: self.clone(),
        }
    }
}

/// Keeps a socket registered for `hard_stop`; must be dropped before the
/// socket is closed (hold it before the stream in a tuple).
pub struct FdGuard {
    fd: RawFd,
    shared: Arc<Shared>,
}

impl Drop for FdGuard {
    fn drop(&mut self) {
        self.shared
            .fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.fd);
    }
}

/// Why a connection could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectError {
    pub kind: ErrKind,
    /// Retrying cannot help (the TLS peer rejected us or we rejected it).
    pub fatal: bool,
}

/// Connects (and for https runs the TLS handshake). The socket is
/// registered for `hard_stop` before the handshake, so a stuck handshake is
/// cut off like any read.
pub async fn connect(
    target: &Target,
    shared: &Arc<Shared>,
) -> Result<(FdGuard, Conn), ConnectError> {
    let connect_err = ConnectError {
        kind: ErrKind::Connect,
        fatal: false,
    };
    let s = TcpStream::connect_addr(target.addr)
        .await
        .map_err(|_| connect_err)?;
    s.set_nodelay(true).map_err(|_| connect_err)?;
    let g = shared.register(&s);
    let Some(t) = &target.tls else {
        return Ok((g, Conn::Plain(s)));
    };
    match tls::handshake(s, t).await {
        Ok(c) => Ok((g, c)),
        Err(e) => {
            let fatal = tls::rustls_error(&e).is_some();
            tls::note_error(|| format!("{}: {e}", target.host));
            Err(ConnectError {
                kind: ErrKind::Tls,
                fatal,
            })
        }
    }
}

/// The error kind of a failed read or write: `tls` when rustls reported it
/// (e.g. an alert from a server that rejected our client certificate).
pub fn io_kind(e: &io::Error) -> ErrKind {
    match tls::rustls_error(e) {
        Some(r) => {
            tls::note_error(|| r.to_string());
            ErrKind::Tls
        }
        None => ErrKind::Io,
    }
}

/// Reads more bytes into `buf` after `*pos`-consumed data, compacting and
/// growing it within MAX_BODY + MAX_HEAD. Returns the bytes read (0: EOF).
pub async fn read_more<S: AsyncReadRent>(
    s: &mut S,
    buf: &mut Vec<u8>,
    pos: &mut usize,
) -> io::Result<usize> {
    if *pos >= buf.len() {
        buf.clear();
        *pos = 0;
    } else if *pos > 0 && buf.capacity() - buf.len() < 4096 {
        buf.drain(..*pos);
        *pos = 0;
    }
    if buf.capacity() - buf.len() < 4096 {
        if buf.capacity() >= MAX_BODY + MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response too large",
            ));
        }
        buf.reserve(buf.capacity().max(4096));
    }
    let b = std::mem::take(buf);
    let len = b.len();
    let (res, slice) = s.read(b.slice_mut(len..)).await;
    *buf = slice.into_inner();
    res
}

pub async fn write_all<S: AsyncWriteRent>(s: &mut S, buf: &mut Vec<u8>) -> io::Result<()> {
    let b = std::mem::take(buf);
    let (res, mut b) = s.write_all(b).await;
    b.clear();
    *buf = b;
    res.map(|_| ())
}

/// Parameters of one request-response run.
pub struct RunCfg {
    pub target: Target,
    pub plan: Arc<Plan>,
    pub connections: usize,
    pub threads: usize,
    pub pipeline: usize,
    pub stop: StopAt,
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub timeout: Duration,
    pub progress: bool,
    pub seed: u64,
    /// A new connection for every request (`--new-conn`).
    pub new_conn: bool,
}

#[derive(Clone, Copy)]
pub struct Clock {
    pub start: Instant,
    pub measure_start: Instant,
    pub deadline: Option<Instant>,
}

impl Clock {
    pub fn new(start: Instant, warmup: Duration, stop: StopAt) -> Clock {
        let measure_start = start + warmup;
        let deadline = match stop {
            StopAt::Duration(d) => Some(measure_start + d),
            StopAt::Requests(_) => None,
        };
        Clock {
            start,
            measure_start,
            deadline,
        }
    }
}

/// Per-thread counters; the ticker task publishes them to `Shared`.
pub struct Local {
    pub stats: Stats,
    interval: Histogram<u64>,
    responses: u64,
    errors_published: u64,
    outstanding: i64,
    outstanding_published: i64,
    pub last_done: Option<Instant>,
    pub active: usize,
}

impl Local {
    pub fn new() -> Local {
        Local {
            stats: Stats::default(),
            interval: new_hist(),
            responses: 0,
            errors_published: 0,
            outstanding: 0,
            outstanding_published: 0,
            last_done: None,
            active: 0,
        }
    }

    #[inline]
    pub fn done(&mut self, t0: Instant, now: Instant, measured: bool) {
        self.responses += 1;
        let lat = now.saturating_duration_since(t0);
        if measured {
            self.stats.record(lat);
            self.last_done = Some(now);
        }
        let ns = u64::try_from(lat.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.interval.saturating_record(ns);
    }

    pub fn add_outstanding(&mut self, n: i64) {
        self.outstanding += n;
    }

    pub fn publish(&mut self, shared: &Shared) {
        shared
            .responses
            .fetch_add(std::mem::take(&mut self.responses), Relaxed);
        let e = self.stats.error_total();
        shared
            .errors
            .fetch_add(e - self.errors_published.min(e), Relaxed);
        self.errors_published = e;
        shared
            .outstanding
            .fetch_add(self.outstanding - self.outstanding_published, Relaxed);
        self.outstanding_published = self.outstanding;
        if !self.interval.is_empty() {
            if let Ok(mut h) = shared.progress.lock() {
                let _ = h.add(&self.interval);
            }
            self.interval.reset();
        }
    }
}

impl Default for Local {
    fn default() -> Self {
        Local::new()
    }
}

pub async fn ticker(local: Rc<RefCell<Local>>, shared: Arc<Shared>) {
    loop {
        monoio::time::sleep(Duration::from_millis(200)).await;
        let mut l = local.borrow_mut();
        l.publish(&shared);
        if l.active == 0 {
            break;
        }
    }
}

/// Open-loop requests may go out this much before their intended time: the
/// timer wheel has 1 ms ticks (rounded up), so sleeping `wait - EARLY` wakes
/// within `[wait - EARLY, wait]`, never late. An early request's latency is
/// measured from its actual send time, a late one's from its intended time.
pub const EARLY: Duration = Duration::from_millis(1);

/// Sleeps until about `at` (at most `EARLY` before it), or the deadline.
pub async fn pace_until(at: Instant, deadline: Option<Instant>) {
    let at = deadline.map_or(at, |d| at.min(d));
    let wait = at.saturating_duration_since(Instant::now());
    if wait > EARLY {
        monoio::time::sleep((wait - EARLY).min(Duration::from_millis(100))).await;
    }
}

struct Meta {
    t0: Instant,
    measured: bool,
    op: Op,
}

struct ConnCtx {
    cfg: Arc<RunCfg>,
    shared: Arc<Shared>,
    local: Rc<RefCell<Local>>,
    clock: Clock,
}

/// Fails every request in flight with `kind` (or timeout when stopping).
fn fail_all(ctx: &ConnCtx, inflight: &mut VecDeque<Meta>, kind: ErrKind) {
    let kind = if ctx.shared.stopped() {
        ErrKind::Timeout
    } else {
        kind
    };
    let mut l = ctx.local.borrow_mut();
    let n = inflight.len().max(1) as u64;
    l.stats.error(kind, n);
    l.outstanding -= inflight.len() as i64;
    inflight.clear();
}

/// One connection's requests. `first`: the connection set up before the run started (None
/// under `--new-conn`, where setting up connections is part of what is measured).
async fn conn_task(c: usize, first: Option<Result<(FdGuard, Conn), ConnectError>>, ctx: ConnCtx) {
    let cfg = ctx.cfg.clone();
    let depth = cfg.pipeline;
    let mut wl = ConnWorkload::new(cfg.plan.clone(), c, cfg.seed);
    let mut inflight: VecDeque<Meta> = VecDeque::with_capacity(depth);
    let mut rbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut rpos = 0usize;
    let mut wbuf: Vec<u8> = Vec::with_capacity(4 * 1024);
    let mut sched = cfg
        .rate
        .map(|r| Schedule::new(ctx.clock.start, r, c, cfg.connections));
    let mut quota = match cfg.stop {
        StopAt::Requests(n) => cfg
            .plan
            .fixed_quota(c)
            .unwrap_or_else(|| share(n, cfg.connections, c)),
        StopAt::Duration(_) => u64::MAX,
    };
    let mut done_sending = false;
    let mut connect_failing_since: Option<Instant> = None;
    let (mut conn, mut gave_up) = match first {
        Some(Ok(c)) => (Some(c), false),
        Some(Err(e)) => (None, e.fatal),
        None => (None, false),
    };
    // --new-conn: when the connection of the next request began to be set up. The request's
    // latency counts from there, so the connect and the TLS handshake are part of it.
    let mut conn_start: Option<Instant> = None;
    loop {
        if gave_up {
            // a TLS rejection is final: this connection gives up its share
            break;
        }
        if ctx.shared.stopped() {
            if !inflight.is_empty() {
                fail_all(&ctx, &mut inflight, ErrKind::Timeout);
            }
            break;
        }
        if conn.is_none() {
            // no connection for nothing: not past the end, nor for a spent quota
            if done_sending || ctx.clock.deadline.is_some_and(|d| Instant::now() >= d) || quota == 0
            {
                break;
            }
            if cfg.new_conn {
                // open loop: connect when the next request is due, not ahead of it
                if let Some(s) = &sched {
                    if s.next() > Instant::now() + EARLY {
                        pace_until(s.next(), ctx.clock.deadline).await;
                        continue;
                    }
                }
                conn_start = Some(Instant::now());
            }
            match connect(&cfg.target, &ctx.shared).await {
                Ok(s) => {
                    conn = Some(s);
                    connect_failing_since = None;
                    rbuf.clear();
                    rpos = 0;
                    ctx.local.borrow_mut().stats.connections += 1;
                }
                Err(e) => {
                    ctx.local.borrow_mut().stats.error(e.kind, 1);
                    if e.fatal {
                        gave_up = true;
                        continue;
                    }
                    let since = *connect_failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > cfg.timeout
                        || ctx.clock.deadline.is_some_and(|d| Instant::now() >= d)
                    {
                        break;
                    }
                    monoio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some((_, stream)) = conn.as_mut() else {
            continue;
        };
        let now = Instant::now();
        if !done_sending {
            let before = inflight.len();
            while inflight.len() < depth {
                if ctx.clock.deadline.is_some_and(|d| now >= d) || quota == 0 {
                    done_sending = true;
                    break;
                }
                let t0 = match sched.as_mut() {
                    Some(s) if s.next() > now + EARLY => break,
                    Some(s) => s.take().min(conn_start.take().unwrap_or(now)),
                    None => conn_start.take().unwrap_or(now),
                };
                let measured = t0 >= ctx.clock.measure_start;
                if measured && quota != u64::MAX {
                    quota -= 1;
                }
                let op = wl.next(&mut wbuf, now);
                inflight.push_back(Meta { t0, measured, op });
            }
            ctx.local.borrow_mut().outstanding += (inflight.len() - before) as i64;
        }
        if !wbuf.is_empty() {
            if let Err(e) = write_all(stream, &mut wbuf).await {
                wbuf.clear();
                let kind = io_kind(&e);
                fail_all(&ctx, &mut inflight, kind);
                gave_up = kind == ErrKind::Tls;
                conn = None;
                continue;
            }
        }
        if inflight.is_empty() {
            if done_sending {
                break;
            }
            if let Some(s) = &sched {
                pace_until(s.next(), ctx.clock.deadline).await;
            }
            continue;
        }
        match read_more(stream, &mut rbuf, &mut rpos).await {
            Ok(0) => {
                fail_all(&ctx, &mut inflight, ErrKind::Eof);
                conn = None;
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                // a TLS error (e.g. the server's alert that it wants a client
                // certificate) does not heal by reconnecting: give up
                let kind = io_kind(&e);
                fail_all(&ctx, &mut inflight, kind);
                gave_up = kind == ErrKind::Tls;
                conn = None;
                continue;
            }
        }
        let now = Instant::now();
        let mut broken: Option<ErrKind> = None;
        let mut close = false;
        {
            let mut l = ctx.local.borrow_mut();
            let l = &mut *l;
            loop {
                match parse_response(&rbuf[rpos..]) {
                    Ok(Some(resp)) => {
                        let Some(m) = inflight.pop_front() else {
                            broken = Some(ErrKind::Unsolicited);
                            break;
                        };
                        l.outstanding -= 1;
                        let res = wl.check(m.op, &resp, now, &mut l.stats);
                        l.done(m.t0, now, m.measured);
                        if let Err(k) = res {
                            l.stats.error(k, 1);
                        }
                        rpos += resp.consumed;
                        if resp.close {
                            close = true;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        broken = Some(ErrKind::Http);
                        break;
                    }
                }
            }
        }
        if let Some(k) = broken {
            fail_all(&ctx, &mut inflight, k);
            conn = None;
        } else if close {
            if !inflight.is_empty() {
                fail_all(&ctx, &mut inflight, ErrKind::Eof);
            }
            conn = None;
        } else if cfg.new_conn && inflight.is_empty() {
            // answered (the server kept the connection despite `Connection: close`): the next
            // request gets a new one all the same
            conn = None;
        }
    }
    ctx.local.borrow_mut().active -= 1;
}

/// Prints the live progress line (when enabled) and enforces the bounds
/// until `threads` threads have finished.
pub fn monitor(
    shared: &Shared,
    threads: usize,
    deadline: Option<Instant>,
    timeout: Duration,
    progress: bool,
    label: &str,
) {
    let started = Instant::now();
    let mut last_print = started;
    let mut last_responses = 0u64;
    let mut progress_at = Instant::now();
    let mut progress_seen = 0u64;
    let mut printed = false;
    while shared.finished.load(Relaxed) < threads {
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        let responses = shared.responses.load(Relaxed);
        if responses != progress_seen {
            progress_seen = responses;
            progress_at = now;
        }
        if !shared.stopped() {
            let past_end = deadline.is_some_and(|d| now > d + timeout);
            let stalled = shared.outstanding.load(Relaxed) > 0 && now - progress_at > timeout;
            if past_end || stalled {
                shared.hard_stop();
            }
        }
        if progress && now - last_print >= Duration::from_secs(1) {
            let dt = (now - last_print).as_secs_f64();
            let rate = (responses - last_responses) as f64 / dt;
            let p99 = shared
                .progress
                .lock()
                .map(|h| latency(&h).p99)
                .unwrap_or(0.0);
            let mut e = io::stderr().lock();
            let _ = write!(
                e,
                "\r\x1b[K{label}[{:>4.0}s] {:>10.0} req/s  errors {}  p99 {}",
                (now - started).as_secs_f64(),
                rate,
                shared.errors.load(Relaxed),
                crate::stats::fmt_us(p99)
            );
            let _ = e.flush();
            printed = true;
            last_print = now;
            last_responses = responses;
        }
    }
    if printed {
        let _ = write!(io::stderr(), "\r\x1b[K");
    }
}

/// Runs one request-response workload to the end.
pub fn run(cfg: RunCfg, label: &str) -> Result<RunResult, String> {
    let cfg = Arc::new(cfg);
    let shared = Shared::new();
    let threads = cfg.threads.clamp(1, cfg.connections);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let start_cell: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mut handles = Vec::new();
    for t in 0..threads {
        let cfg = cfg.clone();
        let shared = shared.clone();
        let barrier = barrier.clone();
        let start_cell = start_cell.clone();
        let h = std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || {
                let res = thread_main(t, threads, &cfg, &shared, &barrier, &start_cell);
                shared.finished.fetch_add(1, Relaxed);
                res
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
    monitor(
        &shared,
        threads,
        clock.deadline,
        cfg.timeout,
        cfg.progress,
        label,
    );
    let mut stats = Stats::default();
    let mut last_done: Option<Instant> = None;
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok((s, ld))) => {
                stats.merge(&s);
                last_done = last_done.max(ld);
            }
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(_) => first_err = first_err.or(Some("a load thread panicked".to_string())),
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let end = last_done.unwrap_or_else(Instant::now);
    Ok(RunResult {
        stats,
        elapsed: end.saturating_duration_since(clock.measure_start),
        extra: serde_json::Map::new(),
        extra_hists: Vec::new(),
        driver: driver_name(),
    })
}

type ThreadOut = Result<(Stats, Option<Instant>), String>;

fn thread_main(
    t: usize,
    threads: usize,
    cfg: &Arc<RunCfg>,
    shared: &Arc<Shared>,
    barrier: &Barrier,
    start_cell: &Mutex<Option<Instant>>,
) -> ThreadOut {
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
        // connect first so that connection setup is not part of the measurement (except
        // under --new-conn, where it is what is measured)
        let mut conns = Vec::new();
        for c in (t..cfg.connections).step_by(threads) {
            if cfg.new_conn {
                conns.push((c, None));
                continue;
            }
            let conn = connect(&cfg.target, shared).await;
            match &conn {
                Ok(_) => local.borrow_mut().stats.connections += 1,
                Err(e) => local.borrow_mut().stats.error(e.kind, 1),
            }
            conns.push((c, Some(conn)));
        }
        barrier.wait();
        barrier.wait();
        let start = start_cell
            .lock()
            .ok()
            .and_then(|s| *s)
            .unwrap_or_else(Instant::now);
        let clock = Clock::new(start, cfg.warmup, cfg.stop);
        local.borrow_mut().active = conns.len();
        let tick = monoio::spawn(ticker(local.clone(), shared.clone()));
        let mut tasks = Vec::new();
        for (c, conn) in conns {
            let ctx = ConnCtx {
                cfg: cfg.clone(),
                shared: shared.clone(),
                local: local.clone(),
                clock,
            };
            tasks.push(monoio::spawn(conn_task(c, conn, ctx)));
        }
        for task in tasks {
            task.await;
        }
        tick.await;
        let mut l = local.borrow_mut();
        l.publish(shared);
        Ok((std::mem::take(&mut l.stats), l.last_done))
    })
}
