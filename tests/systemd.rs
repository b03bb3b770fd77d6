//! The systemd unit in dist/: `systemd-analyze verify` accepts it without a warning (where
//! systemd-analyze is installed), and it keeps the settings the service relies on.

mod support;

use std::process::Command;

fn unit_text() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/ringd.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_unit_is_a_hardened_notify_service() {
    let unit = unit_text();
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/bin/ringd",
        "Restart=on-failure",
        "LimitNOFILE=65536",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=ringd",
        "Environment=ETCD_DATA_DIR=/var/lib/ringd/data",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == line),
            "dist/ringd.service lacks {line}"
        );
    }
}

#[test]
fn systemd_analyze_verifies_the_unit_without_warnings() {
    let Some(analyze) = support::find_in_path("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed: skipped");
        return;
    };
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = support::TempDir::new("ringd-unit");
    let unit = unit_text().replace(
        "ExecStart=/usr/local/bin/ringd",
        &format!("ExecStart={}", support::ringd_binary().display()),
    );
    let path = dir.path().join("ringd.service");
    std::fs::write(&path, unit).expect("write the unit");
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );
}
