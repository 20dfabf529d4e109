//! Sending one request to backends until one answers or a failure ends it,
//! in named steps: pick the next backend (`next_backend`), attempt
//! (`attempt`), [classify the failure](Failure::of) and
//! [decide](RetryState::after_failure) whether to retry elsewhere, send once
//! more to the same backend, or stop.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::Poll;

use hyper::body::Body;
use hyper::header::{HOST, HeaderMap, HeaderValue, TE};
use hyper::http::request::Parts;
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, Uri, Version};

use tokio::time::Instant;

use crate::config::{LimitsConfig, UpstreamProtocol};
use crate::pool::checks::HealthReporter;
use crate::pool::{Backend, InFlight, Pool, Snapshot};
use crate::proxy::access::Fallback;
use crate::proxy::error::ProxyError;
use crate::proxy::failure::{Chain, Failure};
use crate::proxy::request::{TakesTrailers, is_idempotent};
use crate::proxy::request_body::{BodyTooLarge, ClientBody, RecoverableBody, Recovery};
use crate::proxy::retry::{Plan, RetryState, Step, Stop};
use crate::proxy::upstream::h1::Upgraded;
use crate::proxy::upstream::{self, Exchanged, ResponseBody, UpstreamError};

/// A backend's response head, with what its body still holds on to.
pub struct Answer {
    /// The response, its body still to be read (it gives its connection
    /// back once read to its end).
    pub response: Response<ResponseBody>,
    /// After a `101` over HTTP/1.1: the backend's connection, for a tunnel.
    pub upgraded: Option<Upgraded>,
    /// The request, in flight until the response body ends.
    pub in_flight: InFlight,
    /// The backend that answered.
    pub backend: Arc<str>,
    /// Its pin, for a pinned sticky cookie.
    pub pin: u64,
}

/// What happened to the attempts of one request, for the access log.
#[derive(Default)]
pub struct Attempts {
    /// Attempts made.
    pub count: u32,
    /// Backends that failed, in the order tried.
    pub failed: Vec<Arc<str>>,
    /// Why the request went elsewhere than its key's first choice.
    pub fallback: Vec<Fallback>,
    /// Where the request body's bytes are added up (access log only).
    pub bytes_in: Option<Arc<AtomicU64>>,
}

/// What the steps of one request share.
pub struct Forwarding<'a> {
    /// The pool, for its clock and counters.
    pub pool: &'a Pool,
    /// Where failures are counted against a backend's health, if anywhere.
    pub health: Option<&'a HealthReporter>,
    /// The snapshot the request routes with.
    pub snapshot: &'a Snapshot,
    /// The proxy's limits.
    pub limits: &'a LimitsConfig,
    /// The request's key hash (0 for the classic policies).
    pub key_hash: u64,
    /// The routable backend its sticky cookie's pin names: the first
    /// attempt goes there.
    pub pinned: Option<usize>,
    /// What happened so far.
    pub attempts: &'a mut Attempts,
    /// When the request arrived: its deadline counts from here, and its
    /// first choice of backend is made at this time (one clock read fewer).
    pub started: std::time::Instant,
}

/// The parts of a request that every attempt sends again.
pub struct Head {
    method: Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    /// The client sent `TE: trailers`.
    trailers: bool,
    /// There is a `Host` header.
    has_host: bool,
}

impl Head {
    /// What every attempt sends of the request whose head is `parts`
    /// (`has_host`: with a `Host` header).
    pub fn of(parts: Parts, has_host: bool) -> Head {
        Head {
            has_host,
            trailers: parts.extensions.get::<TakesTrailers>().is_some(),
            path_and_query: parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            method: parts.method,
            headers: parts.headers,
        }
    }
}

/// An attempt that got no response head.
enum Missed {
    /// `upstream.request_timeout` passed.
    Timeout,
    /// The exchange failed; the body may come back through the recovery.
    Failed(UpstreamError, Recovery),
}

/// Sends the request to backends until one answers or a failure ends it.
/// (Given the [`Head`] rather than the request's parts, which would take
/// room in the future for as long as it runs; and not an `async fn`, which
/// would keep its arguments twice.)
#[allow(clippy::manual_async_fn)]
pub fn forward<'a, 'p>(
    ctx: &'a mut Forwarding<'p>,
    mut head: Head,
    mut body: ClientBody,
) -> impl Future<Output = Result<Answer, ProxyError>> + Send + use<'a, 'p> {
    async move {
        let config = ctx.snapshot.config();
        check_declared_length(&body, ctx.limits)?;
        let deadline = Instant::from_std(ctx.started) + config.upstream.request_timeout;
        let mut state = RetryState::new(config.upstream.retries, is_idempotent(&head.method));
        loop {
            let (index, backend) = next_backend(ctx, &mut state)?;
            let plan = state.plan(ctx.snapshot.routable_count());
            match attempt(ctx, backend, &mut head, body, plan, deadline).await {
                Ok(answer) => return Ok(answer),
                Err(Missed::Timeout) => {
                    return Err(ProxyError::Timeout {
                        backend: backend.name().clone(),
                        timeout: config.upstream.request_timeout,
                    });
                }
                Err(Missed::Failed(error, recovery)) => {
                    body = after_failure(ctx, &mut state, plan, (index, backend), error, recovery)?;
                }
            }
        }
    }
}

/// Refuses, before any backend sees it, a body whose declared length is
/// over `limits.max_body_bytes`.
fn check_declared_length(body: &ClientBody, limits: &LimitsConfig) -> Result<(), ProxyError> {
    let limit = limits.max_body_bytes;
    if limit > 0 && body.size_hint().exact().is_some_and(|len| len > limit) {
        return Err(ProxyError::BodyTooLarge(BodyTooLarge { limit }));
    }
    Ok(())
}

/// The next backend to try (pool index), skipping those at
/// `limits.max_in_flight_per_backend`, and noting why a key's first attempt
/// does not go to its first choice.
fn next_backend<'s>(
    ctx: &mut Forwarding<'s>,
    state: &mut RetryState,
) -> Result<(usize, &'s Backend), ProxyError> {
    let snapshot = ctx.snapshot;
    let per_backend = u64::from(snapshot.config().max_in_flight_per_backend);
    loop {
        let pinned = ctx.pinned;
        // The first choice is made as the request arrives; a retry reads
        // the clock again.
        let now_ns = if state.is_first() {
            ctx.pool.ns_at(ctx.started)
        } else {
            ctx.pool.now_ns()
        };
        let next = state.next(|tried| match pinned {
            Some(pinned) if tried.is_empty() => Some(pinned),
            _ => snapshot.next_backend(ctx.key_hash, tried, now_ns),
        });
        let Some((index, backend)) = next.and_then(|i| Some((i, snapshot.backends().get(i)?)))
        else {
            return Err(stop_error(state.exhausted()));
        };
        if per_backend > 0 && backend.state().in_flight() >= per_backend {
            state.skip_full(index);
            ctx.attempts.fallback.push(Fallback::Full);
            continue;
        }
        if state.is_first() && pinned == Some(index) {
            backend.state().record_pinned(now_ns);
        } else if state.is_first() && pinned.is_none() {
            let detour = snapshot.detour(ctx.key_hash, index);
            if detour.unhealthy {
                ctx.attempts.fallback.push(Fallback::Unhealthy);
            }
            if detour.draining {
                ctx.attempts.fallback.push(Fallback::Draining);
            }
            if detour.slow_start {
                ctx.attempts.fallback.push(Fallback::SlowStart);
            }
            if detour.bounded_load {
                ctx.attempts.fallback.push(Fallback::BoundedLoad);
            }
        }
        return Ok((index, backend));
    }
}

/// One attempt: the request to `backend` with `body` streaming through, up
/// to its response head or `deadline`.
async fn attempt(
    ctx: &mut Forwarding<'_>,
    backend: &Backend,
    head: &mut Head,
    body: ClientBody,
    plan: Plan,
    deadline: Instant,
) -> Result<Answer, Missed> {
    let (request, recovery) = outgoing(ctx, backend, head, body, plan);
    let upstream = &ctx.snapshot.config().upstream;
    // Built where it stays, and raced against the deadline in place: a
    // `Timeout` around it would move its kilobyte and a half twice more.
    let mut send = std::pin::pin!(upstream::send(
        backend.target(),
        upstream.protocol,
        upstream.connect_timeout,
        request,
    ));
    let mut expired = std::pin::pin!(tokio::time::sleep_until(deadline));
    ctx.attempts.count += 1;
    let in_flight = backend.state().begin();
    let sent = std::time::Instant::now();
    let sent_or_expired = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = send.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        expired.as_mut().poll(cx).map(|()| None)
    });
    match sent_or_expired.await {
        None => Err(Missed::Timeout),
        Some(Ok(Exchanged { response, upgraded })) => {
            // One clock read for the latency and its time.
            let answered = std::time::Instant::now();
            backend.state().observe_latency(
                answered.saturating_duration_since(sent),
                ctx.pool.ns_at(answered),
            );
            Ok(Answer {
                response,
                upgraded,
                in_flight,
                backend: backend.name().clone(),
                pin: backend.pin(),
            })
        }
        Some(Err(error)) => Err(Missed::Failed(error, recovery)),
    }
}

/// The request one attempt sends to `backend`, with `body` streaming
/// through, and where its body comes back if the attempt fails before
/// reading it.
fn outgoing(
    ctx: &Forwarding<'_>,
    backend: &Backend,
    head: &mut Head,
    body: ClientBody,
    plan: Plan,
) -> (Request<RecoverableBody>, Recovery) {
    // Headers are copied only while another attempt could still need them.
    let mut headers = if plan.keeps_request() {
        head.headers.clone()
    } else {
        std::mem::take(&mut head.headers)
    };
    if !head.has_host {
        // An HTTP/1.0 client may leave it out; HTTP/1.1 requires it.
        headers.insert(HOST, backend.host_header().clone());
    }
    let (body, recovery) = RecoverableBody::new(body);
    let limits = ctx.limits;
    let body = body
        .counting(ctx.attempts.bytes_in.clone())
        .limited(limits.max_body_bytes);
    let protocol = ctx.snapshot.config().upstream.protocol;
    if protocol.is_h2() && head.trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    let mut request = Request::new(body);
    *request.method_mut() = head.method.clone();
    set_target(&mut request, &head.path_and_query, backend, protocol);
    *request.headers_mut() = headers;
    (request, recovery)
}

/// The request's target and version as `protocol` sends them: the origin
/// form (`/path?query`) over HTTP/1.1, as a server expects it; over HTTP/2
/// the absolute form, which gives `:scheme` and `:authority`.
fn set_target<B>(
    request: &mut Request<B>,
    path: &PathAndQuery,
    backend: &Backend,
    protocol: UpstreamProtocol,
) {
    if protocol.is_h2() {
        let absolute = Uri::builder()
            .scheme(backend.scheme().clone())
            .authority(backend.authority().clone())
            .path_and_query(path.clone())
            .build();
        if let Ok(uri) = absolute {
            *request.uri_mut() = uri;
            *request.version_mut() = Version::HTTP_2;
            return;
        }
    }
    *request.uri_mut() = Uri::from(path.clone());
    *request.version_mut() = Version::HTTP_11;
}

/// After a failed attempt at `backend` (pool index and backend): counts it against the
/// backend's health, and gives back the body for the next attempt, or the
/// error that ends the request.
#[cold]
#[inline(never)]
fn after_failure(
    ctx: &mut Forwarding<'_>,
    state: &mut RetryState,
    plan: Plan,
    (index, backend): (usize, &Backend),
    error: UpstreamError,
    recovery: Recovery,
) -> Result<ClientBody, ProxyError> {
    let failure = Failure::of(&error);
    let routable = ctx.snapshot.routable_count();
    let step = state.after_failure(plan, index, failure, routable, || recovery.take());
    if !matches!(step, Step::Resend(_)) {
        report_failure(ctx.health, backend, failure);
    }
    match step {
        Step::Resend(body) => {
            tracing::debug!(
                backend = %backend.name(),
                error = %Chain(&error),
                "connection broken off before an answer; sending once more"
            );
            Ok(body)
        }
        Step::Retry(body) => {
            tracing::warn!(
                backend = %backend.name(),
                error = %Chain(&error),
                "backend failed; trying the next one"
            );
            let reason = if failure == Failure::Connect {
                Fallback::ConnectError
            } else {
                Fallback::UpstreamError
            };
            ctx.attempts.failed.push(backend.name().clone());
            ctx.attempts.fallback.push(reason);
            ctx.pool
                .stats()
                .upstream_retry(ctx.pool.name(), backend.name(), reason.as_str());
            Ok(body)
        }
        Step::GiveUp => {
            ctx.attempts.failed.push(backend.name().clone());
            let backend = backend.name().clone();
            Err(if failure == Failure::Connect {
                ProxyError::Connect {
                    backend,
                    source: error,
                }
            } else {
                ProxyError::Upstream {
                    backend,
                    source: error,
                }
            })
        }
        Step::Stop(stop) => {
            if let Stop::AllFailed { .. } = stop {
                ctx.attempts.failed.push(backend.name().clone());
            }
            Err(stop_error(stop))
        }
    }
}

/// Counts a failed attempt against `backend`'s health: a connect failure,
/// or the backend breaking the exchange off.
#[cold]
#[inline(never)]
fn report_failure(health: Option<&HealthReporter>, backend: &Backend, failure: Failure) {
    let Some(health) = health else {
        return;
    };
    match failure {
        Failure::Connect => health.connect_failed(backend.name(), backend.authority()),
        Failure::BrokenOff => health.request_failed(
            backend.name(),
            backend.authority(),
            "the backend closed the connection before answering",
        ),
        Failure::BodyTooLarge(_) | Failure::ClientBody | Failure::Other => {}
    }
}

/// The error a request stopped by `stop` answers with.
#[cold]
#[inline(never)]
fn stop_error(stop: Stop) -> ProxyError {
    match stop {
        Stop::NoHealthyBackend => ProxyError::NoHealthyBackend,
        Stop::AllFull { full } => ProxyError::AllBackendsFull { full },
        Stop::AllFailed { tried } => ProxyError::AllBackendsFailed { tried },
        Stop::BodyTooLarge(too_large) => ProxyError::BodyTooLarge(too_large),
        Stop::BadBody => ProxyError::BadRequest("the request body is malformed or cut off"),
    }
}
