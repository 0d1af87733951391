//! Issue 3's crash tests: the real worker binaries are killed (`kill -9`), paused (SIGSTOP past
//! the group session: a zombie) and rebalanced while a stream flows, and afterwards the real
//! stores must hold every event exactly once:
//!
//! - `<prefix>chained`: no two *different* records share a `(partition, seq)` (identical copies
//!   from a zombie or a retried delivery are allowed), seqs are `1..=n` per partition with
//!   unbroken `prev_hash` links, every event id sent sits at exactly one `(partition, seq)`, and
//!   the chained ids are exactly the ids sent;
//! - ClickHouse: exactly n rows, n distinct event ids (the ids sent), seqs `1..=count` per
//!   partition, no fork alarm;
//! - `auditctl verify --source archive` and `--source both` exit 0, both stores holding all n.
//!
//! Waits are conditions with deadlines; the only sleeps are random delays that pick the moment
//! of a kill or a pause (their seed is printed).

use crate::harness::{report_events, Pipeline, Running};
use crate::procs::{poll_alive, Proc, Procs, Worker};
use anyhow::{bail, ensure, Context as _};
use integration_tests::demo::{self, Rng};
use integration_tests::stack;
use rdkafka::producer::FutureProducer;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};
use worker_runtime::kafka::InputRecord;

const PARTITIONS: i32 = 4;
const DEADLINE: Duration = Duration::from_secs(120);

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The random source that picks kill/pause moments; its seed is printed with the test name.
fn chaos_rng(test: &str) -> Rng {
    let seed = std::env::var("AUDIT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_us() as u64);
    eprintln!("[{test}] chaos seed {seed} (AUDIT_CRASH_SEED={seed} replays the same delays)");
    Rng::new(seed)
}

/// A random delay of 0..=`max_ms`: when to strike, not a synchronisation.
async fn jitter(rng: &mut Rng, max_ms: u64) {
    jitter_between(rng, 0, max_ms).await;
}

/// A random delay of `min_ms..=max_ms`.
async fn jitter_between(rng: &mut Rng, min_ms: u64, max_ms: u64) {
    let ms = min_ms + rng.below(max_ms.saturating_sub(min_ms) + 1);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// The demo lifecycle stream, produced to `<prefix>raw` in bursts.
struct Stream {
    producer: FutureProducer,
    raw: String,
    events: Vec<demo::RawEvent>,
    sent: usize,
}

impl Stream {
    /// Publishes the context records enrich needs and prepares `requests` lifecycles.
    async fn new(p: &Pipeline, requests: usize, seed: u64) -> anyhow::Result<Self> {
        let topics = p.kafka.topics();
        let producer = stack::producer(&p.kafka.brokers)?;
        let ctx = |v: Vec<(String, Vec<u8>)>| v.into_iter().map(|(k, v)| (Some(k), v));
        stack::produce_all(&producer, &topics.context_users, ctx(demo::context_users())).await?;
        stack::produce_all(&producer, &topics.context_teams, ctx(demo::context_teams())).await?;
        let events = demo::lifecycle(requests, seed, now_us() - 3_600_000_000);
        let ids: HashSet<&str> = events
            .iter()
            .filter_map(|e| e.event_id.as_deref())
            .collect();
        ensure!(
            ids.len() == events.len(),
            "the demo stream has events without a unique id"
        );
        Ok(Stream {
            producer,
            raw: topics.raw,
            events,
            sent: 0,
        })
    }

    fn total(&self) -> usize {
        self.events.len()
    }

    /// Produces the next `1/bursts_left` of what remains; returns how many.
    async fn burst(&mut self, bursts_left: usize) -> anyhow::Result<usize> {
        let n = (self.events.len() - self.sent).div_ceil(bursts_left.max(1));
        let end = self.sent + n;
        let batch = self.events[self.sent..end]
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()));
        stack::produce_all(&self.producer, &self.raw, batch).await?;
        self.sent = end;
        Ok(n)
    }

    /// Ids of every event produced so far.
    fn sent_ids(&self) -> HashSet<String> {
        self.events[..self.sent]
            .iter()
            .filter_map(|e| e.event_id.clone())
            .collect()
    }
}

/// Event ids found in `<prefix>chained`.
async fn chained_ids(p: &Pipeline) -> anyhow::Result<HashSet<String>> {
    let records = stack::read_all(&p.kafka, &p.kafka.topics().chained).await?;
    records
        .iter()
        .map(|r| {
            let bytes = r
                .payload
                .as_deref()
                .context("chained record without value")?;
            Ok(schemas::framing::decode_chained(bytes, None)?
                .event
                .event_id)
        })
        .collect()
}

/// Waits until every id in `ids` is in the chained topic, failing fast if one of `alive` exits.
async fn wait_chained(
    p: &Pipeline,
    what: &str,
    ids: &HashSet<String>,
    alive: &[&Proc],
) -> anyhow::Result<()> {
    poll_alive(what, DEADLINE, alive, || async {
        let got = chained_ids(p).await?;
        let missing = ids.difference(&got).count();
        Ok(if missing == 0 {
            Ok(())
        } else {
            Err(format!("{missing} of {} not chained yet", ids.len()))
        })
    })
    .await
}

/// Sum of the high watermarks of `partitions` of `topic` (records ever written to them).
async fn high_watermarks(p: &Pipeline, topic: &str, partitions: &[i32]) -> anyhow::Result<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = p
        .kafka
        .client_config("it-watermarks")
        .create()
        .context("creating a watermark client")?;
    let (topic, partitions) = (topic.to_owned(), partitions.to_vec());
    tokio::task::spawn_blocking(move || {
        partitions.iter().try_fold(0, |sum, &q| {
            let (_, high) = consumer.fetch_watermarks(&topic, q, Duration::from_secs(10))?;
            Ok(sum + high)
        })
    })
    .await?
}

/// Chainers sharing a group use the round-robin assignor, so that each member gets one of the
/// busy partitions (the demo's four team keys land on partitions 1, 2, 3, 3 of four).
const ROUND_ROBIN: &[&str] = &[
    "--kafka-property",
    "partition.assignment.strategy=roundrobin",
];

/// Waits until `proc`'s consumer logged an assignment of `topic` that satisfies `ok`.
async fn wait_assignment(
    proc: &Proc,
    topic: &str,
    what: &str,
    ok: impl Fn(&[i32]) -> bool,
) -> anyhow::Result<Vec<i32>> {
    poll_alive(what, DEADLINE, &[proc], || async {
        Ok(match proc.assignment(topic) {
            Some(a) if ok(&a) => Ok(a),
            other => Err(other),
        })
    })
    .await
}

fn all_partitions(a: &[i32]) -> bool {
    a.len() == PARTITIONS as usize
}

/// Waits until `members` (of one group) each hold some partitions of `topic` and together hold
/// each partition exactly once: the rebalance they went through is complete on every side.
async fn wait_shared(members: &[&Proc], topic: &str, what: &str) -> anyhow::Result<()> {
    poll_alive(what, DEADLINE, members, || async {
        let held: Vec<Option<Vec<i32>>> = members.iter().map(|m| m.assignment(topic)).collect();
        let mut all: Vec<i32> = held.iter().flatten().flatten().copied().collect();
        all.sort_unstable();
        let complete = held
            .iter()
            .all(|h| h.as_ref().is_some_and(|h| !h.is_empty()))
            && all == (0..PARTITIONS).collect::<Vec<_>>();
        Ok(if complete { Ok(()) } else { Err(held) })
    })
    .await
}

/// What the chained log looked like (for the test's report).
#[derive(Debug)]
struct ChainSummary {
    records: usize,
    /// Byte-identical repeats of an already present `(partition, seq)`.
    identical_copies: usize,
    /// Highest seq per partition.
    heads: BTreeMap<i32, i64>,
}

/// Everything the chained topic must satisfy once the chainers are stopped.
fn check_chained(
    records: &[InputRecord],
    expected: &HashSet<String>,
    chain_id: &str,
) -> anyhow::Result<ChainSummary> {
    struct Link<'a> {
        record: &'a InputRecord,
        hash: Vec<u8>,
        prev_hash: Vec<u8>,
        event_id: String,
    }
    let mut links: BTreeMap<(i32, i64), Link<'_>> = BTreeMap::new();
    let mut identical_copies = 0;
    for r in records {
        let bytes = r
            .payload
            .as_deref()
            .with_context(|| format!("chained {}@{} has no value", r.partition, r.offset))?;
        let c = schemas::framing::decode_chained(bytes, None)
            .with_context(|| format!("decoding chained {}@{}", r.partition, r.offset))?;
        ensure!(
            c.chain_partition == r.partition && c.source_partition == r.partition,
            "chained {}@{} belongs to chain partition {} (source partition {})",
            r.partition,
            r.offset,
            c.chain_partition,
            c.source_partition
        );
        let key = (c.chain_partition, c.seq);
        if let Some(first) = links.get(&key) {
            let f = first.record;
            ensure!(
                f.payload == r.payload && f.key == r.key && f.timestamp_ms == r.timestamp_ms,
                "FORK: two different records at (partition {}, seq {}): offset {} (event {}, \
                 hash {}) and offset {} (event {}, hash {})",
                key.0,
                key.1,
                f.offset,
                first.event_id,
                hex(&first.hash),
                r.offset,
                c.event.event_id,
                hex(&c.hash)
            );
            identical_copies += 1;
            continue;
        }
        links.insert(
            key,
            Link {
                record: r,
                hash: c.hash,
                prev_hash: c.prev_hash,
                event_id: c.event.event_id,
            },
        );
    }

    // Contiguous 1..=n per partition, each link on the previous hash.
    let mut heads = BTreeMap::new();
    let mut prev: Option<((i32, i64), &[u8])> = None;
    for ((part, seq), link) in &links {
        let expected_prev: Vec<u8> = match prev {
            Some(((pp, ps), h)) if pp == *part => {
                ensure!(
                    *seq == ps + 1,
                    "partition {part}: seq {seq} follows seq {ps} (gap)"
                );
                h.to_vec()
            }
            _ => {
                ensure!(
                    *seq == 1,
                    "partition {part}: chain starts at seq {seq}, not 1"
                );
                // audit-chain/v2: seq 1 links to the chain id's genesis for the partition.
                integrity::chain::genesis_v2(chain_id, *part as u32).to_vec()
            }
        };
        ensure!(
            link.prev_hash == expected_prev,
            "partition {part}: seq {seq} does not link to the previous hash"
        );
        heads.insert(*part, *seq);
        prev = Some(((*part, *seq), &link.hash));
    }

    // Every event id at exactly one (partition, seq); exactly the ids sent.
    let mut at: HashMap<&str, (i32, i64)> = HashMap::new();
    for (key, link) in &links {
        if let Some(other) = at.insert(&link.event_id, *key) {
            bail!(
                "event {} chained twice: at (partition {}, seq {}) and (partition {}, seq {})",
                link.event_id,
                other.0,
                other.1,
                key.0,
                key.1
            );
        }
    }
    let got: HashSet<String> = at.keys().map(|s| (*s).to_owned()).collect();
    let missing: Vec<&String> = expected.difference(&got).take(5).collect();
    let unexpected: Vec<&String> = got.difference(expected).take(5).collect();
    ensure!(
        missing.is_empty() && unexpected.is_empty(),
        "chained ids differ from the ids sent: {} chained, {} sent; missing e.g. {missing:?}, \
         unexpected e.g. {unexpected:?}",
        got.len(),
        expected.len()
    );
    Ok(ChainSummary {
        records: records.len(),
        identical_copies,
        heads,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().take(8).map(|x| format!("{x:02x}")).collect()
}

async fn clickhouse_count(p: &Pipeline) -> anyhow::Result<u64> {
    Ok(p.clickhouse()
        .query("SELECT count() FROM audit_events")
        .fetch_one::<u64>()
        .await?)
}

/// Exactly n rows, n distinct ids (the ids sent), seqs 1..=count per partition, no fork alarm.
async fn check_clickhouse(p: &Pipeline, expected: &HashSet<String>) -> anyhow::Result<()> {
    let rows: Vec<(i32, i64, String)> = p
        .clickhouse()
        .query("SELECT chain_partition, seq, event_id FROM audit_events")
        .fetch_all::<(i32, i64, String)>()
        .await?;
    let n = expected.len();
    ensure!(
        rows.len() == n,
        "ClickHouse holds {} rows for {n} events",
        rows.len()
    );
    let ids: HashSet<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    ensure!(
        ids.len() == n,
        "ClickHouse holds {} distinct event ids in {n} rows",
        ids.len()
    );
    ensure!(
        ids.iter().all(|id| expected.contains(*id)),
        "ClickHouse holds event ids that were not sent"
    );
    let mut seqs: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (part, seq, _) in &rows {
        seqs.entry(*part).or_default().push(*seq);
    }
    for (part, s) in &mut seqs {
        s.sort_unstable();
        let want: Vec<i64> = (1..=s.len() as i64).collect();
        ensure!(
            *s == want,
            "ClickHouse partition {part}: seqs are not 1..={}",
            s.len()
        );
    }
    let forks: u64 = p
        .clickhouse()
        .query("SELECT count() FROM audit_forks")
        .fetch_one::<u64>()
        .await?;
    ensure!(
        forks == 0,
        "the ClickHouse sink recorded {forks} fork alarms"
    );
    Ok(())
}

/// The end of every test: let the stream land, stop everything (chainers first, staggered, so
/// the chained log is final), then assert on the stores.
async fn settle_and_assert(
    test: &str,
    p: &Pipeline,
    stream: &Stream,
    chainers: Vec<Proc>,
    other_procs: Vec<Proc>,
    in_process: Vec<Running>,
) -> anyhow::Result<ChainSummary> {
    ensure!(stream.sent == stream.total(), "not every event was sent");
    let expected = stream.sent_ids();
    let n = expected.len();
    let alive: Vec<&Proc> = chainers.iter().chain(&other_procs).collect();
    wait_chained(p, "every event chained", &expected, &alive).await?;
    // One at a time: a group whose members all leave at the same instant can get stuck on tansu.
    for c in chainers {
        c.terminate().await?;
    }
    let records = stack::read_all(&p.kafka, &p.kafka.topics().chained).await?;
    let summary = check_chained(&records, &expected, &p.chain_id)?;

    let alive: Vec<&Proc> = other_procs.iter().collect();
    poll_alive("every event in ClickHouse", DEADLINE, &alive, || async {
        let c = clickhouse_count(p).await?;
        Ok(if c >= n as u64 { Ok(c) } else { Err(c) })
    })
    .await?;
    poll_alive("every event archived", DEADLINE, &alive, || async {
        let (code, report) = p.verify("archive").await?;
        let events = report_events(&report);
        Ok(if code == 0 && events == n as u64 {
            Ok(())
        } else {
            Err((code, events))
        })
    })
    .await?;
    for w in other_procs {
        w.terminate().await?;
    }
    for w in in_process {
        let name = w.name;
        w.stop().await.with_context(|| format!("stopping {name}"))?;
    }
    // Everything is stopped: nothing can land after these checks.
    check_clickhouse(p, &expected).await?;
    let (code, report) = p.verify("both").await?;
    ensure!(code == 0, "verify --source both exited {code}: {report}");
    let cross = &report["cross_check"];
    ensure!(
        cross["compared"] == n && cross["only_clickhouse"] == 0 && cross["only_archive"] == 0,
        "the stores do not both hold all {n} events: {cross}"
    );
    eprintln!(
        "[{test}] {n} events: {} chained records ({} identical copies), heads {:?}",
        summary.records, summary.identical_copies, summary.heads
    );
    Ok(summary)
}

/// Runs `body` with a process harness; on failure prints every worker log's tail.
async fn with_procs<F, Fut>(test: &str, body: F) -> anyhow::Result<()>
where
    F: FnOnce(Pipeline, std::sync::Arc<Procs>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let p = Pipeline::new(test, PARTITIONS).await?;
    let procs = std::sync::Arc::new(Procs::new(&p.ns)?);
    let result = body(p, procs.clone()).await;
    procs.finish(&result);
    eprintln!(
        "[{test}] {} in {:.1} s",
        if result.is_ok() { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    result
}

// ---- 1. chainer kill -9 ---------------------------------------------------------------------

/// The chainer (a process) is `kill -9`ed at a random moment of each of 10 bursts and restarted,
/// while ingest, enrich and both sinks run in-process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_chainer_kill_9_repeatedly_mid_stream() -> anyhow::Result<()> {
    with_procs("crash_chainer_kill", |p, procs| async move {
        const KILLS: usize = 10;
        let mut rng = chaos_rng("crash_chainer_kill");
        let mut stream = Stream::new(&p, 260, 301).await?;
        let enriched = p.kafka.topics().enriched;
        let in_process = vec![
            p.start_ingest(),
            p.start_enrich(),
            p.start_sink_clickhouse(),
            p.start_sink_archive(),
        ];
        let mut chainer = procs.start(&p, Worker::Chainer, "chainer", &[])?;
        for round in 0..KILLS {
            // The new instance holds every partition (its predecessor's session expired).
            wait_assignment(&chainer, &enriched, "chainer assignment", all_partitions).await?;
            stream.burst(KILLS - round).await?;
            // It started recovering the partitions the burst reaches: strike while it works
            // (recovering another partition, chaining, delivering, checkpointing).
            poll_alive("the chainer works", DEADLINE, &[&chainer], || async {
                let n = chainer.log_count("partition recovered");
                Ok(if n > 0 { Ok(()) } else { Err(n) })
            })
            .await?;
            jitter(&mut rng, 1000).await;
            chainer.kill9().await?;
            chainer = procs.start(&p, Worker::Chainer, "chainer", &[])?;
        }
        settle_and_assert(
            "crash_chainer_kill",
            &p,
            &stream,
            vec![chainer],
            vec![],
            in_process,
        )
        .await?;
        Ok(())
    })
    .await
}

// ---- 2. ingest and enrich kill -9 ------------------------------------------------------------

/// Ingest and enrich (processes) are `kill -9`ed at random moments of each of 4 bursts and
/// restarted; their offsets are committed only every 5 s, so each kill makes them redeliver
/// work whose output already reached the next topic. The chainer (in-process) must chain each
/// event once: the enriched topic holds more records than events, the chain exactly one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_ingest_and_enrich_kill_9_redeliveries_are_chained_once() -> anyhow::Result<()> {
    with_procs("crash_stateless_kill", |p, procs| async move {
        const ROUNDS: usize = 4;
        // Commit rarely so that a kill always leaves acknowledged-but-uncommitted input behind.
        const SLOW_COMMIT: &[&str] = &["--kafka-property", "auto.commit.interval.ms=5000"];
        let mut rng = chaos_rng("crash_stateless_kill");
        let mut stream = Stream::new(&p, 220, 302).await?;
        let topics = p.kafka.topics();
        let in_process = vec![
            p.start_chainer(),
            p.start_sink_clickhouse(),
            p.start_sink_archive(),
        ];
        let mut ingest = procs.start(&p, Worker::Ingest, "ingest", SLOW_COMMIT)?;
        let mut enrich = procs.start(&p, Worker::Enrich, "enrich", SLOW_COMMIT)?;
        for round in 0..ROUNDS {
            wait_assignment(&ingest, &topics.raw, "ingest assignment", all_partitions).await?;
            wait_assignment(
                &enrich,
                &topics.validated,
                "enrich assignment",
                all_partitions,
            )
            .await?;
            stream.burst(ROUNDS - round).await?;
            // Kill them at independent moments, in a varying order.
            let enrich_first = rng.below(2) == 0;
            for step in 0..2 {
                jitter(&mut rng, 700).await;
                if (step == 0) == enrich_first {
                    enrich.kill9().await?;
                    enrich = procs.start(&p, Worker::Enrich, "enrich", SLOW_COMMIT)?;
                } else {
                    ingest.kill9().await?;
                    ingest = procs.start(&p, Worker::Ingest, "ingest", SLOW_COMMIT)?;
                }
            }
        }
        // The last instances are up and consuming.
        wait_assignment(&ingest, &topics.raw, "ingest assignment", all_partitions).await?;
        wait_assignment(
            &enrich,
            &topics.validated,
            "enrich assignment",
            all_partitions,
        )
        .await?;
        ensure!(stream.sent == stream.total(), "every burst was sent");

        // The chainer runs in-process here; settle_and_assert stops it with the others.
        let expected = stream.sent_ids();
        wait_chained(&p, "every event chained", &expected, &[&ingest, &enrich]).await?;
        let enriched = stack::read_all(&p.kafka, &topics.enriched).await?.len();
        settle_and_assert(
            "crash_stateless_kill",
            &p,
            &stream,
            vec![],
            vec![ingest, enrich],
            in_process,
        )
        .await?;
        eprintln!(
            "[crash_stateless_kill] enriched topic: {enriched} records for {} events",
            expected.len()
        );
        ensure!(
            enriched > expected.len(),
            "no redelivery reached the enriched topic ({enriched} records for {} events): the \
             kills did not exercise the chainer's dedup",
            expected.len()
        );
        Ok(())
    })
    .await
}

// ---- 3. two chainers, repeated rebalances ----------------------------------------------------

/// Chainer A runs throughout; chainer B (same group) joins and leaves 6 times — alternately by
/// `kill -9` and by SIGTERM — at random moments of the stream, each join and leave moving
/// partitions between them (and between B's successive instances, which recover them from the
/// chained tail).
///
/// After a `kill -9`, the test waits until A went through the rebalance that evicts the dead
/// member (its session expired), not until A holds every partition: tansu 0.6 evicts a silent
/// member without starting a new generation, so A rejoins into its old assignment and B's
/// partitions wait for the next member to join (a real Kafka coordinator gives them to A).
/// After a SIGTERM (LeaveGroup), A must hold everything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_two_chainers_rebalance_repeatedly() -> anyhow::Result<()> {
    with_procs("crash_rebalance", |p, procs| async move {
        const CYCLES: usize = 6;
        let mut rng = chaos_rng("crash_rebalance");
        let mut stream = Stream::new(&p, 200, 303).await?;
        let enriched = p.kafka.topics().enriched;
        let in_process = vec![
            p.start_ingest(),
            p.start_enrich(),
            p.start_sink_clickhouse(),
            p.start_sink_archive(),
        ];
        let a = procs.start(&p, Worker::Chainer, "chainer-a", ROUND_ROBIN)?;
        wait_assignment(&a, &enriched, "chainer A holds everything", all_partitions).await?;
        for cycle in 0..CYCLES {
            let b = procs.start(&p, Worker::Chainer, "chainer-b", ROUND_ROBIN)?;
            // B joined: both hold part of the partitions.
            wait_shared(&[&a, &b], &enriched, "A and B share the partitions").await?;
            stream.burst(2 * (CYCLES - cycle)).await?;
            // B recovered a partition from the chained tail and chains: strike while it works.
            poll_alive("B chains", DEADLINE, &[&a, &b], || async {
                let n = b.log_count("partition recovered");
                Ok(if n > 0 { Ok(()) } else { Err(n) })
            })
            .await?;
            stream.burst(2 * (CYCLES - cycle) - 1).await?;
            jitter(&mut rng, 1000).await;
            if cycle % 2 == 0 {
                let before = a.log_count("partitions assigned");
                b.kill9().await?;
                poll_alive("A rebalanced after B's death", DEADLINE, &[&a], || async {
                    let n = a.log_count("partitions assigned");
                    Ok(if n > before { Ok(()) } else { Err(n) })
                })
                .await?;
            } else {
                b.terminate().await?;
                wait_assignment(&a, &enriched, "A holds everything again", all_partitions).await?;
            }
        }
        settle_and_assert("crash_rebalance", &p, &stream, vec![a], vec![], in_process).await?;
        Ok(())
    })
    .await
}

// ---- 4. zombie ---------------------------------------------------------------------------------

/// Chainers A and Z share the group; Z is SIGSTOPped mid-stream and stays frozen past its
/// session; its partitions move to live members, which chain what follows; then Z is SIGCONTed
/// — with its stale chain state, the records it had fetched and the deliveries it had not sent
/// yet — and everyone runs on until the end. Whatever the zombie writes must be byte-identical
/// to what the live members wrote at the same seq.
///
/// On tansu 0.6 the eviction of a silent member does not start a new generation (A rejoins into
/// its old assignment), so Z's partitions move only when a member joins: a replacement chainer C
/// is started once A saw Z evicted, as an orchestrator replaces an unresponsive instance. (On
/// Kafka, A takes Z's partitions at the eviction and C's join is one more rebalance.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_zombie_chainer_paused_past_its_session() -> anyhow::Result<()> {
    with_procs("crash_zombie", |p, procs| async move {
        const BURSTS: usize = 6;
        let mut rng = chaos_rng("crash_zombie");
        let mut stream = Stream::new(&p, 180, 304).await?;
        let enriched = p.kafka.topics().enriched;
        let in_process = vec![
            p.start_ingest(),
            p.start_enrich(),
            p.start_sink_clickhouse(),
            p.start_sink_archive(),
        ];
        let a = procs.start(&p, Worker::Chainer, "chainer-a", ROUND_ROBIN)?;
        wait_assignment(&a, &enriched, "chainer A holds everything", all_partitions).await?;
        // Z's producer lingers 5 s: frozen mid-stream, it then holds links it chained but had
        // not sent yet, which it sends when it thaws — after the live members chained them again.
        let z = procs.start(
            &p,
            Worker::Chainer,
            "chainer-z",
            &[ROUND_ROBIN, &["--kafka-property", "linger.ms=5000"]].concat(),
        )?;
        wait_shared(&[&a, &z], &enriched, "A and Z share the partitions").await?;
        stream.burst(BURSTS).await?;
        wait_chained(
            &p,
            "the first burst chained by A and Z",
            &stream.sent_ids(),
            &[&a, &z],
        )
        .await?;
        let z_partitions = z.assignment(&enriched).unwrap_or_default();

        // Freeze Z in the middle of a burst: a moment after the burst reaches Z's input (its
        // fetch waits up to 500 ms), well inside its linger.
        let before = high_watermarks(&p, &enriched, &z_partitions).await?;
        stream.burst(BURSTS - 1).await?;
        poll_alive(
            "the burst reaches Z's partitions",
            DEADLINE,
            &[&a, &z],
            || async {
                let now = high_watermarks(&p, &enriched, &z_partitions).await?;
                Ok(if now > before { Ok(()) } else { Err(now) })
            },
        )
        .await?;
        jitter_between(&mut rng, 1000, 2500).await;
        let a_assignments = a.log_count("partitions assigned");
        z.pause()?;
        let paused = Instant::now();
        stream.burst(BURSTS - 2).await?;
        // Z's session expires: A goes through the rebalance that evicts it.
        poll_alive(
            "A rebalanced after Z's eviction",
            DEADLINE,
            &[&a],
            || async {
                let n = a.log_count("partitions assigned");
                Ok(if n > a_assignments { Ok(()) } else { Err(n) })
            },
        )
        .await?;
        // A replacement joins; A and C hold every partition and chain what Z left behind.
        let c = procs.start(&p, Worker::Chainer, "chainer-c", ROUND_ROBIN)?;
        wait_shared(&[&a, &c], &enriched, "A and C hold every partition").await?;
        wait_chained(
            &p,
            "the stream Z was frozen in chained by A and C",
            &stream.sent_ids(),
            &[&a, &c],
        )
        .await?;
        stream.burst(BURSTS - 3).await?;
        jitter(&mut rng, 500).await;
        eprintln!(
            "[crash_zombie] Z (partitions {z_partitions:?}) frozen for {:.1} s; resuming it",
            paused.elapsed().as_secs_f64()
        );
        let z_assignments = z.log_count("partitions assigned");
        z.resume()?;
        stream.burst(BURSTS - 4).await?;
        // Z notices it lost its membership, rejoins, and the three share the partitions.
        poll_alive(
            "Z rejoined after its pause",
            DEADLINE,
            &[&a, &c, &z],
            || async {
                let n = z.log_count("partitions assigned");
                Ok(if n > z_assignments { Ok(()) } else { Err(n) })
            },
        )
        .await?;
        jitter(&mut rng, 500).await;
        stream.burst(BURSTS - 5).await?;
        let repeats: usize = [&a, &c, &z]
            .iter()
            .map(|x| x.log_count("repeats an earlier seq"))
            .sum();
        // One at a time, graceful (LeaveGroup): the zombie first, A last.
        let summary = settle_and_assert(
            "crash_zombie",
            &p,
            &stream,
            vec![z, c, a],
            vec![],
            in_process,
        )
        .await?;
        eprintln!(
            "[crash_zombie] {} identical zombie copies in the chained log; recovery warnings \
             about repeated seqs: {repeats}",
            summary.identical_copies
        );
        ensure!(
            summary.identical_copies > 0,
            "the thawed zombie wrote nothing: the test did not exercise a zombie writer"
        );
        Ok(())
    })
    .await
}
