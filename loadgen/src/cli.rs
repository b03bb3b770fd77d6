//! Command line: `loadgen WORKLOAD --url URL [options]`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::tls::TlsOpts;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for the etcd v2 HTTP API (/v2/keys): ringd, etcd"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// GET one key (--key), or random keys of a preloaded key space.
    Get(KeyArgs),
    /// PUT random keys of the key space (--keys, --value-size).
    Put(Common),
    /// GETs and PUTs of random keys, --read-ratio of them GETs.
    Mixed(MixedArgs),
    /// GET with quorum=true (one key with --key, or a preloaded key space).
    Qget(KeyArgs),
    /// compareAndSwap contention: read a hot key, then CAS it with prevIndex.
    Cas(CasArgs),
    /// POST (in-order keys) into a queue directory.
    Inorder(InorderArgs),
    /// PUT keys with short TTLs, then refresh them (refresh=true&prevExist=true).
    Ttl(TtlArgs),
    /// N watchers (long-poll or --stream) on a key or a prefix, plus one writer.
    Watch(WatchArgs),
    /// Fill --keys keys as fast as possible (pipelined PUTs).
    Preload(Common),
    /// Fan-out: N long-poll watchers of one key, one PUT at a time; when each PUT's event
    /// reached the first, median and last watcher after its ack (kernel receive times).
    Fanout(FanoutArgs),
    /// N recursive stream watchers of one dir while W connections write under it: events/s
    /// delivered, delivery time from each write's ack (kernel receive times), events missed.
    Streams(StreamsArgs),
    /// A static HTTP responder answering every request with a fixed 200 (for tests).
    #[command(hide = true)]
    ServeStatic(ServeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Target base URL, e.g. http://127.0.0.1:2379
    #[arg(long, required_unless_present = "compare")]
    pub url: Option<String>,
    /// Compare two targets: --compare A=http://... B=http://...
    #[arg(long, num_args = 2, value_name = "NAME=URL", conflicts_with = "url")]
    pub compare: Vec<String>,
    /// Rounds for --compare (runs alternate A B A B ...)
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// TCP connections in total
    #[arg(short = 'c', long, default_value_t = 16)]
    pub connections: usize,
    /// Threads, each with its own event loop (connections are spread over them)
    #[arg(short = 't', long, default_value_t = 1)]
    pub threads: usize,
    /// Requests in flight per connection (HTTP/1.1 pipelining); default 1 (16 for preload)
    #[arg(long)]
    pub pipeline: Option<usize>,
    /// Measured run time in seconds (default 10 unless --requests)
    #[arg(short = 'd', long, conflicts_with = "requests")]
    pub duration: Option<f64>,
    /// Stop after this many measured requests
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,
    /// Open loop: total requests per second, latency from the intended send time
    #[arg(short = 'r', long)]
    pub rate: Option<f64>,
    /// Seconds of load before measuring starts
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Size of the key space
    #[arg(short = 'k', long, default_value_t = 1000)]
    pub keys: u64,
    /// Value size in bytes for writes
    #[arg(long, default_value_t = 64)]
    pub value_size: usize,
    /// Key prefix (directory) used for generated keys
    #[arg(long, default_value = "/loadgen")]
    pub prefix: String,
    /// Write the result as one JSON object to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Seconds without any progress (or past the end) before the run is cut off
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Do not preload the key space before get/mixed/qget/cas
    #[arg(long)]
    pub no_preload: bool,
    /// No live progress line
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// https: PEM file of the CA certificate(s) to trust (default: the system roots)
    #[arg(long, value_name = "FILE", visible_alias = "ca-file")]
    pub cacert: Option<PathBuf>,
    /// https: do not verify the server certificate (prints a warning)
    #[arg(long, conflicts_with = "cacert")]
    pub insecure: bool,
    /// https: client certificate chain (PEM) for servers with --client-cert-auth
    #[arg(
        long,
        value_name = "FILE",
        visible_alias = "cert-file",
        requires = "key_file"
    )]
    pub cert: Option<PathBuf>,
    /// https: the private key (PEM) of --cert (--key is the etcd key of get/watch)
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key_file: Option<PathBuf>,
    /// HTTP basic auth on every request, as etcdctl's --username (NAME:PASSWORD)
    #[arg(long, value_name = "NAME:PASSWORD", visible_alias = "username")]
    pub user: Option<String>,
    /// A new connection (and TLS handshake, without resumption) for every request
    #[arg(long, visible_alias = "reconnect")]
    pub new_conn: bool,
}

#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    #[command(flatten)]
    pub common: Common,
    /// Read only this key (no preload)
    #[arg(long)]
    pub key: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct MixedArgs {
    #[command(flatten)]
    pub common: Common,
    /// Fraction of requests that are GETs
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
}

#[derive(Args, Debug, Clone)]
pub struct CasArgs {
    #[command(flatten)]
    pub common: Common,
    /// Number of contended keys
    #[arg(long, default_value_t = 4)]
    pub hot_keys: u64,
}

#[derive(Args, Debug, Clone)]
pub struct InorderArgs {
    #[command(flatten)]
    pub common: Common,
    /// Queue directory (default PREFIX/queue)
    #[arg(long)]
    pub queue: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct TtlArgs {
    #[command(flatten)]
    pub common: Common,
    /// TTL in seconds for the keys
    #[arg(long, default_value_t = 5)]
    pub ttl: u64,
}

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    #[command(flatten)]
    pub common: Common,
    /// Number of watchers
    #[arg(long, default_value_t = 16)]
    pub watchers: usize,
    /// Streaming watchers (stream=true) instead of long-poll
    #[arg(long)]
    pub stream: bool,
    /// Watch this single key (default: recursive watch on PREFIX/watch)
    #[arg(long)]
    pub key: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Target base URL (plain http), e.g. http://127.0.0.1:2379
    #[arg(long)]
    pub url: String,
    /// Long-poll watchers of the key (one connection each)
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Measured PUTs, one at a time
    #[arg(long, default_value_t = 20)]
    pub puts: usize,
    /// Unmeasured PUTs first
    #[arg(long, default_value_t = 2)]
    pub warmup_puts: usize,
    /// The watched (and written) key
    #[arg(long, default_value = "/loadgen/fanout")]
    pub key: String,
    /// Value size in bytes
    #[arg(long, default_value_t = 64)]
    pub value_size: usize,
    /// Only open and arm the watchers, print `armed N`, keep them idle SECS seconds, end
    #[arg(long, value_name = "SECS")]
    pub hold: Option<f64>,
    /// Milliseconds between a PUT's last delivery (all re-armed) and the next PUT
    #[arg(long, default_value_t = 100)]
    pub pause_ms: u64,
    /// Seconds allowed for the connections, the heads, and one PUT's deliveries
    #[arg(long, default_value_t = 20.0)]
    pub timeout: f64,
    /// Write the result as one JSON object to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Only the summary line
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// The server's pid, when it runs here: its CPU time per measured PUT is reported
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
}

#[derive(Args, Debug, Clone)]
pub struct StreamsArgs {
    /// Target base URL (plain http), e.g. http://127.0.0.1:2379
    #[arg(long)]
    pub url: String,
    /// Recursive stream watchers of the dir (one connection each)
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Writer connections (closed loop, one PUT in flight each)
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
    /// The watched dir; writes go to DIR/k<n % keys>
    #[arg(long, default_value = "/loadgen/streams")]
    pub dir: String,
    /// Keys written under the dir
    #[arg(short = 'k', long, default_value_t = 1000)]
    pub keys: u64,
    /// Value size in bytes
    #[arg(long, default_value_t = 64)]
    pub value_size: usize,
    /// Seconds of writing
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds allowed for the connections, and for the watchers to catch up at the end
    #[arg(long, default_value_t = 20.0)]
    pub timeout: f64,
    /// Write the result as one JSON object to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Only the summary line
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// The server's pid, when it runs here: its CPU time while the writers write is reported
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port, printed on stdout)
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Threads (SO_REUSEPORT listeners)
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// The JSON body of every response
    #[arg(
        long,
        default_value = r#"{"action":"get","node":{"key":"/x","value":"hello","modifiedIndex":4,"createdIndex":4}}"#
    )]
    pub body: String,
    /// Exit by itself after this many seconds
    #[arg(long)]
    pub exit_after: Option<f64>,
    /// Serve https with this certificate chain (PEM); needs --tls-key
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Answer etcd's 401 to requests without this user's basic auth (NAME:PASSWORD)
    #[arg(long, value_name = "NAME:PASSWORD")]
    pub basic_auth: Option<String>,
}

/// What a run does, decoded from the subcommand.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    Get {
        key: Option<String>,
        quorum: bool,
    },
    Put,
    Mixed {
        read_ratio: f64,
    },
    Cas {
        hot_keys: u64,
    },
    Inorder {
        queue: String,
    },
    Ttl {
        ttl: u64,
    },
    Watch {
        watchers: usize,
        stream: bool,
        key: Option<String>,
    },
    Preload,
}

impl Workload {
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Get { quorum: false, .. } => "get",
            Workload::Get { quorum: true, .. } => "qget",
            Workload::Put => "put",
            Workload::Mixed { .. } => "mixed",
            Workload::Cas { .. } => "cas",
            Workload::Inorder { .. } => "inorder",
            Workload::Ttl { .. } => "ttl",
            Workload::Watch { .. } => "watch",
            Workload::Preload => "preload",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StopAt {
    Duration(Duration),
    Requests(u64),
}

/// Validated run parameters.
#[derive(Debug, Clone)]
pub struct Spec {
    pub workload: Workload,
    pub targets: Vec<(String, String)>,
    pub rounds: u32,
    pub connections: usize,
    pub threads: usize,
    pub pipeline: usize,
    pub stop: StopAt,
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub keys: u64,
    pub value_size: usize,
    pub prefix: String,
    pub json: Option<PathBuf>,
    pub timeout: Duration,
    pub preload: bool,
    pub progress: bool,
    pub tls: TlsOpts,
    /// --user: the user's name (reported) and the Authorization header value (sent).
    pub user: Option<(String, String)>,
    /// --new-conn: one connection per request (asks the server to close it).
    pub new_conn: bool,
}

pub const MAX_VALUE_SIZE: usize = 16 << 20;

fn secs(name: &str, v: f64) -> Result<Duration, String> {
    if !v.is_finite() || !(0.0..=1e7).contains(&v) {
        return Err(format!("--{name} must be a number of seconds >= 0"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn clean_key(name: &str, k: &str) -> Result<String, String> {
    if !k.starts_with('/') {
        return Err(format!("--{name} must start with '/': {k}"));
    }
    let t = k.trim_end_matches('/');
    if t.is_empty() {
        return Err(format!("--{name} must not be the root"));
    }
    Ok(t.to_string())
}

impl Spec {
    pub fn from_command(cmd: &Command) -> Result<Spec, String> {
        let (common, workload) = match cmd {
            Command::Get(a) => (
                &a.common,
                Workload::Get {
                    key: a.key.clone(),
                    quorum: false,
                },
            ),
            Command::Qget(a) => (
                &a.common,
                Workload::Get {
                    key: a.key.clone(),
                    quorum: true,
                },
            ),
            Command::Put(c) => (c, Workload::Put),
            Command::Mixed(a) => (
                &a.common,
                Workload::Mixed {
                    read_ratio: a.read_ratio,
                },
            ),
            Command::Cas(a) => (
                &a.common,
                Workload::Cas {
                    hot_keys: a.hot_keys,
                },
            ),
            Command::Inorder(a) => {
                let q = a
                    .queue
                    .clone()
                    .unwrap_or_else(|| format!("{}/queue", a.common.prefix.trim_end_matches('/')));
                (&a.common, Workload::Inorder { queue: q })
            }
            Command::Ttl(a) => (&a.common, Workload::Ttl { ttl: a.ttl }),
            Command::Watch(a) => (
                &a.common,
                Workload::Watch {
                    watchers: a.watchers,
                    stream: a.stream,
                    key: a.key.clone(),
                },
            ),
            Command::Preload(c) => (c, Workload::Preload),
            Command::ServeStatic(_) => return Err("serve-static is not a workload".into()),
            Command::Fanout(_) => return Err("fanout is run by fanout::run".into()),
            Command::Streams(_) => return Err("streams is run by streams::run".into()),
        };
        let mut workload = workload;
        match &mut workload {
            Workload::Get { key: Some(k), .. } | Workload::Watch { key: Some(k), .. } => {
                *k = clean_key("key", k)?
            }
            Workload::Inorder { queue } => *queue = clean_key("queue", queue)?,
            Workload::Mixed { read_ratio } if !(0.0..=1.0).contains(read_ratio) => {
                return Err("--read-ratio must be within 0..1".into())
            }
            Workload::Cas { hot_keys: 0 } => return Err("--hot-keys must be >= 1".into()),
            Workload::Ttl { ttl: 0 } => return Err("--ttl must be >= 1".into()),
            Workload::Watch { watchers: 0, .. } => return Err("--watchers must be >= 1".into()),
            _ => {}
        }
        let c = common;
        let mut targets = Vec::new();
        if c.compare.is_empty() {
            let url = c.url.clone().ok_or("--url or --compare is required")?;
            targets.push((String::new(), url));
        } else {
            for item in &c.compare {
                let (name, url) = item
                    .split_once('=')
                    .ok_or_else(|| format!("--compare wants NAME=URL, got {item}"))?;
                if name.is_empty() || url.is_empty() {
                    return Err(format!("--compare wants NAME=URL, got {item}"));
                }
                targets.push((name.to_string(), url.to_string()));
            }
        }
        if c.connections == 0 || c.connections > 100_000 {
            return Err("--connections must be within 1..=100000".into());
        }
        if c.threads == 0 || c.threads > 1024 {
            return Err("--threads must be within 1..=1024".into());
        }
        let pipeline = c
            .pipeline
            .unwrap_or(if workload == Workload::Preload { 16 } else { 1 });
        if pipeline == 0 || pipeline > 1024 {
            return Err("--pipeline must be within 1..=1024".into());
        }
        let stop = match (c.duration, c.requests) {
            (_, Some(0)) => return Err("--requests must be >= 1".into()),
            (_, Some(n)) => StopAt::Requests(n),
            (Some(d), None) if d > 0.0 => StopAt::Duration(secs("duration", d)?),
            (Some(_), None) => return Err("--duration must be > 0".into()),
            (None, None) => StopAt::Duration(Duration::from_secs(10)),
        };
        if let Some(r) = c.rate {
            if !r.is_finite() || r <= 0.0 || r > 1e9 {
                return Err("--rate must be > 0".into());
            }
        }
        if c.keys == 0 {
            return Err("--keys must be >= 1".into());
        }
        if c.value_size > MAX_VALUE_SIZE {
            return Err(format!("--value-size must be <= {MAX_VALUE_SIZE}"));
        }
        if c.rounds == 0 {
            return Err("--rounds must be >= 1".into());
        }
        let tls = TlsOpts {
            cacert: c.cacert.clone(),
            insecure: c.insecure,
            cert: c.cert.clone(),
            key: c.key_file.clone(),
        };
        if tls.any() && !targets.iter().any(|(_, u)| u.starts_with("https://")) {
            return Err(
                "--cacert, --insecure, --cert and --key-file apply to https:// URLs only".into(),
            );
        }
        let user = match &c.user {
            None => None,
            Some(u) => {
                // as etcdctl's --username: the name is everything before the first ':'
                let (name, password) = u
                    .split_once(':')
                    .ok_or("--user wants NAME:PASSWORD (the password after the first ':')")?;
                if name.is_empty() {
                    return Err("--user wants NAME:PASSWORD: the name is empty".into());
                }
                Some((
                    name.to_string(),
                    crate::http::basic_authorization(name, password),
                ))
            }
        };
        if c.new_conn {
            if matches!(workload, Workload::Watch { .. }) {
                return Err(
                    "--new-conn does not apply to watch (watchers hold their connections)".into(),
                );
            }
            if pipeline != 1 {
                return Err(
                    "--new-conn sends one request per connection: --pipeline must be 1".into(),
                );
            }
        }
        let timeout = secs("timeout", c.timeout)?;
        if timeout.is_zero() {
            return Err("--timeout must be > 0".into());
        }
        Ok(Spec {
            threads: c.threads.min(c.connections),
            workload,
            targets,
            rounds: c.rounds,
            connections: c.connections,
            pipeline,
            stop,
            rate: c.rate,
            warmup: secs("warmup", c.warmup)?,
            keys: c.keys,
            value_size: c.value_size,
            prefix: clean_key("prefix", &c.prefix)?,
            json: c.json.clone(),
            timeout,
            preload: !c.no_preload,
            progress: !c.quiet,
            tls,
            user,
            new_conn: c.new_conn,
        })
    }

    /// Parameters for the JSON report.
    pub fn params_json(&self) -> serde_json::Value {
        let (duration, requests) = match self.stop {
            StopAt::Duration(d) => (Some(d.as_secs_f64()), None),
            StopAt::Requests(n) => (None, Some(n)),
        };
        let mut v = serde_json::json!({
            "workload": self.workload.name(),
            "connections": self.connections,
            "threads": self.threads,
            "pipeline": self.pipeline,
            "duration_secs": duration,
            "requests": requests,
            "rate": self.rate,
            "warmup_secs": self.warmup.as_secs_f64(),
            "keys": self.keys,
            "value_size": self.value_size,
            "prefix": self.prefix,
            "preload": self.preload,
            "user": self.user.as_ref().map(|(name, _)| name),
            "new_conn": self.new_conn,
        });
        if self.targets.iter().any(|(_, u)| u.starts_with("https://")) {
            v["tls"] = serde_json::json!({
                "cacert": self.tls.cacert,
                "insecure": self.tls.insecure,
                "client_cert": self.tls.cert.is_some(),
            });
        }
        let extra = match &self.workload {
            Workload::Get { key, quorum } => serde_json::json!({"key": key, "quorum": quorum}),
            Workload::Mixed { read_ratio } => serde_json::json!({"read_ratio": read_ratio}),
            Workload::Cas { hot_keys } => serde_json::json!({"hot_keys": hot_keys}),
            Workload::Inorder { queue } => serde_json::json!({"queue": queue}),
            Workload::Ttl { ttl } => serde_json::json!({"ttl": ttl}),
            Workload::Watch {
                watchers,
                stream,
                key,
            } => {
                serde_json::json!({"watchers": watchers, "stream": stream, "key": key})
            }
            Workload::Put | Workload::Preload => serde_json::json!({}),
        };
        if let (Some(m), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
            m.extend(e);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(args: &[&str]) -> Result<Spec, String> {
        let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
        Spec::from_command(&cli.command)
    }

    #[test]
    fn get_with_key_and_defaults() {
        let s = spec(&[
            "loadgen",
            "get",
            "--url",
            "http://127.0.0.1:1",
            "--key",
            "/a/b",
        ])
        .unwrap();
        assert_eq!(
            s.workload,
            Workload::Get {
                key: Some("/a/b".into()),
                quorum: false
            }
        );
        assert_eq!(s.connections, 16);
        assert_eq!(s.threads, 1);
        assert_eq!(s.pipeline, 1);
        assert_eq!(s.stop, StopAt::Duration(Duration::from_secs(10)));
        assert_eq!(
            s.targets,
            vec![(String::new(), "http://127.0.0.1:1".to_string())]
        );
        assert!(s.rate.is_none());
    }

    #[test]
    fn full_option_set() {
        let s = spec(&[
            "loadgen",
            "mixed",
            "--url",
            "http://h:1",
            "-c",
            "64",
            "-t",
            "2",
            "--pipeline",
            "4",
            "--requests",
            "2000",
            "--rate",
            "5000",
            "--warmup",
            "1.5",
            "--keys",
            "10",
            "--value-size",
            "128",
            "--read-ratio",
            "0.5",
            "--json",
            "/tmp/x.json",
        ])
        .unwrap();
        assert_eq!(s.workload, Workload::Mixed { read_ratio: 0.5 });
        assert_eq!((s.connections, s.threads, s.pipeline), (64, 2, 4));
        assert_eq!(s.stop, StopAt::Requests(2000));
        assert_eq!(s.rate, Some(5000.0));
        assert_eq!(s.warmup, Duration::from_millis(1500));
        assert_eq!((s.keys, s.value_size), (10, 128));
        assert_eq!(s.json.as_deref(), Some(std::path::Path::new("/tmp/x.json")));
    }

    #[test]
    fn rejects_bad_arguments() {
        // no target
        assert!(spec(&["loadgen", "put"]).is_err());
        // duration and requests together
        assert!(spec(&["loadgen", "put", "--url", "u", "-d", "1", "-n", "5"]).is_err());
        // url and compare together
        assert!(spec(&["loadgen", "put", "--url", "u", "--compare", "A=x", "B=y"]).is_err());
        assert!(spec(&["loadgen", "mixed", "--url", "u", "--read-ratio", "1.5"]).is_err());
        assert!(spec(&["loadgen", "get", "--url", "u", "--key", "nokey"]).is_err());
        assert!(spec(&["loadgen", "get", "--url", "u", "-c", "0"]).is_err());
        assert!(spec(&["loadgen", "get", "--url", "u", "--rate", "0"]).is_err());
        assert!(spec(&["loadgen", "get", "--url", "u", "--pipeline", "0"]).is_err());
        assert!(spec(&["loadgen", "get", "--url", "u", "-n", "0"]).is_err());
        assert!(spec(&["loadgen", "nosuch", "--url", "u"]).is_err());
        assert!(spec(&["loadgen", "put", "--compare", "A=x"]).is_err());
        assert!(spec(&["loadgen", "put", "--compare", "Ax", "B=y"]).is_err());
    }

    #[test]
    fn compare_and_workload_specific() {
        let s = spec(&[
            "loadgen",
            "put",
            "--compare",
            "ringd=http://127.0.0.1:1",
            "etcd=http://127.0.0.1:2",
            "--rounds",
            "3",
        ])
        .unwrap();
        assert_eq!(s.targets.len(), 2);
        assert_eq!(s.targets[0], ("ringd".into(), "http://127.0.0.1:1".into()));
        assert_eq!(s.rounds, 3);
        let w = spec(&[
            "loadgen",
            "watch",
            "--url",
            "u",
            "--watchers",
            "8",
            "--stream",
        ])
        .unwrap();
        assert_eq!(
            w.workload,
            Workload::Watch {
                watchers: 8,
                stream: true,
                key: None
            }
        );
        let p = spec(&["loadgen", "preload", "--url", "u", "--keys", "100"]).unwrap();
        assert_eq!(p.pipeline, 16);
        let q = spec(&["loadgen", "inorder", "--url", "u", "--prefix", "/p/"]).unwrap();
        assert_eq!(
            q.workload,
            Workload::Inorder {
                queue: "/p/queue".into()
            }
        );
        let t = spec(&["loadgen", "ttl", "--url", "u", "--ttl", "3"]).unwrap();
        assert_eq!(t.workload, Workload::Ttl { ttl: 3 });
        // threads are capped by connections
        let c = spec(&["loadgen", "qget", "--url", "u", "-c", "2", "-t", "8"]).unwrap();
        assert_eq!(c.threads, 2);
        assert_eq!(
            c.workload,
            Workload::Get {
                key: None,
                quorum: true
            }
        );
    }

    #[test]
    fn tls_flags() {
        let s = spec(&[
            "loadgen",
            "get",
            "--url",
            "https://127.0.0.1:1",
            "--key",
            "/x",
            "--cacert",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key-file",
            "c.key",
        ])
        .unwrap();
        assert_eq!(
            s.workload,
            Workload::Get {
                key: Some("/x".into()),
                quorum: false
            }
        );
        assert_eq!(
            s.tls,
            TlsOpts {
                cacert: Some("ca.pem".into()),
                insecure: false,
                cert: Some("c.pem".into()),
                key: Some("c.key".into()),
            }
        );
        assert_eq!(s.params_json()["tls"]["client_cert"], true);
        // etcdctl v2 style aliases
        let s = spec(&[
            "loadgen",
            "put",
            "--url",
            "https://h:1",
            "--ca-file",
            "a",
            "--cert-file",
            "b",
            "--key-file",
            "k",
        ])
        .unwrap();
        assert_eq!(s.tls.cacert.as_deref(), Some(std::path::Path::new("a")));
        assert_eq!(s.tls.cert.as_deref(), Some(std::path::Path::new("b")));
        let s = spec(&["loadgen", "watch", "--url", "https://h:1", "--insecure"]).unwrap();
        assert!(s.tls.insecure && s.tls.cacert.is_none());
        assert_eq!(s.params_json()["tls"]["insecure"], true);
        // no tls flags: defaults, and no "tls" in the params of an http run
        let s = spec(&["loadgen", "put", "--url", "http://h:1"]).unwrap();
        assert_eq!(s.tls, TlsOpts::default());
        assert!(s.params_json().get("tls").is_none());
        let s = spec(&["loadgen", "put", "--url", "https://h:1"]).unwrap();
        assert!(!s.tls.any());
        // with --compare, one https target is enough
        assert!(spec(&[
            "loadgen",
            "put",
            "--compare",
            "A=http://h:1",
            "B=https://h:2",
            "--cacert",
            "x"
        ])
        .is_ok());
    }

    #[test]
    fn tls_flags_rejected() {
        let u = "https://h:1";
        // --insecure and --cacert contradict each other
        assert!(spec(&["loadgen", "put", "--url", u, "--insecure", "--cacert", "a"]).is_err());
        // a certificate needs its key and the other way round
        assert!(spec(&["loadgen", "put", "--url", u, "--cert", "a"]).is_err());
        assert!(spec(&["loadgen", "put", "--url", u, "--key-file", "a"]).is_err());
        // TLS options with only http targets are a mistake
        let e = spec(&["loadgen", "put", "--url", "http://h:1", "--insecure"]).unwrap_err();
        assert!(e.contains("https"), "{e}");
        assert!(spec(&["loadgen", "put", "--url", "http://h:1", "--cacert", "a"]).is_err());
        // serve-static: cert and key together
        assert!(Cli::try_parse_from(["loadgen", "serve-static", "--tls-cert", "a"]).is_err());
        assert!(Cli::try_parse_from(["loadgen", "serve-static", "--tls-key", "a"]).is_err());
        assert!(Cli::try_parse_from(["loadgen", "serve-static", "--tls-client-ca", "a"]).is_err());
        let cli = Cli::try_parse_from([
            "loadgen",
            "serve-static",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--tls-client-ca",
            "ca",
        ])
        .unwrap();
        match cli.command {
            Command::ServeStatic(a) => {
                assert_eq!(a.tls_cert.as_deref(), Some(std::path::Path::new("c")));
                assert_eq!(a.tls_key.as_deref(), Some(std::path::Path::new("k")));
                assert_eq!(a.tls_client_ca.as_deref(), Some(std::path::Path::new("ca")));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn user_and_new_conn() {
        let s = spec(&[
            "loadgen",
            "get",
            "--url",
            "http://h:1",
            "--key",
            "/x",
            "--user",
            "root:p:w",
            "--new-conn",
        ])
        .unwrap();
        // the name before the first ':', the rest is the password; only the name is reported
        assert_eq!(
            s.user,
            Some(("root".to_string(), "Basic cm9vdDpwOnc=".to_string()))
        );
        assert!(s.new_conn);
        let p = s.params_json();
        assert_eq!(
            (p["user"].clone(), p["new_conn"].clone()),
            ("root".into(), true.into())
        );
        assert!(!p.to_string().contains("cm9vdDpwOnc"), "{p}");
        // etcdctl's spelling, and an empty password
        let s = spec(&[
            "loadgen",
            "put",
            "--url",
            "u",
            "--username",
            "u:",
            "--reconnect",
        ])
        .unwrap();
        assert_eq!(s.user.as_ref().map(|u| u.0.as_str()), Some("u"));
        assert!(s.new_conn);
        let s = spec(&["loadgen", "put", "--url", "u"]).unwrap();
        assert!(s.user.is_none() && !s.new_conn);
        assert!(s.params_json()["user"].is_null());
        // rejected: no password part, no name, new connections with pipelining or watchers
        assert!(spec(&["loadgen", "put", "--url", "u", "--user", "root"]).is_err());
        assert!(spec(&["loadgen", "put", "--url", "u", "--user", ":pw"]).is_err());
        assert!(spec(&[
            "loadgen",
            "put",
            "--url",
            "u",
            "--new-conn",
            "--pipeline",
            "2"
        ])
        .is_err());
        assert!(spec(&["loadgen", "watch", "--url", "u", "--new-conn"]).is_err());
        // preload pipelines by default: --new-conn does not apply to it
        assert!(spec(&["loadgen", "preload", "--url", "u", "--new-conn"]).is_err());
    }

    #[test]
    fn serve_static_parses() {
        let cli =
            Cli::try_parse_from(["loadgen", "serve-static", "--listen", "127.0.0.1:0"]).unwrap();
        match cli.command {
            Command::ServeStatic(a) => {
                assert_eq!(a.listen, "127.0.0.1:0");
                assert!(a.body.contains("\"action\":\"get\""));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
