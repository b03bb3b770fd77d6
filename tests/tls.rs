//! https on the client port and TLS on the peer port, with certificates made by rcgen at test
//! time (nothing installed is needed but `openssl`, for the TLS 1.1 check, and `etcdctl`;
//! .ci/run installs both, and the tests fail without them). Behaviour checked against etcd 3.4 (WIRE.md, "TLS and
//! client certificates").
//!
//! The members here dial each other directly: the fault proxies of `support/cluster.rs` read
//! each peer stream's plaintext handshake, which TLS hides.

mod support;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{free_port, ringd_binary, TempDir};

const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(cn: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A leaf certificate signed by `ca` for 127.0.0.1/localhost, usable by servers and clients,
/// written as `<dir>/<name>.pem` and `<dir>/<name>.key`; `expired` makes it end in 2001.
fn leaf(dir: &Path, name: &str, cn: &str, ca: &Ca, expired: bool) -> (PathBuf, PathBuf) {
    let mut p =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    if expired {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn write_ca(dir: &Path, name: &str, ca: &Ca) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, ca.cert.pem()).unwrap();
    p
}

/// The files of a test: a CA, the server's certificate, a client certificate (CN=root), an
/// unrelated CA with a client certificate of its own, and an expired client certificate.
struct Pki {
    dir: TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("ringd-tls");
        let ca = ca("ringd test CA");
        write_ca(dir.path(), "ca.pem", &ca);
        leaf(dir.path(), "server", "server", &ca, false);
        leaf(dir.path(), "client", "root", &ca, false);
        leaf(dir.path(), "expired", "root", &ca, true);
        let other = self::ca("some other CA");
        write_ca(dir.path(), "other-ca.pem", &other);
        leaf(dir.path(), "foreign", "root", &other, false);
        Pki { dir, ca }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// A client
// ---------------------------------------------------------------------------------------------

fn client_config(
    ca: &str,
    cert: Option<(&str, &str)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let c = match cert {
        Some((c, k)) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(c)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    Arc::new(c)
}

fn all_versions() -> &'static [&'static rustls::SupportedProtocolVersion] {
    rustls::ALL_VERSIONS
}

/// What an https request got: the status and body, and the server's certificate.
struct Answer {
    status: u16,
    body: String,
    server_cert: Vec<u8>,
}

/// One request over TLS (Connection: close), read to the end.
fn https(
    addr: &str,
    config: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    form: &str,
) -> Result<Answer, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let server_cert = s
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no response head")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    Ok(Answer {
        status,
        body: body.to_string(),
        server_cert,
    })
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the process exits; its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, name: &str, args: &[String], env: &[(&str, String)]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(ringd_binary())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    Proc { child, log }
}

/// One member: https (and http) client URLs, plain peer URL; `extra` flags.
fn one_member(pki: &Pki, extra: &[&str], env: &[(&str, String)]) -> (Proc, String, String) {
    let (tls_port, http_port, peer_port) = (free_port(), free_port(), free_port());
    let https_url = format!("https://127.0.0.1:{tls_port}");
    let http_url = format!("http://127.0.0.1:{http_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut args: Vec<String> = [
        "--data-dir",
        &pki.path(&format!("data-{tls_port}")),
        "--listen-client-urls",
        &format!("{https_url},{http_url}"),
        "--advertise-client-urls",
        &format!("{https_url},{http_url}"),
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &format!("default={peer}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let p = spawn(pki.dir.path(), &format!("m{tls_port}"), &args, env);
    (
        p,
        format!("127.0.0.1:{tls_port}"),
        format!("127.0.0.1:{http_port}"),
    )
}

/// Waits until the plain http port answers /version (the https port is bound as early).
fn wait_ready(p: &mut Proc, http_addr: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = support::request_timeout(http_addr, "GET", "/version", &[], b"", WAIT) {
            if r.status == 200 {
                return;
            }
        }
        if let Ok(Some(s)) = p.child.try_wait() {
            panic!("ringd exited with {s}: {}", p.log());
        }
        assert!(Instant::now() < deadline, "ringd not ready: {}", p.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn server_flags(pki: &Pki) -> Vec<String> {
    vec![
        "--cert-file".into(),
        pki.path("server.pem"),
        "--key-file".into(),
        pki.path("server.key"),
    ]
}

/// A member with `--client-cert-auth` and the test CA, ready; its https address.
fn client_cert_auth_member(pki: &Pki) -> (Proc, String) {
    let mut flags = server_flags(pki);
    flags.extend([
        "--client-cert-auth".to_string(),
        "--trusted-ca-file".to_string(),
        pki.path("ca.pem"),
    ]);
    let (mut p, tls, http) = one_member(pki, &refs(&flags), &[]);
    wait_ready(&mut p, &http);
    (p, tls)
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

// ---------------------------------------------------------------------------------------------
// The client port
// ---------------------------------------------------------------------------------------------

#[test]
fn https_get_and_put_beside_http_with_https_urls_advertised() {
    let pki = Pki::new();
    // The certificate flags as ETCD_* variables.
    let env = [
        ("ETCD_CERT_FILE", pki.path("server.pem")),
        ("ETCD_KEY_FILE", pki.path("server.key")),
    ];
    let (mut p, tls, http) = one_member(&pki, &[], &env);
    wait_ready(&mut p, &http);
    let cfg = client_config(&pki.path("ca.pem"), None, all_versions());
    let put = https(&tls, &cfg, "PUT", "/v2/keys/a", "value=1").unwrap();
    assert_eq!(put.status, 201, "{}", put.body);
    let got = support::get(&http, "/v2/keys/a");
    assert_eq!(got.json()["node"]["value"], "1");
    let got = https(&tls, &cfg, "GET", "/v2/keys/a", "").unwrap();
    assert_eq!(got.status, 200);
    assert!(got.body.contains(r#""value":"1""#), "{}", got.body);
    // TLS 1.2 and TLS 1.3 both work.
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let cfg = client_config(&pki.path("ca.pem"), None, &[v]);
        assert_eq!(
            https(&tls, &cfg, "GET", "/version", "").unwrap().status,
            200
        );
    }
    let members = support::get(&http, "/v2/members").json();
    assert_eq!(
        members["members"][0]["clientURLs"][0],
        format!("https://{tls}")
    );
    let machines = support::get(&http, "/v2/machines").text();
    assert!(machines.contains(&format!("https://{tls}")), "{machines}");
}

#[test]
fn client_cert_auth_refuses_missing_foreign_and_expired_certificates() {
    let pki = Pki::new();
    let (p, tls) = client_cert_auth_member(&pki);
    let ca = pki.path("ca.pem");
    let good = client_config(
        &ca,
        Some((&pki.path("client.pem"), &pki.path("client.key"))),
        all_versions(),
    );
    assert_eq!(
        https(&tls, &good, "PUT", "/v2/keys/a", "value=1")
            .unwrap()
            .status,
        201
    );
    for (what, cert) in [
        ("none", None),
        ("foreign", Some("foreign")),
        ("expired", Some("expired")),
    ] {
        let (c, k) = cert.map_or((String::new(), String::new()), |n| {
            (pki.path(&format!("{n}.pem")), pki.path(&format!("{n}.key")))
        });
        let files = cert.map(|_| (c.as_str(), k.as_str()));
        for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let cfg = client_config(&ca, files, &[v]);
            let res = https(&tls, &cfg, "GET", "/v2/keys/a", "");
            assert!(res.is_err(), "{what} certificate accepted under {v:?}");
        }
    }
    // Each refusal is logged (rate-limited: at least one line).
    let deadline = Instant::now() + WAIT;
    while !p.log().contains("rejected TLS connection") {
        assert!(Instant::now() < deadline, "no log line: {}", p.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Under `--client-cert-auth`, a request without an Authorization header is the user its
/// certificate's CN names (etcd's userFromClientCertificate): CN=root may use the auth API.
#[test]
fn the_client_certificate_cn_is_the_v2_user() {
    let pki = Pki::new();
    let (_p, tls) = client_cert_auth_member(&pki);
    let root_cert = client_config(
        &pki.path("ca.pem"),
        Some((&pki.path("client.pem"), &pki.path("client.key"))),
        all_versions(),
    );
    let call =
        |method: &str, path: &str, body: &str| https(&tls, &root_cert, method, path, body).unwrap();
    let user = call(
        "PUT",
        "/v2/auth/users/root",
        r#"{"user":"root","password":"pw"}"#,
    );
    assert_eq!(user.status, 201, "{}", user.body);
    assert_eq!(call("PUT", "/v2/auth/enable", "").status, 200);
    let users = call("GET", "/v2/auth/users", "");
    assert_eq!(users.status, 200, "{}", users.body);
    assert_eq!(call("DELETE", "/v2/auth/enable", "").status, 200);
}

#[test]
fn without_client_cert_auth_any_client_is_served() {
    let pki = Pki::new();
    let (mut p, tls, http) = one_member(&pki, &refs(&server_flags(&pki)), &[]);
    wait_ready(&mut p, &http);
    let ca = pki.path("ca.pem");
    let foreign = client_config(
        &ca,
        Some((&pki.path("foreign.pem"), &pki.path("foreign.key"))),
        all_versions(),
    );
    let none = client_config(&ca, None, all_versions());
    for cfg in [foreign, none] {
        assert_eq!(
            https(&tls, &cfg, "GET", "/version", "").unwrap().status,
            200
        );
    }
    // A client that does not trust the server's CA refuses it.
    let wrong = client_config(&pki.path("other-ca.pem"), None, all_versions());
    assert!(https(&tls, &wrong, "GET", "/version", "").is_err());
}

#[test]
fn plaintext_to_an_https_port_is_closed_without_a_byte() {
    let pki = Pki::new();
    let (mut p, tls, http) = one_member(&pki, &refs(&server_flags(&pki)), &[]);
    wait_ready(&mut p, &http);
    let mut c = TcpStream::connect(&tls).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"GET /v2/keys/a HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    // A clean close (the request was read, as etcd does: curl's "Empty reply from server"),
    // and no byte.
    c.read_to_end(&mut buf).unwrap();
    assert!(buf.is_empty(), "got {:?}", String::from_utf8_lossy(&buf));
}

#[test]
fn tls_1_1_is_refused() {
    // rustls clients cannot speak TLS 1.1: openssl's can (.ci/run installs it).
    let openssl = support::find_in_path("openssl").unwrap_or_else(|| {
        panic!("the TLS 1.1 check needs `openssl` (apt-get install -y openssl)")
    });
    let pki = Pki::new();
    let (mut p, tls, http) = one_member(&pki, &refs(&server_flags(&pki)), &[]);
    wait_ready(&mut p, &http);
    let run = |flag: &str| {
        let out = Command::new(&openssl)
            .args(["s_client", flag, "-connect", &tls])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = run("-tls1_1");
    assert!(!ok && text.contains("alert"), "TLS 1.1 handshake: {text}");
    let (ok, text) = run("-tls1_2");
    assert!(ok && text.contains("TLSv1.2"), "TLS 1.2 handshake: {text}");
}

#[test]
fn an_expired_server_certificate_refuses_start_up() {
    let pki = Pki::new();
    let flags = [
        "--cert-file".to_string(),
        pki.path("expired.pem"),
        "--key-file".to_string(),
        pki.path("expired.key"),
    ];
    let (mut p, _, _) = one_member(&pki, &refs(&flags), &[]);
    assert_eq!(p.wait_exit(), Some(1), "{}", p.log());
    assert!(p.log().contains("expired"), "{}", p.log());
}

#[test]
fn https_without_a_certificate_is_a_configuration_error() {
    let pki = Pki::new();
    let (mut p, _, _) = one_member(&pki, &[], &[]);
    assert!(matches!(p.wait_exit(), Some(c) if c != 0), "{}", p.log());
    assert!(p.log().contains("--cert-file"), "{}", p.log());
}

#[test]
fn a_certificate_replaced_on_disk_is_served_to_the_next_connections() {
    let pki = Pki::new();
    let (mut p, tls, http) = one_member(&pki, &refs(&server_flags(&pki)), &[]);
    wait_ready(&mut p, &http);
    let cfg = client_config(&pki.path("ca.pem"), None, all_versions());
    let first = https(&tls, &cfg, "GET", "/version", "")
        .unwrap()
        .server_cert;
    // A renewed certificate: written aside, then renamed over the old files.
    let renewed = pki.dir.path().join("renewed");
    std::fs::create_dir_all(&renewed).unwrap();
    let (c, k) = leaf(&renewed, "server", "server", &pki.ca, false);
    std::fs::rename(k, pki.path("server.key")).unwrap();
    std::fs::rename(c, pki.path("server.pem")).unwrap();
    let new_der = CertificateDer::from_pem_file(pki.path("server.pem")).unwrap();
    assert_ne!(first, new_der.as_ref());
    // The files are checked at most once a second: poll (bounded).
    let deadline = Instant::now() + WAIT;
    loop {
        // A fresh client each time: a resumed session would show the certificate it began
        // with.
        let cfg = client_config(&pki.path("ca.pem"), None, all_versions());
        let got = https(&tls, &cfg, "GET", "/version", "").unwrap();
        assert_eq!(got.status, 200);
        if got.server_cert == new_der.as_ref() {
            break;
        }
        assert!(Instant::now() < deadline, "never served: {}", p.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(p.log().contains("certificate reloaded"), "{}", p.log());
}

#[test]
fn auto_tls_serves_a_self_signed_certificate_of_o_etcd() {
    let pki = Pki::new();
    let (mut p, tls, http) = one_member(&pki, &["--auto-tls"], &[]);
    wait_ready(&mut p, &http);
    // The generated certificate is in the data dir; trust it to talk to the member.
    let port = tls.rsplit(':').next().unwrap();
    let cert = pki
        .dir
        .path()
        .join(format!("data-{port}/fixtures/client/cert.pem"));
    let cfg = client_config(&cert.display().to_string(), None, all_versions());
    assert_eq!(
        https(&tls, &cfg, "GET", "/version", "").unwrap().status,
        200
    );
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(&cert)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if let Ok(text) = text {
        assert!(text.contains("O = etcd"), "{text}");
    }
}

#[test]
fn etcdctl_speaks_https_with_a_client_certificate() {
    let etcdctl = support::etcdctl_binary()
        .unwrap_or_else(|| panic!("this test needs etcdctl (apt-get install -y etcd-client)"));
    let pki = Pki::new();
    let (_p, tls) = client_cert_auth_member(&pki);
    let ctl = |args: &[&str]| {
        let out = Command::new(&etcdctl)
            .env("ETCDCTL_API", "2")
            .args(["--endpoints", &format!("https://{tls}")])
            .args(["--ca-file", &pki.path("ca.pem")])
            .args(["--cert-file", &pki.path("client.pem")])
            .args(["--key-file", &pki.path("client.key")])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = ctl(&["set", "/k", "v"]);
    assert!(ok, "{text}");
    let (ok, text) = ctl(&["get", "/k"]);
    assert!(ok && text.trim() == "v", "{text}");
}

// ---------------------------------------------------------------------------------------------
// The peer port
// ---------------------------------------------------------------------------------------------

struct TlsCluster {
    members: Vec<Proc>,
    clients: Vec<String>,
}

/// Three members with https peer URLs, `--peer-client-cert-auth` and the test CA; member i's
/// peer certificate is `peer<i>`, signed by the test CA unless `foreign` names it.
fn tls_cluster(pki: &Pki, foreign: Option<usize>) -> TlsCluster {
    let other = ca("a foreign CA");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let mut c = TlsCluster {
        members: Vec::new(),
        clients: Vec::new(),
    };
    for (i, &(client, peer)) in ports.iter().enumerate() {
        let signer = if foreign == Some(i) { &other } else { &pki.ca };
        c.start_member(
            pki,
            i,
            (client, peer),
            &initial_cluster(&ports),
            "new",
            Some(signer),
        );
    }
    c
}

/// `--initial-cluster` of members m0.. with https peer URLs on these ports.
fn initial_cluster(ports: &[(u16, u16)]) -> String {
    let members: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=https://127.0.0.1:{peer}"))
        .collect();
    members.join(",")
}

impl TlsCluster {
    /// Starts member `m<i>` with an http client URL and an https peer URL: with a peer
    /// certificate `signer` signed, `--peer-client-cert-auth` and the test CA, or (None) with
    /// `--peer-auto-tls`.
    fn start_member(
        &mut self,
        pki: &Pki,
        i: usize,
        (client, peer): (u16, u16),
        initial: &str,
        state: &str,
        signer: Option<&Ca>,
    ) {
        // A certificate `signer` signed with the test CA trusted, or --peer-auto-tls.
        let tls: Vec<String> = match signer {
            Some(signer) => {
                let name = format!("m{i}");
                let (c, k) = leaf(pki.dir.path(), &format!("peer{i}"), &name, signer, false);
                vec![
                    "--peer-cert-file".into(),
                    c.display().to_string(),
                    "--peer-key-file".into(),
                    k.display().to_string(),
                    "--peer-client-cert-auth".into(),
                    "--peer-trusted-ca-file".into(),
                    pki.path("ca.pem"),
                ]
            }
            None => vec!["--peer-auto-tls".into()],
        };
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("https://127.0.0.1:{peer}");
        let args: Vec<String> = [
            "--name",
            &format!("m{i}"),
            "--data-dir",
            &pki.path(&format!("data-m{i}")),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            state,
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(tls)
        .collect();
        self.members
            .push(spawn(pki.dir.path(), &format!("m{i}"), &args, &[]));
        self.clients.push(format!("127.0.0.1:{client}"));
    }
}

/// PUTs until the cluster commits it (bounded): a leader was elected over TLS.
fn put_until_committed(c: &mut TlsCluster, on: usize, key: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = support::request_timeout(
            &c.clients[on],
            "PUT",
            &format!("/v2/keys/{key}"),
            &[support::FORM],
            b"value=x",
            Duration::from_secs(10),
        );
        if r.is_ok_and(|r| r.status == 201) {
            return;
        }
        let logs: Vec<String> = c.members.iter().map(Proc::log).collect();
        assert!(Instant::now() < deadline, "no commit: {logs:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_key(c: &TlsCluster, on: usize, key: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if support::request_timeout(
            &c.clients[on],
            "GET",
            &format!("/v2/keys/{key}"),
            &[],
            b"",
            WAIT,
        )
        .is_ok_and(|r| r.status == 200)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn three_members_talk_over_peer_auto_tls() {
    let pki = Pki::new();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let mut c = TlsCluster {
        members: Vec::new(),
        clients: Vec::new(),
    };
    for (i, &p) in ports.iter().enumerate() {
        c.start_member(&pki, i, p, &initial_cluster(&ports), "new", None);
    }
    put_until_committed(&mut c, 1, "a");
    assert!(wait_key(&c, 0, "a") && wait_key(&c, 2, "a"));
    assert!(pki
        .dir
        .path()
        .join("data-m0/fixtures/peer/cert.pem")
        .exists());
}

#[test]
fn three_members_talk_over_peer_tls() {
    let pki = Pki::new();
    let mut c = tls_cluster(&pki, None);
    put_until_committed(&mut c, 0, "a");
    assert!(wait_key(&c, 1, "a") && wait_key(&c, 2, "a"));
    put_until_committed(&mut c, 2, "b");
    assert!(wait_key(&c, 0, "b"));
}

#[test]
fn a_member_with_a_foreign_peer_certificate_is_refused() {
    let pki = Pki::new();
    let mut c = tls_cluster(&pki, Some(2));
    // Members 0 and 1 are a quorum: the cluster works.
    put_until_committed(&mut c, 0, "a");
    assert!(wait_key(&c, 1, "a"));
    // Member 2 never gets the entry: its peer certificate is refused in the handshake.
    assert!(!wait_key(&c, 2, "a"));
    let logs = c.members[0].log() + &c.members[1].log();
    assert!(
        logs.contains("rejected TLS connection") && logs.contains("port=\"peer\""),
        "{logs}"
    );
}

#[test]
fn a_member_joins_a_cluster_over_peer_tls() {
    let pki = Pki::new();
    let ports = [(free_port(), free_port()), (free_port(), free_port())];
    let mut c = TlsCluster {
        members: Vec::new(),
        clients: Vec::new(),
    };
    c.start_member(
        &pki,
        0,
        ports[0],
        &initial_cluster(&ports[..1]),
        "new",
        Some(&pki.ca),
    );
    put_until_committed(&mut c, 0, "before");
    let body = format!(r#"{{"peerURLs":["https://127.0.0.1:{}"]}}"#, ports[1].1);
    let added = support::request_timeout(
        &c.clients[0],
        "POST",
        "/v2/members",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
        WAIT,
    )
    .unwrap();
    assert_eq!(added.status, 201, "{}", added.text());
    // The new member reads the members from m0's peer port over https, then catches up.
    c.start_member(
        &pki,
        1,
        ports[1],
        &initial_cluster(&ports),
        "existing",
        Some(&pki.ca),
    );
    assert!(wait_key(&c, 1, "before"), "{}", c.members[1].log());
    put_until_committed(&mut c, 1, "after");
    assert!(wait_key(&c, 0, "after"));
}

#[test]
fn watches_pipelining_and_large_bodies_over_https() {
    let pki = Pki::new();
    let (mut p, tls, http) = one_member(&pki, &refs(&server_flags(&pki)), &[]);
    wait_ready(&mut p, &http);
    let cfg = client_config(&pki.path("ca.pem"), None, all_versions());
    // A value of 1 MiB crosses many TLS records both ways.
    let value = "v".repeat(1 << 20);
    let put = https(&tls, &cfg, "PUT", "/v2/keys/big", &format!("value={value}")).unwrap();
    assert_eq!(put.status, 201);
    let got = https(&tls, &cfg, "GET", "/v2/keys/big", "").unwrap();
    assert!(got.body.contains(&value));
    // A long poll over https, with a request pipelined behind it while it waits: the watch
    // reads the socket as it waits (a cancelled TLS read must lose no byte).
    let tcp = TcpStream::connect(&tls).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(format!("GET /v2/keys/w?wait=true HTTP/1.1\r\nHost: {tls}\r\n\r\n").as_bytes())
        .unwrap();
    s.flush().unwrap();
    // The watch's headers arrive at once (etcd flushes them): then it is waiting.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    s.write_all(
        format!("GET /version HTTP/1.1\r\nHost: {tls}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    s.flush().unwrap();
    support::put_form(&http, "/v2/keys/w", "value=seen");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains(r#""value":"seen""#), "{rest}");
    assert!(rest.contains("etcdserver"), "the pipelined request: {rest}");
}

#[test]
fn snapshot_save_over_https_with_a_client_certificate() {
    let pki = Pki::new();
    let (_p, tls) = client_cert_auth_member(&pki);
    let (pem, key) = (pki.path("client.pem"), pki.path("client.key"));
    let cfg = client_config(&pki.path("ca.pem"), Some((&pem, &key)), all_versions());
    assert_eq!(
        https(&tls, &cfg, "PUT", "/v2/keys/a", "value=1")
            .unwrap()
            .status,
        201
    );
    let file = pki.dir.path().join("backup.snap");
    let endpoint = format!("https://{tls}");
    let save = |extra: &[String]| {
        let out = Command::new(ringd_binary())
            .args(["snapshot", "save"])
            .arg(&file)
            .args(["--endpoint", &endpoint])
            .args(extra)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let cert = vec![
        "--cert".to_string(),
        pki.path("client.pem"),
        "--key".to_string(),
        pki.path("client.key"),
    ];
    // Without a client certificate the member refuses the handshake; without the CA the
    // member's certificate is not trusted: nothing is saved.
    let ca = vec!["--cacert".to_string(), pki.path("ca.pem")];
    for flags in [ca.clone(), cert.clone()] {
        let (ok, out) = save(&flags);
        assert!(!ok, "{out}");
        assert!(!file.exists());
    }
    let (ok, out) = save(&[ca, cert.clone()].concat());
    assert!(ok, "{out}");
    assert!(out.contains("Snapshot saved at"), "{out}");
    std::fs::remove_file(&file).unwrap();
    let insecure = [cert, vec!["--insecure-skip-tls-verify".to_string()]].concat();
    let (ok, out) = save(&insecure);
    assert!(ok && file.exists(), "{out}");
}
