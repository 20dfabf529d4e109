//! What a failed attempt at a backend was, read from its error's chain of
//! causes: the step of the request path that decides whether a request is
//! sent again, and where, starts from this.

use std::error::Error as StdError;
use std::fmt;

use crate::proxy::request_body::BodyTooLarge;
use crate::proxy::upstream::UpstreamError;
use crate::proxy::upstream::h1;

/// What went wrong with one attempt, most specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be opened (refused, unreachable,
    /// `connect_timeout`): the request never reached the backend.
    Connect,
    /// The request body grew past `limits.max_body_bytes`.
    BodyTooLarge(BodyTooLarge),
    /// The client's own request body failed: a malformed chunk, or the
    /// client went away mid-body. Not the backend's failure.
    ClientBody,
    /// The backend closed or reset the connection before its response head.
    BrokenOff,
    /// Anything else after the backend accepted the connection.
    Other,
}

impl Failure {
    /// Classifies `error`. The body failures come before the backend's:
    /// hyper reports a failing request body as a user error, which is never
    /// the backend breaking off.
    pub fn of(error: &UpstreamError) -> Failure {
        if error.is_connect() {
            Failure::Connect
        } else if let Some(too_large) = body_too_large(error) {
            Failure::BodyTooLarge(too_large)
        } else if client_body_failed(error) {
            Failure::ClientBody
        } else if broken_off_by_backend(error) {
            Failure::BrokenOff
        } else {
            Failure::Other
        }
    }
}

/// The causes of `error`, nearest first (not `error` itself).
pub fn causes<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(error.source(), |&cause| cause.source())
}

/// Whether an exchange failed because the client's request body did (hyper
/// reports the body it was given failing as a user error).
fn client_body_failed(error: &UpstreamError) -> bool {
    causes(error).any(|cause| {
        cause
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
            || cause
                .downcast_ref::<h1::Error>()
                .is_some_and(h1::Error::is_request_body)
    })
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
        if let Some(h1_error) = cause.downcast_ref::<h1::Error>() {
            if h1_error.is_request_body() {
                return false;
            }
            backend |= h1_error.is_closed_before_head();
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

/// An error with its chain of causes, `: `-separated, for logs.
pub struct Chain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        causes(self.0).try_for_each(|cause| write!(f, ": {cause}"))
    }
}
