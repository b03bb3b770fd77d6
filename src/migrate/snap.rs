//! etcd's snap files (`member/snap/<term>-<index>.snap`): the newest one, its envelope
//! checked, and the v2 store JSON inside it turned into a ringd `Store` holding etcd's whole
//! tree (`/0`, `/1`, ...) with every node's indexes and absolute expiration.
//! docs/etcd-data-dir.md has the format.

use super::MigrateError;
use protobuf::Message;
use ringd_store::{SnapshotBuilder, Store, WriteStats};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The only v2 store format etcd has ever written (`defaultVersion` in v2store).
const STORE_VERSION: i64 = 2;

/// The newest snapshot: where etcd's raft log continues, and the v2 store at that point.
pub struct EtcdSnapshot {
    pub path: PathBuf,
    pub raft_index: u64,
    pub raft_term: u64,
    pub store: Store,
}

/// The snap files of `dir`, newest first (etcd's `snapNames`: names sort as term, index).
fn snap_names(dir: &Path) -> Result<Vec<PathBuf>, MigrateError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(MigrateError::io(dir, e)),
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| MigrateError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".snap") {
            names.push(name);
        }
    }
    names.sort();
    Ok(names.into_iter().rev().map(|n| dir.join(n)).collect())
}

/// Reads the newest snap file of `dir` (None: the member never took a snapshot, and its WAL
/// holds everything from raft index 1).
pub fn read_newest(dir: &Path) -> Result<Option<EtcdSnapshot>, MigrateError> {
    let Some(path) = snap_names(dir)?.into_iter().next() else {
        return Ok(None);
    };
    let bytes = std::fs::read(&path).map_err(|e| MigrateError::io(&path, e))?;
    decode(&path, &bytes).map(Some)
}

/// Decodes one snap file's bytes.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<EtcdSnapshot, MigrateError> {
    let at = |offset: usize, what: String| MigrateError::at(path, offset as u64, what);
    let env = super::pb::snap_envelope(bytes)
        .map_err(|e| at(e.offset, format!("not an etcd snap file: {}", e.what)))?;
    if env.data.is_empty() || env.crc == 0 {
        return Err(at(0, "empty snapshot (etcd's ErrEmptySnapshot)".into()));
    }
    // The raft snapshot's offset in the file: it is the envelope's last field in practice;
    // errors inside it are reported from there.
    let data_at = bytes.len() - env.data.len();
    let crc = crc32c::crc32c(env.data);
    if crc != env.crc {
        return Err(at(
            data_at,
            format!(
                "crc mismatch: the file says {:08x}, its data hashes to {crc:08x}",
                env.crc
            ),
        ));
    }
    let raft = raft::eraftpb::Snapshot::parse_from_bytes(env.data)
        .map_err(|e| at(data_at, format!("not a raft snapshot: {e}")))?;
    let meta = raft.get_metadata();
    let store = store_from_json(raft.get_data()).map_err(|e| {
        at(
            data_at,
            format!("the v2 store inside is not one this ringd knows: {e}"),
        )
    })?;
    Ok(EtcdSnapshot {
        path: path.to_path_buf(),
        raft_index: meta.get_index(),
        raft_term: meta.get_term(),
        store,
    })
}

/// `json.Marshal(v2store.store)`: the fields ringd uses; the rest (the watcher hub's event
/// history) is ignored.
#[derive(serde::Deserialize)]
struct JsonStore {
    #[serde(rename = "Root")]
    root: JsonNode,
    #[serde(rename = "CurrentIndex")]
    current_index: u64,
    #[serde(rename = "Stats", default)]
    stats: Option<JsonStats>,
    #[serde(rename = "CurrentVersion")]
    current_version: i64,
}

#[derive(serde::Deserialize)]
struct JsonNode {
    #[serde(rename = "Path")]
    path: String,
    #[serde(rename = "CreatedIndex")]
    created_index: u64,
    #[serde(rename = "ModifiedIndex")]
    modified_index: u64,
    #[serde(rename = "ExpireTime")]
    expire_time: String,
    #[serde(rename = "Value")]
    value: String,
    /// A dir has an object (maybe empty), a file `null`.
    #[serde(rename = "Children")]
    children: Option<BTreeMap<String, JsonNode>>,
}

/// v2store's `Stats` (reads are counted by ringd's shards, so only writes are kept).
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JsonStats {
    sets_success: u64,
    sets_fail: u64,
    delete_success: u64,
    delete_fail: u64,
    update_success: u64,
    update_fail: u64,
    create_success: u64,
    create_fail: u64,
    compare_and_swap_success: u64,
    compare_and_swap_fail: u64,
    compare_and_delete_success: u64,
    compare_and_delete_fail: u64,
    expire_count: u64,
}

/// The deepest JSON nesting accepted: a node is two levels (its object and its `Children`),
/// and ringd refuses keys deeper than `KEY_DEPTH_MAX` anyway. Checked before parsing, so
/// serde_json may recurse without its own (lower) limit and no input can exhaust the stack.
const JSON_DEPTH_MAX: usize = 2 * crate::limits::KEY_DEPTH_MAX + 8;

fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Builds a ringd store from etcd's v2 store JSON: the whole tree, `/0` included.
pub fn store_from_json(json: &[u8]) -> Result<Store, String> {
    let depth = json_depth(json);
    if depth > JSON_DEPTH_MAX {
        return Err(format!(
            "nested {depth} levels deep (keys deeper than {} are not supported)",
            crate::limits::KEY_DEPTH_MAX
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    de.disable_recursion_limit();
    let parsed: JsonStore =
        serde::Deserialize::deserialize(&mut de).map_err(|e| format!("JSON: {e}"))?;
    de.end().map_err(|e| format!("JSON: {e}"))?;
    if parsed.current_version != STORE_VERSION {
        return Err(format!(
            "store format version {} (ringd reads version {STORE_VERSION})",
            parsed.current_version
        ));
    }
    let s = parsed.stats.unwrap_or_default();
    let stats = WriteStats {
        sets_success: s.sets_success,
        sets_fail: s.sets_fail,
        delete_success: s.delete_success,
        delete_fail: s.delete_fail,
        update_success: s.update_success,
        update_fail: s.update_fail,
        create_success: s.create_success,
        create_fail: s.create_fail,
        compare_and_swap_success: s.compare_and_swap_success,
        compare_and_swap_fail: s.compare_and_swap_fail,
        compare_and_delete_success: s.compare_and_delete_success,
        compare_and_delete_fail: s.compare_and_delete_fail,
        expire_count: s.expire_count,
    };
    let root = &parsed.root;
    let Some(children) = &root.children else {
        return Err("the root is not a dir".into());
    };
    if root.path != "/" {
        return Err(format!("the root's path is {:?}", root.path));
    }
    let mut b = SnapshotBuilder::new(parsed.current_index, &stats, children.len());
    // Depth-first without recursion: (parent path, remaining children).
    let mut stack = vec![("/".to_string(), children.iter())];
    while let Some((parent, iter)) = stack.last_mut() {
        let Some((name, node)) = iter.next() else {
            stack.pop();
            continue;
        };
        let path = if parent == "/" {
            format!("/{name}")
        } else {
            format!("{parent}/{name}")
        };
        if node.path != path {
            return Err(format!("node {path:?} says its path is {:?}", node.path));
        }
        let expire = go_time_ns(&node.expire_time).map_err(|e| format!("{path}: {e}"))?;
        match &node.children {
            Some(ch) => {
                if node.modified_index != node.created_index {
                    return Err(format!(
                        "dir {path} has modifiedIndex {} != createdIndex {} (etcd never writes that)",
                        node.modified_index, node.created_index
                    ));
                }
                b.dir(name, node.created_index, expire, ch.len());
                stack.push((path, ch.iter()));
            }
            None => b.file(
                name,
                node.created_index,
                node.modified_index,
                expire,
                &node.value,
            ),
        }
    }
    Store::restore(&b.finish()).map_err(|e| format!("tree: {e}"))
}

/// Go's `time.Time` JSON (RFC 3339, fraction optional, `Z` or `±hh:mm`) as unix
/// nanoseconds; None for the zero time (no TTL). Times at or before the epoch become 1 ns
/// (long past: the node expires at the first expiry pass, as in etcd).
pub fn go_time_ns(s: &str) -> Result<Option<u64>, String> {
    if s == "0001-01-01T00:00:00Z" {
        return Ok(None);
    }
    let bad = || format!("bad time {s:?}");
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let t = s.get(r).ok_or_else(bad)?;
        if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        t.parse::<i64>().map_err(|_| bad())
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return Err(bad());
    }
    let mut pos = 19;
    let mut nanos: i64 = 0;
    if b.get(pos) == Some(&b'.') {
        let start = pos + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        if end == start || end - start > 9 {
            return Err(bad());
        }
        nanos = num(start..end)? * 10i64.pow((9 - (end - start)) as u32);
        pos = end;
    }
    let offset_secs = match s.get(pos..) {
        Some("Z") => 0,
        Some(z)
            if z.len() == 6 && (z.starts_with('+') || z.starts_with('-')) && &z[3..4] == ":" =>
        {
            let h = num(pos + 1..pos + 3)?;
            let m = num(pos + 4..pos + 6)?;
            let v = h * 3600 + m * 60;
            if z.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    let ns = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    Ok(Some(u64::try_from(ns.max(1)).unwrap_or(u64::MAX)))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_times_parse_as_etcd_writes_them() {
        assert_eq!(go_time_ns("0001-01-01T00:00:00Z"), Ok(None));
        assert_eq!(go_time_ns("1970-01-01T00:00:01Z"), Ok(Some(1_000_000_000)));
        assert_eq!(
            go_time_ns("2026-12-06T08:14:47.934181504Z"),
            Ok(Some(1_796_544_887_934_181_504))
        );
        // The same instant with a zone offset, and a shorter fraction.
        assert_eq!(
            go_time_ns("2026-12-06T10:14:47.934181504+02:00"),
            Ok(Some(1_796_544_887_934_181_504))
        );
        assert_eq!(
            go_time_ns("2000-03-01T00:00:00.5-01:30"),
            Ok(Some(951_874_200_500_000_000))
        );
        assert_eq!(go_time_ns("1960-01-01T00:00:00Z"), Ok(Some(1)));
        for bad in [
            "",
            "2026-12-06",
            "2026-13-06T00:00:00Z",
            "2026-12-06T00:00:00",
            "2026-12-06T00:00:00.Z",
            "2026-12-06T00:00:00+0200",
            "2026-12-06T00:00:00.1234567890Z",
        ] {
            assert!(go_time_ns(bad).is_err(), "{bad}");
        }
    }

    const JSON: &str = r#"{"Root":{"Path":"/","CreatedIndex":0,"ModifiedIndex":0,"ExpireTime":"0001-01-01T00:00:00Z","Value":"","Children":{
        "0":{"Path":"/0","CreatedIndex":0,"ModifiedIndex":0,"ExpireTime":"0001-01-01T00:00:00Z","Value":"","Children":{"version":{"Path":"/0/version","CreatedIndex":3,"ModifiedIndex":3,"ExpireTime":"0001-01-01T00:00:00Z","Value":"3.4.0","Children":null}}},
        "1":{"Path":"/1","CreatedIndex":0,"ModifiedIndex":0,"ExpireTime":"0001-01-01T00:00:00Z","Value":"","Children":{
            "_h":{"Path":"/1/_h","CreatedIndex":4,"ModifiedIndex":6,"ExpireTime":"0001-01-01T00:00:00Z","Value":"hidden","Children":null},
            "d":{"Path":"/1/d","CreatedIndex":5,"ModifiedIndex":5,"ExpireTime":"2026-12-06T08:14:47.934181504Z","Value":"","Children":{}}}}}},
        "WatcherHub":{"EventHistory":{"Queue":{"Events":[null],"Size":0,"Front":0,"Back":0,"Capacity":1000},"StartIndex":0,"LastIndex":0}},
        "CurrentIndex":7,"Stats":{"getsSuccess":1,"setsSuccess":5,"expireCount":2,"watchers":0},"CurrentVersion":2}"#;

    #[test]
    fn the_v2_store_json_becomes_a_store_with_etcds_indexes() {
        let s = store_from_json(JSON.as_bytes()).unwrap();
        assert_eq!((s.index().0, s.node_count()), (7, 5));
        assert_eq!(s.write_stats().sets_success, 5);
        assert_eq!(s.write_stats().expire_count, 2);
        let v = s.view();
        let h = v.get("/1/_h", false, false).unwrap().node;
        assert_eq!((h.created_index, h.modified_index), (4, 6));
        assert_eq!(h.value.as_deref(), Some("hidden"));
        let d = v.get("/1/d", false, false).unwrap().node;
        assert_eq!(d.expiration, Some(1_796_544_887_934_181_504));
        assert!(d.dir);
        assert_eq!(s.next_expiration(), Some(1_796_544_887_934_181_504));
    }

    #[test]
    fn unknown_or_inconsistent_stores_are_refused() {
        let newer = JSON.replace(r#""CurrentVersion":2"#, r#""CurrentVersion":3"#);
        assert!(store_from_json(newer.as_bytes())
            .unwrap_err()
            .contains("format version 3"));
        let wrong_path = JSON.replace(r#""Path":"/1/_h""#, r#""Path":"/1/x""#);
        assert!(store_from_json(wrong_path.as_bytes()).is_err());
        let dir_modified = JSON.replace(
            r#""CreatedIndex":5,"ModifiedIndex":5"#,
            r#""CreatedIndex":5,"ModifiedIndex":6"#,
        );
        assert!(store_from_json(dir_modified.as_bytes())
            .unwrap_err()
            .contains("modifiedIndex"));
        let past_index = JSON.replace(r#""CurrentIndex":7"#, r#""CurrentIndex":5"#);
        assert!(store_from_json(past_index.as_bytes()).is_err());
        assert!(store_from_json(b"{}").is_err());
        assert!(store_from_json(b"not json").is_err());
        let deep = "[".repeat(JSON_DEPTH_MAX + 1);
        assert!(store_from_json(deep.as_bytes())
            .unwrap_err()
            .contains("nested"));
    }
}
