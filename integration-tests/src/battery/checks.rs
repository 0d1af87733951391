//! What the battery checks once the load stopped, and the chained-record deletion it injects.
//! Every finding names what is wrong precisely: which event ids are missing or doubled, at
//! which (partition, seq), which dead letters are missing or unexpected.

use super::load::Sent;
use super::{Battery, PARTITIONS};
use crate::harness::{report_events, Pipeline};
use crate::stack;
use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};
use worker_runtime::kafka::KafkaArgs;

/// Failures (the battery fails) and notes (what it saw, for the report).
#[derive(Debug, Default)]
pub struct Findings {
    pub failures: Vec<String>,
    pub notes: Vec<String>,
    pub details: BTreeMap<String, Value>,
}

impl Findings {
    pub fn fail(&mut self, what: impl Into<String>) {
        self.failures.push(what.into());
    }
    pub fn note(&mut self, what: impl Into<String>) {
        self.notes.push(what.into());
    }
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
    pub fn to_json(&self) -> Value {
        json!({"failures": self.failures, "notes": self.notes, "details": self.details})
    }
}

/// At most `n` items, for messages.
fn some<T: std::fmt::Debug>(items: &[T], n: usize) -> String {
    if items.len() <= n {
        format!("{items:?}")
    } else {
        format!("{:?} and {} more", &items[..n], items.len() - n)
    }
}

async fn clickhouse_distinct(p: &Pipeline) -> anyhow::Result<u64> {
    Ok(p.clickhouse()
        .query("SELECT uniqExact(event_id) FROM audit_events")
        .fetch_one::<u64>()
        .await?)
}

/// Waits (restarting exited workers) until both stores hold as many events as were sent, or
/// the settle time is over; a timeout is a failure, and the detailed checks say what is missing.
pub(super) async fn settle(
    b: &mut Battery<'_>,
    sent: &Sent,
    findings: &mut Findings,
) -> anyhow::Result<()> {
    let n = sent.valid.iter().collect::<HashSet<_>>().len() as u64;
    let t0 = Instant::now();
    let mut last;
    loop {
        b.reap_exits()?;
        let ch = clickhouse_distinct(b.p).await.unwrap_or(0);
        let ar = match b.p.verify("archive").await {
            Ok((_, report)) => report_events(&report),
            Err(_) => 0,
        };
        last = (ch, ar);
        if ch >= n && ar >= n {
            b.say(&format!(
                "both stores hold {n} events {:.1}s after the load stopped",
                t0.elapsed().as_secs_f64()
            ));
            findings.note(format!(
                "both stores complete {:.1}s after the load stopped",
                t0.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if t0.elapsed() > b.plan.settle {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    findings.fail(format!(
        "not every event landed within {:?} after the load stopped: {n} sent, ClickHouse holds \
         {} distinct, the archive {} (details below)",
        b.plan.settle, last.0, last.1
    ));
    Ok(())
}

/// Every check on the stores and the dead-letter topic (the workers are stopped).
pub(super) async fn check_all(p: &Pipeline, sent: &Sent, findings: &mut Findings) {
    let expected: HashSet<String> = sent.valid.iter().cloned().collect();
    findings.note(format!(
        "{} valid events and {} invalid records sent ({} chunk retries)",
        expected.len(),
        sent.invalid.len(),
        sent.retries
    ));
    match clickhouse_rows(p).await {
        Ok(rows) => check_rows("ClickHouse", &rows, &expected, true, findings),
        Err(e) => findings.fail(format!("reading ClickHouse: {e:#}")),
    }
    match p
        .clickhouse()
        .query("SELECT count() FROM audit_forks")
        .fetch_one::<u64>()
        .await
    {
        Ok(0) => {}
        Ok(n) => findings.fail(format!("the ClickHouse sink recorded {n} fork alarms")),
        Err(e) => findings.note(format!("audit_forks not readable: {e:#}")),
    }
    match archive_rows(p).await {
        Ok(rows) => check_rows("archive", &rows, &expected, false, findings),
        Err(e) => findings.fail(format!("reading the archive: {e:#}")),
    }
    for source in ["clickhouse", "archive", "both"] {
        match p.verify(source).await {
            Ok((code, report)) => {
                let events = report_events(&report);
                if code != 0 {
                    findings.fail(format!(
                        "auditctl verify --source {source} exited {code} ({events} events): {}",
                        summarize_findings(&report)
                    ));
                } else {
                    findings.note(format!("verify --source {source}: OK, {events} events"));
                }
                if source == "both" {
                    let cross = &report["cross_check"];
                    if cross["only_clickhouse"] != 0 || cross["only_archive"] != 0 {
                        findings.fail(format!("the stores differ: {cross}"));
                    }
                }
                findings.details.insert(format!("verify_{source}"), report);
            }
            Err(e) => findings.fail(format!("auditctl verify --source {source}: {e:#}")),
        }
    }
    check_dead_letters(p, sent, findings).await;
}

/// The findings of an `auditctl verify --json` report, shortened.
fn summarize_findings(report: &Value) -> String {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(fs)) = m.get("findings") {
                    for f in fs {
                        out.push(f.to_string());
                    }
                }
                m.iter()
                    .filter(|(k, _)| *k != "findings")
                    .for_each(|(_, x)| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(report, &mut out);
    some(&out, 8)
}

/// (partition, seq, event id) of every row.
async fn clickhouse_rows(p: &Pipeline) -> anyhow::Result<Vec<(i32, i64, String)>> {
    Ok(p.clickhouse()
        .query("SELECT chain_partition, seq, event_id FROM audit_events")
        .fetch_all::<(i32, i64, String)>()
        .await?)
}

/// (partition, seq, event id) of every archived record, partition by partition.
pub(super) async fn archive_rows(p: &Pipeline) -> anyhow::Result<Vec<(i32, i64, String)>> {
    let cfg = p.archive_config();
    let store = auditctl::archive::ArchiveStore::open(&cfg.archive, auditctl::reads::Reads::new(3))
        .context("opening the archive")?;
    let mut out = Vec::new();
    for part in 0..PARTITIONS as u32 {
        let events = store
            .range(part, 1, i64::MAX)
            .await
            .with_context(|| format!("reading archive partition {part}"))?;
        out.extend(
            events
                .into_iter()
                .map(|e| (e.chain_partition, e.seq, e.event.event_id)),
        );
    }
    Ok(out)
}

/// Exactly once: each expected id at one (partition, seq), seqs 1..=n per partition, nothing
/// else. `strict_rows`: identical repeated rows count as doubles too (ClickHouse must hold one
/// row per event; overlapping archive segments holding identical copies are the verifier's
/// warning, not a second copy of the event).
fn check_rows(
    store: &str,
    rows: &[(i32, i64, String)],
    expected: &HashSet<String>,
    strict_rows: bool,
    findings: &mut Findings,
) {
    let mut at: HashMap<&str, Vec<(i32, i64)>> = HashMap::new();
    let mut seqs: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    let mut identical = 0;
    let mut seen_rows: HashSet<(i32, i64, &str)> = HashSet::new();
    for (part, seq, id) in rows {
        if !seen_rows.insert((*part, *seq, id.as_str())) {
            identical += 1;
            if !strict_rows {
                continue;
            }
        }
        at.entry(id.as_str()).or_default().push((*part, *seq));
        seqs.entry(*part).or_default().push(*seq);
    }
    let mut missing: Vec<&String> = expected
        .iter()
        .filter(|id| !at.contains_key(id.as_str()))
        .collect();
    missing.sort();
    let mut doubled: Vec<(&str, &Vec<(i32, i64)>)> = at
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, v)| (*k, v))
        .collect();
    doubled.sort();
    let mut unexpected: Vec<&str> = at
        .keys()
        .filter(|id| !expected.contains(**id))
        .copied()
        .collect();
    unexpected.sort();
    let distinct = at.len();
    findings.note(format!(
        "{store}: {} rows, {distinct} distinct event ids, {identical} identical repeated rows",
        rows.len()
    ));
    if !missing.is_empty() {
        findings.fail(format!(
            "{store}: {} of {} events MISSING, e.g. {}",
            missing.len(),
            expected.len(),
            some(&missing, 10)
        ));
    }
    if !doubled.is_empty() {
        findings.fail(format!(
            "{store}: {} events DOUBLED (event id -> (partition, seq) positions), e.g. {}",
            doubled.len(),
            some(&doubled, 10)
        ));
    }
    if !unexpected.is_empty() {
        findings.fail(format!(
            "{store}: {} event ids that were never sent, e.g. {}",
            unexpected.len(),
            some(&unexpected, 10)
        ));
    }
    for (part, s) in &mut seqs {
        s.sort_unstable();
        let mut gaps = Vec::new();
        let mut dups = Vec::new();
        let mut want = 1;
        for &q in s.iter() {
            if q < want {
                dups.push(q);
                continue;
            }
            if q > want {
                gaps.push((want, q - 1));
            }
            want = q + 1;
        }
        if !gaps.is_empty() || !dups.is_empty() {
            findings.fail(format!(
                "{store} partition {part}: seqs are not 1..={} — missing seq ranges {}, \
                 repeated seqs {}",
                s.last().copied().unwrap_or(0),
                some(&gaps, 10),
                some(&dups, 10)
            ));
        }
    }
}

/// The dead-letter topic holds each invalid record (bytes intact) at least once and at most
/// once per time it was sent, and nothing else.
async fn check_dead_letters(p: &Pipeline, sent: &Sent, findings: &mut Findings) {
    let topic = p.kafka.topics().rejected;
    let records = match stack::read_all(&p.kafka, &topic).await {
        Ok(r) => r,
        Err(e) => {
            findings.fail(format!("reading {topic}: {e:#}"));
            return;
        }
    };
    let mut got: BTreeMap<String, u32> = BTreeMap::new();
    let mut unexpected = Vec::new();
    let mut altered = Vec::new();
    for r in &records {
        let key = r
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        match sent.invalid.get(&key) {
            Some((bytes, _)) => {
                *got.entry(key.clone()).or_default() += 1;
                if r.payload.as_deref() != Some(bytes.as_slice()) {
                    altered.push(key);
                }
            }
            None => {
                let reason = r
                    .headers
                    .iter()
                    .filter(|(k, _)| k.contains("reason"))
                    .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
                    .collect::<Vec<_>>()
                    .join(" ");
                let head: String = r
                    .payload
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(&b[..b.len().min(120)]).into_owned())
                    .unwrap_or_default();
                unexpected.push(format!(
                    "{}@{} key {key:?} [{reason}] {head}",
                    r.partition, r.offset
                ));
            }
        }
    }
    let missing: Vec<&String> = sent
        .invalid
        .keys()
        .filter(|k| !got.contains_key(*k))
        .collect();
    let extra: Vec<(String, u32, u32)> = got
        .iter()
        .filter_map(|(k, n)| {
            let sends = sent.invalid.get(k).map_or(0, |s| s.1);
            (*n > sends).then(|| (k.clone(), *n, sends))
        })
        .collect();
    findings.note(format!(
        "dead-letter topic: {} records for {} invalid inputs",
        records.len(),
        sent.invalid.len()
    ));
    if !missing.is_empty() {
        findings.fail(format!(
            "dead letters MISSING for {} invalid inputs, e.g. {}",
            missing.len(),
            some(&missing, 10)
        ));
    }
    if !unexpected.is_empty() {
        findings.fail(format!(
            "{} dead letters that are not invalid inputs (valid events rejected?), e.g. {}",
            unexpected.len(),
            some(&unexpected, 5)
        ));
    }
    if !extra.is_empty() {
        findings.fail(format!(
            "{} invalid inputs dead-lettered more often than sent (key, dead letters, sends), \
             e.g. {}",
            extra.len(),
            some(&extra, 10)
        ));
    }
    if !altered.is_empty() {
        findings.fail(format!(
            "{} dead letters do not carry the original bytes, e.g. {}",
            altered.len(),
            some(&altered, 10)
        ));
    }
}

fn watermark_client(kafka: &KafkaArgs) -> anyhow::Result<BaseConsumer> {
    kafka
        .client_config("battery-watermarks")
        .create()
        .context("creating a watermark client")
}

/// Committed offset of `group` on `topic`/`partition` (`None`: nothing committed).
fn committed(
    kafka: &KafkaArgs,
    group: &str,
    topic: &str,
    partition: i32,
) -> anyhow::Result<Option<i64>> {
    let mut cfg = kafka.client_config("battery-offsets");
    cfg.set("group.id", group);
    let consumer: BaseConsumer = cfg.create().context("creating an offsets client")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .with_context(|| format!("committed offsets of {group}"))?;
    Ok(got.elements().first().and_then(|e| match e.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }))
}

/// Where [`delete_chained_head`] cuts: the head of the busiest chained partition, every record
/// both sinks have committed.
pub(super) struct HeadCut {
    topic: String,
    part: i32,
    low: i64,
    cut: i64,
}

/// The head of the busiest chained partition that both sinks have committed (`None`: no
/// partition has such records yet). Read from the running broker.
pub(super) async fn chained_head_to_cut(p: &Pipeline) -> anyhow::Result<Option<HeadCut>> {
    let topic = p.kafka.topics().chained;
    let ns = p.ns.clone();
    let (pp, t) = (p.kafka.clone(), topic.clone());
    let best = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<(i32, i64, i64)>> {
        let probe = watermark_client(&pp)?;
        let mut best: Option<(i32, i64, i64)> = None;
        for part in 0..PARTITIONS {
            let (low, _high) = probe
                .fetch_watermarks(&t, part, Duration::from_secs(10))
                .with_context(|| format!("watermarks of {t}/{part}"))?;
            let ch = committed(&pp, &format!("{ns}.sink-clickhouse"), &t, part)?;
            let ar = committed(&pp, &format!("{ns}.sink-archive"), &t, part)?;
            if let (Some(a), Some(b)) = (ch, ar) {
                let cut = a.min(b);
                if cut > low && best.is_none_or(|(_, l, c)| cut - low > c - l) {
                    best = Some((part, low, cut));
                }
            }
        }
        Ok(best)
    })
    .await??;
    Ok(best.map(|(part, low, cut)| HeadCut {
        topic,
        part,
        low,
        cut,
    }))
}

/// Deletes the records of `c` the way tansu's own retention does (`DELETE FROM record` in its
/// SQLite store): tansu 0.6.0's SQLite engine does not implement the Kafka DeleteRecords API
/// (its `delete_records` is an unimplemented stub that panics). **The broker must be stopped**:
/// tansu's store takes no second writer (no busy timeout), and a write of ours beside its own
/// made one of its writes fail with "database is locked" and tansu then panic, leaving a broker
/// that listens but answers nothing. Returns how many records it deleted.
pub(super) async fn delete_chained_head(db: &Path, c: &HeadCut) -> anyhow::Result<String> {
    let script = "import sqlite3, sys\n\
        db, topic, part, cut = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])\n\
        c = sqlite3.connect(db, timeout=60)\n\
        row = c.execute('select tp.id from topition tp join topic t on t.id = tp.topic \
        where t.name = ? and tp.partition = ?', (topic, part)).fetchone()\n\
        n = c.execute('delete from record where topition = ? and offset_id < ?', (row[0], cut)).rowcount\n\
        c.commit()\n\
        print(n)\n";
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(db)
        .arg(&c.topic)
        .arg(c.part.to_string())
        .arg(c.cut.to_string())
        .output()
        .await
        .context("running python3 to delete records from tansu's SQLite store")?;
    anyhow::ensure!(
        out.status.success(),
        "deleting records from {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// What [`delete_chained_head`] did, with the partition's log start offset read back from the
/// broker (running again).
pub(super) async fn describe_cut(
    p: &Pipeline,
    c: &HeadCut,
    deleted: &str,
) -> anyhow::Result<String> {
    let (pp, t, part) = (p.kafka.clone(), c.topic.clone(), c.part);
    let low_after = tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
        let probe = watermark_client(&pp)?;
        Ok(probe.fetch_watermarks(&t, part, Duration::from_secs(10))?.0)
    })
    .await??;
    Ok(format!(
        "{}/{part}: deleted {deleted} records at offsets {}..{} (both sinks had committed \
         them; log start offset now {low_after})",
        c.topic, c.low, c.cut
    ))
}
