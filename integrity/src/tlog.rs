//! Checkpoints: C2SP tlog-checkpoint (c2sp.org/tlog-checkpoint, v1.0.0) signed notes.
//!
//! The note text is at least three non-empty lines:
//!
//! ```text
//! <origin>                      unique log identity
//! <tree size>                   ASCII decimal, no leading zeroes ("0" for the empty tree)
//! <root hash>                   base64 of the RFC 6962 root at that size
//! [<extension line>]...         optional, opaque, non-empty (NOT RECOMMENDED by the spec)
//! ```
//!
//! followed by the blank line and the signature lines of a signed note ([`crate::note`]).
//!
//! **Our mapping.** Each partition of a chain is one log: origin `<chain id>/partition/<p>`
//! (see [`partition_origin`]), tree size = the seq of the newest record covered (leaf `i` is the
//! link hash of seq `i + 1`), root = the RFC 9162 root of the partition's whole tree. The log's
//! key name is the origin (the spec's SHOULD), so a verifier holding a raw Ed25519 public key
//! derives the vkey for each partition ([`log_key`]); a checkpoint is only accepted for the
//! origin the caller expected, so one partition's checkpoint cannot stand in for another's.
//!
//! Parsing is strict: a size with a sign, leading zero, space or overflow, a root that is not
//! the canonical base64 of 32 bytes, empty lines, or an origin with leading/trailing
//! whitespace are errors, so each checkpoint has exactly one text.

use thiserror::Error;

use crate::b64;
use crate::note::{KeyType, Note, NoteError, Signer, Verified, VerifierKey};
use crate::tree::Hash32;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckpointError {
    #[error(
        "checkpoint text needs origin, size and root lines, each non-empty and newline-terminated"
    )]
    Shape,
    #[error("invalid origin line {0:?}")]
    BadOrigin(String),
    #[error("invalid tree size line {0:?} (ASCII decimal, no sign, no leading zeroes)")]
    BadSize(String),
    #[error("invalid root hash line {0:?} (canonical base64 of 32 bytes)")]
    BadRoot(String),
    #[error("invalid extension line {0:?}")]
    BadExtension(String),
    #[error("invalid chain id {0:?} for an origin (non-empty, no spaces, no '+')")]
    BadChainId(String),
    #[error("checkpoint is for origin {got:?}, expected {expected:?}")]
    OriginMismatch { expected: String, got: String },
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// A tree head: origin, size and root (plus rarely used extension lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    origin: String,
    size: u64,
    root: Hash32,
    extensions: Vec<String>,
}

fn valid_origin(origin: &str) -> bool {
    !origin.is_empty()
        && origin.trim() == origin
        && !origin.contains('\n')
        && !origin.bytes().any(|b| b < 0x20)
}

/// Strict ASCII decimal: digits only, no leading zero except "0" itself, fits in u64.
pub fn parse_decimal(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

impl Checkpoint {
    pub fn new(origin: &str, size: u64, root: Hash32) -> Result<Self, CheckpointError> {
        Self::with_extensions(origin, size, root, Vec::new())
    }

    pub fn with_extensions(
        origin: &str,
        size: u64,
        root: Hash32,
        extensions: Vec<String>,
    ) -> Result<Self, CheckpointError> {
        if !valid_origin(origin) {
            return Err(CheckpointError::BadOrigin(origin.to_owned()));
        }
        if let Some(bad) = extensions
            .iter()
            .find(|e| e.is_empty() || e.bytes().any(|b| b < 0x20))
        {
            return Err(CheckpointError::BadExtension(bad.clone()));
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn root(&self) -> &Hash32 {
        &self.root
    }

    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }

    /// The note text (what is signed and cosigned).
    pub fn body(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            b64::encode(&self.root)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses a note text (strictly; see the module docs).
    pub fn parse_body(text: &str) -> Result<Self, CheckpointError> {
        let lines: Vec<&str> = text
            .strip_suffix('\n')
            .ok_or(CheckpointError::Shape)?
            .split('\n')
            .collect();
        if lines.len() < 3 || lines.iter().any(|l| l.is_empty()) {
            return Err(CheckpointError::Shape);
        }
        let size =
            parse_decimal(lines[1]).ok_or_else(|| CheckpointError::BadSize(lines[1].into()))?;
        let root =
            b64::decode_hash(lines[2]).ok_or_else(|| CheckpointError::BadRoot(lines[2].into()))?;
        let extensions = lines[3..].iter().map(|l| l.to_string()).collect();
        Self::with_extensions(lines[0], size, root, extensions)
    }

    /// A signed note of this checkpoint by the log's `signer` (type 0x01).
    pub fn sign(&self, signer: &Signer) -> Result<Note, CheckpointError> {
        let mut note = Note::new(self.body())?;
        note.sign(signer)?;
        Ok(note)
    }

    /// Parses and verifies a signed checkpoint: at least one signature by a `trusted` key
    /// (others ignored), a well-formed body, and the `expected_origin`.
    pub fn open(
        msg: &[u8],
        expected_origin: &str,
        trusted: &[VerifierKey],
    ) -> Result<SignedCheckpoint, CheckpointError> {
        let note = Note::parse(msg)?;
        let verified = note.verify(trusted)?;
        let checkpoint = Checkpoint::parse_body(note.text())?;
        if checkpoint.origin != expected_origin {
            return Err(CheckpointError::OriginMismatch {
                expected: expected_origin.to_owned(),
                got: checkpoint.origin,
            });
        }
        Ok(SignedCheckpoint {
            checkpoint,
            note,
            verified,
        })
    }
}

/// A checkpoint whose signature by a trusted key has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    /// The whole note (all signature lines, e.g. to add or check witness cosignatures).
    pub note: Note,
    pub verified: Verified,
}

/// Our origin for one partition of a chain: `<chain id>/partition/<p>`.
///
/// The chain id must be a valid note key name (non-empty, no Unicode space, no '+'), since the
/// origin is also the log's key name.
pub fn partition_origin(chain_id: &str, partition: u32) -> Result<String, CheckpointError> {
    if !crate::note::is_valid_key_name(chain_id) {
        return Err(CheckpointError::BadChainId(chain_id.to_owned()));
    }
    Ok(format!("{chain_id}/partition/{partition}"))
}

/// The (chain id, partition) of an origin made by [`partition_origin`], if it is one.
pub fn parse_partition_origin(origin: &str) -> Option<(&str, u32)> {
    let (chain, p) = origin.rsplit_once("/partition/")?;
    let p = u32::try_from(parse_decimal(p)?).ok()?;
    crate::note::is_valid_key_name(chain).then_some((chain, p))
}

/// The vkey of a log's raw Ed25519 public key for one origin (key name = origin).
pub fn log_key(origin: &str, public_key: [u8; 32]) -> Result<VerifierKey, CheckpointError> {
    Ok(VerifierKey::new(origin, KeyType::Ed25519, public_key)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cosignature;

    const SPEC_BODY: &str =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

    fn log(origin: &str) -> Signer {
        Signer::generate(origin, KeyType::Ed25519).unwrap().0
    }

    #[test]
    fn spec_example_body_round_trips() {
        let c = Checkpoint::parse_body(SPEC_BODY).unwrap();
        assert_eq!(c.origin(), "example.com/behind-the-sofa");
        assert_eq!(c.size(), 20852163);
        assert_eq!(c.body(), SPEC_BODY);
        let ext = format!("{SPEC_BODY}ext one\n");
        let c = Checkpoint::parse_body(&ext).unwrap();
        assert_eq!(c.extensions(), ["ext one"]);
        assert_eq!(c.body(), ext);
    }

    #[test]
    fn strict_parsing() {
        let root = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=";
        for bad in [
            format!("o\n1\n{root}"),
            "o\n1\n".to_string(),
            format!("o\n\n{root}\n"),
            format!("\n1\n{root}\n"),
            format!(" o\n1\n{root}\n"),
            format!("o \n1\n{root}\n"),
            format!("o\n01\n{root}\n"),
            format!("o\n+1\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n 1\n{root}\n"),
            format!("o\n1 \n{root}\n"),
            format!("o\n1e3\n{root}\n"),
            format!("o\n18446744073709551616\n{root}\n"),
            format!("o\n1\n{root} \n"),
            format!("o\n1\n{}\n", root.trim_end_matches('=')),
            format!("o\n1\n{}\n", root.replace("2I=", "2J=")),
            format!("o\n1\n{}\n", b64::encode(&[0u8; 31])),
            format!("o\n1\n{root}\n\n"),
            format!("o\n1\n{root}\next\n\n"),
        ] {
            assert!(Checkpoint::parse_body(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_decimal("0"), Some(0));
        assert_eq!(parse_decimal("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal("00"), None);
        assert_eq!(parse_decimal(""), None);
        assert_eq!(parse_decimal("١"), None, "non-ASCII digits");
    }

    #[test]
    fn origins_name_chain_and_partition() {
        let o = partition_origin("acme.example/audit", 7).unwrap();
        assert_eq!(o, "acme.example/audit/partition/7");
        assert_eq!(parse_partition_origin(&o), Some(("acme.example/audit", 7)));
        assert_eq!(parse_partition_origin("x/partition/07"), None);
        assert_eq!(parse_partition_origin("x/partition/"), None);
        assert_eq!(parse_partition_origin("x/partition/4294967296"), None);
        assert_eq!(parse_partition_origin("a b/partition/1"), None);
        assert!(partition_origin("a+b", 1).is_err());
        assert!(partition_origin("", 1).is_err());
    }

    #[test]
    fn sign_open_and_refuse_what_does_not_match() {
        let origin = partition_origin("chain-1", 0).unwrap();
        let signer = log(&origin);
        let pk = *signer.verifier_key().public_key();
        let key = log_key(&origin, pk).unwrap();
        assert_eq!(&key, signer.verifier_key());
        let cp = Checkpoint::new(&origin, 42, [9; 32]).unwrap();
        let msg = cp.sign(&signer).unwrap().to_text();

        let opened = Checkpoint::open(msg.as_bytes(), &origin, std::slice::from_ref(&key)).unwrap();
        assert_eq!(opened.checkpoint, cp);

        // Another partition's checkpoint, signed by the same raw key, is not this partition's.
        let other = partition_origin("chain-1", 1).unwrap();
        let other_signer = Signer::from_seed(&other, KeyType::Ed25519, &[1; 32]).unwrap();
        let other_msg = Checkpoint::new(&other, 42, [9; 32])
            .unwrap()
            .sign(&other_signer)
            .unwrap()
            .to_text();
        let both = [key.clone(), other_signer.verifier_key().clone()];
        assert!(matches!(
            Checkpoint::open(other_msg.as_bytes(), &origin, &both),
            Err(CheckpointError::OriginMismatch { .. })
        ));
        // Unsigned by a trusted key.
        let stranger = log(&origin);
        assert_eq!(
            Checkpoint::open(msg.as_bytes(), &origin, &[stranger.verifier_key().clone()]),
            Err(CheckpointError::Note(NoteError::NoTrustedSignature))
        );
        // Edited size.
        let forged = msg.replace("\n42\n", "\n43\n");
        assert!(matches!(
            Checkpoint::open(forged.as_bytes(), &origin, std::slice::from_ref(&key)),
            Err(CheckpointError::Note(NoteError::InvalidSignature { .. }))
        ));
        // A witness cosignature can be added and coexists with the log signature.
        let (w, _) = Signer::generate("witness.example/w", KeyType::CosignatureV1).unwrap();
        let mut note = opened.note.clone();
        note.add_signature(cosignature::cosign(&w, note.text(), 1_700_000_000).unwrap())
            .unwrap();
        let again = Checkpoint::open(note.to_text().as_bytes(), &origin, &[key]).unwrap();
        assert_eq!(again.verified.unverified.len(), 1);
        let witnessed = note.verify(&[w.verifier_key().clone()]).unwrap();
        assert_eq!(witnessed.verified[0].timestamp, Some(1_700_000_000));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bodies_round_trip(
            origin in "[a-z0-9./-]{1,30}",
            size in any::<u64>(),
            root in any::<[u8; 32]>(),
            exts in prop::collection::vec("[ -~]{1,20}", 0..3),
        ) {
            prop_assume!(origin.trim() == origin);
            let c = Checkpoint::with_extensions(&origin, size, root, exts).unwrap();
            prop_assert_eq!(Checkpoint::parse_body(&c.body()).unwrap(), c);
        }

        #[test]
        fn arbitrary_bodies_never_panic(s in "[ -~\n]{0,120}") {
            if let Ok(c) = Checkpoint::parse_body(&s) {
                // Whatever parses is canonical: it prints back to the same text.
                prop_assert_eq!(c.body(), s.clone());
            }
            let _ = parse_partition_origin(&s);
        }
    }
}
