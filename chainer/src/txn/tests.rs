//! The transactional wiring against a recording fake of the producer/consumer calls.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use clap::Parser;

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Init,
    Begin,
    Send {
        topic: String,
        partition: Option<i32>,
    },
    SendOffsets {
        offsets: Vec<NextOffset>,
        group: String,
    },
    Commit,
    Abort,
}

#[derive(Debug, Default)]
struct State {
    log: Mutex<Vec<Call>>,
    /// The consumer's group metadata (`None`: not a member).
    group: Mutex<Option<String>>,
    /// Errors to return, per call name, in order.
    failures: Mutex<HashMap<&'static str, VecDeque<TxnError>>>,
}

#[derive(Debug, Clone, Default)]
struct Fake(Arc<State>);

impl Fake {
    fn with_group(g: &str) -> Self {
        let f = Fake::default();
        f.set_group(Some(g));
        f
    }
    fn set_group(&self, g: Option<&str>) {
        *self.0.group.lock().unwrap() = g.map(str::to_owned);
    }
    fn fail(&self, call: &'static str, kind: TxnErrorKind, msg: &str) {
        self.0
            .failures
            .lock()
            .unwrap()
            .entry(call)
            .or_default()
            .push_back(TxnError::new(kind, msg));
    }
    fn log(&self) -> Vec<Call> {
        self.0.log.lock().unwrap().clone()
    }
    fn record(&self, name: &'static str, call: Call) -> Result<(), TxnError> {
        self.0.log.lock().unwrap().push(call);
        match self
            .0
            .failures
            .lock()
            .unwrap()
            .get_mut(name)
            .and_then(VecDeque::pop_front)
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Transactional for Fake {
    type Group = String;
    type Delivery = ();
    fn init_transactions(&self, _: Duration) -> Result<(), TxnError> {
        self.record("init", Call::Init)
    }
    fn begin_transaction(&self) -> Result<(), TxnError> {
        self.record("begin", Call::Begin)
    }
    fn produce(&self, r: &Outgoing<'_>) -> Result<(), KafkaError> {
        self.0.log.lock().unwrap().push(Call::Send {
            topic: r.topic.to_owned(),
            partition: r.partition,
        });
        Ok(())
    }
    fn group_metadata(&self) -> Option<String> {
        self.0.group.lock().unwrap().clone()
    }
    fn send_offsets_to_transaction(
        &self,
        offsets: &[NextOffset],
        group: &String,
        _: Duration,
    ) -> Result<(), TxnError> {
        self.record(
            "send_offsets",
            Call::SendOffsets {
                offsets: offsets.to_vec(),
                group: group.clone(),
            },
        )
    }
    fn commit_transaction(&self, _: Duration) -> Result<(), TxnError> {
        self.record("commit", Call::Commit)
    }
    fn abort_transaction(&self, _: Duration) -> Result<(), TxnError> {
        self.record("abort", Call::Abort)
    }
}

fn settings(max_records: usize, max_ms: u64) -> TxnSettings {
    TxnSettings {
        transactional_id: "chainer-0".into(),
        max_records,
        max_age: Duration::from_millis(max_ms),
        timeout: Duration::from_secs(5),
    }
}

fn out(topic: &str, p: i32) -> Outgoing<'_> {
    Outgoing {
        topic,
        partition: Some(p),
        key: None,
        payload: Some(b"x"),
        timestamp_ms: None,
        headers: &[],
    }
}

fn next(p: i32, offset: i64) -> NextOffset {
    NextOffset {
        topic: "audit.enriched".into(),
        partition: p,
        offset,
    }
}

fn send(topic: &str, p: i32) -> Call {
    Call::Send {
        topic: topic.into(),
        partition: Some(p),
    }
}

/// Feeds one batch the way the worker does: input taken, then its output produced.
async fn batch(t: &mut Transactor<Fake>, inputs: &[(i32, i64)]) {
    for &(p, offset) in inputs {
        t.took_input(p).unwrap();
        t.produce(p, out("audit.chained", p)).await.unwrap();
        t.chained(p, offset);
    }
}

#[tokio::test]
async fn a_batch_begins_sends_then_sends_offsets_with_the_group_metadata_then_commits() {
    let fake = Fake::with_group("member-a/gen-1");
    let mut t = Transactor::new(fake.clone(), settings(100, 10_000));
    t.init().await.unwrap();
    assert!(!t.is_open());
    batch(&mut t, &[(0, 10), (1, 5), (0, 11)]).await;
    // A checkpoint of partition 0 joins the same transaction.
    t.produce(0, out("audit.checkpoints", 0)).await.unwrap();
    assert_eq!(t.touched(), vec![0, 1]);
    // The consumer rejoined meanwhile: the metadata sent is the one current at commit time.
    fake.set_group(Some("member-a/gen-2"));
    t.commit(vec![next(0, 12), next(1, 6)]).await.unwrap();
    assert!(!t.is_open());
    assert_eq!(
        fake.log(),
        vec![
            Call::Init,
            Call::Begin,
            send("audit.chained", 0),
            send("audit.chained", 1),
            send("audit.chained", 0),
            send("audit.checkpoints", 0),
            Call::SendOffsets {
                offsets: vec![next(0, 12), next(1, 6)],
                group: "member-a/gen-2".into()
            },
            Call::Commit,
        ]
    );
    // The next input opens the next transaction.
    batch(&mut t, &[(1, 6)]).await;
    t.commit(vec![next(1, 7)]).await.unwrap();
    let log = fake.log();
    assert_eq!(
        log[8..],
        [
            Call::Begin,
            send("audit.chained", 1),
            Call::SendOffsets {
                offsets: vec![next(1, 7)],
                group: "member-a/gen-2".into()
            },
            Call::Commit
        ]
    );
}

#[tokio::test]
async fn inputs_without_output_still_commit_their_offsets() {
    // Duplicates and already-chained records produce nothing, but their offsets must move.
    let fake = Fake::with_group("g");
    let mut t = Transactor::new(fake.clone(), settings(100, 10_000));
    t.took_input(3).unwrap();
    t.commit(vec![next(3, 8)]).await.unwrap();
    assert_eq!(
        fake.log(),
        vec![
            Call::Begin,
            Call::SendOffsets {
                offsets: vec![next(3, 8)],
                group: "g".into()
            },
            Call::Commit
        ]
    );
    // Nothing open: commit and abort are no-ops.
    t.commit(vec![]).await.unwrap();
    assert!(t.abort("idle").await.unwrap().is_empty());
    assert_eq!(fake.log().len(), 3);
}

#[tokio::test]
async fn a_transaction_is_due_after_max_records_or_max_age() {
    let mut t = Transactor::new(Fake::with_group("g"), settings(3, 50));
    let now = Instant::now();
    assert!(!t.due(now) && t.deadline().is_none(), "idle: never due");
    t.took_input(0).unwrap();
    t.took_input(0).unwrap();
    assert!(!t.due(Instant::now()));
    let deadline = t.deadline().unwrap();
    assert!(t.due(deadline), "due at its deadline");
    t.took_input(1).unwrap();
    assert!(t.due(Instant::now()), "due at max records");
    // Produces (checkpoints) do not count as inputs.
    let mut t = Transactor::new(Fake::with_group("g"), settings(1, 10_000));
    t.produce(0, out("audit.checkpoints", 0)).await.unwrap();
    assert!(!t.due(Instant::now()));
}

#[tokio::test]
async fn an_abortable_send_offsets_error_aborts_and_hands_back_the_partitions_to_recover() {
    let fake = Fake::with_group("g");
    fake.fail(
        "send_offsets",
        TxnErrorKind::Abortable,
        "ILLEGAL_GENERATION",
    );
    let mut t = Transactor::new(fake.clone(), settings(100, 10_000));
    batch(&mut t, &[(0, 1), (2, 1)]).await;
    match t.commit(vec![next(0, 2), next(2, 2)]).await {
        Err(CommitError::Aborted { partitions, cause }) => {
            assert_eq!(partitions.into_iter().collect::<Vec<_>>(), vec![0, 2]);
            assert_eq!(cause.kind, TxnErrorKind::Abortable);
        }
        other => panic!("want Aborted, got {other:?}"),
    }
    let log = fake.log();
    assert!(matches!(log[log.len() - 2], Call::SendOffsets { .. }));
    assert_eq!(log.last(), Some(&Call::Abort), "{log:?}");
    assert!(!log.contains(&Call::Commit));
    assert!(!t.is_open());
    assert_eq!(
        t.committed_source(0),
        None,
        "nothing of it counts as committed"
    );
}

#[tokio::test]
async fn an_abortable_commit_error_aborts() {
    let fake = Fake::with_group("g");
    fake.fail("commit", TxnErrorKind::Abortable, "delivery failed");
    let mut t = Transactor::new(fake.clone(), settings(100, 10_000));
    batch(&mut t, &[(1, 7)]).await;
    assert!(matches!(
        t.commit(vec![next(1, 8)]).await,
        Err(CommitError::Aborted { .. })
    ));
    assert_eq!(
        fake.log()[fake.log().len() - 2..],
        [Call::Commit, Call::Abort]
    );
}

#[tokio::test]
async fn a_consumer_out_of_the_group_aborts_instead_of_sending_offsets() {
    let fake = Fake::default();
    let mut t = Transactor::new(fake.clone(), settings(100, 10_000));
    batch(&mut t, &[(0, 1)]).await;
    assert!(matches!(
        t.commit(vec![next(0, 2)]).await,
        Err(CommitError::Aborted { .. })
    ));
    assert_eq!(
        fake.log(),
        vec![Call::Begin, send("audit.chained", 0), Call::Abort]
    );
}

#[tokio::test]
async fn fencing_is_fatal_and_says_so() {
    let fake = Fake::with_group("g");
    fake.fail(
        "commit",
        TxnErrorKind::Fatal,
        "Producer fenced by newer instance",
    );
    let mut t = Transactor::new(fake.clone(), settings(100, 10_000));
    batch(&mut t, &[(0, 1)]).await;
    match t.commit(vec![next(0, 2)]).await {
        Err(CommitError::Fatal(e)) => {
            let msg = e.to_string();
            assert!(msg.contains("fenced") && msg.contains("chainer-0"), "{msg}");
        }
        other => panic!("want Fatal, got {other:?}"),
    }
    assert!(
        !fake.log().contains(&Call::Abort),
        "a fenced producer cannot abort"
    );
    // Fenced at send_offsets, too.
    let fake = Fake::with_group("g");
    fake.fail("send_offsets", TxnErrorKind::Fatal, "fenced");
    let mut t = Transactor::new(fake.clone(), settings(100, 10_000));
    batch(&mut t, &[(0, 1)]).await;
    assert!(matches!(
        t.commit(vec![next(0, 2)]).await,
        Err(CommitError::Fatal(_))
    ));
    assert_eq!(
        fake.log().last(),
        Some(&Call::SendOffsets {
            offsets: vec![next(0, 2)],
            group: "g".into()
        })
    );
}

#[tokio::test]
async fn retriable_errors_are_retried_a_bounded_number_of_times() {
    let fake = Fake::with_group("g");
    fake.fail("commit", TxnErrorKind::Retriable, "timed out");
    let mut t = Transactor::new(fake.clone(), settings(100, 10_000));
    batch(&mut t, &[(0, 1)]).await;
    t.commit(vec![next(0, 2)]).await.unwrap();
    assert_eq!(fake.log().iter().filter(|c| **c == Call::Commit).count(), 2);
    assert_eq!(t.committed_source(0), Some(1));

    // Never succeeding: gives up (fatal, the worker stops) instead of looping.
    let fake = Fake::with_group("g");
    for _ in 0..10 {
        fake.fail("commit", TxnErrorKind::Retriable, "timed out");
    }
    let mut t = Transactor::new(fake.clone(), settings(100, 10_000));
    batch(&mut t, &[(0, 1)]).await;
    assert!(matches!(
        t.commit(vec![next(0, 2)]).await,
        Err(CommitError::Fatal(_))
    ));
    assert_eq!(
        fake.log().iter().filter(|c| **c == Call::Commit).count(),
        1 + RETRIES as usize
    );
}

#[tokio::test]
async fn a_broker_without_end_txn_is_fatal_at_once() {
    // What librdkafka reports against tansu (retriable, but retrying cannot help).
    let fake = Fake::with_group("g");
    fake.fail(
        "commit",
        TxnErrorKind::Unsupported,
        "EndTxnRequest (KIP-98) not supported by broker",
    );
    let mut t = Transactor::new(fake.clone(), settings(100, 10_000));
    batch(&mut t, &[(0, 1)]).await;
    match t.commit(vec![next(0, 2)]).await {
        Err(CommitError::Fatal(e)) => {
            assert!(
                e.to_string().contains("does not support transactions"),
                "{e}"
            )
        }
        other => panic!("want Fatal, got {other:?}"),
    }
    assert_eq!(fake.log().iter().filter(|c| **c == Call::Commit).count(), 1);
}

#[tokio::test]
async fn an_abort_that_fails_is_fatal() {
    let fake = Fake::with_group("g");
    fake.fail("abort", TxnErrorKind::Fatal, "fenced");
    let mut t = Transactor::new(fake.clone(), settings(100, 10_000));
    batch(&mut t, &[(0, 1)]).await;
    assert!(t.abort("a partition was revoked").await.is_err());
    // An explicit abort that works hands back what to recover.
    let fake = Fake::with_group("g");
    let mut t = Transactor::new(fake.clone(), settings(100, 10_000));
    batch(&mut t, &[(4, 1), (5, 9)]).await;
    let parts = t.abort("a partition was revoked").await.unwrap();
    assert_eq!(parts.into_iter().collect::<Vec<_>>(), vec![4, 5]);
    assert_eq!(fake.log().last(), Some(&Call::Abort));
}

#[tokio::test]
async fn committed_source_offsets_follow_committed_transactions_only() {
    let fake = Fake::with_group("g");
    let mut t = Transactor::new(fake.clone(), settings(100, 10_000));
    batch(&mut t, &[(0, 10), (0, 11)]).await;
    t.commit(vec![next(0, 12)]).await.unwrap();
    assert_eq!(t.committed_source(0), Some(11));
    batch(&mut t, &[(0, 12)]).await;
    t.abort("test").await.unwrap();
    assert_eq!(t.committed_source(0), Some(11));
}

#[tokio::test]
async fn init_errors_stop_the_start_with_a_clear_message() {
    let fake = Fake::default();
    fake.fail("init", TxnErrorKind::Other, "Local: Timed out");
    let t = Transactor::new(fake.clone(), settings(100, 10_000));
    let msg = t.init().await.unwrap_err().to_string();
    assert!(
        msg.contains("initializing transactions") && msg.contains("Timed out"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration

fn config(extra: &[&str]) -> Config {
    let mut args = vec!["chainer", "--health-addr", ""];
    args.extend_from_slice(extra);
    Config::parse_from(args)
}

fn config_err(extra: &[&str]) -> String {
    TxnSettings::from_config(&config(extra))
        .unwrap_err()
        .to_string()
}

#[test]
fn transactions_are_off_by_default_and_the_default_path_is_unchanged() {
    let c = config(&[]);
    assert_eq!(TxnSettings::from_config(&c).unwrap(), None);
    assert_eq!(OffsetPath::of(None), OffsetPath::StoreThenAutoCommit);
    assert!(OffsetPath::StoreThenAutoCommit.stores_offsets());
    assert!(OffsetPath::StoreThenAutoCommit.commits_at_shutdown());
    let (producer, consumer) = client_args(&c, None);
    assert_eq!(producer.properties, vec!["enable.gapless.guarantee=true"]);
    assert!(consumer.properties.is_empty());
    assert_eq!(consumer.brokers, c.kafka.brokers);
}

#[test]
fn with_a_transactional_id_offsets_are_neither_stored_nor_auto_committed() {
    let c = config(&[
        "--transactional-id",
        "chainer-0",
        "--transaction-timeout-ms",
        "5000",
        "--kafka-property",
        "socket.timeout.ms=7000",
    ]);
    let t = TxnSettings::from_config(&c).unwrap().unwrap();
    assert_eq!(
        t,
        TxnSettings {
            transactional_id: "chainer-0".into(),
            max_records: 1000,
            max_age: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
        }
    );
    let path = OffsetPath::of(Some(&t));
    assert!(!path.stores_offsets() && !path.commits_at_shutdown());

    let (producer, consumer) = client_args(&c, Some(&t));
    let p = producer.client_config("p");
    assert_eq!(p.get("transactional.id"), Some("chainer-0"));
    assert_eq!(p.get("transaction.timeout.ms"), Some("5000"));
    assert_eq!(p.get("message.timeout.ms"), Some("5000"));
    assert_eq!(
        p.get("socket.timeout.ms"),
        Some("7000"),
        "user properties kept"
    );
    assert_eq!(p.get("enable.gapless.guarantee"), None);
    let k = consumer.client_config("c");
    // `subscribe` sets enable.auto.commit=true and then applies the properties: ours win.
    assert_eq!(k.get("enable.auto.commit"), Some("false"));
    assert_eq!(
        k.get("transactional.id"),
        None,
        "the consumer is not transactional"
    );
}

#[test]
fn transaction_options_are_validated() {
    let id = ["--transactional-id", "chainer-0"];
    let with = |more: &[&str]| -> String {
        let mut v = id.to_vec();
        v.extend_from_slice(more);
        config_err(&v)
    };
    assert!(config_err(&["--transactional-id", "a b"]).contains("whitespace"));
    assert!(with(&["--transaction-max-records", "0"]).contains("max-records"));
    assert!(with(&["--transaction-max-ms", "0"]).contains("max-ms"));
    assert!(with(&["--transaction-timeout-ms", "999"]).contains("1000"));
    assert!(with(&[
        "--transaction-max-ms",
        "5000",
        "--transaction-timeout-ms",
        "5000"
    ])
    .contains("below --transaction-timeout-ms"));
    for (prop, why) in [
        ("transactional.id=x", "--transaction-*"),
        ("transaction.timeout.ms=9000", "--transaction-*"),
        ("enable.auto.commit=true", "--transaction-*"),
        ("isolation.level=read_uncommitted", "read_committed"),
        ("enable.idempotence=false", "idempotent"),
        ("enable.gapless.guarantee=true", "abort"),
    ] {
        let msg = with(&["--kafka-property", prop]);
        assert!(
            msg.contains("incompatible with --transactional-id") && msg.contains(why),
            "{prop}: {msg}"
        );
    }
    // Harmless properties pass; so does read_committed spelled out.
    let c = config(&[
        "--transactional-id",
        "x",
        "--kafka-property",
        "isolation.level=read_committed",
    ]);
    assert!(TxnSettings::from_config(&c).unwrap().is_some());
    // Without an id, the transaction options are inert (not validated, nothing changes).
    let c = config(&["--transaction-max-records", "0"]);
    assert_eq!(TxnSettings::from_config(&c).unwrap(), None);
}

#[test]
fn the_options_have_their_env_variables() {
    let help = <Config as clap::CommandFactory>::command()
        .render_long_help()
        .to_string();
    for var in [
        "AUDIT_CHAINER_TRANSACTIONAL_ID",
        "AUDIT_CHAINER_TRANSACTION_MAX_RECORDS",
        "AUDIT_CHAINER_TRANSACTION_MAX_MS",
        "AUDIT_CHAINER_TRANSACTION_TIMEOUT_MS",
    ] {
        assert!(help.contains(var), "{var} missing from --help");
    }
}

// ---------------------------------------------------------------------------------------------
// Broker support check

fn api_versions_body(apis: &[(i16, i16, i16)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(1i32.to_be_bytes());
    b.extend(0i16.to_be_bytes());
    b.extend((apis.len() as i32).to_be_bytes());
    for &(k, min, max) in apis {
        b.extend(k.to_be_bytes());
        b.extend(min.to_be_bytes());
        b.extend(max.to_be_bytes());
    }
    b
}

/// What tansu advertises for transactions (measured: no EndTxn).
const TANSU: &[(i16, i16, i16)] = &[(0, 0, 11), (22, 0, 5), (24, 0, 5), (25, 0, 4), (28, 0, 4)];
const KAFKA: &[(i16, i16, i16)] = &[
    (0, 0, 11),
    (22, 0, 5),
    (24, 0, 5),
    (25, 0, 4),
    (26, 0, 4),
    (28, 0, 4),
];

#[test]
fn api_versions_decide_transaction_support() {
    let tansu = parse_api_versions(&api_versions_body(TANSU)).unwrap();
    assert!(check_transaction_apis(&tansu)
        .unwrap_err()
        .contains("EndTxn (API key 26)"));
    let kafka = parse_api_versions(&api_versions_body(KAFKA)).unwrap();
    check_transaction_apis(&kafka).unwrap();
    // Kafka < 2.5: TxnOffsetCommit without group metadata (no KIP-447 fencing).
    let mut old = KAFKA.to_vec();
    old[5] = (28, 0, 2);
    let old = parse_api_versions(&api_versions_body(&old)).unwrap();
    assert!(check_transaction_apis(&old)
        .unwrap_err()
        .contains("KIP-447"));
    // Garbage.
    assert!(parse_api_versions(&[0, 0, 0, 1, 0]).is_err());
    let mut cut = api_versions_body(KAFKA);
    cut.truncate(cut.len() - 3);
    assert!(parse_api_versions(&cut).is_err());
}

/// A one-shot fake broker: answers the first request with `reply`, or never if `None`.
async fn fake_broker(reply: Option<Vec<u8>>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.unwrap();
        let mut req = vec![0u8; i32::from_be_bytes(len) as usize];
        s.read_exact(&mut req).await.unwrap();
        assert_eq!(&req[..4], &[0, 18, 0, 0], "ApiVersions v0");
        match reply {
            Some(body) => {
                let mut frame = (body.len() as i32).to_be_bytes().to_vec();
                frame.extend(body);
                s.write_all(&frame).await.unwrap();
            }
            None => tokio::time::sleep(Duration::from_secs(60)).await,
        }
    });
    addr
}

#[tokio::test]
async fn the_start_up_check_refuses_a_broker_without_transactions_and_never_hangs() {
    let addr = fake_broker(Some(api_versions_body(TANSU))).await;
    let args = KafkaArgs::local(&addr, "t.");
    let msg = check_broker_support(&args, Duration::from_secs(5))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("does not support transactions") && msg.contains("EndTxn"),
        "{msg}"
    );

    let addr = fake_broker(Some(api_versions_body(KAFKA))).await;
    check_broker_support(&KafkaArgs::local(&addr, "t."), Duration::from_secs(5))
        .await
        .unwrap();

    // A broker that never answers: the check gives up (it must not hang; the outer timeout
    // only turns a hang into a test failure).
    let addr = fake_broker(None).await;
    let msg = tokio::time::timeout(
        Duration::from_secs(30),
        check_broker_support(&KafkaArgs::local(&addr, "t."), Duration::from_millis(300)),
    )
    .await
    .expect("the support check hung instead of giving up")
    .unwrap_err()
    .to_string();
    assert!(msg.contains("no answer within"), "{msg}");

    // Over TLS the check is skipped (the first commit reports an unsupported broker).
    let mut tls = KafkaArgs::local("127.0.0.1:1", "t.");
    tls.security_protocol = "SSL".into();
    check_broker_support(&tls, Duration::from_millis(100))
        .await
        .unwrap();
}

#[tokio::test]
async fn init_is_not_retried_so_its_timeout_bounds_the_start() {
    let fake = Fake::default();
    fake.fail("init", TxnErrorKind::Retriable, "Local: Timed out");
    let t = Transactor::new(fake.clone(), settings(100, 10_000));
    assert!(t.init().await.is_err());
    assert_eq!(fake.log(), vec![Call::Init]);
}

/// The real librdkafka calls, against an address where nothing listens: `init_transactions`
/// gives up within the timeout, and the producer can be dropped afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_init_against_no_broker_fails_within_the_timeout() {
    use worker_runtime::kafka::consumer::{subscribe, ConsumerSettings};
    use worker_runtime::kafka::Producer;
    let c = config(&[
        "--kafka-brokers",
        "127.0.0.1:1",
        "--transactional-id",
        "chainer-test-no-broker",
        "--transaction-timeout-ms",
        "1000",
    ]);
    let s = TxnSettings::from_config(&c).unwrap().unwrap();
    let (pargs, cargs) = client_args(&c, Some(&s));
    let producer = Producer::new(&pargs, "p").unwrap();
    let (consumer, _) =
        subscribe(&cargs, &ConsumerSettings::new("g", "c", vec!["t".into()])).unwrap();
    let t = Transactor::new(
        KafkaTransactions::new(producer.inner().clone(), consumer),
        s,
    );
    let msg = tokio::time::timeout(Duration::from_secs(30), t.init())
        .await
        .expect("init_transactions hung instead of giving up")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("initializing transactions"), "{msg}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop((t, producer));
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_ok(),
        "dropping the producer after a failed init hung"
    );
}
