//! URL path and form decoding as Go's net/url and net/http do it, so that every client sees
//! the same answers from ringd as from etcd.

/// Decodes one `%XX` escaped component. `plus_is_space` is Go's QueryUnescape (form values);
/// without it, PathUnescape. On a bad escape returns Go's error text: `invalid URL escape "%zz"`.
pub fn unescape(s: &str, plus_is_space: bool) -> Result<String, String> {
    let bytes = s.as_bytes();
    if !bytes
        .iter()
        .any(|&b| b == b'%' || (plus_is_space && b == b'+'))
    {
        return Ok(s.to_string());
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    bytes.get(i + 1).and_then(|&b| hex(b)),
                    bytes.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                    }
                    _ => {
                        let end = (i + 3).min(bytes.len());
                        let bad = String::from_utf8_lossy(&bytes[i..end]);
                        return Err(format!("invalid URL escape {bad:?}"));
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Go strings may hold any bytes; JSON encoding then replaces invalid UTF-8 with U+FFFD,
    // which is what from_utf8_lossy does here.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Parsed form values in arrival order; the first value of a name wins (Go's FormValue).
#[derive(Default, Debug, Clone)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// Go's url.ParseQuery, appending to `self`. Returns the first error but keeps parsing
    /// (as Go does); the caller turns the error into 210.
    pub fn parse_into(&mut self, query: &str) -> Result<(), String> {
        let mut first_err = None;
        for part in query.split('&') {
            if part.is_empty() {
                continue;
            }
            if part.contains(';') {
                first_err.get_or_insert_with(|| "invalid semicolon separator in query".to_string());
                continue;
            }
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let k = match unescape(k, true) {
                Ok(k) => k,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            let v = match unescape(v, true) {
                Ok(v) => v,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            self.pairs.push((k, v));
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The first value of `name`, if present (even empty).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Go's FormValue: the first value or "".
    pub fn value(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }
}

/// Go's path.Clean.
pub fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return ".".to_string();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|s| *s != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Go's ServeMux cleanPath: path.Clean, keeping a trailing slash.
pub fn mux_clean_path(p: &str) -> String {
    if p.is_empty() {
        return "/".to_string();
    }
    let with_root = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    };
    let mut np = clean_path(&with_root);
    if with_root.ends_with('/') && np != "/" {
        np.push('/');
    }
    np
}

/// Go's strconv.ParseBool.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's strconv.ParseUint(s, 10, 64).
pub fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_like_go() {
        assert_eq!(unescape("a%2Fb", false).unwrap(), "a/b");
        assert_eq!(unescape("a+b", true).unwrap(), "a b");
        assert_eq!(unescape("a+b", false).unwrap(), "a+b");
        assert_eq!(
            unescape("%zz", true).unwrap_err(),
            "invalid URL escape \"%zz\""
        );
        assert_eq!(
            unescape("%4", true).unwrap_err(),
            "invalid URL escape \"%4\""
        );
        assert_eq!(unescape("%", true).unwrap_err(), "invalid URL escape \"%\"");
    }

    #[test]
    fn form_first_value_wins_and_errors_are_reported() {
        let mut f = Form::default();
        f.parse_into("value=1&value=2&x&y=").unwrap();
        assert_eq!(f.value("value"), "1");
        assert_eq!(f.get("x"), Some(""));
        assert_eq!(f.get("y"), Some(""));
        assert_eq!(f.get("z"), None);
        let mut f = Form::default();
        assert!(f.parse_into("a=%zz&b=2").is_err());
        assert_eq!(f.value("b"), "2");
        assert!(Form::default().parse_into("a=1;b=2").is_err());
    }

    #[test]
    fn clean_paths() {
        assert_eq!(clean_path("/a//b/./c/.."), "/a/b");
        assert_eq!(clean_path("/.."), "/");
        assert_eq!(clean_path("/1/"), "/1");
        assert_eq!(mux_clean_path("/v2/keys//a/"), "/v2/keys/a/");
        assert_eq!(mux_clean_path("/v2/keys/a"), "/v2/keys/a");
        assert_eq!(mux_clean_path("/v2/keys/../x"), "/v2/x");
    }

    #[test]
    fn go_bools_and_uints() {
        for s in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(s), Some(true));
        }
        for s in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(s), Some(false));
        }
        for s in ["", "yes", "tRue", " true"] {
            assert_eq!(parse_bool(s), None);
        }
        assert_eq!(parse_u64("12"), Some(12));
        assert_eq!(parse_u64("-1"), None);
        assert_eq!(parse_u64("+1"), None);
        assert_eq!(parse_u64("1.5"), None);
        assert_eq!(parse_u64("99999999999999999999"), None);
    }
}
