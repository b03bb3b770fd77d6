//! etcd's command-line flags and ETCD_* variables, with etcd's meanings and defaults.
//!
//! Go's flag package accepts `-name` as well as `--name`; scripts written for etcd use both,
//! so single-dash long flags are rewritten to double-dash before clap sees them.

use crate::limits::WATCH_HISTORY_MAX;
use clap::Parser;
use std::net::SocketAddr;

/// ringd: an etcd v2 compatible key-value server.
#[derive(Parser, Debug, Clone)]
#[command(name = "ringd", version, about, long_about = None, args_override_self = true,
          after_help = ENVIRONMENT_HELP)]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory (default: "<name>.etcd").
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<String>,

    /// List of URLs to listen on for client traffic (comma-separated).
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub listen_client_urls: String,

    /// List of this member's client URLs to advertise to the public.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub advertise_client_urls: String,

    /// List of URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub listen_peer_urls: String,

    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,

    /// Initial cluster configuration for bootstrapping (name=peerURL,...).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// Initial cluster state ('new' or 'existing').
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new",
          value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,

    /// Initial cluster token for the cluster during bootstrap.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,

    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,

    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,

    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: u64,

    /// Accepted for compatibility: the v2 API is always on in ringd.
    #[arg(long, env = "ETCD_ENABLE_V2", default_value = "true", value_parser = parse_go_bool)]
    pub enable_v2: bool,

    /// Force to create a new one-member cluster from this member's data directory (disaster
    /// recovery: the rest of the old cluster is forgotten).
    #[arg(long, env = "ETCD_FORCE_NEW_CLUSTER", default_value = "false", value_parser = parse_go_bool,
          num_args = 0..=1, default_missing_value = "true")]
    pub force_new_cluster: bool,

    /// Reject reconfiguration requests that would cause quorum loss.
    #[arg(long, env = "ETCD_STRICT_RECONFIG_CHECK", default_value = "true", value_parser = parse_go_bool,
          num_args = 0..=1, default_missing_value = "true")]
    pub strict_reconfig_check: bool,

    /// Path to the client server TLS certificate file.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<String>,

    /// Path to the client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<String>,

    /// Enable client certificate authentication (the certificate's CN is the v2 user).
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", default_value = "false", value_parser = parse_go_bool,
          num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: bool,

    /// Path to the client server TLS trusted CA cert file (clients must show a certificate
    /// it signed).
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<String>,

    /// Client TLS using generated (self-signed) certificates.
    #[arg(long, env = "ETCD_AUTO_TLS", default_value = "false", value_parser = parse_go_bool,
          num_args = 0..=1, default_missing_value = "true")]
    pub auto_tls: bool,

    /// Path to the peer server TLS certificate file.
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<String>,

    /// Path to the peer server TLS key file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<String>,

    /// Enable peer client certificate authentication.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", default_value = "false", value_parser = parse_go_bool,
          num_args = 0..=1, default_missing_value = "true")]
    pub peer_client_cert_auth: bool,

    /// Path to the peer server TLS trusted CA file.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<String>,

    /// Peer TLS using generated (self-signed) certificates.
    #[arg(long, env = "ETCD_PEER_AUTO_TLS", default_value = "false", value_parser = parse_go_bool,
          num_args = 0..=1, default_missing_value = "true")]
    pub peer_auto_tls: bool,

    /// Number of client shards (executor threads); default: one per core, less the core the
    /// raft shard (the single writer) runs on.
    #[arg(long, env = "RINGD_SHARDS")]
    pub shards: Option<usize>,

    /// Log lines as human-readable text, or as one JSON object per line (for log shippers).
    #[arg(long, env = "RINGD_LOG_FORMAT", default_value = "text",
          value_parser = ["text", "json"])]
    pub log_format: String,

    /// Events kept for `waitIndex` (etcd keeps 1000); older indexes get 401. Beyond the
    /// newest 1000, events are kept encoded in at most 256 bytes per event of this number.
    #[arg(long, env = "RINGD_WATCH_HISTORY", default_value_t = crate::limits::EVENT_HISTORY_CAPACITY as u64)]
    pub watch_history: u64,

    /// A one-off command instead of serving (none: serve, with the flags above).
    #[command(subcommand)]
    pub command: Option<Subcommand>,
}

/// ringd's commands besides serving.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Subcommand {
    /// Create a ringd data dir from a stopped etcd 3.4/3.5 member's data dir: the v2 keys,
    /// their indexes and TTLs, as etcd would serve them (docs/etcd-data-dir.md).
    Migrate(crate::migrate::MigrateArgs),
    /// Back a running member up (save), make new members from a backup (restore), or look
    /// at one (status), as etcdctl's `snapshot` commands.
    Snapshot(crate::backup::SnapshotArgs),
}

/// What `--help` says after the flags: the variables that are not flags.
const ENVIRONMENT_HELP: &str = "\
Every flag can also be set by its variable (ETCD_NAME for --name, ...). Besides:
  RINGD_LOG                log filter (tracing's EnvFilter syntax), default \"info\",
                           e.g. RINGD_LOG=ringd::shard::peer=debug
  RINGD_FORCE_EPOLL=1      serve with epoll instead of io_uring
  RINGD_WAL_SEGMENT_BYTES  size of new log segments (tests; a multiple of 4096, >= 64 KiB)
SIGTERM or SIGINT stops gracefully: requests already proposed are finished, a leader hands
over, the process exits 0 (a second signal exits at once).";

/// Go's strconv.ParseBool.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid boolean value {s:?}")),
    }
}

/// A URL we can listen on or advertise: scheme, host and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenUrl {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl ListenUrl {
    pub fn parse(s: &str) -> Result<ListenUrl, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("URL {s:?} has no scheme"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("URL scheme must be http or https: {s:?}"));
        }
        let hostport = rest.trim_end_matches('/');
        if hostport.contains('/') {
            return Err(format!("URL {s:?} must not have a path"));
        }
        let (host, port) = if let Some(stripped) = hostport.strip_prefix('[') {
            let (h, p) = stripped
                .split_once("]:")
                .ok_or_else(|| format!("bad URL {s:?}"))?;
            (h.to_string(), p)
        } else {
            let (h, p) = hostport
                .rsplit_once(':')
                .ok_or_else(|| format!("URL {s:?} needs a port"))?;
            (h.to_string(), p)
        };
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("bad port in URL {s:?}"))?;
        Ok(ListenUrl {
            scheme: scheme.to_string(),
            host,
            port,
        })
    }

    /// The socket addresses this URL binds to ("localhost" binds the loopback address).
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        let host = if self.host == "localhost" {
            "127.0.0.1"
        } else {
            self.host.as_str()
        };
        let ip: std::net::IpAddr = host
            .parse()
            .map_err(|_| format!("cannot listen on host {:?}", self.host))?;
        Ok(SocketAddr::new(ip, self.port))
    }
}

/// Splits a comma-separated URL list, validating each.
pub fn parse_urls(list: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if urls.is_empty() {
        return Err("empty URL list".to_string());
    }
    for url in &urls {
        ListenUrl::parse(url)?;
    }
    Ok(urls)
}

/// The TLS flags of one port (client or peer).
#[derive(Clone, Debug, Default)]
pub struct TlsSettings {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub trusted_ca_file: Option<String>,
    pub client_cert_auth: bool,
    pub auto_tls: bool,
}

impl TlsSettings {
    /// The certificate and key files (for `--auto-tls`, set once they are generated).
    pub fn files(&self) -> Result<(&std::path::Path, &std::path::Path), String> {
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Ok((std::path::Path::new(c), std::path::Path::new(k))),
            _ => Err("a TLS certificate and key are needed".to_string()),
        }
    }

    /// Checks the flags of a port whose URLs are https (`prefix`: "" or "peer-").
    fn check(&self, prefix: &str, url: &str) -> Result<(), String> {
        if self.files().is_err() && !self.auto_tls {
            return Err(format!(
                "TLS key/cert (--{prefix}cert-file, --{prefix}key-file) must be provided for {url} with HTTPS scheme"
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(format!(
                "--{prefix}cert-file and --{prefix}key-file go together"
            ));
        }
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err(format!(
                "--{prefix}client-cert-auth needs --{prefix}trusted-ca-file (the CA client certificates must be signed by)"
            ));
        }
        Ok(())
    }
}

/// The resolved configuration: the flags checked and turned into what the server uses.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub name: String,
    pub data_dir: String,
    pub listen_client: Vec<ListenUrl>,
    pub advertise_client_urls: Vec<String>,
    pub advertise_peer_urls: Vec<String>,
    pub listen_peer: Vec<ListenUrl>,
    /// `--initial-cluster-state existing`: join a running cluster (learn it from its peers).
    pub join_existing: bool,
    pub force_new_cluster: bool,
    pub strict_reconfig_check: bool,
    /// (name, peer URLs) of every initial member, sorted by name.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub initial_cluster_token: String,
    pub max_request_bytes: usize,
    pub shards: usize,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_count: u64,
    /// `--watch-history`: events kept for `waitIndex`.
    pub watch_history: u64,
    /// TLS on the client URLs that are https, and on the peer URLs that are https.
    pub client_tls: TlsSettings,
    pub peer_tls: TlsSettings,
}

impl Config {
    /// Parses the process arguments (Go-style single-dash flags accepted).
    pub fn from_args<I: IntoIterator<Item = String>>(args: I) -> Result<Config, clap::Error> {
        let args = args.into_iter().map(|a| {
            if a.starts_with('-') && !a.starts_with("--") && a.len() > 2 {
                format!("-{a}")
            } else {
                a
            }
        });
        Config::try_parse_from(args)
    }

    pub fn resolve(&self) -> Result<Resolved, String> {
        let listen_client = parse_urls(&self.listen_client_urls)?
            .iter()
            .map(|u| ListenUrl::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        let client_tls = TlsSettings {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            trusted_ca_file: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
            auto_tls: self.auto_tls,
        };
        for url in &listen_client {
            if url.scheme == "https" {
                client_tls.check("", &format!("client url https://{}:{}", url.host, url.port))?;
            }
            url.socket_addr()?;
        }
        let advertise_client_urls = parse_urls(&self.advertise_client_urls)?;
        let advertise_peer_urls = parse_urls(&self.initial_advertise_peer_urls)?;
        let listen_peer = parse_urls(&self.listen_peer_urls)?
            .iter()
            .map(|u| ListenUrl::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        let peer_tls = TlsSettings {
            cert_file: self.peer_cert_file.clone(),
            key_file: self.peer_key_file.clone(),
            trusted_ca_file: self.peer_trusted_ca_file.clone(),
            client_cert_auth: self.peer_client_cert_auth,
            auto_tls: self.peer_auto_tls,
        };
        for url in &listen_peer {
            if url.scheme == "https" {
                peer_tls.check(
                    "peer-",
                    &format!("peer url https://{}:{}", url.host, url.port),
                )?;
            }
            url.socket_addr()?;
        }
        let initial_cluster = initial_cluster(
            &self.name,
            self.initial_cluster.as_deref(),
            &advertise_peer_urls,
        )?;
        if self.heartbeat_interval == 0 || self.election_timeout < 5 * self.heartbeat_interval {
            return Err(format!(
                "--election-timeout[{}ms] should be at least 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout, self.heartbeat_interval
            ));
        }
        if self.max_request_bytes == 0 || self.max_request_bytes > (1 << 30) {
            return Err("--max-request-bytes must be between 1 and 1 GiB".to_string());
        }
        if !(1..=WATCH_HISTORY_MAX).contains(&self.watch_history) {
            return Err(format!(
                "--watch-history must be between 1 and {WATCH_HISTORY_MAX} (events kept for waitIndex), not {}",
                self.watch_history
            ));
        }
        let shards = match self.shards {
            Some(0) => return Err("--shards must be at least 1".to_string()),
            Some(n) if n > 256 => return Err("--shards must be at most 256".to_string()),
            Some(n) => n,
            // The design's "one executor per core, one of them the raft shard": the writer has
            // its own thread, so client shards take the other cores. Measured on 2 cores with
            // the load generator beside it: GET p99 0.7 ms with 1 shard against 8 ms with 2
            // (perf notes in README), same throughput.
            None => std::thread::available_parallelism()
                .map(|n| n.get().saturating_sub(1).max(1))
                .unwrap_or(1),
        };
        Ok(Resolved {
            name: self.name.clone(),
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| format!("{}.etcd", self.name)),
            listen_client,
            advertise_client_urls,
            advertise_peer_urls,
            listen_peer,
            join_existing: self.initial_cluster_state == "existing",
            force_new_cluster: self.force_new_cluster,
            strict_reconfig_check: self.strict_reconfig_check,
            initial_cluster,
            initial_cluster_token: self.initial_cluster_token.clone(),
            max_request_bytes: self.max_request_bytes as usize,
            shards,
            heartbeat_interval_ms: self.heartbeat_interval,
            election_timeout_ms: self.election_timeout,
            snapshot_count: self.snapshot_count,
            watch_history: self.watch_history,
            client_tls,
            peer_tls,
        })
    }
}

/// The initial members (`--initial-cluster`, by default this member alone at its advertised
/// peer URLs), checked as etcd checks them: `name` is one of them, with exactly its
/// `--initial-advertise-peer-urls`.
pub fn initial_cluster(
    name: &str,
    spec: Option<&str>,
    advertise_peer_urls: &[String],
) -> Result<Vec<(String, Vec<String>)>, String> {
    let initial_cluster = match spec {
        None => vec![(name.to_string(), advertise_peer_urls.to_vec())],
        Some(spec) => parse_initial_cluster(spec)?,
    };
    let Some((_, own)) = initial_cluster.iter().find(|(n, _)| n == name) else {
        return Err(format!(
            "couldn't find local name {name:?} in the initial cluster configuration"
        ));
    };
    let (mut a, mut b) = (own.clone(), advertise_peer_urls.to_vec());
    a.sort();
    b.sort();
    if a != b {
        return Err(format!(
            "--initial-cluster has {name}={} but missing from --initial-advertise-peer-urls={}",
            own.join(","),
            advertise_peer_urls.join(",")
        ));
    }
    Ok(initial_cluster)
}

/// Parses `name=url,name=url2,other=url3` into members, grouping URLs by name.
pub fn parse_initial_cluster(spec: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster entry {part:?} is not name=URL"))?;
        ListenUrl::parse(url)?;
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => members.push((name.to_string(), vec![url.to_string()])),
        }
    }
    if members.is_empty() {
        return Err("--initial-cluster is empty".to_string());
    }
    members.sort();
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::from_args(
            std::iter::once("ringd".to_string()).chain(args.iter().map(|s| s.to_string())),
        )
    }

    #[test]
    fn defaults_match_etcd() {
        let c = parse(&[]).unwrap().resolve().unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, "default.etcd");
        assert_eq!(
            c.listen_client[0].socket_addr().unwrap().to_string(),
            "127.0.0.1:2379"
        );
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(
            c.initial_cluster,
            vec![("default".into(), vec!["http://localhost:2380".into()])]
        );
    }

    #[test]
    fn single_dash_flags_work_as_in_go() {
        let c = parse(&["-name", "n1", "-data-dir=/tmp/x"]).unwrap();
        assert_eq!(c.name, "n1");
        assert_eq!(c.data_dir.as_deref(), Some("/tmp/x"));
    }

    #[test]
    fn unknown_flag_exits_with_2() {
        let err = parse(&["--nope"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(parse(&["--snapshot-count", "x"]).is_err());
        assert!(parse(&["--listen-client-urls", "ftp://a:1"])
            .unwrap()
            .resolve()
            .is_err());
        assert!(parse(&["--listen-client-urls", "http://127.0.0.1"])
            .unwrap()
            .resolve()
            .is_err());
        assert!(parse(&["--shards", "0"]).unwrap().resolve().is_err());
        assert!(parse(&["--initial-cluster", "other=http://127.0.0.1:1"])
            .unwrap()
            .resolve()
            .is_err());
    }

    #[test]
    fn https_urls_need_their_tls_flags() {
        let https = [
            "--listen-client-urls",
            "https://127.0.0.1:1,http://127.0.0.1:2",
        ];
        let e = parse(&https).unwrap().resolve().unwrap_err();
        assert!(e.contains("--cert-file, --key-file"), "{e}");
        let files = ["--cert-file", "c.pem", "--key-file", "k.pem"];
        let c = parse(&[&https[..], &files[..]].concat())
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(c.client_tls.cert_file.as_deref(), Some("c.pem"));
        assert!(!c.client_tls.client_cert_auth);
        // --client-cert-auth names no CA by itself.
        let e = parse(&[&https[..], &files[..], &["--client-cert-auth"][..]].concat())
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(e.contains("--trusted-ca-file"), "{e}");
        assert!(parse(&[&https[..], &["--auto-tls"][..]].concat())
            .unwrap()
            .resolve()
            .is_ok());
        let peers = [
            "--listen-peer-urls",
            "https://127.0.0.1:3",
            "--initial-advertise-peer-urls",
            "https://127.0.0.1:3",
        ];
        let e = parse(&peers).unwrap().resolve().unwrap_err();
        assert!(e.contains("--peer-cert-file"), "{e}");
        let c = parse(&[&peers[..], &["--peer-auto-tls=true"][..]].concat())
            .unwrap()
            .resolve()
            .unwrap();
        assert!(c.peer_tls.auto_tls);
    }

    #[test]
    fn migrate_is_a_subcommand_and_flags_alone_still_serve() {
        let c = parse(&["-name", "n1", "--data-dir", "/tmp/x"]).unwrap();
        assert!(c.command.is_none());
        let c = parse(&[
            "migrate",
            "--from-etcd-data-dir",
            "/var/lib/etcd",
            "-data-dir=/tmp/new",
        ])
        .unwrap();
        let Some(Subcommand::Migrate(m)) = c.command else {
            panic!("not migrate: {c:?}");
        };
        assert_eq!(
            m.from_etcd_data_dir.as_deref(),
            Some(std::path::Path::new("/var/lib/etcd"))
        );
        assert_eq!(m.data_dir, std::path::Path::new("/tmp/new"));
        assert_eq!(m.name, "default");
        assert_eq!(m.initial_advertise_peer_urls, "http://localhost:2380");
        // A source (a data dir or an endpoint, not both) and the new dir are required.
        for bad in [
            &["migrate", "--data-dir", "/tmp/new"][..],
            &[
                "migrate",
                "--from-etcd-data-dir",
                "/e",
                "--from-endpoint",
                "http://h:2379",
                "--data-dir",
                "/n",
            ],
            &["migrate", "--from-endpoint", "http://h:2379"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
        let c = parse(&[
            "migrate",
            "--from-endpoint",
            "http://127.0.0.1:2379",
            "--hidden-key",
            "/_a",
            "--hidden-key",
            "/d/_b",
            "--data-dir",
            "/n",
        ])
        .unwrap();
        let Some(Subcommand::Migrate(m)) = c.command else {
            panic!("not migrate: {c:?}");
        };
        assert_eq!(m.from_endpoint.as_deref(), Some("http://127.0.0.1:2379"));
        assert_eq!(m.hidden_key, ["/_a", "/d/_b"]);
    }

    #[test]
    fn snapshot_save_restore_and_status_are_subcommands() {
        let c = parse(&[
            "snapshot",
            "save",
            "/b/s.snap",
            "--endpoint",
            "https://127.0.0.1:2379",
            "--cacert",
            "ca.pem",
            "--user",
            "root:pw",
        ])
        .unwrap();
        let Some(Subcommand::Snapshot(s)) = c.command else {
            panic!("not snapshot: {c:?}");
        };
        let crate::backup::SnapshotCommand::Save(save) = s.command else {
            panic!("not save: {s:?}");
        };
        assert_eq!(save.file, std::path::Path::new("/b/s.snap"));
        assert_eq!(save.user.as_deref(), Some("root:pw"));
        let c = parse(&["snapshot", "restore", "s.snap", "--name", "m1"]).unwrap();
        let Some(Subcommand::Snapshot(s)) = c.command else {
            panic!("not snapshot: {c:?}");
        };
        let crate::backup::SnapshotCommand::Restore(r) = s.command else {
            panic!("not restore: {s:?}");
        };
        assert_eq!((r.name.as_str(), r.data_dir), ("m1", None));
        assert_eq!(r.initial_cluster_token, "etcd-cluster");
        // save needs its endpoint; --cert needs --key; status knows table and json only.
        for bad in [
            &["snapshot", "save", "f"][..],
            &[
                "snapshot",
                "save",
                "f",
                "--endpoint",
                "http://a:1",
                "--cert",
                "c",
            ],
            &["snapshot", "status", "f", "-w", "yaml"],
            &[
                "snapshot",
                "save",
                "f",
                "--data-dir",
                "d",
                "--user",
                "root:pw",
            ],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn several_listen_urls() {
        let c = parse(&[
            "--listen-client-urls",
            "http://127.0.0.1:1,http://127.0.0.2:2",
        ])
        .unwrap()
        .resolve()
        .unwrap();
        assert_eq!(c.listen_client.len(), 2);
    }
}
