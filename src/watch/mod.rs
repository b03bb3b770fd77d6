//! Watches: the lock-free event ring that answers `waitIndex` from history, and the
//! shard-local registry of live watchers.
//!
//! Architecture invariant: only the raft shard writes the ring; any shard reads it without
//! locks. The registry is shard-local (`!Send`): a watcher lives and dies on the shard that
//! accepted its connection, so delivering an event never takes a lock.

pub mod registry;
pub mod ring;
