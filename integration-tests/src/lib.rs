//! Support for the end-to-end tests and the demo: a realistic event stream (the platform
//! lifecycle from the seeds), the in-process pipeline harness shared by the tests and the
//! pipeline bench, the worker binaries as processes (crash tests, fault battery), the fault
//! battery, a schema-registry REST fixture, and small helpers to talk to the local stack.

pub mod battery;
pub mod bench;
pub mod demo;
pub mod harness;
pub mod procs;
pub mod registry_fixture;
pub mod stack;
