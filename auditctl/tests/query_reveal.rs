//! `auditctl query <recipe> --reveal --reason …` (issue 12, docs/privacy.md "Reading"): against
//! a real ClickHouse, the real SeaweedFS key store and the real broker.
//!
//! Rows of three subjects with encrypted names and emails; the analyst recipe
//! `policy_denials` (which returns `actor_name` and `event_id`):
//! - without --reveal: ciphertext, no plaintext;
//! - --reveal without --reason: a usage error;
//! - --reveal: plaintext for all three, and exactly one chained `privacy.pii_revealed` event
//!   on `<prefix>validated`, naming the recipe, params, row count, columns and tokens;
//! - after `auditctl erase` of one subject: `[erased]` for that one (with and without
//!   --reveal), plaintext for the others with --reveal;
//! - --reveal with an unreachable broker: non-zero exit, no plaintext.

mod common;

use std::time::{Duration, Instant};

use common::*;
use enrich::privacy::crypto::seal;
use enrich::privacy::store::KeyState;
use enrich::privacy::{token, PrivacyArgs, ERASED, SUBJECT_ATTRIBUTE};
use schemas::{AuditEvent, ChainedEvent, KeyValue, Outcome};
use worker_runtime::kafka::admin::{ensure_topics, pipeline_topic_specs};
use worker_runtime::kafka::KafkaArgs;
use worker_runtime::testing::topic::read_topic;

const BROKERS: &str = "127.0.0.1:9092";
const KEY_BUCKET: &str = "audit-subject-keys";
const TOKEN_KEY: &str = "3333333333333333333333333333333333333333333333333333333333333333";
const MASTER_KEY: &str = "4444444444444444444444444444444444444444444444444444444444444444";
const REVEAL_EVENT: &str = "privacy.pii_revealed";

/// (user id, name, email) of the three subjects.
const SUBJECTS: [(&str, &str, &str); 3] = [
    ("qr-ada", "Ada Lovelace", "ada@example.com"),
    ("qr-bob", "Bob Babbage", "bob@example.org"),
    ("qr-cyd", "Cyd Hopper", "cyd@example.net"),
];
const ERASED_SUBJECT: usize = 1;

fn make_key_bucket() {
    common::ensure_bucket(KEY_BUCKET);
}

fn privacy_flags(prefix: &str) -> Vec<String> {
    common::privacy_flags(KEY_BUCKET, prefix, TOKEN_KEY, MASTER_KEY)
}

fn privacy_args(prefix: &str) -> PrivacyArgs {
    #[derive(clap::Parser)]
    struct A {
        #[command(flatten)]
        p: PrivacyArgs,
    }
    let argv = std::iter::once("x".to_owned()).chain(privacy_flags(prefix));
    <A as clap::Parser>::parse_from(argv).p
}

/// The events of `topic` (one partition).
async fn read_events(kafka: &KafkaArgs, topic: &str) -> Vec<AuditEvent> {
    read_topic(kafka, topic, 1, Duration::from_secs(10))
        .await
        .expect("scan")
        .iter()
        .map(|r| schemas::framing::decode_event(&r.payload, None).expect("an AuditEvent"))
        .collect()
}

/// Polls `topic` until it holds `n` reveal events (and returns them).
async fn wait_reveals(kafka: &KafkaArgs, topic: &str, n: usize) -> Vec<AuditEvent> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reveals: Vec<AuditEvent> = read_events(kafka, topic)
            .await
            .into_iter()
            .filter(|e| e.event_type == REVEAL_EVENT)
            .collect();
        if reveals.len() >= n {
            return reveals;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: {} of {n} reveal events after 60 s",
            reveals.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn attr<'a>(e: &'a AuditEvent, key: &str) -> &'a str {
    e.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value.as_str())
        .unwrap_or_else(|| panic!("attribute {key} in {:?}", e.attributes))
}

struct Lab {
    db: TestDb,
    prefix: String,
    kafka: KafkaArgs,
    tokens: Vec<String>,
}

impl Lab {
    /// Three DENIED events, one per subject, name and email encrypted for the subject as
    /// enrich does (same AAD: event id and field name), stored in ClickHouse.
    async fn new(tag: &str) -> Self {
        let prefix = format!("{}.", unique(tag));
        let kafka = KafkaArgs::local(BROKERS, &prefix);
        ensure_topics(&kafka, &pipeline_topic_specs(&kafka, 1), 1)
            .await
            .expect("topics (tansu on 9092 must be up: deploy/local/stack.sh up)");
        make_key_bucket();
        let privacy = privacy_args(&prefix);
        let token_key = privacy.token_key().expect("token key").expect("token key");
        let keys = privacy
            .subject_keys()
            .expect("key store")
            .expect("key store");
        let db = TestDb::new(tag).await;
        let mut events = Vec::new();
        let mut tokens = Vec::new();
        for (i, (uid, name, email)) in SUBJECTS.iter().enumerate() {
            let tok = token::subject_token(&token_key, uid);
            let KeyState::Active(key) = keys.get_or_create(&tok).await.expect("subject key") else {
                panic!("a fresh subject key for {uid}");
            };
            let mut e = event(0, i as u64);
            e.event_id = format!("qr-evt-{i}");
            e.outcome = Outcome::Denied;
            e.actor.id = tok.clone();
            e.actor.name = Some(seal(&key, &e.event_id, "actor.name", name));
            e.actor.email = Some(seal(&key, &e.event_id, "actor.email", email));
            e.attributes.retain(|kv| kv.key != SUBJECT_ATTRIBUTE);
            e.attributes.push(KeyValue {
                key: SUBJECT_ATTRIBUTE.into(),
                value: tok.clone(),
            });
            e.attributes.sort();
            events.push(ChainedEvent {
                chain_partition: 0,
                seq: i as i64 + 1,
                prev_hash: vec![0; 32],
                hash: vec![i as u8 + 1; 32],
                canonical_version: schemas::avro::CANONICAL_VERSION,
                source_topic: kafka.topics().enriched,
                source_partition: 0,
                source_offset: i as i64,
                event: e,
            });
            tokens.push(tok);
        }
        db.insert_events(&events).await;
        Lab {
            db,
            prefix,
            kafka,
            tokens,
        }
    }

    fn query(&self, extra: &[&str]) -> Vec<String> {
        let mut a = s(&[
            "query",
            "policy_denials",
            "--param",
            "from=2024-06-01",
            "--param",
            "to=2024-06-02",
            "--format",
            "json",
        ]);
        a.extend(self.db.args());
        a.extend(s(extra));
        a
    }

    fn reveal(&self, brokers: &str) -> Vec<String> {
        let mut a = self.query(&[
            "--reveal",
            "--reason",
            "case 42: who was denied",
            "--revealed-by",
            "analyst-test",
            "--kafka-brokers",
            brokers,
            "--topic-prefix",
            &self.prefix,
            "--kafka-property",
            "message.timeout.ms=3000",
        ]);
        a.extend(privacy_flags(&self.prefix));
        a
    }
}

fn no_plaintext(out: &str) {
    for (uid, name, email) in SUBJECTS {
        assert!(!out.contains(name), "{name} in {out}");
        assert!(!out.contains(email), "{email} in {out}");
        assert!(!out.contains(uid), "{uid} in {out}");
    }
}

/// The reveal event: who, why, the recipe, params, row count, columns and tokens; no PII.
fn check_reveal_event(r: &AuditEvent, tokens: &[String]) {
    assert_eq!(r.actor.id, "analyst-test");
    assert_eq!(r.reason.as_deref(), Some("case 42: who was denied"));
    assert_eq!(attr(r, "audit.privacy.reveal_recipe"), "policy_denials");
    assert_eq!(
        attr(r, "audit.privacy.reveal_params"),
        "from=2024-06-01&to=2024-06-02"
    );
    assert_eq!(attr(r, "audit.privacy.reveal_rows"), "3");
    assert_eq!(attr(r, "audit.privacy.revealed_fields"), "actor_name");
    let mut tokens = tokens.to_vec();
    tokens.sort();
    assert_eq!(attr(r, "audit.privacy.revealed_subjects"), tokens.join(","));
    let bytes = schemas::framing::encode_single_object_event(r).expect("encode");
    for (uid, name, email) in SUBJECTS {
        for pii in [uid, name, email] {
            assert!(
                !bytes.windows(pii.len()).any(|w| w == pii.as_bytes()),
                "{pii} in the reveal event"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_shows_ciphertext_and_reveal_decrypts_after_chaining_one_event() {
    let lab = Lab::new("qreveal_all").await;
    let validated = lab.kafka.topics().validated;

    // By default: ciphertext (and the subjects' tokens), never plaintext.
    let (code, out) = auditctl(&lab.query(&[])).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("enc:v1:").count(), 3, "{out}");
    no_plaintext(&out);

    // --reveal without --reason: a usage error, nothing published or printed in clear.
    let mut no_reason = lab.query(&["--reveal", "--kafka-brokers", BROKERS]);
    no_reason.extend(privacy_flags(&lab.prefix));
    let (code, out) = auditctl(&no_reason).await;
    assert_eq!(code, 2, "{out}");
    no_plaintext(&out);

    // --reveal: plaintext for all three, and exactly one chained reveal event.
    let (code, out) = auditctl(&lab.reveal(BROKERS)).await;
    assert_eq!(code, 0, "{out}");
    for (_, name, _) in SUBJECTS {
        assert!(out.contains(name), "{name} in {out}");
    }
    assert!(!out.contains("enc:v1:"), "{out}");
    let reveals = wait_reveals(&lab.kafka, &validated, 1).await;
    assert_eq!(reveals.len(), 1, "{reveals:?}");
    check_reveal_event(&reveals[0], &lab.tokens);

    lab.db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_subject_reads_erased_with_and_without_reveal() {
    let lab = Lab::new("qreveal_erased").await;
    let validated = lab.kafka.topics().validated;

    // Erase Bob.
    let mut erase = s(&[
        "erase",
        "--subject",
        SUBJECTS[ERASED_SUBJECT].0,
        "--reason",
        "GDPR Art. 17 request 4712",
        "--erased-by",
        "ops-test",
        "--kafka-brokers",
        BROKERS,
        "--topic-prefix",
        &lab.prefix,
    ]);
    erase.extend(privacy_flags(&lab.prefix));
    erase.extend(lab.db.args());
    let (code, out) = auditctl(&erase).await;
    assert_eq!(code, 0, "erase: {out}");

    // Without --reveal (no key store): Bob's cell reads `[erased]`, the others stay sealed.
    let (code, out) = auditctl(&lab.query(&[])).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches(ERASED).count(), 1, "{out}");
    assert_eq!(out.matches("enc:v1:").count(), 2, "{out}");
    no_plaintext(&out);

    // --reveal: `[erased]` for Bob, plaintext for Ada and Cyd; the reveal is chained.
    let (code, out) = auditctl(&lab.reveal(BROKERS)).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches(ERASED).count(), 1, "{out}");
    assert!(!out.contains(SUBJECTS[ERASED_SUBJECT].1), "{out}");
    for (i, (_, name, _)) in SUBJECTS.iter().enumerate() {
        if i != ERASED_SUBJECT {
            assert!(out.contains(name), "{name} in {out}");
        }
    }
    assert!(!out.contains("enc:v1:"), "{out}");
    let reveals = wait_reveals(&lab.kafka, &validated, 1).await;
    assert_eq!(reveals.len(), 1, "{reveals:?}");
    check_reveal_event(&reveals[0], &lab.tokens);

    lab.db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reveal_that_cannot_be_chained_decrypts_nothing() {
    let lab = Lab::new("qreveal_nobroker").await;
    let (code, out) = auditctl(&lab.reveal("127.0.0.1:1")).await;
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains(REVEAL_EVENT),
        "the error names the event: {out}"
    );
    no_plaintext(&out);
    assert!(
        !out.contains("enc:v1:"),
        "nothing of the result is printed: {out}"
    );
    lab.db.drop().await;
}
