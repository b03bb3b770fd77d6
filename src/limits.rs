//! Every bound in one place. Each constant says what it costs; relations between them are
//! checked at compile time.

/// Events kept for `waitIndex` lookups by default (etcd's history size; `--watch-history`
/// changes it). Older indexes get 401. Also the number of newest events the history holds as
/// the writes made them (`Arc<Event>`s, read without decoding): with the default the history
/// is exactly etcd's 1000-event ring, whatever the events' sizes, as before
/// `--watch-history` existed.
pub const EVENT_HISTORY_CAPACITY: usize = 1000;

/// Largest `--watch-history`. Its encoded history may take up to
/// `WATCH_HISTORY_MAX * WATCH_HISTORY_BYTES_PER_EVENT` (2.56 GB) of memory.
pub const WATCH_HISTORY_MAX: u64 = 10_000_000;

/// The byte budget of the history beyond the newest `EVENT_HISTORY_CAPACITY` events, per
/// event of `--watch-history`: the older events are kept encoded (ringd-store's event codec,
/// ~70 B for a 10-byte value with its previous value) in at most N x this many bytes. Events
/// that are larger on average shorten the window (older indexes then get 401) instead of
/// growing the memory.
pub const WATCH_HISTORY_BYTES_PER_EVENT: u64 = 256;

/// Events per block of the encoded history: a block is sealed (immutable, shared with
/// readers and snapshots) when its last event arrives, and dropped whole. Smaller blocks
/// free memory in finer steps; larger ones cost fewer allocations and pointers.
pub const WATCH_HISTORY_BLOCK_EVENTS: u64 = 512;

/// Events a `waitIndex` scan examines before it lets the shard's other connections run (a
/// watch far behind on an unrelated prefix scans up to `--watch-history` events). Measured
/// (benches/event_ring.rs): ~45 ns an archived event, ~15 ns a recent one, so at most
/// ~0.2 ms between yields, and ~45 ms of shard time for a million events.
pub const WATCH_SCAN_CHUNK_EVENTS: usize = 4096;

/// The pause between two steps of a `waitIndex` scan: the timer's resolution (1 ms), so a
/// scan uses at most a fifth of its shard (a million events behind: ~0.25 s to the answer).
pub const WATCH_SCAN_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

// Events not yet in a sealed block must all be among the newest ones held as written.
const _: () = assert!(WATCH_HISTORY_BLOCK_EVENTS as usize <= EVENT_HISTORY_CAPACITY);
// Offsets inside a block are u32: a block never outgrows the budget.
const _: () = assert!(WATCH_HISTORY_MAX * WATCH_HISTORY_BYTES_PER_EVENT < u32::MAX as u64);
const _: () = assert!((EVENT_HISTORY_CAPACITY as u64) <= WATCH_HISTORY_MAX);

/// Largest request body accepted by default (etcd's `--max-request-bytes`, 1.5 MiB).
pub const REQUEST_BODY_BYTES_DEFAULT: usize = 1536 * 1024;

/// Largest request line plus headers. Go's net/http allows 1 MiB of headers; 64 KiB is far
/// above what any v2 client sends and caps the per-connection buffer.
pub const REQUEST_HEADER_BYTES_MAX: usize = 64 * 1024;

/// Headers parsed per request (httparse needs a fixed array).
pub const REQUEST_HEADERS_COUNT_MAX: usize = 64;

/// Write proposals queued from all shards to the raft shard. A full mailbox makes the shard
/// wait (backpressure on that connection), never grow.
pub const MAILBOX_CAPACITY: usize = 8192;

/// Proposals drained into one batch (one apply pass, one view publish, one wake per shard).
pub const PROPOSAL_BATCH_MAX: usize = 1024;

/// Batches of events queued from the raft shard to one shard's watcher registry.
pub const SHARD_EVENT_QUEUE_CAPACITY: usize = 4096;

/// Events buffered for one stream watcher; a watcher that falls this far behind is closed
/// (etcd closes a watcher whose 100-slot channel is full).
pub const STREAM_WATCHER_BUFFER: usize = 128;

/// Watchers registered on one shard. Beyond it a watch request gets 503.
pub const WATCHERS_PER_SHARD_MAX: usize = 500_000;

/// Open client connections per shard; further accepts are closed at once.
pub const CONNECTIONS_PER_SHARD_MAX: usize = 200_000;

/// Pipelined requests buffered per connection before we stop reading and answer.
pub const PIPELINED_REQUESTS_MAX: usize = 128;

/// Key path depth; deeper paths get 400 (etcd has no limit, but recursion and rendering do).
pub const KEY_DEPTH_MAX: usize = 256;

/// Response bytes buffered per connection before it is flushed.
pub const RESPONSE_BUFFER_FLUSH_BYTES: usize = 256 * 1024;

/// The SYNC period: how often the leader checks for expired keys when any TTL exists
/// (etcd: 500 ms).
pub const EXPIRY_TICK_MS: u64 = 500;

/// Granularity and size of the TTL timer wheel.
pub const TTL_WHEEL_SLOT_MS: u64 = 100;
pub const TTL_WHEEL_SLOTS: usize = 1024;

const _: () = assert!(PROPOSAL_BATCH_MAX <= MAILBOX_CAPACITY);
const _: () = assert!(REQUEST_HEADER_BYTES_MAX < REQUEST_BODY_BYTES_DEFAULT);
const _: () = assert!(TTL_WHEEL_SLOTS.is_power_of_two());

/// Applied entries raft-rs keeps in memory (its `MemStorage`) behind the applied index. Older
/// ones are on disk (log and snapshots); holding a whole `--snapshot-count` of them cost tens
/// of MB and a growing Vec's reallocations on the raft shard. A follower that falls further
/// behind than this is sent a snapshot (issue "cluster"), as raft does for compacted logs.
pub const RAFT_MEM_LOG_KEEP: u64 = 4096;

/// Start-up's replay applies the log after the snapshot in Ready rounds of at most this many
/// bytes of entries (raft-rs's `max_committed_size_per_ready`, lifted once the replay is
/// done), trimming raft's in-memory log as it goes: one round of ~100k entries (a snapshot
/// count's worth) held every entry three times over and all of their events at once, and
/// was the peak of a restart with a million keys.
pub const REPLAY_READY_BYTES_MAX: u64 = 1 << 20;

/// Raft messages queued from the raft shard to the peer thread. The raft shard never waits
/// for room: a message that finds the queue full is dropped and its peer reported
/// unreachable (raft retransmits).
pub const PEER_OUTBOX_CAPACITY: usize = 16384;

/// Entries queued for one peer's connection: a raft message, or the frames of one Ready
/// round's messages to that peer. A peer that is slow or unreachable loses what does not fit (raft-rs then
/// probes it instead of streaming).
pub const PEER_QUEUE_MESSAGES_MAX: usize = 4096;

/// Raft messages from peers queued for the raft shard. A full inbox stops the peers' readers
/// (TCP backpressure); nothing accepted is dropped.
pub const PEER_INBOX_CAPACITY: usize = 8192;

/// Largest raft message accepted on the peer wire. A snapshot travels as one message today,
/// so this bounds the largest store a new or lagging member can be sent (docs/peer-wire.md).
pub const PEER_MESSAGE_BYTES_MAX: usize = 512 << 20;

/// Client requests waiting for their entry or quorum read on the raft shard. Beyond it a new
/// request is refused at once with etcd's timeout error instead of queueing without bound.
pub const PENDING_REQUESTS_MAX: usize = 200_000;

const _: () = assert!(PROPOSAL_BATCH_MAX <= PEER_QUEUE_MESSAGES_MAX);

/// Request ids of forwarded proposals a leader remembers, to drop a proposal that arrives
/// twice (about 1.5 MB at the maximum).
pub const RECENT_PROPOSALS_MAX: usize = 65536;

/// Verified credentials a client shard remembers (keyed hashes of user and password, never
/// the password): a hit skips bcrypt (~50 ms at etcd's cost 10). Each entry is ~40 bytes;
/// the cache is emptied when full and whenever a password changes or a user is deleted.
pub const AUTH_CACHE_ENTRIES_MAX: usize = 1024;

/// bcrypt's cost for new passwords: etcd's (Go's `bcrypt.DefaultCost`).
pub const BCRYPT_COST: u32 = 10;

/// bcrypt runs a client shard may have on threads of their own at once (each ~50 ms of CPU);
/// beyond that the shard runs it inline, so a flood of wrong passwords slows that shard, and
/// never spawns threads without bound.
pub const BCRYPT_THREADS_PER_SHARD_MAX: usize = 4;

/// Snapshot saves (`GET /ringd/snapshot`, `ringd snapshot save`) a member serves at once,
/// from the read barrier to the last byte sent. Each holds one encoded snapshot in memory
/// (about the size of a snapshot file; twice that while it is encoded) and, while encoding,
/// a thread at nice +10; a save beyond the bound is refused at once with 503.
pub const SNAPSHOT_SAVES_MAX: usize = 2;
