//! What the proxy checks and changes on a client's request before it
//! forwards it.

use hyper::header::{HOST, HeaderValue, TE, TRANSFER_ENCODING};
use hyper::http::request::Parts;
use hyper::{Method, Version};

use crate::config::LimitsConfig;
use crate::proxy::error::ProxyError;
use crate::proxy::framing::AmbiguousRequest;
use crate::proxy::headers::{self, HopByHop};

/// Removes the hop-by-hop headers (keeping `Upgrade` for a request that
/// `upgrades`) and, for a request whose target has an authority (an HTTP/2
/// request's `:authority`, or an HTTP/1.1 absolute-form target), sets
/// `Host` to it: RFC 9112 §3.2.2 has a server ignore `Host` then, and
/// RFC 9113 §8.3.1 has `:authority` win. So routes and keys see, and the
/// backend gets, the host the target names.
///
/// `hop_by_hop`: the hop-by-hop headers `parts` has (`HopByHop::of` them).
pub fn prepare(parts: &mut Parts, upgrades: bool, hop_by_hop: HopByHop) {
    // `TE: trailers` is hop-by-hop, but says the client takes trailers: an
    // HTTP/2 backend (gRPC) is told so again.
    let trailers = hop_by_hop.te()
        && parts.headers.get_all(TE).iter().any(|value| {
            value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        });
    if trailers {
        parts.extensions.insert(TakesTrailers);
    }
    if upgrades {
        headers::strip_hop_by_hop_keeping_upgrade(&mut parts.headers);
    } else {
        headers::strip_present(&mut parts.headers, hop_by_hop);
    }
    if let Some(authority) = parts.uri.authority() {
        let host = match authority.port() {
            Some(port) => format!("{}:{port}", authority.host()),
            None => authority.host().to_owned(),
        };
        if let Ok(host) = HeaderValue::from_str(&host) {
            parts.headers.insert(HOST, host);
        }
    }
}

/// Marks a request whose client sent `TE: trailers`.
#[derive(Debug, Clone, Copy)]
pub struct TakesTrailers;

/// The problem with a request that must not be forwarded, if any (RFC 9112
/// §3.2 and §6.1, and `limits`). hyper itself refuses malformed heads,
/// invalid or conflicting `Content-Length`s and codings that do not end in
/// `chunked`; it leaves these to the proxy. `hop_by_hop`: the hop-by-hop
/// headers `parts` has (`HopByHop::of` them).
pub fn check_request(
    parts: &Parts,
    limits: &LimitsConfig,
    hop_by_hop: HopByHop,
) -> Option<ProxyError> {
    // hyper's HTTP/1 server refuses a head with more fields itself (with the
    // same count: one a header line, the request line apart); its HTTP/2
    // server has no such limit. An HTTP/2 request's fields are counted as
    // received, each repeated name and each cookie crumb once, and the
    // pseudo-headers (`:method`, `:path`...) not at all: they are HTTP/1's
    // request line.
    if parts.method == Method::CONNECT {
        // A tunnel to anywhere: not what a reverse proxy forwards.
        return Some(ProxyError::UnsupportedMethod(Method::CONNECT));
    }
    let fields = parts.headers.len();
    if u32::try_from(fields).map_or(true, |fields| fields > limits.max_headers) {
        return Some(ProxyError::TooManyHeaders {
            fields,
            limit: limits.max_headers,
        });
    }
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
    if !hop_by_hop.transfer_encoding() {
        return None;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/2 request's parts with `names` as its header fields, in order.
    fn parts_with(names: &[String]) -> Parts {
        let mut request = hyper::Request::get("http://affinity.test/").version(Version::HTTP_2);
        for name in names {
            request = request.header(name.as_str(), "1");
        }
        request.body(()).unwrap().into_parts().0
    }

    /// `check_request`, with the hop-by-hop headers found as the handler
    /// finds them.
    fn check(parts: &Parts, limits: &LimitsConfig) -> Option<ProxyError> {
        check_request(parts, limits, HopByHop::of(&parts.headers))
    }

    fn limits(max_headers: u32) -> LimitsConfig {
        LimitsConfig {
            max_headers,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn a_request_over_max_headers_is_refused_and_one_at_the_limit_is_not() {
        let names: Vec<String> = (0..11).map(|i| format!("x-{i}")).collect();
        let over = check(&parts_with(&names), &limits(10));
        assert!(
            matches!(
                over,
                Some(ProxyError::TooManyHeaders {
                    fields: 11,
                    limit: 10
                })
            ),
            "{over:?}"
        );
        assert!(check(&parts_with(&names[..10]), &limits(10)).is_none());
    }

    #[test]
    fn every_field_of_a_repeated_name_counts() {
        let names = vec!["cookie".to_owned(); 3];
        let parts = parts_with(&names);
        assert!(check(&parts, &limits(3)).is_none());
        assert!(check(&parts, &limits(2)).is_some());
    }
}
