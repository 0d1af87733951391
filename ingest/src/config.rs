//! Ingest's configuration (defaults < `--config` TOML file < environment < command line).

use std::path::{Path, PathBuf};

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
    /// Dead-letter (`invalid_value`) an event whose category, severity, outcome or actor type is
    /// outside its vocabulary. Off (the default): such an event is kept, normalised (OTHER, INFO,
    /// UNKNOWN, SYSTEM) with the producer's text in the attribute `audit.original.<field>`.
    #[arg(
        long,
        env = "AUDIT_INGEST_STRICT_LABELS",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub strict_labels: bool,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub otlp: OtlpArgs,
    /// Confluent-framed Avro through a schema registry (`ingest::registry`).
    #[command(flatten)]
    pub registry: crate::registry::RegistryArgs,
}

/// The OTLP traces receiver (each span becomes one audit event; `ingest::otlp`).
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpArgs {
    /// Receive OTLP traces (gRPC on `--otlp-grpc-addr`, HTTP on `--otlp-http-addr`).
    #[arg(
        long = "otlp",
        env = "AUDIT_INGEST_OTLP",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub enabled: bool,
    /// OTLP/gRPC address; empty disables gRPC.
    #[arg(
        long = "otlp-grpc-addr",
        env = "AUDIT_INGEST_OTLP_GRPC_ADDR",
        default_value = "0.0.0.0:4317"
    )]
    pub grpc_addr: String,
    /// OTLP/HTTP address (`POST /v1/traces`, protobuf or JSON); empty disables HTTP.
    #[arg(
        long = "otlp-http-addr",
        env = "AUDIT_INGEST_OTLP_HTTP_ADDR",
        default_value = "0.0.0.0:4318"
    )]
    pub http_addr: String,
    /// Largest export request (bytes); larger ones are refused (HTTP 413, gRPC
    /// OUT_OF_RANGE from tonic's decoding limit).
    #[arg(
        long = "otlp-max-request-bytes",
        env = "AUDIT_INGEST_OTLP_MAX_REQUEST_BYTES",
        default_value_t = 4 * 1024 * 1024
    )]
    pub max_request_bytes: usize,
    /// Exporters must authenticate with a bearer token of the HTTP door's table
    /// (`--http-tokens-file`, `--http-tokens`; HTTP header or gRPC metadata `authorization`);
    /// spans are then held to the token's tenant like HTTP events.
    #[arg(
        long = "otlp-require-token",
        env = "AUDIT_INGEST_OTLP_REQUIRE_TOKEN",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub require_token: bool,
}

/// The HTTP front door (`POST /v1/events`, `GET /v1/health`; ingest/openapi.yaml).
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpArgs {
    /// Address of the HTTP front door (e.g. `0.0.0.0:8080`); empty (the default) disables it.
    /// It also serves `/healthz`, `/readyz` and `/metrics`.
    #[arg(long = "http-addr", env = "AUDIT_INGEST_HTTP_ADDR", default_value = "")]
    pub addr: String,
    /// File of bearer tokens, one `sha256:<hex of the token's SHA-256> <tenant> [team,…]` per
    /// line (`#` comments). Only hashes: `printf %s "$TOKEN" | sha256sum`.
    #[arg(
        long = "http-tokens-file",
        env = "AUDIT_INGEST_HTTP_TOKENS_FILE",
        value_name = "FILE"
    )]
    pub tokens_file: Option<PathBuf>,
    /// More token entries, same form as the file's lines, separated by `;`.
    #[arg(
        long = "http-tokens",
        env = "AUDIT_INGEST_HTTP_TOKENS",
        default_value = "",
        hide_env_values = true
    )]
    pub tokens: String,
    /// Largest request body (bytes); larger ones get 413.
    #[arg(
        long = "http-max-body-bytes",
        env = "AUDIT_INGEST_HTTP_MAX_BODY_BYTES",
        default_value_t = 16 * 1024 * 1024
    )]
    pub max_body_bytes: usize,
    /// Longest time the door waits for a whole request body (seconds, ≥ 1). A sender that
    /// trickles its body slower gets 408 (`body_timeout`) and the connection is closed: a few
    /// slow clients cannot hold the door's connections and memory open indefinitely.
    #[arg(
        long = "http-body-timeout-secs",
        env = "AUDIT_INGEST_HTTP_BODY_TIMEOUT_SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub body_timeout_secs: u64,
    /// Most events in one request; more get 413.
    #[arg(
        long = "http-max-batch",
        env = "AUDIT_INGEST_HTTP_MAX_BATCH",
        default_value_t = 1000
    )]
    pub max_batch: usize,
    /// Events per second each token may submit (token bucket); over it, 429 with Retry-After.
    /// 0 disables the limit.
    #[arg(
        long = "http-rate-per-sec",
        env = "AUDIT_INGEST_HTTP_RATE_PER_SEC",
        default_value_t = 5000.0
    )]
    pub rate_per_sec: f64,
    /// Events a token may submit at once above its rate (bucket size).
    #[arg(
        long = "http-rate-burst",
        env = "AUDIT_INGEST_HTTP_RATE_BURST",
        default_value_t = 10000.0
    )]
    pub rate_burst: f64,
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
        assert!(!c.strict_labels, "unknown labels are kept by default");
        assert_eq!(c.http.addr, "", "the HTTP door is off unless configured");
        assert_eq!(c.http.max_batch, 1000);
        assert!(!c.otlp.enabled, "OTLP is off unless enabled");
        assert_eq!(c.otlp.grpc_addr, "0.0.0.0:4317");
        assert_eq!(c.otlp.http_addr, "0.0.0.0:4318");
        assert!(
            !c.registry.enabled(),
            "no registry unless configured: the compiled-in id table"
        );
        assert_eq!(c.registry.retry.max_attempts, 0, "registry outages wait");
    }

    #[test]
    fn the_doors_are_configured_from_a_file_and_flags_win() {
        let path = std::env::temp_dir().join(format!(
            "ingest-doors-{}-{}.toml",
            std::process::id(),
            line!()
        ));
        std::fs::write(
            &path,
            "[http]\naddr = \"127.0.0.1:18080\"\nmax_batch = 7\n\
             tokens_file = \"/etc/audit/tokens\"\n[otlp]\nenabled = true\n",
        )
        .expect("write config");
        let p = path.to_str().expect("utf-8 path");
        let c: Config =
            worker_runtime::config::load_from(["ingest", "--config", p, "--http-max-batch", "9"])
                .expect("load");
        assert_eq!(c.http.addr, "127.0.0.1:18080");
        assert_eq!(c.http.max_batch, 9, "the flag wins over the file");
        assert_eq!(
            c.http.tokens_file.as_deref(),
            Some(Path::new("/etc/audit/tokens"))
        );
        assert!(c.otlp.enabled);
        std::fs::write(&path, "[http]\nadress = \"x\"\n").expect("write config");
        let err = worker_runtime::config::load_from::<Config, _, _>(["ingest", "--config", p])
            .expect_err("unknown key");
        assert!(err.to_string().contains("adress"), "{err}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn the_schema_registry_is_configured_from_a_file_and_its_secret_never_prints() {
        let path = std::env::temp_dir().join(format!(
            "ingest-registry-{}-{}.toml",
            std::process::id(),
            line!()
        ));
        std::fs::write(
            &path,
            "[registry]\nurl = \"http://registry:8081\"\nusername = \"svc\"\n\
             password = \"hunter2\"\ncache_capacity = 50\n[registry.retry]\nmax_delay_ms = 500\n",
        )
        .expect("write config");
        let p = path.to_str().expect("utf-8 path");
        let c: Config = worker_runtime::config::load_from(["ingest", "--config", p]).expect("load");
        let _ = std::fs::remove_file(&path);
        assert!(c.registry.enabled());
        assert_eq!(c.registry.url, "http://registry:8081");
        assert_eq!(c.registry.password.expose(), "hunter2");
        assert_eq!(c.registry.cache_capacity, 50);
        assert_eq!(c.registry.retry.max_delay_ms, 500);
        let dumped = format!("{c:?}");
        assert!(!dumped.contains("hunter2"), "{dumped}");
    }

    #[test]
    fn strict_labels_from_flag_and_environment() {
        let c = Config::parse_from(["ingest", "--health-addr", "", "--strict-labels"]);
        assert!(c.strict_labels);
        let c = Config::parse_from(["ingest", "--health-addr", "", "--strict-labels=false"]);
        assert!(!c.strict_labels);
        // The environment path, through clap's own parsing of the variable (no process-wide
        // set_var: other tests run in parallel in this process).
        let cmd = <Config as clap::CommandFactory>::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "strict_labels")
            .expect("strict_labels argument");
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some("AUDIT_INGEST_STRICT_LABELS")
        );
    }
}
