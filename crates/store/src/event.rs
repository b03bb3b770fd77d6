//! v2 events and node representations, as etcd's `Event` and `NodeExtern`.

/// The `action` field of a v2 response or event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Get,
    Set,
    Create,
    Update,
    Delete,
    Expire,
    CompareAndSwap,
    CompareAndDelete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Get => "get",
            Action::Set => "set",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Expire => "expire",
            Action::CompareAndSwap => "compareAndSwap",
            Action::CompareAndDelete => "compareAndDelete",
        }
    }
}

/// A node as it appears in JSON (etcd's NodeExtern). Field presence follows etcd exactly:
/// - `key` is `None` only for the root node of `GET /v2/keys/` (then no indexes are shown
///   either);
/// - `value` is `Some` for files (even `""`), `None` for dirs and for the `node` of
///   delete/expire/compareAndDelete events;
/// - `expiration` (absolute unix nanoseconds) is `Some` only for TTL'd nodes; the `ttl` field
///   is computed from it when rendered;
/// - `nodes` is `None` for files, for empty dirs (also when every child is hidden) and for
///   child dirs in a non-recursive listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRepr {
    pub key: Option<String>,
    pub dir: bool,
    pub value: Option<String>,
    pub expiration: Option<u64>,
    pub modified_index: u64,
    pub created_index: u64,
    pub nodes: Option<Vec<NodeRepr>>,
}

/// One v2 event: the answer to a write, an expiry, or a get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub action: Action,
    pub node: NodeRepr,
    pub prev_node: Option<NodeRepr>,
    /// The store's index after this event (etcd's `EtcdIndex`); for writes it equals
    /// `node.modified_index`.
    pub etcd_index: u64,
    /// A TTL refresh: consumes an index, is kept in history but never delivered to watchers,
    /// and is never serialised.
    pub refresh: bool,
    /// When the event happened (unix nanoseconds; the command's `Command::time`). The `ttl`
    /// fields of `node` and `prev_node` are rendered against it wherever the event is served
    /// (the write's answer, live watchers, the history), as etcd renders an event once, when
    /// it happens. `None` (gets, unstamped commands) renders against the serving time.
    pub time: Option<u64>,
}

impl Event {
    /// The index at which this event happened (etcd's `Event.Index()`: node.modifiedIndex).
    pub fn index(&self) -> u64 {
        self.node.modified_index
    }

    /// The event's key (`node.key`).
    pub fn key(&self) -> &str {
        self.node.key.as_deref().unwrap_or("/")
    }
}
