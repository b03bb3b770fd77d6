//! Tidy: the layering rules of ARCHITECTURE.md, checked on the source text so a violation
//! fails CI instead of waiting for a reviewer.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Checks non-test code: scanning a file stops at its first `#[cfg(test)]` (unit tests sit at
/// the bottom of their file by convention) and skips files named tests.rs.
fn check_absent(dir: &str, forbidden: &[&str], why: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join(dir), &mut files);
    assert!(!files.is_empty(), "no files under {dir}");
    let mut bad = Vec::new();
    for f in files {
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim() == "#[cfg(test)]" {
                break;
            }
            let code = line.split("//").next().unwrap_or("");
            for word in forbidden {
                if code.contains(word) {
                    bad.push(format!("{}:{}: `{word}`", f.display(), n + 1));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{why}:\n{}", bad.join("\n"));
}

#[test]
fn the_store_knows_nothing_of_io_time_threads_or_hash_order() {
    check_absent(
        "crates/store/src",
        &[
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
        "crates/store is a pure, deterministic state machine",
    );
}

#[test]
fn http_knows_nothing_of_raft_shards_sockets_or_threads() {
    check_absent(
        "src/http",
        &[
            "crate::shard",
            "crate::raft",
            "crate::wal",
            "monoio",
            "std::net",
            "std::thread",
            "flume",
        ],
        "src/http turns bytes into routes and renders bytes; nothing else",
    );
}

#[test]
fn raft_knows_nothing_of_sockets_threads_or_files() {
    check_absent(
        "src/raft",
        &[
            "crate::shard",
            "crate::http",
            "monoio",
            "std::net",
            "std::thread",
            "std::fs",
            "File::",
        ],
        "src/raft is sans-I/O: the log is injected",
    );
}

#[test]
fn only_the_shard_module_spawns_threads_or_opens_sockets() {
    for dir in [
        "src/http",
        "src/raft",
        "src/wal",
        "src/watch",
        "crates/store/src",
    ] {
        check_absent(
            dir,
            &[
                "thread::spawn",
                "thread::Builder",
                "TcpListener",
                "TcpStream",
            ],
            "threads and sockets live in src/shard",
        );
    }
}

#[test]
fn architecture_md_maps_every_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    for entry in std::fs::read_dir(root.join("src")).unwrap() {
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
