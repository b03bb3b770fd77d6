//! Binary encodings: raft log payloads (`Command`), persisted events (`Event`) and store
//! snapshots (`Store::snapshot` / `Store::restore`).
//!
//! Primitives, all little-endian:
//! - `varint`: unsigned LEB128 (7 bits a byte, low group first), at most 10 bytes and
//!   canonical (no redundant zero groups, no bits past 64). Used for lengths, counts and
//!   etcd indexes, which are small.
//! - `u64`: 8 bytes. Used for absolute times (expirations, expire cutoffs): unix
//!   nanoseconds are around 2^60 and would take 9 varint bytes.
//! - `str`: varint byte length, then that many bytes of UTF-8.
//! - `flags`: one byte of bool / `Option`-presence bits; unknown bits are rejected.
//!
//! Every encoding is deterministic and canonical: decoding accepts only bytes that `encode`
//! produces, so `encode(decode(b)) == b` whenever `decode(b)` succeeds. Decoding never
//! panics and never allocates more than the input could describe: truncated input, trailing
//! bytes, unknown versions, tags or flag bits, bad UTF-8, non-canonical varints and lengths
//! past the end of the input are all `DecodeError`s naming the byte offset.
//!
//! ## Command (a raft log entry payload)
//! `version = 2`, `tag`, then per tag (`?` = present when its flag bit is set):
//! - 1 Set: `flags` (1 dir, 2 refresh, 4 expire), key `str`, value `str`, expire `u64`?,
//!   at `u64`
//! - 2 Create: `flags` (1 dir, 2 unique, 4 expire), key `str`, value `str`, expire `u64`?,
//!   at `u64`
//! - 3 Update: `flags` (2 refresh, 4 expire), key `str`, value `str`, expire `u64`?, at `u64`
//! - 4 CompareAndSwap: `flags` (2 refresh, 4 expire), key `str`, prev_value `str`,
//!   prev_index `varint`, value `str`, expire `u64`?, at `u64`
//! - 5 Delete: `flags` (1 dir, 2 recursive), key `str`, at `u64`
//! - 6 CompareAndDelete: key `str`, prev_value `str`, prev_index `varint`, at `u64`
//! - 7 Expire: cutoff `u64`
//!
//! Version 1 is the same without the trailing `at`. It is still decoded (with `at` = 0, "not
//! stamped") so that logs written before `at` existed replay; it is the one exception to
//! canonical re-encoding, as `encode` always writes version 2.
//!
//! ## Event
//! `version = 1`, action `tag` (1 get, 2 set, 3 create, 4 update, 5 delete, 6 expire,
//! 7 compareAndSwap, 8 compareAndDelete), `flags` (1 prev_node, 2 refresh, 4 time),
//! etcd_index `varint`, time `u64`?, node, prev_node?. (Events encoded before `time` existed
//! have no time bit and decode with `time: None`.) A node is `flags` (1 key, 2 dir, 4 value,
//! 8 expiration, 16 nodes), key `str`?, value `str`?, expiration `u64`?, modified_index
//! `varint`, created_index `varint`, then if nodes: a `varint` count and that many nodes.
//! Nesting is limited to `MAX_NODE_DEPTH` levels on decode.
//!
//! ## Snapshot
//! Header (125 bytes): magic `"rgds"`, version `u8 = 1`, index `u64`, node_count `u64`,
//! the 13 `WriteStats` counters as `u64` in declaration order. Body: the root's child count
//! (`varint`), then every node depth-first, children in key order, each as name `str` (the
//! last path component), `flags` (1 dir, 2 expire), created `varint`, then for a file
//! modified minus created (wrapping) `varint`, expire `u64`? and the value `str`; for a dir
//! (whose modified index always equals its created index) expire `u64`? and the child count
//! `varint`, followed by its children. Trailer: the body's length as `u64`. There is no
//! checksum (the caller checksums the file), but every length is checked, the trailer must
//! match and the decoded node count must equal the header's.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Write};
use std::num::NonZeroU64;
use std::sync::Arc;

use crate::event::{Action, Event, NodeRepr};
use crate::store::{Command, Store, WriteStats};
use crate::tree::{Children, Kind, Node};

/// The first byte of every encoded `Command`.
pub const COMMAND_FORMAT_VERSION: u8 = 2;
/// The command format before `at`, still decoded (see the module doc).
const COMMAND_FORMAT_VERSION_UNSTAMPED: u8 = 1;
/// The first byte of every encoded `Event`.
pub const EVENT_FORMAT_VERSION: u8 = 1;
/// The byte after `SNAPSHOT_MAGIC` in a snapshot.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 1;
/// The first four bytes of a snapshot.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"rgds";
/// The deepest `NodeRepr` nesting `Event::decode` accepts (the root's children are depth 1).
/// Twice the server's key depth limit, so any event the server can produce round-trips.
pub const MAX_NODE_DEPTH: usize = 512;

const SNAPSHOT_HEADER_LEN: usize = 4 + 1 + 8 + 8 + 13 * 8;
const SNAPSHOT_TRAILER_LEN: usize = 8;
/// The smallest encoded snapshot node: 1-byte name (+ length), flags, created, and a zero
/// child count (a file also has a modified delta). Bounds child counts against the remaining input.
const MIN_SNAPSHOT_NODE_LEN: usize = 5;
/// The smallest encoded event node: flags, modified, created.
const MIN_EVENT_NODE_LEN: usize = 3;
/// `write_snapshot` hands the writer chunks of about this size.
const WRITE_CHUNK: usize = 256 * 1024;

/// Why a decode failed, and at which byte offset of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Byte offset into the input where the offending item starts.
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

/// What was wrong with the input; `&'static str`s name the item being decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The input ended inside this item.
    Truncated(&'static str),
    /// This many bytes follow a complete value.
    TrailingBytes(usize),
    /// A format version this build does not know.
    UnsupportedVersion(u8),
    /// The input does not start with `SNAPSHOT_MAGIC`.
    BadMagic,
    /// An unknown variant tag.
    BadTag(&'static str, u8),
    /// A flags byte with bits that mean nothing for this item.
    BadFlags(&'static str, u8),
    /// A string that is not UTF-8 (the offset is the first bad byte).
    BadUtf8(&'static str),
    /// A length or count that the rest of the input cannot hold.
    TooLong {
        what: &'static str,
        len: u64,
        remaining: usize,
    },
    /// A varint longer than 64 bits or not in its shortest form.
    BadVarint(&'static str),
    /// `NodeRepr`s nested deeper than `MAX_NODE_DEPTH`.
    TooDeep(usize),
    /// A well-formed item with an impossible value (the text says which).
    Invalid(&'static str),
}

impl DecodeError {
    fn new(offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError { offset, kind }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.offset;
        match &self.kind {
            DecodeErrorKind::Truncated(what) => write!(f, "truncated {what} at byte {at}"),
            DecodeErrorKind::TrailingBytes(n) => write!(f, "{n} trailing bytes at byte {at}"),
            DecodeErrorKind::UnsupportedVersion(v) => {
                write!(f, "unsupported format version {v} at byte {at}")
            }
            DecodeErrorKind::BadMagic => {
                write!(f, "not a ringd store snapshot (bad magic) at byte {at}")
            }
            DecodeErrorKind::BadTag(what, tag) => {
                write!(f, "unknown {what} tag {tag} at byte {at}")
            }
            DecodeErrorKind::BadFlags(what, flags) => {
                write!(f, "unknown bits {flags:#04x} in {what} at byte {at}")
            }
            DecodeErrorKind::BadUtf8(what) => write!(f, "invalid utf-8 in {what} at byte {at}"),
            DecodeErrorKind::TooLong {
                what,
                len,
                remaining,
            } => write!(
                f,
                "{what} length {len} exceeds the {remaining} remaining bytes at byte {at}"
            ),
            DecodeErrorKind::BadVarint(what) => write!(f, "malformed varint {what} at byte {at}"),
            DecodeErrorKind::TooDeep(limit) => {
                write!(f, "nodes nested deeper than {limit} levels at byte {at}")
            }
            DecodeErrorKind::Invalid(what) => write!(f, "{what} at byte {at}"),
        }
    }
}

impl std::error::Error for DecodeError {}

// ---------------------------------------------------------------------------------------
// Primitives

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn bit(on: bool, bit: u8) -> u8 {
    if on {
        bit
    } else {
        0
    }
}

/// A cursor over the input; every read checks bounds and reports its own offset.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(DecodeError::new(self.pos, DecodeErrorKind::Truncated(what))),
        }
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        match self.buf[self.pos..].first_chunk::<8>() {
            Some(b) => {
                self.pos += 8;
                Ok(u64::from_le_bytes(*b))
            }
            None => Err(DecodeError::new(self.pos, DecodeErrorKind::Truncated(what))),
        }
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(DecodeError::new(start, DecodeErrorKind::Truncated(what)));
            };
            self.pos += 1;
            // The 10th byte holds bit 63 only; a zero final group (shift > 0) is overlong.
            if (shift == 63 && b > 1) || (b == 0 && shift > 0) {
                return Err(DecodeError::new(start, DecodeErrorKind::BadVarint(what)));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
        }
    }

    /// A count of items that each take at least `min_len` bytes.
    fn count(&mut self, what: &'static str, min_len: usize) -> Result<u64, DecodeError> {
        let start = self.pos;
        let n = self.varint(what)?;
        let remaining = self.remaining();
        if n > (remaining / min_len) as u64 {
            return Err(DecodeError::new(
                start,
                DecodeErrorKind::TooLong {
                    what,
                    len: n,
                    remaining,
                },
            ));
        }
        Ok(n)
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let bytes = self.len_prefixed(what)?;
        std::str::from_utf8(bytes).map_err(|e| {
            DecodeError::new(
                self.pos - bytes.len() + e.valid_up_to(),
                DecodeErrorKind::BadUtf8(what),
            )
        })
    }

    /// Steps over a `str` without reading it (no UTF-8 check: the history scan skips values
    /// of up to `--max-request-bytes` this way).
    fn skip_str(&mut self, what: &'static str) -> Result<(), DecodeError> {
        self.len_prefixed(what).map(|_| ())
    }

    /// A varint length, then that many bytes.
    fn len_prefixed(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        let len = self.varint(what)?;
        let remaining = self.remaining();
        if len > remaining as u64 {
            return Err(DecodeError::new(
                start,
                DecodeErrorKind::TooLong {
                    what,
                    len,
                    remaining,
                },
            ));
        }
        let bytes = &self.buf[self.pos..self.pos + len as usize];
        self.pos += bytes.len();
        Ok(bytes)
    }

    fn flags(&mut self, what: &'static str, allowed: u8) -> Result<u8, DecodeError> {
        let at = self.pos;
        let f = self.u8(what)?;
        if f & !allowed != 0 {
            return Err(DecodeError::new(at, DecodeErrorKind::BadFlags(what, f)));
        }
        Ok(f)
    }

    fn version(&mut self, expected: u8) -> Result<(), DecodeError> {
        self.version_in(&[expected]).map(|_| ())
    }

    /// Reads a format version that must be one of `known`.
    fn version_in(&mut self, known: &[u8]) -> Result<u8, DecodeError> {
        let at = self.pos;
        let v = self.u8("format version")?;
        if !known.contains(&v) {
            return Err(DecodeError::new(at, DecodeErrorKind::UnsupportedVersion(v)));
        }
        Ok(v)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::new(
                self.pos,
                DecodeErrorKind::TrailingBytes(n),
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Commands

const CMD_SET: u8 = 1;
const CMD_CREATE: u8 = 2;
const CMD_UPDATE: u8 = 3;
const CMD_CAS: u8 = 4;
const CMD_DELETE: u8 = 5;
const CMD_CAD: u8 = 6;
const CMD_EXPIRE: u8 = 7;

const F_DIR: u8 = 1;
/// `refresh` (Set, Update, CompareAndSwap), `unique` (Create), `recursive` (Delete).
const F_SECOND: u8 = 2;
const F_EXPIRE: u8 = 4;

impl Command {
    /// Appends the command's binary encoding (see the module doc) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(COMMAND_FORMAT_VERSION);
        match self {
            Command::Set {
                key,
                dir,
                value,
                expire,
                refresh,
                at,
            } => {
                let flags = bit(*dir, F_DIR) | bit(*refresh, F_SECOND);
                encode_kv(out, CMD_SET, flags, key, value, *expire);
                put_u64(out, *at);
            }
            Command::Create {
                key,
                dir,
                value,
                expire,
                unique,
                at,
            } => {
                let flags = bit(*dir, F_DIR) | bit(*unique, F_SECOND);
                encode_kv(out, CMD_CREATE, flags, key, value, *expire);
                put_u64(out, *at);
            }
            Command::Update {
                key,
                value,
                expire,
                refresh,
                at,
            } => {
                let flags = bit(*refresh, F_SECOND);
                encode_kv(out, CMD_UPDATE, flags, key, value, *expire);
                put_u64(out, *at);
            }
            Command::CompareAndSwap {
                key,
                prev_value,
                prev_index,
                value,
                expire,
                refresh,
                at,
            } => {
                out.push(CMD_CAS);
                out.push(bit(*refresh, F_SECOND) | bit(expire.is_some(), F_EXPIRE));
                put_str(out, key);
                put_str(out, prev_value);
                put_varint(out, *prev_index);
                put_str(out, value);
                if let Some(e) = expire {
                    put_u64(out, *e);
                }
                put_u64(out, *at);
            }
            Command::Delete {
                key,
                dir,
                recursive,
                at,
            } => {
                out.push(CMD_DELETE);
                out.push(bit(*dir, F_DIR) | bit(*recursive, F_SECOND));
                put_str(out, key);
                put_u64(out, *at);
            }
            Command::CompareAndDelete {
                key,
                prev_value,
                prev_index,
                at,
            } => {
                out.push(CMD_CAD);
                put_str(out, key);
                put_str(out, prev_value);
                put_varint(out, *prev_index);
                put_u64(out, *at);
            }
            Command::Expire { cutoff } => {
                out.push(CMD_EXPIRE);
                put_u64(out, *cutoff);
            }
        }
    }

    /// Decodes exactly one command occupying all of `bytes` (version 2, or version 1 with
    /// `at` = 0).
    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.version_in(&[COMMAND_FORMAT_VERSION, COMMAND_FORMAT_VERSION_UNSTAMPED])?;
        // Struct literals evaluate their fields in the order written, so `at` (last in every
        // literal below) is read after the fields that precede it in the encoding.
        let at = |r: &mut Reader<'_>| match version {
            COMMAND_FORMAT_VERSION => r.u64("write time"),
            _ => Ok(0),
        };
        let tag_at = r.pos;
        let cmd = match r.u8("command tag")? {
            CMD_SET => {
                let (flags, key, value, expire) = decode_kv(&mut r, F_DIR | F_SECOND)?;
                Command::Set {
                    key,
                    dir: flags & F_DIR != 0,
                    value,
                    expire,
                    refresh: flags & F_SECOND != 0,
                    at: at(&mut r)?,
                }
            }
            CMD_CREATE => {
                let (flags, key, value, expire) = decode_kv(&mut r, F_DIR | F_SECOND)?;
                Command::Create {
                    key,
                    dir: flags & F_DIR != 0,
                    value,
                    expire,
                    unique: flags & F_SECOND != 0,
                    at: at(&mut r)?,
                }
            }
            CMD_UPDATE => {
                let (flags, key, value, expire) = decode_kv(&mut r, F_SECOND)?;
                Command::Update {
                    key,
                    value,
                    expire,
                    refresh: flags & F_SECOND != 0,
                    at: at(&mut r)?,
                }
            }
            CMD_CAS => {
                let flags = r.flags("compareAndSwap flags", F_SECOND | F_EXPIRE)?;
                let key = r.str("key")?.to_string();
                let prev_value = r.str("prev_value")?.to_string();
                let prev_index = r.varint("prev_index")?;
                let value = r.str("value")?.to_string();
                let expire = decode_expire(&mut r, flags)?;
                Command::CompareAndSwap {
                    key,
                    prev_value,
                    prev_index,
                    value,
                    expire,
                    refresh: flags & F_SECOND != 0,
                    at: at(&mut r)?,
                }
            }
            CMD_DELETE => {
                let flags = r.flags("delete flags", F_DIR | F_SECOND)?;
                Command::Delete {
                    key: r.str("key")?.to_string(),
                    dir: flags & F_DIR != 0,
                    recursive: flags & F_SECOND != 0,
                    at: at(&mut r)?,
                }
            }
            CMD_CAD => Command::CompareAndDelete {
                key: r.str("key")?.to_string(),
                prev_value: r.str("prev_value")?.to_string(),
                prev_index: r.varint("prev_index")?,
                at: at(&mut r)?,
            },
            CMD_EXPIRE => Command::Expire {
                cutoff: r.u64("expire cutoff")?,
            },
            tag => {
                return Err(DecodeError::new(
                    tag_at,
                    DecodeErrorKind::BadTag("command", tag),
                ))
            }
        };
        r.finish()?;
        Ok(cmd)
    }
}

/// Set, Create and Update: tag, flags (with the expire bit), key, value, expire?.
fn encode_kv(out: &mut Vec<u8>, tag: u8, flags: u8, key: &str, value: &str, expire: Option<u64>) {
    out.push(tag);
    out.push(flags | bit(expire.is_some(), F_EXPIRE));
    put_str(out, key);
    put_str(out, value);
    if let Some(e) = expire {
        put_u64(out, e);
    }
}

type KeyValue = (u8, String, String, Option<u64>);

fn decode_kv(r: &mut Reader<'_>, allowed: u8) -> Result<KeyValue, DecodeError> {
    let flags = r.flags("command flags", allowed | F_EXPIRE)?;
    let key = r.str("key")?.to_string();
    let value = r.str("value")?.to_string();
    let expire = decode_expire(r, flags)?;
    Ok((flags, key, value, expire))
}

fn decode_expire(r: &mut Reader<'_>, flags: u8) -> Result<Option<u64>, DecodeError> {
    if flags & F_EXPIRE != 0 {
        Ok(Some(r.u64("expire")?))
    } else {
        Ok(None)
    }
}

// ---------------------------------------------------------------------------------------
// Events

const N_KEY: u8 = 1;
const N_DIR: u8 = 2;
const N_VALUE: u8 = 4;
const N_EXPIRATION: u8 = 8;
const N_NODES: u8 = 16;

const E_PREV: u8 = 1;
const E_REFRESH: u8 = 2;
const E_TIME: u8 = 4;

fn action_tag(a: Action) -> u8 {
    match a {
        Action::Get => 1,
        Action::Set => 2,
        Action::Create => 3,
        Action::Update => 4,
        Action::Delete => 5,
        Action::Expire => 6,
        Action::CompareAndSwap => 7,
        Action::CompareAndDelete => 8,
    }
}

fn action_from_tag(tag: u8) -> Option<Action> {
    Some(match tag {
        1 => Action::Get,
        2 => Action::Set,
        3 => Action::Create,
        4 => Action::Update,
        5 => Action::Delete,
        6 => Action::Expire,
        7 => Action::CompareAndSwap,
        8 => Action::CompareAndDelete,
        _ => return None,
    })
}

impl Event {
    /// Appends the event's binary encoding (see the module doc) to `out`. `NodeRepr`s
    /// nested deeper than `MAX_NODE_DEPTH` encode but do not decode.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(EVENT_FORMAT_VERSION);
        out.push(action_tag(self.action));
        out.push(
            bit(self.prev_node.is_some(), E_PREV)
                | bit(self.refresh, E_REFRESH)
                | bit(self.time.is_some(), E_TIME),
        );
        put_varint(out, self.etcd_index);
        if let Some(t) = self.time {
            put_u64(out, t);
        }
        encode_node(out, &self.node);
        if let Some(prev) = &self.prev_node {
            encode_node(out, prev);
        }
    }

    /// Decodes exactly one event occupying all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        let mut r = Reader::new(bytes);
        let (action, flags, etcd_index, time) = event_prefix(&mut r)?;
        let node = decode_node(&mut r, 0)?;
        let prev_node = if flags & E_PREV != 0 {
            Some(decode_node(&mut r, 0)?)
        } else {
            None
        };
        r.finish()?;
        Ok(Event {
            action,
            node,
            prev_node,
            etcd_index,
            refresh: flags & E_REFRESH != 0,
            time,
        })
    }
}

/// What the history scan matches an encoded event on, read by `Event::decode_head` without
/// allocating and without reading values: the watch rules (`watch::history_matches_head`)
/// need the action, the refresh flag, the key and the previous node's kind and key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHead<'a> {
    pub action: Action,
    pub refresh: bool,
    /// `node.modified_index`: the event's index (`Event::index`).
    pub index: u64,
    /// `node.key`, as bytes: the scan does not check it for UTF-8 (`decode` does).
    pub key: Option<&'a [u8]>,
    /// `prev_node`'s `dir` and `key`, when the event has a previous node.
    pub prev: Option<(bool, Option<&'a [u8]>)>,
}

impl Event {
    /// Reads the matching facts of an encoded event (see `EventHead`). It checks the framing
    /// it walks over but not the whole event: `decode` does that.
    pub fn decode_head(bytes: &[u8]) -> Result<EventHead<'_>, DecodeError> {
        let mut r = Reader::new(bytes);
        let (action, flags, _, _) = event_prefix(&mut r)?;
        let (_, key, index) = node_head(&mut r, 0)?;
        let prev = if flags & E_PREV != 0 {
            let (dir, key, _) = node_head(&mut r, 0)?;
            Some((dir, key))
        } else {
            None
        };
        Ok(EventHead {
            action,
            refresh: flags & E_REFRESH != 0,
            index,
            key,
            prev,
        })
    }
}

/// An event's version, action, flags, etcd_index and time (the part before its nodes).
fn event_prefix(r: &mut Reader<'_>) -> Result<(Action, u8, u64, Option<u64>), DecodeError> {
    r.version(EVENT_FORMAT_VERSION)?;
    let tag_at = r.pos;
    let tag = r.u8("action tag")?;
    let action = action_from_tag(tag)
        .ok_or_else(|| DecodeError::new(tag_at, DecodeErrorKind::BadTag("action", tag)))?;
    let flags = r.flags("event flags", E_PREV | E_REFRESH | E_TIME)?;
    let etcd_index = r.varint("etcd_index")?;
    let time = match flags & E_TIME {
        0 => None,
        _ => Some(r.u64("event time")?),
    };
    Ok((action, flags, etcd_index, time))
}

/// A node's flags and key (read by `key`: checked as a `str`, or raw bytes).
fn node_start<'a, K>(
    r: &mut Reader<'a>,
    key: impl FnOnce(&mut Reader<'a>, &'static str) -> Result<K, DecodeError>,
) -> Result<(u8, Option<K>), DecodeError> {
    let flags = r.flags(
        "node flags",
        N_KEY | N_DIR | N_VALUE | N_EXPIRATION | N_NODES,
    )?;
    let key = match flags & N_KEY {
        0 => None,
        _ => Some(key(r, "node key")?),
    };
    Ok((flags, key))
}

/// The child count of a node at `depth`, refused past `MAX_NODE_DEPTH`.
fn child_count(r: &mut Reader<'_>, depth: usize) -> Result<u64, DecodeError> {
    let at = r.pos;
    let count = r.count("node count", MIN_EVENT_NODE_LEN)?;
    if count > 0 && depth >= MAX_NODE_DEPTH {
        return Err(DecodeError::new(
            at,
            DecodeErrorKind::TooDeep(MAX_NODE_DEPTH),
        ));
    }
    Ok(count)
}

/// A node's `dir`, `key` (unchecked bytes) and `modified_index`, stepping over the rest of it
/// (children included, `depth` as in `decode_node`).
fn node_head<'a>(
    r: &mut Reader<'a>,
    depth: usize,
) -> Result<(bool, Option<&'a [u8]>, u64), DecodeError> {
    let (flags, key) = node_start(r, Reader::len_prefixed)?;
    if flags & N_VALUE != 0 {
        r.skip_str("node value")?;
    }
    if flags & N_EXPIRATION != 0 {
        r.u64("node expiration")?;
    }
    let modified_index = r.varint("modified_index")?;
    r.varint("created_index")?;
    if flags & N_NODES != 0 {
        for _ in 0..child_count(r, depth)? {
            node_head(r, depth + 1)?;
        }
    }
    Ok((flags & N_DIR != 0, key, modified_index))
}

fn encode_node(out: &mut Vec<u8>, n: &NodeRepr) {
    out.push(
        bit(n.key.is_some(), N_KEY)
            | bit(n.dir, N_DIR)
            | bit(n.value.is_some(), N_VALUE)
            | bit(n.expiration.is_some(), N_EXPIRATION)
            | bit(n.nodes.is_some(), N_NODES),
    );
    if let Some(k) = &n.key {
        put_str(out, k);
    }
    if let Some(v) = &n.value {
        put_str(out, v);
    }
    if let Some(e) = n.expiration {
        put_u64(out, e);
    }
    put_varint(out, n.modified_index);
    put_varint(out, n.created_index);
    if let Some(nodes) = &n.nodes {
        put_varint(out, nodes.len() as u64);
        for child in nodes {
            encode_node(out, child);
        }
    }
}

/// `depth` is the nesting of this node (0 for an event's `node` and `prev_node`).
fn decode_node(r: &mut Reader<'_>, depth: usize) -> Result<NodeRepr, DecodeError> {
    let (flags, key) = node_start(r, Reader::str)?;
    let key = key.map(str::to_string);
    let value = match flags & N_VALUE {
        0 => None,
        _ => Some(r.str("node value")?.to_string()),
    };
    let expiration = match flags & N_EXPIRATION {
        0 => None,
        _ => Some(r.u64("node expiration")?),
    };
    let modified_index = r.varint("modified_index")?;
    let created_index = r.varint("created_index")?;
    let nodes = if flags & N_NODES != 0 {
        let count = child_count(r, depth)?;
        let mut nodes = Vec::with_capacity(count as usize);
        for _ in 0..count {
            nodes.push(decode_node(r, depth + 1)?);
        }
        Some(nodes)
    } else {
        None
    };
    Ok(NodeRepr {
        key,
        dir: flags & N_DIR != 0,
        value,
        expiration,
        modified_index,
        created_index,
        nodes,
    })
}

// ---------------------------------------------------------------------------------------
// Snapshots

const S_DIR: u8 = 1;
const S_EXPIRE: u8 = 2;

fn stats_fields(s: &WriteStats) -> [u64; 13] {
    [
        s.sets_success,
        s.sets_fail,
        s.delete_success,
        s.delete_fail,
        s.update_success,
        s.update_fail,
        s.create_success,
        s.create_fail,
        s.compare_and_swap_success,
        s.compare_and_swap_fail,
        s.compare_and_delete_success,
        s.compare_and_delete_fail,
        s.expire_count,
    ]
}

fn stats_from_fields(f: [u64; 13]) -> WriteStats {
    let [sets_success, sets_fail, delete_success, delete_fail, update_success, update_fail, create_success, create_fail, compare_and_swap_success, compare_and_swap_fail, compare_and_delete_success, compare_and_delete_fail, expire_count] =
        f;
    WriteStats {
        sets_success,
        sets_fail,
        delete_success,
        delete_fail,
        update_success,
        update_fail,
        create_success,
        create_fail,
        compare_and_swap_success,
        compare_and_swap_fail,
        compare_and_delete_success,
        compare_and_delete_fail,
        expire_count,
    }
}

/// A snapshot name must be a component `tree::components` can produce, or the node would
/// be unreachable.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

/// A dir being rebuilt during `restore`.
struct Frame<'a> {
    /// The dir's name in its parent (unused for the root).
    name: Arc<str>,
    created: u64,
    modified: u64,
    expire: Option<NonZeroU64>,
    /// Children still to come.
    remaining: u64,
    children: Children,
    /// The last child's name (borrowed from the input), to check strict key order.
    last: Option<&'a str>,
    /// Length of the path buffer before this dir's "/name" was appended.
    path_len: usize,
}

impl Frame<'_> {
    fn into_node(self) -> Node {
        Node {
            created: self.created,
            modified: self.modified,
            expire: self.expire,
            kind: Kind::Dir(Box::new(self.children)),
        }
    }
}

/// What a snapshot needs, frozen at one index: the (shared, persistent) tree, the index, the
/// node count and the stats. Taking it is O(1), and it is `Send`, so the encoding can run on
/// another thread while the store goes on applying writes.
pub struct SnapshotSource(Store);

impl SnapshotSource {
    /// The etcd index the snapshot will hold.
    pub fn index(&self) -> u64 {
        self.0.index().0
    }

    /// Same bytes as `Store::snapshot` on the store it was taken from.
    pub fn snapshot(&self, out: &mut Vec<u8>) {
        self.0.snapshot(out)
    }
}

impl Store {
    /// An O(1) frozen copy for encoding a snapshot elsewhere (the expiry index is left out:
    /// `restore` rebuilds it from the tree).
    pub fn snapshot_source(&self) -> SnapshotSource {
        SnapshotSource(Store::from_parts(
            self.root().clone(),
            self.index().0,
            self.node_count(),
            std::collections::BTreeSet::new(),
            self.write_stats().clone(),
        ))
    }

    /// Appends a snapshot of the whole store (see the module doc) to `out`. Deterministic:
    /// equal stores give equal bytes. The tree is walked iteratively, so depth is no concern.
    pub fn snapshot(&self, out: &mut Vec<u8>) {
        // A Vec never fails to write, and no writer is involved.
        let _ = self.encode_snapshot(out, None);
    }

    /// Streams a snapshot (the same bytes `snapshot` appends) to `w` in chunks of about
    /// 256 KiB, returning the number of bytes written. `w` is not flushed.
    pub fn write_snapshot<W: Write>(&self, mut w: W) -> io::Result<u64> {
        let mut buf = Vec::with_capacity(WRITE_CHUNK + 4096);
        self.encode_snapshot(&mut buf, Some(&mut w))
    }

    /// Encodes into `out`; with a writer, drains `out` into it whenever it exceeds
    /// `WRITE_CHUNK` and at the end. Returns the snapshot's length.
    fn encode_snapshot(&self, out: &mut Vec<u8>, mut w: Option<&mut dyn Write>) -> io::Result<u64> {
        let start = out.len();
        let mut flushed = 0u64;
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.push(SNAPSHOT_FORMAT_VERSION);
        put_u64(out, self.index().0);
        put_u64(out, self.node_count());
        for v in stats_fields(self.write_stats()) {
            put_u64(out, v);
        }
        let root = self.root();
        let mut stack = Vec::new();
        if let Some(children) = root.children() {
            put_varint(out, children.len() as u64);
            stack.push(children.iter());
        } else {
            put_varint(out, 0);
        }
        while let Some(iter) = stack.last_mut() {
            let Some((name, node)) = iter.next() else {
                stack.pop();
                continue;
            };
            put_str(out, name);
            out.push(bit(node.is_dir(), S_DIR) | bit(node.expire.is_some(), S_EXPIRE));
            put_varint(out, node.created);
            if !node.is_dir() {
                put_varint(out, node.modified.wrapping_sub(node.created));
            }
            if let Some(e) = node.expire {
                put_u64(out, e.get());
            }
            match &node.kind {
                Kind::File(v) => put_str(out, v),
                Kind::Dir(children) => {
                    debug_assert_eq!(node.created, node.modified, "a dir's modified index");
                    put_varint(out, children.len() as u64);
                    stack.push(children.iter());
                }
            }
            if let Some(w) = w.as_mut() {
                if out.len() >= WRITE_CHUNK {
                    w.write_all(out)?;
                    flushed += out.len() as u64;
                    out.clear();
                }
            }
        }
        let total = flushed + (out.len() - start) as u64;
        put_u64(out, total - SNAPSHOT_HEADER_LEN as u64);
        if let Some(w) = w {
            w.write_all(out)?;
            flushed += out.len() as u64;
            out.clear();
            return Ok(flushed);
        }
        Ok((out.len() - start) as u64)
    }

    /// Rebuilds a store from a `snapshot`. The result is indistinguishable from the store
    /// that was snapshotted through every public method; the expiry index is rebuilt from
    /// the tree. Rejects (never panics on) malformed input.
    pub fn restore(bytes: &[u8]) -> Result<Store, DecodeError> {
        let mut r = Reader::new(bytes);
        if bytes.len() < SNAPSHOT_MAGIC.len() {
            return Err(DecodeError::new(
                0,
                DecodeErrorKind::Truncated("snapshot magic"),
            ));
        }
        if bytes[..SNAPSHOT_MAGIC.len()] != SNAPSHOT_MAGIC {
            return Err(DecodeError::new(0, DecodeErrorKind::BadMagic));
        }
        r.pos = SNAPSHOT_MAGIC.len();
        r.version(SNAPSHOT_FORMAT_VERSION)?;
        let index = r.u64("snapshot index")?;
        let node_count = r.u64("snapshot node count")?;
        let mut stats = [0u64; 13];
        for s in &mut stats {
            *s = r.u64("snapshot stats")?;
        }
        // The trailer: the body's length, which must be exactly what lies between.
        let body_len = bytes
            .len()
            .checked_sub(SNAPSHOT_HEADER_LEN + SNAPSHOT_TRAILER_LEN);
        let trailer_at = bytes.len().saturating_sub(SNAPSHOT_TRAILER_LEN);
        let trailer = match (body_len, bytes[trailer_at..].first_chunk::<8>()) {
            (Some(_), Some(t)) => u64::from_le_bytes(*t),
            _ => {
                return Err(DecodeError::new(
                    SNAPSHOT_HEADER_LEN,
                    DecodeErrorKind::Truncated("snapshot body"),
                ))
            }
        };
        if Some(trailer) != body_len.map(|l| l as u64) {
            return Err(DecodeError::new(
                trailer_at,
                DecodeErrorKind::Invalid("snapshot trailer does not match the body length"),
            ));
        }
        let mut body = Reader {
            buf: &bytes[..trailer_at],
            pos: r.pos,
        };
        let (root, expiry, count) = decode_tree(&mut body, index)?;
        body.finish()?;
        if count != node_count {
            return Err(DecodeError::new(
                SNAPSHOT_MAGIC.len() + 1 + 8,
                DecodeErrorKind::Invalid("snapshot node count does not match the tree"),
            ));
        }
        Ok(Store::from_parts(
            Arc::new(root),
            index,
            node_count,
            expiry,
            stats_from_fields(stats),
        ))
    }
}

/// Writes a snapshot (the input of `Store::restore`) from a tree held elsewhere: an etcd
/// member's v2 store, for `ringd migrate`. Nodes are added in the order the format stores
/// them: depth-first, each dir's children in strictly ascending name order, a dir announcing
/// how many children follow. Nothing is checked here; `Store::restore` checks the result as it
/// checks any snapshot (names, order, indexes against the store index, counts).
pub struct SnapshotBuilder {
    out: Vec<u8>,
    nodes: u64,
}

impl SnapshotBuilder {
    /// A snapshot of a store at `index` with these write stats, whose root has
    /// `root_children` children.
    pub fn new(index: u64, stats: &WriteStats, root_children: usize) -> SnapshotBuilder {
        let mut out = Vec::new();
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.push(SNAPSHOT_FORMAT_VERSION);
        put_u64(&mut out, index);
        put_u64(&mut out, 0); // the node count, known at `finish`
        for v in stats_fields(stats) {
            put_u64(&mut out, v);
        }
        put_varint(&mut out, root_children as u64);
        SnapshotBuilder { out, nodes: 0 }
    }

    /// A dir (its modified index is its created index, as in etcd); its `children` follow.
    pub fn dir(&mut self, name: &str, created: u64, expire: Option<u64>, children: usize) {
        self.node_head(name, true, created, expire);
        put_varint(&mut self.out, children as u64);
    }

    /// A file.
    pub fn file(
        &mut self,
        name: &str,
        created: u64,
        modified: u64,
        expire: Option<u64>,
        value: &str,
    ) {
        self.node_head(name, false, created, expire);
        put_varint(&mut self.out, modified.wrapping_sub(created));
        if let Some(e) = expire {
            put_u64(&mut self.out, e);
        }
        put_str(&mut self.out, value);
    }

    fn node_head(&mut self, name: &str, dir: bool, created: u64, expire: Option<u64>) {
        self.nodes += 1;
        put_str(&mut self.out, name);
        self.out
            .push(bit(dir, S_DIR) | bit(expire.is_some(), S_EXPIRE));
        put_varint(&mut self.out, created);
        if dir {
            if let Some(e) = expire {
                put_u64(&mut self.out, e);
            }
        }
    }

    /// The snapshot bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let count_at = SNAPSHOT_MAGIC.len() + 1 + 8;
        self.out[count_at..count_at + 8].copy_from_slice(&self.nodes.to_le_bytes());
        let body = (self.out.len() - SNAPSHOT_HEADER_LEN) as u64;
        put_u64(&mut self.out, body);
        self.out
    }
}

type Expiry = BTreeSet<(u64, Box<str>)>;

/// Decodes the body's tree depth-first without recursion, building each dir's children map
/// from its (sorted) children as they complete. Returns the root, the expiry index and the
/// number of nodes (root excluded).
fn decode_tree<'a>(r: &mut Reader<'a>, index: u64) -> Result<(Node, Expiry, u64), DecodeError> {
    let mut ttl: Vec<(u64, Box<str>)> = Vec::new();
    let mut path = String::new();
    let mut count = 0u64;
    let mut stack = vec![Frame {
        name: Arc::from(""),
        created: 0,
        modified: 0,
        expire: None,
        remaining: r.count("root child count", MIN_SNAPSHOT_NODE_LEN)?,
        children: Children::new(),
        last: None,
        path_len: 0,
    }];
    loop {
        // Close every finished dir (but never the root) and link it into its parent.
        while stack.len() > 1 && stack.last().is_some_and(|f| f.remaining == 0) {
            let Some(done) = stack.pop() else { break };
            let Some(parent) = stack.last_mut() else {
                break;
            };
            path.truncate(done.path_len);
            // `parent.last` already names this dir (set when it was opened).
            let name = Arc::clone(&done.name);
            parent.children.insert(name, Arc::new(done.into_node()));
        }
        let Some(top) = stack.last_mut() else { break };
        if top.remaining == 0 {
            break; // the root is complete
        }
        top.remaining -= 1;

        let name_at = r.pos;
        let name = r.str("node name")?;
        if !valid_name(name) {
            return Err(DecodeError::new(
                name_at,
                DecodeErrorKind::Invalid("invalid node name"),
            ));
        }
        if top.last.is_some_and(|last| last >= name) {
            return Err(DecodeError::new(
                name_at,
                DecodeErrorKind::Invalid("node names not in strictly ascending order"),
            ));
        }
        let flags = r.flags("node flags", S_DIR | S_EXPIRE)?;
        let idx_at = r.pos;
        let created = r.varint("created index")?;
        let modified = if flags & S_DIR != 0 {
            created
        } else {
            created.wrapping_add(r.varint("modified index delta")?)
        };
        if created > index || modified > index {
            return Err(DecodeError::new(
                idx_at,
                DecodeErrorKind::Invalid("node index beyond the store index"),
            ));
        }
        let expire = if flags & S_EXPIRE != 0 {
            let at = r.pos;
            match NonZeroU64::new(r.u64("expire")?) {
                Some(e) => Some(e),
                None => {
                    return Err(DecodeError::new(
                        at,
                        DecodeErrorKind::Invalid("zero expiration"),
                    ))
                }
            }
        } else {
            None
        };
        count += 1;
        top.last = Some(name);
        // `path` is the parent dir's path ("" for the root); a TTL'd node needs its own.
        let path_len = path.len();
        if let Some(e) = expire {
            ttl.push((e.get(), [path.as_str(), "/", name].concat().into()));
        }
        if flags & S_DIR != 0 {
            path.push('/');
            path.push_str(name);
            let remaining = r.count("child count", MIN_SNAPSHOT_NODE_LEN)?;
            stack.push(Frame {
                name: Arc::from(name),
                created,
                modified,
                expire,
                remaining,
                children: Children::new(),
                last: None,
                path_len,
            });
        } else {
            let value = r.str("value")?;
            let node = Node {
                created,
                modified,
                expire,
                kind: Kind::File(value.into()),
            };
            top.children.insert(Arc::from(name), Arc::new(node));
        }
    }
    let root = match stack.pop() {
        Some(root) => root.into_node(),
        None => Node::new_root(),
    };
    // Sorted bulk build; the paths are unique, so no entry is lost.
    Ok((root, ttl.into_iter().collect(), count))
}

#[cfg(test)]
mod source_tests {
    use super::*;

    #[test]
    fn a_snapshot_source_encodes_the_store_as_it_was() {
        let mut s = Store::new();
        let set = |k: &str| Command::Set {
            key: k.into(),
            dir: false,
            value: "v".into(),
            expire: Some(1_800_000_000_000_000_000),
            refresh: false,
            at: 0,
        };
        s.apply(&set("/a")).unwrap();
        let src = s.snapshot_source();
        let mut before = Vec::new();
        s.snapshot(&mut before);
        s.apply(&set("/b")).unwrap();
        let frozen = std::thread::spawn(move || {
            let mut out = Vec::new();
            src.snapshot(&mut out);
            out
        })
        .join()
        .unwrap();
        assert_eq!(frozen, before);
        let restored = Store::restore(&frozen).unwrap();
        assert_eq!(restored.next_expiration(), Some(1_800_000_000_000_000_000));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    /// A realistic "now" (2023-11) in unix nanoseconds.
    const T0: u64 = 1_700_000_000_000_000_000;
    const SEC: u64 = 1_000_000_000;

    /// xorshift64*, as in the store's randomized test.
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
        fn flip(&mut self) -> bool {
            self.below(2) == 0
        }
    }

    fn enc_cmd(c: &Command) -> Vec<u8> {
        let mut out = Vec::new();
        c.encode(&mut out);
        out
    }

    fn enc_event(e: &Event) -> Vec<u8> {
        let mut out = Vec::new();
        e.encode(&mut out);
        out
    }

    fn snap(s: &Store) -> Vec<u8> {
        let mut out = Vec::new();
        s.snapshot(&mut out);
        out
    }

    /// No strict prefix of `bytes` decodes, nor `bytes` with one more byte.
    fn assert_only_whole_input_decodes<T>(
        bytes: &[u8],
        decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
    ) {
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "{n}-byte prefix decoded");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(decode(&longer).is_err(), "a trailing byte was accepted");
    }

    /// Round trip, canonical re-encoding, every truncation and an extra byte rejected.
    fn check_cmd(c: &Command) {
        let bytes = enc_cmd(c);
        assert_eq!(bytes[0], COMMAND_FORMAT_VERSION);
        assert_eq!(Command::decode(&bytes).as_ref(), Ok(c));
        for n in 0..bytes.len() {
            let e = Command::decode(&bytes[..n]).expect_err("truncated command decoded");
            assert!(e.offset <= n, "{e} for a {n}-byte prefix");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let e = Command::decode(&longer).expect_err("trailing byte accepted");
        assert_eq!(
            e,
            DecodeError::new(bytes.len(), DecodeErrorKind::TrailingBytes(1))
        );
    }

    fn check_event(e: &Event) {
        let bytes = enc_event(e);
        assert_eq!(bytes[0], EVENT_FORMAT_VERSION);
        assert_eq!(Event::decode(&bytes).as_ref(), Ok(e));
        for n in 0..bytes.len() {
            assert!(
                Event::decode(&bytes[..n]).is_err(),
                "{n}-byte prefix of {e:?}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            Event::decode(&longer),
            Err(DecodeError {
                kind: DecodeErrorKind::TrailingBytes(1),
                ..
            })
        ));
    }

    fn all_commands() -> Vec<Command> {
        let strs = ["", "/a", "/ü/日本/🦀", "v\0\n\"x"];
        let expires = [None, Some(0), Some(1), Some(T0), Some(u64::MAX)];
        let indexes = [0, 1, 127, 128, 300, u64::MAX];
        let mut cmds = Vec::new();
        for (i, key) in strs.iter().enumerate() {
            let value = strs[(i + 1) % strs.len()].to_string();
            let key = key.to_string();
            for expire in expires {
                for (a, b) in [(false, false), (true, false), (false, true), (true, true)] {
                    cmds.push(Command::Set {
                        key: key.clone(),
                        dir: a,
                        value: value.clone(),
                        expire,
                        refresh: b,
                        at: 0,
                    });
                    cmds.push(Command::Create {
                        key: key.clone(),
                        dir: a,
                        value: value.clone(),
                        expire,
                        unique: b,
                        at: 0,
                    });
                    cmds.push(Command::Update {
                        key: key.clone(),
                        value: value.clone(),
                        expire,
                        refresh: a,
                        at: 0,
                    });
                    cmds.push(Command::Delete {
                        key: key.clone(),
                        dir: a,
                        recursive: b,
                        at: 0,
                    });
                }
                for prev_index in indexes {
                    for refresh in [false, true] {
                        cmds.push(Command::CompareAndSwap {
                            key: key.clone(),
                            prev_value: key.clone(),
                            prev_index,
                            value: value.clone(),
                            expire,
                            refresh,
                            at: 0,
                        });
                    }
                    cmds.push(Command::CompareAndDelete {
                        key: key.clone(),
                        prev_value: value.clone(),
                        prev_index,
                        at: 0,
                    });
                }
            }
        }
        // Half of the writes stamped, with times of every width.
        let times = [T0, 1, 300, u64::MAX];
        for (i, c) in cmds.iter_mut().enumerate().filter(|(i, _)| i % 2 == 1) {
            *at_mut(c).expect("a write") = times[i / 2 % times.len()];
        }
        for cutoff in [0, 1, T0, u64::MAX] {
            cmds.push(Command::Expire { cutoff });
        }
        cmds
    }

    fn at_mut(c: &mut Command) -> Option<&mut u64> {
        match c {
            Command::Set { at, .. }
            | Command::Create { at, .. }
            | Command::Update { at, .. }
            | Command::CompareAndSwap { at, .. }
            | Command::Delete { at, .. }
            | Command::CompareAndDelete { at, .. } => Some(at),
            Command::Expire { .. } => None,
        }
    }

    /// The version 1 encoding of `c` (unstamped): version 2's without the trailing `at`.
    fn enc_cmd_v1(c: &Command) -> Vec<u8> {
        let mut bytes = enc_cmd(c);
        bytes[0] = COMMAND_FORMAT_VERSION_UNSTAMPED;
        if at_mut(&mut c.clone()).is_some() {
            bytes.truncate(bytes.len() - 8);
        }
        bytes
    }

    /// Logs written before `at` existed still replay: version 1 decodes with `at` = 0, and
    /// re-encodes as version 2.
    #[test]
    fn version_1_commands_still_decode_unstamped() {
        for c in all_commands() {
            let mut unstamped = c.clone();
            if let Some(at) = at_mut(&mut unstamped) {
                *at = 0;
            }
            let v1 = enc_cmd_v1(&c);
            assert_eq!(Command::decode(&v1).as_ref(), Ok(&unstamped), "{v1:?}");
            if !matches!(c, Command::Expire { .. }) {
                assert_eq!(unstamped.time(), None);
            }
            assert_only_whole_input_decodes(&v1, Command::decode);
        }
    }

    #[test]
    fn every_command_round_trips() {
        let cmds = all_commands();
        assert!(cmds.len() > 300);
        for c in &cmds {
            check_cmd(c);
        }
        // Long strings take multi-byte length prefixes.
        check_cmd(&Command::Set {
            key: "/k".repeat(10_000),
            dir: false,
            value: "é".repeat(70_000),
            expire: Some(T0),
            refresh: false,
            at: 0,
        });
    }

    #[test]
    fn command_encoding_is_compact_and_fixed() {
        let c = Command::Set {
            key: "/a".into(),
            dir: false,
            value: "xyz".into(),
            expire: None,
            refresh: false,
            at: 0,
        };
        assert_eq!(enc_cmd(&c), b"\x02\x01\x00\x02/a\x03xyz\0\0\0\0\0\0\0\0");
        // The same in version 1 (before `at`).
        assert_eq!(
            Command::decode(b"\x01\x01\x00\x02/a\x03xyz").as_ref(),
            Ok(&c)
        );
        let c = Command::Expire { cutoff: 0x0102 };
        assert_eq!(enc_cmd(&c), b"\x02\x07\x02\x01\0\0\0\0\0\0");
        let c = Command::CompareAndDelete {
            key: String::new(),
            prev_value: String::new(),
            prev_index: 300,
            at: 0x0304,
        };
        assert_eq!(enc_cmd(&c), b"\x02\x06\x00\x00\xac\x02\x04\x03\0\0\0\0\0\0");
        // encode appends.
        let mut out = vec![9];
        c.encode(&mut out);
        assert_eq!(out[0], 9);
        assert_eq!(Command::decode(&out[1..]), Ok(c));
    }

    #[test]
    fn malformed_commands_are_errors_with_offsets() {
        let err = |b: &[u8]| Command::decode(b).expect_err("malformed");
        assert_eq!(err(b"").to_string(), "truncated format version at byte 0");
        assert_eq!(
            err(b"\x03\x01").to_string(),
            "unsupported format version 3 at byte 0"
        );
        assert_eq!(
            err(b"\x02\x05\x00\x00").to_string(),
            "truncated write time at byte 4"
        );
        assert_eq!(
            err(b"\x01\x09").to_string(),
            "unknown command tag 9 at byte 1"
        );
        assert_eq!(err(b"\x01\x00").kind, DecodeErrorKind::BadTag("command", 0));
        assert_eq!(
            err(b"\x01\x01\x08\x00\x00").to_string(),
            "unknown bits 0x08 in command flags at byte 2"
        );
        // Update has no dir bit, Delete no expire bit.
        assert!(matches!(
            err(b"\x01\x03\x01\x00\x00").kind,
            DecodeErrorKind::BadFlags(..)
        ));
        assert!(matches!(
            err(b"\x01\x05\x04\x00").kind,
            DecodeErrorKind::BadFlags(..)
        ));
        assert_eq!(
            err(b"\x01\x01\x00\x02/\xff\x00").to_string(),
            "invalid utf-8 in key at byte 5"
        );
        // Absurd lengths are rejected before any allocation.
        let mut huge = b"\x01\x01\x00".to_vec();
        put_varint(&mut huge, u64::MAX);
        assert_eq!(
            err(&huge).to_string(),
            "key length 18446744073709551615 exceeds the 0 remaining bytes at byte 3"
        );
        assert_eq!(
            err(b"\x01\x01\x00\x05/a\x00").to_string(),
            "key length 5 exceeds the 3 remaining bytes at byte 3"
        );
        // Varints: overlong, too long, past 64 bits.
        assert_eq!(
            err(b"\x01\x06\x00\x00\x80\x00").to_string(),
            "malformed varint prev_index at byte 4"
        );
        let mut long = b"\x01\x06\x00\x00".to_vec();
        long.extend_from_slice(&[0xff; 10]);
        long.push(0x01);
        assert!(matches!(err(&long).kind, DecodeErrorKind::BadVarint(_)));
        let mut over = b"\x01\x06\x00\x00".to_vec();
        over.extend_from_slice(&[0xff; 9]);
        over.push(0x02);
        assert!(matches!(err(&over).kind, DecodeErrorKind::BadVarint(_)));
        let mut max = b"\x01\x06\x00\x00".to_vec();
        max.extend_from_slice(&[0xff; 9]);
        max.push(0x01);
        assert_eq!(
            Command::decode(&max),
            Ok(Command::CompareAndDelete {
                key: String::new(),
                prev_value: String::new(),
                prev_index: u64::MAX,
                at: 0,
            })
        );
        assert_eq!(
            err(b"\x01\x07\x00\x00").to_string(),
            "truncated expire cutoff at byte 2"
        );
        let e: Box<dyn std::error::Error> = Box::new(err(b""));
        assert!(e.to_string().starts_with("truncated"));
    }

    #[test]
    fn command_byte_flips_never_panic_and_stay_canonical() {
        let mut rng = XorShift(0x1234_5678_9ABC_DEF1);
        let cmds = all_commands();
        for round in 0..20_000 {
            let c = &cmds[rng.below(cmds.len() as u64) as usize];
            let mut bytes = enc_cmd(c);
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] ^= 1 << rng.below(8);
            }
            if round % 7 == 0 {
                let i = rng.below(bytes.len() as u64) as usize;
                bytes.truncate(i);
            }
            if let Ok(d) = Command::decode(&bytes) {
                // Version 1 (flipped into) is canonical as version 1.
                let canonical = match bytes[0] {
                    COMMAND_FORMAT_VERSION_UNSTAMPED => enc_cmd_v1(&d),
                    _ => enc_cmd(&d),
                };
                assert_eq!(canonical, bytes, "decode accepted a non-canonical encoding");
            }
        }
        // Pure noise, too.
        for _ in 0..20_000 {
            let len = rng.below(24) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Some(b) = bytes.first_mut() {
                *b = COMMAND_FORMAT_VERSION;
            }
            if let Ok(d) = Command::decode(&bytes) {
                assert_eq!(enc_cmd(&d), bytes);
            }
        }
    }

    fn ok(s: &mut Store, c: Command) -> Event {
        s.apply(&c).unwrap_or_else(|e| panic!("{c:?}: {e}"))
    }

    fn set(key: &str, value: &str, expire: Option<u64>) -> Command {
        Command::Set {
            key: key.into(),
            dir: false,
            value: value.into(),
            expire,
            refresh: false,
            at: 0,
        }
    }

    fn sample_events() -> Vec<Event> {
        let mut s = Store::new();
        let mut events = vec![
            ok(&mut s, set("/a", "1", None)),
            ok(&mut s, set("/a", "", Some(T0))),
            ok(&mut s, set("/ü/日本", "🦀", Some(T0 + SEC))),
            ok(
                &mut s,
                Command::Set {
                    key: "/a".into(),
                    dir: false,
                    value: String::new(),
                    expire: Some(T0 + 9 * SEC),
                    refresh: true,
                    at: 0,
                },
            ),
            ok(
                &mut s,
                Command::Create {
                    key: "/q".into(),
                    dir: false,
                    value: "job".into(),
                    expire: None,
                    unique: true,
                    at: 0,
                },
            ),
            ok(
                &mut s,
                Command::Create {
                    key: "/d".into(),
                    dir: true,
                    value: String::new(),
                    expire: Some(T0),
                    unique: false,
                    at: 0,
                },
            ),
            ok(
                &mut s,
                Command::Update {
                    key: "/d".into(),
                    value: String::new(),
                    expire: None,
                    refresh: false,
                    at: 0,
                },
            ),
            ok(
                &mut s,
                Command::CompareAndSwap {
                    key: "/a".into(),
                    prev_value: String::new(),
                    prev_index: 4,
                    value: "2".into(),
                    expire: Some(T0 + 2 * SEC),
                    refresh: false,
                    at: 0,
                },
            ),
            ok(
                &mut s,
                Command::CompareAndDelete {
                    key: "/a".into(),
                    prev_value: "2".into(),
                    prev_index: 0,
                    at: 0,
                },
            ),
            ok(&mut s, set("/d/x/y", "deep", None)),
            ok(
                &mut s,
                Command::Delete {
                    key: "/d/x".into(),
                    dir: true,
                    recursive: true,
                    at: 0,
                },
            ),
        ];
        ok(&mut s, set("/t/x", "1", Some(T0 + SEC)));
        events.extend(s.expire(T0 + 5 * SEC));
        // Gets: listings carry nodes; the root has no key.
        ok(&mut s, set("/l/a/b", "1", None));
        ok(&mut s, set("/l/c", "", None));
        ok(&mut s, set("/l/_h", "hidden", None));
        events.push(s.view().get("/", true, true).expect("root"));
        events.push(s.view().get("/l", false, true).expect("listing"));
        events.push(s.view().get("/l/c", false, false).expect("file"));
        events
    }

    #[test]
    fn events_round_trip() {
        let events = sample_events();
        assert!(events.iter().any(|e| e.action == Action::Expire));
        assert!(events.iter().any(|e| e.refresh));
        assert!(events.iter().any(|e| e.node.key.is_none()));
        assert!(events.iter().any(|e| e.node.nodes.is_some()));
        for e in &events {
            check_event(e);
        }
        // Shapes no store produces still round-trip exactly.
        let odd = NodeRepr {
            key: Some(String::new()),
            dir: true,
            value: Some("v".into()),
            expiration: Some(u64::MAX),
            modified_index: u64::MAX,
            created_index: 0,
            nodes: Some(Vec::new()),
        };
        check_event(&Event {
            action: Action::CompareAndDelete,
            node: odd.clone(),
            prev_node: Some(NodeRepr {
                nodes: Some(vec![odd.clone(), odd]),
                ..events[0].node.clone()
            }),
            etcd_index: 0,
            refresh: true,
            time: Some(u64::MAX),
        });
    }

    fn nested(depth: usize) -> NodeRepr {
        let mut n = NodeRepr {
            key: Some("/x".into()),
            dir: false,
            value: Some("v".into()),
            expiration: None,
            modified_index: 1,
            created_index: 1,
            nodes: None,
        };
        for _ in 0..depth {
            n = NodeRepr {
                key: Some("/d".into()),
                dir: true,
                value: None,
                expiration: None,
                modified_index: 1,
                created_index: 1,
                nodes: Some(vec![n]),
            };
        }
        n
    }

    #[test]
    fn event_depth_guard() {
        let mk = |node| Event {
            action: Action::Get,
            node,
            prev_node: None,
            etcd_index: 1,
            refresh: false,
            time: None,
        };
        let ok_event = mk(nested(MAX_NODE_DEPTH));
        assert_eq!(Event::decode(&enc_event(&ok_event)).as_ref(), Ok(&ok_event));
        let bytes = enc_event(&mk(nested(MAX_NODE_DEPTH + 1)));
        let e = Event::decode(&bytes).expect_err("too deep");
        assert_eq!(e.kind, DecodeErrorKind::TooDeep(MAX_NODE_DEPTH));
        assert!(e
            .to_string()
            .starts_with("nodes nested deeper than 512 levels at byte "));
        // An absurd child count is caught before allocating.
        let mut b = vec![EVENT_FORMAT_VERSION, 1, 0, 0, N_NODES, 0, 0];
        put_varint(&mut b, u64::MAX >> 1);
        assert!(matches!(
            Event::decode(&b).expect_err("count").kind,
            DecodeErrorKind::TooLong { .. }
        ));
        assert_eq!(
            Event::decode(&[1, 0]).expect_err("tag").to_string(),
            "unknown action tag 0 at byte 1"
        );
        assert_eq!(
            Event::decode(&[1, 2, 8]).expect_err("flags").to_string(),
            "unknown bits 0x08 in event flags at byte 2"
        );
    }

    #[test]
    fn event_byte_flips_never_panic_and_stay_canonical() {
        let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
        let encoded: Vec<Vec<u8>> = sample_events().iter().map(enc_event).collect();
        for _ in 0..20_000 {
            let mut bytes = encoded[rng.below(encoded.len() as u64) as usize].clone();
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] ^= 1 << rng.below(8);
            }
            if let Ok(d) = Event::decode(&bytes) {
                assert_eq!(enc_event(&d), bytes);
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Snapshots

    /// A random command over a small key space, shaped like the store's randomized test.
    fn random_command(rng: &mut XorShift, index: u64, now: &mut u64) -> Command {
        let names = ["a", "b", "_h", "c", "ü"];
        let values = ["", "1", "2", "日本"];
        let depth = 1 + rng.below(3);
        let key: String = (0..depth)
            .map(|_| format!("/{}", rng.pick(&names)))
            .collect();
        let value = rng.pick(&values).to_string();
        let expire = match rng.below(3) {
            0 => Some(*now + rng.below(5) * SEC),
            _ => None,
        };
        match rng.below(10) {
            0 => Command::Set {
                key,
                dir: rng.flip(),
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
                dir: rng.flip(),
                value,
                expire,
                unique: rng.flip(),
                at: 0,
            },
            3 => Command::Update {
                key,
                value,
                expire,
                refresh: rng.flip(),
                at: 0,
            },
            4 => Command::CompareAndSwap {
                key,
                prev_value: value,
                prev_index: rng.below(3) * rng.below(index + 1),
                value: rng.pick(&values).to_string(),
                expire,
                refresh: rng.flip(),
                at: 0,
            },
            5 => Command::Delete {
                key,
                dir: rng.flip(),
                recursive: rng.flip(),
                at: 0,
            },
            6 => Command::CompareAndDelete {
                key,
                prev_value: value,
                prev_index: rng.below(2) * rng.below(index + 1),
                at: 0,
            },
            7 => {
                *now += rng.below(3) * SEC;
                Command::Expire { cutoff: *now }
            }
            _ => Command::Set {
                key,
                dir: false,
                value,
                expire,
                refresh: false,
                at: 0,
            },
        }
    }

    fn random_store(seed: u64, steps: usize) -> (Store, XorShift, u64) {
        let mut rng = XorShift(seed);
        let mut s = Store::new();
        let mut now = T0;
        for _ in 0..steps {
            let c = random_command(&mut rng, s.index().0, &mut now);
            let _ = s.apply(&c);
        }
        (s, rng, now)
    }

    /// Everything the public API shows, hidden keys included (they are reachable directly).
    fn assert_same(a: &Store, b: &Store) {
        assert_eq!(a.index(), b.index());
        assert_eq!(a.node_count(), b.node_count());
        assert_eq!(a.ttl_node_count(), b.ttl_node_count());
        assert_eq!(a.next_expiration(), b.next_expiration());
        assert_eq!(a.write_stats(), b.write_stats());
        let (va, vb) = (a.view(), b.view());
        assert_eq!(va.index(), vb.index());
        assert_eq!(va.node_count(), vb.node_count());
        assert_eq!(va.get("/", true, true), vb.get("/", true, true));
        for k in ["/_h", "/a/_h", "/_h/a", "/_h/_h/_h", "/a/b/c", "/nope"] {
            assert_eq!(va.get(k, true, false), vb.get(k, true, false), "{k}");
        }
        b.check_invariants();
        assert_eq!(snap(a), snap(b));
    }

    #[test]
    fn empty_store_snapshot_round_trips() {
        let s = Store::new();
        let bytes = snap(&s);
        assert_eq!(bytes.len(), SNAPSHOT_HEADER_LEN + 1 + SNAPSHOT_TRAILER_LEN);
        assert_eq!(&bytes[..4], b"rgds");
        let r = Store::restore(&bytes).expect("restore");
        assert_same(&s, &r);
        assert_eq!(
            r.view().get("/", false, false),
            s.view().get("/", false, false)
        );
    }

    #[test]
    fn randomized_snapshot_round_trip_and_replay() {
        for seed in [0x9E37_79B9_7F4A_7C15, 7, 0xFEED_FACE] {
            let (mut a, mut rng, mut now) = random_store(seed, 5_000);
            for i in 0..5 {
                let _ = a.apply(&set(&format!("/c/t{i}"), "ttl", Some(now + i * SEC)));
            }
            assert!(a.node_count() > 10 && a.ttl_node_count() > 0, "{a:?}");
            let bytes = snap(&a);
            let mut b = Store::restore(&bytes).expect("restore");
            assert_same(&a, &b);
            // The streaming writer produces the same bytes, in several chunks when large.
            let mut streamed = Vec::new();
            let n = a.write_snapshot(&mut streamed).expect("write");
            assert_eq!((n as usize, &streamed), (bytes.len(), &bytes));
            // snapshot appends to what is already in `out`.
            let mut appended = b"prefix".to_vec();
            a.snapshot(&mut appended);
            assert_eq!(&appended[6..], &bytes[..]);
            // Both stores react identically to what comes next, expiries included.
            for _ in 0..1_000 {
                let c = random_command(&mut rng, a.index().0, &mut now);
                let (ra, rb): (Result<Event, Error>, Result<Event, Error>) =
                    (a.apply(&c), b.apply(&c));
                assert_eq!(ra, rb, "{c:?}");
            }
            assert_eq!(a.expire(u64::MAX), b.expire(u64::MAX));
            assert_same(&a, &b);
        }
    }

    #[test]
    fn deep_and_wide_trees_round_trip() {
        // Very deep: the codec never recurses (a recursive listing would, so compare bytes).
        let mut s = Store::new();
        ok(&mut s, set(&"/d".repeat(2_000), "bottom", Some(T0)));
        let bytes = snap(&s);
        let r = Store::restore(&bytes).expect("restore");
        r.check_invariants();
        assert_eq!((r.node_count(), r.next_expiration()), (2_000, Some(T0)));
        assert_eq!(snap(&r), bytes);

        let mut s = Store::new();
        let deep = "/d".repeat(200);
        ok(&mut s, set(&format!("{deep}/leaf"), "bottom", Some(T0)));
        ok(&mut s, set(&format!("{deep}/x"), "", None));
        for i in 0..3_000 {
            ok(&mut s, set(&format!("/w/{i:05}"), &i.to_string(), None));
        }
        // A TTL'd dir with TTL'd children, and an update that moves modified past created.
        ok(
            &mut s,
            Command::Set {
                key: "/td".into(),
                dir: true,
                value: String::new(),
                expire: Some(T0 + SEC),
                refresh: false,
                at: 0,
            },
        );
        ok(&mut s, set("/td/c", "1", Some(T0 + SEC)));
        ok(&mut s, set("/td/e", "1", Some(T0 + 2 * SEC)));
        ok(
            &mut s,
            Command::Update {
                key: "/w/00007".into(),
                value: "new".into(),
                expire: None,
                refresh: false,
                at: 0,
            },
        );
        let mut r = Store::restore(&snap(&s)).expect("restore");
        assert_same(&s, &r);
        assert_eq!(r.node_count(), 200 + 2 + 1 + 3_000 + 3);
        let expired = s.expire(T0 + SEC);
        assert_eq!(expired.len(), 2, "{expired:?}");
        assert_eq!(r.expire(T0 + SEC), expired);
        assert_same(&s, &r);
    }

    /// Every prefix is an error; random flips never panic, and whatever restores re-encodes
    /// to the very same bytes (the format is canonical).
    #[test]
    fn malformed_snapshots_are_errors() {
        let (s, mut rng, _) = random_store(0xABCD_EF01, 600);
        let bytes = snap(&s);
        assert!(bytes.len() > SNAPSHOT_HEADER_LEN + 100, "{}", bytes.len());
        assert_only_whole_input_decodes(&bytes, Store::restore);
        let mut flips_ok = 0;
        for _ in 0..3_000 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.below(2) {
                let i = rng.below(b.len() as u64) as usize;
                b[i] ^= 1 << rng.below(8);
            }
            if let Ok(r) = Store::restore(&b) {
                flips_ok += 1;
                r.check_invariants();
                assert_eq!(snap(&r), b, "restore accepted a non-canonical snapshot");
            }
        }
        // Flips in the stats and in expirations are undetectable by design (no checksum).
        assert!(flips_ok > 0);

        let err = |b: &[u8]| Store::restore(b).expect_err("malformed").to_string();
        assert_eq!(err(b"rg"), "truncated snapshot magic at byte 0");
        assert_eq!(
            err(b"RGDS\x01"),
            "not a ringd store snapshot (bad magic) at byte 0"
        );
        let mut v2 = bytes.clone();
        v2[4] = 2;
        assert_eq!(err(&v2), "unsupported format version 2 at byte 4");
        let mut count = bytes.clone();
        count[13] ^= 1;
        assert_eq!(
            err(&count),
            "snapshot node count does not match the tree at byte 13"
        );
        let mut trailer = bytes.clone();
        let last = trailer.len() - 1;
        trailer[last] ^= 1;
        assert_eq!(
            err(&trailer),
            format!(
                "snapshot trailer does not match the body length at byte {}",
                bytes.len() - 8
            )
        );
    }

    /// Hand-built bodies that are well framed but describe an impossible tree.
    #[test]
    fn invalid_trees_are_rejected() {
        let build = |index: u64, count: u64, body: &[u8]| {
            let mut b = SNAPSHOT_MAGIC.to_vec();
            b.push(SNAPSHOT_FORMAT_VERSION);
            put_u64(&mut b, index);
            put_u64(&mut b, count);
            b.extend_from_slice(&[0; 13 * 8]);
            b.extend_from_slice(body);
            put_u64(&mut b, body.len() as u64);
            Store::restore(&b).map(|s| s.node_count())
        };
        let kind = |r: Result<u64, DecodeError>| r.expect_err("invalid").kind;
        // Two files "a" = "x" (created 1, 2).
        let good = b"\x02\x01a\x00\x01\x00\x01x\x01b\x00\x02\x00\x00";
        // A file's modified index is a delta from its created index.
        assert_eq!(build(9, 1, b"\x01\x01a\x00\x02\x07\x00"), Ok(1));
        assert!(build(8, 1, b"\x01\x01a\x00\x02\x07\x00").is_err());
        assert_eq!(build(2, 2, good), Ok(2));
        assert_eq!(
            kind(build(2, 3, good)),
            DecodeErrorKind::Invalid("snapshot node count does not match the tree")
        );
        assert_eq!(
            kind(build(1, 2, good)),
            DecodeErrorKind::Invalid("node index beyond the store index")
        );
        let unsorted = b"\x02\x01b\x00\x01\x00\x01x\x01a\x00\x02\x00\x00";
        assert_eq!(
            kind(build(2, 2, unsorted)),
            DecodeErrorKind::Invalid("node names not in strictly ascending order")
        );
        let dup = b"\x02\x01a\x00\x01\x00\x01x\x01a\x00\x02\x00\x00";
        assert!(build(2, 2, dup).is_err());
        for name in [&b""[..], b".", b"..", b"a/b"] {
            let mut body = vec![1, name.len() as u8];
            body.extend_from_slice(name);
            body.extend_from_slice(b"\x00\x01\x00\x00\x00");
            assert_eq!(
                kind(build(2, 1, &body)),
                DecodeErrorKind::Invalid("invalid node name"),
                "{name:?}"
            );
        }
        // A zero expiration, unknown flags, a dir claiming more children than bytes.
        let zero = b"\x01\x01a\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
        assert_eq!(
            kind(build(2, 1, zero)),
            DecodeErrorKind::Invalid("zero expiration")
        );
        assert!(matches!(
            kind(build(2, 1, b"\x01\x01a\x04\x01\x00\x00")),
            DecodeErrorKind::BadFlags(..)
        ));
        assert!(matches!(
            kind(build(2, 1, b"\x01\x01a\x01\x01\x7f")),
            DecodeErrorKind::TooLong { .. }
        ));
        assert!(matches!(
            kind(build(2, 1, b"\x7f")),
            DecodeErrorKind::TooLong { .. }
        ));
        // An empty dir and a dir with one child: nesting closes correctly.
        assert_eq!(
            build(
                3,
                3,
                b"\x02\x01a\x01\x01\x00\x01b\x01\x02\x01\x01c\x00\x03\x00\x00"
            ),
            Ok(3)
        );
    }

    /// The restart budget figure: run with `cargo test -p ringd-store --release --
    /// --nocapture snapshot_timing`. 1M keys in release, fewer in debug.
    #[test]
    fn snapshot_timing() {
        let n: u64 = if cfg!(debug_assertions) {
            20_000
        } else {
            1_000_000
        };
        let mut s = Store::new();
        let mut raw = 0usize;
        let t = std::time::Instant::now();
        for i in 0..n {
            let key = format!("/k/{i:07}");
            let value = format!("value-{i}");
            raw += key.len() + value.len();
            ok(&mut s, set(&key, &value, None));
        }
        let build = t.elapsed();
        let t = std::time::Instant::now();
        let mut bytes = Vec::new();
        s.snapshot(&mut bytes);
        let encode = t.elapsed();
        let t = std::time::Instant::now();
        let r = Store::restore(&bytes).expect("restore");
        let decode = t.elapsed();
        let t = std::time::Instant::now();
        drop(r);
        let free = t.elapsed();
        // The streaming writer, over several chunks, writes the same bytes.
        assert!(bytes.len() > WRITE_CHUNK);
        let mut streamed = Vec::new();
        assert_eq!(
            s.write_snapshot(&mut streamed).ok(),
            Some(bytes.len() as u64)
        );
        assert!(streamed == bytes);
        let r = Store::restore(&bytes).expect("restore");
        assert_eq!(r.node_count(), n + 1);
        assert_eq!(
            r.view().get("/k/0000042", false, false),
            s.view().get("/k/0000042", false, false)
        );
        println!(
            "snapshot of {n} keys: build {build:?}, snapshot {encode:?}, restore {decode:?} \
             (drop {free:?}), size {} bytes ({:.1} per key; raw key+value {raw} bytes, {:.2}x)",
            bytes.len(),
            bytes.len() as f64 / n as f64,
            bytes.len() as f64 / raw as f64
        );
    }
}
