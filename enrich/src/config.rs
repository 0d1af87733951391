//! Enrich's configuration (defaults < `--config` TOML file < environment < command line).

use std::path::Path;

use serde::{Deserialize, Serialize};
use worker_runtime::config::{CommonArgs, WorkerConfig};
use worker_runtime::kafka::KafkaArgs;

/// Fills user and team context into validated events (`<prefix>validated` → `<prefix>enriched`).
#[derive(Debug, Clone, clap::Parser, Serialize, Deserialize)]
#[command(name = "enrich", version, about)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group reading `<prefix>validated`. (The context topics are read without a
    /// group: every instance needs all of them.)
    #[arg(long, env = "AUDIT_ENRICH_GROUP_ID", default_value = "audit-enrich")]
    pub group_id: String,
    /// Input records whose outputs are not yet acknowledged by the broker, at most.
    #[arg(long, env = "AUDIT_ENRICH_MAX_IN_FLIGHT", default_value_t = 1000)]
    pub max_in_flight: usize,
    /// Memory bound of the user cache (approximate bytes of keys and records; 512 MiB holds
    /// about 2 million typical users). Evictions are counted in
    /// `audit_enrich_context_evicted_total`: any eviction means enrichment may miss users that
    /// exist, so size this above the whole `<prefix>context.users` topic.
    #[arg(long, env = "AUDIT_ENRICH_USERS_CACHE_MAX_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub users_cache_max_bytes: u64,
    /// Memory bound of the team cache (approximate bytes), as for the user cache.
    #[arg(long, env = "AUDIT_ENRICH_TEAMS_CACHE_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub teams_cache_max_bytes: u64,
    /// How long start-up may take to load both context topics up to the end they had at start
    /// (seconds). Events are consumed only after that, so enrichment right after a start is not
    /// degraded; if the load does not finish in time, the worker exits with an error.
    #[arg(
        long,
        env = "AUDIT_ENRICH_CATCH_UP_TIMEOUT_SECS",
        default_value_t = 300
    )]
    pub catch_up_timeout_secs: u64,
    /// Privacy rules (docs/privacy.md): on when a tokenization key is configured.
    #[command(flatten)]
    pub privacy: crate::privacy::PrivacyArgs,
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
    fn defaults() {
        let c = Config::parse_from(["enrich", "--health-addr", "", "--topic-prefix", "x."]);
        assert_eq!(c.group_id, "audit-enrich");
        assert_eq!(c.kafka.topics().context_users, "x.context.users");
        assert_eq!(c.catch_up_timeout_secs, 300);
        assert!(
            c.privacy.privacy_token_key.is_empty(),
            "privacy off by default"
        );
        assert_eq!(c.privacy.privacy_key_cache_ttl_secs, 60);
    }

    #[test]
    fn privacy_options_come_from_the_config_file_too() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("enrich.toml");
        std::fs::write(
            &path,
            "[privacy]\nprivacy_token_key_id = \"t7\"\nprivacy_key_cache_ttl_secs = 5\n\
             privacy_retired_token_key_files = [\"t6=/keys/t6\"]\n",
        )
        .expect("write");
        let path = path.display().to_string();
        let c: Config =
            worker_runtime::config::load_from(["enrich", "--config", &path]).expect("config");
        assert_eq!(c.privacy.privacy_token_key_id, "t7");
        assert_eq!(c.privacy.privacy_key_cache_ttl_secs, 5);
        assert_eq!(c.privacy.privacy_retired_token_key_files, ["t6=/keys/t6"]);
        std::fs::write(
            dir.path().join("enrich.toml"),
            "[privacy]\nprivacy_colour = 1\n",
        )
        .expect("write");
        assert!(
            worker_runtime::config::load_from::<Config, _, _>(["enrich", "--config", &path])
                .is_err(),
            "unknown keys are refused"
        );
    }
}
