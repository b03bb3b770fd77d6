//! Tidy: the layering rules of ARCHITECTURE.md, checked on the source text so a violation
//! fails CI instead of waiting for a reviewer.
//!
//! Every top-level module of `src/` (and the store crate) has a rule: words its code must not
//! contain. A rule checks whole files. Comments and the insides of string and char literals
//! are not code, so they are never checked. Unit tests are checked too, except by the rules
//! marked `Tests::Exempt`, which skip the bodies of `#[cfg(test)] mod … { … }` blocks
//! (found by brace matching) and the files of `#[cfg(test)] mod …;` declarations.

use std::path::{Path, PathBuf};

/// Whether a rule also holds in unit tests.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tests {
    /// Test code obeys the rule too: an import is an import.
    Checked,
    /// Tests may do what the code may not (a store test spawns a thread to check that a
    /// snapshot source is `Send`).
    Exempt,
}

struct Rule {
    /// A directory or a file, relative to the workspace root.
    path: &'static str,
    forbidden: &'static [&'static str],
    tests: Tests,
    why: &'static str,
}

/// Threads and sockets live in `src/shard`, and only there.
const THREADS_AND_SOCKETS: &[&str] = &[
    "thread::spawn",
    "thread::Builder",
    "TcpListener",
    "TcpStream",
    "UdpSocket",
    "socket2",
    "monoio",
];

const RULES: &[Rule] = &[
    Rule {
        path: "crates/store/src",
        forbidden: &[
            "std::time",
            "SystemTime",
            "Instant",
            "std::net",
            "std::fs",
            "thread::spawn",
            "HashMap",
            "HashSet",
            "rand::",
        ],
        tests: Tests::Exempt,
        why: "crates/store is a pure, deterministic state machine",
    },
    Rule {
        path: "src/http",
        forbidden: &[
            "crate::shard",
            "crate::raft",
            "crate::wal",
            "std::net",
            "std::thread",
            "flume",
        ],
        tests: Tests::Checked,
        why: "src/http turns bytes into routes and renders bytes; nothing else",
    },
    Rule {
        path: "src/raft",
        forbidden: &[
            "crate::shard",
            "crate::http",
            "std::net",
            "std::thread",
            "std::fs",
            "File::",
            "flume",
        ],
        tests: Tests::Checked,
        why: "src/raft is sans-I/O: the log is injected",
    },
    Rule {
        path: "src/wal",
        forbidden: &["crate::shard", "crate::http", "crate::raft"],
        tests: Tests::Checked,
        why: "src/wal stores entries and a hard state, and knows nothing of raft or HTTP",
    },
    Rule {
        path: "src/watch",
        forbidden: &["crate::shard", "crate::http"],
        tests: Tests::Checked,
        why: "src/watch holds events and watchers; shards deliver them, http renders them",
    },
    Rule {
        path: "src/auth",
        forbidden: &[
            "crate::shard",
            "crate::http",
            "crate::raft",
            "std::time",
            "SystemTime",
            "Instant",
            "HashMap",
            "HashSet",
            "rand::",
            "bcrypt",
            "std::fs",
        ],
        tests: Tests::Checked,
        why: "src/auth is a pure, deterministic state machine and pure permission checks",
    },
    Rule {
        path: "src/migrate",
        forbidden: &[
            "crate::http",
            "crate::raft",
            "crate::wal",
            "std::net",
            "flume",
        ],
        tests: Tests::Checked,
        why: "src/migrate reads etcd's files and writes a ringd data dir: no server, no log",
    },
    Rule {
        path: "src/backup",
        forbidden: &["crate::http", "crate::raft", "crate::wal", "flume"],
        tests: Tests::Checked,
        why: "src/backup is one-off commands over snapshot files: the network through shard::fetch, data dirs through migrate's writer",
    },
    Rule {
        path: "src/members.rs",
        forbidden: &["crate::shard", "crate::http"],
        tests: Tests::Checked,
        why: "src/members is identity only: http renders members and decodes member requests",
    },
    Rule {
        path: "src/config.rs",
        forbidden: &["crate::shard", "crate::http", "crate::raft", "crate::wal"],
        tests: Tests::Checked,
        why: "src/config turns flags and variables into a configuration",
    },
    Rule {
        path: "src/limits.rs",
        forbidden: &["crate::"],
        tests: Tests::Checked,
        why: "src/limits is constants and their relations; it depends on nothing",
    },
    Rule {
        path: "src/snapshot.rs",
        forbidden: &["crate::shard", "crate::http", "crate::raft"],
        tests: Tests::Checked,
        why: "src/snapshot reads and writes snapshot files of bytes it is given",
    },
    Rule {
        path: "src/stats.rs",
        forbidden: &["crate::shard", "crate::http", "crate::raft", "crate::wal"],
        tests: Tests::Checked,
        why: "src/stats is counters and their sums; http renders them",
    },
    Rule {
        path: "src/ttl.rs",
        forbidden: &[
            "crate::shard",
            "crate::http",
            "crate::raft",
            "crate::wal",
            "std::time",
            "SystemTime",
            "Instant",
        ],
        tests: Tests::Checked,
        why: "src/ttl is a pure timer wheel: the time is passed in",
    },
    Rule {
        path: "src/shard/raft_shard.rs",
        forbidden: &["crate::http"],
        tests: Tests::Checked,
        why: "the raft shard (the writer) never speaks HTTP: client shards do",
    },
    Rule {
        path: "src/shard/recovery.rs",
        forbidden: &["crate::http"],
        tests: Tests::Checked,
        why: "the raft shard (the writer) never speaks HTTP: client shards do",
    },
    Rule {
        path: "src/shard/backup.rs",
        forbidden: &["crate::http"],
        tests: Tests::Checked,
        why: "the raft shard (the writer) never speaks HTTP: client shards do",
    },
    Rule {
        path: "src/shard/snapshotter.rs",
        forbidden: &["crate::http"],
        tests: Tests::Checked,
        why: "the raft shard (the writer) never speaks HTTP: client shards do",
    },
];

/// Every module but `src/shard` (and the binary's `main.rs`) is bound by THREADS_AND_SOCKETS.
const THREAD_AND_SOCKET_OWNERS: &[&str] = &["src/shard", "src/main.rs"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_file() {
        out.push(path.to_path_buf());
        return;
    }
    for entry in std::fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src` with comments and the insides of string and char literals replaced by spaces, line
/// breaks kept, so that what is left is code and line numbers still match.
fn blank_comments_and_literals(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let ident = |c: Option<&char>| c.is_some_and(|c| c.is_alphanumeric() || *c == '_');
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let (c, next) = (b[i], b.get(i + 1).copied());
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (!ident(i.checked_sub(1).and_then(|p| b.get(p)))
                || (b[i - 1] == 'b' && !ident(i.checked_sub(2).and_then(|p| b.get(p)))))
            && matches!(next, Some('"') | Some('#'))
            && b[i + 1..].iter().find(|&&c| c != '#') == Some(&'"')
        {
            // A raw string: r"…", r#"…"#, br##"…"##.
            let hashes = b[i + 1..].iter().take_while(|&&c| c == '#').count();
            let open = i + 1 + hashes;
            for &c in &b[i..=open] {
                out.push(c);
            }
            i = open + 1;
            while i < b.len() {
                let closes = b[i] == '"'
                    && b[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&c| c == '#')
                        .count()
                        == hashes;
                if closes {
                    for &c in &b[i..=i + hashes] {
                        out.push(c);
                    }
                    i += hashes + 1;
                    break;
                }
                out.push(blank(b[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push('"');
            i += 1;
            while i < b.len() {
                if b[i] == '\\' && i + 1 < b.len() {
                    out.push(' ');
                    out.push(blank(b[i + 1]));
                    i += 2;
                } else if b[i] == '"' {
                    out.push('"');
                    i += 1;
                    break;
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == '\'' && next == Some('\\') {
            // An escaped char literal: '\n', '\'', '\u{2028}'.
            out.push_str("' ");
            i += 2;
            while i < b.len() && b[i] != '\'' {
                out.push(' ');
                i += 1;
            }
            // The escaped character itself may be a quote: '\''.
            if i + 1 < b.len() && b[i - 1] == '\\' && b[i + 1] == '\'' {
                out.push(' ');
                i += 1;
            }
            out.push('\'');
            i += 1;
        } else if c == '\'' && b.get(i + 2) == Some(&'\'') {
            out.push_str("' '");
            i += 3;
        } else {
            // Code, or the quote of a lifetime ('a, 'static).
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The test modules of a file of code (comments and literals already blanked): the byte
/// ranges of `#[cfg(test)] mod name { … }` blocks, and the names of `#[cfg(test)] mod name;`.
fn test_modules(code: &str) -> (Vec<std::ops::Range<usize>>, Vec<String>) {
    let (mut blocks, mut files) = (Vec::new(), Vec::new());
    let mut from = 0;
    while let Some(at) = code[from..].find("#[cfg(test)]") {
        let start = from + at;
        let mut rest = &code[start + "#[cfg(test)]".len()..];
        // Further attributes between the cfg and the item.
        loop {
            rest = rest.trim_start();
            if !rest.starts_with("#[") {
                break;
            }
            rest = &rest[rest.find(']').map_or(rest.len(), |e| e + 1)..];
        }
        from = start + 1;
        let Some(item) = rest.strip_prefix("mod") else {
            continue;
        };
        if !item.starts_with(char::is_whitespace) {
            continue;
        }
        let item = item.trim_start();
        let name: String = item
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let after = item[name.len()..].trim_start();
        if after.starts_with(';') {
            files.push(name);
        } else if after.starts_with('{') {
            let open = code.len() - after.len();
            let mut depth = 0usize;
            let mut end = code.len();
            for (k, ch) in code[open..].char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = open + k + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            blocks.push(start..end);
            from = end;
        }
    }
    (blocks, files)
}

/// The file of module `name` declared in `file`.
fn module_files(file: &Path, name: &str) -> [PathBuf; 2] {
    let dir = match file.file_stem().and_then(|s| s.to_str()) {
        Some("mod" | "lib" | "main") => file.parent().unwrap().to_path_buf(),
        Some(stem) => file.parent().unwrap().join(stem),
        None => unreachable!("a .rs file has a stem"),
    };
    [
        dir.join(format!("{name}.rs")),
        dir.join(name).join("mod.rs"),
    ]
}

/// The code a rule checks, by file: comments and literals blanked, and, for a rule that
/// exempts tests, the test modules blanked and their files left out.
fn code_under(path: &str, tests: Tests) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(&root().join(path), &mut files);
    assert!(!files.is_empty(), "no files under {path}");
    let mut out = Vec::new();
    let mut test_files = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut code = blank_comments_and_literals(&text);
        // Literals and comments hide unbalanced braces ('{', "}"); balanced braces left in
        // the code show that the scanner found where each of them ends.
        let (open, close) = (code.matches('{').count(), code.matches('}').count());
        assert_eq!(
            open,
            close,
            "tidy lost track of a literal in {}",
            f.display()
        );
        if tests == Tests::Exempt {
            let (blocks, names) = test_modules(&code);
            for r in blocks.into_iter().rev() {
                let blanked: String = code[r.clone()]
                    .chars()
                    .map(|c| if c == '\n' { '\n' } else { ' ' })
                    .collect();
                code.replace_range(r, &blanked);
            }
            for name in names {
                test_files.extend(module_files(&f, &name));
            }
        }
        out.push((f, code));
    }
    out.retain(|(f, _)| !test_files.contains(f));
    out
}

/// The lines of `code` that contain a forbidden word, as `file:line: `word``.
fn violations(file: &Path, code: &str, forbidden: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for (n, line) in code.lines().enumerate() {
        for word in forbidden {
            if line.contains(word) {
                let file = file.strip_prefix(root()).unwrap_or(file);
                bad.push(format!("{}:{}: `{word}`", file.display(), n + 1));
            }
        }
    }
    bad
}

fn check(path: &str, forbidden: &[&str], tests: Tests, why: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for (f, code) in code_under(path, tests) {
        bad.extend(
            violations(&f, &code, forbidden)
                .into_iter()
                .map(|v| format!("{v} ({why})")),
        );
    }
    bad
}

#[test]
fn every_module_keeps_to_its_layer() {
    let mut bad = Vec::new();
    for rule in RULES {
        bad.extend(check(rule.path, rule.forbidden, rule.tests, rule.why));
    }
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

#[test]
fn only_the_shard_module_spawns_threads_or_opens_sockets() {
    let mut bad = Vec::new();
    let mut paths = vec!["crates/store/src".to_string()];
    for entry in std::fs::read_dir(root().join("src")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        paths.push(format!("src/{name}"));
    }
    for path in paths {
        if THREAD_AND_SOCKET_OWNERS.contains(&path.as_str()) || path == "src/lib.rs" {
            continue;
        }
        let tests = if path.starts_with("crates/store") {
            Tests::Exempt
        } else {
            Tests::Checked
        };
        let why = "threads and sockets live in src/shard";
        bad.extend(check(&path, THREADS_AND_SOCKETS, tests, why));
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn every_top_level_module_has_a_rule() {
    for entry in std::fs::read_dir(root().join("src")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if matches!(name.as_str(), "lib.rs" | "main.rs") {
            continue;
        }
        let path = format!("src/{name}");
        assert!(
            RULES
                .iter()
                .any(|r| r.path == path || r.path.starts_with(&format!("{path}/"))),
            "{path} has no layering rule in tests/tidy.rs: add one (and its invariant to \
             ARCHITECTURE.md)"
        );
    }
}

/// The scanner itself: it must see code after a test module, and never inside comments,
/// literals or (for a rule that exempts them) test modules.
#[test]
fn the_scanner_checks_whole_files_but_not_comments_literals_or_exempt_tests() {
    let src = r####"//! Mentions crate::shard in a doc comment.
use crate::a; // crate::shard in a comment
const S: &str = "crate::shard \" crate::shard";
const R: &str = r#"crate::shard "# ;
const C: [char; 3] = ['{', '\'', '\u{7b}'];
fn f<'a>(x: &'a str) -> &'a str { /* crate::shard /* nested */ crate::shard */ x }

#[cfg(test)]
#[allow(dead_code)]
mod tests {
    use crate::shard::inside_tests;
    fn g() { let _ = '}'; }
}

use crate::shard::after_tests;
"####;
    let code = blank_comments_and_literals(src);
    assert_eq!(code.lines().count(), src.lines().count());
    let all = violations(Path::new("x.rs"), &code, &["crate::shard"]);
    assert_eq!(all, ["x.rs:11: `crate::shard`", "x.rs:15: `crate::shard`"]);
    let (blocks, files) = test_modules(&code);
    assert!(files.is_empty());
    assert_eq!(blocks.len(), 1);
    let mut outside = code.clone();
    outside.replace_range(blocks[0].clone(), "");
    let left = violations(Path::new("x.rs"), &outside, &["crate::shard"]);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(outside.contains("use crate::shard::after_tests;"));

    let (_, files) = test_modules(&blank_comments_and_literals("#[cfg(test)]\nmod tests;\n"));
    assert_eq!(files, ["tests"]);
}

#[test]
fn architecture_md_maps_every_module() {
    let arch = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    for entry in std::fs::read_dir(root().join("src")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let module = name.trim_end_matches(".rs");
        if matches!(module, "lib" | "main") {
            continue;
        }
        assert!(
            arch.contains(&format!("`{module}`"))
                || arch.contains(&format!("src/{name}"))
                || arch.contains(&format!("`src/{module}")),
            "ARCHITECTURE.md does not mention src/{name}"
        );
    }
}
