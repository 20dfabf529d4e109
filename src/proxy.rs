//! The request path: from a client's request to a backend's response.
//!
//! For each request the proxy loads the pool [`Snapshot`] once, then:
//! 1. removes the hop-by-hop headers ([`headers::strip_hop_by_hop`]) and, for
//!    an HTTP/2 or absolute-form request without `Host`, sets `Host` from the
//!    request's authority (so `Host` reaches the backend as the client meant
//!    it);
//! 2. reads the request key and hashes it (hash algorithms only; see
//!    [`key`]); with `[balancer.sticky_cookie]`, the key is that
//!    cookie, and a request without it gets a new random session id as its
//!    key and, on the backend's response, a `Set-Cookie` carrying it;
//! 3. sets `X-Forwarded-For`, `-Proto` and `-Host` ([`headers::set_forwarded`]);
//! 4. sends the request to the selector's first choice with the body
//!    streaming through, and returns the response head as soon as it arrives,
//!    its body streaming back with the hop-by-hop headers removed.
//!
//! When the response body ends (or the proxy has answered itself), the
//! request is counted in the pool's [metrics](crate::metrics) and, with the
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
//!   upgrade` kept, and the two connections become a [tunnel](crate::tunnel) that copies
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
//!   against the backend's health as a failed probe (see [`crate::health`]).
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

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use hyper::body::{Body, Incoming};
use hyper::header::{
    CONNECTION, CONTENT_TYPE, HOST, HeaderValue, SET_COOKIE, TRANSFER_ENCODING, UPGRADE,
};
use hyper::http::request::Parts;
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};

use crate::access::{self, AccessRecord, Answered, Fallback, Finish};
use crate::body::{BodyTooLarge, ProxyBody, RecoverableBody, Recovery, UpstreamBody};
use crate::config::StickyCookieConfig;
use crate::framing::AmbiguousRequest;
use crate::headers;
use crate::health::HealthReporter;
use crate::key::{self, KeyOrigin};
use crate::pool::{InFlight, Pool, Snapshot};
use crate::tunnel::Tunnels;
use crate::upstream::{self, Connection, UpstreamError};

/// Why the proxy answered a request itself instead of with a backend's
/// response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The snapshot has no healthy backend.
    #[error("no healthy backend")]
    NoHealthyBackend,
    /// Every healthy backend was tried and refused the connection.
    #[error("every healthy backend refused the connection ({tried} tried)")]
    AllBackendsFailed {
        /// Backends tried.
        tried: usize,
    },
    /// Connecting failed and no retry was left.
    #[error("cannot connect to backend {backend}")]
    Connect {
        /// The last backend tried.
        backend: Arc<str>,
        /// What went wrong.
        #[source]
        source: UpstreamError,
    },
    /// The backend was reached but the exchange failed.
    #[error("backend {backend} failed")]
    Upstream {
        /// The backend.
        backend: Arc<str>,
        /// What went wrong.
        #[source]
        source: UpstreamError,
    },
    /// No response head within `upstream.request_timeout`.
    #[error("backend {backend} sent no response within {}", humantime::format_duration(*timeout))]
    Timeout {
        /// The backend waited for.
        backend: Arc<str>,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The backend answered `101 Switching Protocols` where no tunnel can
    /// follow.
    #[error("backend {backend} switched protocols {why}")]
    UnexpectedSwitch {
        /// The backend.
        backend: Arc<str>,
        /// What was wrong with the switch.
        why: &'static str,
    },
    /// Every backend the request could go to is at
    /// `limits.max_in_flight_per_backend`.
    #[error("every backend is at its limit of requests in flight ({full} full)")]
    AllBackendsFull {
        /// Backends skipped because they were full.
        full: usize,
    },
    /// The request body is larger than `limits.max_body_bytes`.
    #[error(transparent)]
    BodyTooLarge(#[from] BodyTooLarge),
    /// A request the proxy refuses to forward as it is (RFC 9112): no or
    /// several `Host` headers, a malformed request body.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A transfer coding other than `chunked` (RFC 9112 §6.1).
    #[error("transfer coding not implemented: {0}")]
    UnsupportedTransferCoding(String),
    /// A method a reverse proxy does not forward (`CONNECT`).
    #[error("{0} requests are not supported")]
    UnsupportedMethod(Method),
}

impl ProxyError {
    /// Whether the request itself was at fault (a 4xx): logged quietly, as
    /// clients can send these at will.
    pub fn is_clients_fault(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::UnsupportedTransferCoding(_)
                | ProxyError::BodyTooLarge(_)
                | ProxyError::UnsupportedMethod(_)
        )
    }

    /// The backend whose failure the error is, if one is to blame (the
    /// metrics count the answer against it).
    pub fn backend(&self) -> Option<&Arc<str>> {
        match self {
            ProxyError::Connect { backend, .. }
            | ProxyError::Upstream { backend, .. }
            | ProxyError::Timeout { backend, .. }
            | ProxyError::UnexpectedSwitch { backend, .. } => Some(backend),
            ProxyError::NoHealthyBackend
            | ProxyError::AllBackendsFailed { .. }
            | ProxyError::AllBackendsFull { .. }
            | ProxyError::BodyTooLarge(_)
            | ProxyError::BadRequest(_)
            | ProxyError::UnsupportedTransferCoding(_)
            | ProxyError::UnsupportedMethod(_) => None,
        }
    }
}

/// The response the client gets for `error`: a status and a short text body.
/// The only place where proxy errors become statuses.
pub fn error_response(error: &ProxyError) -> Response<ProxyBody> {
    let (status, text) = match error {
        ProxyError::NoHealthyBackend | ProxyError::AllBackendsFailed { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "no healthy backend\n")
        }
        ProxyError::Connect { .. }
        | ProxyError::Upstream { .. }
        | ProxyError::UnexpectedSwitch { .. } => (StatusCode::BAD_GATEWAY, "bad gateway\n"),
        ProxyError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "gateway timeout\n"),
        ProxyError::AllBackendsFull { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "every backend is at its request limit\n",
        ),
        ProxyError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
        ProxyError::UnsupportedMethod(_) => {
            (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad request\n"),
        ProxyError::UnsupportedTransferCoding(_) => (
            StatusCode::NOT_IMPLEMENTED,
            "transfer coding not implemented\n",
        ),
    };
    let mut response = Response::new(ProxyBody::text(text));
    *response.status_mut() = status;
    if matches!(
        error,
        ProxyError::BadRequest(_) | ProxyError::UnsupportedTransferCoding(_)
    ) {
        // What follows on the connection cannot be trusted to be framed
        // as the client meant: close it after this answer.
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The request handler shared by every client connection.
#[derive(Debug)]
pub struct Proxy {
    pool: Arc<Pool>,
    health: Option<HealthReporter>,
}

/// A backend's response head, with what its body still holds on to.
struct Answer {
    response: Response<Incoming>,
    /// The backend connection, given back once the response body is read.
    connection: Connection,
    in_flight: InFlight,
    backend: Arc<str>,
}

/// A request's key, as the hash algorithms use it.
struct Keyed {
    /// The key hash; `None` for the classic policies.
    hash: Option<u64>,
    /// The configured header or cookie was missing: the client IP was hashed.
    fell_back: bool,
    /// A sticky-cookie session id issued to this request (its key).
    new_session: Option<String>,
}

impl Keyed {
    fn new(snapshot: &Snapshot, parts: &Parts, peer: IpAddr) -> Keyed {
        let Some(hasher) = snapshot.selector().hasher() else {
            return Keyed {
                hash: None,
                fell_back: false,
                new_session: None,
            };
        };
        let key = snapshot.request_key(&parts.uri, &parts.headers, peer);
        let fell_back = key.origin() == KeyOrigin::ClientIpFallback;
        if fell_back && snapshot.config().balancer.sticky_cookie.is_some() {
            // A new client: its key is the session id it is about to get.
            let id = session_id();
            return Keyed {
                hash: Some(hasher.hash(id.as_bytes())),
                fell_back: false,
                new_session: Some(id),
            };
        }
        Keyed {
            hash: Some(hasher.hash(key.as_bytes())),
            fell_back,
            new_session: None,
        }
    }
}

/// What happened to the attempts of one request, for the access log.
#[derive(Default)]
struct Attempts {
    count: u32,
    failed: Vec<Arc<str>>,
    /// Why the request went elsewhere than its key's first choice.
    fallback: Vec<Fallback>,
    /// Where the request body's bytes are added up (access log only).
    bytes_in: Option<Arc<AtomicU64>>,
}

impl Proxy {
    /// A proxy over `pool`.
    pub fn new(pool: Arc<Pool>) -> Proxy {
        Proxy { pool, health: None }
    }

    /// A proxy over `pool` that reports connect failures to the health
    /// checks through `health`.
    pub fn with_health(pool: Arc<Pool>, health: HealthReporter) -> Proxy {
        Proxy {
            pool,
            health: Some(health),
        }
    }

    /// The pool requests are routed with.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Forwards one client request from `peer`; never fails: errors become
    /// the responses [`error_response`] gives. A request that upgrades gets
    /// its tunnel started in `tunnels` (see [Upgrades](self#upgrades)).
    pub async fn handle(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        tunnels: &Tunnels,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        // Taken before the request is taken apart: hyper completes it with
        // the client's connection once the `101` has been written.
        let client_upgrade = headers::is_upgrade_request(request.version(), request.headers())
            .then(|| hyper::upgrade::on(&mut request));
        let snapshot = self.pool.snapshot();
        let (mut parts, body) = request.into_parts();
        let peer = peer.ip().to_canonical();
        // Checked before the hop-by-hop headers go.
        let rejection = check_request(&parts);

        if client_upgrade.is_some() {
            headers::strip_hop_by_hop_keeping_upgrade(&mut parts.headers);
        } else {
            headers::strip_hop_by_hop(&mut parts.headers);
        }
        if !parts.headers.contains_key(HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(HOST, host);
        }
        let keyed = Keyed::new(&snapshot, &parts, peer);
        let mut record = access::enabled().then(|| AccessRecord {
            client: key::client_ip(
                peer,
                &parts.headers,
                &snapshot.config().balancer.trusted_proxies,
            ),
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            key_hash: keyed.hash,
            key_fallback: keyed.fell_back,
            new_session: keyed.new_session.is_some(),
            backend: None,
            attempts: 0,
            fallback: Vec::new(),
            failed: Vec::new(),
            status: 0,
            bytes_in: Arc::new(AtomicU64::new(0)),
            started,
        });
        headers::set_forwarded(&mut parts.headers, peer, snapshot.is_trusted(peer));

        let mut attempts = Attempts {
            bytes_in: record.as_ref().map(|r| r.bytes_in.clone()),
            ..Attempts::default()
        };
        let result = match rejection {
            Some(rejection) => Err(rejection),
            None => self
                .forward(
                    &snapshot,
                    parts,
                    body,
                    keyed.hash.unwrap_or(0),
                    &mut attempts,
                )
                .await
                .and_then(|answer| checked_switch(answer, client_upgrade.is_some())),
        };
        if let Some(record) = record.as_mut() {
            record.attempts = attempts.count;
            record.failed = attempts.failed;
            record.fallback = attempts.fallback;
        }
        match result {
            Ok(Answer {
                mut response,
                connection,
                in_flight,
                backend,
            }) => {
                // `checked_switch` let a `101` through only for an upgrade
                // request.
                let upgrades = match client_upgrade {
                    Some(client) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                        Some((client, hyper::upgrade::on(&mut response)))
                    }
                    _ => None,
                };
                let (mut head, incoming) = response.into_parts();
                if upgrades.is_some() {
                    headers::strip_hop_by_hop_keeping_upgrade(&mut head.headers);
                } else {
                    headers::strip_hop_by_hop(&mut head.headers);
                }
                if let (Some(id), Some(sticky)) = (
                    &keyed.new_session,
                    &snapshot.config().balancer.sticky_cookie,
                ) && let Ok(cookie) = HeaderValue::from_str(&set_cookie(sticky, id))
                {
                    head.headers.append(SET_COOKIE, cookie);
                }
                if let Some(record) = record.as_mut() {
                    record.backend = Some(backend.clone());
                    record.status = head.status.as_u16();
                }
                let answered = Answered {
                    pool: self.pool.clone(),
                    backend,
                    status: head.status.as_u16(),
                    started,
                    health: self.health.clone(),
                };
                let finish = Finish::new(in_flight, answered, record);
                match upgrades {
                    Some((client, backend)) => {
                        // The backend connection becomes the tunnel's.
                        drop(connection);
                        tunnels.spawn(client, backend, finish, attempts.bytes_in);
                        Response::from_parts(head, ProxyBody::empty())
                    }
                    None => Response::from_parts(
                        head,
                        ProxyBody::Upstream(UpstreamBody::new(incoming, connection, finish)),
                    ),
                }
            }
            Err(error) => {
                if error.is_clients_fault() {
                    tracing::debug!(client = %peer, error = %Chain(&error), "bad request");
                } else {
                    tracing::warn!(client = %peer, error = %Chain(&error), "request failed");
                }
                let response = error_response(&error);
                self.pool.metrics().request_finished(
                    error.backend(),
                    response.status().as_u16(),
                    started.elapsed(),
                );
                if let Some(mut record) = record {
                    record.status = response.status().as_u16();
                    record.log(0, "local");
                }
                response
            }
        }
    }

    /// Sends the request to backends until one answers or a failure ends it.
    async fn forward(
        &self,
        snapshot: &Snapshot,
        parts: Parts,
        mut body: Incoming,
        key_hash: u64,
        attempts: &mut Attempts,
    ) -> Result<Answer, ProxyError> {
        if parts.method == Method::CONNECT {
            return Err(ProxyError::UnsupportedMethod(parts.method));
        }
        let upstream = &snapshot.config().upstream;
        let deadline = tokio::time::Instant::now() + upstream.request_timeout;
        let Parts {
            method,
            uri,
            mut headers,
            ..
        } = parts;
        let path_and_query = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let limits = &snapshot.config().limits;
        if limits.max_body_bytes > 0
            && body
                .size_hint()
                .exact()
                .is_some_and(|len| len > limits.max_body_bytes)
        {
            // Refused before any backend sees it.
            return Err(ProxyError::BodyTooLarge(BodyTooLarge {
                limit: limits.max_body_bytes,
            }));
        }
        let per_backend = u64::from(limits.max_in_flight_per_backend);
        let retries = usize::try_from(upstream.retries).unwrap_or(usize::MAX);
        // Backends not to try again: those that failed, and those skipped
        // because they were full. Only failures use up retries.
        let mut tried: Vec<usize> = Vec::new();
        let (mut failed, mut full) = (0usize, 0usize);
        // An idempotent request that a backend's connection broke off before
        // answering is sent once more to the same backend, on another
        // connection: the usual cause is a pooled keep-alive connection the
        // backend closed just as the request went out.
        let (mut resent, mut again) = (false, None);
        loop {
            let next = match again.take() {
                Some(index) => Some(index),
                None => snapshot.next_backend(key_hash, &tried, self.pool.now_ns()),
            };
            let Some((index, backend)) = next.and_then(|i| Some((i, snapshot.backends().get(i)?)))
            else {
                return Err(if tried.is_empty() {
                    ProxyError::NoHealthyBackend
                } else if failed == 0 {
                    ProxyError::AllBackendsFull { full }
                } else {
                    ProxyError::AllBackendsFailed { tried: tried.len() }
                });
            };
            if per_backend > 0 && backend.state().in_flight() >= per_backend {
                tried.push(index);
                full += 1;
                attempts.fallback.push(Fallback::Full);
                continue;
            }
            if tried.is_empty() {
                let detour = snapshot.detour(key_hash, index);
                if detour.unhealthy {
                    attempts.fallback.push(Fallback::Unhealthy);
                }
                if detour.bounded_load {
                    attempts.fallback.push(Fallback::BoundedLoad);
                }
            }
            // Headers are copied only while a retry could still need them.
            let may_retry = failed < retries && tried.len() + 1 < snapshot.routable_count();
            let may_resend = !resent && is_idempotent(&method);
            let mut request_headers = if may_retry || may_resend {
                headers.clone()
            } else {
                std::mem::take(&mut headers)
            };
            if !request_headers.contains_key(HOST) {
                // An HTTP/1.0 client may leave it out; HTTP/1.1 requires it.
                request_headers.insert(HOST, backend.host_header().clone());
            }
            // Origin form (`/path?query`), as HTTP/1.1 sends it to a server.
            let target = Uri::from(path_and_query.clone());

            let (request_body, recovery) = RecoverableBody::new(body);
            let request_body = request_body
                .counting(attempts.bytes_in.clone())
                .limited(limits.max_body_bytes);
            let mut request = Request::new(request_body);
            *request.method_mut() = method.clone();
            *request.uri_mut() = target;
            *request.version_mut() = Version::HTTP_11;
            *request.headers_mut() = request_headers;

            attempts.count += 1;
            let in_flight = backend.state().begin();
            let sent = Instant::now();
            let outcome = tokio::time::timeout_at(
                deadline,
                upstream::send(backend.authority(), upstream.connect_timeout, request),
            )
            .await;
            match outcome {
                Err(_elapsed) => {
                    return Err(ProxyError::Timeout {
                        backend: backend.name().clone(),
                        timeout: upstream.request_timeout,
                    });
                }
                Ok(Ok((response, connection))) => {
                    backend
                        .state()
                        .observe_latency(sent.elapsed(), self.pool.now_ns());
                    return Ok(Answer {
                        response,
                        connection,
                        in_flight,
                        backend: backend.name().clone(),
                    });
                }
                Ok(Err(error)) => {
                    drop(in_flight);
                    let connect = error.is_connect();
                    let mut recovery = Some(recovery);
                    if may_resend
                        && !connect
                        && broken_off_by_backend(&error)
                        && let Some(recovered) = recovery.take().and_then(Recovery::take)
                    {
                        tracing::debug!(
                            backend = %backend.name(),
                            error = %Chain(&error),
                            "connection broken off before an answer; sending once more"
                        );
                        resent = true;
                        again = Some(index);
                        body = recovered;
                        continue;
                    }
                    if let Some(health) = &self.health {
                        if connect {
                            health.connect_failed(backend.name(), backend.authority());
                        } else if broken_off_by_backend(&error) {
                            health.request_failed(
                                backend.name(),
                                backend.authority(),
                                "the backend closed the connection before answering",
                            );
                        }
                    }
                    if let Some(too_large) = body_too_large(&error) {
                        return Err(ProxyError::BodyTooLarge(too_large));
                    }
                    if client_body_failed(&error) {
                        // Not the backend's failure: a malformed chunk, or
                        // the client went away mid-body.
                        return Err(ProxyError::BadRequest(
                            "the request body is malformed or cut off",
                        ));
                    }
                    tried.push(index);
                    failed += 1;
                    attempts.failed.push(backend.name().clone());
                    if connect && tried.len() >= snapshot.routable_count() {
                        return Err(ProxyError::AllBackendsFailed { tried: tried.len() });
                    }
                    // Past a connect failure the backend may have acted on
                    // the request: only an idempotent one is sent again, and
                    // only if its body was never read (so, in practice, one
                    // without a body).
                    let replayable = connect || is_idempotent(&method);
                    let recovered = if may_retry && replayable {
                        recovery.and_then(Recovery::take)
                    } else {
                        None
                    };
                    match recovered {
                        Some(recovered) => {
                            tracing::warn!(
                                backend = %backend.name(),
                                error = %Chain(&error),
                                "backend failed; trying the next one"
                            );
                            let reason = if connect {
                                Fallback::ConnectError
                            } else {
                                Fallback::UpstreamError
                            };
                            attempts.fallback.push(reason);
                            self.pool
                                .metrics()
                                .upstream_retry(backend.name(), reason.as_str());
                            body = recovered;
                        }
                        None if connect => {
                            return Err(ProxyError::Connect {
                                backend: backend.name().clone(),
                                source: error,
                            });
                        }
                        None => {
                            return Err(ProxyError::Upstream {
                                backend: backend.name().clone(),
                                source: error,
                            });
                        }
                    }
                }
            }
        }
    }
}

/// `answer`, unless it is a `101 Switching Protocols` that cannot start a
/// tunnel: one to a request that did not ask to upgrade (`asked`), or one
/// that names no protocol (RFC 9110 §15.2.2 requires `Upgrade`). Dropping
/// such an answer closes its backend connection, which hyper never pools
/// after a `101`.
fn checked_switch(answer: Answer, asked: bool) -> Result<Answer, ProxyError> {
    if answer.response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(answer);
    }
    let why = if !asked {
        "although the request did not ask to upgrade"
    } else if !answer.response.headers().contains_key(UPGRADE) {
        "without an Upgrade header"
    } else {
        return Ok(answer);
    };
    Err(ProxyError::UnexpectedSwitch {
        backend: answer.backend,
        why,
    })
}

/// The problem with a request that must not be forwarded, if any (RFC 9112
/// §3.2 and §6.1). hyper itself refuses malformed heads, invalid or
/// conflicting `Content-Length`s and codings that do not end in `chunked`;
/// it leaves these to the proxy.
fn check_request(parts: &Parts) -> Option<ProxyError> {
    if parts.extensions.get::<AmbiguousRequest>().is_some() {
        // Seen on the raw bytes: hyper removes Content-Length from such a
        // request before the proxy sees it (see `crate::framing`).
        return Some(ProxyError::BadRequest(
            "both Content-Length and Transfer-Encoding (RFC 9112 §6.3)",
        ));
    }
    let hosts = parts.headers.get_all(HOST).iter().count();
    if hosts > 1 {
        return Some(ProxyError::BadRequest("more than one Host header"));
    }
    if hosts == 0 && parts.version == Version::HTTP_11 {
        return Some(ProxyError::BadRequest("an HTTP/1.1 request without Host"));
    }
    let mut codings = parts
        .headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    if let Some(first) = codings.next() {
        let only_chunked = first.eq_ignore_ascii_case(b"chunked") && codings.next().is_none();
        if !only_chunked {
            let all: Vec<String> = parts
                .headers
                .get_all(TRANSFER_ENCODING)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            return Some(ProxyError::UnsupportedTransferCoding(all.join(", ")));
        }
    }
    None
}

/// The causes of `error`, nearest first (not `error` itself).
fn causes<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(error.source(), |&cause| cause.source())
}

/// Whether an exchange failed because the client's request body did (hyper
/// reports the body it was given failing as a user error).
fn client_body_failed(error: &UpstreamError) -> bool {
    causes(error)
        .filter_map(|cause| cause.downcast_ref::<hyper::Error>())
        .any(hyper::Error::is_user)
}

/// The [`BodyTooLarge`] that made an exchange fail, if that is what did.
fn body_too_large(error: &UpstreamError) -> Option<BodyTooLarge> {
    causes(error).find_map(|cause| cause.downcast_ref::<BodyTooLarge>().copied())
}

/// Whether a failed exchange was the backend's doing: it closed or reset the
/// connection before its response head. Not when the client's own request
/// body failed (hyper reports that as a user error), nor a timeout.
fn broken_off_by_backend(error: &UpstreamError) -> bool {
    let mut backend = false;
    for cause in causes(error) {
        if let Some(hyper_error) = cause.downcast_ref::<hyper::Error>() {
            if hyper_error.is_user() || hyper_error.is_timeout() {
                return false;
            }
            backend |= hyper_error.is_incomplete_message();
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            backend |= matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
    }
    backend
}

/// Methods that mean the same whether sent once or twice (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A new session id: 128 random bits as 32 lowercase hex characters, from
/// `fastrand` (seeded per thread from the OS). It only chooses a backend, so
/// it need not be secret: a client can send any cookie it likes anyway.
fn session_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// The `Set-Cookie` value that hands a new client its session id.
fn set_cookie(sticky: &StickyCookieConfig, id: &str) -> String {
    format!(
        "{}={id}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
        sticky.name,
        sticky.max_age.as_secs().max(1)
    )
}

/// An error with its chain of causes, `: `-separated, for logs.
struct Chain<'a>(&'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        causes(self.0).try_for_each(|cause| write!(f, ": {cause}"))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn rendered(error: ProxyError) -> (u16, String) {
        let response = error_response(&error);
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn each_error_maps_to_its_status_with_a_short_text_body() {
        assert_eq!(
            rendered(ProxyError::NoHealthyBackend).await,
            (503, "no healthy backend\n".to_owned())
        );
        assert_eq!(
            rendered(ProxyError::AllBackendsFailed { tried: 3 }).await,
            (503, "no healthy backend\n".to_owned())
        );
        assert_eq!(
            rendered(ProxyError::Timeout {
                backend: Arc::from("b"),
                timeout: Duration::from_millis(500)
            })
            .await,
            (504, "gateway timeout\n".to_owned())
        );
        assert_eq!(
            rendered(ProxyError::UnexpectedSwitch {
                backend: Arc::from("b"),
                why: "without an Upgrade header"
            })
            .await,
            (502, "bad gateway\n".to_owned())
        );
        assert_eq!(
            rendered(ProxyError::UnsupportedMethod(Method::CONNECT)).await,
            (405, "method not allowed\n".to_owned())
        );
        assert_eq!(
            rendered(ProxyError::BadRequest("more than one Host header")).await,
            (400, "bad request\n".to_owned())
        );
    }

    #[test]
    fn a_session_cookie_is_32_hex_characters_with_max_age_path_and_flags() {
        let id = session_id();
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(id, session_id());
        let sticky = StickyCookieConfig {
            name: "sid".into(),
            max_age: Duration::from_secs(90),
        };
        assert_eq!(
            set_cookie(&sticky, "00ff"),
            "sid=00ff; Max-Age=90; Path=/; HttpOnly; SameSite=Lax"
        );
        let short = StickyCookieConfig {
            name: "sid".into(),
            max_age: Duration::from_millis(10),
        };
        assert!(set_cookie(&short, "1").contains("Max-Age=1;"));
    }

    #[test]
    fn a_timeout_names_the_backend_and_the_duration() {
        let error = ProxyError::Timeout {
            backend: Arc::from("server-2"),
            timeout: Duration::from_millis(1500),
        };
        assert_eq!(
            error.to_string(),
            "backend server-2 sent no response within 1s 500ms"
        );
    }
}
