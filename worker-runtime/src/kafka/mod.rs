//! Kafka plumbing: client settings, topics, producer, consumer with rebalance tracking, offset
//! bookkeeping, the at-least-once pipeline loop, dead-letter records, admin and tail reads.

pub mod ack_producer;
pub mod admin;
pub mod consumer;
pub mod dlq;
mod gate;
pub mod liveness;
pub mod offsets;
pub mod pipeline;
pub mod producer;
pub mod record;
pub mod tail;
pub mod trace_context;

pub use consumer::{AuditConsumer, ConsumerSettings, RebalanceState};
pub use offsets::{OffsetTracker, TopicPartition};
pub use producer::Producer;
pub use record::{InputRecord, OutputRecord};

use crate::secret::Secret;
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

/// Connection settings shared by every Kafka client of a worker.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma-separated `host:port`.
    #[arg(
        long = "kafka-brokers",
        env = "AUDIT_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Prefix of every topic name (`<prefix>raw`, `<prefix>validated`, …).
    #[arg(
        long = "topic-prefix",
        env = "AUDIT_TOPIC_PREFIX",
        default_value = "audit."
    )]
    pub topic_prefix: String,
    /// `security.protocol`: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(
        long = "kafka-security-protocol",
        env = "AUDIT_KAFKA_SECURITY_PROTOCOL",
        default_value = "plaintext"
    )]
    pub security_protocol: String,
    /// SASL mechanism (e.g. `SCRAM-SHA-512`, `PLAIN`); empty = none.
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "AUDIT_KAFKA_SASL_MECHANISM",
        default_value = ""
    )]
    pub sasl_mechanism: String,
    /// SASL user name.
    #[arg(
        long = "kafka-sasl-username",
        env = "AUDIT_KAFKA_SASL_USERNAME",
        default_value = ""
    )]
    pub sasl_username: String,
    /// SASL password (never logged). Prefer the environment variable or a config file
    /// readable only by the worker.
    #[arg(
        long = "kafka-sasl-password",
        env = "AUDIT_KAFKA_SASL_PASSWORD",
        hide_env_values = true,
        default_value = ""
    )]
    pub sasl_password: Secret,
    /// Extra librdkafka properties as `key=value`, repeatable (e.g. `ssl.ca.location=/etc/ca.pem`).
    #[arg(
        long = "kafka-property",
        env = "AUDIT_KAFKA_PROPERTIES",
        value_delimiter = ';'
    )]
    pub properties: Vec<String>,
    /// Consumer watchdog: a consumer that holds no partition while its input has lag nobody
    /// consumes, or whose partitions make no progress, for this long (seconds) reports
    /// not-ready on `/readyz` and restarts (leaves and re-joins its group). 0 disables it.
    #[arg(
        long = "consumer-stall-timeout-secs",
        env = "AUDIT_CONSUMER_STALL_TIMEOUT_SECS",
        default_value_t = DEFAULT_CONSUMER_STALL_TIMEOUT_SECS
    )]
    #[serde(default = "default_consumer_stall_timeout_secs")]
    pub consumer_stall_timeout_secs: u64,
}

/// Default of `--consumer-stall-timeout-secs`.
pub const DEFAULT_CONSUMER_STALL_TIMEOUT_SECS: u64 = 60;

fn default_consumer_stall_timeout_secs() -> u64 {
    DEFAULT_CONSUMER_STALL_TIMEOUT_SECS
}

impl Default for KafkaArgs {
    fn default() -> Self {
        KafkaArgs {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: "audit.".into(),
            security_protocol: "plaintext".into(),
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            sasl_password: Secret::default(),
            properties: Vec::new(),
            consumer_stall_timeout_secs: DEFAULT_CONSUMER_STALL_TIMEOUT_SECS,
        }
    }
}

impl KafkaArgs {
    /// Local-stack defaults with another topic prefix (tests give each test its own).
    pub fn local(brokers: &str, topic_prefix: &str) -> Self {
        KafkaArgs {
            brokers: brokers.into(),
            topic_prefix: topic_prefix.into(),
            ..Default::default()
        }
    }

    /// The base client configuration. Callers add role-specific settings.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            .set("security.protocol", &self.security_protocol);
        if !self.sasl_mechanism.is_empty() {
            c.set("sasl.mechanism", &self.sasl_mechanism)
                .set("sasl.username", &self.sasl_username)
                .set("sasl.password", self.sasl_password.expose());
        }
        for kv in &self.properties {
            if let Some((k, v)) = kv.split_once('=') {
                c.set(k.trim(), v.trim());
            } else {
                tracing::warn!(property = %kv, "ignoring Kafka property without `=`");
            }
        }
        c
    }

    pub fn topics(&self) -> Topics {
        Topics::with_prefix(&self.topic_prefix)
    }

    /// The value `--kafka-property` gives librdkafka property `key` (the last one wins, as in
    /// librdkafka).
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties.iter().rev().find_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim())
        })
    }
}

/// The pipeline's topic names (design doc, "Flow").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub raw: String,
    pub validated: String,
    pub rejected: String,
    pub enriched: String,
    pub chained: String,
    pub checkpoints: String,
    pub context_users: String,
    pub context_teams: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Self {
        let t = |name: &str| format!("{prefix}{name}");
        Topics {
            raw: t("raw"),
            validated: t("validated"),
            rejected: t("rejected"),
            enriched: t("enriched"),
            chained: t("chained"),
            checkpoints: t("checkpoints"),
            context_users: t("context.users"),
            context_teams: t("context.teams"),
        }
    }

    /// Every topic with whether it is compacted.
    pub fn all(&self) -> Vec<(&str, bool)> {
        vec![
            (&self.raw, false),
            (&self.validated, false),
            (&self.rejected, false),
            (&self.enriched, false),
            (&self.chained, false),
            (&self.checkpoints, false),
            (&self.context_users, true),
            (&self.context_teams, true),
        ]
    }
}
