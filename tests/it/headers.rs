//! Headers between client and backend: hop-by-hop headers removed both ways,
//! `X-Forwarded-*` set as documented, `Host` passed through.

use std::net::IpAddr;

use crate::common::*;

/// One backend behind a proxy that trusts 127.0.0.2 only.
async fn setup() -> (Vec<TestBackend>, affinity::listener::ProxyHandle) {
    let backends = TestBackend::start_many(1).await;
    let proxy = start_proxy(&config_text(
        "[balancer]\ntrusted_proxies = [\"127.0.0.2\"]",
        &pool(&backends),
    ))
    .await;
    (backends, proxy)
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_on_the_way_to_the_backend() {
    let (backends, proxy) = setup().await;
    let mut client = Client::connect(proxy.local_addr()).await;
    let reply = client
        .get(
            "/",
            &[
                ("connection", "keep-alive, X-Client-Hop"),
                ("x-client-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers"),
                ("trailer", "x-checksum"),
                ("upgrade", "h2c"),
                ("x-end-to-end", "kept"),
                ("authorization", "Bearer kept"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200);
    let seen = &backends[0].seen()[0].headers;
    for hop in [
        "connection",
        "x-client-hop",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(
            seen.get(hop).is_none(),
            "{hop} reached the backend: {seen:?}"
        );
    }
    assert_eq!(values(seen, "x-end-to-end"), ["kept"]);
    assert_eq!(values(seen, "authorization"), ["Bearer kept"]);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_on_the_way_back_to_the_client() {
    let (_backends, proxy) = setup().await;
    let mut client = Client::connect(proxy.local_addr()).await;
    let reply = client.get("/hop", &[]).await;
    assert_eq!(reply.status, 200);
    for hop in [
        "connection",
        "x-backend-hop",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "trailer",
        "upgrade",
    ] {
        assert!(
            reply.headers.get(hop).is_none(),
            "{hop} reached the client: {:?}",
            reply.headers
        );
    }
    assert_eq!(reply.header("x-end-to-end"), Some("kept"));
    // The backend's framing is replaced by the proxy's own.
    assert_eq!(reply.header("content-length"), Some("8"));
}

#[tokio::test]
async fn an_untrusted_peers_x_forwarded_for_is_replaced_by_its_own_address() {
    let (backends, proxy) = setup().await;
    let peer: IpAddr = "127.0.0.3".parse().unwrap();
    let mut client = Client::connect_from(peer, proxy.local_addr()).await;
    client
        .get("/", &[("x-forwarded-for", "203.0.113.9, 10.0.0.1")])
        .await;
    let seen = &backends[0].seen()[0].headers;
    assert_eq!(values(seen, "x-forwarded-for"), ["127.0.0.3"]);
}

#[tokio::test]
async fn a_trusted_peers_x_forwarded_for_gets_the_peer_appended() {
    let (backends, proxy) = setup().await;
    let peer: IpAddr = "127.0.0.2".parse().unwrap();
    let mut client = Client::connect_from(peer, proxy.local_addr()).await;
    client
        .get("/", &[("x-forwarded-for", "203.0.113.9, 10.0.0.1")])
        .await;
    client.get("/", &[]).await;
    let seen = backends[0].seen();
    assert_eq!(
        values(&seen[0].headers, "x-forwarded-for"),
        ["203.0.113.9, 10.0.0.1, 127.0.0.2"]
    );
    assert_eq!(values(&seen[1].headers, "x-forwarded-for"), ["127.0.0.2"]);
}

#[tokio::test]
async fn host_is_passed_through_and_copied_to_x_forwarded_host_with_proto_http() {
    let (backends, proxy) = setup().await;
    let mut client = Client::connect(proxy.local_addr()).await;
    let reply = client
        .send(
            hyper::Request::get("/where?x=1")
                .header("host", "shop.example:8443")
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-host", "planted.example")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 200);
    let seen = &backends[0].seen()[0];
    assert_eq!(seen.uri, "/where?x=1");
    assert_eq!(values(&seen.headers, "host"), ["shop.example:8443"]);
    assert_eq!(
        values(&seen.headers, "x-forwarded-host"),
        ["shop.example:8443"]
    );
    assert_eq!(values(&seen.headers, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&seen.headers, "x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test]
async fn naming_x_forwarded_for_in_connection_does_not_remove_the_proxys_value() {
    let (backends, proxy) = setup().await;
    for peer in ["127.0.0.2", "127.0.0.3"] {
        let mut client = Client::connect_from(peer.parse().unwrap(), proxy.local_addr()).await;
        client
            .get(
                "/",
                &[
                    (
                        "connection",
                        "X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host",
                    ),
                    ("x-forwarded-for", "203.0.113.9"),
                ],
            )
            .await;
    }
    let seen = backends[0].seen();
    // The client's own list was declared hop-by-hop and removed; the
    // proxy's entry is always there.
    assert_eq!(values(&seen[0].headers, "x-forwarded-for"), ["127.0.0.2"]);
    assert_eq!(values(&seen[1].headers, "x-forwarded-for"), ["127.0.0.3"]);
    for request in &seen {
        assert_eq!(values(&request.headers, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&request.headers, "x-forwarded-host"), ["proxy.test"]);
    }
}
