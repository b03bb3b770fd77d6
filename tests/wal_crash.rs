//! Crash consistency of the log on the simulated disk. Each seed drives random batches of
//! appends (some truncating the suffix), hard states, syncs, compactions, crashes between
//! operations and inside the log's own I/O (clean, tearing the last write, or persisting random
//! sectors), and fsync failures. After every crash the log is reopened and must hold the state
//! of the last acknowledged sync plus some prefix of what was written after it, never less.
//!
//! A failing seed prints `reproduce with WAL_SEED=<seed>`; `WAL_SEED=<seed> cargo test -p ringd
//! --test wal_crash` replays just that seed.

use std::path::Path;

use ringd::wal::sim::{CrashMode, SimStorage};
use ringd::wal::{HardState, LogEntry, Recovered, Wal, WalError};

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

const DIR: &str = "/sim/data/member/wal";

struct Run {
    rng: Rng,
    sim: SimStorage,
    seg: u64,
    wal: Option<Wal<SimStorage>>,
    /// The snapshot index (durable by fiat: a real snapshot file is synced before compaction).
    snap: u64,
    /// Entries with index > snap, as the Wal holds them in memory.
    model: Vec<LogEntry>,
    /// The model as of the last successful sync, and its hard state.
    acked: Vec<LogEntry>,
    acked_hs: HardState,
    /// Entries appended since the last successful sync, in order (each may truncate).
    stream: Vec<LogEntry>,
    /// The hard state of a sync that did not return Ok, with the model it would have covered.
    inflight: Option<(HardState, Vec<LogEntry>)>,
    hs: HardState,
    term: u64,
    step: usize,
    crashes: usize,
    /// Recoveries that reported a torn tail, and that kept more than the acknowledged log.
    torn: usize,
    beyond_ack: usize,
}

fn apply(log: &mut Vec<LogEntry>, snap: u64, e: &LogEntry) {
    log.truncate((e.index - snap - 1) as usize);
    log.push(e.clone());
}

impl Run {
    fn wal(&mut self) -> &mut Wal<SimStorage> {
        self.wal.as_mut().expect("wal open")
    }

    fn last(&self) -> u64 {
        self.snap + self.model.len() as u64
    }

    fn open(&mut self) -> Recovered {
        let (wal, rec) = Wal::open_with(self.sim.clone(), Path::new(DIR), self.snap, self.seg)
            .unwrap_or_else(|e| panic!("step {}: reopen failed: {e}", self.step));
        self.wal = Some(wal);
        rec
    }

    fn append(&mut self) -> Result<(), WalError> {
        let n = match self.rng.below(10) {
            0 => 64,
            1 => self.rng.range(100, 256),
            _ => self.rng.range(1, 8),
        };
        let mut start = self.last() + 1;
        // Sometimes a new leader overwrites the uncommitted suffix.
        if self.rng.below(8) == 0 && self.last() > self.hs.commit.max(self.snap) {
            start = self
                .rng
                .range(self.hs.commit.max(self.snap) + 1, self.last());
            self.term += 1;
        }
        let term = self.term;
        let es: Vec<LogEntry> = (0..n)
            .map(|k| {
                let len = match self.rng.below(4) {
                    0 => 0,
                    1 => self.rng.range(200, 1100),
                    _ => self.rng.range(1, 100),
                };
                let salt = self.rng.next() as u8;
                LogEntry {
                    index: start + k,
                    term,
                    kind: (k % 2) as u8,
                    data: (0..len).map(|i| salt.wrapping_add(i as u8)).collect(),
                }
            })
            .collect();
        for e in &es {
            apply(&mut self.model, self.snap, e);
            self.stream.push(e.clone());
        }
        self.wal().append(&es)
    }

    fn sync(&mut self) -> Result<(), WalError> {
        if self.rng.below(2) == 0 {
            let commit = self
                .rng
                .range(self.hs.commit, self.last().max(self.hs.commit));
            self.hs = HardState {
                term: self.term,
                vote: self.rng.below(3),
                commit,
            };
            let hs = self.hs;
            self.wal().set_hard_state(hs)?;
        }
        self.inflight = Some((self.hs, self.model.clone()));
        self.wal().sync()?;
        self.inflight = None;
        self.acked = self.model.clone();
        self.acked_hs = self.hs;
        self.stream.clear();
        Ok(())
    }

    fn crash_mode(&mut self) -> CrashMode {
        match self.rng.below(3) {
            0 => CrashMode::Clean,
            1 => CrashMode::TearLast(self.rng.next()),
            _ => CrashMode::Scramble(self.rng.next()),
        }
    }

    /// After a crash: reopen and check the recovered log against what was acknowledged.
    fn recover(&mut self) {
        self.crashes += 1;
        self.wal = None;
        let rec = self.open();
        let got = &rec.entries;
        self.torn += rec.torn_tail.is_some() as usize;
        self.beyond_ack += (*got != self.acked) as usize;
        // The acknowledged state plus some prefix of the stream written after it.
        let mut state = self.acked.clone();
        let mut ok = *got == state;
        for e in &self.stream {
            if ok {
                break;
            }
            apply(&mut state, self.snap, e);
            ok = *got == state;
        }
        assert!(
            ok,
            "step {}: recovered {} entries (last {:?}), acknowledged {} (last {:?}); not the \
             acknowledged log plus a prefix of the {} entries written after it",
            self.step,
            got.len(),
            got.last().map(|e| (e.index, e.term)),
            self.acked.len(),
            self.acked.last().map(|e| (e.index, e.term)),
            self.stream.len()
        );
        let hs_ok = rec.hard_state == self.acked_hs
            || matches!(&self.inflight, Some((hs, model)) if *hs == rec.hard_state && model == got);
        assert!(
            hs_ok,
            "step {}: recovered hard state {:?}, acknowledged {:?}, in flight {:?}",
            self.step,
            rec.hard_state,
            self.acked_hs,
            self.inflight.as_ref().map(|x| x.0)
        );
        self.model = rec.entries;
        self.acked = self.model.clone();
        self.hs = rec.hard_state;
        self.acked_hs = rec.hard_state;
        self.stream.clear();
        self.inflight = None;
        self.term = self.term.max(self.model.last().map_or(0, |e| e.term));
        let last = self.last();
        assert_eq!(self.wal().last_index(), last, "step {}", self.step);
    }

    fn check_reads(&mut self) {
        let (lo, hi) = (self.snap + 1, self.last() + 1);
        let got = self.wal.as_ref().expect("wal open").entries(lo, hi);
        match got {
            Ok(got) => assert!(
                got == self.model,
                "step {}: entries() disagrees with the model",
                self.step
            ),
            Err(e) => panic!("step {}: entries({lo}, {hi}): {e}", self.step),
        }
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=49 => {
                if let Err(e) = self.append() {
                    panic!("step {}: append: {e}", self.step);
                }
            }
            50..=79 => {
                if let Err(e) = self.sync() {
                    panic!("step {}: sync: {e}", self.step);
                }
                if self.rng.below(4) == 0 {
                    self.check_reads();
                }
            }
            80..=86 => {
                // A snapshot at some committed index, then compaction.
                let commit = self.acked_hs.commit;
                if commit > self.snap {
                    let snap = self.rng.range(self.snap, commit);
                    let drop = (snap - self.snap) as usize;
                    self.snap = snap;
                    self.model.drain(..drop);
                    self.acked.drain(..drop.min(self.acked.len()));
                    let snap = self.snap;
                    self.stream.retain(|e| e.index > snap);
                    if let Some((_, m)) = &mut self.inflight {
                        m.drain(..drop.min(m.len()));
                    }
                    if let Err(e) = self.wal().compact(snap) {
                        panic!("step {}: compact: {e}", self.step);
                    }
                }
            }
            87..=92 => {
                let mode = self.crash_mode();
                self.sim.crash(mode);
                self.recover();
            }
            93..=97 => {
                // Power loss in the middle of the log's own I/O.
                let mode = self.crash_mode();
                let at = self.rng.range(1, 8);
                self.sim.crash_at_op(at, mode);
                let r = self.append().and_then(|()| self.sync());
                if r.is_ok() {
                    self.sim.crash(mode);
                }
                self.recover();
            }
            _ => {
                // fsync failure: reported, fatal, then the process restarts.
                if self.append().is_err() {
                    panic!("step {}: append before fsync failure", self.step);
                }
                self.sim.inject_fsync_error();
                match self.sync() {
                    Err(WalError::Io(_)) => {}
                    other => panic!(
                        "step {}: sync with a failing fsync gave {other:?}",
                        self.step
                    ),
                }
                assert!(matches!(self.wal().sync(), Err(WalError::Poisoned)));
                let mode = self.crash_mode();
                self.sim.crash(mode);
                self.recover();
            }
        }
    }
}

struct Stats {
    crashes: usize,
    torn: usize,
    beyond_ack: usize,
}

fn run(seed: u64) -> Stats {
    let mut rng = Rng::new(seed);
    let seg = [4096, 8192, 65536][rng.below(3) as usize];
    let mut r = Run {
        rng,
        sim: SimStorage::new(),
        seg,
        wal: None,
        snap: 0,
        model: Vec::new(),
        acked: Vec::new(),
        acked_hs: HardState::default(),
        stream: Vec::new(),
        inflight: None,
        hs: HardState::default(),
        term: 1,
        step: 0,
        crashes: 0,
        torn: 0,
        beyond_ack: 0,
    };
    let rec = r.open();
    assert_eq!(rec, Recovered::default());
    for step in 0..400 {
        r.step = step;
        r.step();
    }
    // A final clean restart sees exactly the synced log.
    if r.sync().is_ok() {
        r.sim.crash(CrashMode::Clean);
        r.recover();
        r.check_reads();
    }
    Stats {
        crashes: r.crashes,
        torn: r.torn,
        beyond_ack: r.beyond_ack,
    }
}

fn run_reporting(seed: u64) -> Stats {
    match std::panic::catch_unwind(|| run(seed)) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("wal crash test failed: reproduce with WAL_SEED={seed}");
            std::panic::resume_unwind(e)
        }
    }
}

const SEEDS: [u64; 48] = [
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    42,
    99,
    1000,
    4242,
    31337,
    65535,
    77777,
    100_003,
    123_456,
    271_828,
    314_159,
    999_983,
    1_000_003,
    2_718_281,
    3_141_592,
    8_675_309,
    0xdead_beef,
    0xcafe_babe,
    0x1234_5678,
    0x0bad_f00d,
    0xfeed_face,
    0x8bad_f00d,
    0xface_b00c,
    0xd15e_a5e5,
];

#[test]
fn crash_recovery_keeps_every_acknowledged_entry() {
    if let Ok(s) = std::env::var("WAL_SEED") {
        let seed: u64 = s.trim().parse().expect("WAL_SEED is a number");
        let s = run_reporting(seed);
        eprintln!(
            "seed {seed}: {} crashes recovered, {} torn tails, {} kept unacknowledged entries",
            s.crashes, s.torn, s.beyond_ack
        );
        return;
    }
    let (mut crashes, mut torn, mut beyond) = (0, 0, 0);
    for seed in SEEDS {
        let s = run_reporting(seed);
        crashes += s.crashes;
        torn += s.torn;
        beyond += s.beyond_ack;
    }
    eprintln!(
        "{crashes} crashes recovered, {torn} torn tails, {beyond} kept unacknowledged entries"
    );
    // The seeds must exercise every path.
    assert!(
        crashes > 500 && torn > 50 && beyond > 20,
        "{crashes} {torn} {beyond}"
    );
}

#[test]
fn fsync_failure_is_an_error_and_the_data_is_not_acknowledged() {
    let sim = SimStorage::new();
    let dir = Path::new(DIR);
    let (mut wal, _) = Wal::open_with(sim.clone(), dir, 0, 8192).unwrap();
    let e = |i: u64| LogEntry {
        index: i,
        term: 1,
        kind: 0,
        data: vec![i as u8; 10],
    };
    wal.append(&[e(1), e(2)]).unwrap();
    wal.sync().unwrap();
    wal.append(&[e(3)]).unwrap();
    sim.inject_fsync_error();
    assert!(matches!(wal.sync(), Err(WalError::Io(_))));
    assert!(matches!(wal.append(&[e(4)]), Err(WalError::Poisoned)));
    sim.crash(CrashMode::Clean);
    drop(wal);
    let (_, rec) = Wal::open_with(sim.clone(), dir, 0, 8192).unwrap();
    assert_eq!(rec.entries, vec![e(1), e(2)]);
}
