//! loadgen: the load generator bundled with ringd. Speaks the etcd v2 HTTP
//! API (/v2/keys) with a hand-written HTTP/1.1 client on monoio event loops.

mod cli;
mod etcd;
mod fanout;
mod http;
mod rawnet;
mod runner;
mod schedule;
mod serve;
mod stats;
mod streams;
mod tls;
mod watch;
mod workload;

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser as _;
use serde_json::{json, Value};

use cli::{Cli, Command, Spec, StopAt, Workload};
use http::{parse_url, Target};
use stats::{compare_rows, print_table, ratio, ErrKind, RunResult};

fn main() {
    let cli = Cli::parse();
    // Thousands of watchers (or connections) need as many descriptors.
    rawnet::raise_fd_limit();
    let code = match &cli.command {
        Command::ServeStatic(a) => match serve::serve(a) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("loadgen serve-static: {e}");
                1
            }
        },
        Command::Fanout(a) => match fanout_cfg(a).and_then(|c| fanout::run(&c)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("loadgen fanout: {e}");
                1
            }
        },
        Command::Streams(a) => match streams_cfg(a).and_then(|c| streams::run(&c)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("loadgen streams: {e}");
                1
            }
        },
        cmd => match Spec::from_command(cmd) {
            Ok(spec) => match run_spec(&spec) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("loadgen: {e}");
                    1
                }
            },
            Err(e) => {
                eprintln!("loadgen: {e}");
                2
            }
        },
    };
    std::process::exit(code);
}

fn fanout_cfg(a: &cli::FanoutArgs) -> Result<fanout::FanoutCfg, String> {
    let secs = |s: f64, what: &str| {
        Duration::try_from_secs_f64(s).map_err(|_| format!("--{what} must be a positive number"))
    };
    if a.watchers == 0 {
        return Err("--watchers must be >= 1".into());
    }
    Ok(fanout::FanoutCfg {
        target: parse_url(&a.url)?,
        watchers: a.watchers,
        puts: a.puts,
        warmup_puts: a.warmup_puts,
        key: a.key.clone(),
        value_size: a.value_size,
        hold: a.hold.map(|h| secs(h, "hold")).transpose()?,
        timeout: secs(a.timeout, "timeout")?,
        pause: Duration::from_millis(a.pause_ms),
        json: a.json.clone(),
        quiet: a.quiet,
        server_pid: a.server_pid,
    })
}

fn streams_cfg(a: &cli::StreamsArgs) -> Result<streams::StreamsCfg, String> {
    let secs = |s: f64, what: &str| {
        Duration::try_from_secs_f64(s).map_err(|_| format!("--{what} must be a positive number"))
    };
    if a.watchers == 0 || a.writers == 0 || a.keys == 0 {
        return Err("--watchers, --writers and --keys must be >= 1".into());
    }
    Ok(streams::StreamsCfg {
        target: parse_url(&a.url)?,
        watchers: a.watchers,
        writers: a.writers,
        dir: a.dir.clone(),
        keys: a.keys,
        value_size: a.value_size,
        duration: secs(a.duration, "duration")?,
        timeout: secs(a.timeout, "timeout")?,
        json: a.json.clone(),
        quiet: a.quiet,
        server_pid: a.server_pid,
    })
}

fn seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(42)
}

/// Fills the key space the workload reads. Returns its errors.
fn preload(spec: &Spec, target: &Target, label: &str) -> Result<stats::Stats, String> {
    let conns = spec.connections.min(64);
    // the preload is setup, not measured: keep-alive connections even under --new-conn
    let Some((plan, n)) = workload::Plan::preload_for(
        &spec.workload,
        &target.headers(false),
        &spec.prefix,
        spec.keys,
        spec.value_size,
        conns,
    ) else {
        return Ok(stats::Stats::default());
    };
    let cfg = runner::RunCfg {
        target: target.clone(),
        plan: Arc::new(plan),
        connections: conns,
        threads: spec.threads,
        pipeline: 16,
        stop: StopAt::Requests(n),
        rate: None,
        warmup: Duration::ZERO,
        timeout: spec.timeout,
        progress: false,
        seed: seed(),
        new_conn: false,
    };
    let r = runner::run(cfg, label)?;
    eprintln!(
        "{label}preloaded {n} keys in {:.2}s ({:.0} keys/s){}",
        r.elapsed.as_secs_f64(),
        r.rate(),
        if r.stats.error_total() > 0 {
            format!(", {} errors", r.stats.error_total())
        } else {
            String::new()
        }
    );
    Ok(r.stats)
}

fn run_one(spec: &Spec, target: &Target, label: &str, progress: bool) -> Result<RunResult, String> {
    if let Workload::Watch {
        watchers,
        stream,
        key,
    } = &spec.workload
    {
        let cfg = watch::WatchCfg {
            target: target.clone(),
            watchers: *watchers,
            stream: *stream,
            key: key.clone(),
            prefix: spec.prefix.clone(),
            keys: spec.keys,
            value_size: spec.value_size,
            threads: spec.threads,
            stop: spec.stop,
            rate: spec.rate,
            warmup: spec.warmup,
            timeout: spec.timeout,
            progress,
        };
        return watch::run_watch(cfg, label);
    }
    let plan = workload::Plan::new(
        &spec.workload,
        &target.headers(spec.new_conn),
        &spec.prefix,
        spec.keys,
        spec.value_size,
        spec.connections,
    );
    let (stop, warmup) = match spec.workload {
        Workload::Preload => (StopAt::Requests(spec.keys), Duration::ZERO),
        _ => (spec.stop, spec.warmup),
    };
    let cfg = runner::RunCfg {
        target: target.clone(),
        plan: Arc::new(plan),
        connections: spec.connections,
        threads: spec.threads,
        pipeline: spec.pipeline,
        stop,
        rate: spec.rate,
        warmup,
        timeout: spec.timeout,
        progress,
        seed: seed(),
        new_conn: spec.new_conn,
    };
    runner::run(cfg, label)
}

fn describe(spec: &Spec) -> String {
    let stop = match (&spec.workload, spec.stop) {
        (Workload::Preload, _) => format!("{} keys", spec.keys),
        (_, StopAt::Duration(d)) => format!("{:.1}s", d.as_secs_f64()),
        (_, StopAt::Requests(n)) => format!("{n} requests"),
    };
    let load = match spec.rate {
        Some(r) => format!("open loop {r} req/s"),
        None => "closed loop".to_string(),
    };
    let conns = if spec.new_conn {
        "connections (a new one per request)"
    } else {
        "connections"
    };
    let user = match &spec.user {
        Some((name, _)) => format!(", basic auth as {name}"),
        None => String::new(),
    };
    format!(
        "{}: {} {conns}, {} threads, pipeline {}, {load}, {stop}, keys {}, value {}B{user}",
        spec.workload.name(),
        spec.connections,
        spec.threads,
        spec.pipeline,
        spec.keys,
        spec.value_size
    )
}

/// How long the reachability check before a run waits for each target's TCP connect.
const REACH_TIMEOUT: Duration = Duration::from_secs(3);

fn run_spec(spec: &Spec) -> Result<i32, String> {
    let mut targets: Vec<(String, String, Target)> = spec
        .targets
        .iter()
        .map(|(n, u)| parse_url(u).map(|t| (n.clone(), u.clone(), t)))
        .collect::<Result<_, _>>()?;
    for (_, _, t) in &mut targets {
        t.authorization = spec.user.as_ref().map(|(_, header)| header.clone());
    }
    if targets.iter().any(|(_, _, t)| t.https.is_some()) {
        let config = match tls::client_config(&spec.tls) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("loadgen: {e}");
                return Ok(2);
            }
        };
        if spec.tls.insecure {
            eprintln!("loadgen: WARNING: --insecure: the server certificate is NOT verified");
        }
        for (_, _, t) in &mut targets {
            *t = t.clone().with_tls(&config)?;
        }
    }
    // A target nobody listens on fails at once, not after a preload spent its timeout on
    // refused connections.
    for (_, url, t) in &targets {
        if let Err(e) = std::net::TcpStream::connect_timeout(&t.addr, REACH_TIMEOUT) {
            eprintln!("loadgen: cannot connect to {url} ({}): {e}", t.addr);
            return Ok(1);
        }
    }
    let compare = targets.len() > 1;
    let rounds = if compare { spec.rounds } else { 1 };
    let progress = spec.progress && std::io::stderr().is_terminal();
    let mut results: Vec<Option<RunResult>> = vec![None; targets.len()];
    let mut preload_errors: Vec<stats::Stats> = vec![stats::Stats::default(); targets.len()];
    let mut preloaded = vec![false; targets.len()];
    eprintln!("loadgen {}", describe(spec));
    for round in 0..rounds {
        for (i, (name, url, target)) in targets.iter().enumerate() {
            let label = if compare {
                format!("{name} (round {}) ", round + 1)
            } else {
                String::new()
            };
            if spec.preload && !preloaded[i] {
                preload_errors[i] = preload(spec, target, &label)?;
                preloaded[i] = true;
            }
            let r = run_one(spec, target, &label, progress)?;
            if compare {
                eprintln!(
                    "{label}{url}: {:.1} req/s, p99 {}, errors {}",
                    r.rate(),
                    stats::fmt_us(stats::latency(&r.stats.hist).p99),
                    r.stats.error_total()
                );
            }
            match &mut results[i] {
                Some(acc) => acc.merge(&r),
                slot => *slot = Some(r),
            }
        }
    }
    let mut results: Vec<RunResult> = results.into_iter().flatten().collect();
    for (r, pe) in results.iter_mut().zip(&preload_errors) {
        for (k, v) in &pe.errors {
            r.stats.error(*k, *v);
        }
    }
    let params = spec.params_json();
    let out: Value = if compare {
        let mut t = serde_json::Map::new();
        for ((name, url, _), r) in targets.iter().zip(&results) {
            print_table(&format!("{name}  {url}  ({rounds} rounds)"), r);
            let mut v = r.to_json();
            v["url"] = json!(url);
            t.insert(name.clone(), v);
        }
        let (a, b) = (&results[0], &results[1]);
        let (an, bn) = (&targets[0].0, &targets[1].0);
        println!(
            "\n{:<14} {:>14} {:>14} {:>10}",
            "",
            an,
            bn,
            format!("{an}/{bn}")
        );
        let mut ratios = serde_json::Map::new();
        for ((label, x), (_, y)) in compare_rows(a).into_iter().zip(compare_rows(b)) {
            let q = ratio(x, y);
            println!(
                "{label:<14} {x:>14.1} {y:>14.1} {:>10}",
                q.map_or("-".to_string(), |q| format!("{q:.3}"))
            );
            ratios.insert(label.to_string(), json!(q));
        }
        json!({"params": params, "rounds": rounds, "targets": t, "ratio": ratios,
               "errors": a.stats.error_total() + b.stats.error_total()})
    } else {
        let r = &results[0];
        print_table(&format!("{}  {}", spec.workload.name(), targets[0].1), r);
        let mut v = r.to_json();
        v["url"] = json!(targets[0].1);
        v["params"] = params;
        v
    };
    if let Some(path) = &spec.json {
        let text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let errors: u64 = results.iter().map(|r| r.stats.error_total()).sum();
    if errors > 0 {
        let kinds: Vec<String> = results
            .iter()
            .flat_map(|r| r.stats.errors.iter())
            .map(|(k, v): (&ErrKind, &u64)| format!("{k}={v}"))
            .collect();
        eprintln!();
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!(
            "!!! loadgen: THE RUN HAD {errors} ERRORS: {}",
            kinds.join(" ")
        );
        for ((name, url, _), r) in targets.iter().zip(&results) {
            if r.stats.requests == 0 {
                let who = if name.is_empty() {
                    url.clone()
                } else {
                    format!("{name} ({url})")
                };
                eprintln!("!!! loadgen: NOT ONE REQUEST GOT AN ANSWER FROM {who}: every connection failed");
            }
        }
        if let Some(e) = tls::first_error() {
            eprintln!("!!! loadgen: first tls error: {e}");
        }
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        return Ok(1);
    }
    Ok(0)
}
