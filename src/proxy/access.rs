//! The end of a request: its metrics and its access-log line, written when
//! the response body has been sent (or abandoned), so both can report the
//! whole latency and the log the bytes sent.
//!
//! The access log is one line per request on the `access` tracing target.
//! Fields: `client` (the client address the key was read from), `method`,
//! `path`, `key_hash` (hex, hash algorithms only: never the key itself, which
//! may be a session id), `key_fallback` (the configured header or cookie was
//! absent, so the client IP was hashed), `new_session` (a sticky-cookie
//! session id was issued with this response), `pool` and `route` (the pool
//! the request was routed to and the pattern of the route that took it
//! there, such as `shop.example.com/api`; no `route` when the listener's
//! default pool took it, neither for a `404`), `backend`, `attempts`,
//! `fallback` (why the request did not simply go to its key's first choice,
//! comma-separated in the order it happened, or `none`: see [`Fallback`]),
//! `failed` (backends that failed before answering, in the order tried),
//! `status`, `bytes_in` (request body bytes read from the client),
//! `bytes_out` (response body bytes sent), `latency_ms` and `outcome`
//! (`complete`, `aborted` when the client went away, `upstream error` when
//! the backend broke off, `local` for the proxy's own answers).
//!
//! It is off unless the `access` target is enabled at `info`: the `affinity`
//! command's default filter is `info,access=off`; `RUST_LOG=info,access=info`
//! turns it on (`RUST_LOG=access=info` alone: the access lines and no
//! others). While it is off nothing is allocated for it; the metrics are
//! recorded either way.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::Method;

use crate::pool::checks::HealthReporter;
use crate::pool::{InFlight, Pool};

/// Whether access-log lines are wanted at all.
pub fn enabled() -> bool {
    tracing::enabled!(target: "access", tracing::Level::INFO)
}

/// Why a request went elsewhere than its key's first choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The key's first choice was unhealthy (hash algorithms).
    Unhealthy,
    /// The key's pick was at its bounded-load cap (hash algorithms).
    BoundedLoad,
    /// The key's first choice is draining (hash algorithms).
    Draining,
    /// The key's pick is in slow start and has not taken it back yet.
    SlowStart,
    /// Connecting to the backend tried failed: the next one was tried.
    ConnectError,
    /// The backend tried broke off the exchange before a response: the
    /// next one was tried.
    UpstreamError,
    /// The backend was at `limits.max_in_flight_per_backend`: skipped.
    Full,
}

impl Fallback {
    /// Its name in the access log and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Unhealthy => "unhealthy",
            Fallback::BoundedLoad => "bounded_load",
            Fallback::Draining => "draining",
            Fallback::SlowStart => "slow_start",
            Fallback::ConnectError => "connect_error",
            Fallback::UpstreamError => "upstream_error",
            Fallback::Full => "backend_full",
        }
    }
}

/// A list of fallbacks as the access log writes it: comma-separated, or
/// `none`.
struct Fallbacks<'a>(&'a [Fallback]);

impl fmt::Display for Fallbacks<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, fallback) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(fallback.as_str())?;
        }
        Ok(())
    }
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
    /// The pool the request was routed to; `None`: no route.
    pub pool: Option<Arc<str>>,
    /// The route that took it there (its pattern); `None`: no route
    /// matched (a `404`, or the listener's default pool).
    pub route: Option<Arc<str>>,
    /// The backend that answered, if any.
    pub backend: Option<Arc<str>>,
    /// Backends tried.
    pub attempts: u32,
    /// Why the request did not go to its key's first choice, in order.
    pub fallback: Vec<Fallback>,
    /// Backends that failed before answering, in order.
    pub failed: Vec<Arc<str>>,
    /// Response status.
    pub status: u16,
    /// Request body bytes read so far (shared with the body being sent).
    pub bytes_in: Arc<AtomicU64>,
    /// When the request arrived.
    pub started: Instant,
}

impl AccessRecord {
    /// The record of a request from `client` that no pool took: what is
    /// known before routing.
    pub fn new(
        client: IpAddr,
        parts: &hyper::http::request::Parts,
        started: Instant,
    ) -> AccessRecord {
        AccessRecord {
            client,
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            key_hash: None,
            key_fallback: false,
            new_session: false,
            pool: None,
            route: None,
            backend: None,
            attempts: 0,
            fallback: Vec::new(),
            failed: Vec::new(),
            status: 0,
            bytes_in: Arc::new(AtomicU64::new(0)),
            started,
        }
    }

    /// Writes the line; `bytes_out` response body bytes were sent.
    pub fn log(&self, bytes_out: u64, outcome: &str) {
        tracing::info!(
            target: "access",
            client = %self.client,
            method = %self.method,
            path = %self.path,
            key_hash = self.key_hash.map(|h| format!("{h:016x}")),
            key_fallback = self.key_fallback,
            new_session = self.new_session,
            pool = self.pool.as_deref(),
            route = self.route.as_deref(),
            backend = self.backend.as_deref(),
            attempts = self.attempts,
            fallback = %Fallbacks(&self.fallback),
            failed = %FailedList(&self.failed),
            status = self.status,
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            latency_ms = latency_ms(self.started.elapsed()),
            outcome,
        );
    }
}

/// Milliseconds, rounded to the microsecond: `12.914`, never float noise
/// such as `12.913367000000001`.
fn latency_ms(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1e6).round() / 1e3
}

/// Backend names as a JSON array (`["a","b"]`): readable in text lines, and
/// an array in JSON ones (the JSON log embeds this field as JSON).
struct FailedList<'a>(&'a [Arc<str>]);

impl fmt::Display for FailedList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|b| &**b).collect();
        match serde_json::to_string(&names) {
            Ok(json) => f.write_str(&json),
            Err(_) => f.write_str("[]"),
        }
    }
}

/// A backend's answer, as the metrics count it when it finishes.
#[derive(Debug)]
pub struct Answered {
    /// The pool whose metrics count it.
    pub pool: Arc<Pool>,
    /// The backend that answered.
    pub backend: Arc<str>,
    /// The status the client got.
    pub status: u16,
    /// When the request arrived.
    pub started: Instant,
    /// Where a response cut off by its backend is reported, if anywhere.
    pub health: Option<HealthReporter>,
}

/// The outcome of a response body that its backend broke off: counted
/// against the backend's health.
pub const UPSTREAM_ERROR: &str = "upstream error";

/// What happens when a response body ends: the request stops counting as
/// in flight, its metrics and its backend's last minute are recorded, and
/// its access-log line is written.
#[derive(Debug)]
pub struct Finish {
    in_flight: InFlight,
    answered: Answered,
    /// Boxed: it is there only with the access log on, and would otherwise
    /// make every response body several times larger.
    record: Option<Box<AccessRecord>>,
}

impl Finish {
    /// Ends `in_flight`, counts `answered`, and logs `record` (when given)
    /// at the end of the body.
    pub fn new(in_flight: InFlight, answered: Answered, record: Option<AccessRecord>) -> Finish {
        Finish {
            in_flight,
            answered,
            record: record.map(Box::new),
        }
    }

    /// The body is over after `bytes` bytes: `outcome` says how.
    pub fn done(self, bytes: u64, outcome: &str) {
        let Finish {
            in_flight,
            answered,
            record,
        } = self;
        // One clock read for both the metrics and the last minute.
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(answered.started);
        answered.pool.stats().backend_request_finished(
            in_flight.metrics(),
            answered.pool.name(),
            &answered.backend,
            answered.status,
            elapsed,
        );
        in_flight.finish(answered.status, elapsed, answered.pool.ns_at(now));
        if outcome == UPSTREAM_ERROR
            && let Some(health) = &answered.health
            && let Some(backend) = answered.pool.snapshot().backend(&answered.backend)
        {
            health.request_failed(
                &answered.backend,
                backend.authority(),
                "the backend cut off its response",
            );
        }
        if let Some(record) = record {
            record.log(bytes, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_rounded_to_the_microsecond() {
        assert_eq!(latency_ms(Duration::from_nanos(12_913_367)), 12.913);
        assert_eq!(latency_ms(Duration::from_nanos(12_913_500)), 12.914);
        assert_eq!(latency_ms(Duration::ZERO), 0.0);
        assert_eq!(latency_ms(Duration::from_millis(1500)).to_string(), "1500");
    }

    #[test]
    fn failed_backends_are_a_json_array_of_names() {
        assert_eq!(FailedList(&[]).to_string(), "[]");
        let failed: Vec<Arc<str>> = vec![Arc::from("a"), Arc::from("b\"c")];
        assert_eq!(FailedList(&failed).to_string(), r#"["a","b\"c"]"#);
    }

    #[test]
    fn fallbacks_are_written_comma_separated_or_as_none() {
        assert_eq!(Fallbacks(&[]).to_string(), "none");
        assert_eq!(
            Fallbacks(&[Fallback::Unhealthy, Fallback::ConnectError]).to_string(),
            "unhealthy,connect_error"
        );
        assert_eq!(
            Fallbacks(&[Fallback::BoundedLoad, Fallback::UpstreamError]).to_string(),
            "bounded_load,upstream_error"
        );
    }
}
