//! The event history: `EVENT_HISTORY_CAPACITY` slots, slot = index % capacity, each holding
//! the event tagged with its index. One writer (the raft shard), many lock-free readers that
//! verify the tag, so a reader racing with the writer sees either the event it asked for or
//! proof that it was overwritten (then the history for that index is cleared: etcd's 401).

use crate::limits::EVENT_HISTORY_CAPACITY;
use arc_swap::ArcSwapOption;
use ringd_store::{watch::history_matches, Error, ErrorCode, Event};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct EventRing {
    slots: Box<[ArcSwapOption<Event>]>,
    /// Index of the first event ever published (0 = none yet): the history starts there
    /// until it fills up.
    first: AtomicU64,
}

impl Default for EventRing {
    fn default() -> Self {
        Self::new()
    }
}

impl EventRing {
    pub fn new() -> EventRing {
        let slots = (0..EVENT_HISTORY_CAPACITY)
            .map(|_| ArcSwapOption::empty())
            .collect();
        EventRing {
            slots,
            first: AtomicU64::new(0),
        }
    }

    fn slot(index: u64) -> usize {
        (index % EVENT_HISTORY_CAPACITY as u64) as usize
    }

    /// Publishes an event. Events arrive in index order, one per index (the writer's
    /// invariant: every etcd index is exactly one event).
    pub fn publish(&self, event: Arc<Event>) {
        let index = event.index();
        let _ = self
            .first
            .compare_exchange(0, index, Ordering::AcqRel, Ordering::Acquire);
        self.slots[Self::slot(index)].store(Some(event));
    }

    /// The event at `index`, if still held.
    pub fn get(&self, index: u64) -> Option<Arc<Event>> {
        let ev = self.slots[Self::slot(index)].load_full()?;
        (ev.index() == index).then_some(ev)
    }

    /// The oldest index the history still answers for, given the current index.
    pub fn start_index(&self, current: u64) -> u64 {
        let first = self.first.load(Ordering::Acquire);
        let window_start = current.saturating_sub(EVENT_HISTORY_CAPACITY as u64 - 1);
        first.max(window_start)
    }

    /// etcd's EventHistory.scan: the first event with index in [since, current] that matches
    /// the watch, `Ok(None)` if none, 401 if `since` is older than the history.
    pub fn scan(
        &self,
        key: &str,
        recursive: bool,
        since: u64,
        current: u64,
    ) -> Result<Option<Arc<Event>>, Error> {
        let start = self.start_index(current);
        let cleared = || {
            Error::new(
                ErrorCode::EventIndexCleared,
                format!("the requested history has been cleared [{start}/{since}]"),
                current,
            )
        };
        if start > 0 && since < start {
            return Err(cleared());
        }
        for index in since.max(start)..=current {
            if index == 0 {
                continue;
            }
            // A missing or retagged slot means the writer lapped us while we scanned.
            let ev = self.get(index).ok_or_else(cleared)?;
            if history_matches(key, recursive, &ev) {
                return Ok(Some(ev));
            }
        }
        Ok(None)
    }
}
