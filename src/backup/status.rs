//! `ringd snapshot status FILE [-w table|json]`: what a snapshot file holds, as etcdctl's
//! `snapshot status` prints it (hash, index, total keys, total size), with ringd's raft
//! index and term and etcd index for the revision. Keys are the v2 nodes, keys and
//! directories, the root left out.

use super::{load, store_of, StatusArgs};

/// One snapshot file's figures.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    /// The CRC32C trailer.
    hash: u32,
    raft_index: u64,
    raft_term: u64,
    etcd_index: u64,
    total_key: u64,
    total_size: u64,
}

pub(super) fn run(a: &StatusArgs) -> Result<String, String> {
    let loaded = load(&a.file)?;
    let store = store_of(&loaded)?;
    let status = Status {
        hash: loaded.crc32c,
        raft_index: loaded.file.raft_index,
        raft_term: loaded.file.raft_term,
        etcd_index: store.index().0,
        total_key: store.node_count(),
        total_size: loaded.bytes,
    };
    if a.write_out == "json" {
        return serde_json::to_string(&status).map_err(|e| e.to_string());
    }
    Ok(table(&status))
}

/// etcdctl's table layout: a header row and one row, right-aligned numbers.
fn table(s: &Status) -> String {
    let header = [
        "HASH",
        "RAFT INDEX",
        "RAFT TERM",
        "ETCD INDEX",
        "TOTAL KEYS",
        "TOTAL SIZE",
    ];
    let row = [
        format!("{:08x}", s.hash),
        s.raft_index.to_string(),
        s.raft_term.to_string(),
        s.etcd_index.to_string(),
        s.total_key.to_string(),
        human_bytes(s.total_size),
    ];
    let widths: Vec<usize> = header
        .iter()
        .zip(&row)
        .map(|(h, r)| h.len().max(r.len()))
        .collect();
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+";
    let centered: String = header
        .iter()
        .zip(&widths)
        .map(|(h, w)| {
            let left = (w - h.len()).div_ceil(2);
            format!(
                "| {}{h}{} ",
                " ".repeat(left),
                " ".repeat(w - h.len() - left)
            )
        })
        .collect::<String>()
        + "|";
    let cells: String = row
        .iter()
        .zip(&widths)
        .enumerate()
        .map(|(i, (r, w))| {
            // The hash and the size read left to right, the counts right-aligned.
            if i == 0 || i == row.len() - 1 {
                format!("| {r:<w$} ")
            } else {
                format!("| {r:>w$} ")
            }
        })
        .collect::<String>()
        + "|";
    format!("{rule}\n{centered}\n{rule}\n{cells}\n{rule}")
}

/// go-humanize's `Bytes` (SI units), as etcdctl prints sizes: "12 kB", "2.1 MB".
fn human_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut e = 0;
    while e + 1 < units.len() && n >= 1000u64.pow(e as u32 + 1) {
        e += 1;
    }
    let value = (n as f64 / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", units[e])
    } else {
        format!("{value:.0} {}", units[e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_etcdctl_prints_them() {
        let got: Vec<String> = [0, 9, 10, 999, 1000, 12_345, 2_100_000, 987_654_321]
            .iter()
            .map(|n| human_bytes(*n))
            .collect();
        assert_eq!(
            got,
            ["0 B", "9 B", "10 B", "999 B", "1.0 kB", "12 kB", "2.1 MB", "988 MB"]
        );
    }

    #[test]
    fn table_and_json() {
        let s = Status {
            hash: 0xfe01cf57,
            raft_index: 1234,
            raft_term: 2,
            etcd_index: 1001,
            total_key: 7,
            total_size: 2_100_000,
        };
        let expected = "\
+----------+------------+-----------+------------+------------+------------+
|   HASH   | RAFT INDEX | RAFT TERM | ETCD INDEX | TOTAL KEYS | TOTAL SIZE |
+----------+------------+-----------+------------+------------+------------+
| fe01cf57 |       1234 |         2 |       1001 |          7 | 2.1 MB     |
+----------+------------+-----------+------------+------------+------------+";
        assert_eq!(table(&s), expected);
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"hash":4261531479,"raftIndex":1234,"raftTerm":2,"etcdIndex":1001,"totalKey":7,"totalSize":2100000}"#
        );
    }
}
