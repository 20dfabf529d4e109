//! Why the proxy answers a request itself, and [`error_response`], the one
//! place where such an error becomes a status.

use std::sync::Arc;
use std::time::Duration;

use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};

use crate::proxy::request_body::BodyTooLarge;
use crate::proxy::response_body::ProxyBody;
use crate::proxy::upstream::UpstreamError;

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
    /// The request has more header fields than `limits.max_headers`.
    #[error("{fields} header fields, over the limit of {limit}")]
    TooManyHeaders {
        /// Fields in the request.
        fields: usize,
        /// The configured limit.
        limit: u32,
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
    /// No route of the listener matches the request's host and path, and
    /// the listener has no default pool.
    #[error("no route for this host and path")]
    NoRoute,
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
                | ProxyError::TooManyHeaders { .. }
                | ProxyError::UnsupportedMethod(_)
                | ProxyError::NoRoute
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
            | ProxyError::TooManyHeaders { .. }
            | ProxyError::BadRequest(_)
            | ProxyError::UnsupportedTransferCoding(_)
            | ProxyError::UnsupportedMethod(_)
            | ProxyError::NoRoute => None,
        }
    }
}

/// The response the client gets for `error`: a status and a short text body.
/// The only place where proxy errors become statuses.
#[cold]
#[inline(never)]
pub fn error_response(error: &ProxyError) -> Response<ProxyBody> {
    let (status, text) = match error {
        ProxyError::NoHealthyBackend | ProxyError::AllBackendsFailed { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "no healthy backend\n")
        }
        ProxyError::Connect { .. }
        | ProxyError::Upstream { .. }
        | ProxyError::UnexpectedSwitch { .. } => (StatusCode::BAD_GATEWAY, "bad gateway\n"),
        ProxyError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "gateway timeout\n"),
        ProxyError::NoRoute => (StatusCode::NOT_FOUND, "no route for this host and path\n"),
        ProxyError::AllBackendsFull { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "every backend is at its request limit\n",
        ),
        ProxyError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
        ProxyError::TooManyHeaders { .. } => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request header fields too large\n",
        ),
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
            rendered(ProxyError::TooManyHeaders {
                fields: 1000,
                limit: 100
            })
            .await,
            (431, "request header fields too large\n".to_owned())
        );
        assert_eq!(
            rendered(ProxyError::BadRequest("more than one Host header")).await,
            (400, "bad request\n".to_owned())
        );
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
