//! Ingest's configuration (defaults < `--config` TOML file < environment < command line).

use std::path::Path;

use schemas::json::JsonLimits;
use serde::{Deserialize, Serialize};
use worker_runtime::config::{CommonArgs, WorkerConfig};
use worker_runtime::kafka::KafkaArgs;

/// Validates raw audit records into `<prefix>validated`; rejects go to `<prefix>rejected`.
#[derive(Debug, Clone, clap::Parser, Serialize, Deserialize)]
#[command(name = "ingest", version, about)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group reading `<prefix>raw`.
    #[arg(long, env = "AUDIT_INGEST_GROUP_ID", default_value = "audit-ingest")]
    pub group_id: String,
    /// Input records whose outputs are not yet acknowledged by the broker, at most.
    #[arg(long, env = "AUDIT_INGEST_MAX_IN_FLIGHT", default_value_t = 1000)]
    pub max_in_flight: usize,
    /// Largest accepted record value (bytes, JSON or Avro); larger ones are rejected `too_large`.
    #[arg(long, env = "AUDIT_INGEST_MAX_EVENT_BYTES", default_value_t = 1024 * 1024)]
    pub max_event_bytes: usize,
    /// Largest accepted single string field (bytes); free-form JSON fields are bounded only by
    /// `--max-event-bytes`.
    #[arg(long, env = "AUDIT_INGEST_MAX_STRING_BYTES", default_value_t = 64 * 1024)]
    pub max_string_bytes: usize,
    /// Most `attributes` entries an event may carry.
    #[arg(long, env = "AUDIT_INGEST_MAX_ATTRIBUTES", default_value_t = 256)]
    pub max_attributes: usize,
    /// Deepest nesting of a JSON document (the root object is depth 1).
    #[arg(long, env = "AUDIT_INGEST_MAX_JSON_DEPTH", default_value_t = 32)]
    pub max_json_depth: usize,
    /// How far an event's timestamp may lie after its receive time (seconds) before it is
    /// rejected `timestamp_out_of_range` (producer clock skew allowance).
    #[arg(long, env = "AUDIT_INGEST_MAX_FUTURE_SKEW_SECS", default_value_t = 24 * 3600)]
    pub max_future_skew_secs: u64,
}

impl Config {
    /// The validation limits these options describe.
    pub fn limits(&self) -> JsonLimits {
        JsonLimits {
            max_total_bytes: self.max_event_bytes,
            max_string_bytes: self.max_string_bytes,
            max_attributes: self.max_attributes,
            max_depth: self.max_json_depth,
            max_future_skew_us: i64::try_from(self.max_future_skew_secs)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000),
        }
    }
}

impl WorkerConfig for Config {
    fn config_file(&self) -> Option<&Path> {
        self.common.config.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_match_the_json_mapping_defaults() {
        let c = Config::parse_from(["ingest", "--health-addr", ""]);
        assert_eq!(c.limits(), JsonLimits::default());
        assert_eq!(c.group_id, "audit-ingest");
        assert_eq!(c.kafka.topics().raw, "audit.raw");
    }
}
