//! Watch matching rules (etcd's watcher.notify, watcherHub.notifyWatchers, isHidden and
//! EventHistory.scan), as pure functions so live delivery and the history scan share them.
//!
//! Watch keys are compared as cleaned paths ("/a/b", root "/"); callers normally pass them
//! cleaned already, and anything else is cleaned here (without allocating in the clean case).

use crate::event::Action;
use crate::tree;
use crate::{Event, EventHead};

/// Is `event` a delete or expire of a dir? Those reach watchers below the removed dir.
fn is_dir_removal(event: &Event) -> bool {
    matches!(event.action, Action::Delete | Action::Expire)
        && event.prev_node.as_ref().is_some_and(|p| p.dir)
}

/// etcd's `isHidden(watchPath, keyPath)`: is the event key hidden *relative to* the watch
/// path, i.e. does the part of the key below the watch path contain a `_` component?
/// A watch path deeper than the key (a dir delete reaching a descendant watcher) is never
/// hidden.
fn is_hidden(watch_path: &str, key_path: &str) -> bool {
    if watch_path.len() > key_path.len() {
        return false;
    }
    // `key_path[len(watchPath):]`, then Go's path.Clean("/" + rest), then "/_" in it. Event
    // keys are clean, so that is "some '/'-separated component of rest starts with '_'".
    let rest = key_path.get(watch_path.len()..).unwrap_or("");
    rest.split('/').any(tree::is_hidden_name)
}

/// Is `watch_key` one of the paths etcd's `notify` visits for an event on `key`: "/", every
/// proper prefix ending before a '/', and the key itself?
fn is_notified_path(watch_key: &str, key: &str) -> bool {
    if watch_key == "/" {
        return true;
    }
    match key.strip_prefix(watch_key) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Does a live watcher on `watch_key` (recursive or not) receive `event`?
/// etcd: the watcher is reached on the event key's path prefixes, or, for a dir
/// delete/expire, on any path under the deleted dir; hidden descendants are skipped for
/// recursive watchers; refresh events are never delivered.
///
/// Approximation: for a dir delete/expire etcd calls `notifyWatchers(e, path, true)` only for
/// the paths of nodes that existed in the removed subtree. We match *any* path under the dir
/// (a watcher on a not-yet-existing `/d/x/y` also fires when `/d` goes away). The event says
/// the whole subtree is gone, so the extra wake-up is harmless, and it saves walking the
/// subtree for every watcher.
pub fn live_matches(watch_key: &str, recursive: bool, event: &Event) -> bool {
    if event.refresh {
        return false;
    }
    let watch_key = tree::clean(watch_key);
    let watch_key = watch_key.as_ref();
    let key = event.key();
    if is_notified_path(watch_key, key) {
        // watcherHub.notifyWatchers + watcher.notify with deleted=false.
        let original_path = watch_key == key;
        // Kept in etcd's two-part shape: notifyWatchers' hidden test, then watcher.notify.
        let visible = original_path || !is_hidden(watch_key, key);
        let interested = recursive || original_path;
        if visible && interested {
            return true;
        }
    }
    // The delete callback (deleted=true): any watcher at or below the removed dir fires,
    // recursive or not; isHidden is false for a watch path deeper than the key.
    if is_dir_removal(event) {
        if let Some(rest) = watch_key.strip_prefix(key) {
            if rest.is_empty() || rest.starts_with('/') || key == "/" {
                return true;
            }
        }
    }
    false
}

/// Does the history scan for `watch_key` return `event`? (EventHistory.scan's test,
/// refresh events skipped, hidden keys included.)
pub fn history_matches(watch_key: &str, recursive: bool, event: &Event) -> bool {
    HistoryWatch::new(watch_key, recursive).matches(event)
}

/// `history_matches` on an encoded event's head (`Event::decode_head`): the same rule, for
/// the history kept encoded.
pub fn history_matches_head(watch_key: &str, recursive: bool, head: &EventHead<'_>) -> bool {
    HistoryWatch::new(watch_key, recursive).matches_head(head)
}

/// A watch as the history scan tests events against it: the key cleaned once for a scan of
/// many events (`history_matches` and `history_matches_head` for one).
pub struct HistoryWatch<'a> {
    key: std::borrow::Cow<'a, str>,
    recursive: bool,
}

impl<'a> HistoryWatch<'a> {
    pub fn new(watch_key: &'a str, recursive: bool) -> HistoryWatch<'a> {
        HistoryWatch {
            key: tree::clean(watch_key),
            recursive,
        }
    }

    pub fn matches(&self, event: &Event) -> bool {
        let removed_dir = is_dir_removal(event).then(|| {
            event
                .prev_node
                .as_ref()
                .and_then(|p| p.key.as_deref())
                .unwrap_or("/")
                .as_bytes()
        });
        self.test(event.refresh, event.key().as_bytes(), removed_dir)
    }

    pub fn matches_head(&self, head: &EventHead<'_>) -> bool {
        let removed_dir = match head.prev {
            Some((true, key)) if matches!(head.action, Action::Delete | Action::Expire) => {
                Some(key.unwrap_or(b"/"))
            }
            _ => None,
        };
        self.test(head.refresh, head.key.unwrap_or(b"/"), removed_dir)
    }

    /// The rule on an event's parts (keys as bytes: an archived event's key is not checked
    /// for UTF-8 on every scan); `removed_dir` is the removed dir's key for a dir
    /// delete/expire.
    fn test(&self, refresh: bool, key: &[u8], removed_dir: Option<&[u8]>) -> bool {
        if refresh {
            return false;
        }
        let watch_key = self.key.as_bytes();
        let mut ok = key == watch_key;
        if self.recursive && !ok {
            // etcd adds a trailing slash so "/d" does not match "/dd"; the root stays "/".
            ok = match key.strip_prefix(watch_key) {
                Some(rest) => watch_key.ends_with(b"/") || rest.starts_with(b"/"),
                None => false,
            };
        }
        if let (false, Some(prev_key)) = (ok, removed_dir) {
            // Verbatim etcd: a *plain* prefix test, so deleting "/d" also matches a watch on
            // "/dd" in the history scan (unlike live delivery).
            ok = watch_key.starts_with(prev_key);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::NodeRepr;
    use crate::{Command, Store};

    fn node(key: &str, dir: bool) -> NodeRepr {
        NodeRepr {
            key: Some(key.into()),
            dir,
            value: None,
            expiration: None,
            modified_index: 5,
            created_index: 5,
            nodes: None,
        }
    }

    fn ev(action: Action, key: &str, prev_dir: Option<bool>) -> Event {
        Event {
            action,
            node: node(key, prev_dir.unwrap_or(false)),
            prev_node: prev_dir.map(|d| node(key, d)),
            etcd_index: 5,
            refresh: false,
            time: None,
        }
    }

    fn set_ev(key: &str) -> Event {
        ev(Action::Set, key, None)
    }

    #[test]
    fn live_exact_and_recursive() {
        let e = set_ev("/d/x");
        assert!(live_matches("/d/x", false, &e));
        assert!(live_matches("/d/x", true, &e));
        assert!(live_matches("/d", true, &e));
        assert!(live_matches("/", true, &e));
        assert!(!live_matches("/d", false, &e));
        assert!(!live_matches("/", false, &e));
        assert!(!live_matches("/d/x/y", true, &e));
        assert!(!live_matches("/d/xx", true, &e));
        // A recursive watch on /d sees /d itself but not /dd.
        assert!(live_matches("/d", true, &set_ev("/d")));
        assert!(!live_matches("/d", true, &set_ev("/dd")));
        assert!(!live_matches("/d", true, &set_ev("/dd/x")));
        // Uncleaned watch keys are cleaned.
        assert!(live_matches("/d/", true, &e));
        assert!(live_matches("", true, &e));
    }

    #[test]
    fn live_refresh_never_matches() {
        let mut e = set_ev("/k");
        e.refresh = true;
        assert!(!live_matches("/k", false, &e));
        assert!(!live_matches("/", true, &e));
        assert!(!history_matches("/k", false, &e));
        assert!(!history_matches("/", true, &e));
    }

    #[test]
    fn live_hidden_rules() {
        // Recursive watchers above a hidden component do not see it.
        assert!(!live_matches("/d", true, &set_ev("/d/_h")));
        assert!(!live_matches("/d", true, &set_ev("/d/_h/y")));
        assert!(!live_matches("/", true, &set_ev("/_h")));
        assert!(!live_matches("/", true, &set_ev("/d/_h/y")));
        // But a watch on the hidden key itself works, and below it nothing is hidden.
        assert!(live_matches("/d/_h", false, &set_ev("/d/_h")));
        assert!(live_matches("/d/_h", true, &set_ev("/d/_h/y")));
        assert!(live_matches("/_h", true, &set_ev("/_h/y")));
        // Underscores not at a component start are not hidden.
        assert!(live_matches("/d", true, &set_ev("/d/a_b")));
        // The history scan includes hidden keys.
        assert!(history_matches("/d", true, &set_ev("/d/_h")));
        assert!(history_matches("/", true, &set_ev("/_h/y")));
    }

    #[test]
    fn live_dir_removal_reaches_descendants() {
        for action in [Action::Delete, Action::Expire] {
            let e = ev(action, "/d", Some(true));
            assert!(live_matches("/d", false, &e));
            assert!(live_matches("/d/x", false, &e));
            assert!(live_matches("/d/x/y", true, &e));
            assert!(live_matches("/d/_h", false, &e));
            assert!(live_matches("/", true, &e));
            assert!(!live_matches("/dd", false, &e));
            assert!(!live_matches("/dd", true, &e));
            assert!(!live_matches("/", false, &e));
        }
        // A file delete reaches only the usual paths.
        let e = ev(Action::Delete, "/f", Some(false));
        assert!(live_matches("/f", false, &e));
        assert!(!live_matches("/f/x", false, &e));
        // A compareAndDelete is never a dir removal.
        let e = ev(Action::CompareAndDelete, "/f", Some(false));
        assert!(live_matches("/f", false, &e));
        assert!(!live_matches("/f/x", false, &e));
        // A hidden dir removal reaches its own descendants but not recursive parents.
        let e = ev(Action::Delete, "/d/_h", Some(true));
        assert!(live_matches("/d/_h/x", false, &e));
        assert!(!live_matches("/d", true, &e));
    }

    #[test]
    fn history_rules() {
        let e = set_ev("/d/x");
        assert!(history_matches("/d/x", false, &e));
        assert!(history_matches("/d", true, &e));
        assert!(history_matches("/", true, &e));
        assert!(!history_matches("/d", false, &e));
        assert!(!history_matches("/", false, &e));
        assert!(!history_matches("/d", true, &set_ev("/dd")));
        assert!(history_matches("/d", true, &set_ev("/d")));
        // Dir removal: a plain prefix test on the watch key, as etcd does (so /dd matches).
        let e = ev(Action::Expire, "/d", Some(true));
        assert!(history_matches("/d/x", false, &e));
        assert!(history_matches("/d", false, &e));
        assert!(history_matches("/dd", false, &e));
        assert!(!history_matches("/", false, &e));
        assert!(history_matches("/", true, &e));
        let e = ev(Action::Delete, "/f", Some(false));
        assert!(!history_matches("/f/x", false, &e));
        assert!(!history_matches("/ff", false, &e));
        let e = ev(Action::Set, "/d", Some(true));
        assert!(
            !history_matches("/d/x", false, &e),
            "only delete/expire reach descendants"
        );
    }

    #[test]
    fn matches_real_store_events() {
        let mut s = Store::new();
        let set = |k: &str| Command::Set {
            key: k.into(),
            dir: false,
            value: "v".into(),
            expire: None,
            refresh: false,
            at: 0,
        };
        s.apply(&set("/d/x/y")).ok();
        let e = s.apply(&Command::Delete {
            key: "/d".into(),
            dir: true,
            recursive: true,
            at: 0,
        });
        let e = e.expect("delete");
        assert!(live_matches("/d/x/y", false, &e));
        assert!(history_matches("/d/x/y", false, &e));
        let e = s.apply(&Command::Create {
            key: "/".into(),
            dir: false,
            value: "q".into(),
            expire: None,
            unique: true,
            at: 0,
        });
        let e = e.expect("create");
        assert!(live_matches("/", true, &e));
        assert!(!live_matches("/", false, &e));
    }

    #[test]
    fn history_rule_on_encoded_heads_agrees_with_the_rule_on_events() {
        let mut events = Vec::new();
        for action in [
            Action::Set,
            Action::Create,
            Action::Update,
            Action::Delete,
            Action::Expire,
            Action::CompareAndSwap,
            Action::CompareAndDelete,
        ] {
            for key in ["/d", "/d/x", "/dd", "/d/_h", "/f", "/"] {
                for prev_dir in [None, Some(false), Some(true)] {
                    events.push(ev(action, key, prev_dir));
                }
            }
        }
        let mut refresh = set_ev("/d/x");
        refresh.refresh = true;
        events.push(refresh);
        // Values (skipped unread), expirations, a time and children are stepped over.
        let mut full = ev(Action::Delete, "/d", Some(true));
        full.node.value = Some("v".repeat(300));
        full.node.expiration = Some(1 << 60);
        full.time = Some(7);
        full.node.nodes = Some(vec![node("/d/a", false), node("/d/b", true)]);
        if let Some(p) = full.prev_node.as_mut() {
            p.value = Some("p".into());
        }
        events.push(full);
        let mut rootless = set_ev("/x");
        rootless.node.key = None;
        events.push(rootless);
        let watches = [
            "/", "/d", "/d/x", "/dd", "/d/_h", "/f", "/f/x", "/ff", "", "/d/",
        ];
        for e in &events {
            let mut b = Vec::new();
            e.encode(&mut b);
            let head = Event::decode_head(&b).expect("head");
            assert_eq!(head.index, e.index());
            assert_eq!(head.key, e.node.key.as_deref().map(str::as_bytes));
            for w in watches {
                for recursive in [false, true] {
                    assert_eq!(
                        history_matches_head(w, recursive, &head),
                        history_matches(w, recursive, e),
                        "{w} recursive={recursive} {e:?}"
                    );
                }
            }
        }
        // A head never reads past its input.
        let mut b = Vec::new();
        events[0].encode(&mut b);
        for cut in 0..b.len() {
            assert!(Event::decode_head(&b[..cut]).is_err(), "cut at {cut}");
        }
    }
}
