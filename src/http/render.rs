//! JSON and HTTP rendering, byte-compatible with etcd's Go encoder: field order and
//! `omitempty` as NodeExtern declares them, Go's HTML-safe string escaping, RFC3339Nano times.

use crate::members::Member;
use crate::stats::Totals;
use ringd_store::{Error, Event, NodeRepr, WriteStats};
use std::io::Write;

/// Bytes that may need escaping: `"`, `\\`, controls, `<`, `>`, `&`, and 0xE2 (the lead byte
/// of U+2028/U+2029). Keys and values rarely hold any, so the common case is one table scan
/// and one copy.
static MAY_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[b'<' as usize] = true;
    t[b'>' as usize] = true;
    t[b'&' as usize] = true;
    t[0xe2] = true;
    t
};

/// Appends `s` as a JSON string the way Go's encoding/json does (HTML-safe escaping).
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let Some(first) = bytes.iter().position(|&b| MAY_ESCAPE[b as usize]) else {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    };
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate().skip(first) {
        let esc: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            b'<' => Some(b"\\u003c"),
            b'>' => Some(b"\\u003e"),
            b'&' => Some(b"\\u0026"),
            0..=0x1f => None,
            // U+2028 and U+2029 are E2 80 A8 / E2 80 A9.
            0xe2 if bytes.get(i + 1) == Some(&0x80)
                && matches!(bytes.get(i + 2), Some(0xa8) | Some(0xa9)) =>
            {
                None
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match esc {
            Some(e) => {
                out.extend_from_slice(e);
                start = i + 1;
            }
            None if b == 0xe2 => {
                let last = if bytes[i + 2] == 0xa8 {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                };
                out.extend_from_slice(last);
                start = i + 3;
            }
            None => {
                let _ = write!(out, "\\u{:04x}", b);
                start = i + 1;
            }
        }
    }
    // A U+2028 escape moves `start` past bytes the loop still visits; those are continuation
    // bytes (0x80..0xbf) which need no escaping, so only the tail copy must respect `start`.
    if start < bytes.len() {
        out.extend_from_slice(&bytes[start..]);
    }
    out.push(b'"');
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's civil_from_days.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Go's time.Format(time.RFC3339Nano) of a UTC unix-nanosecond time: trailing zeros of the
/// fraction trimmed, no fraction at all when it is zero.
pub fn rfc3339_nano(out: &mut Vec<u8>, unix_nanos: u64) {
    let secs = (unix_nanos / 1_000_000_000) as i64;
    let nanos = (unix_nanos % 1_000_000_000) as u32;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let _ = write!(
        out,
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    if nanos != 0 {
        let mut frac = format!("{nanos:09}");
        while frac.ends_with('0') {
            frac.pop();
        }
        out.push(b'.');
        out.extend_from_slice(frac.as_bytes());
    }
    out.push(b'Z');
}

/// The `ttl` field: the ceiling of the remaining seconds (etcd's expirationAndTTL).
pub fn ttl_secs(expiration: u64, now: u64) -> i64 {
    let remaining = expiration as i128 - now as i128;
    let mut ttl = remaining / 1_000_000_000;
    if remaining % 1_000_000_000 > 0 {
        ttl += 1;
    }
    ttl as i64
}

/// Appends a node as NodeExtern JSON.
pub fn node(out: &mut Vec<u8>, n: &NodeRepr, now: u64) {
    out.push(b'{');
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.push(b',');
        }
        first = false;
    };
    if let Some(key) = &n.key {
        if !key.is_empty() {
            sep(out);
            out.extend_from_slice(b"\"key\":");
            json_str(out, key);
        }
    }
    if let Some(v) = &n.value {
        sep(out);
        out.extend_from_slice(b"\"value\":");
        json_str(out, v);
    }
    if n.dir {
        sep(out);
        out.extend_from_slice(b"\"dir\":true");
    }
    if let Some(exp) = n.expiration {
        sep(out);
        out.extend_from_slice(b"\"expiration\":\"");
        rfc3339_nano(out, exp);
        out.push(b'"');
        let ttl = ttl_secs(exp, now);
        if ttl != 0 {
            let _ = write!(out, ",\"ttl\":{ttl}");
        }
    }
    if let Some(children) = &n.nodes {
        if !children.is_empty() {
            sep(out);
            out.extend_from_slice(b"\"nodes\":[");
            for (i, c) in children.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                node(out, c, now);
            }
            out.push(b']');
        }
    }
    if n.modified_index != 0 {
        sep(out);
        let _ = write!(out, "\"modifiedIndex\":{}", n.modified_index);
    }
    if n.created_index != 0 {
        sep(out);
        let _ = write!(out, "\"createdIndex\":{}", n.created_index);
    }
    out.push(b'}');
}

/// Appends an event (`{"action","node","prevNode"}`) and the trailing newline of Go's
/// json.Encoder. `node_omitted`: noValueOnSuccess drops node and prevNode.
///
/// The `ttl` fields are those of the event's `time` when it has one: etcd renders an event
/// once, when it happens, and serves the same bytes to the writer, to live watchers and from
/// its history (so a history hit shows the TTL the key had then, not the one it has now).
/// Events without a time (gets) are rendered at `now`.
pub fn event(out: &mut Vec<u8>, ev: &Event, now: u64, node_omitted: bool) {
    out.extend_from_slice(b"{\"action\":");
    json_str(out, ev.action.as_str());
    let now = ev.time.unwrap_or(now);
    if !node_omitted {
        out.extend_from_slice(b",\"node\":");
        node(out, &ev.node, now);
        if let Some(prev) = &ev.prev_node {
            out.extend_from_slice(b",\"prevNode\":");
            node(out, prev, now);
        }
    }
    out.extend_from_slice(b"}\n");
}

/// Appends an etcd error body (`{"errorCode","message","cause","index"}` and a newline).
pub fn error(out: &mut Vec<u8>, e: &Error) {
    let _ = write!(out, "{{\"errorCode\":{},\"message\":", e.code.code());
    json_str(out, e.code.message());
    if !e.cause.is_empty() {
        out.extend_from_slice(b",\"cause\":");
        json_str(out, &e.cause);
    }
    let _ = writeln!(out, ",\"index\":{}}}", e.index);
}

/// Appends a `{"message": ...}` body (members, auth and other non-keys errors); etcd writes
/// these without a trailing newline.
pub fn message(out: &mut Vec<u8>, msg: &str) {
    out.extend_from_slice(b"{\"message\":");
    json_str(out, msg);
    out.push(b'}');
}

/// Appends the member JSON object etcd renders.
pub fn member(out: &mut Vec<u8>, m: &Member) {
    out.extend_from_slice(format!("{{\"id\":\"{:x}\",\"name\":", m.id).as_bytes());
    json_str(out, &m.name);
    for (field, urls) in [("peerURLs", &m.peer_urls), ("clientURLs", &m.client_urls)] {
        out.extend_from_slice(format!(",\"{field}\":[").as_bytes());
        for (i, u) in urls.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_str(out, u);
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// Appends the body of `GET /v2/members`: `{"members":[...]}` and a newline.
pub fn member_list<'a>(out: &mut Vec<u8>, members: impl IntoIterator<Item = &'a Member>) {
    out.extend_from_slice(b"{\"members\":[");
    for (i, m) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        member(out, m);
    }
    out.extend_from_slice(b"]}\n");
}

/// Appends the body of a peer port's `GET /members`: the bare array etcd's peer handler
/// writes.
pub fn peer_member_list<'a>(out: &mut Vec<u8>, members: impl IntoIterator<Item = &'a Member>) {
    out.push(b'[');
    for (i, m) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        member(out, m);
    }
    out.push(b']');
}

/// Appends the body of `GET /v2/members/leader`: the leader's object and a newline.
pub fn leader(out: &mut Vec<u8>, leader: &Member) {
    member(out, leader);
    out.push(b'\n');
}

/// What `GET /v2/stats/self` shows of a member.
pub struct SelfStats<'a> {
    pub name: &'a str,
    pub id: u64,
    pub start_unix_ns: u64,
    /// etcd's raft state name (`StateLeader`, `StateFollower`, ...).
    pub state: &'a str,
    /// The leader this member knows (0: none), since when (unix ns), and for how long.
    pub leader: u64,
    pub leader_since_unix_ns: u64,
    pub leader_uptime_ns: u64,
    pub appends_received: u64,
    pub appends_sent: u64,
    /// Append messages and bytes per second, received and sent (0: omitted, as etcd's
    /// omitempty).
    pub recv_rate: (f64, f64),
    pub send_rate: (f64, f64),
}

/// Appends the body of `GET /v2/stats/self`.
pub fn self_stats(out: &mut Vec<u8>, s: &SelfStats<'_>) {
    let time = |ns: u64| {
        let mut b = Vec::new();
        rfc3339_nano(&mut b, ns);
        String::from_utf8_lossy(&b).into_owned()
    };
    out.extend_from_slice(b"{\"name\":");
    json_str(out, s.name);
    let leader = if s.leader == 0 {
        String::new()
    } else {
        format!("{:x}", s.leader)
    };
    let _ = write!(
        out,
        ",\"id\":\"{:x}\",\"state\":\"{}\",\"startTime\":\"{}\",\"leaderInfo\":{{\"leader\":\"{leader}\",\"uptime\":\"{}\",\"startTime\":\"{}\"}},\"recvAppendRequestCnt\":{}",
        s.id,
        s.state,
        time(s.start_unix_ns),
        crate::stats::go_duration(s.leader_uptime_ns),
        time(s.leader_since_unix_ns),
        s.appends_received,
    );
    let rates = |out: &mut Vec<u8>, names: [&str; 2], (pkg, bw): (f64, f64)| {
        if pkg != 0.0 {
            let _ = write!(out, ",\"{}\":{pkg}", names[0]);
        }
        if bw != 0.0 {
            let _ = write!(out, ",\"{}\":{bw}", names[1]);
        }
    };
    rates(out, ["recvPkgRate", "recvBandwidthRate"], s.recv_rate);
    let _ = write!(out, ",\"sendAppendRequestCnt\":{}", s.appends_sent);
    rates(out, ["sendPkgRate", "sendBandwidthRate"], s.send_rate);
    out.push(b'}');
}

/// Appends the body of `GET /v2/stats/leader`: each follower's latency and counts.
pub fn leader_stats<'a>(
    out: &mut Vec<u8>,
    id: u64,
    followers: impl IntoIterator<Item = (u64, &'a crate::stats::FollowerStats)>,
) {
    let _ = write!(out, "{{\"leader\":\"{id:x}\",\"followers\":{{");
    for (i, (fid, f)) in followers.into_iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(out, "{sep}\"{fid:x}\":{}", f.render());
    }
    out.extend_from_slice(b"}}");
}

/// Appends the body of `GET /v2/stats/store`: the writer's counters and the shards' totals.
pub fn store_stats(out: &mut Vec<u8>, w: &WriteStats, t: &Totals) {
    let _ = write!(
        out,
        "{{\"getsSuccess\":{},\"getsFail\":{},\"setsSuccess\":{},\"setsFail\":{},\"deleteSuccess\":{},\"deleteFail\":{},\"updateSuccess\":{},\"updateFail\":{},\"createSuccess\":{},\"createFail\":{},\"compareAndSwapSuccess\":{},\"compareAndSwapFail\":{},\"compareAndDeleteSuccess\":{},\"compareAndDeleteFail\":{},\"expireCount\":{},\"watchers\":{}}}",
        t.gets_success, t.gets_fail, w.sets_success, w.sets_fail, w.delete_success, w.delete_fail,
        w.update_success, w.update_fail, w.create_success, w.create_fail, w.compare_and_swap_success,
        w.compare_and_swap_fail, w.compare_and_delete_success, w.compare_and_delete_fail, w.expire_count, t.watchers
    );
}

/// What `/metrics` exports besides the shards' request counters, sampled when it is asked.
pub struct MetricsSample {
    /// Nodes (keys and directories) in the store.
    pub keys: u64,
    pub etcd_index: u64,
    /// Last applied raft index.
    pub raft_index: u64,
    /// fdatasyncs of the log, and the entries they made durable.
    pub wal_fsyncs: u64,
    pub wal_entries: u64,
    /// 1 when this member knows a leader (etcd's `etcd_server_has_leader`).
    pub has_leader: u64,
    /// Leader changes seen, and requests that failed (timed out), as etcd counts them.
    pub leader_changes: u64,
    pub proposals_failed: u64,
    /// The watch history: the oldest index `waitIndex` still answers for, the encoded
    /// history's bytes now and its bound (`--watch-history`).
    pub watch_history_oldest_index: u64,
    pub watch_history_bytes: u64,
    pub watch_history_bytes_max: u64,
    /// On the leader: the average round trip to each follower, in microseconds.
    pub peer_round_trip_us: Vec<(u64, u64)>,
}

/// The Prometheus text of `/metrics`.
pub fn metrics(t: &Totals, sample: &MetricsSample) -> String {
    use crate::stats::{CODES, LATENCY_BUCKETS_US, METHODS};
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
            sample.keys,
        ),
        ("ringd_etcd_index", "Current etcd index.", sample.etcd_index),
        (
            "ringd_raft_index",
            "Last applied log position.",
            sample.raft_index,
        ),
        (
            "ringd_wal_fsyncs_total",
            "fdatasyncs of the log (one per raft batch).",
            sample.wal_fsyncs,
        ),
        (
            "ringd_wal_entries_total",
            "Log entries made durable; divided by fsyncs, the average group-commit batch.",
            sample.wal_entries,
        ),
        (
            "ringd_server_has_leader",
            "1 when this member knows a leader.",
            sample.has_leader,
        ),
        (
            "ringd_server_leader_changes_seen_total",
            "Leader changes this member saw.",
            sample.leader_changes,
        ),
        (
            "ringd_server_proposals_failed_total",
            "Requests that were not applied in time (no leader, no quorum).",
            sample.proposals_failed,
        ),
        (
            "ringd_watch_history_oldest_index",
            "Oldest etcd index a waitIndex watch is answered for (older: 401).",
            sample.watch_history_oldest_index,
        ),
        (
            "ringd_watch_history_bytes",
            "Bytes the watch history allocates besides the newest 1000 events (its encoded events and slots).",
            sample.watch_history_bytes,
        ),
        (
            "ringd_watch_history_bytes_max",
            "The watch history's memory bound reported at start (besides the newest 1000 events).",
            sample.watch_history_bytes_max,
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
    if !sample.peer_round_trip_us.is_empty() {
        s.push_str("# HELP ringd_peer_round_trip_microseconds Average raft round trip to each follower (leader only).\n# TYPE ringd_peer_round_trip_microseconds gauge\n");
        for (id, us) in &sample.peer_round_trip_us {
            let _ = writeln!(
                s,
                "ringd_peer_round_trip_microseconds{{to=\"{id:x}\"}} {us}"
            );
        }
    }
    s
}

/// HTTP reason phrases for the statuses we send.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Go's http.TimeFormat of a unix time in seconds: "Wed, 25 Nov 2026 08:04:43 GMT".
pub fn http_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (unix_secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let sod = unix_secs % 86_400;
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringd_store::{Action, ErrorCode};

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn strings_escape_like_go() {
        assert_eq!(
            s(|o| json_str(o, "a\"b\\c\n<&>\u{1}\u{2028}é")),
            r#""a\"b\\c\n\u003c\u0026\u003e\u0001\u2028é""#
        );
    }

    #[test]
    fn times_format_like_go() {
        assert_eq!(
            s(|o| rfc3339_nano(o, 1_795_565_664_072_500_000)),
            "2026-11-25T00:14:24.0725Z"
        );
        assert_eq!(s(|o| rfc3339_nano(o, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            s(|o| rfc3339_nano(o, 951_782_400_000_000_001)),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(http_date(1_795_593_883), "Wed, 25 Nov 2026 08:04:43 GMT");
    }

    #[test]
    fn members_render_like_etcd() {
        let m = Member {
            id: 0xddd6_7b31_2462_fd7b,
            name: "default".into(),
            peer_urls: vec!["http://127.0.0.1:12380".into()],
            client_urls: vec![],
        };
        assert_eq!(
            s(|o| member_list(o, std::slice::from_ref(&m))),
            "{\"members\":[{\"id\":\"ddd67b312462fd7b\",\"name\":\"default\",\"peerURLs\":[\"http://127.0.0.1:12380\"],\"clientURLs\":[]}]}\n"
        );
        assert_eq!(
            s(|o| leader(o, &m)),
            "{\"id\":\"ddd67b312462fd7b\",\"name\":\"default\",\"peerURLs\":[\"http://127.0.0.1:12380\"],\"clientURLs\":[]}\n"
        );
    }

    #[test]
    fn stats_and_metrics_render_like_etcd_and_prometheus() {
        assert_eq!(
            s(|o| self_stats(
                o,
                &SelfStats {
                    name: "n",
                    id: 0xab,
                    start_unix_ns: 0,
                    state: "StateFollower",
                    leader: 0xcd,
                    leader_since_unix_ns: 0,
                    leader_uptime_ns: 1_500_000_000,
                    appends_received: 3,
                    appends_sent: 0,
                    recv_rate: (10.5, 2048.0),
                    send_rate: (0.0, 0.0),
                }
            )),
            r#"{"name":"n","id":"ab","state":"StateFollower","startTime":"1970-01-01T00:00:00Z","leaderInfo":{"leader":"cd","uptime":"1.5s","startTime":"1970-01-01T00:00:00Z"},"recvAppendRequestCnt":3,"recvPkgRate":10.5,"recvBandwidthRate":2048,"sendAppendRequestCnt":0}"#
        );
        assert_eq!(
            s(|o| leader_stats(o, 0xab, [])),
            r#"{"leader":"ab","followers":{}}"#
        );
        let f = crate::stats::FollowerStats::default();
        assert_eq!(
            s(|o| leader_stats(o, 0xab, [(0xcd, &f)])),
            r#"{"leader":"ab","followers":{"cd":{"latency":{"current":0,"average":0,"standardDeviation":0,"minimum":0,"maximum":0},"counts":{"fail":0,"success":0}}}}"#
        );
        let t = crate::stats::totals(&[]);
        let sample = MetricsSample {
            keys: 3,
            etcd_index: 7,
            raft_index: 9,
            wal_fsyncs: 2,
            wal_entries: 5,
            has_leader: 1,
            leader_changes: 1,
            proposals_failed: 0,
            watch_history_oldest_index: 1,
            watch_history_bytes: 10,
            watch_history_bytes_max: 20,
            peer_round_trip_us: vec![(0xab, 250)],
        };
        let text = metrics(&t, &sample);
        assert!(text.contains("\nringd_http_request_duration_seconds_bucket{le=\"+Inf\"} 0\n"));
        assert!(text.contains("# TYPE ringd_keys gauge\nringd_keys 3\n"));
        assert!(text.contains("# TYPE ringd_wal_fsyncs_total counter\nringd_wal_fsyncs_total 2\n"));
        assert!(text.contains("\nringd_server_has_leader 1\n"));
        assert!(text.contains("\nringd_watch_history_bytes 10\n"));
        assert!(text.contains("\nringd_watch_history_bytes_max 20\n"));
        assert!(text.contains("\nringd_peer_round_trip_microseconds{to=\"ab\"} 250\n"));
    }

    #[test]
    fn ttl_is_the_ceiling() {
        assert_eq!(ttl_secs(10_000_000_000, 0), 10);
        assert_eq!(ttl_secs(10_000_000_001, 1), 10);
        assert_eq!(ttl_secs(10_500_000_000, 0), 11);
        assert_eq!(ttl_secs(0, 300_000_000), 0);
        assert_eq!(ttl_secs(0, 1_500_000_000), -1);
    }

    #[test]
    fn events_and_errors() {
        let n = NodeRepr {
            key: Some("/a".into()),
            dir: false,
            value: Some("".into()),
            expiration: None,
            modified_index: 4,
            created_index: 4,
            nodes: None,
        };
        let ev = Event {
            action: Action::Set,
            node: n,
            prev_node: None,
            etcd_index: 4,
            refresh: false,
            time: None,
        };
        assert_eq!(
            s(|o| event(o, &ev, 0, false)),
            "{\"action\":\"set\",\"node\":{\"key\":\"/a\",\"value\":\"\",\"modifiedIndex\":4,\"createdIndex\":4}}\n"
        );
        assert_eq!(s(|o| event(o, &ev, 0, true)), "{\"action\":\"set\"}\n");
        // TTLs render at the event's time when it has one (issue 13), else at `now`.
        let sec = 1_000_000_000;
        let ttl_node = |expiration: u64| NodeRepr {
            expiration: Some(expiration),
            ..ev.node.clone()
        };
        let timed = Event {
            node: ttl_node(1000 * sec),
            prev_node: Some(ttl_node(500 * sec)),
            time: Some(0),
            ..ev.clone()
        };
        let ttls = |e: &Event, now: u64| {
            let body = s(|o| event(o, e, now, false));
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            (v["node"]["ttl"].as_i64(), v["prevNode"]["ttl"].as_i64())
        };
        assert_eq!(ttls(&timed, 4 * sec), (Some(1000), Some(500)));
        let untimed = Event {
            time: None,
            ..timed
        };
        assert_eq!(ttls(&untimed, 4 * sec), (Some(996), Some(496)));
        let e = Error::new(ErrorCode::KeyNotFound, "/x", 7);
        assert_eq!(
            s(|o| error(o, &e)),
            "{\"errorCode\":100,\"message\":\"Key not found\",\"cause\":\"/x\",\"index\":7}\n"
        );
    }
}
