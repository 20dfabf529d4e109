//! affinity: a consistent-hashing, session-affinity HTTP load balancer.
//!
//! The crate is seven parts, one folder each. A request crosses them top to
//! bottom: the [`listener`] accepts it, the [`proxy`] routes it with the
//! [`pool`]s' current routing and snapshots, which pick a backend with the algorithms of
//! [`balance`]; [`config`] is what the operator wrote, [`admin`] what the
//! operator sees, and [`entry`] the command line.
//!
//! | part | job |
//! |---|---|
//! | [`balance`] | the pure core: key hashing, members, Maglev, the ring, selectors and fallback orders, the classic policies, request keys, churn arithmetic. No I/O, no clock, no tokio or hyper |
//! | [`config`] | the TOML file → one validated, typed [`config::Config`]; every error with file, line, column and field |
//! | [`pool`] | what requests see: the routing (which pool a listener, host and path lead to) and each pool's immutable snapshot, each behind an `ArcSwap`, and what publishes new ones (health checks, reloads) |
//! | [`proxy`] | one request's path: route → key → pick → forward → stream back; retries, errors to statuses, tunnels, hop-by-hop rules, framing watch, access record |
//! | [`listener`] | sockets and processes: accept, workers, connection limits, reload, drain |
//! | [`admin`] | what operators and their tools see: status page, `/status`, `/lookup`, Prometheus metrics |
//! | [`entry`] | the command line and the demo backends |
//!
//! Who may use whom (and nothing else): entry → listener, config, balance ·
//! listener → proxy, pool, admin, config · proxy → pool, balance, config ·
//! admin → pool, balance, config · pool → balance, config · config →
//! balance. `balance` uses nothing else of the crate, so it could be a crate
//! of its own; no two files import each other, directly or in a circle; and
//! no function of the request path ([`proxy`]) is longer than a screen. The
//! integration test `architecture` (`cargo test architecture`) checks every
//! one of these rules on the source.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod balance;
pub mod config;
pub mod entry;
pub mod listener;
pub mod pool;
pub mod proxy;
