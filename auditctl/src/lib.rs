//! `auditctl`: the operator's tool for the audit chain.
//!
//! - `verify`: recompute the hash chain from what ClickHouse and/or the archive store, check
//!   checkpoints, and report tampering (exit 1) — see `integrity::verify` for what is detected.
//! - `keygen`: a new Ed25519 checkpoint signing key and key-set rotation.
//! - `prove` / `check-proof`: an offline-checkable inclusion proof of one event.
//! - `query`: run an analyst query recipe of the ClickHouse sink ([`query`]).
//! - `report`: a report over the sink's report views, up to a self-contained HTML page
//!   ([`report`]).
//! - `rehydrate`: load a verified archive range back into ClickHouse ([`rehydrate`]).
//! - `hold`: S3 legal hold on the archive objects of a partition's range, chained ([`hold`]).
//! - `consistency` / `check-consistency` / `checkpoints`: RFC 9162 consistency proofs between
//!   two signed whole-tree checkpoints, checked offline; checkpoints as C2SP signed notes
//!   ([`consistency`]).
//! - `erase` / `subject-report` / `reveal` / `rewrap-subject-keys`: privacy (crypto-shredding,
//!   the audited reveal, master-key rotation), docs/privacy.md.
//! - `witness`: cosign each partition's newest verified head only if it extends the head
//!   cosigned before (rollback and fork are refusals); `verify --trusted-checkpoint` /
//!   `--witness-state` check a store against heads seen before ([`anchors`]).
//! - `tlog-witness`: a C2SP tlog-witness over the whole-tree checkpoints, from consistency
//!   proofs alone (no store access) ([`tlog_witness`]).
//!
//! Exit codes: 0 verified, 1 integrity finding, 2 usage/config error, 3 store or file I/O,
//! 4 unsealed (`verify` without `--keys` or `--no-signatures`: nothing signed was checked).
//! The logic lives here so that tests call [`run`] in-process; `main.rs` only maps the result
//! to an exit code.

pub mod anchors;
pub mod archive;
pub mod cli;
pub mod clickhouse;
pub mod collect;
pub mod consistency;
pub mod erase;
pub mod error;
pub mod freshness;
pub mod hold;
pub mod keygen;
pub mod metrics_file;
mod one_store;
pub mod output;
pub mod prove;
pub mod query;
pub mod query_reveal;
pub mod reads;
pub mod rehydrate;
pub mod report;
pub mod rewrap;
pub mod subject;
pub mod tlog_witness;
pub mod verify;
pub mod witness;

use std::io::Write;

pub use cli::{Cli, Command};
pub use error::{Error, EXIT_FINDINGS, EXIT_IO, EXIT_OK, EXIT_UNSEALED, EXIT_USAGE};

/// How a command that ran to the end came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Verified / done: exit 0.
    Ok,
    /// Integrity findings, or a proof that does not check: exit 1.
    Findings,
    /// `verify` found nothing, but checked no signature (no `--keys`): exit 4.
    Unsealed,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Ok => EXIT_OK,
            Outcome::Findings => EXIT_FINDINGS,
            Outcome::Unsealed => EXIT_UNSEALED,
        }
    }
}

/// Run one command, writing its result (report, proof, key info) to `out`. Diagnostics and the
/// progress indicator go to stderr.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<Outcome, Error> {
    match cli.command {
        Command::Verify(a) => verify::run(&a, out).await,
        Command::Keygen(a) => {
            let res = keygen::keygen(&a)?;
            let json = serde_json::to_string_pretty(&res)
                .map_err(|e| Error::Usage(format!("serializing keygen output: {e}")))?;
            writeln!(out, "{json}").map_err(Error::file("writing output to", "<stdout>"))?;
            Ok(Outcome::Ok)
        }
        Command::Prove(a) => prove::prove(&a, out).await,
        Command::CheckProof(a) => prove::check(&a, out),
        Command::Witness(a) => witness::run(&a, out).await,
        Command::Query(a) => query::run(&a, out).await,
        Command::Report(a) => report::run(&a, out).await,
        Command::Rehydrate(a) => rehydrate::run(&a, out).await,
        Command::Hold(a) => hold::run(&a, out).await,
        Command::Erase(a) => erase::run(&a, out).await,
        Command::SubjectReport(a) => subject::report(&a, out).await,
        Command::Reveal(a) => subject::reveal(&a, out).await,
        Command::RewrapSubjectKeys(a) => rewrap::run(&a, out).await,
        Command::Consistency(a) => consistency::consistency(&a, out).await,
        Command::CheckConsistency(a) => consistency::check(&a, out),
        Command::Checkpoints(a) => consistency::checkpoints(&a, out).await,
        Command::TlogWitness(a) => tlog_witness::run(&a, out).await,
    }
}

/// Exit code of a finished [`run`].
pub fn exit_code(res: &Result<Outcome, Error>) -> u8 {
    match res {
        Ok(o) => o.exit_code(),
        Err(e) => e.exit_code(),
    }
}
