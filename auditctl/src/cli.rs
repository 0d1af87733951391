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

/// The exit codes text, as a literal so that `concat!` can append it to longer help texts.
macro_rules! exit_codes_text {
    () => {
        "\
EXIT CODES:
  0  verified: no integrity finding (or: key generated, proof written, proof checks)
  1  tampering / integrity finding (or: the proof does not check)
  2  usage or configuration error (bad flag, unreadable key set, unknown event id)
  3  the store (ClickHouse, the archive) or a local file could not be read or written
  4  verify: unsealed: no integrity finding, but no --keys were given, so no signature was
     checked and a consistent rewrite would not be detected (--no-signatures accepts that: 0)"
    };
}

const EXIT_CODES: &str = exit_codes_text!();

const VERIFY_HELP: &str = concat!(
    "\
TRUST ANCHORS (docs/verification.md): a store writer without the signing key can still delete
a partition with its checkpoints, cut a tail with the newest checkpoints, or rewrite a partition
consistently from genesis; the store alone then verifies. Heads seen before catch it:
  --save-checkpoints pins.txt      after a clean run, pin each partition's verified head
  --trusted-checkpoint pins.txt    later runs: the store must still hold every pinned head
  --witness-state DIR              the same, with the heads an `auditctl witness` cosigned
Findings they add (exit 1), and the attack each defeats:
  trusted_partition_missing    partition deleted whole, with its checkpoints
  rollback_below_trusted       tail deleted together with the newest checkpoints
  trusted_checkpoint_mismatch  consistent rewrite from genesis / fork below a pinned head
  trusted_checkpoint_invalid   a pin whose signature fails with --keys / --witness-key
Findings with --keys alone, no pin needed (exit 1, but the warning; docs/verification.md):
  partition_missing_from_signed_set  partition deleted whole, with its genesis checkpoint
  genesis_checkpoint_superseded      partition deleted but for its genesis checkpoints
                                     (--max-partition-lag, default 10m)
  checkpoint_superseded              one partition's tail deleted together with its newest
                                     checkpoints (--max-partition-lag, default 10m)
  checkpoint_stale                   tail deleted together with its newest checkpoints and
                                     heartbeats (--max-checkpoint-age)
  partition_count_decreased          checkpoints of another deployment, or a misconfigured
                                     signer
  partition_count_changed            a warning: the input topic got partitions

",
    exit_codes_text!()
);

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
    #[command(after_help = VERIFY_HELP)]
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
    /// Witness the chain: cosign each partition's newest verified checkpoint only if it extends
    /// the head this witness cosigned before; report a rollback or fork (exit 1).
    #[command(after_help = WITNESS_HELP)]
    Witness(WitnessArgs),
    /// Run an analyst query recipe (sink-clickhouse/queries) and print the result; --list
    /// shows every recipe with its parameters.
    Query(crate::query::QueryArgs),
    /// A report over the report views (compliance, activity, violations, cost, approvals,
    /// failures, ai) for a time range, as a table, JSON, CSV, Markdown or one HTML page.
    Report(crate::report::ReportArgs),
    /// Load a partition's seq range back from the archive into ClickHouse, verifying it first;
    /// idempotent (rows already there are not doubled) and resumable. `--hold`: loaded rows
    /// are stored under legal hold and the range is held as by `hold on`.
    Rehydrate(crate::rehydrate::RehydrateArgs),
    /// Legal hold on a partition's seq range, or on the events a case is about (`--query
    /// request_id=…`, trace, target, actor, event type, times), in both stores: S3 Object Lock
    /// legal hold on their archive objects (segments, manifests, sealing checkpoints), and the
    /// `legal_hold` flag on their ClickHouse rows, which sink-clickhouse's retention TTL never
    /// deletes (`--no-clickhouse`: archive only). on, off (each recorded in the chain), or
    /// status.
    Hold(crate::hold::HoldArgs),
    /// Erase a data subject (crypto-shredding): destroy its key, chain an erasure event, and
    /// report which partitions and seq ranges hold its ciphertext (docs/privacy.md).
    Erase(crate::erase::EraseArgs),
    /// What is held about a data subject: events, fields, where, retention, erased or not.
    SubjectReport(crate::subject::SubjectReportArgs),
    /// Decrypt one event's personal fields; the reveal is chained (published) first.
    Reveal(crate::subject::RevealArgs),
    /// Master-key rotation: re-wrap every stored subject key under the current master key
    /// (only objects unchanged since read; tombstones never touched), so the retired master
    /// keys can be destroyed; exit 1 if a key opens with no given master (docs/privacy.md).
    RewrapSubjectKeys(crate::rewrap::RewrapArgs),
    // ---- consistency proofs (crate::consistency) ----
    /// RFC 9162 consistency proof that a partition's signed whole-tree checkpoint of size
    /// --new extends the one of size --old, after rebuilding the tree from the stored records;
    /// a JSON document with both C2SP signed notes (docs/verification.md).
    #[command(after_help = EXIT_CODES)]
    Consistency(crate::consistency::ConsistencyArgs),
    /// Check a consistency document offline, with only the public key set.
    #[command(after_help = EXIT_CODES)]
    CheckConsistency(crate::consistency::CheckConsistencyArgs),
    /// Print each partition's newest valid whole-tree checkpoint as a C2SP signed note (what
    /// an auditor pins or hands to any transparency-log tool); --vkeys adds its verifier key.
    #[command(after_help = EXIT_CODES)]
    Checkpoints(crate::consistency::CheckpointsArgs),
    // ---- a C2SP tlog-witness over the v3 checkpoints (crate::tlog_witness) ----
    /// A witness of the partitions' whole-tree checkpoints with no store access: `request`
    /// turns a consistency document into an add-checkpoint request, `add-checkpoint` cosigns
    /// it only if it extends the cosigned head (exit 1 with the reason otherwise), `status`.
    #[command(after_help = TLOG_WITNESS_HELP)]
    TlogWitness(crate::tlog_witness::TlogWitnessArgs),
}

const TLOG_WITNESS_HELP: &str = "\
STATE DIRECTORY (--state): witness.key / witness.vkey (as `auditctl witness`), lock, and
  tlog-witness.json (per origin: the last cosigned size and root), written atomically before
  the cosignature line is printed.

REFUSALS (exit 1, state unchanged; the tlog-witness HTTP status in brackets):
  unknown_origin (404), untrusted_checkpoint (403), bad_request (400),
  rollback / conflict (409, with the cosigned size), fork (409), inconsistent_proof (422)

EXIT CODES:
  0  cosigned (the cosignature line is printed)   1  refused
  2  usage or configuration error                 3  a file could not be read or written";

const WITNESS_HELP: &str = "\
STATE DIRECTORY (--state):
  witness.key    the witness's Ed25519 cosigning key (Go note signer format, mode 0600),
                 made on the first run with --name; never leaves the directory
  witness.vkey   its public verifier key (give it to auditors: verify --witness-key)
  checkpoints    the last head cosigned per partition: C2SP tlog-checkpoint notes (root line =
                 audit-chain/v1 link hash at that seq), each with this witness's cosignature/v1
                 line; `verify --witness-state DIR` checks a store against it
  Keep the directory where the stores' writers cannot reach (another host or account). Run one
  witness process per directory at a time.

FINDINGS (a refusal leaves that partition's cosigned head unchanged, exit 1):
  trusted_partition_missing    the store lost a partition the witness cosigned
  rollback_below_trusted       the store (or its newest valid checkpoint) is below the cosigned seq
  trusted_checkpoint_mismatch  the record at the cosigned seq has another hash: a fork / rewrite

EXIT CODES:
  0  every partition's newest head extends what was cosigned (cosigned again or unchanged)
  1  a refusal (rollback, fork, or the chain does not verify)
  2  usage or configuration error
  3  the store or the state directory could not be read or written";

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
    /// Only accept checkpoints of this chain id. Also the chain id written by
    /// --save-checkpoints (default there: the pins' or the store checkpoints' one chain id).
    #[arg(long, env = "AUDIT_CHAIN_ID")]
    pub chain_id: Option<String>,
    /// A file of chain heads seen before (repeatable; comma-separated in the env var): the output of --save-checkpoints or of a
    /// witness, checkpoints copied from the checkpoints topic/table as JSON, or the chainer's
    /// own signed notes as `auditctl checkpoints` prints them (with --keys). For each pinned
    /// (partition, seq, head) the store must hold the partition up to at least that seq with
    /// exactly that head, else a finding: `trusted_partition_missing` (partition deleted with
    /// its checkpoints), `rollback_below_trusted` (tail deleted with the newest checkpoints),
    /// `trusted_checkpoint_mismatch` (history rewritten from genesis, a fork). A pin's own
    /// signature is checked with --keys / --witness-key when present
    /// (`trusted_checkpoint_invalid` if it fails). See docs/verification.md.
    #[arg(
        long = "trusted-checkpoint",
        env = "AUDITCTL_TRUSTED_CHECKPOINTS",
        value_delimiter = ','
    )]
    pub trusted_checkpoints: Vec<PathBuf>,
    /// A witness state directory (`auditctl witness --state`; repeatable, comma-separated in
    /// the env var): its cosigned heads are pinned
    /// like --trusted-checkpoint, and their cosignatures checked with its witness.vkey.
    #[arg(
        long = "witness-state",
        env = "AUDITCTL_WITNESS_STATE",
        value_delimiter = ','
    )]
    pub witness_states: Vec<PathBuf>,
    /// A witness's verifier key (`<name>+<key id>+<base64>`, its witness.vkey; repeatable):
    /// cosigned pins must carry a valid cosignature by one of these.
    #[arg(
        long = "witness-key",
        env = "AUDITCTL_WITNESS_KEYS",
        value_delimiter = ','
    )]
    pub witness_keys: Vec<String>,
    /// After a run with no finding, write the verified head of each partition here (pin file:
    /// C2SP tlog-checkpoint notes, docs/verification.md), merged with the pins the file holds
    /// (never lowering one). Pass it as --trusted-checkpoint next time: a later rollback or
    /// rewrite of what was verified now becomes a finding. With --source both, the lower of
    /// the two stores' heads is pinned.
    #[arg(long, env = "AUDITCTL_SAVE_CHECKPOINTS")]
    pub save_checkpoints: Option<PathBuf>,
    /// Fail (`checkpoint_stale`, exit 1) when a partition's newest valid checkpoint is older
    /// than this (`90s`, `5m`, `2h`, `1d`; needs --keys; off by default). With chainer
    /// heartbeats (`--checkpoint-heartbeat-secs`) an idle partition stays fresh, so a tail cut
    /// together with its newest checkpoints shows as stale. Set it above the heartbeat period
    /// plus the sinks' lag. Every run reports each partition's checkpoint age and unsealed tail,
    /// and a partition the signed partition count names but the store lacks
    /// (`partition_missing_from_signed_set`).
    #[arg(long, env = "AUDITCTL_MAX_CHECKPOINT_AGE", value_parser = crate::freshness::parse_age)]
    pub max_checkpoint_age: Option<std::time::Duration>,
    /// Fail (exit 1; with --keys) when a partition's newest valid checkpoint is older than
    /// another partition's newest valid checkpoint by more than this (`90s`, `10m`, `2h`,
    /// `1d`; `0` or `off` disables): `checkpoint_superseded`, or `genesis_checkpoint_superseded`
    /// when the store holds no record of it and that checkpoint is its genesis (size 0). Why:
    /// the chainer re-signs every idle partition's head (an empty one's genesis) every
    /// heartbeat period, and a busy one gets range checkpoints, so every partition's newest
    /// statement keeps up with the chain's. An attacker who deletes one partition's tail with
    /// its newer checkpoints (or its records and every checkpoint but the genesis ones) leaves
    /// one far behind: a rollback of one partition, caught without a pin or a clock. The
    /// default is ten default heartbeat periods (`--checkpoint-heartbeat-secs` 60). Raise it
    /// above ten times a longer heartbeat period; disable it for stores of chainers running
    /// with heartbeats off (`--checkpoint-heartbeat-secs 0`). A chainer instance that is down
    /// while the others run is reported too, on purpose: its partitions are no longer
    /// attested. (`--max-genesis-lag` is its former name.)
    #[arg(
        long,
        alias = "max-genesis-lag",
        env = "AUDITCTL_MAX_PARTITION_LAG",
        value_parser = crate::freshness::parse_lag,
        default_value = crate::freshness::DEFAULT_MAX_PARTITION_LAG
    )]
    pub max_partition_lag: std::time::Duration,
    /// Make `partition_missing_from_signed_set` (a partition the signed partition count names
    /// but of which the store holds no record and no checkpoint) a warning instead of an
    /// error. Only for stores written by chainers before genesis checkpoints: since then the
    /// chainer signs a size-0 checkpoint for every partition it takes over empty, so a
    /// partition with nothing at all was deleted whole (or its sink is behind).
    #[arg(long, env = "AUDITCTL_ALLOW_UNATTESTED_PARTITIONS")]
    pub allow_unattested_partitions: bool,
    /// Also write the run's outcome (findings per kind, ok, records, heads, checkpoint ages,
    /// duration) here in the Prometheus text format, atomically, for node_exporter's textfile
    /// collector (name it `*.prom` in its directory; docs/observability.md).
    #[arg(long, env = "AUDITCTL_METRICS_FILE")]
    pub metrics_file: Option<PathBuf>,
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
    /// `--anchor URL` and its S3 options: the write-once anchor's checkpoints as pins.
    #[command(flatten)]
    pub anchor: crate::anchors::AnchorReadArgs,
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
pub struct WitnessArgs {
    /// The witness's state directory (created if missing; see below).
    #[arg(long, env = "AUDITCTL_WITNESS_STATE")]
    pub state: PathBuf,
    /// Name of the witness key, made on the first run (a note key name: no spaces, no '+').
    #[arg(
        long,
        env = "AUDITCTL_WITNESS_NAME",
        default_value = "auditctl-witness"
    )]
    pub name: String,
    /// Where to read the chain and its checkpoints from.
    #[arg(
        long,
        value_enum,
        env = "AUDITCTL_SOURCE",
        default_value = "clickhouse"
    )]
    pub source: SingleSource,
    /// Public key set (JSON): the witness then cosigns each partition's newest valid signed
    /// checkpoint (the log's own statement). Required unless --no-signatures.
    #[arg(long, env = "AUDIT_KEYSET")]
    pub keys: Option<PathBuf>,
    /// Without --keys: cosign the newest verified head instead (trust on first use: the first
    /// run accepts whatever the store holds).
    #[arg(long, env = "AUDITCTL_NO_SIGNATURES")]
    pub no_signatures: bool,
    /// The chain id (origin `<chain id>/partition/<p>`); default: the one chain id of the
    /// store's checkpoints, or of the cosigned heads.
    #[arg(long, env = "AUDIT_CHAIN_ID")]
    pub chain_id: Option<String>,
    /// Only these partitions (repeatable). Default: every partition in the store or the state.
    #[arg(long = "partition", env = "AUDITCTL_PARTITIONS", value_delimiter = ',')]
    pub partitions: Vec<u32>,
    /// See `verify --clock-skew-ms`.
    #[arg(long, env = "AUDITCTL_CLOCK_SKEW_MS", default_value_t = 0)]
    pub clock_skew_ms: u64,
    /// See `verify --window`.
    #[arg(long, env = "AUDITCTL_WINDOW", default_value_t = 10_000)]
    pub window: i64,
    /// Print the outcome as JSON.
    #[arg(long, env = "AUDITCTL_JSON")]
    pub json: bool,
    #[command(flatten)]
    pub reads: ReadArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub archive: ArchiveStoreArgs,
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
        for sub in ["verify", "keygen", "prove", "check-proof", "witness"] {
            let mut cmd = Cli::command();
            let sub = cmd.find_subcommand_mut(sub).expect("subcommand");
            assert!(sub.render_help().to_string().contains("EXIT CODES"));
        }
        // Each trust-anchor finding is named, with the attack it defeats, in verify's help
        // and (those a witness reports) in witness's.
        let mut cmd = Cli::command();
        let verify = cmd
            .find_subcommand_mut("verify")
            .expect("verify")
            .render_help()
            .to_string();
        for (kind, attack) in [
            ("trusted_partition_missing", "partition deleted whole"),
            (
                "rollback_below_trusted",
                "tail deleted together with the newest checkpoints",
            ),
            (
                "trusted_checkpoint_mismatch",
                "consistent rewrite from genesis",
            ),
            ("trusted_checkpoint_invalid", "signature fails"),
            (
                "partition_missing_from_signed_set",
                "partition deleted whole",
            ),
            (
                "genesis_checkpoint_superseded",
                "deleted but for its genesis checkpoints",
            ),
            ("checkpoint_superseded", "one partition's tail deleted"),
            ("checkpoint_stale", "tail deleted together"),
            ("partition_count_decreased", "another deployment"),
            ("partition_count_changed", "warning"),
        ] {
            let line = verify
                .lines()
                .find(|l| l.trim_start().starts_with(kind))
                .unwrap_or_else(|| panic!("{kind} not in verify --help:\n{verify}"));
            assert!(line.contains(attack), "{line}");
        }
        let mut cmd = Cli::command();
        let witness = cmd
            .find_subcommand_mut("witness")
            .expect("witness")
            .render_help()
            .to_string();
        for kind in [
            "trusted_partition_missing",
            "rollback_below_trusted",
            "trusted_checkpoint_mismatch",
        ] {
            assert!(witness.contains(kind), "{kind} not in witness --help");
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
