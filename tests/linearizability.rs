//! Tests of the linearizability checker (tests/support/linearizability.rs): it accepts valid
//! histories (sequential, overlapping, with unanswered operations, generated ones) and rejects
//! corrupted ones (a stale read, a lost acknowledged write, a compare-and-swap against a value
//! that was never there, two swaps from the same value, a generated history with one read
//! changed), it agrees with trying every order on thousands of small random histories (so its
//! reductions for unanswered operations are exact), and it gives up as "inconclusive" instead
//! of searching forever.

#[path = "support/linearizability.rs"]
mod linearizability;
#[path = "support/rng.rs"]
mod rng;

use linearizability::{check, check_with_budget, Kind, Op};
use rng::Rng;

fn op(key: &str, call: u64, ret: Option<u64>, kind: Kind) -> Op {
    Op {
        key: key.to_string(),
        call,
        ret,
        kind,
    }
}

fn write(call: u64, ret: Option<u64>, value: &str) -> Op {
    let value = value.to_string();
    op("/k", call, ret, Kind::Write { value })
}

fn cas(call: u64, ret: Option<u64>, expected: &str, new: &str, ok: bool) -> Op {
    let (expected, new) = (expected.to_string(), new.to_string());
    let ok = ret.map(|_| ok);
    op("/k", call, ret, Kind::Cas { expected, new, ok })
}

fn read(call: u64, ret: u64, value: Option<&str>) -> Op {
    let value = value.map(str::to_string);
    op("/k", call, Some(ret), Kind::Read { value })
}

fn delete(call: u64, ret: Option<u64>, existed: bool) -> Op {
    let existed = ret.map(|_| existed);
    op("/k", call, ret, Kind::Delete { existed })
}

fn on(key: &str, mut o: Op) -> Op {
    o.key = key.to_string();
    o
}

fn assert_ok(history: &[Op]) {
    if let Err(e) = check(history) {
        panic!("a linearizable history was rejected: {e}");
    }
}

fn assert_rejected(history: &[Op]) -> String {
    match check(history) {
        Ok(()) => panic!("a non-linearizable history was accepted: {history:#?}"),
        Err(e) => {
            assert!(e.starts_with("not linearizable"), "{e}");
            e
        }
    }
}

#[test]
fn sequential_histories_follow_etcd_semantics() {
    assert_ok(&[]);
    assert_ok(&[
        read(0, 1, None),
        cas(2, Some(3), "a", "b", false), // absent key: the compare fails
        delete(4, Some(5), false),        // absent key: not found
        write(6, Some(7), "a"),
        read(8, 9, Some("a")),
        cas(10, Some(11), "a", "b", true),
        cas(12, Some(13), "a", "c", false),
        read(14, 15, Some("b")),
        delete(16, Some(17), true),
        read(18, 19, None),
        write(20, Some(21), "a"),
        read(22, 23, Some("a")),
    ]);
}

#[test]
fn overlapping_operations_may_take_effect_in_either_order() {
    // Two overlapping writes, then reads after both: both orders are fine, but once a read
    // has seen one order, a later read must see the same.
    let writes = [write(0, Some(10), "1"), write(5, Some(15), "2")];
    for v in ["1", "2"] {
        let mut h = writes.to_vec();
        h.extend([read(16, 20, Some(v)), read(21, 30, Some(v))]);
        assert_ok(&h);
    }
    let mut h = writes.to_vec();
    h.extend([read(16, 20, Some("1")), read(21, 30, Some("2"))]);
    assert_rejected(&h);
    // A read overlapping a write may see the old or the new value, and reads that overlap
    // each other may see it flip once.
    assert_ok(&[
        write(0, Some(1), "old"),
        write(10, Some(20), "new"),
        read(11, 30, Some("new")),
        read(12, 31, Some("old")),
    ]);
    // Equal times count as concurrent: a read called when the write returns may still see
    // the old value; one called after may not.
    assert_ok(&[
        write(0, Some(1), "old"),
        write(5, Some(10), "new"),
        read(10, 12, Some("old")),
    ]);
    assert_rejected(&[
        write(0, Some(1), "old"),
        write(5, Some(10), "new"),
        read(11, 12, Some("old")),
    ]);
}

#[test]
fn unanswered_operations_take_effect_after_their_call_or_never() {
    // A write that timed out may never happen...
    assert_ok(&[
        write(0, Some(1), "a"),
        write(2, None, "b"),
        read(3, 4, Some("a")),
    ]);
    // ...or happen much later (after a read that did not see it)...
    assert_ok(&[
        write(0, Some(1), "a"),
        write(2, None, "b"),
        read(3, 4, Some("a")),
        read(50, 60, Some("b")),
    ]);
    // ...but only once: seen, it cannot be unseen.
    assert_rejected(&[
        write(0, Some(1), "a"),
        write(2, None, "b"),
        read(3, 4, Some("b")),
        read(5, 6, Some("a")),
    ]);
    // And never before it was sent.
    assert_rejected(&[
        write(0, Some(1), "a"),
        read(3, 4, Some("b")),
        write(5, None, "b"),
    ]);
    // An unanswered compare-and-swap or delete takes effect as the register says.
    assert_ok(&[
        write(0, Some(1), "a"),
        cas(2, None, "a", "b", false),
        read(3, 4, Some("b")),
        delete(5, None, false),
        read(6, 7, None),
    ]);
    assert_rejected(&[
        write(0, Some(1), "a"),
        cas(2, None, "x", "b", false),
        read(3, 4, Some("b")),
    ]);
    // Unanswered reads say nothing.
    let mut lost_read = read(2, 3, Some("never written"));
    lost_read.ret = None;
    assert_ok(&[write(0, Some(1), "a"), lost_read]);
}

#[test]
fn stale_reads_are_rejected() {
    let e = assert_rejected(&[
        write(0, Some(1), "a"),
        write(2, Some(3), "b"),
        read(4, 5, Some("a")),
    ]);
    // The report lists the key's operations and how far the search got.
    assert!(e.contains("#2 [4, 5] read -> Some(\"a\")"), "{e}");
    assert!(
        e.contains("longest linearizable prefix (2 of 3 ops): [#0 #1]"),
        "{e}"
    );
}

#[test]
fn lost_acknowledged_writes_are_rejected() {
    assert_rejected(&[write(0, Some(1), "a"), read(2, 3, None)]);
    assert_rejected(&[
        write(0, Some(1), "a"),
        cas(2, Some(3), "a", "b", true),
        cas(4, Some(5), "b", "c", false),
    ]);
    assert_rejected(&[write(0, Some(1), "a"), delete(2, Some(3), false)]);
}

#[test]
fn swaps_against_values_never_there_are_rejected() {
    assert_rejected(&[write(0, Some(1), "a"), cas(2, Some(3), "z", "b", true)]);
    assert_rejected(&[cas(0, Some(1), "a", "b", true)]);
    // A swap that failed although the value was there.
    assert_rejected(&[write(0, Some(1), "a"), cas(2, Some(3), "a", "b", false)]);
}

#[test]
fn two_swaps_from_the_same_value_cannot_both_succeed() {
    assert_rejected(&[
        write(0, Some(1), "a"),
        cas(2, Some(10), "a", "b", true),
        cas(3, Some(11), "a", "c", true),
    ]);
    // Unless something put the value back in between.
    assert_ok(&[
        write(0, Some(1), "a"),
        cas(2, Some(10), "a", "b", true),
        write(4, Some(12), "a"),
        cas(3, Some(11), "a", "c", true),
    ]);
}

#[test]
fn keys_are_independent_and_the_smallest_failing_key_is_reported() {
    assert_ok(&[
        on("/x", write(0, Some(10), "1")),
        on("/y", write(1, Some(2), "1")),
        on("/y", read(3, 4, Some("1"))),
        on("/x", read(5, 6, None)), // concurrent with the write to /x
        on("/x", read(11, 12, Some("1"))),
    ]);
    let e = assert_rejected(&[
        on("/big", write(0, Some(1), "a")),
        on("/big", write(2, Some(3), "b")),
        on("/big", read(4, 5, Some("a"))),
        on("/small", write(0, Some(1), "a")),
        on("/small", read(2, 3, None)),
    ]);
    assert!(
        e.contains("2 of 2 keys fail; key \"/small\" (2 ops)"),
        "{e}"
    );
    let e = check(&[write(5, Some(4), "a")]).unwrap_err();
    assert!(e.contains("returns before its call"), "{e}");
}

#[test]
fn searches_that_run_out_of_steps_are_inconclusive() {
    let h: Vec<Op> = (0..14)
        .map(|i| write(i, None, &i.to_string()))
        .chain([read(100, 101, Some("3"))])
        .collect();
    let e = check_with_budget(&h, 5).unwrap_err();
    assert!(e.starts_with("inconclusive: key \"/k\" (15 ops)"), "{e}");
    assert_ok(&h);
}

/// A history of `clients` concurrent clients on 2 keys, made from a sequential run of a
/// register model: each op takes effect at a distinct instant between its call and its
/// return; some ops lose their answer.
fn generated(seed: u64, clients: usize, ops: usize) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    let mut reg: [Option<String>; 2] = [None, None];
    let mut free_at = vec![0u64; clients];
    let mut history = Vec::new();
    for n in 0..ops {
        // Linearization point of op n: instant 10 n + 5. Its client must be free by then.
        let at = 10 * n as u64 + 5;
        let Some(c) = (0..clients).find(|&c| free_at[c] < at) else {
            continue;
        };
        let call = at - rng.below((at - free_at[c]).min(30));
        let ret = at + rng.below(30);
        free_at[c] = ret + 1;
        let k = rng.below(2) as usize;
        let value = format!("v{n}");
        let kind = match rng.below(4) {
            0 => {
                reg[k] = Some(value.clone());
                Kind::Write { value }
            }
            1 => {
                let expected = match rng.below(2) {
                    0 => reg[k].clone().unwrap_or_default(),
                    _ => format!("v{}", rng.below(n as u64 + 1)),
                };
                let ok = reg[k].as_ref() == Some(&expected);
                if ok {
                    reg[k] = Some(value.clone());
                }
                Kind::Cas {
                    expected,
                    new: value,
                    ok: Some(ok),
                }
            }
            2 => Kind::Read {
                value: reg[k].clone(),
            },
            _ => Kind::Delete {
                existed: Some(reg[k].take().is_some()),
            },
        };
        let answered = rng.below(10) != 0;
        history.push(Op {
            key: format!("/k{k}"),
            call,
            ret: answered.then_some(ret),
            kind,
        });
        if !answered {
            free_at[c] = call + 1; // the client gives up and goes on
        }
    }
    history
}

#[test]
fn generated_histories_pass_and_fail_once_a_read_is_changed() {
    let mut rejected = 0;
    for seed in 0..40 {
        let h = generated(seed, 1 + seed as usize % 6, 300);
        if let Err(e) = check(&h) {
            panic!("seed {seed}: generated history rejected: {e}");
        }
        // A read that returns a value never written cannot be explained.
        let mut bad = h.clone();
        let read = bad
            .iter_mut()
            .find(|o| o.ret.is_some() && matches!(o.kind, Kind::Read { .. }));
        if let Some(o) = read {
            o.kind = Kind::Read {
                value: Some("never written".to_string()),
            };
            assert_rejected(&bad);
            rejected += 1;
        }
    }
    assert!(rejected > 30, "{rejected}");
}

#[test]
fn unanswered_operations_that_do_the_same_thing_can_each_take_effect() {
    // Two unanswered deletes, needed at two different points.
    let both = [
        write(0, Some(1), "a"),
        delete(2, None, true),
        delete(3, None, true),
        read(4, 5, None),
        write(6, Some(7), "b"),
        read(8, 9, None),
    ];
    assert_ok(&both);
    let mut one = both.to_vec();
    one.remove(2);
    assert_rejected(&one);
    // Two unanswered writes of values nobody reads, each needed by a delete that found a key.
    let both = [
        write(0, None, "x"),
        write(1, None, "y"),
        delete(2, Some(3), true),
        delete(4, Some(5), true),
    ];
    assert_ok(&both);
    assert_rejected(&both[1..]);
    // A value nobody reads still makes a compare-and-swap fail.
    assert_ok(&[
        write(0, Some(1), "a"),
        write(2, None, "unread"),
        cas(3, Some(4), "a", "c", false),
    ]);
}

/// Whether `ops` has a linearization, by trying every order (small histories only).
fn brute_force(ops: &[Op]) -> bool {
    fn go(ops: &[Op], placed: &mut Vec<bool>, state: Option<String>) -> bool {
        let pending = |p: &Op, i: usize, placed: &[bool]| !placed[i] && p.ret.is_some();
        if (0..ops.len()).all(|i| !pending(&ops[i], i, placed)) {
            return true;
        }
        for (i, o) in ops.iter().enumerate() {
            // `o` may go next unless a pending answered op returned before it was called.
            let blocked = ops
                .iter()
                .enumerate()
                .any(|(j, p)| pending(p, j, placed) && p.ret.is_some_and(|r| r < o.call));
            if placed[i] || blocked {
                continue;
            }
            let known = o.ret.is_some();
            let next = match &o.kind {
                Kind::Write { value } => Some(Some(value.clone())),
                Kind::Cas { expected, new, ok } => {
                    let swap = state.as_ref() == Some(expected);
                    match ok {
                        Some(ok) if known && *ok != swap => None,
                        _ if swap => Some(Some(new.clone())),
                        _ => Some(state.clone()),
                    }
                }
                Kind::Read { value } => (!known || *value == state).then(|| state.clone()),
                Kind::Delete { existed } => match existed {
                    Some(e) if known && *e != state.is_some() => None,
                    _ => Some(None),
                },
            };
            if let Some(next) = next {
                placed[i] = true;
                if go(ops, placed, next) {
                    return true;
                }
                placed[i] = false;
            }
        }
        false
    }
    go(ops, &mut vec![false; ops.len()], None)
}

#[test]
fn small_histories_agree_with_trying_every_order() {
    let mut rng = Rng::new(7);
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..3000 {
        let n = rng.range(1, 7) as usize;
        let value = |rng: &mut Rng| ["a", "b", "c"][rng.below(3) as usize].to_string();
        let h: Vec<Op> = (0..n)
            .map(|_| {
                let call = rng.below(20);
                let ret = (rng.below(4) != 0).then(|| call + rng.below(10));
                let kind = match rng.below(4) {
                    0 => Kind::Write {
                        value: value(&mut rng),
                    },
                    1 => Kind::Cas {
                        expected: value(&mut rng),
                        new: value(&mut rng),
                        ok: Some(rng.below(2) == 0),
                    },
                    2 => Kind::Read {
                        value: (rng.below(3) != 0).then(|| value(&mut rng)),
                    },
                    _ => Kind::Delete {
                        existed: Some(rng.below(2) == 0),
                    },
                };
                op("/k", call, ret, kind)
            })
            .collect();
        let want = brute_force(&h);
        assert_eq!(check(&h).is_ok(), want, "{h:#?}");
        if want {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    assert!(accepted > 500 && rejected > 500, "{accepted} {rejected}");
}
