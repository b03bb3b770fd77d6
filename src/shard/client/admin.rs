//! Every route but the keys API: members, stats, metrics, version, health, machines, auth,
//! redirects, OPTIONS and the 404/405 answers, each as etcd answers it.

use super::keys::error_response;
use super::ShardCtx;
use crate::http::members::parse_member_request;
use crate::http::parse::Method;
use crate::http::render;
use crate::http::response::{json, message_response, redirect, respond};
use crate::http::route::{Route, StatsKind};
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
    let mut body = Vec::new();
    match kind {
        StatsKind::SelfStats => render::self_stats(
            &mut body,
            &shared.name,
            shared.self_id,
            shared.start_unix_ns,
            shared.start.elapsed().as_nanos() as u64,
        ),
        StatsKind::Leader => render::leader_stats(&mut body, shared.self_id),
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
    };
    render::metrics(&t, &sample)
}
