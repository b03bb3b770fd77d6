//! ringd: an etcd v2 compatible key-value server. See ARCHITECTURE.md for the map.

// Input reaches almost everything here: no unwrap outside tests (expect is allowed only for
// true invariants, with the invariant as its message).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod auth;
pub mod backup;
pub mod config;
pub mod http;
pub mod limits;
pub mod members;
pub mod migrate;
pub mod raft;
pub mod shard;
pub mod snapshot;
pub mod stats;
pub mod ttl;
pub mod wal;
pub mod watch;
