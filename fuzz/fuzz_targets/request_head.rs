//! Feeds arbitrary bytes to the request-head path: parsed as an HTTP/1.x
//! request head (httparse, as hyper does), then every key kind is read,
//! hop-by-hop headers are stripped and the forwarding headers set, with the
//! first byte choosing the peer address and whether it is trusted.
//!
//! Invariants: nothing panics; a key read from the client IP is the peer or
//! an address its `X-Forwarded-For` names, and only when the peer is trusted;
//! configured keys are the exact bytes of the request; after stripping no
//! hop-by-hop header (nor any header `Connection` named) is left; after
//! `set_forwarded` the `X-Forwarded-For` ends with the peer and is the peer
//! alone when the peer is not trusted; an upgrade is only ever HTTP/1.1.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use affinity::config::KeySource;
use affinity::proxy::headers::{self, HOP_BY_HOP};
use affinity::balance::key::{self, KeyOrigin, X_FORWARDED_FOR};
use hyper::Uri;
use hyper::Version;
use hyper::header::{CONNECTION, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

const MAX_HEADERS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&control, head)) = data.split_first() else {
        return;
    };
    let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut parsed);
    let Ok(httparse::Status::Complete(_)) = request.parse(head) else {
        return;
    };
    let (Some(path), Some(version)) = (request.path, request.version) else {
        return;
    };
    let Ok(uri) = path.parse::<Uri>() else {
        return;
    };
    let version = if version == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let mut map = HeaderMap::new();
    for header in request.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_bytes(header.value),
        ) else {
            return;
        };
        map.append(name, value);
    }

    let peer = match control & 3 {
        0 => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        1 => IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        2 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        _ => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
    };
    let trusted: Vec<IpNet> = if control & 4 != 0 {
        vec!["10.0.0.0/8".parse().unwrap(), "127.0.0.1/32".parse().unwrap()]
    } else {
        Vec::new()
    };
    let peer_trusted = key::is_trusted(peer, &trusted);

    check_keys(&uri, &map, peer, &trusted, peer_trusted);

    let upgrade = headers::is_upgrade_request(version, &map);
    assert!(!upgrade || version == Version::HTTP_11, "upgrade on HTTP/1.0");
    let named: Vec<HeaderName> = map
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect();
    let mut stripped = map.clone();
    if upgrade {
        headers::strip_hop_by_hop_keeping_upgrade(&mut stripped);
    } else {
        headers::strip_hop_by_hop(&mut stripped);
        for name in HOP_BY_HOP.iter().chain(&named) {
            assert!(!stripped.contains_key(name), "{name} survived stripping");
        }
    }

    headers::set_forwarded(&mut stripped, peer, peer_trusted, "http");
    let forwarded: Vec<&HeaderValue> = stripped.get_all(&X_FORWARDED_FOR).iter().collect();
    assert_eq!(forwarded.len(), 1, "X-Forwarded-For is one header");
    // A trusted proxy's list is passed on as it was sent (any header
    // bytes), with the peer appended.
    let list = forwarded[0].as_bytes();
    let peer_text = peer.to_canonical().to_string();
    if peer_trusted {
        assert!(list.ends_with(peer_text.as_bytes()), "{list:?} does not end with {peer_text}");
    } else {
        assert_eq!(list, peer_text.as_bytes());
    }
});

/// Every key kind: configured bytes are the request's own, and a client-ip
/// key is the peer unless the peer is trusted.
fn check_keys(uri: &Uri, map: &HeaderMap, peer: IpAddr, trusted: &[IpNet], peer_trusted: bool) {
    let sources = [
        KeySource::ClientIp,
        KeySource::Url,
        KeySource::Path,
        KeySource::Header(HeaderName::from_static("x-user")),
        KeySource::Cookie("sid".into()),
    ];
    let client = key::client_ip(peer, map, trusted);
    if !peer_trusted {
        assert_eq!(client, peer.to_canonical(), "an untrusted peer's XFF was believed");
    }
    for source in &sources {
        let key = key::request_key(source, uri, map, peer, trusted);
        let bytes = key.as_bytes();
        assert!(!bytes.is_empty(), "{source}: empty key");
        match (source, key.origin()) {
            (KeySource::Url, origin) => {
                assert_eq!(origin, KeyOrigin::Configured);
                let want = uri.path_and_query().map_or("/", |pq| pq.as_str());
                assert_eq!(bytes, want.as_bytes());
            }
            (KeySource::Path, origin) => {
                assert_eq!(origin, KeyOrigin::Configured);
                let want = if uri.path().is_empty() { "/" } else { uri.path() };
                assert_eq!(bytes, want.as_bytes());
            }
            (KeySource::Header(name), KeyOrigin::Configured) => {
                assert_eq!(Some(bytes), map.get(name).map(HeaderValue::as_bytes));
            }
            (KeySource::Cookie(name), KeyOrigin::Configured) => {
                assert_eq!(Some(bytes), key::cookie(map, name));
            }
            (_, _) => assert_eq!(bytes, client.to_string().as_bytes(), "{source}"),
        }
    }
}
