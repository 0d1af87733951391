//! The S3 `?legal-hold` requests on archive objects. `object_store` has no legal-hold call,
//! so they go through the archive's own signer and HTTP client ([`SignedS3`]): same
//! credentials, same retries (errors are worded as object-store errors so `Reads` classifies
//! them), no second S3 stack. Credentials never appear in errors.

use md5::{Digest as _, Md5};
use worker_runtime::object_store::signed::{self, s3_generic, xml_text, SendError, SignedS3};

use crate::archive::store_config_error;
use crate::cli::ArchiveStoreArgs;
use crate::error::Error;

/// The request body of PUT `?legal-hold`.
pub fn legal_hold_body(on: bool) -> String {
    format!(
        "<LegalHold xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Status>{}</Status></LegalHold>",
        if on { "ON" } else { "OFF" }
    )
}

/// An S3 error as an object store error, so that `Reads` retries it for the same reasons as
/// every other archive request (5xx, 408/429 and network errors: yes; other 4xx: no).
pub(super) fn s3_error(doing: String, message: String) -> Error {
    Error::ObjectStore {
        doing,
        source: s3_generic(message),
    }
}

/// The archive's S3 bucket: legal holds need one.
pub(super) fn open_bucket(args: &ArchiveStoreArgs) -> Result<SignedS3, Error> {
    let bucket = SignedS3::open(args).map_err(store_config_error)?;
    bucket.ok_or_else(|| {
        Error::Usage(format!(
            "a legal hold needs an S3 archive (--archive-url s3://bucket[/prefix]), not {:?}",
            args.archive_url.trim()
        ))
    })
}

/// A request that got no answer, in the words `hold` reports it (the credential provider's
/// error is named as such; the rest as the HTTP stack words them).
pub(super) fn send_failure(e: SendError) -> String {
    match e {
        SendError::Credentials(e) => format!("S3 credentials: {e}"),
        SendError::Header { source, .. } => source.to_string(),
        SendError::Send(e) | SendError::Read(e) => e.to_string(),
        e @ SendError::Url { .. } => e.to_string(),
    }
}

/// One signed `?legal-hold` request on `key`.
async fn send_hold(
    bucket: &SignedS3,
    method: http::Method,
    key: &str,
    body: Option<String>,
) -> Result<(http::StatusCode, String), String> {
    send_signed(bucket, method, key, "legal-hold=", body, "application/xml").await
}

/// One signed request on `key` (`query`: the sub-resource, e.g. `legal-hold=`, or empty). A
/// body (PUT) goes with its Content-MD5: S3 requires it on PutObjectLegalHold and on any PUT to
/// a bucket whose default retention applies.
pub(super) async fn send_signed(
    bucket: &SignedS3,
    method: http::Method,
    key: &str,
    query: &str,
    body: Option<String>,
    content_type: &str,
) -> Result<(http::StatusCode, String), String> {
    let headers = match &body {
        Some(b) => vec![
            (
                "content-md5",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    Md5::digest(b.as_bytes()),
                ),
            ),
            ("content-type", content_type.to_owned()),
        ],
        None => Vec::new(),
    };
    bucket
        .send(
            method,
            Some(key),
            query,
            &headers,
            body.map(bytes::Bytes::from),
        )
        .await
        .map_err(send_failure)
}

/// Sets or clears the legal hold of the current version of `key`.
pub(super) async fn put_hold(bucket: &SignedS3, key: &str, on: bool) -> Result<(), Error> {
    let doing = format!("setting the legal hold of {key}");
    let (status, body) = send_hold(bucket, http::Method::PUT, key, Some(legal_hold_body(on)))
        .await
        .map_err(|e| s3_error(doing.clone(), e))?;
    if status.is_success() {
        return Ok(());
    }
    Err(s3_error(doing, non_2xx(status, &body)))
}

/// The legal hold of the current version of `key`: `ON`, `OFF`, or `none` (never set).
pub(super) async fn get_hold(bucket: &SignedS3, key: &str) -> Result<String, Error> {
    let doing = format!("reading the legal hold of {key}");
    let (status, body) = send_hold(bucket, http::Method::GET, key, None)
        .await
        .map_err(|e| s3_error(doing.clone(), e))?;
    if status.is_success() {
        return xml_text(&body, "Status")
            .map(str::to_owned)
            .ok_or_else(|| s3_error(doing, format!("no <Status> in the answer: {body}")));
    }
    if xml_text(&body, "Code") == Some("NoSuchObjectLegalHold") {
        return Ok("none".to_owned());
    }
    Err(s3_error(doing, non_2xx(status, &body)))
}

/// An S3 error answer in the object_store client's words (which `Reads` classifies), with a
/// hint when the bucket cannot hold.
pub(super) fn non_2xx(status: http::StatusCode, body: &str) -> String {
    let code = xml_text(body, "Code").unwrap_or("");
    let message = xml_text(body, "Message").unwrap_or("");
    let hint = if code == "InvalidRequest" || message.contains("Object Lock") {
        " (legal hold needs a bucket created with Object Lock enabled)"
    } else {
        ""
    };
    format!("{}{hint}", signed::non_2xx(status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_needs_an_s3_archive_and_a_readable_secret_file() {
        let folder = ArchiveStoreArgs {
            archive_url: "file:///tmp/archive".into(),
            ..Default::default()
        };
        let e = open_bucket(&folder).unwrap_err();
        assert!(
            matches!(&e, Error::Usage(m) if m.contains("needs an S3 archive")),
            "{e}"
        );
        let unreadable = ArchiveStoreArgs {
            archive_url: "s3://bkt".into(),
            s3_secret_access_key_file: Some("/no/such/secret-file".into()),
            ..Default::default()
        };
        let e = open_bucket(&unreadable).unwrap_err();
        assert!(matches!(e, Error::File { .. }), "{e}");
    }

    #[test]
    fn s3_answers_are_read() {
        let body = "<?xml version=\"1.0\"?><LegalHold><Status>ON</Status></LegalHold>";
        assert_eq!(xml_text(body, "Status"), Some("ON"));
        assert!(legal_hold_body(false).contains("<Status>OFF</Status>"));
        let err = non_2xx(
            http::StatusCode::BAD_REQUEST,
            "<Error><Code>InvalidRequest</Code><Message>Bucket is missing Object Lock Configuration</Message></Error>",
        );
        assert!(
            err.contains("400") && err.contains("Object Lock enabled"),
            "{err}"
        );
        // 4xx is final, 5xx is retried, like every other archive request.
        let e = s3_error("x".into(), err);
        assert!(!worker_runtime::retry::Retryable::is_retryable(&e));
        let e = s3_error(
            "x".into(),
            non_2xx(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "<Error><Code>SlowDown</Code></Error>",
            ),
        );
        assert!(worker_runtime::retry::Retryable::is_retryable(&e));
    }
}
