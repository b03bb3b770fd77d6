//! Segment header and record framing (docs/wal-format.md): pure functions over byte slices,
//! shared by every read path (the map, the write buffer, the simulated disk).

use super::HardState;

pub(crate) const MAGIC: [u8; 8] = *b"RINGDWAL";
/// The format version this code writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Segment header length; records start here.
pub const HEADER_LEN: usize = 64;
/// Record framing before the payload: len, crc, type, kind, 6 zero bytes, index, term.
pub const RECORD_HEADER_LEN: usize = 32;
/// Smallest body (`len`): type .. term.
const BODY_MIN: usize = RECORD_HEADER_LEN - 8;
/// Largest payload accepted in one record.
pub const MAX_PAYLOAD: usize = 256 << 20;
pub(crate) const ALIGN: usize = 8;
pub(crate) const SECTOR: usize = 512;

pub(crate) const TYPE_ENTRY: u8 = 1;
pub(crate) const TYPE_HARD_STATE: u8 = 2;
pub(crate) const TYPE_RESTART: u8 = 3;
const HARD_STATE_PAYLOAD: usize = 24;

const _: () = assert!(HEADER_LEN.is_multiple_of(ALIGN) && RECORD_HEADER_LEN.is_multiple_of(ALIGN));
const _: () = assert!(SECTOR.is_multiple_of(ALIGN));
const _: () = assert!(MAX_PAYLOAD + BODY_MIN < u32::MAX as usize);

pub(crate) fn align_up(n: usize) -> usize {
    (n + ALIGN - 1) & !(ALIGN - 1)
}

/// Bytes a record with `payload_len` bytes of payload takes on disk, padding included.
pub(crate) fn record_len(payload_len: usize) -> usize {
    align_up(RECORD_HEADER_LEN + payload_len)
}

/// Bytes of a hard state record.
pub(crate) const HARD_STATE_RECORD_LEN: usize = RECORD_HEADER_LEN + HARD_STATE_PAYLOAD;

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

// ---- segment header ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub seq: u64,
    pub first_index: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Shorter than a header, or the header is all zero: never written.
    Missing,
    Newer(u32),
    Bad(String),
}

pub(crate) fn encode_header(out: &mut Vec<u8>, h: SegmentHeader) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    out.extend_from_slice(&h.seq.to_le_bytes());
    out.extend_from_slice(&h.first_index.to_le_bytes());
    let crc = crc32c::crc32c(&out[start..start + 32]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.resize(start + HEADER_LEN, 0);
    assert_eq!(
        decode_header(&out[start..]),
        Ok(h),
        "segment header does not read back"
    );
}

pub(crate) fn decode_header(b: &[u8]) -> Result<SegmentHeader, HeaderError> {
    if b.len() < HEADER_LEN || b[..HEADER_LEN].iter().all(|&x| x == 0) {
        return Err(HeaderError::Missing);
    }
    if b[..8] != MAGIC {
        return Err(HeaderError::Bad(
            "not a ringd log segment (bad magic)".into(),
        ));
    }
    let version = u32_at(b, 8);
    if version > FORMAT_VERSION {
        return Err(HeaderError::Newer(version));
    }
    if version == 0 {
        return Err(HeaderError::Bad("format version 0".into()));
    }
    if crc32c::crc32c(&b[..32]) != u32_at(b, 32) {
        return Err(HeaderError::Bad("segment header crc mismatch".into()));
    }
    if u32_at(b, 12) as usize != HEADER_LEN {
        return Err(HeaderError::Bad(format!("header length {}", u32_at(b, 12))));
    }
    if b[36..HEADER_LEN].iter().any(|&x| x != 0) {
        return Err(HeaderError::Bad("nonzero reserved header bytes".into()));
    }
    Ok(SegmentHeader {
        seq: u64_at(b, 16),
        first_index: u64_at(b, 24),
    })
}

// ---- records ----

/// One decoded record, borrowing its payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub rtype: u8,
    pub kind: u8,
    pub index: u64,
    pub term: u64,
    pub payload: &'a [u8],
    /// Offset of the next record slot.
    pub next: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed<'a> {
    /// An all-zero slot (or the end of the file): the end of the data.
    End,
    Record(Record<'a>),
}

/// Appends one record to `out`; returns its on-disk length. The caller checked the payload size.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    rtype: u8,
    kind: u8,
    index: u64,
    term: u64,
    payload: &[u8],
) -> usize {
    assert!(
        payload.len() <= MAX_PAYLOAD,
        "payload of {} bytes",
        payload.len()
    );
    let start = out.len();
    let len = (BODY_MIN + payload.len()) as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(rtype);
    out.push(kind);
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    out.extend_from_slice(payload);
    let body_end = out.len();
    out.resize(start + align_up(body_end - start), 0);
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&len.to_le_bytes()),
        &out[start + 8..body_end],
    );
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    // The first of the pair of crc checks: the record reads back before it leaves memory.
    assert!(
        matches!(parse(&out[start..], 0), Ok(Parsed::Record(ref r)) if r.index == index && r.payload.len() == payload.len()),
        "encoded record does not read back"
    );
    out.len() - start
}

pub(crate) fn encode_hard_state(out: &mut Vec<u8>, hs: HardState, last_index: u64) -> usize {
    let mut p = [0u8; HARD_STATE_PAYLOAD];
    p[..8].copy_from_slice(&hs.term.to_le_bytes());
    p[8..16].copy_from_slice(&hs.vote.to_le_bytes());
    p[16..].copy_from_slice(&hs.commit.to_le_bytes());
    encode(out, TYPE_HARD_STATE, 0, last_index, hs.term, &p)
}

pub(crate) fn decode_hard_state(payload: &[u8]) -> HardState {
    // parse() checked the length.
    HardState {
        term: u64_at(payload, 0),
        vote: u64_at(payload, 8),
        commit: u64_at(payload, 16),
    }
}

/// Parses the record slot at `at` (8-aligned) of `b`. `Err` is a reason: the slot holds
/// something that is not a valid record.
pub(crate) fn parse(b: &[u8], at: usize) -> Result<Parsed<'_>, String> {
    if at >= b.len() {
        return Ok(Parsed::End);
    }
    if b.len() - at < 8 {
        return if b[at..].iter().all(|&x| x == 0) {
            Ok(Parsed::End)
        } else {
            Err("partial record header at the end of the file".into())
        };
    }
    let len = u32_at(b, at) as usize;
    let crc = u32_at(b, at + 4);
    if len == 0 && crc == 0 {
        return Ok(Parsed::End);
    }
    if len < BODY_MIN {
        return Err(format!("record length {len} below the minimum {BODY_MIN}"));
    }
    if len > BODY_MIN + MAX_PAYLOAD || len > b.len() - at - 8 {
        return Err(format!("record length {len} runs past the end of the file"));
    }
    let body = &b[at + 8..at + 8 + len];
    let actual = crc32c::crc32c_append(crc32c::crc32c(&(len as u32).to_le_bytes()), body);
    if actual != crc {
        return Err(format!(
            "crc mismatch (stored {crc:08x}, computed {actual:08x})"
        ));
    }
    if body[2..8].iter().any(|&x| x != 0) {
        return Err("nonzero reserved record bytes".into());
    }
    let (rtype, kind) = (body[0], body[1]);
    let payload = &body[BODY_MIN..];
    match rtype {
        TYPE_ENTRY => {}
        TYPE_HARD_STATE if payload.len() == HARD_STATE_PAYLOAD => {}
        TYPE_RESTART if payload.is_empty() => {}
        TYPE_HARD_STATE | TYPE_RESTART => {
            return Err(format!(
                "record type {rtype} with a {}-byte payload",
                payload.len()
            ))
        }
        _ => return Err(format!("unknown record type {rtype}")),
    }
    Ok(Parsed::Record(Record {
        rtype,
        kind,
        index: u64_at(body, 8),
        term: u64_at(body, 16),
        payload,
        next: (at + align_up(8 + len)).min(b.len()),
    }))
}

/// The first offset after `at` (8-aligned) where a valid record starts, if any.
pub(crate) fn find_valid_after(b: &[u8], at: usize) -> Option<usize> {
    let mut y = at + ALIGN;
    while y + RECORD_HEADER_LEN <= b.len() {
        let len = u32_at(b, y) as usize;
        // Cheap filters before the crc: plausible length, known type, zero reserved bytes.
        if len >= BODY_MIN
            && len <= b.len() - y - 8
            && (TYPE_ENTRY..=TYPE_RESTART).contains(&b[y + 8])
            && b[y + 10..y + 16].iter().all(|&x| x == 0)
            && matches!(parse(b, y), Ok(Parsed::Record(_)))
        {
            return Some(y);
        }
        y += ALIGN;
    }
    None
}

/// Whether the bad slot at `at` covers a sector-aligned piece that is entirely zero: a sector
/// that never reached the disk. The slot's extent is its claimed length when that fits the
/// file, else its 8-byte len+crc word; an extent reaching past `limit` (the next valid record)
/// is a damaged length, never a torn write.
pub(crate) fn has_unwritten_sector(b: &[u8], at: usize, limit: usize) -> bool {
    let len = if b.len() - at >= 8 {
        u32_at(b, at) as usize
    } else {
        0
    };
    let end = if len >= BODY_MIN && len <= b.len() - at - 8 {
        (at + align_up(8 + len)).min(b.len())
    } else {
        (at + 8).min(b.len())
    };
    if end > limit {
        return false;
    }
    let mut s = at;
    while s < end {
        let sector_end = ((s / SECTOR) + 1) * SECTOR;
        let e = sector_end.min(end);
        if b[s..e].iter().all(|&x| x == 0) {
            return true;
        }
        s = e;
    }
    false
}

/// Offset just past the last nonzero byte at or after `from`, if any.
pub(crate) fn last_nonzero_end(b: &[u8], from: usize) -> Option<usize> {
    if from >= b.len() {
        return None;
    }
    b[from..]
        .iter()
        .rposition(|&x| x != 0)
        .map(|p| from + p + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        for n in [0usize, 1, 7, 8, 9, 63, 64, 1000] {
            let payload: Vec<u8> = (0..n).map(|i| (i * 7 + 1) as u8).collect();
            let mut out = vec![0xAA; 8];
            let len = encode(&mut out, TYPE_ENTRY, 3, 42, 7, &payload);
            assert_eq!(len, record_len(n));
            assert_eq!(out.len(), 8 + len);
            match parse(&out, 8) {
                Ok(Parsed::Record(r)) => {
                    assert_eq!((r.rtype, r.kind, r.index, r.term), (TYPE_ENTRY, 3, 42, 7));
                    assert_eq!(r.payload, &payload[..]);
                    assert_eq!(r.next, out.len());
                }
                other => panic!("{other:?}"),
            }
            // Every single-byte corruption is detected.
            for i in 8..8 + RECORD_HEADER_LEN + n {
                let mut bad = out.clone();
                bad[i] ^= 0x10;
                assert!(parse(&bad, 8).is_err(), "flip at {i} undetected (n={n})");
            }
        }
    }

    #[test]
    fn hard_state_round_trip() {
        let hs = HardState {
            term: 5,
            vote: 2,
            commit: 99,
        };
        let mut out = Vec::new();
        assert_eq!(encode_hard_state(&mut out, hs, 100), HARD_STATE_RECORD_LEN);
        match parse(&out, 0) {
            Ok(Parsed::Record(r)) => {
                assert_eq!(r.rtype, TYPE_HARD_STATE);
                assert_eq!(decode_hard_state(r.payload), hs);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn header_round_trip_and_checks() {
        let h = SegmentHeader {
            seq: 3,
            first_index: 77,
        };
        let mut out = Vec::new();
        encode_header(&mut out, h);
        assert_eq!(out.len(), HEADER_LEN);
        assert_eq!(decode_header(&out), Ok(h));
        assert_eq!(decode_header(&[0; HEADER_LEN]), Err(HeaderError::Missing));
        assert_eq!(decode_header(&out[..10]), Err(HeaderError::Missing));
        let mut newer = out.clone();
        newer[8] = 2;
        assert_eq!(decode_header(&newer), Err(HeaderError::Newer(2)));
        let mut bad = out.clone();
        bad[20] ^= 1;
        assert!(matches!(decode_header(&bad), Err(HeaderError::Bad(_))));
    }

    #[test]
    fn end_and_garbage() {
        assert_eq!(parse(&[0; 64], 0), Ok(Parsed::End));
        assert_eq!(parse(&[0; 4], 0), Ok(Parsed::End));
        assert!(parse(&[1, 0, 0, 0], 0).is_err());
        assert!(parse(&[0xff; 64], 0).is_err());
        let mut b = vec![0u8; 64];
        b[0] = 30; // len 30, crc 0: not a record, not the end
        assert!(parse(&b, 0).is_err());
    }

    #[test]
    fn scan_helpers() {
        let mut b = vec![0u8; 2048];
        let mut rec = Vec::new();
        encode(&mut rec, TYPE_ENTRY, 0, 1, 1, &[9; 40]);
        b[1024..1024 + rec.len()].copy_from_slice(&rec);
        assert_eq!(find_valid_after(&b, 0), Some(1024));
        assert_eq!(find_valid_after(&b, 1024), None);
        assert_eq!(last_nonzero_end(&b, 0), Some(1024 + RECORD_HEADER_LEN + 40));
        assert_eq!(last_nonzero_end(&b, 1100), None);
        // A slot straddling a sector whose second half is zero.
        let mut t = vec![0u8; 1024];
        let mut rec = Vec::new();
        encode(&mut rec, TYPE_ENTRY, 0, 1, 1, &[9; 100]);
        t[448..512].copy_from_slice(&rec[..64]);
        assert!(has_unwritten_sector(&t, 448, 1024));
        assert!(!has_unwritten_sector(&t, 448, 520));
        t[512..448 + rec.len()].copy_from_slice(&rec[64..]);
        assert!(!has_unwritten_sector(&t, 448, 1024));
    }
}
