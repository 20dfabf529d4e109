//! hyper's server settings for client connections, from `[limits]`.

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use crate::config::LimitsConfig;

/// Applies `limits` to an HTTP/1 server builder: hyper's own
/// (`http1::Builder`) and hyper-util's (`auto::Http1Builder`) have the same
/// setters but no common trait.
macro_rules! http1_limits {
    ($builder:expr, $limits:expr) => {{
        let limits: &LimitsConfig = $limits;
        // `mut`: hyper-util's builder is a guard taken by value.
        #[allow(unused_mut)]
        let mut builder = $builder;
        builder
            .timer(TokioTimer::new())
            // hyper starts this timer whenever it waits for a request head,
            // so it is also the keep-alive idle timeout.
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(usize::try_from(limits.max_header_bytes).unwrap_or(usize::MAX))
            // Responses are written from one buffer, the body's bytes copied
            // in after the head (as long as they fit hyper's buffer limit):
            // with writev, hyper keeps a queue of the body's buffers in every
            // connection, idle or not (320 bytes each).
            .writev(false);
        // Only when it differs from hyper's own limit: with the limit set
        // explicitly hyper builds its header arrays on the heap and fills
        // them for every request, instead of using uninitialised ones on
        // the stack.
        if limits.max_headers != HYPER_MAX_HEADERS {
            builder.max_headers(usize::try_from(limits.max_headers).unwrap_or(usize::MAX));
        }
    }};
}

/// hyper's connection settings: HTTP/1.1 or HTTP/2 (prior knowledge), with
/// timers for the header read timeout and HTTP/2 keep-alive.
pub(super) fn connection_builder(limits: &LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    http1_limits!(builder.http1(), limits);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes);
    builder
}

/// The HTTP/1 settings of [`connection_builder`], for connections served by
/// hyper's HTTP/1 server directly.
pub(super) fn http1_builder(limits: &LimitsConfig) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    http1_limits!(&mut builder, limits);
    builder
}

/// The number of headers hyper's HTTP/1 server accepts when not told
/// otherwise (its `DEFAULT_MAX_HEADERS`).
const HYPER_MAX_HEADERS: u32 = 100;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub(super) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
