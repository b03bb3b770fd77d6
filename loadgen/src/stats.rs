//! Latency histograms (hdrhistogram, nanoseconds), error and outcome
//! counters, and the summaries printed as a table or written as JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Highest latency tracked exactly; larger ones are clamped.
const MAX_NS: u64 = 3_600 * 1_000_000_000;

/// Percentiles listed in the table of the JSON report.
pub const PERCENTILES: &[f64] = &[
    0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 75.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95,
    99.99, 99.999, 100.0,
];

pub fn new_hist() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, MAX_NS, 3) {
        Ok(h) => h,
        // the bounds are constants that hdrhistogram accepts
        Err(_) => unreachable!("valid histogram bounds"),
    }
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrKind {
    /// An unexpected HTTP status.
    Status(u16),
    Connect,
    /// TLS handshake failure (bad certificate, alert, ...) or a TLS error
    /// on an established connection.
    Tls,
    Io,
    /// The server closed the connection with requests outstanding.
    Eof,
    /// The response was not valid HTTP/1.1.
    Http,
    /// The body was not the JSON shape expected.
    Json,
    /// Unexpected "action" field.
    Action,
    /// Wrong node.key.
    Key,
    /// Wrong node.value.
    Value,
    /// A missing field (modifiedIndex, ttl ...).
    Field,
    /// A response nobody asked for.
    Unsolicited,
    /// Cut off by --timeout.
    Timeout,
    /// A watcher skipped an event that was written.
    MissedEvent,
    /// A watcher never got an event before the run ended.
    Undelivered,
    /// etcd 401: the watcher fell out of the event history window.
    IndexCleared,
}

impl fmt::Display for ErrKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrKind::Status(s) => write!(f, "status_{s}"),
            ErrKind::Connect => f.write_str("connect"),
            ErrKind::Tls => f.write_str("tls"),
            ErrKind::Io => f.write_str("io"),
            ErrKind::Eof => f.write_str("closed"),
            ErrKind::Http => f.write_str("bad_http"),
            ErrKind::Json => f.write_str("bad_json"),
            ErrKind::Action => f.write_str("bad_action"),
            ErrKind::Key => f.write_str("bad_key"),
            ErrKind::Value => f.write_str("bad_value"),
            ErrKind::Field => f.write_str("missing_field"),
            ErrKind::Unsolicited => f.write_str("unsolicited_response"),
            ErrKind::Timeout => f.write_str("timeout"),
            ErrKind::MissedEvent => f.write_str("missed_event"),
            ErrKind::Undelivered => f.write_str("undelivered_event"),
            ErrKind::IndexCleared => f.write_str("watch_index_cleared"),
        }
    }
}

/// Counters of one thread, one run, or several runs merged.
#[derive(Clone)]
pub struct Stats {
    /// Latency of measured responses, in nanoseconds.
    pub hist: Histogram<u64>,
    /// Measured responses (including those counted as errors).
    pub requests: u64,
    pub errors: BTreeMap<ErrKind, u64>,
    /// Expected outcomes that are not errors (e.g. cas_conflict).
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Connections set up (TCP connected, TLS handshake done), warmup included.
    pub connections: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            hist: new_hist(),
            requests: 0,
            errors: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            connections: 0,
        }
    }
}

impl Stats {
    #[inline]
    pub fn record(&mut self, latency: Duration) {
        self.requests += 1;
        let ns = u64::try_from(latency.as_nanos())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_NS);
        self.hist.saturating_record(ns);
    }

    pub fn error(&mut self, kind: ErrKind, n: u64) {
        if n > 0 {
            *self.errors.entry(kind).or_insert(0) += n;
        }
    }

    pub fn outcome(&mut self, what: &'static str) {
        *self.outcomes.entry(what).or_insert(0) += 1;
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, o: &Stats) {
        // both histograms have the same bounds, so adding cannot fail
        let _ = self.hist.add(&o.hist);
        self.requests += o.requests;
        self.connections += o.connections;
        for (k, v) in &o.errors {
            self.error(*k, *v);
        }
        for (k, v) in &o.outcomes {
            *self.outcomes.entry(k).or_insert(0) += v;
        }
    }
}

/// Latency figures in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Lat {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

pub fn ns_to_us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

pub fn latency(h: &Histogram<u64>) -> Lat {
    if h.is_empty() {
        return Lat::default();
    }
    let q = |p: f64| ns_to_us(h.value_at_quantile(p));
    Lat {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        max: ns_to_us(h.max()),
        mean: h.mean() / 1000.0,
    }
}

pub fn percentile_table(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    PERCENTILES
        .iter()
        .map(|&p| (p, ns_to_us(h.value_at_percentile(p))))
        .collect()
}

impl Lat {
    pub fn to_json(self) -> Value {
        json!({"p50": self.p50, "p90": self.p90, "p99": self.p99, "p999": self.p999,
               "max": self.max, "mean": self.mean})
    }
}

/// The result of one run (or the merge of several runs of one target).
#[derive(Clone)]
pub struct RunResult {
    pub stats: Stats,
    /// Measured seconds (summed over merged runs).
    pub elapsed: Duration,
    /// Workload-specific extra figures (JSON object members).
    pub extra: serde_json::Map<String, Value>,
    /// Extra latency histograms (e.g. the watch writer's), by name.
    pub extra_hists: Vec<(&'static str, Histogram<u64>)>,
    pub driver: &'static str,
}

impl RunResult {
    pub fn rate(&self) -> f64 {
        rate(self.stats.requests, self.elapsed)
    }

    pub fn merge(&mut self, o: &RunResult) {
        self.stats.merge(&o.stats);
        self.elapsed += o.elapsed;
        for (k, v) in &o.extra {
            match (self.extra.get_mut(k), v.as_f64()) {
                (Some(Value::Number(n)), Some(b)) if v.is_u64() && n.is_u64() => {
                    *n = (n.as_u64().unwrap_or(0) + b as u64).into();
                }
                (None, _) => {
                    self.extra.insert(k.clone(), v.clone());
                }
                _ => {}
            }
        }
        for (name, h) in &o.extra_hists {
            if let Some((_, mine)) = self.extra_hists.iter_mut().find(|(n, _)| n == name) {
                let _ = mine.add(h);
            } else {
                self.extra_hists.push((name, h.clone()));
            }
        }
    }

    pub fn to_json(&self) -> Value {
        let lat = latency(&self.stats.hist);
        let errors: serde_json::Map<String, Value> = self
            .stats
            .errors
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let outcomes: serde_json::Map<String, Value> = self
            .stats
            .outcomes
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let table: Vec<Value> = percentile_table(&self.stats.hist)
            .into_iter()
            .map(|(p, us)| json!({"percentile": p, "latency_us": us}))
            .collect();
        let mut v = json!({
            "requests": self.stats.requests,
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "requests_per_sec": self.rate(),
            "errors": self.stats.error_total(),
            "errors_by_kind": errors,
            "outcomes": outcomes,
            "connections_opened": self.stats.connections,
            "latency_us": lat.to_json(),
            "histogram": {
                "unit": "us",
                "count": self.stats.hist.len(),
                "percentiles": table,
            },
            "driver": self.driver,
        });
        if let Some(m) = v.as_object_mut() {
            for (name, h) in &self.extra_hists {
                m.insert(format!("{name}_latency_us"), latency(h).to_json());
            }
            m.extend(self.extra.clone());
        }
        v
    }
}

pub fn rate(n: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// Latency for humans: µs below 10 ms, else ms / s.
pub fn fmt_us(us: f64) -> String {
    if us < 10_000.0 {
        format!("{us:.1}us")
    } else if us < 10_000_000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

/// The human table of one result.
pub fn print_table(title: &str, r: &RunResult) {
    let lat = latency(&r.stats.hist);
    println!("{title}");
    println!(
        "  requests      {:>12}   in {:.2}s",
        r.stats.requests,
        r.elapsed.as_secs_f64()
    );
    println!("  requests/s    {:>12.1}", r.rate());
    println!(
        "  latency       p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {})",
        fmt_us(lat.p50),
        fmt_us(lat.p90),
        fmt_us(lat.p99),
        fmt_us(lat.p999),
        fmt_us(lat.max),
        fmt_us(lat.mean)
    );
    for (name, h) in &r.extra_hists {
        let l = latency(h);
        println!(
            "  {name:<13} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            fmt_us(l.p50),
            fmt_us(l.p90),
            fmt_us(l.p99),
            fmt_us(l.p999),
            fmt_us(l.max)
        );
    }
    for (k, v) in &r.extra {
        println!("  {k:<13} {v}");
    }
    if !r.stats.outcomes.is_empty() {
        let o: Vec<String> = r
            .stats
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("  outcomes      {}", o.join("  "));
    }
    let errs = r.stats.error_total();
    if errs == 0 {
        println!("  errors        0");
    } else {
        let e: Vec<String> = r
            .stats
            .errors
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("  errors        {errs}   ({})", e.join("  "));
    }
}

/// Figures compared between targets, with how to get them.
pub fn compare_rows(r: &RunResult) -> Vec<(&'static str, f64)> {
    let l = latency(&r.stats.hist);
    vec![
        ("requests/s", r.rate()),
        ("p50 us", l.p50),
        ("p90 us", l.p90),
        ("p99 us", l.p99),
        ("p99.9 us", l.p999),
        ("max us", l.max),
        ("errors", r.stats.error_total() as f64),
    ]
}

/// A / B, or None when B is zero.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    if b == 0.0 {
        None
    } else {
        Some(a / b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut s = Stats::default();
        for us in 1..=10_000u64 {
            s.record(Duration::from_micros(us));
        }
        assert_eq!(s.requests, 10_000);
        let l = latency(&s.hist);
        // 3 significant digits: within 0.1%
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 0.001;
        assert!(close(l.p50, 5000.0), "{l:?}");
        assert!(close(l.p90, 9000.0), "{l:?}");
        assert!(close(l.p99, 9900.0), "{l:?}");
        assert!(close(l.p999, 9990.0), "{l:?}");
        assert!(close(l.max, 10_000.0), "{l:?}");
        assert!(close(l.mean, 5000.5), "{l:?}");
        let t = percentile_table(&s.hist);
        assert_eq!(t.len(), PERCENTILES.len());
        assert!(t.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(close(t[0].1, 1.0));
    }

    #[test]
    fn merge_adds_counts_and_errors() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        a.record(Duration::from_micros(10));
        b.record(Duration::from_micros(1000));
        b.record(Duration::from_secs(7200)); // clamped, not lost
        a.error(ErrKind::Status(500), 2);
        b.error(ErrKind::Status(500), 1);
        b.error(ErrKind::Io, 1);
        b.error(ErrKind::Json, 0);
        b.outcome("cas_conflict");
        a.merge(&b);
        assert_eq!(a.requests, 3);
        assert_eq!(a.hist.len(), 3);
        assert_eq!(a.errors[&ErrKind::Status(500)], 3);
        assert_eq!(a.error_total(), 4);
        assert!(!a.errors.contains_key(&ErrKind::Json));
        assert_eq!(a.outcomes["cas_conflict"], 1);
        assert!(latency(&a.hist).max >= 3_600_000_000.0 * 0.999);
    }

    #[test]
    fn empty_and_rates() {
        let s = Stats::default();
        assert_eq!(latency(&s.hist), Lat::default());
        assert!(percentile_table(&s.hist).is_empty());
        assert_eq!(rate(100, Duration::from_millis(500)), 200.0);
        assert_eq!(rate(100, Duration::ZERO), 0.0);
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(fmt_us(12.34), "12.3us");
        assert_eq!(fmt_us(12_340.0), "12.34ms");
        assert_eq!(ErrKind::Status(412).to_string(), "status_412");
    }

    #[test]
    fn result_json_has_the_required_fields() {
        let mut s = Stats::default();
        s.record(Duration::from_micros(50));
        s.error(ErrKind::Status(404), 1);
        let r = RunResult {
            stats: s,
            elapsed: Duration::from_secs(2),
            extra: serde_json::Map::new(),
            extra_hists: vec![("write", new_hist())],
            driver: "epoll",
        };
        let mut r2 = r.clone();
        r2.merge(&r);
        let v = r2.to_json();
        assert_eq!(v["requests"], 2);
        assert_eq!(v["requests_per_sec"], 0.5);
        assert_eq!(v["errors"], 2);
        assert_eq!(v["errors_by_kind"]["status_404"], 2);
        for k in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_us"][k].as_f64().unwrap() > 49.0, "{k}");
        }
        assert!(v["histogram"]["percentiles"].as_array().unwrap().len() > 10);
        assert!(v["write_latency_us"].is_object());
    }
}
