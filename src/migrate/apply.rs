//! Replays etcd's committed raft entries into a ringd `Store` holding etcd's whole v2 tree,
//! with etcd 3.4/3.5's semantics (`applyEntryNormal`, `apply_v2.go`, `applyConfChange` and
//! the membership's store writes): each v2 request becomes the ringd `Command` of the
//! v2store verb etcd calls, and the cluster's own writes under `/0` are replayed too, because
//! they consume v2 indexes. docs/etcd-data-dir.md has the table.

use super::pb::{self, ConfChange, ConfChangeKind, Normal, Request};
use raft::eraftpb::{Entry, EntryType};
use ringd_store::{Command, Event, NodeRepr, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// etcd's `StoreKeysPrefix`: the v2 key space inside etcd's store.
pub const KEYS_PREFIX: &str = "/1";
const MEMBERS_PREFIX: &str = "/0/members";
const REMOVED_MEMBERS_PREFIX: &str = "/0/removed_members";
const VERSION_KEY: &str = "/0/version";
/// etcd's `maxLearners`.
const LEARNERS_MAX: usize = 1;

/// What a replay did, for the summary line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// v2 requests applied (a failed verb included: it changes nothing, as in etcd).
    pub v2_requests: u64,
    /// v3 requests and no-ops skipped.
    pub skipped: u64,
    /// Conf changes applied (refused ones are not counted).
    pub conf_changes: u64,
}

/// Applies `entries` whose index is at most `commit`, in order. Returns the events as
/// ringd's history keeps them (`history_event`) and the counts. An entry etcd could not have
/// applied (undecodable data, a conf change v2) is an error naming the raft index.
///
/// `now` (unix ns) is the time of the events of requests that carry none (all but SYNC):
/// their `ttl` fields are rendered against it, as etcd renders the entries it replays at
/// start against its clock then.
pub fn replay(
    store: &mut Store,
    entries: &[Entry],
    commit: u64,
    now: u64,
) -> Result<(Vec<Arc<Event>>, Replayed), String> {
    let mut events = Vec::new();
    let mut counts = Replayed::default();
    for e in entries.iter().take_while(|e| e.index <= commit) {
        let at = |what: String| format!("raft entry {} (term {}): {what}", e.index, e.term);
        let evs = match e.get_entry_type() {
            EntryType::EntryNormal => {
                match pb::normal(&e.data).map_err(|err| at(format!("undecodable: {err}")))? {
                    Normal::Noop | Normal::V3 => {
                        counts.skipped += 1;
                        Vec::new()
                    }
                    Normal::V2(req) => {
                        counts.v2_requests += 1;
                        apply_v2(store, &req, now).map_err(at)?
                    }
                    Normal::ClusterVersionSet(ver) => set_internal(store, VERSION_KEY, &ver),
                    Normal::ClusterMemberAttrSet {
                        member_id,
                        name,
                        client_urls,
                    } => update_attributes(store, member_id, &name, &client_urls),
                }
            }
            EntryType::EntryConfChange => {
                let cc = pb::conf_change(&e.data)
                    .map_err(|err| at(format!("undecodable conf change: {err}")))?;
                let (evs, applied) = conf_change(store, &cc).map_err(at)?;
                counts.conf_changes += u64::from(applied);
                evs
            }
            EntryType::EntryConfChangeV2 => {
                return Err(at(
                    "a joint-consensus conf change (etcd servers never write these)".into(),
                ))
            }
        };
        events.extend(evs.into_iter().map(history_event).map(Arc::new));
    }
    Ok((events, counts))
}

/// A v2 request, as `applyV2Request` dispatches it.
fn apply_v2(store: &mut Store, r: &Request, now: u64) -> Result<Vec<Event>, String> {
    // Request.Expiration is absolute (0: none); before the epoch it is long past, which
    // Set and Create treat as no TTL (etcd's minExpireTime) and the others as expired.
    let expire = (r.expiration != 0).then(|| r.expiration.max(1) as u64);
    let refresh = r.refresh.unwrap_or(false);
    let at = if r.time > 0 { r.time as u64 } else { now };
    let (key, value) = (r.path.clone(), r.val.clone());
    let compare = r.prev_index > 0 || !r.prev_value.is_empty();
    let cmd = match r.method.as_str() {
        "POST" => Command::Create {
            key,
            dir: r.dir,
            value,
            expire,
            unique: true,
            at,
        },
        "PUT" => match r.prev_exist {
            Some(true) if !compare => Command::Update {
                key,
                value,
                expire,
                refresh,
                at,
            },
            Some(false) => Command::Create {
                key,
                dir: r.dir,
                value,
                expire,
                unique: false,
                at,
            },
            Some(true) | None if compare => Command::CompareAndSwap {
                key,
                prev_value: r.prev_value.clone(),
                prev_index: r.prev_index,
                value,
                expire,
                refresh,
                at,
            },
            _ => {
                if let Some(id) = member_attributes_id(&r.path) {
                    // UpdateAttributes: the value must be the attributes JSON (etcd panics
                    // otherwise), written to the member's own key if the member exists.
                    let attrs: MemberAttributes = serde_json::from_str(&r.val)
                        .map_err(|e| format!("member attributes {:?}: {e}", r.val))?;
                    return Ok(update_attributes(
                        store,
                        id,
                        &attrs.name,
                        &attrs.client_urls,
                    ));
                }
                if r.path == VERSION_KEY {
                    return Ok(set_internal(store, VERSION_KEY, &r.val));
                }
                Command::Set {
                    key,
                    dir: r.dir,
                    value,
                    expire,
                    refresh,
                    at,
                }
            }
        },
        "DELETE" if compare => Command::CompareAndDelete {
            key,
            prev_value: r.prev_value.clone(),
            prev_index: r.prev_index,
            at,
        },
        "DELETE" => Command::Delete {
            key,
            dir: r.dir,
            recursive: r.recursive,
            at,
        },
        "SYNC" => return Ok(store.expire(r.time.max(0) as u64)),
        // QGET reads; anything else is etcd's ErrUnknownMethod: no change either way.
        _ => return Ok(Vec::new()),
    };
    // A failed verb changes nothing and consumes no index, as in etcd.
    Ok(store.apply(&cmd).into_iter().collect())
}

/// etcd's `storeMemberAttributeRegexp` (`/0/members/[[:xdigit:]]{1,16}/attributes`, not
/// anchored: it may match inside a longer path) and `MustParseMemberIDFromKey(path.Dir(p))`.
fn member_attributes_id(path: &str) -> Option<u64> {
    let found = path.match_indices("/0/members/").any(|(i, m)| {
        let rest = &path[i + m.len()..];
        let hex = rest.bytes().take_while(u8::is_ascii_hexdigit).count();
        (1..=16).contains(&hex) && rest[hex..].starts_with("/attributes")
    });
    if !found {
        return None;
    }
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    let base = dir.rsplit('/').next().unwrap_or("");
    u64::from_str_radix(base, 16).ok()
}

#[derive(serde::Deserialize, serde::Serialize)]
struct MemberAttributes {
    #[serde(default)]
    name: String,
    #[serde(rename = "clientURLs", default)]
    client_urls: Vec<String>,
}

/// `mustSaveClusterVersionToStore` and friends: a permanent set under `/0`.
fn set_internal(store: &mut Store, key: &str, value: &str) -> Vec<Event> {
    let cmd = Command::Set {
        key: key.to_string(),
        dir: false,
        value: value.to_string(),
        expire: None,
        refresh: false,
        at: 0,
    };
    store.apply(&cmd).into_iter().collect()
}

/// `RaftCluster.UpdateAttributes`: writes the member's attributes if it is a member (a
/// removed member's are skipped, as etcd does).
fn update_attributes(store: &mut Store, id: u64, name: &str, client_urls: &[String]) -> Vec<Event> {
    let (members, _) = members(store);
    if !members.contains_key(&id) {
        return Vec::new();
    }
    let attrs = MemberAttributes {
        name: name.to_string(),
        client_urls: client_urls.to_vec(),
    };
    let json = serde_json::to_string(&attrs).unwrap_or_default();
    set_internal(store, &format!("{MEMBERS_PREFIX}/{id:x}/attributes"), &json)
}

/// A member's `raftAttributes`.
#[derive(serde::Deserialize, serde::Serialize, Default, Clone)]
struct RaftAttributes {
    #[serde(rename = "peerURLs", default)]
    peer_urls: Vec<String>,
    #[serde(
        rename = "isLearner",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    is_learner: bool,
}

/// A conf change's context: etcd's `ConfigChangeContext` (a `Member` plus `isPromote`) for
/// adds, a `Member` for updates.
#[derive(serde::Deserialize)]
struct ConfContext {
    #[serde(default)]
    id: u64,
    #[serde(rename = "peerURLs", default)]
    peer_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    is_learner: bool,
    #[serde(rename = "isPromote", default)]
    is_promote: bool,
}

/// etcd's `membersFromStore`: the members (id -> raft attributes) and the removed ids.
fn members(store: &Store) -> (BTreeMap<u64, RaftAttributes>, BTreeSet<u64>) {
    let view = store.view();
    let ids = |prefix: &str| -> Vec<(u64, NodeRepr)> {
        let Ok(ev) = view.get(prefix, true, true) else {
            return Vec::new();
        };
        ev.node
            .nodes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| {
                let key = n.key.clone()?;
                let id = u64::from_str_radix(key.rsplit('/').next()?, 16).ok()?;
                Some((id, n))
            })
            .collect()
    };
    let members = ids(MEMBERS_PREFIX)
        .into_iter()
        .map(|(id, _)| {
            let attrs = view
                .get(
                    &format!("{MEMBERS_PREFIX}/{id:x}/raftAttributes"),
                    false,
                    false,
                )
                .ok()
                .and_then(|e| e.node.value)
                .and_then(|v| serde_json::from_str(&v).ok())
                .unwrap_or_default();
            (id, attrs)
        })
        .collect();
    let removed = ids(REMOVED_MEMBERS_PREFIX)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    (members, removed)
}

/// `applyConfChange`: validated against the members in the store
/// (`ValidateConfigurationChange`); a refused change writes nothing. Returns the events and
/// whether it was applied.
fn conf_change(store: &mut Store, cc: &ConfChange) -> Result<(Vec<Event>, bool), String> {
    let (members, removed) = members(store);
    let id = cc.node_id;
    if removed.contains(&id) {
        return Ok((Vec::new(), false));
    }
    let context = || -> Result<ConfContext, String> {
        serde_json::from_slice(&cc.context).map_err(|e| format!("conf change context: {e}"))
    };
    let urls_taken = |urls: &[String], except: Option<u64>| {
        members
            .iter()
            .any(|(m, a)| Some(*m) != except && a.peer_urls.iter().any(|u| urls.contains(u)))
    };
    let raft_key = format!("{MEMBERS_PREFIX}/{id:x}/raftAttributes");
    let permanent = |cmd: Command, store: &mut Store| -> Result<Vec<Event>, String> {
        store
            .apply(&cmd)
            .map(|e| vec![e])
            .map_err(|e| format!("the membership write etcd makes failed: {}", e.cause))
    };
    let evs = match cc.kind {
        ConfChangeKind::Add | ConfChangeKind::AddLearner => {
            let ctx = context()?;
            if ctx.id != id {
                return Err(format!(
                    "conf change for {id:x} carries member {:x}",
                    ctx.id
                ));
            }
            if ctx.is_promote {
                match members.get(&id) {
                    Some(a) if a.is_learner => {
                        let attrs = RaftAttributes {
                            peer_urls: a.peer_urls.clone(),
                            is_learner: false,
                        };
                        permanent(update(&raft_key, &attrs), store)?
                    }
                    _ => return Ok((Vec::new(), false)),
                }
            } else {
                let learners = members.values().filter(|a| a.is_learner).count();
                if members.contains_key(&id)
                    || urls_taken(&ctx.peer_urls, None)
                    || (ctx.is_learner && learners + 1 > LEARNERS_MAX)
                {
                    return Ok((Vec::new(), false));
                }
                let attrs = RaftAttributes {
                    peer_urls: ctx.peer_urls,
                    is_learner: ctx.is_learner,
                };
                let json = serde_json::to_string(&attrs).unwrap_or_default();
                permanent(
                    Command::Create {
                        key: raft_key,
                        dir: false,
                        value: json,
                        expire: None,
                        unique: false,
                        at: 0,
                    },
                    store,
                )?
            }
        }
        ConfChangeKind::Remove => {
            if !members.contains_key(&id) {
                return Ok((Vec::new(), false));
            }
            let mut evs = permanent(
                Command::Delete {
                    key: format!("{MEMBERS_PREFIX}/{id:x}"),
                    dir: true,
                    recursive: true,
                    at: 0,
                },
                store,
            )?;
            evs.extend(permanent(
                Command::Create {
                    key: format!("{REMOVED_MEMBERS_PREFIX}/{id:x}"),
                    dir: false,
                    value: String::new(),
                    expire: None,
                    unique: false,
                    at: 0,
                },
                store,
            )?);
            evs
        }
        ConfChangeKind::Update => {
            let Some(current) = members.get(&id) else {
                return Ok((Vec::new(), false));
            };
            let ctx = context()?;
            if urls_taken(&ctx.peer_urls, Some(id)) {
                return Ok((Vec::new(), false));
            }
            let attrs = RaftAttributes {
                peer_urls: ctx.peer_urls,
                is_learner: current.is_learner,
            };
            permanent(update(&raft_key, &attrs), store)?
        }
    };
    Ok((evs, true))
}

fn update(key: &str, attrs: &RaftAttributes) -> Command {
    Command::Update {
        key: key.to_string(),
        value: serde_json::to_string(attrs).unwrap_or_default(),
        expire: None,
        refresh: false,
        at: 0,
    }
}

/// An event as ringd's history keeps it. A key-space event gets its keys as the v2 API
/// shows them (`/1/a` -> `/a`). One of etcd's own (`/0`, `/2`) becomes a placeholder that no
/// watch ever sees (a refresh event: history scans skip those, and it is never delivered
/// live), keeping its index: ringd's history scan reads every index from `waitIndex` on, and
/// etcd's history starts at (and scans past) its own events too.
pub fn history_event(mut e: Event) -> Event {
    if under_keys(e.key()) {
        strip(&mut e.node);
        if let Some(p) = &mut e.prev_node {
            strip(p);
        }
        return e;
    }
    Event {
        action: e.action,
        node: NodeRepr {
            key: e.node.key.take(),
            dir: false,
            value: None,
            expiration: None,
            modified_index: e.node.modified_index,
            created_index: e.node.created_index,
            nodes: None,
        },
        prev_node: None,
        etcd_index: e.etcd_index,
        refresh: true,
        time: None,
    }
}

fn under_keys(key: &str) -> bool {
    key.strip_prefix(KEYS_PREFIX)
        .is_some_and(|rest| rest.starts_with('/'))
}

fn strip(n: &mut NodeRepr) {
    if let Some(k) = &mut n.key {
        if let Some(rest) = k.strip_prefix(KEYS_PREFIX) {
            *k = rest.to_string();
        }
    }
    for c in n.nodes.iter_mut().flatten() {
        strip(c);
    }
}

#[cfg(test)]
mod tests {
    use super::super::pb::encode;
    use super::*;
    use ringd_store::Action;

    const T0: i64 = 1_800_000_000_000_000_000;

    fn etcd_store() -> Store {
        let mut b = ringd_store::SnapshotBuilder::new(0, &Default::default(), 2);
        b.dir("0", 0, None, 0);
        b.dir("1", 0, None, 0);
        Store::restore(&b.finish()).unwrap()
    }

    fn v2(index: u64, r: Request) -> Entry {
        super::super::wal::write::entry(index, 2, &encode::request(&r))
    }

    fn put(path: &str, val: &str) -> Request {
        Request {
            method: "PUT".into(),
            path: path.into(),
            val: val.into(),
            ..Request::default()
        }
    }

    fn conf(index: u64, kind: u64, id: u64, context: &str) -> Entry {
        let mut cc = Vec::new();
        encode::field_varint(&mut cc, 1, 0);
        encode::field_varint(&mut cc, 2, kind);
        encode::field_varint(&mut cc, 3, id);
        encode::field_bytes(&mut cc, 4, context.as_bytes());
        let mut e = super::super::wal::write::entry(index, 1, &cc);
        e.set_entry_type(EntryType::EntryConfChange);
        e
    }

    fn value(s: &Store, key: &str) -> Option<(String, u64, u64)> {
        let n = s.view().get(key, false, false).ok()?.node;
        Some((n.value?, n.created_index, n.modified_index))
    }

    #[test]
    fn v2_requests_follow_apply_v2() {
        let mut s = etcd_store();
        let entries = vec![
            v2(1, put("/1/a", "1")), // set: 1
            v2(
                2,
                Request {
                    prev_exist: Some(false),
                    ..put("/1/a", "x")
                },
            ), // exists: no index
            v2(
                3,
                Request {
                    prev_exist: Some(true),
                    ..put("/1/a", "2")
                },
            ), // update: 2
            v2(
                4,
                Request {
                    prev_value: "2".into(),
                    ..put("/1/a", "3")
                },
            ), // cas: 3
            v2(
                5,
                Request {
                    prev_index: 1,
                    ..put("/1/a", "4")
                },
            ), // cas fails
            v2(
                6,
                Request {
                    method: "POST".into(),
                    ..put("/1/q", "in")
                },
            ), // create: 4
            v2(
                7,
                Request {
                    expiration: T0,
                    ..put("/1/t", "ttl")
                },
            ), // set: 5
            v2(
                8,
                Request {
                    method: "QGET".into(),
                    ..put("/1/a", "")
                },
            ), // nothing
            v2(
                9,
                Request {
                    method: "SYNC".into(),
                    time: T0,
                    ..Request::default()
                },
            ), // expire: 6
            v2(
                10,
                Request {
                    method: "DELETE".into(),
                    prev_value: "nope".into(),
                    ..put("/1/a", "")
                },
            ), // cad fails
            v2(
                11,
                Request {
                    method: "DELETE".into(),
                    prev_value: "3".into(),
                    ..put("/1/a", "")
                },
            ), // cad: 7
            super::super::wal::write::entry(12, 2, &[]), // leader no-op
            v2(13, put("/0/version", "3.4.0")), // cluster version: 8
            v2(14, put("/1/late", "uncommitted")),
        ];
        let (events, counts) = replay(&mut s, &entries, 13, 0).unwrap();
        assert_eq!(s.index().0, 8);
        assert_eq!(counts.v2_requests, 12);
        assert_eq!(counts.skipped, 1);
        assert!(value(&s, "/1/a").is_none());
        assert_eq!(
            value(&s, "/1/q/00000000000000000004"),
            Some(("in".into(), 4, 4))
        );
        assert!(
            value(&s, "/1/t").is_none(),
            "expired by the SYNC at its expiration"
        );
        assert!(value(&s, "/1/late").is_none(), "after the commit index");
        assert_eq!(value(&s, "/0/version"), Some(("3.4.0".into(), 8, 8)));
        let actions: Vec<(Action, String, u64)> = events
            .iter()
            .filter(|e| !e.refresh)
            .map(|e| (e.action, e.key().to_string(), e.etcd_index))
            .collect();
        assert_eq!(
            actions,
            vec![
                (Action::Set, "/a".into(), 1),
                (Action::Update, "/a".into(), 2),
                (Action::CompareAndSwap, "/a".into(), 3),
                (Action::Create, "/q/00000000000000000004".into(), 4),
                (Action::Set, "/t".into(), 5),
                (Action::Expire, "/t".into(), 6),
                (Action::CompareAndDelete, "/a".into(), 7),
            ],
            "key space events without the /1 prefix"
        );
        // The cluster's own write is a placeholder that keeps its index.
        let internal: Vec<u64> = events
            .iter()
            .filter(|e| e.refresh)
            .map(|e| e.etcd_index)
            .collect();
        assert_eq!(internal, vec![8]);
    }

    #[test]
    fn membership_writes_consume_indexes_as_in_etcd() {
        let mut s = etcd_store();
        let m1 = r#"{"id":171,"peerURLs":["http://a:2380"],"name":"a"}"#;
        let learner = r#"{"id":205,"peerURLs":["http://c:2380"],"isLearner":true}"#;
        let entries = vec![
            conf(1, 0, 0xab, m1), // create: 1
            v2(
                2,
                put(
                    "/0/members/ab/attributes",
                    r#"{"name":"a","clientURLs":["http://a:2379"]}"#,
                ),
            ), // 2
            conf(3, 0, 0xab, m1), // exists: refused
            conf(4, 3, 0xcd, learner), // create: 3
            conf(
                5,
                0,
                0xcd,
                &learner.replace("true", "true,\"isPromote\":true"),
            ), // promote: 4
            conf(6, 1, 0xcd, ""), // delete + create: 5, 6
            conf(7, 1, 0xcd, ""), // removed: refused
            conf(8, 2, 0xab, r#"{"id":171,"peerURLs":["http://b:2380"]}"#), // 7
            v2(9, put("/0/members/cd/attributes", r#"{"name":"gone"}"#)), // removed member: nothing
        ];
        let (events, counts) = replay(&mut s, &entries, 9, 0).unwrap();
        assert_eq!(s.index().0, 7);
        assert_eq!(counts.conf_changes, 5);
        assert!(
            events.iter().all(|e| e.refresh && e.node.value.is_none()),
            "the cluster's own events are placeholders no watch sees"
        );
        let indexes: Vec<u64> = events.iter().map(|e| e.etcd_index).collect();
        assert_eq!(indexes, (1..=7).collect::<Vec<_>>());
        assert_eq!(
            value(&s, "/0/members/ab/raftAttributes").map(|v| v.0),
            Some(r#"{"peerURLs":["http://b:2380"]}"#.into())
        );
        assert!(value(&s, "/0/removed_members/cd").is_some());
        assert!(s.view().get("/0/members/cd", false, false).is_err());
    }

    #[test]
    fn member_attribute_paths_match_as_etcds_unanchored_regexp() {
        assert_eq!(
            member_attributes_id("/0/members/ab12/attributes"),
            Some(0xab12)
        );
        assert_eq!(
            member_attributes_id("/1/0/members/ab/attributes"),
            Some(0xab)
        );
        assert_eq!(member_attributes_id("/0/members/ab/raftAttributes"), None);
        assert_eq!(member_attributes_id("/0/members/xyz/attributes"), None);
        assert_eq!(member_attributes_id("/1/a"), None);
    }

    #[test]
    fn undecodable_entries_are_refused_with_their_index() {
        let mut s = etcd_store();
        let bad = super::super::wal::write::entry(3, 1, &[0xff]);
        let e = replay(&mut s, &[bad], 3, 0).unwrap_err();
        assert!(e.starts_with("raft entry 3 (term 1)"), "{e}");
    }
}
