//! JSON and HTTP rendering, byte-compatible with etcd's Go encoder: field order and
//! `omitempty` as NodeExtern declares them, Go's HTML-safe string escaping, RFC3339Nano times.

use ringd_store::{Error, Event, NodeRepr};
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
