//! ringd: an etcd v2 compatible key-value server. See ARCHITECTURE.md for the map.

pub mod config;
pub mod http;
pub mod limits;
pub mod members;
pub mod raft;
pub mod shard;
pub mod snapshot;
pub mod stats;
pub mod ttl;
pub mod wal;
pub mod watch;
