//! S3 Object Lock on the archive's own puts: every object is PUT with
//! `x-amz-object-lock-mode` and `x-amz-object-lock-retain-until-date` (docs/retention.md).
//!
//! Why signed requests of our own: object_store 0.12 cannot send these headers. Its
//! `Attributes` are a closed set (content type/encoding/…, storage class, `x-amz-meta-*`);
//! `PutOptions::extensions` are ignored by its S3 backend (they only reach the HTTP connector,
//! after signing, and S3 refuses unsigned `x-amz-*` headers); a put followed by
//! `PutObjectRetention` would leave a window in which a written object is unlocked. So the
//! locked put is one request signed with object_store's own SigV4 signer (`AwsAuthorizer`,
//! the code that signs every other archive request) with the credentials its S3 client
//! resolves, sent with its HTTP client — the same path `auditctl hold` uses for legal holds:
//! no second S3 stack, and the archive's other requests (get, list) stay object_store's.
//!
//! A locked put is create-only (`If-None-Match: *`, as object_store's `PutMode::Create` with
//! `S3ConditionalPut::ETagMatch`) and carries `x-amz-checksum-sha256`, which S3 requires on a
//! put with Object Lock headers. Errors come back as `object_store::Error`s worded as its S3
//! client words them, so `worker_runtime::object_store::is_retryable` classifies them alike.

use std::fmt::Write as _;
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer, AwsCredential};
use object_store::client::{
    HttpClient, HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector,
};
use object_store::ClientOptions;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use worker_runtime::object_store::ArchiveStoreArgs;
use worker_runtime::Secret;

use crate::retention::{rfc3339_seconds, RetentionMode};
use crate::Error;

/// The archive bucket, addressed for signed requests of our own.
pub struct LockedBucket {
    bucket: String,
    /// `<endpoint>/<bucket>` (path style) or the virtual-hosted endpoint.
    base: String,
    /// Key prefix inside the bucket (URL path + `--archive-prefix`), no surrounding slashes.
    prefix: String,
    region: String,
    s3: object_store::aws::AmazonS3,
    http: HttpClient,
}

impl std::fmt::Debug for LockedBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedBucket")
            .field("bucket", &self.bucket)
            .field("base", &self.base)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// An object key in a URL path: every byte but the unreserved ones and `/` percent-encoded,
/// exactly as object_store encodes the keys it signs (so `=` of `chain=0` is `%3D`).
pub fn encode_key(key: &str) -> String {
    let mut s = String::with_capacity(key.len() * 2);
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            s.push(char::from(b));
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

/// The text of the first `<tag>…</tag>` of an S3 XML document.
pub fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    Some(xml[start..start + len].trim())
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

/// An S3 error answer in the object_store client's words (which `is_retryable` reads).
fn non_2xx(status: u16, body: &str) -> String {
    let code = xml_text(body, "Code").unwrap_or("");
    let message = xml_text(body, "Message").unwrap_or("");
    format!("Server returned non-2xx status code: {status}: {code} {message}")
}

fn generic(message: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: message.into(),
    }
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
        let url = args.archive_url.trim();
        let Some(rest) = url.strip_prefix("s3://") else {
            return Ok(None);
        };
        let bucket = rest.split_once('/').map_or(rest, |(b, _)| b);
        if bucket.is_empty() {
            return Err(Error::Config(format!(
                "--archive-url {url:?} names no bucket"
            )));
        }
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(args.s3_virtual_hosted_style);
        if let Some(region) = args.s3_region.as_deref().filter(|r| !r.is_empty()) {
            b = b.with_region(region);
        }
        if !args.s3_endpoint.is_empty() {
            b = b.with_endpoint(&args.s3_endpoint);
        }
        if !args.s3_access_key_id.is_empty() {
            b = b.with_access_key_id(args.s3_access_key_id.expose());
        }
        let secret = match args
            .s3_secret_access_key_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            Some(path) => Secret::new(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        Error::Config(format!(
                            "reading the S3 secret key file {}: {e}",
                            path.display()
                        ))
                    })?
                    .trim(),
            ),
            None => args.s3_secret_access_key.clone(),
        };
        if !secret.is_empty() {
            b = b.with_secret_access_key(secret.expose());
        }
        let region = b
            .get_config_value(&AmazonS3ConfigKey::Region)
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us-east-1".to_owned());
        let endpoint = b
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .filter(|e| !e.is_empty());
        let virtual_hosted = b
            .get_config_value(&AmazonS3ConfigKey::VirtualHostedStyleRequest)
            .is_some_and(|v| v == "true");
        // The same rule as the object_store builder's.
        let base = match (&endpoint, virtual_hosted) {
            (Some(e), true) => e.trim_end_matches('/').to_owned(),
            (Some(e), false) => format!("{}/{bucket}", e.trim_end_matches('/')),
            (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        let allow_http = args.s3_allow_http
            || base.starts_with("http://")
            || b.get_config_value(&AmazonS3ConfigKey::Client(
                object_store::ClientConfigKey::AllowHttp,
            ))
            .is_some_and(|v| v == "true");
        if allow_http {
            b = b.with_allow_http(true);
        }
        let s3 = b
            .build()
            .map_err(|e| Error::Config(format!("S3 client for bucket {bucket}: {e}")))?;
        let http = ReqwestConnector::default()
            .connect(&ClientOptions::new().with_allow_http(allow_http))
            .map_err(|e| Error::Config(format!("HTTP client for S3: {e}")))?;
        Ok(Some(Self {
            bucket: bucket.to_owned(),
            base,
            prefix: args.key_prefix(),
            region,
            s3,
            http,
        }))
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn object_url(&self, key: &str) -> String {
        let full = if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        };
        format!("{}/{}", self.base, encode_key(&full))
    }

    async fn credential(&self) -> Result<Arc<AwsCredential>, object_store::Error> {
        self.s3.credentials().get_credential().await
    }

    /// One signed request; (status, body).
    async fn send(
        &self,
        method: http::Method,
        url: &str,
        body: Option<bytes::Bytes>,
        headers: &[(&'static str, String)],
    ) -> Result<(u16, String), object_store::Error> {
        let cred = self.credential().await?;
        let mut req = HttpRequest::new(match &body {
            Some(b) => HttpRequestBody::from(b.clone()),
            None => HttpRequestBody::empty(),
        });
        *req.method_mut() = method;
        *req.uri_mut() = url
            .parse()
            .map_err(|e| generic(format!("request URL {url}: {e}")))?;
        for (name, value) in headers {
            let v = http::HeaderValue::from_str(value)
                .map_err(|e| generic(format!("header {name}: {e}")))?;
            req.headers_mut().insert(*name, v);
        }
        // Every header above is signed (the signer signs all but authorization,
        // content-length and user-agent): S3 refuses unsigned `x-amz-*` headers.
        AwsAuthorizer::new(&cred, "s3", &self.region).authorize(&mut req, None);
        let res = self
            .http
            .execute(req)
            .await
            .map_err(|e| generic(format!("error sending request: {e}")))?;
        let status = res.status().as_u16();
        let text = res
            .into_body()
            .bytes()
            .await
            .map_err(|e| generic(format!("error reading the answer: {e}")))?;
        Ok((status, String::from_utf8_lossy(&text).into_owned()))
    }

    /// `GetObjectLockConfiguration` of the bucket.
    pub async fn lock_config(&self) -> Result<LockConfig, object_store::Error> {
        let url = format!("{}?object-lock=", bucket_url(&self.base, &self.bucket));
        let (status, body) = self.send(http::Method::GET, &url, None, &[]).await?;
        parse_lock_config(status, &body).map_err(generic)
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
        let url = self.object_url(key);
        let (status, answer) = self
            .send(http::Method::PUT, &url, Some(body), &headers)
            .await?;
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

/// The bucket's own URL (for bucket subresources): a path-style base is `<endpoint>/<bucket>`
/// already; a virtual-hosted base is the bucket's host, whose root is `/`.
fn bucket_url(base: &str, bucket: &str) -> String {
    if base.ends_with(&format!("/{bucket}")) {
        base.to_owned()
    } else {
        format!("{}/", base.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_urls() {
        assert_eq!(bucket_url("http://h:8333/b", "b"), "http://h:8333/b");
        assert_eq!(
            bucket_url("https://b.s3.eu-west-1.amazonaws.com", "b"),
            "https://b.s3.eu-west-1.amazonaws.com/"
        );
    }

    #[test]
    fn keys_are_encoded_as_object_store_signs_them() {
        assert_eq!(
            encode_key("segments/partition=0/d@t 1.avro"),
            "segments/partition%3D0/d%40t%201.avro"
        );
    }

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
