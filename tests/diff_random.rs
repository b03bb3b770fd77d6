//! The randomized differential test: seeded random request sequences (sets, dirs, CAS/CAD,
//! TTLs, in-order POSTs, deletes, listings, `waitIndex` hits from the history, invalid
//! requests, the root) sent in lockstep to the reference etcd and to ringd; every normalized
//! answer must be identical (the normalization of tests/diff.rs, `support::diff`).
//!
//! Environment (plus `DIFF_TARGET`, `DIFF_RINGD_ARGS`, `RINGD_DIFF_SKIP` as in tests/diff.rs;
//! `DIFF_TARGET=etcd` is the self-check: etcd against etcd must show no divergence):
//! - `DIFF_RANDOM_SEEDS=7,8`: run exactly these seeds (to replay a divergence);
//! - `DIFF_RANDOM_COUNT=N`: how many fresh seeds a run adds to the kept ones (default
//!   `FRESH_SEEDS`);
//! - `DIFF_RANDOM_REQUESTS=N`: requests per seed (default `REQUESTS_PER_SEED`);
//! - `DIFF_RANDOM_SHOW=1`: print every request with the reference's answer.
//!
//! A run takes every seed of `tests/data/diff_random_seeds.txt` (each seed that ever found a
//! divergence) and `FRESH_SEEDS` new ones drawn from the clock, printed first. A divergence
//! prints the seed, the requests before it and both answers; replay it with
//! `DIFF_RANDOM_SEEDS=<seed> cargo test --test diff_random`.
//!
//! Determinism. The sequence of a seed depends only on the seed and on the reference's
//! answers, which are deterministic: requests name indexes relative to the seed's base
//! (`{i+N}`, `{k+N}`), TTLs are long (they never run out during a run) except for rare 0-1 s
//! ones, after which the next request waits for the key's expire event on both servers, so
//! nothing happens at a time the sequence does not control. History watches only ask for
//! indexes that hold a matching event, so they answer at once. Each seed runs on the same two
//! servers, starting from an empty tree (every seed's keys live under `/r` or in-order at the
//! root, and are deleted after it).

mod support;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use support::diff::*;
use support::{Kind, Response, Server};

const SEEDS_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/diff_random_seeds.txt"
);
/// Fresh seeds per run, besides the kept ones: 35-50 s in all on a 2-core machine (0.7-0.9 s
/// a seed against ringd, depending on the machine's load; 0.9 s against a second etcd).
const FRESH_SEEDS: usize = 50;
/// Requests per seed.
const REQUESTS_PER_SEED: usize = 300;
/// How many requests before a divergence its report shows.
const TRANSCRIPT_TAIL: usize = 20;
/// Writes before the seeds: they move both servers' indexes past 1000 + 50, so that a seed can
/// ask for a `waitIndex` older than the 1000-event history (401) on either server.
const WARM_UP_WRITES: usize = 1100;
/// Timeout of every socket operation (a sync watch waits for an expiry: up to ~1.5 s on etcd).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Seeds and randomness
// ---------------------------------------------------------------------------------------------

/// xorshift64*: the only source of randomness of a seed's sequence.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Spread small seeds over the state space; never zero.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}")),
        Err(_) => default,
    }
}

fn parse_seeds(text: &str) -> Vec<u64> {
    text.split([',', '\n'])
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("bad seed {s:?} (seeds are u64 numbers)"))
        })
        .collect()
}

/// The seeds of this run: `DIFF_RANDOM_SEEDS`, else the kept ones plus fresh ones.
fn seeds() -> Vec<u64> {
    if let Ok(list) = std::env::var("DIFF_RANDOM_SEEDS") {
        return parse_seeds(&list);
    }
    let mut seeds = parse_seeds(&std::fs::read_to_string(SEEDS_FILE).unwrap_or_default());
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut rng = Rng::new(clock ^ u64::from(std::process::id()));
    for _ in 0..env_usize("DIFF_RANDOM_COUNT", FRESH_SEEDS) {
        // Short seeds are easier to type when replaying.
        seeds.push(rng.next() % 1_000_000_000);
    }
    seeds
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// One request of a sequence; `path` and `body` are templates (`{i+N}`, `{k+N}`) expanded
/// against each server's base.
#[derive(Clone, Debug)]
struct Req {
    method: &'static str,
    path: String,
    /// A form body (sent as application/x-www-form-urlencoded).
    body: Option<String>,
    /// The wait for the expire event after a short TTL (`short_ttl`). Its `X-Etcd-Index` is
    /// not compared: it is the index when the watch started, before or after the expiry
    /// depending on each server's timing.
    sync: bool,
}

impl Req {
    fn new(method: &'static str, path: String) -> Req {
        Req {
            method,
            path,
            body: None,
            sync: false,
        }
    }

    fn with_body(mut self, body: String) -> Req {
        self.body = Some(body);
        self
    }

    fn is_write(&self) -> bool {
        matches!(self.method, "PUT" | "POST" | "DELETE")
    }

    /// A write with a TTL short enough to run out now (0 or 1 s): the next request waits for
    /// the expire event.
    fn short_ttl(&self) -> bool {
        let query = self.path.split_once('?').map_or("", |(_, q)| q);
        let params = query
            .split('&')
            .chain(self.body.iter().flat_map(|b| b.split('&')));
        self.is_write() && params.into_iter().any(|kv| kv == "ttl=0" || kv == "ttl=1")
    }

    /// A TTL refresh: its event is skipped by the history and by watchers.
    fn refresh(&self) -> bool {
        self.is_write() && self.query_flag("refresh")
    }

    fn query_flag(&self, name: &str) -> bool {
        self.path
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|kv| kv == format!("{name}=true")))
    }

    /// The prevIndex sent to a server (the template expanded), if any.
    fn prev_index(&self, ctx: &Ctx) -> Option<String> {
        let (_, query) = self.path.split_once('?')?;
        let v = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("prevIndex="))?;
        Some(expand(v, ctx, 0)).filter(|v| !v.is_empty() && v != "0")
    }

    fn line(&self) -> String {
        match &self.body {
            Some(b) => format!("{} {} {b}", self.method, self.path),
            None => format!("{} {}", self.method, self.path),
        }
    }
}

/// Key names: few, so that requests collide (replace, conflict, nest, hide).
const NAMES: &[&str] = &["a", "b", "c", "_h"];
const VALUES: &[&str] = &["1", "2", "v", "x"];
/// TTLs that cannot run out during a run.
const LONG_TTLS: &[u64] = &[300, 1000, 5000];

/// What the sequence knows, all learnt from the reference's answers (indexes relative to the
/// seed's base).
struct Gen {
    rng: Rng,
    /// The current index.
    current: u64,
    /// The newest index whose event the history returns (not a refresh).
    last_event: u64,
    /// Recent (index, key template) of write events, for prevIndex and waitIndex.
    events: VecDeque<(u64, String)>,
    /// Key templates of in-order nodes created by POST.
    in_order: Vec<String>,
    /// The last value seen for a key, so that some prevValue conditions hold.
    seen: BTreeMap<String, String>,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen {
            rng: Rng::new(seed),
            current: 0,
            last_event: 0,
            events: VecDeque::new(),
            in_order: Vec::new(),
            seen: BTreeMap::new(),
        }
    }

    fn key(&mut self) -> String {
        if !self.in_order.is_empty() && self.rng.chance(80) {
            let k = self.rng.pick(&self.in_order).clone();
            return match self.rng.chance(300) {
                true => format!("{k}/{}", self.rng.pick(NAMES)),
                false => k,
            };
        }
        let depth = match self.rng.below(100) {
            0..=44 => 1,
            45..=84 => 2,
            _ => 3,
        };
        let mut k = "/r".to_string();
        for _ in 0..depth {
            k.push('/');
            k.push_str(self.rng.pick::<&str>(NAMES));
        }
        k
    }

    /// A dir to list or watch: `/r` or a key of depth 1 or 2.
    fn dir(&mut self) -> String {
        match self.rng.below(4) {
            0 => "/r".to_string(),
            _ => {
                let k = self.key();
                match k.matches('/').count() {
                    4 => k[..k.rfind('/').unwrap_or(k.len())].to_string(),
                    _ => k,
                }
            }
        }
    }

    fn value(&mut self) -> &'static str {
        self.rng.pick::<&str>(VALUES)
    }

    /// A prevValue for `key`: often the value it was last seen with.
    fn prev_value(&mut self, key: &str) -> String {
        match self.seen.get(key) {
            Some(v) if !v.is_empty() && self.rng.chance(600) => v.clone(),
            _ => self.value().to_string(),
        }
    }

    /// A relative index template near the present: often one of a recent event on `key`.
    fn index_for(&mut self, key: &str) -> String {
        let on_key: Vec<u64> = self
            .events
            .iter()
            .filter(|(_, k)| k == key)
            .map(|(i, _)| *i)
            .collect();
        let i = match on_key.last() {
            Some(&i) if self.rng.chance(600) => i,
            _ => 1 + self.rng.below(self.current + 3),
        };
        format!("{{i+{i}}}")
    }

    /// `&ttl=...` for a write body: mostly none, sometimes long, rarely empty or short (0 or
    /// 1 s: it runs out at once, see `Req::short_ttl`).
    fn ttl(&mut self) -> String {
        match self.rng.below(1000) {
            0..=119 => format!("&ttl={}", self.rng.pick(LONG_TTLS)),
            120..=134 => "&ttl=".to_string(),
            135..=140 => format!("&ttl={}", self.rng.below(2)),
            _ => String::new(),
        }
    }

    fn next(&mut self) -> Req {
        let roll = self.rng.below(1000);
        let mut req = match roll {
            0..=539 => self.write(),
            540..=729 => self.read(),
            730..=849 => self.history(),
            850..=969 => self.invalid(),
            _ => self.root(),
        };
        // noValueOnSuccess on some writes (not on short TTLs: their key comes from the answer).
        if req.is_write() && !req.short_ttl() && self.rng.chance(50) {
            let sep = if req.path.contains('?') { '&' } else { '?' };
            req.path.push(sep);
            req.path.push_str("noValueOnSuccess=true");
        }
        req
    }

    fn write(&mut self) -> Req {
        let key = self.key();
        let value = self.value();
        match self.rng.below(1000) {
            0..=299 => {
                let ttl = self.ttl();
                Req::new("PUT", format!("/v2/keys{key}")).with_body(format!("value={value}{ttl}"))
            }
            300..=359 => {
                let ttl = self.ttl();
                Req::new("PUT", format!("/v2/keys{key}?dir=true")).with_body(format!("x=1{ttl}"))
            }
            360..=419 => Req::new("PUT", format!("/v2/keys{key}?prevExist=false"))
                .with_body(format!("value={value}")),
            420..=489 => {
                let ttl = self.ttl();
                let body = match self.rng.below(4) {
                    0 => ttl.trim_start_matches('&').to_string(),
                    _ => format!("value={value}{ttl}"),
                };
                Req::new("PUT", format!("/v2/keys{key}?prevExist=true")).with_body(body)
            }
            490..=589 => {
                let cond = self.condition(&key);
                let ttl = self.ttl();
                Req::new("PUT", format!("/v2/keys{key}?{cond}"))
                    .with_body(format!("value={value}{ttl}"))
            }
            590..=619 => {
                let ttl = match self.rng.chance(100) {
                    true => self.rng.below(2),
                    false => *self.rng.pick(LONG_TTLS),
                };
                let how = *self.rng.pick(&[
                    "&prevExist=true",
                    "",
                    "&prevValue=1",
                    "&prevExist=true&dir=true",
                ]);
                Req::new("PUT", format!("/v2/keys{key}?refresh=true&ttl={ttl}{how}"))
            }
            620..=719 => {
                let parent = match self.rng.below(4) {
                    0 => self.key(),
                    _ => "/r/q".to_string(),
                };
                let ttl = self.ttl();
                match self.rng.below(4) {
                    0 => Req::new("POST", format!("/v2/keys{parent}?dir=true"))
                        .with_body(format!("x=1{ttl}")),
                    _ => Req::new("POST", format!("/v2/keys{parent}"))
                        .with_body(format!("value={value}{ttl}")),
                }
            }
            720..=899 => {
                let how = *self.rng.pick(&["", "", "?dir=true", "?recursive=true"]);
                Req::new("DELETE", format!("/v2/keys{key}{how}"))
            }
            _ => {
                let cond = self.condition(&key);
                Req::new("DELETE", format!("/v2/keys{key}?{cond}"))
            }
        }
    }

    /// prevValue, prevIndex or both, for CAS and CAD.
    fn condition(&mut self, key: &str) -> String {
        match self.rng.below(3) {
            0 => format!("prevValue={}", self.prev_value(key)),
            1 => format!("prevIndex={}", self.index_for(key)),
            _ => format!(
                "prevValue={}&prevIndex={}",
                self.prev_value(key),
                self.index_for(key)
            ),
        }
    }

    fn read(&mut self) -> Req {
        let opts = ["", "?quorum=true", "?sorted=true", "?recursive=true"];
        match self.rng.below(10) {
            0..=3 => {
                let key = self.key();
                let opt = *self.rng.pick(&opts[..2]);
                Req::new("GET", format!("/v2/keys{key}{opt}"))
            }
            4..=7 => {
                let dir = self.dir();
                let opt = *self.rng.pick(&[
                    "?recursive=true",
                    "?recursive=true&sorted=true",
                    "?sorted=true",
                    "",
                    "?recursive=true&quorum=true",
                ]);
                Req::new("GET", format!("/v2/keys{dir}{opt}"))
            }
            8 => Req::new("HEAD", format!("/v2/keys{}", self.key())),
            _ => Req::new("GET", "/v2/keys/?recursive=true&sorted=true".to_string()),
        }
    }

    /// A watch the history answers at once.
    fn history(&mut self) -> Req {
        if self.last_event == 0 {
            return self.read();
        }
        let roll = self.rng.below(100);
        if roll < 10 {
            // Older than the 1000-event history: 401 (both servers are past index 1000).
            let back = 1000 + 1 + self.rng.below(50);
            let i = self.current as i64 - back as i64;
            let t = match i {
                i if i >= 0 => format!("{{i+{i}}}"),
                i => format!("{{i-{}}}", -i),
            };
            let dir = self.dir();
            return Req::new("GET", format!("/v2/keys{dir}?wait=true&waitIndex={t}"));
        }
        if roll < 40 || self.events.is_empty() {
            // Any event since a point: the root, recursively (hidden keys included).
            let from = self.last_event.saturating_sub(self.rng.below(200)).max(1);
            return Req::new(
                "GET",
                format!("/v2/keys/?wait=true&recursive=true&waitIndex={{i+{from}}}"),
            );
        }
        let (index, key) = self.rng.pick(self.events.make_contiguous()).clone();
        let target = match self.rng.below(3) {
            // An ancestor, recursively.
            0 => {
                let cut = key.rfind('/').unwrap_or(0);
                let parent = &key[..cut];
                format!(
                    "{}?wait=true&recursive=true&",
                    if parent.is_empty() { "/" } else { parent }
                )
            }
            _ => format!("{key}?wait=true&"),
        };
        Req::new("GET", format!("/v2/keys{target}waitIndex={{i+{index}}}"))
    }

    fn invalid(&mut self) -> Req {
        let key = self.key();
        let (method, query, body): (&'static str, &str, Option<&str>) = *self.rng.pick(&[
            ("PUT", "", Some("value=1&ttl=abc")),
            ("PUT", "", Some("value=1&ttl=-1")),
            ("PUT", "", Some("value=1&ttl=1.5")),
            ("POST", "", Some("value=1&ttl=x")),
            ("PUT", "?prevIndex=abc", Some("value=1")),
            ("PUT", "?prevIndex=-1", Some("value=1")),
            ("DELETE", "?prevIndex=x", None),
            ("PUT", "?prevExist=maybe", Some("value=1")),
            ("PUT", "?prevExist=", Some("value=1")),
            ("PUT", "?dir=yes", None),
            ("PUT", "?prevValue=", Some("value=1")),
            ("DELETE", "?prevValue=", None),
            ("DELETE", "?recursive=maybe", None),
            ("GET", "?recursive=nope", None),
            ("GET", "?sorted=2", None),
            ("GET", "?quorum=x", None),
            ("GET", "?wait=x", None),
            ("GET", "?wait=true&waitIndex=abc", None),
            ("PUT", "?wait=true", Some("value=1")),
            ("PUT", "?refresh=true&prevExist=true", None),
            ("PUT", "?refresh=true&ttl=5", Some("value=x")),
            ("PUT", "?refresh=maybe&ttl=5", None),
            ("PUT", "?noValueOnSuccess=x", Some("value=1")),
            ("PUT", "?stream=x&wait=true", Some("value=1")),
            ("PUT", "", Some("value=%zz")),
            ("GET", "?recursive=%zz", None),
            ("PATCH", "", None),
            ("GET", "//x/../y", None),
        ]);
        let mut req = Req::new(method, format!("/v2/keys{key}{query}"));
        req.body = body.map(String::from);
        req
    }

    fn root(&mut self) -> Req {
        let (method, query, body): (&'static str, &str, Option<&str>) = *self.rng.pick(&[
            ("DELETE", "?prevValue=x", None),
            ("DELETE", "?prevIndex={i+1}", None),
            ("DELETE", "?recursive=true", None),
            ("DELETE", "", None),
            ("PUT", "?prevValue=x", Some("value=1")),
            ("PUT", "?prevExist=true", Some("value=1")),
            ("PUT", "?prevExist=false&dir=true", None),
            ("PUT", "?refresh=true&ttl=5", None),
            ("PUT", "", Some("value=1")),
            ("POST", "", Some("value=1")),
            ("GET", "?sorted=true", None),
        ]);
        let mut req = Req::new(method, format!("/v2/keys/{query}"));
        req.body = body.map(String::from);
        req
    }

    /// Learns from the reference's answer to `req`.
    fn learn(&mut self, req: &Req, r: &Response, base: u64) {
        let rel = |v: u64| v.saturating_sub(base);
        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let node = &json["node"];
        let node_index = node["modifiedIndex"].as_u64().map(rel);
        if let Some(x) = r.header("x-etcd-index").and_then(|v| v.parse().ok()) {
            self.current = self.current.max(rel(x));
        }
        self.current = self.current.max(node_index.unwrap_or(0));
        if !(200..300).contains(&r.status) {
            return;
        }
        let key = node["key"].as_str().map(|k| in_order_template(k, base));
        if let (Some(k), Some(v)) = (&key, node["value"].as_str()) {
            self.seen.insert(k.clone(), v.to_string());
        }
        let wait = req.path.contains("wait=true");
        if wait {
            // A history hit or a sync watch's expire event: an event the history returns.
            self.last_event = self.last_event.max(node_index.unwrap_or(0));
        }
        if !req.is_write() || req.refresh() {
            return;
        }
        self.last_event = self.current;
        let (Some(i), Some(key)) = (node_index, key) else {
            return; // noValueOnSuccess
        };
        if req.method == "POST" && !self.in_order.contains(&key) {
            self.in_order.push(key.clone());
        }
        self.events.push_back((i, key));
        if self.events.len() > 200 {
            self.events.pop_front();
        }
    }

    /// After a write whose TTL runs out now: a watch for the key's expire event.
    fn sync_watch(&self, answer: &Response, base: u64) -> Option<Req> {
        let v: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
        let key = in_order_template(v["node"]["key"].as_str()?, base);
        let index = v["node"]["modifiedIndex"].as_u64()?.saturating_sub(base);
        let mut req = Req::new(
            "GET",
            format!("/v2/keys{key}?wait=true&waitIndex={{i+{}}}", index + 1),
        );
        req.sync = true;
        Some(req)
    }
}

/// A key with its in-order (20-digit) names as `{k+N}` templates relative to `base`.
fn in_order_template(key: &str, base: u64) -> String {
    key.split('/')
        .map(|c| match c.parse::<u64>() {
            Ok(abs) if c.len() == 20 => format!("{{k+{}}}", abs.saturating_sub(base)),
            _ => c.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

/// One server under comparison.
struct Side {
    kind: Kind,
    extra: Vec<String>,
    server: Server,
    subs: Subs,
    /// `X-Etcd-Index` when the current seed started.
    base: u64,
}

impl Side {
    fn start(kind: Kind, extra: &[String]) -> Side {
        let args: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (server, subs) = start_server(kind, &args);
        let mut side = Side {
            kind,
            extra: extra.to_vec(),
            server,
            subs,
            base: 0,
        };
        side.warm_up();
        side
    }

    /// Moves the index past `WARM_UP_WRITES`, with a few concurrent writers.
    fn warm_up(&mut self) {
        let addr = self.server.addr();
        let writers = 8;
        std::thread::scope(|s| {
            for w in 0..writers {
                let addr = &addr;
                s.spawn(move || {
                    for n in 0..WARM_UP_WRITES / writers + 1 {
                        let path = format!("/v2/keys/warm-up/{w}/{}", n % 10);
                        let r = support::request_timeout(
                            addr,
                            "PUT",
                            &path,
                            &[support::FORM],
                            b"value=1",
                            REQUEST_TIMEOUT,
                        );
                        assert!(r.is_ok_and(|r| r.status < 300), "warm-up write failed");
                    }
                });
            }
        });
        cleanup(&addr);
    }

    /// Restarts a server that died (the divergence is reported by the seed it happened in).
    fn ensure_running(&mut self) {
        if !self.server.is_running() {
            eprintln!(
                "{} died; log tail:\n{}\nrestarting it",
                self.kind.name(),
                self.server.log_tail()
            );
            *self = Side::start(self.kind, &self.extra);
        }
    }

    fn begin_seed(&mut self) {
        self.ensure_running();
        let addr = self.server.addr();
        self.base = support::request_timeout(&addr, "GET", "/v2/keys/", &[], b"", REQUEST_TIMEOUT)
            .ok()
            .and_then(|r| r.header("x-etcd-index").and_then(|v| v.parse().ok()))
            .unwrap_or(0);
    }

    /// Sends `req` and renders the normalized answer; the raw response too.
    fn send(&self, req: &Req) -> (String, Option<Response>) {
        let ctx = Ctx {
            addr: self.server.addr(),
            subs: &self.subs,
            base: self.base,
        };
        let path = expand(&req.path, &ctx, 0);
        let body = req.body.as_ref().map(|b| expand(b, &ctx, 0));
        let headers: &[(&str, &str)] = match body {
            Some(_) => &[support::FORM],
            None => &[],
        };
        let result = support::request_timeout(
            &ctx.addr,
            req.method,
            &path,
            headers,
            body.as_deref().unwrap_or("").as_bytes(),
            REQUEST_TIMEOUT,
        );
        let mut out = String::new();
        match result {
            Ok(r) => {
                let opts = Opts::default();
                let nctx = NormCtx {
                    subs: &self.subs,
                    base: self.base,
                    sorted: req.query_flag("sorted"),
                    prev_index: req.prev_index(&ctx),
                    opts: &opts,
                };
                render_head(&mut out, &r, &nctx);
                if req.sync {
                    out = out
                        .lines()
                        .filter(|l| !l.starts_with("x-etcd-index:"))
                        .map(|l| format!("{l}\n"))
                        .collect();
                }
                render_body(&mut out, &r.body, &nctx);
                (out, Some(r))
            }
            Err(e) => {
                let _ = writeln!(out, "error: {e}");
                (out, None)
            }
        }
    }
}

/// The divergence of a seed, if any, as a report.
fn run_seed(seed: u64, requests: usize, reference: &mut Side, target: &mut Side) -> Option<String> {
    reference.begin_seed();
    target.begin_seed();
    let show = env_flag("DIFF_RANDOM_SHOW");
    let mut gen = Gen::new(seed);
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut sync: Option<Req> = None;
    let mut divergence = None;
    for step in 0..requests {
        let req = sync.take().unwrap_or_else(|| gen.next());
        let ((ra, rr), (ta, _)) = std::thread::scope(|s| {
            let t = s.spawn(|| target.send(&req));
            let r = reference.send(&req);
            (r, t.join().expect("target request panicked"))
        });
        let entry = format!("[{step}] {}\n{}", req.line(), indent(&ra));
        if show {
            eprintln!("seed {seed} {entry}");
        }
        if !answers_match(&ra, &ta) {
            let mut report = format!(
                "=== seed {seed} DIVERGES at request {step} (of {requests}); replay with \
                 DIFF_RANDOM_SEEDS={seed}\n--- the {} requests before it, with etcd's answers:\n",
                tail.len()
            );
            for t in &tail {
                report.push_str(t);
            }
            let _ = writeln!(
                report,
                "--- request {step}: {}\n    as sent to etcd: {}\netcd answer:\n{}{} answer:\n{}\
                 diff (- etcd, + {}):\n{}",
                req.line(),
                expand(
                    &req.line(),
                    &Ctx {
                        addr: String::new(),
                        subs: &reference.subs,
                        base: reference.base
                    },
                    0
                ),
                indent(&ra),
                target.kind.name(),
                indent(&ta),
                target.kind.name(),
                indent(&support::line_diff(&ra, &ta))
            );
            divergence = Some(report);
            break;
        }
        let Some(r) = rr else { continue };
        gen.learn(&req, &r, reference.base);
        if req.short_ttl() && (200..300).contains(&r.status) {
            sync = gen.sync_watch(&r, reference.base);
        }
        tail.push_back(entry);
        if tail.len() > TRANSCRIPT_TAIL {
            tail.pop_front();
        }
    }
    cleanup(&reference.server.addr());
    cleanup(&target.server.addr());
    divergence
}

#[test]
fn random_sequences_answer_as_etcd_does() {
    if !reference_available() {
        return;
    }
    let seeds = seeds();
    let requests = env_usize("DIFF_RANDOM_REQUESTS", REQUESTS_PER_SEED);
    let target = Target::from_env();
    eprintln!(
        "seeds ({} x {requests} requests, etcd vs {}): {seeds:?}",
        seeds.len(),
        target.name
    );
    let started = Instant::now();
    let (mut reference, mut other) = std::thread::scope(|s| {
        let t = s.spawn(|| Side::start(target.kind, &target.extra));
        let r = Side::start(Kind::Etcd, &[]);
        (r, t.join().expect("target start panicked"))
    });
    let warmed = started.elapsed();
    let mut reports = Vec::new();
    for &seed in &seeds {
        if let Some(report) = run_seed(seed, requests, &mut reference, &mut other) {
            eprintln!("{report}");
            reports.push(seed);
        }
    }
    eprintln!(
        "{} seeds x {requests} requests: {} diverge [etcd vs {}, {:.1}s, of which start and \
         warm-up {:.1}s]",
        seeds.len(),
        reports.len(),
        target.name,
        started.elapsed().as_secs_f64(),
        warmed.as_secs_f64()
    );
    assert!(
        reports.is_empty(),
        "seeds {reports:?} diverge between etcd and {} (reports above); keep each in {SEEDS_FILE} \
         once fixed",
        target.name
    );
}

#[test]
fn generator_helpers() {
    assert_eq!(parse_seeds("1, 2\n# c\n3 # why\n"), vec![1, 2, 3]);
    assert_eq!(
        in_order_template("/r/q/00000000000000000012/a", 10),
        "/r/q/{k+2}/a"
    );
    let req = Req::new("PUT", "/v2/keys/r/a?prevIndex={i+3}&sorted=true".into());
    assert!(req.query_flag("sorted") && req.is_write());
    let subs = Subs::default();
    let ctx = Ctx {
        addr: String::new(),
        subs: &subs,
        base: 10,
    };
    assert_eq!(req.prev_index(&ctx).as_deref(), Some("13"));
    // A seed's sequence is a function of the seed (and of the answers it learns from).
    let lines = |seed| {
        let mut g = Gen::new(seed);
        (0..50).map(|_| g.next().line()).collect::<Vec<_>>()
    };
    assert_eq!(lines(7), lines(7));
    assert_ne!(lines(7), lines(8));
}
