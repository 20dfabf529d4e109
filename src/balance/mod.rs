//! The pure core: how a request's key becomes a backend.
//!
//! Everything here is a function of plain values: no I/O, no clock, no
//! tokio or hyper (only the `http` crate's types for a request's URI and
//! headers), and nothing else of the crate, so it is tested with plain values
//! and could be published as a crate of its own. The shell ([`crate::pool`],
//! [`crate::proxy`]) feeds it live state (health, requests in flight) as
//! plain numbers.
//!
//! * [`hash`]: SipHash of key bytes and member names;
//! * [`member`]: a backend as the tables see it (name and weight);
//! * [`maglev`] and [`ring`]: the two consistent-hash tables;
//! * [`selector`]: one interface over both, with health applied and
//!   fallback orders;
//! * [`policy`]: the classic policies (round robin, least connections, ...);
//! * [`algorithm`]: the algorithms as the config names them;
//! * [`key`]: which bytes of a request are hashed;
//! * [`route`]: which route a request takes, by host and path;
//! * [`churn`]: the disruption arithmetic behind `affinity --churn`.
//!
//! (Not named `core`, which would shadow Rust's own `core` crate.)

pub mod algorithm;
pub mod churn;
pub mod hash;
pub mod key;
pub mod maglev;
pub mod member;
pub mod policy;
pub mod ring;
pub mod route;
pub mod selector;
pub mod slow_start;
