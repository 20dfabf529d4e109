//! Backend URLs: what a backend's `url` may be, how `--check` shows it, and
//! the address a connection to it goes to.

use http::Uri;
use http::uri::{Authority, PathAndQuery};

/// A backend URL: `http://host[:port]`, `https://host[:port]` or
/// `tcp://host:port` (a backend of tcp listeners) with at most a `/` path;
/// an `https` URL without a port gets `:443` written out, so that every
/// address to connect to has its port.
pub(super) fn parse_backend_url(text: &str) -> Result<Uri, String> {
    const FORM: &str = "write it as http://HOST:PORT, https://HOST:PORT or tcp://HOST:PORT";
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a valid URL ({e}); {FORM}"))?;
    let Some(authority) = uri.authority() else {
        return Err(format!("{text:?} is not an absolute URL; {FORM}"));
    };
    match uri.scheme_str() {
        Some("http" | "https" | "tcp") => {}
        Some(other) => return Err(format!("unsupported scheme {other:?} in {text:?}; {FORM}")),
        None => {
            return Err(format!(
                "{text:?} has no scheme; write it as \"http://{text}\""
            ));
        }
    }
    if authority.as_str().contains('@') {
        return Err(format!(
            "{text:?} contains user credentials, which are not supported"
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("{text:?} has no host; {FORM}"));
    }
    // The http crate accepts any text after the host's colon; require a real port.
    let after_host = match authority.as_str().strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(_, rest)| rest),
        None => authority
            .as_str()
            .split_once(':')
            .map_or("", |(_, port)| port),
    };
    let port = after_host.strip_prefix(':').unwrap_or(after_host);
    if !port.is_empty() && !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return Err(format!(
            "{port:?} in {text:?} is not a port number between 1 and 65535"
        ));
    }
    if let Some(path) = uri.path_and_query().map(PathAndQuery::as_str)
        && path != "/"
    {
        return Err(format!(
            "{text:?} has a path or query ({path:?}); backend URLs cannot have one because each request's own path is forwarded unchanged; {FORM}"
        ));
    }
    if uri.scheme_str() == Some("tcp") && port.is_empty() {
        return Err(format!(
            "{text:?} has no port; a tcp:// backend needs one; {FORM}"
        ));
    }
    if uri.scheme_str() == Some("https") && port.is_empty() {
        let explicit = format!("https://{}:443", authority.as_str());
        return explicit
            .parse()
            .map_err(|e| format!("{text:?} is not a valid URL ({e}); {FORM}"));
    }
    Ok(uri)
}

/// A backend URL as an operator writes it: `http://host:port`, without the
/// `/` path that `Uri` adds.
pub(super) fn backend_url_text(url: &Uri) -> String {
    match (url.scheme_str(), url.authority()) {
        (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
        _ => url.to_string(),
    }
}

/// What to connect to for `authority`: `host:port`, port 80 when it has
/// none. An IPv6 host keeps its brackets, so this parses as a socket address
/// (and a name is looked up, each of its addresses tried in turn).
pub fn connect_address(authority: &Authority) -> String {
    format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connect_address_has_a_port_and_keeps_ipv6_brackets() {
        for (authority, address) in [
            ("127.0.0.1:9001", "127.0.0.1:9001"),
            ("backend.internal", "backend.internal:80"),
            ("[::1]:8080", "[::1]:8080"),
            ("[::1]", "[::1]:80"),
        ] {
            let authority: Authority = authority.parse().unwrap();
            assert_eq!(connect_address(&authority), address);
            if !address.starts_with("backend") {
                assert!(address.parse::<std::net::SocketAddr>().is_ok(), "{address}");
            }
        }
    }
}
