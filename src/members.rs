//! Member and cluster identity, computed as etcd computes it so that ids match etcd's for
//! the same flags: member id = first 8 bytes of SHA-1(sorted peer URLs joined + cluster
//! token); cluster id = first 8 bytes of SHA-1(sorted member ids, big endian).
//!
//! Identity only: members are rendered by `http::render` and member requests decoded by
//! `http::members`.

/// One cluster member as /v2/members shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut data = urls.concat().into_bytes();
    data.extend_from_slice(token.as_bytes());
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
