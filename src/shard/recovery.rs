//! Start-up recovery, on the main thread before any shard serves: load the newest valid
//! snapshot, open (and lock) the log after it, rebuild raft-rs's storage, and replay the
//! committed entries into the store. What it returns (`Recovered`) is what the raft shard
//! (`raft_shard.rs`) starts from.

use super::raft_shard::{drive, BatchStats, Token};
use super::unix_now_ns;
use crate::auth::AuthState;
use crate::limits::EVENT_HISTORY_CAPACITY;
use crate::members::Membership;
use crate::raft::{Bootstrap, Replica};
use crate::wal::{Wal, WAL_SEGMENT_BYTES};
use crate::watch::ring::EventRing;
use ringd_store::{Event, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the durable state lives: `<data-dir>/member/{wal,snap}` as in etcd.
pub struct Paths {
    pub wal: PathBuf,
    pub snap: PathBuf,
}

impl Paths {
    pub fn new(data_dir: &Path) -> Paths {
        Paths {
            wal: data_dir.join("member").join("wal"),
            snap: data_dir.join("member").join("snap"),
        }
    }
}

/// Everything recovered at start-up, ready for `raft_main`.
pub struct Recovered {
    pub replica: Replica<Token>,
    pub wal: Wal,
    /// The snapshot's event history, still encoded (`EventRing::restore` decodes only what
    /// it keeps as written); the log's replay continues it.
    pub history: crate::snapshot::Events,
    pub snapshot_index: u64,
    pub paths: Paths,
}

/// Loads the newest valid snapshot, opens (and locks) the log, replays it. Refuses to start
/// on corruption, a gap between snapshot and log, or a newer format.
/// How the replica is to be started.
pub struct Start {
    pub id: u64,
    pub membership: Membership,
    /// `--force-new-cluster`: start as the only voter, whatever the log says.
    pub force_new_cluster: bool,
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    pub request_timeout_ticks: u64,
}

/// The membership record: `<data-dir>/member/membership.json`, holding this member's id and
/// the membership as of a raft index. Written when a data dir is created and whenever the
/// applied membership changes, so a restart ignores `--initial-cluster*` as etcd does.
pub fn membership_path(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("membership.json")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct MembershipRecord {
    member_id: u64,
    membership: Membership,
}

/// Reads the membership record, if the data dir has one.
pub fn read_membership(path: &Path) -> Result<Option<(u64, Membership)>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let r: MembershipRecord = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is damaged: {e}", path.display()))?;
    Ok(Some((r.member_id, r.membership)))
}

/// Writes the membership record durably (temp file, fsync, rename, directory fsync).
pub fn write_membership(path: &Path, member_id: u64, m: &Membership) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let record = MembershipRecord {
        member_id,
        membership: m.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

pub fn recover(data_dir: &Path, start: Start) -> Result<Recovered, String> {
    let Start {
        id,
        mut membership,
        force_new_cluster,
        election_tick,
        heartbeat_tick,
        request_timeout_ticks,
    } = start;
    let paths = Paths::new(data_dir);
    std::fs::create_dir_all(&paths.snap)
        .map_err(|e| format!("cannot create {}: {e}", paths.snap.display()))?;
    let mut store = Store::new();
    let mut auth = AuthState::default();
    let mut history = crate::snapshot::Events::default();
    let (mut snap_index, mut snap_term) = (0, 0);
    let snaps =
        crate::snapshot::list(&paths.snap).map_err(|e| format!("cannot list snapshots: {e}"))?;
    for (_, path) in &snaps {
        let file = match crate::snapshot::read(path) {
            Ok(f) => f,
            Err(e) if e.contains("newer than") => return Err(e),
            Err(e) => {
                tracing::warn!("{e}; trying an older snapshot");
                continue;
            }
        };
        store =
            Store::restore(&file.store).map_err(|e| format!("snapshot {}: {e}", path.display()))?;
        history = file.events;
        auth = decode_auth(file.auth.as_deref())
            .map_err(|e| format!("snapshot {}: {e}", path.display()))?;
        snap_index = file.raft_index;
        snap_term = file.raft_term;
        // A snapshot from the leader can be newer than the membership record (a crash between
        // installing it and rewriting the record): the newer membership wins.
        if let Some(m) = file
            .membership
            .as_deref()
            .map(Membership::decode)
            .transpose()?
        {
            if m.applied_index > membership.applied_index && m.members.contains_key(&id) {
                membership = m;
            }
        }
        tracing::info!(snapshot = %path.display(), raft_index = snap_index, keys = store.node_count(), "loaded snapshot");
        break;
    }
    // The snapshot's file and store section are freed: gone from RSS before the replay.
    super::release_freed_memory();
    let (wal, rec) =
        Wal::open(&paths.wal, snap_index, segment_bytes()).map_err(|e| e.to_string())?;
    if let Some(t) = &rec.torn_tail {
        tracing::warn!("log: {t}");
    }
    if let Some(first) = rec.entries.first() {
        if first.index > snap_index + 1 {
            return Err(format!(
                "the log starts at raft index {} but the newest usable snapshot ends at {snap_index}: entries are missing, refusing to start",
                first.index
            ));
        }
    } else if rec.hard_state.commit > snap_index {
        return Err(format!(
            "the log is empty but the hard state says {} entries were committed after snapshot {snap_index}: refusing to start",
            rec.hard_state.commit - snap_index
        ));
    }
    let replayed = rec.entries.len();
    if force_new_cluster {
        // etcd's --force-new-cluster: this member alone, with its data; the membership
        // changes in its log are not replayed.
        let me = membership.members.get(&id).cloned();
        membership.members.retain(|m, _| *m == id);
        if me.is_none() {
            return Err("--force-new-cluster: this member is not in its own membership".into());
        }
        membership.applied_index = rec.entries.last().map_or(snap_index, |e| e.index);
        tracing::warn!("forcing a new cluster of this member alone (--force-new-cluster)");
    }
    let replica = Replica::new(Bootstrap {
        id,
        membership,
        store,
        auth,
        snapshot_index: snap_index,
        snapshot_term: snap_term,
        entries: rec.entries,
        hard_state: rec.hard_state,
        election_tick,
        heartbeat_tick,
        request_timeout_ticks,
        // Above every sequence number an earlier run of this member used.
        seq_start: unix_now_ns(),
        decode_snapshot: decode_transfer,
    })?;
    tracing::info!(
        snapshot_index = snap_index,
        log_entries = replayed,
        "recovered"
    );
    Ok(Recovered {
        replica,
        wal,
        history,
        snapshot_index: snap_index,
        paths,
    })
}

/// Decodes a snapshot sent by the leader (a snapshot file's bytes, CRC-checked).
fn decode_transfer(bytes: &[u8]) -> Result<crate::raft::SnapshotData, String> {
    let file = crate::snapshot::decode(bytes, Path::new("<from the leader>"))?;
    let store = Store::restore(&file.store).map_err(|e| format!("snapshot store: {e}"))?;
    // The newest events only, as many as a snapshot held before `--watch-history` (the
    // follower's history restarts there): the replica hands them over decoded, and a
    // leader's history of millions would cost this member gigabytes at once.
    let skip = file.events.len().saturating_sub(EVENT_HISTORY_CAPACITY);
    let events = file
        .events
        .iter()
        .skip(skip)
        .map(|b| Event::decode(b).map(Arc::new))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("snapshot events: {e}"))?;
    let membership = Membership::decode(
        file.membership
            .as_deref()
            .ok_or("a snapshot from the leader has no membership")?,
    )?;
    Ok(crate::raft::SnapshotData {
        store,
        events,
        membership,
        auth: decode_auth(file.auth.as_deref())?,
    })
}

/// The auth section of a snapshot (absent before format 3: auth was empty then).
fn decode_auth(bytes: Option<&[u8]>) -> Result<AuthState, String> {
    match bytes {
        None => Ok(AuthState::default()),
        Some(b) => serde_json::from_slice(b).map_err(|e| format!("auth section: {e}")),
    }
}

/// The size of new log segments: `WAL_SEGMENT_BYTES`, or `RINGD_WAL_SEGMENT_BYTES` (a
/// multiple of 4096, at least 64 KiB) so that tests can fill and remove segments quickly.
fn segment_bytes() -> u64 {
    std::env::var("RINGD_WAL_SEGMENT_BYTES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&b| b >= 64 << 10 && b.is_multiple_of(4096))
        .unwrap_or(WAL_SEGMENT_BYTES)
}

/// Start-up: elects this member (single voter) and replays the log into the store, handing
/// the replayed events to `ring` as they are applied (the ring bounds what is kept). Runs
/// before any shard serves.
pub fn replay(rec: &mut Recovered, ring: &EventRing) {
    let mut stats = BatchStats::default();
    let mut rtt = Default::default();
    let mut publish = |e: Arc<Event>| ring.publish(e);
    drive(
        &mut rec.replica,
        &mut rec.wal,
        None,
        &mut stats,
        &mut rtt,
        None,
        None,
        Some(&mut publish),
    );
    if let Err(e) = rec.replica.shrink_mem_log() {
        // Only memory is at stake: the log as it is stays correct.
        tracing::warn!("cannot shrink raft's in-memory log after replay: {e}");
    }
}
