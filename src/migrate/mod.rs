//! `ringd migrate --from-etcd-data-dir DIR --data-dir NEW`: reads an etcd 3.4/3.5 member's
//! data dir (its newest snap file, then the WAL after it), replays the committed entries
//! with etcd's semantics, and writes a one-member ringd data dir serving the same v2 tree
//! with the same indexes and TTL expirations. Offline: etcd must be stopped.
//!
//! - `snap`: the snap file and the v2 store JSON inside it;
//! - `wal`: WAL segments, frames, the CRC chain;
//! - `pb`: the etcd protobuf messages raft-rs's `eraftpb` lacks;
//! - `apply`: the replay (v2 requests, conf changes, the cluster's `/0` writes).
//!
//! docs/etcd-data-dir.md has the formats. Any damage or unknown format is refused with the
//! file and offset, and nothing is written: the result is built in a temp dir beside `NEW`
//! and renamed into place only when complete and durable.

mod apply;
pub mod live;
mod pb;
mod snap;
mod wal;

use crate::members::{cluster_id, member_id, Member, Membership};
use ringd_store::{Event, SnapshotBuilder, Store};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The raft index and term of the snapshot a migrated data dir starts from: a new
/// cluster's history begins with it (etcd's raft indexes mean nothing to ringd's log).
pub const MIGRATED_RAFT_INDEX: u64 = 1;
pub const MIGRATED_RAFT_TERM: u64 = 1;

/// `ringd migrate`'s flags. No ETCD_* variables: the environment of an etcd service names
/// etcd's own data dir, which must never be taken for the new one.
#[derive(clap::Args, Debug, Clone)]
pub struct MigrateArgs {
    /// The data dir of a stopped etcd 3.4/3.5 member (the one holding `member/`).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "from_endpoint",
        conflicts_with = "from_endpoint"
    )]
    pub from_etcd_data_dir: Option<PathBuf>,

    /// A running etcd's client URL (http): copy its tree through the v2 API, then follow it
    /// with a recursive watch until SIGTERM/Ctrl-C, which writes NEW (live migration).
    #[arg(long, value_name = "URL")]
    pub from_endpoint: Option<String>,

    /// With --from-endpoint: a hidden key (`_` name) to copy too, by its full path
    /// (repeatable). The API lists no hidden key, and etcd tells no recursive watcher of them.
    #[arg(long, value_name = "KEY")]
    pub hidden_key: Vec<String>,

    /// The ringd data dir to create (must not exist, or be empty).
    #[arg(long, value_name = "NEW")]
    pub data_dir: PathBuf,

    /// The new member's name (use the --name ringd will run with).
    #[arg(long, default_value = "default")]
    pub name: String,

    /// The new member's peer URLs (comma-separated; its id is computed from them and the
    /// token, as for a new member).
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,

    /// The new cluster's token.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
}

/// Why a migration was refused: the file (and the byte offset in it) where it went wrong.
#[derive(Debug)]
pub struct MigrateError {
    pub file: Option<PathBuf>,
    pub offset: Option<u64>,
    pub what: String,
}

impl MigrateError {
    pub fn at(file: &Path, offset: u64, what: impl Into<String>) -> MigrateError {
        MigrateError {
            file: Some(file.to_path_buf()),
            offset: Some(offset),
            what: what.into(),
        }
    }

    pub fn file(file: impl AsRef<Path>, what: impl Into<String>) -> MigrateError {
        MigrateError {
            file: Some(file.as_ref().to_path_buf()),
            offset: None,
            what: what.into(),
        }
    }

    pub fn io(file: &Path, e: std::io::Error) -> MigrateError {
        MigrateError::file(file, e.to_string())
    }

    pub fn other(what: impl Into<String>) -> MigrateError {
        MigrateError {
            file: None,
            offset: None,
            what: what.into(),
        }
    }
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.offset) {
            (Some(p), Some(o)) => write!(f, "{}: offset {o}: {}", p.display(), self.what),
            (Some(p), None) => write!(f, "{}: {}", p.display(), self.what),
            _ => write!(f, "{}", self.what),
        }
    }
}

impl std::error::Error for MigrateError {}

/// What a migration read and wrote, for the closing line.
#[derive(Debug)]
pub struct Summary {
    pub snapshot: Option<PathBuf>,
    pub snapshot_raft_index: u64,
    pub entries_applied: usize,
    pub v2_requests: u64,
    pub etcd_index: u64,
    pub keys: u64,
    pub member_id: u64,
    pub cluster_id: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snap = self
            .snapshot
            .as_ref()
            .map_or("no snapshot".to_string(), |p| p.display().to_string());
        write!(
            f,
            "read {snap} (raft index {}) and {} committed WAL entries after it ({} v2 requests); \
             v2 index {}, {} nodes; new member {:x} in cluster {:x}",
            self.snapshot_raft_index,
            self.entries_applied,
            self.v2_requests,
            self.etcd_index,
            self.keys,
            self.member_id,
            self.cluster_id
        )
    }
}

/// The migrated state, before anything is written.
struct Migrated {
    store: Store,
    events: Vec<Arc<Event>>,
    summary: Summary,
}

/// Runs a migration: reads and replays everything first, then writes `NEW` atomically.
pub fn run(args: &MigrateArgs) -> Result<Summary, MigrateError> {
    let Some(from) = &args.from_etcd_data_dir else {
        return Err(MigrateError::other(
            "--from-endpoint is a live migration (shard::live)",
        ));
    };
    check(args)?;
    write_member(args, read(from)?)
}

/// What can be checked before anything is read: the target and the flags.
pub fn check(args: &MigrateArgs) -> Result<(), MigrateError> {
    if !args.hidden_key.is_empty() && args.from_endpoint.is_none() {
        return Err(MigrateError::other(
            "--hidden-key goes with --from-endpoint (a data dir has every hidden key)",
        ));
    }
    check_target(&args.data_dir)?;
    crate::config::parse_urls(&args.initial_advertise_peer_urls)
        .map(drop)
        .map_err(MigrateError::other)
}

/// Writes the migrated state as a new one-member data dir (`--name`,
/// `--initial-advertise-peer-urls`, `--initial-cluster-token`).
fn write_member(args: &MigrateArgs, mut migrated: Migrated) -> Result<Summary, MigrateError> {
    check_target(&args.data_dir)?;
    let peer_urls = crate::config::parse_urls(&args.initial_advertise_peer_urls)
        .map_err(MigrateError::other)?;
    let id = member_id(&peer_urls, &args.initial_cluster_token);
    let membership = Membership {
        applied_index: MIGRATED_RAFT_INDEX,
        ..Membership::initial(
            vec![Member {
                id,
                name: args.name.clone(),
                peer_urls,
                client_urls: Vec::new(),
            }],
            &args.initial_cluster_token,
        )
    };
    migrated.summary.member_id = id;
    migrated.summary.cluster_id = cluster_id(&[id]);
    write(&args.data_dir, &migrated, id, &membership)?;
    Ok(migrated.summary)
}

/// `NEW` must not exist, or be an empty dir.
pub fn check_target(new: &Path) -> Result<(), MigrateError> {
    match std::fs::read_dir(new) {
        Ok(mut rd) => match rd.next() {
            None => Ok(()),
            Some(_) => Err(MigrateError::file(
                new,
                "exists and is not empty: a new data dir is written, never into an existing one",
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(MigrateError::io(new, e)),
    }
}

/// The store etcd starts with before any snapshot: `/0` and `/1` at index 0.
fn empty_etcd_store() -> Result<Store, MigrateError> {
    let mut b = SnapshotBuilder::new(0, &Default::default(), 2);
    b.dir("0", 0, None, 0);
    b.dir("1", 0, None, 0);
    Store::restore(&b.finish()).map_err(|e| MigrateError::other(format!("empty store: {e}")))
}

/// Reads etcd's data dir and replays it into the migrated store.
fn read(etcd_dir: &Path) -> Result<Migrated, MigrateError> {
    let member = etcd_dir.join("member");
    if !member.join("wal").is_dir() {
        return Err(MigrateError::file(
            etcd_dir,
            "not an etcd data dir (no member/wal)",
        ));
    }
    let snapshot = snap::read_newest(&member.join("snap"))?;
    let (snap_path, snap_index, snap_term, mut store, history) = match snapshot {
        Some(s) => (Some(s.path), s.raft_index, s.raft_term, s.store, s.history),
        None => (None, 0, 0, empty_etcd_store()?, Vec::new()),
    };
    let wal_dir = member.join("wal");
    let wal = wal::read(&wal_dir, snap_index, snap_term)?;
    let commit = wal.hard_state.commit;
    let last = wal.entries.last().map_or(snap_index, |e| e.index);
    if commit > last {
        return Err(MigrateError::file(
            &wal_dir,
            format!("the hard state says raft index {commit} is committed, but the WAL ends at {last}: entries are missing"),
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let (replayed, counts) = apply::replay(&mut store, &wal.entries, commit, now)
        .map_err(|e| MigrateError::file(&wal_dir, e))?;
    // etcd's history after a restart: the snapshot's, then the replayed entries' events.
    let mut events: Vec<Arc<Event>> = history
        .into_iter()
        .map(apply::history_event)
        .map(Arc::new)
        .collect();
    events.extend(replayed);
    check_auth(&store)?;
    let keys = store.reroot(apply::KEYS_PREFIX).map_err(|e| {
        MigrateError::other(format!("etcd's key space {}: {e}", apply::KEYS_PREFIX))
    })?;
    let summary = Summary {
        snapshot: snap_path,
        snapshot_raft_index: snap_index,
        entries_applied: wal.entries.iter().filter(|e| e.index <= commit).count(),
        v2_requests: counts.v2_requests,
        etcd_index: keys.index().0,
        keys: keys.node_count(),
        member_id: 0,
        cluster_id: 0,
    };
    Ok(Migrated {
        store: keys,
        events,
        summary,
    })
}

/// etcd's v2 auth lives in `/2`. While it is enabled, a migration without it would open
/// every key to every client: refused. Users and roles of a disabled auth are left out.
fn check_auth(store: &Store) -> Result<(), MigrateError> {
    let view = store.view();
    let enabled = view
        .get("/2/enabled", false, false)
        .ok()
        .and_then(|e| e.node.value);
    if enabled.as_deref() == Some("true") {
        return Err(MigrateError::other(
            "etcd's v2 auth is enabled (/2/enabled): its users and roles are not migrated; disable it in etcd (ETCDCTL_API=2 etcdctl auth disable, or DELETE /v2/auth/enable as root), migrate again, then set auth up in ringd",
        ));
    }
    if view.get("/2/users", false, false).is_ok() || view.get("/2/roles", false, false).is_ok() {
        tracing::warn!("etcd's v2 auth users and roles (auth disabled) are not migrated");
    }
    Ok(())
}

/// Writes the migrated data dir: a snapshot at `MIGRATED_RAFT_INDEX` with the store and the
/// last 1000 events, a one-member membership.
fn write(new: &Path, m: &Migrated, id: u64, membership: &Membership) -> Result<(), MigrateError> {
    let mut store = Vec::new();
    m.store.snapshot(&mut store);
    let keep = m
        .events
        .len()
        .saturating_sub(crate::limits::EVENT_HISTORY_CAPACITY);
    let events: Vec<Vec<u8>> = m.events[keep..]
        .iter()
        .map(|e| {
            let mut b = Vec::new();
            e.encode(&mut b);
            b
        })
        .collect();
    let auth = serde_json::to_vec(&crate::auth::AuthState::default())
        .map_err(|e| MigrateError::other(format!("auth state: {e}")))?;
    let dir = NewDataDir {
        raft_index: MIGRATED_RAFT_INDEX,
        raft_term: MIGRATED_RAFT_TERM,
        store: &store,
        events: &events,
        auth: &auth,
        member_id: id,
        membership,
    };
    write_data_dir(new, &dir)
}

/// A new member's data dir (`ringd migrate`, `ringd snapshot restore`): one snapshot, no log,
/// and the membership record. Every member of a new cluster made from the same state gets the
/// same snapshot point (`raft_index`, `raft_term`) and the same membership, so recovery gives
/// them the same raft log start and the same voters.
pub struct NewDataDir<'a> {
    pub raft_index: u64,
    pub raft_term: u64,
    /// The store's snapshot encoding.
    pub store: &'a [u8],
    /// The event history, each event encoded, oldest first.
    pub events: &'a [Vec<u8>],
    /// The auth state (JSON).
    pub auth: &'a [u8],
    /// This member's id in `membership`.
    pub member_id: u64,
    /// The new cluster's membership (its `applied_index` is `raft_index`).
    pub membership: &'a Membership,
}

/// Writes a new data dir: built in a temp dir beside `new`, fsynced, renamed into place
/// (`new` must not exist, or be empty: `check_target`).
pub fn write_data_dir(new: &Path, d: &NewDataDir) -> Result<(), MigrateError> {
    let parent = match new.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = new
        .file_name()
        .ok_or_else(|| MigrateError::file(new, "not a directory name"))?;
    let tmp = parent.join(format!(
        ".{}.migrate-tmp-{}",
        base.to_string_lossy(),
        std::process::id()
    ));
    let result = write_into(&tmp, d).and_then(|()| {
        // An empty NEW is replaced (rename cannot replace a directory).
        if new.exists() {
            std::fs::remove_dir(new).map_err(|e| MigrateError::io(new, e))?;
        }
        std::fs::rename(&tmp, new).map_err(|e| MigrateError::io(new, e))?;
        std::fs::File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| MigrateError::io(&parent, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn write_into(dir: &Path, d: &NewDataDir) -> Result<(), MigrateError> {
    let paths = crate::shard::recovery::Paths::new(dir);
    std::fs::create_dir_all(&paths.wal).map_err(|e| MigrateError::io(&paths.wal, e))?;
    crate::snapshot::write(
        &paths.snap,
        d.raft_index,
        d.raft_term,
        d.store,
        d.events,
        &d.membership.encode(),
        d.auth,
    )
    .map_err(|e| MigrateError::io(&paths.snap, e))?;
    let record = crate::shard::recovery::membership_path(dir);
    crate::shard::recovery::write_membership(&record, d.member_id, d.membership)
        .map_err(|e| MigrateError::io(&record, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| MigrateError::io(dir, e))
}
