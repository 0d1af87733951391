//! The rule engine on whole events, with a key store in a temporary folder.

use std::time::Duration;

use schemas::testing::sample_event;
use schemas::AuditEvent;

use super::*;

fn store(dir: &std::path::Path) -> SubjectKeys {
    let loc = StoreLocation {
        url: dir.display().to_string(),
        s3_endpoint: String::new(),
        s3_access_key_id: String::new(),
        s3_secret_access_key: String::new(),
    };
    let m = NamedKey::new("m1", [4; 32]).expect("master");
    SubjectKeys::new(
        loc.build().expect("store"),
        vec![m],
        Duration::from_secs(60),
    )
}

fn privacy(dir: &std::path::Path) -> Privacy {
    let t = NamedKey::new("t1", [3; 32]).expect("token key");
    Privacy::new(Rules::default(), t, Some(store(dir)))
}

fn event() -> AuditEvent {
    let mut e = sample_event();
    e.actor.name = Some("Ada Lovelace".into());
    e.actor.email = Some("ada@example.com".into());
    e.data.payload_json = Some(
        r#"{"note":"mail bob@corp.example or call +44 20 7946 0958","card":"4111 1111 1111 1111","n":1}"#
            .into(),
    );
    e
}

#[tokio::test]
async fn default_rules_protect_every_pii_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = privacy(dir.path());
    let mut e = event();
    let outcome = p.apply(&mut e).await.expect("apply");
    assert_eq!(
        outcome,
        Outcome {
            tokenized: 1,
            encrypted: 2,
            text_masked: 1,
            ..Outcome::default()
        }
    );
    let ip = e.actor.ip.clone().expect("ip");
    assert!(ip.starts_with("tok:t1:"), "{ip}");
    for v in [&e.actor.name, &e.actor.email] {
        assert!(v.as_deref().is_some_and(crypto::is_ciphertext), "{v:?}");
    }
    assert_eq!(
        e.data.payload_json.as_deref(),
        Some(r#"{"card":"****1111","n":1,"note":"mail ***@corp.example or call ***58"}"#)
    );
    let subject = token::subject_token(p.token_key(), "user-123");
    assert!(e
        .attributes
        .iter()
        .any(|kv| kv.key == SUBJECT_ATTRIBUTE && kv.value == subject));
    assert!(e.attributes.windows(2).all(|w| w[0].key < w[1].key));
    // Nothing of the plaintext is left anywhere in the canonical bytes.
    let bytes = schemas::framing::encode_single_object_event(&e).expect("encode");
    for pii in [
        "Ada Lovelace",
        "ada@example.com",
        "192.168.1.100",
        "bob@",
        "7946",
        "4111 1111",
    ] {
        assert!(
            !bytes.windows(pii.len()).any(|w| w == pii.as_bytes()),
            "{pii} in the stored bytes"
        );
    }
    // Deterministic (redeliveries must be identical), and idempotent on its own output.
    let mut again = event();
    p.apply(&mut again).await.expect("apply");
    assert_eq!(again, e);
    let mut twice = e.clone();
    p.apply(&mut twice).await.expect("apply");
    assert_eq!(twice, e);

    // Readable through the key store, and [erased] once the subject's key is destroyed.
    let keys = p.subject_keys().expect("keys");
    let email = e.actor.email.clone().expect("email");
    assert_eq!(
        reveal(keys, &e.event_id, "actor.email", &email)
            .await
            .expect("reveal"),
        "ada@example.com"
    );
    assert_eq!(
        reveal(keys, &e.event_id, "actor.name", &email)
            .await
            .expect("reveal"),
        ERASED,
        "a ciphertext moved to another field does not open"
    );
    keys.destroy(&subject).await.expect("erase");
    assert_eq!(
        reveal(keys, &e.event_id, "actor.email", &email)
            .await
            .expect("reveal"),
        ERASED
    );
    // A later (or redelivered) event of the erased subject never gets a readable copy.
    let mut later = event();
    later.event_id = "evt-later".into();
    let outcome = p.apply(&mut later).await.expect("apply");
    assert_eq!((outcome.encrypted, outcome.erased), (0, 2));
    assert_eq!(later.actor.email.as_deref(), Some(ERASED));
    assert_eq!(later.actor.name.as_deref(), Some(ERASED));
    // It still names the subject (the report finds it; to the chainer a redelivery of an
    // event enriched before the erasure is the same content: names and emails are
    // enrichment-owned, the rest is identical), and re-applying changes nothing.
    assert!(later
        .attributes
        .iter()
        .any(|kv| kv.key == SUBJECT_ATTRIBUTE && kv.value == subject));
    let mut again = later.clone();
    p.apply(&mut again).await.expect("apply");
    assert_eq!(again, later);
    let mut redelivered = event();
    p.apply(&mut redelivered).await.expect("apply");
    assert_eq!(
        schemas::identity::content_digest(&redelivered).expect("digest"),
        schemas::identity::content_digest(&e).expect("digest"),
        "a redelivery after the erasure is a duplicate, not an id conflict"
    );
}

#[tokio::test]
async fn unknown_users_are_their_email_and_services_get_tokens() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = privacy(dir.path());
    let mut e = event();
    e.actor.actor_type = ActorType::Service;
    p.apply(&mut e).await.expect("apply");
    let subject = token::subject_token(p.token_key(), "ada@example.com");
    assert!(e.attributes.iter().any(|kv| kv.value == subject));

    let mut e = event();
    e.actor.actor_type = ActorType::Service;
    e.actor.email = None;
    let outcome = p.apply(&mut e).await.expect("apply");
    assert_eq!((outcome.encrypted, outcome.tokenized), (0, 2));
    assert!(e.actor.name.as_deref().is_some_and(token::is_token));
    assert!(!e.attributes.iter().any(|kv| kv.key == SUBJECT_ATTRIBUTE));
}

#[test]
fn privacy_is_off_without_a_token_key_and_refuses_half_configurations() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct A {
        #[command(flatten)]
        p: PrivacyArgs,
    }
    let off = A::parse_from(["x"]).p;
    assert!(off.build().expect("off").is_none());
    let hex = "11".repeat(32);
    // Default rules encrypt: a token key alone is not enough (never store names in the clear).
    let half = A::parse_from(["x", "--privacy-token-key", &hex]).p;
    assert!(matches!(
        half.build(),
        Err(PrivacyError::EncryptionNotConfigured(_))
    ));
    let dir = tempfile::tempdir().expect("tmp");
    let full = A::parse_from([
        "x",
        "--privacy-token-key",
        &hex,
        "--privacy-master-key",
        &hex,
        "--privacy-key-store-url",
        &dir.path().display().to_string(),
    ])
    .p;
    assert!(full.build().expect("on").is_some());
    assert!(!format!("{full:?}").contains(&hex), "keys never in Debug");
}

#[tokio::test]
async fn rotated_keys_stay_usable_and_findable() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct A {
        #[command(flatten)]
        p: PrivacyArgs,
    }
    let dir = tempfile::tempdir().expect("tmp");
    let file = |name: &str, byte: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, byte.repeat(32)).expect("key file");
        p.display().to_string()
    };
    let (t0, m0) = (file("t0.key", "aa"), file("m0.key", "bb"));
    let store = dir.path().join("store").display().to_string();
    // Before the rotation: t0 and m0 current; a subject key is made and wrapped by m0.
    let before = A::parse_from([
        "x",
        "--privacy-token-key-file",
        &t0,
        "--privacy-token-key-id",
        "t0",
        "--privacy-master-key-file",
        &m0,
        "--privacy-master-key-id",
        "m0",
        "--privacy-key-store-url",
        &store,
    ])
    .p;
    let old = before.build().expect("on").expect("privacy");
    let mut e = event();
    old.apply(&mut e).await.expect("apply");
    // After: t1/m1 current, t0/m0 retired.
    let hex1 = "cc".repeat(32);
    let after = A::parse_from([
        "x",
        "--privacy-token-key",
        &hex1,
        "--privacy-master-key",
        &hex1,
        "--privacy-master-key-id",
        "m1",
        "--privacy-key-store-url",
        &store,
        "--privacy-retired-token-key-file",
        &format!("t0={t0}"),
        "--privacy-retired-master-key-file",
        &format!("m0={m0}"),
    ])
    .p;
    let ids: Vec<String> = after
        .token_keys()
        .expect("keys")
        .iter()
        .map(|k| k.id().to_owned())
        .collect();
    assert_eq!(ids, ["t1", "t0"]);
    let keys = after.subject_keys().expect("store").expect("store");
    let email = e.actor.email.clone().expect("email");
    assert_eq!(
        reveal(&keys, &e.event_id, "actor.email", &email)
            .await
            .expect("reveal"),
        "ada@example.com",
        "a key wrapped by the retired master still opens"
    );
    let bad = A::parse_from(["x", "--privacy-retired-token-key-file", "no-equals-sign"]).p;
    assert!(bad.token_keys().is_err());
}

#[tokio::test]
async fn values_that_only_look_protected_are_still_protected() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = privacy(dir.path());
    let mut e = event();
    e.actor.email = Some("tok:ada@example.com".into());
    e.actor.ip = Some("enc:v1:10.0.0.1".into());
    p.apply(&mut e).await.expect("apply");
    assert!(e.actor.email.as_deref().is_some_and(crypto::is_ciphertext));
    assert!(e.actor.ip.as_deref().is_some_and(token::is_token));
}
