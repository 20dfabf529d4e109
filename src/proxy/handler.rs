//! The request handler: one client request from arrival to the response
//! the client gets, in steps of a screen or less.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{HOST, HeaderValue, SET_COOKIE, UPGRADE};
use hyper::http::request::Parts;
use hyper::http::uri::PathAndQuery;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode, Uri, Version};

use crate::balance::key;
use crate::balance::key::pinned_value;
use crate::balance::route::resolve_dot_segments;
use crate::pool::routing::{Destination, Pools, Routed, Routing};
use crate::pool::stats::Stats;
use crate::pool::{Pool, Snapshot};
use crate::proxy::access::{self, AccessRecord, Answered, Finish};
use crate::proxy::error::{ProxyError, error_response};
use crate::proxy::failure::Chain;
use crate::proxy::forward::{Answer, Attempts, Forwarding, Head, forward};
use crate::proxy::headers::{self, HopByHop};
use crate::proxy::request::{check_request, prepare};
use crate::proxy::request_body::ClientBody;
use crate::proxy::response_body::{ProxyBody, UpstreamBody};
use crate::proxy::session::{Keyed, set_cookie};
use crate::proxy::tunnel::Tunnels;

/// The request handler of one listener, shared by its client connections.
#[derive(Debug)]
pub struct Proxy {
    pools: Arc<Pools>,
    /// The listener's place among the running listeners: whose routes apply.
    listener: usize,
    /// `X-Forwarded-Proto`: `https` on a TLS listener, else `http`.
    proto: &'static str,
}

/// What the end of a request reports, gathered while it runs.
struct Ending {
    /// When the request arrived.
    started: Instant,
    /// The access-log line, with the access log on.
    record: Option<AccessRecord>,
    /// Request body bytes read (access log only).
    bytes_in: Option<Arc<AtomicU64>>,
}

impl Ending {
    /// The end of a request that arrived at `started`, after `attempts`.
    fn after(started: Instant, record: Option<AccessRecord>, attempts: Attempts) -> Ending {
        Ending {
            started,
            record: record.map(|record| AccessRecord {
                attempts: attempts.count,
                failed: attempts.failed,
                fallback: attempts.fallback,
                ..record
            }),
            bytes_in: attempts.bytes_in,
        }
    }
}

impl Proxy {
    /// The handler of listener `listener` (its place among the running
    /// listeners) over `pools`; `tls`: the listener terminates TLS.
    pub fn new(pools: Arc<Pools>, listener: usize, tls: bool) -> Proxy {
        Proxy {
            pools,
            listener,
            proto: if tls { "https" } else { "http" },
        }
    }

    /// The pools requests are routed to.
    pub fn pools(&self) -> &Arc<Pools> {
        &self.pools
    }

    /// Forwards one client request from `peer`; never fails: errors become
    /// the responses [`error_response`] gives. A request that upgrades gets
    /// its tunnel started in `tunnels` (see [Upgrades](crate::proxy#upgrades)).
    ///
    /// It owns what it needs and answers as hyper's service does, so that
    /// its future is the service's own: no wrapper around it, which would be
    /// one more copy of a few kilobytes per request. Not an `async fn`: an
    /// `async fn` keeps its arguments twice in its future (as given, and
    /// moved into its body), the request's 264 bytes among them.
    #[allow(clippy::manual_async_fn)]
    pub fn handle(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        tunnels: Tunnels,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static {
        async move {
            let started = Instant::now();
            // The hop-by-hop headers, found once for the checks below.
            let hop_by_hop = HopByHop::of(request.headers());
            // Taken before the request is taken apart: hyper completes it with
            // the client's connection once the `101` has been written.
            let client_upgrade =
                headers::is_upgrade_request(request.version(), request.headers(), hop_by_hop)
                    .then(|| hyper::upgrade::on(&mut request));
            let routing = self.pools.routing_full();
            let (mut parts, body) = request.into_parts();
            let peer = peer.ip().to_canonical();
            let limits = &routing.config().limits;
            let body = ClientBody::new(body, parts.version, limits);
            // Checked before the hop-by-hop headers go.
            let rejection = check_request(&parts, limits, hop_by_hop);
            prepare(&mut parts, client_upgrade.is_some(), hop_by_hop);
            // The path as the client sent it, before routing resolves or strips it.
            let record = access::enabled().then(|| AccessRecord::new(peer, &parts, started));
            let destination = match self.destination(&routing, &mut parts) {
                Ok(destination) => destination,
                Err(error) => {
                    return Ok(self.unrouted(&rejection.unwrap_or(error), record, peer, started));
                }
            };
            let routed = destination.pool;
            let snapshot = routed.pool.snapshot();
            let keyed = Keyed::new(&snapshot, &parts, peer);
            let record =
                record.map(|record| routed_record(record, &snapshot, &parts, &keyed, &destination));
            let trusted = snapshot.is_trusted(peer);
            let has_host = headers::set_forwarded(&mut parts.headers, peer, trusted, self.proto);

            let mut attempts = Attempts {
                bytes_in: record.as_ref().map(|r| r.bytes_in.clone()),
                ..Attempts::default()
            };
            let result = match rejection {
                Some(rejection) => Err(rejection),
                None => {
                    let mut forwarding = Forwarding {
                        pool: &routed.pool,
                        health: routed.health.as_ref(),
                        snapshot: &snapshot,
                        limits,
                        key_hash: keyed.hash.unwrap_or(0),
                        pinned: keyed.pin.and_then(|pin| snapshot.pinned(pin)),
                        attempts: &mut attempts,
                        started,
                    };
                    forward(&mut forwarding, Head::of(parts, has_host), body)
                        .await
                        .and_then(|answer| checked_switch(answer, client_upgrade.is_some()))
                }
            };
            let ending = Ending::after(started, record, attempts);
            Ok(match result {
                Ok(answer) => {
                    let cookie = session_cookie(&snapshot, &keyed, answer.pin);
                    respond(routed, answer, client_upgrade, cookie, ending, &tunnels)
                }
                Err(error) => {
                    answer_error(self.pools.stats(), Some(&routed.pool), &error, peer, ending)
                }
            })
        }
    }
}

impl Proxy {
    /// Where the request goes: the route its host and path take on this
    /// listener (see [`crate::balance::route`]). The path is first resolved
    /// as a backend would resolve it (`/api/../ws` is `/ws`, and goes to the
    /// backend so), and a route with `strip_prefix` then removes its prefix.
    /// An asterisk-form target (`OPTIONS *`) is routed as `/`.
    fn destination<'r>(
        &self,
        routing: &'r Routing,
        parts: &mut Parts,
    ) -> Result<Destination<'r>, ProxyError> {
        let resolved = resolve_dot_segments(parts.uri.path())
            .ok_or(ProxyError::BadRequest("a path that climbs above the root"))?;
        if let Cow::Owned(path) = resolved {
            replace_path(parts, &path);
        }
        let path = parts.uri.path();
        let path = if path.starts_with('/') { path } else { "/" };
        let destination = routing
            .select(self.listener, parts.headers.get(HOST), path)
            .ok_or(ProxyError::NoRoute)?;
        if let Some(route) = destination.route
            && route.strip_prefix
        {
            let stripped = stripped_path(parts.uri.path(), &route.path_prefix);
            replace_path(parts, &stripped);
        }
        Ok(destination)
    }

    /// The answer to a request that no route took to a pool: `error`.
    #[cold]
    #[inline(never)]
    fn unrouted(
        &self,
        error: &ProxyError,
        record: Option<AccessRecord>,
        peer: IpAddr,
        started: Instant,
    ) -> Response<ProxyBody> {
        let ending = Ending {
            started,
            record,
            bytes_in: None,
        };
        answer_error(self.pools.stats(), None, error, peer, ending)
    }
}

/// The client's response from a backend of `routed`'s `answer`: its body
/// streaming through, or, after a `101` to a request that asked to upgrade
/// (`client_upgrade`), a tunnel between the two connections.
fn respond(
    routed: &Routed,
    answer: Answer,
    client_upgrade: Option<OnUpgrade>,
    cookie: Option<HeaderValue>,
    mut ending: Ending,
    tunnels: &Tunnels,
) -> Response<ProxyBody> {
    let Answer {
        response,
        upgraded,
        in_flight,
        backend,
        ..
    } = answer;
    // `checked_switch` let a `101` through only for an upgrade request.
    let upgrades = match (client_upgrade, upgraded) {
        (Some(client), Some(backend)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            Some((client, backend))
        }
        _ => None,
    };
    let (mut head, incoming) = response.into_parts();
    // RFC 9110 §6.2: the proxy answers in its own version, not the
    // backend's (hyper's server still speaks HTTP/1.0 to an HTTP/1.0
    // client, and its own framing to the rest).
    if head.version < Version::HTTP_11 {
        head.version = Version::HTTP_11;
    }
    if upgrades.is_some() {
        headers::strip_hop_by_hop_keeping_upgrade(&mut head.headers);
    } else {
        headers::strip_hop_by_hop(&mut head.headers);
    }
    if let Some(cookie) = cookie {
        head.headers.append(SET_COOKIE, cookie);
    }
    if let Some(record) = ending.record.as_mut() {
        record.backend = Some(backend.clone());
        record.status = head.status.as_u16();
    }
    let answered = Answered {
        pool: routed.pool.clone(),
        backend,
        status: head.status.as_u16(),
        started: ending.started,
        health: routed.health.clone(),
    };
    let finish = Finish::new(in_flight, answered, ending.record);
    match upgrades {
        Some((client, backend)) => {
            // The backend connection becomes the tunnel's.
            drop(incoming);
            tunnels.spawn(client, backend, finish, ending.bytes_in);
            Response::from_parts(head, ProxyBody::empty())
        }
        None => Response::from_parts(
            head,
            ProxyBody::Upstream(Box::new(UpstreamBody::new(incoming, finish))),
        ),
    }
}

/// The proxy's own answer for `error`, counted in `stats` and logged; the
/// request was routed to `pool` (`None`: to none).
#[cold]
#[inline(never)]
fn answer_error(
    stats: &Stats,
    pool: Option<&Arc<Pool>>,
    error: &ProxyError,
    peer: IpAddr,
    ending: Ending,
) -> Response<ProxyBody> {
    if error.is_clients_fault() {
        tracing::debug!(client = %peer, error = %Chain(error), "bad request");
    } else {
        tracing::warn!(client = %peer, error = %Chain(error), "request failed");
    }
    let response = error_response(error);
    let status = response.status().as_u16();
    let now = Instant::now();
    let elapsed = now.saturating_duration_since(ending.started);
    if let Some(pool) = pool
        && let Some(name) = error.backend()
        && let Some(backend) = pool.snapshot().backend(name)
    {
        // The backend to blame for a 502 or 504: its last minute counts
        // it (a lookup by name, on the error path only).
        backend
            .state()
            .record_finished(status, elapsed, pool.ns_at(now));
    }
    stats.request_finished(pool.map(|p| p.name()), error.backend(), status, elapsed);
    if let Some(mut record) = ending.record {
        record.status = status;
        record.log(0, "local");
    }
    response
}

/// `parts`' request target with `path` as its path, its query kept.
fn replace_path(parts: &mut Parts, path: &str) {
    let target = match parts.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    if let Ok(path_and_query) = PathAndQuery::try_from(target) {
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(path_and_query);
        if let Ok(uri) = Uri::from_parts(uri) {
            parts.uri = uri;
        }
    }
}

/// `path_and_query` without `prefix` (a prefix of its path on a segment
/// boundary; `/api` and `/api/` strip the same), always starting with `/`.
fn stripped_path(path_and_query: &str, prefix: &str) -> String {
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    let rest = path_and_query
        .strip_prefix(prefix)
        .unwrap_or(path_and_query);
    if rest.starts_with('/') {
        rest.to_owned()
    } else {
        format!("/{rest}")
    }
}

/// `record`, with what routing and keying learned: the client as the key
/// reads it, the key, the pool and the route.
fn routed_record(
    record: AccessRecord,
    snapshot: &Snapshot,
    parts: &Parts,
    keyed: &Keyed,
    destination: &Destination<'_>,
) -> AccessRecord {
    let trusted = &snapshot.config().balancer.trusted_proxies;
    AccessRecord {
        client: key::client_ip(record.client, &parts.headers, trusted),
        key_hash: keyed.hash,
        key_fallback: keyed.fell_back,
        new_session: keyed.new_session.is_some(),
        pool: Some(destination.pool.pool.name().clone()),
        route: destination.route_name.cloned(),
        ..record
    }
}

/// The `Set-Cookie` header of a response from the backend pinned `pin`: a
/// new client's session; with pins, also a session that landed elsewhere
/// than its pin says (so that it stays where it moved).
fn session_cookie(snapshot: &Snapshot, keyed: &Keyed, pin: u64) -> Option<HeaderValue> {
    let sticky = snapshot.config().balancer.sticky_cookie.as_ref()?;
    let value = if sticky.pin {
        let id = keyed.new_session.as_ref().or(keyed.session.as_ref())?;
        if keyed.new_session.is_none() && keyed.pin == Some(pin) {
            return None;
        }
        pinned_value(id, pin)
    } else {
        keyed.new_session.clone()?
    };
    HeaderValue::from_str(&set_cookie(sticky, &value)).ok()
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

#[cfg(test)]
mod tests {
    use super::stripped_path;

    #[test]
    fn a_stripped_prefix_leaves_the_rest_of_the_path_and_the_query() {
        assert_eq!(stripped_path("/api/x", "/api"), "/x");
        assert_eq!(stripped_path("/api/x", "/api/"), "/x");
        assert_eq!(stripped_path("/api", "/api"), "/");
        assert_eq!(stripped_path("/api/", "/api"), "/");
        assert_eq!(stripped_path("/x/y", "/"), "/x/y");
    }
}
