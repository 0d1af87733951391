//! `verify --metrics-file` against the real ClickHouse of the local stack: a clean chain gives
//! findings 0 and ok 1, a row modified through SQL gives `modified_event` 1 and ok 0, and a
//! tail cut below a pinned head counts the trust-anchor kind; the written file is parsed as the
//! Prometheus text format (HELP/TYPE per family, contiguous families).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

/// Samples of a text-format file: `name{labels}` -> value; checks each family is declared
/// once and contiguous.
fn parse(path: &Path) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(path).expect("metrics file");
    let mut declared: Vec<String> = Vec::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let name = it.next().expect("name").to_owned();
            assert_eq!(it.next(), Some("gauge"), "{line}");
            assert!(!declared.contains(&name), "{name} declared twice:\n{text}");
            declared.push(name);
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, v) = line.rsplit_once(' ').expect("sample value");
        let name = series.split('{').next().expect("name");
        assert_eq!(
            declared.last().map(String::as_str),
            Some(name),
            "sample outside its family:\n{text}"
        );
        out.insert(
            series.to_owned(),
            v.parse().unwrap_or_else(|e| panic!("{line}: {e}")),
        );
    }
    out
}

fn get(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("{series} not in {m:#?}"))
}

fn findings_total(m: &BTreeMap<String, f64>, source: &str) -> f64 {
    let prefix = format!("audit_verify_findings{{source=\"{source}\",");
    m.iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn metrics_file_counts_findings_of_a_clean_and_a_tampered_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let prom = dir.path().join("auditctl.prom");
    let pins = dir.path().join("pins.txt");
    let db = TestDb::new("metrics").await;
    for p in 0..2 {
        db.insert_chain(&build_chain_counted(p, 40, &key, 10, BASE_US, 2))
            .await;
    }
    let mut args = s(&[
        "verify",
        "--source",
        "clickhouse",
        "--json",
        "--keys",
        &keyset.display().to_string(),
        "--metrics-file",
        &prom.display().to_string(),
    ]);
    args.extend(db.args());
    let mut pinning = args.clone();
    pinning.extend(s(&["--save-checkpoints", &pins.display().to_string()]));

    let (code, out) = auditctl(&pinning).await;
    assert_eq!(code, 0, "{out}");
    let m = parse(&prom);
    assert_eq!(findings_total(&m, "clickhouse"), 0.0, "{m:#?}");
    assert_eq!(
        get(
            &m,
            r#"audit_verify_findings{source="clickhouse",kind="modified_event"}"#
        ),
        0.0
    );
    // The freshness kinds are known (--keys) and listed at 0.
    assert_eq!(
        get(
            &m,
            r#"audit_verify_findings{source="clickhouse",kind="checkpoint_stale"}"#
        ),
        0.0
    );
    assert_eq!(get(&m, r#"audit_verify_ok{source="clickhouse"}"#), 1.0);
    assert_eq!(get(&m, r#"audit_verify_events{source="clickhouse"}"#), 80.0);
    for p in 0..2 {
        assert_eq!(
            get(
                &m,
                &format!(r#"audit_verify_head_seq{{source="clickhouse",partition="{p}"}}"#)
            ),
            40.0
        );
        // Signed at BASE_US (2024): old, and known.
        assert!(
            get(
                &m,
                &format!(
                    r#"audit_verify_newest_checkpoint_age_seconds{{source="clickhouse",partition="{p}"}}"#
                )
            ) > 3600.0
        );
    }
    let first_run = get(&m, "audit_verify_last_run_timestamp_seconds");
    assert!(first_run > 1.7e9, "{first_run}");
    assert!(get(&m, "audit_verify_duration_seconds") >= 0.0);
    // Atomic write: nothing but the file itself is left in its directory.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Tampering: one row's field modified in place.
    db.mutate("ALTER TABLE audit_events UPDATE actor_id = 'mallory' WHERE chain_partition = 0 AND seq = 17")
        .await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    let m = parse(&prom);
    assert_eq!(
        get(
            &m,
            r#"audit_verify_findings{source="clickhouse",kind="modified_event"}"#
        ),
        1.0,
        "{m:#?}"
    );
    assert_eq!(get(&m, r#"audit_verify_ok{source="clickhouse"}"#), 0.0);
    assert!(get(&m, "audit_verify_last_run_timestamp_seconds") >= first_run);

    // A trust-anchor kind: partition 1's tail cut, with its checkpoints, below the pinned head.
    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 1 AND seq > 20")
        .await;
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 1 AND seq > 20")
        .await;
    let mut anchored = args.clone();
    anchored.extend(s(&["--trusted-checkpoint", &pins.display().to_string()]));
    let (code, out) = auditctl(&anchored).await;
    assert_eq!(code, 1, "{out}");
    let m = parse(&prom);
    assert_eq!(
        get(
            &m,
            r#"audit_verify_findings{source="clickhouse",kind="rollback_below_trusted"}"#
        ),
        1.0,
        "{m:#?}"
    );
    assert_eq!(
        get(
            &m,
            r#"audit_verify_head_seq{source="clickhouse",partition="1"}"#
        ),
        20.0
    );
    assert_eq!(get(&m, r#"audit_verify_ok{source="clickhouse"}"#), 0.0);
    db.drop().await;
}
