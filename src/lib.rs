//! affinity: a consistent-hashing, session-affinity HTTP load balancer.
//!
//! The crate is split into a pure core (hashing, tables, selection policies,
//! configuration) with no I/O, and a thin I/O shell built on tokio and hyper.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod churn;
pub mod config;
pub mod hash;
pub mod maglev;
pub mod member;
pub mod policy;
pub mod ring;
pub mod selector;
