//! Trusted chain heads ("pins"): what an auditor or a witness saw before, as C2SP
//! tlog-checkpoint notes, and the text file that holds several of them.
//!
//! # One pin
//!
//! The chain of one partition is a hash chain today (`audit-chain/v1`): the head at seq `n` is
//! the link hash of record `n`, and it commits to every record before it, just as a Merkle root
//! does. A pin is written as a tlog-checkpoint body whose root line holds that head, marked by
//! an extension line so that no reader mistakes it for an RFC 9162 root:
//!
//! ```text
//! <chain id>/partition/<p>      origin (crate::tlog::partition_origin)
//! <seq>                         tree size = seq of the pinned record (≥ 1)
//! <base64 link hash of seq>     the hash-chain head at that seq, 32 bytes
//! audit-chain/v1 head           extension: "the root line is an audit-chain/v1 head"
//! ```
//!
//! The chainer's own signed checkpoint notes (v3, [`crate::checkpoint`]: the root line is the
//! partition's whole-tree root, the extension line `audit-checkpoint/v3 <first_seq> <b64 head>
//! …` carries the link hash at that seq) are pins too: their head is the one the extension line
//! signs, and the log's Ed25519 signature line comes with them, so anyone with the key set can
//! check the pin without trusting the file ([`Pin::is_log_checkpoint`]). `verify
//! --save-checkpoints` writes those when it has keys, and `auditctl witness` cosigns them.
//! Any other extension is refused rather than misread. Signature lines (a witness's
//! `cosignature/v1`, a log's Ed25519) may follow, as in any signed note; an auditor's own pin has
//! none (its safekeeping is the trust).
//!
//! # The file
//!
//! Paragraphs separated by blank lines: a comment paragraph (first line starts with `# `; a
//! chain id cannot contain a space, so no origin line does), a checkpoint body, or the
//! signature lines (`— ` …) of the body just before it. So each signed entry is a verbatim
//! signed note (body, blank line, signatures) and an unsigned entry is a bare body; entries are
//! separated by a blank line. The format is stable: [`format_file`] writes exactly what
//! [`parse_file`] reads back.

use thiserror::Error;

use crate::checkpoint::CHECKPOINT_EXTENSION_V3;
use crate::note::{Note, NoteError};
use crate::tlog::{parse_partition_origin, partition_origin, Checkpoint, CheckpointError};
use crate::tree::Hash32;

/// The extension line that says "the root line is an `audit-chain/v1` hash-chain head".
pub const HEAD_EXTENSION: &str = "audit-chain/v1 head";

/// The comment written at the top of a pin file.
pub const FILE_HEADER: &str = "# audit chain heads (C2SP tlog-checkpoint notes: the chainer's signed audit-checkpoint/v3 notes, or audit-chain/v1 head pins whose root line is the link hash at that seq); see docs/verification.md";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PinError {
    #[error("entry {entry}: {source}")]
    Checkpoint {
        entry: usize,
        #[source]
        source: CheckpointError,
    },
    #[error("entry {entry}: {source}")]
    Note {
        entry: usize,
        #[source]
        source: NoteError,
    },
    #[error("entry {entry}: origin {origin:?} is not `<chain id>/partition/<p>`")]
    Origin { entry: usize, origin: String },
    #[error("entry {entry}: neither a chain-head pin (extension line `{HEAD_EXTENSION}`) nor the chainer's signed checkpoint (one `{CHECKPOINT_EXTENSION_V3} …` extension line with its head), got {got:?}")]
    NotAHead { entry: usize, got: Vec<String> },
    #[error("entry {entry}: size 0 pins nothing (a pin names a seq ≥ 1)")]
    Empty { entry: usize },
    #[error("paragraph {paragraph}: signature lines without a checkpoint body before them")]
    StraySignatures { paragraph: usize },
    #[error("invalid chain id {0:?} (non-empty, no spaces, no '+')")]
    ChainId(String),
}

/// "Partition `partition` of chain `chain_id` had head `head` at `seq`."
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChainHead {
    pub chain_id: String,
    pub partition: u32,
    pub seq: u64,
    pub head: Hash32,
}

impl ChainHead {
    pub fn origin(&self) -> Result<String, PinError> {
        partition_origin(&self.chain_id, self.partition)
            .map_err(|_| PinError::ChainId(self.chain_id.clone()))
    }

    /// The tlog-checkpoint body (see the module docs).
    pub fn to_checkpoint(&self) -> Result<Checkpoint, PinError> {
        Checkpoint::with_extensions(
            &self.origin()?,
            self.seq,
            self.head,
            vec![HEAD_EXTENSION.to_owned()],
        )
        .map_err(|source| PinError::Checkpoint { entry: 0, source })
    }

    /// Reads a checkpoint body written by [`Self::to_checkpoint`]; `entry` numbers errors.
    pub fn from_checkpoint(cp: &Checkpoint, entry: usize) -> Result<Self, PinError> {
        let (chain_id, partition) =
            parse_partition_origin(cp.origin()).ok_or_else(|| PinError::Origin {
                entry,
                origin: cp.origin().to_owned(),
            })?;
        let not_a_head = || PinError::NotAHead {
            entry,
            got: cp.extensions().to_vec(),
        };
        let head = match cp.extensions() {
            [e] if e == HEAD_EXTENSION => *cp.root(),
            [e] => log_checkpoint_head(e).ok_or_else(not_a_head)?,
            _ => return Err(not_a_head()),
        };
        if cp.size() == 0 {
            return Err(PinError::Empty { entry });
        }
        Ok(ChainHead {
            chain_id: chain_id.to_owned(),
            partition,
            seq: cp.size(),
            head,
        })
    }
}

/// The head hash a v3 checkpoint's extension line signs (`audit-checkpoint/v3 <first_seq>
/// <b64 head> …`, six fields after the tag), or `None` if `ext` is not such a line. Only the
/// shape is read here: whether the note's signature holds is the caller's check with its keys.
fn log_checkpoint_head(ext: &str) -> Option<Hash32> {
    let mut f = ext.split(' ');
    if f.next()? != CHECKPOINT_EXTENSION_V3 {
        return None;
    }
    let fields: Vec<&str> = f.collect();
    if fields.len() != 6 {
        return None;
    }
    crate::b64::decode_hash(fields[1])
}

/// Whether a checkpoint body's extension line is the chainer's v3 line.
fn is_log_body(body: &str) -> bool {
    body.lines()
        .nth(3)
        .is_some_and(|l| l.starts_with(CHECKPOINT_EXTENSION_V3) && log_checkpoint_head(l).is_some())
}

/// One entry of a pin file: the head and the note it came in (with its signature lines, if
/// any, for the caller to verify against the keys it trusts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub head: ChainHead,
    pub note: Note,
}

impl Pin {
    /// An unsigned pin (an auditor's own record).
    pub fn unsigned(head: ChainHead) -> Result<Self, PinError> {
        let body = head.to_checkpoint()?.body();
        let note = Note::new(body).map_err(|source| PinError::Note { entry: 0, source })?;
        Ok(Pin { head, note })
    }

    /// A pin from the chainer's signed v3 checkpoint note (as `SignedCheckpoint::to_note`
    /// writes it, signature line included).
    pub fn from_log_note(text: &str) -> Result<Self, PinError> {
        let note =
            Note::parse(text.as_bytes()).map_err(|source| PinError::Note { entry: 1, source })?;
        let cp = Checkpoint::parse_body(note.text())
            .map_err(|source| PinError::Checkpoint { entry: 1, source })?;
        let head = ChainHead::from_checkpoint(&cp, 1)?;
        if !is_log_body(note.text()) {
            return Err(PinError::NotAHead {
                entry: 1,
                got: cp.extensions().to_vec(),
            });
        }
        Ok(Pin { head, note })
    }

    /// Whether this entry is the chainer's own signed checkpoint (its note signature is the
    /// log's, checked against the key set), rather than a chain-head pin.
    pub fn is_log_checkpoint(&self) -> bool {
        is_log_body(self.note.text())
    }

    /// This entry as it appears in a file: the bare body, or the whole signed note.
    pub fn to_text(&self) -> String {
        if self.note.signatures().is_empty() {
            self.note.text().to_owned()
        } else {
            self.note.to_text()
        }
    }
}

/// Parses a pin file (see the module docs). Entries are numbered from 1 in errors.
pub fn parse_file(text: &str) -> Result<Vec<Pin>, PinError> {
    let mut paragraphs: Vec<Vec<&str>> = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for line in text.split('\n') {
        if line.is_empty() {
            if !cur.is_empty() {
                paragraphs.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(line);
        }
    }
    if !cur.is_empty() {
        paragraphs.push(cur);
    }

    // (body, signature lines) per entry, in file order.
    let mut entries: Vec<(String, Option<String>)> = Vec::new();
    let mut last_was_body = false;
    for (i, para) in paragraphs.iter().enumerate() {
        if para[0].starts_with("# ") || para[0] == "#" {
            last_was_body = false;
        } else if para.iter().all(|l| l.starts_with("— ")) {
            match entries.last_mut() {
                Some((_, sigs @ None)) if last_was_body => {
                    *sigs = Some(para.iter().map(|l| format!("{l}\n")).collect());
                }
                _ => return Err(PinError::StraySignatures { paragraph: i + 1 }),
            }
            last_was_body = false;
        } else {
            entries.push((para.iter().map(|l| format!("{l}\n")).collect(), None));
            last_was_body = true;
        }
    }

    entries
        .into_iter()
        .enumerate()
        .map(|(i, (body, sigs))| {
            let entry = i + 1;
            let note = match sigs {
                Some(sigs) => Note::parse(format!("{body}\n{sigs}").as_bytes()),
                None => Note::new(body),
            }
            .map_err(|source| PinError::Note { entry, source })?;
            let cp = Checkpoint::parse_body(note.text())
                .map_err(|source| PinError::Checkpoint { entry, source })?;
            Ok(Pin {
                head: ChainHead::from_checkpoint(&cp, entry)?,
                note,
            })
        })
        .collect()
}

/// Writes pins in the file format: the header comment, then one entry per pin.
pub fn format_file(pins: &[Pin]) -> String {
    let mut s = format!("{FILE_HEADER}\n");
    for p in pins {
        s.push('\n');
        s.push_str(&p.to_text());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cosignature;
    use crate::note::{KeyType, Signer};

    fn head(p: u32, seq: u64, b: u8) -> ChainHead {
        ChainHead {
            chain_id: "acme.example/audit".into(),
            partition: p,
            seq,
            head: [b; 32],
        }
    }

    #[test]
    fn one_pin_is_a_tlog_checkpoint_body_with_the_head_extension() {
        let pin = Pin::unsigned(head(3, 250, 0xab)).unwrap();
        assert_eq!(
            pin.to_text(),
            format!(
                "acme.example/audit/partition/3\n250\n{}\naudit-chain/v1 head\n",
                crate::b64::encode(&[0xab; 32])
            )
        );
    }

    #[test]
    fn files_round_trip_with_and_without_signatures() {
        let (w, _) = Signer::generate("witness.example/w1", KeyType::CosignatureV1).unwrap();
        let mut signed = Pin::unsigned(head(1, 7, 1)).unwrap();
        let sig = cosignature::cosign(&w, signed.note.text(), 1_700_000_000).unwrap();
        signed.note.add_signature(sig).unwrap();
        let pins = vec![
            Pin::unsigned(head(0, 300, 9)).unwrap(),
            signed.clone(),
            Pin::unsigned(head(2, 1, 4)).unwrap(),
        ];
        let text = format_file(&pins);
        assert!(text.starts_with("# audit chain heads"));
        let back = parse_file(&text).unwrap();
        assert_eq!(back, pins);
        assert_eq!(format_file(&back), text, "one text per meaning");
        // The signed entry is a verbatim signed note whose cosignature verifies.
        let v = back[1].note.verify(&[w.verifier_key().clone()]).unwrap();
        assert_eq!(v.verified[0].timestamp, Some(1_700_000_000));
        // Extra blank lines and no header are fine.
        let loose = format!("\n\n{}\n\n\n{}", pins[0].to_text(), pins[2].to_text());
        assert_eq!(
            parse_file(&loose).unwrap(),
            vec![pins[0].clone(), pins[2].clone()]
        );
        assert_eq!(parse_file("").unwrap(), vec![]);
    }

    #[test]
    fn refuses_what_is_not_a_chain_head_pin() {
        let root = crate::b64::encode(&[7; 32]);
        let cases = [
            // A Merkle-root checkpoint (no extension): not a chain head.
            format!("c/partition/0\n5\n{root}\n"),
            format!("c/partition/0\n5\n{root}\nother ext\n"),
            format!("c/partition/0\n5\n{root}\naudit-chain/v1 head\nmore\n"),
            // Not our origin naming.
            format!("example.com/log\n5\n{root}\naudit-chain/v1 head\n"),
            format!("c/partition/x\n5\n{root}\naudit-chain/v1 head\n"),
            // Size 0, a bad size, a bad root.
            format!("c/partition/0\n0\n{root}\naudit-chain/v1 head\n"),
            format!("c/partition/0\n05\n{root}\naudit-chain/v1 head\n"),
            "c/partition/0\n5\nnot-base64\naudit-chain/v1 head\n".to_string(),
            // Signature lines with no body, or twice for one body, or malformed.
            "— w AAAA\n".to_string(),
            format!(
                "c/partition/0\n5\n{root}\naudit-chain/v1 head\n\n— w AAAAAAAA\n\n— w AAAAAAAA\n"
            ),
            format!("c/partition/0\n5\n{root}\naudit-chain/v1 head\n\n— w not!base64\n"),
        ];
        for bad in &cases {
            assert!(parse_file(bad).is_err(), "accepted {bad:?}");
        }
        let e = parse_file(&cases[0]).unwrap_err();
        assert!(matches!(e, PinError::NotAHead { entry: 1, .. }), "{e}");
        let stray = "# c\n\n— w AAAA\n";
        assert_eq!(
            parse_file(stray),
            Err(PinError::StraySignatures { paragraph: 2 })
        );
        assert!(Pin::unsigned(ChainHead {
            chain_id: "has space".into(),
            partition: 0,
            seq: 1,
            head: [0; 32],
        })
        .is_err());
    }

    #[test]
    fn the_chainers_signed_v3_notes_are_pins_of_the_head_they_sign() {
        use crate::checkpoint::{generate_pkcs8, sign_fields, CheckpointFields, SigningKey};
        let key = SigningKey::from_pkcs8("k1", generate_pkcs8().unwrap().expose()).unwrap();
        let fields = CheckpointFields {
            chain_id: "acme.example/audit".into(),
            partition: 2,
            first_seq: 5,
            seq: 9,
            head_hash: [0x11; 32],
            merkle_root: [0x22; 32],
            time_us: 1_700_000_000_000_000,
            partition_count: 4,
            tree_root: Some([0x33; 32]),
        };
        let cp = sign_fields(&key, &fields).unwrap();
        let text = cp.to_note(key.public_key()).unwrap();
        let pin = Pin::from_log_note(&text).unwrap();
        // The head is the link hash the extension line signs, not the tree root.
        assert_eq!(
            pin.head,
            ChainHead {
                chain_id: "acme.example/audit".into(),
                partition: 2,
                seq: 9,
                head: [0x11; 32],
            }
        );
        assert!(pin.is_log_checkpoint());
        assert_eq!(pin.to_text(), text);
        let plain = Pin::unsigned(head(3, 7, 0x44)).unwrap();
        assert!(!plain.is_log_checkpoint());
        // A file mixing both kinds reads back as written.
        let file = format_file(&[pin.clone(), plain.clone()]);
        assert_eq!(parse_file(&file).unwrap(), vec![pin, plain]);
        // A v3 extension line of the wrong shape is not a pin.
        let bad = text.replacen(" 5 ", " 5 x ", 1);
        assert!(matches!(
            Pin::from_log_note(&bad),
            Err(PinError::NotAHead { .. }) | Err(PinError::Note { .. })
        ));
        // Genesis (size 0) pins nothing.
        let genesis = sign_fields(
            &key,
            &CheckpointFields::genesis_of(
                crate::chain::ChainRule::V2,
                "acme.example/audit",
                2,
                1,
                4,
            ),
        )
        .unwrap();
        assert!(matches!(
            Pin::from_log_note(&genesis.to_note(key.public_key()).unwrap()),
            Err(PinError::Empty { .. })
        ));
    }
}
