//! Trust anchors outside the stores: chain heads an auditor (or a witness) saw before.
//!
//! A store writer can delete a whole partition with its checkpoints, cut a tail together with
//! the newest checkpoints, or rewrite a partition consistently from genesis: the store then
//! holds a chain that verifies, and nothing in it can tell. A pinned head `(chain, partition,
//! seq, hash)` kept by the auditor can: the store must still hold that partition up to at least
//! `seq`, and the record it holds at `seq` must have exactly that hash (a link hash commits to
//! every record before it, so this checks the whole prefix). Findings:
//!
//! | finding | the store … | attack it defeats |
//! |---|---|---|
//! | `trusted_partition_missing` | holds no record of a pinned partition | a partition deleted whole, with its checkpoints |
//! | `rollback_below_trusted` | ends before the pinned seq | a tail cut together with the newest checkpoints (rollback) |
//! | `trusted_checkpoint_mismatch` | holds another record (or none) at the pinned seq | a consistent rewrite from genesis (or of any prefix), a fork |
//! | `trusted_checkpoint_invalid` | — (the pin itself does not verify against the given keys) | a pin file edited or forged by someone without the signing/witness key |
//!
//! Pins come from pin files (C2SP tlog-checkpoint notes, `integrity::pin`; written by
//! `verify --save-checkpoints` and `auditctl witness`) or from checkpoints copied from the
//! checkpoints topic / store as JSON (`integrity::checkpoint::CheckpointJson`, one object, an
//! array, or one per line), or from a write-once anchor (`verify --anchor`, [`AnchorReadArgs`]:
//! sink-archive's `--anchor-url`, where every checkpoint is copied out of the stores' writers'
//! reach), of which each partition's newest checkpoint that verifies with `--keys` is pinned.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use integrity::checkpoint::{verify_signed, CheckpointJson, KeySet, SignedCheckpoint};
use integrity::note::{NoteError, VerifierKey};
use integrity::pin::{self, ChainHead, Pin};
use integrity::tlog::log_key;
use integrity::verify::{PartitionReport, Report};
use schemas::segment;
use serde::Serialize;

use crate::collect::Captured;
use crate::error::Error;

/// What an anchor check found. Serialized in snake_case, like the verifier's finding kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnchorKind {
    /// The store holds no record of a partition a trusted checkpoint names.
    TrustedPartitionMissing,
    /// The store's partition ends before a trusted checkpoint's seq.
    RollbackBelowTrusted,
    /// The store's record at a trusted checkpoint's seq has another hash (or is absent while
    /// later records exist).
    TrustedCheckpointMismatch,
    /// A trusted checkpoint's own signature does not verify with the keys given.
    TrustedCheckpointInvalid,
}

impl AnchorKind {
    pub fn name(self) -> &'static str {
        match self {
            AnchorKind::TrustedPartitionMissing => "trusted_partition_missing",
            AnchorKind::RollbackBelowTrusted => "rollback_below_trusted",
            AnchorKind::TrustedCheckpointMismatch => "trusted_checkpoint_mismatch",
            AnchorKind::TrustedCheckpointInvalid => "trusted_checkpoint_invalid",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnchorFinding {
    pub partition: u32,
    /// The pinned seq.
    pub seq: u64,
    pub kind: AnchorKind,
    /// Where the pin came from (`file#entry`).
    pub pin: String,
    pub detail: String,
}

/// A pin that passed its own signature check, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trusted {
    pub head: ChainHead,
    /// `file#entry`.
    pub from: String,
    /// How its origin was established: `unsigned (auditor's record)`, `signed by <key>`, ….
    pub authority: String,
}

/// Pins loaded from files, plus findings about pins that failed their signature check.
#[derive(Debug, Clone, Default)]
pub struct TrustedSet {
    pub pins: Vec<Trusted>,
    pub invalid: Vec<AnchorFinding>,
}

impl TrustedSet {
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty() && self.invalid.is_empty()
    }

    /// The seqs whose stored hash a run must capture.
    pub fn capture(&self) -> BTreeMap<u32, BTreeSet<u64>> {
        let mut m: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
        for t in &self.pins {
            m.entry(t.head.partition).or_default().insert(t.head.seq);
        }
        m
    }

    /// The one chain id the pins name, if they agree.
    pub fn chain_id(&self) -> Option<&str> {
        let ids: BTreeSet<&str> = self.pins.iter().map(|t| t.head.chain_id.as_str()).collect();
        (ids.len() == 1).then(|| ids.into_iter().next()).flatten()
    }
}

/// The keys pins are checked against.
#[derive(Debug, Clone, Default)]
pub struct PinKeys<'a> {
    /// The chainer's key set (`--keys`): checks JSON checkpoints, and Ed25519 note signatures
    /// under the per-partition log key name (`integrity::tlog::log_key`).
    pub keyset: Option<&'a KeySet>,
    /// Witness cosigning keys (`--witness-key`, or the witness state's own `witness.vkey`).
    pub witnesses: Vec<VerifierKey>,
}

/// Reads pin files (`--trusted-checkpoint`), checking each pin's signature with `keys`.
pub fn load(files: &[PathBuf], keys: &PinKeys<'_>) -> Result<TrustedSet, Error> {
    let mut set = TrustedSet::default();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(Error::file("reading", f))?;
        load_text(&text, &f.display().to_string(), keys, &mut set)?;
    }
    Ok(set)
}

/// [`load`] of one file's text; `name` labels the pins.
pub fn load_text(
    text: &str,
    name: &str,
    keys: &PinKeys<'_>,
    set: &mut TrustedSet,
) -> Result<(), Error> {
    let bad = |e: String| Error::Usage(format!("trusted checkpoint file {name}: {e}"));
    if matches!(text.trim_start().chars().next(), Some('{' | '[')) {
        for (i, j) in json_checkpoints(text).map_err(bad)?.into_iter().enumerate() {
            let from = format!("{name}#{}", i + 1);
            let signed =
                SignedCheckpoint::try_from(&j).map_err(|e| bad(format!("#{}: {e}", i + 1)))?;
            let f = &signed.fields;
            let head = ChainHead {
                chain_id: f.chain_id.clone(),
                partition: f.partition,
                seq: f.seq,
                head: f.head_hash,
            };
            match keys.keyset {
                Some(ks) => match verify_signed(ks, &signed) {
                    Ok(()) => set.pins.push(Trusted {
                        head,
                        from,
                        authority: format!("checkpoint signed by key {}", signed.key_id),
                    }),
                    Err(e) => set.invalid.push(AnchorFinding {
                        partition: f.partition,
                        seq: f.seq,
                        kind: AnchorKind::TrustedCheckpointInvalid,
                        pin: from,
                        detail: format!("the trusted checkpoint does not verify with --keys: {e}"),
                    }),
                },
                None => set.pins.push(Trusted {
                    head,
                    from,
                    authority: "checkpoint, signature not checked (no --keys)".into(),
                }),
            }
        }
        return Ok(());
    }
    let has_log_notes = text
        .lines()
        .any(|l| l.starts_with(integrity::checkpoint::CHECKPOINT_EXTENSION_V3));
    let pins = match pin::parse_file(text) {
        Ok(pins) => pins,
        // `auditctl checkpoints --vkeys` output (vkey lines before the notes), or with a
        // genesis note: read note by note.
        Err(_) if has_log_notes => return load_chainer_notes(text, name, keys, set),
        Err(e) => return Err(bad(e.to_string())),
    };
    if keys.keyset.is_none() && keys.witnesses.is_empty() && pins.iter().any(Pin::is_log_checkpoint)
    {
        return Err(bad(
            "it holds the chainer's signed notes, which are checked with the key set: give --keys"
                .into(),
        ));
    }
    for (i, p) in pins.into_iter().enumerate() {
        let from = format!("{name}#{}", i + 1);
        let checked = if p.is_log_checkpoint() {
            check_log_pin(&p, keys)
        } else {
            check_note(&p, keys)
        };
        match checked {
            Ok(authority) => set.pins.push(Trusted {
                head: p.head,
                from,
                authority,
            }),
            Err(detail) => set.invalid.push(AnchorFinding {
                partition: p.head.partition,
                seq: p.head.seq,
                kind: AnchorKind::TrustedCheckpointInvalid,
                pin: from,
                detail,
            }),
        }
    }
    Ok(())
}

/// The chainer's own signed notes (v3 checkpoints, as `auditctl checkpoints` prints them:
/// each C2SP note optionally after its vkey line, separated by blank lines) as trusted heads:
/// each must open with its key from `--keys` (required) and pass the key window; the head is
/// the link hash its extension line signs. A note that does not verify is
/// `trusted_checkpoint_invalid`; a genesis note (size 0) pins nothing.
fn load_chainer_notes(
    text: &str,
    name: &str,
    keys: &PinKeys<'_>,
    set: &mut TrustedSet,
) -> Result<(), Error> {
    let Some(ks) = keys.keyset else {
        return Err(Error::Usage(format!(
            "trusted checkpoint file {name}: the chainer's signed notes are checked with the \
             key set: give --keys"
        )));
    };
    for (i, (origin, note)) in split_notes(text).into_iter().enumerate() {
        let from = format!("{name}#{}", i + 1);
        let (partition, seq) = integrity::tlog::parse_partition_origin(&origin)
            .map(|(_, p)| p)
            .zip(note.lines().nth(1).and_then(integrity::tlog::parse_decimal))
            .unwrap_or((0, 0));
        let opened = crate::consistency::open_note(ks, &origin, &note).and_then(|cp| {
            verify_signed(ks, &cp)
                .map(|()| cp)
                .map_err(|e| e.to_string())
        });
        match opened {
            Ok(cp) if cp.fields.seq == 0 => {}
            Ok(cp) => set.pins.push(Trusted {
                head: ChainHead {
                    chain_id: cp.fields.chain_id.clone(),
                    partition: cp.fields.partition,
                    seq: cp.fields.seq,
                    head: cp.fields.head_hash,
                },
                from,
                authority: format!("the chainer's signed note (key {})", cp.key_id),
            }),
            Err(detail) => set.invalid.push(AnchorFinding {
                partition,
                seq,
                kind: AnchorKind::TrustedCheckpointInvalid,
                pin: from,
                detail: format!("the chainer's note does not verify with --keys: {detail}"),
            }),
        }
    }
    Ok(())
}

/// The signed notes in `text`: (origin, note text). A note is its body lines (origin, size,
/// root, extension lines), one blank line and its signature lines (`— …`); other lines (vkeys,
/// `#` comments, blank separators) are skipped.
fn split_notes(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let starts_note = !l.is_empty()
            && !l.starts_with('#')
            && !l.starts_with('\u{2014}')
            && integrity::tlog::parse_partition_origin(l).is_some();
        if !starts_note {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < lines.len() && !lines[j].is_empty() {
            j += 1;
        }
        let mut note: String = lines[i..j].iter().map(|l| format!("{l}\n")).collect();
        note.push('\n');
        j += 1;
        while j < lines.len() && lines[j].starts_with('\u{2014}') {
            note.push_str(lines[j]);
            note.push('\n');
            j += 1;
        }
        out.push((l.to_owned(), note));
        i = j;
    }
    out
}

/// A JSON object, an array of them, or one per line / concatenated.
fn json_checkpoints(text: &str) -> Result<Vec<CheckpointJson>, String> {
    let mut out = Vec::new();
    for v in serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>() {
        let v = v.map_err(|e| format!("not JSON: {e}"))?;
        let items = match v {
            serde_json::Value::Array(a) => a,
            other => vec![other],
        };
        for item in items {
            out.push(
                serde_json::from_value(item)
                    .map_err(|e| format!("not a checkpoint (chain_id, partition, first_seq, seq, head_hash, merkle_root, time_us, key_id, signature): {e}"))?,
            );
        }
    }
    Ok(out)
}

/// Who vouches for a pin that is the chainer's own signed note (as `verify --save-checkpoints`
/// with `--keys` and `auditctl witness` write them): the log's signature, checked with the key
/// set and its key windows exactly as `auditctl consistency` checks a note; with witness keys
/// given, a witness must also have cosigned it. Without the key set (witness keys only), the
/// witness's cosignature alone vouches, and the report says the log's was not checked.
fn check_log_pin(p: &Pin, keys: &PinKeys<'_>) -> Result<String, String> {
    let Some(ks) = keys.keyset else {
        return check_note(p, keys)
            .map(|a| format!("{a}; the chainer's signature not checked (no --keys)"));
    };
    let origin = p.head.origin().map_err(|e| e.to_string())?;
    let cp = crate::consistency::open_note(ks, &origin, &p.note.to_text())?;
    let mut authority = format!("the chainer's signed note (key {})", cp.key_id);
    if !keys.witnesses.is_empty() {
        let v = p
            .note
            .verify(&keys.witnesses)
            .map_err(|e| format!("not cosigned by a --witness-key: {e}"))?;
        let names: Vec<&str> = v.verified.iter().map(|s| s.key.name()).collect();
        authority.push_str(&format!(", cosigned by {}", names.join(", ")));
    }
    Ok(authority)
}

/// Who vouches for a pin note. An unsigned note is the auditor's own record. A signed one
/// (a witness's cosignature, or one day the log's own note signature) must verify with a key
/// given: with `--witness-key` (or a witness state) given, one of those (or a log key) must
/// have signed it; with only `--keys`, a log-key signature must verify if there is one, and a
/// cosignature nobody gave a key for is accepted as the file's safekeeping, and said so.
fn check_note(p: &Pin, keys: &PinKeys<'_>) -> Result<String, String> {
    if p.note.signatures().is_empty() {
        return Ok("unsigned (the auditor's own record)".into());
    }
    let mut log_keys = Vec::new();
    if let (Some(ks), Ok(origin)) = (keys.keyset, p.head.origin()) {
        for e in ks.entries() {
            let pk = B64
                .decode(&e.public_key)
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v).ok());
            if let Some(k) = pk.and_then(|pk| log_key(&origin, pk).ok()) {
                log_keys.push(k);
            }
        }
    }
    let strict = !keys.witnesses.is_empty();
    let mut trusted = keys.witnesses.clone();
    trusted.extend(log_keys);
    let unchecked = || "signed, signatures not checked (no --witness-key given)".to_owned();
    if trusted.is_empty() {
        return Ok(unchecked());
    }
    match p.note.verify(&trusted) {
        Ok(v) => Ok(format!(
            "signed by {}",
            v.verified
                .iter()
                .map(|s| s.key.name().to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Err(NoteError::NoTrustedSignature) if !strict => Ok(unchecked()),
        Err(NoteError::NoTrustedSignature) => {
            Err("signed by none of the keys given (--witness-key, --keys): not trusted".into())
        }
        Err(e) => Err(format!("its signature does not verify: {e}")),
    }
}

/// The outcome of checking pins against one store's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct AnchorReport {
    /// Pins checked against this store.
    pub checked: usize,
    pub findings: Vec<AnchorFinding>,
    pub ok: bool,
}

/// Checks `set` against a store's `report` and the stored hashes `captured` at the pinned
/// seqs; marks failing partitions (and the report) not ok, adding a partition entry for a
/// pinned partition the store does not hold at all. `only`: the run's partition filter.
pub fn check(
    set: &TrustedSet,
    report: &mut Report,
    captured: &Captured,
    only: &BTreeSet<u32>,
) -> AnchorReport {
    let wanted = |p: u32| only.is_empty() || only.contains(&p);
    let mut out = AnchorReport::default();
    out.findings
        .extend(set.invalid.iter().filter(|f| wanted(f.partition)).cloned());
    for t in set.pins.iter().filter(|t| wanted(t.head.partition)) {
        out.checked += 1;
        let h = &t.head;
        let part = report
            .partitions
            .iter()
            .find(|r| r.partition as i64 == i64::from(h.partition));
        let (kind, detail) = match (part, captured.hashes.get(&(h.partition, h.seq))) {
            (None, _) | (Some(PartitionReport { events: 0, .. }), _) => (
                AnchorKind::TrustedPartitionMissing,
                format!(
                    "the store holds no record of partition {}, but a trusted checkpoint says it had {} records (head {})",
                    h.partition,
                    h.seq,
                    short(&h.head)
                ),
            ),
            (Some(_), Some(stored)) if stored.as_slice() == h.head => continue,
            (Some(_), Some(stored)) => (
                AnchorKind::TrustedCheckpointMismatch,
                format!(
                    "the record at seq {} has hash {}, but the trusted checkpoint pins {}: the history up to it was rewritten",
                    h.seq,
                    short(stored),
                    short(&h.head)
                ),
            ),
            (Some(r), None) if r.last_seq.is_none_or(|l| l < h.seq as i64) => (
                AnchorKind::RollbackBelowTrusted,
                format!(
                    "the store ends at seq {}, below the trusted checkpoint at seq {} (head {}): records were removed from the tail",
                    r.last_seq.unwrap_or(0),
                    h.seq,
                    short(&h.head)
                ),
            ),
            (Some(_), None) => (
                AnchorKind::TrustedCheckpointMismatch,
                format!(
                    "the store has no record at the trusted checkpoint's seq {} (head {}) although it holds later ones",
                    h.seq,
                    short(&h.head)
                ),
            ),
        };
        out.findings.push(AnchorFinding {
            partition: h.partition,
            seq: h.seq,
            kind,
            pin: format!("{}: {}", t.from, t.authority),
            detail,
        });
    }
    out.findings.sort_by_key(|a| (a.partition, a.seq));
    for f in &out.findings {
        mark_failed(report, f.partition);
    }
    out.ok = out.findings.is_empty();
    out
}

/// Marks partition `p` (added if absent) and the report as failed (also used by the
/// freshness checks).
pub(crate) fn mark_failed(report: &mut Report, p: u32) {
    let pi = i32::try_from(p).unwrap_or(i32::MAX);
    match report.partitions.iter_mut().find(|r| r.partition == pi) {
        Some(r) => r.ok = false,
        None => {
            report.partitions.push(PartitionReport {
                partition: pi,
                first_seq: None,
                last_seq: None,
                events: 0,
                head_seq: 0,
                head: hex::encode([0u8; 32]),
                sealed_through: None,
                findings: Vec::new(),
                findings_dropped: 0,
                ok: false,
            });
            report.partitions.sort_by_key(|r| r.partition);
        }
    }
    report.ok = false;
}

fn short(h: &[u8]) -> String {
    hex::encode(&h[..h.len().min(8)])
}

/// Writes `pins` into the pin file `path`, merged with the pins it already holds: an entry
/// for another partition is kept, and a pin is never lowered (an existing entry at a higher
/// seq stays, with a warning: the run did not reach it). Atomic (temporary file + rename).
/// Returns the heads written for this run's partitions.
pub fn save(path: &Path, pins: Vec<Pin>) -> Result<Vec<ChainHead>, Error> {
    let mut by_origin: BTreeMap<(String, u32), Pin> = BTreeMap::new();
    if path.exists() {
        let text = std::fs::read_to_string(path).map_err(Error::file("reading", path))?;
        for p in pin::parse_file(&text).map_err(|e| {
            Error::Usage(format!(
                "--save-checkpoints {}: the existing file is not a pin file ({e}); not overwriting it",
                path.display()
            ))
        })? {
            let key = (p.head.chain_id.clone(), p.head.partition);
            match by_origin.get(&key) {
                Some(q) if q.head.seq >= p.head.seq => {}
                _ => {
                    by_origin.insert(key, p);
                }
            }
        }
    }
    let mut written = Vec::new();
    for pin in pins {
        let h = pin.head.clone();
        let key = (h.chain_id.clone(), h.partition);
        if let Some(old) = by_origin.get(&key) {
            if old.head.seq > h.seq {
                eprintln!(
                    "auditctl: warning: {} keeps partition {} at seq {} (this run verified up to seq {}; check it with --trusted-checkpoint {})",
                    path.display(),
                    h.partition,
                    old.head.seq,
                    h.seq,
                    path.display()
                );
                continue;
            }
        }
        by_origin.insert(key, pin);
        written.push(h);
    }
    let pins: Vec<Pin> = by_origin.into_values().collect();
    write_atomic(path, pin::format_file(&pins).as_bytes())?;
    Ok(written)
}

/// Write to a temporary file beside `path`, sync, rename: a reader sees the old or the new
/// file, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pins".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(Error::file("creating", &tmp))?;
    f.write_all(bytes).map_err(Error::file("writing", &tmp))?;
    f.sync_all().map_err(Error::file("syncing", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(Error::file("renaming into", path))
}

/// The head to pin for each partition of `reports` (one per store read): the lowest verified
/// head among the stores (with `--source both` the archive normally lags; a pin both stores
/// hold keeps checking both). Partitions with no verified record are skipped.
pub fn heads_to_save(chain_id: &str, reports: &[&Report]) -> Result<Vec<ChainHead>, Error> {
    let mut best: BTreeMap<i32, (i64, String)> = BTreeMap::new();
    for r in reports {
        for p in &r.partitions {
            if p.head_seq < 1 {
                continue;
            }
            let e = best
                .entry(p.partition)
                .or_insert((p.head_seq, p.head.clone()));
            if p.head_seq < e.0 {
                *e = (p.head_seq, p.head.clone());
            }
        }
    }
    let mut out = Vec::new();
    for (p, (seq, head)) in best {
        let head: [u8; 32] = hex::decode(&head)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| {
                Error::Usage(format!("partition {p}: head {head} is not 32 bytes of hex"))
            })?;
        out.push(ChainHead {
            chain_id: chain_id.to_owned(),
            partition: u32::try_from(p)
                .map_err(|_| Error::Usage(format!("negative partition {p}")))?,
            seq: u64::try_from(seq).unwrap_or(0),
            head,
        });
    }
    Ok(out)
}

/// The chainer's signed note for `(partition, seq)` of chain `chain_id` among the stores' v3
/// checkpoints, as a pin, if one verifies with `keys` (signature, key window, chain id).
pub fn log_pin_at(
    chain_id: &str,
    keys: &KeySet,
    captured: &[&Captured],
    partition: u32,
    seq: u64,
) -> Option<Pin> {
    captured
        .iter()
        .filter_map(|c| c.v3.get(&(partition, seq)))
        .flatten()
        .find_map(|cp| {
            let signed = SignedCheckpoint::try_from(cp).ok()?;
            (signed.fields.chain_id == chain_id && verify_signed(keys, &signed).is_ok())
                .then_some(())?;
            let pk = keys.public_key(&signed.key_id)?;
            Pin::from_log_note(&signed.to_note(pk)?).ok()
        })
}

/// The pins `verify --save-checkpoints` writes with `--keys`: per partition, the chainer's own
/// signed note at the seq every store sealed (the lowest `sealed_through` among the reports),
/// taken from the stores' v3 checkpoints and checked with the key set (signature, key window,
/// chain id). Anyone with the key set can then check the pin without trusting the file. A
/// partition with no such note (sealed only by v1/v2 checkpoints, or not sealed) keeps an
/// unsigned pin of its verified head from `heads`; its number is returned in the second list.
pub fn signed_pins(
    chain_id: &str,
    keys: &KeySet,
    reports: &[&Report],
    captured: &[&Captured],
    heads: Vec<ChainHead>,
) -> Result<(Vec<Pin>, Vec<u32>), Error> {
    let mut pins = Vec::new();
    let mut unsigned = Vec::new();
    for h in heads {
        let sealed = reports
            .iter()
            .map(|r| {
                r.partitions
                    .iter()
                    .find(|p| u32::try_from(p.partition).ok() == Some(h.partition))
                    .and_then(|p| p.sealed_through)
                    .and_then(|s| u64::try_from(s).ok())
            })
            .min()
            .flatten()
            .filter(|&s| s >= 1);
        match sealed.and_then(|s| log_pin_at(chain_id, keys, captured, h.partition, s)) {
            Some(pin) => pins.push(pin),
            None => {
                unsigned.push(h.partition);
                pins.push(Pin::unsigned(h).map_err(|e| Error::Usage(e.to_string()))?);
            }
        }
    }
    Ok((pins, unsigned))
}

// ---- the write-once anchor (`verify --anchor`) ------------------------------------------------

/// Where sink-archive's write-once anchor (`--anchor-url`) is, and how to read it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AnchorReadArgs {
    /// The write-once anchor sink-archive copies every checkpoint to (`--anchor-url` there):
    /// `s3://<bucket>[/<prefix>]`, `file:///<dir>` or a folder path. Every anchored checkpoint
    /// is read and checked with --keys (required); per partition the newest valid one is pinned
    /// exactly like --trusted-checkpoint, so a tail or a whole partition deleted from the
    /// store together with its checkpoints is a finding (`rollback_below_trusted`,
    /// `trusted_partition_missing`, `trusted_checkpoint_mismatch`) while the anchor holds them;
    /// an anchored checkpoint that does not verify is `trusted_checkpoint_invalid`. Verify a
    /// store once its sink has caught up with the checkpoints (a lagging sink shows as a
    /// rollback). See docs/verification.md, "Write-once anchor".
    #[arg(long = "anchor", env = "AUDITCTL_ANCHOR")]
    pub anchor: Option<String>,
    /// The anchor's S3 endpoint (e.g. `http://127.0.0.1:8333`); empty = `AWS_ENDPOINT`, else
    /// AWS. An `http://` endpoint allows plain HTTP.
    #[arg(long, env = "AUDITCTL_ANCHOR_S3_ENDPOINT", default_value = "")]
    pub anchor_s3_endpoint: String,
    /// The anchor's S3 region; default `AWS_REGION`, else us-east-1.
    #[arg(long, env = "AUDITCTL_ANCHOR_S3_REGION")]
    pub anchor_s3_region: Option<String>,
    /// Access key id for reading the anchor (read-only credentials of its own are enough);
    /// empty = the standard AWS environment/instance credentials.
    #[arg(
        long,
        env = "AUDITCTL_ANCHOR_S3_ACCESS_KEY_ID",
        hide_env_values = true,
        default_value = ""
    )]
    pub anchor_s3_access_key_id: crate::cli::Secret,
    /// Secret access key for reading the anchor. Never printed; prefer the environment or
    /// --anchor-s3-secret-access-key-file.
    #[arg(
        long,
        env = "AUDITCTL_ANCHOR_S3_SECRET_ACCESS_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    pub anchor_s3_secret_access_key: crate::cli::Secret,
    /// File holding the anchor's secret access key; wins over --anchor-s3-secret-access-key.
    #[arg(long, env = "AUDITCTL_ANCHOR_S3_SECRET_ACCESS_KEY_FILE")]
    pub anchor_s3_secret_access_key_file: Option<PathBuf>,
    /// Virtual-hosted-style addressing for the anchor (default: path-style).
    #[arg(long, env = "AUDITCTL_ANCHOR_S3_VIRTUAL_HOSTED_STYLE")]
    pub anchor_s3_virtual_hosted_style: bool,
}

/// How many anchored checkpoints are read at once.
const ANCHOR_READ_CONCURRENCY: usize = 16;

impl AnchorReadArgs {
    /// The anchor's store (rooted at the URL's bucket prefix or folder) and its description.
    fn open(
        &self,
        url: &str,
    ) -> Result<(std::sync::Arc<dyn object_store::ObjectStore>, String), Error> {
        use object_store::aws::AmazonS3Builder;
        use object_store::prefix::PrefixStore;
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::Usage(format!("--anchor {url:?} names no bucket")));
            }
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_virtual_hosted_style_request(self.anchor_s3_virtual_hosted_style)
                .with_retry(object_store::RetryConfig {
                    max_retries: worker_runtime::object_store::READ_REQUEST_MAX_RETRIES,
                    retry_timeout: std::time::Duration::from_secs(
                        worker_runtime::object_store::READ_REQUEST_RETRY_SECS,
                    ),
                    ..Default::default()
                });
            if let Some(r) = self.anchor_s3_region.as_deref().filter(|r| !r.is_empty()) {
                b = b.with_region(r);
            }
            if !self.anchor_s3_endpoint.is_empty() {
                b = b.with_endpoint(&self.anchor_s3_endpoint);
                if self.anchor_s3_endpoint.starts_with("http://") {
                    b = b.with_allow_http(true);
                }
            }
            if !self.anchor_s3_access_key_id.is_empty() {
                b = b.with_access_key_id(self.anchor_s3_access_key_id.expose());
            }
            let secret = match self
                .anchor_s3_secret_access_key_file
                .as_deref()
                .filter(|p| !p.as_os_str().is_empty())
            {
                Some(path) => crate::cli::Secret::new(
                    std::fs::read_to_string(path)
                        .map_err(Error::file("reading the anchor's S3 secret key file", path))?
                        .trim(),
                ),
                None => self.anchor_s3_secret_access_key.clone(),
            };
            if !secret.is_empty() {
                b = b.with_secret_access_key(secret.expose());
            }
            let s3 = b
                .build()
                .map_err(|e| Error::Usage(format!("--anchor S3 store for bucket {bucket}: {e}")))?;
            let prefix = prefix.trim_matches('/');
            let store: std::sync::Arc<dyn object_store::ObjectStore> = if prefix.is_empty() {
                std::sync::Arc::new(s3)
            } else {
                std::sync::Arc::new(PrefixStore::new(s3, prefix))
            };
            return Ok((store, format!("anchor {url}")));
        }
        let dir = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
        if !dir.is_dir() {
            return Err(Error::Usage(format!(
                "--anchor {url:?}: {} is not a folder (s3://bucket[/prefix], file:///dir or a folder)",
                dir.display()
            )));
        }
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| Error::Usage(format!("--anchor {url:?}: {e}")))?;
        Ok((std::sync::Arc::new(fs), format!("anchor {}", dir.display())))
    }
}

/// An anchored object as read: its key, what its name says (partition, seq), its bytes.
type Anchored = (String, Option<(u32, u64)>, bytes::Bytes);

/// What an anchored object's name says: (chain dir, partition, seq), when it parses.
fn anchored_name(key: &str) -> Option<(&str, u32, u64)> {
    let rest = key.strip_prefix(segment::ANCHOR_DIR)?.strip_prefix('/')?;
    let (chain, rest) = rest.split_once('/')?;
    let (part, file) = rest.split_once('/')?;
    let partition = part.strip_prefix("partition=")?.parse().ok()?;
    let seq = file.get(..segment::SEQ_WIDTH)?.parse().ok()?;
    Some((chain, partition, seq))
}

/// The pins of a write-once anchor: reads every checkpoint under `anchor/` (of `chain_id`
/// only, when given; of `only` partitions, when not empty), checks each with `keyset`, and adds
/// to `set` the newest valid one per partition (highest seq, then latest time) as a pin, and a
/// `trusted_checkpoint_invalid` finding for each that does not verify (or whose name does not
/// match its content: the anchor is write-once, so either is tampering or corruption).
/// Returns how many anchored checkpoints were read.
pub async fn load_anchor(
    args: &AnchorReadArgs,
    url: &str,
    keyset: &KeySet,
    chain_id: Option<&str>,
    only: &BTreeSet<u32>,
    reads: &crate::reads::Reads,
    set: &mut TrustedSet,
) -> Result<usize, Error> {
    use futures::{StreamExt, TryStreamExt};
    let (store, describe) = args.open(url)?;
    let dir = match chain_id {
        Some(c) => segment::anchor_chain_prefix(c),
        None => format!("{}/", segment::ANCHOR_DIR),
    };
    let listed: Vec<String> = reads
        .run(&format!("listing {dir} of {describe}"), || {
            let store = store.clone();
            let (dir, describe) = (dir.clone(), describe.clone());
            async move {
                let path = object_store::path::Path::from(dir.trim_end_matches('/'));
                match store
                    .list(Some(&path))
                    .map_ok(|m| m.location.to_string())
                    .try_collect::<Vec<_>>()
                    .await
                {
                    Ok(v) => Ok(v),
                    Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
                    Err(e) => Err(Error::os(format!("listing {dir} of {describe}"))(e)),
                }
            }
        })
        .await?;
    let mut keys: Vec<(String, Option<(u32, u64)>)> = listed
        .into_iter()
        // Staging files of a local anchor, and anything that is not a checkpoint.
        .filter(|k| k.ends_with(segment::CHECKPOINT_SUFFIX))
        .map(|k| {
            let parsed = anchored_name(&k).map(|(_, p, s)| (p, s));
            (k, parsed)
        })
        .filter(|(_, p)| only.is_empty() || p.is_none_or(|(p, _)| only.contains(&p)))
        .collect();
    keys.sort();
    let bodies: Vec<Anchored> = futures::stream::iter(keys.into_iter().map(|(key, parsed)| {
        let store = store.clone();
        let describe = describe.clone();
        async move {
            let doing = format!("reading {key} from {describe}");
            let path = object_store::path::Path::from(key.as_str());
            let bytes = reads
                .run(&doing, || {
                    let (store, path, doing) = (store.clone(), path.clone(), doing.clone());
                    async move {
                        let r = store.get(&path).await.map_err(Error::os(doing.clone()))?;
                        r.bytes().await.map_err(Error::os(doing))
                    }
                })
                .await?;
            Ok::<_, Error>((key, parsed, bytes))
        }
    }))
    .buffer_unordered(ANCHOR_READ_CONCURRENCY)
    .try_collect()
    .await?;
    let read = bodies.len();
    // Partition → (seq, time) → the pin.
    let mut newest: BTreeMap<u32, ((u64, i64), Trusted)> = BTreeMap::new();
    let mut chains: BTreeSet<String> = BTreeSet::new();
    for (key, parsed, bytes) in bodies {
        let from = format!("{describe}/{key}");
        let (np, ns) = parsed.unwrap_or((0, 0));
        let invalid = |detail: String| AnchorFinding {
            partition: np,
            seq: ns,
            kind: AnchorKind::TrustedCheckpointInvalid,
            pin: from.clone(),
            detail,
        };
        let signed = match serde_json::from_slice::<CheckpointJson>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|j| SignedCheckpoint::try_from(&j).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                set.invalid.push(invalid(format!(
                    "the anchored object is not a checkpoint: {e}"
                )));
                continue;
            }
        };
        let f = &signed.fields;
        let expected = segment::anchor_key(
            &f.chain_id,
            i32::try_from(f.partition).unwrap_or(i32::MAX),
            i64::try_from(f.seq).unwrap_or(i64::MAX),
            &signed.key_id,
            f.time_us,
        );
        let finding = |detail: String| AnchorFinding {
            partition: f.partition,
            seq: f.seq,
            kind: AnchorKind::TrustedCheckpointInvalid,
            pin: from.clone(),
            detail,
        };
        if expected != key {
            set.invalid.push(finding(format!(
                "the anchored checkpoint (partition {} seq {} key {:?} time {}) is stored under another name than its own ({expected})",
                f.partition, f.seq, signed.key_id, f.time_us
            )));
            continue;
        }
        if let Err(e) = verify_signed(keyset, &signed) {
            set.invalid.push(finding(format!(
                "the anchored checkpoint does not verify with --keys: {e}"
            )));
            continue;
        }
        if chain_id.is_some_and(|c| c != f.chain_id) {
            continue;
        }
        chains.insert(f.chain_id.clone());
        let rank = (f.seq, f.time_us);
        if newest.get(&f.partition).is_none_or(|(r, _)| rank > *r) {
            let trusted = Trusted {
                head: ChainHead {
                    chain_id: f.chain_id.clone(),
                    partition: f.partition,
                    seq: f.seq,
                    head: f.head_hash,
                },
                from,
                authority: format!("anchored checkpoint signed by key {}", signed.key_id),
            };
            newest.insert(f.partition, (rank, trusted));
        }
    }
    if chains.len() > 1 {
        return Err(Error::Usage(format!(
            "{describe} holds checkpoints of several chains ({}): pass --chain-id",
            chains.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    if read == 0 {
        return Err(Error::Usage(format!(
            "{describe} holds no checkpoint under {dir}{}: a wrong URL or prefix? (an anchor that was written to is never empty)",
            if only.is_empty() { String::new() } else { " for the partitions asked".into() }
        )));
    }
    set.pins.extend(newest.into_values().map(|(_, t)| t));
    Ok(read)
}

/// `verify --anchor`: the anchor's pins added to `set` (nothing without `--anchor`). Needs
/// `--keys`: an unsigned anchored checkpoint could have been written by anyone.
pub async fn add_anchored(
    args: &crate::cli::VerifyArgs,
    set: &mut TrustedSet,
) -> Result<(), Error> {
    let Some(url) = args
        .anchor
        .anchor
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    else {
        return Ok(());
    };
    let Some(keys) = args.keys.as_deref() else {
        return Err(Error::Usage(
            "--anchor needs --keys: the anchored checkpoints are trusted only through their signatures (without keys anyone able to write to the anchor could pin anything)".into(),
        ));
    };
    let keyset = crate::verify::load_keys(keys)?;
    let only: BTreeSet<u32> = args.partitions.iter().copied().collect();
    let reads = crate::reads::Reads::new(args.reads.retry_attempts);
    let read = load_anchor(
        &args.anchor,
        url,
        &keyset,
        args.chain_id.as_deref(),
        &only,
        &reads,
        set,
    )
    .await?;
    if !args.json && !args.quiet {
        eprintln!(
            "auditctl: {read} anchored checkpoints read from {url}; newest valid one per partition pinned"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(p: i32, last: Option<i64>, events: u64) -> PartitionReport {
        PartitionReport {
            partition: p,
            first_seq: last.map(|_| 1),
            last_seq: last,
            events,
            head_seq: last.unwrap_or(0),
            head: hex::encode([p as u8; 32]),
            sealed_through: None,
            findings: Vec::new(),
            findings_dropped: 0,
            ok: true,
        }
    }

    fn pinned(p: u32, seq: u64, b: u8) -> Trusted {
        Trusted {
            head: ChainHead {
                chain_id: "c".into(),
                partition: p,
                seq,
                head: [b; 32],
            },
            from: "pins#1".into(),
            authority: "unsigned".into(),
        }
    }

    #[test]
    fn each_way_a_store_can_fail_a_pin_is_named() {
        let set = TrustedSet {
            pins: vec![
                pinned(0, 10, 1), // held, same hash: ok
                pinned(1, 10, 1), // held, other hash: mismatch
                pinned(2, 10, 1), // store ends at 5: rollback
                pinned(3, 10, 1), // absent: partition missing
                pinned(4, 10, 1), // hole at 10, later records: mismatch
                pinned(5, 10, 1), // filtered out
            ],
            invalid: Vec::new(),
        };
        let mut report = Report::new(vec![
            part(0, Some(20), 20),
            part(1, Some(20), 20),
            part(2, Some(5), 5),
            part(4, Some(20), 19),
        ]);
        let mut cap = Captured::default();
        cap.hashes.insert((0, 10), vec![1; 32]);
        cap.hashes.insert((1, 10), vec![2; 32]);
        let only: BTreeSet<u32> = (0..5).collect();
        let a = check(&set, &mut report, &cap, &only);
        let kinds: Vec<(u32, &str)> = a
            .findings
            .iter()
            .map(|f| (f.partition, f.kind.name()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (1, "trusted_checkpoint_mismatch"),
                (2, "rollback_below_trusted"),
                (3, "trusted_partition_missing"),
                (4, "trusted_checkpoint_mismatch"),
            ]
        );
        assert_eq!(a.checked, 5);
        assert!(!a.ok && !report.ok);
        let ok: Vec<(i32, bool)> = report
            .partitions
            .iter()
            .map(|p| (p.partition, p.ok))
            .collect();
        assert_eq!(
            ok,
            vec![(0, true), (1, false), (2, false), (3, false), (4, false)]
        );
        // serde names match `name()`.
        assert_eq!(
            serde_json::to_value(AnchorKind::RollbackBelowTrusted).unwrap(),
            "rollback_below_trusted"
        );
    }

    #[test]
    fn anchored_names_parse_as_the_sink_writes_them() {
        let k = segment::anchor_key("prod/eu", 3, 42, "k1", 7);
        assert_eq!(anchored_name(&k), Some(("prod_2Feu", 3, 42)));
        for bad in [
            "anchor/c/partition=x/00000000000000000042-k1@t7.json",
            "anchor/c/p=3/00000000000000000042-k1@t7.json",
            "checkpoints/chain=3/00000000000000000042-k1.json",
            "anchor/c/partition=3/42-k1@t7.json",
        ] {
            assert_eq!(anchored_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn json_checkpoints_in_every_shape() {
        let j = r#"{"chain_id":"c","partition":1,"first_seq":1,"seq":5,"head_hash":"00","merkle_root":"00","time_us":1,"key_id":"k","signature":"AA=="}"#;
        assert_eq!(json_checkpoints(j).unwrap().len(), 1);
        assert_eq!(json_checkpoints(&format!("[{j},{j}]")).unwrap().len(), 2);
        assert_eq!(json_checkpoints(&format!("{j}\n{j}\n")).unwrap().len(), 2);
        assert!(json_checkpoints("{\"x\":1}").is_err());
    }

    #[test]
    fn saving_merges_and_never_lowers_a_pin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.txt");
        let h = |p: u32, seq: u64, b: u8| ChainHead {
            chain_id: "c".into(),
            partition: p,
            seq,
            head: [b; 32],
        };
        let pins = |hs: Vec<ChainHead>| -> Vec<Pin> {
            hs.into_iter().map(|h| Pin::unsigned(h).unwrap()).collect()
        };
        save(&path, pins(vec![h(0, 10, 1), h(1, 10, 1)])).unwrap();
        let written = save(&path, pins(vec![h(0, 20, 2), h(1, 5, 3)])).unwrap();
        assert_eq!(written, vec![h(0, 20, 2)], "partition 1 is not lowered");
        let read = pin::parse_file(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let heads: Vec<ChainHead> = read.into_iter().map(|p| p.head).collect();
        assert_eq!(heads, vec![h(0, 20, 2), h(1, 10, 1)]);
        std::fs::write(&path, "garbage").unwrap();
        assert!(
            save(&path, pins(vec![h(0, 30, 1)])).is_err(),
            "never clobbers a non-pin file"
        );
    }

    #[test]
    fn heads_to_save_takes_the_lowest_head_per_partition() {
        let a = Report::new(vec![part(0, Some(20), 20), part(1, None, 0)]);
        let b = Report::new(vec![part(0, Some(15), 15)]);
        let heads = heads_to_save("c", &[&a, &b]).unwrap();
        assert_eq!(heads.len(), 1);
        assert_eq!((heads[0].partition, heads[0].seq), (0, 15));
    }
}
