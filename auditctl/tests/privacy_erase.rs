//! Crypto-shredding end to end on the local stack (tansu on 9092, ClickHouse on 8123,
//! SeaweedFS S3 on 8333; `deploy/local/stack.sh up`). FAILS when they are absent.
//!
//! enrich runs in-process (its lib `run`) with the privacy rules on and the subject key store
//! in a dedicated S3 bucket; events of three subjects go through it; the enriched events are
//! chained with the schemas crate's chain rule and stored in a fresh ClickHouse database as the
//! sink stores them. Then `auditctl erase` erases one subject, and:
//! - that subject's fields read `[erased]` from ClickHouse and from the topic, for a fresh
//!   reader and for a reader that had the key cached (after its TTL); the other two still
//!   decrypt;
//! - the stored rows and the topic records are byte-for-byte what they were, and `auditctl
//!   verify` still passes (why the chain survives erasure);
//! - the erasure event went through enrich, naming the subject only by its token;
//! - erase reports exactly the partitions and seq ranges holding the subject's rows;
//! - no PII value appears in any log line (all tracing output captured) or dead-letter header.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use common::*;
use enrich::privacy::{self, token, PrivacyArgs, ERASED, SUBJECT_ATTRIBUTE};
use integrity::chain::ChainHead;
use schemas::avro::{canonical_bytes, CANONICAL_VERSION};
use schemas::testing::sample_event;
use schemas::{AuditEvent, ChainedEvent};
use serde_json::Value;
use worker_runtime::kafka::admin::{ensure_topics, pipeline_topic_specs};
use worker_runtime::kafka::{KafkaArgs, OutputRecord, Producer};
use worker_runtime::testing::topic;
use worker_runtime::Shutdown;

const BROKERS: &str = "127.0.0.1:9092";
const KEY_BUCKET: &str = "audit-subject-keys";
const TOKEN_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const MASTER_KEY: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// (user id, name, email, ip, phone) of the three subjects.
const SUBJECTS: [(&str, &str, &str, &str, &str); 3] = [
    (
        "u-ada",
        "Ada Lovelace",
        "ada@example.com",
        "10.1.1.1",
        "+44 20 7946 0001",
    ),
    (
        "u-bob",
        "Bob Babbage",
        "bob@example.org",
        "10.2.2.2",
        "+44 20 7946 0002",
    ),
    (
        "u-cyd",
        "Cyd Hopper",
        "cyd@example.net",
        "10.3.3.3",
        "+44 20 7946 0003",
    ),
];
const ERASED_SUBJECT: usize = 1;
const LEAK: &str = "leak.canary@example.com";

#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> LogBuf {
    let buf = LogBuf::default();
    let w = buf.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace,h2=info,hyper=info,reqwest=info")
        .with_ansi(false)
        .with_writer(move || w.clone())
        .init();
    buf
}

fn s3_env(var: &str, default: &str) -> String {
    env_or(var, default)
}

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
    A::parse_from(argv).p
}

/// Every record of `topic` (all partitions): (partition, offset, payload, headers).
type Rec = (i32, i64, Vec<u8>, Vec<(String, Vec<u8>)>);

async fn read_topic(kafka: &KafkaArgs, topic: &str, partitions: i32) -> Vec<Rec> {
    topic::read_topic(kafka, topic, partitions, Duration::from_secs(10))
        .await
        .expect("scan")
        .into_iter()
        .map(|r| (r.partition, r.offset, r.payload, r.headers))
        .collect()
}

/// Polls `topic` until it holds `n` records.
async fn wait_records(kafka: &KafkaArgs, topic: &str, partitions: i32, n: usize) -> Vec<Rec> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let recs = read_topic(kafka, topic, partitions).await;
        if recs.len() >= n {
            return recs;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: {} of {n} records after 120 s",
            recs.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn decode(payload: &[u8]) -> AuditEvent {
    schemas::framing::decode_event(payload, None).expect("an AuditEvent")
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn subject_of(e: &AuditEvent) -> Option<String> {
    e.attributes
        .iter()
        .find(|kv| kv.key == SUBJECT_ATTRIBUTE)
        .map(|kv| kv.value.clone())
}

/// The name and email of `e` as a reader with the key store sees them.
async fn revealed(keys: &privacy::store::SubjectKeys, e: &AuditEvent) -> (String, String) {
    let get = |v: &Option<String>| v.clone().expect("field present");
    let name = privacy::reveal(keys, &e.event_id, "actor.name", &get(&e.actor.name))
        .await
        .expect("reveal");
    let email = privacy::reveal(keys, &e.event_id, "actor.email", &get(&e.actor.email))
        .await
        .expect("reveal");
    (name, email)
}

/// Chains the records of `recs` past each partition's head (and its last chained offset), as
/// the chainer does.
fn chain_new(recs: &[Rec], heads: &mut [(ChainHead, i64)], source: &str) -> Vec<ChainedEvent> {
    let mut out = Vec::new();
    for (p, (head, last)) in heads.iter_mut().enumerate() {
        let p = p as i32;
        let mut new: Vec<&Rec> = recs.iter().filter(|r| r.0 == p && r.1 > *last).collect();
        new.sort_by_key(|r| r.1);
        for (_, offset, payload, _) in new {
            let event = decode(payload);
            let link = head.next(&canonical_bytes(&event).expect("canonical"));
            *last = *offset;
            out.push(ChainedEvent {
                chain_partition: p,
                seq: link.seq as i64,
                prev_hash: link.prev_hash.to_vec(),
                hash: link.hash.to_vec(),
                canonical_version: CANONICAL_VERSION,
                source_topic: source.to_owned(),
                source_partition: p,
                source_offset: *offset,
                event,
            });
        }
    }
    out
}

/// A signed checkpoint per partition over the chained events of `batch` (each partition's
/// range in it), stored in ClickHouse and, with the segments, in the archive.
async fn seal_and_archive(
    batch: &[ChainedEvent],
    key: &integrity::checkpoint::SigningKey,
    db: &TestDb,
    archive_prefix: &str,
) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64;
    let store = s3_store();
    let mut parts: BTreeMap<i32, Vec<ChainedEvent>> = BTreeMap::new();
    for c in batch {
        parts.entry(c.chain_partition).or_default().push(c.clone());
    }
    for (p, events) in parts {
        let hashes: Vec<integrity::chain::Hash32> = events
            .iter()
            .map(|c| integrity::chain::hash32("hash", &c.hash).expect("hash"))
            .collect();
        let (first, last) = (&events[0], &events[events.len() - 1]);
        let fields = integrity::checkpoint::CheckpointFields {
            chain_id: CHAIN_ID.into(),
            partition: p as u32,
            first_seq: first.seq as u64,
            seq: last.seq as u64,
            head_hash: hashes[hashes.len() - 1],
            merkle_root: integrity::merkle::root(&hashes),
            time_us: now,
            partition_count: 0,
            tree_root: None,
        };
        let cp = integrity::checkpoint::sign(key, &fields).expect("sign");
        db.insert_checkpoints(std::slice::from_ref(&cp)).await;
        let chain = Chain {
            partition: p as u32,
            events,
            checkpoints: vec![cp],
        };
        write_archive(store.as_ref(), archive_prefix, &chain, 1000).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erasing_one_of_three_subjects_keeps_the_chain_and_the_others_readable() {
    let logs = capture_logs();
    let metrics = worker_runtime::telemetry::metrics_handle();
    let prefix = format!("{}.", unique("privacy"));
    let kafka = KafkaArgs::local(BROKERS, &prefix);
    let topics = kafka.topics();
    let partitions = 2;
    ensure_topics(&kafka, &pipeline_topic_specs(&kafka, partitions), 1)
        .await
        .expect("topics (tansu on 9092 must be up: deploy/local/stack.sh up)");
    make_key_bucket();
    let producer = Producer::new(&kafka, "privacy-test").expect("producer");

    // Identity sync: the three users' names and emails (enrich fills them into events).
    for (id, name, email, _, _) in SUBJECTS {
        let v = format!(r#"{{"userId":"{id}","name":"{name}","email":"{email}"}}"#);
        producer
            .send(
                &OutputRecord::new(&topics.context_users, Some(id.into()), v.into_bytes())
                    .with_partition(0),
            )
            .await
            .expect("context record");
    }

    // enrich, with the privacy rules on (defaults) and a 1 s key cache.
    let mut argv = s(&[
        "enrich",
        "--health-addr",
        "",
        "--kafka-brokers",
        BROKERS,
        "--topic-prefix",
        &prefix,
        "--group-id",
        &unique("privacy_enrich"),
    ]);
    argv.extend(privacy_flags(&prefix));
    let config = enrich::Config::parse_from(argv);
    let shutdown = Shutdown::new();
    let worker = tokio::spawn(enrich::run(config, shutdown.clone()));

    // Three events per subject, spread over both partitions, with PII in free text too; and
    // one undecodable record that carries an email, for the dead-letter check.
    let mut sent = 0;
    for round in 0..3 {
        for (i, (id, _, _, ip, phone)) in SUBJECTS.iter().enumerate() {
            let mut e = sample_event();
            e.event_id = format!("evt-{i}-{round}");
            e.actor.id = (*id).into();
            e.actor.ip = Some((*ip).into());
            e.data.payload_json = Some(format!(
                r#"{{"note":"reach me at {phone} or {}"}}"#,
                SUBJECTS[i].2
            ));
            let payload = schemas::framing::encode_single_object_event(&e).expect("encode");
            let p = ((round + i) % 2) as i32;
            producer
                .send(
                    &OutputRecord::new(
                        &topics.validated,
                        Some(e.event_id.clone().into_bytes()),
                        payload,
                    )
                    .with_partition(p),
                )
                .await
                .expect("validated event");
            sent += 1;
        }
    }
    producer
        .send(
            &OutputRecord::new(
                &topics.validated,
                Some(b"bad".to_vec()),
                format!(r#"{{"email":"{LEAK}"}}"#).into_bytes(),
            )
            .with_partition(0),
        )
        .await
        .expect("bad record");

    let enriched = wait_records(&kafka, &topics.enriched, partitions, sent).await;
    assert_eq!(enriched.len(), sent);
    let rejected = wait_records(&kafka, &topics.rejected, partitions, 1).await;

    // Nothing in the clear on the enriched topic; names and emails are ciphertexts for the
    // subject, IPs tokens, free text masked.
    for (_, _, payload, _) in &enriched {
        for (id, name, email, ip, phone) in SUBJECTS {
            for pii in [name, email, ip, phone, "7946"] {
                assert!(!contains(payload, pii), "{pii} in an enriched record");
            }
            let _ = id;
        }
        let e = decode(payload);
        assert!(e
            .actor
            .ip
            .as_deref()
            .is_some_and(|v| v.starts_with("tok:t1:")));
        assert!(e
            .actor
            .email
            .as_deref()
            .is_some_and(|v| v.starts_with("enc:v1:")));
        assert!(subject_of(&e).is_some());
    }

    // Chain the enriched events per partition, as the chainer does, and store them as the
    // ClickHouse sink does.
    let db = TestDb::new("privacy").await;
    let mut heads: Vec<(ChainHead, i64)> = (0..partitions)
        .map(|p| (ChainHead::genesis(p as u32), -1))
        .collect();
    let chained = chain_new(&enriched, &mut heads, &topics.enriched);
    db.insert_events(&chained).await;
    // Signed checkpoints, and the same records in an archive on S3: both stores verify.
    let keydir = tempfile::tempdir().expect("tmp");
    let (signing_key, keyset) = test_key(keydir.path(), "k1");
    let keyset = keyset.display().to_string();
    let archive_prefix = unique("privacy_archive");
    seal_and_archive(&chained, &signing_key, &db, &archive_prefix).await;
    let mut verify = s(&["verify", "--source", "both", "--keys", &keyset]);
    verify.extend(db.args());
    verify.extend(s3_args(&archive_prefix));
    let (code, out) = auditctl(&verify).await;
    assert_eq!(code, 0, "verify before erasure: {out}");

    // Before erasure: every subject readable through the key store (a reader with a cache).
    let cached_reader = privacy_args(&prefix)
        .subject_keys()
        .expect("keys")
        .expect("store");
    for c in &chained {
        let i: usize = c.event.event_id[4..5].parse().expect("subject index");
        let (name, email) = revealed(&cached_reader, &c.event).await;
        assert_eq!(
            (name.as_str(), email.as_str()),
            (SUBJECTS[i].1, SUBJECTS[i].2)
        );
    }
    let rows_before: Vec<(String, String)> = db
        .client
        .query("SELECT hash, concat(ifNull(actor_name, ''), ifNull(actor_email, '')) FROM audit_events ORDER BY chain_partition, seq")
        .fetch_all()
        .await
        .expect("rows");

    // Erase Bob.
    let mut erase = s(&[
        "erase",
        "--subject",
        SUBJECTS[ERASED_SUBJECT].0,
        "--reason",
        "GDPR Art. 17 request 4711",
        "--erased-by",
        "ops-test",
        "--kafka-brokers",
        BROKERS,
        "--topic-prefix",
        &prefix,
    ]);
    erase.extend(privacy_flags(&prefix));
    erase.extend(db.args());
    let (code, out) = auditctl(&erase).await;
    assert_eq!(code, 0, "erase: {out}");
    let report: Value = serde_json::from_str(&out).expect("erase report");
    let token_key = privacy_args(&prefix)
        .token_key()
        .expect("key")
        .expect("key");
    let bob = token::subject_token(&token_key, SUBJECTS[ERASED_SUBJECT].0);
    assert_eq!(report["subject_token"], bob.as_str());
    assert_eq!(report["destroyed_keys"].as_array().map(Vec::len), Some(1));
    assert!(report["destroyed_keys"][0]
        .as_str()
        .is_some_and(|k| k.starts_with(&bob)));
    assert!(
        !out.contains(SUBJECTS[ERASED_SUBJECT].0),
        "the subject id is not in the report"
    );

    // The report names exactly Bob's partitions and seqs.
    let mut want: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for c in chained
        .iter()
        .filter(|c| subject_of(&c.event).as_deref() == Some(bob.as_str()))
    {
        want.entry(c.chain_partition.into())
            .or_default()
            .push(c.seq);
    }
    let mut got: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for l in report["locations"].as_array().expect("locations") {
        let p = l["partition"].as_i64().expect("p");
        for r in l["seq_ranges"].as_array().expect("ranges") {
            let (a, b) = (r[0].as_i64().expect("a"), r[1].as_i64().expect("b"));
            got.entry(p).or_default().extend(a..=b);
        }
    }
    assert_eq!(got, want);
    assert_eq!(want.values().map(Vec::len).sum::<usize>(), 3);

    // After erasure: a fresh reader (another process) cannot read Bob at once; the reader that
    // had Bob's key cached loses it within its TTL (polled); the other two stay readable.
    let fresh_reader = privacy_args(&prefix)
        .subject_keys()
        .expect("keys")
        .expect("store");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut cached_still_reads = false;
        for c in &chained {
            let i: usize = c.event.event_id[4..5].parse().expect("subject index");
            let fresh = revealed(&fresh_reader, &c.event).await;
            let cached = revealed(&cached_reader, &c.event).await;
            if i == ERASED_SUBJECT {
                assert_eq!(fresh, (ERASED.to_owned(), ERASED.to_owned()));
                cached_still_reads |= cached.0 != ERASED;
            } else {
                assert_eq!(fresh, (SUBJECTS[i].1.to_owned(), SUBJECTS[i].2.to_owned()));
                assert_eq!(cached, fresh);
            }
        }
        if !cached_still_reads {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "an erased key outlived the cache TTL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Nothing stored changed: same rows, same topic records, and the chain still verifies.
    let rows_after: Vec<(String, String)> = db
        .client
        .query("SELECT hash, concat(ifNull(actor_name, ''), ifNull(actor_email, '')) FROM audit_events ORDER BY chain_partition, seq")
        .fetch_all()
        .await
        .expect("rows");
    assert_eq!(rows_after, rows_before);
    let (code, out) = auditctl(&verify).await;
    assert_eq!(code, 0, "verify after erasure: {out}");
    // The archive's segments hold the same ciphertexts: Bob's read `[erased]` there too.
    let store = s3_store();
    let listed: Vec<object_store::ObjectMeta> = {
        use futures::TryStreamExt;
        store
            .list(Some(&object_store::path::Path::from(
                archive_prefix.as_str(),
            )))
            .try_collect()
            .await
            .expect("list archive")
    };
    let mut archived = 0;
    for meta in listed.iter().filter(|m| {
        matches!(
            schemas::segment::parse_key(
                m.location
                    .as_ref()
                    .strip_prefix(&format!("{archive_prefix}/"))
                    .unwrap_or_default()
            ),
            Some((_, schemas::segment::ObjectKind::Segment))
        )
    }) {
        let bytes = store
            .get(&meta.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        let (_, events) = schemas::segment::read_segment(&bytes).expect("segment");
        for c in events {
            let i: usize = c.event.event_id[4..5].parse().expect("subject index");
            let want = if i == ERASED_SUBJECT {
                (ERASED.to_owned(), ERASED.to_owned())
            } else {
                (SUBJECTS[i].1.to_owned(), SUBJECTS[i].2.to_owned())
            };
            assert_eq!(revealed(&fresh_reader, &c.event).await, want);
            archived += 1;
        }
    }
    assert_eq!(archived, chained.len(), "every archived event checked");

    // And an inclusion proof of an erased subject's event, from either store, still checks.
    let bob_event = chained
        .iter()
        .find(|c| subject_of(&c.event).as_deref() == Some(bob.as_str()))
        .expect("a Bob event");
    for (source, store_args) in [
        ("clickhouse", db.args()),
        ("archive", s3_args(&archive_prefix)),
    ] {
        let proof = keydir.path().join(format!("{source}.proof.json"));
        let proof = proof.display().to_string();
        let mut prove = s(&[
            "prove",
            &bob_event.event.event_id,
            "--source",
            source,
            "--keys",
            &keyset,
            "--out",
            &proof,
        ]);
        prove.extend(store_args);
        let (code, out) = auditctl(&prove).await;
        assert_eq!(code, 0, "prove from {source}: {out}");
        let (code, out) = auditctl(&s(&["check-proof", &proof, "--keys", &keyset])).await;
        assert_eq!(code, 0, "check-proof ({source}): {out}");
    }

    // The erasure event went through enrich into the enriched topic (the chain's input).
    let after = wait_records(&kafka, &topics.enriched, partitions, sent + 1).await;
    for (p, off, payload, _) in &enriched {
        assert!(
            after
                .iter()
                .any(|r| r.0 == *p && r.1 == *off && &r.2 == payload),
            "enriched record changed"
        );
    }
    let erasure: Vec<AuditEvent> = after
        .iter()
        .map(|r| decode(&r.2))
        .filter(|e| e.event_type == "privacy.subject_erased")
        .collect();
    assert_eq!(erasure.len(), 1);
    let ev = &erasure[0];
    assert_eq!(
        ev.target.as_ref().map(|t| t.id.as_str()),
        Some(bob.as_str())
    );
    assert_eq!(ev.reason.as_deref(), Some("GDPR Art. 17 request 4711"));
    assert_eq!(ev.actor.id, "ops-test");
    assert!(ev
        .attributes
        .iter()
        .any(|kv| kv.key == "audit.privacy.erased_subject" && kv.value == bob));
    let bytes = schemas::framing::encode_single_object_event(ev).expect("encode");
    assert!(
        !contains(&bytes, SUBJECTS[ERASED_SUBJECT].0),
        "the erasure event names only the token"
    );

    // Analysts' view in ClickHouse: Bob's ciphertexts read `[erased]`, the others' stay
    // ciphertexts (only the audited reveal path decrypts).
    let shown: Vec<(String, String, String)> = db
        .client
        .query(
            "SELECT privacy_subject, ifNull(actor_name, ''), ifNull(actor_email, '') \
             FROM audit_events_redacted ORDER BY chain_partition, seq",
        )
        .fetch_all()
        .await
        .expect("redacted view");
    assert_eq!(shown.len(), chained.len());
    for (subject, name, email) in &shown {
        if *subject == bob {
            assert_eq!((name.as_str(), email.as_str()), (ERASED, ERASED));
        } else {
            assert!(
                name.starts_with("enc:v1:") && email.starts_with("enc:v1:"),
                "{name}"
            );
        }
    }

    // The data-subject report: Bob's three events, where, and that he is erased; Ada active.
    let report_args = |subject: &str| {
        let mut a = s(&["subject-report", "--subject", subject]);
        a.extend(privacy_flags(&prefix));
        a.extend(db.args());
        a
    };
    let (code, out) = auditctl(&report_args(SUBJECTS[ERASED_SUBJECT].0)).await;
    assert_eq!(code, 0, "subject-report: {out}");
    let r: Value = serde_json::from_str(&out).expect("report");
    assert_eq!(r["key"], "erased");
    assert_eq!(r["erased"], true);
    assert_eq!(r["events"].as_array().map(Vec::len), Some(3));
    for e in r["events"].as_array().expect("events") {
        assert_eq!(
            e["encrypted_fields"],
            serde_json::json!(["actor.name", "actor.email"])
        );
        assert_eq!(e["tokenized_fields"], serde_json::json!(["actor.ip"]));
    }
    assert_eq!(r["locations"], report["locations"]);
    let (code, out) = auditctl(&report_args(SUBJECTS[0].0)).await;
    assert_eq!(code, 0, "subject-report: {out}");
    let r: Value = serde_json::from_str(&out).expect("report");
    assert_eq!(
        (r["key"].as_str(), r["events"].as_array().map(Vec::len)),
        (Some("active"), Some(3))
    );

    // The audited reveal path: Ada's fields in plaintext, Bob's `[erased]`; each reveal is
    // published to the chain's input before anything is decrypted.
    let reveal = |event_id: &str| {
        let mut a = s(&[
            "reveal",
            "--event-id",
            event_id,
            "--reason",
            "incident 12",
            "--revealed-by",
            "analyst-1",
            "--kafka-brokers",
            BROKERS,
            "--topic-prefix",
            &prefix,
        ]);
        a.extend(privacy_flags(&prefix));
        a.extend(db.args());
        a
    };
    let (code, out) = auditctl(&reveal("evt-0-1")).await;
    assert_eq!(code, 0, "reveal: {out}");
    let r: Value = serde_json::from_str(&out).expect("reveal report");
    assert_eq!(r["copies"][0]["fields"]["actor.email"], SUBJECTS[0].2);
    assert_eq!(r["copies"][0]["fields"]["actor.name"], SUBJECTS[0].1);
    let reveal_id = r["reveal_event_id"]
        .as_str()
        .expect("reveal event")
        .to_owned();
    let (code, out) = auditctl(&reveal("evt-1-1")).await;
    assert_eq!(code, 0, "reveal: {out}");
    let r: Value = serde_json::from_str(&out).expect("reveal report");
    assert_eq!(r["copies"][0]["fields"]["actor.email"], ERASED);
    let validated = wait_records(&kafka, &topics.validated, partitions, sent + 1 + 1 + 2).await;
    let reveals: Vec<AuditEvent> = validated
        .iter()
        .filter_map(|r| schemas::framing::decode_event(&r.2, None).ok())
        .filter(|e| e.event_type == "privacy.pii_revealed")
        .collect();
    assert_eq!(reveals.len(), 2);
    let first = reveals
        .iter()
        .find(|e| e.event_id == reveal_id)
        .expect("the reveal is published");
    assert_eq!(first.actor.id, "analyst-1");
    assert_eq!(
        first.target.as_ref().map(|t| t.id.as_str()),
        Some("evt-0-1")
    );

    // A new event of the erased subject: nothing readable in it (`[erased]`, or within the
    // worker's 1 s cache a ciphertext under the destroyed key), and no new key was made.
    let mut late = sample_event();
    late.event_id = "evt-late".into();
    late.actor.id = SUBJECTS[ERASED_SUBJECT].0.into();
    producer
        .send(
            &OutputRecord::new(
                &topics.validated,
                Some(b"evt-late".to_vec()),
                schemas::framing::encode_single_object_event(&late).expect("encode"),
            )
            .with_partition(0),
        )
        .await
        .expect("late event");
    let after = wait_records(&kafka, &topics.enriched, partitions, sent + 4).await;
    let late = after
        .iter()
        .map(|r| decode(&r.2))
        .find(|e| e.event_id == "evt-late")
        .expect("late event enriched");
    assert_eq!(
        revealed(&fresh_reader, &late).await,
        (ERASED.to_owned(), ERASED.to_owned())
    );
    assert!(matches!(
        fresh_reader.status(&bob).await.expect("status"),
        Some(privacy::store::KeyState::Erased)
    ));

    // Chain what enrich wrote since (the erasure and reveal events, the late event) after the
    // same heads: the chain still verifies, and the report lists the chained erasure.
    let more = chain_new(&after, &mut heads, &topics.enriched);
    assert_eq!(more.len(), 4);
    db.insert_events(&more).await;
    seal_and_archive(&more, &signing_key, &db, &archive_prefix).await;
    let (code, out) = auditctl(&verify).await;
    assert_eq!(code, 0, "verify with the erasure event chained: {out}");
    let (code, out) = auditctl(&report_args(SUBJECTS[ERASED_SUBJECT].0)).await;
    assert_eq!(code, 0, "subject-report: {out}");
    let r: Value = serde_json::from_str(&out).expect("report");
    let erasures = r["erasure_events"].as_array().expect("erasures");
    assert_eq!(erasures.len(), 1, "{out}");
    assert_eq!(erasures[0]["erased_by"], "ops-test");
    assert_eq!(erasures[0]["event_id"], report["erasure_event_id"]);

    shutdown.trigger();
    worker.await.expect("join").expect("enrich stopped cleanly");

    // No PII in the logs of enrich and auditctl (everything at trace level), nor in the
    // dead-letter headers.
    let text = String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned();
    assert!(text.contains("privacy rules on"), "the log capture works");
    for (_, name, email, ip, phone) in SUBJECTS {
        for pii in [name, email, ip, phone] {
            assert!(!text.contains(pii), "{pii} in the logs");
        }
    }
    assert!(
        !text.contains(LEAK),
        "the dead letter's content in the logs"
    );
    for (_, _, _, headers) in &rejected {
        for (k, v) in headers {
            assert!(
                !contains(v, LEAK) && !contains(v, "@example"),
                "PII in dead-letter header {k}"
            );
        }
    }
    // Nor in metric labels.
    let rendered = metrics.render();
    assert!(
        rendered.contains("audit_enrich_privacy_fields_total{action=\"encrypt\"}"),
        "the metrics capture works"
    );
    for (id, name, email, ip, phone) in SUBJECTS {
        for pii in [id, name, email, ip, phone] {
            assert!(!rendered.contains(pii), "{pii} in the metrics");
        }
    }
    db.drop().await;
}

/// After a rotation of the tokenization and master keys, a subject has a key (and events)
/// under each token key: erase destroys both, finds both sets of rows, and the report sees
/// both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_after_a_key_rotation_covers_the_retired_keys_too() {
    use enrich::privacy::keys::NamedKey;
    use enrich::privacy::rules::Rules;
    use enrich::privacy::Privacy;

    let prefix = format!("{}.", unique("privacy_rot"));
    let kafka = KafkaArgs::local(BROKERS, &prefix);
    ensure_topics(&kafka, &pipeline_topic_specs(&kafka, 1), 1)
        .await
        .expect("topics (tansu on 9092 must be up: deploy/local/stack.sh up)");
    make_key_bucket();
    let dir = tempfile::tempdir().expect("tmp");
    let file = |name: &str, hex: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, hex).expect("key file");
        p.display().to_string()
    };
    let (t0, m0) = (
        file("t0.key", &"0a".repeat(32)),
        file("m0.key", &"0b".repeat(32)),
    );
    // After the rotation: current keys from the usual flags, the old ones retired.
    let mut flags = privacy_flags(&prefix);
    flags.extend(s(&[
        "--privacy-retired-token-key-file",
        &format!("t0={t0}"),
        "--privacy-retired-master-key-file",
        &format!("m0={m0}"),
    ]));
    let args = {
        #[derive(clap::Parser)]
        struct A {
            #[command(flatten)]
            p: PrivacyArgs,
        }
        A::parse_from(std::iter::once("x".to_owned()).chain(flags.iter().cloned())).p
    };
    let current = args.build().expect("privacy").expect("on");
    // Before the rotation enrich ran with t0/m0 (same store).
    let old_store = privacy::store::SubjectKeys::new(
        privacy::store::StoreLocation {
            url: format!("s3://{KEY_BUCKET}/{prefix}"),
            s3_endpoint: s3_env("S3_ENDPOINT", "http://127.0.0.1:8333"),
            s3_access_key_id: s3_env("S3_ACCESS_KEY_ID", "audit-local-test-access-key"),
            s3_secret_access_key: s3_env(
                "S3_SECRET_ACCESS_KEY",
                "audit-local-test-secret-NOT-A-SECRET",
            ),
        }
        .build()
        .expect("store"),
        vec![
            NamedKey::load("m0", Some(std::path::Path::new(&m0)), "", "m0")
                .expect("m0")
                .expect("m0"),
        ],
        Duration::from_secs(1),
    );
    let old = Privacy::new(
        Rules::default(),
        NamedKey::load("t0", Some(std::path::Path::new(&t0)), "", "t0")
            .expect("t0")
            .expect("t0"),
        Some(old_store),
    );
    let mut events = Vec::new();
    for (i, engine) in [&old, &current].into_iter().enumerate() {
        let mut e = sample_event();
        e.event_id = format!("evt-rot-{i}");
        e.actor.id = "u-rot".into();
        e.actor.name = Some("Rosa Rotation".into());
        e.actor.email = Some("rosa@rotation.example".into());
        engine.apply(&mut e).await.expect("rules");
        events.push(e);
    }
    let tokens: Vec<String> = events
        .iter()
        .map(|e| subject_of(e).expect("subject"))
        .collect();
    assert_ne!(tokens[0], tokens[1], "one subject token per token key");
    let mut head = ChainHead::genesis(0);
    let chained: Vec<ChainedEvent> = events
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            let link = head.next(&canonical_bytes(&event).expect("canonical"));
            ChainedEvent {
                chain_partition: 0,
                seq: link.seq as i64,
                prev_hash: link.prev_hash.to_vec(),
                hash: link.hash.to_vec(),
                canonical_version: CANONICAL_VERSION,
                source_topic: "x".into(),
                source_partition: 0,
                source_offset: i as i64,
                event,
            }
        })
        .collect();
    let db = TestDb::new("privacy_rot").await;
    db.insert_events(&chained).await;

    let mut erase = s(&[
        "erase",
        "--subject",
        "u-rot",
        "--reason",
        "rotation test",
        "--erased-by",
        "ops",
        "--kafka-brokers",
        BROKERS,
        "--topic-prefix",
        &prefix,
    ]);
    erase.extend(flags.iter().cloned());
    erase.extend(db.args());
    let (code, out) = auditctl(&erase).await;
    assert_eq!(code, 0, "erase: {out}");
    let report: Value = serde_json::from_str(&out).expect("report");
    assert_eq!(report["subject_token"], tokens[1].as_str());
    assert_eq!(
        report["retired_subject_tokens"],
        serde_json::json!([tokens[0]])
    );
    assert_eq!(report["destroyed_keys"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        report["locations"],
        serde_json::json!([{"partition": 0, "events": 2, "seq_ranges": [[1, 2]]}])
    );

    let keys = args.subject_keys().expect("keys").expect("store");
    for c in &chained {
        assert_eq!(
            revealed(&keys, &c.event).await,
            (ERASED.to_owned(), ERASED.to_owned())
        );
    }
    let shown: Vec<String> = db
        .client
        .query("SELECT ifNull(actor_email, '') FROM audit_events_redacted ORDER BY seq")
        .fetch_all()
        .await
        .expect("view");
    assert_eq!(shown, [ERASED, ERASED]);
    let mut report_args = s(&["subject-report", "--subject", "u-rot"]);
    report_args.extend(flags.iter().cloned());
    report_args.extend(db.args());
    let (code, out) = auditctl(&report_args).await;
    assert_eq!(code, 0, "subject-report: {out}");
    let r: Value = serde_json::from_str(&out).expect("report");
    assert_eq!(r["key"], "erased");
    assert_eq!(r["events"].as_array().map(Vec::len), Some(2));
    db.drop().await;
}

/// A key store enrich cannot use (wrong credentials here) stops it at start, before any
/// event could pass in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrich_refuses_to_start_with_an_unusable_key_store() {
    let prefix = format!("{}.", unique("privacy_bad"));
    let kafka = KafkaArgs::local(BROKERS, &prefix);
    ensure_topics(&kafka, &pipeline_topic_specs(&kafka, 1), 1)
        .await
        .expect("topics (tansu on 9092 must be up: deploy/local/stack.sh up)");
    make_key_bucket();
    let mut argv = s(&[
        "enrich",
        "--health-addr",
        "",
        "--kafka-brokers",
        BROKERS,
        "--topic-prefix",
        &prefix,
        "--group-id",
        &unique("privacy_bad"),
    ]);
    // The usual flags, with a wrong secret key.
    let mut flags = privacy_flags(&prefix);
    let i = flags
        .iter()
        .position(|f| f == "--privacy-key-store-s3-secret-access-key")
        .expect("flag");
    flags[i + 1] = "wrong-secret".into();
    argv.extend(flags);
    let config = enrich::Config::parse_from(argv);
    let started = tokio::time::timeout(
        Duration::from_secs(120),
        enrich::run(config, Shutdown::new()),
    )
    .await
    .expect("enrich gave up within the client's retry bound");
    let err = started.expect_err("refused");
    assert!(matches!(err, enrich::Error::Privacy(_)), "{err}");
    assert!(!format!("{err:?}").contains("wrong-secret"), "{err:?}");
}
