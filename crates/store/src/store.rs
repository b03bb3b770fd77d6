//! The v2 tree and its verbs, ported from etcd's v2store (store.go, node.go).

use crate::{Error, Event, EtcdIndex};

/// A store mutation: one log payload. Mirrors etcd's v2store API exactly; mapping an HTTP
/// request to a command (etcdserver's applyV2Request) is the caller's job.
/// Keys are absolute, cleaned paths ("/a/b"); `expire` is an absolute unix time in
/// nanoseconds (`None` = no TTL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `store.Set`: create or replace. With `refresh`, the key must exist and keeps its value.
    Set { key: String, dir: bool, value: String, expire: Option<u64>, refresh: bool },
    /// `store.Create`: fails with 105 if the key exists. `unique` = POST in-order key under
    /// `key` named `%020d` of the new index.
    Create { key: String, dir: bool, value: String, expire: Option<u64>, unique: bool },
    /// `store.Update` (prevExist=true without prevValue/prevIndex).
    Update { key: String, value: String, expire: Option<u64>, refresh: bool },
    /// `store.CompareAndSwap`: empty `prev_value` / zero `prev_index` mean "no check".
    CompareAndSwap {
        key: String,
        prev_value: String,
        prev_index: u64,
        value: String,
        expire: Option<u64>,
        refresh: bool,
    },
    /// `store.Delete`.
    Delete { key: String, dir: bool, recursive: bool },
    /// `store.CompareAndDelete`.
    CompareAndDelete { key: String, prev_value: String, prev_index: u64 },
    /// `store.DeleteExpiredKeys(cutoff)`: expire every node whose expiration <= cutoff.
    Expire { cutoff: u64 },
}

/// Counters for /v2/stats/store that only the writer can know (reads are counted by the
/// shards that serve them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub sets_success: u64,
    pub sets_fail: u64,
    pub delete_success: u64,
    pub delete_fail: u64,
    pub update_success: u64,
    pub update_fail: u64,
    pub create_success: u64,
    pub create_fail: u64,
    pub compare_and_swap_success: u64,
    pub compare_and_swap_fail: u64,
    pub compare_and_delete_success: u64,
    pub compare_and_delete_fail: u64,
    pub expire_count: u64,
}

/// The mutable store, owned by the single writer (the raft shard).
pub struct Store {}

/// An immutable snapshot of the store, cheap to clone and `Send + Sync`.
#[derive(Clone)]
pub struct StoreView {}

impl Store {
    pub fn new() -> Store {
        todo!()
    }

    /// The current etcd index.
    pub fn index(&self) -> EtcdIndex {
        todo!()
    }

    /// Applies one command. On success the index advanced by exactly one (Expire: see
    /// `expire`); on failure nothing changed and the error's `index` is the current index.
    /// `Command::Expire` returns the *last* expire event or KeyNotFound if nothing expired;
    /// callers that need every event use `expire`.
    pub fn apply(&mut self, cmd: &Command) -> Result<Event, Error> {
        let _ = cmd;
        todo!()
    }

    /// Expires every node whose expiration <= cutoff (a TTL'd dir with its children is one
    /// event), returning the events in index order.
    pub fn expire(&mut self, cutoff: u64) -> Vec<Event> {
        let _ = cutoff;
        todo!()
    }

    /// The earliest expiration of any node, for the TTL wheel.
    pub fn next_expiration(&self) -> Option<u64> {
        todo!()
    }

    /// An O(1) immutable snapshot.
    pub fn view(&self) -> StoreView {
        todo!()
    }

    pub fn write_stats(&self) -> &WriteStats {
        todo!()
    }
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl StoreView {
    pub fn index(&self) -> EtcdIndex {
        todo!()
    }

    /// `store.Get`: action "get"; errors 100 (cause: first missing component) and 104.
    pub fn get(&self, key: &str, recursive: bool, sorted: bool) -> Result<Event, Error> {
        let _ = (key, recursive, sorted);
        todo!()
    }

    /// Number of nodes (files and dirs, root excluded), for metrics.
    pub fn node_count(&self) -> u64 {
        todo!()
    }
}
