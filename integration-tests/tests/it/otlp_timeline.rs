//! Issue 8's OTLP acceptance, end to end: spans recorded and exported by the real OpenTelemetry
//! Python SDK (its OTLP/gRPC and OTLP/HTTP exporters, `ingest/tests/otlp_export.py`) enter
//! through ingest's OTLP receiver, pass enrich and the chainer, are stored by sink-clickhouse,
//! and come back as one trace's timeline through the analysts' `trace_timeline` recipe
//! (`auditctl query`): every span exactly once, in start order, with its span and parent ids
//! and its chain position, and the stored chain verifies.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use integration_tests::harness::{run_auditctl, Pipeline};
use integration_tests::stack;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(120);

fn free_addr() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

/// One span as the SDK recorded it (the script's manifest line).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Exported {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    start: u64,
}

/// Runs the SDK script: one trace of four nested spans, exported with `protocol`.
async fn sdk_export(protocol: &str, endpoint: &str, run_id: &str) -> anyhow::Result<Vec<Exported>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ingest/tests/otlp_export.py");
    let args = [
        script.display().to_string(),
        protocol.to_owned(),
        endpoint.to_owned(),
        run_id.to_owned(),
        "none".to_owned(),
    ];
    let python = std::env::var("AUDIT_PYTHON").unwrap_or_else(|_| "python3".into());
    let out =
        tokio::task::spawn_blocking(move || std::process::Command::new(python).args(args).output())
            .await?
            .context(
                "python3 runs (stack.sh install puts opentelemetry-sdk and the OTLP exporters in)",
            )?;
    ensure!(
        out.status.success(),
        "{protocol} export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)?
        .lines()
        .map(|l| serde_json::from_str(l).context("manifest line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_spans_come_back_through_the_trace_timeline_recipe() -> anyhow::Result<()> {
    let p = Pipeline::new("otlp_timeline", 2).await?;
    let (grpc, http) = (free_addr()?, free_addr()?);
    let ingest = p.start_ingest_with(&[
        "--otlp".into(),
        "true".into(),
        "--otlp-grpc-addr".into(),
        grpc.clone(),
        "--otlp-http-addr".into(),
        http.clone(),
    ]);
    let enrich = p.start_enrich();
    let chainer = p.start_chainer();
    let sink = p.start_sink_clickhouse();

    let run_id = uuid::Uuid::new_v4().to_string();
    // The receiver answers once it listens; the exporters' own retries cover the start.
    let mut traces = vec![];
    for (protocol, endpoint) in [("grpc", &grpc), ("http", &http)] {
        let spans = stack::poll_until(
            "the OTLP receiver to accept an export",
            DEADLINE,
            || async {
                Ok(sdk_export(protocol, &format!("http://{endpoint}"), &run_id)
                    .await
                    .map_err(|e| format!("{e:#}")))
            },
        )
        .await?;
        ensure!(spans.len() == 4, "{protocol}: four spans, got {spans:?}");
        traces.push((protocol, spans));
    }

    for (protocol, spans) in &traces {
        let trace_id = &spans[0].trace_id;
        ensure!(spans.iter().all(|s| &s.trace_id == trace_id), "one trace");
        let rows: Vec<Value> = stack::poll_until(
            &format!("the {protocol} trace's timeline through the recipe"),
            DEADLINE,
            || async {
                let (code, out) = run_auditctl(&[
                    "query",
                    "trace_timeline",
                    "--param",
                    &format!("trace_id={trace_id}"),
                    "--format",
                    "json",
                    "--clickhouse-url",
                    &stack::clickhouse_url(),
                    "--clickhouse-database",
                    &p.database,
                ])
                .await?;
                ensure!(code == 0, "auditctl query exit {code}: {out}");
                let rows: Vec<Value> = serde_json::from_str(&out)
                    .with_context(|| format!("the recipe's JSON: {out}"))?;
                Ok(if rows.len() >= spans.len() {
                    Ok(rows)
                } else {
                    Err(rows.len())
                })
            },
        )
        .await?;

        // Exactly the exported spans, once each, in start order (the SDK's own clock).
        let mut expected: Vec<&Exported> = spans.iter().collect();
        expected.sort_by_key(|s| s.start);
        let got_names: Vec<&str> = rows
            .iter()
            .map(|r| r["action_verb"].as_str().unwrap_or_default())
            .collect();
        let want_names: Vec<&str> = expected.iter().map(|s| s.name.as_str()).collect();
        ensure!(
            got_names == want_names,
            "{protocol}: timeline {got_names:?}, spans by start {want_names:?}"
        );
        ensure!(
            want_names
                == [
                    "POST /orders",
                    "reserve stock",
                    "UPDATE stock",
                    "charge card"
                ],
            "{protocol}: the script's trace changed: {want_names:?}"
        );
        let by_span: HashMap<&str, &Exported> =
            spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
        for row in &rows {
            let span_id = row["span_id"].as_str().unwrap_or_default();
            let sent = by_span
                .get(span_id)
                .with_context(|| format!("{protocol}: a row of an unknown span: {row}"))?;
            let parent = row["parent_span_id"].as_str().filter(|s| !s.is_empty());
            ensure!(
                parent == sent.parent_span_id.as_deref(),
                "{protocol} {}: parent {parent:?}, exported {:?}",
                sent.name,
                sent.parent_span_id
            );
            ensure!(
                row["event_time_us"].as_i64() == Some((sent.start / 1_000) as i64),
                "{protocol} {}: event time {} for a span started at {} ns",
                sent.name,
                row["event_time_us"],
                sent.start
            );
            ensure!(
                row["seq"].as_u64().is_some_and(|s| s >= 1),
                "{protocol} {}: chained: {row}",
                sent.name
            );
        }
        ensure!(
            row_ids_unique(&rows),
            "{protocol}: a span stored twice: {rows:?}"
        );
    }

    sink.stop().await?;
    chainer.stop().await?;
    enrich.stop().await?;
    ingest.stop().await?;
    let (code, report) = p.verify("clickhouse").await?;
    ensure!(code == 0, "the stored chain verifies: {report}");
    Ok(())
}

fn row_ids_unique(rows: &[Value]) -> bool {
    let mut ids: Vec<&str> = rows.iter().filter_map(|r| r["event_id"].as_str()).collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    n == rows.len() && ids.len() == n
}
