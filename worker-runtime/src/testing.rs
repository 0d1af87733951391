//! Test support shared by the crates' real-server tests (feature `testing`; never in a worker).

pub mod proxy;
pub mod topic;
