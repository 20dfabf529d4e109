//! The admin write API: drain, undrain and reweigh a backend at runtime.
//!
//! | request | effect |
//! |---|---|
//! | `POST /pools/P/backends/B/drain` | `B` takes no new keys or sessions; pinned sessions and requests in flight still reach it |
//! | `POST /pools/P/backends/B/undrain` | `B` takes its keys back (over `slow_start` when the pool has one) |
//! | `PUT /pools/P/backends/B/weight` | body: an integer `1..=1000`, the backend's new weight |
//!
//! Each answers `200` with the backend's new state as JSON, once the
//! snapshot that has it is published. A change lasts while the backend's
//! name stays in the pool, across reloads; setting the file's own value
//! removes the override ([`crate::pool::runtime`]).
//!
//! Authentication: `Authorization: Bearer TOKEN`, where TOKEN is the
//! content of `admin.token_file` (surrounding whitespace trimmed), read at
//! each write so a new token takes effect at once. The presented and the
//! configured token are both hashed with SHA-256 and the digests compared
//! with [`subtle::ConstantTimeEq`], so the time taken depends on neither
//! the position of the first wrong byte nor the configured token's length.
//! Without `token_file` the write API does not exist (`404`); a missing or
//! wrong token is `401` (checked before anything else is looked up, so an
//! unauthenticated client learns nothing about pools or backends). Every
//! write, and every refused one, is logged with its source address.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::admin::reply::{AdminResponse, ErrorBody, json};
use crate::balance::member::MAX_WEIGHT;
use crate::pool::Override;
use crate::pool::checks::SetError;
use crate::pool::routing::Pools;
use crate::pool::runtime::Change;

/// The longest body a write takes (a weight).
const MAX_BODY: usize = 64;

/// Whether `path` is one of the write API's.
pub fn is_write_path(path: &str) -> bool {
    path.starts_with("/pools/")
}

/// What a write asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The pool's name.
    pub pool: String,
    /// The backend's name.
    pub backend: String,
    /// What to do.
    pub action: Action,
}

/// The three writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `POST …/drain`.
    Drain,
    /// `POST …/undrain`.
    Undrain,
    /// `PUT …/weight`.
    Weight,
}

impl Action {
    /// The method it takes.
    pub fn method(self) -> Method {
        match self {
            Action::Drain | Action::Undrain => Method::POST,
            Action::Weight => Method::PUT,
        }
    }

    /// Its path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Drain => "drain",
            Action::Undrain => "undrain",
            Action::Weight => "weight",
        }
    }
}

/// `/pools/P/backends/B/ACTION`, names percent-decoded (UTF-8); `None` for
/// any other shape.
pub fn parse_path(path: &str) -> Option<Target> {
    let mut parts = path.strip_prefix("/pools/")?.split('/');
    let (pool, backends, backend, action) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || backends != "backends" || pool.is_empty() || backend.is_empty() {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    };
    let action = match action {
        "drain" => Action::Drain,
        "undrain" => Action::Undrain,
        "weight" => Action::Weight,
        _ => return None,
    };
    Some(Target {
        pool: decode(pool)?,
        backend: decode(backend)?,
        action,
    })
}

/// Whether `presented` (an `Authorization` header's value) is `Bearer`
/// followed by `token`, compared in constant time (see the module).
pub fn authorized(presented: Option<&HeaderValue>, token: &[u8]) -> bool {
    let Some(presented) = presented.map(HeaderValue::as_bytes) else {
        return false;
    };
    let Some(given) = presented
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
        .map(|_| presented[7..].trim_ascii())
    else {
        return false;
    };
    let digest = |bytes: &[u8]| ring::digest::digest(&ring::digest::SHA256, bytes);
    let (given, expected) = (digest(given), digest(token));
    given.as_ref().ct_eq(expected.as_ref()).into()
}

/// Whether the token file at `path` can be read and holds a token (for
/// startup and `--check`; writes read it again each time).
pub fn check_token_file(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read admin.token_file {}: {e}", path.display()))?;
    match bytes.trim_ascii().len() {
        0 => Err(format!("admin.token_file {} is empty", path.display())),
        n if n < MIN_TOKEN => Err(format!(
            "admin.token_file {} holds a token of {n} characters; use at least {MIN_TOKEN} (for example `openssl rand -hex 32`)",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// The shortest token accepted.
const MIN_TOKEN: usize = 16;

/// Reads the token file: its content, whitespace trimmed; an error when it
/// cannot be read or is empty.
async fn read_token(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read admin.token_file {}: {e}", path.display()))?;
    let token = bytes.trim_ascii();
    if token.len() < MIN_TOKEN {
        return Err(format!(
            "admin.token_file {} holds no token of at least {MIN_TOKEN} characters",
            path.display()
        ));
    }
    Ok(token.to_vec())
}

fn error(status: StatusCode, message: impl Into<String>) -> AdminResponse {
    json(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
}

/// The answer to a write request from `peer` (a path for which
/// [`is_write_path`] holds).
pub async fn respond(pools: &Pools, request: Request<Incoming>, peer: SocketAddr) -> AdminResponse {
    let routing = pools.routing_full();
    let token_file = routing
        .config()
        .admin
        .as_ref()
        .and_then(|a| a.token_file.clone());
    let Some(token_file) = token_file else {
        return error(
            StatusCode::NOT_FOUND,
            "not found: the write API is off (set admin.token_file to turn it on)",
        );
    };
    let Some(target) = parse_path(request.uri().path()) else {
        return error(
            StatusCode::NOT_FOUND,
            "not found: use /pools/POOL/backends/BACKEND/drain, /undrain or /weight",
        );
    };
    if request.method() != target.action.method() {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{} takes {}",
                target.action.as_str(),
                target.action.method()
            ),
        );
        let allow = HeaderValue::from_static(match target.action.method() {
            Method::PUT => "PUT",
            _ => "POST",
        });
        response.headers_mut().insert(ALLOW, allow);
        return response;
    }
    let token = match read_token(&token_file).await {
        Ok(token) => token,
        Err(problem) => {
            tracing::error!(source = %peer, %problem, "admin write refused: no token to check against");
            return error(StatusCode::INTERNAL_SERVER_ERROR, problem);
        }
    };
    if !authorized(request.headers().get(AUTHORIZATION), &token) {
        tracing::warn!(
            source = %peer,
            path = %request.uri().path(),
            "admin write refused: missing or wrong bearer token"
        );
        let mut response = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"affinity admin\""),
        );
        return response;
    }
    let change = match target.action {
        Action::Drain => Change::Drain(true),
        Action::Undrain => Change::Drain(false),
        Action::Weight => match read_weight(request.into_body()).await {
            Ok(weight) => Change::Weight(weight),
            Err(problem) => return error(StatusCode::BAD_REQUEST, problem),
        },
    };
    let Some(routed) = routing.pool(&target.pool) else {
        return error(StatusCode::NOT_FOUND, format!("no pool {:?}", target.pool));
    };
    let Some(controller) = &routed.health else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this pool has no controller to apply changes",
        );
    };
    let backend: Arc<str> = Arc::from(target.backend.as_str());
    match controller.set(backend.clone(), change).await {
        Ok(()) => {}
        Err(SetError::UnknownBackend(_)) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("pool {:?} has no backend {:?}", target.pool, target.backend),
            );
        }
        Err(SetError::Pool(problem)) => {
            tracing::warn!(source = %peer, pool = %target.pool, %backend, action = target.action.as_str(), %problem, "admin write not applied");
            return error(StatusCode::CONFLICT, format!("not applied: {problem}"));
        }
        Err(SetError::Stopped) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the proxy is shutting down",
            );
        }
    }
    tracing::info!(
        source = %peer,
        pool = %target.pool,
        %backend,
        action = target.action.as_str(),
        change = ?change,
        "admin write applied"
    );
    let snapshot = routed.pool.snapshot();
    match snapshot.backend(&backend) {
        Some(b) => {
            let file = snapshot
                .file_config()
                .backends
                .iter()
                .find(|f| f.name == *backend);
            json(
                StatusCode::OK,
                &BackendState {
                    pool: &target.pool,
                    backend: &backend,
                    healthy: b.is_healthy(),
                    draining: b.is_draining(),
                    weight: b.weight(),
                    slow_start: b.progress(),
                    in_flight: b.state().in_flight(),
                    file: file.map(|f| FileState {
                        draining: f.drain,
                        weight: f.weight,
                    }),
                    overrides: b.overrides(),
                },
            )
        }
        // Removed by a reload in between.
        None => error(StatusCode::NOT_FOUND, format!("no backend {backend:?}")),
    }
}

/// A weight body: an integer in `1..=MAX_WEIGHT`, surrounding whitespace
/// allowed.
async fn read_weight(body: Incoming) -> Result<u32, String> {
    let bytes: Bytes = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|_| format!("the body must be a weight of at most {MAX_BODY} bytes"))?
        .to_bytes();
    parse_weight(&bytes)
}

/// A weight body's value, or why it is not one.
pub fn parse_weight(bytes: &[u8]) -> Result<u32, String> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|w| (1..=MAX_WEIGHT).contains(w))
        .ok_or_else(|| format!("the body must be a weight, an integer from 1 to {MAX_WEIGHT}"))
}

/// A backend's state after a write.
#[derive(Debug, Serialize)]
struct BackendState<'a> {
    pool: &'a str,
    backend: &'a str,
    healthy: bool,
    draining: bool,
    weight: u32,
    /// Slow-start progress, 0 to 1 (1: its full share).
    slow_start: f64,
    in_flight: u64,
    /// What the file says.
    file: Option<FileState>,
    /// What the admin API overrides (`null`: the file's value).
    overrides: Override,
}

#[derive(Debug, Serialize)]
struct FileState {
    draining: bool,
    weight: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_paths_name_a_pool_a_backend_and_an_action() {
        assert_eq!(
            parse_path("/pools/api/backends/web%201/drain"),
            Some(Target {
                pool: "api".into(),
                backend: "web 1".into(),
                action: Action::Drain
            })
        );
        assert_eq!(
            parse_path("/pools/a/backends/b/weight").map(|t| t.action),
            Some(Action::Weight)
        );
        for bad in [
            "/pools/a/backends/b",
            "/pools/a/backends/b/drain/x",
            "/pools//backends/b/drain",
            "/pools/a/members/b/drain",
            "/pools/a/backends/b/stop",
            "/pools/a/backends/%ff/drain",
        ] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let token = b"s3cret-token-0123456789";
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(authorized(
            Some(&header("Bearer s3cret-token-0123456789")),
            token
        ));
        assert!(authorized(
            Some(&header("bearer s3cret-token-0123456789")),
            token
        ));
        assert!(!authorized(None, token));
        for wrong in [
            "Bearer s3cret-token-012345678",
            "Bearer s3cret-token-01234567890",
            "Bearer S3cret-token-0123456789",
            "Basic s3cret-token-0123456789",
            "s3cret-token-0123456789",
            "Bearer",
            "Bearer ",
        ] {
            assert!(!authorized(Some(&header(wrong)), token), "{wrong}");
        }
    }

    #[test]
    fn a_weight_is_an_integer_from_1_to_the_maximum() {
        assert_eq!(parse_weight(b"5"), Ok(5));
        assert_eq!(parse_weight(b" 1000\n"), Ok(1000));
        for bad in [&b"0"[..], b"1001", b"-1", b"2.5", b"", b"five", b"\xff"] {
            assert!(parse_weight(bad).is_err(), "{bad:?}");
        }
    }
}
