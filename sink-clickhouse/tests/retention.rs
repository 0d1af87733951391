//! Retention per event class (src/retention.rs).
//!
//! - On a current engine (chDB, `tests/retention_check.py`): the TTL statement the sink
//!   generates is accepted, and after `OPTIMIZE … FINAL` it has deleted exactly the expired
//!   rows of each class, keeping fresher rows, classes kept forever, and held rows.
//! - On the local server (real ClickHouse, `AUDIT_CLICKHOUSE_URL`, and Kafka on 9092; FAILS
//!   when they are absent): the sink starts with a retention policy configured. On 18.16 (no
//!   TTL) it says once that retention is unsupported, sets no TTL, publishes nothing, and the
//!   `legal_hold` column exists (for `auditctl hold`); on a server with TTL it chains the
//!   policy, sets the TTL and records the policy.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use common::{ch_url, connect_when_created, count, drop_db};
use rdkafka::Message;
use sink_clickhouse::retention::{
    RetentionArgs, RetentionPolicy, POLICY_SET_EVENT_TYPE, TTL_MIN_VERSION,
};
use sink_clickhouse::{run, Config};
use tracing::instrument::WithSubscriber;
use worker_runtime::kafka::admin::{ensure_topics, pipeline_topic_specs};
use worker_runtime::kafka::tail::{scan, ScanStart};
use worker_runtime::kafka::KafkaArgs;
use worker_runtime::Shutdown;

const BROKERS: &str = "127.0.0.1:9092";

fn policy(default: &str, classes: &[&str]) -> RetentionPolicy {
    let mut retention = format!("default={default}");
    for c in classes {
        retention = format!("{retention},{c}");
    }
    RetentionPolicy::from_args(&RetentionArgs { retention }).expect("policy")
}

#[test]
fn the_ttl_deletes_expired_rows_per_class_but_never_held_ones_on_current_clickhouse() {
    let p = policy("7y", &["TELEMETRY=90d", "SECURITY=forever"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/retention_check.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .env("RETENTION_TTL_STATEMENT", p.ttl_statement())
        .output()
        .expect("python3 (with the chdb package) must be installed");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    // Gone: an old TELEMETRY row (90d), an old USER_INTERACTION and GOVERNANCE row (7y).
    // Kept: a fresh TELEMETRY row, a younger-than-7y row, an ancient SECURITY row (forever),
    // and two expired rows under legal hold.
    assert_eq!(v["left"], serde_json::json!([2, 3, 5, 6, 7]), "{v}");
    let ttl = v["ttl"].as_str().expect("ttl");
    assert!(ttl.contains("legal_hold = 0"), "{ttl}");
    assert_eq!(v["policy"], "default=7y");
}

/// The policy comes from the config file's `[retention]` section (unknown keys refused),
/// flags win over it, and `--help` explains it.
#[test]
fn retention_is_configured_by_file_and_flags_and_explained_by_help() {
    use clap::CommandFactory;
    let dir = std::env::temp_dir().join(format!("sink-ch-ret-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("sink.toml");
    std::fs::write(
        &file,
        "[retention]\nretention = \"default=5y,TELEMETRY=30d,security=forever\"\n",
    )
    .expect("write config");
    let path = file.display().to_string();
    let c: Config =
        worker_runtime::config::load_from(["sink-clickhouse", "--config", &path]).expect("load");
    let p = RetentionPolicy::from_args(&c.retention).expect("policy");
    assert_eq!(p.text(), "default=5y,security=forever,telemetry=30d");
    let c: Config = worker_runtime::config::load_from([
        "sink-clickhouse",
        "--config",
        &path,
        "--retention",
        "default=10y,security=forever",
    ])
    .expect("load");
    let p = RetentionPolicy::from_args(&c.retention).expect("policy");
    assert_eq!(p.text(), "default=10y,security=forever");
    // A bad policy is refused when the flags are read, naming the bad part.
    let e = Config::try_parse_from(["sink-clickhouse", "--retention", "default=7y,secret=1y"])
        .expect_err("bad class")
        .to_string();
    assert!(e.contains("\"secret=1y\""), "{e}");
    // The removed flags are gone.
    assert!(Config::try_parse_from(["sink-clickhouse", "--retention-default", "7y"]).is_err());
    std::fs::write(&file, "[retention]\nretention_days = 3\n").expect("write config");
    assert!(
        worker_runtime::config::load_from::<Config, _, _>(["sink-clickhouse", "--config", &path])
            .is_err(),
        "an unknown key in [retention] is refused"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let help = Config::command().render_long_help().to_string();
    for want in [
        "--retention <RETENTION>",
        "AUDIT_SINK_CLICKHOUSE_RETENTION",
        "telemetry=90d",
        "legal hold",
        "archive is never touched",
    ] {
        assert!(help.contains(want), "--help lacks {want:?}");
    }
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    }
}

/// Events on `<prefix>validated`.
async fn validated(kafka: &KafkaArgs) -> Vec<schemas::AuditEvent> {
    let all: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let sink = all.clone();
    let _collector = scan(
        kafka,
        &kafka.topics().validated,
        0,
        ScanStart::Offset(0),
        Duration::from_secs(5),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_starts_with_a_retention_policy_and_applies_it_where_the_server_can() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("t{}.", &id[..12]);
    let db = format!("audit_ret_{}", &id[..12]);
    let kafka = KafkaArgs::local(BROKERS, &prefix);
    ensure_topics(&kafka, &pipeline_topic_specs(&kafka, 1), 1)
        .await
        .expect("Kafka must be running (deploy/local/stack.sh up)");

    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let url = ch_url();
    let config = Config::parse_from([
        "sink-clickhouse",
        "--health-addr",
        "",
        "--kafka-brokers",
        BROKERS,
        "--topic-prefix",
        &prefix,
        "--clickhouse-url",
        &url,
        "--clickhouse-database",
        &db,
        "--group-id",
        &format!("g-{id}"),
        "--retention",
        "default=7y,telemetry=90d,security=forever",
        "--retry-max-attempts",
        "5",
    ]);
    let shutdown = Shutdown::new();
    // The retention step runs in the sink's own future (not a spawned task), so the
    // subscriber attached to it sees what it logs.
    let handle = tokio::spawn(run(config, shutdown.clone()).with_subscriber(subscriber));
    let store = connect_when_created(&db).await;
    let ttl_capable = store.version().supports(TTL_MIN_VERSION);
    let marker = if ttl_capable {
        "retention policy applied"
    } else {
        "has no TTL"
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !logs.text().contains(marker) {
        assert!(
            !handle.is_finished(),
            "the sink stopped; logs:\n{}",
            logs.text()
        );
        assert!(
            Instant::now() < deadline,
            "no {marker:?} in 90 s; logs:\n{}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Started: the consumer is subscribed after the retention step.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !logs.text().contains("migrations up to date") {
        assert!(Instant::now() < deadline, "{}", logs.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!handle.is_finished(), "{}", logs.text());
    shutdown.trigger();
    handle
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("sink: {e}\n{}", logs.text()));

    let text = logs.text();
    let create: String = store
        .client()
        .query("SELECT create_table_query FROM system.tables WHERE database = ? AND name = 'audit_events'")
        .bind(&db)
        .fetch_one()
        .await
        .expect("create_table_query");
    let held_col = count(
        &store,
        &format!(
            "SELECT count() FROM system.columns WHERE database = '{db}' \
             AND table = 'audit_events' AND name = 'legal_hold'"
        ),
    )
    .await;
    assert_eq!(held_col, 1, "migration 0007 adds legal_hold everywhere");
    let policy_table = count(
        &store,
        &format!(
            "SELECT count() FROM system.tables WHERE database = '{db}' \
             AND name = 'audit_retention_policy'"
        ),
    )
    .await;
    let events = validated(&kafka).await;
    if ttl_capable {
        assert!(create.contains("TTL"), "{create}");
        assert!(create.contains("legal_hold = 0"), "{create}");
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].event_type, POLICY_SET_EVENT_TYPE);
        let recorded = count(
            &store,
            "SELECT count() FROM audit_retention_policy WHERE policy = \
             'default=7y,security=forever,telemetry=90d'",
        )
        .await;
        assert_eq!(recorded, 1);
    } else {
        // 18.16: said once, nothing deleted, nothing chained, no policy table.
        assert_eq!(text.matches(marker).count(), 1, "{text}");
        assert!(
            text.contains("every event is kept") && text.contains("telemetry=90d"),
            "{text}"
        );
        assert!(!create.contains("TTL"), "{create}");
        assert_eq!(policy_table, 0);
        assert!(events.is_empty(), "{events:?}");
    }
    drop_db(&store, &db).await;
}
