//! etcd's snap files (`member/snap/<term>-<index>.snap`): the newest one, its envelope
//! checked, and the v2 store JSON inside it turned into a ringd `Store` holding etcd's whole
//! tree (`/0`, `/1`, ...) with every node's indexes and absolute expiration.
//! docs/etcd-data-dir.md has the format.

use super::MigrateError;
use protobuf::Message;
use ringd_store::{Action, Event, NodeRepr, SnapshotBuilder, Store, WriteStats};
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
    /// The store's event history (the watcher hub's queue), oldest first, keys as stored
    /// (`/1/...`): what etcd serves `waitIndex` from after a restart.
    pub history: Vec<Event>,
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
    let (store, history) = store_from_json(raft.get_data()).map_err(|e| {
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
        history,
    })
}

/// `json.Marshal(v2store.store)`: the fields ringd uses.
#[derive(serde::Deserialize)]
struct JsonStore {
    #[serde(rename = "Root")]
    root: JsonNode,
    #[serde(rename = "WatcherHub", default)]
    watcher_hub: Option<JsonWatcherHub>,
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

#[derive(serde::Deserialize)]
struct JsonWatcherHub {
    #[serde(rename = "EventHistory")]
    event_history: Option<JsonEventHistory>,
}

#[derive(serde::Deserialize)]
struct JsonEventHistory {
    #[serde(rename = "Queue")]
    queue: JsonEventQueue,
}

/// A ring: the events are `Events[(Front + i) % Capacity]` for `i < Size`.
#[derive(serde::Deserialize)]
struct JsonEventQueue {
    #[serde(rename = "Events")]
    events: Vec<Option<JsonEvent>>,
    #[serde(rename = "Size")]
    size: usize,
    #[serde(rename = "Front")]
    front: usize,
    #[serde(rename = "Capacity")]
    capacity: usize,
}

/// An event as the API renders it (v2store's `Event` JSON).
#[derive(serde::Deserialize)]
struct JsonEvent {
    action: String,
    node: Option<JsonNodeExtern>,
    #[serde(rename = "prevNode")]
    prev_node: Option<JsonNodeExtern>,
    #[serde(default)]
    refresh: bool,
}

#[derive(serde::Deserialize)]
struct JsonNodeExtern {
    key: Option<String>,
    value: Option<String>,
    #[serde(default)]
    dir: bool,
    expiration: Option<String>,
    ttl: Option<i64>,
    #[serde(rename = "modifiedIndex", default)]
    modified_index: u64,
    #[serde(rename = "createdIndex", default)]
    created_index: u64,
    nodes: Option<Vec<JsonNodeExtern>>,
}

/// A node of a history event, and the time its `ttl` was rendered at (expiration - ttl):
/// ringd renders an event's ttl against its time, so it serves the same ttl etcd stored.
fn node_repr(n: &JsonNodeExtern) -> Result<(NodeRepr, Option<u64>), String> {
    let expiration = match &n.expiration {
        Some(t) => go_time_ns(t)?,
        None => None,
    };
    let time = match (expiration, n.ttl) {
        (Some(e), Some(ttl)) => Some(e.saturating_sub(ttl.max(0) as u64 * 1_000_000_000)),
        _ => None,
    };
    let nodes = match &n.nodes {
        Some(v) => Some(
            v.iter()
                .map(|c| node_repr(c).map(|r| r.0))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    let repr = NodeRepr {
        key: n.key.clone(),
        dir: n.dir,
        value: n.value.clone(),
        expiration,
        modified_index: n.modified_index,
        created_index: n.created_index,
        nodes,
    };
    Ok((repr, time))
}

fn event(e: &JsonEvent) -> Result<Event, String> {
    let action = match e.action.as_str() {
        "get" => Action::Get,
        "set" => Action::Set,
        "create" => Action::Create,
        "update" => Action::Update,
        "delete" => Action::Delete,
        "expire" => Action::Expire,
        "compareAndSwap" => Action::CompareAndSwap,
        "compareAndDelete" => Action::CompareAndDelete,
        other => return Err(format!("history event with action {other:?}")),
    };
    let (node, time) = node_repr(e.node.as_ref().ok_or("history event without a node")?)?;
    let prev = e.prev_node.as_ref().map(node_repr).transpose()?;
    let time = time.or(prev.as_ref().and_then(|p| p.1));
    Ok(Event {
        action,
        etcd_index: node.modified_index,
        node,
        prev_node: prev.map(|p| p.0),
        refresh: e.refresh,
        time,
    })
}

/// The watcher hub's events, oldest first.
fn history(hub: Option<&JsonWatcherHub>) -> Result<Vec<Event>, String> {
    let Some(q) = hub.and_then(|h| h.event_history.as_ref()).map(|h| &h.queue) else {
        return Ok(Vec::new());
    };
    if q.capacity == 0 || q.size > q.capacity || q.events.len() < q.capacity {
        return Err(format!(
            "event history of {} events in a ring of {} holding {}",
            q.size,
            q.capacity,
            q.events.len()
        ));
    }
    (0..q.size)
        .map(|i| match &q.events[(q.front + i) % q.capacity] {
            Some(e) => event(e),
            None => Err("a hole in the event history".to_string()),
        })
        .collect()
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

/// Builds a ringd store from etcd's v2 store JSON (the whole tree, `/0` included) and its
/// event history.
pub fn store_from_json(json: &[u8]) -> Result<(Store, Vec<Event>), String> {
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
    let store = Store::restore(&b.finish()).map_err(|e| format!("tree: {e}"))?;
    let history = history(parsed.watcher_hub.as_ref())?;
    Ok((store, history))
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
        "WatcherHub":{"EventHistory":{"Queue":{"Events":[null],"Size":0,"Front":0,"Back":0,"Capacity":1},"StartIndex":0,"LastIndex":0}},
        "CurrentIndex":7,"Stats":{"getsSuccess":1,"setsSuccess":5,"expireCount":2,"watchers":0},"CurrentVersion":2}"#;

    #[test]
    fn the_v2_store_json_becomes_a_store_with_etcds_indexes() {
        let (s, history) = store_from_json(JSON.as_bytes()).unwrap();
        assert!(history.is_empty());
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
    fn the_event_history_is_read_oldest_first_from_its_ring() {
        let ev_a = r#"{"action":"set","node":{"key":"/1/a","value":"1","expiration":"2026-12-06T08:14:47Z","ttl":100,"modifiedIndex":6,"createdIndex":6}}"#;
        let ev_b = r#"{"action":"compareAndDelete","node":{"key":"/1/a","modifiedIndex":7,"createdIndex":6},"prevNode":{"key":"/1/a","value":"1","modifiedIndex":6,"createdIndex":6}}"#;
        let hub = format!(
            r#""WatcherHub":{{"EventHistory":{{"Queue":{{"Events":[{ev_b},null,{ev_a}],"Size":2,"Front":2,"Back":1,"Capacity":3}},"StartIndex":6,"LastIndex":7}}}},"#
        );
        let json = JSON.replace(
            r#""WatcherHub":{"EventHistory":{"Queue":{"Events":[null],"Size":0,"Front":0,"Back":0,"Capacity":1},"StartIndex":0,"LastIndex":0}},"#,
            &hub,
        );
        let (_, history) = store_from_json(json.as_bytes()).unwrap();
        let got: Vec<(Action, u64)> = history.iter().map(|e| (e.action, e.etcd_index)).collect();
        assert_eq!(got, vec![(Action::Set, 6), (Action::CompareAndDelete, 7)]);
        let a = &history[0];
        assert_eq!(a.node.expiration, Some(1_796_544_887_000_000_000));
        // Rendered against this time, the ttl is the one etcd stored.
        assert_eq!(a.time, Some(1_796_544_887_000_000_000 - 100_000_000_000));
        assert_eq!(
            history[1]
                .prev_node
                .as_ref()
                .and_then(|p| p.value.as_deref()),
            Some("1")
        );
        let holed = json.replace(r#""Size":2"#, r#""Size":3"#);
        assert!(store_from_json(holed.as_bytes())
            .unwrap_err()
            .contains("hole"));
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
