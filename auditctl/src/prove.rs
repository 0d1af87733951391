//! `auditctl prove` and `auditctl check-proof`.
//!
//! `prove` finds the event, the signed checkpoint whose range covers its seq, rebuilds the
//! checkpoint's leaves (the link hashes of `first_seq ..= seq`) by *recomputing* them from the
//! stored events, and emits `integrity::checkpoint::InclusionProof` with the event's canonical
//! bytes, so that `check-proof` ties the exact event content to a signed root with only the key
//! set.

use std::io::Write;

use base64::Engine as _;
use integrity::chain::{rehash_stored, Hash32};
use integrity::checkpoint::{
    check_event_proof, check_proof, verify_signed, InclusionProof, KeySet, ProvenEvent,
    SignedCheckpoint,
};
use schemas::avro::canonical_bytes_version_into;
use schemas::{ChainedEvent, Checkpoint};

use crate::cli::{CheckProofArgs, ProveArgs};
use crate::error::Error;
use crate::one_store::Source;
use crate::verify::load_keys;
use crate::Outcome;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The link hashes of `first ..= last`, recomputed from the events (never the stored hashes),
/// checking that the stored range is complete and links up.
fn recompute_leaves(
    partition: u32,
    first: i64,
    last: i64,
    events: &[ChainedEvent],
) -> Result<Vec<Hash32>, Error> {
    let mut hashes: Vec<Hash32> = Vec::with_capacity(events.len());
    let mut prev_seq = first - 1;
    let mut buf = Vec::with_capacity(1024);
    for ev in events {
        let bad = |what: String| {
            Error::Integrity(format!(
                "partition {partition} seq {}: {what}; run `auditctl verify` for the full report",
                ev.seq
            ))
        };
        if ev.seq == prev_seq && !hashes.is_empty() {
            // A second copy of the same seq (sinks may hold duplicates before merges): it must
            // be the same link.
            let h = rehash_stored(partition, ev, &mut buf).map_err(&bad)?;
            if hashes.last() != Some(&h) {
                return Err(bad("two different records at this seq".into()));
            }
            continue;
        }
        if ev.seq != prev_seq + 1 {
            return Err(Error::Integrity(format!(
                "partition {partition}: seq {} is missing from the store (next stored seq {}); run `auditctl verify`",
                prev_seq + 1,
                ev.seq
            )));
        }
        if let Some(prev) = hashes.last() {
            if ev.prev_hash.as_slice() != prev.as_slice() {
                return Err(bad(
                    "prev_hash does not link to the recomputed hash of the previous seq".into(),
                ));
            }
        }
        hashes.push(rehash_stored(partition, ev, &mut buf).map_err(&bad)?);
        prev_seq = ev.seq;
    }
    if prev_seq != last {
        return Err(Error::Integrity(format!(
            "partition {partition}: the store ends at seq {prev_seq} but the checkpoint covers up to seq {last}"
        )));
    }
    Ok(hashes)
}

/// The smallest checkpoint range covering `seq` (among those valid under `keys`, if given).
fn pick_checkpoint(
    cps: &[Checkpoint],
    seq: i64,
    keys: Option<&KeySet>,
) -> Result<SignedCheckpoint, Vec<String>> {
    let mut why_not = Vec::new();
    let mut best: Option<SignedCheckpoint> = None;
    for cp in cps.iter().filter(|c| c.first_seq <= seq && seq <= c.seq) {
        let signed = match SignedCheckpoint::try_from(cp) {
            Ok(s) => s,
            Err(e) => {
                why_not.push(format!("checkpoint at seq {}: {e}", cp.seq));
                continue;
            }
        };
        if let Some(keys) = keys {
            if let Err(e) = verify_signed(keys, &signed) {
                why_not.push(format!("checkpoint at seq {}: {e}", cp.seq));
                continue;
            }
        }
        let better = best.as_ref().is_none_or(|b| {
            (signed.fields.tree_size(), signed.fields.seq) < (b.fields.tree_size(), b.fields.seq)
        });
        if better {
            best = Some(signed);
        }
    }
    best.ok_or(why_not)
}

pub async fn prove(args: &ProveArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    let keys = args.keys.as_deref().map(load_keys).transpose()?;
    let src = Source::open(args.source, &args.reads, &args.clickhouse, &args.archive)?;
    let id = &args.event_id;
    let locs = src.locate(id, args.partition).await?;
    let Some(&(part, seq)) = locs.first() else {
        return Err(Error::Usage(format!(
            "no event with id {id:?} in {}",
            src.name()
        )));
    };
    if locs.len() > 1 {
        eprintln!(
            "auditctl: warning: event id {id:?} is stored at several places {locs:?}; proving partition {part} seq {seq}"
        );
    }
    let p = u32::try_from(part).map_err(|_| {
        Error::Integrity(format!(
            "event {id:?} is stored with negative partition {part}"
        ))
    })?;
    let cps = src.checkpoints(&[p]).await?;
    let cp = pick_checkpoint(&cps, seq, keys.as_ref()).map_err(|why| {
        let latest = cps.iter().map(|c| c.seq).max();
        let mut msg = format!(
            "no {}checkpoint covers partition {part} seq {seq} (latest checkpoint of the partition ends at {})",
            if keys.is_some() { "valid signed " } else { "" },
            latest.map_or_else(|| "none".to_owned(), |s| format!("seq {s}"))
        );
        for w in why {
            msg.push_str("; ");
            msg.push_str(&w);
        }
        Error::Usage(msg)
    })?;
    let first = i64::try_from(cp.fields.first_seq).unwrap_or(i64::MAX);
    let last = i64::try_from(cp.fields.seq).unwrap_or(i64::MAX);
    let events = src.range(p, first, last).await?;
    let leaves = recompute_leaves(p, first, last, &events)?;
    let target = events.iter().find(|e| e.seq == seq).ok_or_else(|| {
        Error::Integrity(format!("partition {part} seq {seq} vanished while reading"))
    })?;
    let mut canonical = Vec::new();
    canonical_bytes_version_into(&target.event, target.canonical_version, &mut canonical)
        .map_err(|e| Error::Integrity(format!("cannot re-encode event {id:?}: {e}")))?;
    let proven = ProvenEvent {
        prev_hash: hex::encode(&target.prev_hash),
        canonical_version: target.canonical_version,
        canonical: B64.encode(&canonical),
    };
    let seq_u = u64::try_from(seq).unwrap_or(0);
    let proof = InclusionProof::build(&target.event.event_id, seq_u, &leaves, &cp, Some(proven))
        .map_err(|e| {
            Error::Integrity(format!(
                "the stored range {first}..={last} of partition {part} does not match the checkpoint: {e}; run `auditctl verify`"
            ))
        })?;
    if let Some(keys) = &keys {
        check_proof(keys, &proof)
            .map_err(|e| Error::Integrity(format!("the proof just built does not check: {e}")))?;
    }
    let mut json = serde_json::to_string_pretty(&proof)
        .map_err(|e| Error::Integrity(format!("serializing the proof: {e}")))?;
    json.push('\n');
    match &args.out {
        Some(path) => std::fs::write(path, json).map_err(Error::file("writing proof", path))?,
        None => out
            .write_all(json.as_bytes())
            .map_err(Error::file("writing proof to", "<stdout>"))?,
    }
    Ok(Outcome::Ok)
}

/// Why a proof does not check (exit 1), or `Ok` with a one-line description.
///
/// An event id counts as proven only through the event bytes: a proof without them proves a
/// link hash at a (partition, seq), and its `event_id` is a label anyone can change. So it
/// fails unless `hash_only`, and then the output says that the id is not proven.
pub fn check_proof_text(keys: &KeySet, text: &str, hash_only: bool) -> Result<String, String> {
    let proof: InclusionProof =
        serde_json::from_str(text).map_err(|e| format!("not an inclusion proof: {e}"))?;
    let c = &proof.checkpoint;
    let place = format!(
        "partition {} seq {}, in the checkpoint over seq {}..={} signed by key {:?} at time_us {}",
        proof.chain_partition, proof.seq, c.first_seq, c.seq, c.key_id, c.time_us
    );
    if proof.event.is_none() && hash_only {
        check_proof(keys, &proof).map_err(|e| e.to_string())?;
        return Ok(format!(
            "proof OK: event hash {} is {place}; the event id {:?} is NOT proven (the proof carries no event bytes)",
            proof.event_hash, proof.event_id
        ));
    }
    check_event_proof(keys, &proof).map_err(|e| e.to_string())?;
    Ok(format!(
        "proof OK: event content of {:?} is {place}",
        proof.event_id
    ))
}

pub fn check(args: &CheckProofArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    let keys = load_keys(&args.keys)?;
    let text =
        std::fs::read_to_string(&args.proof).map_err(Error::file("reading proof", &args.proof))?;
    let w = |out: &mut dyn Write, s: &str| {
        writeln!(out, "{s}").map_err(Error::file("writing output to", "<stdout>"))
    };
    match check_proof_text(&keys, &text, args.hash_only) {
        Ok(msg) => {
            w(out, &msg)?;
            Ok(Outcome::Ok)
        }
        Err(why) => {
            w(out, &format!("proof FAILED: {why}"))?;
            Ok(Outcome::Findings)
        }
    }
}
