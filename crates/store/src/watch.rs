//! Watch matching rules (etcd's watcher.notify, watcherHub.notifyWatchers, isHidden and
//! EventHistory.scan), as pure functions so live delivery and the history scan share them.

use crate::Event;

/// Does a live watcher on `watch_key` (recursive or not) receive `event`?
/// etcd: the watcher is reached on the event key's path prefixes, or, for a dir
/// delete/expire, on any path under the deleted dir; hidden descendants are skipped for
/// recursive watchers; refresh events are never delivered.
pub fn live_matches(watch_key: &str, recursive: bool, event: &Event) -> bool {
    let _ = (watch_key, recursive, event);
    todo!()
}

/// Does the history scan for `watch_key` return `event`? (EventHistory.scan's test,
/// refresh events skipped, hidden keys included.)
pub fn history_matches(watch_key: &str, recursive: bool, event: &Event) -> bool {
    let _ = (watch_key, recursive, event);
    todo!()
}
