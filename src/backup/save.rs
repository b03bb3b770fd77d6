//! `ringd snapshot save FILE --endpoint URL`: streams the member's snapshot into `FILE.part`
//! (as etcdctl does), fsyncs it, checks it, renames it to `FILE` and fsyncs the directory. A
//! failed or cut-short transfer, or bytes that do not check out, leave no `FILE` (and no
//! `FILE.part`). `--data-dir D` instead: the state of a stopped member's data dir
//! (`shard::backup::save_stopped`), written the same way.

use super::{load, Loaded, SaveArgs};
use crate::config::TlsSettings;
use crate::shard::fetch::{self, Get};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long connecting may take (etcdctl's `--dial-timeout` default is 2 s; a little more
/// for a member under load).
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the member may stay silent: its read barrier waits up to etcd's request timeout
/// (5 s plus two election timeouts) and then encodes the whole store before the first byte.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Debian's CA bundle, the default trust for an https endpoint without --cacert.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The largest error body read back (etcd's `{"message"}`).
const ERROR_BODY_BYTES_MAX: u64 = 64 * 1024;

pub(super) fn run(a: &SaveArgs) -> Result<String, String> {
    let (loaded, etcd_index) = match (&a.data_dir, &a.endpoint) {
        (Some(dir), _) => {
            // The copy recovery works on sits beside FILE (the same file system as FILE.part).
            let scratch = sibling(&a.file, &format!(".scratch-{}", std::process::id()));
            let saved = crate::shard::backup::save_stopped(dir, &scratch)?;
            let length = saved.bytes.len() as u64;
            let loaded = keep(&mut saved.bytes.as_slice(), Some(length), &a.file)?;
            (loaded, saved.etcd_index.to_string())
        }
        (None, Some(endpoint)) => {
            let mut response = fetch_snapshot(a, endpoint)?;
            let length = response.content_length;
            let loaded = keep(response.body(), length, &a.file)?;
            let index = response.header("X-Etcd-Index").unwrap_or("?").to_string();
            (loaded, index)
        }
        (None, None) => return Err("give --endpoint URL (or a stopped member's --data-dir)".into()),
    };
    Ok(format!(
        "Snapshot saved at {}: raft index {}, etcd index {etcd_index}, {} bytes, crc32c {:08x}",
        a.file.display(),
        loaded.file.raft_index,
        loaded.bytes,
        loaded.crc32c
    ))
}

/// `GET /ringd/snapshot` on the endpoint: the response, once its head says 200.
fn fetch_snapshot(a: &SaveArgs, endpoint: &str) -> Result<fetch::Response, String> {
    if endpoint.contains(',') {
        return Err("snapshot save takes one endpoint (--endpoint URL)".to_string());
    }
    let tls = connector(a, endpoint)?;
    let authorization = a.user.as_deref().map(basic_auth).transpose()?;
    let headers: Vec<(&str, &str)> = authorization
        .as_deref()
        .map(|v| ("Authorization", v))
        .into_iter()
        .collect();
    let mut response = fetch::get(&Get {
        url: endpoint.trim_end_matches('/'),
        path: "/ringd/snapshot",
        tls: tls.as_ref(),
        headers: &headers,
        dial_timeout: DIAL_TIMEOUT,
        read_timeout: READ_TIMEOUT,
    })?;
    if response.status == 200 {
        return Ok(response);
    }
    let mut body = String::new();
    let _ = std::io::Read::read_to_string(
        &mut std::io::Read::take(response.body(), ERROR_BODY_BYTES_MAX),
        &mut body,
    );
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or(body);
    Err(format!(
        "{endpoint} answered {}: {}",
        response.status,
        message.trim()
    ))
}

/// Writes the snapshot from `from` into FILE.part, makes it durable, checks it, renames it
/// to `file` and makes the rename durable. On any failure before the rename, FILE.part is
/// removed and `file` untouched.
fn keep(from: &mut dyn std::io::Read, length: Option<u64>, file: &Path) -> Result<Loaded, String> {
    let part = sibling(file, ".part");
    let checked = receive(from, length, &part)
        .and_then(|()| load(&part))
        .and_then(|loaded| {
            std::fs::rename(&part, file).map_err(|e| {
                format!(
                    "cannot rename {} to {}: {e}",
                    part.display(),
                    file.display()
                )
            })?;
            Ok(loaded)
        });
    let loaded = match checked {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(format!("{e}; nothing saved"));
        }
    };
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| {
            format!(
                "saved {}, but cannot sync {}: {e}",
                file.display(),
                dir.display()
            )
        })?;
    Ok(loaded)
}

/// `FILE` with `suffix` appended (`FILE.part`), beside it.
fn sibling(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Writes `from` to `part` and makes it durable; all of `length` must arrive.
fn receive(from: &mut dyn std::io::Read, length: Option<u64>, part: &Path) -> Result<(), String> {
    let mut f = std::fs::File::create(part)
        .map_err(|e| format!("cannot create {}: {e}", part.display()))?;
    let got = std::io::copy(from, &mut f).map_err(|e| format!("the transfer failed: {e}"))?;
    if let Some(n) = length.filter(|n| *n != got) {
        return Err(format!("the transfer was cut short: {got} of {n} bytes"));
    }
    f.sync_all()
        .map_err(|e| format!("cannot sync {}: {e}", part.display()))
}

/// The TLS client side for an https endpoint (None for http).
fn connector(a: &SaveArgs, endpoint: &str) -> Result<Option<crate::shard::tls::Connector>, String> {
    if !endpoint.starts_with("https://") {
        return Ok(None);
    }
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let trusted_ca_file = match (&a.cacert, a.insecure_skip_tls_verify) {
        (_, true) => None,
        (Some(ca), false) => Some(ca.display().to_string()),
        (None, false) if Path::new(SYSTEM_CA_BUNDLE).is_file() => {
            Some(SYSTEM_CA_BUNDLE.to_string())
        }
        (None, false) => {
            return Err(format!(
                "{endpoint} is https: give the CA that signed its certificate (--cacert FILE), or --insecure-skip-tls-verify"
            ))
        }
    };
    let settings = TlsSettings {
        cert_file: path(&a.cert),
        key_file: path(&a.key),
        trusted_ca_file,
        client_cert_auth: false,
        // Without a trusted CA this accepts any server certificate (the handshake's
        // signatures are still checked).
        auto_tls: a.insecure_skip_tls_verify,
    };
    crate::shard::tls::connector(&settings).map(Some)
}

/// `Basic base64(NAME:PASSWORD)`.
fn basic_auth(user: &str) -> Result<String, String> {
    use base64::Engine as _;
    if !user.contains(':') {
        return Err("--user takes NAME:PASSWORD".to_string());
    }
    Ok(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_file_sits_beside_the_file_and_user_needs_a_password() {
        assert_eq!(
            sibling(Path::new("/b/snap.db"), ".part"),
            PathBuf::from("/b/snap.db.part")
        );
        assert_eq!(basic_auth("root:pw").unwrap(), "Basic cm9vdDpwdw==");
        assert!(basic_auth("root").is_err());
    }
}
