//! Shapes of etcd v2 JSON replies (borrowing from the body where possible)
//! and the deterministic key/value naming used by the workloads.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, Visitor};
use serde::Deserialize;

/// A JSON string, borrowed from the input unless it had escapes.
#[derive(Debug, PartialEq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl Text<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Deserialize)]
pub struct Node<'a> {
    #[serde(borrow)]
    pub key: Option<Text<'a>>,
    #[serde(borrow)]
    pub value: Option<Text<'a>>,
    #[serde(rename = "modifiedIndex")]
    pub modified_index: Option<u64>,
    pub ttl: Option<i64>,
    pub dir: Option<bool>,
}

/// An etcd v2 reply: an action with a node, or an error.
#[derive(Debug, Deserialize)]
pub struct Reply<'a> {
    #[serde(borrow)]
    pub action: Option<Text<'a>>,
    #[serde(borrow)]
    pub node: Option<Node<'a>>,
    #[serde(rename = "errorCode")]
    pub error_code: Option<u64>,
}

pub fn parse_reply(body: &[u8]) -> Option<Reply<'_>> {
    serde_json::from_slice(body).ok()
}

impl<'a> Reply<'a> {
    pub fn action(&self) -> &str {
        self.action.as_ref().map_or("", Text::as_str)
    }
    pub fn key(&self) -> &str {
        self.node
            .as_ref()
            .and_then(|n| n.key.as_ref())
            .map_or("", Text::as_str)
    }
    pub fn value(&self) -> Option<&str> {
        self.node
            .as_ref()
            .and_then(|n| n.value.as_ref())
            .map(Text::as_str)
    }
    pub fn modified_index(&self) -> Option<u64> {
        self.node.as_ref().and_then(|n| n.modified_index)
    }
}

/// Length of the key-specific value prefix: 8 hex digits and '-'.
const VALUE_TAG: usize = 9;

/// Value bytes for key `idx` of `size` bytes: `{idx:08x}-xxxx...`.
/// `filler` must hold at least `size` bytes of 'x'.
pub fn value_tag(idx: u64) -> [u8; VALUE_TAG] {
    let mut t = [b'-'; VALUE_TAG];
    let hex = b"0123456789abcdef";
    for (i, slot) in t.iter_mut().take(8).enumerate() {
        *slot = hex[((idx >> (28 - 4 * i)) & 0xf) as usize];
    }
    t
}

/// Appends the form-encoded value of key `idx` (safe characters only).
pub fn push_value(buf: &mut Vec<u8>, idx: u64, size: usize, filler: &[u8]) {
    let tag = value_tag(idx);
    let n = size.min(VALUE_TAG);
    buf.extend_from_slice(&tag[..n]);
    buf.extend_from_slice(&filler[..size - n]);
}

/// Whether `v` is the value `push_value` writes for key `idx`.
pub fn value_ok(v: &str, idx: u64, size: usize) -> bool {
    let b = v.as_bytes();
    if b.len() != size {
        return false;
    }
    let tag = value_tag(idx);
    let n = size.min(VALUE_TAG);
    b[..n] == tag[..n] && b[n..].iter().all(|&c| c == b'x')
}

/// The key index encoded in `key` = `{base}{idx}` (base like "/loadgen/k").
pub fn key_index(key: &str, base: &str) -> Option<u64> {
    let d = key.strip_prefix(base)?;
    if d.is_empty() || d.len() > 19 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    d.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_borrows_and_tolerates_extra_fields() {
        let body = br#"{"action":"get","node":{"key":"/a/k12","value":"v\/x","modifiedIndex":9,"createdIndex":3,"nodes":[{"x":1}]},"prevNode":{"key":"/a"}}"#;
        let r = parse_reply(body).unwrap();
        assert_eq!(r.action(), "get");
        assert_eq!(r.key(), "/a/k12");
        assert!(matches!(
            r.node.as_ref().unwrap().key,
            Some(Text(Cow::Borrowed(_)))
        ));
        assert_eq!(r.value(), Some("v/x"));
        assert_eq!(r.modified_index(), Some(9));
        let e = parse_reply(
            br#"{"errorCode":101,"message":"Compare failed","cause":"[1 != 2]","index":8}"#,
        )
        .unwrap();
        assert_eq!(e.error_code, Some(101));
        assert_eq!(e.action(), "");
        assert!(parse_reply(b"not json").is_none());
        assert!(parse_reply(br#"{"action":5}"#).is_none());
    }

    #[test]
    fn values_round_trip() {
        let filler = vec![b'x'; 100];
        for size in [0, 1, 8, 9, 10, 64] {
            let mut b = Vec::new();
            push_value(&mut b, 0xabc, size, &filler);
            let s = std::str::from_utf8(&b).unwrap();
            assert_eq!(s.len(), size);
            assert!(value_ok(s, 0xabc, size));
            if size >= 8 {
                assert!(!value_ok(s, 0xabd, size));
            }
        }
        assert!(!value_ok("00000abc-xxy", 0xabc, 12));
        assert_eq!(key_index("/p/k42", "/p/k"), Some(42));
        assert_eq!(key_index("/p/k", "/p/k"), None);
        assert_eq!(key_index("/p/kx", "/p/k"), None);
        assert_eq!(key_index("/q/k1", "/p/k"), None);
    }
}
