//! Header rewriting between client and backend: pure functions over a
//! [`HeaderMap`].
//!
//! hyper is a library, not a proxy: it forwards whatever headers it is given.
//! A proxy must remove the hop-by-hop headers, which describe one connection
//! and not the message (RFC 9110 §7.6.1), in both directions, and tell the
//! backend who the client was (`X-Forwarded-For`, `-Proto`, `-Host`, the de
//! facto headers nginx and HAProxy set).
//!
//! Upgrades are the one exception: `Upgrade` and `Connection: upgrade` are
//! hop-by-hop, yet a WebSocket handshake only works if they reach the backend
//! and its `101` answer reaches the client. For a request that asks to upgrade
//! ([`is_upgrade_request`]) and for the `101` that answers it,
//! [`strip_hop_by_hop_keeping_upgrade`] keeps exactly those two and removes
//! every other hop-by-hop header.

use std::net::IpAddr;

use hyper::Version;
use hyper::header::{
    CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

use crate::balance::key::{IpText, X_FORWARDED_FOR};

/// The `X-Forwarded-Proto` header.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The `X-Forwarded-Host` header.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The hop-by-hop headers of RFC 9110 §7.6.1 and RFC 2616 §13.5.1, plus the
/// non-standard `Proxy-Connection` that some clients still send.
pub static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Which of the [`HOP_BY_HOP`] headers a message has, found in one pass over
/// its names: the checks of a request that look for one of them ask this
/// first, and a header map is searched only for a header that is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopByHop(u16);

impl HopByHop {
    /// The hop-by-hop headers among `headers`' names.
    pub fn of(headers: &HeaderMap) -> HopByHop {
        // Bit i: `HOP_BY_HOP[i]` is present.
        let mut present = 0u16;
        for name in headers.keys() {
            if let Some(i) = hop_by_hop_index(name) {
                present |= 1 << i;
            }
        }
        HopByHop(present)
    }

    fn has(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }

    /// There is a `Connection` header.
    pub fn connection(self) -> bool {
        self.has(0)
    }

    /// There is a `TE` header.
    pub fn te(self) -> bool {
        self.has(5)
    }

    /// There is a `Transfer-Encoding` header.
    pub fn transfer_encoding(self) -> bool {
        self.has(7)
    }

    /// There is an `Upgrade` header.
    pub fn upgrade(self) -> bool {
        self.has(8)
    }
}

/// Removes the hop-by-hop headers: every header named in a `Connection`
/// header, then the fixed [`HOP_BY_HOP`] list. Used on requests and on
/// responses. Tokens in `Connection` that are not header names are ignored.
///
/// Runs on every request and response: one pass over the names finds which
/// hop-by-hop headers are there (usually none, or `Connection` alone), and
/// only those are removed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_present(headers, HopByHop::of(headers));
}

/// [`strip_hop_by_hop`], knowing which are `present` (`HopByHop::of` the
/// same headers).
pub fn strip_present(headers: &mut HeaderMap, present: HopByHop) {
    if present.0 == 0 {
        return;
    }
    if present.connection() {
        // Collected first: the names borrow from the map being changed.
        // Only names that are there and not removed below anyway, so that
        // the usual `Connection: keep-alive` or `close` allocates nothing.
        // `Host` is never hop-by-hop: a client naming it must not make the
        // backend see another host than the one it asked for.
        let named: Vec<HeaderName> = tokens(headers, &CONNECTION)
            // The usual token, and removed below anyway.
            .filter(|token| !token.eq_ignore_ascii_case(b"keep-alive"))
            .filter_map(|token| HeaderName::from_bytes(token).ok())
            .filter(|name| *name != HOST && !HOP_BY_HOP.contains(name))
            .filter(|name| headers.contains_key(name))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present.has(i) {
            headers.remove(name);
        }
    }
}

/// The index of `name` in [`HOP_BY_HOP`], if it is there: one string match
/// rather than nine header-name comparisons (this runs for every header of
/// every message).
pub fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-authenticate" => Some(2),
        "proxy-authorization" => Some(3),
        "proxy-connection" => Some(4),
        "te" => Some(5),
        "trailer" => Some(6),
        "transfer-encoding" => Some(7),
        "upgrade" => Some(8),
        _ => None,
    }
}

/// Whether a request asks to switch protocols (RFC 9110 §7.8), the way a
/// WebSocket handshake does (RFC 6455 §4.1): HTTP/1.1, a non-empty `Upgrade`
/// header, and the `upgrade` token in `Connection` (any case).
///
/// Never for HTTP/2, which has no `Upgrade` (RFC 9113 §8.6; its extended
/// `CONNECT` is not supported), nor for HTTP/1.0. Nor for `Upgrade: h2c`:
/// that asks to switch the client's own hop to HTTP/2, which the proxy
/// speaks itself (with prior knowledge), so, as Envoy does, it is stripped and
/// the request forwarded as an ordinary one.
///
/// `present`: the hop-by-hop headers among `headers` (`HopByHop::of` them).
pub fn is_upgrade_request(version: Version, headers: &HeaderMap, present: HopByHop) -> bool {
    version == Version::HTTP_11
        && present.connection()
        && present.upgrade()
        && tokens(headers, &CONNECTION).any(|token| token.eq_ignore_ascii_case(b"upgrade"))
        && tokens(headers, &UPGRADE).next().is_some()
        && !tokens(headers, &UPGRADE).any(|protocol| {
            let name = protocol.split(|&b| b == b'/').next().unwrap_or_default();
            name.trim_ascii().eq_ignore_ascii_case(b"h2c")
        })
}

/// [`strip_hop_by_hop`] for the two messages of an upgrade handshake: a
/// request that [asks to upgrade](is_upgrade_request) and the backend's
/// `101 Switching Protocols` answer. The `Upgrade` header stays as it was,
/// `Connection` becomes exactly `upgrade`, and every other hop-by-hop header
/// (including any other header `Connection` named) is removed.
pub fn strip_hop_by_hop_keeping_upgrade(headers: &mut HeaderMap) {
    let upgrade: Vec<HeaderValue> = headers.get_all(UPGRADE).iter().cloned().collect();
    strip_hop_by_hop(headers);
    for value in upgrade {
        headers.append(UPGRADE, value);
    }
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
}

/// The comma-separated tokens of every `name` header, trimmed, empty ones
/// skipped.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// Sets the headers that tell the backend about the client. Call it after
/// [`strip_hop_by_hop`], so that a client naming them in `Connection` cannot
/// remove them.
///
/// * `X-Forwarded-For`: when the TCP `peer` is a trusted proxy, its address
///   is appended to the list it sent (all its `X-Forwarded-For` headers,
///   joined into one); otherwise the header is replaced by the peer's address
///   alone, so a client cannot plant addresses.
/// * `X-Forwarded-Proto`: `proto`, the scheme the client used to reach us
///   (`https` on a TLS listener, else `http`).
/// * `X-Forwarded-Host`: the `Host` header the client sent; removed when
///   there is none.
///
/// The peer's address is written in canonical form (an IPv4-mapped IPv6
/// address as IPv4), as [`client_ip`](crate::balance::key::client_ip) reads it.
///
/// Returns whether there is a `Host` header (looked up here anyway).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    peer_trusted: bool,
    proto: &'static str,
) -> bool {
    let peer_text = IpText::new(peer.to_canonical());
    let forwarded_for = if peer_trusted && headers.contains_key(&X_FORWARDED_FOR) {
        let mut list = Vec::new();
        for value in headers.get_all(&X_FORWARDED_FOR) {
            let value = value.as_bytes().trim_ascii();
            if !value.is_empty() {
                list.extend_from_slice(value);
                list.extend_from_slice(b", ");
            }
        }
        list.extend_from_slice(peer_text.as_bytes());
        HeaderValue::from_bytes(&list)
    } else {
        HeaderValue::from_bytes(peer_text.as_bytes())
    };
    // Cannot fail: the bytes come from valid header values and an address.
    if let Ok(value) = forwarded_for {
        headers.insert(&X_FORWARDED_FOR, value);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match headers.get(HOST).cloned() {
        Some(host) => {
            headers.insert(&X_FORWARDED_HOST, host);
            true
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::key::test_support::header_map as map;

    /// [`is_upgrade_request`], with the hop-by-hop headers found as the
    /// handler finds them.
    fn upgrade_requested(version: Version, headers: &HeaderMap) -> bool {
        is_upgrade_request(version, headers, HopByHop::of(headers))
    }

    fn names(map: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    fn values<'a>(map: &'a HeaderMap, name: &HeaderName) -> Vec<&'a str> {
        map.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn every_fixed_hop_by_hop_header_is_removed_and_end_to_end_ones_stay() {
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("content-type", "text/plain"),
            ("content-length", "5"),
            ("host", "example.com"),
            ("authorization", "Bearer t"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(
            names(&h),
            ["authorization", "content-length", "content-type", "host"]
        );
    }

    #[test]
    fn headers_named_in_connection_are_removed_whatever_their_case_and_spacing() {
        let mut h = map(&[
            ("connection", "X-Hop-One ,x-hop-two"),
            ("connection", "  X-HOP-THREE"),
            ("x-hop-one", "1"),
            ("x-hop-two", "2"),
            ("x-hop-three", "3"),
            ("x-end-to-end", "4"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-end-to-end"]);
    }

    #[test]
    fn a_connection_header_naming_host_does_not_remove_host() {
        let mut h = map(&[
            ("connection", "Host, x-a"),
            ("host", "h.test"),
            ("x-a", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["host"]);
    }

    #[test]
    fn connection_tokens_that_are_not_header_names_are_ignored() {
        let mut h = map(&[("connection", "close, , bad token, é"), ("x-keep", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-keep"]);
    }

    fn websocket_handshake(connection: &str) -> HeaderMap {
        map(&[
            ("connection", connection),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("host", "chat.example"),
        ])
    }

    #[test]
    fn a_websocket_handshake_is_an_upgrade_request_whatever_the_token_case() {
        for connection in ["Upgrade", "upgrade", "keep-alive, UPGRADE", " Upgrade "] {
            assert!(
                upgrade_requested(Version::HTTP_11, &websocket_handshake(connection)),
                "{connection:?}"
            );
        }
        let mut split = map(&[
            ("connection", "keep-alive"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(upgrade_requested(Version::HTTP_11, &split));
        split.remove(UPGRADE);
        assert!(!upgrade_requested(Version::HTTP_11, &split));
    }

    #[test]
    fn upgrade_needs_both_headers_http_1_1_and_a_protocol_other_than_h2c() {
        let no_token = websocket_handshake("keep-alive, x-upgrade");
        assert!(!upgrade_requested(Version::HTTP_11, &no_token));
        let no_upgrade = map(&[("connection", "upgrade")]);
        assert!(!upgrade_requested(Version::HTTP_11, &no_upgrade));
        let empty_upgrade = map(&[("connection", "upgrade"), ("upgrade", " , ")]);
        assert!(!upgrade_requested(Version::HTTP_11, &empty_upgrade));
        for version in [Version::HTTP_10, Version::HTTP_2, Version::HTTP_3] {
            let handshake = websocket_handshake("upgrade");
            assert!(!upgrade_requested(version, &handshake), "{version:?}");
        }
        for h2c in ["h2c", "H2C", "websocket, h2c/2"] {
            let h = map(&[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", h2c)]);
            assert!(!upgrade_requested(Version::HTTP_11, &h), "{h2c:?}");
        }
    }

    #[test]
    fn keeping_upgrade_keeps_only_upgrade_and_connection_upgrade() {
        let mut h = map(&[
            ("connection", "Upgrade, X-Hop"),
            ("connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("upgrade", "chat/2"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        strip_hop_by_hop_keeping_upgrade(&mut h);
        assert_eq!(names(&h), ["connection", "sec-websocket-key", "upgrade"]);
        assert_eq!(values(&h, &CONNECTION), ["upgrade"]);
        assert_eq!(values(&h, &UPGRADE), ["websocket", "chat/2"]);
    }

    #[test]
    fn an_ordinary_strip_removes_the_upgrade_headers_of_a_handshake() {
        let mut h = websocket_handshake("Upgrade");
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["host", "sec-websocket-key"]);
    }

    #[test]
    fn x_forwarded_for_is_replaced_when_the_peer_is_not_trusted() {
        let mut h = map(&[("x-forwarded-for", "1.2.3.4"), ("host", "a.example")]);
        set_forwarded(&mut h, "192.0.2.7".parse().unwrap(), false, "http");
        assert_eq!(values(&h, &X_FORWARDED_FOR), ["192.0.2.7"]);
    }

    #[test]
    fn x_forwarded_for_gets_the_peer_appended_when_the_peer_is_trusted() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.1, 198.51.100.2"),
            ("x-forwarded-for", " 10.0.0.3 "),
        ]);
        set_forwarded(&mut h, "10.0.0.4".parse().unwrap(), true, "http");
        assert_eq!(
            values(&h, &X_FORWARDED_FOR),
            ["203.0.113.1, 198.51.100.2, 10.0.0.3, 10.0.0.4"]
        );
    }

    #[test]
    fn a_trusted_peer_without_x_forwarded_for_starts_the_list() {
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, "::ffff:10.0.0.4".parse().unwrap(), true, "http");
        assert_eq!(values(&h, &X_FORWARDED_FOR), ["10.0.0.4"]);
    }

    #[test]
    fn proto_is_http_and_host_is_copied_to_x_forwarded_host() {
        let mut h = map(&[
            ("host", "shop.example:8080"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        assert!(set_forwarded(
            &mut h,
            "2001:db8::1".parse().unwrap(),
            false,
            "http"
        ));
        assert_eq!(values(&h, &X_FORWARDED_PROTO), ["http"]);
        assert_eq!(values(&h, &X_FORWARDED_HOST), ["shop.example:8080"]);
        assert_eq!(values(&h, &HOST), ["shop.example:8080"]);
        assert_eq!(values(&h, &X_FORWARDED_FOR), ["2001:db8::1"]);
    }

    #[test]
    fn without_host_a_planted_x_forwarded_host_is_removed() {
        let mut h = map(&[("x-forwarded-host", "evil.example")]);
        assert!(!set_forwarded(
            &mut h,
            "192.0.2.1".parse().unwrap(),
            true,
            "http"
        ));
        assert!(h.get(&X_FORWARDED_HOST).is_none());
    }

    #[test]
    fn a_connection_header_naming_x_forwarded_for_cannot_remove_the_proxys_value() {
        let mut h = map(&[
            (
                "connection",
                "X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto",
            ),
            ("x-forwarded-for", "1.2.3.4"),
            ("host", "a.example"),
        ]);
        strip_hop_by_hop(&mut h);
        set_forwarded(&mut h, "10.0.0.9".parse().unwrap(), true, "http");
        assert_eq!(values(&h, &X_FORWARDED_FOR), ["10.0.0.9"]);
        assert_eq!(values(&h, &X_FORWARDED_PROTO), ["http"]);
        assert_eq!(values(&h, &X_FORWARDED_HOST), ["a.example"]);
    }

    #[test]
    fn the_presence_of_each_hop_by_hop_header_is_found_in_one_pass() {
        assert_eq!(HopByHop::of(&map(&[("host", "a")])), HopByHop(0));
        let present = HopByHop::of(&map(&[
            ("Connection", "upgrade"),
            ("upgrade", "websocket"),
            ("host", "a"),
        ]));
        assert!(present.connection() && present.upgrade());
        assert!(!present.te() && !present.transfer_encoding());
        let present = HopByHop::of(&map(&[
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
        ]));
        assert!(present.te() && present.transfer_encoding());
        assert!(!present.connection() && !present.upgrade());
    }

    #[test]
    fn the_hop_by_hop_index_agrees_with_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        for name in [
            HOST,
            hyper::header::CONTENT_LENGTH,
            X_FORWARDED_PROTO.clone(),
        ] {
            assert_eq!(hop_by_hop_index(&name), None, "{name}");
        }
    }

    /// The plain statement of what [`strip_hop_by_hop`] does, with no
    /// shortcuts: the model the property test holds it to.
    fn strip_model(headers: &mut HeaderMap) {
        let named: Vec<HeaderName> = tokens(headers, &CONNECTION)
            // The usual token, and removed below anyway.
            .filter(|token| !token.eq_ignore_ascii_case(b"keep-alive"))
            .filter_map(|token| HeaderName::from_bytes(token).ok())
            .filter(|name| *name != HOST)
            .collect();
        for name in named {
            headers.remove(name);
        }
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        #[test]
        fn stripping_equals_the_model_for_any_mix_of_headers(
            picks in proptest::collection::vec((0usize..16, 0usize..12), 0..12),
        ) {
            // Names and values drawn from a small vocabulary, so that
            // `Connection` often names headers that are there.
            const NAMES: [&str; 16] = [
                "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
                "host", "x-a", "x-b", "content-length", "close", "accept", "x-forwarded-for",
            ];
            const VALUES: [&str; 12] = [
                "keep-alive", "close", "x-a", "X-B, close", "host", "Upgrade",
                " x-a ,, te ", "content-length", "not a name", "1", "accept", "",
            ];
            let mut original = HeaderMap::new();
            for (name, value) in picks {
                original.append(
                    HeaderName::from_static(NAMES[name]),
                    HeaderValue::from_static(VALUES[value]),
                );
            }
            let mut fast = original.clone();
            let mut model = original;
            strip_hop_by_hop(&mut fast);
            strip_model(&mut model);
            proptest::prop_assert_eq!(fast, model);
        }
    }
}
