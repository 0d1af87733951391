//! Retention under S3 Object Lock, on the local stack (SeaweedFS S3 on 8333, tansu on 9092;
//! `deploy/local/stack.sh up`). FAILS when they are absent.
//!
//! Each test creates its own bucket (with Object Lock enabled, or without for the refusal)
//! and its own topics, runs the whole worker with a short retention (one or a few days: the
//! locked objects cannot be deleted, so they are kept tiny), and checks what it did through
//! other clients: boto3 for the retention of each object and for deleting and overwriting
//! locked versions, the chain's input topic for the policy events.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::Message;
use schemas::framing::{
    encode_single_object_chained, encode_single_object_checkpoint, encode_single_object_event,
};
use schemas::segment::{self, ObjectKind, SegmentKey};
use schemas::{AuditEvent, ChainedEvent, Checkpoint, EventCategory};
use serde_json::Value;
use sink_archive::retention::{self, Policy, PolicyChange, Retention, POLICY_SET_EVENT_TYPE};
use sink_archive::{Archive, Config, RetentionMode};
use time::OffsetDateTime;
use worker_runtime::kafka::admin::{ensure_topics, pipeline_topic_specs};
use worker_runtime::kafka::tail::{scan, ScanStart};
use worker_runtime::kafka::{KafkaArgs, OutputRecord, Producer};
use worker_runtime::object_store::Access;
use worker_runtime::{CancellationToken, Shutdown};

/// The archive's key prefix inside each test bucket.
const PREFIX: &str = "ret";

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}
fn brokers() -> String {
    env("KAFKA_BROKERS", "127.0.0.1:9092")
}
fn s3_endpoint() -> String {
    env("S3_ENDPOINT", "http://127.0.0.1:8333")
}
fn s3_region() -> String {
    env("S3_REGION", "us-east-1")
}
// The local stack's published test-only keys (deploy/local/env.sh).
fn s3_key() -> String {
    env("S3_ACCESS_KEY_ID", "audit-local-test-access-key")
}
fn s3_secret() -> String {
    env(
        "S3_SECRET_ACCESS_KEY",
        "audit-local-test-secret-NOT-A-SECRET",
    )
}

/// Runs `script` with boto3 (an S3 client at the local stack in `s3`, the bucket in
/// `bucket`, the JSON argument in `arg`); its stdout is JSON.
fn boto3(script: &str, bucket: &str, arg: &Value) -> Value {
    let prelude = r#"
import json, os, sys, datetime
try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError
except ImportError:
    sys.exit("boto3 is missing: python3 -m pip install boto3")
s3 = boto3.client("s3", endpoint_url=os.environ["R_ENDPOINT"], region_name=os.environ["R_REGION"],
    aws_access_key_id=os.environ["R_KEY"], aws_secret_access_key=os.environ["R_SECRET"],
    config=Config(s3={"addressing_style": "path"}))
bucket = os.environ["R_BUCKET"]
arg = json.loads(os.environ["R_ARG"])
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", &format!("{prelude}\n{script}")])
        .env("R_ENDPOINT", s3_endpoint())
        .env("R_REGION", s3_region())
        .env("R_KEY", s3_key())
        .env("R_SECRET", s3_secret())
        .env("R_BUCKET", bucket)
        .env("R_ARG", arg.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("boto3 output")
}

/// A fresh bucket (S3 names: lowercase, digits, hyphens), made by boto3.
fn make_bucket(object_lock: bool) -> String {
    let bucket = format!("sink-archive-ret-{}", uuid::Uuid::new_v4().simple());
    boto3(
        r#"
s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=arg)
print(json.dumps(True))
"#,
        &bucket,
        &Value::Bool(object_lock),
    );
    bucket
}

/// boto3's view of each key: retention mode and date (UTC, RFC 3339) or the error code.
fn retentions(bucket: &str, keys: &[String]) -> Vec<(String, String)> {
    let v = boto3(
        r#"
out = []
for k in arg:
    try:
        r = s3.get_object_retention(Bucket=bucket, Key=k)["Retention"]
        d = r["RetainUntilDate"].astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        out.append([r["Mode"], d])
    except ClientError as e:
        out.append([e.response["Error"]["Code"], ""])
print(json.dumps(out))
"#,
        bucket,
        &serde_json::to_value(keys).expect("json"),
    );
    serde_json::from_value(v).expect("pairs")
}

/// A real hash chain of `n` events on partition 0, all at `time_us`; event `i` (1-based) is
/// of `class(i)`.
fn chain(n: i64, time_us: i64, class: impl Fn(i64) -> EventCategory) -> Vec<ChainedEvent> {
    common::chain_classes(0, n, |_| time_us, class)
}

fn now_us() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

async fn produce(kafka: &KafkaArgs, topic: &str, payloads: Vec<Vec<u8>>) {
    let producer = Producer::new(kafka, "sink-archive-retention-test").expect("producer");
    for p in payloads {
        producer
            .send(&OutputRecord::new(topic, Some(b"k".to_vec()), p).with_partition(0))
            .await
            .expect("produce (is the stack up? deploy/local/stack.sh up)");
    }
}

struct Lab {
    bucket: String,
    kafka: KafkaArgs,
    id: String,
}

impl Lab {
    async fn new(object_lock: bool) -> Self {
        let bucket = make_bucket(object_lock);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let kafka = KafkaArgs::local(&brokers(), &format!("t-ret-{id}."));
        ensure_topics(&kafka, &pipeline_topic_specs(&kafka, 1), 1)
            .await
            .expect("topics (is Kafka up? deploy/local/stack.sh up)");
        Lab { bucket, kafka, id }
    }

    fn config(&self, extra: &[&str]) -> Config {
        let url = format!("s3://{}/{PREFIX}", self.bucket);
        let group = format!("g-{}", self.id);
        let (endpoint, region, key, secret) = (s3_endpoint(), s3_region(), s3_key(), s3_secret());
        let mut a = vec![
            "sink-archive",
            "--health-addr",
            "",
            "--kafka-brokers",
            &self.kafka.brokers,
            "--topic-prefix",
            &self.kafka.topic_prefix,
            "--group-id",
            &group,
            "--archive-url",
            &url,
            "--s3-endpoint",
            &endpoint,
            "--s3-region",
            &region,
            "--s3-access-key-id",
            &key,
            "--s3-secret-access-key",
            &secret,
            "--s3-allow-http",
            "--segment-max-events",
            "3",
            "--segment-max-age-secs",
            "1",
            "--retry-max-attempts",
            "3",
        ];
        a.extend_from_slice(extra);
        Config::parse_from(a)
    }

    /// Object keys under the archive prefix (relative to it).
    fn keys(&self) -> Vec<String> {
        let v = boto3(
            r#"
out = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=arg + "/"):
    out += [o["Key"][len(arg) + 1:] for o in page.get("Contents", [])]
print(json.dumps(out))
"#,
            &self.bucket,
            &Value::String(PREFIX.into()),
        );
        serde_json::from_value(v).expect("keys")
    }

    fn segments(&self) -> Vec<(SegmentKey, ObjectKind)> {
        let mut v: Vec<_> = self
            .keys()
            .iter()
            .filter_map(|k| segment::parse_key(k))
            .collect();
        v.sort_by_key(|(k, kind)| (k.first_seq, *kind == ObjectKind::Manifest));
        v
    }

    /// The policy events on the chain's input topic (`<prefix>validated`).
    async fn policy_events(&self) -> Vec<AuditEvent> {
        let all: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sink = all.clone();
        let _collector = scan(
            &self.kafka,
            &self.kafka.topics().validated,
            0,
            ScanStart::Offset(0),
            Duration::from_secs(10),
            move |m| {
                if let Ok(mut v) = sink.lock() {
                    v.push(m.payload().unwrap_or_default().to_vec());
                }
            },
        )
        .await
        .expect("scan");
        let v = all.lock().expect("lock").clone();
        v.iter()
            .map(|p| schemas::framing::decode_event(p, None).expect("an AuditEvent"))
            .filter(|e| e.event_type == POLICY_SET_EVENT_TYPE)
            .collect()
    }
}

/// Runs the worker until `done` holds (or fails after 90 s), then shuts it down.
async fn run_until(config: Config, done: impl Fn() -> bool) {
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(sink_archive::run(config, shutdown.clone()));
    let start = Instant::now();
    while !done() {
        if handle.is_finished() {
            let r = handle.await.expect("join");
            panic!("worker stopped early: {r:?}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "timed out waiting for the archive"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    shutdown.trigger();
    handle.await.expect("join").expect("worker result");
}

fn attr<'a>(e: &'a AuditEvent, key: &str) -> Option<&'a str> {
    e.attributes
        .iter()
        .find(|a| a.key == key)
        .map(|a| a.value.as_str())
}

fn parse_time(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Segments and manifests are locked COMPLIANCE until what the policy says for their events'
/// classes (default 1 day; a segment holding a security event: 2 days), the checkpoint at
/// least as long as what it seals. The locked version cannot be deleted; an overwrite only
/// adds a version, and the locked one stays intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_and_manifests_are_locked_per_class() {
    let lab = Lab::new(true).await;
    let policy_text = "default=1d,security=2d";
    let policy = Policy::parse(policy_text).expect("policy");
    let t = now_us();
    // Seqs 1..=3: no security event; 4..=6: seq 5 is a security event.
    let ev = chain(6, t, |i| {
        if i == 5 {
            EventCategory::Security
        } else {
            EventCategory::UserInteraction
        }
    });
    let enc = |e: &ChainedEvent| encode_single_object_chained(e).expect("encode");
    let topics = lab.kafka.topics();
    produce(&lab.kafka, &topics.chained, ev.iter().map(enc).collect()).await;
    let cp = Checkpoint {
        chain_id: "test".into(),
        partition: 0,
        first_seq: 1,
        seq: 6,
        head_hash: ev[5].hash.clone(),
        merkle_root: vec![0; 32],
        time_us: t,
        partition_count: 0,
        key_id: "k1".into(),
        signature: vec![0; 64],
        tree_root: Vec::new(),
    };
    produce(
        &lab.kafka,
        &topics.checkpoints,
        vec![encode_single_object_checkpoint(&cp).expect("cp")],
    )
    .await;
    let cp_key = segment::checkpoint_key(0, 6, "k1");
    run_until(lab.config(&["--retention", policy_text]), || {
        lab.keys().contains(&cp_key) && lab.segments().len() == 4
    })
    .await;

    let segs = lab.segments();
    let full = |k: &str| format!("{PREFIX}/{k}");
    let keys: Vec<String> = segs
        .iter()
        .map(|(k, kind)| match kind {
            ObjectKind::Segment => full(&k.object_key()),
            ObjectKind::Manifest => full(&k.manifest_key()),
        })
        .chain([full(&cp_key)])
        .collect();
    let got = retentions(&lab.bucket, &keys);
    let until =
        |evs: &[ChainedEvent]| retention::rfc3339_seconds(policy.retain_until(evs).expect("until"));
    let (first, second) = (until(&ev[..3]), until(&ev[3..]));
    let c = |d: &str| ("COMPLIANCE".to_owned(), d.to_owned());
    assert_eq!(
        &got[..4],
        &[c(&first), c(&first), c(&second), c(&second)],
        "segment, manifest, segment, manifest of {keys:?}"
    );
    // The security event keeps its segment a day longer.
    assert_eq!(
        parse_time(&second) - parse_time(&first),
        time::Duration::days(1)
    );
    // The checkpoint lives as long as the longest class from its time, at least as long as
    // the segments it seals.
    assert_eq!(got[4].0, "COMPLIANCE");
    assert!(parse_time(&got[4].1) >= parse_time(&second), "{got:?}");

    // Delete the locked version: refused. Overwrite: a new version; the locked one intact.
    let seg = &keys[0];
    let v = boto3(
        r#"
key = arg
old = s3.head_object(Bucket=bucket, Key=key)["VersionId"]
before = s3.get_object(Bucket=bucket, Key=key, VersionId=old)["Body"].read()
try:
    s3.delete_object(Bucket=bucket, Key=key, VersionId=old)
    deleted = "deleted"
except ClientError as e:
    deleted = e.response["Error"]["Code"]
new = s3.put_object(Bucket=bucket, Key=key, Body=b"overwritten")["VersionId"]
after = s3.get_object(Bucket=bucket, Key=key, VersionId=old)["Body"].read()
current = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
r = s3.get_object_retention(Bucket=bucket, Key=key, VersionId=old)["Retention"]["Mode"]
print(json.dumps({"deleted": deleted, "new_version": new != old, "intact": before == after,
                  "current": current.decode(), "old_mode": r, "size": len(before)}))
"#,
        &lab.bucket,
        &Value::String(seg.clone()),
    );
    assert_eq!(v["deleted"], "AccessDenied", "{v}");
    assert_eq!(v["new_version"], true, "{v}");
    assert_eq!(v["intact"], true, "{v}");
    assert_eq!(v["current"], "overwritten", "{v}");
    assert_eq!(v["old_mode"], "COMPLIANCE", "{v}");
    assert!(v["size"].as_u64().unwrap_or(0) > 0, "{v}");
}

/// The policy is recorded in the chain once; an unchanged restart records nothing; a change
/// is recorded again, naming the previous policy; each record is a write-once object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_are_chained_once_each() {
    let lab = Lab::new(true).await;
    let enc = |e: &ChainedEvent| encode_single_object_chained(e).expect("encode");
    let ev = chain(9, now_us(), |_| EventCategory::Governance);
    let topics = lab.kafka.topics();
    // Each run archives three more events: their segment existing proves the start (and its
    // policy step, which comes first) is done.
    let mut runs = Vec::new();
    for (i, policy) in ["default=1d", "default=1d", "default=1d,security=2d"]
        .iter()
        .enumerate()
    {
        let part: Vec<Vec<u8>> = ev[i * 3..i * 3 + 3].iter().map(enc).collect();
        produce(&lab.kafka, &topics.chained, part).await;
        let last = (i as i64 + 1) * 3;
        run_until(lab.config(&["--retention", policy]), || {
            lab.segments().iter().any(|(k, _)| k.last_seq == last)
        })
        .await;
        runs.push(lab.policy_events().await);
    }
    assert_eq!(runs[0].len(), 1, "first start: recorded");
    let first = &runs[0][0];
    assert_eq!(attr(first, retention::ATTR_STORE), Some("archive"));
    assert_eq!(attr(first, retention::ATTR_NEW_POLICY), Some("default=1d"));
    assert_eq!(attr(first, retention::ATTR_MODE), Some("compliance"));
    assert_eq!(attr(first, retention::ATTR_OLD_POLICY), Some("none"));
    assert!(
        first.actor.id.starts_with("sink-archive@"),
        "{}",
        first.actor.id
    );
    assert_eq!(runs[1].len(), 1, "unchanged restart: nothing new");
    assert_eq!(runs[2].len(), 2, "changed policy: recorded again");
    let second = &runs[2][1];
    assert_eq!(
        attr(second, retention::ATTR_NEW_POLICY),
        Some("default=1d,security=2d")
    );
    assert_eq!(attr(second, retention::ATTR_OLD_POLICY), Some("default=1d"));
    let records: Vec<String> = lab
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("_retention/"))
        .collect();
    assert_eq!(
        records,
        [retention::record_key(1), retention::record_key(2)],
        "one write-once record per change"
    );
    // The records are locked too.
    let full: Vec<String> = records.iter().map(|k| format!("{PREFIX}/{k}")).collect();
    assert!(retentions(&lab.bucket, &full)
        .iter()
        .all(|(m, _)| m == "COMPLIANCE"));
}

/// A bucket without Object Lock: the worker refuses to start, naming the bucket and the fix.
/// With `--retention-mode off` it archives there, and (nothing ever having been locked)
/// records no policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_without_object_lock_is_refused_unless_off() {
    let lab = Lab::new(false).await;
    let r = sink_archive::run(lab.config(&[]), Shutdown::new()).await;
    let e = r.expect_err("must refuse to start");
    assert!(
        matches!(e, sink_archive::Error::ObjectLockDisabled { .. }),
        "{e}"
    );
    let msg = e.to_string();
    for needle in [
        lab.bucket.as_str(),
        "Object Lock",
        "create the bucket with Object Lock",
        "--retention-mode off",
    ] {
        assert!(msg.contains(needle), "{needle:?} in {msg}");
    }
    assert!(lab.keys().is_empty(), "nothing archived");

    let enc = |e: &ChainedEvent| encode_single_object_chained(e).expect("encode");
    let ev = chain(3, now_us(), |_| EventCategory::Other);
    produce(
        &lab.kafka,
        &lab.kafka.topics().chained,
        ev.iter().map(enc).collect(),
    )
    .await;
    run_until(lab.config(&["--retention-mode", "off"]), || {
        lab.segments().len() == 2
    })
    .await;
    assert!(lab.policy_events().await.is_empty());
    assert!(!lab.keys().iter().any(|k| k.starts_with("_retention/")));
}

/// A crash after the policy event's ack and before its record: the next start publishes the
/// event again, with the same id, then writes the record; the start after that publishes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_record_republishes_the_same_event() {
    let lab = Lab::new(true).await;
    let config = lab.config(&["--retention", "default=1d"]);
    let archive_name = config.archive.describe(Access::Write);
    let r = Retention {
        mode: RetentionMode::Compliance,
        policy: Policy::parse("default=1d").expect("policy"),
    };
    // What the crashed start had published (acknowledged) before writing its record.
    let id = retention::event_id(&archive_name, 1, &r);
    let crashed = retention::policy_event(&PolicyChange {
        previous: None,
        new: &r,
        set_by: "sink-archive@crashed",
        archive: &archive_name,
        record: &retention::record_key(1),
        event_id: id.clone(),
        now_us: now_us(),
    });
    produce(
        &lab.kafka,
        &lab.kafka.topics().validated,
        vec![encode_single_object_event(&crashed).expect("encode")],
    )
    .await;
    let start = || async {
        let store = sink_archive::build_store(&config.archive).expect("store");
        let archive = Archive::new(store, config.retry, CancellationToken::new());
        retention::prepare(
            &config.retention,
            &config.archive,
            &config.kafka,
            archive,
            &config.retry,
            &CancellationToken::new(),
        )
        .await
        .expect("prepare")
    };
    let archive = start().await;
    let events = lab.policy_events().await;
    assert_eq!(events.len(), 2, "published again");
    assert!(events.iter().all(|e| e.event_id == id), "under the same id");
    let rec = retention::last_record(&archive)
        .await
        .expect("read record")
        .expect("a record");
    assert_eq!((rec.n, rec.event_id.as_str()), (1, id.as_str()));
    assert_eq!(rec.policy, "default=1d");
    start().await;
    assert_eq!(lab.policy_events().await.len(), 2, "recorded: nothing more");
}

/// `/readyz` of a sink started with `health_addr`: status and body.
async fn readyz(health_addr: &str) -> Option<(u16, Value)> {
    let r = reqwest::get(format!("http://{health_addr}/readyz"))
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

/// S3 is unreachable when the sink starts: the start-up (reading the bucket's Object Lock
/// configuration) retries, and meanwhile `/readyz` answers 503 naming the store and the call,
/// instead of not answering at all. Once S3 is back the same process archives, and the
/// condition clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_at_start_is_named_on_readyz_and_heals() {
    let lab = Lab::new(true).await;
    let upstream = s3_endpoint();
    let proxy =
        worker_runtime::testing::proxy::Proxy::start(upstream.trim_start_matches("http://")).await;
    proxy.cut();
    let health_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let mut config = lab.config(&["--retention", "default=1d"]);
    config.archive.s3_endpoint = format!("http://127.0.0.1:{}", proxy.port());
    config.common.health_addr = health_addr.clone();
    config.retry.max_attempts = 0; // retry until the store is back
    config.retry.max_delay_ms = 500;
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(sink_archive::run(config, shutdown.clone()));

    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        assert!(!handle.is_finished(), "the sink gave up during the outage");
        if let Some((503, body)) = readyz(&health_addr).await {
            if body["checks"]["object_store"]["ok"] == Value::Bool(false) {
                break body;
            }
        }
        assert!(Instant::now() < deadline, "/readyz never named the outage");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let detail = body["checks"]["object_store"]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        detail.contains("Object Lock configuration") && detail.contains(&lab.bucket),
        "{body}"
    );
    assert_eq!(body["ready"], Value::Bool(false), "{body}");
    // The sink keeps trying during the outage.
    proxy.wait_refused(proxy.refused(), 2).await;

    proxy.restore();
    let enc = |e: &ChainedEvent| encode_single_object_chained(e).expect("encode");
    let ev = chain(3, now_us(), |_| EventCategory::Other);
    produce(
        &lab.kafka,
        &lab.kafka.topics().chained,
        ev.iter().map(enc).collect(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while lab.segments().len() < 2 {
        assert!(!handle.is_finished(), "the sink stopped");
        assert!(
            Instant::now() < deadline,
            "nothing archived after the outage"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, body) = readyz(&health_addr).await.expect("/readyz answers");
    assert_eq!(
        body["checks"]["object_store"]["ok"],
        Value::Bool(true),
        "{body}"
    );
    shutdown.trigger();
    handle.await.expect("join").expect("worker result");
}

/// `--segment-codec zstandard`: a change of codec applies to new segments, and a third party's
/// Avro reader (fastavro, fetching with boto3) reads both kinds from S3, codec from the header:
/// the records as chained, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstandard_and_deflate_segments_are_read_by_a_third_party_avro_reader() {
    let lab = Lab::new(false).await;
    let enc = |e: &ChainedEvent| encode_single_object_chained(e).expect("encode");
    let ev = chain(6, now_us(), |_| EventCategory::Other);
    let topics = lab.kafka.topics();
    // Seqs 1..=3 with the default codec, then 4..=6 by a sink set to zstandard.
    produce(
        &lab.kafka,
        &topics.chained,
        ev[..3].iter().map(enc).collect(),
    )
    .await;
    run_until(lab.config(&["--retention-mode", "off"]), || {
        lab.segments().len() == 2
    })
    .await;
    produce(
        &lab.kafka,
        &topics.chained,
        ev[3..].iter().map(enc).collect(),
    )
    .await;
    run_until(
        lab.config(&["--retention-mode", "off", "--segment-codec", "zstandard"]),
        || lab.segments().len() == 4,
    )
    .await;

    let read = boto3(
        r#"
import io
try:
    import fastavro
    import backports.zstd  # what fastavro's zstandard codec needs before Python 3.14
except ImportError as e:
    sys.exit(f"{e}: deploy/local/stack.sh install")
out = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=arg + "/chain="):
    for o in page.get("Contents", []):
        if not o["Key"].endswith(".avro"):
            continue
        body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        r = fastavro.reader(io.BytesIO(body))
        recs = list(r)
        out.append({
            "codec": r.codec,
            "seqs": [x["seq"] for x in recs],
            "hashes": [x["hash"].hex() for x in recs],
            "event_ids": [x["event"]["event_id"] for x in recs],
            "last_seq": r.metadata["audit.segment.last_seq"],
        })
out.sort(key=lambda s: s["seqs"][0])
print(json.dumps(out))
"#,
        &lab.bucket,
        &Value::String(PREFIX.into()),
    );
    let segs = read.as_array().expect("segments");
    assert_eq!(segs.len(), 2, "{read:#}");
    for (seg, (codec, range)) in segs
        .iter()
        .zip([("deflate", &ev[..3]), ("zstandard", &ev[3..])])
    {
        assert_eq!(seg["codec"], codec, "{seg:#}");
        let want_seqs: Vec<i64> = range.iter().map(|e| e.seq).collect();
        let want_hashes: Vec<String> = range.iter().map(|e| hex::encode(&e.hash)).collect();
        let want_ids: Vec<&str> = range.iter().map(|e| e.event.event_id.as_str()).collect();
        assert_eq!(seg["seqs"], serde_json::json!(want_seqs), "{seg:#}");
        assert_eq!(seg["hashes"], serde_json::json!(want_hashes), "{seg:#}");
        assert_eq!(seg["event_ids"], serde_json::json!(want_ids), "{seg:#}");
        assert_eq!(seg["last_seq"], want_seqs[2].to_string(), "{seg:#}");
    }
}

/// The sink appends what the chainer wrote as it is, and only because that is the record's own
/// encoding. A record encoded otherwise (here an over-long varint, which every Avro reader
/// takes as the same value) is archived as its encoding all the same: each segment, fetched
/// with boto3, is byte for byte what the segment writer makes of the records it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_encoded_otherwise_are_archived_as_their_own_encoding() {
    let lab = Lab::new(false).await;
    let ev = chain(4, now_us(), |_| EventCategory::Other);
    let payloads: Vec<Vec<u8>> = ev
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let p = encode_single_object_chained(e).expect("encode");
            if i % 2 == 0 {
                return p;
            }
            // chain_partition's one-byte varint in two bytes: the same value, other bytes.
            let (header, datum) = p.split_at(schemas::framing::SINGLE_OBJECT_HEADER_LEN);
            assert!(datum[0] < 0x80, "a one-byte varint");
            [header, &[datum[0] | 0x80, 0x00], &datum[1..]].concat()
        })
        .collect();
    for (p, e) in payloads.iter().zip(&ev) {
        let decoded = schemas::framing::decode_chained(p, None).expect("decodes");
        assert_eq!(&decoded, e, "the padded records read as the chained ones");
    }
    produce(&lab.kafka, &lab.kafka.topics().chained, payloads).await;
    // Two segments (3 records, then 1) and their manifests.
    run_until(lab.config(&["--retention-mode", "off"]), || {
        lab.segments().len() == 4
    })
    .await;

    let objects = boto3(
        r#"
out = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=arg + "/chain="):
    for o in page.get("Contents", []):
        if o["Key"].endswith(".avro"):
            out.append(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read().hex())
print(json.dumps(out))
"#,
        &lab.bucket,
        &Value::String(PREFIX.into()),
    );
    let objects = objects.as_array().expect("segments");
    assert_eq!(objects.len(), 2, "{objects:?}");
    let mut archived = Vec::new();
    for o in objects {
        let bytes = hex::decode(o.as_str().expect("hex")).expect("hex");
        let (meta, events) = segment::read_segment(&bytes).expect("a segment");
        let written = segment::write_segment(&meta, &events).expect("write");
        assert!(
            written == bytes,
            "segment {}..={} holds other bytes than its records' encoding",
            meta.first_seq,
            meta.last_seq
        );
        archived.extend(events);
    }
    archived.sort_by_key(|e| e.seq);
    assert_eq!(archived, ev);
}
