//! A shard's live watchers, keyed by watched path. The raft shard sends each shard one
//! batch of events per applied batch; the shard's dispatcher walks the registry once per
//! event: the event key's path prefixes, plus (for a dir delete/expire) the watchers under
//! the dir. Matching itself is the store crate's `live_matches`, shared with the tests.

use crate::limits::{STREAM_WATCHER_BUFFER, WATCHERS_PER_SHARD_MAX};
use ringd_store::{watch::live_matches, Action, Event};
use std::collections::BTreeMap;
use std::sync::Arc;

struct Entry {
    id: u64,
    recursive: bool,
    stream: bool,
    /// First index this watcher may receive.
    since: u64,
    tx: flume::Sender<Arc<Event>>,
}

#[derive(Default)]
pub struct Registry {
    by_key: BTreeMap<String, Vec<Entry>>,
    count: usize,
    next_id: u64,
}

/// The receiving side held by the connection task.
pub struct WatchHandle {
    pub id: u64,
    pub key: String,
    pub rx: flume::Receiver<Arc<Event>>,
}

impl Registry {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Ends every watcher (their connections see the channel close and finish the
    /// response); used when this shard fell so far behind that events were dropped for it.
    pub fn clear(&mut self) {
        self.by_key.clear();
        self.count = 0;
    }

    /// Registers a watcher; `None` when the shard is at `WATCHERS_PER_SHARD_MAX`.
    pub fn register(
        &mut self,
        key: &str,
        recursive: bool,
        stream: bool,
        since: u64,
    ) -> Option<WatchHandle> {
        if self.count >= WATCHERS_PER_SHARD_MAX {
            return None;
        }
        let (tx, rx) = flume::bounded(if stream { STREAM_WATCHER_BUFFER } else { 1 });
        self.next_id += 1;
        let id = self.next_id;
        self.by_key.entry(key.to_string()).or_default().push(Entry {
            id,
            recursive,
            stream,
            since,
            tx,
        });
        self.count += 1;
        Some(WatchHandle {
            id,
            key: key.to_string(),
            rx,
        })
    }

    /// Removes a watcher (no-op if already gone).
    pub fn remove(&mut self, key: &str, id: u64) {
        if let Some(list) = self.by_key.get_mut(key) {
            let before = list.len();
            list.retain(|e| e.id != id);
            self.count -= before - list.len();
            if list.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    /// Delivers a batch of events (in index order).
    pub fn dispatch(&mut self, events: &[Arc<Event>]) {
        if self.count == 0 {
            return;
        }
        for ev in events {
            if ev.refresh {
                continue;
            }
            let key = ev.key();
            // Path prefixes of the event key: "/", "/a", "/a/b", ...
            self.deliver_at("/", ev);
            for (i, _) in key.match_indices('/').skip(1) {
                self.deliver_at(&key[..i], ev);
            }
            if key != "/" {
                self.deliver_at(key, ev);
            }
            let dir_gone = matches!(ev.action, Action::Delete | Action::Expire)
                && ev.prev_node.as_ref().is_some_and(|p| p.dir);
            if dir_gone {
                let lower = if key == "/" {
                    "/".to_string()
                } else {
                    format!("{key}/")
                };
                let under: Vec<String> = self
                    .by_key
                    .range(lower.clone()..)
                    .take_while(|(k, _)| k.starts_with(&lower))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in under {
                    self.deliver_at(&k, ev);
                }
            }
        }
    }

    fn deliver_at(&mut self, watch_key: &str, ev: &Arc<Event>) {
        let Some(list) = self.by_key.get_mut(watch_key) else {
            return;
        };
        let before = list.len();
        list.retain(|e| {
            if ev.index() < e.since || !live_matches(watch_key, e.recursive, ev) {
                return true;
            }
            // A long poll takes one event and is done; a stream that cannot keep up is closed
            // (as etcd closes a watcher whose channel is full) so memory stays bounded.
            e.tx.try_send(ev.clone()).is_ok() && e.stream
        });
        self.count -= before - list.len();
        if list.is_empty() {
            self.by_key.remove(watch_key);
        }
    }
}
