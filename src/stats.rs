//! Counters for /v2/stats and /metrics. Each shard writes only its own counters (relaxed
//! atomics on its own cache lines); readers sum over shards on request.

use std::sync::atomic::{AtomicU64, Ordering};

/// Latency bucket upper bounds in microseconds (Prometheus `le`).
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

/// HTTP methods tracked in metrics.
pub const METHODS: [&str; 6] = ["GET", "HEAD", "PUT", "POST", "DELETE", "OTHER"];
/// Status codes tracked in metrics; anything else counts as "other".
pub const CODES: [u16; 16] = [
    200, 201, 204, 301, 400, 401, 403, 404, 405, 409, 412, 413, 415, 431, 500, 501,
];

#[repr(align(128))]
#[derive(Default)]
pub struct ShardCounters {
    pub gets_success: AtomicU64,
    pub gets_fail: AtomicU64,
    pub watchers: AtomicU64,
    pub connections: AtomicU64,
    /// Requests handed to the raft shard and not yet answered (a graceful stop waits for 0).
    pub awaiting: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
    requests: [[AtomicU64; CODES.len() + 1]; METHODS.len()],
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl ShardCounters {
    pub fn record(&self, method: &str, code: u16, latency_us: u64) {
        let m = METHODS
            .iter()
            .position(|m| *m == method)
            .unwrap_or(METHODS.len() - 1);
        let c = CODES.iter().position(|c| *c == code).unwrap_or(CODES.len());
        bump(&self.requests[m][c]);
        let b = LATENCY_BUCKETS_US
            .iter()
            .position(|b| latency_us <= *b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        bump(&self.latency[b]);
        self.latency_sum_us.fetch_add(latency_us, Ordering::Relaxed);
    }

    /// Requests answered so far (every `record`).
    pub fn answered(&self) -> u64 {
        self.latency.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn get_ok(&self) {
        bump(&self.gets_success);
    }

    pub fn get_fail(&self) {
        bump(&self.gets_fail);
    }
}

/// Sums of every shard's counters.
#[derive(Default)]
pub struct Totals {
    pub gets_success: u64,
    pub gets_fail: u64,
    pub watchers: u64,
    pub connections: u64,
    pub latency: Vec<u64>,
    pub latency_sum_us: u64,
    pub requests: Vec<(usize, usize, u64)>,
}

pub fn totals(shards: &[ShardCounters]) -> Totals {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut t = Totals {
        latency: vec![0; LATENCY_BUCKETS_US.len() + 1],
        ..Totals::default()
    };
    let mut req = vec![vec![0u64; CODES.len() + 1]; METHODS.len()];
    for s in shards {
        t.gets_success += load(&s.gets_success);
        t.gets_fail += load(&s.gets_fail);
        t.watchers += load(&s.watchers);
        t.connections += load(&s.connections);
        t.latency_sum_us += load(&s.latency_sum_us);
        for (i, c) in s.latency.iter().enumerate() {
            t.latency[i] += load(c);
        }
        for (m, row) in s.requests.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                req[m][c] += load(v);
            }
        }
    }
    for (m, row) in req.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            if *v > 0 {
                t.requests.push((m, c, *v));
            }
        }
    }
    t
}

/// Go's time.Duration.String for a non-negative duration.
pub fn go_duration(ns: u64) -> String {
    if ns == 0 {
        return "0s".to_string();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    let frac = |v: u64, unit: u64, digits: usize| -> String {
        let whole = v / unit;
        let rest = v % unit;
        if rest == 0 {
            return whole.to_string();
        }
        let mut f = format!("{rest:0digits$}");
        while f.ends_with('0') {
            f.pop();
        }
        format!("{whole}.{f}")
    };
    if ns < 1_000_000 {
        return format!("{}µs", frac(ns, 1_000, 3));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", frac(ns, 1_000_000, 6));
    }
    let secs_ns = ns % 60_000_000_000;
    let mins = ns / 60_000_000_000;
    let s = format!("{}s", frac(secs_ns, 1_000_000_000, 9));
    match (mins / 60, mins % 60) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

/// etcd's `statsQueue`: the last 200 raft append messages sent or received (time, bytes), whose
/// rate (messages and bytes per second over their span) `/v2/stats/self` shows while the
/// newest is under a second old.
#[derive(Clone, Debug, Default)]
pub struct RateWindow {
    samples: std::collections::VecDeque<(u64, u64)>,
}

/// Samples kept by a `RateWindow` (etcd's queueCapacity).
const RATE_WINDOW_SAMPLES: usize = 200;

impl RateWindow {
    pub fn push(&mut self, now_ns: u64, bytes: u64) {
        if self.samples.len() == RATE_WINDOW_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((now_ns, bytes));
    }

    /// (messages per second, bytes per second), or zeros when idle for a second.
    pub fn rate(&self, now_ns: u64) -> (f64, f64) {
        let (Some(front), Some(back)) = (self.samples.front(), self.samples.back()) else {
            return (0.0, 0.0);
        };
        if now_ns.saturating_sub(back.0) > 1_000_000_000 {
            return (0.0, 0.0);
        }
        let span = back.0.saturating_sub(front.0);
        if span == 0 {
            return (0.0, 0.0);
        }
        let secs = span as f64 / 1e9;
        let bytes: u64 = self.samples.iter().map(|s| s.1).sum();
        (self.samples.len() as f64 / secs, bytes as f64 / secs)
    }
}

/// The leader's view of one follower, as etcd's `/v2/stats/leader` shows it: round-trip
/// latency of raft messages (an append or heartbeat sent to its response) in milliseconds,
/// and how many round trips succeeded or failed (unreachable, rejected).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FollowerStats {
    pub current_ms: f64,
    pub average_ms: f64,
    pub minimum_ms: f64,
    pub maximum_ms: f64,
    /// Sum of squares, for the standard deviation.
    square_sum: f64,
    pub success: u64,
    pub fail: u64,
}

impl FollowerStats {
    pub fn succeed(&mut self, latency_ms: f64) {
        self.success += 1;
        let n = self.success as f64;
        self.current_ms = latency_ms;
        self.average_ms += (latency_ms - self.average_ms) / n;
        self.square_sum += latency_ms * latency_ms;
        if self.success == 1 || latency_ms < self.minimum_ms {
            self.minimum_ms = latency_ms;
        }
        self.maximum_ms = self.maximum_ms.max(latency_ms);
    }

    pub fn failed(&mut self) {
        self.fail += 1;
    }

    pub fn standard_deviation_ms(&self) -> f64 {
        if self.success == 0 {
            return 0.0;
        }
        let n = self.success as f64;
        (self.square_sum / n - self.average_ms * self.average_ms)
            .max(0.0)
            .sqrt()
    }

    /// etcd's JSON for one follower.
    pub fn render(&self) -> String {
        format!(
            "{{\"latency\":{{\"current\":{},\"average\":{},\"standardDeviation\":{},\"minimum\":{},\"maximum\":{}}},\"counts\":{{\"fail\":{},\"success\":{}}}}}",
            self.current_ms,
            self.average_ms,
            self.standard_deviation_ms(),
            self.minimum_ms,
            self.maximum_ms,
            self.fail,
            self.success
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_over_the_last_samples_and_zero_when_idle() {
        let mut w = RateWindow::default();
        assert_eq!(w.rate(0), (0.0, 0.0));
        for i in 0..300u64 {
            w.push(i * 10_000_000, 100);
        }
        // 200 samples over 1.99 s.
        let (p, b) = w.rate(2_990_000_000);
        assert!((p - 200.0 / 1.99).abs() < 1e-6, "{p}");
        assert!((b - 20_000.0 / 1.99).abs() < 1e-6, "{b}");
        assert_eq!(w.rate(5_000_000_000), (0.0, 0.0));
    }

    #[test]
    fn follower_latency_figures() {
        let mut f = FollowerStats::default();
        for ms in [1.0, 3.0, 2.0] {
            f.succeed(ms);
        }
        f.failed();
        assert_eq!((f.current_ms, f.minimum_ms, f.maximum_ms), (2.0, 1.0, 3.0));
        assert!((f.average_ms - 2.0).abs() < 1e-9);
        assert!((f.standard_deviation_ms() - (2.0f64 / 3.0).sqrt()).abs() < 1e-9);
        assert_eq!(
            f.render(),
            format!("{{\"latency\":{{\"current\":2,\"average\":2,\"standardDeviation\":{},\"minimum\":1,\"maximum\":3}},\"counts\":{{\"fail\":1,\"success\":3}}}}", f.standard_deviation_ms())
        );
    }

    #[test]
    fn durations_like_go() {
        assert_eq!(go_duration(1_217_476_880), "1.21747688s");
        assert_eq!(go_duration(61_500_000_000), "1m1.5s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(1_500_000), "1.5ms");
        assert_eq!(go_duration(999), "999ns");
    }
}
