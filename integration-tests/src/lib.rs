//! Support for the end-to-end tests and the demo: a realistic event stream (the platform
//! lifecycle from the seeds), and small helpers to talk to the local stack.

pub mod demo;
pub mod stack;
