//! The pure half of `ringd migrate --from-endpoint`: a copy of a live etcd's v2 tree built
//! from its API answers, then kept current with the events of a recursive watch, with etcd's
//! indexes. The sockets, the watch loop and the signals are in `shard::live`.
//!
//! The copy is held the way the offline migration holds etcd's store: the key space under
//! `/1`, so that an index the watch never shows (a write to a hidden key, etcd's own writes
//! under its `/0`, a TTL refresh: etcd notifies no recursive watcher of them) can be consumed
//! by a write under `/0`, and every later event lands at etcd's index. `finish` re-roots the
//! copy at `/1`; the placeholders stay in the history as events no watch sees, as the offline
//! migration keeps etcd's own events.

use super::apply::{history_event, KEYS_PREFIX};
use super::snap::go_time_ns;
use super::{MigrateError, Migrated, Summary};
use ringd_store::{Command, Event, SnapshotBuilder, Store, WriteStats};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where the indexes the watch never showed are consumed.
const UNSEEN_KEY: &str = "/0/unseen";
/// How many unseen indexes are listed by number in the summary (the rest are counted).
const UNSEEN_LISTED_MAX: usize = 20;

/// A node of the API's answer, as the copy's tree holds it before it becomes a store.
#[derive(Debug, Clone, PartialEq)]
struct Copied {
    created: u64,
    modified: u64,
    expire: Option<u64>,
    value: String,
    /// A dir's children by name; None for a file.
    children: Option<BTreeMap<String, Copied>>,
}

/// The copy of a live etcd.
pub struct LiveCopy {
    store: Store,
    events: Vec<Arc<Event>>,
    /// Indexes no event was seen for, in order.
    unseen: Vec<u64>,
    /// The hidden keys named with `--hidden-key`, as first copied (compared at the end).
    hidden: BTreeMap<String, Value>,
    /// The index of the listing the copy started from.
    copied_at: u64,
}

impl LiveCopy {
    /// A copy from `GET /v2/keys/?recursive=true&sorted=true` (its body and X-Etcd-Index)
    /// and the answers to `GET /v2/keys<key>?recursive=true&sorted=true` of the hidden keys
    /// (a 404 is `None`: the key does not exist).
    pub fn from_listing(
        root: &Value,
        index: u64,
        hidden: &[(String, Option<Value>)],
    ) -> Result<LiveCopy, String> {
        let mut tree = BTreeMap::new();
        for n in root["node"]["nodes"].as_array().into_iter().flatten() {
            insert(&mut tree, n)?;
        }
        let mut hidden_seen = BTreeMap::new();
        for (key, answer) in hidden {
            if let Some(a) = answer {
                insert(&mut tree, &a["node"])?;
                hidden_seen.insert(key.clone(), a["node"].clone());
            } else {
                hidden_seen.insert(key.clone(), Value::Null);
            }
        }
        let mut b = SnapshotBuilder::new(index, &WriteStats::default(), 2);
        b.dir("0", 0, None, 0);
        b.dir("1", 0, None, tree.len());
        let mut stack = vec![tree.iter()];
        while let Some(iter) = stack.last_mut() {
            let Some((name, n)) = iter.next() else {
                stack.pop();
                continue;
            };
            match &n.children {
                Some(ch) => {
                    b.dir(name, n.created, n.expire, ch.len());
                    stack.push(ch.iter());
                }
                None => b.file(name, n.created, n.modified, n.expire, &n.value),
            }
        }
        let store = Store::restore(&b.finish()).map_err(|e| format!("the copied tree: {e}"))?;
        Ok(LiveCopy {
            store,
            events: Vec::new(),
            unseen: Vec::new(),
            hidden: hidden_seen,
            copied_at: index,
        })
    }

    /// The index the copy is at.
    pub fn index(&self) -> u64 {
        self.store.index().0
    }

    /// Applies one event of the recursive watch (its JSON body), at its own index: the
    /// indexes before it that no event showed are consumed first. The result must be the
    /// node etcd reported, or the copy has diverged (an error: start again).
    pub fn apply(&mut self, ev: &Value, now: u64) -> Result<(), String> {
        let action = ev["action"].as_str().ok_or("an event without an action")?;
        let node = &ev["node"];
        let key = node["key"].as_str().ok_or("an event without a key")?;
        let modified = node["modifiedIndex"].as_u64().ok_or("no modifiedIndex")?;
        if modified <= self.index() {
            return Ok(()); // seen already (a long poll re-armed at an older index)
        }
        self.fill_to(modified - 1, now)?;
        let path = format!("{KEYS_PREFIX}{key}");
        let dir = node["dir"].as_bool().unwrap_or(false);
        let value = node["value"].as_str().unwrap_or("").to_string();
        let expire = match node["expiration"].as_str() {
            Some(t) => go_time_ns(t).map_err(|e| format!("{key}: {e}"))?,
            None => None,
        };
        let cmd = match action {
            "set" => Command::Set {
                key: path,
                dir,
                value,
                expire,
                refresh: false,
                at: now,
            },
            "create" => Command::Create {
                key: path,
                dir,
                value,
                expire,
                unique: false,
                at: now,
            },
            // A compareAndSwap changes what an update changes: the value and the TTL.
            "update" | "compareAndSwap" => Command::Update {
                key: path,
                value,
                expire,
                refresh: false,
                at: now,
            },
            "delete" | "expire" | "compareAndDelete" => Command::Delete {
                key: path,
                dir,
                recursive: dir,
                at: now,
            },
            other => return Err(format!("index {modified}: unknown action {other:?}")),
        };
        let e = self
            .store
            .apply(&cmd)
            .map_err(|e| format!("index {modified} ({action} {key}): {e}"))?;
        let created = node["createdIndex"].as_u64().unwrap_or(0);
        if e.index() != modified || e.node.created_index != created {
            return Err(format!(
                "index {modified} ({action} {key}): the copy made index {} created at {}, \
                 etcd {modified} created at {created}: the copy diverged",
                e.index(),
                e.node.created_index
            ));
        }
        self.events.push(Arc::new(history_event(e)));
        Ok(())
    }

    /// Consumes the indexes up to `index` that no event showed (see the module's comment).
    pub fn fill_to(&mut self, index: u64, now: u64) -> Result<(), String> {
        while self.index() < index {
            let fill = Command::Set {
                key: UNSEEN_KEY.to_string(),
                dir: false,
                value: String::new(),
                expire: None,
                refresh: false,
                at: now,
            };
            let e = self.store.apply(&fill).map_err(|e| e.to_string())?;
            self.unseen.push(e.index());
            self.events.push(Arc::new(history_event(e)));
        }
        Ok(())
    }

    /// The hidden keys that changed since they were copied (`now`: the same answers as for
    /// `from_listing`, read again at the end): etcd tells no recursive watcher of them.
    pub fn hidden_changed(&self, now: &[(String, Option<Value>)]) -> Vec<String> {
        now.iter()
            .filter(|(k, a)| {
                let seen = self.hidden.get(k).unwrap_or(&Value::Null);
                let current = a.as_ref().map_or(&Value::Null, |a| &a["node"]);
                seen != current
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The copy as a migration result: the key space as the root, the history.
    pub(super) fn finish(self) -> Result<Migrated, MigrateError> {
        let keys = self
            .store
            .reroot(KEYS_PREFIX)
            .map_err(|e| MigrateError::other(format!("the copy: {e}")))?;
        Ok(Migrated {
            summary: Summary {
                snapshot: None,
                snapshot_raft_index: 0,
                entries_applied: self.events.len(),
                v2_requests: (self.events.len() - self.unseen.len()) as u64,
                etcd_index: keys.index().0,
                keys: keys.node_count(),
                member_id: 0,
                cluster_id: 0,
            },
            store: keys,
            events: self.events,
        })
    }

    /// Writes the copy as the new one-member data dir `args` names.
    pub fn write(self, args: &super::MigrateArgs) -> Result<Summary, MigrateError> {
        super::write_member(args, self.finish()?)
    }

    /// What the copy could not see, for the closing lines.
    pub fn unseen_report(&self) -> String {
        if self.unseen.is_empty() {
            return format!(
                "copied at index {}, then followed every index to {}",
                self.copied_at,
                self.index()
            );
        }
        let listed: Vec<String> = self
            .unseen
            .iter()
            .take(UNSEEN_LISTED_MAX)
            .map(u64::to_string)
            .collect();
        format!(
            "copied at index {}, followed to {}; {} index(es) showed no event (writes to hidden \
             keys not named with --hidden-key, TTL refreshes, or etcd's own): {}{}",
            self.copied_at,
            self.index(),
            self.unseen.len(),
            listed.join(", "),
            if self.unseen.len() > UNSEEN_LISTED_MAX {
                ", ..."
            } else {
                ""
            }
        )
    }
}

/// Puts an API node (and its children) into the tree by its key.
fn insert(tree: &mut BTreeMap<String, Copied>, n: &Value) -> Result<(), String> {
    let key = n["key"].as_str().ok_or("a node without a key")?;
    let mut comps: Vec<&str> = key.split('/').filter(|c| !c.is_empty()).collect();
    let name = comps.pop().ok_or_else(|| format!("node {key:?}"))?;
    let mut at = tree;
    for c in comps {
        // A hidden key below a listed dir: its parent was copied with the listing.
        at = at
            .get_mut(c)
            .and_then(|p| p.children.as_mut())
            .ok_or_else(|| format!("{key}: its parent dir was not copied"))?;
    }
    at.insert(name.to_string(), copied(n)?);
    Ok(())
}

/// An API node (a dir with its listed children) as the tree holds it.
fn copied(n: &Value) -> Result<Copied, String> {
    let key = n["key"].as_str().ok_or("a node without a key")?;
    let expire = match n["expiration"].as_str() {
        Some(t) => go_time_ns(t).map_err(|e| format!("{key}: {e}"))?,
        None => None,
    };
    let index = |field: &str| {
        n[field]
            .as_u64()
            .ok_or_else(|| format!("{key}: no {field}"))
    };
    let (created, modified) = (index("createdIndex")?, index("modifiedIndex")?);
    if !n["dir"].as_bool().unwrap_or(false) {
        return Ok(Copied {
            created,
            modified,
            expire,
            value: n["value"].as_str().unwrap_or("").to_string(),
            children: None,
        });
    }
    let mut children = BTreeMap::new();
    for c in n["nodes"].as_array().into_iter().flatten() {
        let ckey = c["key"].as_str().ok_or("a node without a key")?;
        let name = ckey.rsplit('/').next().unwrap_or_default();
        children.insert(name.to_string(), copied(c)?);
    }
    Ok(Copied {
        created,
        modified,
        expire,
        value: String::new(),
        children: Some(children),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn listing() -> Value {
        json!({"action":"get","node":{"dir":true,"nodes":[
            {"key":"/a","value":"1","modifiedIndex":5,"createdIndex":4},
            {"key":"/d","dir":true,"modifiedIndex":6,"createdIndex":6,"nodes":[
                {"key":"/d/x","value":"y","expiration":"2100-01-01T00:00:00Z","ttl":1000,
                 "modifiedIndex":7,"createdIndex":7}]}]}})
    }

    #[test]
    fn a_listing_becomes_a_store_with_etcds_indexes_and_events_follow_at_theirs() {
        let hidden = [(
            "/_h".to_string(),
            Some(json!({"node":{"key":"/_h","value":"s",
            "modifiedIndex":8,"createdIndex":8}})),
        )];
        let mut c = LiveCopy::from_listing(&listing(), 9, &hidden).unwrap();
        assert_eq!(c.index(), 9);
        c.apply(
            &json!({"action":"update","node":{"key":"/a","value":"2","modifiedIndex":12,"createdIndex":4}}),
            0,
        )
        .unwrap();
        c.apply(
            &json!({"action":"delete","node":{"key":"/d","dir":true,"modifiedIndex":13,"createdIndex":6}}),
            0,
        )
        .unwrap();
        // Seen again after a re-armed poll: ignored.
        c.apply(
            &json!({"action":"set","node":{"key":"/a","value":"old","modifiedIndex":12,"createdIndex":12}}),
            0,
        )
        .unwrap();
        assert_eq!(c.unseen, vec![10, 11]);
        assert!(c.unseen_report().contains("10, 11"));
        let m = c.finish().unwrap();
        let view = m.store.view();
        assert_eq!(m.store.index().0, 13);
        let a = view.get("/a", false, false).unwrap().node;
        assert_eq!(
            (a.value.as_deref(), a.created_index, a.modified_index),
            (Some("2"), 4, 12)
        );
        assert!(view.get("/d", false, false).is_err());
        assert_eq!(
            view.get("/_h", false, false).unwrap().node.value.as_deref(),
            Some("s")
        );
        // The history: two placeholders no watch sees, then the two events, keys unprefixed.
        let keys: Vec<(bool, &str)> = m.events.iter().map(|e| (e.refresh, e.key())).collect();
        assert_eq!(
            keys,
            [
                (true, "/0/unseen"),
                (true, "/0/unseen"),
                (false, "/a"),
                (false, "/d")
            ]
        );
    }

    #[test]
    fn a_copy_that_does_not_match_etcds_event_is_refused() {
        let mut c = LiveCopy::from_listing(&listing(), 9, &[]).unwrap();
        // etcd says /a was created at 4 and kept it; a create here would make it 10.
        let e = c.apply(
            &json!({"action":"create","node":{"key":"/a","value":"2","modifiedIndex":10,"createdIndex":4}}),
            0,
        );
        assert!(e.is_err(), "{e:?}");
    }

    #[test]
    fn changed_hidden_keys_are_reported() {
        let first = [(
            "/_h".to_string(),
            Some(json!({"node":{"key":"/_h","value":"s",
            "modifiedIndex":8,"createdIndex":8}})),
        )];
        let c = LiveCopy::from_listing(&listing(), 9, &first).unwrap();
        assert!(c.hidden_changed(&first).is_empty());
        let later = [("/_h".to_string(), None)];
        assert_eq!(c.hidden_changed(&later), ["/_h"]);
    }
}
