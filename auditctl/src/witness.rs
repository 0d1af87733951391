//! `auditctl witness`: a witness that cosigns only consistent growth of each partition.
//!
//! State lives in a directory the stores' writers cannot reach (see `WITNESS_HELP` in
//! `cli.rs`): the witness's own cosigning key, its verifier key, and `checkpoints`, a pin file
//! (`integrity::pin`) holding per partition the last head it cosigned, each entry carrying its
//! C2SP `cosignature/v1` line.
//!
//! With `--keys`, what it cosigns is the chainer's own signed note (the v3 checkpoint the
//! verifier sealed the partition with, signature line included): the state entry is that note
//! plus the witness's cosignature, which any reader can check against both the key set and the
//! witness key (`verify --witness-state`). A partition sealed only by an older (v1/v2)
//! checkpoint gets a head pin at that seq instead; with `--no-signatures`, the verified head.
//!
//! One run: recompute the chain from the store (the verifier, from genesis), with the cosigned
//! heads as pins. A partition is cosigned again only if the chain verifies, the store still
//! holds the cosigned head at its seq (else `rollback_below_trusted`, `trusted_partition_missing`
//! or `trusted_checkpoint_mismatch`: refused, state unchanged), and the new head is at least as
//! large. The new head is the newest valid signed checkpoint that matched the recomputed chain
//! (with `--keys`: the log's own statement), or the verified head (`--no-signatures`). Hash-chain
//! heads have no RFC 9162 consistency proof; recomputing the chain from the old head's seq to
//! the new one from the store's records is what proves consistency here (every link is
//! recomputed, so the new head extends the old one iff the record at the old seq still hashes
//! to the old head and the links after it verify).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use integrity::cosignature;
use integrity::note::{KeyType, Signer, VerifierKey};
use integrity::pin::{self, ChainHead, Pin};
use integrity::tlog::partition_origin;
use integrity::verify::Severity;
use serde::Serialize;

use crate::anchors::{self, Trusted, TrustedSet};
use crate::cli::{SingleSource, SourceKind, VerifyArgs, WitnessArgs};
use crate::error::Error;
use crate::verify::{pin_chain_id, verify_archive, verify_clickhouse, RunExtras};
use crate::Outcome;

pub const KEY_FILE: &str = "witness.key";
pub const VKEY_FILE: &str = "witness.vkey";
pub const CHECKPOINTS_FILE: &str = "checkpoints";
const LOCK_FILE: &str = "lock";

/// For `verify --witness-state DIR`: the witness's verifier key and its checkpoints file.
pub fn state_for_verify(dir: &Path) -> Result<(VerifierKey, PathBuf), Error> {
    let vkey = read_vkey(dir)?;
    let cps = dir.join(CHECKPOINTS_FILE);
    if !cps.exists() {
        return Err(Error::Usage(format!(
            "witness state {}: no {CHECKPOINTS_FILE} yet (has the witness run?)",
            dir.display()
        )));
    }
    Ok((vkey, cps))
}

fn read_vkey(dir: &Path) -> Result<VerifierKey, Error> {
    let path = dir.join(VKEY_FILE);
    let text = std::fs::read_to_string(&path).map_err(Error::file("reading", &path))?;
    text.trim()
        .parse()
        .map_err(|e| Error::Usage(format!("{}: not a verifier key: {e}", path.display())))
}

/// The witness's key: read from the state dir, or made (and stored, 0600) on the first run.
/// The witness's cosigning key in `dir` (made on the first run, mode 0600), shared by
/// `auditctl witness` and `auditctl tlog-witness`.
pub(crate) fn load_or_create_key(dir: &Path, name: &str) -> Result<Signer, Error> {
    let path = dir.join(KEY_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path).map_err(Error::file("reading", &path))?;
        return Signer::from_skey(text.trim(), KeyType::CosignatureV1)
            .map_err(|e| Error::Usage(format!("{}: {e}", path.display())));
    }
    let bad = |e: integrity::note::NoteError| Error::Usage(format!("witness key {name:?}: {e}"));
    let (signer, seed) = Signer::generate(name, KeyType::CosignatureV1).map_err(bad)?;
    let skey = Signer::skey(name, &seed).map_err(bad)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path).map_err(Error::file("creating", &path))?;
    writeln!(f, "{skey}").map_err(Error::file("writing", &path))?;
    f.sync_all().map_err(Error::file("syncing", &path))?;
    anchors::write_atomic(
        &dir.join(VKEY_FILE),
        format!("{}\n", signer.verifier_key()).as_bytes(),
    )?;
    Ok(signer)
}

/// Serialises witness runs on one state directory (the tlog-witness atomicity rule); removed
/// when the run ends, however it ends.
pub(crate) struct Lock(PathBuf);

impl Lock {
    pub(crate) fn take(dir: &Path) -> Result<Self, Error> {
        let path = dir.join(LOCK_FILE);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::Usage(format!(
                        "{} exists: another witness run holds this state (remove it if none is running)",
                        path.display()
                    ))
                } else {
                    Error::file("creating", &path)(e)
                }
            })?;
        Ok(Lock(path))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The cosigned heads, each checked to carry this witness's cosignature (a state file edited
/// by someone without the key is refused rather than trusted).
fn load_state(dir: &Path, key: &VerifierKey) -> Result<Vec<Pin>, Error> {
    let path = dir.join(CHECKPOINTS_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).map_err(Error::file("reading", &path))?;
    let pins = pin::parse_file(&text)
        .map_err(|e| Error::Integrity(format!("witness state {}: {e}", path.display())))?;
    for (i, p) in pins.iter().enumerate() {
        p.note.verify(std::slice::from_ref(key)).map_err(|e| {
            Error::Integrity(format!(
                "witness state {} entry {}: not cosigned by this witness ({e}): the state was altered",
                path.display(),
                i + 1
            ))
        })?;
    }
    Ok(pins)
}

/// What happened to one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum PartitionOutcome {
    /// A new (or the same, re-timestamped) head was cosigned.
    Cosigned { seq: u64, previous_seq: Option<u64> },
    /// Nothing signed to cosign yet (`--keys` and no valid checkpoint).
    NothingSigned { previous_seq: Option<u64> },
    /// Refused: the state keeps `previous_seq`.
    Refused {
        kind: String,
        seq: u64,
        previous_seq: Option<u64>,
        detail: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionLine {
    pub partition: u32,
    pub origin: String,
    #[serde(flatten)]
    pub outcome: PartitionOutcome,
}

#[derive(Debug, Clone, Serialize)]
pub struct WitnessReport {
    pub witness: String,
    pub chain_id: String,
    pub partitions: Vec<PartitionLine>,
    pub ok: bool,
}

fn verify_args(a: &WitnessArgs) -> VerifyArgs {
    VerifyArgs {
        source: match a.source {
            SingleSource::Clickhouse => SourceKind::Clickhouse,
            SingleSource::Archive => SourceKind::Archive,
        },
        partitions: a.partitions.clone(),
        json: a.json,
        keys: a.keys.clone(),
        no_signatures: a.no_signatures,
        clock_skew_ms: a.clock_skew_ms,
        chain_id: a.chain_id.clone(),
        trusted_checkpoints: Vec::new(),
        witness_states: Vec::new(),
        witness_keys: Vec::new(),
        save_checkpoints: None,
        metrics_file: None,
        max_checkpoint_age: None,
        // Off: the witness has no flag to tune it (a store of a chainer with heartbeats off
        // would be refused for good), and its cosigned sizes already catch a partition cut
        // back to its genesis once cosigned (`rollback_below_trusted`).
        max_partition_lag: std::time::Duration::ZERO,
        allow_unattested_partitions: false,
        max_findings: 1000,
        window: a.window,
        quiet: true,
        reads: a.reads.clone(),
        clickhouse: a.clickhouse.clone(),
        archive: a.archive.clone(),
        anchor: Default::default(),
    }
}

pub async fn run(args: &WitnessArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    if args.keys.is_none() && !args.no_signatures {
        return Err(Error::Usage(
            "witness: give --keys (cosign the log's signed checkpoints) or --no-signatures (cosign verified heads, trust on first use)".into(),
        ));
    }
    let dir = &args.state;
    std::fs::create_dir_all(dir).map_err(Error::file("creating", dir))?;
    let _lock = Lock::take(dir)?;
    let signer = load_or_create_key(dir, &args.name)?;
    let state = load_state(dir, signer.verifier_key())?;

    let trusted = TrustedSet {
        pins: state
            .iter()
            .enumerate()
            .map(|(i, p)| Trusted {
                head: p.head.clone(),
                from: format!("{}#{}", dir.join(CHECKPOINTS_FILE).display(), i + 1),
                authority: "cosigned by this witness".into(),
            })
            .collect(),
        invalid: Vec::new(),
    };
    let mut vargs = verify_args(args);
    // The cosigned heads name the chain: checkpoints of another chain are then mismatches.
    if vargs.chain_id.is_none() {
        vargs.chain_id = trusted.chain_id().map(str::to_owned);
    }
    let extras = RunExtras {
        capture: trusted.capture(),
        capture_checkpoint_seqs: args.keys.is_some(),
    };
    let mut run = match args.source {
        SingleSource::Clickhouse => verify_clickhouse(&vargs, false, &extras).await?,
        SingleSource::Archive => verify_archive(&vargs, false, &extras).await?,
    };
    let chain_id = pin_chain_id(args.chain_id.as_deref(), &trusted, &[&run.captured])?;
    if let Some(t) = trusted.pins.iter().find(|t| t.head.chain_id != chain_id) {
        return Err(Error::Usage(format!(
            "{} is for chain {:?}, this run for {chain_id:?}: one state directory per chain",
            t.from, t.head.chain_id
        )));
    }
    let only: BTreeSet<u32> = args.partitions.iter().copied().collect();
    let anchors = anchors::check(&trusted, &mut run.report, &run.captured, &only);

    let keyset = args
        .keys
        .as_deref()
        .map(crate::verify::load_keys)
        .transpose()?;
    let mut heads: BTreeMap<u32, Pin> = state.into_iter().map(|p| (p.head.partition, p)).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut lines = Vec::new();
    for part in &run.report.partitions {
        let Ok(p) = u32::try_from(part.partition) else {
            continue;
        };
        let previous = heads.get(&p).map(|pin| pin.head.seq);
        let refused = |kind: &str, seq: u64, detail: String| PartitionOutcome::Refused {
            kind: kind.to_owned(),
            seq,
            previous_seq: previous,
            detail,
        };
        let outcome = if let Some(f) = anchors.findings.iter().find(|f| f.partition == p) {
            refused(f.kind.name(), f.seq, f.detail.clone())
        } else if !part.ok {
            let first = part.findings.iter().find(|f| f.severity == Severity::Error);
            refused(
                "chain_does_not_verify",
                first.map_or(0, |f| u64::try_from(f.seq).unwrap_or(0)),
                first.map_or_else(
                    || "the partition has findings (verify lists them)".into(),
                    |f| format!("{}: {}", crate::verify::kind_name(f.kind), f.detail),
                ),
            )
        } else {
            match candidate(args.keys.is_some(), part, &run.captured, p) {
                None => PartitionOutcome::NothingSigned {
                    previous_seq: previous,
                },
                Some((seq, _)) if previous.is_some_and(|old| seq < old) => refused(
                    "rollback_below_trusted",
                    seq,
                    format!(
                        "the newest {} is at seq {seq}, below the cosigned seq {}: newer checkpoints were removed",
                        if args.keys.is_some() { "valid signed checkpoint" } else { "verified head" },
                        previous.unwrap_or(0)
                    ),
                ),
                Some((seq, head)) => {
                    // The chainer's own note at that seq when there is one (v3), else a head pin.
                    let pin = match keyset.as_ref().and_then(|ks| {
                        anchors::log_pin_at(&chain_id, ks, &[&run.captured], p, seq)
                    }) {
                        Some(pin) => pin,
                        None => Pin::unsigned(ChainHead {
                            chain_id: chain_id.clone(),
                            partition: p,
                            seq,
                            head,
                        })
                        .map_err(|e| Error::Usage(e.to_string()))?,
                    };
                    heads.insert(p, cosigned(&signer, pin, now)?);
                    PartitionOutcome::Cosigned {
                        seq,
                        previous_seq: previous,
                    }
                }
            }
        };
        lines.push(PartitionLine {
            partition: p,
            origin: partition_origin(&chain_id, p)
                .map_err(|e| Error::Usage(format!("--chain-id: {e}")))?,
            outcome,
        });
    }
    let pins: Vec<Pin> = heads.into_values().collect();
    anchors::write_atomic(
        &dir.join(CHECKPOINTS_FILE),
        pin::format_file(&pins).as_bytes(),
    )?;

    let ok = !lines
        .iter()
        .any(|l| matches!(l.outcome, PartitionOutcome::Refused { .. }));
    let report = WitnessReport {
        witness: signer.verifier_key().to_string(),
        chain_id,
        partitions: lines,
        ok,
    };
    write_report(out, args, &report).map_err(Error::file("writing output to", "<stdout>"))?;
    Ok(if ok { Outcome::Ok } else { Outcome::Findings })
}

/// The head to cosign: with keys, the newest valid checkpoint that matched the recomputed
/// chain (its seq is `sealed_through`, its head the stored hash there, equal to the recomputed
/// one since the partition verified); without, the verified head.
fn candidate(
    signed: bool,
    part: &integrity::verify::PartitionReport,
    captured: &crate::collect::Captured,
    p: u32,
) -> Option<(u64, [u8; 32])> {
    if signed {
        let s = u64::try_from(part.sealed_through?).ok()?;
        let h = captured.hashes.get(&(p, s))?;
        Some((s, h.as_slice().try_into().ok()?))
    } else {
        let s = u64::try_from(part.head_seq).ok().filter(|&s| s >= 1)?;
        let h: [u8; 32] = hex::decode(&part.head).ok()?.try_into().ok()?;
        Some((s, h))
    }
}

/// `pin` with this witness's cosignature at `now` added (over the note's body, per C2SP
/// tlog-cosignature; a log signature already on it stays).
fn cosigned(signer: &Signer, mut pin: Pin, now: u64) -> Result<Pin, Error> {
    let sig = cosignature::cosign(signer, pin.note.text(), now)
        .map_err(|e| Error::Usage(format!("cosigning: {e}")))?;
    pin.note
        .add_signature(sig)
        .map_err(|e| Error::Usage(e.to_string()))?;
    Ok(pin)
}

fn write_report(out: &mut dyn Write, args: &WitnessArgs, r: &WitnessReport) -> std::io::Result<()> {
    if args.json {
        serde_json::to_writer_pretty(&mut *out, r)?;
        return writeln!(out);
    }
    writeln!(
        out,
        "witness {} (state {}), chain {}:",
        r.witness,
        args.state.display(),
        r.chain_id
    )?;
    for l in &r.partitions {
        write!(out, "  partition {}: ", l.partition)?;
        match &l.outcome {
            PartitionOutcome::Cosigned { seq, previous_seq } => match previous_seq {
                Some(old) if old == seq => writeln!(out, "cosigned seq {seq} again (unchanged)")?,
                Some(old) => writeln!(out, "cosigned seq {seq} (extends cosigned seq {old})")?,
                None => writeln!(out, "cosigned seq {seq} (first cosignature)")?,
            },
            PartitionOutcome::NothingSigned { .. } => {
                writeln!(out, "no valid signed checkpoint yet: nothing to cosign")?
            }
            PartitionOutcome::Refused {
                kind, seq, detail, ..
            } => writeln!(out, "REFUSED at seq {seq}: {kind}: {detail}")?,
        }
    }
    if r.ok {
        writeln!(out, "result: OK")
    } else {
        writeln!(
            out,
            "result: REFUSED (rollback or fork: the cosigned heads are unchanged)"
        )
    }
}
