//! The write-ahead log: preallocated, memory-mapped segments of CRC32C-framed records, one
//! fdatasync per batch. See docs/wal-format.md.
