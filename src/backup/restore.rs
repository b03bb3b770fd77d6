//! `ringd snapshot restore FILE --data-dir D --name N --initial-cluster ...`: a new member's
//! data dir from a snapshot file, as etcdctl's `snapshot restore`: the state (store, event
//! history, auth) comes from the file, the membership from the flags (a new cluster, with new
//! member and cluster ids), and the data dir starts at the file's raft index and term with no
//! log. Run once per member of the new cluster, each with its own `--name`, `--data-dir` and
//! `--initial-advertise-peer-urls` and the same `--initial-cluster` and token: every member
//! then starts from the same snapshot point with the same voters (recovery builds raft's
//! ConfState from the membership), so they form the cluster and serve the file's tree and
//! `X-Etcd-Index`.

use super::{load, store_of, RestoreArgs};
use crate::members::Membership;
use crate::migrate::{check_target, write_data_dir, NewDataDir};
use std::path::PathBuf;

pub(super) fn run(a: &RestoreArgs) -> Result<String, String> {
    let data_dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", a.name)));
    // The flags first: a mistake there costs no read of a large file.
    let peer_urls = crate::config::parse_urls(&a.initial_advertise_peer_urls)?;
    let initial =
        crate::config::initial_cluster(&a.name, a.initial_cluster.as_deref(), &peer_urls)?;
    check_target(&data_dir).map_err(|e| e.to_string())?;
    let loaded = load(&a.file)?;
    let file = &loaded.file;
    // Every section must decode before anything is written: a member must never start from
    // a snapshot it cannot load.
    let store = store_of(&loaded)?;
    let mut events = Vec::with_capacity(file.events.len());
    for e in file.events.iter() {
        ringd_store::Event::decode(e).map_err(|err| {
            format!(
                "snapshot {} is damaged: an event does not decode: {err}",
                a.file.display()
            )
        })?;
        events.push(e.to_vec());
    }
    let auth = match file.auth.as_deref() {
        Some(bytes) => {
            serde_json::from_slice::<crate::auth::AuthState>(bytes).map_err(|e| {
                format!(
                    "snapshot {} has a damaged auth section: {e}",
                    a.file.display()
                )
            })?;
            bytes.to_vec()
        }
        // Older files had no auth: auth off, no users.
        None => serde_json::to_vec(&crate::auth::AuthState::default())
            .map_err(|e| format!("auth state: {e}"))?,
    };
    let membership = Membership {
        applied_index: file.raft_index,
        ..Membership::from_initial_cluster(&initial, &a.initial_cluster_token)
    };
    let member_id = membership
        .members
        .values()
        .find(|m| m.name == a.name)
        .map(|m| m.id)
        .ok_or_else(|| format!("{} is not in --initial-cluster", a.name))?;
    write_data_dir(
        &data_dir,
        &NewDataDir {
            raft_index: file.raft_index,
            raft_term: file.raft_term,
            store: &file.store,
            events: &events,
            auth: &auth,
            member_id,
            membership: &membership,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(format!(
        "restored {} (raft index {}, etcd index {}, {} keys) into {}: member {member_id:x} ({}) of a new cluster {:x} of {} members",
        a.file.display(),
        file.raft_index,
        store.index().0,
        store.node_count(),
        data_dir.display(),
        a.name,
        membership.cluster_id,
        membership.members.len()
    ))
}
