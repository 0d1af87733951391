//! The embedded default backend: a local folder with the same layout.

mod common;

use sink_archive::{build_store, ArchiveStoreArgs};

#[tokio::test]
async fn segments_resume_fork_and_checkpoints_in_a_local_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ArchiveStoreArgs {
        archive_local_dir: Some(dir.path().join("archive")),
        archive_prefix: "run-1".into(),
        ..Default::default()
    };
    let archive = common::archive(build_store(&args).expect("local store"));
    common::scenario(&archive).await;
    // Same layout on disk.
    let seg = dir.path().join(
        "archive/run-1/chain=3/date=2024-06-01/00000000000000000001-00000000000000000005.avro",
    );
    assert!(seg.is_file(), "{}", seg.display());
    assert!(seg.with_extension("manifest.json").is_file());
}

#[tokio::test]
async fn file_url_selects_the_local_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ArchiveStoreArgs {
        archive_url: format!("file://{}", dir.path().display()),
        ..Default::default()
    };
    let archive = common::archive(build_store(&args).expect("local store"));
    assert!(archive
        .put_create("a.txt", bytes::Bytes::from_static(b"1"))
        .await
        .expect("put"));
    assert!(!archive
        .put_create("a.txt", bytes::Bytes::from_static(b"2"))
        .await
        .expect("put"));
    assert!(dir.path().join("a.txt").is_file());
}
