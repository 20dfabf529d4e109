//! The request path: from a client's request to a backend's response.
//!
//! For each request the proxy loads the pool [`Snapshot`](crate::pool::Snapshot) once, then:
//! 1. removes the hop-by-hop headers ([`headers::strip_hop_by_hop`]) and, for
//!    an HTTP/2 or absolute-form request without `Host`, sets `Host` from the
//!    request's authority (so `Host` reaches the backend as the client meant
//!    it);
//! 2. reads the request key and hashes it (hash algorithms only; see
//!    [`key`](crate::balance::key)); with `[balancer.sticky_cookie]`, the key is that
//!    cookie, and a request without it gets a new random session id as its
//!    key and, on the backend's response, a `Set-Cookie` carrying it;
//! 3. sets `X-Forwarded-For`, `-Proto` and `-Host` ([`headers::set_forwarded`]);
//! 4. sends the request to the selector's first choice with the body
//!    streaming through, and returns the response head as soon as it arrives,
//!    its body streaming back with the hop-by-hop headers removed.
//!
//! When the response body ends (or the proxy has answered itself), the
//! request is counted in the pool's [stats](crate::pool::stats) and, with the
//! access log on, logged ([`access`]), with why it did not simply go to its
//! key's first choice (first choice down, bounded load, a failed try).
//!
//! # Upgrades
//! A request that [asks to upgrade](headers::is_upgrade_request) (HTTP/1.1,
//! `Connection: upgrade` and an `Upgrade` header, as a WebSocket handshake
//! does) keeps its `Upgrade` header and goes to the backend with `Connection:
//! upgrade`; every other hop-by-hop header is removed as usual. It is keyed,
//! routed, retried and timed out like any other request. Then:
//! * the backend answers `101 Switching Protocols` (with an `Upgrade`
//!   header): the client gets the `101` with `Upgrade` and `Connection:
//!   upgrade` kept, and the two connections become a [tunnel] that copies
//!   bytes both ways until either side closes. The backend counts the tunnel
//!   as a request in flight until it ends, and the access-log line is written
//!   then;
//! * the backend answers anything else: an ordinary response, hop-by-hop
//!   headers (`Upgrade` included) removed; the client's connection stays
//!   plain HTTP.
//!
//! A `101` to a request that did not ask to upgrade, or one without an
//! `Upgrade` header, makes no tunnel: the client gets `502`. HTTP/2 clients
//! cannot upgrade (the request is forwarded as an ordinary one).
//!
//! # Failures
//! * Connect failure (refused, unreachable, `connect_timeout`): counted
//!   against the backend's health as a failed probe (see [`crate::pool::health`]).
//!   The request never reached the backend, so it is retried, with its body, whatever its
//!   method, on the next backend: the key's next backend in its fallback order
//!   (hash algorithms) or the policy's next pick, never one already tried, up
//!   to `upstream.retries` times.
//! * No healthy backend, or every healthy backend refused the connection:
//!   `503`. Retries used up while untried backends remain: `502`.
//! * The backend closed or reset the connection before any answer, for an
//!   idempotent request whose body was never read: sent once more to the
//!   same backend on another connection (usually a pooled keep-alive
//!   connection the backend closed just as the request went out; RFC 9110
//!   §9.2.2 allows it), before anything below applies.
//! * Any other upstream error (the backend accepted the connection, then
//!   broke it off before a response head): retried the same way only for an
//!   idempotent method (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`)
//!   whose body was never read, since the backend may have acted on the
//!   request; otherwise `502`.
//! * No response head within `upstream.request_timeout` of the request's
//!   arrival (all attempts together): `504`.
//! * A backend's own error status (say `500`) is its answer and is passed
//!   through untouched.
//! * A `101` that cannot start a tunnel (see above): `502`.
//!
//! [`error_response`] is the one place where a [`ProxyError`] becomes a
//! status.
//!
//! # Where each step lives
//! | file | step |
//! |---|---|
//! | [`handler`] | [`Proxy::handle`]: the request from arrival to response, and the response or error the client gets |
//! | [`request`] | checks and hop-by-hop rules on the client's request |
//! | [`session`] | the request's key and sticky-cookie sessions |
//! | [`forward`] | pick the next backend, attempt, classify the failure, decide |
//! | [`retry`] | the retry state of one request: tried backends, retries left, resend once |
//! | [`failure`] | what a failed attempt was, from its error |
//! | [`upstream`] | backend connections, kept alive per worker |
//! | [`request_body`] and [`response_body`] | bodies streaming through |
//! | [`tunnel`] | upgraded connections copied both ways |
//! | [`tcp`] | one connection of a `tcp` listener: keyed by client address, connected along its fallback order, relayed |
//! | [`relay`] | TCP connections (`tcp` listeners) copied both ways, with half-close, idle timeout and shutdown |
//! | [`headers`] | hop-by-hop and `X-Forwarded-*` headers |
//! | [`framing`] | the raw-bytes watch for ambiguous framing |
//! | [`access`] | the end of a request: counters and the access-log line |
//! | [`error`] | [`ProxyError`] and the statuses it becomes |

pub mod access;
pub mod error;
pub mod failure;
pub mod forward;
pub mod framing;
pub mod handler;
pub mod headers;
pub mod prefixed;
pub mod relay;
pub mod request;
pub mod request_body;
pub mod response_body;
pub mod retry;
pub mod session;
pub mod tcp;
pub mod tunnel;
pub mod upstream;

pub use error::{ProxyError, error_response};
pub use handler::Proxy;
