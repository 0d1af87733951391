//! Kafka transactions (design.md, "The chain", Transactions): an option, off by default, for
//! brokers that have them (Apache Kafka ≥ 2.5, Redpanda, MSK). Correctness never depends on
//! them — the chain is exactly once without them (dedup window, recovery from the tail,
//! deterministic output); with them the log also holds no duplicate copy and a zombie is fenced.
//!
//! With `--transactional-id`, the loop works in transactions:
//!
//! ```text
//!            first input / produce                 max records or max ms reached,
//!   Idle ────── begin_transaction ──────► Open ─── new assignment epoch, shutdown
//!    ▲                                      │
//!    │ commit_transaction ok                ▼
//!    ├──────────── send_offsets_to_transaction(next offsets, consumer group metadata)
//!    │                                      │ abortable error, delivery failure,
//!    │                                      │ a partition of the batch no longer ours
//!    │ recover touched partitions           ▼
//!    └── from the tail + seek ◄──── abort_transaction
//!
//!   fatal error (fenced, broker without EndTxn, retries exhausted, abort failed) → the worker stops
//! ```
//!
//! Offsets are committed only inside transactions (`enable.auto.commit=false`, nothing stored),
//! so the committed offset of a partition moves exactly with its chained records.
//!
//! Fencing: this relies on **EOS v2 (KIP-447)**: offsets are sent with the consumer's group
//! metadata (member id, generation), so the group coordinator refuses a zombie's offsets after
//! a rebalance and its transaction aborts; a new owner's read_committed consumer fetches
//! offsets with `require_stable` and waits for a predecessor's pending transaction. So one
//! `transactional.id` per *instance* (stable across its restarts, e.g. the pod name) is right,
//! not one per partition (EOS v1). The broker must implement TxnOffsetCommit v3+ (Kafka 2.5+);
//! [`check_broker_support`] checks that at start. An instance restarted with the same id fences
//! its predecessor in `init_transactions`; two live instances with the same id fence each other.
//!
//! The calls go through [`Transactional`], so the wiring is tested with a recording fake.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use worker_runtime::kafka::ack_producer::{AckFuture, AckProducer};
use worker_runtime::kafka::{AuditConsumer, KafkaArgs};

use crate::error::Error;
use crate::metrics as m;
use crate::Config;

/// Retriable errors of one transactional call are retried this many times.
const RETRIES: u32 = 3;
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// The transaction options, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnSettings {
    pub transactional_id: String,
    /// Commit after this many input records…
    pub max_records: usize,
    /// …or this long after the transaction began.
    pub max_age: Duration,
    /// `transaction.timeout.ms`, and the bound of every transactional call.
    pub timeout: Duration,
}

/// librdkafka properties the transactional mode sets itself; setting them through
/// `--kafka-property` would contradict it.
const RESERVED: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.auto.commit",
];

impl TxnSettings {
    /// `None` when transactions are off (the default).
    pub fn from_config(config: &Config) -> Result<Option<Self>, Error> {
        let id = config.transactional_id.trim();
        if id.is_empty() {
            return Ok(None);
        }
        let bad = |m: String| Err(Error::Config(m));
        if id != config.transactional_id || id.chars().any(char::is_whitespace) {
            return bad(format!(
                "--transactional-id {:?} must not contain whitespace",
                config.transactional_id
            ));
        }
        if config.transaction_max_records == 0 {
            return bad("--transaction-max-records must be at least 1".into());
        }
        if config.transaction_max_ms == 0 {
            return bad("--transaction-max-ms must be at least 1".into());
        }
        // librdkafka's range for transaction.timeout.ms starts at 1000.
        if config.transaction_timeout_ms < 1000 || config.transaction_timeout_ms > i32::MAX as u64 {
            return bad(format!(
                "--transaction-timeout-ms must be in 1000..={} (got {})",
                i32::MAX,
                config.transaction_timeout_ms
            ));
        }
        if config.transaction_max_ms >= config.transaction_timeout_ms {
            return bad(format!(
                "--transaction-max-ms ({}) must be below --transaction-timeout-ms ({}): the broker \
                 aborts a transaction that stays open longer than its timeout",
                config.transaction_max_ms, config.transaction_timeout_ms
            ));
        }
        for kv in &config.kafka.properties {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            let conflict = match k {
                _ if RESERVED.contains(&k) => Some("set by the transactional mode (use the --transaction-* options)"),
                "isolation.level" if v != "read_committed" => {
                    Some("the tail scans and consumers must skip aborted records (read_committed)")
                }
                "enable.idempotence" if v != "true" => Some("transactions need the idempotent producer"),
                "enable.gapless.guarantee" => {
                    Some("a transaction is all or nothing already; a gap must abort it, not kill the producer")
                }
                _ => None,
            };
            if let Some(why) = conflict {
                return bad(format!(
                    "--kafka-property {kv} is incompatible with --transactional-id: {why}"
                ));
            }
        }
        Ok(Some(TxnSettings {
            transactional_id: id.to_owned(),
            max_records: config.transaction_max_records,
            max_age: Duration::from_millis(config.transaction_max_ms),
            timeout: Duration::from_millis(config.transaction_timeout_ms),
        }))
    }
}

/// How input offsets reach the group coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetPath {
    /// Default: store the next offset once the output is acknowledged; librdkafka auto-commits
    /// what is stored; commit once more at shutdown.
    StoreThenAutoCommit,
    /// Transactions: nothing is stored or auto-committed; offsets go into the transaction.
    InTransaction,
}

impl OffsetPath {
    pub fn of(txn: Option<&TxnSettings>) -> Self {
        match txn {
            Some(_) => OffsetPath::InTransaction,
            None => OffsetPath::StoreThenAutoCommit,
        }
    }

    /// Whether acknowledged offsets are stored for the consumer's (auto) commit.
    pub fn stores_offsets(self) -> bool {
        self == OffsetPath::StoreThenAutoCommit
    }

    /// Whether the consumer commits its stored offsets at shutdown.
    pub fn commits_at_shutdown(self) -> bool {
        self == OffsetPath::StoreThenAutoCommit
    }
}

/// Client settings of the producer and of the group consumer. Our properties go after the
/// user's, and both `Producer::new` and `subscribe` apply `properties` last, so they win.
pub fn client_args(config: &Config, txn: Option<&TxnSettings>) -> (KafkaArgs, KafkaArgs) {
    let mut producer = config.kafka.clone();
    let mut consumer = config.kafka.clone();
    match txn {
        None => {
            // A delivery failure that would leave a gap in a partition's output must stop the
            // producer rather than let later links land after a missing one.
            producer
                .properties
                .push("enable.gapless.guarantee=true".into());
        }
        Some(t) => {
            let ms = t.timeout.as_millis();
            producer.properties.extend([
                format!("transactional.id={}", t.transactional_id),
                format!("transaction.timeout.ms={ms}"),
                // librdkafka refuses message.timeout.ms > transaction.timeout.ms.
                format!("message.timeout.ms={ms}"),
            ]);
            consumer.properties.push("enable.auto.commit=false".into());
        }
    }
    (producer, consumer)
}

// ---------------------------------------------------------------------------------------------
// Errors

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnErrorKind {
    /// The producer cannot continue (fenced by a newer instance, or broken).
    Fatal,
    /// The transaction must be aborted; the producer can go on.
    Abortable,
    /// The same call may be retried.
    Retriable,
    /// The broker lacks an API transactions need.
    Unsupported,
    Other,
}

/// An error of a transactional call, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnError {
    pub kind: TxnErrorKind,
    pub message: String,
}

impl TxnError {
    pub fn new(kind: TxnErrorKind, message: impl Into<String>) -> Self {
        TxnError {
            kind,
            message: message.into(),
        }
    }

    /// Classifies librdkafka's error. `_UNSUPPORTED_FEATURE` is reported as retriable by
    /// librdkafka (e.g. EndTxn against a broker without it), but retrying cannot help.
    pub fn from_kafka(e: &KafkaError) -> Self {
        let kind = match e {
            KafkaError::Transaction(r) if r.code() == RDKafkaErrorCode::UnsupportedFeature => {
                TxnErrorKind::Unsupported
            }
            KafkaError::Transaction(r) if r.is_fatal() => TxnErrorKind::Fatal,
            KafkaError::Transaction(r) if r.txn_requires_abort() => TxnErrorKind::Abortable,
            KafkaError::Transaction(r) if r.is_retriable() => TxnErrorKind::Retriable,
            _ if e.rdkafka_error_code() == Some(RDKafkaErrorCode::UnsupportedFeature) => {
                TxnErrorKind::Unsupported
            }
            _ => TxnErrorKind::Other,
        };
        TxnError::new(kind, e.to_string())
    }
}

impl std::fmt::Display for TxnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hint = match self.kind {
            TxnErrorKind::Fatal => {
                " (fatal: the producer was fenced — another instance started with the same \
                 transactional id, or this one's transaction timed out — or is unusable)"
            }
            TxnErrorKind::Unsupported => {
                " (the broker does not support transactions; run without --transactional-id)"
            }
            TxnErrorKind::Abortable => " (abortable)",
            TxnErrorKind::Retriable => " (retriable)",
            TxnErrorKind::Other => "",
        };
        write!(f, "{}{hint}", self.message)
    }
}

impl std::error::Error for TxnError {}

// ---------------------------------------------------------------------------------------------
// The calls

/// The next offset to read of one input partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NextOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A record to produce inside the transaction.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub topic: &'a str,
    /// `None`: the partitioner picks (dead letters, by key).
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub timestamp_ms: Option<i64>,
    pub headers: &'a [(String, Vec<u8>)],
}

/// The producer's transaction calls and the consumer's group metadata. The blocking calls are
/// made on a blocking thread, each bounded by a timeout.
pub trait Transactional: Send + Sync + 'static {
    type Group: Send + Sync + 'static;
    type Delivery: Send + 'static;
    fn init_transactions(&self, timeout: Duration) -> Result<(), TxnError>;
    fn begin_transaction(&self) -> Result<(), TxnError>;
    /// Enqueues a record (non-blocking); `Err(QueueFull)` is retried by the caller.
    fn produce(&self, record: &Outgoing<'_>) -> Result<Self::Delivery, KafkaError>;
    /// The consumer's current group metadata (member id, generation), for KIP-447 fencing.
    fn group_metadata(&self) -> Option<Self::Group>;
    fn send_offsets_to_transaction(
        &self,
        offsets: &[NextOffset],
        group: &Self::Group,
        timeout: Duration,
    ) -> Result<(), TxnError>;
    fn commit_transaction(&self, timeout: Duration) -> Result<(), TxnError>;
    fn abort_transaction(&self, timeout: Duration) -> Result<(), TxnError>;
}

/// The real thing: librdkafka's transactional producer and the group consumer.
#[derive(Clone)]
pub struct KafkaTransactions {
    producer: AckProducer,
    consumer: Arc<AuditConsumer>,
}

impl std::fmt::Debug for KafkaTransactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransactions").finish_non_exhaustive()
    }
}

impl KafkaTransactions {
    pub fn new(producer: AckProducer, consumer: Arc<AuditConsumer>) -> Self {
        KafkaTransactions { producer, consumer }
    }
}

fn classify(r: Result<(), KafkaError>) -> Result<(), TxnError> {
    r.map_err(|e| TxnError::from_kafka(&e))
}

impl Transactional for KafkaTransactions {
    type Group = ConsumerGroupMetadata;
    type Delivery = AckFuture;

    fn init_transactions(&self, timeout: Duration) -> Result<(), TxnError> {
        classify(self.producer.init_transactions(timeout))
    }

    fn begin_transaction(&self) -> Result<(), TxnError> {
        classify(self.producer.begin_transaction())
    }

    fn produce(&self, r: &Outgoing<'_>) -> Result<AckFuture, KafkaError> {
        let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(r.topic);
        if let Some(p) = r.partition {
            fr = fr.partition(p);
        }
        if let Some(k) = r.key {
            fr = fr.key(k);
        }
        if let Some(p) = r.payload {
            fr = fr.payload(p);
        }
        if let Some(ts) = r.timestamp_ms {
            fr = fr.timestamp(ts);
        }
        if !r.headers.is_empty() {
            let mut h = OwnedHeaders::new_with_capacity(r.headers.len());
            for (key, value) in r.headers {
                h = h.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            fr = fr.headers(h);
        }
        self.producer.send_result(fr).map_err(|(e, _)| e)
    }

    fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        self.consumer.group_metadata()
    }

    fn send_offsets_to_transaction(
        &self,
        offsets: &[NextOffset],
        group: &ConsumerGroupMetadata,
        timeout: Duration,
    ) -> Result<(), TxnError> {
        let mut tpl = TopicPartitionList::new();
        for o in offsets {
            tpl.add_partition_offset(&o.topic, o.partition, Offset::Offset(o.offset))
                .map_err(|e| TxnError::from_kafka(&e))?;
        }
        classify(
            self.producer
                .send_offsets_to_transaction(&tpl, group, timeout),
        )
    }

    fn commit_transaction(&self, timeout: Duration) -> Result<(), TxnError> {
        classify(self.producer.commit_transaction(timeout))
    }

    fn abort_transaction(&self, timeout: Duration) -> Result<(), TxnError> {
        classify(self.producer.abort_transaction(timeout))
    }
}

// ---------------------------------------------------------------------------------------------
// The state machine

/// What the open transaction holds.
#[derive(Debug)]
struct OpenTxn {
    since: Instant,
    inputs: usize,
    /// Chain partitions with input, output or a checkpoint in this transaction.
    touched: BTreeSet<i32>,
    /// Per partition, the source offset of the last chained record in this transaction.
    chained: HashMap<i32, i64>,
}

/// How a commit failed.
#[derive(Debug)]
pub enum CommitError {
    /// The transaction was aborted (nothing of it is visible); these partitions' in-memory
    /// state ran ahead of the log and must be recovered.
    Aborted {
        partitions: BTreeSet<i32>,
        cause: TxnError,
    },
    /// Stop the worker.
    Fatal(Error),
}

/// Drives one transactional producer through Idle → Open → commit/abort.
pub struct Transactor<T: Transactional> {
    ops: Arc<T>,
    settings: TxnSettings,
    open: Option<OpenTxn>,
    /// Per partition, the source offset of the last chained record this instance committed.
    committed: HashMap<i32, i64>,
}

impl<T: Transactional> std::fmt::Debug for Transactor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactor")
            .field("settings", &self.settings)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl<T: Transactional> Transactor<T> {
    pub fn new(ops: T, settings: TxnSettings) -> Self {
        Transactor {
            ops: Arc::new(ops),
            settings,
            open: None,
            committed: HashMap::new(),
        }
    }

    pub fn settings(&self) -> &TxnSettings {
        &self.settings
    }

    /// `init_transactions`: registers the transactional id with the coordinator, fencing any
    /// earlier producer with the same id and aborting its open transaction.
    pub async fn init(&self) -> Result<(), Error> {
        let timeout = self.settings.timeout;
        let started = Instant::now();
        // Not retried: the timeout is the whole bound of a start against a broker that does
        // not answer.
        let r = self
            .call_with("init_transactions", 0, move |o| {
                o.init_transactions(timeout)
            })
            .await;
        r.map_err(|source| Error::Transaction {
            what: format!(
                "initializing transactions (transactional.id {}) within {timeout:?}; a broker \
                 without transaction support times out or errors here",
                self.settings.transactional_id
            ),
            source,
        })?;
        tracing::info!(transactional_id = %self.settings.transactional_id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            max_records = self.settings.max_records, max_ms = self.settings.max_age.as_millis() as u64,
            "Kafka transactions enabled (EOS v2: offsets committed in the transaction with the group metadata)");
        Ok(())
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Partitions the open transaction touched.
    pub fn touched(&self) -> Vec<i32> {
        self.open
            .as_ref()
            .map(|o| o.touched.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Begins a transaction if none is open and notes that it touches partition `p`.
    pub fn touch(&mut self, p: i32) -> Result<(), Error> {
        if self.open.is_none() {
            self.ops
                .begin_transaction()
                .map_err(|source| Error::Transaction {
                    what: "beginning a transaction".into(),
                    source,
                })?;
            self.open = Some(OpenTxn {
                since: Instant::now(),
                inputs: 0,
                touched: BTreeSet::new(),
                chained: HashMap::new(),
            });
        }
        if let Some(o) = self.open.as_mut() {
            o.touched.insert(p);
        }
        Ok(())
    }

    /// An input record of partition `p` was taken into the transaction.
    pub fn took_input(&mut self, p: i32) -> Result<(), Error> {
        self.touch(p)?;
        if let Some(o) = self.open.as_mut() {
            o.inputs += 1;
        }
        Ok(())
    }

    /// A chained record for source offset `source_offset` of `p` is in the transaction.
    pub fn chained(&mut self, p: i32, source_offset: i64) {
        if let Some(o) = self.open.as_mut() {
            o.chained.insert(p, source_offset);
        }
    }

    /// Produces a record in the transaction (beginning one if needed) on behalf of chain
    /// partition `p`; waits while the local queue is full.
    pub async fn produce(&mut self, p: i32, record: Outgoing<'_>) -> Result<T::Delivery, Error> {
        self.touch(p)?;
        loop {
            match self.ops.produce(&record) {
                Ok(d) => return Ok(d),
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => {
                    return Err(worker_runtime::RuntimeError::kafka(
                        format!(
                            "enqueueing a record for {} (chain partition {p}) in a transaction",
                            record.topic
                        ),
                        e,
                    )
                    .into())
                }
            }
        }
    }

    /// Whether the open transaction should be committed now.
    pub fn due(&self, now: Instant) -> bool {
        self.open.as_ref().is_some_and(|o| {
            o.inputs >= self.settings.max_records
                || now.saturating_duration_since(o.since) >= self.settings.max_age
        })
    }

    /// When the open transaction becomes due by age.
    pub fn deadline(&self) -> Option<Instant> {
        self.open.as_ref().map(|o| o.since + self.settings.max_age)
    }

    /// The source offset of the last chained record of `p` this instance committed.
    pub fn committed_source(&self, p: i32) -> Option<i64> {
        self.committed.get(&p).copied()
    }

    /// Sends `offsets` (with the consumer's group metadata, fetched now) and commits. Every
    /// delivery of the transaction must have been awaited by the caller. On an abortable error
    /// the transaction is aborted here.
    pub async fn commit(&mut self, offsets: Vec<NextOffset>) -> Result<(), CommitError> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let timeout = self.settings.timeout;
        let started = Instant::now();
        let mut offsets_took = Duration::ZERO;
        let result = async {
            let group = self.ops.group_metadata().ok_or_else(|| {
                TxnError::new(
                    TxnErrorKind::Abortable,
                    "the consumer has no group metadata (not a group member right now)",
                )
            })?;
            if !offsets.is_empty() {
                let (offsets, group) = (Arc::new(offsets), Arc::new(group));
                self.call("send_offsets_to_transaction", move |o| {
                    o.send_offsets_to_transaction(&offsets, &group, timeout)
                })
                .await?;
                offsets_took = started.elapsed();
            }
            self.call("commit_transaction", move |o| o.commit_transaction(timeout))
                .await
        }
        .await;
        // Where a transaction's end goes (its records are visible to read_committed consumers
        // only after it): the chainer's hop in end-to-end latency is its age plus these.
        tracing::debug!(
            age_ms = open.since.elapsed().as_millis() as u64,
            offsets_ms = offsets_took.as_millis() as u64,
            commit_ms = (started.elapsed() - offsets_took).as_millis() as u64,
            inputs = open.inputs,
            ok = result.is_ok(),
            "transaction ended"
        );
        match result {
            Ok(()) => {
                self.committed.extend(open.chained);
                metrics::counter!(m::TXN_COMMITTED).increment(1);
                Ok(())
            }
            Err(cause) if cause.kind == TxnErrorKind::Abortable => {
                tracing::warn!(error = %cause, partitions = ?open.touched, "transaction failed; aborting it");
                match self.abort_call().await {
                    Ok(()) => Err(CommitError::Aborted {
                        partitions: open.touched,
                        cause,
                    }),
                    Err(e) => Err(CommitError::Fatal(e)),
                }
            }
            Err(source) => Err(CommitError::Fatal(Error::Transaction {
                what: format!(
                    "committing a transaction (transactional.id {})",
                    self.settings.transactional_id
                ),
                source,
            })),
        }
    }

    /// Aborts the open transaction (if any); returns the partitions it touched, whose state
    /// must be recovered. An abort that fails is fatal.
    pub async fn abort(&mut self, reason: &str) -> Result<BTreeSet<i32>, Error> {
        let Some(open) = self.open.take() else {
            return Ok(BTreeSet::new());
        };
        tracing::warn!(reason, partitions = ?open.touched, inputs = open.inputs, "aborting transaction");
        self.abort_call().await?;
        Ok(open.touched)
    }

    async fn abort_call(&self) -> Result<(), Error> {
        let timeout = self.settings.timeout;
        self.call("abort_transaction", move |o| o.abort_transaction(timeout))
            .await
            .map_err(|source| Error::Transaction {
                what: format!(
                    "aborting a transaction (transactional.id {})",
                    self.settings.transactional_id
                ),
                source,
            })?;
        metrics::counter!(m::TXN_ABORTED).increment(1);
        Ok(())
    }

    /// Runs a blocking call off the runtime, retrying retriable errors a few times.
    async fn call<F>(&self, what: &'static str, f: F) -> Result<(), TxnError>
    where
        F: Fn(&T) -> Result<(), TxnError> + Send + Sync + 'static,
    {
        self.call_with(what, RETRIES, f).await
    }

    async fn call_with<F>(&self, what: &'static str, retries: u32, f: F) -> Result<(), TxnError>
    where
        F: Fn(&T) -> Result<(), TxnError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let mut attempt = 0;
        loop {
            let (ops, g) = (self.ops.clone(), f.clone());
            let r = tokio::task::spawn_blocking(move || g(&ops))
                .await
                .map_err(|e| TxnError::new(TxnErrorKind::Other, format!("{what}: {e}")))?;
            match r {
                Err(e) if e.kind == TxnErrorKind::Retriable && attempt < retries => {
                    attempt += 1;
                    tracing::warn!(call = what, attempt, error = %e, "retrying transactional call");
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
                Err(e) => {
                    return Err(TxnError {
                        message: format!("{what}: {}", e.message),
                        ..e
                    })
                }
                Ok(()) => return Ok(()),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Does the broker have transactions at all?

/// API keys transactions need, with the lowest max version: TxnOffsetCommit v3 carries the
/// group metadata (KIP-447, Kafka 2.5+).
const REQUIRED_APIS: &[(i16, &str, i16)] = &[
    (22, "InitProducerId", 0),
    (24, "AddPartitionsToTxn", 0),
    (25, "AddOffsetsToTxn", 0),
    (26, "EndTxn", 0),
    (28, "TxnOffsetCommit", 3),
];

/// Parses an ApiVersions v0 response body (after the size): api key → (min, max).
pub fn parse_api_versions(body: &[u8]) -> Result<BTreeMap<i16, (i16, i16)>, String> {
    let i16_at = |i: usize| -> Result<i16, String> {
        body.get(i..i + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated ApiVersions response".to_string())
    };
    let count = body
        .get(6..10)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or("truncated ApiVersions response")?;
    let error = i16_at(4)?;
    // 35 = UNSUPPORTED_VERSION: the broker still lists its versions.
    if error != 0 && error != 35 {
        return Err(format!("ApiVersions error code {error}"));
    }
    let mut out = BTreeMap::new();
    for i in 0..usize::try_from(count).map_err(|_| "negative ApiVersions count")? {
        let at = 10 + i * 6;
        out.insert(i16_at(at)?, (i16_at(at + 2)?, i16_at(at + 4)?));
    }
    Ok(out)
}

/// Checks that every API transactions need is advertised.
pub fn check_transaction_apis(apis: &BTreeMap<i16, (i16, i16)>) -> Result<(), String> {
    let mut missing = Vec::new();
    for &(key, name, min_max) in REQUIRED_APIS {
        match apis.get(&key) {
            None => missing.push(format!("{name} (API key {key})")),
            Some(&(_, max)) if max < min_max => missing.push(format!(
                "{name} v{min_max}+ (has up to v{max}; KIP-447 group-metadata fencing needs Kafka 2.5+)"
            )),
            Some(_) => {}
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("it does not implement {}", missing.join(", ")))
    }
}

/// Fails fast, before any transaction, if the bootstrap broker lacks the transaction APIs
/// (tansu has no EndTxn: `init_transactions` succeeds there and only the first commit would
/// fail). Asks with a plain ApiVersions v0 request, which Kafka answers before authentication;
/// over TLS it cannot, so there the check is skipped and an unsupported broker is reported by
/// the first commit instead (as a fatal error, never a retry loop).
pub async fn check_broker_support(args: &KafkaArgs, timeout: Duration) -> Result<(), Error> {
    let proto = args.security_protocol.to_ascii_lowercase();
    if proto != "plaintext" && proto != "sasl_plaintext" {
        tracing::info!(security_protocol = %args.security_protocol,
            "not checking the broker's transaction support over TLS; the first commit will");
        return Ok(());
    }
    let mut failures = Vec::new();
    for broker in args
        .brokers
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
    {
        match tokio::time::timeout(timeout, api_versions(broker)).await {
            Ok(Ok(apis)) => {
                return check_transaction_apis(&apis).map_err(|detail| {
                    Error::TransactionsUnsupported {
                        broker: broker.to_owned(),
                        detail,
                    }
                })
            }
            Ok(Err(e)) => failures.push(format!("{broker}: {e}")),
            Err(_) => failures.push(format!("{broker}: no answer within {timeout:?}")),
        }
    }
    Err(Error::Transaction {
        what: "checking the broker's transaction support".into(),
        source: TxnError::new(
            TxnErrorKind::Other,
            format!(
                "no bootstrap broker answered ApiVersions: {}",
                failures.join("; ")
            ),
        ),
    })
}

async fn api_versions(broker: &str) -> Result<BTreeMap<i16, (i16, i16)>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(broker)
        .await
        .map_err(|e| e.to_string())?;
    let client_id = b"audit-chainer-txn-probe";
    let mut req = Vec::with_capacity(32);
    req.extend(18i16.to_be_bytes()); // ApiVersions
    req.extend(0i16.to_be_bytes()); // v0
    req.extend(1i32.to_be_bytes()); // correlation id
    req.extend((client_id.len() as i16).to_be_bytes());
    req.extend(client_id);
    let mut frame = (req.len() as i32).to_be_bytes().to_vec();
    frame.extend(req);
    s.write_all(&frame).await.map_err(|e| e.to_string())?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let len = i32::from_be_bytes(len);
    if !(10..=1 << 20).contains(&len) {
        return Err(format!("implausible ApiVersions response size {len}"));
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    parse_api_versions(&body)
}

#[cfg(test)]
mod tests;
