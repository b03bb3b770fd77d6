//! Unit tests of one replica driven through its `Io` with an in-memory log. Clusters of
//! replicas over a simulated network are tested in tests/sim.rs.

use super::*;

fn set(key: &str, value: &str) -> Command {
    Command::Set {
        key: key.to_string(),
        dir: false,
        value: value.to_string(),
        expire: None,
        refresh: false,
        at: 0,
    }
}

fn no_snapshots(_: &[u8]) -> Result<SnapshotData, String> {
    Err("no snapshots in this test".to_string())
}

fn one_member(id: u64) -> Membership {
    Membership::initial(
        vec![Member {
            id,
            name: "default".to_string(),
            peer_urls: vec!["http://127.0.0.1:2380".to_string()],
            client_urls: vec![],
        }],
        "etcd-cluster",
    )
}

fn bootstrap(entries: Vec<LogEntry>, hard_state: HardState) -> Replica<u64> {
    let r = Replica::new(Bootstrap {
        id: 1,
        membership: one_member(1),
        store: Store::new(),
        auth: Default::default(),
        snapshot_index: 0,
        snapshot_term: 0,
        entries,
        hard_state,
        election_tick: 10,
        heartbeat_tick: 1,
        request_timeout_ticks: 70,
        seq_start: 0,
        decode_snapshot: no_snapshots,
    });
    r.unwrap_or_else(|e| panic!("bootstrap: {e}"))
}

/// An in-memory log; a single voter sends no messages.
struct VecLog<'a> {
    log: &'a mut Vec<LogEntry>,
    hs: &'a mut HardState,
}

impl Io for VecLog<'_> {
    type Error = ();
    fn send(&mut self, messages: Vec<Message>) {
        assert!(messages.is_empty(), "a single voter sends nothing");
    }
    fn persist(&mut self, entries: &[LogEntry], h: Option<HardState>, _: bool) -> Result<(), ()> {
        for e in entries {
            self.log.truncate((e.index - 1) as usize);
            self.log.push(e.clone());
        }
        if let Some(h) = h {
            *self.hs = h;
        }
        Ok(())
    }
    fn persist_snapshot(&mut self, _: u64, _: u64, _: &[u8]) -> Result<(), ()> {
        panic!("a single voter installs no snapshot")
    }
}

/// Steps until raft is idle, persisting into `log`; returns the applied tokens in order.
fn drive(r: &mut Replica<u64>, log: &mut Vec<LogEntry>, hs: &mut HardState) -> Vec<u64> {
    let mut tokens = Vec::new();
    loop {
        let out = r
            .step(&mut VecLog {
                log: &mut *log,
                hs: &mut *hs,
            })
            .unwrap_or_else(|()| panic!("persist failed"));
        let idle = out.applied.is_empty() && out.persisted_entries == 0 && out.reads.is_empty();
        tokens.extend(out.applied.into_iter().map(|a| {
            assert!(a.result.is_ok(), "write {} failed", a.token);
            a.token
        }));
        tokens.extend(out.reads);
        if idle {
            return tokens;
        }
    }
}

#[test]
fn applies_in_order_trims_its_memory_log_and_recovers_from_the_persisted_one() {
    let mut log = Vec::new();
    let mut hs = HardState::default();
    let mut r = bootstrap(Vec::new(), HardState::default());
    drive(&mut r, &mut log, &mut hs);
    assert!(r.is_leader());
    let n = 5 * RAFT_MEM_LOG_KEEP;
    let mut applied = Vec::new();
    for i in 0..n {
        r.propose(set(&format!("/k{}", i % 100), &i.to_string()), i);
        if i % 97 == 0 {
            applied.extend(drive(&mut r, &mut log, &mut hs));
        }
    }
    applied.extend(drive(&mut r, &mut log, &mut hs));
    assert_eq!(applied, (0..n).collect::<Vec<_>>());
    // raft's in-memory log keeps a window, not everything since the start.
    let first = r.node.store().first_index().unwrap_or(0);
    let applied_index = r.applied_index().0;
    assert!(
        first > applied_index - 2 * RAFT_MEM_LOG_KEEP,
        "first {first}"
    );
    assert!(
        first <= applied_index - RAFT_MEM_LOG_KEEP + 1,
        "first {first}"
    );
    // Writes keep working after the trim, and a replica rebuilt from the persisted log
    // (nothing in memory) reaches the same store.
    r.propose(set("/after", "trim"), n);
    assert_eq!(drive(&mut r, &mut log, &mut hs), vec![n]);
    let mut again = bootstrap(log.clone(), hs);
    let mut log2 = log.clone();
    let mut hs2 = hs;
    drive(&mut again, &mut log2, &mut hs2);
    assert_eq!(again.store().index(), r.store().index());
    for k in ["/k0", "/k99", "/after"] {
        let a = again
            .store()
            .view()
            .get(k, false, false)
            .map(|e| e.node.value);
        let b = r.store().view().get(k, false, false).map(|e| e.node.value);
        assert_eq!(a, b, "{k}");
    }
    // Shrinking the rebuilt replica's in-memory log keeps its window (less the boundary
    // entry) and its last entry, and writes go on.
    let bounds = |r: &Replica<u64>| {
        let s = r.node.store();
        (s.first_index().unwrap_or(0), s.last_index().unwrap_or(0))
    };
    let (first, last) = bounds(&again);
    again
        .shrink_mem_log()
        .unwrap_or_else(|e| panic!("shrink: {e}"));
    assert_eq!(bounds(&again), (first + 1, last));
    // The restarted member's sequence numbers start where it is told (the wall clock in
    // the server) so no old entry can answer a new request.
    again.next_seq = 1 << 40;
    again.propose(set("/after", "shrink"), n + 1);
    assert_eq!(drive(&mut again, &mut log2, &mut hs2), vec![n + 1]);
}

#[test]
fn replay_applies_in_bounded_rounds_trimming_as_it_goes_and_the_bound_is_lifted_after() {
    // A log of ~4 MiB: 40k entries with values of ~100 bytes.
    let mut log = Vec::new();
    let mut hs = HardState::default();
    let mut r = bootstrap(Vec::new(), HardState::default());
    drive(&mut r, &mut log, &mut hs);
    let value = "v".repeat(100);
    let n = 40_000u64;
    for i in 0..n {
        r.propose(set(&format!("/k{i}"), &value), i);
        if i % 499 == 0 {
            drive(&mut r, &mut log, &mut hs);
        }
    }
    drive(&mut r, &mut log, &mut hs);
    // A step applies the committed entries of its Ready and of the light Ready after
    // `advance`, each bounded.
    let entry_bytes = log.last().map_or(0, |e| e.data.len()) as u64;
    let per_step_max = 2 * (REPLAY_READY_BYTES_MAX / entry_bytes + 1);

    // The restart: one step at a time.
    let mut again = bootstrap(log.clone(), hs);
    let (mut log2, mut hs2) = (log.clone(), hs);
    let mut rounds = Vec::new();
    let mut trimmed_during_replay = false;
    loop {
        let before = again.applied_index().0;
        let out = again
            .step(&mut VecLog {
                log: &mut log2,
                hs: &mut hs2,
            })
            .unwrap_or_else(|()| panic!("persist failed"));
        let applied = again.applied_index().0 - before;
        if applied == 0 && out.persisted_entries == 0 {
            break;
        }
        rounds.push(applied);
        let first = again.node.store().first_index().unwrap_or(0);
        trimmed_during_replay |= again.applied_index().0 < log.len() as u64 && first > 1;
    }
    // Everything applied (and the new term's empty entry after it).
    assert!(again.applied_index() > r.applied_index());
    assert_eq!(again.store().index(), r.store().index());
    let busy: Vec<u64> = rounds.iter().copied().filter(|&a| a > 0).collect();
    assert!(busy.len() >= 3, "rounds {rounds:?}");
    assert!(
        busy.iter().all(|&a| a <= per_step_max),
        "rounds {rounds:?}, at most {per_step_max} each"
    );
    assert!(
        trimmed_during_replay,
        "raft's log kept every replayed entry"
    );

    // Once replayed, a Ready is no longer bounded: a batch of ~2 MiB applies in one step.
    again
        .shrink_mem_log()
        .unwrap_or_else(|e| panic!("shrink: {e}"));
    again.next_seq = 1 << 40;
    for i in 0..20_000 {
        again.propose(set(&format!("/b{i}"), &value), i);
    }
    let before = again.applied_index().0;
    let out = again
        .step(&mut VecLog {
            log: &mut log2,
            hs: &mut hs2,
        })
        .unwrap_or_else(|()| panic!("persist failed"));
    assert_eq!(out.applied.len(), 20_000);
    assert_eq!(again.applied_index().0 - before, 20_000);
}

#[test]
fn quorum_reads_are_answered_after_the_writes_before_them_and_requests_time_out() {
    let mut log = Vec::new();
    let mut hs = HardState::default();
    let mut r = bootstrap(Vec::new(), HardState::default());
    drive(&mut r, &mut log, &mut hs);
    r.propose(set("/a", "1"), 1);
    r.read(2);
    r.read(3);
    assert_eq!(drive(&mut r, &mut log, &mut hs), vec![1, 2, 3]);
    // A replica that cannot commit (it believes in a cluster of two, and the other never
    // answers) times its requests out after exactly request_timeout_ticks.
    let mut two = one_member(1);
    two.members.insert(
        2,
        Member {
            id: 2,
            name: "other".to_string(),
            peer_urls: vec!["http://127.0.0.2:2380".to_string()],
            client_urls: vec![],
        },
    );
    let mut lonely: Replica<u64> = Replica::new(Bootstrap {
        id: 1,
        membership: two,
        store: Store::new(),
        auth: Default::default(),
        snapshot_index: 0,
        snapshot_term: 0,
        entries: Vec::new(),
        hard_state: HardState::default(),
        election_tick: 10,
        heartbeat_tick: 1,
        request_timeout_ticks: 70,
        seq_start: 0,
        decode_snapshot: no_snapshots,
    })
    .unwrap_or_else(|e| panic!("bootstrap: {e}"));
    lonely.propose(set("/a", "1"), 7);
    lonely.read(8);
    let mut expired = Vec::new();
    for tick in 1..=70 {
        let mut sink = Sink;
        let out = lonely.step(&mut sink).unwrap_or_else(|()| panic!("step"));
        assert!(out.applied.is_empty() && out.reads.is_empty());
        expired.extend(lonely.tick());
        if tick < 70 {
            assert!(expired.is_empty(), "expired early at tick {tick}");
        }
    }
    expired.sort_unstable();
    assert_eq!(expired, vec![7, 8]);
    assert_eq!(lonely.pending_count(), 0);
}

/// Persists nothing anyone reads, drops every message (a member cut off from its peers).
struct Sink;

impl Io for Sink {
    type Error = ();
    fn send(&mut self, _: Vec<Message>) {}
    fn persist(&mut self, _: &[LogEntry], _: Option<HardState>, _: bool) -> Result<(), ()> {
        Ok(())
    }
    fn persist_snapshot(&mut self, _: u64, _: u64, _: &[u8]) -> Result<(), ()> {
        Ok(())
    }
}

#[test]
fn payloads_round_trip_and_old_entries_decode_as_commands() {
    let id = RequestId {
        member: 0xabc,
        seq: 42,
    };
    for p in [
        Payload::Command(set("/x", "y")),
        Payload::Publish {
            name: "m1".to_string(),
            client_urls: vec!["http://127.0.0.1:2379".to_string()],
        },
        Payload::UpdatePeers {
            id: 7,
            peer_urls: vec!["http://127.0.0.1:2390".to_string()],
        },
    ] {
        let mut b = Vec::new();
        encode_payload(id, &p, &mut b);
        assert_eq!(decode_payload(&b), Ok((Some(id), p)));
    }
    let mut old = Vec::new();
    set("/x", "y").encode(&mut old);
    assert_eq!(
        decode_payload(&old),
        Ok((None, Payload::Command(set("/x", "y"))))
    );
    for cut in 0..18 {
        let mut b = Vec::new();
        encode_payload(id, &Payload::Command(set("/x", "y")), &mut b);
        b.truncate(cut);
        if cut > 0 {
            assert!(decode_payload(&b).is_err(), "cut at {cut}");
        }
    }
}

#[test]
fn a_forwarded_proposal_that_arrives_twice_is_appended_once() {
    let mut log = Vec::new();
    let mut hs = HardState::default();
    let mut r = bootstrap(Vec::new(), HardState::default());
    drive(&mut r, &mut log, &mut hs);
    let mut data = Vec::new();
    let id = RequestId { member: 2, seq: 7 };
    encode_payload(id, &Payload::Command(set("/once", "1")), &mut data);
    let mut m = Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgPropose);
    m.from = 2;
    m.to = 1;
    m.set_entries(
        vec![Entry {
            data: data.into(),
            ..Default::default()
        }]
        .into(),
    );
    r.step_message(m.clone());
    r.step_message(m);
    drive(&mut r, &mut log, &mut hs);
    assert_eq!(r.store().index().0, 1, "applied twice");
}
