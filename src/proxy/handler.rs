//! The request handler: one client request from arrival to the response
//! the client gets, in steps of a screen or less.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, SET_COOKIE, UPGRADE};
use hyper::http::request::Parts;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};

use crate::balance::key;
use crate::pool::checks::HealthReporter;
use crate::pool::{Pool, Snapshot};
use crate::proxy::access::{self, AccessRecord, Answered, Finish};
use crate::proxy::error::{ProxyError, error_response};
use crate::proxy::failure::Chain;
use crate::proxy::forward::{Answer, Attempts, Forwarding, forward};
use crate::proxy::headers;
use crate::proxy::request::{check_request, prepare};
use crate::proxy::request_body::ClientBody;
use crate::proxy::response_body::{ProxyBody, UpstreamBody};
use crate::proxy::session::{Keyed, set_cookie};
use crate::proxy::tunnel::Tunnels;

/// The request handler shared by every client connection.
#[derive(Debug)]
pub struct Proxy {
    pool: Arc<Pool>,
    health: Option<HealthReporter>,
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
    /// its tunnel started in `tunnels` (see [Upgrades](crate::proxy#upgrades)).
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
        let limits = &snapshot.config().limits;
        let body = ClientBody::new(body, parts.version, limits);
        // Checked before the hop-by-hop headers go.
        let rejection = check_request(&parts, limits);
        prepare(&mut parts, client_upgrade.is_some());
        let keyed = Keyed::new(&snapshot, &parts, peer);
        let record = access_record(&snapshot, &parts, peer, &keyed, started);
        headers::set_forwarded(&mut parts.headers, peer, snapshot.is_trusted(peer));

        let mut attempts = Attempts {
            bytes_in: record.as_ref().map(|r| r.bytes_in.clone()),
            ..Attempts::default()
        };
        let result = match rejection {
            Some(rejection) => Err(rejection),
            None => {
                let mut forwarding = Forwarding {
                    pool: &self.pool,
                    health: self.health.as_ref(),
                    snapshot: &snapshot,
                    key_hash: keyed.hash.unwrap_or(0),
                    attempts: &mut attempts,
                };
                forward(&mut forwarding, parts, body)
                    .await
                    .and_then(|answer| checked_switch(answer, client_upgrade.is_some()))
            }
        };
        let ending = Ending {
            started,
            record: record.map(|record| AccessRecord {
                attempts: attempts.count,
                failed: attempts.failed,
                fallback: attempts.fallback,
                ..record
            }),
            bytes_in: attempts.bytes_in,
        };
        match result {
            Ok(answer) => {
                let cookie = session_cookie(&snapshot, &keyed);
                self.respond(answer, client_upgrade, cookie, ending, tunnels)
            }
            Err(error) => self.answer_error(&error, peer, ending),
        }
    }

    /// The client's response from a backend's `answer`: its body streaming
    /// through, or, after a `101` to a request that asked to upgrade
    /// (`client_upgrade`), a tunnel between the two connections.
    fn respond(
        &self,
        answer: Answer,
        client_upgrade: Option<OnUpgrade>,
        cookie: Option<HeaderValue>,
        mut ending: Ending,
        tunnels: &Tunnels,
    ) -> Response<ProxyBody> {
        let Answer {
            mut response,
            connection,
            in_flight,
            backend,
        } = answer;
        // `checked_switch` let a `101` through only for an upgrade request.
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
        if let Some(cookie) = cookie {
            head.headers.append(SET_COOKIE, cookie);
        }
        if let Some(record) = ending.record.as_mut() {
            record.backend = Some(backend.clone());
            record.status = head.status.as_u16();
        }
        let answered = Answered {
            pool: self.pool.clone(),
            backend,
            status: head.status.as_u16(),
            started: ending.started,
            health: self.health.clone(),
        };
        let finish = Finish::new(in_flight, answered, ending.record);
        match upgrades {
            Some((client, backend)) => {
                // The backend connection becomes the tunnel's.
                drop(connection);
                tunnels.spawn(client, backend, finish, ending.bytes_in);
                Response::from_parts(head, ProxyBody::empty())
            }
            None => Response::from_parts(
                head,
                ProxyBody::Upstream(UpstreamBody::new(incoming, connection, finish)),
            ),
        }
    }

    /// The proxy's own answer for `error`, counted and logged.
    fn answer_error(
        &self,
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
        if let Some(name) = error.backend()
            && let Some(backend) = self.pool.snapshot().backend(name)
        {
            // The backend to blame for a 502 or 504: its last minute counts
            // it (a lookup by name, on the error path only).
            backend
                .state()
                .record_finished(status, elapsed, self.pool.ns_at(now));
        }
        self.pool
            .stats()
            .request_finished(error.backend(), status, elapsed);
        if let Some(mut record) = ending.record {
            record.status = status;
            record.log(0, "local");
        }
        response
    }
}

/// The access-log record of a request, with the access log on.
fn access_record(
    snapshot: &Snapshot,
    parts: &Parts,
    peer: IpAddr,
    keyed: &Keyed,
    started: Instant,
) -> Option<AccessRecord> {
    access::enabled().then(|| AccessRecord {
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
    })
}

/// The `Set-Cookie` header that hands a new client its session, if it got
/// one.
fn session_cookie(snapshot: &Snapshot, keyed: &Keyed) -> Option<HeaderValue> {
    let id = keyed.new_session.as_ref()?;
    let sticky = snapshot.config().balancer.sticky_cookie.as_ref()?;
    HeaderValue::from_str(&set_cookie(sticky, id)).ok()
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
