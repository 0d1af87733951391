//! Every query recipe, run through `auditctl query … --format json` against the real ClickHouse
//! (a fresh database per test with the sink's own migrations), checked against an answer this
//! file computes independently from the corpus it loaded.
//!
//! The corpus is built the way the pipeline builds events: producer JSON in the seeds' shape
//! mapped by ingest's `event_from_json`, then enriched with `apply_context` (users with a
//! department, teams with a cost center), so the derived columns (`target_metadata`,
//! `department`) are checked end to end too. Needs the local stack (deploy/local/stack.sh up).

use std::collections::{BTreeMap, BTreeSet};

use clap::Parser;
use schemas::context::{apply_context, TeamContext, UserContext};
use schemas::flat::AuditRow;
use schemas::json::{event_from_json, JsonContext};
use schemas::{ChainedEvent, Ingress, IngressChannel, Outcome};
use serde_json::{json, Value};
use sink_clickhouse::{migrations, Store, StoreSettings};

/// 2024-06-01T00:00:00Z in seconds.
const BASE: i64 = 1_717_200_000;
/// (team, cost center), (model, agent type), (component, error), (day, team) ...
type Key2 = (String, String);
const N: usize = 42;
const FROM: &str = "2024-06-01 06:00:00";
const TO: &str = "2024-06-03T12:00:00Z";
const FROM_S: i64 = BASE + 6 * 3600;
const TO_S: i64 = BASE + 60 * 3600;
const TYPES: [&str; 9] = [
    "infrastructure_request",
    "request_blocked",
    "request_escalated",
    "response_blocked",
    "response_escalated",
    "request_completed",
    "routing_failed",
    "request_approved",
    "request_rejected",
];

fn url() -> String {
    std::env::var("CLICKHOUSE_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8123".to_owned())
}

fn users() -> Vec<UserContext> {
    let dept = ["eng", "finance"];
    (0..3)
        .map(|u| UserContext {
            user_id: format!("user-{u}"),
            name: format!("User {u}"),
            email: format!("u{u}@example.com"),
            roles: vec![],
            team_id: None,
            department: dept.get(u).map(|d| (*d).to_owned()),
        })
        .collect()
}

fn teams() -> Vec<TeamContext> {
    ["CC-A", "CC-B"]
        .iter()
        .enumerate()
        .map(|(t, cc)| TeamContext {
            team_id: format!("team-{t}"),
            name: format!("Team {t}"),
            tenant_id: None,
            project_id: None,
            business_unit: None,
            cost_center: Some((*cc).to_owned()),
        })
        .collect()
}

/// Request of event `i`: three consecutive events share one, except that an approval decision
/// (types 7, 8) answers the escalation (types 2, 4) five or four events earlier; in every
/// other block of nine the approval is left out, so some requests stay pending.
fn request_of(i: usize) -> usize {
    match i % 9 {
        7 if (i / 9) % 2 == 0 => (i - 5) / 3,
        8 => (i - 4) / 3,
        _ => i / 3,
    }
}

/// The producer's document for event `i` (seed 000 / 004 shape).
fn producer_json(i: usize) -> Value {
    let t = BASE + i as i64 * 2 * 3600 + i as i64; // ~2 h apart, distinct seconds
    let time = time::OffsetDateTime::from_unix_timestamp(t)
        .expect("time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("rfc3339");
    let mut e = json!({
        "id": format!("evt-{i:03}"),
        "eventType": TYPES[i % 9],
        "timestamp": time,
        "userId": format!("user-{}", i % 4),
        "source": if i % 2 == 0 { "gateway" } else { "policy_engine" },
        "category": if i == 7 { "ai_processing" } else { "user_interaction" },
        "traceId": format!("trace-{}", i / 5),
        "requestId": format!("req-{}", request_of(i)),
        "outcome": if i % 5 == 2 { "blocked" } else if i % 7 == 6 { "failed" } else { "success" },
    });
    if i % 5 != 4 {
        e["teamId"] = json!(format!("team-{}", i % 3));
    }
    if i % 6 != 5 {
        let mut target = json!({"type": "api_server", "id": format!("srv-{}", i % 4)});
        if i % 2 == 0 {
            target["metadata"] = json!({"region": format!("eu-{}", i % 3), "tier": i % 2});
        }
        e["target"] = target;
    }
    let mut result = serde_json::Map::new();
    if i % 3 == 0 {
        result.insert("estimatedCost".into(), json!(10.5 * (i + 1) as f64));
    }
    if i % 6 == 0 {
        result.insert("deploymentId".into(), json!(format!("dep-{}", i / 12)));
    }
    if i % 7 == 6 && i % 5 != 2 {
        result.insert("error".into(), json!(["timeout", "quota"][i % 2]));
    }
    if !result.is_empty() {
        e["result"] = Value::Object(result);
    }
    if i % 4 == 1 {
        e["ai"] = json!({
            "agentType": "planner",
            "model": if i % 3 % 2 == 0 { "model-a" } else { "model-b" },
            "promptTokens": 100 + i,
            "completionTokens": 10 + i,
            "confidence": 0.5 + i as f64 / 100.0,
        });
    }
    json!({ "event": e })
}

struct Corpus {
    /// Distinct stored events (one per (partition, seq)).
    events: Vec<ChainedEvent>,
    /// What the producer sent as target.metadata, per event id.
    target_metadata: BTreeMap<String, Value>,
}

fn corpus() -> Corpus {
    let users = users();
    let teams = teams();
    let mut events = Vec::new();
    let mut target_metadata = BTreeMap::new();
    for i in 0..N {
        let doc = producer_json(i);
        if let Some(m) = doc["event"]["target"].get("metadata") {
            target_metadata.insert(format!("evt-{i:03}"), m.clone());
        }
        let ctx = JsonContext::new(
            (BASE + i as i64 * 7200 + i as i64) * 1_000_000 + 5,
            Ingress {
                channel: IngressChannel::Kafka,
                topic: Some("audit.raw".into()),
                partition: Some(0),
                offset: Some(i as i64),
                format: "json".into(),
            },
            format!("derived-{i}"),
        );
        let mut e = event_from_json(doc.to_string().as_bytes(), &ctx).expect("producer json");
        let user = users.iter().find(|u| u.user_id == e.actor.id);
        let team = teams
            .iter()
            .find(|t| Some(&t.team_id) == e.tenant.team_id.as_ref());
        apply_context(&mut e, user, team);
        let partition = (i % 2) as i32;
        let seq = (i / 2) as i64 + 1;
        events.push(ChainedEvent {
            chain_partition: partition,
            seq,
            prev_hash: vec![0; 32],
            hash: vec![i as u8; 32],
            canonical_version: 1,
            source_topic: "audit.enriched".into(),
            source_partition: partition,
            source_offset: seq - 1,
            event: e,
        });
    }
    Corpus {
        events,
        target_metadata,
    }
}

struct Db {
    name: String,
    store: Store,
}

impl Db {
    async fn new(c: &Corpus) -> Self {
        let db = Db::empty().await;
        db.insert(&c.events).await;
        db.insert(&c.events[10..11]).await; // a second copy: recipes count and list it once
        db.extras().await;
        db
    }

    /// A fresh database with the sink's migrations.
    async fn empty() -> Self {
        let name = format!(
            "auditctl_recipes_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let store = Store::connect(&StoreSettings {
            url: url(),
            database: name.clone(),
            user: "default".into(),
            password: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("ClickHouse must be up (deploy/local/stack.sh up): {e}"));
        migrations::apply(&store).await.expect("migrations");
        Db { name, store }
    }

    async fn insert(&self, events: &[ChainedEvent]) {
        let mut ins = self
            .store
            .client()
            .insert::<AuditRow>("audit_events")
            .await
            .expect("insert");
        for e in events {
            ins.write(&AuditRow::from_chained(e, e.seq))
                .await
                .expect("row");
        }
        ins.end().await.expect("insert end");
    }

    /// Checkpoints and a fork alarm for partition 0.
    async fn extras(&self) {
        let client = self.store.client();
        // Two checkpoints of partition 0 (only the columns the recipes read).
        client
            .query(&format!(
                "INSERT INTO audit_checkpoints (chain_partition, seq, key_id, time_us, time) \
                 VALUES (0, 10, 'k', {a}000000, toDateTime({a}, 'UTC')), \
                 (0, 15, 'k', {b}000000, toDateTime({b}, 'UTC'))",
                a = BASE + 100_000,
                b = BASE + 200_000
            ))
            .execute()
            .await
            .expect("checkpoint rows");
        client
            .query(
                "INSERT INTO audit_forks (chain_partition, seq, stored_hash, offered_hash, \
                 offered_chained_offset, offered_payload_hex) VALUES (0, 3, 'aa', 'bb', 99, '')",
            )
            .execute()
            .await
            .expect("fork row");
    }

    /// Runs the statements of migration `version` again (as a retried migration would).
    async fn rerun_migration(&self, version: u32) {
        let m = migrations::MIGRATIONS
            .iter()
            .find(|m| m.version == version)
            .expect("migration");
        for stmt in migrations::statements(m.sql) {
            self.store
                .client()
                .query_raw(&stmt)
                .execute()
                .await
                .unwrap_or_else(|e| panic!("{stmt}: {e}"));
        }
    }

    async fn exec(&self, sql: &str) {
        self.store
            .client()
            .query_raw(sql)
            .execute()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// `auditctl report …` output.
    async fn report(&self, name: &str, format: &str) -> String {
        let argv = [
            "auditctl",
            "report",
            name,
            "--from",
            FROM,
            "--to",
            TO,
            "--format",
            format,
            "--clickhouse-url",
            &url(),
            "--clickhouse-database",
            &self.name,
        ];
        let cli = auditctl::Cli::try_parse_from(argv).expect("arguments");
        let mut out = Vec::new();
        let res = auditctl::run(cli, &mut out).await;
        assert!(res.is_ok(), "report {name}: {res:?}");
        String::from_utf8(out).expect("utf8")
    }

    async fn query(&self, recipe: &str, params: &[(&str, &str)]) -> Vec<Value> {
        let mut argv: Vec<String> = vec!["auditctl".into(), "query".into(), recipe.into()];
        for (k, v) in params {
            argv.push("--param".into());
            argv.push(format!("{k}={v}"));
        }
        for a in [
            "--format",
            "json",
            "--clickhouse-url",
            &url(),
            "--clickhouse-database",
            &self.name,
        ] {
            argv.push(a.into());
        }
        let cli = auditctl::Cli::try_parse_from(argv).expect("arguments");
        let mut out = Vec::new();
        let res = auditctl::run(cli, &mut out).await;
        assert!(res.is_ok(), "{recipe}: {res:?}");
        let v: Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{recipe}: {e}: {}", String::from_utf8_lossy(&out)));
        v.as_array().cloned().expect("array")
    }

    async fn drop(self) {
        let _ = self
            .store
            .client()
            .query(&format!("DROP DATABASE IF EXISTS {}", self.name))
            .execute()
            .await;
    }
}

fn secs(e: &ChainedEvent) -> i64 {
    e.event.event_time_us.div_euclid(1_000_000)
}

fn in_window(e: &ChainedEvent) -> bool {
    (FROM_S..TO_S).contains(&secs(e))
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["event_id"].as_str().expect("event_id").to_owned())
        .collect()
}

/// Event ids of `events` sorted by (time, partition, seq), optionally newest first.
fn sorted_ids<'a>(events: impl Iterator<Item = &'a ChainedEvent>, desc: bool) -> Vec<String> {
    let mut v: Vec<&ChainedEvent> = events.collect();
    v.sort_by_key(|e| (e.event.event_time_us, e.chain_partition, e.seq));
    if desc {
        v.sort_by_key(|e| {
            (
                std::cmp::Reverse(e.event.event_time_us),
                e.chain_partition,
                e.seq,
            )
        });
    }
    v.iter().map(|e| e.event.event_id.clone()).collect()
}

fn day(s: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(s)
        .expect("time")
        .date()
        .to_string()
}

#[tokio::test]
async fn every_recipe_matches_an_independent_answer() {
    let c = corpus();
    let db = Db::new(&c).await;
    let ev = &c.events;
    let mut checked = BTreeSet::new();

    // ---- trace timeline
    let rows = db.query("trace_timeline", &[("trace_id", "trace-2")]).await;
    let want = sorted_ids(
        ev.iter()
            .filter(|e| e.event.trace.trace_id.as_deref() == Some("trace-2")),
        false,
    );
    assert_eq!(ids(&rows), want);
    assert_eq!(want.len(), 5);
    checked.insert("trace_timeline");
    // The duplicated row (event 10, trace-2) is listed once.
    assert!(want.contains(&"evt-010".to_owned()));

    // ---- request timeline
    let rows = db
        .query("request_timeline", &[("request_id", "req-4")])
        .await;
    let want = sorted_ids(
        ev.iter()
            .filter(|e| e.event.request_id.as_deref() == Some("req-4")),
        false,
    );
    assert_eq!(ids(&rows), want);
    assert_eq!(want.len(), 4);
    checked.insert("request_timeline");

    // ---- user activity (window, newest first, limit)
    let rows = db
        .query(
            "user_activity",
            &[
                ("actor_id", "user-1"),
                ("from", FROM),
                ("to", TO),
                ("limit", "4"),
            ],
        )
        .await;
    let mut want = sorted_ids(
        ev.iter()
            .filter(|e| e.event.actor.id == "user-1" && in_window(e)),
        true,
    );
    assert!(want.len() > 4);
    want.truncate(4);
    assert_eq!(ids(&rows), want);
    checked.insert("user_activity");

    // ---- resource history, with the producer's target metadata
    let rows = db
        .query("resource_history", &[("target_id", "srv-2")])
        .await;
    let hist: Vec<&ChainedEvent> = ev
        .iter()
        .filter(|e| e.event.target.as_ref().is_some_and(|t| t.id == "srv-2"))
        .collect();
    assert_eq!(ids(&rows), sorted_ids(hist.iter().copied(), false));
    for r in &rows {
        let id = r["event_id"].as_str().expect("id");
        let got = r["target_metadata"]
            .as_str()
            .map(|s| serde_json::from_str::<Value>(s).expect("metadata json"));
        assert_eq!(got.as_ref(), c.target_metadata.get(id), "{id}");
    }
    assert!(rows.iter().any(|r| !r["target_metadata"].is_null()));
    checked.insert("resource_history");

    // ---- policy violations: denied, blocked, escalated
    let rows = db
        .query("policy_violations", &[("from", FROM), ("to", TO)])
        .await;
    let got: BTreeSet<(String, String, Option<String>)> = rows
        .iter()
        .map(|r| {
            (
                r["event_id"].as_str().expect("id").to_owned(),
                r["kind"].as_str().expect("kind").to_owned(),
                r["department"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, Option<String>)> = ev
        .iter()
        .filter(|e| in_window(e))
        .filter_map(|e| {
            let t = e.event.event_type.as_str();
            let kind = if t.ends_with("_blocked") {
                "blocked"
            } else if t.ends_with("_escalated") {
                "escalated"
            } else if e.event.outcome == Outcome::Denied {
                "denied"
            } else {
                return None;
            };
            let dept = match e.event.actor.id.as_str() {
                "user-0" => Some("eng".to_owned()),
                "user-1" => Some("finance".to_owned()),
                _ => None,
            };
            Some((e.event.event_id.clone(), kind.to_owned(), dept))
        })
        .collect();
    assert_eq!(got, want);
    assert!(want.iter().any(|w| w.1 == "denied") && want.iter().any(|w| w.1 == "escalated"));
    assert_eq!(
        ids(&rows),
        sorted_ids(
            ev.iter()
                .filter(|e| want.iter().any(|w| w.0 == e.event.event_id)),
            true
        )
    );
    checked.insert("policy_violations");

    // ---- policy denials (outcome DENIED only)
    let rows = db
        .query("policy_denials", &[("from", FROM), ("to", TO)])
        .await;
    let want = sorted_ids(
        ev.iter()
            .filter(|e| in_window(e) && e.event.outcome == Outcome::Denied),
        false,
    );
    assert_eq!(ids(&rows), want);
    checked.insert("policy_denials");

    // ---- time range by outcome
    let rows = db
        .query(
            "events_by_outcome",
            &[("outcome", "FAILURE"), ("from", FROM), ("to", TO)],
        )
        .await;
    let want = sorted_ids(
        ev.iter()
            .filter(|e| in_window(e) && e.event.outcome == Outcome::Failure),
        true,
    );
    assert!(!want.is_empty());
    assert_eq!(ids(&rows), want);
    checked.insert("events_by_outcome");

    // ---- cost by team and cost center
    let rows = db
        .query("cost_by_team", &[("from", FROM), ("to", TO)])
        .await;
    let got: BTreeMap<Key2, (u64, f64)> = rows
        .iter()
        .map(|r| {
            (
                (
                    r["team"].as_str().expect("team").to_owned(),
                    r["cost_center"].as_str().expect("cc").to_owned(),
                ),
                (
                    r["costed_events"].as_u64().expect("n"),
                    r["estimated_cost"].as_f64().expect("cost"),
                ),
            )
        })
        .collect();
    let mut want: BTreeMap<Key2, (u64, f64)> = BTreeMap::new();
    for e in ev.iter().filter(|e| in_window(e)) {
        let cost = e
            .event
            .data
            .result_json
            .as_deref()
            .and_then(|r| serde_json::from_str::<Value>(r).ok())
            .and_then(|r| r["estimatedCost"].as_f64());
        if let Some(cost) = cost {
            let k = (
                e.event.tenant.team_id.clone().unwrap_or_default(),
                e.event.tenant.cost_center.clone().unwrap_or_default(),
            );
            let w = want.entry(k).or_default();
            w.0 += 1;
            w.1 += cost;
        }
    }
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (k, (n, cost)) in &want {
        let (gn, gcost) = got[k];
        assert_eq!(gn, *n, "{k:?}");
        assert!((gcost - cost).abs() < 1e-9, "{k:?}: {gcost} vs {cost}");
    }
    assert!(want.keys().any(|k| k.1 == "CC-A") && want.keys().any(|k| k.1.is_empty()));
    checked.insert("cost_by_team");

    // ---- chain status of partition 0 (a duplicate row, two checkpoints, one fork)
    let rows = db.query("chain_status", &[("partition", "0")]).await;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    let p0: Vec<&ChainedEvent> = ev.iter().filter(|e| e.chain_partition == 0).collect();
    let head = p0.iter().map(|e| e.seq).max().expect("head");
    assert_eq!(r["head_seq"], json!(head));
    assert_eq!(r["rows"], json!(p0.len() + 1));
    assert_eq!(r["distinct_seqs"], json!(p0.len()));
    assert_eq!(r["missing_seqs"], json!(0));
    assert_eq!(r["duplicate_rows"], json!(1));
    assert_eq!(r["checkpoint_seq"], json!(15));
    assert_eq!(r["unsealed_seqs"], json!(head - 15));
    assert_eq!(r["forks"], json!(1));
    assert_eq!(
        r["head_hash"],
        json!(hex::encode(vec![(2 * (head - 1)) as u8; 32]))
    );
    checked.insert("chain_status");

    // ---- chain heads (every partition)
    let rows = db.query("chain_heads", &[]).await;
    assert_eq!(rows.len(), 2);
    for r in &rows {
        let p = r["chain_partition"].as_i64().expect("p") as i32;
        let n = ev.iter().filter(|e| e.chain_partition == p).count();
        assert_eq!(r["head_seq"], json!(n));
        assert_eq!(r["duplicate_rows"], json!(if p == 0 { 1 } else { 0 }));
    }
    checked.insert("chain_heads");

    // ---- counts by type
    let rows = db
        .query("counts_by_type", &[("from", FROM), ("to", TO)])
        .await;
    let got: BTreeMap<String, u64> = rows
        .iter()
        .map(|r| {
            (
                format!(
                    "{}/{}",
                    r["event_type"].as_str().expect("t"),
                    r["category"].as_str().expect("c")
                ),
                r["events"].as_u64().expect("n"),
            )
        })
        .collect();
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for e in ev.iter().filter(|e| in_window(e)) {
        let k = format!(
            "{}/{}",
            e.event.event_type,
            schemas::flat::category_symbol(e.event.category)
        );
        *want.entry(k).or_default() += 1;
    }
    assert_eq!(got, want);
    checked.insert("counts_by_type");

    // ---- team events per day
    let rows = db
        .query("team_events_per_day", &[("from", FROM), ("to", TO)])
        .await;
    let got: BTreeMap<Key2, (u64, u64, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                (
                    r["day"].as_str().expect("day").to_owned(),
                    r["team"].as_str().expect("team").to_owned(),
                ),
                (
                    r["events"].as_u64().expect("n"),
                    r["failures"].as_u64().expect("f"),
                    r["denials"].as_u64().expect("d"),
                    r["actors"].as_u64().expect("a"),
                ),
            )
        })
        .collect();
    let mut want: BTreeMap<Key2, (u64, u64, u64, BTreeSet<String>)> = BTreeMap::new();
    for e in ev.iter().filter(|e| in_window(e)) {
        let k = (
            day(secs(e)),
            e.event.tenant.team_id.clone().unwrap_or_default(),
        );
        let w = want.entry(k).or_default();
        w.0 += 1;
        w.1 += u64::from(e.event.outcome == Outcome::Failure);
        w.2 += u64::from(e.event.outcome == Outcome::Denied);
        w.3.insert(e.event.actor.id.clone());
    }
    let want: BTreeMap<_, _> = want
        .into_iter()
        .map(|(k, (a, b, c, d))| (k, (a, b, c, d.len() as u64)))
        .collect();
    assert_eq!(got, want);
    checked.insert("team_events_per_day");

    // ---- original labels: the one unknown category keeps its producer text
    let rows = db
        .query(
            "original_labels",
            &[("from", "2024-06-01"), ("to", "2024-06-05")],
        )
        .await;
    let got: BTreeMap<(String, String, String, u64), u64> = rows
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_str().expect("label column").to_owned();
            (
                (
                    f("label"),
                    f("normalized"),
                    f("original"),
                    r["kept_original"].as_u64().expect("kept"),
                ),
                r["events"].as_u64().expect("n"),
            )
        })
        .collect();
    let mut want: BTreeMap<(String, String, String, u64), u64> = BTreeMap::new();
    for e in ev {
        let x = &e.event;
        for (label, normalized) in [
            ("category", schemas::flat::category_symbol(x.category)),
            ("severity", schemas::flat::severity_symbol(x.severity)),
            ("outcome", schemas::flat::outcome_symbol(x.outcome)),
            (
                "actor_type",
                schemas::flat::actor_type_symbol(x.actor.actor_type),
            ),
        ] {
            let key = format!("audit.original.{label}");
            let kept = x.attributes.iter().find(|kv| kv.key == key);
            let original = kept.map_or(normalized.to_lowercase(), |kv| kv.value.clone());
            *want
                .entry((
                    label.to_owned(),
                    normalized.to_owned(),
                    original,
                    u64::from(kept.is_some()),
                ))
                .or_default() += 1;
        }
    }
    assert_eq!(got, want);
    assert!(want.contains_key(&(
        "category".to_owned(),
        "OTHER".to_owned(),
        "ai_processing".to_owned(),
        1
    )));
    checked.insert("original_labels");

    // Every recipe that ships is checked above (the report_* ones in the next test).
    let all: BTreeSet<&str> = sink_clickhouse::queries::RECIPES
        .iter()
        .map(|r| r.name)
        .filter(|n| !n.starts_with("report_"))
        .collect();
    assert_eq!(checked, all, "a recipe without a check");
    db.drop().await;
}

/// Bad input is a usage error (exit 2) before anything runs, and a hostile value is only ever
/// a value: it matches nothing and changes no table.
#[tokio::test]
async fn parameters_are_typed_and_bound_not_spliced() {
    let c = corpus();
    let db = Db::new(&c).await;
    let run = |args: Vec<String>| async move {
        let argv = std::iter::once("auditctl".to_owned()).chain(args);
        let cli = auditctl::Cli::try_parse_from(argv).expect("arguments");
        let mut out = Vec::new();
        let res = auditctl::run(cli, &mut out).await;
        (
            auditctl::exit_code(&res),
            String::from_utf8_lossy(&out).into_owned(),
        )
    };
    let conn = [
        "--clickhouse-url".to_owned(),
        url(),
        "--clickhouse-database".to_owned(),
        db.name.clone(),
    ];
    let with = |v: &[&str]| -> Vec<String> {
        v.iter()
            .map(|s| (*s).to_owned())
            .chain(conn.iter().cloned())
            .collect()
    };
    // Missing, unknown, ill-typed parameters; unknown recipe.
    for args in [
        with(&["query", "trace_timeline"]),
        with(&[
            "query",
            "trace_timeline",
            "--param",
            "trace_id=x",
            "--param",
            "nope=1",
        ]),
        with(&["query", "chain_status", "--param", "partition=zero"]),
        with(&[
            "query",
            "user_activity",
            "--param",
            "actor_id=a",
            "--param",
            "from=yesterday",
            "--param",
            "to=2024-01-01",
        ]),
        with(&["query", "no_such_recipe"]),
    ] {
        let (code, _) = run(args.clone()).await;
        assert_eq!(code, auditctl::EXIT_USAGE, "{args:?}");
    }
    // A value that would break out of a spliced string literal.
    let hostile = "trace-2' OR 1=1 OR trace_id = '";
    let (code, out) = run(with(&[
        "query",
        "trace_timeline",
        "--param",
        &format!("trace_id={hostile}"),
        "--format",
        "json",
    ]))
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json"),
        json!([])
    );
    let (code, out) = run(with(&[
        "query",
        "trace_timeline",
        "--param",
        "trace_id=x'); DROP TABLE audit_events; --",
    ]))
    .await;
    assert_eq!(code, 0, "{out}");
    let n: u64 = db
        .store
        .client()
        .query("SELECT count() FROM audit_events")
        .fetch_one()
        .await
        .expect("table still there");
    assert_eq!(n, N as u64 + 1);
    // --list names every recipe and its parameters.
    let (code, out) = run(vec!["query".into(), "--list".into()]).await;
    assert_eq!(code, 0);
    for r in sink_clickhouse::queries::RECIPES.iter() {
        assert!(out.contains(r.name), "{} not listed", r.name);
    }
    assert!(out.contains("--param partition=<Int64>"), "{out}");
    db.drop().await;
}

fn day_of(e: &ChainedEvent) -> String {
    day(secs(e))
}

fn in_window_us(e: &ChainedEvent) -> bool {
    (FROM_S * 1_000_000..TO_S * 1_000_000).contains(&e.event.event_time_us)
}

fn stage(t: &str) -> Option<&'static str> {
    if t.ends_with("_escalated")
        || ["approval_requested", "review_requested", "review_created"].contains(&t)
    {
        Some("requested")
    } else if t.ends_with("_approved") || t == "approval_granted" {
        Some("approved")
    } else if t.ends_with("_rejected") || t == "approval_denied" {
        Some("rejected")
    } else {
        None
    }
}

fn s_(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_owned()
}

fn n_(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The report views (kept by materialized views) and every report_* recipe, against answers
/// computed here. The corpus arrives in three ways: rows that were there before the views
/// existed (the migration's backfill), rows inserted afterwards (the views), and the migration
/// run again over all of it (a retried migration): every figure still counts each event once.
#[tokio::test]
async fn report_views_match_independent_answers() {
    let c = corpus();
    let ev = &c.events;
    let db = Db::empty().await;
    let half = ev.len() / 2;
    db.insert(&ev[..half]).await;
    // As if the rows predated migration 0020: drop its views and tables, then run it again.
    for t in [
        "activity_daily",
        "violations",
        "approvals",
        "deployments",
        "failures",
        "ai_activity",
    ] {
        db.exec(&format!("DROP TABLE IF EXISTS report_{t}_mv"))
            .await;
        db.exec(&format!("DROP TABLE IF EXISTS report_{t}")).await;
    }
    db.rerun_migration(20).await;
    db.insert(&ev[half..]).await;
    db.insert(&ev[3..5]).await; // duplicates through the views
    db.rerun_migration(20).await; // backfill over rows the views already hold
    let mut checked = BTreeSet::new();

    // ---- activity per day, team, actor (days: FROM's day .. the day before TO's end)
    let in_days = |e: &&ChainedEvent| {
        let d = day_of(e);
        d.as_str() >= "2024-06-01" && d.as_str() <= "2024-06-03"
    };
    let rows = db
        .query("report_activity", &[("from", FROM), ("to", TO)])
        .await;
    let got: BTreeMap<(String, String, String), (u64, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                (s_(&r["day"]), s_(&r["team_id"]), s_(&r["actor_id"])),
                (n_(&r["events"]), n_(&r["failures"]), n_(&r["denials"])),
            )
        })
        .collect();
    let mut want: BTreeMap<(String, String, String), (u64, u64, u64)> = BTreeMap::new();
    for e in ev.iter().filter(in_days) {
        let w = want
            .entry((
                day_of(e),
                e.event.tenant.team_id.clone().unwrap_or_default(),
                e.event.actor.id.clone(),
            ))
            .or_default();
        w.0 += 1;
        w.1 += u64::from(e.event.outcome == Outcome::Failure);
        w.2 += u64::from(e.event.outcome == Outcome::Denied);
    }
    assert_eq!(got, want);
    checked.insert("report_activity");

    let rows = db
        .query("report_events_per_day", &[("from", FROM), ("to", TO)])
        .await;
    let got: BTreeMap<String, u64> = rows
        .iter()
        .map(|r| (s_(&r["day"]), n_(&r["events"])))
        .collect();
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for e in ev.iter().filter(in_days) {
        *want.entry(day_of(e)).or_default() += 1;
    }
    assert_eq!(got, want);
    assert_eq!(want.len(), 3);
    checked.insert("report_events_per_day");

    // ---- violations
    let kind = |e: &ChainedEvent| {
        let t = e.event.event_type.as_str();
        if t.ends_with("_blocked") {
            Some("blocked")
        } else if t.ends_with("_escalated") {
            Some("escalated")
        } else if e.event.outcome == Outcome::Denied {
            Some("denied")
        } else {
            None
        }
    };
    let violations: Vec<&ChainedEvent> = ev
        .iter()
        .filter(|e| in_window(e) && kind(e).is_some())
        .collect();
    let rows = db
        .query("report_violations", &[("from", FROM), ("to", TO)])
        .await;
    assert_eq!(ids(&rows), sorted_ids(violations.iter().copied(), true));
    for r in &rows {
        let e = ev
            .iter()
            .find(|e| e.event.event_id == s_(&r["event_id"]))
            .expect("event");
        assert_eq!(r["kind"], json!(kind(e).expect("kind")));
        let dept = match e.event.actor.id.as_str() {
            "user-0" => "eng",
            "user-1" => "finance",
            _ => "",
        };
        assert_eq!(r["department"], json!(dept));
    }
    checked.insert("report_violations");
    let rows = db
        .query("report_violations_by_team", &[("from", FROM), ("to", TO)])
        .await;
    let got: BTreeMap<String, [u64; 4]> = rows
        .iter()
        .map(|r| {
            (
                s_(&r["team_id"]),
                [
                    n_(&r["violations"]),
                    n_(&r["blocked"]),
                    n_(&r["escalated"]),
                    n_(&r["denied"]),
                ],
            )
        })
        .collect();
    let mut want: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    for e in &violations {
        let w = want
            .entry(e.event.tenant.team_id.clone().unwrap_or_default())
            .or_default();
        w[0] += 1;
        w[match kind(e) {
            Some("blocked") => 1,
            Some("escalated") => 2,
            _ => 3,
        }] += 1;
    }
    assert_eq!(got, want);
    checked.insert("report_violations_by_team");

    // ---- approvals and latency
    let rows = db
        .query("report_approvals", &[("from", FROM), ("to", TO)])
        .await;
    let mut by_request: BTreeMap<String, Vec<(i64, &'static str)>> = BTreeMap::new();
    for e in ev {
        if let Some(st) = stage(&e.event.event_type) {
            let req = e
                .event
                .request_id
                .clone()
                .unwrap_or_else(|| e.event.event_id.clone());
            by_request
                .entry(req)
                .or_default()
                .push((e.event.event_time_us, st));
        }
    }
    let mut want: Vec<(i64, String, String, Option<f64>)> = Vec::new();
    for (req, evs) in &by_request {
        let Some(requested) = evs.iter().filter(|x| x.1 == "requested").map(|x| x.0).min() else {
            continue;
        };
        if !(FROM_S * 1_000_000..TO_S * 1_000_000).contains(&requested) {
            continue;
        }
        let decision = evs
            .iter()
            .filter(|x| x.1 != "requested" && x.0 >= requested)
            .min();
        want.push((
            requested,
            req.clone(),
            decision.map_or("pending", |d| d.1).to_owned(),
            decision.map(|d| (d.0 - requested) as f64 / 1e6),
        ));
    }
    want.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let got: Vec<(i64, String, String, Option<f64>)> = rows
        .iter()
        .map(|r| {
            (
                r["requested_us"].as_i64().expect("requested_us"),
                s_(&r["request_id"]),
                s_(&r["decision"]),
                r["latency_s"].as_f64(),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(want.iter().any(|w| w.3.is_some()) && want.iter().any(|w| w.3.is_none()));
    checked.insert("report_approvals");

    // ---- deployments and cost per team / cost center
    let rows = db.query("report_cost", &[("from", FROM), ("to", TO)]).await;
    let got: BTreeMap<Key2, (u64, u64, f64)> = rows
        .iter()
        .map(|r| {
            (
                (s_(&r["team_id"]), s_(&r["cost_center"])),
                (
                    n_(&r["deployments"]),
                    n_(&r["costed_events"]),
                    r["estimated_cost"].as_f64().expect("cost"),
                ),
            )
        })
        .collect();
    let mut want: BTreeMap<Key2, (BTreeSet<String>, u64, f64)> = BTreeMap::new();
    for e in ev.iter().filter(|e| in_window_us(e)) {
        let result: Value = e
            .event
            .data
            .result_json
            .as_deref()
            .map(|r| serde_json::from_str(r).expect("result json"))
            .unwrap_or(Value::Null);
        let dep = result["deploymentId"].as_str();
        let cost = result["estimatedCost"].as_f64();
        if dep.is_none() && cost.is_none() && !e.event.event_type.contains("deploy") {
            continue;
        }
        let w = want
            .entry((
                e.event.tenant.team_id.clone().unwrap_or_default(),
                e.event.tenant.cost_center.clone().unwrap_or_default(),
            ))
            .or_default();
        if let Some(d) = dep {
            w.0.insert(d.to_owned());
        }
        if let Some(c) = cost {
            w.1 += 1;
            w.2 += c;
        }
    }
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (k, (deps, n, cost)) in &want {
        let g = got[k];
        assert_eq!((g.0, g.1), (deps.len() as u64, *n), "{k:?}");
        assert!((g.2 - cost).abs() < 1e-9, "{k:?}");
    }
    assert!(want.values().any(|w| !w.0.is_empty()));
    checked.insert("report_cost");

    // ---- failures by component and error
    let rows = db
        .query("report_failures", &[("from", FROM), ("to", TO)])
        .await;
    let got: BTreeMap<Key2, (u64, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                (s_(&r["source_component"]), s_(&r["error"])),
                (
                    n_(&r["failures"]),
                    r["first_us"].as_i64().expect("first"),
                    r["last_us"].as_i64().expect("last"),
                ),
            )
        })
        .collect();
    let mut want: BTreeMap<Key2, (u64, i64, i64)> = BTreeMap::new();
    for e in ev
        .iter()
        .filter(|e| in_window_us(e) && e.event.outcome == Outcome::Failure)
    {
        let t = e.event.event_time_us;
        let w = want
            .entry((
                e.event.source_component.clone(),
                e.event.action.error.clone().unwrap_or_default(),
            ))
            .or_insert((0, i64::MAX, i64::MIN));
        w.0 += 1;
        w.1 = w.1.min(t);
        w.2 = w.2.max(t);
    }
    assert_eq!(got, want);
    assert!(want.keys().any(|k| !k.1.is_empty()));
    checked.insert("report_failures");

    // ---- AI activity
    let rows = db
        .query("report_ai_activity", &[("from", FROM), ("to", TO)])
        .await;
    let got: BTreeMap<Key2, (u64, i64, i64, f64, f64)> = rows
        .iter()
        .map(|r| {
            (
                (s_(&r["model"]), s_(&r["agent_type"])),
                (
                    n_(&r["events"]),
                    r["prompt_tokens"].as_i64().expect("p"),
                    r["completion_tokens"].as_i64().expect("c"),
                    r["avg_confidence"].as_f64().expect("avg"),
                    r["min_confidence"].as_f64().expect("min"),
                ),
            )
        })
        .collect();
    let mut acc: BTreeMap<Key2, Vec<(i64, i64, f64)>> = BTreeMap::new();
    for e in ev.iter().filter(|e| in_window_us(e)) {
        if let Some(ai) = &e.event.ai {
            acc.entry((
                ai.model.clone().unwrap_or_default(),
                ai.agent_type.clone().unwrap_or_default(),
            ))
            .or_default()
            .push((
                ai.prompt_tokens.unwrap_or(0),
                ai.completion_tokens.unwrap_or(0),
                ai.confidence.expect("confidence"),
            ));
        }
    }
    assert_eq!(got.len(), acc.len());
    assert!(acc.len() >= 2);
    for (k, v) in &acc {
        let g = got[k];
        assert_eq!(g.0, v.len() as u64, "{k:?}");
        assert_eq!(g.1, v.iter().map(|x| x.0).sum::<i64>(), "{k:?}");
        assert_eq!(g.2, v.iter().map(|x| x.1).sum::<i64>(), "{k:?}");
        let avg = v.iter().map(|x| x.2).sum::<f64>() / v.len() as f64;
        assert!((g.3 - avg).abs() < 1e-9, "{k:?}");
        let min = v.iter().map(|x| x.2).fold(f64::MAX, f64::min);
        assert!((g.4 - min).abs() < 1e-12, "{k:?}");
    }
    checked.insert("report_ai_activity");

    let all: BTreeSet<&str> = sink_clickhouse::queries::RECIPES
        .iter()
        .map(|r| r.name)
        .filter(|n| n.starts_with("report_"))
        .collect();
    assert_eq!(checked, all, "a report recipe without a check");

    // ---- the reports themselves, in every format
    let team_violations = want_team_violations(&violations);
    for name in [
        "compliance",
        "activity",
        "violations",
        "cost",
        "approvals",
        "failures",
        "ai",
    ] {
        let html = db.report(name, "html").await;
        assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</html>\n"));
        assert!(
            !html.contains("<script") && !html.contains("src=") && !html.contains("href="),
            "{name}: not self-contained"
        );
        let md = db.report(name, "markdown").await;
        assert!(md.starts_with("# "), "{name}");
        let csv = db.report(name, "csv").await;
        assert!(csv.contains("\r\n"), "{name}");
        let table = db.report(name, "table").await;
        assert!(table.contains("rows)"), "{name}");
        let js: Value = serde_json::from_str(&db.report(name, "json").await).expect("json");
        assert!(js.is_array() || js.is_object(), "{name}");
    }
    // The compliance page charts events over time and violations per team, with the figures.
    let html = db.report("compliance", "html").await;
    assert_eq!(html.matches("<svg").count(), 2, "{html}");
    assert!(html.contains("Events per day") && html.contains("Violations per team"));
    for (team, n) in &team_violations {
        let label = if team.is_empty() { "(none)" } else { team };
        assert!(
            html.contains(&format!(">{label}</text>")) && html.contains(&format!(">{n}</text>")),
            "{team}: {n}"
        );
    }
    let js: Value = serde_json::from_str(&db.report("violations", "json").await).expect("json");
    assert_eq!(
        js.as_object().expect("sections").len(),
        2,
        "one array per section"
    );
    db.drop().await;
}

fn want_team_violations(v: &[&ChainedEvent]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for e in v {
        *m.entry(e.event.tenant.team_id.clone().unwrap_or_default())
            .or_default() += 1;
    }
    m
}
