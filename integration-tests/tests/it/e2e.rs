//! Issue 2's end-to-end test: N valid + M invalid events in; exactly N rows in ClickHouse,
//! exactly N events in the archive, exactly M dead letters with reasons; the chain verifies
//! from both stores; a chainer restart mid-stream leaves no gap or fork; an altered row is
//! named by partition and seq.

use crate::harness::{report_events, run_auditctl, Pipeline};
use anyhow::{ensure, Context as _};
use integration_tests::{demo, stack};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(180);

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

async fn clickhouse_count(p: &Pipeline) -> anyhow::Result<u64> {
    Ok(p.clickhouse()
        .query("SELECT count() FROM audit_events")
        .fetch_one::<u64>()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_land_exactly_once_bad_ones_are_dead_lettered_and_tampering_is_named(
) -> anyhow::Result<()> {
    let p = Pipeline::new("e2e", 4).await?;
    let topics = p.kafka.topics();
    let producer = stack::producer(&p.kafka.brokers)?;
    let ctx = |v: Vec<(String, Vec<u8>)>| v.into_iter().map(|(k, v)| (Some(k), v));
    stack::produce_all(&producer, &topics.context_users, ctx(demo::context_users())).await?;
    stack::produce_all(&producer, &topics.context_teams, ctx(demo::context_teams())).await?;

    let events = demo::lifecycle(60, 11, now_us() - 3_600_000_000);
    let n = events.len();
    let invalid = demo::invalid(12);
    let m = invalid.len();
    let expected_ids: HashSet<String> = events.iter().filter_map(|e| e.event_id.clone()).collect();
    ensure!(expected_ids.len() == n);
    let (first, second) = events.split_at(n / 2);
    let raw = |evs: &[demo::RawEvent]| {
        evs.iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect::<Vec<_>>()
    };
    stack::produce_all(&producer, &topics.raw, raw(first)).await?;
    stack::produce_all(&producer, &topics.raw, raw(&invalid)).await?;

    let ingest = p.start_ingest();
    let enrich = p.start_enrich();
    let mut chainer = p.start_chainer();
    let sink_ch = p.start_sink_clickhouse();
    let sink_ar = p.start_sink_archive();

    // Restart the chainer mid-stream: once part of the first half is chained, stop it, publish
    // the second half, start a new instance.
    stack::poll_until("some events chained", DEADLINE, || async {
        let c = stack::read_all(&p.kafka, &topics.chained).await?.len();
        Ok(if c >= 20 { Ok(c) } else { Err(c) })
    })
    .await?;
    chainer.stop().await.context("first chainer instance")?;
    stack::produce_all(&producer, &topics.raw, raw(second)).await?;
    chainer = p.start_chainer();

    let rows = stack::poll_until("all events in ClickHouse", DEADLINE, || async {
        let c = clickhouse_count(&p).await?;
        Ok(if c >= n as u64 { Ok(c) } else { Err(c) })
    })
    .await?;
    ensure!(
        rows == n as u64,
        "ClickHouse holds {rows} rows for {n} events"
    );

    // Exactly once, contiguous per partition, and exactly the ids we sent.
    let ids: Vec<String> = p
        .clickhouse()
        .query("SELECT event_id FROM audit_events")
        .fetch_all::<String>()
        .await?;
    let got: HashSet<String> = ids.iter().cloned().collect();
    ensure!(got.len() == ids.len(), "duplicate event ids in ClickHouse");
    ensure!(
        got == expected_ids,
        "ClickHouse ids differ from the ids sent"
    );
    let per_partition: Vec<(i32, u64, i64, i64)> = p
        .clickhouse()
        .query("SELECT chain_partition, count(), min(seq), max(seq) FROM audit_events GROUP BY chain_partition")
        .fetch_all::<(i32, u64, i64, i64)>()
        .await?;
    for (part, count, min, max) in &per_partition {
        ensure!(
            *min == 1 && *max == *count as i64,
            "partition {part}: {count} rows, seqs {min}..={max}"
        );
    }

    // Dead letters: exactly M, each with a reason code and message.
    let rejected = stack::poll_until("all dead letters", DEADLINE, || async {
        let r = stack::read_all(&p.kafka, &topics.rejected).await?;
        Ok(if r.len() >= m { Ok(r) } else { Err(r.len()) })
    })
    .await?;
    ensure!(
        rejected.len() == m,
        "{} dead letters for {m} invalid events",
        rejected.len()
    );
    let mut codes = BTreeMap::new();
    for r in &rejected {
        let code = r
            .header("audit.reason.code")
            .context("dead letter without reason code")?;
        let msg = r
            .header("audit.reason.message")
            .context("dead letter without message")?;
        ensure!(!code.is_empty() && !msg.is_empty());
        ensure!(r.header("audit.stage") == Some(&b"ingest"[..]));
        *codes
            .entry(String::from_utf8_lossy(code).into_owned())
            .or_insert(0) += 1;
    }
    ensure!(
        codes.len() >= 4,
        "expected several distinct reason codes, got {codes:?}"
    );

    // The archive holds every event once and verifies on its own; then both stores agree.
    let archive = stack::poll_until("all events archived", DEADLINE, || async {
        let (code, report) = p.verify("archive").await?;
        let events = report_events(&report);
        Ok(if code == 0 && events == n as u64 {
            Ok(report)
        } else {
            Err((code, events))
        })
    })
    .await?;
    ensure!(report_events(&archive) == n as u64);
    let (code, report) = p.verify("both").await?;
    ensure!(code == 0, "verify --source both failed: {report}");
    // Every checkpoint the chainer signed is v3: it carries the whole partition tree's root
    // (which `verify` just recomputed), readable by analysts' SQL.
    let (with_root, without): (u64, u64) = p
        .clickhouse()
        .query("SELECT countIf(length(tree_root) = 64), countIf(tree_root = '') FROM audit_checkpoints")
        .fetch_one::<(u64, u64)>()
        .await?;
    ensure!(
        with_root > 0 && without == 0,
        "checkpoints with a whole-tree root: {with_root}, without: {without}"
    );
    // The chain rule is audit-chain/v2: every partition's seq 1 links to its chain id's genesis.
    let firsts: Vec<(i32, String)> = p
        .clickhouse()
        .query("SELECT chain_partition, prev_hash FROM audit_events WHERE seq = 1 ORDER BY chain_partition")
        .fetch_all::<(i32, String)>()
        .await?;
    ensure!(!firsts.is_empty(), "no seq 1 stored");
    for (part, prev) in &firsts {
        let want = hex::encode(integrity::chain::genesis_v2(&p.chain_id, *part as u32));
        ensure!(
            *prev == want,
            "partition {part}: seq 1 links to {prev}, not the v2 genesis {want} of {}",
            p.chain_id
        );
    }
    // An auditor's consistency proof between the oldest and the newest checkpoint of one
    // partition, from each store, checks offline with the key set alone.
    let (part, old, new): (i32, i64, i64) = p
        .clickhouse()
        .query("SELECT chain_partition, min(seq), max(seq) FROM audit_checkpoints WHERE seq > 0 GROUP BY chain_partition ORDER BY chain_partition LIMIT 1")
        .fetch_one::<(i32, i64, i64)>()
        .await?;
    for source in ["clickhouse", "archive"] {
        let doc = p
            .key_dir
            .join(format!("consistency-{source}.json"))
            .display()
            .to_string();
        let (part_s, old_s, new_s) = (part.to_string(), old.to_string(), new.to_string());
        let (code, out) = p
            .auditctl_on_store(&[
                "consistency",
                "--source",
                source,
                "--partition",
                &part_s,
                "--old",
                &old_s,
                "--new",
                &new_s,
                "--out",
                &doc,
            ])
            .await?;
        ensure!(
            code == 0,
            "consistency {old}->{new} from {source}: exit {code}: {out}"
        );
        let keys = p.keyset_path().display().to_string();
        let (code, out) = run_auditctl(&["check-consistency", &doc, "--keys", &keys]).await?;
        ensure!(
            code == 0,
            "check-consistency of {source}'s proof: exit {code}: {out}"
        );
    }

    // Tamper one stored row; the verifier must name its partition and seq.
    let (part, seq) = per_partition
        .iter()
        .find(|(_, count, _, _)| *count >= 3)
        .map(|(part, _, _, _)| (*part, 3i64))
        .context("no partition with 3 events")?;
    p.clickhouse()
        .query(&format!(
            "ALTER TABLE audit_events UPDATE actor_id = 'mallory' WHERE chain_partition = {part} AND seq = {seq}"
        ))
        .execute()
        .await?;
    stack::poll_until("tampering applied", Duration::from_secs(60), || async {
        let a: String = p
            .clickhouse()
            .query(&format!(
                "SELECT actor_id FROM audit_events WHERE chain_partition = {part} AND seq = {seq}"
            ))
            .fetch_one::<String>()
            .await?;
        Ok(if a == "mallory" { Ok(()) } else { Err(a) })
    })
    .await?;
    let (code, report) = p.verify("clickhouse").await?;
    ensure!(
        code == 1,
        "tampered store verified with exit {code}: {report}"
    );
    let text = report.to_string();
    let finding = report
        .pointer("/partitions")
        .and_then(|ps| ps.as_array())
        .and_then(|ps| ps.iter().find(|x| x["partition"] == part))
        .and_then(|x| x["findings"].as_array())
        .and_then(|f| f.first())
        .with_context(|| format!("no finding for partition {part}: {text}"))?;
    ensure!(
        finding["seq"] == seq,
        "first finding at the wrong seq: {finding}"
    );
    ensure!(finding["kind"] == "modified_event", "wrong kind: {finding}");

    for w in [ingest, enrich, chainer, sink_ch, sink_ar] {
        let name = w.name;
        w.stop().await.with_context(|| format!("stopping {name}"))?;
    }
    Ok(())
}

/// Issue 7: a partition that never received an event is attested by the genesis checkpoint
/// (size 0) the chainer signs when it takes it over, in both stores, so the verifier can fail a
/// partition deleted whole: the stores verify with the empty partitions, and deleting one
/// partition's genesis checkpoint (SQL on ClickHouse, an object DELETE on the archive, as an
/// attacker with write access would) is `partition_missing_from_signed_set`, an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_partitions_are_attested_by_genesis_checkpoints_in_both_stores() -> anyhow::Result<()>
{
    use futures::TryStreamExt as _;
    use object_store::ObjectStore as _;

    const PARTITIONS: i32 = 3;
    let p = Pipeline::new("genesis", PARTITIONS).await?;
    let topics = p.kafka.topics();
    let producer = stack::producer(&p.kafka.brokers)?;
    // One request of one user: one team, so one partition (the partition key).
    let events = demo::lifecycle(1, 5, now_us() - 60_000_000);
    let n = events.len();
    stack::produce_all(
        &producer,
        &topics.raw,
        events.iter().map(|e| (e.key.clone(), e.value.clone())),
    )
    .await?;
    let workers = [
        p.start_ingest(),
        p.start_enrich(),
        p.start_chainer(),
        p.start_sink_clickhouse(),
        p.start_sink_archive(),
    ];
    stack::poll_until("all events in ClickHouse", DEADLINE, || async {
        let c = clickhouse_count(&p).await?;
        Ok(if c >= n as u64 { Ok(c) } else { Err(c) })
    })
    .await?;
    let used: Vec<i32> = p
        .clickhouse()
        .query("SELECT DISTINCT chain_partition FROM audit_events")
        .fetch_all::<i32>()
        .await?;
    ensure!(used.len() == 1, "one partition expected, got {used:?}");
    let empty: Vec<i32> = (0..PARTITIONS).filter(|q| !used.contains(q)).collect();

    // Both stores hold a genesis checkpoint of each partition that stayed empty.
    stack::poll_until("genesis checkpoints in ClickHouse", DEADLINE, || async {
        let got: Vec<i32> = p
            .clickhouse()
            .query("SELECT DISTINCT chain_partition FROM audit_checkpoints WHERE seq = 0 AND first_seq = 1 ORDER BY chain_partition")
            .fetch_all::<i32>()
            .await?;
        // Every partition taken over empty has one (the used one too, if the chainer got it
        // before its first event).
        Ok(if empty.iter().all(|q| got.contains(q)) {
            Ok(())
        } else {
            Err(got)
        })
    })
    .await?;
    let archive = sink_archive::build_store(&p.archive_config().archive)
        .map_err(|e| anyhow::anyhow!("archive store: {e}"))?;
    let genesis_objects = |q: i32| {
        let archive = archive.clone();
        async move {
            let prefix = object_store::path::Path::from(schemas::segment::checkpoint_prefix(q));
            let all: Vec<_> = archive.list(Some(&prefix)).try_collect().await?;
            let genesis: Vec<object_store::path::Path> = all
                .into_iter()
                .map(|m| m.location)
                .filter(|l| {
                    l.filename()
                        .is_some_and(|f| f.starts_with(&format!("{:020}-", 0)))
                })
                .collect();
            anyhow::Ok(genesis)
        }
    };
    stack::poll_until("genesis checkpoints archived", DEADLINE, || async {
        let mut missing = Vec::new();
        for &q in &empty {
            if genesis_objects(q).await?.is_empty() {
                missing.push(q);
            }
        }
        Ok(if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        })
    })
    .await?;
    let all_archived = stack::poll_until("all events archived", DEADLINE, || async {
        let (code, report) = p.verify("archive").await?;
        let got = report_events(&report);
        Ok(if code == 0 && got == n as u64 {
            Ok(report)
        } else {
            Err((code, got))
        })
    })
    .await?;
    ensure!(all_archived["freshness"]["findings"] == serde_json::json!([]));
    let (code, report) = p.verify("both").await?;
    ensure!(code == 0, "verify --source both: {report}");
    for w in workers {
        let name = w.name;
        w.stop().await.with_context(|| format!("stopping {name}"))?;
    }

    // The attack: the empty partition deleted whole, i.e. its genesis checkpoint removed.
    let victim = empty[0];
    let missing = |report: &serde_json::Value| {
        report["freshness"]["findings"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter(|x| x["kind"] == "partition_missing_from_signed_set")
                    .filter_map(|x| x["partition"].as_i64())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    p.clickhouse()
        .query(&format!(
            "ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = {victim}"
        ))
        .execute()
        .await?;
    // Mutations apply in the background.
    stack::poll_until("the deletion applied", Duration::from_secs(60), || async {
        let left: u64 = p
            .clickhouse()
            .query(&format!(
                "SELECT count() FROM audit_checkpoints WHERE chain_partition = {victim}"
            ))
            .fetch_one::<u64>()
            .await?;
        Ok(if left == 0 { Ok(()) } else { Err(left) })
    })
    .await?;
    let (code, report) = p.verify("clickhouse").await?;
    ensure!(
        code == 1,
        "ClickHouse without the genesis verified: {report}"
    );
    ensure!(missing(&report) == vec![i64::from(victim)], "{report}");
    for path in genesis_objects(victim).await? {
        archive.delete(&path).await?;
    }
    let (code, report) = p.verify("archive").await?;
    ensure!(
        code == 1,
        "the archive without the genesis verified: {report}"
    );
    ensure!(missing(&report) == vec![i64::from(victim)], "{report}");
    Ok(())
}
