//! Issue 12 through the running pipeline: enrich with the privacy rules on (defaults: names
//! and emails encrypted per subject), the real chainer and both sinks. No plaintext name or
//! email reaches ClickHouse; `auditctl erase` destroys one subject's key, after which that
//! subject's fields read `[erased]` while another subject's still decrypt; the erasure event
//! itself goes through ingest, enrich and the chainer into both stores; and both stores still
//! verify (the chain covers ciphertext, which erasure does not touch).

use crate::harness::{report_events, run_auditctl, Pipeline};
use anyhow::{ensure, Context as _};
use enrich::privacy::{self, PrivacyArgs, ERASED};
use integration_tests::{demo, stack};
use std::collections::BTreeMap;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(180);
const TOKEN_KEY: &str = "3333333333333333333333333333333333333333333333333333333333333333";
const MASTER_KEY: &str = "4444444444444444444444444444444444444444444444444444444444444444";

fn privacy_flags(ns: &str) -> Vec<String> {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    [
        "--privacy-token-key",
        TOKEN_KEY,
        "--privacy-master-key",
        MASTER_KEY,
        "--privacy-key-store-url",
        &format!(
            "s3://{}/{ns}/",
            env("AUDIT_SUBJECT_KEYS_BUCKET", "audit-subject-keys")
        ),
        "--privacy-key-store-s3-endpoint",
        &stack::s3_endpoint(),
        "--privacy-key-store-s3-access-key-id",
        &env("S3_ACCESS_KEY_ID", "audit-local-test-access-key"),
        "--privacy-key-store-s3-secret-access-key",
        &env(
            "S3_SECRET_ACCESS_KEY",
            "audit-local-test-secret-NOT-A-SECRET",
        ),
        "--privacy-key-cache-ttl-secs",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn privacy_args(ns: &str) -> PrivacyArgs {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct A {
        #[command(flatten)]
        p: PrivacyArgs,
    }
    A::parse_from(std::iter::once("x".to_owned()).chain(privacy_flags(ns))).p
}

async fn count(p: &Pipeline, filter: &str) -> anyhow::Result<u64> {
    Ok(p.clickhouse()
        .query(&format!("SELECT count() FROM audit_events WHERE {filter}"))
        .fetch_one::<u64>()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erasure_through_the_running_pipeline_keeps_the_chain_and_other_subjects(
) -> anyhow::Result<()> {
    let p = Pipeline::new("privacy_live", 2).await?;
    let ns = p.ns.clone();
    let topics = p.kafka.topics();
    let producer = stack::producer(&p.kafka.brokers)?;
    let ctx = |v: Vec<(String, Vec<u8>)>| v.into_iter().map(|(k, v)| (Some(k), v));
    stack::produce_all(&producer, &topics.context_users, ctx(demo::context_users())).await?;
    stack::produce_all(&producer, &topics.context_teams, ctx(demo::context_teams())).await?;
    let events = demo::lifecycle(12, 21, now_us() - 600_000_000);
    let n = events.len() as u64;
    stack::produce_all(
        &producer,
        &topics.raw,
        events.iter().map(|e| (e.key.clone(), e.value.clone())),
    )
    .await?;
    let flags = privacy_flags(&ns);
    let workers = vec![
        p.start_ingest(),
        p.start_enrich_with(&flags),
        p.start_chainer(),
        p.start_sink_clickhouse(),
        p.start_sink_archive(),
    ];
    stack::poll_until("every event in ClickHouse", DEADLINE, || async {
        let c = count(&p, "1").await?;
        Ok(if c >= n { Ok(c) } else { Err(c) })
    })
    .await?;

    // Nothing in clear: every stored name and email is sealed for its subject.
    for (_, name, email, _, _) in demo::USERS {
        let leaks = count(
            &p,
            &format!(
                "position(ifNull(actor_name, ''), '{name}') > 0 OR position(ifNull(actor_email, ''), '{email}') > 0"
            ),
        )
        .await?;
        ensure!(leaks == 0, "{leaks} rows hold {name} or {email} in clear");
    }
    let rows: Vec<(String, String, String, String)> = p
        .clickhouse()
        .query("SELECT event_id, actor_id, ifNull(actor_name, ''), ifNull(actor_email, '') FROM audit_events WHERE actor_email IS NOT NULL ORDER BY event_id")
        .fetch_all()
        .await?;
    ensure!(!rows.is_empty(), "no event carries an email");
    ensure!(
        rows.iter()
            .all(|r| r.2.starts_with("enc:v1:") && r.3.starts_with("enc:v1:")),
        "names and emails must be sealed: {rows:?}"
    );
    let mut by_user: BTreeMap<&str, Vec<&(String, String, String, String)>> = BTreeMap::new();
    for r in &rows {
        by_user.entry(r.1.as_str()).or_default().push(r);
    }
    ensure!(
        by_user.len() >= 2,
        "two subjects needed: {:?}",
        by_user.keys()
    );
    let mut subjects = by_user.keys().copied();
    let (erased, kept) = (
        subjects.next().context("subject")?.to_owned(),
        subjects.next().context("subject")?.to_owned(),
    );
    let email_of = |id: &str| {
        demo::USERS
            .iter()
            .find(|u| u.0 == id)
            .map(|u| u.2.to_owned())
            .unwrap_or_default()
    };
    let keys = privacy_args(&ns)
        .subject_keys()?
        .context("the key store is configured")?;
    let reveal_all = |id: String| {
        let keys = &keys;
        let rows = by_user[id.as_str()].clone();
        async move {
            let mut out = Vec::new();
            for r in rows {
                out.push(privacy::reveal(keys, &r.0, "actor.email", &r.3).await?);
            }
            anyhow::Ok(out)
        }
    };
    for id in [&erased, &kept] {
        let got = reveal_all(id.clone()).await?;
        ensure!(
            got.iter().all(|e| *e == email_of(id)),
            "{id}'s emails do not decrypt to the identity record's: {got:?}"
        );
    }
    let (code, report) = p.verify("both").await?;
    ensure!(code == 0, "verify before erasure: {report}");

    // Erase one subject.
    let mut erase: Vec<String> = [
        "erase",
        "--subject",
        &erased,
        "--reason",
        "GDPR Art. 17 request (test)",
        "--erased-by",
        "it-privacy",
        "--kafka-brokers",
        &p.kafka.brokers,
        "--topic-prefix",
        &p.kafka.topic_prefix,
        "--clickhouse-url",
        &stack::clickhouse_url(),
        "--clickhouse-database",
        &p.database,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    erase.extend(flags.iter().cloned());
    let refs: Vec<&str> = erase.iter().map(String::as_str).collect();
    let (code, out) = run_auditctl(&refs).await?;
    ensure!(code == 0, "erase exited {code}: {out}");
    ensure!(
        !out.contains(&email_of(&erased)),
        "the report names the email"
    );

    // The erasure event went through the live pipeline into both stores.
    stack::poll_until("the erasure event in ClickHouse", DEADLINE, || async {
        let c = count(&p, "event_type = 'privacy.subject_erased'").await?;
        Ok(if c == 1 { Ok(()) } else { Err(c) })
    })
    .await?;
    stack::poll_until("everything archived", DEADLINE, || async {
        let (code, report) = p.verify("archive").await?;
        let got = report_events(&report);
        Ok(if code == 0 && got == n + 1 {
            Ok(())
        } else {
            Err((code, got))
        })
    })
    .await?;

    // Past the key cache's TTL: the erased subject's fields are gone, the other's are not.
    stack::poll_until(
        "the erased key gone for a fresh reader",
        DEADLINE,
        || async {
            let got = reveal_all(erased.clone()).await?;
            Ok(if got.iter().all(|e| e == ERASED) {
                Ok(())
            } else {
                Err(got)
            })
        },
    )
    .await?;
    let got = reveal_all(kept.clone()).await?;
    ensure!(
        got.iter().all(|e| *e == email_of(&kept)),
        "{kept} must still decrypt: {got:?}"
    );

    // The stored bytes are untouched and both stores still verify.
    let after: Vec<(String, String, String, String)> = p
        .clickhouse()
        .query("SELECT event_id, actor_id, ifNull(actor_name, ''), ifNull(actor_email, '') FROM audit_events WHERE actor_email IS NOT NULL AND event_type != 'privacy.subject_erased' ORDER BY event_id")
        .fetch_all()
        .await?;
    ensure!(after == rows, "stored rows changed by the erasure");
    let (code, report) = p.verify("both").await?;
    ensure!(code == 0, "verify after erasure: {report}");
    ensure!(report["cross_check"]["compared"] == n + 1, "{report}");
    for w in workers {
        let name = w.name;
        w.stop().await.with_context(|| format!("stopping {name}"))?;
    }
    Ok(())
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
