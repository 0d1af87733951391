//! Against the local stack's S3 (SeaweedFS): `deploy/local/stack.sh up` first (the project's
//! test command, `deploy/local/test.sh`, does). These tests FAIL when the server is down.
//! Endpoint, bucket and the local stack's test-only keys come from `deploy/local/env.sh`'s
//! variables, defaulting to that file's values.

mod common;

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions};
use sink_archive::{build_store, ArchiveStoreArgs};
use worker_runtime::Secret;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn s3_args(prefix: &str) -> ArchiveStoreArgs {
    ArchiveStoreArgs {
        archive_url: format!("s3://{}", env("S3_BUCKET", "audit-archive")),
        archive_prefix: prefix.to_owned(),
        s3_endpoint: env("S3_ENDPOINT", "http://127.0.0.1:8333"),
        s3_region: Some(env("S3_REGION", "us-east-1")),
        // The local stack's published test-only keys (deploy/local/env.sh).
        s3_access_key_id: Secret::new(env("S3_ACCESS_KEY_ID", "audit-local-test-access-key")),
        s3_secret_access_key: Secret::new(env(
            "S3_SECRET_ACCESS_KEY",
            "audit-local-test-secret-NOT-A-SECRET",
        )),
        s3_allow_http: true,
        s3_request_retry_secs: Some(10),
        ..Default::default()
    }
}

fn unique_prefix(test: &str) -> String {
    format!("test-sink-archive/{test}-{}", uuid::Uuid::new_v4())
}

fn s3(test: &str) -> Arc<dyn ObjectStore> {
    build_store(&s3_args(&unique_prefix(test))).expect("S3 store")
}

#[tokio::test]
async fn create_twice_gives_already_exists() {
    let store = s3("create-twice");
    let path = Path::from("once.txt");
    store
        .put_opts(&path, "first".into(), PutOptions::from(PutMode::Create))
        .await
        .expect("first create (is the stack up? deploy/local/stack.sh up)");
    let second = store
        .put_opts(&path, "second".into(), PutOptions::from(PutMode::Create))
        .await;
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. })),
        "{second:?}"
    );
    let got = store
        .get(&path)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(&got[..], b"first");
}

#[tokio::test]
async fn segments_resume_fork_and_checkpoints_on_s3() {
    let archive = common::archive(s3("scenario"));
    common::scenario(&archive).await;
}

#[tokio::test]
async fn wrong_secret_is_refused_and_not_retried() {
    let mut args = s3_args(&unique_prefix("wrong-key"));
    args.s3_secret_access_key = Secret::new("Zq9-not-the-key");
    let archive = common::archive(build_store(&args).expect("store"));
    let err = archive
        .put_create("x.txt", bytes::Bytes::from_static(b"x"))
        .await
        .expect_err("a wrong key must be refused");
    assert!(
        !err.to_string().contains("Zq9-not-the-key"),
        "secret leaked into {err}"
    );
    assert!(
        !format!("{err:?}").contains("Zq9-not-the-key"),
        "secret leaked into {err:?}"
    );
}
