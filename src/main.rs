//! The `ringd` binary: parse etcd's flags, then serve.

use ringd::config::Config;

/// mimalloc, not glibc's malloc. The raft shard allocates and frees many small short-lived
/// blocks per write (the path copy of imbl B+ tree nodes, 16 entries of ~24 B each, after
/// every published view; events; log entries) beside per-batch buffers over 1 KiB, and
/// glibc's slow path (malloc_consolidate, unlink_chunk) took 14 % of the server's samples
/// under `loadgen put`. Measured with `perf/ab.sh BIN LABEL put 64 5`, three alternating
/// rounds: 20.6 -> 14.8 us of server CPU per PUT, 47k -> 60k req/s; GET unchanged or
/// better; RSS +12 % after 300k preloaded keys (104 -> 117 MB), +5 % after a further 5 s of
/// puts.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's `mi_collect`, from the static library the `mimalloc` crate links.
    fn mi_collect(force: bool);
}

fn main() {
    // Before any thread exists, so every thread inherits the mask and the main thread alone
    // takes SIGTERM/SIGINT (a graceful stop, `ringd::shard::shutdown`).
    ringd::shard::shutdown::block_stop_signals();
    let cfg = match Config::from_args(std::env::args()) {
        Ok(c) => c,
        Err(e) => {
            // clap prints help/version to stdout with exit 0, errors to stderr with exit 2.
            let _ = e.print();
            std::process::exit(e.exit_code());
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RINGD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log_format == "json" {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    if let Some(ringd::config::Subcommand::Migrate(args)) = &cfg.command {
        let result = if let Some(url) = &args.from_endpoint {
            // Live: SIGTERM/Ctrl-C (still blocked, taken by this thread) is the cut-over that
            // writes NEW.
            ringd::shard::live::run(args).map(|(report, summary)| {
                println!("ringd migrate: {report}");
                (url.clone(), summary)
            })
        } else {
            // A one-off command, not a member: Ctrl-C or SIGTERM ends it at once (it writes
            // into a temp dir renamed last, so an interrupted run never leaves a half-made
            // data dir).
            ringd::shard::shutdown::unblock_stop_signals();
            let from = args.from_etcd_data_dir.clone().unwrap_or_default();
            ringd::migrate::run(args).map(|s| (from.display().to_string(), s))
        };
        match result {
            Ok((from, summary)) => {
                println!(
                    "ringd migrate: {from} -> {}: {summary}",
                    args.data_dir.display()
                );
                return;
            }
            Err(e) => {
                eprintln!("ringd migrate: refused, nothing written: {e}");
                std::process::exit(1);
            }
        }
    }
    if let Some(ringd::config::Subcommand::Snapshot(args)) = &cfg.command {
        // A one-off command too: a stop signal ends it (a save writes FILE.part, renamed only
        // once checked; a restore builds its data dir aside, renamed last).
        ringd::shard::shutdown::unblock_stop_signals();
        match ringd::backup::run(args) {
            Ok(out) => {
                println!("{out}");
                return;
            }
            Err(e) => {
                eprintln!("ringd snapshot: {e}");
                std::process::exit(1);
            }
        }
    }
    let resolved = match cfg.resolve() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ringd: {e}");
            std::process::exit(2);
        }
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %resolved.data_dir,
        shards = resolved.shards,
        "starting ringd (etcd v2 API, compatible with etcd 3.4.23)"
    );
    // Recovery (snapshot decode, log replay) runs on this thread and frees most of what it
    // allocated; mimalloc returns a thread's free pages to the OS only when that thread
    // allocates again, and this one never does. Collecting once here took RssAnon after a
    // restart with 1M keys from 283 MB to 225 MB (201 MB before the restart).
    // SAFETY: a plain call into the allocator the binary is linked with, on this thread.
    let serving = || {
        unsafe { mi_collect(true) };
        // Recovered and listening: a `Type=notify` service is now started.
        ringd::shard::shutdown::sd_notify("READY=1");
    };
    if let Err(e) = ringd::shard::run_with(resolved, serving) {
        tracing::error!("{e}");
        std::process::exit(1);
    }
}
