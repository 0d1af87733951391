//! `auditctl consistency`, `auditctl check-consistency` and `auditctl checkpoints`: RFC 9162
//! consistency proofs between two signed whole-tree (v3) checkpoints of one partition, checked
//! offline with only the key set, and the checkpoints as C2SP signed notes.
//!
//! A v3 checkpoint signs, as a C2SP tlog-checkpoint note, the root of the partition's whole
//! tree (leaf `i` = the link hash of seq `i + 1`, size = seq). An auditor who kept an old
//! checkpoint asks for a proof that a newer one extends it: the proof is O(log n) hashes, and
//! checking it needs neither the store nor trust in whoever produced the document, only the
//! two signed notes and the public key set. A store rewritten below the old size (or a log
//! that forked) cannot produce such a proof for a genuinely signed newer checkpoint.
//!
//! `consistency` rebuilds the tree from the stored *events* (recomputing each link hash, never
//! trusting the stored `hash` column, as `prove` does), so a store whose records no longer hash
//! to the signed roots is reported (exit 1) instead of producing a document.
//!
//! The document (JSON):
//!
//! ```text
//! {"origin": "<chain id>/partition/<p>",
//!  "old":   {"size": N, "root": "<base64>", "note": "<C2SP signed note>"},
//!  "new":   {"size": M, "root": "<base64>", "note": "<C2SP signed note>"},
//!  "proof": ["<base64 hash>", ...]}
//! ```
//!
//! `size` and `root` repeat what the notes sign (for a reader); `check-consistency` requires
//! them to agree with the notes, and trusts only the notes.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use integrity::b64::{self, B64Hash};
use integrity::chain::rehash_stored;
use integrity::checkpoint::{
    verify_signed, CheckpointFields, KeySet, SignedCheckpoint, CHECKPOINT_EXTENSION_V3,
    SIGNATURE_LEN,
};
use integrity::tlog::{log_key, parse_decimal, parse_partition_origin, Checkpoint as Note};
use integrity::tree::{
    consistency_proof, leaf_hash, verify_consistency, CompactRange, Hash32, NodeSource, TreeError,
};
use schemas::Checkpoint;
use serde::{Deserialize, Serialize};

use crate::cli::{ArchiveStoreArgs, ClickHouseArgs, ReadArgs, SingleSource};
use crate::error::Error;
use crate::one_store::Source;
use crate::verify::load_keys;
use crate::Outcome;

// ---- arguments ----------------------------------------------------------------------------------

#[derive(Debug, Clone, Args)]
pub struct ConsistencyArgs {
    /// Where to read the partition's records and checkpoints from.
    #[arg(
        long,
        value_enum,
        env = "AUDITCTL_SOURCE",
        default_value = "clickhouse"
    )]
    pub source: SingleSource,
    /// The partition (one log).
    #[arg(long, env = "AUDITCTL_PARTITION")]
    pub partition: u32,
    /// Size (= seq) of the old checkpoint: a valid v3 checkpoint in the store must sign
    /// exactly this size. 0 = the genesis checkpoint (the proof is then empty).
    #[arg(
        long,
        required_unless_present = "old_note",
        conflicts_with = "old_note"
    )]
    pub old: Option<u64>,
    /// The old checkpoint as a C2SP signed note the auditor kept (e.g. from `auditctl
    /// checkpoints --partition P`), instead of --old: it is checked with --keys, the store
    /// need not hold it, and the store's records must still hash to its root.
    #[arg(long)]
    pub old_note: Option<PathBuf>,
    /// Size of the new checkpoint. Default: the newest valid v3 checkpoint of the partition.
    #[arg(long)]
    pub new: Option<u64>,
    /// Public key set (JSON): only checkpoints whose signature verifies with it are used.
    #[arg(long, env = "AUDIT_KEYSET")]
    pub keys: PathBuf,
    /// Only use checkpoints of this chain id. Default: the one chain id of the partition's
    /// valid v3 checkpoints (several are an error).
    #[arg(long, env = "AUDIT_CHAIN_ID")]
    pub chain_id: Option<String>,
    /// Write the document here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// See `verify --window`: records are read in windows of this many seqs.
    #[arg(long, env = "AUDITCTL_WINDOW", default_value_t = 10_000)]
    pub window: i64,
    #[command(flatten)]
    pub reads: ReadArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub archive: ArchiveStoreArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CheckConsistencyArgs {
    /// The document written by `auditctl consistency`.
    pub document: PathBuf,
    /// Public key set (JSON).
    #[arg(long, env = "AUDIT_KEYSET")]
    pub keys: PathBuf,
    /// Require this origin (`<chain id>/partition/<p>`): the log the auditor asked about.
    #[arg(long)]
    pub origin: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct CheckpointsArgs {
    /// Where to read the checkpoints from.
    #[arg(
        long,
        value_enum,
        env = "AUDITCTL_SOURCE",
        default_value = "clickhouse"
    )]
    pub source: SingleSource,
    /// Only these partitions (repeatable). Default: every partition with a checkpoint.
    #[arg(long = "partition", env = "AUDITCTL_PARTITIONS", value_delimiter = ',')]
    pub partitions: Vec<u32>,
    /// Public key set (JSON): only checkpoints whose signature verifies with it are printed.
    #[arg(long, env = "AUDIT_KEYSET")]
    pub keys: PathBuf,
    /// Only checkpoints of this chain id (default: every chain id found).
    #[arg(long, env = "AUDIT_CHAIN_ID")]
    pub chain_id: Option<String>,
    /// Also print, before each note, the note verifier key of its log
    /// (`<origin>+<key hash>+<base64(0x01 ‖ public key)>`), as transparency-log tools take it.
    #[arg(long)]
    pub vkeys: bool,
    #[command(flatten)]
    pub reads: ReadArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub archive: ArchiveStoreArgs,
}

// ---- the document -------------------------------------------------------------------------------

/// One signed tree head of the document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeHead {
    pub size: u64,
    pub root: B64Hash,
    /// The C2SP signed note (what is trusted; `size` and `root` must agree with it).
    pub note: String,
}

/// What `consistency` writes and `check-consistency` reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyDocument {
    pub origin: String,
    pub old: TreeHead,
    pub new: TreeHead,
    pub proof: Vec<B64Hash>,
}

/// The signed fields and key id of a v3 note body, parsed strictly: the body must be exactly
/// what [`CheckpointFields::note_body`] renders for them, so one checkpoint has one text.
pub fn parse_v3_body(body: &str) -> Result<(CheckpointFields, String), String> {
    let lines: Vec<&str> = body
        .strip_suffix('\n')
        .ok_or("the note text does not end in a newline")?
        .split('\n')
        .collect();
    let [origin, size, root, ext] = lines[..] else {
        return Err(format!(
            "the note text has {} lines; an audit-checkpoint/v3 note has 4 (origin, size, root, extension)",
            lines.len()
        ));
    };
    let (chain_id, partition) = parse_partition_origin(origin)
        .ok_or_else(|| format!("origin {origin:?} is not `<chain id>/partition/<p>`"))?;
    let seq = parse_decimal(size).ok_or_else(|| format!("tree size {size:?} is not a number"))?;
    let tree_root =
        b64::decode_hash(root).ok_or_else(|| format!("root {root:?} is not base64 of 32 bytes"))?;
    let parts: Vec<&str> = ext.split(' ').collect();
    let [tag, first, head, range, time, count, key_id] = parts[..] else {
        return Err(format!(
            "extension line {ext:?} is not `{CHECKPOINT_EXTENSION_V3} <first_seq> <head> <range root> <time_us> <partition_count> <key_id>`"
        ));
    };
    if tag != CHECKPOINT_EXTENSION_V3 {
        return Err(format!(
            "extension line starts with {tag:?}, not {CHECKPOINT_EXTENSION_V3:?}"
        ));
    }
    let bad = |what: &str, v: &str| format!("extension line: {what} {v:?} is malformed");
    let fields = CheckpointFields {
        chain_id: chain_id.to_owned(),
        partition,
        first_seq: parse_decimal(first).ok_or_else(|| bad("first_seq", first))?,
        seq,
        head_hash: b64::decode_hash(head).ok_or_else(|| bad("head", head))?,
        merkle_root: b64::decode_hash(range).ok_or_else(|| bad("range root", range))?,
        time_us: time.parse().map_err(|_| bad("time_us", time))?,
        partition_count: parse_decimal(count)
            .and_then(|c| u32::try_from(c).ok())
            .ok_or_else(|| bad("partition_count", count))?,
        tree_root: Some(tree_root),
    };
    if fields.note_body(key_id).as_deref() != Some(body) {
        return Err(
            "the note text is not in canonical form (e.g. `+` or leading zeros in a number)".into(),
        );
    }
    Ok((fields, key_id.to_owned()))
}

/// Open one signed note of a document: the signer named by its extension line must be in the
/// key set, its C2SP note signature (key name = origin) must verify, and the checkpoint must
/// pass the same checks as in the store (`verify_signed`: the key's validity window at the
/// signed `time_us`, the field rules).
pub fn open_note(keys: &KeySet, origin: &str, note: &str) -> Result<SignedCheckpoint, String> {
    let parsed = integrity::note::Note::parse(note.as_bytes())
        .map_err(|e| format!("not a signed note: {e}"))?;
    let (fields, key_id) = parse_v3_body(parsed.text())?;
    if fields.origin() != origin {
        return Err(format!(
            "it is a checkpoint of {:?}, not of the document's origin {origin:?}",
            fields.origin()
        ));
    }
    let pk = keys
        .public_key(&key_id)
        .ok_or_else(|| format!("it names key {key_id:?}, which is not in the key set"))?;
    let vkey = log_key(origin, pk).map_err(|e| e.to_string())?;
    Note::open(note.as_bytes(), origin, std::slice::from_ref(&vkey))
        .map_err(|e| format!("the note does not verify with key {key_id:?}: {e}"))?;
    let sig = parsed
        .signatures()
        .iter()
        .find(|s| s.name == origin && s.key_id == vkey.key_id())
        .and_then(|s| <[u8; SIGNATURE_LEN]>::try_from(s.bytes.as_slice()).ok())
        .ok_or_else(|| format!("no Ed25519 signature line by key {key_id:?}"))?;
    let signed = SignedCheckpoint {
        fields,
        key_id,
        signature: sig,
    };
    verify_signed(keys, &signed).map_err(|e| e.to_string())?;
    Ok(signed)
}

fn describe(cp: &SignedCheckpoint) -> String {
    format!(
        "size {} (signed by key {:?} at time_us {})",
        cp.fields.seq, cp.key_id, cp.fields.time_us
    )
}

/// Check a document (offline): `Ok` with a one-line description, or why it does not check.
pub fn check_document(
    keys: &KeySet,
    text: &str,
    expected_origin: Option<&str>,
) -> Result<String, String> {
    let doc: ConsistencyDocument =
        serde_json::from_str(text).map_err(|e| format!("not a consistency document: {e}"))?;
    if let Some(want) = expected_origin {
        if doc.origin != want {
            return Err(format!(
                "the document is about {:?}, not {want:?}",
                doc.origin
            ));
        }
    }
    let mut opened = Vec::with_capacity(2);
    for (label, head) in [("old", &doc.old), ("new", &doc.new)] {
        let cp = open_note(keys, &doc.origin, &head.note)
            .map_err(|e| format!("the {label} note: {e}"))?;
        if cp.fields.seq != head.size || cp.fields.tree_root != Some(head.root.0) {
            return Err(format!(
                "the {label} size/root ({}, {}) are not what its note signs ({}, {})",
                head.size,
                b64::encode(&head.root.0),
                cp.fields.seq,
                b64::encode(&cp.fields.tree_root.unwrap_or_default())
            ));
        }
        opened.push(cp);
    }
    let (old, new) = (&opened[0], &opened[1]);
    if old.fields.seq > new.fields.seq {
        return Err(format!(
            "the old checkpoint (size {}) is larger than the new one (size {}): not an extension (old and new swapped?)",
            old.fields.seq, new.fields.seq
        ));
    }
    let proof: Vec<Hash32> = doc.proof.iter().map(|h| h.0).collect();
    verify_consistency(
        old.fields.seq,
        new.fields.seq,
        &doc.old.root.0,
        &doc.new.root.0,
        &proof,
    )
    .map_err(|e| {
        format!(
            "the proof of {} hashes from size {} to size {} does not check: {e}",
            proof.len(),
            old.fields.seq,
            new.fields.seq
        )
    })?;
    Ok(format!(
        "consistent: {}: {} is extended by {}; proof of {} hashes",
        doc.origin,
        describe(old),
        describe(new),
        proof.len()
    ))
}

pub fn check(args: &CheckConsistencyArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    let keys = load_keys(&args.keys)?;
    let text = std::fs::read_to_string(&args.document)
        .map_err(Error::file("reading consistency document", &args.document))?;
    let (line, outcome) = match check_document(&keys, &text, args.origin.as_deref()) {
        Ok(msg) => (msg, Outcome::Ok),
        Err(why) => (format!("consistency FAILED: {why}"), Outcome::Findings),
    };
    writeln!(out, "{line}").map_err(Error::file("writing output to", "<stdout>"))?;
    Ok(outcome)
}

// ---- reading the store --------------------------------------------------------------------------

/// The valid v3 checkpoints among `cps`: whole-tree root present, signature and key window
/// checked with `keys`, of `chain_id` if given, signing one of `partitions` (all if empty: a
/// genuine checkpoint of another partition stored under this one's key is not this one's).
fn valid_v3(
    cps: &[Checkpoint],
    keys: &KeySet,
    chain_id: Option<&str>,
    partitions: &[u32],
) -> Vec<SignedCheckpoint> {
    cps.iter()
        .filter_map(|c| SignedCheckpoint::try_from(c).ok())
        .filter(|s| s.fields.tree_root.is_some())
        .filter(|s| partitions.is_empty() || partitions.contains(&s.fields.partition))
        .filter(|s| chain_id.is_none_or(|id| s.fields.chain_id == id))
        .filter(|s| verify_signed(keys, s).is_ok())
        .collect()
}

/// The one chain id of `valid` (or the requested one).
fn single_chain_id(valid: &[SignedCheckpoint], partition: u32) -> Result<(), Error> {
    let ids: BTreeSet<&str> = valid.iter().map(|c| c.fields.chain_id.as_str()).collect();
    if ids.len() > 1 {
        return Err(Error::Usage(format!(
            "partition {partition} has valid checkpoints of several chain ids {ids:?}: pass --chain-id"
        )));
    }
    Ok(())
}

/// The valid checkpoint signing size `size` (the newest signed, if re-signed by heartbeats).
/// Two valid checkpoints of one size with different roots are a signed fork.
fn at_size(
    valid: &[SignedCheckpoint],
    partition: u32,
    size: u64,
) -> Result<SignedCheckpoint, Error> {
    let same: Vec<&SignedCheckpoint> = valid.iter().filter(|c| c.fields.seq == size).collect();
    if let Some(other) = same
        .iter()
        .find(|c| c.fields.tree_root != same[0].fields.tree_root)
    {
        return Err(Error::Integrity(format!(
            "partition {partition}: two valid checkpoints sign size {size} with different tree roots ({} by key {:?}, {} by key {:?}): a signed fork",
            b64::encode(&same[0].fields.tree_root.unwrap_or_default()),
            same[0].key_id,
            b64::encode(&other.fields.tree_root.unwrap_or_default()),
            other.key_id
        )));
    }
    same.into_iter()
        .max_by_key(|c| c.fields.time_us)
        .cloned()
        .ok_or_else(|| {
            let sizes: BTreeSet<u64> = valid.iter().map(|c| c.fields.seq).collect();
            let shown: Vec<String> = sizes.iter().take(50).map(u64::to_string).collect();
            Error::Usage(format!(
                "partition {partition} has no valid v3 checkpoint (signed whole-tree root) of size {size}; valid v3 checkpoints have sizes [{}{}]",
                shown.join(", "),
                if sizes.len() > 50 { ", …" } else { "" }
            ))
        })
}

/// The perfect subtrees (level, index) whose roots the consistency proof `old → new` names.
/// The RFC's recursion depends on the sizes only, so a dry run over a source that records what
/// it is asked (and answers zeros) gives them, before any leaf is read.
fn plan(old: u64, new: u64) -> Result<BTreeSet<(u32, u64)>, TreeError> {
    struct Recorder {
        size: u64,
        asked: RefCell<BTreeSet<(u32, u64)>>,
    }
    impl NodeSource for Recorder {
        type Error = TreeError;
        fn size(&self) -> u64 {
            self.size
        }
        fn perfect_node(&self, level: u32, index: u64) -> Result<Hash32, TreeError> {
            self.asked.borrow_mut().insert((level, index));
            Ok([0; 32])
        }
    }
    let rec = Recorder {
        size: new,
        asked: RefCell::default(),
    };
    consistency_proof(&rec, old, new)?;
    Ok(rec.asked.into_inner())
}

/// Perfect subtree roots computed while streaming (see [`StreamedTree`]).
struct Nodes {
    size: u64,
    roots: BTreeMap<(u32, u64), Hash32>,
}

impl NodeSource for Nodes {
    type Error = TreeError;
    fn size(&self) -> u64 {
        self.size
    }
    fn perfect_node(&self, level: u32, index: u64) -> Result<Hash32, TreeError> {
        self.roots
            .get(&(level, index))
            .copied()
            .ok_or(TreeError::NotEnoughLeaves {
                needed: index
                    .saturating_add(1)
                    .saturating_mul(1u64 << level.min(63)),
                available: self.size,
            })
    }
}

/// The partition's tree, built leaf by leaf in O(log n) memory: the whole tree's compact
/// range, its roots at the sizes asked for, and the roots of the perfect subtrees a planned
/// proof needs (each folded in its own compact range while its leaves stream past). A
/// partition of any length thus needs no leaf list in memory.
struct StreamedTree {
    whole: CompactRange,
    marks: BTreeSet<u64>,
    roots_at: BTreeMap<u64, Hash32>,
    /// Subtrees not started yet, by first leaf descending (the next is last).
    pending: Vec<(u64, (u32, u64))>,
    /// Subtrees being folded: (id, end leaf, range so far).
    active: Vec<((u32, u64), u64, CompactRange)>,
    nodes: BTreeMap<(u32, u64), Hash32>,
}

impl StreamedTree {
    fn new(marks: &[u64], nodes: &BTreeSet<(u32, u64)>) -> Self {
        let mut pending: Vec<(u64, (u32, u64))> = nodes
            .iter()
            .map(|&(level, index)| (index << level, (level, index)))
            .collect();
        pending.sort_by(|a, b| b.cmp(a));
        let mut roots_at = BTreeMap::new();
        if marks.contains(&0) {
            roots_at.insert(0, integrity::tree::empty_root());
        }
        StreamedTree {
            whole: CompactRange::new(),
            marks: marks.iter().copied().collect(),
            roots_at,
            pending,
            active: Vec::new(),
            nodes: BTreeMap::new(),
        }
    }

    fn push(&mut self, leaf: Hash32) -> Result<(), TreeError> {
        let i = self.whole.size();
        while self.pending.last().is_some_and(|(start, _)| *start == i) {
            if let Some((start, (level, index))) = self.pending.pop() {
                let end = start.saturating_add(1u64 << level);
                self.active.push(((level, index), end, CompactRange::new()));
            }
        }
        for (_, _, range) in &mut self.active {
            range.append(leaf)?;
        }
        let nodes = &mut self.nodes;
        self.active.retain(|(id, end, range)| {
            let complete = i + 1 == *end;
            if complete {
                nodes.insert(*id, range.root());
            }
            !complete
        });
        self.whole.append(leaf)?;
        let size = self.whole.size();
        if self.marks.contains(&size) {
            self.roots_at.insert(size, self.whole.root());
        }
        Ok(())
    }

    fn root_at(&self, size: u64) -> Option<Hash32> {
        self.roots_at.get(&size).copied()
    }

    fn nodes(self) -> Nodes {
        Nodes {
            size: self.whole.size(),
            roots: self.nodes,
        }
    }
}

/// Stream the partition's records `1 ..= size` into `tree`, recomputing each link from the
/// event's canonical bytes and its stored `prev_hash` (never the stored `hash`), read in
/// windows. A missing seq is an error (the tree cannot be rebuilt); a `prev_hash` that does
/// not link is remembered and named if a signed root then mismatches.
async fn stream_leaves(
    src: &Source,
    partition: u32,
    size: u64,
    window: i64,
    tree: &mut StreamedTree,
) -> Result<Option<String>, Error> {
    let last = i64::try_from(size)
        .map_err(|_| Error::Usage(format!("size {size} exceeds the largest seq")))?;
    let window = window.max(1);
    let mut prev_link: Option<Hash32> = None;
    let mut stored: u64 = 0;
    let mut first_break = None;
    let mut buf = Vec::with_capacity(1024);
    let mut lo = 1i64;
    while lo <= last {
        let hi = lo.saturating_add(window - 1).min(last);
        for ev in src.range(partition, lo, hi).await? {
            let bad = |what: String| {
                Error::Integrity(format!(
                    "partition {partition} seq {}: {what}; run `auditctl verify` for the full report",
                    ev.seq
                ))
            };
            let expected = stored as i64 + 1;
            if ev.seq == expected - 1 && stored > 0 {
                // A second copy of a stored seq (duplicates before merges): the same link.
                if prev_link != Some(rehash_stored(partition, &ev, &mut buf).map_err(bad)?) {
                    return Err(bad("two different records at this seq".into()));
                }
                continue;
            }
            if ev.seq != expected {
                return Err(Error::Integrity(format!(
                    "partition {partition}: seq {expected} is missing from the store (next stored seq {}), so the tree of size {size} cannot be rebuilt; run `auditctl verify`",
                    ev.seq
                )));
            }
            if first_break.is_none() {
                if let Some(prev) = prev_link {
                    if ev.prev_hash.as_slice() != prev.as_slice() {
                        first_break = Some(format!(
                            "the first record that does not link is seq {}: its prev_hash is not the recomputed hash of seq {}",
                            ev.seq,
                            ev.seq - 1
                        ));
                    }
                }
            }
            let link = rehash_stored(partition, &ev, &mut buf).map_err(bad)?;
            tree.push(leaf_hash(&link))
                .map_err(|e| Error::Integrity(format!("partition {partition}: {e}")))?;
            prev_link = Some(link);
            stored += 1;
        }
        lo = hi + 1;
    }
    if stored < size {
        return Err(Error::Integrity(format!(
            "partition {partition}: the store ends at seq {stored} but the checkpoint signs a tree of size {size} (a deleted tail, or a sink behind its checkpoints: retry, or pass a smaller --new); run `auditctl verify`"
        )));
    }
    Ok(first_break)
}

/// The recomputed root at the checkpoint's size must be the one it signs.
fn check_root(
    partition: u32,
    tree: &StreamedTree,
    cp: &SignedCheckpoint,
    first_break: Option<&str>,
) -> Result<Hash32, Error> {
    let size = cp.fields.seq;
    let signed = cp.fields.tree_root.unwrap_or_default();
    let got = tree.root_at(size).ok_or_else(|| {
        Error::Integrity(format!(
            "partition {partition}: the tree of size {size} was not rebuilt"
        ))
    })?;
    if got != signed {
        return Err(Error::Integrity(format!(
            "partition {partition}: tree root mismatch at size {size}: the stored records 1..={size} recompute to root {}, but the checkpoint signed by key {:?} at time_us {} signs {}{}; run `auditctl verify`",
            b64::encode(&got),
            cp.key_id,
            cp.fields.time_us,
            b64::encode(&signed),
            first_break.map(|b| format!("; {b}")).unwrap_or_default()
        )));
    }
    Ok(got)
}

fn note_of(keys: &KeySet, cp: &SignedCheckpoint) -> Result<String, Error> {
    keys.public_key(&cp.key_id)
        .and_then(|pk| cp.to_note(pk))
        .ok_or_else(|| {
            Error::Integrity(format!(
                "the checkpoint of size {} has no note form (key {:?})",
                cp.fields.seq, cp.key_id
            ))
        })
}

fn write_text(text: &str, path: Option<&PathBuf>, out: &mut dyn Write) -> Result<(), Error> {
    match path {
        Some(p) => std::fs::write(p, text).map_err(Error::file("writing", p)),
        None => out
            .write_all(text.as_bytes())
            .map_err(Error::file("writing to", "<stdout>")),
    }
}

pub async fn consistency(args: &ConsistencyArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    let keys = load_keys(&args.keys)?;
    let src = Source::open(args.source, &args.reads, &args.clickhouse, &args.archive)?;
    let p = args.partition;
    let cps = src.checkpoints(&[p]).await?;
    let valid = valid_v3(&cps, &keys, args.chain_id.as_deref(), &[p]);
    single_chain_id(&valid, p)?;
    let new_size = match args.new {
        Some(n) => n,
        None => valid.iter().map(|c| c.fields.seq).max().ok_or_else(|| {
            Error::Usage(format!(
                "partition {p} has no valid v3 checkpoint (signed whole-tree root) in the store"
            ))
        })?,
    };
    let old = match (&args.old_note, args.old) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .map_err(Error::file("reading the old checkpoint note", path))?;
            let origin = integrity::tlog::partition_origin(
                args.chain_id
                    .as_deref()
                    .or(valid.first().map(|c| c.fields.chain_id.as_str()))
                    .unwrap_or_default(),
                p,
            )
            .map_err(|e| Error::Usage(format!("--chain-id: {e}")))?;
            let pinned = open_note(&keys, &origin, &text)
                .map_err(|e| Error::Usage(format!("--old-note {}: {e}", path.display())))?;
            // The store signing another root for the pinned size is a fork, even if its
            // records (rewritten to match the pin) hash to the pinned root.
            if let Some(other) = valid.iter().find(|c| {
                c.fields.seq == pinned.fields.seq && c.fields.tree_root != pinned.fields.tree_root
            }) {
                return Err(Error::Integrity(format!(
                    "partition {p}: the store's checkpoint of size {} (key {:?}, time_us {}) signs another tree root than the pinned note: a signed fork",
                    other.fields.seq, other.key_id, other.fields.time_us
                )));
            }
            pinned
        }
        (None, Some(size)) => at_size(&valid, p, size)?,
        (None, None) => return Err(Error::Usage("give --old or --old-note".into())),
    };
    if old.fields.seq > new_size {
        return Err(Error::Usage(format!(
            "the old size {} is larger than the new size {new_size}",
            old.fields.seq
        )));
    }
    let new = at_size(&valid, p, new_size)?;
    let (old_size, new_size) = (old.fields.seq, new.fields.seq);
    let needed = plan(old_size, new_size)
        .map_err(|e| Error::Integrity(format!("planning the consistency proof: {e}")))?;
    let mut tree = StreamedTree::new(&[old_size, new_size], &needed);
    let first_break = stream_leaves(&src, p, new_size, args.window, &mut tree).await?;
    let old_root = check_root(p, &tree, &old, first_break.as_deref())?;
    let new_root = check_root(p, &tree, &new, first_break.as_deref())?;
    let proof = consistency_proof(&tree.nodes(), old_size, new_size)
        .map_err(|e| Error::Integrity(format!("building the consistency proof: {e}")))?;
    verify_consistency(old.fields.seq, new.fields.seq, &old_root, &new_root, &proof)
        .map_err(|e| Error::Integrity(format!("the proof just built does not check: {e}")))?;
    let doc = ConsistencyDocument {
        origin: new.fields.origin(),
        old: TreeHead {
            size: old.fields.seq,
            root: B64Hash(old_root),
            note: note_of(&keys, &old)?,
        },
        new: TreeHead {
            size: new.fields.seq,
            root: B64Hash(new_root),
            note: note_of(&keys, &new)?,
        },
        proof: proof.into_iter().map(B64Hash).collect(),
    };
    let mut json = serde_json::to_string_pretty(&doc)
        .map_err(|e| Error::Integrity(format!("serializing the document: {e}")))?;
    json.push('\n');
    // What is handed out is what an auditor will check: check it the same way first.
    check_document(&keys, &json, None)
        .map_err(|e| Error::Integrity(format!("the document just built does not check: {e}")))?;
    write_text(&json, args.out.as_ref(), out)?;
    Ok(Outcome::Ok)
}

/// `auditctl checkpoints`: each partition's newest valid v3 checkpoint as a C2SP signed note
/// (with `--vkeys`, its log's verifier key on the line before), blocks separated by a blank
/// line. Exit 2 if no partition has one.
pub async fn checkpoints(args: &CheckpointsArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    let keys = load_keys(&args.keys)?;
    let src = Source::open(args.source, &args.reads, &args.clickhouse, &args.archive)?;
    let cps = src.checkpoints(&args.partitions).await?;
    let mut newest: BTreeMap<(String, u32), SignedCheckpoint> = BTreeMap::new();
    for cp in valid_v3(&cps, &keys, args.chain_id.as_deref(), &args.partitions) {
        let k = (cp.fields.chain_id.clone(), cp.fields.partition);
        let better = newest
            .get(&k)
            .is_none_or(|b| (cp.fields.seq, cp.fields.time_us) > (b.fields.seq, b.fields.time_us));
        if better {
            newest.insert(k, cp);
        }
    }
    if newest.is_empty() {
        return Err(Error::Usage(
            "no valid v3 checkpoint (signed whole-tree root) in the store for these partitions"
                .into(),
        ));
    }
    let mut text = String::new();
    for cp in newest.values() {
        if !text.is_empty() {
            text.push('\n');
        }
        if args.vkeys {
            let pk = keys.public_key(&cp.key_id).unwrap_or_default();
            let vkey = log_key(&cp.fields.origin(), pk)
                .map_err(|e| Error::Integrity(format!("vkey of {}: {e}", cp.fields.origin())))?;
            // Display is the Go note vkey form.
            text.push_str(&format!("{vkey}\n"));
        }
        text.push_str(&note_of(&keys, cp)?);
    }
    write_text(&text, None, out)?;
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use integrity::checkpoint::{generate_pkcs8, sign_fields, SigningKey};
    use integrity::tree::MemoryTree;

    struct Log {
        key: SigningKey,
        keys: KeySet,
        tree: MemoryTree,
    }

    fn log(n: u64) -> Log {
        let key = SigningKey::from_pkcs8("k1", generate_pkcs8().unwrap().expose()).unwrap();
        let mut keys = KeySet::default();
        keys.add(key.public_entry(0, None)).unwrap();
        let mut tree = MemoryTree::new();
        for i in 0..n {
            tree.append(leaf_hash(&[i as u8; 32]));
        }
        Log { key, keys, tree }
    }

    fn signed(l: &Log, partition: u32, size: u64) -> SignedCheckpoint {
        let root = l.tree.root_at(size).unwrap();
        let mut f = CheckpointFields::genesis("chain-x", partition, 1_000 + size as i64, 4);
        if size > 0 {
            f.first_seq = 1;
            f.seq = size;
            f.head_hash = [size as u8; 32];
            f.merkle_root = root;
        }
        f.tree_root = Some(root);
        sign_fields(&l.key, &f).unwrap()
    }

    fn doc(l: &Log, old: u64, new: u64) -> ConsistencyDocument {
        let head = |size: u64| TreeHead {
            size,
            root: B64Hash(l.tree.root_at(size).unwrap()),
            note: signed(l, 2, size).to_note(l.key.public_key()).unwrap(),
        };
        ConsistencyDocument {
            origin: "chain-x/partition/2".into(),
            old: head(old),
            new: head(new),
            proof: consistency_proof(&l.tree, old, new)
                .unwrap()
                .into_iter()
                .map(B64Hash)
                .collect(),
        }
    }

    fn check(l: &Log, d: &ConsistencyDocument) -> Result<String, String> {
        check_document(&l.keys, &serde_json::to_string(d).unwrap(), None)
    }

    #[test]
    fn a_note_body_parses_back_to_its_signed_fields() {
        let l = log(40);
        let cp = signed(&l, 2, 13);
        let body = cp.fields.note_body(&cp.key_id).unwrap();
        let (f, key_id) = parse_v3_body(&body).unwrap();
        assert_eq!((f, key_id), (cp.fields.clone(), cp.key_id.clone()));
        let g = signed(&l, 0, 0);
        assert_eq!(
            parse_v3_body(&g.fields.note_body("k1").unwrap()).unwrap().0,
            g.fields
        );
        // Not canonical, not v3, wrong shape.
        for bad in [
            body.replacen("\n13\n", "\n013\n", 1),
            body.replacen("audit-checkpoint/v3 1 ", "audit-checkpoint/v3 01 ", 1),
            body.replacen("audit-checkpoint/v3", "audit-checkpoint/v4", 1),
            body.replacen(" k1\n", " k1 extra\n", 1),
            format!("{body}more\n"),
            body.trim_end().to_owned(),
            body.replacen("chain-x/partition/2", "chain-x/part/2", 1),
        ] {
            assert!(parse_v3_body(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_document_round_trips_and_checks() {
        let l = log(40);
        for (old, new) in [(5, 40), (13, 40), (5, 13), (0, 40), (40, 40), (1, 2)] {
            let d = doc(&l, old, new);
            let text = serde_json::to_string_pretty(&d).unwrap();
            let back: ConsistencyDocument = serde_json::from_str(&text).unwrap();
            assert_eq!(back, d);
            let ok = check(&l, &d).unwrap_or_else(|e| panic!("{old}->{new}: {e}"));
            assert!(ok.starts_with("consistent: chain-x/partition/2"), "{ok}");
        }
        assert!(doc(&l, 0, 40).proof.is_empty());
        // Unknown fields and missing fields are refused.
        let mut v = serde_json::to_value(doc(&l, 5, 40)).unwrap();
        v["extra"] = serde_json::json!(1);
        assert!(check_document(&l.keys, &v.to_string(), None)
            .unwrap_err()
            .contains("not a consistency document"));
        assert!(check_document(&l.keys, "{\"origin\":\"x\"}", None).is_err());
    }

    #[test]
    fn tampered_documents_fail_precisely() {
        let l = log(40);
        let good = doc(&l, 5, 40);

        let mut flipped = good.clone();
        flipped.proof[1].0[0] ^= 1;
        let e = check(&l, &flipped).unwrap_err();
        assert!(e.contains("does not check"), "{e}");

        let mut swapped = good.clone();
        std::mem::swap(&mut swapped.old, &mut swapped.new);
        let e = check(&l, &swapped).unwrap_err();
        assert!(e.contains("swapped"), "{e}");

        // Only the convenience fields swapped: they disagree with the notes.
        let mut roots = good.clone();
        std::mem::swap(&mut roots.old.root, &mut roots.new.root);
        let e = check(&l, &roots).unwrap_err();
        assert!(e.contains("not what its note signs"), "{e}");

        // Another partition's note (a genuine one, same key and sizes).
        let mut other = good.clone();
        other.new.note = signed(&l, 3, 40).to_note(l.key.public_key()).unwrap();
        let e = check(&l, &other).unwrap_err();
        assert!(
            e.contains("the new note") && e.contains("partition/3"),
            "{e}"
        );

        // An edited note: size, root or extension changed, signature kept.
        let mut edited = good.clone();
        edited.old.note = edited.old.note.replacen("\n5\n", "\n6\n", 1);
        let e = check(&l, &edited).unwrap_err();
        assert!(
            e.contains("the old note") && e.contains("does not verify"),
            "{e}"
        );

        // A note from a signer not in the key set.
        let mut stranger = log(40);
        stranger.tree = l.tree.clone();
        let mut foreign = good.clone();
        foreign.new.note = signed(&stranger, 2, 40)
            .to_note(stranger.key.public_key())
            .unwrap();
        let e = check(&l, &foreign).unwrap_err();
        assert!(
            e.contains("the new note") && e.contains("does not verify"),
            "{e}"
        );

        // A retired key: the signature holds but the key was not valid at time_us.
        let mut retired = KeySet::default();
        retired.add(l.key.public_entry(0, Some(1_010))).unwrap();
        let e = check_document(&retired, &serde_json::to_string(&good).unwrap(), None).unwrap_err();
        assert!(
            e.contains("the new note") && e.contains("not valid at"),
            "{e}"
        );

        // The auditor's expected origin.
        let text = serde_json::to_string(&good).unwrap();
        assert!(check_document(&l.keys, &text, Some("chain-x/partition/2")).is_ok());
        let e = check_document(&l.keys, &text, Some("chain-x/partition/3")).unwrap_err();
        assert!(e.contains("not \"chain-x/partition/3\""), "{e}");

        // A proof of the wrong length, and a fork at equal sizes.
        let mut short = good.clone();
        short.proof.pop();
        assert!(check(&l, &short).unwrap_err().contains("does not check"));
    }

    /// The streamed tree (O(log n) memory) gives the roots and the proof that the RFC's
    /// algorithm gives over all the leaves in memory.
    #[test]
    fn streamed_proofs_equal_proofs_over_all_leaves() {
        let leaves: Vec<Hash32> = (0..70u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for new in 0..=70u64 {
            for old in 0..=new {
                let needed = plan(old, new).unwrap();
                let mut tree = StreamedTree::new(&[old, new], &needed);
                for l in &leaves[..new as usize] {
                    tree.push(*l).unwrap();
                }
                let old_root = integrity::tree::root_of(&leaves[..old as usize]);
                let new_root = integrity::tree::root_of(&leaves[..new as usize]);
                assert_eq!(tree.root_at(old), Some(old_root), "{old}->{new}");
                assert_eq!(tree.root_at(new), Some(new_root), "{old}->{new}");
                let proof = consistency_proof(&tree.nodes(), old, new).unwrap();
                let want = consistency_proof(&leaves[..new as usize], old, new).unwrap();
                assert_eq!(proof, want, "{old}->{new}");
                verify_consistency(old, new, &old_root, &new_root, &proof).unwrap();
            }
        }
    }

    #[test]
    fn checkpoint_selection() {
        let l = log(40);
        let cps: Vec<Checkpoint> = [5, 13, 13, 40]
            .iter()
            .map(|&s| Checkpoint::from(&signed(&l, 2, s)))
            .collect();
        let valid = valid_v3(&cps, &l.keys, None, &[2]);
        assert_eq!(valid.len(), 4);
        assert_eq!(at_size(&valid, 2, 13).unwrap().fields.seq, 13);
        let e = at_size(&valid, 2, 12).unwrap_err().to_string();
        assert!(e.contains("sizes [5, 13, 40]"), "{e}");
        assert!(valid_v3(&cps, &l.keys, Some("other"), &[]).is_empty());
        assert!(valid_v3(&cps, &l.keys, None, &[3]).is_empty());
        // Two signed roots for one size: a fork.
        let mut forked = signed(&l, 2, 13).fields;
        forked.tree_root = Some([7; 32]);
        forked.time_us += 1;
        let mut with_fork = valid.clone();
        with_fork.push(sign_fields(&l.key, &forked).unwrap());
        let e = at_size(&with_fork, 2, 13).unwrap_err();
        assert!(matches!(e, Error::Integrity(_)) && e.to_string().contains("signed fork"));
    }

    #[test]
    fn vkey_lines_open_the_notes() {
        let l = log(3);
        let cp = signed(&l, 2, 3);
        let vkey = log_key("chain-x/partition/2", l.key.public_key()).unwrap();
        let line = vkey.to_string();
        assert!(line.starts_with("chain-x/partition/2+"));
        let parsed: integrity::note::VerifierKey = line.parse().unwrap();
        assert_eq!(parsed, vkey);
        let note = cp.to_note(l.key.public_key()).unwrap();
        Note::open(note.as_bytes(), "chain-x/partition/2", &[parsed]).unwrap();
    }
}
