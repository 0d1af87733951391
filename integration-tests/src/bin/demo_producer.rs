//! Pushes the demo stream: identity context (users, teams) to the compacted context topics,
//! then platform lifecycles plus some invalid events to `<prefix>raw`. Prints what it sent.

use anyhow::Context as _;
use clap::Parser;
use integration_tests::{demo, stack};
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(about = "Publish a realistic demo audit stream to the local pipeline")]
struct Args {
    /// Kafka bootstrap brokers.
    #[arg(long, env = "AUDIT_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic prefix of the pipeline.
    #[arg(long, env = "AUDIT_TOPIC_PREFIX", default_value = "audit.")]
    topic_prefix: String,
    /// Number of platform requests (each yields 3–6 events sharing a trace id).
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Number of invalid events mixed in (they must land in `<prefix>rejected`).
    #[arg(long, default_value_t = 12)]
    invalid: usize,
    /// Seed of the generator (same seed, same stream).
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let topics = worker_runtime::kafka::Topics::with_prefix(&args.topic_prefix);
    let producer = stack::producer(&args.brokers)?;
    let ctx = |v: Vec<(String, Vec<u8>)>| v.into_iter().map(|(k, v)| (Some(k), v));
    stack::produce_all(&producer, &topics.context_users, ctx(demo::context_users())).await?;
    stack::produce_all(&producer, &topics.context_teams, ctx(demo::context_teams())).await?;

    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_micros() as i64;
    // Start an hour ago so every event time is in the past.
    let mut events = demo::lifecycle(args.requests, args.seed, now_us - 3_600_000_000);
    let valid = events.len();
    let bad = demo::invalid(args.invalid);
    // Spread the invalid ones through the stream.
    for (i, b) in bad.into_iter().enumerate() {
        let at = (i + 1) * events.len() / (args.invalid + 1);
        events.insert(at.min(events.len()), b);
    }
    let started = Instant::now();
    let sent = stack::produce_all(
        &producer,
        &topics.raw,
        events.into_iter().map(|e| (e.key, e.value)),
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {sent} records to {} ({valid} valid, {} invalid) in {secs:.2}s ({:.0} records/s)",
        topics.raw,
        sent - valid,
        sent as f64 / secs.max(1e-9)
    );
    Ok(())
}
