//! Recovery against a real Kafka API (the local stack's tansu, or `CHAINER_SMOKE_BROKERS`):
//! the chained and checkpoints topics are written by hand into the states a crash, a producer
//! timeout, a zombie, retention or truncation leave, then `recover_partition` is asked where to
//! resume. Skipped (passes with a note) when no broker answers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chainer::checkpoints::{CheckpointRange, Signer};
use chainer::partition::{Decision, Input, PartitionChain};
use chainer::recovery::{recover_partition, RecoverArgs, Recovered};
use integrity::chain::{hash32, Hash32};
use integrity::checkpoint::{generate_pkcs8, SigningKey};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use schemas::framing::{
    decode_chained, encode_single_object_checkpoint, encode_single_object_event,
};
use schemas::testing::sample_event;
use worker_runtime::kafka::admin::{ensure_topics, pipeline_topic_specs};
use worker_runtime::kafka::consumer::{subscribe, ConsumerSettings};
use worker_runtime::kafka::{AuditConsumer, KafkaArgs, OutputRecord, Producer, Topics};

struct Env {
    args: KafkaArgs,
    topics: Topics,
    producer: Producer,
    consumer: Arc<AuditConsumer>,
    group: String,
}

async fn env(name: &str) -> Option<Env> {
    let brokers = common::brokers_or_skip()?;
    let prefix = common::fresh_prefix(&format!("recovery-{name}"));
    let args = KafkaArgs::local(&brokers, &prefix);
    let topics = args.topics();
    ensure_topics(&args, &pipeline_topic_specs(&args, 1), 1)
        .await
        .unwrap();
    let producer = Producer::new(&args, "recovery-test").unwrap();
    let group = format!("{prefix}chainer");
    // Subscribed but never polled: recovery only asks it for watermarks and the group's
    // committed offset.
    let (consumer, _) = subscribe(
        &args,
        &ConsumerSettings::new(&group, "recovery-test", vec![topics.enriched.clone()]),
    )
    .unwrap();
    Some(Env {
        args,
        topics,
        producer,
        consumer,
        group,
    })
}

impl Env {
    async fn produce(&self, topic: &str, payloads: &[Vec<u8>]) {
        for v in payloads {
            let rec = OutputRecord::new(topic, None, v.clone()).with_partition(0);
            self.producer.send(&rec).await.unwrap();
        }
    }

    async fn recover(
        &self,
        signer: Option<&Signer>,
        window: usize,
    ) -> Result<Recovered, chainer::Error> {
        recover_partition(RecoverArgs {
            chain_id: "c",
            kafka: &self.args,
            topics: &self.topics,
            consumer: &self.consumer,
            signer,
            checkpoint_partitions: 1,
            window,
            max_in_flight: 100,
            scan_idle_timeout: Duration::from_secs(20),
            checkpoint_scan_records: 1000,
            partition: 0,
            epoch: 1,
        })
        .await
    }

    fn commit(&self, offset: i64) {
        let c: BaseConsumer = self
            .args
            .client_config("recovery-commit")
            .set("group.id", &self.group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topics.enriched, 0, Offset::Offset(offset))
            .unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
    }
}

fn ev(i: i64) -> Vec<u8> {
    let mut e = sample_event();
    e.event_id = format!("e{i}");
    e.event_time_us += i;
    encode_single_object_event(&e).unwrap()
}

/// What an uninterrupted chainer writes for `input` at source offsets 0.. (all chainable).
fn chain(topics: &Topics, input: &[Vec<u8>], window: usize) -> Vec<Vec<u8>> {
    let mut m = PartitionChain::genesis(0, &topics.enriched, window, 0).unwrap();
    input
        .iter()
        .enumerate()
        .filter_map(|(o, b)| {
            match m.process(Input {
                offset: o as i64,
                payload: Some(b),
            }) {
                Ok(Decision::Chain(c)) => Some(c.payload),
                _ => None,
            }
        })
        .collect()
}

fn feed(m: &mut PartitionChain, offset: i64, b: &[u8]) -> Decision {
    m.process(Input {
        offset,
        payload: Some(b),
    })
    .unwrap()
}

fn link(chained: &[u8]) -> (u64, Hash32) {
    let r = decode_chained(chained, None).unwrap();
    (r.seq as u64, hash32("hash", &r.hash).unwrap())
}

fn signer() -> Signer {
    Signer {
        key: SigningKey::from_pkcs8("k1", generate_pkcs8().unwrap().expose()).unwrap(),
        chain_id: "test-chain".into(),
        every_events: 10,
        interval: Duration::from_secs(3600),
        heartbeat: Duration::ZERO,
        partition_count: 0,
    }
}

/// A signed checkpoint of partition 0 through `(seq, head)`.
fn checkpoint(s: &Signer, seq: u64, head: Hash32) -> Vec<u8> {
    let mut r = CheckpointRange::starting_at(0, seq);
    r.push(seq, head);
    let fields = r.take(&s.chain_id, 1, s.partition_count).unwrap();
    encode_single_object_checkpoint(&s.sign(&fields).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_resumes_before_a_gap_left_by_lost_producer_writes() {
    let Some(env) = env("gap").await else { return };
    let input: Vec<Vec<u8>> = (0..5).map(ev).collect();
    let chained = chain(&env.topics, &input, 100);
    env.produce(&env.topics.enriched, &input).await;
    // Seqs 2 and 3 timed out in the producer; 4 and 5 landed.
    env.produce(
        &env.topics.chained,
        &[chained[0].clone(), chained[3].clone(), chained[4].clone()],
    )
    .await;
    let Recovered { mut chain, .. } = env.recover(None, 100).await.unwrap();
    assert_eq!(chain.head().seq, 1, "resume after the contiguous prefix");
    assert_eq!(chain.expected(), 1);
    // Re-chaining from there rewrites 2..=5, byte-identical to what is already in the log.
    for (o, b) in input.iter().enumerate().skip(1) {
        let Decision::Chain(c) = feed(&mut chain, o as i64, b) else {
            panic!("offset {o} not chained")
        };
        assert_eq!(c.payload, chained[o]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recovered_window_holds_w_distinct_records_despite_zombie_copies() {
    let Some(env) = env("zombie").await else {
        return;
    };
    let input: Vec<Vec<u8>> = (0..6).map(ev).collect();
    let chained = chain(&env.topics, &input, 4);
    // Seqs 1..=6, then a paused zombie's identical copies of 4, 5, 6.
    let mut log = chained.clone();
    log.extend_from_slice(&chained[3..6]);
    env.produce(&env.topics.chained, &log).await;
    let Recovered { mut chain, .. } = env.recover(None, 4).await.unwrap();
    assert_eq!((chain.head().seq, chain.expected()), (6, 6));
    // The live instance's window is seqs 3..=6: seq 3's event again is a duplicate.
    assert!(matches!(
        feed(&mut chain, 6, &input[2]),
        Decision::Duplicate { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_ahead_of_the_tail_is_survived_and_a_contradicting_one_is_fatal() {
    let Some(env) = env("ahead").await else {
        return;
    };
    let s = signer();
    let input: Vec<Vec<u8>> = (0..3).map(ev).collect();
    let chained = chain(&env.topics, &input, 100);
    env.produce(&env.topics.chained, &chained).await;
    // A checkpoint through seq 5: seqs 4 and 5 are no longer in the chained topic.
    env.produce(&env.topics.checkpoints, &[checkpoint(&s, 5, [7; 32])])
        .await;
    let Recovered { chain, range, .. } = env.recover(Some(&s), 100).await.unwrap();
    assert_eq!((chain.head().seq, chain.expected()), (3, 3));
    assert_eq!(range.unwrap().first_seq(), 4);

    // A checkpoint that disagrees with a record we have (seq 2): the topic was rewritten.
    // (Under another chain id, so that it is the latest one of that chain.)
    let (seq2, _) = link(&chained[1]);
    let mut s2 = signer();
    s2.chain_id = "other-chain".into();
    env.produce(&env.topics.checkpoints, &[checkpoint(&s2, seq2, [1; 32])])
        .await;
    let err = env.recover(Some(&s2), 100).await.unwrap_err();
    assert!(err.to_string().contains("rewritten"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_dead_letters_are_not_sent_again_after_recovery() {
    let Some(env) = env("deadletters").await else {
        return;
    };
    let input = vec![ev(0), b"garbage".to_vec(), b"more garbage".to_vec()];
    let chained = chain(&env.topics, &input, 100);
    assert_eq!(chained.len(), 1);
    env.produce(&env.topics.enriched, &input).await;
    env.produce(&env.topics.chained, &chained).await;
    // The previous owner dead-lettered offsets 1 and 2 and committed 3.
    env.commit(3);
    let Recovered { mut chain, .. } = env.recover(None, 100).await.unwrap();
    assert_eq!(chain.expected(), 1);
    assert_eq!(feed(&mut chain, 1, &input[1]), Decision::Skip);
    assert_eq!(feed(&mut chain, 2, &input[2]), Decision::Skip);
    // Past the committed offset, dead letters are sent as usual.
    assert!(matches!(
        feed(&mut chain, 3, b"new garbage"),
        Decision::DeadLetter { .. }
    ));
}

/// The tansu SQLite store of the local stack (`deploy/local/stack.sh`), if this is it.
fn tansu_db() -> Option<std::path::PathBuf> {
    let db = std::env::var_os("AUDIT_TANSU_DB")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local/kafka/tansu.db")
        });
    db.exists().then_some(db)
}

/// Deletes every record of `topic`/0 from tansu's store, as its own retention does (tansu 0.6
/// implements no DeleteRecords API). Kafka would then report watermarks (n, n); tansu reports
/// (0, 0), like a partition never written: only the signed checkpoint tells the chain existed.
fn delete_partition_records(db: &std::path::Path, topic: &str) {
    let script = "import sqlite3, sys\n\
        c = sqlite3.connect(sys.argv[1], timeout=60)\n\
        row = c.execute('select tp.id from topition tp join topic t on t.id = tp.topic \
        where t.name = ? and tp.partition = 0', (sys.argv[2],)).fetchone()\n\
        c.execute('delete from record where topition = ?', (row[0],))\n\
        c.commit()\n";
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(db)
        .arg(topic)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_partition_emptied_by_retention_resumes_from_the_latest_checkpoint() {
    let Some(env) = env("retention").await else {
        return;
    };
    let Some(db) = tansu_db() else {
        eprintln!("SKIPPED: no local tansu store to delete records from");
        return;
    };
    let s = signer();
    let input: Vec<Vec<u8>> = (0..8).map(ev).collect();
    let chained = chain(&env.topics, &input, 100);
    env.produce(&env.topics.enriched, &input).await;
    env.produce(&env.topics.chained, &chained[..5]).await;
    let (seq5, head5) = link(&chained[4]);
    env.produce(&env.topics.checkpoints, &[checkpoint(&s, seq5, head5)])
        .await;
    env.commit(5);
    // Retention deletes every record of the chained partition.
    delete_partition_records(&db, &env.topics.chained);
    let Recovered {
        mut chain, range, ..
    } = env.recover(Some(&s), 100).await.unwrap();
    assert_eq!(chain.head().seq, 5);
    assert_eq!(chain.head().head, head5);
    assert_eq!(chain.expected(), 5);
    assert_eq!(range.unwrap().first_seq(), 6);
    // The chain goes on exactly as the uninterrupted one.
    for (o, b) in input.iter().enumerate().skip(5) {
        let Decision::Chain(c) = feed(&mut chain, o as i64, b) else {
            panic!("offset {o} not chained")
        };
        assert_eq!(c.payload, chained[o]);
    }
}

/// The committed offset lags the chain (offsets are committed asynchronously; a kill -9 loses
/// the last ones): the checkpoint's record says where its last link's input ended, and the chain
/// resumes there. At the committed offset, inputs 3 and 4 would be chained again as seqs 6 and 7
/// (each event twice in the stores: the fault battery found 22 such after deleting a partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_partition_resumes_where_the_checkpoint_says_not_at_a_lagging_commit() {
    let Some(env) = env("retention-lag").await else {
        return;
    };
    let Some(db) = tansu_db() else {
        eprintln!("SKIPPED: no local tansu store to delete records from");
        return;
    };
    let s = signer();
    let input: Vec<Vec<u8>> = (0..8).map(ev).collect();
    let chained = chain(&env.topics, &input, 100);
    env.produce(&env.topics.enriched, &input).await;
    env.produce(&env.topics.chained, &chained[..5]).await;
    let (seq5, head5) = link(&chained[4]);
    let cp = OutputRecord::new(&env.topics.checkpoints, None, checkpoint(&s, seq5, head5))
        .with_partition(0)
        .with_header(chainer::task::HEADER_NEXT_SOURCE_OFFSET, "5");
    env.producer.send(&cp).await.unwrap();
    env.commit(3);
    delete_partition_records(&db, &env.topics.chained);
    let Recovered {
        mut chain,
        next_source,
        ..
    } = env.recover(Some(&s), 100).await.unwrap();
    assert_eq!(chain.head().seq, 5);
    assert_eq!(
        chain.expected(),
        5,
        "resumed at the lagging committed offset"
    );
    assert_eq!(next_source, 5);
    for (o, b) in input.iter().enumerate().skip(5) {
        let Decision::Chain(c) = feed(&mut chain, o as i64, b) else {
            panic!("offset {o} not chained")
        };
        assert_eq!(c.payload, chained[o]);
    }
    // The dedup window went with the deleted records; it is rebuilt from the input before
    // the resume offset, so a redelivered copy of an event chained before the deletion (enrich
    // re-sends after a crash) is still dropped. The fault battery found 21 such chained twice.
    assert!(
        matches!(feed(&mut chain, 8, &input[2]), Decision::Duplicate { .. }),
        "a redelivered event chained before the deletion was chained again"
    );
}
