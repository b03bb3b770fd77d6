//! Property tests over the request path: framing, routing, the form decoder and rendering
//! must never panic on any input, and framing must not depend on how bytes are split.

use proptest::prelude::*;
use ringd::http::form::{clean_path, mux_clean_path, unescape, Form};
use ringd::http::parse::{Parsed, RequestParser};
use ringd::http::route::{route, Route};

/// Parses `input` fed in pieces of `step` bytes; returns (targets, bodies, error status).
fn frame(input: &[u8], step: usize) -> (Vec<(String, Vec<u8>)>, Option<u16>) {
    let mut p = RequestParser::new(4096);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for piece in input.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let (n, parsed) = p.parse(&buf);
            buf.drain(..n);
            match parsed {
                Parsed::Request(r) => {
                    let _ = route(&r);
                    out.push((r.target, r.body));
                }
                Parsed::NeedMore { .. } => break,
                Parsed::Error(e) => return (out, Some(e.status)),
            }
        }
    }
    (out, None)
}

fn request_strategy() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        Just("GET"),
        Just("PUT"),
        Just("POST"),
        Just("DELETE"),
        Just("HEAD"),
        Just("OPTIONS"),
        Just("PATCH")
    ];
    let path = proptest::collection::vec(
        prop_oneof![
            Just("a"),
            Just("_h"),
            Just("%2F"),
            Just("%zz"),
            Just(".."),
            Just("."),
            Just(""),
            Just("%20"),
            Just("é")
        ],
        0..6,
    )
    .prop_map(|parts| format!("/v2/keys/{}", parts.join("/")));
    let query = proptest::collection::vec(
        (
            prop_oneof![
                Just("value"),
                Just("ttl"),
                Just("prevExist"),
                Just("prevIndex"),
                Just("prevValue"),
                Just("wait"),
                Just("waitIndex"),
                Just("recursive"),
                Just("dir"),
                Just("refresh"),
                Just("stream"),
                Just("sorted"),
                Just("quorum")
            ],
            prop_oneof![
                Just(""),
                Just("true"),
                Just("1"),
                Just("-1"),
                Just("x"),
                Just("%zz"),
                Just("18446744073709551616")
            ],
        ),
        0..5,
    )
    .prop_map(|kv| {
        kv.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    });
    let body = proptest::collection::vec(any::<u8>(), 0..64);
    (method, path, query, body, any::<bool>(), any::<bool>()).prop_map(
        |(m, p, q, body, chunked, form)| {
            let mut r = format!("{m} {p}?{q} HTTP/1.1\r\nHost: x\r\n");
            if form {
                r.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
            }
            let mut bytes;
            if chunked {
                r.push_str("Transfer-Encoding: chunked\r\n\r\n");
                bytes = r.into_bytes();
                if !body.is_empty() {
                    bytes.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                    bytes.extend_from_slice(&body);
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes.extend_from_slice(b"0\r\n\r\n");
            } else {
                r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                bytes = r.into_bytes();
                bytes.extend_from_slice(&body);
            }
            bytes
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), step in 1usize..64) {
        let _ = frame(&bytes, step);
    }

    #[test]
    fn well_formed_requests_frame_the_same_however_split(reqs in proptest::collection::vec(request_strategy(), 1..4), step in 1usize..32) {
        let input: Vec<u8> = reqs.concat();
        let whole = frame(&input, input.len());
        let split = frame(&input, step);
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(whole.0.len(), reqs.len());
        prop_assert!(whole.1.is_none());
    }

    #[test]
    fn form_and_path_decoders_never_panic(s in ".{0,64}") {
        let _ = unescape(&s, true);
        let _ = unescape(&s, false);
        let _ = Form::default().parse_into(&s);
        let c = clean_path(&format!("/{s}"));
        prop_assert!(c.starts_with('/'));
        prop_assert_eq!(clean_path(&c), c.clone());
        let m = mux_clean_path(&s);
        prop_assert!(m.starts_with('/'));
    }

    #[test]
    fn keys_routes_are_cleaned_or_redirected(req in request_strategy()) {
        let (reqs, _) = frame(&req, req.len());
        for (target, _) in reqs {
            let mut p = RequestParser::new(4096);
            let line = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
            if let (_, Parsed::Request(r)) = p.parse(line.as_bytes()) {
                if let Route::Redirect { location: loc, .. } = route(&r) {
                    prop_assert!(loc.starts_with('/'));
                    prop_assert!(!loc.contains("//"));
                }
            }
        }
    }
}
