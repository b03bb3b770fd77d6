//! HTTP: framing (`parse`), Go-compatible URL and form decoding (`form`), routing and the
//! keys-request mapping (`route`), member request bodies (`members`), etcd-compatible JSON
//! rendering (`render`), and the responses' heads, bodies and chunks (`response`).
//!
//! Architecture invariant: nothing here knows about raft, shards, sockets or threads. The
//! shard module feeds bytes in and writes bytes out.

pub mod form;
pub mod members;
pub mod parse;
pub mod render;
pub mod response;
pub mod route;
