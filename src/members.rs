//! Member and cluster identity, computed as etcd computes it so that ids match etcd's for
//! the same flags: member id = first 8 bytes of SHA-1(sorted peer URLs joined + cluster
//! token); cluster id = first 8 bytes of SHA-1(sorted member ids, big endian).
//!
//! Identity only: members are rendered by `http::render` and member requests decoded by
//! `http::members`.

/// One cluster member as /v2/members shows it. A member added at runtime has no name and no
/// client URLs until it starts and publishes them through raft (etcd shows it `[unstarted]`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub id: u64,
    pub name: String,
    #[serde(rename = "peerURLs")]
    pub peer_urls: Vec<String>,
    #[serde(rename = "clientURLs")]
    pub client_urls: Vec<String>,
}

/// A membership change asked through `/v2/members`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    Add { peer_urls: Vec<String> },
    Remove { id: u64 },
    Update { id: u64, peer_urls: Vec<String> },
}

/// A members API failure in etcd's `{"message": ...}` shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberError {
    pub status: u16,
    pub message: String,
}

impl MemberError {
    pub fn new(status: u16, message: impl Into<String>) -> MemberError {
        MemberError {
            status,
            message: message.into(),
        }
    }
}

/// The outcome of a membership change: the member added (for POST's 201 body), nothing (204),
/// or the error.
pub type MemberOutcome = Result<Option<Member>, MemberError>;

/// Majority of `n` voters.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// The cluster's membership as the applied log defines it: the members, the ids removed for
/// good (a removed id answers 410 and is never re-added), and the raft index it reflects.
/// Pure data: changed only by applying committed entries, so every replica holds the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Membership {
    pub cluster_id: u64,
    pub members: std::collections::BTreeMap<u64, Member>,
    pub removed: std::collections::BTreeSet<u64>,
    /// The raft index of the last entry applied to this membership (0: the initial one).
    pub applied_index: u64,
    /// `--initial-cluster-token`: part of the id of every member added at runtime, as in
    /// etcd.
    #[serde(default)]
    pub token: String,
}

impl Membership {
    /// The initial membership of a new cluster (`--initial-cluster`).
    pub fn initial(members: Vec<Member>, token: &str) -> Membership {
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        Membership {
            cluster_id: cluster_id(&ids),
            members: members.into_iter().map(|m| (m.id, m)).collect(),
            removed: Default::default(),
            applied_index: 0,
            token: token.to_string(),
        }
    }

    /// The membership of a new cluster from `--initial-cluster` (name, peer URLs), each
    /// member's id computed from its peer URLs and the token, as etcd does.
    pub fn from_initial_cluster(initial: &[(String, Vec<String>)], token: &str) -> Membership {
        let members = initial
            .iter()
            .map(|(name, peers)| Member {
                id: member_id(peers, token),
                // etcd shows members by name only once they published it; a new cluster's
                // members are named in --initial-cluster, which every member agrees on.
                name: name.clone(),
                peer_urls: peers.clone(),
                client_urls: vec![],
            })
            .collect();
        Membership::initial(members, token)
    }

    /// Members that have published their client URLs (etcd's "started" members).
    pub fn started(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| !m.client_urls.is_empty())
    }

    /// etcd's strict reconfiguration check for an add (`IsReadyToAddVotingMember`): the
    /// started members must still be a quorum of the grown cluster.
    pub fn ready_to_add(&self) -> bool {
        let started = self.started().count();
        // Growing a one-member cluster (after --force-new-cluster) is always allowed, as in
        // etcd: the new member cannot have started before it is added.
        (started == 1 && self.members.len() == 1) || started >= quorum(self.members.len() + 1)
    }

    /// ... and for a removal (`IsReadyToRemoveVotingMember`): the started members left must be
    /// a quorum of the shrunk cluster.
    pub fn ready_to_remove(&self, id: u64) -> bool {
        let started = self.started().filter(|m| m.id != id).count();
        started >= quorum(self.members.len().saturating_sub(1))
    }

    /// Whether any member other than `except` has one of `urls` as a peer URL.
    pub fn peer_url_taken(&self, urls: &[String], except: Option<u64>) -> bool {
        self.members
            .values()
            .any(|m| Some(m.id) != except && m.peer_urls.iter().any(|u| urls.contains(u)))
    }

    pub fn voters(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain maps of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Membership, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("membership: {e}"))
    }
}

pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    member_id_at(peer_urls, token, None)
}

/// etcd's NewMember: a member added at runtime also hashes the time of the add (unix
/// seconds), so re-adding the same URLs later gives a new id.
pub fn member_id_at(peer_urls: &[String], token: &str, unix_secs: Option<u64>) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut data = urls.concat().into_bytes();
    data.extend_from_slice(token.as_bytes());
    if let Some(t) = unix_secs {
        data.extend_from_slice(t.to_string().as_bytes());
    }
    first_u64(&sha1_smol::Sha1::from(data).digest().bytes())
}

pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    first_u64(&sha1_smol::Sha1::from(bytes).digest().bytes())
}

fn first_u64(hash: &[u8; 20]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_etcd() {
        // Observed on etcd 3.4: --initial-cluster default=http://127.0.0.1:12380 and the
        // default token give member ddd67b312462fd7b in cluster a7ef944b95711739.
        let id = member_id(&["http://127.0.0.1:12380".to_string()], "etcd-cluster");
        assert_eq!(format!("{id:x}"), "ddd67b312462fd7b");
        assert_eq!(format!("{:x}", cluster_id(&[id])), "a7ef944b95711739");
    }
}
