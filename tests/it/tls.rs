//! TLS listeners: certificates made in the test with `rcgen` (a CA and
//! leaves it signs), real TLS clients (`tokio-rustls`, and `curl` when it is
//! installed) against the real proxy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::common::*;

/// A test certificate authority.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "affinity test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A leaf for `names`, signed by this CA: (cert PEM, key PEM, cert DER).
    fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    fn leaf_with(&self, names: &[&str], adjust: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        // Its own subject (rcgen's default would equal the CA's, which
        // OpenSSL takes for a self-signed certificate).
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map_or("leaf", String::as_str),
        );
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            pem: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client that trusts this CA and offers `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

/// A verifier that takes any certificate: to see which one the server
/// picks where the name would not verify.
#[derive(Debug)]
struct AcceptAny(rustls::crypto::CryptoProvider);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client that takes any certificate and sends `sni` (or no SNI).
fn unverified_client(sni: bool) -> TlsConnector {
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider.clone()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.enable_sni = sni;
    TlsConnector::from(Arc::new(config))
}

struct Leaf {
    pem: String,
    key: String,
    der: CertificateDer<'static>,
}

impl Leaf {
    /// Writes it as `NAME.pem` and `NAME.key` in `dir`.
    fn write(&self, dir: &TempDir, name: &str) -> (PathBuf, PathBuf) {
        (
            dir.write(&format!("{name}.pem"), &self.pem),
            dir.write(&format!("{name}.key"), &self.key),
        )
    }
}

/// A config with one TLS listener serving `certs` (cert and key files, in
/// order) in front of `backend`, `extra` lines added to its `tls` table.
fn tls_config(certs: &[(PathBuf, PathBuf)], extra: &str, backend: &TestBackend) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|(cert, key)| {
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                cert.display(),
                key.display()
            )
        })
        .collect();
    format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"secure\"\naddress = \"127.0.0.1:0\"\n\
         [listeners.tls]\ncertificates = [{}]\n{extra}\n\
         [[pools]]\nname = \"web\"\nhealth_check = {{ interval = \"1h\", timeout = \"1s\" }}\n\
         backends = [{{ name = \"{}\", url = \"http://{}\" }}]\n",
        list.join(", "),
        backend.name,
        backend.addr
    )
}

/// A TLS connection to the proxy asking for `name`.
async fn connect(
    client: &TlsConnector,
    proxy: std::net::SocketAddr,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(proxy).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    client.connect(name, tcp).await
}

/// The leaf certificate the server presented.
fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// One HTTP/1.1 GET of `path` on `stream`; the status and body.
async fn get_http1(stream: &mut TlsStream<TcpStream>, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: shop.example.com\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = bounded(stream.read(&mut buffer)).await.unwrap();
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                let status = head[9..12].parse().unwrap();
                return (status, body.to_owned());
            }
        }
    }
}

#[tokio::test]
async fn sni_picks_the_exact_name_then_the_wildcard_then_the_first_certificate() {
    let ca = Ca::new();
    let dir = TempDir::new("tls-sni");
    let shop = ca.leaf(&["shop.example.com"]);
    let api = ca.leaf(&["api.example.com", "api.example.org"]);
    let wild = ca.leaf(&["*.example.net"]);
    let files = [
        shop.write(&dir, "shop"),
        api.write(&dir, "api"),
        wild.write(&dir, "wild"),
    ];
    let backend = TestBackend::start("b").await;
    let proxy = start_proxy(&tls_config(&files, "", &backend)).await;
    let address = proxy.local_addr();
    let any = unverified_client(true);
    for (name, expected) in [
        ("shop.example.com", &shop.der),
        ("SHOP.Example.COM", &shop.der),
        ("api.example.org", &api.der),
        ("api.example.com", &api.der),
        ("a.example.net", &wild.der),
        ("x.a.example.net", &shop.der), // a wildcard covers one label only
        ("example.net", &shop.der),     // ... and not the bare suffix
        ("localhost", &shop.der),       // no name matches: the first
    ] {
        let stream = connect(&any, address, name).await.unwrap();
        assert_eq!(&presented(&stream), expected, "{name}");
    }
    // No SNI at all: the first.
    let stream = connect(&unverified_client(false), address, "shop.example.com")
        .await
        .unwrap();
    assert_eq!(presented(&stream), shop.der);
    // A verifying client accepts what it gets for each of the names.
    let client = ca.client(&[b"http/1.1"]);
    for name in ["shop.example.com", "api.example.com", "b.example.net"] {
        connect(&client, address, name).await.unwrap();
    }
    let mut stream = connect(&client, address, "shop.example.com").await.unwrap();
    assert_eq!(presented(&stream), shop.der);
    let (status, body) = get_http1(&mut stream, "/hello").await;
    assert_eq!((status, body.as_str()), (200, "b"));
    let seen = backend.seen();
    assert_eq!(
        seen.last()
            .unwrap()
            .headers
            .get("x-forwarded-proto")
            .map(|v| v.to_str().unwrap()),
        Some("https"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn alpn_gives_http2_clients_http2_and_http1_clients_http1() {
    let ca = Ca::new();
    let dir = TempDir::new("tls-alpn");
    let files = [ca.leaf(&["shop.example.com"]).write(&dir, "shop")];
    let backend = TestBackend::start("b").await;
    let proxy = start_proxy(&tls_config(&files, "", &backend)).await;
    let address = proxy.local_addr();

    let h2_client = ca.client(&[b"h2", b"http/1.1"]);
    let stream = connect(&h2_client, address, "shop.example.com")
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    for i in 0..3 {
        let request = Request::get(format!("https://shop.example.com/h2/{i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = bounded(sender.send_request(request)).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"b");
    }

    let h1_client = ca.client(&[b"http/1.1"]);
    let mut stream = connect(&h1_client, address, "shop.example.com")
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(get_http1(&mut stream, "/h1").await.0, 200);
    // Without ALPN at all: HTTP/1.1.
    let plain_client = ca.client(&[]);
    let mut stream = connect(&plain_client, address, "shop.example.com")
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    assert_eq!(get_http1(&mut stream, "/none").await.0, 200);
    let proto: Vec<_> = backend
        .seen()
        .iter()
        .map(|s| {
            s.headers
                .get("x-forwarded-proto")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect();
    assert!(
        proto.iter().all(|p| p.as_deref() == Some("https")),
        "{proto:?}"
    );
}

#[tokio::test]
async fn a_stalled_or_garbage_handshake_loses_its_own_connection_only() {
    let ca = Ca::new();
    let dir = TempDir::new("tls-stall");
    let files = [ca.leaf(&["shop.example.com"]).write(&dir, "shop")];
    let backend = TestBackend::start("b").await;
    let proxy = start_proxy(&tls_config(
        &files,
        "handshake_timeout = \"300ms\"",
        &backend,
    ))
    .await;
    let address = proxy.local_addr();
    let client = ca.client(&[b"http/1.1"]);

    // Connects and never says a word.
    let mut stalled = TcpStream::connect(address).await.unwrap();
    // Half a ClientHello, then nothing.
    let mut half = TcpStream::connect(address).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    // Not TLS at all.
    let mut garbage = TcpStream::connect(address).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    // Meanwhile, a real client is served at once.
    let started = Instant::now();
    let mut stream = connect(&client, address, "shop.example.com").await.unwrap();
    assert_eq!(get_http1(&mut stream, "/ok").await.0, 200);
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );

    let mut buffer = [0u8; 64];
    // The garbage gets a TLS alert or nothing, then the connection closes.
    let closed = bounded(async {
        loop {
            match garbage.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    });
    closed.await;
    for (what, socket) in [("stalled", &mut stalled), ("half", &mut half)] {
        let started = Instant::now();
        let n = bounded(socket.read(&mut buffer)).await.unwrap_or(0);
        assert_eq!(n, 0, "{what}: the proxy sent bytes");
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(2),
            "{what}: cut off after {waited:?}"
        );
    }
    // And the served connection still works after all that.
    assert_eq!(get_http1(&mut stream, "/still").await.0, 200);
    let metrics = metrics_text(proxy.admin_addr().unwrap()).await;
    assert!(
        metrics.contains(
            "affinity_tls_handshakes_total{listener=\"secure\",result=\"timeout\",version=\"\"} 2"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "affinity_tls_handshakes_total{listener=\"secure\",result=\"failure\",version=\"\"} 1"
        ),
        "{metrics}"
    );
}

/// The admin endpoint's `/metrics` text.
async fn metrics_text(admin: std::net::SocketAddr) -> String {
    let mut client = Client::connect(admin).await;
    client.get("/metrics", &[]).await.text().to_owned()
}

#[tokio::test]
async fn a_reload_serves_new_certificates_to_new_handshakes_and_keeps_old_ones_when_the_new_are_broken()
 {
    let ca = Ca::new();
    let dir = TempDir::new("tls-reload");
    let first = ca.leaf(&["shop.example.com"]);
    let files = [first.write(&dir, "shop")];
    let backend = TestBackend::start("b").await;
    let text = tls_config(&files, "", &backend);
    let config_path = dir.write("affinity.toml", &text);
    let proxy = start_proxy(&text).await;
    let address = proxy.local_addr();
    let client = ca.client(&[b"http/1.1"]);
    let mut open = connect(&client, address, "shop.example.com").await.unwrap();
    assert_eq!(presented(&open), first.der);

    // The same files, new contents: a new key and certificate.
    let second = ca.leaf(&["shop.example.com"]);
    second.write(&dir, "shop");
    proxy.reload_file(&config_path).await.unwrap();
    // A client of its own, so that the handshake is a full one: a resumed
    // session keeps the certificate it was made with.
    let fresh = connect(&ca.client(&[]), address, "shop.example.com")
        .await
        .unwrap();
    assert_eq!(presented(&fresh), second.der);
    // The connection made before keeps working, with its certificate.
    assert_eq!(get_http1(&mut open, "/before").await.0, 200);

    // A key that does not go with the certificate: the reload fails, the
    // certificate in use stays.
    let other = ca.leaf(&["shop.example.com"]);
    dir.write("shop.key", &other.key);
    let error = proxy
        .reload_file(&config_path)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("do not go together"), "{error}");
    let after = connect(&ca.client(&[]), address, "shop.example.com")
        .await
        .unwrap();
    assert_eq!(presented(&after), second.der);
    // An unreadable certificate file: the same.
    std::fs::remove_file(dir.write("shop.pem", "")).unwrap();
    let error = proxy
        .reload_file(&config_path)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("cannot read certificates"), "{error}");
    let metrics = metrics_text(proxy.admin_addr().unwrap()).await;
    assert!(
        metrics.contains("affinity_config_reloads_total{result=\"failure\"} 2"),
        "{metrics}"
    );
    let after = connect(&ca.client(&[]), address, "shop.example.com")
        .await
        .unwrap();
    assert_eq!(presented(&after), second.der);
}

#[test]
fn check_refuses_an_expired_certificate_or_a_foreign_key_and_warns_of_one_about_to_expire() {
    let ca = Ca::new();
    let dir = TempDir::new("tls-check");
    let config = |name: &str| {
        dir.write(
            &format!("{name}.toml"),
            &format!(
                "[[listeners]]\nname = \"secure\"\naddress = \"127.0.0.1:0\"\n\
                 tls = {{ certificates = [{{ cert = \"{name}.pem\", key = \"{name}.key\" }}] }}\n\
                 [[backends]]\nname = \"b\"\nurl = \"http://127.0.0.1:9\"\n"
            ),
        )
    };
    let check = |path: &PathBuf| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_affinity"))
            .args(["--check", "-c", path.to_str().unwrap()])
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };

    ca.leaf(&["good.example.com"]).write(&dir, "good");
    let (ok, text) = check(&config("good"));
    assert!(ok, "{text}");
    assert!(
        text.contains("certificate   secure: good.example.com (expires "),
        "{text}"
    );
    assert!(!text.contains("warning"), "{text}");

    ca.leaf_with(&["old.example.com"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    })
    .write(&dir, "old");
    let (ok, text) = check(&config("old"));
    assert!(!ok, "{text}");
    assert!(
        text.contains("listeners[0].tls.certificates[0]: "),
        "{text}"
    );
    assert!(text.contains("expired 2021-01-01"), "{text}");

    let (year, month, day) = date_in_days(5);
    ca.leaf_with(&["soon.example.com"], |p| {
        p.not_after = rcgen::date_time_ymd(year, month, day);
    })
    .write(&dir, "soon");
    let (ok, text) = check(&config("soon"));
    assert!(ok, "{text}");
    assert!(
        text.contains("warning: ") && text.contains("within 14days"),
        "{text}"
    );

    let leaf = ca.leaf(&["mixed.example.com"]);
    dir.write("mixed.pem", &leaf.pem);
    dir.write("mixed.key", &ca.leaf(&["x"]).key);
    let (ok, text) = check(&config("mixed"));
    assert!(!ok, "{text}");
    assert!(text.contains("do not go together"), "{text}");
}

/// The date `days` from now (UTC) as (year, month, day).
fn date_in_days(days: u64) -> (i32, u8, u8) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Howard Hinnant's days-to-civil.
    let z = i64::try_from(now / 86_400 + days).unwrap() + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        i32::try_from(year).unwrap(),
        u8::try_from(month).unwrap(),
        u8::try_from(day).unwrap(),
    )
}

/// Runs `program` with `args` (bounded); `None`, after printing SKIP for
/// `test`, when it is not installed.
fn run_tool(program: &str, args: &[&str], test: &str) -> Option<std::process::Output> {
    match std::process::Command::new(program).args(args).output() {
        Ok(output) => Some(output),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIP {test}: {program} is not installed");
            None
        }
        Err(error) => panic!("{program}: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http2_and_h2load_over_tls_get_every_answer() {
    const TEST: &str = "curl_over_http2_and_h2load_over_tls_get_every_answer";
    let ca = Ca::new();
    let dir = TempDir::new("tls-tools");
    let files = [ca.leaf(&["shop.example.com"]).write(&dir, "shop")];
    let ca_file = dir.write("ca.pem", &ca.cert.pem());
    let backends = TestBackend::start_many(3).await;
    let text = tls_config(&files, "", &backends[0]).replace(
        &format!(
            "backends = [{{ name = \"server-1\", url = \"http://{}\" }}]",
            backends[0].addr
        ),
        &format!(
            "algorithm = \"round_robin\"\nbackends = [{}]",
            backends
                .iter()
                .map(|b| format!("{{ name = \"{}\", url = \"http://{}\" }}", b.name, b.addr))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let proxy = start_proxy(&text).await;
    let port = proxy.local_addr().port();
    let resolve = format!("shop.example.com:{port}:127.0.0.1");
    let url = format!("https://shop.example.com:{port}/curl");
    let ca_path = ca_file.to_str().unwrap().to_owned();
    let curl = tokio::task::spawn_blocking(move || {
        run_tool(
            "curl",
            &[
                "-sS",
                "--http2",
                "--cacert",
                &ca_path,
                "--resolve",
                &resolve,
                "-w",
                "%{http_version} %{http_code};",
                "-o",
                "/dev/null",
                &url,
                "-o",
                "/dev/null",
                &url,
            ],
            TEST,
        )
    })
    .await
    .unwrap();
    if let Some(output) = curl {
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{output:?}");
        assert_eq!(text, "2 200;2 200;", "{output:?}");
    }
    for protocol in ["h2", "h1"] {
        let target = format!("https://127.0.0.1:{port}/load");
        let mut args = vec!["-n", "2000", "-c", "8", "-m", "4", target.as_str()];
        if protocol == "h1" {
            args = vec!["-n", "1000", "-c", "8", "--h1", target.as_str()];
        }
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let h2load = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_tool("h2load", &args, TEST)
        })
        .await
        .unwrap();
        let Some(output) = h2load else {
            return;
        };
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let expected = if protocol == "h1" { 1000 } else { 2000 };
        assert!(
            text.contains(&format!("requests: {expected} total, {expected} started, {expected} done, {expected} succeeded, 0 failed, 0 errored")),
            "{protocol}:\n{text}"
        );
        assert!(
            text.contains(&format!("status codes: {expected} 2xx")),
            "{protocol}:\n{text}"
        );
        let negotiated = if protocol == "h1" { "http/1.1" } else { "h2" };
        assert!(
            text.contains(&format!("Application protocol: {negotiated}")),
            "{protocol}:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------
// https:// backends
// ---------------------------------------------------------------------------

/// An HTTPS backend on 127.0.0.1 serving `leaf`, answering every request
/// with its `name` (and `x-client-cert: yes` when the client showed a
/// certificate); with `clients`, it requires a client certificate that CA
/// signed.
async fn https_backend(
    name: &str,
    leaf: &Leaf,
    clients: Option<&Ca>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    https_backend_speaking(name, leaf, clients, false).await
}

/// [`https_backend`], speaking HTTP/2 (ALPN `h2` only) when `h2`.
async fn https_backend_speaking(
    name: &str,
    leaf: &Leaf,
    clients: Option<&Ca>,
    h2: bool,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use hyper::service::service_fn;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;

    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.cert.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
    let mut config = builder
        .with_single_cert(vec![leaf.der.clone()], key)
        .unwrap();
    if h2 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let name = name.to_owned();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let client_cert = stream.get_ref().1.peer_certificates().is_some();
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let name = name.clone();
                    async move {
                        let host = request
                            .headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let response = hyper::Response::builder()
                            .header("x-backend", name.as_str())
                            .header("x-client-cert", if client_cert { "yes" } else { "no" })
                            .header("x-seen-host", host)
                            .body(http_body_util::Full::new(Bytes::from(name)))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            });
        }
    });
    (address, task)
}

/// A config with one pool of `backends` (name, URL), its `upstream` table
/// set to `upstream`.
fn https_pool(upstream: &str, backends: &[(&str, String)]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(name, url)| format!("{{ name = \"{name}\", url = \"{url}\" }}"))
        .collect();
    format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\
         [[pools]]\nname = \"secure\"\nkey = \"url\"\n\
         health_check = {{ interval = \"1h\", timeout = \"1s\" }}\n\
         upstream = {{ {upstream} }}\nbackends = [{}]\n",
        list.join(", ")
    )
}

#[tokio::test]
async fn https_backends_are_verified_against_the_pools_ca_and_a_wrong_ca_is_a_connect_failure() {
    let ca = Ca::new();
    let dir = TempDir::new("tls-upstream");
    let ca_file = dir.write("ca.pem", &ca.cert.pem());
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
    let (secure, _task) = https_backend("secure-1", &leaf, None).await;
    let proxy = start_proxy(&https_pool(
        &format!("ca_file = \"{}\"", ca_file.display()),
        &[("secure-1", format!("https://localhost:{}", secure.port()))],
    ))
    .await;
    let mut client = Client::connect(proxy.local_addr()).await;
    for i in 0..5 {
        let reply = client.get(&format!("/s/{i}"), &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.backend(), "secure-1");
        // Host passes through, as to plain backends.
        assert_eq!(reply.header("x-seen-host"), Some("proxy.test"));
    }

    // A CA that did not sign the backend's certificate: every connect fails
    // verification, so the key's next backend answers.
    let other = Ca::new();
    let other_file = dir.write("other.pem", &other.cert.pem());
    let plain = TestBackend::start("plain-1").await;
    let proxy = start_proxy(&https_pool(
        &format!("ca_file = \"{}\", retries = 1", other_file.display()),
        &[
            ("secure-1", format!("https://localhost:{}", secure.port())),
            ("plain-1", format!("http://{}", plain.addr)),
        ],
    ))
    .await;
    let mut client = Client::connect(proxy.local_addr()).await;
    for i in 0..20 {
        let reply = client.get(&format!("/w/{i}"), &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.backend(), "plain-1");
    }
    let metrics = metrics_text(proxy.admin_addr().unwrap()).await;
    let retried = metrics
        .lines()
        .find(|l| l.starts_with("affinity_upstream_retries_total{pool=\"secure\",backend=\"secure-1\",reason=\"connect_error\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(!retried.ends_with(" 0"), "{retried}");
}

#[tokio::test]
async fn a_backend_that_asks_for_a_client_certificate_gets_the_pools() {
    let ca = Ca::new();
    let dir = TempDir::new("tls-mtls");
    let ca_file = dir.write("ca.pem", &ca.cert.pem());
    let (cert, key) = ca.leaf(&["affinity-client"]).write(&dir, "client");
    let (secure, _task) = https_backend("mtls-1", &ca.leaf(&["localhost"]), Some(&ca)).await;
    let url = format!("https://localhost:{}", secure.port());

    let without = start_proxy(&https_pool(
        &format!("ca_file = \"{}\", retries = 0", ca_file.display()),
        &[("mtls-1", url.clone())],
    ))
    .await;
    let mut client = Client::connect(without.local_addr()).await;
    let reply = client.get("/no-cert", &[]).await;
    assert!(
        reply.status == 502 || reply.status == 503,
        "{} {}",
        reply.status,
        reply.text()
    );

    let with = start_proxy(&https_pool(
        &format!(
            "ca_file = \"{}\", client_cert = \"{}\", client_key = \"{}\"",
            ca_file.display(),
            cert.display(),
            key.display()
        ),
        &[("mtls-1", url)],
    ))
    .await;
    let mut client = Client::connect(with.local_addr()).await;
    for i in 0..3 {
        let reply = client.get(&format!("/cert/{i}"), &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("x-client-cert"), Some("yes"));
    }
}

#[test]
fn check_reads_the_ca_file_of_https_backends() {
    let ca = Ca::new();
    let dir = TempDir::new("tls-check-ca");
    dir.write("ca.pem", &ca.cert.pem());
    let config = |ca_file: &str| {
        dir.write(
            "affinity.toml",
            &format!(
                "[[pools]]\nname = \"secure\"\nupstream = {{ ca_file = \"{ca_file}\" }}\n\
                 backends = [{{ name = \"b\", url = \"https://127.0.0.1:9443\" }}]\n"
            ),
        )
    };
    let check = |path: &PathBuf| {
        std::process::Command::new(env!("CARGO_BIN_EXE_affinity"))
            .args(["--check", "-c", path.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let output = check(&config("ca.pem"));
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{output:?}");
    assert!(text.contains("  upstream TLS  CA file "), "{text}");
    let output = check(&config("missing.pem"));
    assert!(!output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        text.contains("pool \"secure\": upstream.ca_file "),
        "{text}"
    );
    assert!(text.contains("missing.pem"), "{text}");
}

#[tokio::test]
async fn an_h2_pool_speaks_http2_over_tls_to_its_backends() {
    let ca = Ca::new();
    let dir = TempDir::new("tls-h2-upstream");
    let ca_file = dir.write("ca.pem", &ca.cert.pem());
    let leaf = ca.leaf(&["localhost"]);
    let (secure, _task) = https_backend_speaking("h2-1", &leaf, None, true).await;
    let url = format!("https://localhost:{}", secure.port());
    let proxy = start_proxy(&https_pool(
        &format!("ca_file = \"{}\", protocol = \"h2\"", ca_file.display()),
        &[("h2-1", url.clone())],
    ))
    .await;
    let mut client = Client::connect(proxy.local_addr()).await;
    for i in 0..5 {
        let reply = client.get(&format!("/h2/{i}"), &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.backend(), "h2-1");
    }
    // The same backend in an http1 pool: it agrees to no protocol but h2,
    // so the handshake fails and the proxy answers for it.
    let proxy = start_proxy(&https_pool(
        &format!("ca_file = \"{}\", retries = 0", ca_file.display()),
        &[("h2-1", url)],
    ))
    .await;
    let mut client = Client::connect(proxy.local_addr()).await;
    let reply = client.get("/h1", &[]).await;
    assert!(
        reply.status == 502 || reply.status == 503,
        "{} {}",
        reply.status,
        reply.text()
    );
}

/// A PROXY header, then the TLS handshake on the same connection: the
/// listener reads the header first, and the client it names is the one the
/// backend sees in `X-Forwarded-For`. A client that starts the handshake
/// without the header is closed.
#[tokio::test]
async fn a_proxy_header_comes_before_the_handshake_and_names_the_client() {
    let ca = Ca::new();
    let dir = TempDir::new("tls-proxy-protocol");
    let files = [ca.leaf(&["shop.example.com"]).write(&dir, "shop")];
    let backend = TestBackend::start("b").await;
    let text = tls_config(&files, "", &backend).replace(
        "[listeners.tls]",
        "proxy_protocol = true\ntrusted = [\"127.0.0.1\"]\n[listeners.tls]",
    );
    let proxy = start_proxy(&text).await;
    let client = ca.client(&[b"http/1.1"]);
    let who: std::net::SocketAddr = "203.0.113.77:50000".parse().unwrap();
    let mut tcp = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let header = affinity::listener::proxy_protocol::encode_v2(who, proxy.local_addr());
    tcp.write_all(&header).await.unwrap();
    let name = ServerName::try_from("shop.example.com").unwrap();
    let mut stream = bounded(client.connect(name, tcp)).await.unwrap();
    let (status, body) = get_http1(&mut stream, "/hello").await;
    assert_eq!((status, body.as_str()), (200, "b"));
    let seen = backend.seen();
    let forwarded = seen.last().unwrap().headers.get("x-forwarded-for");
    assert_eq!(forwarded.map(|v| v.to_str().unwrap()), Some("203.0.113.77"));
    // The handshake without a header first: no TLS session, nothing served.
    let refused = connect(&client, proxy.local_addr(), "shop.example.com").await;
    assert!(
        refused.is_err(),
        "a handshake without a PROXY header succeeded"
    );
    assert_eq!(backend.seen().len(), 1);
}

/// A tcp listener may terminate TLS and relay the plain bytes: a TLS client
/// reaches a plain TCP backend (offered no ALPN).
#[tokio::test]
async fn a_tcp_listener_terminates_tls_and_relays_plain_bytes() {
    let ca = Ca::new();
    let dir = TempDir::new("tls-tcp");
    let (cert, key) = ca.leaf(&["redis.example.com"]).write(&dir, "redis");
    let backend = crate::tcp::EchoBackend::start("e0").await;
    let text = format!(
        "[[listeners]]\nname = \"secure\"\naddress = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"kv\"\n\
         tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n\
         [[pools]]\nname = \"kv\"\nhealth_check = {{ type = \"tcp\", interval = \"1h\", timeout = \"1s\" }}\n\
         backends = [{{ name = \"e0\", url = \"tcp://{}\" }}]\n",
        cert.display(),
        key.display(),
        backend.addr
    );
    let proxy = start_proxy(&text).await;
    let client = ca.client(&[b"redis"]);
    let mut stream = connect(&client, proxy.local_addr(), "redis.example.com")
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    stream.write_all(b"ping over tls").await.unwrap();
    let mut answer = vec![0u8; 3 + 13];
    bounded(stream.read_exact(&mut answer)).await.unwrap();
    assert_eq!(answer, b"e0\nPING OVER TLS");
}
