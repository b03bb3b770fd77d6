//! Request-response workloads: what each connection sends next and how each
//! answer is checked. Every connection owns one `ConnWorkload`.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::Workload;
use crate::etcd::{key_index, parse_reply, value_ok};
use crate::http::{encode_path, write_form, write_get, ReqHeaders, Response};
use crate::stats::{ErrKind, Stats};

/// Small fast PRNG (xorshift64*), seeded per connection.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 to spread small seeds
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `n` split over `parts`: the share of part `i`.
pub fn share(n: u64, parts: usize, i: usize) -> u64 {
    let p = parts as u128;
    let n = u128::from(n);
    ((n * (i as u128 + 1) / p) - (n * i as u128 / p)) as u64
}

/// Start of part `i` when `n` is split over `parts`.
pub fn share_start(n: u64, parts: usize, i: usize) -> u64 {
    (u128::from(n) * i as u128 / parts as u128) as u64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    GetFixed,
    Get,
    Put,
    Mixed,
    Cas,
    Inorder,
    Ttl,
    Preload,
}

/// Immutable description of a run, shared by all connections.
#[derive(Debug)]
pub struct Plan {
    kind: Kind,
    /// The constant headers of every request (Host, Authorization, Connection).
    head: ReqHeaders,
    keys: u64,
    value_size: usize,
    filler: Vec<u8>,
    conns: usize,
    /// Encoded path prefix of generated keys, e.g. b"/v2/keys/loadgen/k".
    key_path: Vec<u8>,
    /// The same as a key, e.g. "/loadgen/k".
    key_base: String,
    query: &'static [u8],
    fixed_req: Vec<u8>,
    fixed_key: String,
    read_ratio: f64,
    hot_keys: u64,
    queue_path: Vec<u8>,
    queue_key: String,
    ttl: u64,
    ttl_query: Vec<u8>,
    refresh_query: Vec<u8>,
}

impl Plan {
    pub fn new(
        w: &Workload,
        head: &ReqHeaders,
        prefix: &str,
        keys: u64,
        value_size: usize,
        conns: usize,
    ) -> Plan {
        let mut p = Plan {
            kind: Kind::Get,
            head: head.clone(),
            keys,
            value_size,
            filler: vec![b'x'; value_size],
            conns,
            key_path: format!("/v2/keys{}/k", encode_path(prefix)).into_bytes(),
            key_base: format!("{prefix}/k"),
            query: b"",
            fixed_req: Vec::new(),
            fixed_key: String::new(),
            read_ratio: 0.0,
            hot_keys: 0,
            queue_path: Vec::new(),
            queue_key: String::new(),
            ttl: 0,
            ttl_query: Vec::new(),
            refresh_query: Vec::new(),
        };
        match w {
            Workload::Get { key, quorum } => {
                if *quorum {
                    p.query = b"?quorum=true";
                }
                if let Some(k) = key {
                    p.kind = Kind::GetFixed;
                    let path = format!("/v2/keys{}", encode_path(k));
                    write_get(&mut p.fixed_req, head, &[path.as_bytes(), p.query]);
                    p.fixed_key = k.clone();
                }
            }
            Workload::Put => p.kind = Kind::Put,
            Workload::Mixed { read_ratio } => {
                p.kind = Kind::Mixed;
                p.read_ratio = *read_ratio;
            }
            Workload::Cas { hot_keys } => {
                p.kind = Kind::Cas;
                p.hot_keys = *hot_keys;
                p.key_path = format!("/v2/keys{}/cas", encode_path(prefix)).into_bytes();
                p.key_base = format!("{prefix}/cas");
            }
            Workload::Inorder { queue } => {
                p.kind = Kind::Inorder;
                p.queue_path = format!("/v2/keys{}", encode_path(queue)).into_bytes();
                p.queue_key = format!("{queue}/");
            }
            Workload::Ttl { ttl } => {
                p.kind = Kind::Ttl;
                p.ttl = *ttl;
                p.key_path = format!("/v2/keys{}/ttl/k", encode_path(prefix)).into_bytes();
                p.key_base = format!("{prefix}/ttl/k");
                p.ttl_query = format!("?ttl={ttl}").into_bytes();
                p.refresh_query = format!("?ttl={ttl}&refresh=true&prevExist=true").into_bytes();
            }
            Workload::Preload => p.kind = Kind::Preload,
            Workload::Watch { .. } => {}
        }
        p
    }

    /// A plan that fills the key space the workload reads, if it needs one.
    pub fn preload_for(
        w: &Workload,
        head: &ReqHeaders,
        prefix: &str,
        keys: u64,
        value_size: usize,
        conns: usize,
    ) -> Option<(Plan, u64)> {
        match w {
            Workload::Get { key: None, .. } | Workload::Mixed { .. } => Some((
                Plan::new(&Workload::Preload, head, prefix, keys, value_size, conns),
                keys,
            )),
            Workload::Cas { hot_keys } => {
                let mut p = Plan::new(
                    &Workload::Preload,
                    head,
                    prefix,
                    *hot_keys,
                    value_size,
                    conns,
                );
                p.key_path = format!("/v2/keys{}/cas", encode_path(prefix)).into_bytes();
                p.key_base = format!("{prefix}/cas");
                Some((p, *hot_keys))
            }
            _ => None,
        }
    }

    /// For preload: the number of requests connection `conn` sends.
    pub fn fixed_quota(&self, conn: usize) -> Option<u64> {
        (self.kind == Kind::Preload).then(|| share(self.keys, self.conns, conn))
    }
}

/// What a request in flight was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    GetFixed,
    Get(u64),
    Put(u64),
    CasRead(u64),
    CasWrite(u64),
    Post,
    TtlSet(u64),
    TtlRefresh(u64),
}

pub struct ConnWorkload {
    plan: Arc<Plan>,
    rng: Rng,
    cas_pending: VecDeque<(u64, u64)>,
    ttl_first: u64,
    ttl_touched: Vec<Option<Instant>>,
    preload_next: u64,
}

impl ConnWorkload {
    pub fn new(plan: Arc<Plan>, conn: usize, seed: u64) -> ConnWorkload {
        let (ttl_first, ttl_n) = if plan.kind == Kind::Ttl {
            // each connection owns a disjoint slice of the key space
            let n = share(plan.keys, plan.conns, conn).max(1);
            (share_start(plan.keys, plan.conns, conn), n)
        } else {
            (0, 0)
        };
        let preload_next = share_start(plan.keys, plan.conns, conn);
        ConnWorkload {
            rng: Rng::new(seed ^ (conn as u64).wrapping_mul(0x1000_0000_01b3)),
            plan,
            cas_pending: VecDeque::new(),
            ttl_first,
            ttl_touched: vec![None; ttl_n as usize],
            preload_next,
        }
    }

    fn put(&self, buf: &mut Vec<u8>, idx: u64, query: &[u8]) {
        let p = &*self.plan;
        let mut path = [0u8; 20];
        let digits = itoa(&mut path, idx);
        let mut body = [0u8; 16];
        let n = p.value_size.min(9);
        body[..6].copy_from_slice(b"value=");
        body[6..6 + n].copy_from_slice(&crate::etcd::value_tag(idx)[..n]);
        write_form(
            buf,
            "PUT",
            &p.head,
            &[&p.key_path, digits, query],
            &[&body[..6 + n], &p.filler[..p.value_size - n]],
        );
    }

    fn get(&self, buf: &mut Vec<u8>, idx: u64) {
        let p = &*self.plan;
        let mut path = [0u8; 20];
        let digits = itoa(&mut path, idx);
        write_get(buf, &p.head, &[&p.key_path, digits, p.query]);
    }

    /// Appends the next request to `buf`.
    pub fn next(&mut self, buf: &mut Vec<u8>, now: Instant) -> Op {
        let keys = self.plan.keys;
        match self.plan.kind {
            Kind::GetFixed => {
                buf.extend_from_slice(&self.plan.fixed_req);
                Op::GetFixed
            }
            Kind::Get => {
                let k = self.rng.below(keys);
                self.get(buf, k);
                Op::Get(k)
            }
            Kind::Put => {
                let k = self.rng.below(keys);
                self.put(buf, k, b"");
                Op::Put(k)
            }
            Kind::Mixed => {
                let k = self.rng.below(keys);
                if self.rng.unit() < self.plan.read_ratio {
                    self.get(buf, k);
                    Op::Get(k)
                } else {
                    self.put(buf, k, b"");
                    Op::Put(k)
                }
            }
            Kind::Preload => {
                let k = self.preload_next;
                self.preload_next += 1;
                self.put(buf, k, b"");
                Op::Put(k)
            }
            Kind::Cas => {
                if let Some((k, index)) = self.cas_pending.pop_front() {
                    let mut q = Vec::with_capacity(32);
                    let _ = write!(q, "?prevIndex={index}");
                    self.put(buf, k, &q);
                    Op::CasWrite(k)
                } else {
                    let k = self.rng.below(self.plan.hot_keys);
                    self.get(buf, k);
                    Op::CasRead(k)
                }
            }
            Kind::Inorder => {
                let p = &*self.plan;
                let n = p.value_size.min(9);
                let mut body = [0u8; 16];
                body[..6].copy_from_slice(b"value=");
                body[6..6 + n].copy_from_slice(&crate::etcd::value_tag(0)[..n]);
                write_form(
                    buf,
                    "POST",
                    &p.head,
                    &[&p.queue_path],
                    &[&body[..6 + n], &p.filler[..p.value_size - n]],
                );
                Op::Post
            }
            Kind::Ttl => {
                let i = self.rng.below(self.ttl_touched.len() as u64);
                let k = self.ttl_first + i;
                let fresh =
                    Duration::from_secs(self.plan.ttl).saturating_sub(Duration::from_millis(900));
                let slot = &mut self.ttl_touched[i as usize];
                match *slot {
                    Some(t) if now.saturating_duration_since(t) < fresh => {
                        let mut path = [0u8; 20];
                        let digits = itoa(&mut path, k);
                        let p = &*self.plan;
                        write_form(
                            buf,
                            "PUT",
                            &p.head,
                            &[&p.key_path, digits, &p.refresh_query],
                            &[],
                        );
                        Op::TtlRefresh(i)
                    }
                    _ => {
                        *slot = Some(now);
                        let q = self.plan.ttl_query.clone();
                        self.put(buf, k, &q);
                        Op::TtlSet(i)
                    }
                }
            }
        }
    }

    /// Checks one answer; expected non-error outcomes go to `stats.outcomes`.
    pub fn check(
        &mut self,
        op: Op,
        resp: &Response<'_>,
        now: Instant,
        stats: &mut Stats,
    ) -> Result<(), ErrKind> {
        let p = &*self.plan;
        let status = resp.status;
        let reply = parse_reply(&resp.body);
        let key_is = |key: &str, idx: u64| key_index(key, &p.key_base) == Some(idx);
        match op {
            Op::GetFixed => {
                if status != 200 {
                    return Err(ErrKind::Status(status));
                }
                let r = reply.ok_or(ErrKind::Json)?;
                if r.action() != "get" {
                    return Err(ErrKind::Action);
                }
                if r.key() != p.fixed_key {
                    return Err(ErrKind::Key);
                }
                let is_dir = r.node.as_ref().and_then(|n| n.dir).unwrap_or(false);
                if r.value().is_none() && !is_dir {
                    return Err(ErrKind::Field);
                }
            }
            Op::Get(k) | Op::CasRead(k) => {
                if status != 200 {
                    return Err(ErrKind::Status(status));
                }
                let r = reply.ok_or(ErrKind::Json)?;
                if r.action() != "get" {
                    return Err(ErrKind::Action);
                }
                if !key_is(r.key(), k) {
                    return Err(ErrKind::Key);
                }
                if !r.value().is_some_and(|v| value_ok(v, k, p.value_size)) {
                    return Err(ErrKind::Value);
                }
                if op == Op::CasRead(k) {
                    let idx = r.modified_index().ok_or(ErrKind::Field)?;
                    self.cas_pending.push_back((k, idx));
                }
            }
            Op::Put(k) => {
                if status != 200 && status != 201 {
                    return Err(ErrKind::Status(status));
                }
                let r = reply.ok_or(ErrKind::Json)?;
                if r.action() != "set" {
                    return Err(ErrKind::Action);
                }
                if !key_is(r.key(), k) {
                    return Err(ErrKind::Key);
                }
                if !r.value().is_some_and(|v| value_ok(v, k, p.value_size)) {
                    return Err(ErrKind::Value);
                }
            }
            Op::CasWrite(k) => {
                let r = reply.ok_or(ErrKind::Json)?;
                match status {
                    200 => {
                        if r.action() != "compareAndSwap" {
                            return Err(ErrKind::Action);
                        }
                        if !key_is(r.key(), k) {
                            return Err(ErrKind::Key);
                        }
                        stats.outcome("cas_ok");
                    }
                    412 if r.error_code == Some(101) => stats.outcome("cas_conflict"),
                    s => return Err(ErrKind::Status(s)),
                }
            }
            Op::Post => {
                if status != 201 {
                    return Err(ErrKind::Status(status));
                }
                let r = reply.ok_or(ErrKind::Json)?;
                if r.action() != "create" {
                    return Err(ErrKind::Action);
                }
                if !r.key().starts_with(&p.queue_key) {
                    return Err(ErrKind::Key);
                }
                if !r.value().is_some_and(|v| value_ok(v, 0, p.value_size)) {
                    return Err(ErrKind::Value);
                }
            }
            Op::TtlSet(i) | Op::TtlRefresh(i) => {
                let refresh = matches!(op, Op::TtlRefresh(_));
                let r = reply.ok_or(ErrKind::Json)?;
                let slot = self
                    .ttl_touched
                    .get_mut(i as usize)
                    .ok_or(ErrKind::Unsolicited)?;
                if refresh && status == 404 && r.error_code == Some(100) {
                    *slot = None;
                    stats.outcome("ttl_expired");
                    return Ok(());
                }
                if status != 200 && status != 201 {
                    *slot = None;
                    return Err(ErrKind::Status(status));
                }
                let want = if refresh { "update" } else { "set" };
                if r.action() != want {
                    return Err(ErrKind::Action);
                }
                if !key_is(r.key(), self.ttl_first + i) {
                    return Err(ErrKind::Key);
                }
                if r.node.as_ref().and_then(|n| n.ttl).is_none() {
                    return Err(ErrKind::Field);
                }
                *slot = Some(now);
                stats.outcome(if refresh { "ttl_refresh" } else { "ttl_set" });
            }
        }
        Ok(())
    }
}

/// Decimal digits of `v` at the end of `buf`.
pub fn itoa(buf: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_response;

    fn plan(w: Workload) -> Arc<Plan> {
        Arc::new(Plan::new(
            &w,
            &ReqHeaders::new("h", None, false),
            "/lg",
            100,
            12,
            4,
        ))
    }

    fn reply(status: u16, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn shares_cover_everything() {
        for (n, parts) in [(10u64, 3usize), (2, 5), (1000, 7), (0, 2)] {
            let total: u64 = (0..parts).map(|i| share(n, parts, i)).sum();
            assert_eq!(total, n);
            for i in 1..parts {
                assert_eq!(
                    share_start(n, parts, i),
                    share_start(n, parts, i - 1) + share(n, parts, i - 1)
                );
            }
        }
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            assert!(r.below(7) < 7);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
        let mut b = [0u8; 20];
        assert_eq!(itoa(&mut b, 0), b"0");
        assert_eq!(itoa(&mut b, u64::MAX), b"18446744073709551615");
    }

    #[test]
    fn put_request_and_check() {
        let mut w = ConnWorkload::new(plan(Workload::Put), 0, 1);
        let mut buf = Vec::new();
        let now = Instant::now();
        let op = w.next(&mut buf, now);
        let Op::Put(k) = op else { panic!("{op:?}") };
        let s = String::from_utf8(buf).unwrap();
        assert!(
            s.starts_with(&format!("PUT /v2/keys/lg/k{k} HTTP/1.1\r\n")),
            "{s}"
        );
        let value = format!("{k:08x}-xxx");
        assert!(s.ends_with(&format!("\r\n\r\nvalue={value}")), "{s}");
        let mut st = Stats::default();
        let ok = reply(
            201,
            &format!(
                r#"{{"action":"set","node":{{"key":"/lg/k{k}","value":"{value}","modifiedIndex":5}}}}"#
            ),
        );
        let r = parse_response(&ok).unwrap().unwrap();
        assert_eq!(w.check(op, &r, now, &mut st), Ok(()));
        let bad = reply(
            201,
            &format!(r#"{{"action":"set","node":{{"key":"/lg/k{k}","value":"nope"}}}}"#),
        );
        let r = parse_response(&bad).unwrap().unwrap();
        assert_eq!(w.check(op, &r, now, &mut st), Err(ErrKind::Value));
        let r = parse_response(b"HTTP/1.1 500 X\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(w.check(op, &r, now, &mut st), Err(ErrKind::Status(500)));
        let r = parse_response(b"HTTP/1.1 200 X\r\nContent-Length: 3\r\n\r\n{{{")
            .unwrap()
            .unwrap();
        assert_eq!(w.check(op, &r, now, &mut st), Err(ErrKind::Json));
    }

    #[test]
    fn cas_reads_then_swaps_and_counts_conflicts() {
        let mut w = ConnWorkload::new(plan(Workload::Cas { hot_keys: 2 }), 0, 1);
        let now = Instant::now();
        let mut st = Stats::default();
        let mut buf = Vec::new();
        let op = w.next(&mut buf, now);
        let Op::CasRead(k) = op else { panic!("{op:?}") };
        assert!(k < 2);
        let get = reply(
            200,
            &format!(
                r#"{{"action":"get","node":{{"key":"/lg/cas{k}","value":"{k:08x}-xxx","modifiedIndex":41}}}}"#
            ),
        );
        assert_eq!(
            w.check(op, &parse_response(&get).unwrap().unwrap(), now, &mut st),
            Ok(())
        );
        buf.clear();
        let op = w.next(&mut buf, now);
        assert_eq!(op, Op::CasWrite(k));
        assert!(
            String::from_utf8_lossy(&buf).contains(&format!("/v2/keys/lg/cas{k}?prevIndex=41 "))
        );
        let conflict = reply(
            412,
            r#"{"errorCode":101,"message":"Compare failed","index":42}"#,
        );
        assert_eq!(
            w.check(
                op,
                &parse_response(&conflict).unwrap().unwrap(),
                now,
                &mut st
            ),
            Ok(())
        );
        let swapped = reply(
            200,
            &format!(r#"{{"action":"compareAndSwap","node":{{"key":"/lg/cas{k}"}}}}"#),
        );
        assert_eq!(
            w.check(
                op,
                &parse_response(&swapped).unwrap().unwrap(),
                now,
                &mut st
            ),
            Ok(())
        );
        assert_eq!(st.outcomes["cas_conflict"], 1);
        assert_eq!(st.outcomes["cas_ok"], 1);
        assert_eq!(st.error_total(), 0);
    }

    #[test]
    fn ttl_sets_then_refreshes() {
        let mut w = ConnWorkload::new(plan(Workload::Ttl { ttl: 5 }), 1, 1);
        let now = Instant::now();
        let mut st = Stats::default();
        // connection 1 of 4 owns keys 25..50
        let mut seen_refresh = false;
        for _ in 0..200 {
            let mut buf = Vec::new();
            let op = w.next(&mut buf, now);
            let s = String::from_utf8(buf).unwrap();
            match op {
                Op::TtlSet(i) => {
                    assert!(s.contains("?ttl=5 "), "{s}");
                    let body = format!(
                        r#"{{"action":"set","node":{{"key":"/lg/ttl/k{}","ttl":5}}}}"#,
                        25 + i
                    );
                    assert_eq!(
                        w.check(
                            op,
                            &parse_response(&reply(201, &body)).unwrap().unwrap(),
                            now,
                            &mut st
                        ),
                        Ok(())
                    );
                }
                Op::TtlRefresh(i) => {
                    seen_refresh = true;
                    assert!(s.contains("?ttl=5&refresh=true&prevExist=true "), "{s}");
                    assert!(s.ends_with("Content-Length: 0\r\n\r\n"));
                    let body = format!(
                        r#"{{"action":"update","node":{{"key":"/lg/ttl/k{}","ttl":5}}}}"#,
                        25 + i
                    );
                    assert_eq!(
                        w.check(
                            op,
                            &parse_response(&reply(200, &body)).unwrap().unwrap(),
                            now,
                            &mut st
                        ),
                        Ok(())
                    );
                    let gone = reply(404, r#"{"errorCode":100,"message":"Key not found"}"#);
                    assert_eq!(
                        w.check(op, &parse_response(&gone).unwrap().unwrap(), now, &mut st),
                        Ok(())
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(seen_refresh);
        assert!(st.outcomes["ttl_expired"] > 0);
    }

    #[test]
    fn fixed_get_and_post() {
        let mut w = ConnWorkload::new(
            plan(Workload::Get {
                key: Some("/x".into()),
                quorum: true,
            }),
            0,
            1,
        );
        let mut buf = Vec::new();
        let now = Instant::now();
        let op = w.next(&mut buf, now);
        assert_eq!(
            buf,
            b"GET /v2/keys/x?quorum=true HTTP/1.1\r\nHost: h\r\n\r\n"
        );
        let mut st = Stats::default();
        let ok = reply(200, r#"{"action":"get","node":{"key":"/x","value":"1"}}"#);
        assert_eq!(
            w.check(op, &parse_response(&ok).unwrap().unwrap(), now, &mut st),
            Ok(())
        );
        let wrong = reply(200, r#"{"action":"get","node":{"key":"/y","value":"1"}}"#);
        assert_eq!(
            w.check(op, &parse_response(&wrong).unwrap().unwrap(), now, &mut st),
            Err(ErrKind::Key)
        );
        let mut q = ConnWorkload::new(
            plan(Workload::Inorder {
                queue: "/lg/q".into(),
            }),
            0,
            1,
        );
        buf.clear();
        let op = q.next(&mut buf, now);
        assert!(buf.starts_with(b"POST /v2/keys/lg/q HTTP/1.1\r\n"));
        let ok = reply(
            201,
            r#"{"action":"create","node":{"key":"/lg/q/00000000000000000012","value":"00000000-xxx"}}"#,
        );
        assert_eq!(
            q.check(op, &parse_response(&ok).unwrap().unwrap(), now, &mut st),
            Ok(())
        );
    }

    #[test]
    fn preload_walks_its_own_range() {
        let p = plan(Workload::Preload);
        assert_eq!(p.fixed_quota(3), Some(25));
        let mut w = ConnWorkload::new(p, 3, 1);
        let mut buf = Vec::new();
        let now = Instant::now();
        assert_eq!(w.next(&mut buf, now), Op::Put(75));
        assert_eq!(w.next(&mut buf, now), Op::Put(76));
    }
}
