//! The deterministic simulation of a ringd cluster (TigerBeetle's VOPR, adapted): 3 or 5
//! `ringd::raft::Replica`s in one process, each with the real log (`Wal`) on its own simulated
//! disk (`SimStorage`), talking over a simulated network, driven by one seeded PRNG. No wall
//! clock, no threads, no hash-order iteration: a seed replays exactly (raft-rs's own election
//! timeouts, drawn from the thread's RNG, are overridden from the seed after every call).
//!
//! The world, all drawn from the seed (swarm testing: each seed turns faults on or off and
//! picks their rates):
//! - time is simulated (units of 0.1 ms; a heartbeat tick every 100 ms, each replica's clock
//!   skewed a little); events run in time order from one queue;
//! - the network delays every message, and drops, duplicates, reorders (long extra delays)
//!   and partitions (isolated nodes, splits, one-way cuts, healed later);
//! - replicas crash: the process state is dropped and the disk loses what was not synced
//!   (cleanly, tearing the last write, or keeping random sectors), also in the middle of the
//!   log's own I/O and on injected fsync failures (fail-stop); a restart reopens the log and
//!   rebuilds the replica and its store by replaying the log (no snapshots in the simulation
//!   yet: runs stay below raft's in-memory log window); replicas also pause (no ticks,
//!   messages wait), and crashes, isolations and pauses may aim at the leader;
//! - clients (each with one request at a time) send writes, compare-and-swaps, deletes and
//!   quorum reads on a few keys to random replicas (followers forward through raft-rs); a
//!   request answered by `step` completes, one answered by `tick` (timeout) or lost in a crash
//!   has an unknown outcome.
//!
//! Phases: *safety* (faults on) for `SAFETY_TICKS`, then *liveness*: the network heals, faults
//! stop, every replica is up; the replicas must agree on a leader within `SETTLE_TICKS_MAX`,
//! every request sent after that must complete, and all replicas must converge.
//!
//! Checked after every event: at most one leader per term; every replica's applied raft
//! entries (index, term, payload, read back from its own log) are a prefix of one global
//! sequence, and its applied store events likewise (so no acknowledged write is lost or
//! changed); every request id is applied at most once; every answer comes from the entry of
//! its own request. Checked at the end: identical applied index and byte-identical store
//! snapshots on every replica; the final log replayed into a reference model (a map) gives
//! every answered write its result and the stores their values; the whole client history is
//! linearizable (tests/support/linearizability.rs). For that check, requests with an unknown
//! outcome are resolved with what the simulator knows: one whose entry is in the final log
//! took effect no later than the first time any replica applied it; one whose entry is not
//! never took effect (a stronger check than the client's view, which allows either). The
//! checkers are themselves tested: a cluster that answers quorum reads locally, and one whose
//! replicas forget their disk in a crash, must fail.
//!
//! Reproduction: a failing seed panics with `reproduce with SIM_SEED=<seed>`;
//! `SIM_SEED=<seed> cargo test --release --test sim` replays it (`SIM_TRACE=1` also prints
//! every event). CI runs the seeds of tests/sim_seeds.txt and seeds `0..CI_SEEDS`;
//! `SIM_SEEDS=<n>` runs `0..n` instead, `SIM_SEEDS=<a>..<b>` runs `a..b`.

#[path = "support/linearizability.rs"]
mod linearizability;
#[path = "support/rng.rs"]
mod rng;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use linearizability::{Kind, Op};
use raft::eraftpb::Message;
use raft::StateRole;
use ringd::members::{Member, Membership};
use ringd::raft::{
    decode_payload, Bootstrap, HardState, Io, LogEntry, Payload, Replica, RequestId, SnapshotData,
    StepOutput, ENTRY_NORMAL,
};
use ringd::wal::sim::{CrashMode, SimStorage};
use ringd::wal::{Wal, WalError};
use ringd_store::{Command, ErrorCode, Event, Store};
use rng::Rng;

/// Seeds `0..CI_SEEDS` run in CI (debug build: about 25 s on 2 cores; release: 4 s), besides
/// tests/sim_seeds.txt.
const CI_SEEDS: u64 = 400;
/// Seeds a broken cluster may run before the checkers must have caught it.
const MUTANT_SEEDS: u64 = 40;
/// Simulated time units per heartbeat tick (a unit is 0.1 ms: ticks every 100 ms).
const TICK: u64 = 1000;
const ELECTION_TICKS: usize = 10;
const SAFETY_TICKS: u64 = 150;
/// Requests sent in the safety phase at most (the log must stay below `LOG_ENTRIES_MAX`).
const SAFETY_OPS_MAX: usize = 2500;
/// After healing, the replicas must agree on a leader within this many ticks.
const SETTLE_TICKS_MAX: u64 = 60;
/// Ticks the replicas must agree on a leader before the cluster counts as healed: two
/// election timeouts, the longest raft-rs draws.
const STABLE_TICKS: u64 = 2 * ELECTION_TICKS as u64;
/// Requests sent once the leader is agreed on; each must complete.
const LIVE_OPS: usize = 30;
/// After the last of them, the replicas must converge within this many ticks (plus the
/// request timeout, for requests from the safety phase still waiting).
const DRAIN_TICKS_MAX: u64 = 60;
const WAL_DIR: &str = "/sim/member/wal";
const SEGMENT_BYTES: u64 = 64 << 10;
/// Raft entries per run above which raft-rs's in-memory log would be trimmed and lagging
/// followers would need snapshots, which the simulation does not send yet.
const LOG_ENTRIES_MAX: usize = 7000;
/// Ready rounds one drive may take before the replica is declared stuck.
const STEP_ROUNDS_MAX: usize = 1000;

/// The fault rates and workload of one seed.
#[derive(Debug)]
struct Swarm {
    nodes: usize,
    keys: u64,
    clients: usize,
    /// A client waits up to this long between an answer and its next request.
    think_max: u64,
    /// Workload mix, per mille: writes, compare-and-swaps, deletes; the rest are reads.
    writes: u64,
    cas: u64,
    deletes: u64,
    latency_min: u64,
    latency_max: u64,
    /// Per mille of messages.
    drop: u64,
    duplicate: u64,
    reorder: u64,
    /// Mean time between fault events (0: none), and which faults they pick.
    fault_every: u64,
    crashes: bool,
    partitions: bool,
    disk_faults: bool,
    /// Process pauses (a stopped process: no ticks, messages wait for it).
    pauses: bool,
    /// Crashes, isolations and pauses pick the leader half the time.
    target_leader: bool,
    /// Per mille by which a replica's clock may run fast or slow.
    skew: u64,
    request_timeout_ticks: u64,
}

impl Swarm {
    fn draw(rng: &mut Rng) -> Swarm {
        let latency_min = rng.pick(&[1, 10, 50]);
        let writes = rng.range(100, 400);
        let cas = rng.range(100, 400);
        Swarm {
            nodes: rng.pick(&[3, 5]),
            keys: rng.range(1, 4),
            clients: rng.range(1, 8) as usize,
            think_max: rng.pick(&[200, 1000, 3000]),
            writes,
            cas,
            deletes: rng.range(0, 150),
            latency_min,
            latency_max: latency_min + rng.pick(&[10, 100, 400]),
            drop: rng.pick(&[0, 0, 10, 50, 200]),
            duplicate: rng.pick(&[0, 0, 10, 50]),
            reorder: rng.pick(&[0, 20, 100]),
            fault_every: rng.pick(&[0, 3 * TICK, 10 * TICK, 30 * TICK]),
            crashes: rng.below(4) != 0,
            partitions: rng.below(4) != 0,
            disk_faults: rng.below(2) == 0,
            pauses: rng.below(2) == 0,
            target_leader: rng.below(2) == 0,
            skew: rng.pick(&[0, 20, 100]),
            request_timeout_ticks: rng.pick(&[20, 40, 70]),
        }
    }
}

enum Ev {
    Deliver(Message),
    /// A heartbeat tick of a node's run.
    Tick(usize, u64),
    /// A client sends its next request.
    Client(usize),
    Fault,
    /// Heal the partition of this generation.
    Heal(u64),
    /// Restart a node crashed in this run.
    Restart(usize, u64),
    Liveness,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Safety,
    /// Healed; waiting for the replicas to agree on a leader for `STABLE_TICKS` (so that
    /// election timers started during the partition have run out).
    Settling {
        since: u64,
        agreed_since: Option<u64>,
    },
    /// Every request sent now must complete, under this leader and term.
    Live {
        leader: u64,
        term: u64,
        sent: usize,
    },
    /// No more requests; waiting for every replica to apply everything.
    Drain {
        since: u64,
    },
}

struct Up {
    replica: Replica<usize>,
    wal: Wal<SimStorage>,
    /// Applied raft entries checked against the global log.
    checked: u64,
    /// The etcd index of the last event this run applied.
    events: u64,
    /// The (term, role) the election timeout was last drawn for, and the draw.
    drawn_for: Option<(u64, StateRole)>,
    draw: u64,
}

struct Node {
    id: u64,
    disk: SimStorage,
    up: Option<Up>,
    /// Runs started so far (the current or last one).
    run: u64,
    /// This node's tick period (clock skew).
    period: u64,
    /// A disk fault is armed and has not fired yet.
    armed: bool,
    /// The process is stopped until then (a long GC pause, SIGSTOP).
    paused_until: u64,
}

/// What the simulator knows of a request beyond the client's history.
struct Meta {
    client: usize,
    node: usize,
    run: u64,
    request: Option<RequestId>,
    cmd: Option<Command>,
    /// Sent in the liveness phase: it must complete.
    must_complete: bool,
}

/// A raft entry some replica applied, as the first one to apply it saw it.
struct GlobalEntry {
    term: u64,
    data: Vec<u8>,
    /// History time of the first apply.
    first_applied: u64,
}

#[derive(Default, Debug)]
struct Stats {
    ops: usize,
    answered: usize,
    timeouts: usize,
    lost_in_crashes: usize,
    unknown_applied: usize,
    unknown_dropped: usize,
    crashes: usize,
    io_crashes: usize,
    torn_tails: usize,
    partitions: usize,
    pauses: usize,
    messages: usize,
    dropped: usize,
    duplicated: usize,
    terms: usize,
    entries: usize,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.ops += o.ops;
        self.answered += o.answered;
        self.timeouts += o.timeouts;
        self.lost_in_crashes += o.lost_in_crashes;
        self.unknown_applied += o.unknown_applied;
        self.unknown_dropped += o.unknown_dropped;
        self.crashes += o.crashes;
        self.io_crashes += o.io_crashes;
        self.torn_tails += o.torn_tails;
        self.partitions += o.partitions;
        self.pauses += o.pauses;
        self.messages += o.messages;
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
        self.terms += o.terms;
        self.entries += o.entries;
    }
}

/// The replica's `Io`: the log on the simulated disk, and an outbox.
struct SimIo<'a> {
    wal: &'a mut Wal<SimStorage>,
    sent: Vec<Message>,
}

impl Io for SimIo<'_> {
    type Error = WalError;

    fn send(&mut self, messages: Vec<Message>) {
        self.sent.extend(messages);
    }

    fn persist(
        &mut self,
        entries: &[LogEntry],
        hs: Option<HardState>,
        must_sync: bool,
    ) -> Result<(), WalError> {
        self.wal.append(entries)?;
        if let Some(hs) = hs {
            self.wal.set_hard_state(hs)?;
        }
        if must_sync {
            self.wal.sync()?;
        }
        Ok(())
    }

    fn persist_snapshot(&mut self, index: u64, _: u64, _: &[u8]) -> Result<(), WalError> {
        self.wal.restart(index)?;
        self.wal.sync()
    }
}

fn no_snapshots(_: &[u8]) -> Result<SnapshotData, String> {
    Err("the simulation sends no snapshots".to_string())
}

/// A deliberately broken cluster, to show the checkers catch what they are there for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mutant {
    None,
    /// Quorum reads answered at once from the store of the replica that took them, with no
    /// ReadIndex round: stale reads from followers and deposed leaders.
    LocalReads,
    /// A crashed replica comes back with an empty disk: it forgets its log and its votes.
    Amnesia,
}

struct World {
    seed: u64,
    mutant: Mutant,
    rng: Rng,
    swarm: Swarm,
    trace: bool,
    now: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    queued: u64,
    phase: Phase,
    nodes: Vec<Node>,
    membership: Membership,
    /// Directed links (from, to) that are cut, and the partition generation.
    cut: BTreeSet<(usize, usize)>,
    partition: u64,
    /// The client history and what the simulator knows of each op.
    history: Vec<Op>,
    meta: Vec<Meta>,
    /// Ops waiting for an answer, with the node and run holding them.
    outstanding: BTreeMap<usize, (usize, u64)>,
    /// History time: ticks at every call, answer and first apply.
    clock: u64,
    /// Clients that stopped at `SAFETY_OPS_MAX`, until the liveness phase.
    resting: Vec<usize>,
    /// Recent values written to each key (compare-and-swaps expect one of them).
    recent: Vec<Vec<String>>,
    /// The global raft log (index i at i - 1) and store event sequence (etcd index i at i - 1).
    log: Vec<GlobalEntry>,
    events: Vec<Arc<Event>>,
    /// Raft index at which each request id was applied.
    applied_requests: BTreeMap<(u64, u64), u64>,
    /// The leader of each term, as seen.
    leaders: BTreeMap<u64, u64>,
    stats: Stats,
}

impl World {
    fn new(seed: u64, mutant: Mutant) -> World {
        let mut rng = Rng::new(seed);
        let swarm = Swarm::draw(&mut rng);
        let members: Vec<Member> = (1..=swarm.nodes as u64)
            .map(|id| Member {
                id,
                name: format!("m{id}"),
                peer_urls: vec![format!("http://sim{id}:2380")],
                client_urls: vec![format!("http://sim{id}:2379")],
            })
            .collect();
        let nodes = (0..swarm.nodes)
            .map(|i| {
                let skew = rng.range(0, 2 * swarm.skew) as i64 - swarm.skew as i64;
                Node {
                    id: i as u64 + 1,
                    disk: SimStorage::new(),
                    up: None,
                    run: 0,
                    period: (TICK as i64 * (1000 + skew) / 1000) as u64,
                    armed: false,
                    paused_until: 0,
                }
            })
            .collect();
        let keys = swarm.keys as usize;
        World {
            seed,
            mutant,
            rng,
            trace: std::env::var_os("SIM_TRACE").is_some(),
            now: 0,
            queue: BTreeMap::new(),
            queued: 0,
            phase: Phase::Safety,
            nodes,
            membership: Membership::initial(members, "sim-cluster"),
            cut: BTreeSet::new(),
            partition: 0,
            history: Vec::new(),
            meta: Vec::new(),
            outstanding: BTreeMap::new(),
            clock: 0,
            resting: Vec::new(),
            recent: vec![Vec::new(); keys],
            log: Vec::new(),
            events: Vec::new(),
            applied_requests: BTreeMap::new(),
            leaders: BTreeMap::new(),
            stats: Stats::default(),
            swarm,
        }
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[{:>7}] {}", self.now, what());
        }
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.queued += 1;
        self.queue.insert((at, self.queued), ev);
    }

    fn tick_clock(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn up(&mut self, i: usize) -> Option<&mut Up> {
        self.nodes[i].up.as_mut()
    }

    // -----------------------------------------------------------------------------------------
    // Replicas: start, crash, drive
    // -----------------------------------------------------------------------------------------

    /// Starts a new run of node `i` from what its disk holds.
    fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.up.is_none(), "node {} is already up", node.id);
        node.run += 1;
        let (wal, rec) = Wal::open_with(node.disk.clone(), Path::new(WAL_DIR), 0, SEGMENT_BYTES)
            .unwrap_or_else(|e| panic!("node {}: the log does not reopen: {e}", node.id));
        self.stats.torn_tails += rec.torn_tail.is_some() as usize;
        let (id, run, entries) = (node.id, node.run, rec.entries.len());
        let replica = Replica::new(Bootstrap {
            id,
            membership: self.membership.clone(),
            store: Store::new(),
            auth: Default::default(),
            snapshot_index: 0,
            snapshot_term: 0,
            entries: rec.entries,
            hard_state: rec.hard_state,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: 1,
            request_timeout_ticks: self.swarm.request_timeout_ticks,
            seq_start: run << 40,
            decode_snapshot: no_snapshots,
        })
        .unwrap_or_else(|e| panic!("node {id}: the replica does not start: {e}"));
        node.up = Some(Up {
            replica,
            wal,
            checked: 0,
            events: 0,
            drawn_for: None,
            draw: 0,
        });
        self.trace(|| format!("node {id} starts run {run}: {entries} entries in its log"));
        self.after_call(i);
        let first_tick = self.now + 1 + self.rng.below(self.nodes[i].period);
        self.push(first_tick, Ev::Tick(i, run));
        self.drive(i);
        // As `recovery::replay` does once the log is replayed: the bound on a Ready's
        // committed entries is for start-up only. (Not `shrink_mem_log`, which makes the
        // first entry raft holds a snapshot boundary: the simulation sends no snapshots.)
        if let Some(up) = self.nodes[i].up.as_mut() {
            up.replica.end_replay();
        }
    }

    /// Power loss on node `i`: the process state is gone, and the disk keeps what was synced
    /// (and maybe parts of what was not).
    fn crash(&mut self, i: usize, why: &str) {
        let mode = match self.rng.below(3) {
            0 => CrashMode::Clean,
            1 => CrashMode::TearLast(self.rng.next()),
            _ => CrashMode::Scramble(self.rng.next()),
        };
        let node = &mut self.nodes[i];
        if node.up.take().is_none() {
            return;
        }
        node.disk.crash(mode);
        if self.mutant == Mutant::Amnesia {
            node.disk = SimStorage::new();
        }
        node.armed = false;
        let (id, run) = (node.id, node.run);
        self.stats.crashes += 1;
        self.trace(|| format!("node {id} crashes ({why}, {mode:?})"));
        let lost: Vec<usize> = self
            .outstanding
            .iter()
            .filter(|(_, &(n, r))| n == i && r == run)
            .map(|(&op, _)| op)
            .collect();
        for op in lost {
            self.stats.lost_in_crashes += 1;
            self.unanswered(op, "its node crashed");
        }
        let down = match self.phase {
            Phase::Safety => self.rng.range(1, 15 * TICK),
            _ => 0,
        };
        self.push(self.now + down, Ev::Restart(i, run));
    }

    /// After every call into a replica: the election timeout comes from the seed (redrawn
    /// when the term or role changes, as raft-rs redraws it), and leaders are checked.
    fn after_call(&mut self, i: usize) {
        let fresh = self.rng.next();
        let id = self.nodes[i].id;
        let Some(up) = self.nodes[i].up.as_mut() else {
            return;
        };
        let now = (up.replica.term(), up.replica.role());
        if up.drawn_for != Some(now) {
            up.drawn_for = Some(now);
            up.draw = fresh;
        }
        up.replica.set_election_timeout(up.draw);
        if up.replica.is_leader() {
            let term = up.replica.term();
            let leader = *self.leaders.entry(term).or_insert(id);
            assert_eq!(
                leader, id,
                "two leaders in term {term}: node {leader} and node {id}"
            );
        }
    }

    /// Runs Ready rounds on node `i` until it has nothing more to do, as the raft shard does.
    fn drive(&mut self, i: usize) {
        for _ in 0..STEP_ROUNDS_MAX {
            let Some(up) = self.nodes[i].up.as_mut() else {
                return;
            };
            let mut io = SimIo {
                wal: &mut up.wal,
                sent: Vec::new(),
            };
            let result = up.replica.step(&mut io);
            let sent = io.sent;
            let wanted = up.replica.snapshot_wanted();
            self.after_call(i);
            // What left before a failed persist is on the wire.
            self.send(i, sent);
            let out = match result {
                Ok(out) => out,
                Err(e) => {
                    self.stats.io_crashes += 1;
                    self.crash(i, &format!("log write failed: {e}"));
                    return;
                }
            };
            assert!(
                !wanted,
                "node {}: raft wants a snapshot for a follower; the simulation sends none \
                 (keep runs below {LOG_ENTRIES_MAX} entries)",
                i + 1
            );
            let done = out.applied.is_empty()
                && out.events.is_empty()
                && out.persisted_entries == 0
                && out.reads.is_empty();
            self.check_applied(i);
            self.take_output(i, out);
            if done {
                return;
            }
        }
        panic!("node {}: Ready rounds did not settle", i + 1);
    }

    /// Checks the raft entries node `i` applied since the last check against the global log
    /// (reading them back from its own log), extending it with new ones.
    fn check_applied(&mut self, i: usize) {
        let Some(up) = self.nodes[i].up.as_mut() else {
            return;
        };
        let applied = up.replica.applied_index().0;
        let from = up.checked + 1;
        if applied < from {
            return;
        }
        let entries = up.wal.entries(from, applied + 1).unwrap_or_else(|e| {
            panic!(
                "node {}: applied up to raft index {applied} but its log cannot give [{from}, \
                 {applied}]: {e}",
                i + 1
            )
        });
        up.checked = applied;
        for e in entries {
            let at = e.index as usize - 1;
            if let Some(g) = self.log.get(at) {
                assert!(
                    g.term == e.term && g.data == e.data,
                    "node {} applied raft index {} term {} but it was applied before with term \
                     {}: the applied logs diverge (an acknowledged write may be lost)",
                    i + 1,
                    e.index,
                    e.term,
                    g.term
                );
                continue;
            }
            assert_eq!(at, self.log.len(), "gap in the global log");
            if e.kind == ENTRY_NORMAL && !e.data.is_empty() {
                let (request, _) = decode_payload(&e.data)
                    .unwrap_or_else(|err| panic!("raft index {}: {err}", e.index));
                if let Some(r) = request {
                    if let Some(before) = self.applied_requests.insert((r.member, r.seq), e.index) {
                        panic!(
                            "request {r:?} applied twice: at raft index {before} and {}",
                            e.index
                        );
                    }
                }
            }
            let first_applied = self.tick_clock();
            self.log.push(GlobalEntry {
                term: e.term,
                data: e.data,
                first_applied,
            });
            assert!(
                self.log.len() <= LOG_ENTRIES_MAX,
                "the run grew past {LOG_ENTRIES_MAX} raft entries"
            );
        }
    }

    /// Answers and events of one Ready round of node `i`.
    fn take_output(&mut self, i: usize, out: StepOutput<usize>) {
        let Some(up) = self.nodes[i].up.as_mut() else {
            return;
        };
        for ev in &out.events {
            up.events += 1;
            assert_eq!(
                ev.etcd_index,
                up.events,
                "node {}: store events skip an etcd index",
                i + 1
            );
            match self.events.get(ev.etcd_index as usize - 1) {
                Some(g) => assert!(
                    **g == **ev,
                    "node {}: event at etcd index {} differs from the one applied before:\n{ev:?}\n{g:?}",
                    i + 1,
                    ev.etcd_index
                ),
                None => self.events.push(ev.clone()),
            }
        }
        for op in out.reads {
            let value = self.read_store(i, op);
            self.complete(op, Some(value), None);
        }
        for a in out.applied {
            let op = a.token;
            let g = &self.log[a.raft_index.0 as usize - 1];
            assert_eq!(
                g.term, a.raft_term,
                "op {op}: answered from a replaced entry"
            );
            let (request, payload) = decode_payload(&g.data).unwrap_or_else(|e| panic!("{e}"));
            let m = &self.meta[op];
            assert!(
                request == m.request
                    && Some(&payload) == m.cmd.clone().map(Payload::Command).as_ref(),
                "op {op} answered with the result of another request's entry"
            );
            let outcome = match a.result {
                Ok(_) => true,
                Err(e) if matches!(e.code, ErrorCode::KeyNotFound | ErrorCode::TestFailed) => false,
                Err(e) => panic!("op {op}: unexpected error {e:?}"),
            };
            self.complete(op, None, Some(outcome));
        }
    }

    // -----------------------------------------------------------------------------------------
    // The network
    // -----------------------------------------------------------------------------------------

    fn delay(&mut self) -> u64 {
        let mut d = self
            .rng
            .range(self.swarm.latency_min, self.swarm.latency_max);
        if self.rng.chance(self.swarm.reorder) {
            d += self.rng.below(3 * TICK);
        }
        d
    }

    fn send(&mut self, from: usize, messages: Vec<Message>) {
        for m in messages {
            self.stats.messages += 1;
            let to = m.to as usize - 1;
            if self.cut.contains(&(from, to)) {
                // The transport sees the connection fail.
                self.stats.dropped += 1;
                if let Some(up) = self.up(from) {
                    up.replica.report_unreachable(m.to);
                }
                continue;
            }
            if self.rng.chance(self.swarm.drop) {
                self.stats.dropped += 1;
                continue;
            }
            // Every message type may be delivered twice, forwarded proposals included (the
            // leader drops a request id it appended recently; seed 8 in sim_seeds.txt).
            if self.rng.chance(self.swarm.duplicate) {
                self.stats.duplicated += 1;
                let (t, a, b) = (m.get_msg_type(), m.from, m.to);
                self.trace(|| format!("duplicated {t:?} {a} -> {b}"));
                let at = self.now + self.delay();
                self.push(at, Ev::Deliver(m.clone()));
            }
            let at = self.now + self.delay();
            self.push(at, Ev::Deliver(m));
        }
    }

    fn deliver(&mut self, m: Message) {
        let (from, to) = (m.from as usize - 1, m.to as usize - 1);
        if self.cut.contains(&(from, to)) {
            self.stats.dropped += 1;
            return;
        }
        let paused_until = self.nodes[to].paused_until;
        if paused_until > self.now {
            self.push(paused_until, Ev::Deliver(m));
            return;
        }
        let Some(up) = self.up(to) else {
            return;
        };
        up.replica.step_message(m);
        self.after_call(to);
        self.drive(to);
    }

    // -----------------------------------------------------------------------------------------
    // Faults
    // -----------------------------------------------------------------------------------------

    fn up_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up.is_some())
            .collect()
    }

    /// One of `candidates` (not empty) to hurt: the leader of the highest term half the time
    /// when the swarm targets leaders.
    fn victim(&mut self, candidates: &[usize]) -> usize {
        let leader = candidates
            .iter()
            .copied()
            .filter(|&i| {
                self.nodes[i]
                    .up
                    .as_ref()
                    .is_some_and(|u| u.replica.is_leader())
            })
            .max_by_key(|&i| self.nodes[i].up.as_ref().map(|u| u.replica.term()));
        match leader {
            Some(l) if self.swarm.target_leader && self.rng.below(2) == 0 => l,
            _ => self.rng.pick(candidates),
        }
    }

    fn fault(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        let n = self.nodes.len();
        let ups = self.up_nodes();
        match self.rng.below(10) {
            0..=2 if self.swarm.crashes && !ups.is_empty() => {
                let i = self.victim(&ups);
                self.crash(i, "power loss");
            }
            3..=5 if self.swarm.partitions => {
                self.partition += 1;
                self.stats.partitions += 1;
                self.cut.clear();
                let kind = self.rng.below(3);
                let side: Vec<bool> = match kind {
                    0 => {
                        let all: Vec<usize> = (0..n).collect();
                        let lone = self.victim(&all);
                        (0..n).map(|i| i == lone).collect()
                    }
                    _ => (0..n).map(|_| self.rng.below(2) == 0).collect(),
                };
                for a in 0..n {
                    for b in 0..n {
                        let cut = match kind {
                            2 => a != b && self.rng.below(3) == 0, // one-way cuts
                            _ => side[a] != side[b],
                        };
                        if cut {
                            self.cut.insert((a, b));
                        }
                    }
                }
                let (generation, cut) = (self.partition, self.cut.clone());
                self.trace(|| format!("partition {generation}: cut {cut:?}"));
                let heal = self.now + self.rng.range(TICK, 30 * TICK);
                self.push(heal, Ev::Heal(generation));
            }
            6 if self.swarm.partitions => self.heal(self.partition),
            7 | 8 if self.swarm.disk_faults && !ups.is_empty() => {
                let i = self.rng.pick(&ups);
                let disk = self.nodes[i].disk.clone();
                if self.rng.below(2) == 0 {
                    disk.inject_fsync_error();
                } else {
                    let mode = match self.rng.below(3) {
                        0 => CrashMode::Clean,
                        1 => CrashMode::TearLast(self.rng.next()),
                        _ => CrashMode::Scramble(self.rng.next()),
                    };
                    disk.crash_at_op(self.rng.range(1, 8), mode);
                }
                self.nodes[i].armed = true;
                self.trace(|| format!("node {} disk fault armed", i + 1));
            }
            9 if self.swarm.pauses && !ups.is_empty() => {
                let i = self.victim(&ups);
                let ticks = self.rng.range(1, 3 * ELECTION_TICKS as u64);
                self.nodes[i].paused_until = self.now + ticks * TICK;
                self.stats.pauses += 1;
                self.trace(|| format!("node {} pauses for {ticks} ticks", i + 1));
            }
            _ => {}
        }
        let next = self.now + 1 + self.rng.below(2 * self.swarm.fault_every);
        self.push(next, Ev::Fault);
    }

    fn heal(&mut self, generation: u64) {
        if generation == self.partition && !self.cut.is_empty() {
            self.trace(|| format!("partition {generation} heals"));
            self.cut.clear();
        }
    }

    /// The end of the safety phase: the network heals and stops misbehaving, armed disk
    /// faults are defused (by a clean restart), every node is up.
    fn start_liveness(&mut self) {
        self.trace(|| "liveness: faults off, everything heals".to_string());
        self.phase = Phase::Settling {
            since: self.now,
            agreed_since: None,
        };
        self.cut.clear();
        self.swarm.drop = 0;
        self.swarm.duplicate = 0;
        self.swarm.reorder = 0;
        for c in std::mem::take(&mut self.resting) {
            self.push(self.now, Ev::Client(c));
        }
        for i in 0..self.nodes.len() {
            self.nodes[i].paused_until = 0;
            if self.nodes[i].armed {
                self.crash(i, "defusing a disk fault");
            }
            if self.nodes[i].up.is_none() {
                self.start(i);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Clients and the history
    // -----------------------------------------------------------------------------------------

    fn client(&mut self, c: usize) {
        match self.phase {
            Phase::Settling { .. } => self.push(self.now + TICK, Ev::Client(c)),
            Phase::Drain { .. } => {}
            Phase::Safety if self.history.len() >= SAFETY_OPS_MAX => self.resting.push(c),
            Phase::Safety | Phase::Live { .. } => self.send_request(c),
        }
    }

    fn send_request(&mut self, c: usize) {
        let now = self.now;
        let ups: Vec<usize> = self
            .up_nodes()
            .into_iter()
            .filter(|&i| self.nodes[i].paused_until <= now)
            .collect();
        if ups.is_empty() {
            self.push(self.now + TICK, Ev::Client(c));
            return;
        }
        let i = self.rng.pick(&ups);
        let k = self.rng.below(self.swarm.keys) as usize;
        let key = format!("/k{k}");
        let op = self.history.len();
        let value = format!("v{op}");
        let roll = self.rng.below(1000);
        let (w, cas, del) = (self.swarm.writes, self.swarm.cas, self.swarm.deletes);
        let (kind, cmd) = if roll < w {
            let cmd = Command::Set {
                key: key.clone(),
                dir: false,
                value: value.clone(),
                expire: None,
                refresh: false,
                at: 0,
            };
            (Kind::Write { value }, Some(cmd))
        } else if roll < w + cas {
            // Mostly the latest value written, sometimes an older one (or none yet).
            let recent = &self.recent[k];
            let back = self.rng.below(3) as usize;
            let expected = recent
                .len()
                .checked_sub(1 + back)
                .map_or_else(|| "v-none".to_string(), |j| recent[j].clone());
            let cmd = Command::CompareAndSwap {
                key: key.clone(),
                prev_value: expected.clone(),
                prev_index: 0,
                value: value.clone(),
                expire: None,
                refresh: false,
                at: 0,
            };
            let kind = Kind::Cas {
                expected,
                new: value,
                ok: None,
            };
            (kind, Some(cmd))
        } else if roll < w + cas + del {
            let cmd = Command::Delete {
                key: key.clone(),
                dir: false,
                recursive: false,
                at: 0,
            };
            (Kind::Delete { existed: None }, Some(cmd))
        } else {
            (Kind::Read { value: None }, None)
        };
        if let Kind::Write { value } | Kind::Cas { new: value, .. } = &kind {
            let recent = &mut self.recent[k];
            recent.push(value.clone());
            if recent.len() > 4 {
                recent.remove(0);
            }
        }
        let call = self.tick_clock();
        let run = self.nodes[i].run;
        let up = self.nodes[i].up.as_mut().expect("picked among up nodes");
        let local_read = cmd.is_none() && self.mutant == Mutant::LocalReads;
        let request = match &cmd {
            Some(cmd) => Some(up.replica.propose(cmd.clone(), op)),
            None if local_read => None,
            None => {
                up.replica.read(op);
                None
            }
        };
        self.trace(|| {
            format!(
                "op {op}: client {c} sends {kind:?} on {key} to node {}",
                i + 1
            )
        });
        self.history.push(Op {
            key,
            call,
            ret: None,
            kind,
        });
        let must_complete = matches!(self.phase, Phase::Live { .. });
        self.meta.push(Meta {
            client: c,
            node: i,
            run,
            request,
            cmd,
            must_complete,
        });
        self.stats.ops += 1;
        self.outstanding.insert(op, (i, run));
        if let Phase::Live { sent, .. } = &mut self.phase {
            *sent += 1;
        }
        if local_read {
            let value = self.read_store(i, op);
            self.complete(op, Some(value), None);
        }
        self.after_call(i);
        self.drive(i);
    }

    /// The value of `op`'s key in node `i`'s store.
    fn read_store(&self, i: usize, op: usize) -> Option<String> {
        let key = &self.history[op].key;
        let up = self.nodes[i]
            .up
            .as_ref()
            .expect("reads are answered by up nodes");
        match up.replica.store().view().get(key, false, false) {
            Ok(ev) => ev.node.value,
            Err(e) if e.code == ErrorCode::KeyNotFound => None,
            Err(e) => panic!("read of {key}: {e:?}"),
        }
    }

    /// The client of `op` goes on after a while.
    fn next_request(&mut self, op: usize) {
        let c = self.meta[op].client;
        let at = self.now + self.rng.below(self.swarm.think_max) + 1;
        self.push(at, Ev::Client(c));
    }

    /// An answer: a read's value, or whether a write succeeded.
    fn complete(&mut self, op: usize, read: Option<Option<String>>, ok: Option<bool>) {
        let held = self.outstanding.remove(&op);
        let m = &self.meta[op];
        assert_eq!(
            held,
            Some((m.node, m.run)),
            "op {op} answered twice or elsewhere"
        );
        let ret = self.tick_clock();
        let o = &mut self.history[op];
        o.ret = Some(ret);
        match &mut o.kind {
            Kind::Write { .. } => assert_eq!(ok, Some(true), "op {op}: a set failed"),
            Kind::Cas { ok: r, .. } => *r = ok,
            Kind::Delete { existed } => *existed = ok,
            Kind::Read { value } => *value = read.expect("a read answer"),
        }
        self.stats.answered += 1;
        let o = &self.history[op];
        self.trace(|| format!("op {op}: answered {o:?}"));
        self.next_request(op);
    }

    /// No answer: a timeout, or the node holding it crashed.
    fn unanswered(&mut self, op: usize, why: &str) {
        self.outstanding.remove(&op);
        assert!(
            !self.meta[op].must_complete,
            "op {op} sent after the cluster healed got no answer: {why}"
        );
        self.trace(|| format!("op {op}: no answer ({why})"));
        self.next_request(op);
    }

    // -----------------------------------------------------------------------------------------
    // The run
    // -----------------------------------------------------------------------------------------

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver(m) => self.deliver(m),
            Ev::Tick(i, run) => {
                let node = &mut self.nodes[i];
                if node.run != run {
                    return;
                }
                if node.paused_until > self.now {
                    let at = node.paused_until;
                    self.push(at, Ev::Tick(i, run));
                    return;
                }
                let Some(up) = node.up.as_mut() else {
                    return;
                };
                let expired = up.replica.tick();
                self.after_call(i);
                for op in expired {
                    self.stats.timeouts += 1;
                    self.unanswered(op, "timed out");
                }
                self.drive(i);
                let jitter = self.rng.below(self.nodes[i].period / 50 + 1);
                let next = self.now + self.nodes[i].period - self.nodes[i].period / 100 + jitter;
                if self.nodes[i].up.is_some() && self.nodes[i].run == run {
                    self.push(next, Ev::Tick(i, run));
                }
            }
            Ev::Client(c) => self.client(c),
            Ev::Fault => self.fault(),
            Ev::Heal(generation) => self.heal(generation),
            Ev::Restart(i, run) => {
                if self.nodes[i].run == run && self.nodes[i].up.is_none() {
                    self.start(i);
                }
            }
            Ev::Liveness => self.start_liveness(),
        }
    }

    /// Moves the liveness phase along; true once every replica converged.
    fn progress(&mut self) -> bool {
        let ticks_since = |since: u64, now: u64| (now - since) / TICK;
        match self.phase {
            Phase::Safety => false,
            Phase::Settling {
                since,
                agreed_since,
            } => {
                let ups: Vec<&Replica<usize>> = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.up.as_ref().map(|u| &u.replica))
                    .collect();
                let leader = ups[0].leader_id();
                let agreed = ups.len() == self.nodes.len()
                    && leader != 0
                    && ups.iter().all(|r| {
                        r.leader_id() == leader
                            && r.term() == ups[0].term()
                            && r.is_leader() == (r.id() == leader)
                    });
                let term = ups[0].term();
                let agreed_since = agreed.then(|| agreed_since.unwrap_or(self.now));
                if agreed_since.is_some_and(|t| ticks_since(t, self.now) >= STABLE_TICKS) {
                    self.trace(|| format!("liveness: node {leader} leads term {term}"));
                    self.phase = Phase::Live {
                        leader,
                        term,
                        sent: 0,
                    };
                } else {
                    self.phase = Phase::Settling {
                        since,
                        agreed_since,
                    };
                    assert!(
                        ticks_since(since, self.now) <= SETTLE_TICKS_MAX,
                        "no leader agreed on {SETTLE_TICKS_MAX} ticks after the network \
                         healed: {}",
                        self.roles()
                    );
                }
                false
            }
            Phase::Live { leader, term, sent } => {
                for n in &self.nodes {
                    let r = &n.up.as_ref().expect("all up while live").replica;
                    assert!(
                        r.term() == term && r.leader_id() == leader,
                        "the leader changed with no fault: {}",
                        self.roles()
                    );
                }
                if sent >= LIVE_OPS {
                    self.phase = Phase::Drain { since: self.now };
                }
                false
            }
            Phase::Drain { since } => {
                let end = self.log.len() as u64;
                let converged = self.outstanding.is_empty()
                    && self.nodes.iter().all(|n| {
                        n.up.as_ref().is_some_and(|u| {
                            u.replica.applied_index().0 == end && u.replica.commit_index() == end
                        })
                    });
                assert!(
                    converged
                        || ticks_since(since, self.now)
                            <= DRAIN_TICKS_MAX + self.swarm.request_timeout_ticks,
                    "the replicas did not converge: {} entries in the global log, {} requests \
                     unanswered; {}",
                    end,
                    self.outstanding.len(),
                    self.roles()
                );
                converged
            }
        }
    }

    fn roles(&self) -> String {
        let parts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| match &n.up {
                None => format!("node {} down", n.id),
                Some(u) => format!(
                    "node {} {:?} term {} leader {} commit {} applied {}",
                    n.id,
                    u.replica.role(),
                    u.replica.term(),
                    u.replica.leader_id(),
                    u.replica.commit_index(),
                    u.replica.applied_index()
                ),
            })
            .collect();
        parts.join("; ")
    }

    /// The final log replayed into a reference model of the keys (a map of strings) gives
    /// every answered write the result it got, and the stores' final values.
    fn check_model(&self) {
        let mut model: BTreeMap<String, String> = BTreeMap::new();
        let mut results: BTreeMap<(u64, u64), bool> = BTreeMap::new();
        for (at, g) in self.log.iter().enumerate() {
            if g.data.is_empty() {
                continue; // a leader's no-op
            }
            let (Some(id), Payload::Command(cmd)) = decode_payload(&g.data).expect("checked")
            else {
                panic!("raft index {}: not a client request", at + 1);
            };
            let ok = match cmd {
                Command::Set { key, value, .. } => {
                    model.insert(key, value);
                    true
                }
                Command::CompareAndSwap {
                    key,
                    prev_value,
                    value,
                    ..
                } => {
                    let swap = model.get(&key) == Some(&prev_value);
                    if swap {
                        model.insert(key, value);
                    }
                    swap
                }
                Command::Delete { key, .. } => model.remove(&key).is_some(),
                other => panic!("raft index {}: unexpected {other:?}", at + 1),
            };
            results.insert((id.member, id.seq), ok);
        }
        for (op, o) in self.history.iter().enumerate() {
            let (Some(r), Some(_)) = (self.meta[op].request, o.ret) else {
                continue;
            };
            let got = match &o.kind {
                Kind::Write { .. } => Some(true),
                Kind::Cas { ok, .. } => *ok,
                Kind::Delete { existed } => *existed,
                Kind::Read { .. } => None,
            };
            let want = results.get(&(r.member, r.seq)).copied();
            assert_eq!(
                got, want,
                "op {op}: answered {o:?}, the model says {want:?} at its place in the log"
            );
        }
        let store = self.nodes[0].up.as_ref().expect("all up").replica.store();
        for k in 0..self.swarm.keys {
            let key = format!("/k{k}");
            let value = store
                .view()
                .get(&key, false, false)
                .ok()
                .and_then(|e| e.node.value);
            assert_eq!(
                value.as_ref(),
                model.get(&key),
                "{key}: store and model differ"
            );
        }
    }

    /// After convergence: same applied index, byte-identical stores, a linearizable history.
    fn final_checks(&mut self) {
        let mut snapshots = Vec::new();
        for n in &self.nodes {
            let u = n.up.as_ref().expect("all up at the end");
            let mut bytes = Vec::new();
            u.replica.store().snapshot(&mut bytes);
            snapshots.push((n.id, u.replica.applied_index(), bytes));
        }
        for (id, applied, bytes) in &snapshots[1..] {
            assert_eq!(*applied, snapshots[0].1, "node {id}: applied index differs");
            assert!(
                *bytes == snapshots[0].2,
                "node {id}: store snapshot differs from node {}'s",
                snapshots[0].0
            );
        }
        self.check_model();
        // Unanswered requests: resolved with the final log.
        let mut history = Vec::with_capacity(self.history.len());
        for (op, o) in self.history.iter().enumerate() {
            let mut o = o.clone();
            if o.ret.is_none() {
                if let Some(r) = self.meta[op].request {
                    match self.applied_requests.get(&(r.member, r.seq)) {
                        Some(&index) => {
                            o.ret = Some(self.log[index as usize - 1].first_applied);
                            self.stats.unknown_applied += 1;
                        }
                        None => {
                            // It never took effect: nothing to check (an unanswered read is
                            // ignored; the op keeps its place so reports name op ids).
                            self.stats.unknown_dropped += 1;
                            o.kind = Kind::Read { value: None };
                        }
                    }
                }
            }
            history.push(o);
        }
        if let Err(e) = linearizability::check(&history) {
            panic!("the history is not linearizable (seed {}): {e}", self.seed);
        }
        self.stats.terms = self.leaders.len();
        self.stats.entries = self.log.len();
    }
}

fn run(seed: u64, mutant: Mutant) -> Stats {
    let mut w = World::new(seed, mutant);
    w.trace(|| format!("seed {seed}: {:?}", w.swarm));
    for i in 0..w.nodes.len() {
        w.start(i);
    }
    for c in 0..w.swarm.clients {
        let at = w.rng.below(TICK);
        w.push(at, Ev::Client(c));
    }
    if w.swarm.fault_every > 0 {
        let at = w.rng.below(2 * w.swarm.fault_every);
        w.push(at, Ev::Fault);
    }
    w.push(SAFETY_TICKS * TICK, Ev::Liveness);
    loop {
        let Some(((at, _), ev)) = w.queue.pop_first() else {
            panic!("the event queue ran dry");
        };
        w.now = at;
        w.handle(ev);
        if w.progress() {
            break;
        }
    }
    w.final_checks();
    w.stats
}

fn run_reporting(seed: u64) -> Stats {
    match std::panic::catch_unwind(|| run(seed, Mutant::None)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("simulation failed: reproduce with SIM_SEED={seed}");
            std::panic::resume_unwind(e)
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number: {v}")),
    )
}

/// `0..CI_SEEDS`, or what `SIM_SEEDS` says (`n`: `0..n`; `a..b`).
fn seed_range() -> std::ops::Range<u64> {
    let Ok(v) = std::env::var("SIM_SEEDS") else {
        return 0..CI_SEEDS;
    };
    let num = |s: &str| -> u64 {
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("SIM_SEEDS is `n` or `a..b`: {v}"))
    };
    match v.split_once("..") {
        Some((a, b)) => num(a)..num(b),
        None => 0..num(&v),
    }
}

fn run_all(seeds: impl IntoIterator<Item = u64>) -> Stats {
    let mut total = Stats::default();
    let mut n = 0;
    for seed in seeds {
        let s = run_reporting(seed);
        eprintln!("seed {seed}: {s:?}");
        total.add(&s);
        n += 1;
    }
    eprintln!("{n} seeds: {total:?}");
    total
}

/// The seeds of tests/sim_seeds.txt: one a line, `#` starts a comment.
fn listed_seeds() -> Vec<u64> {
    include_str!("sim_seeds.txt")
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().unwrap_or_else(|_| panic!("sim_seeds.txt: {l:?}")))
        .collect()
}

#[test]
fn listed_seeds_keep_every_invariant() {
    if std::env::var_os("SIM_SEED").is_some() {
        return; // the seed range test replays it
    }
    run_all(listed_seeds());
}

#[test]
fn seed_range_keeps_every_invariant() {
    if let Some(seed) = env_u64("SIM_SEED") {
        eprintln!("seed {seed}: {:?}", run_reporting(seed));
        return;
    }
    let total = run_all(seed_range());
    if std::env::var_os("SIM_SEEDS").is_none() {
        // CI's seeds must exercise what they are there for (about twice these figures).
        let t = &total;
        assert!(
            t.crashes > 1000
                && t.io_crashes > 200
                && t.torn_tails > 40
                && t.partitions > 700
                && t.pauses > 150
                && t.duplicated > 10_000
                && t.timeouts > 1000
                && t.unknown_applied > 100
                && t.terms > 2 * CI_SEEDS as usize,
            "{t:?}"
        );
    }
}

/// Runs seeds of a broken cluster until one fails with a message of one of the checkers
/// (`caught`); other failures (raft-rs's own assertions) are skipped. Returns the seed.
fn caught_by(mutant: Mutant, caught: &[&str]) -> Option<u64> {
    (0..MUTANT_SEEDS).find(
        |&seed| match std::panic::catch_unwind(|| run(seed, mutant)) {
            Ok(_) => false,
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                caught.iter().any(|c| msg.contains(c))
            }
        },
    )
}

#[test]
fn the_checkers_catch_a_broken_cluster() {
    if std::env::var_os("SIM_SEED").is_some() {
        return;
    }
    assert!(
        caught_by(Mutant::LocalReads, &["not linearizable"]).is_some(),
        "local (non-quorum) reads went unnoticed"
    );
    let lost = [
        "two leaders in term",
        "diverge",
        "not linearizable",
        "differs",
    ];
    assert!(
        caught_by(Mutant::Amnesia, &lost).is_some(),
        "replicas that forget their log went unnoticed"
    );
}
