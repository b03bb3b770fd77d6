//! ringd's etcd v2 key tree: a pure, deterministic state machine.
//!
//! Architecture invariant: this crate knows nothing of HTTP, raft, shards, sockets, clocks,
//! randomness or I/O. Time enters only as the stamps (unix nanoseconds) the caller puts into
//! commands (`Command::stamp`: a write's time and its absolute expiration), and as the
//! `cutoff` of an `Expire` command. Applying the same
//! sequence of commands to `Store::new()` always yields the same store and the same events.
//!
//! The tree is persistent (structural sharing), so `Store::view()` is O(1) and the view is an
//! immutable snapshot that other threads can read while the single writer goes on applying.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod codec;
pub mod error;
pub mod event;
pub mod store;
mod tree;
pub mod watch;

pub use codec::{DecodeError, DecodeErrorKind, EventHead, SnapshotBuilder, SnapshotSource};
pub use error::{Error, ErrorCode};
pub use event::{Action, Event, NodeRepr};
pub use store::{Command, Store, StoreView, WriteStats};

/// An etcd v2 index: the store's own counter, one per successful write or expiry.
/// It is not a raft index (conf changes and no-ops consume raft indexes only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EtcdIndex(pub u64);
