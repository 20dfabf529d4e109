//! The admin endpoint's answers: plain text, JSON, and the error body.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;

/// An admin answer.
pub(crate) type AdminResponse = Response<Full<Bytes>>;

/// `{"error": "..."}`.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorBody {
    /// What is wrong.
    pub(crate) error: String,
}

pub(crate) fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> AdminResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> AdminResponse {
    with_type(status, "text/plain; charset=utf-8", body)
}

pub(crate) fn json(status: StatusCode, value: &impl Serialize) -> AdminResponse {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            with_type(status, "application/json", body)
        }
        // Only a bug (a map with non-string keys) gets here.
        Err(error) => {
            tracing::error!(%error, "cannot render admin JSON");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the answer\n",
            )
        }
    }
}
