//! What the proxy checks and changes on a client's request before it
//! forwards it.

use hyper::header::{HOST, HeaderValue, TRANSFER_ENCODING};
use hyper::http::request::Parts;
use hyper::{Method, Version};

use crate::proxy::error::ProxyError;
use crate::proxy::framing::AmbiguousRequest;
use crate::proxy::headers;

/// Removes the hop-by-hop headers (keeping `Upgrade` for a request that
/// `upgrades`) and, for an HTTP/2 or absolute-form request without `Host`,
/// sets `Host` from the request's authority, so `Host` reaches the backend as
/// the client meant it.
pub fn prepare(parts: &mut Parts, upgrades: bool) {
    if upgrades {
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
}

/// The problem with a request that must not be forwarded, if any (RFC 9112
/// §3.2 and §6.1). hyper itself refuses malformed heads, invalid or
/// conflicting `Content-Length`s and codings that do not end in `chunked`;
/// it leaves these to the proxy.
pub fn check_request(parts: &Parts) -> Option<ProxyError> {
    if parts.extensions.get::<AmbiguousRequest>().is_some() {
        // Seen on the raw bytes: hyper removes Content-Length from such a
        // request before the proxy sees it (see `crate::proxy::framing`).
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

/// Methods that mean the same whether sent once or twice (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
