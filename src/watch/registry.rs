//! A shard's live watchers, keyed by watched path. The raft shard sends each shard one batch
//! of events per applied batch; the shard's dispatcher hands them to `Registry::dispatch`,
//! which visits, per event, only the watchers the event can reach: the recursive watchers of
//! the event key's proper path prefixes, every watcher of the key itself, and (for a dir
//! delete/expire) every watcher under the dir. Watchers of unrelated keys cost nothing, and a
//! non-recursive watcher of `/a` costs nothing to an event on `/a/b`. Matching is the store
//! crate's `live_matches`, shared with the tests; it depends only on the watched path, the
//! recursive flag and the event, so it is decided once per list, not once per watcher.
//!
//! Delivery allocates nothing per watcher: the event's payload (the shard renders it once,
//! lazily, when the first watcher that wants it is found) is cloned into the watcher's inbox
//! (for the shard, a reference-counted byte string) and the watcher's task is woken. A
//! watcher is one small `Rc<Watch>` shared by the registry and its connection's task;
//! removing one is O(1) (each knows its place in its list), so 10,000 watchers of one key
//! that go away one by one cost 10,000 steps, not 10,000².

use crate::limits::{STREAM_WATCHER_BUFFER, WATCHERS_PER_SHARD_MAX};
use ringd_store::{watch::live_matches, Action, Event};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// `Watch::pos` of a watcher no longer in the registry.
const UNLISTED: u32 = u32::MAX;

/// One live watcher, shared by the registry (while it is listed) and the connection that
/// waits on it. Its fields are what an idle watcher costs: about 150 bytes.
pub struct Watch<P> {
    /// The watched path, shared with the registry's map and every watcher of the same path.
    key: Rc<str>,
    recursive: bool,
    stream: bool,
    /// First index this watcher may receive.
    since: u64,
    /// Its index in its key's `exact` or `recursive` list; `UNLISTED` once it left.
    pos: Cell<u32>,
    inbox: RefCell<Inbox<P>>,
    waker: Cell<Option<Waker>>,
}

/// Payloads delivered and not yet taken. A long poll takes one and is done; a stream holds
/// at most `STREAM_WATCHER_BUFFER` (the queue is allocated only when two are pending, and
/// boxed: a long poll's inbox is no larger for it).
struct Inbox<P> {
    first: Option<P>,
    // Boxed on purpose: 8 bytes in every watcher instead of a VecDeque's 32.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<P>>>,
    /// The registry let the watcher go without a payload to come: a stream that fell
    /// `STREAM_WATCHER_BUFFER` events behind, or a shard that lost a batch (`clear`).
    ended: bool,
}

/// What a watcher's connection gets next.
pub enum Delivery<P> {
    Event(P),
    /// No more events: the response ends (the client re-watches from its last index).
    Ended,
}

impl<P> Watch<P> {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn is_stream(&self) -> bool {
        self.stream
    }

    /// Payloads waiting to be taken.
    pub fn pending(&self) -> usize {
        let inbox = self.inbox.borrow();
        usize::from(inbox.first.is_some()) + inbox.rest.as_ref().map_or(0, |r| r.len())
    }

    /// The next delivery if there is one, without waiting.
    pub fn try_next(&self) -> Option<Delivery<P>> {
        let mut inbox = self.inbox.borrow_mut();
        match inbox.first.take() {
            Some(p) => {
                inbox.first = inbox.rest.as_mut().and_then(|r| r.pop_front());
                if inbox.rest.as_ref().is_some_and(|r| r.is_empty()) {
                    // A burst is over: an idle stream keeps no queue.
                    inbox.rest = None;
                }
                Some(Delivery::Event(p))
            }
            None if inbox.ended => Some(Delivery::Ended),
            None => None,
        }
    }

    /// The next delivery, or Pending (the task is woken when one arrives).
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Delivery<P>> {
        if let Some(d) = self.try_next() {
            return Poll::Ready(d);
        }
        let waker = match self.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        self.waker.set(Some(waker));
        Poll::Pending
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Takes a payload; false when the watcher leaves the registry (a long poll has its
    /// event; a stream that cannot keep up is ended, as etcd closes a watcher whose channel
    /// is full, so memory stays bounded).
    fn offer(&self, payload: P) -> bool {
        let keep = {
            let mut inbox = self.inbox.borrow_mut();
            if !self.stream {
                inbox.first = Some(payload);
                false
            } else if inbox.first.is_none() {
                inbox.first = Some(payload);
                true
            } else if inbox.rest.as_ref().map_or(0, |r| r.len()) + 1 < STREAM_WATCHER_BUFFER {
                inbox
                    .rest
                    .get_or_insert_with(Default::default)
                    .push_back(payload);
                true
            } else {
                inbox.ended = true;
                false
            }
        };
        self.wake();
        keep
    }

    fn end(&self) {
        self.inbox.borrow_mut().ended = true;
        self.pos.set(UNLISTED);
        self.wake();
    }
}

/// The watchers of one path: non-recursive ones (reached only by events on the path itself
/// and dir removals above it) apart from recursive ones (reached by events below it too).
struct Watchers<P> {
    exact: Vec<Rc<Watch<P>>>,
    recursive: Vec<Rc<Watch<P>>>,
}

impl<P> Watchers<P> {
    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.recursive.is_empty()
    }
}

pub struct Registry<P> {
    by_key: BTreeMap<Rc<str>, Watchers<P>>,
    count: usize,
}

impl<P> Default for Registry<P> {
    fn default() -> Self {
        Registry {
            by_key: BTreeMap::new(),
            count: 0,
        }
    }
}

/// Which of a path's lists an event visits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lists {
    /// A proper prefix of the event key: recursive watchers only.
    Recursive,
    /// The event key itself, or a path under a removed dir: every watcher.
    Both,
}

impl<P: Clone> Registry<P> {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Ends every watcher (their connections finish the response); used when this shard fell
    /// so far behind that events were dropped for it.
    pub fn clear(&mut self) {
        for (_, ws) in std::mem::take(&mut self.by_key) {
            for w in ws.exact.iter().chain(&ws.recursive) {
                w.end();
            }
        }
        self.count = 0;
    }

    /// Registers a watcher; `None` when the shard is at `WATCHERS_PER_SHARD_MAX`.
    pub fn register(
        &mut self,
        key: &str,
        recursive: bool,
        stream: bool,
        since: u64,
    ) -> Option<Rc<Watch<P>>> {
        if self.count >= WATCHERS_PER_SHARD_MAX {
            return None;
        }
        let shared = match self.by_key.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Rc::from(key),
        };
        let ws = self
            .by_key
            .entry(shared.clone())
            .or_insert_with(|| Watchers {
                exact: Vec::new(),
                recursive: Vec::new(),
            });
        let list = if recursive {
            &mut ws.recursive
        } else {
            &mut ws.exact
        };
        let w = Rc::new(Watch {
            key: shared,
            recursive,
            stream,
            since,
            pos: Cell::new(list.len() as u32),
            inbox: RefCell::new(Inbox {
                first: None,
                rest: None,
                ended: false,
            }),
            waker: Cell::new(None),
        });
        list.push(w.clone());
        self.count += 1;
        Some(w)
    }

    /// Removes a watcher (no-op if the registry already let it go). O(1).
    pub fn remove(&mut self, w: &Watch<P>) {
        let pos = w.pos.replace(UNLISTED);
        if pos == UNLISTED {
            return;
        }
        let Some(ws) = self.by_key.get_mut(&*w.key) else {
            return;
        };
        let list = if w.recursive {
            &mut ws.recursive
        } else {
            &mut ws.exact
        };
        let pos = pos as usize;
        debug_assert!(list.get(pos).is_some_and(|x| std::ptr::eq(&**x, w)));
        if pos >= list.len() {
            return;
        }
        list.swap_remove(pos);
        if let Some(moved) = list.get(pos) {
            moved.pos.set(pos as u32);
        }
        self.count -= 1;
        if ws.is_empty() {
            self.by_key.remove(&*w.key);
        }
    }

    /// Delivers a batch of events (in index order). `render` makes an event's payload; it is
    /// called at most once per event, and only if a watcher wants the event.
    pub fn dispatch(&mut self, events: &[Arc<Event>], mut render: impl FnMut(&Event) -> P) {
        for ev in events {
            if self.count == 0 {
                return;
            }
            if ev.refresh {
                continue;
            }
            let mut payload = None;
            let mut d = Dispatch {
                ev,
                payload: &mut payload,
                render: &mut render,
            };
            let key = ev.key();
            // Path prefixes of the event key: "/", "/a", "/a/b", ..., then the key itself.
            if key != "/" {
                self.count -= d.visit(&mut self.by_key, "/", Lists::Recursive);
                for (i, _) in key.match_indices('/').skip(1) {
                    self.count -= d.visit(&mut self.by_key, &key[..i], Lists::Recursive);
                }
            }
            self.count -= d.visit(&mut self.by_key, key, Lists::Both);
            let dir_gone = matches!(ev.action, Action::Delete | Action::Expire)
                && ev.prev_node.as_ref().is_some_and(|p| p.dir);
            if dir_gone {
                self.count -= d.visit_under(&mut self.by_key, key);
            }
        }
    }
}

/// One event's walk over the registry, its payload rendered on first use.
struct Dispatch<'a, P, F> {
    ev: &'a Event,
    payload: &'a mut Option<P>,
    render: &'a mut F,
}

impl<P: Clone, F: FnMut(&Event) -> P> Dispatch<'_, P, F> {
    /// Offers the event to the watchers of `path`; returns how many left the registry.
    fn visit(
        &mut self,
        map: &mut BTreeMap<Rc<str>, Watchers<P>>,
        path: &str,
        lists: Lists,
    ) -> usize {
        let Some(ws) = map.get_mut(path) else {
            return 0;
        };
        let mut gone = self.offer(path, true, &mut ws.recursive);
        if lists == Lists::Both {
            gone += self.offer(path, false, &mut ws.exact);
        }
        if ws.is_empty() {
            map.remove(path);
        }
        gone
    }

    /// A dir delete/expire: every watcher strictly under the dir.
    fn visit_under(&mut self, map: &mut BTreeMap<Rc<str>, Watchers<P>>, dir: &str) -> usize {
        let lower = if dir == "/" {
            "/".to_string()
        } else {
            format!("{dir}/")
        };
        let mut gone = 0;
        let mut emptied = Vec::new();
        for (path, ws) in map.range_mut::<str, _>((
            std::ops::Bound::Included(lower.as_str()),
            std::ops::Bound::Unbounded,
        )) {
            if !path.starts_with(&lower) {
                break;
            }
            if **path == *dir {
                continue;
            }
            gone += self.offer(path, true, &mut ws.recursive);
            gone += self.offer(path, false, &mut ws.exact);
            if ws.is_empty() {
                emptied.push(path.clone());
            }
        }
        for path in emptied {
            map.remove(&path);
        }
        gone
    }

    /// Offers the event to one list (all its watchers share the path and the recursive flag,
    /// so the match is decided once); returns how many left the list.
    fn offer(&mut self, path: &str, recursive: bool, list: &mut Vec<Rc<Watch<P>>>) -> usize {
        if list.is_empty() || !live_matches(path, recursive, self.ev) {
            return 0;
        }
        let index = self.ev.index();
        let before = list.len();
        let (payload, render, ev) = (&mut *self.payload, &mut *self.render, self.ev);
        list.retain(|w| {
            if index < w.since {
                return true;
            }
            let p = payload.get_or_insert_with(|| render(ev)).clone();
            let keep = w.offer(p);
            if !keep {
                w.pos.set(UNLISTED);
            }
            keep
        });
        let gone = before - list.len();
        if gone > 0 {
            for (i, w) in list.iter().enumerate() {
                w.pos.set(i as u32);
            }
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringd_store::{Command, Store};

    fn set(store: &mut Store, key: &str) -> Arc<Event> {
        Arc::new(
            store
                .apply(&Command::Set {
                    key: key.into(),
                    dir: false,
                    value: "v".into(),
                    expire: None,
                    refresh: false,
                    at: 0,
                })
                .unwrap(),
        )
    }

    fn next(w: &Watch<u64>) -> Option<u64> {
        match w.try_next() {
            Some(Delivery::Event(i)) => Some(i),
            _ => None,
        }
    }

    /// Renders an event as its index, counting renders.
    fn dispatch(reg: &mut Registry<u64>, events: &[Arc<Event>]) -> usize {
        let mut renders = 0;
        reg.dispatch(events, |ev| {
            renders += 1;
            ev.index()
        });
        renders
    }

    #[test]
    fn a_long_poll_takes_one_event_and_leaves() {
        let mut store = Store::new();
        let mut reg = Registry::default();
        let ws: Vec<_> = (0..3)
            .map(|_| reg.register("/a", false, false, 1).unwrap())
            .collect();
        let ev = set(&mut store, "/a");
        assert_eq!(dispatch(&mut reg, &[ev.clone(), set(&mut store, "/a")]), 1);
        assert!(reg.is_empty());
        for w in &ws {
            assert_eq!(next(w), Some(ev.index()));
            assert!(w.try_next().is_none());
        }
    }

    #[test]
    fn proper_prefixes_reach_recursive_watchers_only_and_hidden_keys_none() {
        let mut store = Store::new();
        let mut reg = Registry::default();
        let flat = reg.register("/d", false, true, 1).unwrap();
        let deep = reg.register("/d", true, true, 1).unwrap();
        let root = reg.register("/", true, true, 1).unwrap();
        let other = reg.register("/dd", true, true, 1).unwrap();
        let a = set(&mut store, "/d/x");
        let b = set(&mut store, "/d/_hidden");
        assert_eq!(dispatch(&mut reg, &[a.clone(), b]), 1);
        assert_eq!(next(&deep), Some(a.index()));
        assert_eq!(next(&root), Some(a.index()));
        assert!(next(&deep).is_none() && next(&root).is_none());
        assert!(next(&flat).is_none() && next(&other).is_none());
        assert_eq!(reg.len(), 4);
    }

    #[test]
    fn a_dir_delete_reaches_every_watcher_under_it() {
        let mut store = Store::new();
        let mut reg = Registry::default();
        set(&mut store, "/d/x/y");
        let under = reg.register("/d/x/y", false, false, 1).unwrap();
        let dir = reg.register("/d", false, false, 1).unwrap();
        let beside = reg.register("/dd/x", false, false, 1).unwrap();
        let ev = Arc::new(
            store
                .apply(&Command::Delete {
                    key: "/d".into(),
                    dir: false,
                    recursive: true,
                    at: 0,
                })
                .unwrap(),
        );
        dispatch(&mut reg, std::slice::from_ref(&ev));
        assert_eq!(next(&under), Some(ev.index()));
        assert_eq!(next(&dir), Some(ev.index()));
        assert!(next(&beside).is_none());
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn a_future_wait_index_is_respected() {
        let mut store = Store::new();
        let mut reg = Registry::default();
        let w = reg.register("/a", false, false, 3).unwrap();
        dispatch(&mut reg, &[set(&mut store, "/a"), set(&mut store, "/a")]);
        assert!(next(&w).is_none());
        let third = set(&mut store, "/a");
        dispatch(&mut reg, std::slice::from_ref(&third));
        assert_eq!(next(&w), Some(third.index()));
    }

    #[test]
    fn a_stream_that_falls_behind_is_ended_after_its_buffer() {
        let mut store = Store::new();
        let mut reg = Registry::default();
        let w = reg.register("/s", false, true, 1).unwrap();
        let events: Vec<_> = (0..STREAM_WATCHER_BUFFER + 5)
            .map(|_| set(&mut store, "/s"))
            .collect();
        dispatch(&mut reg, &events);
        assert!(reg.is_empty());
        assert_eq!(w.pending(), STREAM_WATCHER_BUFFER);
        for ev in &events[..STREAM_WATCHER_BUFFER] {
            assert_eq!(next(&w), Some(ev.index()));
        }
        assert!(matches!(w.try_next(), Some(Delivery::Ended)));
    }

    #[test]
    fn removal_in_any_order_keeps_every_position_right() {
        let mut store = Store::new();
        let mut reg = Registry::default();
        let ws: Vec<_> = (0..50)
            .map(|i| reg.register("/k", i % 2 == 0, false, 1).unwrap())
            .collect();
        for i in [7usize, 0, 49, 20, 21, 48, 1, 30] {
            reg.remove(&ws[i]);
            reg.remove(&ws[i]);
        }
        assert_eq!(reg.len(), 42);
        let ev = set(&mut store, "/k");
        dispatch(&mut reg, std::slice::from_ref(&ev));
        assert!(reg.is_empty());
        for (i, w) in ws.iter().enumerate() {
            let removed = [7usize, 0, 49, 20, 21, 48, 1, 30].contains(&i);
            assert_eq!(next(w).is_some(), !removed, "watcher {i}");
        }
    }

    #[test]
    fn clear_ends_every_watcher() {
        let mut reg: Registry<u64> = Registry::default();
        let a = reg.register("/a", false, false, 1).unwrap();
        let b = reg.register("/b", true, true, 1).unwrap();
        reg.clear();
        assert!(reg.is_empty());
        assert!(matches!(a.try_next(), Some(Delivery::Ended)));
        assert!(matches!(b.try_next(), Some(Delivery::Ended)));
        reg.remove(&a);
        assert!(reg.is_empty());
    }
}
