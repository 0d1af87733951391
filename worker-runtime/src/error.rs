use thiserror::Error;

/// Errors of the shared runtime. Each variant says what was being done.
#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("loading configuration (file {file:?}): {source}")]
    Config {
        file: Option<std::path::PathBuf>,
        #[source]
        source: Box<figment::Error>,
    },
    #[error("kafka: {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("telemetry setup: {0}")]
    Telemetry(String),
    #[error("health server on {addr}: {source}")]
    Health {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("task `{task}` failed: {message}")]
    Task { task: String, message: String },
    #[error("task `{task}` panicked")]
    TaskPanicked { task: String },
    #[error("shutdown did not finish within {0:?}")]
    ShutdownTimeout(std::time::Duration),
    #[error("{context}: timed out after {after:?}")]
    Timeout {
        context: String,
        after: std::time::Duration,
    },
}

impl RuntimeError {
    pub fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        RuntimeError::Kafka {
            context: context.into(),
            source,
        }
    }
}
