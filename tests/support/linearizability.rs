//! A linearizability checker for histories of etcd v2 operations on single keys (Wing & Gong's
//! search with Lowe's memoization, as Porcupine does it), shared by the tests that record
//! histories: the deterministic simulation (tests/sim.rs) and the tests of real clusters.
//!
//! Each key is a register that may be absent: `Write` sets it, `Cas` is etcd's
//! compareAndSwap with `prevValue` (it fails when the key is absent or holds another value),
//! `Read` is a linearizable (quorum) read, `Delete` removes the key. Keys are independent, so
//! each key's sub-history is checked on its own (P-compositionality).
//!
//! An operation has a call time, a return time and a result. Operation A precedes operation B
//! when A returned strictly before B was called (equal times count as concurrent). An
//! operation with no return time got no answer (it timed out, or the server that took it
//! crashed): it may take effect at any point after its call, or never, and its result is
//! unknown; a read with no answer says nothing and is ignored.
//!
//! The search explores orders of the pending operations depth first, never visiting the same
//! (set of operations linearized, register value) twice, and gives up with "inconclusive"
//! after a bounded number of steps rather than hang. Two exact reductions keep unanswered
//! operations from multiplying the search: values that no read returned and no
//! compare-and-swap expects count as one value, and of several unanswered operations that do
//! the same thing only the earliest called is tried at each point.
//!
//! Used as a module: `#[path = "support/linearizability.rs"] mod linearizability;`.
//! Unit tests: tests/linearizability.rs.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

/// One client operation on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub key: String,
    /// When the client sent it.
    pub call: u64,
    /// When the client got the answer; `None`: no answer (the result fields are then ignored).
    pub ret: Option<u64>,
    pub kind: Kind,
}

/// What an operation did, with its result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Set the key to `value`; always succeeds.
    Write { value: String },
    /// compareAndSwap: set `new` if the key holds `expected`. `ok`: succeeded, failed (the key
    /// was absent or held another value), or unknown.
    Cas {
        expected: String,
        new: String,
        ok: Option<bool>,
    },
    /// A linearizable read: the value, `None` if the key was absent.
    Read { value: Option<String> },
    /// Delete the key. `existed`: deleted a value, failed with "key not found", or unknown.
    Delete { existed: Option<bool> },
}

/// Search steps per key before a check gives up as inconclusive.
pub const STEPS_MAX: u64 = 20_000_000;

/// Checks that the history is linearizable. On failure the message names the key whose
/// history fails (the one with the fewest operations when several do), lists its operations
/// and the longest order of them the search could explain.
pub fn check(history: &[Op]) -> Result<(), String> {
    check_with_budget(history, STEPS_MAX)
}

/// `check` with a bound on the search steps per key. A key whose search runs out of steps is
/// reported as inconclusive (an error too: nothing unchecked passes).
pub fn check_with_budget(history: &[Op], steps_max: u64) -> Result<(), String> {
    for (i, op) in history.iter().enumerate() {
        if op.ret.is_some_and(|r| r < op.call) {
            return Err(format!("op #{i} returns before its call: {op:?}"));
        }
    }
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        let unanswered_read = op.ret.is_none() && matches!(op.kind, Kind::Read { .. });
        if !unanswered_read {
            by_key.entry(&op.key).or_default().push(i);
        }
    }
    let mut violations = Vec::new();
    let mut inconclusive = Vec::new();
    for (key, ops) in &by_key {
        match check_key(history, ops, steps_max) {
            Verdict::Linearizable => {}
            Verdict::Violation(report) => violations.push((ops.len(), key, report)),
            Verdict::Inconclusive(steps) => inconclusive.push(format!(
                "key {key:?} ({} ops): gave up after {steps} steps",
                ops.len()
            )),
        }
    }
    if let Some((n, key, report)) = violations.iter().min_by_key(|v| v.0) {
        let mut msg = format!(
            "not linearizable: {} of {} keys fail; key {key:?} ({n} ops):\n",
            violations.len(),
            by_key.len()
        );
        msg.push_str(report);
        return Err(msg);
    }
    if !inconclusive.is_empty() {
        return Err(format!("inconclusive: {}", inconclusive.join("; ")));
    }
    Ok(())
}

enum Verdict {
    Linearizable,
    Violation(String),
    Inconclusive(u64),
}

/// The register's value: 0 absent, 1 any value nobody observes, v + 2 the v-th value some
/// operation observes.
type State = u32;

/// An operation with its values interned.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Write(State),
    Cas(State, State, Option<bool>),
    Read(State),
    Delete(Option<bool>),
}

impl Step {
    /// The register after this operation from `s`, if its result is possible from `s`.
    fn apply(self, s: State) -> Option<State> {
        match self {
            Step::Write(v) => Some(v),
            Step::Cas(expected, new, ok) => {
                let swapped = s != 0 && s == expected;
                match ok {
                    Some(ok) if ok != swapped => None,
                    _ if swapped => Some(new),
                    _ => Some(s),
                }
            }
            Step::Read(v) => (v == s).then_some(s),
            Step::Delete(existed) => match existed {
                Some(e) if e != (s != 0) => None,
                _ => Some(0),
            },
        }
    }
}

const NIL: usize = usize::MAX;

/// The event list the search walks: node 0 is the head, then every call and return in time
/// order. Linearizing an operation lifts its call and return out of the list; backtracking
/// puts them back (in stack order, so the saved links are still right).
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The operation (position in the key's op list) of each node.
    op: Vec<usize>,
    /// For a call node, its return node; NIL for return nodes.
    ret: Vec<usize>,
    /// The call node of each operation.
    call: Vec<usize>,
}

impl Events {
    fn new(times: &[(u64, Option<u64>)]) -> Events {
        // (time, calls before returns at the same time: equal times are concurrent, op).
        let mut ev: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * times.len());
        for (i, (call, ret)) in times.iter().enumerate() {
            ev.push((*call, 0, i));
            ev.push((ret.unwrap_or(u64::MAX), 1, i));
        }
        ev.sort_unstable();
        let len = ev.len() + 1;
        let mut e = Events {
            next: (1..=len).map(|i| if i == len { NIL } else { i }).collect(),
            prev: (0..len).map(|i| i.wrapping_sub(1)).collect(),
            op: vec![NIL; len],
            ret: vec![NIL; len],
            call: vec![NIL; times.len()],
        };
        for (n, &(_, is_ret, op)) in ev.iter().enumerate() {
            let node = n + 1;
            e.op[node] = op;
            if is_ret == 0 {
                e.call[op] = node;
            } else {
                e.ret[e.call[op]] = node;
            }
        }
        e
    }

    fn is_call(&self, node: usize) -> bool {
        self.ret[node] != NIL
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.ret[call]);
    }

    fn unlift(&mut self, call: usize) {
        self.relink(self.ret[call]);
        self.relink(call);
    }
}

fn check_key<'a>(history: &'a [Op], ids: &[usize], steps_max: u64) -> Verdict {
    // Values no answered read returned and no compare-and-swap expects are all alike to every
    // operation ("some value nobody looks for"): they share one state, so the memo sees
    // through them.
    let mut observed: BTreeSet<&str> = BTreeSet::new();
    for &i in ids {
        match &history[i].kind {
            Kind::Read { value: Some(v) } => {
                observed.insert(v);
            }
            Kind::Cas { expected, .. } => {
                observed.insert(expected);
            }
            _ => {}
        }
    }
    const UNOBSERVED: State = 1;
    let mut values: BTreeMap<&str, State> = BTreeMap::new();
    let mut intern = |v: &'a str| -> State {
        if !observed.contains(v) {
            return UNOBSERVED;
        }
        let next = values.len() as State + 2;
        *values.entry(v).or_insert(next)
    };
    let model: Vec<Step> = ids
        .iter()
        .map(|&i| {
            let op = &history[i];
            let answered = op.ret.is_some();
            let known = |r: Option<bool>| r.filter(|_| answered);
            match &op.kind {
                Kind::Write { value } => Step::Write(intern(value)),
                Kind::Cas { expected, new, ok } => {
                    Step::Cas(intern(expected), intern(new), known(*ok))
                }
                Kind::Read { value } => Step::Read(value.as_deref().map_or(0, &mut intern)),
                Kind::Delete { existed } => Step::Delete(known(*existed)),
            }
        })
        .collect();
    let times: Vec<(u64, Option<u64>)> = ids
        .iter()
        .map(|&i| (history[i].call, history[i].ret))
        .collect();
    let answered_total = times.iter().filter(|t| t.1.is_some()).count();
    let mut ev = Events::new(&times);
    // Unanswered operations that do the same thing (equal steps) are interchangeable once
    // called: from any point where two of them could go, trying the earlier-called one is
    // enough (the later one stays available wherever the earlier would have been used). For
    // each class, the call nodes of its members not yet linearized.
    let mut class_of: Vec<Option<usize>> = vec![None; ids.len()];
    let mut classes: Vec<BTreeSet<usize>> = Vec::new();
    let mut class_ids: BTreeMap<Step, usize> = BTreeMap::new();
    for (op, step) in model.iter().enumerate() {
        if times[op].1.is_none() {
            let c = *class_ids.entry(*step).or_insert_with(|| {
                classes.push(BTreeSet::new());
                classes.len() - 1
            });
            class_of[op] = Some(c);
            classes[c].insert(ev.call[op]);
        }
    }
    let words = ids.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    // (call node, register before it).
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = 0;
    let mut answered_done = 0;
    let mut longest: Vec<usize> = Vec::new();
    let mut blocked_by = None;
    let mut entry = ev.next[0];
    let mut steps = 0u64;
    // Unanswered ops return at the end of time: once every answered op is placed, the rest
    // can always follow (their results are unknown), or never happen.
    while answered_done < answered_total {
        steps += 1;
        if steps > steps_max {
            return Verdict::Inconclusive(steps_max);
        }
        if ev.is_call(entry) {
            let op = ev.op[entry];
            if class_of[op].is_some_and(|c| classes[c].first() != Some(&entry)) {
                entry = ev.next[entry];
                continue;
            }
            if let Some(after) = model[op].apply(state) {
                linearized[op / 64] |= 1 << (op % 64);
                if seen.insert((linearized.clone(), after)) {
                    stack.push((entry, state));
                    state = after;
                    ev.lift(entry);
                    if let Some(c) = class_of[op] {
                        classes[c].remove(&entry);
                    }
                    answered_done += times[op].1.is_some() as usize;
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|&(n, _)| ev.op[n]).collect();
                        blocked_by = None;
                    }
                    entry = ev.next[0];
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            entry = ev.next[entry];
        } else {
            // A return: everything before it was tried; undo the last choice.
            if stack.len() == longest.len() && blocked_by.is_none() {
                blocked_by = Some(ev.op[entry]);
            }
            let Some((call, before)) = stack.pop() else {
                return Verdict::Violation(report(history, ids, &longest, blocked_by));
            };
            let op = ev.op[call];
            state = before;
            linearized[op / 64] &= !(1 << (op % 64));
            answered_done -= times[op].1.is_some() as usize;
            if let Some(c) = class_of[op] {
                classes[c].insert(call);
            }
            ev.unlift(call);
            entry = ev.next[call];
        }
    }
    Verdict::Linearizable
}

/// One line per operation of the key, in call order, then the longest explainable order.
fn report(history: &[Op], ids: &[usize], longest: &[usize], blocked_by: Option<usize>) -> String {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&k| (history[ids[k]].call, ids[k]));
    let mut s = String::new();
    for k in order {
        let _ = writeln!(s, "  {}", describe(history, ids[k]));
    }
    let names: Vec<String> = longest.iter().map(|&k| format!("#{}", ids[k])).collect();
    let _ = write!(
        s,
        "longest linearizable prefix ({} of {} ops): [{}]",
        longest.len(),
        ids.len(),
        names.join(" ")
    );
    if let Some(k) = blocked_by {
        let _ = write!(
            s,
            "; after it no pending op can take effect before #{} returns",
            ids[k]
        );
    }
    s
}

/// `#i [call, return] what -> result`.
pub fn describe(history: &[Op], i: usize) -> String {
    let op = &history[i];
    let ret = op.ret.map_or("-".to_string(), |r| r.to_string());
    let unknown = op.ret.is_none();
    let what = match &op.kind {
        Kind::Write { value } => format!("write {value:?}"),
        Kind::Cas { expected, new, ok } => {
            let r = match ok {
                _ if unknown => "unknown",
                Some(true) => "ok",
                Some(false) => "failed",
                None => "unknown",
            };
            format!("cas {expected:?} -> {new:?}: {r}")
        }
        Kind::Read { value } => format!("read -> {value:?}"),
        Kind::Delete { existed } => {
            let r = match existed {
                _ if unknown => "unknown",
                Some(true) => "deleted",
                Some(false) => "not found",
                None => "unknown",
            };
            format!("delete: {r}")
        }
    };
    format!("#{i} [{}, {ret}] {what}", op.call)
}
