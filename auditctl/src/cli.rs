//! Command-line interface (clap derive). Every option can also come from the environment; the
//! connection options use the same variable names as the sinks (`AUDIT_CLICKHOUSE_*`,
//! `AUDIT_S3_*`, `AUDIT_SINK_ARCHIVE_*`), so one environment file (e.g. `deploy/local/env.sh`)
//! configures the workers and auditctl alike. The archive options are the archive sink's own
//! (`worker_runtime::object_store::ArchiveStoreArgs`); S3 settings not given fall back to the
//! standard `AWS_*` environment (credentials, region, endpoint), as in the archive sink.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
pub use worker_runtime::object_store::ArchiveStoreArgs;
pub use worker_runtime::Secret;

const EXIT_CODES: &str = "\
EXIT CODES:
  0  verified: no integrity finding (or: key generated, proof written, proof checks)
  1  tampering / integrity finding (or: the proof does not check)
  2  usage or configuration error (bad flag, unreadable key set, unknown event id)
  3  the store (ClickHouse, the archive) or a local file could not be read or written
  4  verify: unsealed: no integrity finding, but no --keys were given, so no signature was
     checked and a consistent rewrite would not be detected (--no-signatures accepts that: 0)";

/// Verify the audit hash chain, manage checkpoint keys, prove and check event inclusion.
#[derive(Debug, Clone, Parser)]
#[command(name = "auditctl", version, after_long_help = EXIT_CODES, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Recompute and check the hash chain(s) in ClickHouse and/or the archive.
    #[command(after_help = EXIT_CODES)]
    Verify(VerifyArgs),
    /// Generate an Ed25519 checkpoint signing key and add (rotate) it in a key set.
    #[command(after_help = EXIT_CODES)]
    Keygen(KeygenArgs),
    /// Produce an inclusion proof of one event against a signed checkpoint.
    #[command(after_help = EXIT_CODES)]
    Prove(ProveArgs),
    /// Check an inclusion proof offline, with only the public key set.
    #[command(after_help = EXIT_CODES)]
    CheckProof(CheckProofArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    Clickhouse,
    Archive,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SingleSource {
    Clickhouse,
    Archive,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Where to read the chain from.
    #[arg(
        long,
        value_enum,
        env = "AUDITCTL_SOURCE",
        default_value = "clickhouse"
    )]
    pub source: SourceKind,
    /// Only these partitions (repeatable; comma-separated in the env var). Default: every
    /// partition found in the store (rows or checkpoints).
    #[arg(long = "partition", env = "AUDITCTL_PARTITIONS", value_delimiter = ',')]
    pub partitions: Vec<u32>,
    /// Print the report as JSON instead of the human summary.
    #[arg(long, env = "AUDITCTL_JSON")]
    pub json: bool,
    /// Public key set (JSON) to check checkpoint signatures. Without it nothing signed is
    /// checked: a consistent rewrite (or a truncated tail) cannot be detected, so the run ends
    /// with exit 4 ("unsealed") unless --no-signatures is given.
    #[arg(long, env = "AUDIT_KEYSET")]
    pub keys: Option<PathBuf>,
    /// Accept a run without --keys: only the hash chain is recomputed (exit 0 if it holds).
    /// Without this flag, a run without keys exits 4 ("unsealed").
    #[arg(long, env = "AUDITCTL_NO_SIGNATURES")]
    pub no_signatures: bool,
    /// Tolerated clock difference (ms) between event producers / chainer instances: a
    /// checkpoint may be signed up to this long before the newest receive time it covers (or
    /// an earlier checkpoint's time) before it is `checkpoint_backdated`. It is also how far
    /// a retired key's holder could backdate undetected: keep it small.
    #[arg(long, env = "AUDITCTL_CLOCK_SKEW_MS", default_value_t = 0)]
    pub clock_skew_ms: u64,
    /// Only accept checkpoints of this chain id.
    #[arg(long, env = "AUDIT_CHAIN_ID")]
    pub chain_id: Option<String>,
    /// Findings kept per partition (the rest are counted).
    #[arg(long, env = "AUDITCTL_MAX_FINDINGS", default_value_t = 1000)]
    pub max_findings: usize,
    /// ClickHouse is read per partition in windows of this many seqs, one query each (bounds
    /// the server-side sort, since 18.16 cannot read in key order without sorting, and the
    /// memory of one read; a failed window is read again). An empty window jumps to the next
    /// stored seq, so sparse or huge seqs cost queries per row, not per window of seq span.
    #[arg(long, env = "AUDITCTL_WINDOW", default_value_t = 10_000)]
    pub window: i64,
    /// No progress indicator on stderr. (It is only shown when stderr is a terminal and the
    /// report is not --json.)
    #[arg(long, env = "AUDITCTL_QUIET")]
    pub quiet: bool,
    #[command(flatten)]
    pub reads: ReadArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub archive: ArchiveStoreArgs,
}

/// How store reads are retried.
#[derive(Debug, Clone, Args)]
pub struct ReadArgs {
    /// Attempts per store read (ClickHouse query, S3 list/get) before giving up with exit 3;
    /// only transient errors (network, timeouts, 5xx, overload) are retried, with backoff.
    #[arg(long, env = "AUDITCTL_RETRY_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    pub retry_attempts: u16,
}

#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Id of the new key (what checkpoints name in `key_id`).
    #[arg(long, env = "AUDITCTL_KEY_ID")]
    pub key_id: String,
    /// Where to write the private key (PKCS#8 DER, mode 0600). Never overwritten.
    #[arg(long, env = "AUDITCTL_KEY_OUT")]
    pub out: PathBuf,
    /// Key set (JSON) to add the public key to; created if missing. Keys already in it are
    /// kept; keys still active are retired at the new key's --not-before (rotation).
    #[arg(long, env = "AUDIT_KEYSET")]
    pub keyset: Option<PathBuf>,
    /// When the new key becomes valid: RFC 3339 (`2025-01-01T00:00:00Z`), microseconds since
    /// the Unix epoch, or `now`.
    #[arg(long, env = "AUDITCTL_NOT_BEFORE", default_value = "now")]
    pub not_before: String,
}

#[derive(Debug, Clone, Args)]
pub struct ProveArgs {
    /// The event's `event_id`.
    pub event_id: String,
    /// Where to read the event and its checkpoint range from.
    #[arg(
        long,
        value_enum,
        env = "AUDITCTL_SOURCE",
        default_value = "clickhouse"
    )]
    pub source: SingleSource,
    /// Write the proof here instead of stdout.
    #[arg(long, env = "AUDITCTL_PROOF_OUT")]
    pub out: Option<PathBuf>,
    /// Only use checkpoints that verify with this key set (recommended).
    #[arg(long, env = "AUDIT_KEYSET")]
    pub keys: Option<PathBuf>,
    /// Only search this partition.
    #[arg(long, env = "AUDITCTL_PARTITION")]
    pub partition: Option<u32>,
    #[command(flatten)]
    pub reads: ReadArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub archive: ArchiveStoreArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CheckProofArgs {
    /// The proof file written by `auditctl prove`.
    pub proof: PathBuf,
    /// Public key set (JSON).
    #[arg(long, env = "AUDIT_KEYSET")]
    pub keys: PathBuf,
    /// Accept a proof without the event bytes. Such a proof proves an event *hash* at a
    /// (partition, seq), not an event id (the id is only a label then); the output says so.
    /// Without this flag a proof without event bytes fails (exit 1).
    #[arg(long)]
    pub hash_only: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ClickHouseArgs {
    /// ClickHouse HTTP endpoint.
    #[arg(
        long,
        env = "AUDIT_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    pub clickhouse_url: String,
    /// Database of the audit tables.
    #[arg(long, env = "AUDIT_CLICKHOUSE_DATABASE", default_value = "audit")]
    pub clickhouse_database: String,
    #[arg(long, env = "AUDIT_CLICKHOUSE_USER", default_value = "default")]
    pub clickhouse_user: String,
    /// Never printed (not in --help, not in errors or debug output). Empty = no password.
    #[arg(long, env = "AUDIT_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    pub clickhouse_password: Option<Secret>,
    /// Table of chained events.
    #[arg(long, env = "AUDITCTL_EVENTS_TABLE", default_value = "audit_events")]
    pub events_table: String,
    /// Table of signed checkpoints.
    #[arg(
        long,
        env = "AUDITCTL_CHECKPOINTS_TABLE",
        default_value = "audit_checkpoints"
    )]
    pub checkpoints_table: String,
    /// Table where the ClickHouse sink records forks (a later, different copy of a stored
    /// (partition, seq)); each row is a `fork` finding. If the table does not exist (a database
    /// older than the sink's migration 0003), a warning says so.
    #[arg(long, env = "AUDITCTL_FORKS_TABLE", default_value = "audit_forks")]
    pub forks_table: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_help_lists_exit_codes() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("EXIT CODES"));
        assert!(help.contains("3  the store"));
        assert!(help.contains("4  verify: unsealed"));
        for sub in ["verify", "keygen", "prove", "check-proof"] {
            let mut cmd = Cli::command();
            let sub = cmd.find_subcommand_mut(sub).expect("subcommand");
            assert!(sub.render_help().to_string().contains("EXIT CODES"));
        }
    }

    /// One environment file configures the sinks and auditctl: the connection options read
    /// the sinks' variable names.
    #[test]
    fn connection_options_use_the_sinks_env_names() {
        let cmd = Cli::command();
        let verify = cmd
            .get_subcommands()
            .find(|c| c.get_name() == "verify")
            .expect("verify");
        let env_of = |id: &str| {
            verify
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .and_then(|e| e.to_str())
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("{id} has no env var"))
        };
        for (id, env) in [
            ("clickhouse_url", "AUDIT_CLICKHOUSE_URL"),
            ("clickhouse_database", "AUDIT_CLICKHOUSE_DATABASE"),
            ("clickhouse_user", "AUDIT_CLICKHOUSE_USER"),
            ("clickhouse_password", "AUDIT_CLICKHOUSE_PASSWORD"),
            ("archive_url", "AUDIT_SINK_ARCHIVE_URL"),
            ("archive_prefix", "AUDIT_SINK_ARCHIVE_PREFIX"),
            ("s3_endpoint", "AUDIT_S3_ENDPOINT"),
            ("s3_region", "AUDIT_S3_REGION"),
            ("s3_access_key_id", "AUDIT_S3_ACCESS_KEY_ID"),
            ("s3_secret_access_key", "AUDIT_S3_SECRET_ACCESS_KEY"),
        ] {
            assert_eq!(env_of(id), env, "{id}");
        }
    }

    #[test]
    fn secrets_are_never_printed() {
        let cli = Cli::parse_from([
            "auditctl",
            "verify",
            "--clickhouse-password",
            "hunter2",
            "--s3-secret-access-key",
            "s3cret",
            "--s3-access-key-id",
            "AKIDEXAMPLE",
        ]);
        let dbg = format!("{cli:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("s3cret") && !dbg.contains("AKIDEXAMPLE"),
            "{dbg}"
        );
    }
}
