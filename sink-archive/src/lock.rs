//! S3 Object Lock on the archive's own puts: every object is PUT with
//! `x-amz-object-lock-mode` and `x-amz-object-lock-retain-until-date` (docs/retention.md).
//!
//! Why signed requests of our own: object_store 0.12 cannot send these headers. Its
//! `Attributes` are a closed set (content type/encoding/…, storage class, `x-amz-meta-*`);
//! `PutOptions::extensions` are ignored by its S3 backend (they only reach the HTTP connector,
//! after signing, and S3 refuses unsigned `x-amz-*` headers); a put followed by
//! `PutObjectRetention` would leave a window in which a written object is unlocked. So the
//! locked put is one request signed with object_store's own SigV4 signer with the credentials
//! its S3 client resolves, sent with its HTTP client (`worker_runtime::object_store::signed`,
//! which `auditctl hold` uses for legal holds too): no second S3 stack, and the archive's
//! other requests (get, list) stay object_store's.
//!
//! A locked put is create-only (`If-None-Match: *`, as object_store's `PutMode::Create` with
//! `S3ConditionalPut::ETagMatch`) and carries `x-amz-checksum-sha256`, which S3 requires on a
//! put with Object Lock headers. Errors come back as `object_store::Error`s worded as its S3
//! client words them, so `worker_runtime::object_store::is_retryable` classifies them alike.

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use worker_runtime::object_store::signed::{non_2xx, s3_generic as generic, xml_text, SignedS3};
use worker_runtime::object_store::ArchiveStoreArgs;

use crate::retention::{rfc3339_seconds, RetentionMode};
use crate::Error;

/// The archive bucket, for the requests object_store cannot send.
#[derive(Debug)]
pub struct LockedBucket {
    s3: SignedS3,
}

/// What `GET /<bucket>?object-lock` says about the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockConfig {
    Enabled,
    /// No Object Lock configuration (`ObjectLockConfigurationNotFoundError`).
    NotEnabled,
}

/// Reads a `GetObjectLockConfiguration` answer. `Err` = neither a configuration nor its
/// absence (the error text to report).
pub fn parse_lock_config(status: u16, body: &str) -> Result<LockConfig, String> {
    if (200..300).contains(&status) {
        return Ok(match xml_text(body, "ObjectLockEnabled") {
            Some("Enabled") => LockConfig::Enabled,
            _ => LockConfig::NotEnabled,
        });
    }
    if xml_text(body, "Code") == Some("ObjectLockConfigurationNotFoundError") {
        return Ok(LockConfig::NotEnabled);
    }
    Err(non_2xx(status, body))
}

/// The headers of a create-only put of `body`, locked `lock` (mode, retain-until) if given.
pub fn put_headers(
    body: &[u8],
    lock: Option<(RetentionMode, OffsetDateTime)>,
) -> Vec<(&'static str, String)> {
    let sha = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        Sha256::digest(body),
    );
    let mut h = vec![
        ("if-none-match", "*".to_owned()),
        ("x-amz-checksum-sha256", sha),
    ];
    if let Some((mode, until)) = lock {
        if let Some(mode) = mode.header() {
            h.push(("x-amz-object-lock-mode", mode.to_owned()));
            h.push((
                "x-amz-object-lock-retain-until-date",
                rfc3339_seconds(until),
            ));
        }
    }
    h
}

impl LockedBucket {
    /// The bucket of `--archive-url s3://…`, configured as the archive's object_store client
    /// is (`worker_runtime::object_store`): explicit flags first, then the `AWS_*` environment.
    /// `None` for a local folder.
    pub fn open(args: &ArchiveStoreArgs) -> Result<Option<Self>, Error> {
        Ok(SignedS3::open(args)
            .map_err(|e| Error::Config(e.to_string()))?
            .map(|s3| Self { s3 }))
    }

    pub fn bucket(&self) -> &str {
        self.s3.bucket()
    }

    /// `GetObjectLockConfiguration` of the bucket.
    pub async fn lock_config(&self) -> Result<LockConfig, object_store::Error> {
        let (status, body) = self
            .s3
            .send(http::Method::GET, None, "object-lock=", &[], None)
            .await?;
        parse_lock_config(status.as_u16(), &body).map_err(generic)
    }

    /// Creates `key` (relative to the archive root) with `body`, locked until `until` in
    /// `mode` when given. `AlreadyExists` when something is there (as object_store's create).
    pub async fn put_create(
        &self,
        key: &str,
        body: bytes::Bytes,
        lock: Option<(RetentionMode, OffsetDateTime)>,
    ) -> Result<(), object_store::Error> {
        let headers = put_headers(&body, lock);
        let (status, answer) = self
            .s3
            .send(http::Method::PUT, Some(key), "", &headers, Some(body))
            .await?;
        let status = status.as_u16();
        match status {
            200..=299 => Ok(()),
            412 => Err(object_store::Error::AlreadyExists {
                path: key.to_owned(),
                source: non_2xx(status, &answer).into(),
            }),
            // A concurrent conditional write of the same key (S3's ConditionalRequestConflict):
            // worth another try, which then sees the object (412).
            409 => Err(generic(format!(
                "conflicting concurrent write of {key}, retrying: {}",
                xml_text(&answer, "Code").unwrap_or("")
            ))),
            _ => Err(generic(non_2xx(status, &answer))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_configuration_answers() {
        let on = "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>";
        assert_eq!(parse_lock_config(200, on), Ok(LockConfig::Enabled));
        let none =
            "<Error><Code>ObjectLockConfigurationNotFoundError</Code><Message>x</Message></Error>";
        assert_eq!(parse_lock_config(404, none), Ok(LockConfig::NotEnabled));
        let denied = "<Error><Code>AccessDenied</Code><Message>no</Message></Error>";
        let e = parse_lock_config(403, denied).unwrap_err();
        assert!(
            e.contains("status code: 403") && e.contains("AccessDenied"),
            "{e}"
        );
        assert!(!worker_runtime::object_store::is_retryable(&generic(e)));
        let busy = parse_lock_config(503, "<Error><Code>SlowDown</Code></Error>").unwrap_err();
        assert!(worker_runtime::object_store::is_retryable(&generic(busy)));
    }

    #[test]
    fn locked_put_headers() {
        let until = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let h = put_headers(b"hi", Some((RetentionMode::Compliance, until)));
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("if-none-match"), Some("*"));
        // base64(sha256("hi"))
        assert_eq!(
            get("x-amz-checksum-sha256"),
            Some("j0NDRmSPa5bfid2pAcUXaxCm2Dlh3TwayItZstwyeqQ=")
        );
        assert_eq!(get("x-amz-object-lock-mode"), Some("COMPLIANCE"));
        assert_eq!(
            get("x-amz-object-lock-retain-until-date"),
            Some("2027-01-15T08:00:00Z")
        );
        let g = put_headers(b"hi", Some((RetentionMode::Governance, until)));
        assert!(g.contains(&("x-amz-object-lock-mode", "GOVERNANCE".into())));
        let plain = put_headers(b"hi", None);
        assert_eq!(plain.len(), 2, "create-only and checksummed, not locked");
        let off = put_headers(b"hi", Some((RetentionMode::Off, until)));
        assert_eq!(off.len(), 2);
    }
}
