//! Support for the end-to-end tests and the demo: a realistic event stream (the platform
//! lifecycle from the seeds), the in-process pipeline harness shared by the tests and the
//! pipeline bench, and small helpers to talk to the local stack.

pub mod demo;
pub mod harness;
pub mod stack;
