//! A cluster of real processes on loopback addresses (member i on 127.0.0.i): ringd, or the
//! reference etcd (for the differential test through a follower), with a fault layer the tests
//! own:
//! - every member listens for peers on its own port but advertises the port of a TCP proxy in
//!   front of it (so `--listen-peer-urls` differs from `--initial-advertise-peer-urls`, as
//!   behind a real proxy). The proxy reads each stream's handshake (`X-Ringd-From`, see
//!   docs/peer-wire.md) to learn which member dialled, so it controls each directed link
//!   from -> to: pass, cut (connections closed, new ones refused), black-hole (bytes read
//!   and dropped), or delay;
//! - kill -9, SIGSTOP/SIGCONT and restart of any member on its data dir.
//!
//! Every wait is bounded and polls for the awaited state; nothing sleeps and hopes.
#![allow(dead_code)]

use super::{etcd_binary, request_timeout, ringd_binary, Kind, Response, TempDir};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a directed link does to the bytes of its streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Pass,
    Cut,
    BlackHole,
    Delay(Duration),
}

/// Directed link states by (from member index, to member index); absent means `Pass`.
type Links = Arc<Mutex<HashMap<(usize, usize), Link>>>;

/// Member ids (hex) to member indexes, filled once the members are up, so the proxies know
/// who dialled even while the member behind them is down.
type Ids = Arc<Mutex<HashMap<String, usize>>>;

/// Short timings so elections take well under a second; requests time out after
/// 5 s + 2 x election timeout, as in etcd.
pub const HEARTBEAT_MS: u64 = 50;
pub const ELECTION_MS: u64 = 500;

pub struct Member {
    pub index: usize,
    pub name: String,
    pub ip: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub proxy_port: u16,
    pub id: String,
    child: Option<Child>,
    log: std::path::PathBuf,
    data_dir: std::path::PathBuf,
}

impl Member {
    /// Member `i` (not started): 127.0.0.(i+1), free ports, its log and data dir in `dir`.
    fn slot(i: usize, dir: &std::path::Path) -> Member {
        let ip = format!("127.0.0.{}", i + 1);
        Member {
            index: i,
            name: format!("m{}", i + 1),
            client_port: free_port_on(&ip),
            peer_port: free_port_on(&ip),
            proxy_port: 0,
            ip,
            id: String::new(),
            child: None,
            log: dir.join(format!("m{}.log", i + 1)),
            data_dir: dir.join(format!("m{}", i + 1)),
        }
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.client_port)
    }

    pub fn client_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn advertised_peer_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.proxy_port)
    }

    /// The data dir the member runs on (made by the member, or beforehand by a test).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(3000);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    /// A request with a bounded wait; errors (timeouts, refused) come back as Err.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        form: &str,
        timeout: Duration,
    ) -> Result<Response, String> {
        let headers: &[(&str, &str)] = if form.is_empty() { &[] } else { &[super::FORM] };
        request_timeout(
            &self.addr(),
            method,
            path,
            headers,
            form.as_bytes(),
            timeout,
        )
    }

    /// The JSON body of a GET with a short bounded wait; None on any error.
    pub fn try_json(&self, path: &str) -> Option<serde_json::Value> {
        let r = self
            .try_request("GET", path, "", Duration::from_secs(2))
            .ok()?;
        serde_json::from_slice(&r.body).ok()
    }

    pub fn get(&self, path: &str) -> Response {
        self.try_request("GET", path, "", Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", self.name))
    }

    pub fn put(&self, path: &str, form: &str) -> Response {
        self.try_request("PUT", path, form, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("PUT {path} on {}: {e}", self.name))
    }
}

pub struct Cluster {
    pub members: Vec<Member>,
    kind: Kind,
    links: Links,
    ids: Ids,
    token: String,
    dir: TempDir,
}

/// A free TCP port on `ip` (never 2379/2380, the ports of a system etcd).
fn free_port_on(ip: &str) -> u16 {
    loop {
        let l = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
        if port != 0 && port != 2379 && port != 2380 {
            return port;
        }
    }
}

/// Whether a `/version` body shows the cluster version decided at the server's own
/// major.minor (`{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}`).
fn cluster_version_decided(v: &serde_json::Value) -> bool {
    let (Some(server), Some(cluster)) = (v["etcdserver"].as_str(), v["etcdcluster"].as_str())
    else {
        return false;
    };
    let major_minor: Vec<&str> = server.split('.').take(2).collect();
    cluster == format!("{}.0", major_minor.join("."))
}

/// An `--initial-cluster-token` no other run uses (process id, a counter and the clock), so
/// that members of two runs never take each other for peers (a cluster id mismatch refuses
/// the other run's traffic).
pub fn unique_token(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

impl Cluster {
    /// Starts `n` members with `extra` flags and waits until they agree on a leader.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with_token(n, "etcd-cluster", extra)
    }

    pub fn start_with_token(n: usize, token: &str, extra: &[&str]) -> Cluster {
        Cluster::start_of(Kind::Ringd, n, token, extra)
    }

    /// Starts `n` members of `kind` (`extra` flags are given to every member) and waits until
    /// they agree on a leader, every member lists every other's client URLs (each member has
    /// published) and the cluster version is decided: etcd writes both into its store, so
    /// from then on its store index moves only with the clients' writes.
    pub fn start_of(kind: Kind, n: usize, token: &str, extra: &[&str]) -> Cluster {
        let mut c = Cluster::prepare(kind, n, token);
        for i in 0..n {
            c.spawn(i, extra);
        }
        c.wait_started(n);
        c
    }

    /// `n` member slots of `kind` (addresses, ports, link proxies), none started: for tests
    /// that make the members' data dirs first (`ringd snapshot restore`).
    pub fn prepare(kind: Kind, n: usize, token: &str) -> Cluster {
        let dir = TempDir::new(&format!("{}-cluster", kind.name()));
        let links: Links = Arc::default();
        let ids: Ids = Arc::default();
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member::slot(i, dir.path()));
        }
        for i in 0..n {
            let proxy = start_proxy(&members, i, links.clone(), ids.clone());
            members[i].proxy_port = proxy;
        }
        Cluster {
            members,
            kind,
            links,
            ids,
            token: token.to_string(),
            dir,
        }
    }

    /// The cluster's `--initial-cluster-token`.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Waits until the `n` members agree on a leader, every member lists every other's
    /// client URLs (each member has published) and the cluster version is decided (etcd
    /// writes both into its store, so from then on its store index moves only with the
    /// clients' writes); records the members' ids.
    pub fn wait_started(&mut self, n: usize) {
        let c = self;
        c.wait_for_leader(&(0..n).collect::<Vec<_>>());
        // As with etcd, a member is started once it has published its client URLs through
        // raft: wait until every member lists every other's.
        let every_member = |path: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
            c.members
                .iter()
                .all(|m| m.try_json(path).is_some_and(|v| f(&v)))
                .then_some(())
        };
        c.wait("every member to publish", Duration::from_secs(30), || {
            every_member("/v2/members", &|v| {
                v["members"].as_array().is_some_and(|l| {
                    l.len() == n
                        && l.iter()
                            .all(|x| x["clientURLs"].as_array().is_some_and(|u| !u.is_empty()))
                })
            })
        });
        // etcd's leader decides the cluster version and writes it into the store
        // (/0/version): "not_decided" until then, and the minimum (3.0.0) first if a member
        // did not answer its version query yet, raised in a later write. Wait for the
        // members' own major.minor on every member.
        c.wait("the cluster version", Duration::from_secs(30), || {
            every_member("/version", &cluster_version_decided)
        });
        for i in 0..n {
            let id = c.members[i].get("/v2/stats/self").json()["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            c.learn_id(i, &id);
        }
    }

    /// Records member `i`'s id (for the proxies, and `Member::id`).
    pub fn learn_id(&mut self, i: usize, id: &str) {
        self.members[i].id = id.to_string();
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), i);
    }

    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.advertised_peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts (or restarts, on its data dir) member `i`.
    pub fn spawn(&mut self, i: usize, extra: &[&str]) {
        let ic = self.initial_cluster();
        self.spawn_with(i, &ic, extra);
    }

    /// A new member slot (not started): its own loopback address, ports and link proxy.
    pub fn add_slot(&mut self) -> usize {
        let i = self.members.len();
        self.members.push(Member::slot(i, self.dir.path()));
        let proxy = start_proxy(&self.members, i, self.links.clone(), self.ids.clone());
        self.members[i].proxy_port = proxy;
        i
    }

    /// A second proxy in front of member `i` (for a peer URL update); returns its port.
    pub fn another_proxy(&self, i: usize) -> u16 {
        start_proxy(&self.members, i, self.links.clone(), self.ids.clone())
    }

    /// Waits for member `i` to exit; returns its exit code.
    pub fn wait_exit(&mut self, i: usize, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.members[i].exit_status() {
                return status.code();
            }
            if Instant::now() > deadline {
                panic!("member {i} did not exit\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts member `i` with this `--initial-cluster` (and `extra` flags).
    pub fn spawn_with(&mut self, i: usize, ic: &str, extra: &[&str]) {
        let token = self.token.clone();
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap_or_else(|e| panic!("log: {e}"));
        let log2 = log.try_clone().unwrap_or_else(|e| panic!("log: {e}"));
        let hb = HEARTBEAT_MS.to_string();
        let el = ELECTION_MS.to_string();
        let (binary, kind_args): (_, &[&str]) = match self.kind {
            Kind::Ringd => (ringd_binary(), &[]),
            Kind::Etcd => (
                etcd_binary().expect("etcd is not installed (apt-get install etcd-server)"),
                &["--enable-v2=true"],
            ),
        };
        let child = Command::new(binary)
            .args(kind_args)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--advertise-client-urls", &m.client_url()])
            .args([
                "--listen-peer-urls",
                &format!("http://{}:{}", m.ip, m.peer_port),
            ])
            .args(["--initial-advertise-peer-urls", &m.advertised_peer_url()])
            .args(["--initial-cluster", ic])
            .args(["--initial-cluster-token", &token])
            .args(["--heartbeat-interval", &hb, "--election-timeout", &el])
            .args(extra)
            .env("RINGD_FORCE_EPOLL", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.kind.name()));
        m.child = Some(child);
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, i: usize, sig: &str) {
        if let Some(c) = &self.members[i].child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    pub fn set_link(&self, from: usize, to: usize, link: Link) {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((from, to), link);
    }

    /// Cuts every link between `group` and the other members, both directions.
    pub fn isolate(&self, group: &[usize], link: Link) {
        for a in group {
            for b in 0..self.members.len() {
                if !group.contains(&b) {
                    self.set_link(*a, b, link);
                    self.set_link(b, *a, link);
                }
            }
        }
    }

    pub fn heal(&self) {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The first member whose `/v2/stats/self` says `"state":"StateFollower"` with a leader.
    pub fn follower(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| {
            self.members[i].try_json("/v2/stats/self").is_some_and(|v| {
                v["state"] == "StateFollower"
                    && v["leaderInfo"]["leader"]
                        .as_str()
                        .is_some_and(|l| !l.is_empty())
            })
        })
    }

    /// The leader id as `/v2/stats/self` of member `i` reports it ("" when none).
    pub fn leader_seen_by(&self, i: usize) -> Option<String> {
        let r = self.members[i]
            .try_request("GET", "/v2/stats/self", "", Duration::from_secs(2))
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
        Some(v["leaderInfo"]["leader"].as_str()?.to_string())
    }

    /// Waits until every member of `group` reports the same leader, itself in `group`;
    /// returns its index.
    pub fn wait_for_leader(&self, group: &[usize]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen: Vec<Option<String>> = group.iter().map(|i| self.leader_seen_by(*i)).collect();
            if let Some(Some(first)) = seen.first() {
                if !first.is_empty() && seen.iter().all(|s| s.as_deref() == Some(first)) {
                    let ids: Vec<Option<String>> = group
                        .iter()
                        .map(|i| {
                            let r = self.members[*i]
                                .try_request("GET", "/v2/stats/self", "", Duration::from_secs(2))
                                .ok()?;
                            let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
                            Some(v["id"].as_str()?.to_string())
                        })
                        .collect();
                    if let Some(pos) = ids.iter().position(|id| id.as_deref() == Some(first)) {
                        return group[pos];
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no agreed leader among {group:?}: {seen:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `f` until it returns Some, for at most `limit`.
    pub fn wait<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- {} log tail:\n{}", m.name, m.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.signal(i, "-CONT");
            self.kill(i);
        }
    }
}

/// Starts the proxy in front of member `to`; returns its port.
fn start_proxy(members: &[Member], to: usize, links: Links, ids: Ids) -> u16 {
    let ip = members[to].ip.clone();
    let bind = || TcpListener::bind((ip.as_str(), 0)).unwrap_or_else(|e| panic!("proxy bind: {e}"));
    let port_of = |l: &TcpListener| l.local_addr().map(|a| a.port()).unwrap_or(0);
    // The member's own ports were picked free and released, so the kernel may hand one of
    // them to the proxy (the member then cannot bind it): take another while holding this.
    let mut listener = bind();
    let taken = [members[to].client_port, members[to].peer_port];
    while taken.contains(&port_of(&listener)) {
        let next = bind();
        listener = next;
    }
    let port = port_of(&listener);
    let upstream = format!("{}:{}", ip, members[to].peer_port);
    // The proxy maps the handshake's X-Ringd-From (an id) to a member index: from the ids
    // the cluster learned, or else through the advertised URL in some member's /v2/members.
    let clients: Vec<String> = members.iter().map(Member::addr).collect();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (links, ids, upstream, clients) = (
                links.clone(),
                ids.clone(),
                upstream.clone(),
                clients.clone(),
            );
            std::thread::spawn(move || proxy_conn(conn, &upstream, to, &clients, &ids, links));
        }
    });
    port
}

/// Which member index has member id `id` (hex).
fn index_of(clients: &[String], ids: &Ids, id: &str) -> Option<usize> {
    if let Some(i) = ids.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
        return Some(*i);
    }
    clients.iter().find_map(|c| index_from_members(c, id))
}

/// Which member index has member id `id` (hex), from the /v2/members of `client`.
fn index_from_members(client: &str, id: &str) -> Option<usize> {
    let r = request_timeout(
        client,
        "GET",
        "/v2/members",
        &[],
        b"",
        Duration::from_secs(2),
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    let m = v["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"].as_str() == Some(id))?;
    let url = m["peerURLs"][0].as_str()?;
    // Member i's advertised peer URL is on 127.0.0.(i+1).
    let host = url.split("://").nth(1)?.split(':').next()?;
    let last: usize = host.rsplit('.').next()?.parse().ok()?;
    last.checked_sub(1)
}

fn link_state(links: &Links, from: usize, to: usize) -> Link {
    links
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(from, to))
        .copied()
        .unwrap_or(Link::Pass)
}

fn proxy_conn(
    mut down: TcpStream,
    upstream: &str,
    to: usize,
    clients: &[String],
    ids: &Ids,
    links: Links,
) {
    // Read the first request head to learn who dialled.
    let _ = down.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match down.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let from = text
        .lines()
        .find_map(|l| l.strip_prefix("x-ringd-from:"))
        .map(|v| v.trim().to_string())
        .and_then(|id| index_of(clients, ids, &id));
    if let Some(from) = from {
        if link_state(&links, from, to) == Link::Cut {
            return;
        }
    }
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return;
    };
    if up.write_all(&head).is_err() {
        return;
    }
    let (Ok(down2), Ok(up2)) = (down.try_clone(), up.try_clone()) else {
        return;
    };
    let links2 = links.clone();
    // Responses (upstream -> dialler) travel the reverse link.
    std::thread::spawn(move || pump(up2, down2, from.map(|f| (to, f)), links2));
    pump(down, up, from.map(|f| (f, to)), links);
}

/// Copies `src` to `dst` under the link's state, checked every 20 ms and on every chunk.
fn pump(mut src: TcpStream, mut dst: TcpStream, link: Option<(usize, usize)>, links: Links) {
    let _ = src.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let state = link.map_or(Link::Pass, |(a, b)| link_state(&links, a, b));
        if state == Link::Cut {
            break;
        }
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => match state {
                Link::BlackHole => {}
                Link::Delay(d) => {
                    std::thread::sleep(d);
                    if dst.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                _ => {
                    if dst.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            },
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    let _ = src.shutdown(Shutdown::Both);
    let _ = dst.shutdown(Shutdown::Both);
}
