//! Every route but the keys API: members, stats, metrics, version, health, machines, auth,
//! redirects, OPTIONS and the 404/405 answers, each as etcd answers it.

use super::keys::error_response;
use super::ShardCtx;
use crate::http::members::parse_member_request;
use crate::http::parse::Method;
use crate::http::render;
use crate::http::response::{json, message_response, redirect, respond};
use crate::http::route::{Route, StatsKind};
use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::Ordering;

pub(super) fn serve_other(ctx: &Rc<ShardCtx>, r: Route, head: bool, out: &mut Vec<u8>) {
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
        Route::Health => respond(
            out,
            head,
            200,
            Some("text/plain; charset=utf-8"),
            &[],
            br#"{"health":"true"}"#,
        ),
        Route::Machines => {
            let urls: Vec<&str> = shared
                .members
                .iter()
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
        } => members(
            ctx,
            &method,
            &rest,
            content_type.as_deref(),
            &body,
            head,
            out,
        ),
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
        Route::AuthEnable => json(out, head, 200, &[], b"{\"enabled\":false}\n"),
        Route::AuthOther => message_response(
            out,
            head,
            501,
            "ringd: the v2 auth API is not implemented yet",
        ),
    }
}

/// etcd's membersHandler for a one-member cluster: listing, leader, and the validation of
/// add/update/remove exactly as etcd answers it; a change that would need reconfiguration is
/// answered 501 until issue "cluster" implements it.
fn members(
    ctx: &Rc<ShardCtx>,
    method: &Method,
    rest: &str,
    content_type: Option<&str>,
    body: &[u8],
    head: bool,
    out: &mut Vec<u8>,
) {
    let shared = &ctx.shared;
    let cid = format!("{:x}", shared.cluster_id);
    let msg = |out: &mut Vec<u8>, status: u16, m: &str| {
        let mut b = Vec::new();
        render::message(&mut b, m);
        json(out, head, status, &[("X-Etcd-Cluster-Id", &cid)], &b);
    };
    let find = |id: &str| {
        u64::from_str_radix(id, 16)
            .ok()
            .and_then(|id| shared.members.iter().find(|m| m.id == id))
    };
    match method {
        Method::Get => match rest {
            "" => {
                let mut b = Vec::new();
                render::member_list(&mut b, &shared.members);
                json(out, head, 200, &[("X-Etcd-Cluster-Id", &cid)], &b);
            }
            "leader" => {
                let mut b = Vec::new();
                let leader = shared.members.iter().find(|m| m.id == shared.self_id);
                render::leader(&mut b, leader);
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
        Method::Delete => match find(rest) {
            None => msg(out, 404, &format!("No such member: {rest}")),
            Some(_) => msg(
                out,
                501,
                "ringd: member reconfiguration is not implemented yet",
            ),
        },
        Method::Post | Method::Put => {
            let urls = match parse_member_request(content_type, body) {
                Ok(urls) => urls,
                Err((status, m)) => return msg(out, status, &m),
            };
            let taken = |id: Option<u64>| {
                shared
                    .members
                    .iter()
                    .any(|m| Some(m.id) != id && m.peer_urls.iter().any(|u| urls.contains(u)))
            };
            if *method == Method::Post {
                if taken(None) {
                    return msg(out, 409, "membership: peerURL exists");
                }
                return msg(
                    out,
                    501,
                    "ringd: member reconfiguration is not implemented yet",
                );
            }
            let Some(m) = find(rest) else {
                return msg(out, 404, &format!("No such member: {rest}"));
            };
            if taken(Some(m.id)) {
                return msg(out, 409, "membership: peerURL exists");
            }
            let mut same = m.peer_urls.clone();
            let mut new = urls.clone();
            same.sort();
            new.sort();
            if same == new {
                respond(out, head, 204, None, &[("X-Etcd-Cluster-Id", &cid)], b"");
            } else {
                msg(
                    out,
                    501,
                    "ringd: member reconfiguration is not implemented yet",
                );
            }
        }
        _ => msg(out, 404, "Not found"),
    }
}

fn stats(ctx: &Rc<ShardCtx>, kind: StatsKind, head: bool, out: &mut Vec<u8>) {
    let shared = &ctx.shared;
    let id = format!("{:x}", shared.self_id);
    let mut body = Vec::new();
    match kind {
        StatsKind::SelfStats => {
            let mut start = Vec::new();
            render::rfc3339_nano(&mut start, shared.start_unix_ns);
            let start = String::from_utf8_lossy(&start).into_owned();
            body.extend_from_slice(b"{\"name\":");
            render::json_str(&mut body, &shared.name);
            let uptime = crate::stats::go_duration(shared.start.elapsed().as_nanos() as u64);
            let _ = write!(
                body,
                ",\"id\":\"{id}\",\"state\":\"StateLeader\",\"startTime\":\"{start}\",\"leaderInfo\":{{\"leader\":\"{id}\",\"uptime\":\"{uptime}\",\"startTime\":\"{start}\"}},\"recvAppendRequestCnt\":0,\"sendAppendRequestCnt\":0}}"
            );
        }
        StatsKind::Leader => {
            let _ = write!(body, "{{\"leader\":\"{id}\",\"followers\":{{}}}}");
        }
        StatsKind::Store => {
            let p = shared.published.load();
            let w = &p.write_stats;
            let t = crate::stats::totals(&shared.counters);
            let _ = write!(
                body,
                "{{\"getsSuccess\":{},\"getsFail\":{},\"setsSuccess\":{},\"setsFail\":{},\"deleteSuccess\":{},\"deleteFail\":{},\"updateSuccess\":{},\"updateFail\":{},\"createSuccess\":{},\"createFail\":{},\"compareAndSwapSuccess\":{},\"compareAndSwapFail\":{},\"compareAndDeleteSuccess\":{},\"compareAndDeleteFail\":{},\"expireCount\":{},\"watchers\":{}}}",
                t.gets_success, t.gets_fail, w.sets_success, w.sets_fail, w.delete_success, w.delete_fail,
                w.update_success, w.update_fail, w.create_success, w.create_fail, w.compare_and_swap_success,
                w.compare_and_swap_fail, w.compare_and_delete_success, w.compare_and_delete_fail, w.expire_count, t.watchers
            );
        }
    }
    json(out, head, 200, &[], &body);
}

fn metrics(ctx: &Rc<ShardCtx>) -> String {
    use crate::stats::{CODES, LATENCY_BUCKETS_US, METHODS};
    let shared = &ctx.shared;
    let t = crate::stats::totals(&shared.counters);
    let p = shared.published.load();
    let mut s = String::new();
    use std::fmt::Write as _;
    s.push_str("# HELP ringd_http_requests_total HTTP requests by method and status code.\n# TYPE ringd_http_requests_total counter\n");
    for (m, c, v) in &t.requests {
        let code = CODES
            .get(*c)
            .map(|c| c.to_string())
            .unwrap_or_else(|| "other".into());
        let _ = writeln!(
            s,
            "ringd_http_requests_total{{method=\"{}\",code=\"{}\"}} {}",
            METHODS[*m], code, v
        );
    }
    s.push_str("# HELP ringd_http_request_duration_seconds Time from a request's arrival to its response being queued.\n# TYPE ringd_http_request_duration_seconds histogram\n");
    let mut cum = 0;
    for (i, le) in LATENCY_BUCKETS_US.iter().enumerate() {
        cum += t.latency[i];
        let _ = writeln!(
            s,
            "ringd_http_request_duration_seconds_bucket{{le=\"{}\"}} {}",
            *le as f64 / 1e6,
            cum
        );
    }
    cum += t.latency[LATENCY_BUCKETS_US.len()];
    let _ = writeln!(
        s,
        "ringd_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {cum}"
    );
    let _ = writeln!(
        s,
        "ringd_http_request_duration_seconds_sum {}",
        t.latency_sum_us as f64 / 1e6
    );
    let _ = writeln!(s, "ringd_http_request_duration_seconds_count {cum}");
    let gauges = [
        ("ringd_watchers", "Registered watchers.", t.watchers),
        (
            "ringd_client_connections",
            "Open client connections.",
            t.connections,
        ),
        (
            "ringd_keys",
            "Nodes (keys and directories) in the store.",
            p.view.node_count(),
        ),
        ("ringd_etcd_index", "Current etcd index.", p.view.index().0),
        (
            "ringd_raft_index",
            "Last applied log position.",
            p.raft_index.0,
        ),
        (
            "ringd_wal_fsyncs_total",
            "fdatasyncs of the log (one per raft batch).",
            shared.wal_syncs.load(Ordering::Relaxed),
        ),
        (
            "ringd_wal_entries_total",
            "Log entries made durable; divided by fsyncs, the average group-commit batch.",
            shared.wal_entries.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, v) in gauges {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
    s
}
