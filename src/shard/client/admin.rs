//! Every route but the keys API: members, stats, metrics, version, health, machines, auth,
//! redirects, OPTIONS and the 404/405 answers, each as etcd answers it.

use super::keys::{error_response, propose};
use super::ShardCtx;
use crate::http::members::parse_member_request;
use crate::http::parse::Method;
use crate::http::render;
use crate::http::response::{json, redirect, respond};
use crate::http::route::{Route, StatsKind};
use crate::members::{MemberChange, MemberError};
use crate::shard::Proposal;
use std::rc::Rc;
use std::sync::atomic::Ordering;

/// Answers `r` into `out`, or returns the members change it asks for (answered by
/// `member_change`, which must wait for raft).
pub(super) fn serve_other(
    ctx: &Rc<ShardCtx>,
    r: Route,
    head: bool,
    out: &mut Vec<u8>,
) -> Option<MemberChange> {
    let shared = &ctx.shared;
    let cid = format!("{:x}", shared.cluster_id);
    match r {
        Route::Keys(Err(e)) => error_response(out, head, &cid, &e),
        Route::Keys(Ok(_)) => {}
        Route::Redirect {
            location,
            html_body,
        } => redirect(out, head, &location, html_body),
        Route::Options => respond(out, true, 200, None, &[], b""),
        Route::MethodNotAllowed { allow, cluster_id } => {
            let mut extra: Vec<(&str, &str)> = Vec::new();
            if let Some(a) = allow {
                extra.push(("Allow", a));
            }
            if cluster_id {
                extra.push(("X-Etcd-Cluster-Id", &cid));
            }
            extra.push(("X-Content-Type-Options", "nosniff"));
            respond(
                out,
                head,
                405,
                Some("text/plain; charset=utf-8"),
                &extra,
                b"Method Not Allowed\n",
            );
        }
        Route::NotFound => respond(
            out,
            head,
            404,
            Some("text/plain; charset=utf-8"),
            &[("X-Content-Type-Options", "nosniff")],
            b"404 page not found\n",
        ),
        Route::Malformed => {}
        Route::Version => json(
            out,
            head,
            200,
            &[],
            br#"{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}"#,
        ),
        // etcd 3.4: unhealthy (503) while the member knows no leader.
        Route::Health if shared.published.load().leader == 0 => respond(
            out,
            head,
            503,
            Some("text/plain; charset=utf-8"),
            &[],
            br#"{"health":"false"}"#,
        ),
        Route::Health => respond(
            out,
            head,
            200,
            Some("text/plain; charset=utf-8"),
            &[],
            br#"{"health":"true"}"#,
        ),
        Route::Machines => {
            let membership = shared.membership.load();
            let urls: Vec<&str> = membership
                .members
                .values()
                .flat_map(|m| m.client_urls.iter().map(String::as_str))
                .collect();
            respond(
                out,
                head,
                200,
                Some("text/plain; charset=utf-8"),
                &[],
                urls.join(", ").as_bytes(),
            );
        }
        Route::Members {
            method,
            rest,
            content_type,
            body,
        } => {
            return members(
                ctx,
                &method,
                &rest,
                content_type.as_deref(),
                &body,
                head,
                out,
            )
        }
        Route::Stats(kind) => stats(ctx, kind, head, out),
        Route::Metrics => {
            let body = metrics(ctx);
            respond(
                out,
                head,
                200,
                Some("text/plain; version=0.0.4"),
                &[],
                body.as_bytes(),
            );
        }
        // Answered by `auth::auth_api` and `backup::snapshot` before this is called.
        Route::Auth { .. } | Route::Snapshot => {}
    }
    None
}

/// etcd's membersHandler: listing and leader are answered here; an add, removal or update
/// that passes the request checks is returned for `member_change`, which waits for raft.
fn members(
    ctx: &Rc<ShardCtx>,
    method: &Method,
    rest: &str,
    content_type: Option<&str>,
    body: &[u8],
    head: bool,
    out: &mut Vec<u8>,
) -> Option<MemberChange> {
    let shared = &ctx.shared;
    let cid = format!("{:x}", shared.cluster_id);
    let msg = |out: &mut Vec<u8>, status: u16, m: &str| {
        let mut b = Vec::new();
        render::message(&mut b, m);
        json(out, head, status, &[("X-Etcd-Cluster-Id", &cid)], &b);
    };
    let membership = shared.membership.load();
    let find = |id: &str| {
        u64::from_str_radix(id, 16)
            .ok()
            .and_then(|id| membership.members.get(&id))
    };
    match method {
        Method::Get => match rest {
            "" => {
                let mut b = Vec::new();
                render::member_list(&mut b, membership.members.values());
                json(out, head, 200, &[("X-Etcd-Cluster-Id", &cid)], &b);
            }
            "leader" => {
                let leader = shared.published.load().leader;
                let Some(m) = membership.members.get(&leader) else {
                    return msg_none(msg, out, 503, "During leader election");
                };
                let mut b = Vec::new();
                render::leader(&mut b, m);
                json(out, head, 200, &[("X-Etcd-Cluster-Id", &cid)], &b);
            }
            _ => msg(out, 404, "Not found"),
        },
        Method::Delete | Method::Put if rest.is_empty() => respond(
            out,
            head,
            405,
            Some("text/plain; charset=utf-8"),
            &[
                ("X-Etcd-Cluster-Id", &cid),
                ("X-Content-Type-Options", "nosniff"),
            ],
            b"Method Not Allowed\n",
        ),
        Method::Delete => match u64::from_str_radix(rest, 16) {
            Err(_) => msg(out, 404, &format!("No such member: {rest}")),
            Ok(id) => return Some(MemberChange::Remove { id }),
        },
        Method::Post | Method::Put => {
            let urls = match parse_member_request(content_type, body) {
                Ok(urls) => urls,
                Err((status, m)) => return msg_none(msg, out, status, &m),
            };
            if *method == Method::Post {
                return Some(MemberChange::Add { peer_urls: urls });
            }
            let Some(m) = find(rest) else {
                return msg_none(msg, out, 404, &format!("No such member: {rest}"));
            };
            return Some(MemberChange::Update {
                id: m.id,
                peer_urls: urls,
            });
        }
        _ => msg(out, 404, "Not found"),
    }
    None
}

/// Writes a members error and returns no change.
fn msg_none(
    msg: impl Fn(&mut Vec<u8>, u16, &str),
    out: &mut Vec<u8>,
    status: u16,
    m: &str,
) -> Option<MemberChange> {
    msg(out, status, m);
    None
}

/// Carries out a members change through the raft shard (a conf change, or a peer URL update,
/// applied on this member before it answers) and writes etcd's answer: 201 and the new
/// member for an add, 204 for a removal or an update, `{"message"}` errors otherwise.
pub(super) async fn member_change(
    ctx: &Rc<ShardCtx>,
    change: MemberChange,
    head: bool,
    out: &mut Vec<u8>,
) {
    let cid = format!("{:x}", ctx.shared.cluster_id);
    let reply = propose(ctx, |reply| Proposal::Member { change, reply }).await;
    let outcome = reply
        .member
        .unwrap_or_else(|| Err(MemberError::new(500, "Internal Server Error")));
    let extra = [("X-Etcd-Cluster-Id", cid.as_str())];
    match outcome {
        Ok(Some(m)) => {
            let mut b = Vec::new();
            render::member(&mut b, &m);
            b.push(b'\n');
            json(out, head, 201, &extra, &b);
        }
        Ok(None) => respond(out, head, 204, None, &extra, b""),
        Err(e) if e.status == 204 => respond(out, head, 204, None, &extra, b""),
        Err(e) => {
            let mut b = Vec::new();
            render::message(&mut b, &e.message);
            json(out, head, e.status, &extra, &b);
        }
    }
}

fn stats(ctx: &Rc<ShardCtx>, kind: StatsKind, head: bool, out: &mut Vec<u8>) {
    let shared = &ctx.shared;
    let mut body = Vec::new();
    match kind {
        StatsKind::SelfStats => {
            let p = shared.published.load();
            let since = shared.leader_since_ns.load(Ordering::Relaxed);
            let now = crate::shard::unix_now_ns();
            let rates = shared
                .append_rates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            render::self_stats(
                &mut body,
                &render::SelfStats {
                    name: &shared.name,
                    id: shared.self_id,
                    start_unix_ns: shared.start_unix_ns,
                    state: p.state,
                    leader: p.leader,
                    leader_since_unix_ns: since,
                    leader_uptime_ns: now.saturating_sub(since),
                    appends_received: shared.appends_received.load(Ordering::Relaxed),
                    appends_sent: shared.appends_sent.load(Ordering::Relaxed),
                    recv_rate: rates.0.rate(now),
                    send_rate: rates.1.rate(now),
                },
            );
        }
        StatsKind::Leader => {
            if shared.published.load().state != "StateLeader" {
                let mut b = Vec::new();
                render::message(&mut b, "not current leader");
                return json(out, head, 403, &[], &b);
            }
            let followers = shared.followers.lock().unwrap_or_else(|e| e.into_inner());
            let membership = shared.membership.load();
            let none = crate::stats::FollowerStats::default();
            render::leader_stats(
                &mut body,
                shared.self_id,
                membership
                    .members
                    .keys()
                    .filter(|m| **m != shared.self_id)
                    .map(|m| (*m, followers.get(m).unwrap_or(&none))),
            );
        }
        StatsKind::Store => {
            let p = shared.published.load();
            let t = crate::stats::totals(&shared.counters);
            render::store_stats(&mut body, &p.write_stats, &t);
        }
    }
    json(out, head, 200, &[], &body);
}

fn metrics(ctx: &Rc<ShardCtx>) -> String {
    let shared = &ctx.shared;
    let t = crate::stats::totals(&shared.counters);
    let p = shared.published.load();
    let sample = render::MetricsSample {
        keys: p.view.node_count(),
        etcd_index: p.view.index().0,
        raft_index: p.raft_index.0,
        wal_fsyncs: shared.wal_syncs.load(Ordering::Relaxed),
        wal_entries: shared.wal_entries.load(Ordering::Relaxed),
        has_leader: u64::from(p.leader != 0),
        leader_changes: shared.leader_changes.load(Ordering::Relaxed),
        proposals_failed: shared.proposals_failed.load(Ordering::Relaxed),
        watch_history_oldest_index: shared.ring.start_index(p.view.index().0),
        watch_history_bytes: shared.ring.bytes(),
        watch_history_bytes_max: shared.ring.bound_bytes(),
        peer_round_trip_us: if p.state == "StateLeader" {
            let followers = shared.followers.lock().unwrap_or_else(|e| e.into_inner());
            followers
                .iter()
                .map(|(id, f)| (*id, (f.average_ms * 1000.0) as u64))
                .collect()
        } else {
            Vec::new()
        },
    };
    render::metrics(&t, &sample)
}
