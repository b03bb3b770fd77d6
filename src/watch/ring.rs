//! The event history for `waitIndex`: the last N events (`--watch-history`, default etcd's
//! 1000) in two tiers, written by one writer (the raft shard) and read without locks by every
//! shard.
//!
//! - **Recent**: the newest R = min(N, `EVENT_HISTORY_CAPACITY`) events as the writes made
//!   them (`Arc<Event>`, shared with live delivery), slot = index % R, each slot tagged by
//!   the event's index. With the default N this is the whole history, exactly the ring
//!   ringd always had.
//! - **Archive** (only when N > R): every event is also appended, encoded with ringd-store's
//!   event codec, to an open block of `WATCH_HISTORY_BLOCK_EVENTS` consecutive indexes
//!   (block number = index / 512). When its last index arrives the block is sealed: frozen
//!   into an `Arc<Block>` (bytes + one u32 offset per event) and stored in block slot
//!   number % S, where S blocks span N events. Blocks are dropped whole, oldest first, once
//!   they fall out of the last N indexes or the archive's bytes exceed its budget
//!   (N x `WATCH_HISTORY_BYTES_PER_EVENT`; the open block's allocation counts too, and an
//!   open block that alone exceeds the budget is dropped and its indexes skipped).
//!
//! Invariant: every index in [`start_index(current)`, current] is in the recent tier or in a
//! sealed, live block. A block is sealed before any of its events leaves the recent tier
//! (a block holds at most 512 <= R events), so a reader that finds a recent slot retagged
//! finds the event in its block, or proof that the history moved past it (the slot is empty
//! or holds another block): then it answers etcd's 401, as when the writer laps it.
//!
//! Memory: the archive's allocations (blocks, their offsets, the open block's capacity) stay
//! within its budget after every push, and are counted in `archive_bytes` (a metric); the
//! slots cost 8 bytes each (R + S of them). The recent tier holds R events as written (as
//! etcd's history does: up to R x the largest event).
//!
//! Lookups are O(1): index -> recent slot, or index -> block slot -> offset. A scan from a
//! `waitIndex` examines events in order, reading only each archived event's head (key,
//! action, flags; no allocation) and decoding the one it returns; callers bound the events
//! examined per call (`scan_from`) and yield between calls.

use crate::limits::{
    EVENT_HISTORY_CAPACITY, WATCH_HISTORY_BLOCK_EVENTS, WATCH_HISTORY_BYTES_PER_EVENT,
};
use arc_swap::ArcSwapOption;
use ringd_store::watch::HistoryWatch;
use ringd_store::{Error, ErrorCode, Event};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const BLOCK_EVENTS: u64 = WATCH_HISTORY_BLOCK_EVENTS;

pub struct EventRing {
    /// N: the events the history answers for.
    capacity: u64,
    /// The newest R events as written; slot = index % R.
    recent: Box<[ArcSwapOption<Event>]>,
    /// Sealed blocks of the archive; slot = block number % S. Empty: no archive (N <= R).
    blocks: Box<[ArcSwapOption<Block>]>,
    /// Most bytes the archive may hold.
    archive_bytes_max: u64,
    /// Index at which the history starts (0 = no event yet): the first event published, or
    /// the first after a gap (a snapshot from the leader that skipped indexes).
    first: AtomicU64,
    /// Every index from here to the newest is archived (or still recent): what the archive
    /// dropped (budget, a dropped open block) lies before it. 0 = nothing dropped.
    archive_start: AtomicU64,
    /// The archive's allocated bytes now (metrics, tests).
    archive_bytes: AtomicU64,
    /// Newest index pushed (0 = none). Only the writer reads or writes it.
    last: AtomicU64,
    /// The archive's writer state. Only the raft shard (and recovery before it starts) locks
    /// it, so it is never contended: the writer never waits, readers never touch it.
    writer: Mutex<Writer>,
}

/// A sealed run of consecutive events, encoded. Immutable, shared by readers and snapshots.
pub struct Block {
    first: u64,
    /// Offset of each event in `bytes`.
    starts: Box<[u32]>,
    bytes: Box<[u8]>,
}

impl Block {
    /// One past the last index held.
    fn end(&self) -> u64 {
        self.first + self.starts.len() as u64
    }

    /// Where the event at `index` starts in `bytes` (the end for indexes past the block).
    fn offset(&self, index: u64) -> usize {
        let k = index.saturating_sub(self.first) as usize;
        self.starts
            .get(k)
            .map_or(self.bytes.len(), |&start| start as usize)
    }

    fn event(&self, index: u64) -> Option<&[u8]> {
        let k = usize::try_from(index.checked_sub(self.first)?).ok()?;
        let start = *self.starts.get(k)? as usize;
        let end = self
            .starts
            .get(k + 1)
            .map_or(self.bytes.len(), |&e| e as usize);
        self.bytes.get(start..end)
    }

    /// What the block allocated: bytes, offsets, and the `Arc` with its counts.
    fn heap_bytes(&self) -> u64 {
        (self.bytes.len()
            + self.starts.len() * std::mem::size_of::<u32>()
            + std::mem::size_of::<Block>()
            + 2 * std::mem::size_of::<usize>()) as u64
    }
}

/// The block being filled.
#[derive(Default)]
struct Open {
    number: u64,
    /// Index of its first event; 0 = no event yet.
    first: u64,
    starts: Vec<u32>,
    bytes: Vec<u8>,
    /// Dropped for the budget: the rest of this block's indexes are not archived.
    void: bool,
}

impl Open {
    fn heap_bytes(&self) -> u64 {
        (self.bytes.capacity() + self.starts.capacity() * std::mem::size_of::<u32>()) as u64
    }
}

#[derive(Default)]
struct Writer {
    open: Open,
    /// The live sealed blocks, oldest first, consecutive. A persistent vector: a snapshot's
    /// copy is O(1).
    live: imbl::Vector<Arc<Block>>,
    live_bytes: u64,
    /// The last sealed block's size: the next open block starts with this capacity, so
    /// steady writes never regrow it.
    size_hint: usize,
}

/// What one bounded step of a history scan found.
#[derive(Debug)]
pub enum Scan {
    /// The first matching event.
    Found(Arc<Event>),
    /// No match up to the current index.
    NotFound,
    /// The step's budget ran out: resume from this index.
    Paused(u64),
}

/// The history at one index, frozen for a snapshot in O(1) (a persistent vector of sealed
/// blocks plus at most R recent events); encoded on the snapshot thread.
pub struct FrozenHistory {
    /// Events before the archived range, and after it (the open block's).
    head: Vec<Arc<Event>>,
    tail: Vec<Arc<Event>>,
    blocks: imbl::Vector<Arc<Block>>,
    /// The archived range written: [from, to).
    from: u64,
    to: u64,
}

impl FrozenHistory {
    /// Calls `f` with each event's encoding, oldest first.
    pub fn for_each_encoded(&self, f: &mut dyn FnMut(&[u8])) {
        let mut buf = Vec::new();
        let mut encoded = |ev: &Event, f: &mut dyn FnMut(&[u8])| {
            buf.clear();
            ev.encode(&mut buf);
            f(&buf);
        };
        for ev in &self.head {
            encoded(ev, f);
        }
        for b in self.blocks.iter() {
            for i in b.first.max(self.from)..b.end().min(self.to) {
                if let Some(e) = b.event(i) {
                    f(e);
                }
            }
        }
        for ev in &self.tail {
            encoded(ev, f);
        }
    }

    /// About the bytes `for_each_encoded` hands out, with a 4-byte length each: exact for the
    /// archived events, an estimate for the recent ones.
    pub fn encoded_bytes_hint(&self) -> usize {
        let archived: usize = self
            .blocks
            .iter()
            .map(|b| {
                let (from, to) = (b.first.max(self.from), b.end().min(self.to));
                b.offset(to).saturating_sub(b.offset(from))
            })
            .sum();
        archived + (self.head.len() + self.tail.len()) * 128 + self.len() * 4
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len() + self.to.saturating_sub(self.from) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for EventRing {
    fn default() -> Self {
        Self::new(EVENT_HISTORY_CAPACITY as u64)
    }
}

impl EventRing {
    /// A history of the last `capacity` events (at least 1), the archive's budget derived
    /// from it (`WATCH_HISTORY_BYTES_PER_EVENT` each).
    pub fn new(capacity: u64) -> EventRing {
        let budget = capacity.saturating_mul(WATCH_HISTORY_BYTES_PER_EVENT);
        EventRing::with_budget(capacity, budget)
    }

    /// A history of the last `capacity` events whose archive holds at most `budget` bytes.
    pub fn with_budget(capacity: u64, budget: u64) -> EventRing {
        let capacity = capacity.max(1);
        let recent = capacity.min(EVENT_HISTORY_CAPACITY as u64);
        // S blocks span the window plus the block being filled: a new block's slot always
        // held a block that left the window.
        let block_slots = if capacity > recent {
            capacity.div_ceil(BLOCK_EVENTS) + 1
        } else {
            0
        };
        EventRing {
            capacity,
            recent: (0..recent).map(|_| ArcSwapOption::empty()).collect(),
            blocks: (0..block_slots).map(|_| ArcSwapOption::empty()).collect(),
            archive_bytes_max: if block_slots > 0 { budget } else { 0 },
            first: AtomicU64::new(0),
            archive_start: AtomicU64::new(0),
            archive_bytes: AtomicU64::new(0),
            last: AtomicU64::new(0),
            writer: Mutex::default(),
        }
    }

    /// N: the events the history answers for.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The newest events held as written (R).
    pub fn recent_capacity(&self) -> u64 {
        self.recent.len() as u64
    }

    /// The archive's budget in bytes (0: no archive).
    pub fn archive_bytes_max(&self) -> u64 {
        self.archive_bytes_max
    }

    /// The archive's allocated bytes now; never above `archive_bytes_max` between pushes.
    pub fn archive_bytes(&self) -> u64 {
        self.archive_bytes.load(Ordering::Relaxed)
    }

    /// The history's memory bound apart from the R recent events: the archive's budget, the
    /// slots, and the list of live blocks (two pointers a block).
    pub fn bound_bytes(&self) -> u64 {
        self.archive_bytes_max + self.fixed_bytes()
    }

    /// The history's memory now apart from the R recent events (at most `bound_bytes`).
    pub fn bytes(&self) -> u64 {
        self.archive_bytes() + self.fixed_bytes()
    }

    fn fixed_bytes(&self) -> u64 {
        let slot = std::mem::size_of::<ArcSwapOption<Event>>();
        let fixed = std::mem::size_of::<EventRing>()
            + (self.recent.len() + self.blocks.len()) * slot
            + self.blocks.len() * 2 * std::mem::size_of::<usize>();
        fixed as u64
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // Only one thread ever locks it; a panic while it held the lock aborts the process
        // (panic = "abort"), so a poisoned lock is never seen in the server.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recent_slot(&self, index: u64) -> &ArcSwapOption<Event> {
        &self.recent[(index % self.recent.len() as u64) as usize]
    }

    fn block_slot(&self, number: u64) -> &ArcSwapOption<Block> {
        &self.blocks[(number % self.blocks.len() as u64) as usize]
    }

    /// Publishes an event. Events arrive in index order, one per index (the writer's
    /// invariant: every etcd index is exactly one event); a gap (a snapshot from the leader
    /// that skipped indexes) restarts the history at the event after it.
    pub fn publish(&self, event: Arc<Event>) {
        self.push(event.index(), Some(event), None);
    }

    /// Recovery: publishes a snapshot's history (encoded events, oldest first). Only the last
    /// N are kept, only the last R are decoded; the others go to the archive as they are.
    pub fn restore<'a>(
        &self,
        events: impl ExactSizeIterator<Item = &'a [u8]>,
    ) -> Result<(), String> {
        let n = events.len();
        let skip = n.saturating_sub(self.capacity as usize);
        let decode_from = n.saturating_sub(self.recent.len());
        for (k, bytes) in events.enumerate().skip(skip) {
            if k >= decode_from {
                let ev = Event::decode(bytes).map_err(|e| format!("history event: {e}"))?;
                self.push(ev.index(), Some(Arc::new(ev)), Some(bytes));
            } else {
                let head = Event::decode_head(bytes).map_err(|e| format!("history event: {e}"))?;
                self.push(head.index, None, Some(bytes));
            }
        }
        Ok(())
    }

    /// One event in: into the archive (when there is one), then into its recent slot.
    /// `event` is None only for events older than the recent tier (recovery); `encoded` is
    /// the event's encoding when the caller has it.
    fn push(&self, index: u64, event: Option<Arc<Event>>, encoded: Option<&[u8]>) {
        // Only the writer touches `last`; without an archive nothing needs the lock (the
        // default history costs what etcd's ring always did).
        let last = self.last.load(Ordering::Relaxed);
        let gap = last != 0 && index != last + 1;
        debug_assert!(
            last == 0 || index > last,
            "events go back: {index} after {last}"
        );
        if gap {
            // The history starts again at `index`: what came before the gap is not served.
            // The start moves before any block goes (see `evict_oldest`).
            self.first.store(index, Ordering::Release);
            self.archive_start.fetch_max(index, Ordering::AcqRel);
        } else if last == 0 && self.first.load(Ordering::Relaxed) == 0 {
            self.first.store(index, Ordering::Release);
        }
        if !self.blocks.is_empty() {
            let mut w = self.writer();
            if gap {
                while !w.live.is_empty() {
                    self.evict_oldest(&mut w);
                }
                w.open = Open::default();
            }
            self.archive(&mut w, index, event.as_deref(), encoded);
        }
        // After the archive: a block is sealed before its events leave the recent tier.
        if let Some(ev) = event {
            self.recent_slot(index).store(Some(ev));
        }
        self.last.store(index, Ordering::Relaxed);
    }

    fn archive(&self, w: &mut Writer, index: u64, event: Option<&Event>, encoded: Option<&[u8]>) {
        let number = index / BLOCK_EVENTS;
        if w.open.number != number || (w.open.first == 0 && !w.open.void) {
            // Consecutive indexes seal each block at its last index; a block left unsealed
            // here is empty (a gap drops the open block first).
            self.seal(w);
            w.open = Open {
                number,
                first: index,
                starts: Vec::with_capacity(BLOCK_EVENTS as usize),
                bytes: Vec::with_capacity(w.size_hint),
                void: false,
            };
        }
        if w.open.void {
            return;
        }
        let Ok(start) = u32::try_from(w.open.bytes.len()) else {
            // Unreachable: the budget (< 4 GiB, limits.rs) bounds a block; drop it if not.
            self.void_open(w);
            return;
        };
        w.open.starts.push(start);
        match (encoded, event) {
            (Some(b), _) => w.open.bytes.extend_from_slice(b),
            (None, Some(ev)) => ev.encode(&mut w.open.bytes),
            (None, None) => {
                w.open.starts.pop();
                return;
            }
        }
        if index % BLOCK_EVENTS == BLOCK_EVENTS - 1 {
            self.seal(w);
        }
        // Oldest blocks go first; an open block that alone exceeds the budget goes too.
        while w.live_bytes + w.open.heap_bytes() > self.archive_bytes_max && !w.live.is_empty() {
            self.evict_oldest(w);
        }
        if w.live_bytes + w.open.heap_bytes() > self.archive_bytes_max {
            self.void_open(w);
        }
        self.archive_bytes
            .store(w.live_bytes + w.open.heap_bytes(), Ordering::Relaxed);
    }

    /// Freezes the open block into a sealed one (if it holds events) and publishes it.
    fn seal(&self, w: &mut Writer) {
        if w.open.first == 0 || w.open.void {
            return;
        }
        let open = std::mem::take(&mut w.open);
        // The next push starts the next block.
        w.open.number = open.number;
        w.open.void = false;
        let block = Arc::new(Block {
            first: open.first,
            starts: open.starts.into_boxed_slice(),
            bytes: open.bytes.into_boxed_slice(),
        });
        w.size_hint = block.bytes.len();
        // Blocks wholly before the window [end - N, end) leave it; their slots are the ones
        // new blocks reuse.
        let window_start = block.end().saturating_sub(self.capacity);
        while w.live.front().is_some_and(|b| b.end() <= window_start) {
            self.evict_oldest(w);
        }
        let slot = self.block_slot(open.number);
        debug_assert!(slot.load().is_none(), "block slot reused while live");
        slot.store(Some(block.clone()));
        w.live_bytes += block.heap_bytes();
        w.live.push_back(block);
    }

    fn evict_oldest(&self, w: &mut Writer) {
        let Some(b) = w.live.pop_front() else {
            return;
        };
        w.live_bytes -= b.heap_bytes();
        // The start moves first: a reader that finds the slot empty finds the history past it.
        self.archive_start.fetch_max(b.end(), Ordering::AcqRel);
        let slot = self.block_slot(b.first / BLOCK_EVENTS);
        if slot.load().as_ref().is_some_and(|s| Arc::ptr_eq(s, &b)) {
            slot.store(None);
        }
    }

    /// Drops the open block: its indexes are served from the recent tier while they last.
    fn void_open(&self, w: &mut Writer) {
        w.open.starts = Vec::new();
        w.open.bytes = Vec::new();
        w.open.void = true;
        self.archive_start
            .fetch_max((w.open.number + 1) * BLOCK_EVENTS, Ordering::AcqRel);
    }

    fn recent_get(&self, index: u64) -> Option<Arc<Event>> {
        let ev = self.recent_slot(index).load_full()?;
        (ev.index() == index).then_some(ev)
    }

    /// The live block holding `index`.
    fn block(&self, index: u64) -> Option<Arc<Block>> {
        if self.blocks.is_empty() {
            return None;
        }
        let b = self.block_slot(index / BLOCK_EVENTS).load_full()?;
        (b.first <= index && index < b.end()).then_some(b)
    }

    /// The event at `index`, if still held.
    pub fn get(&self, index: u64) -> Option<Arc<Event>> {
        if let Some(ev) = self.recent_get(index) {
            return Some(ev);
        }
        let b = self.block(index)?;
        Event::decode(b.event(index)?).ok().map(Arc::new)
    }

    /// The oldest index the history still answers for, given the current index.
    pub fn start_index(&self, current: u64) -> u64 {
        let first = self.first.load(Ordering::Acquire);
        let recent_start = current.saturating_sub(self.recent.len() as u64 - 1);
        let start = if self.blocks.is_empty() {
            recent_start
        } else {
            let window_start = current.saturating_sub(self.capacity - 1);
            let archived = window_start.max(self.archive_start.load(Ordering::Acquire));
            // The recent tier always answers for its R events, whatever the budget dropped.
            recent_start.min(archived)
        };
        first.max(start)
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
        let mut unbounded = usize::MAX;
        match self.scan_from(key, recursive, since, since, current, &mut unbounded)? {
            Scan::Found(ev) => Ok(Some(ev)),
            Scan::NotFound | Scan::Paused(_) => Ok(None),
        }
    }

    /// One bounded step of `scan`: examines events from `from` (>= `since`, the index the
    /// watch asked for, which 401's cause names) on, at most `budget` of them (decremented).
    pub fn scan_from(
        &self,
        key: &str,
        recursive: bool,
        since: u64,
        from: u64,
        current: u64,
        budget: &mut usize,
    ) -> Result<Scan, Error> {
        let start = self.start_index(current);
        let cleared = || {
            Error::new(
                ErrorCode::EventIndexCleared,
                format!("the requested history has been cleared [{start}/{since}]"),
                current,
            )
        };
        if start > 0 && from < start {
            return Err(cleared());
        }
        let watch = HistoryWatch::new(key, recursive);
        let mut index = from.max(start).max(1);
        while index <= current {
            if *budget == 0 {
                return Ok(Scan::Paused(index));
            }
            if let Some(ev) = self.recent_get(index) {
                *budget -= 1;
                if watch.matches(&ev) {
                    return Ok(Scan::Found(ev));
                }
                index += 1;
                continue;
            }
            // Not (or no longer) recent: its block, or the writer lapped us.
            let block = self.block(index).ok_or_else(cleared)?;
            let end = block.end().min(current + 1);
            while index < end {
                if *budget == 0 {
                    return Ok(Scan::Paused(index));
                }
                *budget -= 1;
                let bytes = block.event(index).ok_or_else(cleared)?;
                let head = Event::decode_head(bytes).map_err(|_| cleared())?;
                if watch.matches_head(&head) {
                    let ev = Event::decode(bytes).map_err(|_| cleared())?;
                    return Ok(Scan::Found(Arc::new(ev)));
                }
                index += 1;
            }
        }
        Ok(Scan::NotFound)
    }

    /// The history at `current` for a snapshot. Call it on the writer's thread after
    /// publishing `current`: O(1) for the archive, at most R `Arc` copies for the rest.
    pub fn freeze(&self, current: u64) -> FrozenHistory {
        let start = self.start_index(current).max(1);
        let w = self.writer();
        let recent = |from: u64, to: u64| -> Vec<Arc<Event>> {
            (from..to).filter_map(|i| self.recent_get(i)).collect()
        };
        let archived = match (w.live.front(), w.live.back()) {
            (Some(f), Some(b)) if f.first.max(start) < b.end() => {
                Some((f.first.max(start), b.end()))
            }
            _ => None,
        };
        let frozen = match archived {
            Some((from, to)) => FrozenHistory {
                head: recent(start, from),
                tail: recent(to, current + 1),
                blocks: w.live.clone(),
                from,
                to,
            },
            None => FrozenHistory {
                head: recent(start, current + 1),
                tail: Vec::new(),
                blocks: imbl::Vector::new(),
                from: 0,
                to: 0,
            },
        };
        debug_assert_eq!(
            frozen.len() as u64,
            (current + 1).saturating_sub(start),
            "the history misses events"
        );
        frozen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringd_store::{Action, NodeRepr};

    /// The event at `index`: a set of `/k/<index % 7>` (or `key`) with a value of `len` bytes.
    fn ev_on(index: u64, key: &str, len: usize) -> Arc<Event> {
        let node = |value: String| NodeRepr {
            key: Some(key.to_string()),
            dir: false,
            value: Some(value),
            expiration: None,
            modified_index: index,
            created_index: index,
            nodes: None,
        };
        Arc::new(Event {
            action: Action::Set,
            node: node("v".repeat(len)),
            prev_node: Some(node("p".repeat(len / 2))),
            etcd_index: index,
            refresh: false,
            time: Some(index),
        })
    }

    fn ev(index: u64) -> Arc<Event> {
        ev_on(index, &format!("/k/{}", index % 7), 10)
    }

    fn filled(ring: &EventRing, from: u64, to: u64) {
        for i in from..=to {
            ring.publish(ev(i));
        }
    }

    /// Every index of the window is there, and is the event published at it.
    fn check_window(ring: &EventRing, current: u64) {
        let start = ring.start_index(current);
        for i in start.max(1)..=current {
            let got = ring
                .get(i)
                .unwrap_or_else(|| panic!("{i} missing, start {start}"));
            assert_eq!(got.index(), i);
            assert_eq!(got.key(), format!("/k/{}", i % 7));
        }
    }

    fn cause(e: &Error) -> String {
        assert_eq!(e.code, ErrorCode::EventIndexCleared);
        e.cause.clone()
    }

    #[test]
    fn the_default_history_is_etcds_1000_events() {
        let ring = EventRing::new(1000);
        assert_eq!(ring.archive_bytes_max(), 0);
        filled(&ring, 1, 2500);
        assert_eq!(ring.start_index(2500), 1501);
        check_window(&ring, 2500);
        assert!(ring.get(1500).is_none());
        let e = ring.scan("/k/1", false, 1500, 2500).unwrap_err();
        assert_eq!(
            cause(&e),
            "the requested history has been cleared [1501/1500]"
        );
        assert_eq!(e.index, 2500);
        // The first match at or after since.
        let hit = ring.scan("/k/3", false, 1501, 2500).unwrap().unwrap();
        assert_eq!(hit.index(), 1501);
        let hit = ring.scan("/k/3", false, 1502, 2500).unwrap().unwrap();
        assert_eq!(hit.index(), 1508);
        assert!(ring.scan("/other", true, 1501, 2500).unwrap().is_none());
        // Before it fills up, the history starts at the first event.
        let ring = EventRing::new(1000);
        filled(&ring, 40, 100);
        assert_eq!(ring.start_index(100), 40);
        let e = ring.scan("/k/1", false, 39, 100).unwrap_err();
        assert_eq!(cause(&e), "the requested history has been cleared [40/39]");
    }

    #[test]
    fn a_long_history_answers_every_index_of_its_window() {
        let ring = EventRing::new(5000);
        assert!(ring.archive_bytes_max() > 0);
        filled(&ring, 1, 3000);
        assert_eq!(ring.start_index(3000), 1);
        check_window(&ring, 3000);
        filled(&ring, 3001, 12_345);
        assert_eq!(ring.start_index(12_345), 12_345 - 4999);
        check_window(&ring, 12_345);
        // Dropped with its block.
        assert!(ring.get(12_345 - 6000).is_none());
        let e = ring.scan("/k/1", false, 7000, 12_345).unwrap_err();
        assert_eq!(
            cause(&e),
            "the requested history has been cleared [7346/7000]"
        );
        // From the oldest kept index: the first match, from the archive.
        let hit = ring.scan("/k/2", false, 7346, 12_345).unwrap().unwrap();
        assert_eq!((hit.index(), hit.key()), (7352, "/k/2"));
        assert_eq!(*hit, *ev(7352));
        assert!(ring.scan("/k", true, 7346, 12_345).unwrap().is_some());
        assert!(ring.scan("/other", true, 7346, 12_345).unwrap().is_none());
    }

    #[test]
    fn a_scan_in_bounded_steps_finds_what_one_scan_finds() {
        let ring = EventRing::new(20_000);
        filled(&ring, 1, 9_000);
        ring.publish(ev_on(9_001, "/needle", 3));
        filled(&ring, 9_002, 10_000);
        let mut from = 2;
        let mut steps = 0;
        let found = loop {
            let mut budget = 100;
            match ring.scan_from("/needle", false, 2, from, 10_000, &mut budget) {
                Ok(Scan::Paused(next)) => {
                    assert_eq!((next, budget), (from + 100, 0));
                    from = next;
                }
                Ok(Scan::Found(ev)) => break ev,
                other => panic!("{other:?}"),
            }
            steps += 1;
        };
        assert_eq!((found.index(), steps), (9_001, 89));
        assert_eq!(
            ring.scan("/needle", false, 2, 10_000)
                .unwrap()
                .map(|e| e.index()),
            Some(9_001)
        );
    }

    /// The archive's allocations, counted independently of the ring's own counter.
    fn archive_allocated(ring: &EventRing) -> u64 {
        let w = ring.writer();
        w.live.iter().map(|b| b.heap_bytes()).sum::<u64>() + w.open.heap_bytes()
    }

    #[test]
    fn the_archive_stays_within_its_budget_and_the_window_shrinks_instead() {
        let budget = 256 << 10;
        let ring = EventRing::with_budget(100_000, budget);
        let mut sizes = 1u64;
        for i in 1..=20_000u64 {
            // Sizes from 0 to ~3 KB, in runs, so blocks differ.
            sizes = sizes
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = if (i / 700) % 3 == 1 {
                (sizes >> 53) as usize
            } else {
                8
            };
            ring.publish(ev_on(i, &format!("/k/{}", i % 7), len));
            let used = ring.archive_bytes();
            assert!(used <= budget, "{used} > {budget} after {i}");
            assert_eq!(used, archive_allocated(&ring), "after {i}");
            if i % 997 == 0 {
                check_window(&ring, i);
            }
        }
        assert!(ring.bytes() <= ring.bound_bytes());
        // The budget, not the count, bounds this window, but never below the 1000 newest.
        let start = ring.start_index(20_000);
        assert!(start > 1 && start <= 19_001, "start {start}");
        check_window(&ring, 20_000);
        let e = ring.scan("/k/1", false, start - 1, 20_000).unwrap_err();
        assert_eq!(
            cause(&e),
            format!(
                "the requested history has been cleared [{start}/{}]",
                start - 1
            )
        );
    }

    #[test]
    fn an_event_larger_than_the_budget_leaves_the_newest_1000_answering() {
        let ring = EventRing::with_budget(10_000, 4096);
        for i in 1..=3000 {
            ring.publish(ev_on(i, &format!("/k/{}", i % 7), 5000));
            assert!(ring.archive_bytes() <= 4096);
        }
        assert_eq!(ring.start_index(3000), 2001);
        check_window(&ring, 3000);
    }

    #[test]
    fn a_gap_restarts_the_history_after_it() {
        let ring = EventRing::new(5000);
        filled(&ring, 1, 3000);
        filled(&ring, 10_000, 10_700);
        assert_eq!(ring.start_index(10_700), 10_000);
        check_window(&ring, 10_700);
        let e = ring.scan("/k/1", false, 2999, 10_700).unwrap_err();
        assert_eq!(
            cause(&e),
            "the requested history has been cleared [10000/2999]"
        );
        // The default history too.
        let ring = EventRing::new(1000);
        filled(&ring, 1, 300);
        filled(&ring, 5000, 5010);
        assert_eq!(ring.start_index(5010), 5000);
        check_window(&ring, 5010);
    }

    fn encoded(f: &FrozenHistory) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        f.for_each_encoded(&mut |e| out.push(e.to_vec()));
        assert_eq!(out.len(), f.len());
        out
    }

    #[test]
    fn a_frozen_history_restores_the_same_window() {
        for (capacity, budget, current) in [
            (1000, 0, 2500),
            (1000, 0, 700),
            (5000, 1 << 30, 12_345),
            (5000, 1 << 30, 800),
            (5000, 1 << 30, 1500),
            // The budget holds fewer than N: recent events before the archived ones.
            (50_000, 200 << 10, 12_345),
        ] {
            let ring = EventRing::with_budget(capacity, budget);
            filled(&ring, 1, current);
            let frozen = ring.freeze(current);
            let start = ring.start_index(current);
            assert_eq!(
                frozen.len() as u64,
                current - start + 1,
                "{capacity} {current}"
            );
            // Later pushes do not change what was frozen.
            filled(&ring, current + 1, current + 3000);
            let events = encoded(&frozen);
            for (k, e) in events.iter().enumerate() {
                assert_eq!(Event::decode(e).unwrap(), *ev(start + k as u64));
            }
            let again = EventRing::with_budget(capacity, budget);
            again.restore(events.iter().map(|e| e.as_slice())).unwrap();
            assert_eq!(again.start_index(current), start, "{capacity} {current}");
            check_window(&again, current);
            // Restored into a shorter history: the newest events only.
            let short = EventRing::new(1000);
            short.restore(events.iter().map(|e| e.as_slice())).unwrap();
            assert_eq!(
                short.start_index(current),
                start.max(current.saturating_sub(999))
            );
            check_window(&short, current);
        }
    }

    #[test]
    fn readers_racing_the_writer_see_the_event_or_a_history_past_it() {
        let ring = EventRing::with_budget(20_000, 1 << 20);
        let done = std::sync::atomic::AtomicBool::new(false);
        let published = AtomicU64::new(0);
        // The writer starts once both readers run, so they read while it writes.
        let start = std::sync::Barrier::new(3);
        std::thread::scope(|s| {
            s.spawn(|| {
                start.wait();
                for i in 1..=60_000 {
                    ring.publish(ev(i));
                    published.store(i, Ordering::Release);
                }
                done.store(true, Ordering::Release);
            });
            for r in 0..2u64 {
                let (ring, done, published, start) = (&ring, &done, &published, &start);
                s.spawn(move || {
                    start.wait();
                    let mut x = r + 1;
                    while !done.load(Ordering::Acquire) {
                        let current = published.load(Ordering::Acquire);
                        if current == 0 {
                            continue;
                        }
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        let start = ring.start_index(current);
                        let i = start + (x >> 33) % (current - start + 1);
                        match ring.get(i) {
                            Some(e) => assert_eq!((e.index(), e.key()), (i, ev(i).key())),
                            None => {
                                let now = published.load(Ordering::Acquire);
                                assert!(ring.start_index(now) > i, "{i} lost at {now}");
                            }
                        }
                    }
                });
            }
        });
    }
}
