//! Shared fixtures of the integration tests: chains built with the schemas crate's own chain
//! and checkpoint functions, written into a FRESH ClickHouse database (the sink's migrations,
//! one DDL) or an archive (the segment format of `schemas::segment`), and `auditctl` run
//! in-process. The tests need the local stack (deploy/local/stack.sh up) and FAIL without it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use clickhouse::Client;
use integrity::chain::{ChainHead, Hash32};
use integrity::checkpoint::{
    generate_pkcs8, sign, CheckpointFields, CheckpointJson, KeySet, SigningKey,
};
use integrity::merkle;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use schemas::avro::{canonical_bytes, CANONICAL_VERSION};
use schemas::flat::{AuditRow, CheckpointRow};
use schemas::segment::{
    checkpoint_key, day_of, write_segment_with, BlockCodec, Manifest, SegmentMeta,
};
use schemas::testing::{arb_audit_event, sample_event};
use schemas::{AuditEvent, ChainedEvent, Checkpoint};

pub const MIGRATIONS: [&str; 5] = [
    include_str!("../../../sink-clickhouse/migrations/0001_audit_events.sql"),
    include_str!("../../../sink-clickhouse/migrations/0002_audit_checkpoints.sql"),
    include_str!("../../../sink-clickhouse/migrations/0003_audit_forks.sql"),
    // sink-clickhouse's 0005 (the signed partition count), as 18.16 runs it on a new table
    // (the sink's runner strips `IF NOT EXISTS` there).
    "ALTER TABLE audit_checkpoints ADD COLUMN partition_count Int32 DEFAULT 0",
    // 0006 (the whole-tree root of v3 checkpoints), likewise.
    "ALTER TABLE audit_checkpoints ADD COLUMN tree_root String DEFAULT ''",
];

/// 2024-06-01T00:00:00Z.
pub const BASE_US: i64 = 1_717_200_000_000_000;
pub const CHAIN_ID: &str = "auditctl-test";
/// Receive time of event 0 (one hour before BASE_US).
pub const RECEIVED_US: i64 = BASE_US - 3_600_000_000;

pub fn env_or(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

pub fn clickhouse_url() -> String {
    env_or("CLICKHOUSE_URL", "http://127.0.0.1:8123")
}

/// A name no other test (or run) uses.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "auditctl_{tag}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---- chains -----------------------------------------------------------------------------------

/// Event `i` of `partition`: mostly the fixed sample with varied fields; every 7th is an
/// arbitrary event from the shared proptest strategy (any Unicode, optional parts absent or
/// present), so the stores' lossless round trip is exercised too. Event times stay within one
/// UTC day (one archive day, few ClickHouse partitions).
pub fn event(partition: u32, i: u64) -> AuditEvent {
    let mut e = if i % 7 == 3 {
        let mut runner = TestRunner::deterministic();
        // Different values per i: advance the deterministic runner.
        let mut tree = arb_audit_event().new_tree(&mut runner).expect("strategy");
        for _ in 0..(i % 13) {
            tree = arb_audit_event().new_tree(&mut runner).expect("strategy");
        }
        tree.current()
    } else {
        sample_event()
    };
    e.event_id = format!("evt-p{partition}-{i:05}");
    e.event_time_us = BASE_US + i as i64 * 60_000_000;
    // Received in the hour before BASE_US, in order: every checkpoint of `build_chain` (signed
    // at BASE_US + seq) is signed after the events it covers, as the chainer's are.
    e.receive_time_us = RECEIVED_US + i as i64;
    e.actor.id = format!("user-{}", i % 5);
    e
}

#[derive(Debug, Clone)]
pub struct Chain {
    pub partition: u32,
    pub events: Vec<ChainedEvent>,
    pub checkpoints: Vec<Checkpoint>,
}

/// A valid chain of `n` events, with a checkpoint signed by `key` every `every` seqs (each
/// covering the seqs since the previous one) and one at the end, at `time_us`.
pub fn build_chain(partition: u32, n: u64, key: &SigningKey, every: u64, time_us: i64) -> Chain {
    build_chain_counted(partition, n, key, every, time_us, 0)
}

/// [`build_chain`] whose checkpoints sign `partition_count` (0: v1 checkpoints, without it).
pub fn build_chain_counted(
    partition: u32,
    n: u64,
    key: &SigningKey,
    every: u64,
    time_us: i64,
    partition_count: u32,
) -> Chain {
    build_chain_tweaked(
        partition,
        n,
        key,
        every,
        time_us,
        partition_count,
        &|_, _| {},
    )
}

/// [`build_chain_counted`] whose event `i` is changed by `tweak(i, event)` before it is
/// chained (e.g. request ids for a legal-hold query).
pub fn build_chain_tweaked(
    partition: u32,
    n: u64,
    key: &SigningKey,
    every: u64,
    time_us: i64,
    partition_count: u32,
    tweak: &dyn Fn(u64, &mut AuditEvent),
) -> Chain {
    // As the chainer writes them today: chain rule audit-chain/v2 bound to CHAIN_ID, and
    // checkpoints that also sign the whole tree's root (v3).
    let mut head = ChainHead::genesis_v2(CHAIN_ID, partition);
    let mut whole = integrity::tree::CompactRange::new();
    let mut events = Vec::new();
    let mut hashes: Vec<Hash32> = Vec::new();
    let mut checkpoints = Vec::new();
    let mut first = 1u64;
    for i in 1..=n {
        let mut ev = event(partition, i);
        tweak(i, &mut ev);
        let canonical = canonical_bytes(&ev).expect("canonical");
        let link = head.next(&canonical);
        hashes.push(link.hash);
        whole
            .append(integrity::tree::leaf_hash(&link.hash))
            .expect("tree");
        events.push(ChainedEvent {
            chain_partition: partition as i32,
            seq: link.seq as i64,
            prev_hash: link.prev_hash.to_vec(),
            hash: link.hash.to_vec(),
            canonical_version: CANONICAL_VERSION,
            source_topic: "audit.enriched".into(),
            source_partition: partition as i32,
            source_offset: i as i64 - 1,
            event: ev,
        });
        if i % every == 0 || i == n {
            let fields = CheckpointFields {
                chain_id: CHAIN_ID.into(),
                partition,
                first_seq: first,
                seq: i,
                head_hash: link.hash,
                merkle_root: merkle::root(&hashes[(first - 1) as usize..i as usize]),
                time_us: time_us + i as i64,
                partition_count,
                tree_root: Some(whole.root()),
            };
            checkpoints.push(sign(key, &fields).expect("sign"));
            first = i + 1;
        }
    }
    Chain {
        partition,
        events,
        checkpoints,
    }
}

/// A fresh key valid from time 0, and the key set holding it, written to `dir/keyset.json`.
pub fn test_key(dir: &std::path::Path, key_id: &str) -> (SigningKey, std::path::PathBuf) {
    let doc = generate_pkcs8().expect("keygen");
    let key = SigningKey::from_pkcs8(key_id, doc.expose()).expect("key");
    let mut ks = KeySet::default();
    ks.add(key.public_entry(0, None)).expect("add");
    let path = dir.join("keyset.json");
    std::fs::write(&path, ks.to_json_pretty()).expect("write keyset");
    (key, path)
}

/// Two keys: `old`, retired at `retired_at_us`, and `new`, valid from then on; the key set
/// holding both is written to `dir/keyset.json`.
pub fn rotated_keys(
    dir: &std::path::Path,
    retired_at_us: i64,
) -> (SigningKey, SigningKey, std::path::PathBuf) {
    let mk = |id: &str| {
        let doc = generate_pkcs8().expect("keygen");
        SigningKey::from_pkcs8(id, doc.expose()).expect("key")
    };
    let (old, new) = (mk("old"), mk("new"));
    let mut ks = KeySet::default();
    ks.add(old.public_entry(0, Some(retired_at_us)))
        .expect("add old");
    ks.add(new.public_entry(retired_at_us, None))
        .expect("add new");
    let path = dir.join("keyset.json");
    std::fs::write(&path, ks.to_json_pretty()).expect("write keyset");
    (old, new, path)
}

/// A checkpoint over `first..=last` of `chain`, signed by `key` at `time_us` (a forger's).
pub fn forge_checkpoint(
    chain: &Chain,
    key: &SigningKey,
    first: u64,
    last: u64,
    time_us: i64,
) -> Checkpoint {
    let hashes: Vec<Hash32> = chain
        .events
        .iter()
        .map(|e| e.hash.as_slice().try_into().expect("32 bytes"))
        .collect();
    let fields = CheckpointFields {
        chain_id: CHAIN_ID.into(),
        partition: chain.partition,
        first_seq: first,
        seq: last,
        head_hash: hashes[last as usize - 1],
        merkle_root: merkle::root(&hashes[first as usize - 1..last as usize]),
        time_us,
        partition_count: 0,
        tree_root: None,
    };
    sign(key, &fields).expect("sign")
}

// ---- running auditctl -------------------------------------------------------------------------

/// Run auditctl in-process: (exit code, stdout + error message).
pub async fn auditctl(args: &[String]) -> (u8, String) {
    let argv = std::iter::once("auditctl".to_owned()).chain(args.iter().cloned());
    let cli = auditctl::Cli::try_parse_from(argv).expect("arguments parse");
    let mut out = Vec::new();
    let res = auditctl::run(cli, &mut out).await;
    let code = auditctl::exit_code(&res);
    let mut text = String::from_utf8_lossy(&out).into_owned();
    if let Err(e) = &res {
        text.push_str(&format!("\nerror: {e}"));
    }
    (code, text)
}

pub fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

// ---- ClickHouse -------------------------------------------------------------------------------

pub struct TestDb {
    pub name: String,
    pub client: Client,
}

impl TestDb {
    /// A new database with the sink's migrations applied.
    pub async fn new(tag: &str) -> Self {
        let name = unique(tag);
        let root = Client::default()
            .with_url(clickhouse_url())
            .with_validation(false);
        root.query(&format!("CREATE DATABASE {name}"))
            .execute()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "ClickHouse at {} must be up (deploy/local/stack.sh up): {e}",
                    clickhouse_url()
                )
            });
        let client = root.with_database(&name);
        for ddl in MIGRATIONS {
            client.query(ddl).execute().await.expect("migration");
        }
        Self { name, client }
    }

    pub fn args(&self) -> Vec<String> {
        s(&[
            "--clickhouse-url",
            &clickhouse_url(),
            "--clickhouse-database",
            &self.name,
        ])
    }

    pub async fn insert_events(&self, events: &[ChainedEvent]) {
        let mut ins = self
            .client
            .insert::<AuditRow>("audit_events")
            .await
            .expect("insert");
        for (i, e) in events.iter().enumerate() {
            ins.write(&AuditRow::from_chained(e, i as i64))
                .await
                .expect("write row");
        }
        ins.end().await.expect("insert end");
    }

    pub async fn insert_checkpoints(&self, cps: &[Checkpoint]) {
        let mut ins = self
            .client
            .insert::<CheckpointRow>("audit_checkpoints")
            .await
            .expect("insert");
        for (i, c) in cps.iter().enumerate() {
            ins.write(&CheckpointRow::from_checkpoint(c, i as i64))
                .await
                .expect("write row");
        }
        ins.end().await.expect("insert end");
    }

    pub async fn insert_chain(&self, chain: &Chain) {
        self.insert_events(&chain.events).await;
        self.insert_checkpoints(&chain.checkpoints).await;
    }

    pub async fn exec(&self, sql: &str) {
        self.client
            .query(sql)
            .execute()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Run an `ALTER TABLE … UPDATE/DELETE` mutation and wait until it is applied (18.16 runs
    /// mutations asynchronously).
    pub async fn mutate(&self, sql: &str) {
        self.exec(sql).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let pending: u64 = self
                .client
                .query("SELECT count() FROM system.mutations WHERE database = ? AND is_done = 0")
                .bind(&self.name)
                .fetch_one()
                .await
                .expect("system.mutations");
            if pending == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mutation not applied after 60 s: {sql}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn drop(self) {
        let _ = self
            .client
            .query(&format!("DROP DATABASE IF EXISTS {}", self.name))
            .execute()
            .await;
    }
}

// ---- archive ----------------------------------------------------------------------------------

/// The local SeaweedFS bucket (test-only credentials of deploy/local/env.sh as defaults).
pub fn s3_args(prefix: &str) -> Vec<String> {
    s(&[
        "--archive-url",
        &format!("s3://{}/{prefix}", env_or("S3_BUCKET", "audit-archive")),
        "--s3-endpoint",
        &env_or("S3_ENDPOINT", "http://127.0.0.1:8333"),
        "--s3-region",
        &env_or("S3_REGION", "us-east-1"),
        "--s3-access-key-id",
        &env_or("S3_ACCESS_KEY_ID", "audit-local-test-access-key"),
        "--s3-secret-access-key",
        &env_or(
            "S3_SECRET_ACCESS_KEY",
            "audit-local-test-secret-NOT-A-SECRET",
        ),
    ])
}

pub fn s3_store() -> Arc<dyn ObjectStore> {
    let store = AmazonS3Builder::new()
        .with_bucket_name(env_or("S3_BUCKET", "audit-archive"))
        .with_endpoint(env_or("S3_ENDPOINT", "http://127.0.0.1:8333"))
        .with_region(env_or("S3_REGION", "us-east-1"))
        .with_access_key_id(env_or("S3_ACCESS_KEY_ID", "audit-local-test-access-key"))
        .with_secret_access_key(env_or(
            "S3_SECRET_ACCESS_KEY",
            "audit-local-test-secret-NOT-A-SECRET",
        ))
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .build()
        .expect("s3 client");
    Arc::new(store)
}

fn at(prefix: &str, key: &str) -> ObjPath {
    if prefix.is_empty() {
        ObjPath::from(key)
    } else {
        ObjPath::from(format!("{prefix}/{key}"))
    }
}

pub async fn put(store: &dyn ObjectStore, prefix: &str, key: &str, bytes: Vec<u8>) {
    store
        .put(&at(prefix, key), PutPayload::from(bytes))
        .await
        .unwrap_or_else(|e| {
            panic!("put {key} (the S3 store must be up: deploy/local/stack.sh up): {e}")
        });
}

/// Segment `events` (contiguous, one day each, at most `size` records) as the archive sink
/// does, and store segments, manifests and checkpoints. Returns the segment object keys.
/// Segments alternate between the two codecs (deflate first), as an archive written before
/// and after a change of `--segment-codec` holds both: every reader of the archive in these
/// tests meets both.
pub async fn write_archive(
    store: &dyn ObjectStore,
    prefix: &str,
    chain: &Chain,
    size: usize,
) -> Vec<String> {
    write_archive_with(
        store,
        prefix,
        chain,
        size,
        &[BlockCodec::Deflate, BlockCodec::Zstandard],
    )
    .await
}

/// [`write_archive`] with the segments' codecs taken in turn from `codecs`.
#[allow(dead_code)] // the verify_stores bench's
pub async fn write_archive_with(
    store: &dyn ObjectStore,
    prefix: &str,
    chain: &Chain,
    size: usize,
    codecs: &[BlockCodec],
) -> Vec<String> {
    let mut keys = Vec::new();
    let mut start = 0;
    let evs = &chain.events;
    while start < evs.len() {
        let day = day_of(evs[start].event.event_time_us);
        let mut end = start + 1;
        while end < evs.len() && end - start < size && day_of(evs[end].event.event_time_us) == day {
            end += 1;
        }
        let seg = &evs[start..end];
        let meta = SegmentMeta::for_events(
            seg,
            "audit.chained",
            start as i64,
            end as i64 - 1,
            "auditctl-test/1",
        )
        .expect("segment meta");
        let codec = codecs[keys.len() % codecs.len()];
        let bytes = write_segment_with(&meta, seg, codec).expect("write segment");
        let manifest =
            Manifest::for_segment(&meta, &bytes, "2024-06-01T00:00:00Z").expect("manifest");
        let key = meta.key().expect("key");
        put(store, prefix, &key.object_key(), bytes).await;
        put(store, prefix, &key.manifest_key(), manifest.to_json()).await;
        keys.push(key.object_key());
        start = end;
    }
    for cp in &chain.checkpoints {
        let json = serde_json::to_vec_pretty(&CheckpointJson::from(cp)).expect("json");
        put(
            store,
            prefix,
            &checkpoint_key(cp.partition, cp.seq, &cp.key_id),
            json,
        )
        .await;
    }
    keys
}

// ---- plain S3 requests and the privacy key store ----------------------------------------------

pub fn s3_endpoint() -> String {
    env_or("S3_ENDPOINT", "http://127.0.0.1:8333")
}

pub fn s3_access_key() -> String {
    env_or("S3_ACCESS_KEY_ID", "audit-local-test-access-key")
}

pub fn s3_secret_key() -> String {
    env_or(
        "S3_SECRET_ACCESS_KEY",
        "audit-local-test-secret-NOT-A-SECRET",
    )
}

pub fn s3_region() -> String {
    env_or("S3_REGION", "us-east-1")
}

/// A plain S3 request signed by curl (credentials on stdin, never on the command line):
/// (HTTP status, body). For what the object_store client cannot say (bucket creation, Object
/// Lock, version ids) and as a third party's view of the bucket.
pub fn s3_curl(method: &str, path_and_query: &str, headers: &[&str]) -> (u16, Vec<u8>) {
    use std::io::Write as _;
    let body = tempfile::NamedTempFile::new().expect("tmp");
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-K", "-", "-sS", "--max-time", "20", "-o"])
        .arg(body.path())
        .args(["-w", "%{http_code}", "-X", method])
        .args(["--aws-sigv4", &format!("aws:amz:{}:s3", s3_region())]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!("{}{path_and_query}", s3_endpoint()));
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("user = \"{}:{}\"\n", s3_access_key(), s3_secret_key()).as_bytes())
        .expect("credentials");
    let out = child.wait_with_output().expect("curl ran");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl {method} {path_and_query}: {out:?}"));
    (code, std::fs::read(body.path()).expect("body"))
}

/// Creates `bucket` if it is missing (an existing one is fine).
pub fn ensure_bucket(bucket: &str) {
    let (code, body) = s3_curl("PUT", &format!("/{bucket}"), &[]);
    assert!(
        code == 200 || code == 409,
        "creating bucket {bucket} (SeaweedFS must be up: deploy/local/stack.sh up): HTTP {code} {}",
        String::from_utf8_lossy(&body)
    );
}

/// The privacy options of erase/reveal/query for a key store at `s3://<bucket>/<prefix>` on the
/// local S3, with the given token and master keys (hex), and a 1 s key cache.
pub fn privacy_flags(bucket: &str, prefix: &str, token_key: &str, master_key: &str) -> Vec<String> {
    s(&[
        "--privacy-token-key",
        token_key,
        "--privacy-master-key",
        master_key,
        "--privacy-key-store-url",
        &format!("s3://{bucket}/{prefix}"),
        "--privacy-key-store-s3-endpoint",
        &s3_endpoint(),
        "--privacy-key-store-s3-access-key-id",
        &s3_access_key(),
        "--privacy-key-store-s3-secret-access-key",
        &s3_secret_key(),
        "--privacy-key-cache-ttl-secs",
        "1",
    ])
}
