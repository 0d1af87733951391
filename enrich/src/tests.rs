//! The pure parts without a broker: applying context records, lookups, the processor.

use std::sync::Arc;

use schemas::framing::{self, CatalogIdResolver};
use schemas::testing::sample_event;
use schemas::AuditEvent;
use worker_runtime::kafka::dlq::{HEADER_REASON_CODE, HEADER_STAGE};
use worker_runtime::kafka::{InputRecord, OutputRecord};

use crate::{Applied, ContextCaches, ContextKind, EnrichProcessor};

const USER: &[u8] = br#"{"userId":"user-123","name":"Ada","email":"ada@example.com","roles":["dev","admin"],"teamId":"team-9"}"#;
const TEAM_456: &[u8] =
    br#"{"teamId":"team-456","name":"Platform","tenantId":"acme","costCenter":"CC-1"}"#;
const TEAM_9: &[u8] = br#"{"teamId":"team-9","name":"Nine","tenantId":"nine-corp"}"#;

fn caches() -> ContextCaches {
    ContextCaches::new(1 << 20, 1 << 20)
}

async fn loaded() -> ContextCaches {
    let c = caches();
    assert_eq!(
        c.apply(ContextKind::Users, Some(b"user-123"), Some(USER))
            .await,
        Applied::Upserted
    );
    assert_eq!(
        c.apply(ContextKind::Teams, Some(b"team-456"), Some(TEAM_456))
            .await,
        Applied::Upserted
    );
    assert_eq!(
        c.apply(ContextKind::Teams, Some(b"team-9"), Some(TEAM_9))
            .await,
        Applied::Upserted
    );
    c
}

#[tokio::test]
async fn upsert_tombstone_and_invalid_records() {
    let c = loaded().await;
    assert_eq!(
        c.user("user-123").await.map(|u| u.name.clone()).as_deref(),
        Some("Ada")
    );
    // A newer record replaces the old one.
    let renamed = br#"{"userId":"user-123","name":"Ada L.","email":"ada@example.com"}"#;
    assert_eq!(
        c.apply(ContextKind::Users, Some(b"user-123"), Some(renamed))
            .await,
        Applied::Upserted
    );
    assert_eq!(
        c.user("user-123").await.map(|u| u.name.clone()).as_deref(),
        Some("Ada L.")
    );
    // Tombstone removes.
    assert_eq!(
        c.apply(ContextKind::Teams, Some(b"team-9"), None).await,
        Applied::Deleted
    );
    assert!(c.team("team-9").await.is_none());
    assert!(c.team("team-456").await.is_some(), "other keys untouched");
    // Unparsable: skipped, and the key's stale entry removed (as after compaction).
    assert_eq!(
        c.apply(ContextKind::Users, Some(b"user-123"), Some(b"{not json"))
            .await,
        Applied::Invalid
    );
    assert!(c.user("user-123").await.is_none());
    // Key/record mismatch and missing or non-UTF-8 keys are invalid too, never a crash.
    assert_eq!(
        c.apply(ContextKind::Teams, Some(b"team-x"), Some(TEAM_456))
            .await,
        Applied::Invalid
    );
    assert_eq!(
        c.apply(ContextKind::Teams, None, Some(TEAM_456)).await,
        Applied::Invalid
    );
    assert_eq!(
        c.apply(ContextKind::Teams, Some(&[0xff]), None).await,
        Applied::Invalid
    );
    c.sync().await;
    assert_eq!(c.entry_counts(), (0, 1));
}

#[tokio::test]
async fn team_comes_from_the_event_else_from_the_user() {
    let c = loaded().await;
    // The sample event names team-456: that one wins over the user's team-9.
    let mut e = sample_event();
    c.enrich(&mut e).await;
    assert_eq!(e.actor.name.as_deref(), Some("Ada"));
    assert_eq!(e.actor.roles, ["admin", "dev"]);
    assert_eq!(e.tenant.team_name.as_deref(), Some("Platform"));
    assert_eq!(e.tenant.tenant_id.as_deref(), Some("acme"));
    assert!(
        e.tenant.enrichment.enriched
            && e.tenant.enrichment.user_found
            && e.tenant.enrichment.team_found
    );

    // No team on the event: the user's team is used.
    let mut e = sample_event();
    e.tenant.team_id = None;
    c.enrich(&mut e).await;
    assert_eq!(e.tenant.team_id.as_deref(), Some("team-9"));
    assert_eq!(e.tenant.team_name.as_deref(), Some("Nine"));
    assert_eq!(e.tenant.tenant_id.as_deref(), Some("nine-corp"));
    assert!(e.tenant.enrichment.team_found);

    // Unknown user and team: enriched (flags say nothing was found), nothing else changes.
    let mut e = sample_event();
    e.actor.id = "someone-else".into();
    e.tenant.team_id = Some("team-unknown".into());
    let before = e.clone();
    c.enrich(&mut e).await;
    assert!(e.tenant.enrichment.enriched);
    assert!(!e.tenant.enrichment.user_found && !e.tenant.enrichment.team_found);
    assert_eq!(e.actor, before.actor);
}

#[tokio::test]
async fn the_cache_is_bounded_by_bytes() {
    let c = ContextCaches::new(4096, 4096);
    for i in 0..200 {
        let id = format!("user-{i}");
        let v = format!(r#"{{"userId":"{id}","name":"N{i}","email":"u{i}@example.com"}}"#);
        c.apply(ContextKind::Users, Some(id.as_bytes()), Some(v.as_bytes()))
            .await;
    }
    c.sync().await;
    let (users, _) = c.entry_counts();
    assert!(users > 0 && users < 40, "{users} entries in 4 KiB");
}

fn processor(c: ContextCaches) -> EnrichProcessor {
    EnrichProcessor::new(
        c,
        "t.enriched",
        "t.rejected",
        Arc::new(CatalogIdResolver::new().expect("resolver")),
    )
}

fn input(payload: Option<Vec<u8>>) -> InputRecord {
    InputRecord {
        topic: "t.validated".into(),
        partition: 5,
        offset: 7,
        key: Some(b"team-456".to_vec()),
        payload,
        headers: vec![("traceparent".into(), b"00-abc-def-01".to_vec())],
        timestamp_ms: Some(1),
    }
}

fn header<'a>(out: &'a OutputRecord, name: &str) -> Option<&'a [u8]> {
    out.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

fn decode(out: &OutputRecord) -> AuditEvent {
    framing::decode_event(out.payload.as_deref().expect("payload"), None).expect("decodable")
}

#[tokio::test]
async fn enriched_event_keeps_key_and_partition() {
    let p = processor(loaded().await);
    let bytes = framing::encode_single_object_event(&sample_event()).expect("encode");
    let out = p.handle(&input(Some(bytes))).await.expect("handled");
    assert_eq!(out.topic, "t.enriched");
    assert_eq!(out.partition, Some(5));
    assert_eq!(out.key.as_deref(), Some(&b"team-456"[..]));
    assert_eq!(header(&out, "traceparent"), Some(&b"00-abc-def-01"[..]));
    let e = decode(&out);
    assert_eq!(e.actor.email.as_deref(), Some("ada@example.com"));
    assert_eq!(e.tenant.team_name.as_deref(), Some("Platform"));
    // Deterministic: the same input with the same context gives the same bytes.
    let bytes = framing::encode_single_object_event(&sample_event()).expect("encode");
    assert_eq!(
        p.handle(&input(Some(bytes)))
            .await
            .expect("handled")
            .payload,
        out.payload
    );

    // Confluent framing is decoded too; the output is single-object.
    let bytes = framing::encode_confluent_event(&sample_event(), 1).expect("encode");
    let out2 = p.handle(&input(Some(bytes))).await.expect("handled");
    assert_eq!(out2.topic, "t.enriched");
    assert_eq!(out2.payload, out.payload);
}

/// An event as ingest writes it (its own encoding, which enrich splices:
/// `schemas::enrich_splice`) and the same event encoded otherwise (decoded and encoded again)
/// give the same output: what enriching the decoded event writes.
#[tokio::test]
async fn an_events_own_encoding_and_any_other_give_the_same_output() {
    let c = loaded().await;
    // With a department, the context writes the actor, the tenant and the attributes.
    let user = br#"{"userId":"user-123","name":"Ada","email":"ada@example.com","roles":["ops","dev","ops"],"teamId":"team-9","department":"Risk"}"#;
    assert_eq!(
        c.apply(ContextKind::Users, Some(b"user-123"), Some(user))
            .await,
        Applied::Upserted
    );
    let mut want = sample_event();
    c.enrich(&mut want).await;
    assert!(want
        .attributes
        .iter()
        .any(|kv| kv.key == schemas::context::DEPARTMENT_ATTRIBUTE && kv.value == "Risk"));
    let want = framing::encode_single_object_event(&want).expect("encode");
    let p = processor(c);

    let own = framing::encode_single_object_event(&sample_event()).expect("encode");
    // The datum's first byte is `event_id`'s length; in two bytes it is the same event to any
    // Avro reader, but not its own encoding.
    let h = framing::SINGLE_OBJECT_HEADER_LEN;
    assert!(own[h] < 0x80, "a one-byte length");
    let mut padded = own[..h].to_vec();
    padded.extend_from_slice(&[own[h] | 0x80, 0]);
    padded.extend_from_slice(&own[h + 1..]);
    assert_eq!(
        framing::decode_event(&padded, None).expect("decodes"),
        sample_event()
    );
    let confluent = framing::encode_confluent_event(&sample_event(), 1).expect("encode");

    // Which path each takes.
    assert!(p.spliced(&input(Some(own.clone()))).await.is_some());
    assert!(p.spliced(&input(Some(confluent.clone()))).await.is_some());
    assert!(p.spliced(&input(Some(padded.clone()))).await.is_none());

    for payload in [own, padded, confluent] {
        let out = p.handle(&input(Some(payload))).await.expect("handled");
        assert_eq!(out.topic, "t.enriched");
        assert_eq!(out.partition, Some(5));
        assert_eq!(out.key.as_deref(), Some(&b"team-456"[..]));
        assert_eq!(header(&out, "traceparent"), Some(&b"00-abc-def-01"[..]));
        assert_eq!(out.payload.as_deref(), Some(want.as_slice()));
    }
}

#[tokio::test]
async fn undecodable_input_is_dead_lettered() {
    let p = processor(caches());
    for payload in [
        None,
        Some(b"{\"json\": true}".to_vec()),
        Some(vec![0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
    ] {
        let out = p.handle(&input(payload.clone())).await.expect("handled");
        assert_eq!(out.topic, "t.rejected");
        assert_eq!(out.payload, payload, "original bytes");
        assert_eq!(out.key.as_deref(), Some(&b"team-456"[..]));
        assert_eq!(header(&out, HEADER_REASON_CODE), Some(&b"undecodable"[..]));
        assert_eq!(header(&out, HEADER_STAGE), Some(&b"enrich"[..]));
    }
}

fn privacy_on(dir: &std::path::Path) -> crate::privacy::Privacy {
    use crate::privacy::keys::NamedKey;
    use crate::privacy::rules::Rules;
    use crate::privacy::store::{StoreLocation, SubjectKeys};
    let location = StoreLocation {
        url: dir.display().to_string(),
        s3_endpoint: String::new(),
        s3_access_key_id: String::new(),
        s3_secret_access_key: String::new(),
    };
    let keys = SubjectKeys::new(
        location.build().expect("store"),
        vec![NamedKey::new("m1", [8; 32]).expect("master")],
        std::time::Duration::from_secs(60),
    );
    crate::privacy::Privacy::new(
        Rules::default(),
        NamedKey::new("t1", [9; 32]).expect("token key"),
        Some(keys),
    )
}

#[tokio::test]
async fn privacy_rules_run_after_the_context_is_merged() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = processor(loaded().await).with_privacy(Some(privacy_on(dir.path())));
    let bytes = framing::encode_single_object_event(&sample_event()).expect("encode");
    let out = p.handle(&input(Some(bytes))).await.expect("handled");
    let e = decode(&out);
    // The name and email came from the context, after which they were encrypted: enrichment
    // did not bring them back in the clear.
    for v in [&e.actor.name, &e.actor.email] {
        assert!(
            v.as_deref().is_some_and(|v| v.starts_with("enc:v1:")),
            "{v:?}"
        );
    }
    assert!(e
        .actor
        .ip
        .as_deref()
        .is_some_and(|v| v.starts_with("tok:t1:")));
    let payload = out.payload.as_deref().expect("payload");
    for pii in ["Ada", "ada@example.com", "192.168.1.100"] {
        assert!(
            !payload.windows(pii.len()).any(|w| w == pii.as_bytes()),
            "{pii}"
        );
    }
    assert_eq!(
        e.tenant.team_name.as_deref(),
        Some("Platform"),
        "context kept"
    );
}

#[tokio::test]
async fn an_unusable_key_store_stops_the_event_instead_of_passing_pii() {
    let dir = tempfile::tempdir().expect("tmp");
    let privacy = privacy_on(dir.path());
    // The stored key of the sample's subject is garbage (or was wrapped by another master).
    let subject = crate::privacy::token::subject_token(privacy.token_key(), "user-123");
    std::fs::create_dir_all(dir.path().join("subjects")).expect("dir");
    std::fs::write(
        dir.path().join(format!("subjects/{subject}.json")),
        b"{\"not\":\"a key\"}",
    )
    .expect("write");
    let p = processor(loaded().await).with_privacy(Some(privacy));
    let bytes = framing::encode_single_object_event(&sample_event()).expect("encode");
    let err = p
        .handle(&input(Some(bytes)))
        .await
        .expect_err("no output at all");
    assert!(!err.to_string().contains("ada"), "{err}");
}
