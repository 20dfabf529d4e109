//! The access log: one line per request on the `access` tracing target,
//! written when the response body has been sent (or abandoned), so it can
//! report the bytes sent and the whole latency.
//!
//! Fields: `client` (the client address the key was read from), `method`,
//! `path`, `key_hash` (hex, hash algorithms only), `key_fallback` (the
//! configured header or cookie was absent, so the client IP was hashed),
//! `new_session` (a sticky-cookie session id was issued with this response),
//! `backend`, `attempts`, `failed` (backends that failed before answering, in
//! the order tried), `status`, `bytes` (response body), `latency_ms` and
//! `outcome` (`complete`, `aborted` when the client went away, `upstream
//! error` when the backend broke off, `local` for the proxy's own answers).
//!
//! Nothing is allocated for it unless the `access` target is enabled at
//! `info` (it is by default; `RUST_LOG=info,access=off` turns it off).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::Method;

use crate::pool::InFlight;

/// Whether access-log lines are wanted at all.
pub fn enabled() -> bool {
    tracing::enabled!(target: "access", tracing::Level::INFO)
}

/// What one access-log line reports, gathered while the request runs.
#[derive(Debug)]
pub struct AccessRecord {
    /// The client address.
    pub client: IpAddr,
    /// Request method.
    pub method: Method,
    /// Request path (without the query).
    pub path: String,
    /// The key hash, for the hash algorithms.
    pub key_hash: Option<u64>,
    /// Whether the key fell back to the client IP.
    pub key_fallback: bool,
    /// Whether the client was issued a new sticky-cookie session.
    pub new_session: bool,
    /// The backend that answered, if any.
    pub backend: Option<Arc<str>>,
    /// Backends tried.
    pub attempts: u32,
    /// Backends that failed before answering, in order.
    pub failed: Vec<Arc<str>>,
    /// Response status.
    pub status: u16,
    /// When the request arrived.
    pub started: Instant,
}

impl AccessRecord {
    /// Writes the line.
    pub fn log(&self, bytes: u64, outcome: &str) {
        let failed: Vec<&str> = self.failed.iter().map(|b| &**b).collect();
        tracing::info!(
            target: "access",
            client = %self.client,
            method = %self.method,
            path = %self.path,
            key_hash = self.key_hash.map(|h| format!("{h:016x}")),
            key_fallback = self.key_fallback,
            new_session = self.new_session,
            backend = self.backend.as_deref(),
            attempts = self.attempts,
            failed = ?failed,
            status = self.status,
            bytes,
            latency_ms = self.started.elapsed().as_secs_f64() * 1e3,
            outcome,
        );
    }
}

/// What happens when a response body ends: the request stops counting as
/// in flight, and its access-log line is written.
#[derive(Debug)]
pub struct Finish {
    in_flight: InFlight,
    record: Option<AccessRecord>,
}

impl Finish {
    /// Ends `in_flight` and logs `record` (when given) at the end of the body.
    pub fn new(in_flight: InFlight, record: Option<AccessRecord>) -> Finish {
        Finish { in_flight, record }
    }

    /// The body is over after `bytes` bytes: `outcome` says how.
    pub fn done(self, bytes: u64, outcome: &str) {
        let Finish { in_flight, record } = self;
        drop(in_flight);
        if let Some(record) = record {
            record.log(bytes, outcome);
        }
    }
}
