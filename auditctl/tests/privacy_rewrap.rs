//! Master-key rotation on the local stack's SeaweedFS (S3 on 8333; `deploy/local/stack.sh
//! up`); FAILS when it is absent. Each test has its own prefix in the key store's bucket.
//!
//! Keys are made the way enrich makes them (`SubjectKeys` under master m1), then
//! `auditctl rewrap-subject-keys` runs with masters [m2, m1]:
//! - every key opens with m2 alone and is the same key (a value sealed before the rotation
//!   opens with it); an erased subject stays erased; a second run finds everything current;
//!   a dry run writes nothing; no key material is printed;
//! - a key wrapped by a master that was not given: exit 1, the object untouched;
//! - an erasure between the read and the write wins: the conditional write is refused by the
//!   store (If-Match), the tombstone stays.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use auditctl::rewrap::{self, ObjectOutcome, WriteMode};
use common::*;
use enrich::privacy::crypto::{self, SubjectKey};
use enrich::privacy::keys::NamedKey;
use enrich::privacy::store::{KeyState, StoreLocation, SubjectKeys};
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;
use serde_json::Value;

const KEY_BUCKET: &str = "audit-subject-keys";
const M1_HEX: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const M2_HEX: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const M9_HEX: &str = "c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9";
const TOMBSTONE: &[u8] = br#"{"version":1,"erased":true}"#;

fn endpoint() -> String {
    env_or("S3_ENDPOINT", "http://127.0.0.1:8333")
}
fn access_key() -> String {
    env_or("S3_ACCESS_KEY_ID", "audit-local-test-access-key")
}
fn secret_key() -> String {
    env_or(
        "S3_SECRET_ACCESS_KEY",
        "audit-local-test-secret-NOT-A-SECRET",
    )
}

/// The key store's own bucket (as privacy_erase.rs makes it), created if missing.
fn make_key_bucket() {
    common::ensure_bucket(KEY_BUCKET);
}

/// A test's own corner of the key store.
struct Store {
    url: String,
    objects: Arc<dyn ObjectStore>,
    dir: tempfile::TempDir,
}

impl Store {
    fn new(tag: &str) -> Self {
        make_key_bucket();
        let url = format!("s3://{KEY_BUCKET}/{}", unique(tag));
        let objects = location(&url).build().expect("key store");
        Store {
            url,
            objects,
            dir: tempfile::tempdir().expect("tmp"),
        }
    }

    /// `SubjectKeys` as enrich runs it with these masters (current first).
    fn keys(&self, masters: &[(&str, &str)]) -> SubjectKeys {
        SubjectKeys::new(
            location(&self.url).build().expect("key store"),
            masters.iter().map(|(id, hex)| master(id, hex)).collect(),
            Duration::from_millis(1),
        )
    }

    fn key_file(&self, id: &str, hex: &str) -> String {
        let p = self.dir.path().join(format!("{id}.key"));
        std::fs::write(&p, hex).expect("key file");
        p.display().to_string()
    }

    /// `auditctl rewrap-subject-keys` with current master m2 and retired m1 (from a file).
    async fn rewrap(&self, extra: &[&str]) -> (u8, String) {
        let mut args = s(&[
            "rewrap-subject-keys",
            "--privacy-master-key",
            M2_HEX,
            "--privacy-master-key-id",
            "m2",
            "--privacy-retired-master-key-file",
            &format!("m1={}", self.key_file("m1", M1_HEX)),
            "--privacy-key-store-url",
            &self.url,
            "--privacy-key-store-s3-endpoint",
            &endpoint(),
            "--privacy-key-store-s3-access-key-id",
            &access_key(),
            "--privacy-key-store-s3-secret-access-key",
            &secret_key(),
        ]);
        args.extend(s(extra));
        auditctl(&args).await
    }

    async fn raw(&self, token: &str) -> Vec<u8> {
        self.objects
            .get(&object(token))
            .await
            .expect("object")
            .bytes()
            .await
            .expect("bytes")
            .to_vec()
    }

    async fn all_raw(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for t in ["t1.ada", "t1.bob", "t1.cyd", "t1.dan"] {
            if let Ok(g) = self.objects.get(&object(t)).await {
                out.insert(t.to_owned(), g.bytes().await.expect("bytes").to_vec());
            }
        }
        out
    }
}

fn location(url: &str) -> StoreLocation {
    StoreLocation {
        url: url.to_owned(),
        s3_endpoint: endpoint(),
        s3_access_key_id: access_key(),
        s3_secret_access_key: secret_key(),
    }
}

fn master(id: &str, hex: &str) -> NamedKey {
    NamedKey::parse(id, hex, "master key").expect("master key")
}

fn object(token: &str) -> ObjPath {
    ObjPath::from(format!("subjects/{token}.json"))
}

fn active(s: KeyState) -> Arc<SubjectKey> {
    match s {
        KeyState::Active(k) => k,
        KeyState::Erased => panic!("erased"),
    }
}

fn report(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn counts(r: &Value) -> [u64; 4] {
    [
        "rewrapped",
        "already_current",
        "tombstones_skipped",
        "failed",
    ]
    .map(|k| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_moves_every_key_to_the_new_master_and_erased_subjects_stay_erased() {
    let store = Store::new("rewrap_all");
    let old = store.keys(&[("m1", M1_HEX)]);
    // Three subjects get keys under m1 and a ciphertext each; the third is erased before the
    // rotation.
    let mut sealed = Vec::new();
    for (t, email) in [("t1.ada", "ada@example.com"), ("t1.bob", "bob@example.org")] {
        let k = active(old.get_or_create(t).await.expect("key"));
        sealed.push((t, email, crypto::seal(&k, "evt-1", "actor.email", email)));
    }
    old.get_or_create("t1.cyd").await.expect("key");
    old.destroy("t1.cyd").await.expect("erase");
    let before = store.all_raw().await;
    assert_eq!(before.len(), 3);

    // A dry run reports the work and writes nothing.
    let (code, out) = store.rewrap(&["--dry-run", "--json"]).await;
    assert_eq!(code, 0, "{out}");
    let r = report(&out);
    assert_eq!(counts(&r), [2, 0, 1, 0], "{r}");
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["retired_masters_destroyable"], false);
    assert_eq!(store.all_raw().await, before, "a dry run wrote");

    let (code, out) = store.rewrap(&["--json"]).await;
    assert_eq!(code, 0, "{out}");
    let r = report(&out);
    assert_eq!(counts(&r), [2, 0, 1, 0], "{r}");
    assert_eq!(r["rewrapped_from"], serde_json::json!({"m1": 2}));
    assert_eq!(r["objects"], 3);
    assert_eq!(r["current_master_key_id"], "m2");
    assert_eq!(r["retired_masters_destroyable"], true);
    // No key material in the report: neither master nor any wrapped key, old or new.
    let after = store.all_raw().await;
    for bytes in before.values().chain(after.values()) {
        if let Ok(w) = serde_json::from_slice::<crypto::WrappedKey>(bytes) {
            assert!(!out.contains(&w.wrapped), "a wrapped key in the report");
        }
    }
    assert!(!out.contains(M1_HEX) && !out.contains(M2_HEX));

    // m2 alone opens every live key, and it is the same key: the values sealed before the
    // rotation open with it.
    let new = store.keys(&[("m2", M2_HEX)]);
    for (t, email, ct) in &sealed {
        let k = new
            .get(t)
            .await
            .expect("opens with m2 alone")
            .expect("active");
        assert_eq!(
            crypto::open(&k, "evt-1", "actor.email", ct).ok().as_deref(),
            Some(*email)
        );
        let w: crypto::WrappedKey =
            serde_json::from_slice(&store.raw(t).await).expect("wrapped key");
        assert_eq!(w.master_key_id, "m2");
    }
    // m1 alone opens none of them any more.
    let m1_only = store.keys(&[("m1", M1_HEX)]);
    assert!(m1_only.get("t1.ada").await.is_err());
    // The erased subject stays erased: the tombstone was not replaced.
    assert_eq!(store.raw("t1.cyd").await, TOMBSTONE);
    assert!(matches!(
        new.status("t1.cyd").await.expect("status"),
        Some(KeyState::Erased)
    ));

    // Idempotent: a second run finds everything current and writes nothing.
    let (code, out) = store.rewrap(&[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("already current      2"), "{out}");
    assert!(out.contains("can be destroyed"), "{out}");
    let (code, out) = store.rewrap(&["--json"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(counts(&report(&out)), [0, 2, 1, 0], "{out}");
    assert_eq!(store.all_raw().await, after, "a second run rewrote keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_no_given_master_opens_is_reported_and_left_alone() {
    let store = Store::new("rewrap_unknown");
    store
        .keys(&[("m1", M1_HEX)])
        .get_or_create("t1.ada")
        .await
        .expect("key");
    // A key wrapped by a master the rewrap is not given (m9), and one under a master with a
    // known id but other bytes.
    store
        .keys(&[("m9", M9_HEX)])
        .get_or_create("t1.bob")
        .await
        .expect("key");
    store
        .keys(&[("m1", M9_HEX)])
        .get_or_create("t1.dan")
        .await
        .expect("key");
    let bob = store.raw("t1.bob").await;
    let dan = store.raw("t1.dan").await;

    let (code, out) = store.rewrap(&["--json"]).await;
    assert_eq!(code, 1, "{out}");
    let r = report(&out);
    assert_eq!(counts(&r), [1, 0, 0, 2], "{r}");
    assert_eq!(r["retired_masters_destroyable"], false);
    let failures = r["failures"].as_array().expect("failures");
    assert_eq!(failures[0]["object"], "subjects/t1.bob.json");
    assert!(
        failures[0]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("\"m9\"")),
        "{r}"
    );
    assert_eq!(failures[1]["object"], "subjects/t1.dan.json");
    // Untouched (never deleted, never rewritten); the others were still re-wrapped.
    assert_eq!(store.raw("t1.bob").await, bob);
    assert_eq!(store.raw("t1.dan").await, dan);
    assert!(store
        .keys(&[("m9", M9_HEX)])
        .get("t1.bob")
        .await
        .expect("m9 still opens it")
        .is_some());
    assert!(store
        .keys(&[("m2", M2_HEX)])
        .get("t1.ada")
        .await
        .expect("re-wrapped")
        .is_some());
    // Human output names the object and the reason, exit 1 as well.
    let (code, out) = store.rewrap(&[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED subjects/t1.bob.json"), "{out}");
    assert!(out.contains("keep the retired master keys"), "{out}");
}

/// The race the conditional write exists for: `auditctl erase` overwrites a key with a
/// tombstone after the rewrap read it and before it writes back. SeaweedFS must refuse the
/// write (If-Match on the ETag read); the tombstone stays, and the next attempt skips it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_between_read_and_write_wins() {
    let store = Store::new("rewrap_race");
    let old = store.keys(&[("m1", M1_HEX)]);
    old.get_or_create("t1.ada").await.expect("key");
    old.get_or_create("t1.bob").await.expect("key");
    let masters = [master("m2", M2_HEX), master("m1", M1_HEX)];

    let seen = rewrap::read(store.objects.as_ref(), &object("t1.ada"))
        .await
        .expect("read")
        .expect("exists");
    assert!(seen.e_tag.is_some(), "SeaweedFS returns an ETag");
    old.destroy("t1.ada").await.expect("erase meanwhile");
    let outcome = rewrap::rewrap_seen(
        store.objects.as_ref(),
        &seen,
        &masters,
        WriteMode::Conditional,
    )
    .await
    .expect("rewrap");
    assert_eq!(outcome, ObjectOutcome::ChangedMeanwhile);
    assert_eq!(store.raw("t1.ada").await, TOMBSTONE, "erasure undone");
    let again = rewrap::rewrap_path(
        store.objects.as_ref(),
        &object("t1.ada"),
        &masters,
        WriteMode::Conditional,
    )
    .await
    .expect("rewrap");
    assert_eq!(again, ObjectOutcome::Tombstone);
    assert_eq!(store.raw("t1.ada").await, TOMBSTONE);

    // And a write from a stale read (another rewrap got there first) is refused too: the
    // store compares the ETag, not just the existence of the object.
    let stale = rewrap::read(store.objects.as_ref(), &object("t1.bob"))
        .await
        .expect("read")
        .expect("exists");
    let done = rewrap::rewrap_seen(
        store.objects.as_ref(),
        &stale,
        &masters,
        WriteMode::Conditional,
    )
    .await
    .expect("rewrap");
    assert_eq!(
        done,
        ObjectOutcome::Rewrapped {
            from_master: "m1".into()
        }
    );
    let current = store.raw("t1.bob").await;
    assert!(
        !rewrap::put_if_unchanged(store.objects.as_ref(), &stale, TOMBSTONE.to_vec())
            .await
            .expect("put"),
        "a write conditional on a stale ETag went through"
    );
    assert_eq!(store.raw("t1.bob").await, current);
}
