//! Request keys: the bytes of a request that the hash algorithms hash to pick
//! its backend.
//!
//! Pure functions over a request's URI, headers and TCP peer address: no I/O,
//! no clock, no allocation (the client IP is formatted into a stack buffer).
//! The proxy, the tests and the admin `/lookup` all go through
//! [`request_key`], so they cannot disagree about which bytes a request
//! hashes to.
//!
//! # Which bytes are hashed
//! Every `affinity` instance of one pool must hash the same bytes for the same
//! request, so this is part of the product contract:
//!
//! | `balancer.key` | bytes hashed |
//! |---|---|
//! | `client_ip` | the client address (see [`client_ip`]) in its canonical text form: IPv4 dotted quad (`192.0.2.7`), IPv6 as RFC 5952 lower-case compressed text (`2001:db8::1`); an IPv4-mapped IPv6 address counts as its IPv4 address |
//! | `url` | the request target's path and query exactly as received, e.g. `/a/b?x=1&y=2` (no scheme or authority, even for an absolute-form target); `/` when the target has neither |
//! | `path` | the path exactly as received, without the query, e.g. `/a/b` |
//! | `header:NAME` | the raw value bytes of the first `NAME` header (hyper has already removed the whitespace around it) |
//! | `cookie:NAME` | the value of the first cookie named `NAME` (case-sensitive) in the `Cookie` headers, without the whitespace around it and with any double quotes kept |
//!
//! A request without a value for its key (the header or cookie is absent, or
//! its value is empty) falls back to the `client_ip` bytes: a client that
//! sends no session still sticks to one backend, and such clients are spread
//! by address instead of all sharing the backend of the empty string.
//! [`RequestKey::origin`] tells which happened.
//!
//! The proxy reads the key from the request as it will be forwarded: after
//! the hop-by-hop headers are removed, before the `X-Forwarded-*` headers are
//! set.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::Uri;
use http::header::{COOKIE, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// What part of a request is hashed to pick its backend (`balancer.key`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// The client address (from `X-Forwarded-For` only behind a trusted proxy).
    ClientIp,
    /// The request target: path and query.
    Url,
    /// The request path without the query.
    Path,
    /// The value of this header; the name is stored lowercased.
    Header(HeaderName),
    /// The value of the cookie with this name.
    Cookie(String),
}

impl KeySource {
    /// The key spelled `text` in the config file, or why it is none.
    pub fn parse(text: &str) -> Result<KeySource, String> {
        match text {
            "client_ip" => return Ok(KeySource::ClientIp),
            "url" => return Ok(KeySource::Url),
            "path" => return Ok(KeySource::Path),
            _ => {}
        }
        if let Some(name) = text.strip_prefix("header:") {
            return HeaderName::from_bytes(name.as_bytes())
                .map(KeySource::Header)
                .map_err(|_| format!("{name:?} is not a valid HTTP header name"));
        }
        if let Some(name) = text.strip_prefix("cookie:") {
            return if is_cookie_token(name) {
                Ok(KeySource::Cookie(name.to_owned()))
            } else {
                Err(format!(
                    "{name:?} is not a valid cookie name (a non-empty token without spaces or ()<>@,;:\\\"/[]?={{}})"
                ))
            };
        }
        Err(format!(
            "unknown key {text:?}; expected client_ip, url, path, \"header:NAME\" or \"cookie:NAME\""
        ))
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::ClientIp => f.write_str("client_ip"),
            KeySource::Url => f.write_str("url"),
            KeySource::Path => f.write_str("path"),
            KeySource::Header(name) => write!(f, "header:{}", name.as_str()),
            KeySource::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

/// A cookie name: an RFC 6265 / RFC 2616 token (visible ASCII, no separators).
pub fn is_cookie_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// The `X-Forwarded-For` header.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Where a request's key bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    /// The configured key (`url`, `header:NAME`, ...), or `client_ip` when
    /// that is what is configured.
    Configured,
    /// The configured header or cookie was absent or empty: the client IP
    /// was used instead.
    ClientIpFallback,
}

/// The bytes a request hashes to, borrowed from the request where possible.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestKey<'a> {
    bytes: KeyBytes<'a>,
    origin: KeyOrigin,
}

#[derive(Clone, PartialEq, Eq)]
enum KeyBytes<'a> {
    Borrowed(&'a [u8]),
    Ip(IpText),
}

impl RequestKey<'_> {
    /// The bytes to hash.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.bytes {
            KeyBytes::Borrowed(bytes) => bytes,
            KeyBytes::Ip(text) => text.as_bytes(),
        }
    }

    /// Whether the configured key was used or the request fell back to its
    /// client IP.
    pub fn origin(&self) -> KeyOrigin {
        self.origin
    }
}

impl fmt::Debug for RequestKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestKey")
            .field("bytes", &String::from_utf8_lossy(self.as_bytes()))
            .field("origin", &self.origin)
            .finish()
    }
}

/// The key bytes of a request for `source` (see the module docs for exactly
/// which bytes). `peer` is the TCP peer; `trusted` the proxies whose
/// `X-Forwarded-For` is believed.
pub fn request_key<'a>(
    source: &KeySource,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    peer: IpAddr,
    trusted: &[IpNet],
) -> RequestKey<'a> {
    let configured = match source {
        KeySource::ClientIp => None,
        KeySource::Url => Some(
            uri.path_and_query()
                .map_or("/", |pq| pq.as_str())
                .as_bytes(),
        ),
        // An authority-form target (`host:port`) has no path: it is
        // forwarded as `/`, and keyed as `/` too.
        KeySource::Path => Some(match uri.path() {
            "" => b"/".as_slice(),
            path => path.as_bytes(),
        }),
        KeySource::Header(name) => headers.get(name).map(HeaderValue::as_bytes),
        KeySource::Cookie(name) => cookie(headers, name),
    };
    match configured {
        // A URL or path key is never empty, so only a header or cookie can
        // fall back here.
        Some(bytes) if !bytes.is_empty() => RequestKey {
            bytes: KeyBytes::Borrowed(bytes),
            origin: KeyOrigin::Configured,
        },
        _ => RequestKey {
            bytes: KeyBytes::Ip(IpText::new(client_ip(peer, headers, trusted))),
            origin: if matches!(source, KeySource::ClientIp) {
                KeyOrigin::Configured
            } else {
                KeyOrigin::ClientIpFallback
            },
        },
    }
}

/// Whether `ip` lies inside one of the `trusted` networks. An IPv4-mapped
/// IPv6 address is checked as its IPv4 address.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client's address.
///
/// When the TCP `peer` is not a trusted proxy it is the client, whatever
/// `X-Forwarded-For` says. When it is trusted, the `X-Forwarded-For` entries
/// (all such headers, in order, as one comma-separated list) are walked from
/// the right, skipping trusted addresses: the first untrusted address is the
/// client. If every entry is trusted, the left-most is the client. An entry
/// that is not an address (garbage, `unknown`) stops the walk: the address
/// reached before it is the client, as nginx's `real_ip_recursive` does. Empty
/// list elements are ignored (RFC 9110 §5.6.1). Entries may carry a port
/// (`192.0.2.7:443`, `[2001:db8::1]:443`) or brackets (`[2001:db8::1]`).
///
/// The result is canonical: an IPv4-mapped IPv6 address becomes IPv4.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        for entry in value.as_bytes().rsplit(|&b| b == b',') {
            let entry = trim_ows(entry);
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = parse_forwarded_ip(entry) else {
                return client;
            };
            client = ip;
            if !is_trusted(ip, trusted) {
                return ip;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry as an address, if it is one.
fn parse_forwarded_ip(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    let ip = IpAddr::from_str(text)
        .ok()
        .or_else(|| SocketAddr::from_str(text).ok().map(|s| s.ip()))
        .or_else(|| {
            text.strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| IpAddr::from_str(t).ok())
        })?;
    Some(ip.to_canonical())
}

/// The value of the first cookie called `name` in the request's `Cookie`
/// headers (RFC 6265 §5.4: `name=value` pairs separated by `;`), without the
/// whitespace around it. Pairs without `=` are skipped. `None` if there is no
/// such cookie; `Some(b"")` if it is present but empty.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(COOKIE).iter().find_map(|value| {
        value.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (pair_name, rest) = pair.split_at(eq);
            (trim_ows(pair_name) == name.as_bytes()).then(|| trim_ows(&rest[1..]))
        })
    })
}

/// `bytes` without leading and trailing spaces and tabs.
fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// An IP address's canonical text, formatted on the stack.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IpText {
    buf: [u8; IpText::CAPACITY],
    len: u8,
}

impl IpText {
    /// The longest text `IpAddr`'s `Display` writes (an IPv6 address with
    /// an embedded IPv4 address: `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`).
    const CAPACITY: usize = 45;

    /// The text of `ip` as its `Display` writes it.
    pub fn new(ip: IpAddr) -> IpText {
        let mut text = IpText {
            buf: [0; IpText::CAPACITY],
            len: 0,
        };
        match ip {
            // Every request writes its client's address at least once:
            // IPv4 digits are written directly, without the formatting
            // machinery.
            IpAddr::V4(v4) => {
                let mut at = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.buf[at] = b'.';
                        at += 1;
                    }
                    if octet >= 100 {
                        text.buf[at] = b'0' + octet / 100;
                        at += 1;
                    }
                    if octet >= 10 {
                        text.buf[at] = b'0' + octet / 10 % 10;
                        at += 1;
                    }
                    text.buf[at] = b'0' + octet % 10;
                    at += 1;
                }
                // At most 15 bytes: fits CAPACITY and a u8.
                text.len = at as u8;
            }
            // Cannot fail: CAPACITY is the longest output of `IpAddr`'s Display.
            IpAddr::V6(_) => {
                let _ = fmt::Write::write_fmt(&mut text, format_args!("{ip}"));
            }
        }
        text
    }

    /// The ASCII text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let start = usize::from(self.len);
        let end = start + s.len();
        let slot = self.buf.get_mut(start..end).ok_or(fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end as u8;
        Ok(())
    }
}

impl fmt::Debug for IpText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// Helpers for this crate's unit tests.
/// What separates a pinned cookie's session id from its pin: the format's
/// version, so that it can change later.
const PIN_MARK: &[u8] = b".v1.";

/// A pinned sticky cookie's value: `ID.v1.PIN`, the pin as 16 lowercase hex
/// digits.
pub fn pinned_value(id: &str, pin: u64) -> String {
    format!("{id}.v1.{pin:016x}")
}

/// A sticky cookie's value as (session id, pin). A value without a
/// well-formed pin (an unpinned cookie, another version, a tampered pin) is
/// all session id: hashed as it is, never an error.
pub fn split_pin(value: &[u8]) -> (&[u8], Option<u64>) {
    let at = value.windows(PIN_MARK.len()).rposition(|w| w == PIN_MARK);
    let Some(at) = at else {
        return (value, None);
    };
    let pin = &value[at + PIN_MARK.len()..];
    let well_formed = pin.len() == 16
        && pin
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    match std::str::from_utf8(pin).ok().filter(|_| well_formed) {
        Some(hex) => match u64::from_str_radix(hex, 16) {
            Ok(pin) => (&value[..at], Some(pin)),
            Err(_) => (value, None),
        },
        None => (value, None),
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use http::header::{HeaderMap, HeaderName, HeaderValue};

    /// A header map from (name, value) pairs, appended in order.
    pub(crate) fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn a_pinned_value_splits_into_its_id_and_pin_and_anything_else_is_all_id() {
        let value = pinned_value("00ff", 0xdead_beef);
        assert_eq!(value, "00ff.v1.00000000deadbeef");
        assert_eq!(
            split_pin(value.as_bytes()),
            (&b"00ff"[..], Some(0xdead_beef))
        );
        for odd in [
            "00ff",
            "00ff.v1.",
            "00ff.v1.DEADBEEF00000000",
            "00ff.v1.00000000deadbee",
            "00ff.v2.00000000deadbeef",
            "00ff.v1.00000000deadbeefa",
            "00ff.v1.0000000xdeadbeef",
        ] {
            assert_eq!(split_pin(odd.as_bytes()), (odd.as_bytes(), None), "{odd}");
        }
    }

    use proptest::prelude::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    use super::test_support::header_map as headers;

    fn key_text(source: &KeySource, target: &str, headers: &HeaderMap, peer: &str) -> String {
        let uri: Uri = target.parse().unwrap();
        let key = request_key(source, &uri, headers, ip(peer), &[]);
        String::from_utf8(key.as_bytes().to_vec()).unwrap()
    }

    // --- client_ip -----------------------------------------------------------

    #[test]
    fn an_authority_form_target_is_keyed_as_the_root_path_like_it_is_forwarded() {
        let uri: Uri = "example.com:80".parse().unwrap();
        assert_eq!(uri.path(), "");
        let headers = HeaderMap::new();
        let peer = IpAddr::from([192, 0, 2, 1]);
        for source in [KeySource::Url, KeySource::Path] {
            let key = request_key(&source, &uri, &headers, peer, &[]);
            assert_eq!(key.as_bytes(), b"/", "{source}");
            assert_eq!(key.origin(), KeyOrigin::Configured);
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_x_forwarded_for_says() {
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &[]), ip("10.0.0.1"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &nets(&["192.168.0.0/16"])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn a_trusted_peer_without_x_forwarded_for_is_the_client() {
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &nets(&["10.0.0.0/8"])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn behind_a_trusted_peer_the_rightmost_untrusted_address_is_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.9, 10.1.1.1")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.9"));
    }

    #[test]
    fn a_spoofed_leftmost_entry_is_ignored_when_a_nearer_entry_is_untrusted() {
        // The client wrote "1.1.1.1" itself; our trusted proxy appended the
        // client's real address.
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7")]);
        assert_eq!(client_ip(ip("10.9.9.9"), &h, &trusted), ip("198.51.100.7"));
    }

    #[test]
    fn when_every_entry_is_trusted_the_leftmost_is_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "10.3.3.3, 10.2.2.2")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.3.3.3"));
    }

    #[test]
    fn several_x_forwarded_for_headers_form_one_list_in_order() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.1, 203.0.113.2"),
            ("x-forwarded-for", "10.5.5.5"),
        ]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.2"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_address_reached() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.1, unknown, 10.2.2.2")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.2.2.2"));
        let h = headers(&[("x-forwarded-for", "203.0.113.1, nonsense")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn empty_list_elements_and_whitespace_are_ignored() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", " ,203.0.113.4 ,\t, ")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.4"));
        let h = headers(&[("x-forwarded-for", "")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn entries_with_ports_or_brackets_are_addresses() {
        let trusted = nets(&["10.0.0.0/8"]);
        for (entry, want) in [
            ("203.0.113.4:8443", "203.0.113.4"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("2001:DB8::7", "2001:db8::7"),
        ] {
            let h = headers(&[("x-forwarded-for", entry)]);
            assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip(want), "{entry}");
        }
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4_for_peer_trust_and_result() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "::ffff:203.0.113.4")]);
        let mapped_peer = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(client_ip(mapped_peer, &h, &trusted), ip("203.0.113.4"));
        assert_eq!(
            client_ip(mapped_peer, &HeaderMap::new(), &[]),
            ip("10.0.0.1")
        );
        assert!(is_trusted(mapped_peer, &trusted));
    }

    #[test]
    fn an_ipv6_trusted_network_is_honoured() {
        let trusted = nets(&["fd00::/8"]);
        let h = headers(&[("x-forwarded-for", "2001:db8::1, fd00::2")]);
        assert_eq!(client_ip(ip("fd00::1"), &h, &trusted), ip("2001:db8::1"));
    }

    // --- request_key ---------------------------------------------------------

    #[test]
    fn client_ip_keys_hash_the_canonical_text_of_the_address() {
        let none = HeaderMap::new();
        assert_eq!(
            key_text(&KeySource::ClientIp, "/", &none, "192.0.2.7"),
            "192.0.2.7"
        );
        assert_eq!(
            key_text(&KeySource::ClientIp, "/", &none, "2001:0DB8:0:0::1"),
            "2001:db8::1"
        );
        assert_eq!(
            key_text(&KeySource::ClientIp, "/", &none, "::ffff:192.0.2.7"),
            "192.0.2.7"
        );
    }

    #[test]
    fn a_client_ip_key_follows_x_forwarded_for_behind_a_trusted_proxy() {
        let uri: Uri = "/".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "203.0.113.50")]);
        let key = request_key(
            &KeySource::ClientIp,
            &uri,
            &h,
            ip("10.0.0.1"),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(key.as_bytes(), b"203.0.113.50");
        assert_eq!(key.origin(), KeyOrigin::Configured);
    }

    #[test]
    fn url_keys_hash_path_and_query_as_received() {
        let none = HeaderMap::new();
        for (target, want) in [
            ("/a/b?x=1&y=%20", "/a/b?x=1&y=%20"),
            ("/a/b", "/a/b"),
            ("/?", "/?"),
            ("http://example.com/p?q", "/p?q"),
            ("http://example.com", "/"),
            ("*", "*"),
        ] {
            assert_eq!(key_text(&KeySource::Url, target, &none, "10.0.0.1"), want);
        }
    }

    #[test]
    fn path_keys_hash_the_path_without_the_query() {
        let none = HeaderMap::new();
        for (target, want) in [
            ("/a/b?x=1", "/a/b"),
            ("/a/b", "/a/b"),
            ("http://example.com?q", "/"),
        ] {
            assert_eq!(key_text(&KeySource::Path, target, &none, "10.0.0.1"), want);
        }
    }

    #[test]
    fn header_keys_hash_the_first_value_of_the_header() {
        let source = KeySource::Header(HeaderName::from_static("x-user"));
        let h = headers(&[("X-User", "alice"), ("x-user", "bob")]);
        assert_eq!(key_text(&source, "/", &h, "10.0.0.1"), "alice");
    }

    #[test]
    fn a_missing_or_empty_header_falls_back_to_the_client_ip() {
        let source = KeySource::Header(HeaderName::from_static("x-user"));
        let uri: Uri = "/".parse().unwrap();
        for h in [HeaderMap::new(), headers(&[("x-user", "")])] {
            let key = request_key(&source, &uri, &h, ip("10.0.0.9"), &[]);
            assert_eq!(key.as_bytes(), b"10.0.0.9");
            assert_eq!(key.origin(), KeyOrigin::ClientIpFallback);
        }
    }

    #[test]
    fn cookie_keys_hash_the_value_of_the_named_cookie() {
        let source = KeySource::Cookie("session".into());
        for (cookie_header, want) in [
            ("session=abc", "abc"),
            ("a=1; session=abc; b=2", "abc"),
            ("a=1;session=abc", "abc"),
            ("  session  =  abc  ; b=2", "abc"),
            ("session=\"quoted\"", "\"quoted\""),
            ("session=a=b", "a=b"),
            ("flag; session=abc", "abc"),
            ("session=first; session=second", "first"),
        ] {
            let h = headers(&[("cookie", cookie_header)]);
            assert_eq!(
                key_text(&source, "/", &h, "10.0.0.1"),
                want,
                "{cookie_header}"
            );
        }
    }

    #[test]
    fn cookie_names_are_case_sensitive_and_whole() {
        let source = KeySource::Cookie("session".into());
        for cookie_header in ["Session=abc", "sessionid=abc", "my_session=abc", "session"] {
            let h = headers(&[("cookie", cookie_header)]);
            assert_eq!(
                key_text(&source, "/", &h, "10.0.0.1"),
                "10.0.0.1",
                "{cookie_header}"
            );
        }
    }

    #[test]
    fn cookies_split_over_several_headers_are_all_searched() {
        let source = KeySource::Cookie("session".into());
        let h = headers(&[("cookie", "a=1"), ("cookie", "session=xyz")]);
        assert_eq!(key_text(&source, "/", &h, "10.0.0.1"), "xyz");
    }

    #[test]
    fn a_missing_or_empty_cookie_falls_back_to_the_client_ip() {
        let source = KeySource::Cookie("session".into());
        let uri: Uri = "/".parse().unwrap();
        for h in [
            HeaderMap::new(),
            headers(&[("cookie", "other=1")]),
            headers(&[("cookie", "session=; other=1")]),
        ] {
            let key = request_key(&source, &uri, &h, ip("10.0.0.9"), &[]);
            assert_eq!(key.as_bytes(), b"10.0.0.9");
            assert_eq!(key.origin(), KeyOrigin::ClientIpFallback);
        }
    }

    #[test]
    fn ipv4_text_matches_display_for_every_octet_in_every_position() {
        for octet in 0..=255u8 {
            for position in 0..4 {
                let mut octets = [7, 70, 200, 0];
                octets[position] = octet;
                let addr = IpAddr::V4(Ipv4Addr::from(octets));
                assert_eq!(IpText::new(addr).as_bytes(), addr.to_string().as_bytes());
            }
        }
        // And a spread of whole addresses (a fixed LCG: repeatable).
        let mut x: u32 = 12345;
        for _ in 0..100_000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let addr = IpAddr::V4(Ipv4Addr::from(x));
            assert_eq!(IpText::new(addr).as_bytes(), addr.to_string().as_bytes());
        }
    }

    #[test]
    fn ip_text_matches_display_for_the_longest_addresses() {
        for addr in [
            IpAddr::V4(Ipv4Addr::new(255, 255, 255, 255)),
            IpAddr::V6(Ipv6Addr::new(
                0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
            )),
            ip("::ffff:255.255.255.255"),
            ip("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"),
            ip("::"),
        ] {
            assert_eq!(IpText::new(addr).as_bytes(), addr.to_string().as_bytes());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn key_extraction_never_panics_on_arbitrary_header_bytes(
            xff in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..4),
            cookies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..4),
            user in proptest::collection::vec(any::<u8>(), 0..64),
            peer in any::<[u8; 16]>(),
            v4 in any::<bool>(),
        ) {
            let mut h = HeaderMap::new();
            let value = |bytes: &[u8]| HeaderValue::from_bytes(bytes).ok();
            for bytes in &xff {
                if let Some(v) = value(bytes) { h.append(&X_FORWARDED_FOR, v); }
            }
            for bytes in &cookies {
                if let Some(v) = value(bytes) { h.append(COOKIE, v); }
            }
            if let Some(v) = value(&user) { h.append("x-user", v); }
            let peer = if v4 {
                IpAddr::from([peer[0], peer[1], peer[2], peer[3]])
            } else {
                IpAddr::from(peer)
            };
            let trusted = nets(&["0.0.0.0/0", "::/0"]);
            let uri: Uri = "/p?q".parse().unwrap();
            for source in [
                KeySource::ClientIp,
                KeySource::Url,
                KeySource::Path,
                KeySource::Header(HeaderName::from_static("x-user")),
                KeySource::Cookie("session".into()),
            ] {
                for trust in [&trusted[..], &[]] {
                    let key = request_key(&source, &uri, &h, peer, trust);
                    prop_assert!(!key.as_bytes().is_empty());
                }
            }
        }

        #[test]
        fn a_client_ip_key_is_always_the_text_of_some_address(
            xff in "[0-9a-f:., \\[\\]]{0,80}",
            peer in any::<[u8; 4]>(),
        ) {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&xff) { h.append(&X_FORWARDED_FOR, v); }
            let uri: Uri = "/".parse().unwrap();
            let key = request_key(
                &KeySource::ClientIp, &uri, &h, IpAddr::from(peer), &nets(&["0.0.0.0/0", "::/0"]),
            );
            let text = std::str::from_utf8(key.as_bytes()).unwrap();
            let parsed: IpAddr = text.parse().unwrap();
            prop_assert_eq!(parsed.to_string(), text);
        }
    }
}
