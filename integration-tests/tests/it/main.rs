//! End-to-end tests of the audit pipeline against the real local stack (tansu on SQLite,
//! ClickHouse, SeaweedFS), started by `deploy/local/stack.sh up` (the README's test command
//! does that first). One test binary; every test has its own topics, consumer groups,
//! ClickHouse database and archive prefix, and waits on conditions with deadlines.

mod battery;
mod crash;
mod e2e;
pub use integration_tests::harness;
mod otlp_timeline;
mod privacy;
mod procs;
mod registry;
mod traces;
