//! https end to end with nothing installed: a CA, a server and a client
//! certificate are made with rcgen at test time, `loadgen serve-static` serves
//! https with them, and loadgen runs against it through the binary.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use support::{Server, BIN};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// PEM files in a fresh temporary directory: ca.pem (the CA that signed
/// server.pem and client.pem), other-ca.pem (an unrelated CA), and keys.
fn make_certs(tag: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("loadgen-tls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).expect("write pem");
    let ca = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("ca key");
        let cert = p.self_signed(&key).expect("ca cert");
        (cert, key)
    };
    let (ca_cert, ca_key) = ca("loadgen test CA");
    let (other_ca, _) = ca("some other CA");
    let mut sp = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    sp.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let skey = KeyPair::generate().expect("server key");
    let scert = sp.signed_by(&skey, &ca_cert, &ca_key).expect("server cert");
    let mut cp = CertificateParams::new(Vec::<String>::new()).expect("client params");
    cp.distinguished_name
        .push(DnType::CommonName, "loadgen client");
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let ckey = KeyPair::generate().expect("client key");
    let ccert = cp.signed_by(&ckey, &ca_cert, &ca_key).expect("client cert");
    write("ca.pem", ca_cert.pem());
    write("other-ca.pem", other_ca.pem());
    write("server.pem", scert.pem());
    write("server.key", skey.serialize_pem());
    write("client.pem", ccert.pem());
    write("client.key", ckey.serialize_pem());
    Dir(dir)
}

/// Starts serve-static in https mode; returns it and its address.
fn start_tls_server(dir: &Path, extra: &[&str]) -> (Server, String) {
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let tls = [
        "--tls-cert",
        cert.to_str().expect("utf-8 path"),
        "--tls-key",
        key.to_str().expect("utf-8 path"),
    ];
    support::serve_static(&[&tls[..], extra].concat())
}

/// `loadgen get --key /x` against `addr` over https with extra arguments;
/// returns the process output and the JSON report.
fn run_get(dir: &Path, addr: &str, name: &str, extra: &[&str]) -> (Output, serde_json::Value) {
    run_get_env(dir, addr, name, extra, &[])
}

fn run_get_env(
    dir: &Path,
    addr: &str,
    name: &str,
    extra: &[&str],
    env: &[(&str, &Path)],
) -> (Output, serde_json::Value) {
    let json_path = dir.join(format!("{name}.json"));
    let mut cmd = Command::new(BIN);
    cmd.args(["get", "--key", "/x", "--url", &format!("https://{addr}")])
        .args(["--requests", "2000", "--connections", "8", "--threads", "2"])
        .args(["--pipeline", "4", "--quiet", "--timeout", "5", "--json"])
        .arg(&json_path)
        .args(extra)
        .current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run loadgen");
    let text = std::fs::read_to_string(&json_path).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid json");
    (out, v)
}

fn assert_clean(out: &Output, v: &serde_json::Value) {
    assert!(
        out.status.success(),
        "loadgen failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["requests"], 2000, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["errors_by_kind"].as_object().expect("kinds").is_empty());
    assert!(v["requests_per_sec"].as_f64().expect("rps") > 0.0);
}

/// A run that could not speak TLS: exit code 1, only `tls` errors, and the
/// banner says that no request got an answer.
fn assert_tls_failure(out: &Output, v: &serde_json::Value) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(v["requests"], 0, "{v}");
    let kinds = v["errors_by_kind"].as_object().expect("kinds");
    assert!(
        kinds.len() == 1 && kinds["tls"].as_u64().unwrap_or(0) > 0,
        "{v}"
    );
    assert!(
        stderr.contains("tls=") && stderr.contains("every connection failed"),
        "{stderr}"
    );
    assert!(stderr.contains("first tls error"), "{stderr}");
}

#[test]
fn https_get_with_cacert_and_verification_failures() {
    let d = make_certs("verify");
    let dir = &d.0;
    let (_server, addr) = start_tls_server(dir, &[]);

    // verified against --cacert: keep-alive, pipelining, two threads
    let (out, v) = run_get(dir, &addr, "ok", &["--cacert", "ca.pem"]);
    assert_clean(&out, &v);
    assert_eq!(v["url"], format!("https://{addr}"));
    assert_eq!(v["params"]["tls"]["insecure"], false);
    assert_eq!(v["params"]["pipeline"], 4);

    // the server name is checked: the certificate also names localhost
    let port = addr.rsplit_once(':').expect("port").1;
    let local = format!("localhost:{port}");
    let (out, v) = run_get(dir, &local, "dns", &["--cacert", "ca.pem"]);
    assert_clean(&out, &v);

    // no --cacert, no --insecure: the system roots are used; point them
    // (SSL_CERT_FILE) at a store without our CA so the test does not depend
    // on the machine's store
    let (out, v) = run_get_env(
        dir,
        &addr,
        "roots",
        &[],
        &[("SSL_CERT_FILE", &dir.join("other-ca.pem"))],
    );
    assert_tls_failure(&out, &v);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");

    // the wrong CA
    let (out, v) = run_get(dir, &addr, "other", &["--cacert", "other-ca.pem"]);
    assert_tls_failure(&out, &v);

    // --insecure works, with a warning
    let (out, v) = run_get(dir, &addr, "insecure", &["--insecure"]);
    assert_clean(&out, &v);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WARNING") && stderr.contains("--insecure"),
        "{stderr}"
    );
    assert_eq!(v["params"]["tls"]["insecure"], true);
}

#[test]
fn https_client_certificates() {
    let d = make_certs("client");
    let dir = &d.0;
    let ca = dir.join("ca.pem");
    let ca = ca.to_str().expect("utf-8 path");
    let (_server, addr) = start_tls_server(dir, &["--tls-client-ca", ca]);

    let (out, v) = run_get(
        dir,
        &addr,
        "cert",
        &[
            "--cacert",
            "ca.pem",
            "--cert",
            "client.pem",
            "--key-file",
            "client.key",
        ],
    );
    assert_clean(&out, &v);
    assert_eq!(v["params"]["tls"]["client_cert"], true);

    // without a client certificate the server refuses: tls errors, exit 1
    let (out, v) = run_get(dir, &addr, "nocert", &["--cacert", "ca.pem"]);
    assert_tls_failure(&out, &v);
}

#[test]
fn bad_tls_files_are_reported() {
    let d = make_certs("files");
    let dir = &d.0;
    // a missing CA file: a clear message and exit code 2, before any load
    let out = Command::new(BIN)
        .args(["get", "--key", "/x", "--url", "https://127.0.0.1:1"])
        .args(["--cacert", "/nonexistent/ca.pem", "-n", "1", "-q"])
        .output()
        .expect("run loadgen");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--cacert /nonexistent/ca.pem"), "{stderr}");
    // a key file that holds no key
    let out = Command::new(BIN)
        .args(["get", "--key", "/x", "--url", "https://127.0.0.1:1"])
        .args(["--cacert", "ca.pem", "--cert", "client.pem"])
        .args(["--key-file", "ca.pem", "-n", "1", "-q"])
        .current_dir(dir)
        .output()
        .expect("run loadgen");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--key-file"), "{stderr}");
}

/// `--new-conn` over https: a TCP connection and a full TLS handshake for every request
/// (serve-static closes each one after its answer, as the request asks), keep-alive otherwise.
#[test]
fn https_new_connection_per_request() {
    let d = make_certs("newconn");
    let dir = &d.0;
    let (_server, addr) = start_tls_server(dir, &[]);
    let run = |name: &str, extra: &[&str]| {
        let json = dir.join(format!("{name}.json"));
        let out = Command::new(BIN)
            .args(["get", "--key", "/x", "--url", &format!("https://{addr}")])
            .args([
                "--cacert",
                "ca.pem",
                "--requests",
                "400",
                "--connections",
                "4",
            ])
            .args(["--threads", "2", "--quiet", "--timeout", "5", "--json"])
            .arg(&json)
            .args(extra)
            .current_dir(dir)
            .output()
            .expect("run loadgen");
        assert!(
            out.status.success(),
            "loadgen {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&json).expect("json written");
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid json");
        assert_eq!(
            (v["requests"].clone(), v["errors"].clone()),
            (400.into(), 0.into()),
            "{v}"
        );
        v
    };
    assert_eq!(run("keepalive", &[])["connections_opened"], 4);
    let v = run("newconn", &["--new-conn"]);
    assert_eq!(v["connections_opened"], 400, "{v}");
    assert_eq!(v["params"]["new_conn"], true, "{v}");
}
