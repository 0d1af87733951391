//! Why a checkpoint, key or key set was refused.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckpointError {
    /// A field is out of range or has the wrong length: the checkpoint cannot even be checked.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    #[error("checkpoint signed with unknown key id {key_id:?}")]
    UnknownKey { key_id: String },
    /// Correctly signed, but at a time the key was not valid for (retired or not yet active).
    #[error(
        "key {key_id:?} is not valid at time_us {time_us} (valid from {not_before_us} until {})",
        not_after_us.map_or_else(|| "no end".to_owned(), |t| t.to_string())
    )]
    KeyNotValidAt {
        key_id: String,
        time_us: i64,
        not_before_us: i64,
        not_after_us: Option<i64>,
    },
    #[error("bad signature on checkpoint (key {key_id:?}): the signed fields were altered or the signature is forged")]
    BadSignature { key_id: String },
    /// Never carries key material, only where it came from and why it was refused.
    #[error("signing key: {0}")]
    InvalidKey(String),
    #[error("key set: {0}")]
    InvalidKeySet(String),
}

pub(super) fn malformed(msg: impl Into<String>) -> CheckpointError {
    CheckpointError::Malformed(msg.into())
}
