//! `ringd snapshot save|restore|status`: backups of a running member and new members made
//! from them, as etcdctl's `snapshot` commands.
//!
//! - `save`: fetches `GET /ringd/snapshot` (a snapshot file of the member's state after a
//!   read barrier: `shard::backup`) into `FILE.part`, fsyncs it, checks it (framing and
//!   CRC32C, `crate::snapshot::decode`) and only then renames it to `FILE`;
//! - `restore`: builds a new member's data dir from a snapshot file, with the membership of
//!   a new cluster from `--initial-cluster` (the file's is ignored, as etcd's restore does),
//!   through `ringd migrate`'s data dir writer (`migrate::write_data_dir`);
//! - `status`: what a snapshot file holds (checksum, raft index and term, etcd index, nodes,
//!   size), as a table or JSON.
//!
//! A damaged file (a flipped byte, a cut-short transfer) is refused by every command with the
//! file named and nothing written.

mod restore;
mod save;
mod status;

use std::path::{Path, PathBuf};

/// `ringd snapshot`'s flags. No ETCD_* variables: the environment of a member's service
/// names that member's data dir, which must never be taken for a restore's target.
#[derive(clap::Args, Debug, Clone)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum SnapshotCommand {
    /// Save a consistent snapshot of a running member (every write acknowledged before the
    /// save began is in it) to FILE.
    Save(SaveArgs),
    /// Create a new member's data dir from a snapshot FILE (a new cluster: run it once per
    /// member, each with its own --name and --data-dir, the same --initial-cluster).
    Restore(RestoreArgs),
    /// Print what a snapshot FILE holds: checksum, raft index, etcd index, keys, size.
    Status(StatusArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct SaveArgs {
    /// Where to write the snapshot (written to FILE.part, checked, then renamed).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// The client URL of the member to save from (http:// or https://).
    #[arg(
        long,
        alias = "endpoints",
        value_name = "URL",
        required_unless_present = "data_dir"
    )]
    pub endpoint: Option<String>,

    /// Instead of --endpoint: the data dir of a stopped member (read, never changed).
    #[arg(long, value_name = "DIR", conflicts_with_all = [
        "endpoint", "cacert", "cert", "key", "insecure_skip_tls_verify", "user"
    ])]
    pub data_dir: Option<PathBuf>,

    /// CA certificates (PEM) that sign the member's https certificate (default: the
    /// system's bundle, /etc/ssl/certs/ca-certificates.crt).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// Client certificate (PEM), for a member that asks for one.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,

    /// The client certificate's key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Do not check the member's https certificate (as etcdctl's flag).
    #[arg(long)]
    pub insecure_skip_tls_verify: bool,

    /// NAME:PASSWORD of a user with root access (when the member's auth is enabled).
    #[arg(long, value_name = "NAME:PASSWORD")]
    pub user: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RestoreArgs {
    /// The snapshot file (from `ringd snapshot save`).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// The new member's data dir (must not exist, or be empty; default: "<name>.etcd").
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// The new member's name.
    #[arg(long, default_value = "default")]
    pub name: String,

    /// The new cluster's members (name=peerURL,...; default: this member alone).
    #[arg(long)]
    pub initial_cluster: Option<String>,

    /// The new member's peer URLs (as in --initial-cluster).
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,

    /// The new cluster's token (member and cluster ids are computed from it).
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
}

#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// The snapshot file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Output format.
    #[arg(short = 'w', long, default_value = "table", value_parser = ["table", "json"])]
    pub write_out: String,
}

/// Runs one command; Ok holds what to print on stdout.
pub fn run(args: &SnapshotArgs) -> Result<String, String> {
    match &args.command {
        SnapshotCommand::Save(a) => save::run(a),
        SnapshotCommand::Restore(a) => restore::run(a),
        SnapshotCommand::Status(a) => status::run(a),
    }
}

/// A snapshot file, checked (framing and CRC32C) and decoded, with its size and checksum.
struct Loaded {
    file: crate::snapshot::SnapshotFile,
    bytes: u64,
    crc32c: u32,
}

fn load(path: &Path) -> Result<Loaded, String> {
    let raw = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = crate::snapshot::decode(&raw, path)?;
    // decode checked the trailer: it is there and matches.
    let crc32c = raw.last_chunk::<4>().map_or(0, |t| u32::from_le_bytes(*t));
    Ok(Loaded {
        file,
        bytes: raw.len() as u64,
        crc32c,
    })
}

/// The store a snapshot file holds, decoded (a damaged store section is refused).
fn store_of(loaded: &Loaded) -> Result<ringd_store::Store, String> {
    let path = loaded.file.path.display();
    ringd_store::Store::restore(&loaded.file.store)
        .map_err(|e| format!("snapshot {path} is damaged: its store does not decode: {e}"))
}
