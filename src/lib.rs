//! affinity: a consistent-hashing, session-affinity HTTP load balancer.
//!
//! The crate is split into a pure core (hashing, tables, selection policies,
//! configuration, request keys, header rewriting) with no I/O, and a thin I/O
//! shell built on tokio and hyper (the pool snapshot, the proxy, the
//! listener, the health checks, the admin endpoint, the demo backends).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod admin;
pub mod body;
pub mod churn;
pub mod config;
pub mod demo;
pub mod framing;
pub mod hash;
pub mod headers;
pub mod health;
pub mod key;
pub mod maglev;
pub mod member;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod ring;
pub mod selector;
pub mod server;
pub mod tunnel;
pub mod upstream;
