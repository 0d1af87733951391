//! Signed S3 requests for the calls object_store 0.12 has no API for: puts with S3 Object
//! Lock headers (the archive sink), `GetObjectLockConfiguration`, legal holds (auditctl).
//!
//! Why not a second S3 stack: each request is signed with object_store's own SigV4 signer
//! (`AwsAuthorizer`, the code that signs every other archive request) with the credentials
//! its S3 client resolves from the same [`ArchiveStoreArgs`] (flags, `AWS_*`, instance/web
//! identity), and sent with its HTTP client. So these requests reach the same bucket, with
//! the same keys, as the archive's own object store. Credentials never appear in errors or
//! debug output.

use std::fmt::Write as _;

use ::object_store::aws::{AmazonS3, AmazonS3ConfigKey, AwsAuthorizer};
use ::object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpRequestBody, ReqwestConnector,
};
use ::object_store::ClientOptions;

use super::{ArchiveStoreArgs, StoreConfigError};

/// The archive bucket, addressed for signed requests of our own.
pub struct SignedS3 {
    bucket: String,
    /// `<endpoint>/<bucket>` (path style) or the virtual-hosted endpoint.
    base: String,
    /// Key prefix inside the bucket (URL path + `--archive-prefix`), no surrounding slashes.
    prefix: String,
    region: String,
    /// Only its credential provider is used.
    s3: AmazonS3,
    http: HttpClient,
}

impl std::fmt::Debug for SignedS3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedS3")
            .field("bucket", &self.bucket)
            .field("base", &self.base)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A signed request could not be made or its answer not read (an S3 error answer is not an
/// error here: it comes back as its status and body).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The S3 client's credential provider failed (shown as it words it).
    #[error("{0}")]
    Credentials(#[source] ::object_store::Error),
    #[error("request URL {url}: {source}")]
    Url {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("header {name}: {source}")]
    Header {
        name: &'static str,
        #[source]
        source: http::header::InvalidHeaderValue,
    },
    #[error("error sending request: {0}")]
    Send(#[source] HttpError),
    #[error("error reading the answer: {0}")]
    Read(#[source] HttpError),
}

impl From<SendError> for ::object_store::Error {
    /// A credential error as the S3 client returned it; the others as the `Generic` errors
    /// its S3 client makes of network failures, which `is_retryable` retries.
    fn from(e: SendError) -> Self {
        match e {
            SendError::Credentials(e) => e,
            other => s3_generic(other.to_string()),
        }
    }
}

/// An error in the S3 client's words, as a `Generic` object store error: `is_retryable`
/// then classifies it as every other archive request's (`non_2xx` texts: 4xx final but 408
/// and 429, 5xx retried; anything else retried).
pub fn s3_generic(message: String) -> ::object_store::Error {
    ::object_store::Error::Generic {
        store: "S3",
        source: message.into(),
    }
}

/// An S3 error answer in the object_store client's words (which `is_retryable` reads).
/// `status` is shown as given (`403`, or `403 Forbidden` for an `http::StatusCode`).
pub fn non_2xx(status: impl std::fmt::Display, body: &str) -> String {
    let code = xml_text(body, "Code").unwrap_or("");
    let message = xml_text(body, "Message").unwrap_or("");
    format!("Server returned non-2xx status code: {status}: {code} {message}")
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

/// The text of the first `<tag>…</tag>` of an S3 XML document (S3's answers are small and
/// flat: no XML parser needed for the few fields read).
pub fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    Some(xml[start..start + len].trim())
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

impl SignedS3 {
    /// The bucket of `--archive-url s3://…`, configured as the archive's object_store client
    /// is ([`ArchiveStoreArgs`]): explicit flags first, then the `AWS_*` environment. `None`
    /// for a local folder.
    pub fn open(args: &ArchiveStoreArgs) -> Result<Option<Self>, StoreConfigError> {
        let url = args.archive_url.trim();
        let Some(rest) = url.strip_prefix("s3://") else {
            return Ok(None);
        };
        let bucket = rest.split_once('/').map_or(rest, |(b, _)| b);
        if bucket.is_empty() {
            return Err(StoreConfigError::Invalid(format!(
                "--archive-url {url:?} names no bucket"
            )));
        }
        let mut b = args.s3_builder(bucket)?;
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
                ::object_store::ClientConfigKey::AllowHttp,
            ))
            .is_some_and(|v| v == "true");
        if allow_http {
            b = b.with_allow_http(true);
        }
        let s3 = b.build().map_err(|e| {
            StoreConfigError::Invalid(format!("S3 client for bucket {bucket}: {e}"))
        })?;
        let http = ReqwestConnector::default()
            .connect(&ClientOptions::new().with_allow_http(allow_http))
            .map_err(|e| StoreConfigError::Invalid(format!("HTTP client for S3: {e}")))?;
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

    /// The URL of `key` (relative to the archive root; `None`: the bucket itself), with
    /// `query` (a subresource such as `legal-hold=`; empty: none).
    pub fn url(&self, key: Option<&str>, query: &str) -> String {
        let mut url = match key {
            None => bucket_url(&self.base, &self.bucket),
            Some(key) if self.prefix.is_empty() => format!("{}/{}", self.base, encode_key(key)),
            Some(key) => format!(
                "{}/{}",
                self.base,
                encode_key(&format!("{}/{key}", self.prefix))
            ),
        };
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// One signed request to [`Self::url`]`(key, query)`: (status, body). Every header
    /// given is signed (the signer signs all but authorization, content-length and
    /// user-agent): S3 refuses unsigned `x-amz-*` headers. Sent once: callers retry.
    pub async fn send(
        &self,
        method: http::Method,
        key: Option<&str>,
        query: &str,
        headers: &[(&'static str, String)],
        body: Option<bytes::Bytes>,
    ) -> Result<(http::StatusCode, String), SendError> {
        let cred = self
            .s3
            .credentials()
            .get_credential()
            .await
            .map_err(SendError::Credentials)?;
        let mut req = HttpRequest::new(match body {
            Some(b) => HttpRequestBody::from(b),
            None => HttpRequestBody::empty(),
        });
        *req.method_mut() = method;
        let url = self.url(key, query);
        *req.uri_mut() = url
            .parse()
            .map_err(|source| SendError::Url { url, source })?;
        for (name, value) in headers {
            let v = http::HeaderValue::from_str(value)
                .map_err(|source| SendError::Header { name, source })?;
            req.headers_mut().insert(*name, v);
        }
        AwsAuthorizer::new(&cred, "s3", &self.region).authorize(&mut req, None);
        let res = self.http.execute(req).await.map_err(SendError::Send)?;
        let status = res.status();
        let text = res.into_body().bytes().await.map_err(SendError::Read)?;
        Ok((status, String::from_utf8_lossy(&text).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> ArchiveStoreArgs {
        ArchiveStoreArgs {
            archive_url: url.into(),
            s3_endpoint: "http://127.0.0.1:8333".into(),
            s3_region: Some("eu-west-1".into()),
            s3_access_key_id: crate::Secret::new("AKIDEXAMPLE"),
            s3_secret_access_key: crate::Secret::new("very-secret-key"),
            ..Default::default()
        }
    }

    #[test]
    fn bucket_urls() {
        assert_eq!(bucket_url("http://h:8333/b", "b"), "http://h:8333/b");
        assert_eq!(
            bucket_url("https://b.s3.eu-west-1.amazonaws.com", "b"),
            "https://b.s3.eu-west-1.amazonaws.com/"
        );
    }

    #[test]
    fn urls_carry_the_prefix_the_encoded_key_and_the_subresource() {
        let s3 = SignedS3::open(&ArchiveStoreArgs {
            archive_prefix: "run 1".into(),
            ..args("s3://bkt/base/")
        })
        .unwrap()
        .unwrap();
        assert_eq!(s3.bucket(), "bkt");
        assert_eq!(
            s3.url(Some("chain=0/a.avro"), ""),
            "http://127.0.0.1:8333/bkt/base/run%201/chain%3D0/a.avro"
        );
        assert_eq!(
            s3.url(Some("k"), "legal-hold="),
            "http://127.0.0.1:8333/bkt/base/run%201/k?legal-hold="
        );
        assert_eq!(
            s3.url(None, "object-lock="),
            "http://127.0.0.1:8333/bkt?object-lock="
        );
        let plain = SignedS3::open(&args("s3://bkt")).unwrap().unwrap();
        assert_eq!(plain.url(Some("k"), ""), "http://127.0.0.1:8333/bkt/k");
    }

    #[test]
    fn a_folder_is_none_and_a_missing_bucket_or_secret_file_an_error() {
        assert!(SignedS3::open(&args("file:///tmp/x")).unwrap().is_none());
        assert!(SignedS3::open(&args("/tmp/x")).unwrap().is_none());
        let e = SignedS3::open(&args("s3://")).unwrap_err();
        assert_eq!(e.to_string(), "--archive-url \"s3://\" names no bucket");
        let e = SignedS3::open(&ArchiveStoreArgs {
            s3_secret_access_key_file: Some("/no/such/secret-file".into()),
            ..args("s3://bkt")
        })
        .unwrap_err();
        assert!(matches!(e, StoreConfigError::SecretKeyFile { .. }), "{e:?}");
    }

    #[test]
    fn debug_output_has_no_credentials() {
        let s3 = SignedS3::open(&args("s3://bkt")).unwrap().unwrap();
        let d = format!("{s3:?}");
        assert!(d.contains("bkt"), "{d}");
        assert!(
            !d.contains("very-secret-key") && !d.contains("AKIDEXAMPLE"),
            "{d}"
        );
    }

    #[test]
    fn keys_are_encoded_as_object_store_signs_them() {
        assert_eq!(
            encode_key("segments/partition=0/d@t 1.avro"),
            "segments/partition%3D0/d%40t%201.avro"
        );
        assert_eq!(
            encode_key("p/chain=0/date=2024-06-01/00000000000000000001-00000000000000000010.avro"),
            "p/chain%3D0/date%3D2024-06-01/00000000000000000001-00000000000000000010.avro"
        );
        assert_eq!(encode_key("a b@t~"), "a%20b%40t~");
    }

    #[test]
    fn s3_answers_are_read_and_classified() {
        let body = "<?xml version=\"1.0\"?><LegalHold><Status>ON</Status></LegalHold>";
        assert_eq!(xml_text(body, "Status"), Some("ON"));
        assert_eq!(xml_text(body, "Code"), None);
        let denied = "<Error><Code>AccessDenied</Code><Message>no</Message></Error>";
        assert_eq!(
            non_2xx(403, denied),
            "Server returned non-2xx status code: 403: AccessDenied no"
        );
        assert_eq!(
            non_2xx(http::StatusCode::FORBIDDEN, denied),
            "Server returned non-2xx status code: 403 Forbidden: AccessDenied no"
        );
        // 4xx is final, 5xx is retried, like every other archive request.
        assert!(!super::super::is_retryable(&s3_generic(non_2xx(
            403, denied
        ))));
        let busy = non_2xx(503, "<Error><Code>SlowDown</Code></Error>");
        assert!(super::super::is_retryable(&s3_generic(busy)));
        // Failures before an answer are retried (as the S3 client's own network errors).
        let e: ::object_store::Error = SendError::Url {
            url: "x".into(),
            source: "a b".parse::<http::Uri>().unwrap_err(),
        }
        .into();
        assert!(e.to_string().contains("request URL x"), "{e}");
    }
}
