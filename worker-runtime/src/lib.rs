//! Mechanics every audit worker shares, so that a worker's own crate reads like its job
//! description: configuration (file + env + CLI), telemetry, shutdown, retry with backoff,
//! health/metrics endpoints, and Kafka plumbing whose one rule is *store an input offset only
//! after everything before it is durable downstream*.

#[cfg(feature = "clickhouse")]
pub mod clickhouse;
pub mod config;
pub mod error;
pub mod health;
pub mod kafka;
#[cfg(feature = "object-store")]
pub mod object_store;
pub mod retry;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::RuntimeError;
pub use secret::Secret;
pub use shutdown::Shutdown;
pub use tokio_util::sync::CancellationToken;
