//! The persistent node tree behind `Store` and `StoreView`, plus path helpers.
//!
//! Why persistent: the writer publishes a `StoreView` after every batch and readers on other
//! threads keep using old views, so a snapshot must cost O(1) and a write must not copy the
//! tree. Every node is an `Arc<Node>`; a dir's children live in an `imbl::OrdMap` (a B+ tree
//! with shared chunks) keyed by the *last path component only*. A write path-copies the nodes
//! and chunks from the root down to the changed key (`Arc::make_mut`), which is free when no
//! view shares them and O(depth · log fanout) when one does.
//!
//! Nodes do not store their own path: paths are rebuilt while walking, which keeps a small key
//! well under the memory budget (a node is 40 bytes plus the `Arc` header).

use std::num::NonZeroU64;
use std::sync::Arc;

use imbl::OrdMap;

use crate::event::NodeRepr;

/// A dir's children, keyed by name (the last path component). `Arc<str>` keys so that the
/// B+ tree's path copying clones a refcount, not a string.
pub(crate) type Children = OrdMap<Arc<str>, Arc<Node>>;

/// One file or dir. The root is a dir with indexes 0.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub created: u64,
    /// For dirs this is the index of the write that created the dir: etcd never changes a
    /// dir's stored modifiedIndex (not for child writes, not even for a dir TTL update).
    pub modified: u64,
    /// Absolute expiration in unix nanoseconds. `NonZeroU64` keeps the `Option` at 8 bytes;
    /// an expiration of exactly 0 ns is stored as 1 ns (both are long past).
    pub expire: Option<NonZeroU64>,
    pub kind: Kind,
}

/// A file's value or a dir's children. The dir map is boxed so `Kind` is 16 bytes (the
/// niche of the `Box<str>` pointer holds the tag): files are the common case.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    File(Box<str>),
    Dir(Box<Children>),
}

impl Node {
    pub fn new_root() -> Node {
        Node::new_dir(0, None)
    }

    pub fn new_dir(index: u64, expire: Option<NonZeroU64>) -> Node {
        Node {
            created: index,
            modified: index,
            expire,
            kind: Kind::Dir(Box::default()),
        }
    }

    pub fn new_file(index: u64, value: &str, expire: Option<NonZeroU64>) -> Node {
        Node {
            created: index,
            modified: index,
            expire,
            kind: Kind::File(value.into()),
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir(_))
    }

    pub fn children(&self) -> Option<&Children> {
        match &self.kind {
            Kind::Dir(ch) => Some(ch),
            Kind::File(_) => None,
        }
    }

    /// The file's value; "" for a dir (etcd's `node.Value` of a dir is the empty string,
    /// which is what a refresh of a dir "keeps").
    pub fn value(&self) -> &str {
        match &self.kind {
            Kind::File(v) => v,
            Kind::Dir(_) => "",
        }
    }

    pub fn expire_ns(&self) -> Option<u64> {
        self.expire.map(NonZeroU64::get)
    }
}

/// Converts a caller's absolute expiration to the stored form (see `Node::expire`).
pub(crate) fn stored_expire(expire: Option<u64>) -> Option<NonZeroU64> {
    expire.map(|e| NonZeroU64::new(e).unwrap_or(NonZeroU64::MIN))
}

/// Splits a key into components the way Go's `path.Clean(path.Join("/", key))` followed by
/// etcd's walk would see them: empty and "." components are dropped, ".." pops (never above
/// the root). Callers send cleaned keys; this keeps odd input ("", "//x", "a/../b") harmless.
pub(crate) fn components(key: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for c in key.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// The canonical path of some leading components: "/" for none, else "/a/b".
pub(crate) fn join(comps: &[&str]) -> String {
    if comps.is_empty() {
        return "/".to_string();
    }
    let mut s = String::with_capacity(comps.iter().map(|c| c.len() + 1).sum());
    for c in comps {
        s.push('/');
        s.push_str(c);
    }
    s
}

/// The path of child `name` under the dir at `parent`.
pub(crate) fn child_path(parent: &str, name: &str) -> String {
    let mut s = String::with_capacity(parent.len() + 1 + name.len());
    s.push_str(parent);
    if !parent.ends_with('/') {
        s.push('/');
    }
    s.push_str(name);
    s
}

/// The cleaned form of a path as a string (for watch keys, which are compared as strings).
pub(crate) fn clean(key: &str) -> std::borrow::Cow<'_, str> {
    let already_clean = key.starts_with('/')
        && (key == "/" || !key.ends_with('/'))
        && !key.contains("//")
        && !key.split('/').any(|c| c == "." || c == "..");
    if already_clean {
        std::borrow::Cow::Borrowed(key)
    } else {
        std::borrow::Cow::Owned(join(&components(key)))
    }
}

/// etcd's `IsHidden`: a name starting with '_' is left out of listings.
pub(crate) fn is_hidden_name(name: &str) -> bool {
    name.starts_with('_')
}

/// Why a lookup failed; the number is how many leading components form the error's cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Miss {
    /// 100: `comps[..n]` (the first missing component, included) does not exist.
    NotFound(usize),
    /// 104: `comps[..n]` is a file that the path goes through.
    NotDir(usize),
}

/// etcd's `internalGet`: walks `comps` from `root`.
pub(crate) fn lookup<'a>(root: &'a Arc<Node>, comps: &[&str]) -> Result<&'a Arc<Node>, Miss> {
    let mut cur = root;
    for (i, c) in comps.iter().enumerate() {
        let Some(children) = cur.children() else {
            return Err(Miss::NotDir(i));
        };
        match children.get(*c) {
            Some(child) => cur = child,
            None => return Err(Miss::NotFound(i + 1)),
        }
    }
    Ok(cur)
}

/// The children map of the existing dir at `comps`, path-copied for mutation. `None` if a
/// component is missing or not a dir (callers check first, so this is defensive).
pub(crate) fn children_mut<'a>(
    root: &'a mut Arc<Node>,
    comps: &[&str],
) -> Option<&'a mut Children> {
    let mut cur = root;
    for c in comps {
        // Check before make_mut so a file is never cloned just to learn it is a file.
        if !cur.is_dir() {
            return None;
        }
        match &mut Arc::make_mut(cur).kind {
            Kind::Dir(ch) => cur = ch.get_mut(*c)?,
            Kind::File(_) => return None,
        }
    }
    if !cur.is_dir() {
        return None;
    }
    match &mut Arc::make_mut(cur).kind {
        Kind::Dir(ch) => Some(&mut **ch),
        Kind::File(_) => None,
    }
}

/// etcd's `node.Repr(false, false)`: the node alone (a dir without `nodes`). Used for
/// `prevNode` and for child dirs in a non-recursive listing.
pub(crate) fn repr_shallow(path: &str, n: &Node) -> NodeRepr {
    NodeRepr {
        key: Some(path.to_string()),
        dir: n.is_dir(),
        value: match &n.kind {
            Kind::File(v) => Some(v.to_string()),
            Kind::Dir(_) => None,
        },
        expiration: n.expire_ns(),
        modified_index: n.modified,
        created_index: n.created,
        nodes: None,
    }
}

/// etcd's `loadInternalNode` (a get): a dir lists its non-hidden children, recursively or
/// one level deep. An empty listing is `None` because Go omits an empty `nodes` slice.
/// Children come out of the `OrdMap` sorted by name, which is the same as sorted by full key
/// since siblings share the parent prefix: both sorted and unsorted gets return this order.
/// Recursion depth is the tree depth, which the server bounds (KEY_DEPTH_MAX).
pub(crate) fn repr_listing(path: &str, n: &Node, recursive: bool) -> NodeRepr {
    let mut r = repr_shallow(path, n);
    if let Some(children) = n.children() {
        let nodes: Vec<NodeRepr> = children
            .iter()
            .filter(|(name, _)| !is_hidden_name(name))
            .map(|(name, child)| {
                let p = child_path(path, name);
                if recursive {
                    repr_listing(&p, child, true)
                } else {
                    repr_shallow(&p, child)
                }
            })
            .collect();
        if !nodes.is_empty() {
            r.nodes = Some(nodes);
        }
    }
    r
}

/// Visits `node` (at `path`) and every descendant without recursion (a deep tree must not
/// overflow the writer's stack), calling `f(node, path)`. The path is only built for TTL'd
/// nodes (and dirs, to descend), which is all a delete needs to keep the expiry index exact.
pub(crate) fn for_each_in_subtree(path: &str, node: &Node, mut f: impl FnMut(&Node, Option<&str>)) {
    f(node, node.expire.is_some().then_some(path));
    let mut stack: Vec<(String, &Node)> = Vec::new();
    if node.is_dir() {
        stack.push((path.to_string(), node));
    }
    while let Some((dir_path, dir)) = stack.pop() {
        let Some(children) = dir.children() else {
            continue;
        };
        for (name, child) in children.iter() {
            if child.is_dir() || child.expire.is_some() {
                let p = child_path(&dir_path, name);
                f(child, child.expire.is_some().then_some(p.as_str()));
                if child.is_dir() {
                    stack.push((p, child));
                }
            } else {
                f(child, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_stay_small() {
        // The memory budget depends on these; a regression should be a conscious decision.
        assert_eq!(std::mem::size_of::<Kind>(), 16);
        assert_eq!(std::mem::size_of::<Node>(), 40);
    }

    #[test]
    fn components_clean_like_go() {
        assert_eq!(components("/a/b"), vec!["a", "b"]);
        assert!(components("/").is_empty());
        assert!(components("").is_empty());
        assert_eq!(components("//x//"), vec!["x"]);
        assert_eq!(components("a/./b/../c"), vec!["a", "c"]);
        assert!(components("/../..").is_empty());
        assert_eq!(join(&components("//x/ü")), "/x/ü");
        assert_eq!(clean("/d/"), "/d");
        assert_eq!(clean("/"), "/");
        assert_eq!(clean(""), "/");
        assert_eq!(clean("/a/../b"), "/b");
        assert!(matches!(clean("/a/b"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn stored_expire_is_never_zero() {
        assert_eq!(stored_expire(Some(0)).map(NonZeroU64::get), Some(1));
        assert_eq!(stored_expire(Some(7)).map(NonZeroU64::get), Some(7));
        assert_eq!(stored_expire(None), None);
    }
}
