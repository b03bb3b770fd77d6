//! Clusters of 3 and 5 real ringd processes on 127.0.0.x, with the fault layer of
//! `support/cluster.rs` (a proxy on every peer link that cuts, black-holes or delays it;
//! kill -9; SIGSTOP/SIGCONT). Every wait is bounded and awaits a state; no test sleeps and
//! hopes.

mod support;

#[path = "support/linearizability.rs"]
mod linearizability;

use linearizability::Op;

use std::time::Duration;
use support::cluster::{Cluster, Link, ELECTION_MS};

fn value(r: &support::Response) -> String {
    r.json()["node"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn others(n: usize, leader: usize) -> Vec<usize> {
    (0..n).filter(|i| *i != leader).collect()
}

#[test]
fn a_write_on_a_follower_is_read_with_quorum_on_another_and_wakes_a_follower_watch() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(&[0, 1, 2]);
    let f = others(3, leader);
    // A watch on one follower, then a write through the other follower.
    let mut watch = support::Stream::open(
        &c.members[f[0]].addr(),
        "GET",
        "/v2/keys/w?wait=true",
        &[],
        b"",
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("watch: {e}"));
    let r = c.members[f[1]].put("/v2/keys/w", "value=from-follower");
    assert_eq!(r.status, 201, "{}", r.text());
    let index = r.json()["node"]["modifiedIndex"].as_u64().unwrap_or(0);
    // The member that took the write answers after applying it: it reads its own write.
    assert_eq!(value(&c.members[f[1]].get("/v2/keys/w")), "from-follower");
    let q = c.members[f[0]].get("/v2/keys/w?quorum=true");
    assert_eq!(q.status, 200, "{}", q.text());
    assert_eq!(value(&q), "from-follower");
    watch.read_all().unwrap_or_else(|e| panic!("watch: {e}"));
    let w = watch.into_response().json();
    assert_eq!(w["action"], "set");
    assert_eq!(w["node"]["modifiedIndex"].as_u64(), Some(index));
    // A watch on a follower also wakes on a write through the leader.
    let mut watch = support::Stream::open(
        &c.members[f[1]].addr(),
        "GET",
        "/v2/keys/w?wait=true",
        &[],
        b"",
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("watch: {e}"));
    assert_eq!(
        c.members[leader]
            .put("/v2/keys/w", "value=from-leader")
            .status,
        200
    );
    watch.read_all().unwrap_or_else(|e| panic!("watch: {e}"));
    assert_eq!(value(&watch.into_response()), "from-leader");
    // Every member lists every member with its published client URLs, and agrees on stats.
    for m in &c.members {
        let v = m.get("/v2/members").json();
        let list = v["members"].as_array().cloned().unwrap_or_default();
        assert_eq!(list.len(), 3, "{v}");
        for x in &list {
            assert_eq!(x["clientURLs"].as_array().map(Vec::len), Some(1), "{v}");
        }
        let me = m.get("/v2/stats/self").json();
        let expect = if m.index == leader {
            "StateLeader"
        } else {
            "StateFollower"
        };
        assert_eq!(me["state"], expect, "{me}");
        let st = m.get("/v2/stats/leader");
        if m.index == leader {
            assert_eq!(st.status, 200);
            assert_eq!(st.json()["followers"].as_object().map(|o| o.len()), Some(2));
        } else {
            assert_eq!(st.status, 403, "{}", st.text());
            assert_eq!(st.json()["message"], "not current leader");
        }
    }
    let machines = c.members[0].get("/v2/machines").text();
    assert_eq!(machines.split(", ").count(), 3, "{machines}");
}

#[test]
fn kill_9_of_the_leader_elects_another_and_writes_go_on_and_it_catches_up() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(&[0, 1, 2]);
    for i in 0..20 {
        let r = c.members[i % 3].put(&format!("/v2/keys/k{i}"), &format!("value={i}"));
        assert!(r.status == 201 || r.status == 200, "{}", r.text());
    }
    c.kill(leader);
    let rest = others(3, leader);
    let new_leader = c.wait_for_leader(&rest);
    assert_ne!(new_leader, leader);
    for i in 20..40 {
        let r = c.members[rest[i % 2]].put(&format!("/v2/keys/k{i}"), &format!("value={i}"));
        assert!(r.status == 201 || r.status == 200, "{}", r.text());
    }
    // The killed leader comes back on its data dir (its flags ignored but for the data dir),
    // follows, and catches up with everything written while it was down.
    c.spawn(leader, &[]);
    c.wait_for_leader(&[0, 1, 2]);
    let want = c.members[new_leader].get("/v2/keys/k39?quorum=true");
    let index = want.header("x-etcd-index").unwrap_or_default().to_string();
    c.wait(
        "the restarted member to catch up",
        Duration::from_secs(20),
        || {
            let r = c.members[leader].get("/v2/keys/k39");
            (r.status == 200 && r.header("x-etcd-index") == Some(index.as_str())).then_some(())
        },
    );
    for i in 0..40 {
        assert_eq!(
            value(&c.members[leader].get(&format!("/v2/keys/k{i}"))),
            i.to_string()
        );
    }
}

#[test]
fn an_isolated_minority_times_out_while_the_majority_writes_and_all_converge_after_healing() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(&[0, 1, 2]);
    assert_eq!(c.members[0].put("/v2/keys/a", "value=before").status, 201);
    // Isolate the leader: the other two elect a new one, and the old one's requests time out.
    c.isolate(&[leader], Link::Cut);
    let rest = others(3, leader);
    let new_leader = c.wait_for_leader(&rest);
    let r = c.members[new_leader].put("/v2/keys/a", "value=majority");
    assert_eq!(r.status, 200, "{}", r.text());
    // The minority answers a plain GET from its stale store at once...
    assert_eq!(value(&c.members[leader].get("/v2/keys/a")), "before");
    // ...and writes and quorum reads with etcd's timeout error (5 s + 2 election timeouts).
    let budget = Duration::from_millis(5000 + 2 * ELECTION_MS + 10_000);
    for (method, path, form) in [
        ("PUT", "/v2/keys/a", "value=minority"),
        ("GET", "/v2/keys/a?quorum=true", ""),
    ] {
        let r = c.members[leader]
            .try_request(method, path, form, budget)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(r.status, 500, "{method} {path}: {}", r.text());
        let v = r.json();
        assert_eq!(v["errorCode"], 300);
        assert_eq!(v["message"], "Raft Internal Error");
        assert_eq!(v["cause"], "etcdserver: request timed out");
    }
    // CheckQuorum: the isolated leader stepped down; pre-vote: healing does not depose the
    // majority's leader.
    c.wait(
        "the isolated leader to step down",
        Duration::from_secs(10),
        || {
            let me = c.members[leader].get("/v2/stats/self").json();
            (me["state"] != "StateLeader").then_some(())
        },
    );
    c.heal();
    let after = c.wait_for_leader(&[0, 1, 2]);
    assert_eq!(after, new_leader, "a healed member deposed the leader");
    assert_eq!(
        c.members[new_leader]
            .put("/v2/keys/b", "value=healed")
            .status,
        201
    );
    let index = c.members[new_leader]
        .get("/v2/keys/b?quorum=true")
        .header("x-etcd-index")
        .unwrap_or_default()
        .to_string();
    let tree = |i: usize| {
        c.members[i]
            .get("/v2/keys/?recursive=true&sorted=true")
            .text()
    };
    c.wait("every member to converge", Duration::from_secs(20), || {
        let same_index = (0..3)
            .all(|i| c.members[i].get("/v2/keys/").header("x-etcd-index") == Some(index.as_str()));
        (same_index && tree(0) == tree(1) && tree(1) == tree(2)).then_some(())
    });
    // The minority's timed-out write never took effect.
    assert_eq!(value(&c.members[leader].get("/v2/keys/a")), "majority");
}

#[test]
fn a_paused_leader_is_replaced_and_rejoins_as_a_follower() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(&[0, 1, 2]);
    c.signal(leader, "-STOP");
    let rest = others(3, leader);
    let new_leader = c.wait_for_leader(&rest);
    assert_eq!(
        c.members[new_leader].put("/v2/keys/p", "value=1").status,
        201
    );
    c.signal(leader, "-CONT");
    let now = c.wait_for_leader(&[0, 1, 2]);
    assert_eq!(now, new_leader);
    c.wait(
        "the resumed member to catch up",
        Duration::from_secs(20),
        || (value(&c.members[leader].get("/v2/keys/p")) == "1").then_some(()),
    );
}

#[test]
fn five_members_survive_two_failures() {
    let mut c = Cluster::start(5, &[]);
    let leader = c.wait_for_leader(&[0, 1, 2, 3, 4]);
    let victim = (leader + 1) % 5;
    c.kill(leader);
    c.kill(victim);
    let rest: Vec<usize> = (0..5).filter(|i| *i != leader && *i != victim).collect();
    let new_leader = c.wait_for_leader(&rest);
    for (n, i) in rest.iter().enumerate() {
        let r = c.members[*i].put(&format!("/v2/keys/five{n}"), "value=x");
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let q = c.members[rest[0]].get("/v2/keys/five2?quorum=true");
    assert_eq!(value(&q), "x");
    assert!(rest.contains(&new_leader));
}

#[test]
fn a_member_of_another_cluster_is_refused_and_the_cluster_is_unaffected() {
    let c = Cluster::start(3, &[]);
    c.wait_for_leader(&[0, 1, 2]);
    // A stray member of another cluster (other token) whose initial cluster names m2: it
    // dials m2 with its own cluster id, and m2 refuses it and says why in its log.
    let dir = support::TempDir::new("ringd-stray");
    let port = |ip: &str| {
        std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("port: {e}"))
    };
    let (client, peer) = (port("127.0.0.9"), port("127.0.0.9"));
    let log = std::fs::File::create(dir.path().join("stray.log")).unwrap_or_else(|e| panic!("{e}"));
    let mut stray = std::process::Command::new(support::ringd_binary())
        .args(["--name", "stray", "--initial-cluster-token", "other-token"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.9:{client}"),
        ])
        .args([
            "--advertise-client-urls",
            &format!("http://127.0.0.9:{client}"),
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.9:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.9:{peer}"),
        ])
        .args([
            "--initial-cluster",
            &format!(
                "stray=http://127.0.0.9:{peer},m2={}",
                c.members[1].advertised_peer_url()
            ),
        ])
        .env("RINGD_FORCE_EPOLL", "1")
        .stdout(log)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    c.wait("m2 to log the mismatch", Duration::from_secs(20), || {
        c.members[1]
            .log_tail()
            .contains("request cluster ID mismatch")
            .then_some(())
    });
    let _ = stray.kill();
    let _ = stray.wait();
    assert_eq!(c.members[0].put("/v2/keys/ok", "value=1").status, 201);
    // The peer port answers etcd's /members and /version.
    let peer = format!("{}:{}", c.members[0].ip, c.members[0].peer_port);
    let m = support::get(&peer, "/members").json();
    assert_eq!(m.as_array().map(Vec::len), Some(3), "{m}");
    assert_eq!(
        support::get(&peer, "/version").json()["etcdcluster"],
        "3.4.0"
    );
}

/// Runs `ETCDCTL_API=2 etcdctl --endpoints URL ARGS` and returns (exit code, stdout+stderr).
fn etcdctl(url: &str, args: &[&str]) -> (i32, String) {
    let bin = support::etcdctl_binary()
        .expect("the cluster tests need etcdctl (apt-get install -y etcd-client)");
    let out = std::process::Command::new(bin)
        .env("ETCDCTL_API", "2")
        .env_remove("ETCDCTL_ENDPOINTS")
        .env_remove("ETCDCTL_ENDPOINT")
        .args(["--endpoints", url])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("etcdctl: {e}"));
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_member_added_with_etcdctl_catches_up_by_snapshot_then_is_removed_and_exits() {
    let mut c = Cluster::start(3, &["--snapshot-count", "50"]);
    c.wait_for_leader(&[0, 1, 2]);
    // Enough writes that the log the leader keeps no longer starts at the beginning.
    for i in 0..300 {
        let r = c.members[i % 3].put(&format!("/v2/keys/s{i}"), &format!("value={i}"));
        assert!(r.status == 201 || r.status == 200, "{}", r.text());
    }
    let new = c.add_slot();
    let peer = c.members[new].advertised_peer_url();
    // --strict-reconfig-check: the member taking the request must have been connected to
    // every voter for 5 s (etcd's HealthInterval); until then etcd and ringd refuse (500).
    let (code, out) = c.wait("member add to be accepted", Duration::from_secs(30), || {
        let (code, out) = etcdctl(&c.members[0].client_url(), &["member", "add", "m4", &peer]);
        (code == 0).then_some((code, out))
    });
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Added member named m4 with ID"), "{out}");
    assert!(
        out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{out}"
    );
    let ic = out
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in {out}"));
    // Until it starts, the new member is listed unstarted: no name, no client URLs.
    let (_, list) = etcdctl(&c.members[1].client_url(), &["member", "list"]);
    assert!(list.contains("[unstarted]"), "{list}");
    c.spawn_with(new, &ic, &["--initial-cluster-state", "existing"]);
    c.wait(
        "the new member to catch up",
        Duration::from_secs(30),
        || {
            let r = c.members[new]
                .try_request("GET", "/v2/keys/s299", "", Duration::from_secs(2))
                .ok()?;
            (r.status == 200 && value(&r) == "299").then_some(())
        },
    );
    assert!(
        c.members[new]
            .log_tail()
            .contains("installed a snapshot from the leader"),
        "{}",
        c.members[new].log_tail()
    );
    // It serves writes, and every member lists four started members.
    assert_eq!(c.members[new].put("/v2/keys/from4", "value=4").status, 201);
    c.wait("four published members", Duration::from_secs(20), || {
        let (_, list) = etcdctl(&c.members[2].client_url(), &["member", "list"]);
        (list.lines().filter(|l| l.contains("name=m")).count() == 4).then_some(())
    });
    let id = c.members[new].get("/v2/stats/self").json()["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // Removing it: the removed member exits with status 0 and says why.
    let (code, out) = etcdctl(&c.members[0].client_url(), &["member", "remove", &id]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("Removed member {id} from cluster")),
        "{out}"
    );
    assert_eq!(c.wait_exit(new, Duration::from_secs(20)), Some(0));
    assert!(c.members[new]
        .log_tail()
        .contains("the member has been permanently removed from the cluster"));
    let again = c.members[1]
        .try_request(
            "DELETE",
            &format!("/v2/members/{id}"),
            "",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.status, 410, "{}", again.text());
    assert_eq!(
        again.json()["message"],
        format!("Member permanently removed: {id}")
    );
    assert_eq!(c.members[2].put("/v2/keys/after", "value=3").status, 201);
}

#[test]
fn a_peer_url_update_moves_the_peers_to_the_new_url() {
    let c = Cluster::start(3, &[]);
    c.wait_for_leader(&[0, 1, 2]);
    let target = 2;
    let port = c.another_proxy(target);
    let url = format!("http://{}:{port}", c.members[target].ip);
    let body = format!("{{\"peerURLs\":[\"{url}\"]}}");
    let r = support::request_timeout(
        &c.members[0].addr(),
        "PUT",
        &format!("/v2/members/{}", c.members[target].id),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 204, "{}", r.text());
    for m in &c.members {
        c.wait("the new URL everywhere", Duration::from_secs(10), || {
            m.get("/v2/members").text().contains(&url).then_some(())
        });
    }
    // The other members redial the member at its new URL and keep replicating to it.
    assert_eq!(c.members[0].put("/v2/keys/moved", "value=1").status, 201);
    c.wait(
        "a peer to dial the new URL",
        Duration::from_secs(20),
        || {
            (0..2)
                .any(|i| c.members[i].log_tail().contains(&format!("url={url}")))
                .then_some(())
        },
    );
    c.wait(
        "the moved member to see the write",
        Duration::from_secs(10),
        || (value(&c.members[target].get("/v2/keys/moved")) == "1").then_some(()),
    );
}

#[test]
fn force_new_cluster_restarts_one_survivor_alone_with_its_data() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(&[0, 1, 2]);
    assert_eq!(
        c.members[leader].put("/v2/keys/kept", "value=1").status,
        201
    );
    // Disaster: the whole cluster is lost but one member's data dir. Everything it applied
    // is there once it restarts alone.
    let survivor = (leader + 1) % 3;
    c.wait(
        "the survivor to apply the write",
        Duration::from_secs(10),
        || (value(&c.members[survivor].get("/v2/keys/kept")) == "1").then_some(()),
    );
    for i in 0..3 {
        c.kill(i);
    }
    c.spawn(survivor, &["--force-new-cluster"]);
    c.wait_for_leader(&[survivor]);
    let m = c.members[survivor].get("/v2/members").json();
    assert_eq!(m["members"].as_array().map(Vec::len), Some(1), "{m}");
    assert_eq!(
        value(&c.members[survivor].get("/v2/keys/kept?quorum=true")),
        "1"
    );
    assert_eq!(
        c.members[survivor].put("/v2/keys/after", "value=2").status,
        201
    );
    // A later plain restart stays a one-member cluster.
    c.kill(survivor);
    c.spawn(survivor, &[]);
    c.wait_for_leader(&[survivor]);
    assert_eq!(value(&c.members[survivor].get("/v2/keys/after")), "2");
}

#[test]
fn a_member_down_while_the_log_was_compacted_catches_up_by_snapshot_and_survives_a_restart() {
    let mut c = Cluster::start(3, &["--snapshot-count", "50"]);
    let leader = c.wait_for_leader(&[0, 1, 2]);
    let down = (leader + 1) % 3;
    c.kill(down);
    let up = others(3, down);
    // The auth state travels in the snapshot too (the guest role still lets anyone write).
    let timeout = Duration::from_secs(20);
    let root = r#"{"user":"root","password":"pw"}"#;
    let r = c.members[up[0]].try_request("PUT", "/v2/auth/users/root", root, timeout);
    assert_eq!(r.map(|r| r.status), Ok(201));
    let r = c.members[up[1]].try_request("PUT", "/v2/auth/enable", "", timeout);
    assert_eq!(r.map(|r| r.status), Ok(200));
    for i in 0..300 {
        let r = c.members[up[i % 2]].put(&format!("/v2/keys/c{i}"), &format!("value={i}"));
        assert!(r.status == 201 || r.status == 200, "{}", r.text());
    }
    c.spawn(down, &["--snapshot-count", "50"]);
    c.wait("the member to catch up", Duration::from_secs(30), || {
        let r = c.members[down]
            .try_request("GET", "/v2/keys/c299", "", Duration::from_secs(2))
            .ok()?;
        (value(&r) == "299").then_some(())
    });
    assert!(c.members[down]
        .log_tail()
        .contains("installed a snapshot from the leader"));
    assert_eq!(
        c.members[down].get("/v2/auth/enable").text(),
        "{\"enabled\":true}\n"
    );
    assert_eq!(c.members[down].get("/v2/auth/users").status, 401);
    // What it installed is durable: after a kill -9 it restarts from its own snapshot.
    c.kill(down);
    c.isolate(&[down], Link::Cut);
    c.spawn(down, &["--snapshot-count", "50"]);
    c.wait(
        "the isolated member to serve",
        Duration::from_secs(30),
        || {
            let r = c.members[down]
                .try_request("GET", "/v2/keys/c150", "", Duration::from_secs(2))
                .ok()?;
            (r.status == 200 && value(&r) == "150").then_some(())
        },
    );
    assert_eq!(c.members[down].get("/v2/auth/users").status, 401);
    c.heal();
    let r = c.members[down].put("/v2/keys/back", "value=1");
    assert_eq!(r.status, 201, "{}\n{}", r.text(), c.logs());
}

#[test]
fn removing_the_leader_stops_it_and_the_rest_elect_and_go_on() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(&[0, 1, 2]);
    let id = c.members[leader].id.clone();
    let other = (leader + 1) % 3;
    // Refused (500) until the member has been connected to the others for 5 s, as etcd.
    let r = c.wait(
        "the removal to be accepted",
        Duration::from_secs(30),
        || {
            let path = format!("/v2/members/{id}");
            let r = c.members[other]
                .try_request("DELETE", &path, "", Duration::from_secs(20))
                .ok()?;
            (r.status != 500).then_some(r)
        },
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(c.wait_exit(leader, Duration::from_secs(20)), Some(0));
    let rest = others(3, leader);
    c.wait_for_leader(&rest);
    assert_eq!(
        c.members[other].put("/v2/keys/after", "value=1").status,
        201
    );
    let m = c.members[other].get("/v2/members").json();
    assert_eq!(m["members"].as_array().map(Vec::len), Some(2), "{m}");
}

#[test]
fn ttl_keys_expire_on_every_member_and_after_a_leader_change() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(&[0, 1, 2]);
    let f = others(3, leader);
    // A TTL key written through a follower; a watch on the other follower sees it expire.
    let r = c.members[f[0]].put("/v2/keys/t1", "value=x&ttl=1");
    assert_eq!(r.status, 201, "{}", r.text());
    let index = r.json()["node"]["modifiedIndex"].as_u64().unwrap_or(0);
    let mut watch = support::Stream::open(
        &c.members[f[1]].addr(),
        "GET",
        &format!("/v2/keys/t1?wait=true&waitIndex={}", index + 1),
        &[],
        b"",
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("watch: {e}"));
    watch.read_all().unwrap_or_else(|e| panic!("watch: {e}"));
    assert_eq!(watch.into_response().json()["action"], "expire");
    for m in &c.members {
        c.wait(
            "the key to be gone everywhere",
            Duration::from_secs(10),
            || (m.get("/v2/keys/t1").status == 404).then_some(()),
        );
    }
    // The leader that scheduled nothing new dies; the next one expires what is due.
    assert_eq!(
        c.members[leader].put("/v2/keys/t2", "value=y&ttl=2").status,
        201
    );
    c.kill(leader);
    let next = c.wait_for_leader(&f);
    c.wait(
        "the new leader to expire the key",
        Duration::from_secs(15),
        || (c.members[next].get("/v2/keys/t2").status == 404).then_some(()),
    );
}

/// One client of the linearizability test: `ops` requests on random members and keys,
/// recorded for the checker. A request that fails or times out has an unknown outcome.
fn client(addrs: Vec<String>, id: usize, ops: usize, start: std::time::Instant) -> Vec<Op> {
    use linearizability::Kind;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (id as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let now = || start.elapsed().as_micros() as u64;
    let mut seen: Vec<String> = Vec::new();
    let mut history = Vec::new();
    for n in 0..ops {
        let addr = &addrs[(next() % addrs.len() as u64) as usize];
        let key = format!("lin{}", next() % 3);
        let path = format!("/v2/keys/{key}");
        let value = format!("c{id}-{n}");
        let call = now();
        let mut expected = String::new();
        let (method, target, form, op) = match next() % 3 {
            0 => ("PUT", path.clone(), format!("value={value}"), 0),
            1 => {
                // Expect a value this client saw lately (or one never written).
                expected = seen
                    .iter()
                    .rev()
                    .nth((next() % 4) as usize)
                    .cloned()
                    .unwrap_or_else(|| "none".to_string());
                let form = format!("value={value}&prevValue={expected}");
                ("PUT", path.clone(), form, 1)
            }
            _ => ("GET", format!("{path}?quorum=true"), String::new(), 2),
        };
        let headers: &[(&str, &str)] = if form.is_empty() {
            &[]
        } else {
            &[support::FORM]
        };
        let r = support::request_timeout(
            addr,
            method,
            &target,
            headers,
            form.as_bytes(),
            Duration::from_secs(15),
        );
        let ret = now();
        let answered = r.as_ref().ok().filter(|r| r.status != 500);
        let kind = match op {
            0 => Kind::Write {
                value: value.clone(),
            },
            1 => Kind::Cas {
                expected: expected.clone(),
                new: value.clone(),
                ok: answered.map(|r| r.status == 200),
            },
            _ => Kind::Read {
                value: answered.filter(|r| r.status == 200).map(|r| {
                    r.json()["node"]["value"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                }),
            },
        };
        let known = match (&kind, answered) {
            (_, None) => false,
            (Kind::Write { .. }, Some(r)) => r.status == 200 || r.status == 201,
            (Kind::Cas { .. }, Some(r)) => matches!(r.status, 200 | 404 | 412),
            (_, Some(r)) => matches!(r.status, 200 | 404),
        };
        if let Some(r) = answered.filter(|r| r.status == 200 || r.status == 201) {
            if let Some(v) = r.json()["node"]["value"].as_str() {
                seen.push(v.to_string());
            }
        }
        history.push(Op {
            key,
            call,
            ret: known.then_some(ret),
            kind,
        });
    }
    history
}

#[test]
fn a_history_recorded_under_faults_is_linearizable_and_a_corrupted_one_is_not() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(&[0, 1, 2]);
    let start = std::time::Instant::now();
    let addrs: Vec<String> = c.members.iter().map(|m| m.addr()).collect();
    let clients: Vec<_> = (0..6)
        .map(|id| {
            let addrs = addrs.clone();
            std::thread::spawn(move || client(addrs, id, 60, start))
        })
        .collect();
    // Faults while the clients run: the leader isolated (its requests time out, a new leader
    // takes over), healed; then a follower killed with kill -9 and restarted.
    c.isolate(&[leader], Link::Cut);
    let rest = others(3, leader);
    let next = c.wait_for_leader(&rest);
    c.heal();
    let victim = others(3, next)[0];
    c.kill(victim);
    c.wait_for_leader(&others(3, victim));
    c.spawn(victim, &[]);
    let mut history = Vec::new();
    for t in clients {
        history.extend(t.join().unwrap_or_else(|_| panic!("client panicked")));
    }
    let answered = history.iter().filter(|o| o.ret.is_some()).count();
    assert!(
        answered > history.len() / 2,
        "{answered} of {}",
        history.len()
    );
    if let Err(e) = linearizability::check(&history) {
        panic!("not linearizable:\n{e}");
    }
    // The checker is not vacuous on this history: a read that returns a value nobody wrote,
    // or one of its successful reads moved after a later write of another value, fails.
    let mut corrupt = history.clone();
    let i = corrupt
        .iter()
        .position(|o| {
            o.ret.is_some() && matches!(o.kind, linearizability::Kind::Read { value: Some(_) })
        })
        .unwrap_or_else(|| panic!("no successful read in the history"));
    corrupt[i].kind = linearizability::Kind::Read {
        value: Some("never-written".to_string()),
    };
    assert!(linearizability::check(&corrupt).is_err());
}

#[test]
fn a_black_holed_leader_is_replaced_and_delayed_links_only_slow_writes() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(&[0, 1, 2]);
    // Delay every link by a few heartbeats' worth: writes are slower, nothing fails.
    for a in 0..3 {
        for b in 0..3 {
            if a != b {
                c.set_link(a, b, Link::Delay(Duration::from_millis(20)));
            }
        }
    }
    for i in 0..5 {
        let r = c.members[i % 3].put(&format!("/v2/keys/slow{i}"), "value=1");
        assert_eq!(r.status, 201, "{}", r.text());
    }
    c.heal();
    // The leader's links swallow every byte both ways (connections stay open, nothing
    // arrives): the others elect a new leader; the old one steps down (CheckQuorum).
    c.isolate(&[leader], Link::BlackHole);
    let rest = others(3, leader);
    let next = c.wait_for_leader(&rest);
    assert_ne!(next, leader);
    assert_eq!(c.members[next].put("/v2/keys/bh", "value=1").status, 201);
    c.wait(
        "the black-holed leader to step down",
        Duration::from_secs(10),
        || {
            let me = c.members[leader].get("/v2/stats/self").json();
            (me["state"] != "StateLeader").then_some(())
        },
    );
    c.heal();
    c.wait(
        "the old leader to catch up",
        Duration::from_secs(20),
        || {
            let r = c.members[leader]
                .try_request("GET", "/v2/keys/bh", "", Duration::from_secs(2))
                .ok()?;
            (value(&r) == "1").then_some(())
        },
    );
}
