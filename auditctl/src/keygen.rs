//! `auditctl keygen`: a new Ed25519 checkpoint signing key, and its public half in the key set.
//!
//! Rotation keeps every old key (old checkpoints must verify forever) and closes the window of
//! each key that is still open at the new key's `not_before`, so a retired key can no longer
//! sign checkpoints that would be accepted as newer.

use std::io::Write;
use std::path::Path;

use integrity::checkpoint::{generate_pkcs8, KeySet, PublicKeyEntry, SigningKey};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::cli::KeygenArgs;
use crate::error::Error;

/// What keygen did, printed as JSON on stdout (public information only).
#[derive(Debug, Clone, Serialize)]
pub struct KeygenOutput {
    pub key_id: String,
    pub private_key_file: String,
    pub public_key: PublicKeyEntry,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyset_file: Option<String>,
    /// Keys whose window was closed at the new key's not_before.
    pub retired: Vec<String>,
}

/// `now`, an integer (µs since the epoch) or RFC 3339.
pub fn parse_time_us(s: &str) -> Result<i64, Error> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("now") {
        return Ok(now_us());
    }
    if let Ok(us) = s.parse::<i64>() {
        return Ok(us);
    }
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
        Error::Usage(format!(
            "--not-before {s:?}: expected `now`, microseconds since the epoch or RFC 3339 ({e})"
        ))
    })?;
    i64::try_from(t.unix_timestamp_nanos() / 1000)
        .map_err(|_| Error::Usage(format!("--not-before {s:?} is out of range")))
}

fn now_us() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// Load a key set file, or an empty set if it does not exist yet.
fn load_or_empty(path: &Path) -> Result<KeySet, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => KeySet::from_json(&text).map_err(|e| Error::KeySet {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeySet::default()),
        Err(e) => Err(Error::file("reading key set", path)(e)),
    }
}

/// Add `entry`, retiring every key still open at its `not_before`. Returns the retired ids.
pub fn rotate(keys: &mut KeySet, entry: PublicKeyEntry) -> Result<Vec<String>, Error> {
    if keys.get(&entry.key_id).is_some() {
        return Err(Error::Usage(format!(
            "key id {:?} is already in the key set (key ids are never reused)",
            entry.key_id
        )));
    }
    let t = entry.not_before_us;
    let open: Vec<PublicKeyEntry> = keys
        .entries()
        .filter(|e| e.not_after_us.is_none_or(|end| end > t))
        .cloned()
        .collect();
    let mut retired = Vec::new();
    for e in open {
        if e.not_before_us >= t {
            return Err(Error::Usage(format!(
                "key {:?} becomes valid at {} µs, not before the new key's {t}: rotation must move forward in time",
                e.key_id, e.not_before_us
            )));
        }
        keys.retire(&e.key_id, t)?;
        retired.push(e.key_id);
    }
    keys.add(entry)?;
    Ok(retired)
}

/// Write a file that must not exist yet, readable by the owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Usage(format!(
                "{} already exists: refusing to overwrite a key",
                path.display()
            ))
        } else {
            Error::file("creating private key file", path)(e)
        }
    })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(Error::file("writing", path))
}

/// Replace `path` atomically (temp file in the same folder, then rename).
fn write_atomic(path: &Path, text: &str) -> Result<(), Error> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(Error::file("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::file("replacing", path))
}

pub fn keygen(args: &KeygenArgs) -> Result<KeygenOutput, Error> {
    if args.key_id.trim().is_empty() || args.key_id.trim() != args.key_id {
        return Err(Error::Usage(format!(
            "--key-id {:?} must be non-empty, without spaces around",
            args.key_id
        )));
    }
    let not_before = parse_time_us(&args.not_before)?;
    let doc = generate_pkcs8()?;
    let key = SigningKey::from_pkcs8(&args.key_id, doc.expose())?;
    let entry = key.public_entry(not_before, None);

    // Check the key set change before writing anything, so a refused rotation leaves no key file.
    let planned = match &args.keyset {
        Some(path) => {
            let mut keys = load_or_empty(path)?;
            let retired = rotate(&mut keys, entry.clone())?;
            Some((path, keys, retired))
        }
        None => None,
    };
    write_private(&args.out, doc.expose())?;
    let mut out = KeygenOutput {
        key_id: args.key_id.clone(),
        private_key_file: args.out.display().to_string(),
        public_key: entry,
        keyset_file: None,
        retired: Vec::new(),
    };
    if let Some((path, keys, retired)) = planned {
        write_atomic(path, &(keys.to_json_pretty() + "\n"))?;
        out.keyset_file = Some(path.display().to_string());
        out.retired = retired;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        assert_eq!(
            parse_time_us("1700000000000000").unwrap(),
            1_700_000_000_000_000
        );
        assert_eq!(
            parse_time_us("2024-06-01T00:00:00Z").unwrap(),
            1_717_200_000_000_000
        );
        assert!(parse_time_us("now").unwrap() > 1_700_000_000_000_000);
        assert!(matches!(parse_time_us("yesterday"), Err(Error::Usage(_))));
    }
}
