//! The worker processes of the crash tests: the library's process control (shared with the
//! fault battery), re-exported under the path the tests use.

pub use integration_tests::procs::*;
