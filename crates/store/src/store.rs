//! The v2 tree and its verbs, ported from etcd's v2store (store.go, node.go).
//!
//! Each verb follows etcd 3.4's code path step by step, including where it checks what and
//! which error it returns first, because clients observe exactly that. Every verb validates
//! before it mutates, so a failure changes nothing (except the stats counters, see below) and
//! consumes no index.
//!
//! Stats: etcd counts a failure as a *success* wherever its Go code returns an error without
//! assigning it to the deferred-checked `err` variable. We replicate that (see `WriteStats`):
//! update/compareAndSwap/delete on the root (107), update of a dir with a value (102), and
//! compareAndDelete on a dir (102) or with a failed compare (101) count as successes; a
//! create whose path runs through a file (104) also bumps `sets_fail`.

use std::collections::BTreeSet;
use std::num::NonZeroU64;

use crate::event::{Action, NodeRepr};
use crate::tree::{self, Children, Miss, Node};
use crate::{Error, ErrorCode, EtcdIndex, Event};

/// etcd treats an expire time before 2000-01-01T00:00:00Z as "no TTL" in Set/Create
/// (`minExpireTime` in store.go; a zero time serialised through JSON lands there).
const MIN_EXPIRE_NS: u64 = 946_684_800 * 1_000_000_000;

/// A store mutation: one log payload. Mirrors etcd's v2store API exactly; mapping an HTTP
/// request to a command (etcdserver's applyV2Request) is the caller's job.
/// Keys are absolute, cleaned paths ("/a/b"); `expire` is an absolute unix time in
/// nanoseconds (`None` = no TTL).
///
/// `at` is the time of the write (unix nanoseconds), stamped by the leader with the clock it
/// stamps `expire` from; it becomes the event's `time`, against which the event's `ttl`
/// fields are rendered for as long as the event is served (etcd renders an event once, when it
/// applies it, and serves those bytes from its history). 0 means "not stamped" (tests, and log
/// entries written before `at` existed): such events are rendered against the serving time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `store.Set`: create or replace. With `refresh`, the key must exist and keeps its value.
    Set {
        key: String,
        dir: bool,
        value: String,
        expire: Option<u64>,
        refresh: bool,
        at: u64,
    },
    /// `store.Create`: fails with 105 if the key exists. `unique` = POST in-order key under
    /// `key` named `%020d` of the new index.
    Create {
        key: String,
        dir: bool,
        value: String,
        expire: Option<u64>,
        unique: bool,
        at: u64,
    },
    /// `store.Update` (prevExist=true without prevValue/prevIndex).
    Update {
        key: String,
        value: String,
        expire: Option<u64>,
        refresh: bool,
        at: u64,
    },
    /// `store.CompareAndSwap`: empty `prev_value` / zero `prev_index` mean "no check".
    CompareAndSwap {
        key: String,
        prev_value: String,
        prev_index: u64,
        value: String,
        expire: Option<u64>,
        refresh: bool,
        at: u64,
    },
    /// `store.Delete`.
    Delete {
        key: String,
        dir: bool,
        recursive: bool,
        at: u64,
    },
    /// `store.CompareAndDelete`.
    CompareAndDelete {
        key: String,
        prev_value: String,
        prev_index: u64,
        at: u64,
    },
    /// `store.DeleteExpiredKeys(cutoff)`: expire every node whose expiration <= cutoff.
    Expire { cutoff: u64 },
}

impl Command {
    /// Stamps a write with the leader's clock `now` (unix nanoseconds): its time `at`, and for
    /// the verbs that take a TTL the expiration `now + ttl_secs` (`None`: no TTL). The one
    /// place where wall-clock time enters a write; an `Expire` carries its own cutoff.
    pub fn stamp(&mut self, now: u64, ttl_secs: Option<u64>) {
        let expiration = ttl_secs.map(|t| now.saturating_add(t.saturating_mul(1_000_000_000)));
        match self {
            Command::Set { expire, at, .. }
            | Command::Create { expire, at, .. }
            | Command::Update { expire, at, .. }
            | Command::CompareAndSwap { expire, at, .. } => {
                *expire = expiration;
                *at = now;
            }
            Command::Delete { at, .. } | Command::CompareAndDelete { at, .. } => *at = now,
            Command::Expire { .. } => {}
        }
    }

    /// When the command's events happen: a write's `at` (`None` if not stamped), an expiry
    /// pass's `cutoff`.
    pub fn time(&self) -> Option<u64> {
        match self {
            Command::Set { at, .. }
            | Command::Create { at, .. }
            | Command::Update { at, .. }
            | Command::CompareAndSwap { at, .. }
            | Command::Delete { at, .. }
            | Command::CompareAndDelete { at, .. } => (*at != 0).then_some(*at),
            Command::Expire { cutoff } => Some(*cutoff),
        }
    }
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
pub struct Store {
    root: Node,
    index: u64,
    /// Files and dirs, root excluded; kept exact by every insert and removal.
    node_count: u64,
    /// Every TTL'd node as (expiration, full path), so the next expiry is the first entry.
    /// Ordered by key after expiration, so a TTL'd dir expires before its children that share
    /// its expiration (one event for the subtree) and the order is deterministic.
    expiry: BTreeSet<(u64, Box<str>)>,
    stats: WriteStats,
}

/// An immutable snapshot of the store, cheap to clone and `Send + Sync`.
#[derive(Clone)]
pub struct StoreView {
    root: Node,
    index: u64,
    node_count: u64,
}

impl std::fmt::Debug for StoreView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreView")
            .field("index", &self.index)
            .field("node_count", &self.node_count)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("index", &self.index)
            .field("node_count", &self.node_count)
            .field("ttl_nodes", &self.expiry.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The outcome of etcd's `node.Compare`, with the cause text of a mismatch.
fn compare(n: &Node, prev_value: &str, prev_index: u64) -> Result<(), String> {
    let index_match = prev_index == 0 || n.modified == prev_index;
    let value_match = prev_value.is_empty() || n.value() == prev_value;
    match (value_match, index_match) {
        (true, true) => Ok(()),
        (false, true) => Err(format!("[{} != {}]", prev_value, n.value())),
        (true, false) => Err(format!("[{} != {}]", prev_index, n.modified)),
        (false, false) => Err(format!(
            "[{} != {}] [{} != {}]",
            prev_value,
            n.value(),
            prev_index,
            n.modified
        )),
    }
}

/// The `node` of a delete/expire/compareAndDelete event: key and indexes only (plus `dir`
/// for delete/expire of a dir); value and TTL live in `prevNode`.
fn removal_node(path: String, dir: bool, modified: u64, created: u64) -> NodeRepr {
    NodeRepr {
        key: Some(path),
        dir,
        value: None,
        expiration: None,
        modified_index: modified,
        created_index: created,
        nodes: None,
    }
}

impl Store {
    pub fn new() -> Store {
        Store {
            root: Node::new_root(),
            index: 0,
            node_count: 0,
            expiry: BTreeSet::new(),
            stats: WriteStats::default(),
        }
    }

    /// The current etcd index.
    pub fn index(&self) -> EtcdIndex {
        EtcdIndex(self.index)
    }

    /// Applies one command. On success the index advanced by exactly one (Expire: see
    /// `expire`); on failure nothing changed and the error's `index` is the current index.
    /// `Command::Expire` returns the *last* expire event or KeyNotFound if nothing expired;
    /// callers that need every event use `expire`. The event's `time` is the command's.
    pub fn apply(&mut self, cmd: &Command) -> Result<Event, Error> {
        let mut result = self.apply_verb(cmd);
        if let Ok(e) = &mut result {
            e.time = cmd.time();
        }
        result
    }

    fn apply_verb(&mut self, cmd: &Command) -> Result<Event, Error> {
        match cmd {
            Command::Set {
                key,
                dir,
                value,
                expire,
                refresh,
                ..
            } => self.set(key, *dir, value, *expire, *refresh),
            Command::Create {
                key,
                dir,
                value,
                expire,
                unique,
                ..
            } => self.create(key, *dir, value, *expire, *unique),
            Command::Update {
                key,
                value,
                expire,
                refresh,
                ..
            } => self.update(key, value, *expire, *refresh),
            Command::CompareAndSwap {
                key,
                prev_value,
                prev_index,
                value,
                expire,
                refresh,
                ..
            } => self.compare_and_swap(key, prev_value, *prev_index, value, *expire, *refresh),
            Command::Delete {
                key,
                dir,
                recursive,
                ..
            } => self.delete(key, *dir, *recursive),
            Command::CompareAndDelete {
                key,
                prev_value,
                prev_index,
                ..
            } => self.compare_and_delete(key, prev_value, *prev_index),
            Command::Expire { cutoff } => match self.expire(*cutoff).pop() {
                Some(e) => Ok(e),
                None => Err(self.error(ErrorCode::KeyNotFound, "")),
            },
        }
    }

    /// Expires every node whose expiration <= cutoff (a TTL'd dir with its children is one
    /// event), returning the events in index order. etcd's `DeleteExpiredKeys`.
    pub fn expire(&mut self, cutoff: u64) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some((exp, path)) = self.expiry.first().cloned() {
            if exp > cutoff {
                break;
            }
            let comps = tree::components(&path);
            let node = match tree::lookup(&self.root, &comps) {
                Ok(n) if !comps.is_empty() && n.expire_ns() == Some(exp) => n.clone(),
                // Unreachable while the index is exact; dropping a stale entry beats looping.
                _ => {
                    self.expiry.remove(&(exp, path));
                    continue;
                }
            };
            self.index += 1;
            let prev = tree::repr_shallow(&path, &node);
            self.remove_at(&comps);
            self.stats.expire_count += 1;
            events.push(Event {
                action: Action::Expire,
                node: removal_node(path.into(), node.is_dir(), self.index, node.created),
                prev_node: Some(prev),
                etcd_index: self.index,
                refresh: false,
                time: Some(cutoff),
            });
        }
        events
    }

    /// The earliest expiration of any node, for the TTL wheel.
    pub fn next_expiration(&self) -> Option<u64> {
        self.expiry.first().map(|(e, _)| *e)
    }

    /// An O(1) immutable snapshot.
    pub fn view(&self) -> StoreView {
        StoreView {
            root: self.root.clone(),
            index: self.index,
            node_count: self.node_count,
        }
    }

    pub fn write_stats(&self) -> &WriteStats {
        &self.stats
    }

    /// Number of nodes (files and dirs, root excluded).
    pub fn node_count(&self) -> u64 {
        self.node_count
    }

    /// Number of TTL'd nodes (etcd's `HasTTLKeys` is `ttl_node_count() != 0`).
    pub fn ttl_node_count(&self) -> usize {
        self.expiry.len()
    }

    /// A store whose root is the dir at `key` in this one, with this store's index and
    /// stats, and every node below it with its indexes and expiration: `ringd migrate` serves
    /// etcd's `/1` (the v2 key space inside etcd's own store) as the root. The dir's own
    /// indexes and TTL are dropped (a root has none). O(nodes below `key`).
    pub fn reroot(&self, key: &str) -> Result<Store, Error> {
        let comps = tree::components(key);
        let node = self.get_node(&comps)?;
        let Some(children) = node.children() else {
            return Err(self.error(ErrorCode::NotDir, tree::join(&comps)));
        };
        let prefix = tree::join(&comps);
        let expiry = self
            .expiry
            .iter()
            .filter_map(|(e, path)| {
                if comps.is_empty() {
                    return Some((*e, path.clone()));
                }
                let rest = path.strip_prefix(prefix.as_str())?;
                rest.starts_with('/').then(|| (*e, Box::<str>::from(rest)))
            })
            .collect();
        let mut node_count = 0u64;
        let mut stack: Vec<&Node> = children.iter().collect();
        while let Some(n) = stack.pop() {
            node_count += 1;
            if let Some(ch) = n.children() {
                stack.extend(ch.iter());
            }
        }
        // The children are shared with this store, not copied (a persistent tree).
        let root = Node::dir_with("", 0, 0, None, children.clone());
        Ok(Store::from_parts(
            root,
            self.index,
            node_count,
            expiry,
            self.stats.clone(),
        ))
    }

    /// The tree root, for `codec`'s snapshot encoder.
    pub(crate) fn root(&self) -> &Node {
        &self.root
    }

    /// Assembles a store from a decoded snapshot. The caller guarantees that `node_count`
    /// and `expiry` mirror the tree (see `check_invariants` in the tests).
    pub(crate) fn from_parts(
        root: Node,
        index: u64,
        node_count: u64,
        expiry: BTreeSet<(u64, Box<str>)>,
        stats: WriteStats,
    ) -> Store {
        Store {
            root,
            index,
            node_count,
            expiry,
            stats,
        }
    }

    fn error(&self, code: ErrorCode, cause: impl Into<String>) -> Error {
        Error::new(code, cause, self.index)
    }

    fn miss_error(&self, comps: &[&str], miss: Miss) -> Error {
        match miss {
            Miss::NotFound(n) => self.error(ErrorCode::KeyNotFound, tree::join(&comps[..n])),
            Miss::NotDir(n) => self.error(ErrorCode::NotDir, tree::join(&comps[..n])),
        }
    }

    /// The existing node at `comps`, as an owned handle so `self` can be mutated afterwards.
    fn get_node(&self, comps: &[&str]) -> Result<Node, Error> {
        tree::lookup(&self.root, comps)
            .cloned()
            .map_err(|m| self.miss_error(comps, m))
    }

    fn track_expiry(&mut self, path: &str, expire: Option<NonZeroU64>) {
        if let Some(e) = expire {
            self.expiry.insert((e.get(), path.into()));
        }
    }

    fn untrack_expiry(&mut self, path: &str, expire: Option<NonZeroU64>) {
        if let Some(e) = expire {
            self.expiry.remove(&(e.get(), Box::<str>::from(path)));
        }
    }

    /// Replaces the existing node at `comps` (non-empty) with `node`, keeping its slot.
    fn replace_at(&mut self, comps: &[&str], node: Node) {
        let Some((name, parents)) = comps.split_last() else {
            return;
        };
        if let Some(slot) =
            tree::children_mut(&mut self.root, parents).and_then(|ch| ch.get_mut(name))
        {
            *slot = node;
        }
    }

    /// Unlinks the node at `comps` (non-empty) and forgets its whole subtree: node count and
    /// every TTL entry inside it. O(subtree), like etcd's recursive `node.Remove`.
    fn remove_at(&mut self, comps: &[&str]) {
        let Some((name, parents)) = comps.split_last() else {
            return;
        };
        let removed = tree::children_mut(&mut self.root, parents).and_then(|ch| ch.remove(name));
        if let Some(node) = removed {
            self.forget_subtree(&tree::join(comps), &node);
        }
    }

    fn forget_subtree(&mut self, path: &str, node: &Node) {
        let (mut count, mut ttl) = (0u64, Vec::new());
        tree::for_each_in_subtree(path, node, |n, p| {
            count += 1;
            if let (Some(e), Some(p)) = (n.expire(), p) {
                ttl.push((e.get(), Box::<str>::from(p)));
            }
        });
        self.node_count = self.node_count.saturating_sub(count);
        for entry in ttl {
            self.expiry.remove(&entry);
        }
    }

    /// etcd's `Set`: create or replace a file (or replace a file with a dir).
    fn set(
        &mut self,
        key: &str,
        dir: bool,
        value: &str,
        expire: Option<u64>,
        refresh: bool,
    ) -> Result<Event, Error> {
        // A refresh keeps the value it finds, and fails where the key is missing. A plain set
        // walks the path once, in internal_create, whose checks fail it exactly where a
        // lookup would (a file on the path: NotDir at that file), and which makes the event's
        // prevNode from the node it replaces.
        let kept = if refresh {
            let comps = tree::components(key);
            match tree::lookup(&self.root, &comps) {
                Ok(n) => Some(n.value().to_string()),
                Err(m) => {
                    self.stats.sets_fail += 1;
                    return Err(self.miss_error(&comps, m));
                }
            }
        } else {
            None
        };
        let value = kept.as_deref().unwrap_or(value);
        match self.internal_create(key, dir, value, false, true, expire, Action::Set) {
            Ok(mut e) => {
                e.refresh = refresh;
                self.stats.sets_success += 1;
                Ok(e)
            }
            Err(err) => {
                self.stats.sets_fail += 1;
                Err(err)
            }
        }
    }

    /// etcd's `Create`.
    fn create(
        &mut self,
        key: &str,
        dir: bool,
        value: &str,
        expire: Option<u64>,
        unique: bool,
    ) -> Result<Event, Error> {
        match self.internal_create(key, dir, value, unique, false, expire, Action::Create) {
            Ok(e) => {
                self.stats.create_success += 1;
                Ok(e)
            }
            Err(err) => {
                // etcd's internalCreate bumps SetFail itself when its walk hits a file.
                if err.code == ErrorCode::NotDir {
                    self.stats.sets_fail += 1;
                }
                self.stats.create_fail += 1;
                Err(err)
            }
        }
    }

    /// etcd's `internalCreate`: creates missing parent dirs (created = modified = this
    /// write's index) and the node; `replace` lets it replace an existing *file*.
    #[allow(clippy::too_many_arguments)]
    fn internal_create(
        &mut self,
        key: &str,
        dir: bool,
        value: &str,
        unique: bool,
        replace: bool,
        expire: Option<u64>,
        action: Action,
    ) -> Result<Event, Error> {
        let next = self.index + 1;
        let unique_name = unique.then(|| format!("{:020}", next));
        let mut comps = tree::components(key);
        if let Some(name) = &unique_name {
            comps.push(name);
        }
        let Some((name, parents)) = comps.split_last() else {
            return Err(self.error(ErrorCode::RootReadOnly, "/"));
        };
        let name = *name;
        let expire = tree::stored_expire(expire.filter(|&e| e >= MIN_EXPIRE_NS));
        let path = tree::join(&comps);

        // Validate first (etcd's checkDir walk), touching nothing.
        let mut first_missing = None;
        let mut cur = &self.root;
        for (i, c) in parents.iter().enumerate() {
            let Some(children) = cur.children() else {
                return Err(self.error(ErrorCode::NotDir, tree::join(&parents[..i])));
            };
            match children.get(c) {
                Some(child) => cur = child,
                None => {
                    first_missing = Some(i);
                    break;
                }
            }
        }
        let mut prev = None;
        let mut replaced = None;
        if first_missing.is_none() {
            let Some(children) = cur.children() else {
                return Err(self.error(ErrorCode::NotDir, tree::join(parents)));
            };
            if let Some(existing) = children.get(name) {
                if !replace {
                    return Err(self.error(ErrorCode::NodeExist, path));
                }
                if existing.is_dir() {
                    return Err(self.error(ErrorCode::NotFile, path));
                }
                prev = Some(tree::repr_shallow(&path, existing));
                replaced = Some(existing.expire());
            }
        }

        // Mutate: cannot fail from here on.
        let node = if dir {
            Node::new_dir(name, next, expire)
        } else {
            Node::file(name, value, next, next, expire)
        };
        let mut node = node;
        match first_missing {
            None => {
                if let Some(children) = tree::children_mut(&mut self.root, parents) {
                    if children.insert(node).is_none() {
                        self.node_count += 1;
                    }
                }
            }
            Some(m) => {
                // Build the missing dirs bottom-up, then link the top one in a single insert.
                for j in (m..parents.len()).rev() {
                    let mut children = Children::new();
                    children.insert(node);
                    node = Node::dir_with(parents[j], next, next, None, children);
                }
                if let Some(children) = tree::children_mut(&mut self.root, &parents[..m]) {
                    children.insert(node);
                    self.node_count += (parents.len() - m) as u64 + 1;
                }
            }
        }
        if let Some(old_expire) = replaced {
            self.untrack_expiry(&path, old_expire);
        }
        self.track_expiry(&path, expire);
        self.index = next;

        Ok(Event {
            action,
            node: NodeRepr {
                key: Some(path),
                dir,
                value: (!dir).then(|| value.to_string()),
                expiration: expire.map(NonZeroU64::get),
                modified_index: next,
                created_index: next,
                nodes: None,
            },
            prev_node: prev,
            etcd_index: next,
            refresh: false,
            time: None,
        })
    }

    /// etcd's `Update`: new value (files) and TTL, same createdIndex. On a dir only the TTL
    /// changes; etcd 3.4's `node.Write` silently fails on dirs, so the dir keeps its stored
    /// modifiedIndex while the event reports the new index.
    fn update(
        &mut self,
        key: &str,
        value: &str,
        expire: Option<u64>,
        refresh: bool,
    ) -> Result<Event, Error> {
        let comps = tree::components(key);
        if comps.is_empty() {
            self.stats.update_success += 1; // etcd's quirk, see the module doc
            return Err(self.error(ErrorCode::RootReadOnly, "/"));
        }
        let n = match self.get_node(&comps) {
            Ok(n) => n,
            Err(e) => {
                self.stats.update_fail += 1;
                return Err(e);
            }
        };
        let path = tree::join(&comps);
        if n.is_dir() && !value.is_empty() {
            self.stats.update_success += 1; // etcd's quirk, see the module doc
            return Err(self.error(ErrorCode::NotFile, path));
        }
        let next = self.index + 1;
        // No minExpireTime clamp here: etcd's UpdateTTL takes the time as given.
        let expire = tree::stored_expire(expire);
        let prev = tree::repr_shallow(&path, &n);
        let new_value = if refresh { n.value() } else { value };
        let new_node = n.rewritten(new_value, next, expire);
        let event_value = (!n.is_dir()).then(|| new_value.to_string());
        self.replace_at(&comps, new_node);
        self.untrack_expiry(&path, n.expire());
        self.track_expiry(&path, expire);
        self.index = next;
        self.stats.update_success += 1;
        Ok(Event {
            action: Action::Update,
            node: NodeRepr {
                key: Some(path),
                dir: n.is_dir(),
                value: event_value,
                expiration: expire.map(NonZeroU64::get),
                modified_index: next,
                created_index: n.created,
                nodes: None,
            },
            prev_node: Some(prev),
            etcd_index: next,
            refresh,
            time: None,
        })
    }

    /// etcd's `CompareAndSwap` (files only).
    fn compare_and_swap(
        &mut self,
        key: &str,
        prev_value: &str,
        prev_index: u64,
        value: &str,
        expire: Option<u64>,
        refresh: bool,
    ) -> Result<Event, Error> {
        let comps = tree::components(key);
        if comps.is_empty() {
            self.stats.compare_and_swap_success += 1; // etcd's quirk, see the module doc
            return Err(self.error(ErrorCode::RootReadOnly, "/"));
        }
        let n = match self.get_node(&comps) {
            Ok(n) => n,
            Err(e) => {
                self.stats.compare_and_swap_fail += 1;
                return Err(e);
            }
        };
        let path = tree::join(&comps);
        if n.is_dir() {
            self.stats.compare_and_swap_fail += 1;
            return Err(self.error(ErrorCode::NotFile, path));
        }
        if let Err(cause) = compare(&n, prev_value, prev_index) {
            self.stats.compare_and_swap_fail += 1;
            return Err(self.error(ErrorCode::TestFailed, cause));
        }
        let next = self.index + 1;
        let expire = tree::stored_expire(expire);
        let new_value = if refresh { n.value() } else { value };
        let prev = tree::repr_shallow(&path, &n);
        let new_node = n.rewritten(new_value, next, expire);
        let event_value = Some(new_value.to_string());
        self.replace_at(&comps, new_node);
        self.untrack_expiry(&path, n.expire());
        self.track_expiry(&path, expire);
        self.index = next;
        self.stats.compare_and_swap_success += 1;
        Ok(Event {
            action: Action::CompareAndSwap,
            node: NodeRepr {
                key: Some(path),
                dir: false,
                value: event_value,
                expiration: expire.map(NonZeroU64::get),
                modified_index: next,
                created_index: n.created,
                nodes: None,
            },
            prev_node: Some(prev),
            etcd_index: next,
            refresh,
            time: None,
        })
    }

    /// etcd's `Delete`: `recursive` implies `dir`; `dir` on a file just deletes it.
    fn delete(&mut self, key: &str, dir: bool, recursive: bool) -> Result<Event, Error> {
        let comps = tree::components(key);
        if comps.is_empty() {
            self.stats.delete_success += 1; // etcd's quirk, see the module doc
            return Err(self.error(ErrorCode::RootReadOnly, "/"));
        }
        let dir = dir || recursive;
        let n = match self.get_node(&comps) {
            Ok(n) => n,
            Err(e) => {
                self.stats.delete_fail += 1;
                return Err(e);
            }
        };
        let path = tree::join(&comps);
        if let Some(children) = n.children() {
            if !dir {
                self.stats.delete_fail += 1;
                return Err(self.error(ErrorCode::NotFile, path));
            }
            if !children.is_empty() && !recursive {
                self.stats.delete_fail += 1;
                return Err(self.error(ErrorCode::DirNotEmpty, path));
            }
        }
        let prev = tree::repr_shallow(&path, &n);
        self.remove_at(&comps);
        self.index += 1;
        self.stats.delete_success += 1;
        Ok(Event {
            action: Action::Delete,
            node: removal_node(path, n.is_dir(), self.index, n.created),
            prev_node: Some(prev),
            etcd_index: self.index,
            refresh: false,
            time: None,
        })
    }

    /// etcd's `CompareAndDelete` (files only). Note: no root check in etcd; the root is a
    /// dir, so it gets 102, without a cause: etcd's store path of the root is its keys prefix
    /// `/1`, and v2http trims that prefix off every cause (`trimErrorPrefix`), which leaves
    /// nothing for the root. Every other cause is a key, so trimming leaves the key.
    fn compare_and_delete(
        &mut self,
        key: &str,
        prev_value: &str,
        prev_index: u64,
    ) -> Result<Event, Error> {
        let comps = tree::components(key);
        let n = match self.get_node(&comps) {
            Ok(n) => n,
            Err(e) => {
                self.stats.compare_and_delete_fail += 1;
                return Err(e);
            }
        };
        let path = tree::join(&comps);
        if n.is_dir() {
            self.stats.compare_and_delete_success += 1; // etcd's quirk (WIRE.md)
            let cause = if comps.is_empty() { "" } else { path.as_str() };
            return Err(self.error(ErrorCode::NotFile, cause));
        }
        if let Err(cause) = compare(&n, prev_value, prev_index) {
            self.stats.compare_and_delete_success += 1; // etcd's quirk (WIRE.md)
            return Err(self.error(ErrorCode::TestFailed, cause));
        }
        let prev = tree::repr_shallow(&path, &n);
        self.remove_at(&comps);
        self.index += 1;
        self.stats.compare_and_delete_success += 1;
        Ok(Event {
            action: Action::CompareAndDelete,
            node: removal_node(path, false, self.index, n.created),
            prev_node: Some(prev),
            etcd_index: self.index,
            refresh: false,
            time: None,
        })
    }
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl StoreView {
    pub fn index(&self) -> EtcdIndex {
        EtcdIndex(self.index)
    }

    /// `store.Get`: action "get"; errors 100 (cause: first missing component) and 104.
    /// Listings are always sorted by key (etcd's unsorted order is random, so sorted is a
    /// valid unsorted order too); `sorted` is accepted for the API's sake.
    pub fn get(&self, key: &str, recursive: bool, sorted: bool) -> Result<Event, Error> {
        let _ = sorted;
        let comps = tree::components(key);
        let n = tree::lookup(&self.root, &comps).map_err(|m| match m {
            Miss::NotFound(k) => {
                Error::new(ErrorCode::KeyNotFound, tree::join(&comps[..k]), self.index)
            }
            Miss::NotDir(k) => Error::new(ErrorCode::NotDir, tree::join(&comps[..k]), self.index),
        })?;
        let mut node = tree::repr_listing(&tree::join(&comps), n, recursive);
        if comps.is_empty() {
            // The root renders without a key (and its indexes are 0, hence omitted).
            node.key = None;
        }
        Ok(Event {
            action: Action::Get,
            node,
            prev_node: None,
            etcd_index: self.index,
            refresh: false,
            time: None,
        })
    }

    /// Number of nodes (files and dirs, root excluded), for metrics.
    pub fn node_count(&self) -> u64 {
        self.node_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A realistic "now" (2023-11) in unix nanoseconds; expirations must be past 2000.
    const T0: u64 = 1_700_000_000_000_000_000;
    const SEC: u64 = 1_000_000_000;

    fn set(key: &str, value: &str) -> Command {
        Command::Set {
            key: key.into(),
            dir: false,
            value: value.into(),
            expire: None,
            refresh: false,
            at: 0,
        }
    }
    fn set_ttl(key: &str, value: &str, expire: u64) -> Command {
        Command::Set {
            key: key.into(),
            dir: false,
            value: value.into(),
            expire: Some(expire),
            refresh: false,
            at: 0,
        }
    }
    fn set_dir(key: &str, expire: Option<u64>) -> Command {
        Command::Set {
            key: key.into(),
            dir: true,
            value: String::new(),
            expire,
            refresh: false,
            at: 0,
        }
    }
    fn create(key: &str, value: &str) -> Command {
        Command::Create {
            key: key.into(),
            dir: false,
            value: value.into(),
            expire: None,
            unique: false,
            at: 0,
        }
    }
    fn create_unique(key: &str, dir: bool) -> Command {
        Command::Create {
            key: key.into(),
            dir,
            value: "q".into(),
            expire: None,
            unique: true,
            at: 0,
        }
    }
    fn update(key: &str, value: &str, expire: Option<u64>) -> Command {
        Command::Update {
            key: key.into(),
            value: value.into(),
            expire,
            refresh: false,
            at: 0,
        }
    }
    fn cas(key: &str, prev_value: &str, prev_index: u64, value: &str) -> Command {
        Command::CompareAndSwap {
            key: key.into(),
            prev_value: prev_value.into(),
            prev_index,
            value: value.into(),
            expire: None,
            refresh: false,
            at: 0,
        }
    }
    fn delete(key: &str, dir: bool, recursive: bool) -> Command {
        Command::Delete {
            key: key.into(),
            dir,
            recursive,
            at: 0,
        }
    }
    fn cad(key: &str, prev_value: &str, prev_index: u64) -> Command {
        Command::CompareAndDelete {
            key: key.into(),
            prev_value: prev_value.into(),
            prev_index,
            at: 0,
        }
    }

    fn ok(s: &mut Store, cmd: Command) -> Event {
        let before = s.index().0;
        let e = s
            .apply(&cmd)
            .unwrap_or_else(|e| panic!("{cmd:?} failed: {e}"));
        assert_eq!(s.index().0, before + 1, "{cmd:?} must consume one index");
        assert_eq!(e.etcd_index, s.index().0);
        assert_eq!(e.index(), s.index().0);
        s.check_invariants();
        e
    }

    /// Applies a failing command and checks it changed nothing but the stats.
    fn fail(s: &mut Store, cmd: Command, code: ErrorCode, cause: &str) -> Error {
        let before = s.view();
        let before_all = before.get("/", true, true).ok();
        let err = match s.apply(&cmd) {
            Ok(e) => panic!("{cmd:?} succeeded: {e:?}"),
            Err(err) => err,
        };
        assert_eq!((err.code, err.cause.as_str()), (code, cause), "{cmd:?}");
        assert_eq!(err.index, before.index().0);
        assert_eq!(s.index(), before.index());
        assert_eq!(s.view().node_count(), before.node_count());
        assert_eq!(s.view().get("/", true, true).ok(), before_all);
        s.check_invariants();
        err
    }

    fn get(s: &Store, key: &str) -> NodeRepr {
        s.view()
            .get(key, false, false)
            .unwrap_or_else(|e| panic!("get {key}: {e}"))
            .node
    }

    fn get_err(s: &Store, key: &str) -> (ErrorCode, String) {
        let e = s.view().get(key, true, true).expect_err(key);
        (e.code, e.cause)
    }

    fn keys(nodes: &Option<Vec<NodeRepr>>) -> Vec<String> {
        nodes
            .iter()
            .flatten()
            .map(|n| n.key.clone().unwrap_or_default())
            .collect()
    }

    impl Store {
        /// Recounts the tree and rebuilds the expiry index from it.
        pub(crate) fn check_invariants(&self) {
            let mut count = 0u64;
            let mut ttl = BTreeSet::new();
            tree::for_each_in_subtree("/", &self.root, |n, p| {
                count += 1;
                if let (Some(e), Some(p)) = (n.expire(), p) {
                    ttl.insert((e.get(), Box::<str>::from(p)));
                }
                assert!(n.created <= self.index && n.modified <= self.index);
                if n.is_dir() {
                    assert_eq!(n.created, n.modified, "a dir's modifiedIndex never changes");
                }
            });
            assert_eq!(count - 1, self.node_count, "node_count (root excluded)");
            assert_eq!(self.view().node_count(), self.node_count);
            assert_eq!(ttl, self.expiry, "expiry index must mirror the tree");
            assert!(self.root.expire().is_none());
            assert_eq!(self.root.name(), "");
            // Every child holds its own name, and every map keeps its invariants.
            let mut stack = vec![&self.root];
            while let Some(n) = stack.pop() {
                if let Some(children) = n.children() {
                    children.check();
                    stack.extend(children.iter());
                }
            }
        }
    }

    #[test]
    fn reroot_keeps_indexes_expirations_and_hidden_nodes_below_the_new_root() {
        let mut s = Store::new();
        s.apply(&set("/0/members/a", "m")).unwrap(); // 1
        s.apply(&set("/1/a", "x")).unwrap(); // 2
        s.apply(&set_ttl("/1/d/t", "y", T0 + 5 * SEC)).unwrap(); // 3
        s.apply(&set("/1/d/_h", "hidden")).unwrap(); // 4
        s.apply(&Command::Update {
            key: "/1/a".into(),
            value: "x2".into(),
            expire: None,
            refresh: false,
            at: 0,
        })
        .unwrap(); // 5
        s.apply(&set_ttl("/0/x", "z", T0)).unwrap(); // 6
        let r = s.reroot("/1").unwrap();
        r.check_invariants();
        assert_eq!((r.index(), r.node_count()), (EtcdIndex(6), 4));
        assert_eq!(r.next_expiration(), Some(T0 + 5 * SEC));
        let a = get(&r, "/a");
        assert_eq!((a.created_index, a.modified_index), (2, 5));
        assert_eq!(get(&r, "/d/_h").value.as_deref(), Some("hidden"));
        assert_eq!(get(&r, "/d").created_index, 3);
        assert!(r.view().get("/0", false, false).is_err());
        assert_eq!(r.write_stats(), s.write_stats());
        // Expiring through the rerooted store removes the key under its new path.
        let mut r = r;
        let ev = r.expire(T0 + 5 * SEC);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].key(), "/d/t");
        assert_eq!(ev[0].etcd_index, 7);
        r.check_invariants();
        assert_eq!(
            s.reroot("/1/a").unwrap_err().code,
            ErrorCode::NotDir,
            "a file cannot be a root"
        );
        assert_eq!(s.reroot("/nope").unwrap_err().code, ErrorCode::KeyNotFound);
        let whole = s.reroot("/").unwrap();
        whole.check_invariants();
        assert_eq!(whole.node_count(), s.node_count());
    }

    #[test]
    fn a_built_snapshot_restores_to_the_tree_it_describes() {
        let stats = WriteStats {
            sets_success: 3,
            ..WriteStats::default()
        };
        let mut b = crate::SnapshotBuilder::new(9, &stats, 2);
        b.dir("d", 4, Some(T0), 2);
        b.file("_h", 5, 5, None, "hidden");
        b.file("f", 6, 9, Some(T0 + SEC), "v");
        b.file("k", 2, 3, None, "x");
        let s = Store::restore(&b.finish()).unwrap();
        s.check_invariants();
        assert_eq!((s.index(), s.node_count()), (EtcdIndex(9), 4));
        assert_eq!(s.write_stats(), &stats);
        let f = get(&s, "/d/f");
        assert_eq!((f.created_index, f.modified_index), (6, 9));
        assert_eq!(f.expiration, Some(T0 + SEC));
        assert_eq!(get(&s, "/d").expiration, Some(T0));
        assert_eq!(s.next_expiration(), Some(T0));
        // Children out of order, or an index past the store's, are refused by restore.
        let mut b = crate::SnapshotBuilder::new(9, &stats, 2);
        b.file("b", 1, 1, None, "");
        b.file("a", 1, 1, None, "");
        assert!(Store::restore(&b.finish()).is_err());
        let mut b = crate::SnapshotBuilder::new(9, &stats, 1);
        b.file("a", 1, 10, None, "");
        assert!(Store::restore(&b.finish()).is_err());
    }

    #[test]
    fn view_is_send_sync_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<StoreView>();
        fn assert_send<T: Send>() {}
        assert_send::<Store>();
    }

    #[test]
    fn empty_store_and_root() {
        let s = Store::new();
        assert_eq!(s.index(), EtcdIndex(0));
        let e = s.view().get("/", false, false).unwrap();
        assert_eq!(e.action, Action::Get);
        assert_eq!(e.etcd_index, 0);
        assert_eq!(
            e.node,
            NodeRepr {
                key: None,
                dir: true,
                value: None,
                expiration: None,
                modified_index: 0,
                created_index: 0,
                nodes: None
            }
        );
        assert_eq!(s.view().get("", true, true).unwrap().node.key, None);
        assert_eq!(s.next_expiration(), None);
        assert_eq!(s.view().node_count(), 0);
    }

    #[test]
    fn set_creates_parents_and_file() {
        let mut s = Store::new();
        ok(&mut s, set("/x", "0"));
        let e = ok(&mut s, set("/a/b/c", "v"));
        assert_eq!(e.action, Action::Set);
        assert_eq!(e.prev_node, None);
        assert_eq!(e.node.key.as_deref(), Some("/a/b/c"));
        assert_eq!(e.node.value.as_deref(), Some("v"));
        assert!(!e.node.dir);
        assert_eq!((e.node.created_index, e.node.modified_index), (2, 2));
        assert_eq!(e.node.expiration, None);
        assert!(!e.refresh);
        for dir in ["/a", "/a/b"] {
            let d = get(&s, dir);
            assert!(d.dir);
            assert_eq!((d.created_index, d.modified_index), (2, 2), "{dir}");
        }
        assert_eq!(s.view().node_count(), 4);
        // A child write never changes a dir's modifiedIndex.
        ok(&mut s, set("/a/b/d", "w"));
        ok(&mut s, delete("/a/b/c", false, false));
        assert_eq!(get(&s, "/a/b").modified_index, 2);
        assert_eq!(s.write_stats().sets_success, 3);
    }

    #[test]
    fn set_replaces_node_with_new_created_index() {
        let mut s = Store::new();
        ok(&mut s, set_ttl("/k", "one", T0 + 10 * SEC));
        let e = ok(&mut s, set("/k", "two"));
        assert_eq!((e.node.created_index, e.node.modified_index), (2, 2));
        let prev = e.prev_node.expect("prev");
        assert_eq!(prev.value.as_deref(), Some("one"));
        assert_eq!(prev.expiration, Some(T0 + 10 * SEC));
        assert_eq!((prev.created_index, prev.modified_index), (1, 1));
        // The plain set cleared the TTL.
        assert_eq!(s.next_expiration(), None);
        assert_eq!(get(&s, "/k").value.as_deref(), Some("two"));
        // Empty values are kept as "".
        let e = ok(&mut s, set("/e", ""));
        assert_eq!(e.node.value.as_deref(), Some(""));
        assert_eq!(get(&s, "/e").value.as_deref(), Some(""));
    }

    #[test]
    fn set_errors() {
        let mut s = Store::new();
        ok(&mut s, set("/f", "file"));
        ok(&mut s, set_dir("/d", None));
        fail(&mut s, set("/d", "x"), ErrorCode::NotFile, "/d");
        fail(&mut s, set_dir("/d", None), ErrorCode::NotFile, "/d");
        fail(&mut s, set("/f/x", "x"), ErrorCode::NotDir, "/f");
        fail(&mut s, set("/f/x/y", "x"), ErrorCode::NotDir, "/f");
        fail(&mut s, set("/", "x"), ErrorCode::RootReadOnly, "/");
        fail(&mut s, set_dir("/", None), ErrorCode::RootReadOnly, "/");
        assert_eq!(s.write_stats().sets_fail, 6);
        assert_eq!(s.write_stats().sets_success, 2);
    }

    #[test]
    fn set_dir_replaces_file() {
        let mut s = Store::new();
        ok(&mut s, set_ttl("/f", "file", T0 + SEC));
        let e = ok(
            &mut s,
            Command::Set {
                key: "/f".into(),
                dir: true,
                value: "ignored".into(),
                expire: None,
                refresh: false,
                at: 0,
            },
        );
        assert!(e.node.dir);
        assert_eq!(e.node.value, None);
        assert_eq!(e.node.created_index, 2);
        assert_eq!(e.prev_node.and_then(|p| p.value).as_deref(), Some("file"));
        let d = get(&s, "/f");
        assert!(d.dir);
        assert_eq!(d.nodes, None);
        assert_eq!(s.next_expiration(), None);
        assert_eq!(s.view().node_count(), 1);
    }

    #[test]
    fn create_and_unique() {
        let mut s = Store::new();
        let e = ok(&mut s, create("/c", "v"));
        assert_eq!(e.action, Action::Create);
        assert_eq!(e.prev_node, None);
        fail(&mut s, create("/c", "w"), ErrorCode::NodeExist, "/c");
        ok(&mut s, set_dir("/q", None));
        fail(&mut s, create("/q", "w"), ErrorCode::NodeExist, "/q");
        fail(&mut s, create("/", "w"), ErrorCode::RootReadOnly, "/");

        let e = ok(&mut s, create_unique("/q", false));
        assert_eq!(e.node.key.as_deref(), Some("/q/00000000000000000003"));
        assert_eq!(e.node.value.as_deref(), Some("q"));
        ok(&mut s, set("/other", "x"));
        let e = ok(&mut s, create_unique("/q", true));
        assert_eq!(e.node.key.as_deref(), Some("/q/00000000000000000005"));
        assert!(e.node.dir);
        assert_eq!(e.node.value, None);
        // Unique under a missing dir creates it; under the root is allowed.
        let e = ok(&mut s, create_unique("/new/queue", false));
        assert_eq!(
            e.node.key.as_deref(),
            Some("/new/queue/00000000000000000006")
        );
        assert_eq!(get(&s, "/new/queue").created_index, 6);
        let e = ok(&mut s, create_unique("/", false));
        assert_eq!(e.node.key.as_deref(), Some("/00000000000000000007"));
        // Under a file: 104 with the file's path; etcd also counts it as a set failure.
        let sets_fail = s.write_stats().sets_fail;
        fail(&mut s, create_unique("/c", false), ErrorCode::NotDir, "/c");
        fail(&mut s, create("/c/x/y", "v"), ErrorCode::NotDir, "/c");
        assert_eq!(s.write_stats().sets_fail, sets_fail + 2);
        assert_eq!(s.write_stats().create_fail, 5);
        assert_eq!(s.write_stats().create_success, 5);
        let listing = get(&s, "/q");
        assert_eq!(
            keys(&listing.nodes),
            vec!["/q/00000000000000000003", "/q/00000000000000000005"]
        );
    }

    #[test]
    fn update_file_and_dir() {
        let mut s = Store::new();
        ok(&mut s, set("/k", "a"));
        let e = ok(&mut s, update("/k", "b", Some(T0 + 5 * SEC)));
        assert_eq!(e.action, Action::Update);
        assert_eq!((e.node.created_index, e.node.modified_index), (1, 2));
        assert_eq!(e.node.value.as_deref(), Some("b"));
        assert_eq!(e.node.expiration, Some(T0 + 5 * SEC));
        assert_eq!(
            e.prev_node.as_ref().and_then(|p| p.value.as_deref()),
            Some("a")
        );
        assert_eq!(s.next_expiration(), Some(T0 + 5 * SEC));
        // Update without a TTL clears it, and the expiry index forgets the key.
        let e = ok(&mut s, update("/k", "c", None));
        assert_eq!(e.node.expiration, None);
        assert_eq!(e.prev_node.and_then(|p| p.expiration), Some(T0 + 5 * SEC));
        assert_eq!(s.next_expiration(), None);
        assert!(s.expire(u64::MAX).is_empty());

        // Dirs: only the TTL; stored modifiedIndex stays, the event shows the new index.
        ok(&mut s, set("/d/x", "1"));
        fail(&mut s, update("/d", "v", None), ErrorCode::NotFile, "/d");
        let e = ok(&mut s, update("/d", "", Some(T0 + SEC)));
        assert!(e.node.dir);
        assert_eq!(e.node.value, None);
        assert_eq!((e.node.created_index, e.node.modified_index), (4, 5));
        assert_eq!(e.node.expiration, Some(T0 + SEC));
        let d = get(&s, "/d");
        assert_eq!((d.created_index, d.modified_index), (4, 4));
        assert_eq!(d.expiration, Some(T0 + SEC));
        assert_eq!(keys(&d.nodes), vec!["/d/x"]);
        ok(&mut s, update("/d", "", None));
        assert_eq!(get(&s, "/d").expiration, None);
        assert_eq!(s.next_expiration(), None);

        fail(
            &mut s,
            update("/missing/a", "v", None),
            ErrorCode::KeyNotFound,
            "/missing",
        );
        fail(&mut s, update("/k/a", "v", None), ErrorCode::NotDir, "/k");
        fail(&mut s, update("/", "", None), ErrorCode::RootReadOnly, "/");
        let st = s.write_stats();
        // 107 on the root and 102 on a dir count as successes in etcd.
        assert_eq!((st.update_success, st.update_fail), (4 + 2, 2));
    }

    #[test]
    fn refresh_keeps_value() {
        let mut s = Store::new();
        ok(&mut s, set_ttl("/k", "v", T0 + SEC));
        // Set refresh: re-created (new createdIndex), old value, refresh flag.
        let e = ok(
            &mut s,
            Command::Set {
                key: "/k".into(),
                dir: false,
                value: String::new(),
                expire: Some(T0 + 9 * SEC),
                refresh: true,
                at: 0,
            },
        );
        assert!(e.refresh);
        assert_eq!(e.action, Action::Set);
        assert_eq!(e.node.value.as_deref(), Some("v"));
        assert_eq!(e.node.created_index, 2);
        assert_eq!(
            e.prev_node.as_ref().and_then(|p| p.expiration),
            Some(T0 + SEC)
        );
        assert_eq!(s.next_expiration(), Some(T0 + 9 * SEC));
        // Update refresh.
        let e = ok(
            &mut s,
            Command::Update {
                key: "/k".into(),
                value: String::new(),
                expire: Some(T0 + 20 * SEC),
                refresh: true,
                at: 0,
            },
        );
        assert!(e.refresh);
        assert_eq!(e.node.value.as_deref(), Some("v"));
        assert_eq!(e.node.created_index, 2);
        // CAS refresh.
        let e = ok(
            &mut s,
            Command::CompareAndSwap {
                key: "/k".into(),
                prev_value: "v".into(),
                prev_index: 0,
                value: String::new(),
                expire: Some(T0 + 30 * SEC),
                refresh: true,
                at: 0,
            },
        );
        assert!(e.refresh);
        assert_eq!(e.node.value.as_deref(), Some("v"));
        assert_eq!(s.next_expiration(), Some(T0 + 30 * SEC));
        assert!(s.expire(T0 + 29 * SEC).is_empty());
        assert_eq!(s.expire(T0 + 30 * SEC).len(), 1);
        // Refresh of a missing key.
        fail(
            &mut s,
            Command::Set {
                key: "/nope".into(),
                dir: false,
                value: String::new(),
                expire: Some(T0),
                refresh: true,
                at: 0,
            },
            ErrorCode::KeyNotFound,
            "/nope",
        );
        // Refresh of a dir via update keeps it a dir.
        ok(&mut s, set_dir("/d", Some(T0 + SEC)));
        let e = ok(
            &mut s,
            Command::Update {
                key: "/d".into(),
                value: String::new(),
                expire: Some(T0 + 2 * SEC),
                refresh: true,
                at: 0,
            },
        );
        assert!(e.node.dir && e.refresh);
    }

    #[test]
    fn compare_and_swap() {
        let mut s = Store::new();
        ok(&mut s, set("/k", "one"));
        ok(&mut s, set("/pad", "x"));
        let e = ok(&mut s, cas("/k", "one", 1, "two"));
        assert_eq!(e.action, Action::CompareAndSwap);
        assert_eq!((e.node.created_index, e.node.modified_index), (1, 3));
        assert_eq!(e.node.value.as_deref(), Some("two"));
        assert_eq!(e.prev_node.and_then(|p| p.value).as_deref(), Some("one"));
        fail(
            &mut s,
            cas("/k", "nope", 0, "x"),
            ErrorCode::TestFailed,
            "[nope != two]",
        );
        fail(
            &mut s,
            cas("/k", "", 1, "x"),
            ErrorCode::TestFailed,
            "[1 != 3]",
        );
        fail(
            &mut s,
            cas("/k", "nope", 1, "x"),
            ErrorCode::TestFailed,
            "[nope != two] [1 != 3]",
        );
        ok(&mut s, cas("/k", "", 3, "three"));
        ok(&mut s, set("/d/x", "1"));
        fail(&mut s, cas("/d", "a", 0, "x"), ErrorCode::NotFile, "/d");
        fail(
            &mut s,
            cas("/m/n", "a", 0, "x"),
            ErrorCode::KeyNotFound,
            "/m",
        );
        fail(&mut s, cas("/", "a", 0, "x"), ErrorCode::RootReadOnly, "/");
        let st = s.write_stats();
        assert_eq!(
            (st.compare_and_swap_success, st.compare_and_swap_fail),
            (3, 5)
        );
        // CAS without a TTL clears one.
        ok(&mut s, set_ttl("/t", "v", T0));
        ok(&mut s, cas("/t", "v", 0, "w"));
        assert_eq!(s.next_expiration(), None);
    }

    #[test]
    fn delete_files_and_dirs() {
        let mut s = Store::new();
        ok(&mut s, set_ttl("/f", "v", T0 + SEC));
        let e = ok(&mut s, delete("/f", false, false));
        assert_eq!(e.action, Action::Delete);
        assert_eq!(e.node, removal_node("/f".into(), false, 2, 1));
        let prev = e.prev_node.expect("prev");
        assert_eq!(
            (prev.value.as_deref(), prev.expiration),
            (Some("v"), Some(T0 + SEC))
        );
        assert_eq!(s.next_expiration(), None);

        ok(&mut s, set("/d/a/b", "1"));
        ok(&mut s, set_ttl("/d/a/c", "2", T0));
        ok(&mut s, set_dir("/e", None));
        fail(&mut s, delete("/d", false, false), ErrorCode::NotFile, "/d");
        fail(
            &mut s,
            delete("/d", true, false),
            ErrorCode::DirNotEmpty,
            "/d",
        );
        fail(&mut s, delete("/e", false, false), ErrorCode::NotFile, "/e");
        let e = ok(&mut s, delete("/e", true, false));
        assert!(e.node.dir && e.prev_node.as_ref().is_some_and(|p| p.dir));
        assert_eq!(s.view().node_count(), 4);
        let e = ok(&mut s, delete("/d", false, true));
        assert_eq!(e.node, removal_node("/d".into(), true, 7, 3));
        let prev = e.prev_node.expect("prev");
        assert!(prev.dir && prev.nodes.is_none() && prev.value.is_none());
        assert_eq!(s.view().node_count(), 0);
        assert_eq!(s.next_expiration(), None);

        // dir/recursive on a file just deletes it.
        ok(&mut s, set("/g", "1"));
        ok(&mut s, delete("/g", true, false));
        ok(&mut s, set("/g", "1"));
        ok(&mut s, delete("/g", false, true));
        // A dir holding only hidden children is not empty.
        ok(&mut s, set("/h/_x", "1"));
        fail(
            &mut s,
            delete("/h", true, false),
            ErrorCode::DirNotEmpty,
            "/h",
        );

        fail(
            &mut s,
            delete("/", true, true),
            ErrorCode::RootReadOnly,
            "/",
        );
        fail(
            &mut s,
            delete("/zz/y", false, false),
            ErrorCode::KeyNotFound,
            "/zz",
        );
        fail(
            &mut s,
            delete("/h/_x/y", false, false),
            ErrorCode::NotDir,
            "/h/_x",
        );
        let st = s.write_stats();
        // The root's 107 counts as a success in etcd.
        assert_eq!((st.delete_success, st.delete_fail), (5 + 1, 6));
    }

    /// Every event carries its command's time, so its TTLs render as they were when it
    /// happened. See: issue 13.
    #[test]
    fn events_carry_the_time_of_their_command() {
        let mut s = Store::new();
        let stamped = |mut c: Command, t: u64, ttl: Option<u64>| {
            c.stamp(t, ttl);
            assert_eq!(c.time(), Some(t));
            c
        };
        let e = ok(&mut s, stamped(set("/a", "1"), T0, Some(100)));
        assert_eq!(
            (e.time, e.node.expiration),
            (Some(T0), Some(T0 + 100 * SEC))
        );
        let e = ok(&mut s, stamped(update("/a", "2", None), T0 + 2, Some(50)));
        assert_eq!(e.time, Some(T0 + 2));
        let e = ok(&mut s, stamped(cas("/a", "2", 0, "3"), T0 + 3, None));
        assert_eq!(e.time, Some(T0 + 3));
        let e = ok(&mut s, stamped(create_unique("/q", false), T0 + 4, None));
        assert_eq!(e.time, Some(T0 + 4));
        let e = ok(&mut s, stamped(cad("/a", "3", 0), T0 + 5, Some(7)));
        assert_eq!(e.time, Some(T0 + 5));
        let e = ok(&mut s, stamped(delete("/q", true, true), T0 + 6, None));
        assert_eq!(e.time, Some(T0 + 6));
        ok(&mut s, set_ttl("/t", "1", T0 + SEC));
        let e = s
            .apply(&Command::Expire {
                cutoff: T0 + 2 * SEC,
            })
            .expect("expired");
        assert_eq!((e.action, e.time), (Action::Expire, Some(T0 + 2 * SEC)));
        // Unstamped commands and gets have no time: they render at serving time.
        assert_eq!(ok(&mut s, set("/u", "1")).time, None);
        assert_eq!(s.view().get("/u", false, false).map(|e| e.time), Ok(None));
    }

    #[test]
    fn compare_and_delete() {
        let mut s = Store::new();
        ok(&mut s, set_ttl("/k", "v", T0 + SEC));
        fail(&mut s, cad("/k", "w", 0), ErrorCode::TestFailed, "[w != v]");
        fail(&mut s, cad("/k", "", 9), ErrorCode::TestFailed, "[9 != 1]");
        let e = ok(&mut s, cad("/k", "v", 1));
        assert_eq!(e.action, Action::CompareAndDelete);
        assert_eq!(e.node, removal_node("/k".into(), false, 2, 1));
        assert_eq!(e.prev_node.and_then(|p| p.expiration), Some(T0 + SEC));
        assert_eq!(s.next_expiration(), None);
        ok(&mut s, set("/d/x", "1"));
        fail(&mut s, cad("/d", "", 0), ErrorCode::NotFile, "/d");
        // The root: 102 without a cause (etcd's trimmed "/1"). See: issue 13.
        fail(&mut s, cad("/", "", 0), ErrorCode::NotFile, "");
        fail(&mut s, cad("/", "x", 1), ErrorCode::NotFile, "");
        fail(&mut s, cad("/k", "v", 0), ErrorCode::KeyNotFound, "/k");
        fail(&mut s, cad("/d/x/y", "v", 0), ErrorCode::NotDir, "/d/x");
        let st = s.write_stats();
        // etcd counts compare failures and dirs as successes; only lookups fail.
        assert_eq!(
            (st.compare_and_delete_success, st.compare_and_delete_fail),
            (6, 2)
        );
    }

    #[test]
    fn get_errors_and_listings() {
        let mut s = Store::new();
        ok(&mut s, set("/p/f", "file"));
        assert_eq!(
            get_err(&s, "/p/a/b/c"),
            (ErrorCode::KeyNotFound, "/p/a".into())
        );
        assert_eq!(get_err(&s, "/q"), (ErrorCode::KeyNotFound, "/q".into()));
        assert_eq!(get_err(&s, "/p/f/x/y"), (ErrorCode::NotDir, "/p/f".into()));
        let e = s.view().get("/nope", false, false).expect_err("missing");
        assert_eq!(e.index, 1);

        ok(&mut s, set("/p/sub/deep/x", "1"));
        ok(&mut s, set("/p/b", "b"));
        ok(&mut s, set("/p/_hidden", "h"));
        ok(&mut s, set("/p/sub/_h/y", "h"));
        ok(&mut s, set_dir("/p/empty", None));
        // Non-recursive: children one level, child dirs without nodes, hidden left out.
        let p = get(&s, "/p");
        assert_eq!(keys(&p.nodes), vec!["/p/b", "/p/empty", "/p/f", "/p/sub"]);
        let nodes = p.nodes.expect("nodes");
        assert!(nodes.iter().all(|n| n.nodes.is_none()));
        assert_eq!(nodes[0].value.as_deref(), Some("b"));
        assert!(nodes[3].dir && nodes[3].value.is_none());
        // Recursive: the whole subtree, hidden left out at every level; empty dir no nodes.
        let e = s.view().get("/p", true, false).expect("get");
        assert_eq!(e.etcd_index, s.index().0);
        let nodes = e.node.nodes.expect("nodes");
        assert_eq!(nodes[1].nodes, None);
        let sub = &nodes[3];
        assert_eq!(keys(&sub.nodes), vec!["/p/sub/deep"]);
        let deep = &sub.nodes.as_ref().expect("deep")[0];
        assert_eq!(keys(&deep.nodes), vec!["/p/sub/deep/x"]);
        // Hidden keys are reachable directly; a hidden dir lists its visible children.
        assert_eq!(get(&s, "/p/_hidden").value.as_deref(), Some("h"));
        assert_eq!(keys(&get(&s, "/p/sub/_h").nodes), vec!["/p/sub/_h/y"]);
        // A dir whose children are all hidden has no nodes.
        ok(&mut s, set("/only/_a", "1"));
        assert_eq!(get(&s, "/only").nodes, None);
        // Root listing.
        let root = s.view().get("/", false, true).expect("root").node;
        assert_eq!(root.key, None);
        assert_eq!(keys(&root.nodes), vec!["/only", "/p"]);
        // Sorted bytewise by full key (uppercase before lowercase, "a" before "a0").
        ok(&mut s, set("/s/b", "1"));
        ok(&mut s, set("/s/a0", "1"));
        ok(&mut s, set("/s/a", "1"));
        ok(&mut s, set("/s/B", "1"));
        let listing = s.view().get("/s", false, true).expect("s").node;
        assert_eq!(keys(&listing.nodes), vec!["/s/B", "/s/a", "/s/a0", "/s/b"]);
    }

    #[test]
    fn ttl_file_expires() {
        let mut s = Store::new();
        ok(&mut s, set_ttl("/k", "v", T0 + SEC));
        ok(&mut s, set("/perm", "p"));
        assert_eq!(s.next_expiration(), Some(T0 + SEC));
        assert!(s.expire(T0).is_empty());
        assert_eq!(s.index().0, 2);
        let events = s.expire(T0 + SEC);
        s.check_invariants();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.action, Action::Expire);
        assert_eq!(e.node, removal_node("/k".into(), false, 3, 1));
        assert_eq!(e.etcd_index, 3);
        let prev = e.prev_node.as_ref().expect("prev");
        assert_eq!(
            (prev.value.as_deref(), prev.expiration),
            (Some("v"), Some(T0 + SEC))
        );
        assert_eq!(s.index().0, 3);
        assert_eq!(s.write_stats().expire_count, 1);
        assert_eq!(get_err(&s, "/k").0, ErrorCode::KeyNotFound);
        assert_eq!(s.next_expiration(), None);
        // apply(Expire): last event, or 100 when nothing expired.
        let err = s
            .apply(&Command::Expire { cutoff: u64::MAX })
            .expect_err("nothing");
        assert_eq!((err.code, err.index), (ErrorCode::KeyNotFound, 3));
        ok(&mut s, set_ttl("/a", "1", T0 + 2 * SEC));
        ok(&mut s, set_ttl("/b", "1", T0 + 2 * SEC));
        let e = s
            .apply(&Command::Expire {
                cutoff: T0 + 2 * SEC,
            })
            .expect("expired");
        assert_eq!((e.key(), e.etcd_index), ("/b", 7));
        assert_eq!(s.index().0, 7);
    }

    #[test]
    fn ttl_dir_expires_as_one_event() {
        let mut s = Store::new();
        ok(&mut s, set_dir("/d", Some(T0 + 5 * SEC)));
        ok(&mut s, set_ttl("/d/a", "1", T0 + 5 * SEC));
        ok(&mut s, set_ttl("/d/b", "1", T0 + 7 * SEC));
        ok(&mut s, set("/d/sub/c", "1"));
        ok(&mut s, set_ttl("/d/sub/t", "1", T0 + 6 * SEC));
        let events = s.expire(T0 + 10 * SEC);
        s.check_invariants();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].node, removal_node("/d".into(), true, 6, 1));
        assert!(events[0]
            .prev_node
            .as_ref()
            .is_some_and(|p| p.dir && p.nodes.is_none()));
        assert_eq!(s.view().node_count(), 0);
        assert_eq!(s.next_expiration(), None);

        // A child expiring earlier than its dir gets its own event first.
        ok(&mut s, set_dir("/e", Some(T0 + 5 * SEC)));
        ok(&mut s, set_ttl("/e/x", "1", T0 + 3 * SEC));
        let events = s.expire(T0 + 5 * SEC);
        let got: Vec<_> = events.iter().map(|e| (e.key(), e.index())).collect();
        assert_eq!(got, vec![("/e/x", 9), ("/e", 10)]);
        s.check_invariants();
    }

    #[test]
    fn recreated_key_without_ttl_does_not_expire() {
        let mut s = Store::new();
        ok(&mut s, set_ttl("/k", "old", T0 + SEC));
        ok(&mut s, delete("/k", false, false));
        ok(&mut s, set("/k", "new"));
        assert!(s.expire(T0 + 100 * SEC).is_empty());
        assert_eq!(get(&s, "/k").value.as_deref(), Some("new"));
        // Same through a dir: a TTL'd child inside a deleted dir is forgotten.
        ok(&mut s, set_ttl("/d/k", "old", T0 + SEC));
        ok(&mut s, delete("/d", true, true));
        ok(&mut s, set("/d/k", "new"));
        assert!(s.expire(T0 + 100 * SEC).is_empty());
        // And through create/replace by a dir.
        ok(&mut s, set_ttl("/f", "old", T0 + SEC));
        ok(&mut s, set_dir("/f", None));
        assert!(s.expire(T0 + 100 * SEC).is_empty());
        assert_eq!(s.index().0, 8);
    }

    #[test]
    fn ancient_expiration_means_no_ttl() {
        // etcd's minExpireTime: Set/Create treat an expire time before 2000 as permanent.
        let mut s = Store::new();
        let e = ok(&mut s, set_ttl("/k", "v", 5));
        assert_eq!(e.node.expiration, None);
        assert_eq!(s.next_expiration(), None);
        // An expiration in the past but after 2000 expires at the next sweep (ttl=0).
        ok(&mut s, set_ttl("/z", "v", MIN_EXPIRE_NS));
        assert_eq!(s.expire(T0).len(), 1);
    }

    #[test]
    fn ttl_on_dir_with_update_and_delete() {
        let mut s = Store::new();
        ok(&mut s, set_ttl("/d/x", "v", T0 + SEC));
        ok(&mut s, update("/d", "", Some(T0 + 2 * SEC)));
        assert_eq!(s.ttl_node_count(), 2);
        ok(&mut s, delete("/d", true, true));
        assert_eq!(s.ttl_node_count(), 0);
        assert_eq!(s.next_expiration(), None);
    }

    #[test]
    fn view_isolation() {
        let mut s = Store::new();
        ok(&mut s, set("/a", "1"));
        let v1 = s.view();
        ok(&mut s, set("/a", "2"));
        ok(&mut s, set("/b/c", "3"));
        ok(&mut s, delete("/a", false, false));
        assert_eq!(v1.index(), EtcdIndex(1));
        assert_eq!(v1.node_count(), 1);
        assert_eq!(
            v1.get("/a", false, false).expect("a").node.value.as_deref(),
            Some("1")
        );
        assert_eq!(
            v1.get("/b", false, false).expect_err("b").code,
            ErrorCode::KeyNotFound
        );
        let v2 = s.view();
        assert_eq!(v2.get("/a", false, false).expect_err("a").index, 4);
        assert_eq!(
            v2.get("/b/c", false, false)
                .expect("c")
                .node
                .value
                .as_deref(),
            Some("3")
        );
        // Views can move to another thread.
        let handle = std::thread::spawn(move || v1.get("/a", false, false).map(|e| e.node.value));
        assert_eq!(
            handle.join().ok().and_then(|r| r.ok()).flatten().as_deref(),
            Some("1")
        );
    }

    #[test]
    fn odd_keys_do_not_panic() {
        let mut s = Store::new();
        let long = "x".repeat(100_000);
        let deep = "/a".repeat(2_000);
        let odd = [
            "",
            "/",
            "//",
            "//x",
            "x",
            "/ü/日本",
            "/a/../b",
            "/..",
            "/./c",
            &long,
            &deep,
        ];
        for (i, k) in odd.iter().enumerate() {
            let v = i.to_string();
            let _ = s.apply(&set(k, &v));
            let _ = s.apply(&create(k, &v));
            let _ = s.apply(&create_unique(k, false));
            let _ = s.apply(&update(k, &v, Some(T0)));
            let _ = s.apply(&cas(k, &v, 1, "z"));
            let _ = s.view().get(k, true, true);
            let _ = s.apply(&cad(k, "z", 0));
            let _ = s.apply(&delete(k, true, true));
            s.check_invariants();
        }
        let _ = s.expire(u64::MAX);
        s.check_invariants();
        ok(&mut s, set("//x//y/", "1"));
        assert_eq!(get(&s, "/x/y").value.as_deref(), Some("1"));
        assert_eq!(get(&s, "/x/./y").key.as_deref(), Some("/x/y"));
    }

    /// A tiny deterministic PRNG (xorshift64*), so the randomized test needs no dependency.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len() as u64) as usize]
        }
    }

    #[test]
    fn randomized_commands_keep_invariants() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut s = Store::new();
        let names = ["a", "b", "_h", "c"];
        let values = ["", "1", "2"];
        let mut now = T0;
        let mut old_views = Vec::new();
        for step in 0..20_000 {
            let depth = 1 + rng.below(3);
            let key: String = (0..depth)
                .map(|_| format!("/{}", rng.pick(&names)))
                .collect();
            let value = rng.pick(&values).to_string();
            let expire = match rng.below(3) {
                0 => Some(now + rng.below(5) * SEC),
                _ => None,
            };
            let b = |r: &mut XorShift| r.below(2) == 0;
            let cmd = match rng.below(10) {
                0 => Command::Set {
                    key,
                    dir: b(&mut rng),
                    value,
                    expire,
                    refresh: false,
                    at: 0,
                },
                1 => Command::Set {
                    key,
                    dir: false,
                    value: String::new(),
                    expire,
                    refresh: true,
                    at: 0,
                },
                2 => Command::Create {
                    key,
                    dir: b(&mut rng),
                    value,
                    expire,
                    unique: b(&mut rng),
                    at: 0,
                },
                3 => Command::Update {
                    key,
                    value,
                    expire,
                    refresh: b(&mut rng),
                    at: 0,
                },
                4 => Command::CompareAndSwap {
                    key,
                    prev_value: value,
                    prev_index: rng.below(3) * rng.below(s.index().0 + 1),
                    value: rng.pick(&values).to_string(),
                    expire,
                    refresh: b(&mut rng),
                    at: 0,
                },
                5 => Command::Delete {
                    key,
                    dir: b(&mut rng),
                    recursive: b(&mut rng),
                    at: 0,
                },
                6 => Command::CompareAndDelete {
                    key,
                    prev_value: value,
                    prev_index: rng.below(2) * rng.below(s.index().0 + 1),
                    at: 0,
                },
                7 => {
                    now += rng.below(3) * SEC;
                    Command::Expire { cutoff: now }
                }
                _ => Command::Set {
                    key,
                    dir: false,
                    value,
                    expire,
                    refresh: false,
                    at: 0,
                },
            };
            let before = s.index().0;
            let expected_expiries = s
                .expiry
                .iter()
                .filter(|(e, _)| matches!(cmd, Command::Expire { cutoff } if *e <= cutoff))
                .count();
            match s.apply(&cmd) {
                Ok(e) => {
                    if let Command::Expire { .. } = cmd {
                        assert!(
                            s.index().0 > before
                                && s.index().0 <= before + expected_expiries as u64
                        );
                    } else {
                        assert_eq!(s.index().0, before + 1, "{cmd:?}");
                        assert_eq!(e.node.modified_index, s.index().0);
                    }
                    assert_eq!(e.etcd_index, s.index().0);
                }
                Err(err) => {
                    assert_eq!(s.index().0, before, "{cmd:?}");
                    assert_eq!(err.index, before);
                }
            }
            s.check_invariants();
            if let Command::Expire { cutoff } = cmd {
                assert!(!matches!(s.next_expiration(), Some(e) if e <= cutoff));
            }
            if step % 1000 == 0 {
                let v = s.view();
                let snapshot = v.get("/", true, true).ok();
                old_views.push((v, snapshot));
            }
        }
        // Old views never changed under later writes.
        for (v, snapshot) in old_views {
            assert_eq!(v.get("/", true, true).ok(), snapshot);
        }
        assert!(
            s.index().0 > 5_000,
            "the random walk should mostly succeed: {}",
            s.index().0
        );
    }
}
