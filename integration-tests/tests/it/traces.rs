//! Issue 9's trace test: the five workers run (their lib `run` functions) with traces exported
//! over OTLP/gRPC to a receiver this test starts (a tonic server with opentelemetry-proto's
//! `TraceService`; not the pipeline's own ingest, which would loop). Events arrive with a
//! `traceparent` header (or only with trace ids in their own fields); each must yield one
//! connected trace with spans from all five workers, and both sinks' batch spans must link to
//! it. The test also scrapes `/metrics` and checks the counters against what was sent.
//!
//! The OpenTelemetry global tracer provider is process-wide, and so is the Prometheus
//! recorder: the test installs one provider for the whole test process
//! (`telemetry::install_tracer_provider`), tells the workers apart by each span's
//! instrumentation scope (the worker's name), and selects its spans by the trace ids it sent
//! (other tests of this binary running at the same time may export spans too). Counters are
//! compared as deltas over the run, at least what this test sent (another test's records may
//! be counted in the same process).

use crate::harness::{Pipeline, Running};
use anyhow::{ensure, Context as _};
use clap::Parser as _;
use integration_tests::{demo, stack};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use worker_runtime::Shutdown;

const DEADLINE: Duration = Duration::from_secs(180);
const WORKERS: [&str; 5] = [
    "ingest",
    "enrich",
    "chainer",
    "sink-clickhouse",
    "sink-archive",
];

/// One exported span, as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    scope: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    /// (trace id, span id) of each link.
    links: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Got>>>);

impl Receiver {
    fn spans(&self) -> Vec<Got> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for rs in &request.get_ref().resource_spans {
            for ss in &rs.scope_spans {
                let scope = ss
                    .scope
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                for s in &ss.spans {
                    got.push(Got {
                        scope: scope.clone(),
                        name: s.name.clone(),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        links: s
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                    });
                }
            }
        }
        if let Ok(mut v) = self.0.lock() {
            v.extend(got);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn start_receiver(shutdown: Shutdown) -> anyhow::Result<(String, Receiver)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let receiver = Receiver::default();
    let service = TraceServiceServer::new(receiver.clone());
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = r {
            eprintln!("test OTLP receiver failed: {e}");
        }
    });
    Ok((format!("http://{addr}"), receiver))
}

/// Produces `(key, value, traceparent)` records and waits for every acknowledgement.
async fn produce_traced(
    producer: &FutureProducer,
    topic: &str,
    records: &[(Option<String>, Vec<u8>, Option<String>)],
) -> anyhow::Result<()> {
    let mut pending = Vec::new();
    for (key, value, tp) in records {
        let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(value);
        if let Some(k) = key.as_deref() {
            r = r.key(k);
        }
        if let Some(tp) = tp {
            r = r.headers(OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(tp.as_bytes()),
            }));
        }
        let f = producer
            .send_result(r)
            .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
        pending.push(f);
    }
    for f in futures::future::join_all(pending).await {
        match f {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => anyhow::bail!("delivery to {topic} failed: {e}"),
            Err(_) => anyhow::bail!("delivery to {topic} cancelled"),
        }
    }
    Ok(())
}

/// A free local port for the ingest's health server (bound and released: a small race with
/// other processes, acceptable on a test machine).
fn free_addr() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

/// The sum of the samples of `name` whose labels contain every `label="value"` in `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

async fn scrape(addr: &str) -> anyhow::Result<String> {
    let resp = reqwest::get(format!("http://{addr}/metrics")).await?;
    ensure!(
        resp.status().is_success(),
        "/metrics answered {}",
        resp.status()
    );
    Ok(resp.text().await?)
}

fn random_hex(bytes: usize) -> String {
    let mut s = String::new();
    while s.len() < bytes * 2 {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(bytes * 2);
    s
}

/// Whether the spans of one trace form one tree hanging from `root_parent` (the producer's
/// span id, not exported; empty when the trace starts in the pipeline) and cover all five
/// workers. `Err` says what is missing.
fn check_trace(spans: &[&Got], root_parent: &str) -> Result<(), String> {
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let scopes: BTreeSet<&str> = spans.iter().map(|s| s.scope.as_str()).collect();
    let missing: Vec<_> = WORKERS.iter().filter(|w| !scopes.contains(*w)).collect();
    if !missing.is_empty() {
        return Err(format!("no spans yet from {missing:?} (have {scopes:?})"));
    }
    let roots: Vec<_> = spans
        .iter()
        .filter(|s| !ids.contains(s.parent.as_str()))
        .collect();
    // Only the first stage's spans hang from outside the exported ones (more than one when a
    // record was read twice, e.g. across a rebalance), and from the producer's span.
    if !roots.is_empty()
        && roots
            .iter()
            .all(|r| r.parent == root_parent && r.scope == "ingest")
    {
        Ok(())
    } else {
        Err(format!(
            "not one connected tree from {root_parent:?}: roots {:?}",
            roots
                .iter()
                .map(|s| (&s.scope, &s.name, &s.parent))
                .collect::<Vec<_>>()
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_connected_trace_per_event_across_all_five_workers() -> anyhow::Result<()> {
    let receiver_stop = Shutdown::new();
    let (endpoint, receiver) = start_receiver(receiver_stop.clone()).await?;
    let p = Pipeline::new("tracing", 2).await?;
    let provider = worker_runtime::telemetry::install_tracer_provider(&endpoint, "audit-it")?;
    let topics = p.kafka.topics();

    // Ingest with its health server, for the scrape.
    let health = free_addr()?;
    let mut ingest_args = p.ingest_args();
    if let Some(i) = ingest_args.iter().position(|a| a == "--health-addr") {
        ingest_args[i + 1] = health.clone();
    }
    // And its HTTP door, for a request that carries a `traceparent`.
    let door = free_addr()?;
    let token = random_hex(16);
    ingest_args.extend([
        "--http-addr".into(),
        door.clone(),
        "--http-tokens".into(),
        format!(
            "sha256:{} tenant-traces team-traces",
            hex(&ingest::http::token_hash(&token))
        ),
    ]);
    let ingest_cfg = ingest::Config::parse_from(ingest_args);
    let ingest_stop = Shutdown::new();
    let ingest = Running {
        name: "ingest",
        shutdown: ingest_stop.clone(),
        task: tokio::spawn(async move { Ok(ingest::run(ingest_cfg, ingest_stop).await?) }),
    };
    let workers = vec![
        ingest,
        p.start_enrich(),
        p.start_chainer(),
        p.start_sink_clickhouse(),
        p.start_sink_archive(),
    ];
    let before = stack::poll_until("ingest /metrics answers", DEADLINE, || async {
        Ok(match scrape(&health).await {
            Ok(t) => Ok(t),
            Err(e) => Err(e.to_string()),
        })
    })
    .await?;

    // Two requests' events with a producer `traceparent` each (one fresh trace per event), one
    // request's events with trace ids only in their own fields.
    let events = demo::lifecycle(3, 19, now_us() - 3_600_000_000);
    let linked_trace = events
        .last()
        .and_then(|e| e.trace_id.clone())
        .context("demo events carry trace ids")?;
    let mut records = Vec::new();
    let mut headed: BTreeMap<String, String> = BTreeMap::new(); // trace id → producer span id
    let mut unheaded = 0usize;
    for e in &events {
        if e.trace_id.as_deref() == Some(linked_trace.as_str()) {
            unheaded += 1;
            records.push((e.key.clone(), e.value.clone(), None));
        } else {
            let (t, s) = (random_hex(16), random_hex(8));
            records.push((
                e.key.clone(),
                e.value.clone(),
                Some(format!("00-{t}-{s}-01")),
            ));
            headed.insert(t, s);
        }
    }
    ensure!(!headed.is_empty() && unheaded > 0);
    let n = events.len();
    // A few that ingest dead-letters, so the rejection counters move too.
    let invalid = demo::invalid(3);
    let m = invalid.len();
    records.extend(invalid.into_iter().map(|e| (e.key, e.value, None)));
    let producer = stack::producer(&p.kafka.brokers)?;
    produce_traced(&producer, &topics.raw, &records).await?;

    // Two events through the HTTP door in one request with a `traceparent`: both join the
    // caller's trace, under the door's server span.
    let (http_trace, http_parent) = (random_hex(16), random_hex(8));
    let http_events: Vec<serde_json::Value> = (0..2)
        .map(|i| {
            serde_json::json!({"event": {
                "id": format!("evt-traces-http-{}-{i}", random_hex(6)),
                "eventType": "infrastructure_request",
                "timestamp": "2024-01-15T10:30:00Z",
                "userId": "user-123",
                "source": "natural_language_interface",
                "category": "user_interaction",
                "action": "create_api_server",
                "result": {"status": "success"},
            }})
        })
        .collect();
    let posted = stack::poll_until("the HTTP door accepts the request", DEADLINE, || async {
        let resp = reqwest::Client::new()
            .post(format!("http://{door}/v1/events"))
            .bearer_auth(&token)
            .header("traceparent", format!("00-{http_trace}-{http_parent}-01"))
            .json(&http_events)
            .send()
            .await?;
        let status = resp.status();
        let body = resp.text().await?;
        Ok(if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        })
    })
    .await?;
    ensure!(
        posted.contains("evt-traces-http-"),
        "door answered {posted}"
    );
    headed.insert(http_trace.clone(), http_parent);
    let total = n + http_events.len();

    let outcome = stack::poll_until("one connected trace per event", DEADLINE, || async {
        let spans = receiver.spans();
        let mut by_trace: HashMap<&str, Vec<&Got>> = HashMap::new();
        for s in &spans {
            by_trace.entry(s.trace_id.as_str()).or_default().push(s);
        }
        let mut problems = Vec::new();
        for (t, root) in &headed {
            let trace = by_trace.get(t.as_str()).cloned().unwrap_or_default();
            if let Err(why) = check_trace(&trace, root) {
                problems.push(format!("trace {t}: {why}"));
            }
        }
        // The events without a header: ingest's process span starts their trace and links to
        // the trace their fields name.
        let linking: Vec<&Got> = spans
            .iter()
            .filter(|s| {
                s.scope == "ingest"
                    && s.name == format!("{} process", topics.raw)
                    && s.links.iter().any(|(t, _)| *t == linked_trace)
            })
            .collect();
        if linking.len() < unheaded {
            problems.push(format!(
                "{} of {unheaded} ingest spans link to the events' own trace",
                linking.len()
            ));
        }
        for l in &linking {
            let trace = by_trace
                .get(l.trace_id.as_str())
                .cloned()
                .unwrap_or_default();
            if let Err(why) = check_trace(&trace, "") {
                problems.push(format!("linked trace {}: {why}", l.trace_id));
            }
        }
        // Both sinks' batch spans link into every event's trace.
        let mut traces: BTreeSet<String> = headed.keys().cloned().collect();
        traces.extend(linking.iter().map(|l| l.trace_id.clone()));
        for (scope, name) in [
            ("sink-clickhouse", "INSERT audit_events"),
            ("sink-archive", "archive put"),
        ] {
            let linked: BTreeSet<&str> = spans
                .iter()
                .filter(|s| s.scope == scope && s.name == name)
                .flat_map(|s| s.links.iter().map(|(t, _)| t.as_str()))
                .collect();
            let unlinked = traces
                .iter()
                .filter(|t| !linked.contains(t.as_str()))
                .count();
            if unlinked > 0 {
                problems.push(format!(
                    "{unlinked} traces not linked from {scope}'s {name:?}"
                ));
            }
        }
        Ok(if problems.is_empty() {
            Ok(spans)
        } else {
            problems.truncate(6);
            Err(problems)
        })
    })
    .await;
    let spans = match outcome {
        Ok(s) => s,
        Err(e) => {
            for w in workers {
                let _ = w.stop().await;
            }
            let _ = worker_runtime::telemetry::uninstall_tracer_provider(provider);
            receiver_stop.trigger();
            return Err(e);
        }
    };

    // Names and kinds by the messaging conventions, per stage.
    let names: BTreeSet<(&str, &str)> = spans
        .iter()
        .filter(|s| headed.contains_key(&s.trace_id))
        .map(|s| (s.scope.as_str(), s.name.as_str()))
        .collect();
    for want in [
        ("ingest", format!("{} process", topics.raw)),
        ("ingest", format!("{} send", topics.validated)),
        ("enrich", format!("{} process", topics.validated)),
        ("enrich", format!("{} send", topics.enriched)),
        ("chainer", format!("{} process", topics.enriched)),
        ("chainer", format!("{} send", topics.chained)),
        ("sink-clickhouse", format!("{} process", topics.chained)),
        ("sink-archive", format!("{} process", topics.chained)),
    ] {
        ensure!(
            names.contains(&(want.0, want.1.as_str())),
            "no {want:?} span; have {names:?}"
        );
    }

    // Counters against what was sent (deltas; at least ours: the recorder is process-wide),
    // and every metric the workers dashboard queries exported.
    let dashboard_metrics = workers_dashboard_metrics()?;
    let after = stack::poll_until("counters caught up", DEADLINE, || async {
        let t = scrape(&health).await?;
        let exported = exported_names(&t);
        let absent: Vec<&String> = dashboard_metrics
            .iter()
            .filter(|m| !exported.contains(*m))
            .collect();
        if !absent.is_empty() {
            return Ok(Err(vec![format!(
                "dashboard metrics not exported (yet): {absent:?}"
            )]));
        }
        let d =
            |name: &str, labels: &[&str]| metric(&t, name, labels) - metric(&before, name, labels);
        let got = [
            (d("audit_records_in_total", &["stage=\"ingest\""]), n + m),
            (d("audit_records_done_total", &["stage=\"ingest\""]), n + m),
            (d("audit_ingest_accepted_total", &["channel=\"kafka\""]), n),
            (d("audit_ingest_rejected_total", &["channel=\"kafka\""]), m),
            (
                d("audit_ingest_accepted_total", &["channel=\"http\""]),
                total - n,
            ),
            (d("audit_records_in_total", &["stage=\"enrich\""]), total),
            (d("audit_records_done_total", &["stage=\"enrich\""]), total),
            (d("audit_chainer_events_chained_total", &[]), total),
            (d("audit_sink_rows_inserted_total", &[]), total),
            (d("audit_archive_events_total", &[]), total),
        ];
        Ok(if got.iter().all(|(v, least)| *v >= *least as f64) {
            Ok(t)
        } else {
            Err(vec![format!("(delta, at least) {got:?}")])
        })
    })
    .await;

    for w in workers {
        w.stop().await?;
    }
    worker_runtime::telemetry::uninstall_tracer_provider(provider)?;
    receiver_stop.trigger();
    after?;
    // Every panel of the ClickHouse dashboard runs against the table the sink made.
    check_analytics_dashboard(&p.clickhouse()).await?;
    Ok(())
}

fn dashboard(name: &str) -> anyhow::Result<serde_json::Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana")
        .join(name);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// Every panel target's query string (`expr` for Prometheus, `rawSql` for ClickHouse).
fn targets(d: &serde_json::Value, field: &str) -> Vec<String> {
    d["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t[field].as_str().map(str::to_owned))
        .collect()
}

/// The metric names the workers dashboard queries (histogram series by their base name).
fn workers_dashboard_metrics() -> anyhow::Result<BTreeSet<String>> {
    let exprs = targets(&dashboard("audit-workers.json")?, "expr");
    ensure!(!exprs.is_empty(), "the workers dashboard has no queries");
    let mut all = BTreeSet::new();
    for e in &exprs {
        let names = promql_metric_names(e);
        ensure!(!names.is_empty(), "no metric in {e:?}");
        all.extend(names);
    }
    Ok(all)
}

/// The names of the metric families a Prometheus text exposition holds (`_bucket`, `_sum`,
/// `_count` series count as their histogram's name too).
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = l.find(['{', ' ']).unwrap_or(l.len());
        let name = &l[..end];
        names.insert(name.to_owned());
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                names.insert(base.to_owned());
            }
        }
    }
    names
}

/// The metric names a PromQL expression selects: identifiers that are not functions (followed
/// by `(`), keywords, or label names (inside `{…}`, `by (…)`, `without (…)`), and not inside
/// strings or range/offset brackets. `_bucket`/`_sum`/`_count` selectors name their histogram.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    // Aggregation operators may be followed by `by (…)` before their parenthesis.
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_parens_after: Option<String> = None;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                i += 1;
            }
            '(' if skip_parens_after.take().is_some() => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
            }
            // Numbers and durations (`0.99`, `5m` after `offset`).
            c if c.is_ascii_digit() => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let is_call = j < chars.len() && chars[j] == '(';
                if word == "by" || word == "without" || word == "on" || word == "ignoring" {
                    skip_parens_after = Some(word);
                } else if !is_call && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .map_or(word.clone(), str::to_owned);
                    names.insert(base);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn promql_names_are_found_and_labels_are_not() {
    let got = promql_metric_names(
        "histogram_quantile(0.99, sum by (le, stage) (rate(audit_sink_flush_seconds_bucket{stage=\"x\"}[5m]))) \
         / on (stage) group_left time() - max without (partition) (audit_chainer_head_seq offset 5m) \
         + sum by (x) (audit_a_total) + count(audit_b)",
    );
    let want: BTreeSet<String> = [
        "audit_sink_flush_seconds",
        "audit_chainer_head_seq",
        "audit_a_total",
        "audit_b",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(got, want);
}

#[test]
fn every_workers_dashboard_panel_queries_a_metric() {
    let names = workers_dashboard_metrics().unwrap();
    assert!(names.iter().all(|n| n.starts_with("audit_")), "{names:?}");
}

/// Runs every panel query of the ClickHouse dashboard (Grafana macros replaced by plain SQL)
/// wrapped in `SELECT count() FROM (…)`: a column or table that does not exist fails it.
async fn check_analytics_dashboard(ch: &clickhouse::Client) -> anyhow::Result<()> {
    let queries = targets(&dashboard("audit-analytics.json")?, "rawSql");
    ensure!(
        !queries.is_empty(),
        "the analytics dashboard has no queries"
    );
    for q in queries {
        let sql = expand_grafana_macros(&q);
        ensure!(!sql.contains('$'), "unexpanded macro in {q:?}");
        ch.query(&format!("SELECT count() FROM ({sql})"))
            .fetch_one::<u64>()
            .await
            .with_context(|| format!("dashboard query failed: {sql}"))?;
    }
    Ok(())
}

/// The ClickHouse data source's macros the dashboard uses, as plain SQL over the last day.
fn expand_grafana_macros(sql: &str) -> String {
    let mut out = sql.to_owned();
    for (name, with) in [
        ("$__timeFilter(", "(toDateTime(now()) - 86400 <= "),
        ("$__timeInterval(", "toStartOfMinute("),
    ] {
        out = out.replace(name, with);
    }
    out
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
