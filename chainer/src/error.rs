use thiserror::Error;
use worker_runtime::RuntimeError;

/// Everything that stops the chainer. Input problems are never errors (undecodable input is
/// dead-lettered); these are faults of the environment or of durable state, where continuing
/// could fork or lose the chain.
#[derive(Debug, Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("checkpoint signing key: {0}")]
    SigningKey(#[source] integrity::checkpoint::CheckpointError),
    #[error(
        "topic {chained} has {chained_partitions} partitions but {enriched} has {enriched_partitions}: \
         the chain of enriched partition p is written to chained partition p, so {chained} needs at \
         least {enriched_partitions} partitions"
    )]
    TooFewChainedPartitions {
        enriched: String,
        enriched_partitions: i32,
        chained: String,
        chained_partitions: i32,
    },
    /// The durable chain contradicts itself or a signed checkpoint; resuming would fork it.
    #[error("recovering {topic}/{partition}: {detail}")]
    Recovery {
        topic: String,
        partition: i32,
        detail: String,
    },
    #[error("chain of partition {partition}: {source}")]
    Chain {
        partition: i32,
        #[source]
        source: integrity::chain::ChainError,
    },
    #[error("signing the checkpoint of partition {partition} at seq {seq}: {source}")]
    Sign {
        partition: i32,
        seq: u64,
        #[source]
        source: integrity::checkpoint::CheckpointError,
    },
    #[error("encoding the checkpoint of partition {partition}: {source}")]
    EncodeCheckpoint {
        partition: i32,
        #[source]
        source: schemas::SchemaError,
    },
    #[error("delivering {what}: {source}")]
    Delivery {
        what: String,
        #[source]
        source: Box<RuntimeError>,
    },
    #[error("seeking {topic}/{partition} to offset {offset}: {source}")]
    Seek {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    #[error(
        "the Kafka broker at {broker} does not support transactions: {detail}. Run the chainer \
         without --transactional-id (the default): the chain is exactly once without transactions"
    )]
    TransactionsUnsupported { broker: String, detail: String },
    /// A transactional call failed in a way that stops the worker (fenced, unsupported,
    /// retries exhausted, an abort that failed).
    #[error("kafka transactions: {what}: {source}")]
    Transaction {
        what: String,
        #[source]
        source: crate::txn::TxnError,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}
