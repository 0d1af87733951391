//! `auditctl tlog-witness`: a witness in the C2SP tlog-witness sense over the chainer's own
//! whole-tree (v3) checkpoints, with no store access.
//!
//! `auditctl witness` re-reads the whole store to cosign link-hash heads. This one needs only
//! what a transparency-log witness gets: an `add-checkpoint` request (old size, RFC 9162
//! consistency proof, the new signed checkpoint note), made from a consistency document by
//! `tlog-witness request`. The witness cosigns only if the note is genuinely signed by a key of
//! the key set for its origin (`<chain id>/partition/<p>`, within the key's validity window) and
//! the proof shows it extends the head it cosigned before (`integrity::witness`). Anyone with
//! write access to the stores can then neither roll a partition back below, nor fork it from,
//! a size the witness cosigned: the witness refuses, names why, and keeps its state.
//!
//! State directory: the same cosigning key files as `auditctl witness` (`witness.key`,
//! `witness.vkey`; one witness identity per directory), the lock file that serialises runs on
//! the directory, and `tlog-witness.json`, the last cosigned head per origin
//! (`integrity::witness::WitnessState`). The state is written atomically *before* the
//! cosignature is printed (the spec's persistence rule), and a refusal leaves it byte for byte
//! unchanged.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use integrity::b64;
use integrity::note::{Note, VerifierKey};
use integrity::tlog::{log_key, parse_partition_origin};
use integrity::witness::{AddCheckpointRequest, Witness, WitnessError, WitnessState};
use serde::Serialize;

use crate::anchors::write_atomic;
use crate::consistency::{check_document, open_note, ConsistencyDocument};
use crate::error::Error;
use crate::verify::load_keys;
use crate::witness::{load_or_create_key, Lock, VKEY_FILE};
use crate::Outcome;

/// The per-origin cosigned heads (JSON of [`WitnessState`]).
pub const STATE_FILE: &str = "tlog-witness.json";
/// The same lock file name as `auditctl witness`: both roles serialise on one directory.

// ---- arguments ----------------------------------------------------------------------------------

#[derive(Debug, Clone, Args)]
pub struct TlogWitnessArgs {
    #[command(subcommand)]
    pub command: TlogWitnessCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TlogWitnessCommand {
    /// Turn a consistency document (`auditctl consistency`) into a tlog-witness add-checkpoint
    /// request body: `old <size>`, the proof lines, a blank line, the NEW signed note.
    Request(RequestArgs),
    /// Cosign the request's checkpoint if it extends the head cosigned before; print the
    /// cosignature line (exit 0) or the refusal and its reason (exit 1, state unchanged).
    AddCheckpoint(AddCheckpointArgs),
    /// The witness's verifier key and, per origin, the cosigned size and root.
    Status(StatusArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RequestArgs {
    /// The consistency document (`-` = stdin).
    pub document: PathBuf,
    /// Check the document offline with this key set first (as `check-consistency` does).
    #[arg(long, env = "AUDIT_KEYSET")]
    pub keys: Option<PathBuf>,
    /// Write the request here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct AddCheckpointArgs {
    /// The request body (`-` = stdin).
    #[arg(default_value = "-")]
    pub request: PathBuf,
    /// The witness's state directory (created if missing).
    #[arg(long, env = "AUDITCTL_WITNESS_STATE")]
    pub state: PathBuf,
    /// Public key set (JSON): the log keys trusted for every `<chain id>/partition/<p>` origin.
    #[arg(long, env = "AUDIT_KEYSET")]
    pub keys: PathBuf,
    /// Only follow logs of this chain id (other origins are unknown logs).
    #[arg(long, env = "AUDIT_CHAIN_ID")]
    pub chain_id: Option<String>,
    /// Name of the witness key, made on the first run (a note key name: no spaces, no '+').
    #[arg(
        long,
        env = "AUDITCTL_WITNESS_NAME",
        default_value = "auditctl-witness"
    )]
    pub name: String,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The witness's state directory.
    #[arg(long, env = "AUDITCTL_WITNESS_STATE")]
    pub state: PathBuf,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: &TlogWitnessArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    match &args.command {
        TlogWitnessCommand::Request(a) => request(a, out),
        TlogWitnessCommand::AddCheckpoint(a) => add_checkpoint(a, out),
        TlogWitnessCommand::Status(a) => status(a, out),
    }
}

// ---- request ------------------------------------------------------------------------------------

/// The add-checkpoint request for a consistency document: from the old size, with its proof,
/// to the new note (the witness holds the old head; it is not sent).
pub fn request_from_document(doc: &ConsistencyDocument) -> AddCheckpointRequest {
    AddCheckpointRequest {
        old_size: doc.old.size,
        proof: doc.proof.iter().map(|h| h.0).collect(),
        checkpoint: doc.new.note.clone(),
    }
}

fn read_input(path: &Path) -> Result<Vec<u8>, Error> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(Error::file("reading", "<stdin>"))?;
        return Ok(buf);
    }
    std::fs::read(path).map_err(Error::file("reading", path))
}

fn request(args: &RequestArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    let bytes = read_input(&args.document)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::Usage(format!("{}: not UTF-8", args.document.display())))?;
    if let Some(keys) = &args.keys {
        let keys = load_keys(keys)?;
        if let Err(why) = check_document(&keys, &text, None) {
            writeln!(out, "consistency FAILED: {why}")
                .map_err(Error::file("writing output to", "<stdout>"))?;
            return Ok(Outcome::Findings);
        }
    }
    let doc: ConsistencyDocument = serde_json::from_str(&text).map_err(|e| {
        Error::Usage(format!(
            "{}: not a consistency document: {e}",
            args.document.display()
        ))
    })?;
    let body = request_from_document(&doc).to_text();
    match &args.out {
        Some(p) => std::fs::write(p, &body).map_err(Error::file("writing", p))?,
        None => out
            .write_all(body.as_bytes())
            .map_err(Error::file("writing to", "<stdout>"))?,
    }
    Ok(Outcome::Ok)
}

// ---- add-checkpoint -----------------------------------------------------------------------------

/// Why a request was refused, with the tlog-witness HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: &'static str,
    pub status: u16,
    pub reason: String,
    /// The witness's cosigned size, for a conflict or a rollback (what tlog-witness returns
    /// as `text/x.tlog.size` so that the client can retry from it).
    pub cosigned_size: Option<u64>,
}

impl Refusal {
    fn new(kind: &'static str, status: u16, reason: impl Into<String>) -> Self {
        Refusal {
            kind,
            status,
            reason: reason.into(),
            cosigned_size: None,
        }
    }

    fn from_witness(e: WitnessError) -> Self {
        let (kind, status, size) = match &e {
            WitnessError::UnknownOrigin(_) => ("unknown_origin", 404, None),
            WitnessError::Signature(_) => ("untrusted_checkpoint", 403, None),
            WitnessError::Checkpoint(_) | WitnessError::BadRequest(_) => ("bad_request", 400, None),
            WitnessError::OldSizeTooLarge { .. } => ("bad_request", 400, None),
            WitnessError::Rollback { stored, .. } => ("rollback", 409, Some(*stored)),
            WitnessError::Conflict { stored, .. } => ("conflict", 409, Some(*stored)),
            WitnessError::Fork { .. } => ("fork", 409, None),
            WitnessError::Inconsistent(_) => ("inconsistent_proof", 422, None),
            WitnessError::Cosign(_) | WitnessError::WrongKeyType(_) => ("witness_error", 500, None),
        };
        Refusal {
            kind,
            status,
            reason: e.to_string(),
            cosigned_size: size,
        }
    }
}

/// The log key to trust for the request's checkpoint: its origin must be a partition of the
/// followed chain, and the note must open with the key its extension line names (in the key
/// set, valid at its signed time: a retired key cannot be used to get a cosignature).
fn log_key_for(
    keys: &integrity::checkpoint::KeySet,
    chain_id: Option<&str>,
    checkpoint: &str,
) -> Result<(String, VerifierKey), Refusal> {
    let note = Note::parse(checkpoint.as_bytes()).map_err(|e| {
        Refusal::new(
            "untrusted_checkpoint",
            403,
            format!("not a signed note: {e}"),
        )
    })?;
    let origin = note
        .text()
        .split('\n')
        .next()
        .unwrap_or_default()
        .to_owned();
    let unknown = || Refusal::from_witness(WitnessError::UnknownOrigin(origin.clone()));
    let (cid, _) = parse_partition_origin(&origin).ok_or_else(unknown)?;
    if chain_id.is_some_and(|want| want != cid) {
        return Err(unknown());
    }
    let cp = open_note(keys, &origin, checkpoint).map_err(|why| {
        Refusal::new(
            "untrusted_checkpoint",
            403,
            format!("checkpoint signature: {why}"),
        )
    })?;
    let pk = keys.public_key(&cp.key_id).ok_or_else(|| {
        Refusal::new(
            "untrusted_checkpoint",
            403,
            format!("key {:?} is not in the key set", cp.key_id),
        )
    })?;
    let vkey = log_key(&origin, pk)
        .map_err(|e| Refusal::new("untrusted_checkpoint", 403, e.to_string()))?;
    Ok((origin, vkey))
}

fn add_checkpoint(args: &AddCheckpointArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    let keys = load_keys(&args.keys)?;
    let body = read_input(&args.request)?;
    let dir = &args.state;
    std::fs::create_dir_all(dir).map_err(Error::file("creating", dir))?;
    let _lock = Lock::take(dir)?;
    let signer = load_or_create_key(dir, &args.name)?;
    let state = load_state(dir)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);

    let result = AddCheckpointRequest::parse(&body)
        .map_err(Refusal::from_witness)
        .and_then(|req| log_key_for(&keys, args.chain_id.as_deref(), &req.checkpoint))
        .and_then(|(origin, vkey)| {
            let mut w = Witness::new(signer).map_err(Refusal::from_witness)?;
            w.restore(state);
            w.add_log(&origin, vec![vkey]);
            let sig = w
                .handle_request(&body, now)
                .map_err(Refusal::from_witness)?;
            Ok((sig, w.state().clone()))
        });
    let w = |e: std::io::Error| Error::file("writing output to", "<stdout>")(e);
    match result {
        Ok((sig, new_state)) => {
            // Persist before publishing: a printed cosignature is always one the state holds.
            let json = serde_json::to_string_pretty(&new_state)
                .map_err(|e| Error::Integrity(format!("serializing the witness state: {e}")))?;
            write_atomic(&dir.join(STATE_FILE), format!("{json}\n").as_bytes())?;
            out.write_all(sig.line().as_bytes()).map_err(w)?;
            Ok(Outcome::Ok)
        }
        Err(r) => {
            writeln!(out, "REFUSED ({} {}): {}", r.status, r.kind, r.reason).map_err(w)?;
            if let Some(size) = r.cosigned_size {
                writeln!(out, "cosigned size: {size}").map_err(w)?;
            }
            Ok(Outcome::Findings)
        }
    }
}

// ---- status -------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct StatusLine {
    origin: String,
    size: u64,
    root: String,
}

#[derive(Debug, Serialize)]
struct Status {
    witness: Option<String>,
    logs: Vec<StatusLine>,
}

fn status(args: &StatusArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    let dir = &args.state;
    let vkey_path = dir.join(VKEY_FILE);
    let witness = if vkey_path.exists() {
        Some(
            std::fs::read_to_string(&vkey_path)
                .map_err(Error::file("reading", &vkey_path))?
                .trim()
                .to_owned(),
        )
    } else {
        None
    };
    let st = Status {
        witness,
        logs: load_state(dir)?
            .into_iter()
            .map(|(origin, h)| StatusLine {
                origin,
                size: h.size,
                root: b64::encode(&h.root),
            })
            .collect(),
    };
    let w = |e: std::io::Error| Error::file("writing output to", "<stdout>")(e);
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &st).map_err(|e| w(std::io::Error::from(e)))?;
        writeln!(out).map_err(w)?;
        return Ok(Outcome::Ok);
    }
    writeln!(
        out,
        "witness {} (state {})",
        st.witness.as_deref().unwrap_or("<no key yet>"),
        dir.display()
    )
    .map_err(w)?;
    if st.logs.is_empty() {
        writeln!(out, "  nothing cosigned yet").map_err(w)?;
    }
    for l in &st.logs {
        writeln!(
            out,
            "  {}: cosigned size {} root {}",
            l.origin, l.size, l.root
        )
        .map_err(w)?;
    }
    Ok(Outcome::Ok)
}

// ---- state directory ----------------------------------------------------------------------------

fn load_state(dir: &Path) -> Result<WitnessState, Error> {
    let path = dir.join(STATE_FILE);
    if !path.exists() {
        return Ok(WitnessState::new());
    }
    let text = std::fs::read_to_string(&path).map_err(Error::file("reading", &path))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Integrity(format!("witness state {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use integrity::b64::B64Hash;

    #[test]
    fn a_request_from_a_document_is_old_size_proof_and_the_new_note() {
        let note = "o/partition/0\n7\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n— o/partition/0 AAAA\n";
        let head = |size, note: &str| crate::consistency::TreeHead {
            size,
            root: B64Hash([0; 32]),
            note: note.to_owned(),
        };
        let doc = ConsistencyDocument {
            origin: "o/partition/0".into(),
            old: head(3, "old note"),
            new: head(7, note),
            proof: vec![B64Hash([1; 32]), B64Hash([2; 32])],
        };
        let req = request_from_document(&doc);
        let text = req.to_text();
        assert!(text.starts_with("old 3\n"), "{text}");
        assert!(text.ends_with(&format!("\n\n{note}")), "{text}");
        let back = AddCheckpointRequest::parse(text.as_bytes()).expect("parses");
        assert_eq!(back, req);
        assert_eq!(back.proof, vec![[1; 32], [2; 32]]);
    }

    #[test]
    fn conflicts_and_rollbacks_carry_the_cosigned_size() {
        let r = Refusal::from_witness(WitnessError::Conflict {
            claimed: 5,
            stored: 40,
        });
        assert_eq!(
            (r.kind, r.status, r.cosigned_size),
            ("conflict", 409, Some(40))
        );
        let r = Refusal::from_witness(WitnessError::Rollback {
            stored: 40,
            got: 13,
        });
        assert_eq!((r.kind, r.cosigned_size), ("rollback", Some(40)));
        let r = Refusal::from_witness(WitnessError::Fork { size: 40 });
        assert_eq!((r.kind, r.cosigned_size), ("fork", None));
    }
}
