//! `auditctl hold` on the local stack (SeaweedFS S3 on 8333, tansu on 9092;
//! `deploy/local/stack.sh up`). FAILS when they are absent.
//!
//! Each test creates its own bucket with Object Lock enabled (legal hold needs one), writes a
//! small archive into it with the fixtures' segment writer (partition 0: seqs 1..=30 in three
//! segments of ten, checkpoints at 10, 20, 30), and its own topics. What the tests check is
//! seen through other clients than auditctl's: S3 requests signed by curl (`--aws-sigv4`), the
//! legal-hold view of boto3, and the events read back from the chain's input topic.
//!
//! Each test also has its own ClickHouse database (the local 18.16 on 8123), migrated by
//! sink-clickhouse's own runner and holding the same chain: `hold on|off` flags and clears
//! the range's rows there (`legal_hold`, which spares them from retention TTL), checked with
//! plain SQL; and `verify --source clickhouse` still passes on held rows.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;
use rdkafka::Message;
use schemas::segment::checkpoint_key;
use schemas::{AuditEvent, ChainedEvent};
use serde_json::Value;
use worker_runtime::kafka::admin::{ensure_topics, pipeline_topic_specs};
use worker_runtime::kafka::tail::{scan, ScanStart};
use worker_runtime::kafka::KafkaArgs;

const BROKERS: &str = "127.0.0.1:9092";
/// The archive's key prefix inside each test bucket.
const PREFIX: &str = "lh";

/// A fresh database migrated by sink-clickhouse's own runner (so it has the `legal_hold`
/// column of migration 0007, as a database the sink writes has).
async fn migrated_db(tag: &str) -> TestDb {
    let name = unique(&format!("lh_{tag}"));
    let settings = sink_clickhouse::store::StoreSettings {
        url: clickhouse_url(),
        database: name.clone(),
        user: "default".into(),
        password: worker_runtime::Secret::new(String::new()),
    };
    let store = sink_clickhouse::store::Store::connect(&settings)
        .await
        .unwrap_or_else(|e| panic!("ClickHouse must be up (deploy/local/stack.sh up): {e}"));
    sink_clickhouse::migrations::apply(&store)
        .await
        .expect("sink-clickhouse migrations");
    let client = clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_database(&name)
        .with_validation(false);
    TestDb { name, client }
}

/// A key of the archive in the bucket, URL-encoded for curl (`=` as `%3D`, as SigV4 wants).
fn url_key(key: &str) -> String {
    format!("{PREFIX}/{key}")
        .replace('=', "%3D")
        .replace('@', "%40")
}

/// A fresh bucket (S3 names: lowercase, digits, hyphens).
fn bucket_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "auditctl-lh-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn make_bucket(object_lock: bool) -> String {
    let bucket = bucket_name();
    let lock = ["x-amz-bucket-object-lock-enabled: true"];
    let (code, body) = common::s3_curl(
        "PUT",
        &format!("/{bucket}"),
        if object_lock { &lock[..] } else { &[] },
    );
    assert_eq!(
        code,
        200,
        "creating bucket {bucket} (SeaweedFS must be up: deploy/local/stack.sh up): {}",
        String::from_utf8_lossy(&body)
    );
    bucket
}

struct Lab {
    bucket: String,
    /// The archived chains (partition 0 only, unless built `with_chains`).
    chains: Vec<Chain>,
    db: TestDb,
    keyset: std::path::PathBuf,
    store: Arc<dyn ObjectStore>,
    kafka: KafkaArgs,
    /// Segment object keys (relative to the archive root), in seq order.
    segments: Vec<String>,
    _keys: tempfile::TempDir,
}

impl Lab {
    async fn new(tag: &str, object_lock: bool) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let (key, keyset) = test_key(dir.path(), "k1");
        let chain = build_chain(0, 30, &key, 10, BASE_US);
        Self::with_chains(tag, object_lock, vec![chain], keyset, dir, usize::MAX).await
    }

    /// A lab archiving `chains` (segments of ten, as [`Lab::new`]), whose database holds the
    /// first `in_db` events of each chain and every checkpoint.
    async fn with_chains(
        tag: &str,
        object_lock: bool,
        chains: Vec<Chain>,
        keyset: std::path::PathBuf,
        dir: tempfile::TempDir,
        in_db: usize,
    ) -> Self {
        let bucket = make_bucket(object_lock);
        let store: Arc<dyn ObjectStore> = Arc::new(
            AmazonS3Builder::new()
                .with_bucket_name(&bucket)
                .with_endpoint(common::s3_endpoint())
                .with_region(common::s3_region())
                .with_access_key_id(common::s3_access_key())
                .with_secret_access_key(common::s3_secret_key())
                .with_allow_http(true)
                .build()
                .expect("s3 client"),
        );
        let mut segments = Vec::new();
        let db = migrated_db(tag).await;
        for chain in &chains {
            segments.extend(write_archive(&*store, PREFIX, chain, 10).await);
            let n = in_db.min(chain.events.len());
            db.insert_events(&chain.events[..n]).await;
            db.insert_checkpoints(&chain.checkpoints).await;
        }
        assert_eq!(segments.len(), 3 * chains.len());
        let kafka = KafkaArgs::local(BROKERS, &format!("{}.", unique(tag)));
        ensure_topics(&kafka, &pipeline_topic_specs(&kafka, 1), 1)
            .await
            .expect("topics (tansu on 9092 must be up: deploy/local/stack.sh up)");
        Self {
            bucket,
            chains,
            db,
            keyset,
            store,
            kafka,
            segments,
            _keys: dir,
        }
    }

    fn args(&self, action: &str, extra: &[&str]) -> Vec<String> {
        let mut a = s(&["hold", action, "--partition", "0", "--json"]);
        a.extend(s(extra));
        a.extend(self.store_args());
        a
    }

    /// `hold ACTION --json EXTRA…` with no --partition (a query's selection).
    fn query_args(&self, action: &str, extra: &[&str]) -> Vec<String> {
        let mut a = s(&["hold", action, "--json"]);
        a.extend(s(extra));
        a.extend(self.store_args());
        a
    }

    /// The archive, broker and database flags.
    fn store_args(&self) -> Vec<String> {
        let mut a = s(&[
            "--archive-url",
            &format!("s3://{}/{PREFIX}", self.bucket),
            "--s3-endpoint",
            &common::s3_endpoint(),
            "--s3-region",
            &common::s3_region(),
            "--s3-access-key-id",
            &common::s3_access_key(),
            "--s3-secret-access-key",
            &common::s3_secret_key(),
            "--kafka-brokers",
            &self.kafka.brokers,
            "--topic-prefix",
            &self.kafka.topic_prefix,
        ]);
        a.extend(self.db.args());
        a
    }

    /// The seqs of partition 0 flagged `legal_hold = 1` in ClickHouse.
    async fn held_rows(&self) -> Vec<i64> {
        self.db
            .client
            .query("SELECT seq FROM audit_events WHERE chain_partition = 0 AND legal_hold = 1 ORDER BY seq")
            .fetch_all()
            .await
            .expect("held rows")
    }

    /// `auditctl verify --source clickhouse` of the lab database.
    async fn verify(&self) -> (u8, String) {
        let mut args = s(&["verify", "--source", "clickhouse", "--keys"]);
        args.push(self.keyset.display().to_string());
        args.extend(self.db.args());
        auditctl(&args).await
    }

    async fn hold(&self, action: &str, extra: &[&str]) -> (u8, String, Value) {
        self.run(self.args(action, extra)).await
    }

    /// `hold ACTION EXTRA…` without --partition.
    async fn hold_query(&self, action: &str, extra: &[&str]) -> (u8, String, Value) {
        self.run(self.query_args(action, extra)).await
    }

    /// Runs auditctl; its output and the JSON document it starts with.
    async fn run(&self, args: Vec<String>) -> (u8, String, Value) {
        let (code, out) = auditctl(&args).await;
        let json = out
            .split("\nerror: ")
            .next()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or(Value::Null);
        (code, out, json)
    }

    /// The version id of the current version of an archive key.
    async fn version(&self, key: &str) -> String {
        let meta = self
            .store
            .head(&ObjPath::from(format!("{PREFIX}/{key}")))
            .await
            .unwrap_or_else(|e| panic!("head {key}: {e}"));
        meta.version
            .unwrap_or_else(|| panic!("{key}: no version id (is the bucket versioned?)"))
    }

    async fn bytes(&self, key: &str) -> Vec<u8> {
        self.store
            .get(&ObjPath::from(format!("{PREFIX}/{key}")))
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes")
            .to_vec()
    }

    fn delete_version(&self, key: &str, version: &str) -> (u16, String) {
        let (code, body) = common::s3_curl(
            "DELETE",
            &format!("/{}/{}?versionId={version}", self.bucket, url_key(key)),
            &[],
        );
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    fn get_version(&self, key: &str, version: &str) -> (u16, Vec<u8>) {
        common::s3_curl(
            "GET",
            &format!("/{}/{}?versionId={version}", self.bucket, url_key(key)),
            &[],
        )
    }

    /// Every event on the chain's input topic (`<prefix>validated`).
    async fn recorded(&self) -> Vec<AuditEvent> {
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
            .collect()
    }
}

/// Segment `i` (0-based) of the lab archive: its object and manifest keys.
fn seg_keys(lab: &Lab, i: usize) -> (String, String) {
    let (k, _) = schemas::segment::parse_key(&lab.segments[i]).expect("segment key");
    (k.object_key(), k.manifest_key())
}

fn attr<'a>(e: &'a AuditEvent, key: &str) -> Option<&'a str> {
    e.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value.as_str())
}

fn keys_of(report: &Value) -> Vec<String> {
    report["objects"]
        .as_array()
        .unwrap_or_else(|| panic!("no objects in {report}"))
        .iter()
        .map(|o| o["key"].as_str().expect("key").to_owned())
        .collect()
}

fn holds_of(report: &Value) -> Vec<String> {
    report["objects"]
        .as_array()
        .unwrap_or_else(|| panic!("no objects in {report}"))
        .iter()
        .map(|o| o["legal_hold"].as_str().unwrap_or("-").to_owned())
        .collect()
}

/// boto3's `get_object_legal_hold` of each key: "ON", "OFF", or the error code.
fn boto3_holds(bucket: &str, keys: &[String]) -> Vec<String> {
    let script = r#"
import json, os, sys
try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError
except ImportError:
    sys.exit("boto3 is missing: python3 -m pip install boto3")
s3 = boto3.client("s3", endpoint_url=os.environ["LH_ENDPOINT"], region_name=os.environ["LH_REGION"],
    aws_access_key_id=os.environ["LH_KEY"], aws_secret_access_key=os.environ["LH_SECRET"],
    config=Config(s3={"addressing_style": "path"}))
out = []
for k in json.loads(os.environ["LH_KEYS"]):
    try:
        out.append(s3.get_object_legal_hold(Bucket=os.environ["LH_BUCKET"], Key=k)["LegalHold"]["Status"])
    except ClientError as e:
        out.append(e.response["Error"]["Code"])
print(json.dumps(out))
"#;
    let full: Vec<String> = keys.iter().map(|k| format!("{PREFIX}/{k}")).collect();
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .env("LH_ENDPOINT", common::s3_endpoint())
        .env("LH_REGION", common::s3_region())
        .env("LH_KEY", common::s3_access_key())
        .env("LH_SECRET", common::s3_secret_key())
        .env("LH_BUCKET", bucket)
        .env("LH_KEYS", serde_json::to_string(&full).expect("json"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("boto3 output")
}

/// `hold on` over seqs 12..=15: exactly segment 11..=20, its manifest and checkpoint 20 are
/// held. A plain S3 DELETE of the segment only hides it behind a delete marker, a DELETE of
/// its version is refused and the locked bytes stay readable; the same DELETE of an uncovered
/// segment succeeds. Status and boto3 both say ON, and the hold is an event on the chain's
/// input with who, partition, range, reason, case and object counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_on_blocks_deleting_the_covered_objects_and_is_chained() {
    let lab = Lab::new("hold_on", true).await;
    let (seg, manifest) = seg_keys(&lab, 1);
    let cp = checkpoint_key(0, 20, "k1");
    let covered = vec![seg.clone(), manifest.clone(), cp.clone()];

    // A dry run lists them and changes nothing.
    let (code, out, report) = lab.hold("on", &["--seq", "12..15", "--dry-run"]).await;
    assert_eq!(code, 0, "{out}");
    let mut listed = keys_of(&report);
    listed.sort();
    let mut want = covered.clone();
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(report["recorded"], Value::Null);
    assert_eq!(report["clickhouse"]["rows"], 4, "{out}");
    assert_eq!(report["clickhouse"]["held"], 0, "{out}");
    let (code, out, before) = lab.hold("status", &["--seq", "12..15"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(holds_of(&before), ["none", "none", "none"], "{out}");
    assert!(lab.held_rows().await.is_empty(), "a dry run flags nothing");
    assert!(lab.recorded().await.is_empty(), "a dry run records nothing");

    let (code, out, report) = lab
        .hold(
            "on",
            &[
                "--seq",
                "12..15",
                "--reason",
                "litigation: Doe v. Roe",
                "--case",
                "CASE-42",
                "--held-by",
                "legal-ops",
            ],
        )
        .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["changed"], 3, "{out}");
    assert_eq!(report["recorded"]["event_type"], "audit.legal_hold.set");
    // ClickHouse: exactly the range's rows are flagged (spared by retention TTL).
    assert_eq!(report["clickhouse"]["held"], 4, "{out}");
    assert_eq!(lab.held_rows().await, [12, 13, 14, 15]);
    // The flag is not part of the chain: the stored chain still verifies.
    let (code, out) = lab.verify().await;
    assert_eq!(code, 0, "verify on held rows: {out}");
    assert!(out.contains("result: OK"), "{out}");

    // Status (auditctl's GET ?legal-hold) and a third-party client agree.
    let (code, out, status) = lab.hold("status", &["--seq", "12..15"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(holds_of(&status), ["ON", "ON", "ON"], "{out}");
    let mut probe = covered.clone();
    probe.push(lab.segments[0].clone());
    assert_eq!(
        boto3_holds(&lab.bucket, &probe),
        ["ON", "ON", "ON", "NoSuchObjectLegalHold"]
    );

    // A plain DELETE (no version id) of the held segment: SeaweedFS, like S3 on a versioned
    // bucket, only adds a delete marker; the held version is untouched.
    let original = lab.bytes(&seg).await;
    let version = lab.version(&seg).await;
    let (code, body) =
        common::s3_curl("DELETE", &format!("/{}/{}", lab.bucket, url_key(&seg)), &[]);
    assert_eq!(code, 204, "{}", String::from_utf8_lossy(&body));
    let (code, bytes) = lab.get_version(&seg, &version);
    assert_eq!((code, bytes == original), (200, true));
    // Deleting the held version itself is refused, and its bytes stay readable.
    let (code, body) = lab.delete_version(&seg, &version);
    assert_eq!(code, 403, "deleting a held version: {body}");
    assert!(body.contains("AccessDenied"), "{body}");
    let (code, bytes) = lab.get_version(&seg, &version);
    assert_eq!((code, bytes == original), (200, true), "the locked bytes");
    for k in [&manifest, &cp] {
        let v = lab.version(k).await;
        let (code, body) = lab.delete_version(k, &v);
        assert_eq!(code, 403, "deleting held {k}: {body}");
    }
    // An uncovered segment's version goes.
    let free = &lab.segments[0];
    let v = lab.version(free).await;
    let (code, body) = lab.delete_version(free, &v);
    assert_eq!(code, 204, "deleting an unheld version: {body}");
    assert_eq!(lab.get_version(free, &v).0, 404);

    // The hold is on the chain's input, saying who, what and why.
    let events = lab.recorded().await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.event_type, "audit.legal_hold.set");
    assert_eq!(
        e.event_id,
        report["recorded"]["event_id"].as_str().unwrap_or("")
    );
    assert_eq!(e.actor.id, "legal-ops");
    assert_eq!(e.reason.as_deref(), Some("litigation: Doe v. Roe"));
    assert_eq!(attr(e, "audit.legal_hold.partition"), Some("0"));
    assert_eq!(attr(e, "audit.legal_hold.seq_range"), Some("12..=15"));
    assert_eq!(
        attr(e, "audit.legal_hold.covered_seq_range"),
        Some("11..=20")
    );
    assert_eq!(attr(e, "audit.legal_hold.case_id"), Some("CASE-42"));
    assert_eq!(attr(e, "audit.legal_hold.objects"), Some("3"));
    assert_eq!(attr(e, "audit.legal_hold.segments"), Some("1"));
    assert_eq!(attr(e, "audit.legal_hold.manifests"), Some("1"));
    assert_eq!(attr(e, "audit.legal_hold.checkpoints"), Some("1"));
    assert!(attr(e, "audit.legal_hold.archive").is_some_and(|a| a.contains(&lab.bucket)));
    assert_eq!(
        attr(e, "audit.legal_hold.clickhouse"),
        Some(format!("{}.audit_events", lab.db.name).as_str())
    );
    assert_eq!(attr(e, "audit.legal_hold.clickhouse_rows"), Some("4"));
    lab.db.drop().await;
}

/// `hold off` releases: the versions can be deleted again, and the release is chained after
/// the hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_off_releases_the_objects_and_is_chained() {
    let lab = Lab::new("hold_off", true).await;
    let (seg, manifest) = seg_keys(&lab, 2);
    let common = [
        "--seq",
        "21..",
        "--held-by",
        "legal-ops",
        "--case",
        "CASE-9",
    ];
    let mut on = common.to_vec();
    on.extend(["--reason", "preserve the tail"]);
    let (code, out, _) = lab.hold("on", &on).await;
    assert_eq!(code, 0, "{out}");
    let version = lab.version(&seg).await;
    assert_eq!(lab.delete_version(&seg, &version).0, 403, "held");
    let tail: Vec<i64> = (21..=30).collect();
    assert_eq!(lab.held_rows().await, tail);

    let mut off = common.to_vec();
    off.extend(["--reason", "case closed"]);
    let (code, out, report) = lab.hold("off", &off).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        report["recorded"]["event_type"],
        "audit.legal_hold.released"
    );
    assert!(lab.held_rows().await.is_empty(), "off clears the flag");
    assert_eq!(report["clickhouse"]["held"], 0, "{out}");
    let (code, out) = lab.verify().await;
    assert_eq!(code, 0, "{out}");
    // `--check` is `status`.
    let (_, out, status) = lab.hold("off", &["--seq", "21..", "--check"]).await;
    assert!(holds_of(&status).iter().all(|h| h == "OFF"), "{out}");
    assert_eq!(
        boto3_holds(&lab.bucket, std::slice::from_ref(&seg)),
        ["OFF"]
    );

    let (code, body) = lab.delete_version(&seg, &version);
    assert_eq!(code, 204, "deleting a released version: {body}");
    assert_eq!(lab.get_version(&seg, &version).0, 404);
    let mv = lab.version(&manifest).await;
    assert_eq!(lab.delete_version(&manifest, &mv).0, 204);

    let events = lab.recorded().await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(kinds, ["audit.legal_hold.set", "audit.legal_hold.released"]);
    let r = &events[1];
    assert_eq!(r.actor.id, "legal-ops");
    assert_eq!(r.reason.as_deref(), Some("case closed"));
    assert_eq!(attr(r, "audit.legal_hold.seq_range"), Some("21.."));
    assert_eq!(attr(r, "audit.legal_hold.case_id"), Some("CASE-9"));
    // Segment 21..=30, its manifest, checkpoint 30.
    assert_eq!(attr(r, "audit.legal_hold.objects"), Some("3"));
    // off: the rows now subject to retention again.
    assert_eq!(attr(r, "audit.legal_hold.clickhouse_rows"), Some("10"));
    lab.db.drop().await;
}

/// When the event cannot be published, the hold is still set: the command exits 3 and says
/// so, and running it again (broker back) records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_cannot_be_recorded_says_it_is_set() {
    let lab = Lab::new("hold_unrecorded", true).await;
    let mut args = lab.args(
        "on",
        &[
            "--seq",
            "1..5",
            "--reason",
            "r",
            "--held-by",
            "ops",
            "--kafka-property",
            "message.timeout.ms=2000",
        ],
    );
    let i = args
        .iter()
        .position(|a| a == "--kafka-brokers")
        .expect("flag");
    args[i + 1] = "127.0.0.1:1".into();
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("the legal hold IS SET on 3 object(s)"),
        "{out}"
    );
    assert!(out.contains("Run the same command again"), "{out}");
    let (_, out, status) = lab.hold("status", &["--seq", "1..5"]).await;
    assert_eq!(holds_of(&status), ["ON", "ON", "ON"], "{out}");
    assert!(lab.recorded().await.is_empty());
    assert_eq!(lab.held_rows().await, [1, 2, 3, 4, 5]);

    let (code, out, _) = lab
        .hold(
            "on",
            &["--seq", "1..5", "--reason", "r", "--held-by", "ops"],
        )
        .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(lab.recorded().await.len(), 1);
    lab.db.drop().await;
}

/// A bucket without Object Lock refuses legal holds: exit 3, with the reason, and nothing
/// recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_without_object_lock_is_a_clear_error() {
    let lab = Lab::new("hold_nolock", false).await;
    let (code, out, report) = lab
        .hold(
            "on",
            &["--seq", "1..5", "--reason", "r", "--held-by", "ops"],
        )
        .await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("Object Lock enabled"), "{out}");
    assert_eq!(report["changed"], 0, "{out}");
    assert!(lab.recorded().await.is_empty());
    assert!(
        lab.held_rows().await.is_empty(),
        "nothing held in the archive: nothing flagged either"
    );
    lab.db.drop().await;
}

/// A database the sink never migrated to 0007 (no `legal_hold` column): the archive hold is
/// set and recorded (saying ClickHouse failed), and the command exits 3 saying so;
/// `--no-clickhouse` holds the archive only and records that ClickHouse was skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_without_the_hold_column_is_reported_and_recorded() {
    let mut lab = Lab::new("hold_nocol", true).await;
    let old = TestDb::new("lh_old").await;
    let migrated = std::mem::replace(&mut lab.db, old);
    let (code, out, report) = lab
        .hold(
            "on",
            &["--seq", "1..5", "--reason", "r", "--held-by", "ops"],
        )
        .await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("has no legal_hold column"), "{out}");
    assert!(
        out.contains("the legal hold IS SET on 3 archive object(s)"),
        "{out}"
    );
    assert_eq!(report["changed"], 3, "{out}");
    let events = lab.recorded().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        attr(&events[0], "audit.legal_hold.clickhouse"),
        Some("failed")
    );

    let (code, out, report) = lab
        .hold(
            "on",
            &[
                "--seq",
                "1..5",
                "--reason",
                "r",
                "--held-by",
                "ops",
                "--no-clickhouse",
            ],
        )
        .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(report.get("clickhouse"), None, "{out}");
    let events = lab.recorded().await;
    assert_eq!(
        attr(&events[1], "audit.legal_hold.clickhouse"),
        Some("skipped")
    );
    let old = std::mem::replace(&mut lab.db, migrated);
    old.drop().await;
    lab.db.drop().await;
}

// ---- holds by query (request id, time) and rehydrate --hold ------------------------------------

/// The request id of the case in [`two_partition_lab`].
const CASE_REQUEST: &str = "req-case-7";
/// Which events (partition, i) carry [`CASE_REQUEST`]: spread over both partitions, a run of
/// two and lone ones, across segments.
const CASE_EVENTS: &[(u32, u64)] = &[(0, 3), (0, 4), (0, 17), (1, 25), (1, 26)];

/// Two partitions of 30 events each (segments of ten, checkpoints every ten), in the archive
/// and in ClickHouse; the events of [`CASE_EVENTS`] carry [`CASE_REQUEST`], every other one a
/// request id of its own.
async fn two_partition_lab(tag: &str) -> Lab {
    let dir = tempfile::tempdir().expect("tmp");
    let (key, keyset) = test_key(dir.path(), "k1");
    let chains = (0..2u32)
        .map(|p| {
            build_chain_tweaked(p, 30, &key, 10, BASE_US, 0, &move |i, e| {
                e.request_id = Some(if CASE_EVENTS.contains(&(p, i)) {
                    CASE_REQUEST.to_owned()
                } else {
                    format!("req-p{p}-{i}")
                });
            })
        })
        .collect();
    Lab::with_chains(tag, true, chains, keyset, dir, usize::MAX).await
}

impl Lab {
    /// Every object of the lab's archive: segments, manifests, checkpoints.
    fn all_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for seg in &self.segments {
            let (k, _) = schemas::segment::parse_key(seg).expect("segment key");
            keys.extend([k.object_key(), k.manifest_key()]);
        }
        for c in &self.chains {
            for cp in &c.checkpoints {
                keys.push(checkpoint_key(cp.partition, cp.seq, &cp.key_id));
            }
        }
        keys.sort();
        keys
    }

    /// (partition, seq) of every row flagged `legal_hold = 1`, and of every row (once).
    async fn flagged(&self) -> (Vec<(i32, i64)>, Vec<(i32, i64)>) {
        let held = self
            .db
            .client
            .query("SELECT chain_partition, seq FROM audit_events WHERE legal_hold = 1 ORDER BY chain_partition, seq")
            .fetch_all()
            .await
            .expect("held rows");
        let all = self
            .db
            .client
            .query("SELECT chain_partition, seq FROM audit_events ORDER BY chain_partition, seq")
            .fetch_all()
            .await
            .expect("rows");
        (held, all)
    }
}

/// The answer, computed here from the chains and the archive's layout (segments of ten from
/// seq 1, a checkpoint every ten): the events selected, and the objects a hold of them must
/// cover — the segment (and manifest) holding each one, and the checkpoints from its seq up
/// to the first one at or after it (which seals it).
fn expected_cover(
    lab: &Lab,
    selected: &dyn Fn(&ChainedEvent) -> bool,
) -> (Vec<(i32, i64)>, Vec<String>) {
    let mut events = Vec::new();
    let mut keys = std::collections::BTreeSet::new();
    for c in &lab.chains {
        let cp_seqs: Vec<i64> = c.checkpoints.iter().map(|cp| cp.seq).collect();
        for e in c.events.iter().filter(|e| selected(e)) {
            events.push((e.chain_partition, e.seq));
            let seg = lab
                .segments
                .iter()
                .find_map(|k| {
                    let (key, _) = schemas::segment::parse_key(k)?;
                    (key.partition == e.chain_partition
                        && key.first_seq <= e.seq
                        && e.seq <= key.last_seq)
                        .then_some(key)
                })
                .expect("a segment holds every event");
            keys.insert(seg.object_key());
            keys.insert(seg.manifest_key());
            let seq = e.seq;
            let seal = cp_seqs
                .iter()
                .copied()
                .filter(|s| *s >= seq)
                .min()
                .unwrap_or(i64::MAX);
            for cp in c
                .checkpoints
                .iter()
                .filter(|cp| cp.seq >= seq && cp.seq <= seal)
            {
                keys.insert(checkpoint_key(cp.partition, cp.seq, &cp.key_id));
            }
        }
    }
    events.sort();
    (events, keys.into_iter().collect())
}

/// boto3's view of every archive object: `state` for those in `keys`, and
/// NoSuchObjectLegalHold (never held) for every other one.
fn expect_holds(lab: &Lab, keys: &[String], state: &str) {
    let all = lab.all_keys();
    let got = boto3_holds(&lab.bucket, &all);
    let want: Vec<String> = all
        .iter()
        .map(|k| {
            if keys.contains(k) {
                state
            } else {
                "NoSuchObjectLegalHold"
            }
            .to_owned()
        })
        .collect();
    let diff: Vec<_> = all
        .iter()
        .zip(got.iter().zip(&want))
        .filter(|(_, (g, w))| g != w)
        .collect();
    assert!(diff.is_empty(), "key: (boto3, expected): {diff:?}");
}

/// `hold on --query request_id=R` over a case spread across two partitions: exactly the
/// archive objects holding its events (and sealing them) get the legal hold, in the view of
/// boto3; exactly its rows are flagged; the chained event carries the query and its counts.
/// `--from/--to` narrow it. `off` clears all of it and is chained too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_by_request_id_covers_exactly_the_case_in_both_stores() {
    let lab = two_partition_lab("hold_query").await;
    let is_case = |e: &ChainedEvent| e.event.request_id.as_deref() == Some(CASE_REQUEST);
    let (events, keys) = expected_cover(&lab, &is_case);
    assert_eq!(events, [(0, 3), (0, 4), (0, 17), (1, 25), (1, 26)]);
    // Segments 1..=10 and 11..=20 of partition 0, 21..=30 of partition 1, their manifests,
    // checkpoints 10 and 20 of partition 0 and 30 of partition 1.
    assert_eq!(keys.len(), 9, "{keys:?}");
    let query = format!("request_id={CASE_REQUEST}");

    // A dry run lists them and changes nothing; so does status.
    let (code, out, report) = lab
        .hold_query("on", &["--query", &query, "--dry-run"])
        .await;
    assert_eq!(code, 0, "{out}");
    let mut listed = keys_of(&report);
    listed.sort();
    assert_eq!(listed, keys, "{out}");
    assert_eq!(report["query"]["matched"], 5, "{out}");
    assert_eq!(report["clickhouse"]["rows"], 5, "{out}");
    assert_eq!(report["clickhouse"]["held"], 0, "{out}");
    let (code, out, status) = lab.hold_query("status", &["--query", &query]).await;
    assert_eq!(code, 0, "{out}");
    assert!(holds_of(&status).iter().all(|h| h == "none"), "{out}");
    assert!(lab.recorded().await.is_empty());

    // --from/--to narrow the selection (event i is at BASE_US + i minutes).
    let (from, to) = (BASE_US + 10 * 60_000_000, BASE_US + 26 * 60_000_000);
    let in_window = |e: &ChainedEvent| {
        is_case(e) && e.event.event_time_us >= from && e.event.event_time_us < to
    };
    let (narrow_events, narrow_keys) = expected_cover(&lab, &in_window);
    assert_eq!(narrow_events, [(0, 17), (1, 25)]);
    let (code, out, report) = lab
        .hold_query(
            "on",
            &[
                "--query",
                &query,
                "--from",
                "2024-06-01 00:10:00",
                "--to",
                "2024-06-01T00:26:00Z",
                "--dry-run",
            ],
        )
        .await;
    assert_eq!(code, 0, "{out}");
    let mut listed = keys_of(&report);
    listed.sort();
    assert_eq!(listed, narrow_keys, "{out}");
    assert_eq!(report["clickhouse"]["rows"], 2, "{out}");

    // On.
    let (code, out, report) = lab
        .hold_query(
            "on",
            &[
                "--query",
                &query,
                "--reason",
                "litigation: Roe v. Doe",
                "--case",
                "CASE-7",
                "--held-by",
                "legal-ops",
            ],
        )
        .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["changed"], 9, "{out}");
    expect_holds(&lab, &keys, "ON");
    let (held, all) = lab.flagged().await;
    assert_eq!(held, events, "exactly the case's rows are flagged");
    assert_eq!(all.len(), 60);
    let (code, out) = lab.verify().await;
    assert_eq!(code, 0, "verify on held rows: {out}");

    let recorded = lab.recorded().await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let e = &recorded[0];
    assert_eq!(e.event_type, "audit.legal_hold.set");
    assert_eq!(e.actor.id, "legal-ops");
    assert_eq!(e.reason.as_deref(), Some("litigation: Roe v. Doe"));
    assert_eq!(
        attr(e, "audit.legal_hold.query"),
        Some(format!("{{\"request_id\":[\"{CASE_REQUEST}\"]}}").as_str())
    );
    assert_eq!(attr(e, "audit.legal_hold.matched_events"), Some("5"));
    assert_eq!(
        attr(e, "audit.legal_hold.matched_seq_ranges"),
        Some("0:3..=4,17 1:25..=26")
    );
    let listing: String = events.iter().map(|(p, s)| format!("{p} {s}\n")).collect();
    assert_eq!(
        attr(e, "audit.legal_hold.matched_sha256"),
        Some(schemas::segment::sha256_hex(listing.as_bytes()).as_str())
    );
    assert_eq!(attr(e, "audit.legal_hold.partition"), Some("0,1"));
    assert_eq!(attr(e, "audit.legal_hold.case_id"), Some("CASE-7"));
    assert_eq!(attr(e, "audit.legal_hold.objects"), Some("9"));
    assert_eq!(attr(e, "audit.legal_hold.segments"), Some("3"));
    assert_eq!(attr(e, "audit.legal_hold.checkpoints"), Some("3"));
    assert_eq!(attr(e, "audit.legal_hold.clickhouse_rows"), Some("5"));
    assert_eq!(attr(e, "audit.legal_hold.unarchived_events"), Some("0"));
    let key_listing: String = keys.iter().map(|k| format!("{k}\n")).collect();
    assert_eq!(
        attr(e, "audit.legal_hold.objects_sha256"),
        Some(schemas::segment::sha256_hex(key_listing.as_bytes()).as_str())
    );

    // Off: every object of the case OFF, no row flagged, the release chained with the query.
    let (code, out, report) = lab
        .hold_query(
            "off",
            &[
                "--query",
                &query,
                "--reason",
                "case closed",
                "--held-by",
                "legal-ops",
            ],
        )
        .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["changed"], 9, "{out}");
    expect_holds(&lab, &keys, "OFF");
    assert!(lab.flagged().await.0.is_empty(), "off clears the flags");
    let recorded = lab.recorded().await;
    let kinds: Vec<&str> = recorded.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(kinds, ["audit.legal_hold.set", "audit.legal_hold.released"]);
    assert_eq!(
        attr(&recorded[1], "audit.legal_hold.query"),
        attr(&recorded[0], "audit.legal_hold.query")
    );
    assert_eq!(
        attr(&recorded[1], "audit.legal_hold.clickhouse_rows"),
        Some("5")
    );
    lab.db.drop().await;
}

/// A query matching nothing is a usage error (exit 2, as a seq range no object covers),
/// says so, and changes and records nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_matching_nothing_holds_nothing() {
    let lab = two_partition_lab("hold_query_none").await;
    let (code, out, _) = lab
        .hold_query(
            "on",
            &[
                "--query",
                "request_id=no-such-request",
                "--query",
                "actor=user-1",
                "--reason",
                "r",
                "--held-by",
                "ops",
            ],
        )
        .await;
    assert_eq!(code, auditctl::EXIT_USAGE, "{out}");
    assert!(out.contains("matches no event"), "{out}");
    assert!(out.contains("no-such-request"), "{out}");
    // A request id that exists, but not in the time window: nothing either.
    let (code, out, _) = lab
        .hold_query(
            "status",
            &[
                "--query",
                &format!("request_id={CASE_REQUEST}"),
                "--from",
                "2024-06-02",
            ],
        )
        .await;
    assert_eq!(code, auditctl::EXIT_USAGE, "{out}");
    expect_holds(&lab, &[], "ON");
    assert!(lab.flagged().await.0.is_empty());
    assert!(lab.recorded().await.is_empty());
    lab.db.drop().await;
}

/// `rehydrate --hold`: the range's missing rows are loaded flagged, the rows already there
/// are flagged too, the covering archive objects are held and the hold is chained with the
/// rows loaded. Twice: every row still once, still flagged, nothing loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rehydrate_hold_loads_the_range_held_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let (key, keyset) = test_key(dir.path(), "k1");
    let chain = build_chain(0, 30, &key, 10, BASE_US);
    // Hot storage kept seqs 1..=10 only.
    let lab = Lab::with_chains("rehydrate_hold", true, vec![chain], keyset, dir, 10).await;
    let in_range = |e: &ChainedEvent| (5..=15).contains(&e.seq);
    let (events, keys) = expected_cover(&lab, &in_range);
    assert_eq!(
        keys.len(),
        6,
        "segments 1..=10, 11..=20, manifests, checkpoints 10, 20"
    );
    let rehydrate = |extra: &[&str]| {
        let mut a = s(&[
            "rehydrate",
            "--partition",
            "0",
            "--seq",
            "5..15",
            "--json",
            "--hold",
        ]);
        a.extend(s(extra));
        a.extend(s(&["--keys", lab.keyset.to_str().expect("utf8")]));
        a.extend(lab.store_args());
        a
    };
    // --hold needs a reason, checked before anything is loaded.
    let (code, out, _) = lab.run(rehydrate(&[])).await;
    assert_eq!(code, auditctl::EXIT_USAGE, "{out}");
    assert_eq!(lab.flagged().await.1.len(), 10);

    let args = rehydrate(&[
        "--reason",
        "regulator inquiry",
        "--case",
        "INQ-3",
        "--held-by",
        "ops",
    ]);
    let (code, out, sm) = lab.run(args.clone()).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        (&sm["archived"], &sm["present"], &sm["inserted"]),
        (&11.into(), &6.into(), &5.into()),
        "{out}"
    );
    let (held, all) = lab.flagged().await;
    assert_eq!(held, events, "the range, loaded or not, is flagged");
    let want_all: Vec<(i32, i64)> = (1..=15).map(|s| (0, s)).collect();
    assert_eq!(all, want_all);
    expect_holds(&lab, &keys, "ON");
    let recorded = lab.recorded().await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let e = &recorded[0];
    assert_eq!(e.event_type, "audit.legal_hold.set");
    assert_eq!(e.reason.as_deref(), Some("regulator inquiry"));
    assert_eq!(attr(e, "audit.legal_hold.rehydrated_rows"), Some("5"));
    assert_eq!(attr(e, "audit.legal_hold.seq_range"), Some("5..=15"));
    assert_eq!(attr(e, "audit.legal_hold.case_id"), Some("INQ-3"));
    assert_eq!(attr(e, "audit.legal_hold.clickhouse_rows"), Some("11"));
    assert_eq!(
        sm["hold"]["recorded"]["event_id"].as_str(),
        Some(e.event_id.as_str())
    );

    // Again: nothing loaded, nothing doubled, still flagged; the hold is recorded again.
    let (code, out, sm) = lab.run(args).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        (&sm["present"], &sm["inserted"]),
        (&11.into(), &0.into()),
        "{out}"
    );
    let (held2, all2) = lab.flagged().await;
    assert_eq!((held2, all2), (events, want_all));
    let recorded = lab.recorded().await;
    assert_eq!(recorded.len(), 2);
    assert_eq!(
        attr(&recorded[1], "audit.legal_hold.rehydrated_rows"),
        Some("0")
    );
    expect_holds(&lab, &keys, "ON");

    // By event time (event i is at i minutes): seqs 20 and 21 loaded held, the hold resolved
    // as a query over the same partition and times.
    let mut by_time = s(&[
        "rehydrate",
        "--partition",
        "0",
        "--from",
        "2024-06-01 00:20:00",
        "--to",
        "2024-06-01 00:22:00",
        "--json",
        "--hold",
        "--reason",
        "r",
        "--held-by",
        "ops",
        "--keys",
        lab.keyset.to_str().expect("utf8"),
    ]);
    by_time.extend(lab.store_args());
    let (code, out, sm) = lab.run(by_time).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        (&sm["archived"], &sm["inserted"]),
        (&2.into(), &2.into()),
        "{out}"
    );
    let window = |e: &ChainedEvent| in_range(e) || (20..=21).contains(&e.seq);
    let (events, keys) = expected_cover(&lab, &window);
    assert_eq!(lab.flagged().await.0, events);
    expect_holds(&lab, &keys, "ON");
    let recorded = lab.recorded().await;
    assert_eq!(
        attr(&recorded[2], "audit.legal_hold.query"),
        Some(r#"{"chain_partition":0,"from":"2024-06-01T00:20:00Z","to":"2024-06-01T00:22:00Z"}"#)
    );
    assert_eq!(
        attr(&recorded[2], "audit.legal_hold.matched_seq_ranges"),
        Some("0:20..=21")
    );
    lab.db.drop().await;
}

// ---- overlapping cases: the register of active holds ------------------------------------------

/// boto3's legal hold of each of `keys` is `state`.
fn expect_state(lab: &Lab, keys: &[String], state: &str) {
    let got = boto3_holds(&lab.bucket, keys);
    assert!(
        got.iter().all(|g| g == state),
        "{keys:?}: {got:?}, want {state}"
    );
}

impl Lab {
    /// The case ids of the registers in the archive (`_holds/*.json`), read as plain JSON.
    async fn registered_cases(&self) -> Vec<String> {
        let metas: Vec<object_store::ObjectMeta> = futures::TryStreamExt::try_collect(
            self.store
                .list(Some(&ObjPath::from(format!("{PREFIX}/_holds")))),
        )
        .await
        .expect("list the register");
        let mut cases = Vec::new();
        for m in metas {
            let body = self
                .store
                .get(&m.location)
                .await
                .expect("get")
                .bytes()
                .await
                .expect("bytes");
            let v: Value = serde_json::from_slice(&body).expect("a register is JSON");
            cases.push(v["case_id"].as_str().expect("case_id").to_owned());
        }
        cases.sort();
        cases
    }

    /// `hold ACTION --seq RANGE --case CASE` (on/off: with a reason and holder), the broker
    /// given or the lab's.
    async fn case(
        &self,
        action: &str,
        range: &str,
        case: &str,
        brokers: Option<&str>,
    ) -> (u8, String, Value) {
        let mut extra = vec!["--seq", range, "--case", case];
        if action != "status" {
            extra.extend(["--reason", "matter", "--held-by", "legal-ops"]);
        }
        if brokers.is_some() {
            extra.extend(["--kafka-property", "message.timeout.ms=2000"]);
        }
        let mut args = self.args(action, &extra);
        if let Some(b) = brokers {
            let i = args
                .iter()
                .position(|a| a == "--kafka-brokers")
                .expect("flag");
            args[i + 1] = b.to_owned();
        }
        self.run(args).await
    }
}

/// Case A holds seqs 5..=15 (segments 1..=10 and 11..=20, checkpoints 10 and 20), case B
/// 12..=25 (segments 11..=20 and 21..=30, checkpoints 20 and 30): they share segment
/// 11..=20, its manifest, checkpoint 20 and rows 12..=15.
fn overlap_keys(lab: &Lab) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (s0, m0) = seg_keys(lab, 0);
    let (s1, m1) = seg_keys(lab, 1);
    let (s2, m2) = seg_keys(lab, 2);
    let a_only = vec![s0, m0, checkpoint_key(0, 10, "k1")];
    let shared = vec![s1, m1, checkpoint_key(0, 20, "k1")];
    let b_only = vec![s2, m2, checkpoint_key(0, 30, "k1")];
    (a_only, shared, b_only)
}

/// Two overlapping cases: `off` A releases only A's own objects and rows, the shared ones
/// stay ON and flagged (a DELETE of a shared version is still refused) and the release says
/// it kept them for B; `status` names both cases; a second `off` A changes and records
/// nothing; `off` B then releases everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_one_case_keeps_what_an_overlapping_case_holds() {
    let lab = Lab::new("hold_cases", true).await;
    let (a_only, shared, b_only) = overlap_keys(&lab);
    let (code, out, report) = lab.case("on", "5..15", "CASE-A", None).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["case_id"], "CASE-A", "{out}");
    assert_eq!(report["register"], "_holds/CASE-A.json", "{out}");
    let (code, out, _) = lab.case("on", "12..25", "CASE-B", None).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(lab.registered_cases().await, ["CASE-A", "CASE-B"]);
    assert_eq!(lab.held_rows().await, (5..=25).collect::<Vec<i64>>());

    // Status of the shared range names both cases, and each object's.
    let (code, out, status) = lab.case("status", "12..15", "CASE-A", None).await;
    assert_eq!(code, 0, "{out}");
    let cases: Vec<&str> = status["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("no cases in {out}"))
        .iter()
        .map(|c| c["case_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(cases, ["CASE-A", "CASE-B"], "{out}");
    for o in status["objects"].as_array().expect("objects") {
        assert_eq!(o["cases"], serde_json::json!(["CASE-A", "CASE-B"]), "{o}");
    }

    // Off A: A's own objects OFF, the shared ones kept ON for B.
    let (code, out, report) = lab.case("off", "5..15", "CASE-A", None).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["changed"], 3, "{out}");
    assert_eq!(report["kept_by"], serde_json::json!({"CASE-B": 3}), "{out}");
    assert_eq!(
        report["kept_rows_by"],
        serde_json::json!({"CASE-B": 4}),
        "{out}"
    );
    expect_state(&lab, &a_only, "OFF");
    expect_state(&lab, &shared, "ON");
    expect_state(&lab, &b_only, "ON");
    assert_eq!(
        lab.held_rows().await,
        (12..=25).collect::<Vec<i64>>(),
        "A's own rows 5..=11 released, the shared 12..=15 still held for B"
    );
    let v = lab.version(&shared[0]).await;
    assert_eq!(lab.delete_version(&shared[0], &v).0, 403, "still held by B");
    let v = lab.version(&a_only[0]).await;
    assert_eq!(lab.delete_version(&a_only[0], &v).0, 204, "A's own: free");
    assert_eq!(lab.registered_cases().await, ["CASE-B"]);
    let events = lab.recorded().await;
    assert_eq!(events.len(), 3, "{events:?}");
    let r = &events[2];
    assert_eq!(r.event_type, "audit.legal_hold.released");
    assert_eq!(attr(r, "audit.legal_hold.case_id"), Some("CASE-A"));
    assert_eq!(attr(r, "audit.legal_hold.objects"), Some("3"));
    assert_eq!(attr(r, "audit.legal_hold.kept_objects"), Some("3"));
    assert_eq!(attr(r, "audit.legal_hold.kept_by_cases"), Some("CASE-B:3"));
    assert_eq!(attr(r, "audit.legal_hold.kept_clickhouse_rows"), Some("4"));
    assert_eq!(attr(r, "audit.legal_hold.clickhouse_rows"), Some("7"));

    // Off A again: nothing to release, nothing changed or recorded.
    let (code, out, report) = lab.case("off", "5..15", "CASE-A", None).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["changed"], 0, "{out}");
    assert_eq!(report["recorded"], Value::Null, "{out}");
    assert!(
        report["note"]
            .as_str()
            .is_some_and(|n| n.contains("no active hold")),
        "{out}"
    );
    expect_state(&lab, &shared, "ON");
    assert_eq!(lab.held_rows().await, (12..=25).collect::<Vec<i64>>());
    assert_eq!(lab.recorded().await.len(), 3);

    // Off B: no other case left, everything released.
    let (code, out, report) = lab.case("off", "12..25", "CASE-B", None).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["changed"], 6, "{out}");
    assert_eq!(report.get("kept_by"), None, "{out}");
    expect_state(&lab, &shared, "OFF");
    expect_state(&lab, &b_only, "OFF");
    assert!(lab.held_rows().await.is_empty());
    assert!(lab.registered_cases().await.is_empty());
    let kinds: Vec<String> = lab
        .recorded()
        .await
        .iter()
        .map(|e| e.event_type.clone())
        .collect();
    assert_eq!(
        kinds,
        [
            "audit.legal_hold.set",
            "audit.legal_hold.set",
            "audit.legal_hold.released",
            "audit.legal_hold.released"
        ]
    );
    let (code, out) = lab.verify().await;
    assert_eq!(code, 0, "{out}");
    lab.db.drop().await;
}

/// Crashes between the steps converge on a rerun: a hold set and registered but not chained
/// (broker down) is recorded by the rerun; a release done but not chained keeps the case
/// registered, so B's release meanwhile still keeps the objects A shares ON; the rerun of
/// `off` A then releases them, records it and removes the register.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_or_release_interrupted_before_the_chain_converges_on_a_rerun() {
    let lab = Lab::new("hold_cases_crash", true).await;
    let (a_only, shared, b_only) = overlap_keys(&lab);
    let down = Some("127.0.0.1:1");

    // On A: held and registered, the chain unreachable: exit 3 saying it IS set.
    let (code, out, _) = lab.case("on", "5..15", "CASE-A", down).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("the legal hold IS SET"), "{out}");
    assert_eq!(lab.registered_cases().await, ["CASE-A"]);
    assert!(lab.recorded().await.is_empty());
    // The rerun records it, and registers it once.
    let (code, out, _) = lab.case("on", "5..15", "CASE-A", None).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(lab.recorded().await.len(), 1);
    assert_eq!(lab.registered_cases().await, ["CASE-A"]);
    let (code, out, _) = lab.case("on", "12..25", "CASE-B", None).await;
    assert_eq!(code, 0, "{out}");

    // Off A, the chain unreachable: A's own objects are released, but A stays registered.
    let (code, out, _) = lab.case("off", "5..15", "CASE-A", down).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("the legal hold IS RELEASED"), "{out}");
    expect_state(&lab, &a_only, "OFF");
    expect_state(&lab, &shared, "ON");
    assert_eq!(lab.registered_cases().await, ["CASE-A", "CASE-B"]);
    assert_eq!(lab.recorded().await.len(), 2);

    // Meanwhile B is released: A is still registered, so what A shares stays ON and flagged.
    let (code, out, report) = lab.case("off", "12..25", "CASE-B", None).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["kept_by"], serde_json::json!({"CASE-A": 3}), "{out}");
    expect_state(&lab, &b_only, "OFF");
    expect_state(&lab, &shared, "ON");
    // A's own rows went with its first release; the shared ones stay flagged for A.
    assert_eq!(lab.held_rows().await, (12..=15).collect::<Vec<i64>>());

    // The rerun of off A: the shared objects and rows go too, recorded, register removed.
    let (code, out, report) = lab.case("off", "5..15", "CASE-A", None).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["changed"], 6, "{out}");
    expect_state(&lab, &shared, "OFF");
    expect_state(&lab, &a_only, "OFF");
    assert!(lab.held_rows().await.is_empty());
    assert!(lab.registered_cases().await.is_empty());
    let events = lab.recorded().await;
    let released: Vec<Option<&str>> = events
        .iter()
        .filter(|e| e.event_type == "audit.legal_hold.released")
        .map(|e| attr(e, "audit.legal_hold.case_id"))
        .collect();
    assert_eq!(released, [Some("CASE-B"), Some("CASE-A")]);
    lab.db.drop().await;
}
