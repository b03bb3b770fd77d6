//! The TTL timer wheel on the raft shard: it decides *when* to propose an expiry pass; the
//! store's own expiry index decides *what* expires when that pass is applied (etcd's SYNC).
//!
//! A hashed wheel of `TTL_WHEEL_SLOTS` slots of `TTL_WHEEL_SLOT_MS` each counts the
//! deadlines falling in each slot; deadlines past the wheel's horizon wait in an overflow
//! set until the wheel turns to them. Entries are hints: a key deleted or refreshed before
//! its deadline leaves a stale entry whose pass simply expires nothing (no index consumed).
//! Every insert and every advance is O(1) amortised, and memory is bounded by
//! `TTL_WHEEL_SLOTS` plus the distinct overflow slots.

use crate::limits::{TTL_WHEEL_SLOTS, TTL_WHEEL_SLOT_MS};
use std::collections::BTreeSet;

const SLOT_NS: u64 = TTL_WHEEL_SLOT_MS * 1_000_000;

pub struct TtlWheel {
    counts: Box<[u32]>,
    /// Absolute slot number (deadline / SLOT_NS) the wheel has advanced to.
    cursor: u64,
    pending: usize,
    /// Absolute slot numbers beyond the horizon.
    overflow: BTreeSet<u64>,
}

impl TtlWheel {
    pub fn new(now_ns: u64) -> TtlWheel {
        TtlWheel {
            counts: vec![0; TTL_WHEEL_SLOTS].into_boxed_slice(),
            cursor: now_ns / SLOT_NS,
            pending: 0,
            overflow: BTreeSet::new(),
        }
    }

    /// Records a deadline (absolute unix nanoseconds).
    pub fn schedule(&mut self, deadline_ns: u64) {
        let slot = (deadline_ns / SLOT_NS).max(self.cursor);
        if slot - self.cursor >= TTL_WHEEL_SLOTS as u64 {
            self.overflow.insert(slot);
        } else {
            self.counts[(slot % TTL_WHEEL_SLOTS as u64) as usize] += 1;
            self.pending += 1;
        }
    }

    /// Advances to `now_ns`; returns true when some deadline in a passed slot is due, i.e.
    /// an expiry pass should be proposed.
    pub fn advance(&mut self, now_ns: u64) -> bool {
        let target = now_ns / SLOT_NS;
        let mut due = false;
        // A slot is due once the whole slot has passed, so keys never expire early.
        while self.cursor < target {
            let i = (self.cursor % TTL_WHEEL_SLOTS as u64) as usize;
            if self.counts[i] > 0 {
                self.pending -= self.counts[i] as usize;
                self.counts[i] = 0;
                due = true;
            }
            self.cursor += 1;
            if self.pending == 0 {
                // Nothing in the wheel: jump straight to the target or the next overflow slot.
                let next = self.overflow.first().copied().unwrap_or(target).min(target);
                self.cursor = self.cursor.max(next);
            }
            while let Some(&s) = self.overflow.first() {
                if s - self.cursor.min(s) >= TTL_WHEEL_SLOTS as u64 {
                    break;
                }
                self.overflow.pop_first();
                if s < self.cursor {
                    due = true;
                } else {
                    self.counts[(s % TTL_WHEEL_SLOTS as u64) as usize] += 1;
                    self.pending += 1;
                }
            }
        }
        due
    }

    /// When the raft shard must wake next (absolute ns), if anything is scheduled.
    pub fn next_wake(&self) -> Option<u64> {
        if self.pending > 0 {
            for step in 0..TTL_WHEEL_SLOTS as u64 {
                let slot = self.cursor + step;
                if self.counts[(slot % TTL_WHEEL_SLOTS as u64) as usize] > 0 {
                    return Some((slot + 1) * SLOT_NS);
                }
            }
        }
        self.overflow.first().map(|s| (s + 1) * SLOT_NS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn fires_after_the_deadline_never_before() {
        let mut w = TtlWheel::new(100 * S);
        w.schedule(102 * S + 50);
        assert!(!w.advance(102 * S));
        let wake = w.next_wake().unwrap();
        assert!(wake > 102 * S + 50);
        assert!(w.advance(wake));
        assert_eq!(w.next_wake(), None);
    }

    #[test]
    fn far_deadlines_wait_in_overflow() {
        let mut w = TtlWheel::new(0);
        w.schedule(3600 * S);
        assert!(!w.advance(3000 * S));
        assert!(w.next_wake().is_some());
        assert!(w.advance(3601 * S));
        assert_eq!(w.next_wake(), None);
    }

    #[test]
    fn past_deadlines_are_due_at_once() {
        let mut w = TtlWheel::new(50 * S);
        w.schedule(10 * S);
        assert!(w.advance(50 * S + SLOT_NS));
    }
}
