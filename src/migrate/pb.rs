//! The protobuf messages of etcd's data dir that raft-rs's `eraftpb` does not have, decoded
//! by hand from the wire format (docs/etcd-data-dir.md has the field table): the snap file
//! envelope, WAL records, the v2 `Request` and enough of `InternalRaftRequest` to tell them
//! apart. As gogo's generated `Unmarshal` does: unknown fields are skipped, a known field
//! with the wrong wire type is an error, and so are groups and truncated input. Errors carry
//! the byte offset within the message.

use std::fmt;

/// A decoding failure at `offset` bytes into the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbError {
    pub offset: usize,
    pub what: String,
}

impl fmt::Display for PbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {} of the message", self.what, self.offset)
    }
}

/// One field's value as the wire carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Walks the fields of one message.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Fields<'a> {
        Fields { buf, pos: 0 }
    }

    fn err(&self, at: usize, what: impl Into<String>) -> PbError {
        PbError {
            offset: at,
            what: what.into(),
        }
    }

    fn varint(&mut self) -> Result<u64, PbError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err(start, "truncated varint"));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(self.err(start, "varint longer than 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err(start, "varint longer than 64 bits"))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], PbError> {
        let start = self.pos;
        let end = start
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.err(start, format!("truncated {what}")))?;
        self.pos = end;
        Ok(&self.buf[start..end])
    }

    /// The next field: (offset of its key, field number, value), or None at the end.
    fn next(&mut self) -> Result<Option<(usize, u64, Value<'a>)>, PbError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(self.err(at, "field number 0"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                let b = self.take(8, "fixed64")?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Value::Fixed64(u64::from_le_bytes(a))
            }
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| self.err(at, "length overflow"))?;
                Value::Bytes(self.take(len, "length-delimited field")?)
            }
            5 => {
                let b = self.take(4, "fixed32")?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            wt => return Err(self.err(at, format!("wire type {wt} (field {field})"))),
        };
        Ok(Some((at, field, value)))
    }
}

fn want_varint(at: usize, field: u64, v: Value<'_>) -> Result<u64, PbError> {
    match v {
        Value::Varint(x) => Ok(x),
        _ => Err(PbError {
            offset: at,
            what: format!("wrong wire type for field {field} (want varint)"),
        }),
    }
}

fn want_bytes(at: usize, field: u64, v: Value<'_>) -> Result<&[u8], PbError> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(PbError {
            offset: at,
            what: format!("wrong wire type for field {field} (want bytes)"),
        }),
    }
}

/// A Go string: any bytes. The v2 API hands values out through JSON, where Go replaces
/// invalid UTF-8 with U+FFFD; so does this (and etcd's own next snapshot would).
fn go_string(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `snappb.Snapshot`: a snap file's envelope.
#[derive(Debug, PartialEq, Eq)]
pub struct SnapEnvelope<'a> {
    pub crc: u32,
    pub data: &'a [u8],
}

pub fn snap_envelope(buf: &[u8]) -> Result<SnapEnvelope<'_>, PbError> {
    let mut f = Fields::new(buf);
    let mut out = SnapEnvelope { crc: 0, data: &[] };
    while let Some((at, field, v)) = f.next()? {
        match field {
            1 => out.crc = want_varint(at, field, v)? as u32,
            2 => out.data = want_bytes(at, field, v)?,
            _ => {}
        }
    }
    Ok(out)
}

/// WAL record types (`wal/wal.go`).
pub const RECORD_METADATA: i64 = 1;
pub const RECORD_ENTRY: i64 = 2;
pub const RECORD_STATE: i64 = 3;
pub const RECORD_CRC: i64 = 4;
pub const RECORD_SNAPSHOT: i64 = 5;

/// `walpb.Record`.
#[derive(Debug, PartialEq, Eq)]
pub struct WalRecord<'a> {
    pub kind: i64,
    pub crc: u32,
    pub data: &'a [u8],
}

pub fn wal_record(buf: &[u8]) -> Result<WalRecord<'_>, PbError> {
    let mut f = Fields::new(buf);
    let mut out = WalRecord {
        kind: 0,
        crc: 0,
        data: &[],
    };
    while let Some((at, field, v)) = f.next()? {
        match field {
            1 => out.kind = want_varint(at, field, v)? as i64,
            2 => out.crc = want_varint(at, field, v)? as u32,
            3 => out.data = want_bytes(at, field, v)?,
            _ => {}
        }
    }
    Ok(out)
}

/// `walpb.Snapshot`: (index, term) of a snapshot the WAL records.
pub fn wal_snapshot(buf: &[u8]) -> Result<(u64, u64), PbError> {
    let mut f = Fields::new(buf);
    let (mut index, mut term) = (0, 0);
    while let Some((at, field, v)) = f.next()? {
        match field {
            1 => index = want_varint(at, field, v)?,
            2 => term = want_varint(at, field, v)?,
            _ => {}
        }
    }
    Ok((index, term))
}

/// etcd's `raftpb.ConfChangeType`. raft-rs's `eraftpb` numbers them differently (it has no
/// UpdateNode, and its AddLearnerNode is 2), so `ConfChange` is decoded here, not with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfChangeKind {
    Add,
    Remove,
    Update,
    AddLearner,
}

/// etcd's `raftpb.ConfChange`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfChange {
    pub kind: ConfChangeKind,
    pub node_id: u64,
    pub context: Vec<u8>,
}

pub fn conf_change(buf: &[u8]) -> Result<ConfChange, PbError> {
    let mut f = Fields::new(buf);
    let mut out = ConfChange {
        kind: ConfChangeKind::Add,
        node_id: 0,
        context: Vec::new(),
    };
    while let Some((at, field, v)) = f.next()? {
        match field {
            2 => {
                out.kind = match want_varint(at, field, v)? {
                    0 => ConfChangeKind::Add,
                    1 => ConfChangeKind::Remove,
                    2 => ConfChangeKind::Update,
                    3 => ConfChangeKind::AddLearner,
                    other => {
                        return Err(PbError {
                            offset: at,
                            what: format!("unknown conf change type {other}"),
                        })
                    }
                }
            }
            3 => out.node_id = want_varint(at, field, v)?,
            4 => out.context = want_bytes(at, field, v)?.to_vec(),
            _ => {}
        }
    }
    Ok(out)
}

/// etcd's v2 `etcdserverpb.Request`, the data of a v2 write's raft entry.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: u64,
    pub method: String,
    pub path: String,
    pub val: String,
    pub dir: bool,
    pub prev_value: String,
    pub prev_index: u64,
    /// Absent is not false: a `PUT` without `prevExist` is a set.
    pub prev_exist: Option<bool>,
    /// Absolute expiration, unix nanoseconds; 0 = none.
    pub expiration: i64,
    pub wait: bool,
    pub since: u64,
    pub recursive: bool,
    pub sorted: bool,
    pub quorum: bool,
    /// `SYNC`'s cutoff, unix nanoseconds.
    pub time: i64,
    pub stream: bool,
    pub refresh: Option<bool>,
}

pub fn request(buf: &[u8]) -> Result<Request, PbError> {
    let mut f = Fields::new(buf);
    let mut r = Request::default();
    while let Some((at, field, v)) = f.next()? {
        let int = || want_varint(at, field, v);
        let text = || want_bytes(at, field, v).map(go_string);
        match field {
            1 => r.id = int()?,
            2 => r.method = text()?,
            3 => r.path = text()?,
            4 => r.val = text()?,
            5 => r.dir = int()? != 0,
            6 => r.prev_value = text()?,
            7 => r.prev_index = int()?,
            8 => r.prev_exist = Some(int()? != 0),
            9 => r.expiration = int()? as i64,
            10 => r.wait = int()? != 0,
            11 => r.since = int()?,
            12 => r.recursive = int()? != 0,
            13 => r.sorted = int()? != 0,
            14 => r.quorum = int()? != 0,
            15 => r.time = int()? as i64,
            16 => r.stream = int()? != 0,
            17 => r.refresh = Some(int()? != 0),
            _ => {}
        }
    }
    Ok(r)
}

/// What a normal raft entry's data asks of the v2 store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normal {
    /// Empty data: the leader's no-op.
    Noop,
    /// A v2 request (bare, or an `InternalRaftRequest`'s `v2`).
    V2(Request),
    /// 3.5's `ClusterVersionSetRequest`: sets `/0/version`.
    ClusterVersionSet(String),
    /// 3.5's `ClusterMemberAttrSetRequest`: sets the member's `attributes`.
    ClusterMemberAttrSet {
        member_id: u64,
        name: String,
        client_urls: Vec<String>,
    },
    /// Any other `InternalRaftRequest`: the v3 store's business.
    V3,
}

/// Classifies a normal entry's data as etcd's `applyEntryNormal` does: an
/// `InternalRaftRequest` if it decodes as one (a nested `v2` included), else a bare v2
/// `Request` (etcd panics when neither decodes: here, an error).
pub fn normal(data: &[u8]) -> Result<Normal, PbError> {
    if data.is_empty() {
        return Ok(Normal::Noop);
    }
    match internal_raft_request(data) {
        Ok(n) => Ok(n),
        Err(_) => request(data).map(Normal::V2),
    }
}

/// The fields of `InternalRaftRequest` that are messages (wire type 2): every request kind.
fn irr_message_field(field: u64) -> bool {
    matches!(field, 2..=11 | 100 | 1000..=1302)
}

/// `InternalRaftRequest`, shallowly: the v2 request and 3.5's cluster requests are decoded,
/// v3 requests only checked for their wire type (a v2 `Request` read as one fails at its
/// method string, field 2, whose bytes are no valid `Request`: see the docs).
fn internal_raft_request(buf: &[u8]) -> Result<Normal, PbError> {
    let mut f = Fields::new(buf);
    let mut out = Normal::V3;
    while let Some((at, field, v)) = f.next()? {
        match field {
            1 => {
                want_varint(at, field, v)?;
            }
            // gogo decodes the nested Request strictly too: a group or wrong wire type fails.
            2 => out = Normal::V2(request(want_bytes(at, field, v)?)?),
            1300 => {
                let mut g = Fields::new(want_bytes(at, field, v)?);
                let mut ver = String::new();
                while let Some((at, field, v)) = g.next()? {
                    if field == 1 {
                        ver = go_string(want_bytes(at, field, v)?);
                    }
                }
                out = Normal::ClusterVersionSet(ver);
            }
            1301 => out = member_attr_set(want_bytes(at, field, v)?)?,
            f2 if irr_message_field(f2) => {
                want_bytes(at, field, v)?;
            }
            _ => {}
        }
    }
    Ok(out)
}

fn member_attr_set(buf: &[u8]) -> Result<Normal, PbError> {
    let mut f = Fields::new(buf);
    let (mut member_id, mut name, mut client_urls) = (0, String::new(), Vec::new());
    while let Some((at, field, v)) = f.next()? {
        match field {
            1 => member_id = want_varint(at, field, v)?,
            2 => {
                let mut g = Fields::new(want_bytes(at, field, v)?);
                while let Some((at, field, v)) = g.next()? {
                    match field {
                        1 => name = go_string(want_bytes(at, field, v)?),
                        2 => client_urls.push(go_string(want_bytes(at, field, v)?)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Normal::ClusterMemberAttrSet {
        member_id,
        name,
        client_urls,
    })
}

/// Encoders for the unit tests of this module and its siblings: the bytes etcd (gogo)
/// writes, field by field in field order.
#[cfg(test)]
pub mod encode {
    use super::Request;

    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
        varint(out, field << 3);
        varint(out, v);
    }

    pub fn field_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
        varint(out, field << 3 | 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    /// gogo's `Request.Marshal` (nullable=false fields are always written).
    pub fn request(r: &Request) -> Vec<u8> {
        let mut o = Vec::new();
        field_varint(&mut o, 1, r.id);
        field_bytes(&mut o, 2, r.method.as_bytes());
        field_bytes(&mut o, 3, r.path.as_bytes());
        field_bytes(&mut o, 4, r.val.as_bytes());
        field_varint(&mut o, 5, r.dir.into());
        field_bytes(&mut o, 6, r.prev_value.as_bytes());
        field_varint(&mut o, 7, r.prev_index);
        if let Some(p) = r.prev_exist {
            field_varint(&mut o, 8, p.into());
        }
        field_varint(&mut o, 9, r.expiration as u64);
        field_varint(&mut o, 10, r.wait.into());
        field_varint(&mut o, 11, r.since);
        field_varint(&mut o, 12, r.recursive.into());
        field_varint(&mut o, 13, r.sorted.into());
        field_varint(&mut o, 14, r.quorum.into());
        field_varint(&mut o, 15, r.time as u64);
        field_varint(&mut o, 16, r.stream.into());
        if let Some(x) = r.refresh {
            field_varint(&mut o, 17, x.into());
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str) -> Request {
        Request {
            id: 0x1234_5678_9abc,
            method: method.into(),
            path: "/1/a".into(),
            val: "v".into(),
            prev_exist: Some(false),
            expiration: 1_800_000_000_000_000_000,
            refresh: Some(true),
            ..Request::default()
        }
    }

    #[test]
    fn every_v2_method_decodes_as_a_bare_request_not_an_internal_one() {
        for m in ["PUT", "POST", "DELETE", "QGET", "SYNC", "GET", "HEAD"] {
            let r = req(m);
            assert_eq!(normal(&encode::request(&r)), Ok(Normal::V2(r)), "{m}");
        }
    }

    #[test]
    fn internal_raft_requests_are_told_apart() {
        // A v3 put: header (field 100) and put (field 4).
        let mut v3 = Vec::new();
        encode::field_bytes(&mut v3, 100, &[8, 1]);
        encode::field_bytes(&mut v3, 4, &[10, 1, b'k']);
        assert_eq!(normal(&v3), Ok(Normal::V3));
        // An InternalRaftRequest wrapping a v2 request.
        let mut wrapped = Vec::new();
        encode::field_varint(&mut wrapped, 1, 7);
        encode::field_bytes(&mut wrapped, 2, &encode::request(&req("PUT")));
        assert_eq!(normal(&wrapped), Ok(Normal::V2(req("PUT"))));
        // 3.5's cluster requests.
        let mut ver = Vec::new();
        encode::field_bytes(&mut ver, 100, &[8, 1]);
        encode::field_bytes(&mut ver, 1300, &[10, 5, b'3', b'.', b'5', b'.', b'0']);
        assert_eq!(normal(&ver), Ok(Normal::ClusterVersionSet("3.5.0".into())));
        let mut attrs = Vec::new();
        encode::field_bytes(&mut attrs, 1, b"n1");
        encode::field_bytes(&mut attrs, 2, b"http://a:1");
        let mut set = Vec::new();
        encode::field_varint(&mut set, 1, 0xab);
        encode::field_bytes(&mut set, 2, &attrs);
        let mut irr = Vec::new();
        encode::field_bytes(&mut irr, 1301, &set);
        assert_eq!(
            normal(&irr),
            Ok(Normal::ClusterMemberAttrSet {
                member_id: 0xab,
                name: "n1".into(),
                client_urls: vec!["http://a:1".into()]
            })
        );
        assert_eq!(normal(&[]), Ok(Normal::Noop));
    }

    #[test]
    fn malformed_messages_are_errors_with_offsets() {
        let r = encode::request(&req("PUT"));
        // Truncated inside the path string.
        let e = request(&r[..9]).unwrap_err();
        assert!(e.what.contains("truncated"), "{e}");
        // A known field with the wrong wire type (Dir as bytes).
        let mut bad = Vec::new();
        encode::field_bytes(&mut bad, 5, b"x");
        assert_eq!(request(&bad).unwrap_err().offset, 0);
        // A group wire type.
        assert!(request(&[0x0b]).is_err());
        // An over-long varint.
        assert!(
            request(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).is_err()
        );
        // Neither an InternalRaftRequest nor a Request.
        assert!(normal(&[0xff]).is_err());
    }

    #[test]
    fn wal_record_and_snapshot_envelopes() {
        let mut rec = Vec::new();
        encode::field_varint(&mut rec, 1, RECORD_ENTRY as u64);
        encode::field_varint(&mut rec, 2, 0xdead_beef);
        encode::field_bytes(&mut rec, 3, b"data");
        assert_eq!(
            wal_record(&rec),
            Ok(WalRecord {
                kind: RECORD_ENTRY,
                crc: 0xdead_beef,
                data: b"data"
            })
        );
        let mut snap = Vec::new();
        encode::field_varint(&mut snap, 1, 42);
        encode::field_varint(&mut snap, 2, 3);
        encode::field_bytes(&mut snap, 3, &[8, 1]); // 3.5's conf_state: skipped
        assert_eq!(wal_snapshot(&snap), Ok((42, 3)));
        let mut env = Vec::new();
        encode::field_varint(&mut env, 1, 7);
        encode::field_bytes(&mut env, 2, b"raft");
        assert_eq!(
            snap_envelope(&env),
            Ok(SnapEnvelope {
                crc: 7,
                data: b"raft"
            })
        );
    }
}
