//! https: rustls (ring provider) over monoio's TcpStream through
//! monoio-rustls. `Conn` is what every connection task drives: a plain
//! TcpStream (the http hot path, untouched) or a client TLS stream. Also the
//! client and server configurations (--cacert / system roots, --insecure,
//! --cert/--key-file; serve-static's --tls-cert/--tls-key/--tls-client-ca) and
//! a blocking TLS client for the watch workload's setup request.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// TLS options of a run (from the command line).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsOpts {
    /// PEM file of the CA(s) to trust instead of the system roots.
    pub cacert: Option<PathBuf>,
    /// Skip server certificate verification.
    pub insecure: bool,
    /// Client certificate chain and key (PEM), for --client-cert-auth servers.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsOpts {
    pub fn any(&self) -> bool {
        self.cacert.is_some() || self.insecure || self.cert.is_some() || self.key.is_some()
    }
}

/// What a connection to an https target needs: the shared client
/// configuration and the name to present (SNI) and verify.
#[derive(Clone)]
pub struct TlsTarget {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TlsTarget({:?})", self.name)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The first TLS failure of the process, printed with the error banner.
static FIRST_ERROR: OnceLock<String> = OnceLock::new();

pub fn note_error(msg: impl FnOnce() -> String) {
    if FIRST_ERROR.get().is_none() {
        let _ = FIRST_ERROR.set(msg());
    }
}

pub fn first_error() -> Option<&'static str> {
    FIRST_ERROR.get().map(String::as_str)
}

/// The rustls error inside an io::Error, if there is one.
pub fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{what} {}: no usable PEM private key: {e}", path.display()))
}

fn roots_from(path: &Path, what: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path, what)? {
        roots
            .add(c)
            .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The client configuration for https targets.
pub fn client_config(opts: &TlsOpts) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
    } else {
        let roots = match &opts.cacert {
            Some(p) => roots_from(p, "--cacert")?,
            None => {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = RootCertStore::empty();
                let (ok, _bad) = roots.add_parsable_certificates(found.certs);
                if ok == 0 {
                    return Err(format!(
                        "no system root certificates could be loaded ({}); use --cacert FILE or --insecure",
                        found
                            .errors
                            .first()
                            .map_or("none found".to_string(), |e| e.to_string())
                    ));
                }
                roots
            }
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match (&opts.cert, &opts.key) {
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(load_certs(c, "--cert")?, load_key(k, "--key-file")?)
            .map_err(|e| format!("--cert/--key-file: {e}"))?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("--cert and --key-file go together".into()),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No session resumption, as etcd's own clients: Go's crypto/tls resumes only with a
    // ClientSessionCache, and neither etcdctl nor etcd's client transport (TLSInfo.ClientConfig)
    // sets one. So every connection, and under --new-conn every request, pays a full handshake.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The server configuration of serve-static.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match client_ca {
        Some(p) => {
            let roots = Arc::new(roots_from(p, "--tls-client-ca")?);
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| format!("--tls-client-ca: {e}"))?;
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(load_certs(cert, "--tls-cert")?, load_key(key, "--tls-key")?)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name checked against the server certificate (and sent as SNI unless
/// it is an IP address): the URL host without brackets or port.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: not a TLS server name: {e}"))
}

/// --insecure: any certificate is accepted; handshake signatures are still
/// checked (the peer must hold the key of the certificate it shows).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One client connection: plain TCP or TLS over TCP.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
}

/// Runs the TLS handshake over a connected stream.
pub async fn handshake(tcp: TcpStream, tls: &TlsTarget) -> io::Result<Conn> {
    let connector = monoio_rustls::TlsConnector::from(tls.config.clone());
    match connector.connect(tls.name.clone(), tcp).await {
        Ok(s) => Ok(Conn::Tls(Box::new(s))),
        Err(monoio_rustls::TlsError::Io(e)) => Err(e),
        Err(monoio_rustls::TlsError::Rustls(e)) => Err(io::Error::other(e)),
    }
}

impl AsyncReadRent for Conn {
    #[inline]
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Conn::Plain(s) => s.readv(buf).await,
            Conn::Tls(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for Conn {
    #[inline]
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Conn::Plain(s) => s.write(buf).await,
            Conn::Tls(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Conn::Plain(s) => s.writev(buf).await,
            Conn::Tls(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush().await,
            Conn::Tls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
        }
    }
}

/// A blocking connection (setup requests of the watch workload).
pub enum BlockingConn {
    Plain(std::net::TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>>),
}

impl BlockingConn {
    pub fn new(tcp: std::net::TcpStream, tls: Option<&TlsTarget>) -> Result<Self, String> {
        let Some(t) = tls else {
            return Ok(BlockingConn::Plain(tcp));
        };
        let conn = rustls::ClientConnection::new(t.config.clone(), t.name.clone())
            .map_err(|e| format!("tls: {e}"))?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn
                .complete_io(&mut s.sock)
                .map_err(|e| format!("tls handshake: {e}"))?;
        }
        Ok(BlockingConn::Tls(Box::new(s)))
    }
}

impl Read for BlockingConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BlockingConn::Plain(s) => s.read(buf),
            BlockingConn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for BlockingConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BlockingConn::Plain(s) => s.write(buf),
            BlockingConn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            BlockingConn::Plain(s) => s.flush(),
            BlockingConn::Tls(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("::1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("etcd.example").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("bad name!").is_err());
    }

    #[test]
    fn https_targets_get_the_config() {
        let opts = TlsOpts {
            insecure: true,
            ..TlsOpts::default()
        };
        let config = client_config(&opts).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let t = crate::http::parse_url("https://localhost:8443")
            .unwrap()
            .with_tls(&config)
            .unwrap();
        let tt = t.tls.as_ref().unwrap();
        assert_eq!(tt.name, ServerName::try_from("localhost").unwrap());
        assert_eq!(t.host, "localhost:8443");
        // http targets stay plain
        let p = crate::http::parse_url("http://127.0.0.1:1")
            .unwrap()
            .with_tls(&config)
            .unwrap();
        assert!(p.tls.is_none());
    }

    #[test]
    fn missing_or_empty_files_are_errors() {
        let missing = TlsOpts {
            cacert: Some("/nonexistent/ca.pem".into()),
            ..TlsOpts::default()
        };
        let e = client_config(&missing).unwrap_err();
        assert!(e.contains("--cacert /nonexistent/ca.pem"), "{e}");
        let empty = std::env::temp_dir().join(format!("loadgen-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(&TlsOpts {
            cacert: Some(empty.clone()),
            ..TlsOpts::default()
        })
        .unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = server_config(&empty, &empty, None).unwrap_err();
        assert!(e.contains("--tls-cert"), "{e}");
        let _ = std::fs::remove_file(&empty);
        let half = TlsOpts {
            insecure: true,
            cert: Some("/x".into()),
            ..TlsOpts::default()
        };
        assert!(client_config(&half).is_err());
    }

    /// Moves what `from` has to send into `to`; false if there was nothing.
    fn pump(from: &mut rustls::Connection, to: &mut rustls::Connection) -> bool {
        let mut moved = false;
        while from.wants_write() {
            let mut buf = Vec::new();
            from.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                to.read_tls(&mut rd).unwrap();
                to.process_new_packets().unwrap();
            }
            moved = true;
        }
        moved
    }

    /// One TLS handshake in memory (no sockets), then the server's post-handshake messages
    /// (TLS 1.3 session tickets) delivered to the client; returns how the client's went.
    fn handshake_in_memory(
        client: &Arc<ClientConfig>,
        server: &Arc<ServerConfig>,
    ) -> rustls::HandshakeKind {
        let name = server_name("localhost").unwrap();
        let mut c =
            rustls::Connection::from(rustls::ClientConnection::new(client.clone(), name).unwrap());
        let mut s =
            rustls::Connection::from(rustls::ServerConnection::new(server.clone()).unwrap());
        for _ in 0..16 {
            let sent = pump(&mut c, &mut s);
            if !pump(&mut s, &mut c) && !sent {
                break;
            }
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        c.handshake_kind().unwrap()
    }

    /// Every connection pays a full handshake (as Go clients without a ClientSessionCache,
    /// i.e. etcdctl): a second connection to a server that hands out session tickets does not
    /// resume. The control (rustls's default resumption) does, so the check can fail.
    #[test]
    fn no_session_resumption() {
        let dir = std::env::temp_dir().join(format!("loadgen-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let (cert_pem, key_pem) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_pem, cert.pem()).unwrap();
        std::fs::write(&key_pem, key.serialize_pem()).unwrap();
        let server = server_config(&cert_pem, &key_pem, None).unwrap();
        let client = client_config(&TlsOpts {
            cacert: Some(cert_pem.clone()),
            ..TlsOpts::default()
        })
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        use rustls::HandshakeKind::Full;
        for _ in 0..3 {
            assert_eq!(handshake_in_memory(&client, &server), Full);
        }
        let mut resuming = (*client).clone();
        resuming.resumption = rustls::client::Resumption::default();
        let resuming = Arc::new(resuming);
        assert_eq!(handshake_in_memory(&resuming, &server), Full);
        assert_eq!(
            handshake_in_memory(&resuming, &server),
            rustls::HandshakeKind::Resumed
        );
    }
}
