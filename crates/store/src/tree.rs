//! The persistent node tree behind `Store` and `StoreView`, plus path helpers.
//!
//! Why persistent: the writer publishes a `StoreView` after every batch and readers on other
//! threads keep using old views, so a snapshot must cost O(1) and a write must not copy the
//! tree. A `Node` is a small value whose contents sit behind `Arc`s; a dir's children live in
//! a `Children` map (a persistent B+ tree of nodes, children.rs). A write path-copies the
//! maps' nodes from the root down to the changed key (`Arc::make_mut`), which is free when no
//! view shares them and O(depth · log fanout) when one does.
//!
//! Memory per key is the design constraint (issue 11: a quarter of etcd's RSS per key). A
//! plain file is one allocation, its text: an `Arc<str>` holding a length header, the name
//! (last path component) and the value; the node itself (40 bytes: indexes and that pointer)
//! sits in its parent's B+ tree leaf. Nodes do not store their path: paths are rebuilt while
//! walking. A TTL or a dir moves the rarer fields (expiration, the children) behind one more
//! `Arc`, so the common node stays at 40 bytes.

use std::num::NonZeroU64;
use std::sync::Arc;

pub(crate) use crate::children::Children;
use crate::event::NodeRepr;

/// A name's sort key, kept beside the name so that most comparisons of a lookup read no
/// text: the name's first 7 bytes (zero-padded) above `min(len, 8)`. Keys order as their
/// names do, except that names of 8 bytes or more whose first 7 bytes agree have equal keys
/// and must be compared in full; names of up to 7 bytes are equal exactly when their keys
/// are. (If the first 7 bytes differ, the first difference decides both orders, a shorter
/// name's zero padding counting as the end of the name; if they agree, a shorter name of up
/// to 7 bytes is a prefix of the other.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NameKey(u64);

impl NameKey {
    pub fn of(name: &str) -> NameKey {
        let mut b = [0u8; 8];
        for (d, s) in b.iter_mut().zip(name.as_bytes().iter().take(7)) {
            *d = *s;
        }
        b[7] = name.len().min(8) as u8;
        NameKey(u64::from_be_bytes(b))
    }

    /// Equal keys mean equal names.
    fn is_exact(self) -> bool {
        self.0 & 0xff < 8
    }
}

/// A name being looked up, with its key computed once.
#[derive(Clone, Copy)]
pub(crate) struct Name<'a> {
    pub key: NameKey,
    pub name: &'a str,
}

impl<'a> Name<'a> {
    pub fn new(name: &'a str) -> Name<'a> {
        Name {
            key: NameKey::of(name),
            name,
        }
    }
}

/// Orders `a` (known by its key, its name read only if needed) against `b`.
pub(crate) fn cmp_keyed<'s>(
    a_key: NameKey,
    a_name: impl FnOnce() -> &'s str,
    b: Name<'_>,
) -> std::cmp::Ordering {
    match a_key.cmp(&b.key) {
        std::cmp::Ordering::Equal if !b.key.is_exact() => a_name().cmp(b.name),
        o => o,
    }
}

/// One file or dir. The root is a dir named "" with indexes 0.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    key: NameKey,
    pub created: u64,
    /// For dirs this is the index of the write that created the dir: etcd never changes a
    /// dir's stored modifiedIndex (not for child writes, not even for a dir TTL update).
    pub modified: u64,
    body: Body,
}

/// The body of a node: cloning it (copying a leaf) bumps one reference count. The niche of
/// the `Arc<str>` pointer holds the tag, so this is 16 bytes.
#[derive(Clone, Debug)]
enum Body {
    /// A file without TTL: `file_text(name, value)`.
    File(Arc<str>),
    Other(Arc<Other>),
}

#[derive(Clone, Debug)]
enum Other {
    /// A file with a TTL. Absolute expiration in unix nanoseconds; an expiration of exactly
    /// 0 ns is stored as 1 ns (both are long past).
    TtlFile { expire: NonZeroU64, text: Box<str> },
    Dir {
        expire: Option<NonZeroU64>,
        name: Box<str>,
        children: Children,
    },
}

/// Header byte values below this are the name's length; this value is followed by the
/// length in 10 bytes of 7 bits (names of 127 bytes and more: rare, and the header stays
/// ASCII, so the text stays one valid `str` whose parts slice on char boundaries).
const LONG_NAME: u8 = 0x7f;

/// A file's text: header, name, value in one allocation of exactly that length.
fn file_text(name: &str, value: &str) -> String {
    let long = name.len() >= usize::from(LONG_NAME);
    let header = if long { 11 } else { 1 };
    let mut s = String::with_capacity(header + name.len() + value.len());
    if long {
        s.push(char::from(LONG_NAME));
        let mut n = name.len();
        for _ in 0..10 {
            s.push(char::from((n & 0x7f) as u8));
            n >>= 7;
        }
    } else {
        s.push(char::from(name.len() as u8));
    }
    s.push_str(name);
    s.push_str(value);
    s
}

/// A file's (name, value) from its text.
fn split_text(text: &str) -> (&str, &str) {
    let b = text.as_bytes();
    let (header, len): (usize, usize) = match b.first() {
        Some(&n) if n < LONG_NAME => (1, usize::from(n)),
        Some(_) => {
            let len = b
                .iter()
                .skip(1)
                .take(10)
                .rev()
                .fold(0usize, |acc, &x| (acc << 7) | usize::from(x & 0x7f));
            (11, len)
        }
        None => (0, 0),
    };
    let name_end = header.saturating_add(len);
    (
        text.get(header..name_end).unwrap_or(""),
        text.get(name_end..).unwrap_or(""),
    )
}

impl Node {
    pub fn new_root() -> Node {
        Node::new_dir("", 0, None)
    }

    /// An empty dir created at `index`.
    pub fn new_dir(name: &str, index: u64, expire: Option<NonZeroU64>) -> Node {
        Node::dir_with(name, index, index, expire, Children::new())
    }

    pub fn dir_with(
        name: &str,
        created: u64,
        modified: u64,
        expire: Option<NonZeroU64>,
        children: Children,
    ) -> Node {
        Node {
            key: NameKey::of(name),
            created,
            modified,
            body: Body::Other(Arc::new(Other::Dir {
                expire,
                name: name.into(),
                children,
            })),
        }
    }

    pub fn file(
        name: &str,
        value: &str,
        created: u64,
        modified: u64,
        expire: Option<NonZeroU64>,
    ) -> Node {
        let text = file_text(name, value);
        let body = match expire {
            None => Body::File(text.into()),
            Some(expire) => Body::Other(Arc::new(Other::TtlFile {
                expire,
                text: text.into(),
            })),
        };
        Node {
            key: NameKey::of(name),
            created,
            modified,
            body,
        }
    }

    /// This file with a new value, modified index and expiration (name and created index
    /// kept); for a dir, the dir with the new expiration (its indexes and children kept).
    pub fn rewritten(&self, value: &str, modified: u64, expire: Option<NonZeroU64>) -> Node {
        match self.children() {
            Some(children) => Node::dir_with(
                self.name(),
                self.created,
                self.modified,
                expire,
                children.clone(),
            ),
            None => Node::file(self.name(), value, self.created, modified, expire),
        }
    }

    /// The node's name with its key, for lookups.
    pub fn key_name(&self) -> Name<'_> {
        Name {
            key: self.key,
            name: self.name(),
        }
    }

    /// Orders this node's name against `name`.
    pub fn cmp_name(&self, name: Name<'_>) -> std::cmp::Ordering {
        cmp_keyed(self.key, || self.name(), name)
    }

    /// The last component of the node's path ("" for the root).
    pub fn name(&self) -> &str {
        match &self.body {
            Body::File(text) => split_text(text).0,
            Body::Other(o) => match &**o {
                Other::TtlFile { text, .. } => split_text(text).0,
                Other::Dir { name, .. } => name,
            },
        }
    }

    pub fn is_dir(&self) -> bool {
        self.children().is_some()
    }

    pub fn children(&self) -> Option<&Children> {
        match &self.body {
            Body::Other(o) => match &**o {
                Other::Dir { children, .. } => Some(children),
                Other::TtlFile { .. } => None,
            },
            Body::File(_) => None,
        }
    }

    /// A dir's children for a change, its dir fields copied first if a view shares them.
    pub fn children_mut(&mut self) -> Option<&mut Children> {
        // Checked first so a TTL'd file is never copied just to learn it is a file.
        if !self.is_dir() {
            return None;
        }
        match &mut self.body {
            Body::Other(o) => match Arc::make_mut(o) {
                Other::Dir { children, .. } => Some(children),
                Other::TtlFile { .. } => None,
            },
            Body::File(_) => None,
        }
    }

    /// The file's value; "" for a dir (etcd's `node.Value` of a dir is the empty string,
    /// which is what a refresh of a dir "keeps").
    pub fn value(&self) -> &str {
        match &self.body {
            Body::File(text) => split_text(text).1,
            Body::Other(o) => match &**o {
                Other::TtlFile { text, .. } => split_text(text).1,
                Other::Dir { .. } => "",
            },
        }
    }

    pub fn expire(&self) -> Option<NonZeroU64> {
        match &self.body {
            Body::File(_) => None,
            Body::Other(o) => match &**o {
                Other::TtlFile { expire, .. } => Some(*expire),
                Other::Dir { expire, .. } => *expire,
            },
        }
    }

    pub fn expire_ns(&self) -> Option<u64> {
        self.expire().map(NonZeroU64::get)
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
pub(crate) fn lookup<'a>(root: &'a Node, comps: &[&str]) -> Result<&'a Node, Miss> {
    let mut cur = root;
    for (i, c) in comps.iter().enumerate() {
        let Some(children) = cur.children() else {
            return Err(Miss::NotDir(i));
        };
        match children.get(c) {
            Some(child) => cur = child,
            None => return Err(Miss::NotFound(i + 1)),
        }
    }
    Ok(cur)
}

/// The children map of the existing dir at `comps`, path-copied for mutation. `None` if a
/// component is missing or not a dir (callers check first, so this is defensive).
pub(crate) fn children_mut<'a>(root: &'a mut Node, comps: &[&str]) -> Option<&'a mut Children> {
    let mut cur = root;
    for c in comps {
        cur = cur.children_mut()?.get_mut(c)?;
    }
    cur.children_mut()
}

/// etcd's `node.Repr(false, false)`: the node alone (a dir without `nodes`). Used for
/// `prevNode` and for child dirs in a non-recursive listing.
pub(crate) fn repr_shallow(path: &str, n: &Node) -> NodeRepr {
    NodeRepr {
        key: Some(path.to_string()),
        dir: n.is_dir(),
        value: (!n.is_dir()).then(|| n.value().to_string()),
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
            .filter(|child| !is_hidden_name(child.name()))
            .map(|child| {
                let p = child_path(path, child.name());
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
    f(node, node.expire().is_some().then_some(path));
    let mut stack: Vec<(String, &Node)> = Vec::new();
    if node.is_dir() {
        stack.push((path.to_string(), node));
    }
    while let Some((dir_path, dir)) = stack.pop() {
        let Some(children) = dir.children() else {
            continue;
        };
        for child in children.iter() {
            if child.is_dir() || child.expire().is_some() {
                let p = child_path(&dir_path, child.name());
                f(child, child.expire().is_some().then_some(p.as_str()));
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
        assert_eq!(std::mem::size_of::<Body>(), 16);
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
    fn name_keys_order_as_names_do() {
        let names = [
            "",
            "\0",
            "\0\0",
            "a",
            "a\0",
            "a\0b",
            "ab",
            "abcdefg",
            "abcdefg\0",
            "abcdefgh",
            "abcdefgha",
            "abcdefgi",
            "abcdefh",
            "b",
            "k000123",
            "k000124",
            "k0001235",
            "ü",
            "üü",
            "zzzzzzzzzzzz",
        ];
        for a in names {
            for b in names {
                let (ka, kb) = (NameKey::of(a), NameKey::of(b));
                assert_eq!(cmp_keyed(ka, || a, Name::new(b)), a.cmp(b), "{a:?} {b:?}");
                if ka != kb {
                    assert_eq!(ka.cmp(&kb), a.cmp(b), "{a:?} {b:?}");
                } else if a.len() < 8 || b.len() < 8 {
                    assert_eq!(a, b);
                }
            }
        }
    }

    #[test]
    fn a_file_gives_back_its_name_and_value_at_every_name_length() {
        // Names below 127 bytes take a one-byte header, longer ones the 11-byte form; both
        // must split back into exactly the name and value, multi-byte characters included.
        for len in [0, 1, 126, 127, 128, 300, 20_000] {
            for unit in ["a", "\u{e9}", "\u{1f600}"] {
                let name: String = unit.repeat(len / unit.len().max(1));
                for value in ["", "v", "\u{e9}t\u{e9}", "\u{7f}x"] {
                    let n = Node::file(&name, value, 1, 2, None);
                    assert_eq!(
                        (n.name(), n.value()),
                        (name.as_str(), value),
                        "{len} {unit}"
                    );
                    let t = Node::file(&name, value, 1, 2, NonZeroU64::new(5));
                    assert_eq!((t.name(), t.value()), (name.as_str(), value), "{len} ttl");
                }
            }
        }
    }

    #[test]
    fn stored_expire_is_never_zero() {
        assert_eq!(stored_expire(Some(0)).map(NonZeroU64::get), Some(1));
        assert_eq!(stored_expire(Some(7)).map(NonZeroU64::get), Some(7));
        assert_eq!(stored_expire(None), None);
    }
}
