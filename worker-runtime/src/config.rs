//! Configuration: one serde + clap struct per worker, layered
//! `defaults < config file (TOML) < environment < command line`.
//!
//! Every option is a clap argument with `env = …` and a doc comment, so `--help` documents the
//! whole configuration; a config file holds the same keys (nested sections for flattened groups,
//! e.g. `[kafka] brokers = "…"`). Unknown keys in the file are rejected (`deny_unknown_fields`),
//! because a misspelt key silently falling back to its default is how audit data gets lost.

use crate::error::RuntimeError;
use clap::parser::ValueSource;
use clap::ArgMatches;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// A worker configuration that can name a config file.
pub trait WorkerConfig: clap::Parser + Serialize + DeserializeOwned {
    /// The `--config` path, if one was given.
    fn config_file(&self) -> Option<&Path>;
}

/// Parses the process's arguments and environment, then layers the config file under them.
pub fn load<C: WorkerConfig>() -> Result<C, RuntimeError> {
    load_from(std::env::args_os())
}

/// [`load`] with explicit arguments (for tests and embedding).
pub fn load_from<C, I, T>(args: I) -> Result<C, RuntimeError>
where
    C: WorkerConfig,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = C::command().get_matches_from(args);
    let parsed = match C::from_arg_matches(&matches) {
        Ok(parsed) => parsed,
        Err(e) => e.exit(),
    };
    let Some(file) = parsed.config_file().map(Path::to_path_buf) else {
        return Ok(parsed);
    };
    layer_file(&parsed, &matches, &file)
}

fn layer_file<C: WorkerConfig>(
    parsed: &C,
    matches: &ArgMatches,
    file: &Path,
) -> Result<C, RuntimeError> {
    let config_error = |source: figment::Error| RuntimeError::Config {
        file: Some(file.to_path_buf()),
        source: Box::new(source),
    };
    // What the user set explicitly (flag or env) wins over the file; clap's defaults do not.
    let explicit: HashSet<String> = matches
        .ids()
        .filter(|id| {
            matches!(
                matches.value_source(id.as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .map(|id| id.as_str().to_owned())
        .collect();
    let all = serde_json::to_value(parsed)
        .map_err(|e| config_error(figment::Error::from(format!("serialising defaults: {e}"))))?;
    let overrides = keep_leaves(&all, &explicit);
    Figment::from(Serialized::defaults(all))
        .merge(Toml::file_exact(file))
        .merge(Serialized::defaults(overrides))
        .extract::<C>()
        .map_err(config_error)
}

/// Keeps the leaves (non-object values) whose key is in `keep`, preserving nesting.
fn keep_leaves(value: &serde_json::Value, keep: &HashSet<String>) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            match v {
                serde_json::Value::Object(_) => {
                    let nested = keep_leaves(v, keep);
                    if nested.as_object().is_some_and(|m| !m.is_empty()) {
                        out.insert(k.clone(), nested);
                    }
                }
                _ if keep.contains(k) => {
                    out.insert(k.clone(), v.clone());
                }
                _ => {}
            }
        }
    }
    serde_json::Value::Object(out)
}

/// Options every worker has.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonArgs {
    /// TOML config file; its keys mirror the long options (groups as `[sections]`).
    /// Command-line flags and environment variables override it.
    #[arg(long = "config", env = "AUDIT_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address of the health/metrics HTTP server (`/healthz`, `/readyz`, `/metrics`);
    /// empty disables it.
    #[arg(long, env = "AUDIT_HEALTH_ADDR", default_value = "0.0.0.0:9090")]
    pub health_addr: String,
    /// How long a graceful shutdown may take to drain in-flight work and commit offsets
    /// before the worker exits anyway (seconds). A second SIGTERM/SIGINT exits at once.
    #[arg(long, env = "AUDIT_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::KafkaArgs;
    use std::io::Write;

    #[derive(Debug, clap::Parser, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TestConfig {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// A worker option.
        #[arg(long, env = "TEST_CFG_BATCH", default_value_t = 10)]
        batch: u32,
    }

    impl WorkerConfig for TestConfig {
        fn config_file(&self) -> Option<&Path> {
            self.common.config.as_deref()
        }
    }

    fn write_file(text: &str) -> tempfile_path::TempPath {
        let p = tempfile_path::TempPath::new();
        std::fs::File::create(&p.0)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("write temp config");
        p
    }

    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn new() -> Self {
                let n = std::process::id() as u128 * 1_000_000
                    + std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos() % 1_000_000)
                        .unwrap_or(0);
                TempPath(std::env::temp_dir().join(format!("wr-config-{n}.toml")))
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn defaults_without_file() {
        let c: TestConfig = load_from(["w"]).expect("load");
        assert_eq!(c.batch, 10);
        assert_eq!(c.kafka.security_protocol, "plaintext");
    }

    #[test]
    fn file_overrides_defaults_and_flags_override_file() {
        // Keys whose environment variables no test environment exports (deploy/local/env.sh
        // exports the broker and topic prefix, and the environment rightly beats the file).
        let f = write_file(
            "batch = 77\n[kafka]\nsecurity_protocol = \"ssl\"\nsasl_mechanism = \"PLAIN\"\n",
        );
        let path = f.0.to_str().expect("utf8 path").to_owned();
        let c: TestConfig = load_from(["w", "--config", &path]).expect("load");
        assert_eq!(c.batch, 77);
        assert_eq!(c.kafka.security_protocol, "ssl");
        assert_eq!(c.kafka.sasl_mechanism, "PLAIN");
        let c: TestConfig = load_from([
            "w",
            "--config",
            &path,
            "--batch",
            "5",
            "--kafka-security-protocol",
            "sasl_ssl",
        ])
        .expect("load");
        assert_eq!(c.batch, 5);
        assert_eq!(c.kafka.security_protocol, "sasl_ssl");
        assert_eq!(
            c.kafka.sasl_mechanism, "PLAIN",
            "file value kept where no flag"
        );
    }

    #[test]
    fn unknown_keys_in_file_are_rejected() {
        let f = write_file("batchh = 77\n");
        let path = f.0.to_str().expect("utf8 path").to_owned();
        let err = load_from::<TestConfig, _, _>(["w", "--config", &path]).expect_err("must fail");
        assert!(err.to_string().contains("batchh"), "{err}");
    }
}
