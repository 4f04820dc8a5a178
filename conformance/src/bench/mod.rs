//! The pieces of `cni-bench` (only that binary uses them).

pub mod nets;
pub mod proc;
pub mod report;
pub mod rootless;
pub mod scenarios;
pub mod stats;
pub mod tuning;
