//! A dir's children: a persistent B+ tree of `Node`s ordered by name (each node holds
//! its own name), built for memory per key.
//!
//! Why not `imbl::OrdMap<Arc<str>, Node>`, which this replaces: its leaves are fixed
//! 16-slot chunks of 24-byte (name, node) pairs (448 B blocks) split at the median, so keys
//! written in ascending order (the common way a big dir is filled: `k000001`, `k000002`, ...,
//! or in-order POSTs) leave every leaf half full: 56 B of leaf per key, plus a 32 B name
//! allocation per key beside the node. Here a leaf entry is the 40-byte node itself, with no
//! name beside it (the name is in the node's own text), a leaf's `Vec` is as long as its
//! entries when it is built or copied, and a leaf that
//! overflows first shares its entries with a neighbour that has room (as a B*-tree does)
//! before it splits, so ascending inserts fill leaves to ~100 % and random ones to ~80 %:
//! about 10 B of tree per key instead of 60 (measured in examples/store_memory.rs).
//!
//! Persistence: every node of the tree is behind an `Arc`. A change copies the path from the
//! root to the leaf it touches (`Arc::make_mut`), and only when a published view or a
//! snapshot still shares it, so taking a view stays O(1) (clone the root) and readers on
//! other threads never see a change. Branch separators are copies of a name (`Arc<str>`),
//! never a node, so a separator never keeps an old version of a node (and of a dir's whole
//! subtree) alive after the node is replaced.
//!
//! Invariants (checked by `check` in the tests): entries strictly ascending by name across
//! the leaves; `seps[i]` is > every name under `kids[i]` and <= every name under
//! `kids[i + 1]`; every leaf at the same depth; no node holds more than `MAX` items; below
//! the root, no branch holds fewer than 2 kids and no leaf is empty; `len` is the number of
//! entries.

use std::sync::Arc;

use crate::tree::{cmp_keyed, Name, NameKey, Node};

/// Most entries in a leaf, and kids in a branch. A full leaf is 25 nodes of 40 bytes: 1000
/// bytes, which mimalloc serves from its 1024-byte blocks. Not 32: the `mimalloc` crate asks
/// for every Rust allocation with its alignment (`mi_malloc_aligned`), and mimalloc serves
/// an aligned request over 1 KiB whose block size is not a power of two by over-allocating
/// (1280 bytes took a 1536-byte block: 48 B of leaf per key instead of 41). A write copies
/// one leaf plus the branches above it when a view shares them.
const MAX: usize = 25;

/// A removal that leaves a leaf or branch with fewer items merges it with a neighbour (or
/// evens the two out), which keeps the fill of a shrinking tree above ~1/4.
const MIN: usize = MAX / 4;

/// A dir's children, ordered by name.
#[derive(Clone, Default)]
pub(crate) struct Children {
    root: Option<Arc<BNode>>,
    len: usize,
}

#[derive(Clone)]
enum BNode {
    Leaf(Vec<Node>),
    /// `seps.len() + 1 == kids.len()`; `seps[i]` is the first name under `kids[i + 1]` when
    /// it was set (a later removal may leave it naming a node that no longer exists).
    Branch {
        seps: Vec<Sep>,
        kids: Vec<Arc<BNode>>,
    },
}

impl BNode {
    /// Entries of a leaf, kids of a branch.
    fn items(&self) -> usize {
        match self {
            BNode::Leaf(nodes) => nodes.len(),
            BNode::Branch { kids, .. } => kids.len(),
        }
    }
}

/// A branch separator: a copy of a name, with its key.
#[derive(Clone)]
struct Sep {
    key: NameKey,
    name: Arc<str>,
}

impl Sep {
    fn new(name: &str) -> Sep {
        Sep {
            key: NameKey::of(name),
            name: Arc::from(name),
        }
    }

    fn cmp_name(&self, name: Name<'_>) -> std::cmp::Ordering {
        cmp_keyed(self.key, || &self.name, name)
    }
}

/// The kid of a branch whose subtree would hold `name`.
fn kid_index(seps: &[Sep], name: Name<'_>) -> usize {
    seps.partition_point(|s| s.cmp_name(name).is_le())
}

fn search(nodes: &[Node], name: Name<'_>) -> Result<usize, usize> {
    nodes.binary_search_by(|n| n.cmp_name(name))
}

impl std::fmt::Debug for Children {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|n| n.name()))
            .finish()
    }
}

impl Children {
    pub fn new() -> Children {
        Children::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The child named `name`.
    pub fn get(&self, name: &str) -> Option<&Node> {
        let name = Name::new(name);
        let mut cur = self.root.as_deref()?;
        loop {
            match cur {
                BNode::Branch { seps, kids } => cur = kids.get(kid_index(seps, name))?,
                BNode::Leaf(nodes) => return search(nodes, name).ok().and_then(|i| nodes.get(i)),
            }
        }
    }

    /// The slot of the child named `name`, the path to it copied where a view shares it.
    /// The caller may replace the node, keeping its name. Nothing is copied when there is no
    /// such child (a first walk finds out, and leaves the path in the cache for the second).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.get(name)?;
        let name = Name::new(name);
        let mut cur = self.root.as_mut()?;
        loop {
            match Arc::make_mut(cur) {
                BNode::Branch { seps, kids } => {
                    let i = kid_index(seps, name);
                    cur = kids.get_mut(i)?;
                }
                BNode::Leaf(nodes) => {
                    let i = search(nodes, name).ok()?;
                    return nodes.get_mut(i);
                }
            }
        }
    }

    /// Inserts `node` under its name, returning the node it replaced.
    pub fn insert(&mut self, node: Node) -> Option<Node> {
        let Some(root) = self.root.as_mut() else {
            self.root = Some(Arc::new(BNode::Leaf(vec![node])));
            self.len = 1;
            return None;
        };
        let old = insert_into(root, node);
        if old.is_none() {
            self.len += 1;
        }
        if root.items() > MAX {
            let (left, sep, right) = split(root);
            *root = Arc::new(BNode::Branch {
                seps: vec![sep],
                kids: vec![Arc::new(left), Arc::new(right)],
            });
        }
        old
    }

    /// Removes the child named `name`. Nothing is copied when there is no such child.
    pub fn remove(&mut self, name: &str) -> Option<Node> {
        self.get(name)?;
        let root = self.root.as_mut()?;
        let removed = remove_from(root, Name::new(name));
        if removed.is_some() {
            self.len -= 1;
        }
        // A root branch left with one kid hands the root to it; an empty root leaf goes.
        loop {
            match self.root.as_deref() {
                Some(BNode::Branch { kids, .. }) if kids.len() == 1 => {
                    self.root = kids.first().cloned();
                }
                Some(BNode::Leaf(nodes)) if nodes.is_empty() => self.root = None,
                _ => break,
            }
        }
        removed
    }

    /// The children in name order.
    pub fn iter(&self) -> Iter<'_> {
        let mut it = Iter {
            stack: Vec::new(),
            leaf: [].iter(),
            left: self.len,
        };
        if let Some(root) = self.root.as_deref() {
            it.descend(root);
        }
        it
    }
}

/// Inserts into the subtree at `link` (copying it where shared). The subtree may come back
/// holding `MAX + 1` items at its top: the caller evens it out with a neighbour or splits it.
fn insert_into(link: &mut Arc<BNode>, node: Node) -> Option<Node> {
    if let BNode::Leaf(nodes) = &**link {
        let at = search(nodes, node.key_name());
        return match at {
            Ok(i) => match Arc::make_mut(link) {
                BNode::Leaf(nodes) => nodes.get_mut(i).map(|slot| std::mem::replace(slot, node)),
                BNode::Branch { .. } => None,
            },
            Err(i) => {
                match Arc::get_mut(link) {
                    Some(BNode::Leaf(nodes)) => {
                        // Exact growth: a leaf's Vec is as long as its entries.
                        nodes.reserve_exact(1);
                        nodes.insert(i, node);
                    }
                    _ => {
                        // Shared with a view: build the new leaf directly, one allocation.
                        if let BNode::Leaf(nodes) = &**link {
                            let mut copy = Vec::with_capacity(nodes.len() + 1);
                            copy.extend_from_slice(&nodes[..i]);
                            copy.push(node);
                            copy.extend_from_slice(&nodes[i..]);
                            *link = Arc::new(BNode::Leaf(copy));
                        }
                    }
                }
                None
            }
        };
    }
    let BNode::Branch { seps, kids } = Arc::make_mut(link) else {
        return None;
    };
    let i = kid_index(seps, node.key_name());
    let kid = kids.get_mut(i)?;
    let old = insert_into(kid, node);
    if kid.items() > MAX {
        overflow(seps, kids, i);
    }
    old
}

/// `kids[i]` holds `MAX + 1` items: share them with a neighbour that has room, else split.
fn overflow(seps: &mut Vec<Sep>, kids: &mut Vec<Arc<BNode>>, i: usize) {
    let has_room = |j: usize| kids.get(j).is_some_and(|k| k.items() < MAX);
    if i > 0 && has_room(i - 1) {
        even_out(seps, kids, i - 1);
    } else if has_room(i + 1) {
        even_out(seps, kids, i);
    } else if let Some(kid) = kids.get_mut(i) {
        let (left, sep, right) = split(kid);
        *kid = Arc::new(left);
        seps.reserve_exact(1);
        kids.reserve_exact(1);
        seps.insert(i, sep);
        kids.insert(i + 1, Arc::new(right));
    }
}

/// Splits a node in two halves and the separator between them.
fn split(node: &Arc<BNode>) -> (BNode, Sep, BNode) {
    match &**node {
        BNode::Leaf(nodes) => {
            let mid = nodes.len() / 2;
            let sep = Sep::new(nodes.get(mid).map_or("", |n| n.name()));
            (
                BNode::Leaf(nodes[..mid].to_vec()),
                sep,
                BNode::Leaf(nodes[mid..].to_vec()),
            )
        }
        BNode::Branch { seps, kids } => {
            let mid = kids.len() / 2;
            let sep = seps.get(mid - 1).cloned().unwrap_or_else(|| Sep::new(""));
            (
                BNode::Branch {
                    seps: seps[..mid - 1].to_vec(),
                    kids: kids[..mid].to_vec(),
                },
                sep,
                BNode::Branch {
                    seps: seps[mid..].to_vec(),
                    kids: kids[mid..].to_vec(),
                },
            )
        }
    }
}

/// Spreads the items of `kids[l]` and `kids[l + 1]` evenly over the two.
fn even_out(seps: &mut [Sep], kids: &mut [Arc<BNode>], l: usize) {
    let (Some(a), Some(b), Some(sep)) = (kids.get(l), kids.get(l + 1), seps.get(l)) else {
        return;
    };
    let total = a.items() + b.items();
    let left_n = total.div_ceil(2);
    let (left, new_sep, right) = match (&**a, &**b) {
        (BNode::Leaf(x), BNode::Leaf(y)) => {
            let all: Vec<&Node> = x.iter().chain(y).collect();
            let right: Vec<Node> = all[left_n..].iter().copied().cloned().collect();
            let Some(first) = right.first() else { return };
            let sep = Sep::new(first.name());
            let left = all[..left_n].iter().copied().cloned().collect();
            (BNode::Leaf(left), sep, BNode::Leaf(right))
        }
        (BNode::Branch { seps: sx, kids: kx }, BNode::Branch { seps: sy, kids: ky }) => {
            // The separators of the joined run: x's, the parent's between them, y's.
            let all_seps: Vec<&Sep> = sx.iter().chain([sep]).chain(sy).collect();
            let all_kids: Vec<&Arc<BNode>> = kx.iter().chain(ky).collect();
            let Some(new_sep) = all_seps.get(left_n - 1).copied().cloned() else {
                return;
            };
            let cl = |v: &[&Arc<BNode>]| v.iter().copied().cloned().collect();
            let cs = |v: &[&Sep]| v.iter().copied().cloned().collect();
            (
                BNode::Branch {
                    seps: cs(&all_seps[..left_n - 1]),
                    kids: cl(&all_kids[..left_n]),
                },
                new_sep,
                BNode::Branch {
                    seps: cs(&all_seps[left_n..]),
                    kids: cl(&all_kids[left_n..]),
                },
            )
        }
        // Siblings are always at the same depth.
        _ => return,
    };
    seps[l] = new_sep;
    kids[l] = Arc::new(left);
    kids[l + 1] = Arc::new(right);
}

/// Joins `kids[l + 1]` into `kids[l]` (they fit in one node), dropping the separator.
fn merge(seps: &mut Vec<Sep>, kids: &mut Vec<Arc<BNode>>, l: usize) {
    let (Some(a), Some(b), Some(sep)) = (kids.get(l), kids.get(l + 1), seps.get(l)) else {
        return;
    };
    let joined = match (&**a, &**b) {
        (BNode::Leaf(x), BNode::Leaf(y)) => BNode::Leaf(x.iter().chain(y).cloned().collect()),
        (BNode::Branch { seps: sx, kids: kx }, BNode::Branch { seps: sy, kids: ky }) => {
            BNode::Branch {
                seps: sx.iter().chain([sep]).chain(sy).cloned().collect(),
                kids: kx.iter().chain(ky).cloned().collect(),
            }
        }
        _ => return,
    };
    kids[l] = Arc::new(joined);
    kids.remove(l + 1);
    seps.remove(l);
}

/// Removes `name` from the subtree at `link` (copying it where shared); the caller has
/// checked that it is there. The subtree may come back below `MIN` items at its top.
fn remove_from(link: &mut Arc<BNode>, name: Name<'_>) -> Option<Node> {
    if let BNode::Leaf(nodes) = &**link {
        let i = search(nodes, name).ok()?;
        return match Arc::get_mut(link) {
            Some(BNode::Leaf(nodes)) => Some(nodes.remove(i)),
            _ => {
                let BNode::Leaf(nodes) = &**link else {
                    return None;
                };
                let removed = nodes.get(i).cloned();
                let copy = nodes[..i].iter().chain(&nodes[i + 1..]).cloned().collect();
                *link = Arc::new(BNode::Leaf(copy));
                removed
            }
        };
    }
    let BNode::Branch { seps, kids } = Arc::make_mut(link) else {
        return None;
    };
    let i = kid_index(seps, name);
    let kid = kids.get_mut(i)?;
    let removed = remove_from(kid, name);
    if kid.items() < MIN && kids.len() > 1 {
        let l = i.saturating_sub(1);
        let fits =
            kids.get(l).map_or(0, |k| k.items()) + kids.get(l + 1).map_or(0, |k| k.items()) <= MAX;
        if fits {
            merge(seps, kids, l);
        } else {
            even_out(seps, kids, l);
        }
    }
    removed
}

/// The children of a dir in name order.
pub(crate) struct Iter<'a> {
    /// Branches above the current leaf, each with the index of its next kid to visit.
    stack: Vec<(&'a [Arc<BNode>], usize)>,
    leaf: std::slice::Iter<'a, Node>,
    left: usize,
}

impl<'a> Iter<'a> {
    /// Walks down the first kids from `node` to a leaf.
    fn descend(&mut self, mut node: &'a BNode) {
        loop {
            match node {
                BNode::Leaf(nodes) => {
                    self.leaf = nodes.iter();
                    return;
                }
                BNode::Branch { kids, .. } => {
                    let Some(first) = kids.first() else { return };
                    self.stack.push((kids, 1));
                    node = first;
                }
            }
        }
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a Node;

    fn next(&mut self) -> Option<&'a Node> {
        loop {
            if let Some(n) = self.leaf.next() {
                self.left = self.left.saturating_sub(1);
                return Some(n);
            }
            // The leaf is done: the next kid of the nearest branch that has one.
            let top = self.stack.last_mut()?;
            let kids: &'a [Arc<BNode>] = top.0;
            match kids.get(top.1) {
                Some(kid) => {
                    top.1 += 1;
                    self.descend(kid);
                }
                None => {
                    self.stack.pop();
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Iter<'_> {}

#[cfg(test)]
impl Children {
    /// Asserts the invariants in the module doc; returns the tree's depth.
    pub(crate) fn check(&self) -> usize {
        fn walk(
            n: &BNode,
            lo: Option<&str>,
            hi: Option<&str>,
            is_root: bool,
            count: &mut usize,
        ) -> usize {
            assert!(n.items() <= MAX, "overfull node");
            assert!(is_root || n.items() >= MIN, "underfull node below the root");
            match n {
                BNode::Leaf(nodes) => {
                    assert!(is_root || !nodes.is_empty(), "empty leaf below the root");
                    for w in nodes.windows(2) {
                        assert!(w[0].name() < w[1].name(), "leaf out of order");
                    }
                    for x in nodes {
                        assert_eq!(x.key_name().key, NameKey::of(x.name()), "stale node key");
                        assert!(lo.is_none_or(|lo| lo <= x.name()), "entry below its range");
                        assert!(hi.is_none_or(|hi| x.name() < hi), "entry above its range");
                    }
                    *count += nodes.len();
                    0
                }
                BNode::Branch { seps, kids } => {
                    assert_eq!(seps.len() + 1, kids.len());
                    assert!(kids.len() >= 2, "branch with one kid");
                    for sep in seps {
                        assert_eq!(sep.key, NameKey::of(&sep.name), "stale separator key");
                    }
                    for w in seps.windows(2) {
                        assert!(w[0].name < w[1].name, "separators out of order");
                    }
                    let mut depth = None;
                    for (i, k) in kids.iter().enumerate() {
                        let l = if i == 0 {
                            lo
                        } else {
                            seps.get(i - 1).map(|s| &*s.name)
                        };
                        let h = seps.get(i).map(|s| &*s.name).or(hi);
                        let d = walk(k, l, h, false, count);
                        assert!(depth.is_none_or(|x| x == d), "leaves at different depths");
                        depth = Some(d);
                    }
                    depth.unwrap_or(0) + 1
                }
            }
        }
        let mut count = 0;
        let depth = self
            .root
            .as_deref()
            .map_or(0, |r| walk(r, None, None, true, &mut count));
        assert_eq!(count, self.len, "len");
        assert_eq!(self.iter().count(), self.len);
        depth
    }

    /// Leaves and their entries, for the fill tests.
    pub(crate) fn leaves(&self) -> (usize, usize) {
        fn walk(n: &BNode, acc: &mut (usize, usize)) {
            match n {
                BNode::Leaf(nodes) => {
                    acc.0 += 1;
                    acc.1 += nodes.len();
                }
                BNode::Branch { kids, .. } => kids.iter().for_each(|k| walk(k, acc)),
            }
        }
        let mut acc = (0, 0);
        if let Some(r) = self.root.as_deref() {
            walk(r, &mut acc);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn file(name: &str, index: u64) -> Node {
        Node::file(name, "v", index, index, None)
    }

    /// A tiny deterministic PRNG (xorshift64*).
    struct XorShift(u64);
    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        }
    }

    fn same(c: &Children, model: &BTreeMap<String, u64>) {
        c.check();
        let got: Vec<(&str, u64)> = c.iter().map(|n| (n.name(), n.created)).collect();
        let want: Vec<(&str, u64)> = model.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(got, want);
        assert_eq!(c.len(), model.len());
    }

    #[test]
    fn random_operations_match_a_btreemap_and_old_versions_never_change() {
        for seed in [1u64, 7, 0x9E37_79B9] {
            let mut rng = XorShift(seed);
            let mut c = Children::new();
            let mut model = BTreeMap::new();
            let mut versions = Vec::new();
            for step in 0..20_000u64 {
                let space = if step % 5000 < 2500 { 3000 } else { 200 };
                let name = format!("n{}", rng.below(space));
                match rng.below(10) {
                    0..=4 => {
                        let old = c.insert(file(&name, step));
                        assert_eq!(old.map(|n| n.created), model.insert(name, step));
                    }
                    5 | 6 => {
                        let old = c.remove(&name);
                        assert_eq!(old.map(|n| n.created), model.remove(&name));
                    }
                    7 => {
                        if let Some(slot) = c.get_mut(&name) {
                            *slot = file(&name, step);
                            model.insert(name, step);
                        } else {
                            assert!(!model.contains_key(&name));
                        }
                    }
                    _ => assert_eq!(c.get(&name).map(|n| n.created), model.get(&name).copied()),
                }
                if step % 997 == 0 {
                    same(&c, &model);
                    versions.push((c.clone(), model.clone()));
                }
            }
            same(&c, &model);
            for (c, model) in &versions {
                same(c, model);
            }
            // Remove everything: the tree shrinks back to nothing.
            let names: Vec<String> = model.keys().cloned().collect();
            for (i, name) in names.iter().enumerate() {
                assert!(c.remove(name).is_some());
                if i % 101 == 0 {
                    c.check();
                }
            }
            assert!(c.is_empty() && c.root.is_none());
        }
    }

    #[test]
    fn ascending_and_descending_inserts_fill_leaves() {
        for descending in [false, true] {
            let mut c = Children::new();
            let mut keep = None;
            for i in 0..100_000u64 {
                let i = if descending { 100_000 - i } else { i };
                c.insert(file(&format!("k{i:06}"), i));
                // A view held across every batch, as the server publishes one.
                if i % 64 == 0 {
                    keep = Some(c.clone());
                }
            }
            drop(keep);
            c.check();
            let (leaves, entries) = c.leaves();
            let fill = entries as f64 / (leaves * MAX) as f64;
            assert!(fill > 0.9, "fill {fill:.2} (descending: {descending})");
        }
    }

    #[test]
    fn random_inserts_fill_leaves_better_than_a_median_split() {
        let mut rng = XorShift(3);
        let mut c = Children::new();
        for i in 0..50_000 {
            c.insert(file(&format!("r{}", rng.below(1 << 40)), i));
        }
        c.check();
        let (leaves, entries) = c.leaves();
        let fill = entries as f64 / (leaves * MAX) as f64;
        assert!(fill > 0.75, "fill {fill:.2}");
    }

    #[test]
    fn absent_names_copy_nothing() {
        let mut c = Children::new();
        for i in 0..1000 {
            c.insert(file(&format!("{i:04}"), 1));
        }
        let view = c.clone();
        assert!(c.remove("nope").is_none());
        assert!(c.get_mut("nope").is_none());
        assert!(Arc::ptr_eq(
            c.root.as_ref().expect("root"),
            view.root.as_ref().expect("root")
        ));
    }
}
