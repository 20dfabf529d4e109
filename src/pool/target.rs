//! Where connections to a backend go, and how: plain TCP to `http://`
//! backends, TLS to `https://` ones.
//!
//! TLS to a backend verifies its certificate against the pool's
//! `upstream.ca_file` (or the system's roots), for the host of its URL, which
//! is also the SNI sent; with `upstream.client_cert` and `client_key` the
//! proxy shows a client certificate to backends that ask for one (mTLS). The
//! client settings are built once per pool config ([`UpstreamTls::new`]) and
//! shared by its snapshots. A handshake that fails, verification included,
//! is a connect failure like a refused connection: the backend never saw the
//! request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{UpstreamConfig, UpstreamProtocol, connect_address};

/// A pool's TLS client settings for its `https://` backends.
#[derive(Clone)]
pub struct UpstreamTls {
    connector: TlsConnector,
    /// Tells connections made with different settings apart in the idle
    /// pools, so that a connection is reused only with its own settings.
    id: u64,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Numbers the TLS client settings built.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl UpstreamTls {
    /// The client settings `upstream` asks for: its CA file's roots (or the
    /// system's), its client certificate if any; by ALPN, `h2` for
    /// `protocol = "h2"`, else HTTP/1.1.
    pub fn new(upstream: &UpstreamConfig) -> Result<UpstreamTls, String> {
        let mut roots = RootCertStore::empty();
        match &upstream.ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(format!(
                        "upstream.ca_file {}: no certificate in it",
                        path.display()
                    ));
                }
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // A system root rustls cannot use is skipped, as a
                    // browser would.
                    let _ = roots.add(cert);
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match (&upstream.client_cert, &upstream.client_key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("upstream.client_cert {}: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("upstream.client_key {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("upstream.client_cert and client_key: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = if upstream.protocol == UpstreamProtocol::H2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(UpstreamTls {
            connector: TlsConnector::from(Arc::new(config)),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }
}

/// The cryptography of every TLS connection, to clients and to backends:
/// *ring*'s. rustls prefers aws-lc-rs now (for its post-quantum key
/// exchange), which needs a heavier build (CMake, NASM); *ring* has
/// everything TLS 1.2 and 1.3 with classical key exchange need.
#[allow(deprecated)]
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// How to reach one backend.
#[derive(Debug, Clone)]
pub struct Target {
    authority: Authority,
    tls: Option<(UpstreamTls, ServerName<'static>)>,
    /// The idle pools' key: the address, and the TLS settings if any.
    key: Arc<str>,
}

impl Target {
    /// Plain TCP to `authority`.
    pub fn plain(authority: Authority) -> Target {
        let key = Arc::from(authority.as_str());
        Target {
            authority,
            tls: None,
            key,
        }
    }

    /// TLS with `tls` to `authority`, verified for (and SNI) its host.
    pub fn tls(authority: Authority, tls: UpstreamTls) -> Result<Target, String> {
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{host:?} cannot be a TLS server name: {e}"))?;
        let key = Arc::from(format!("{}#tls{}", authority.as_str(), tls.id));
        Ok(Target {
            authority,
            tls: Some((tls, name)),
            key,
        })
    }

    /// `host:port`.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// What tells its connections apart from others' in an idle pool.
    pub fn key(&self) -> &Arc<str> {
        &self.key
    }

    /// Whether connections to it are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A new connection, TCP (and TLS) within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> io::Result<BackendStream> {
        let connect = async {
            let stream = TcpStream::connect(connect_address(&self.authority).as_str()).await?;
            // Small requests and responses go out at once.
            stream.set_nodelay(true)?;
            match &self.tls {
                None => Ok(BackendStream::Plain(stream)),
                Some((tls, name)) => {
                    let stream = tls.connector.connect(name.clone(), stream).await?;
                    Ok(BackendStream::Tls(Box::new(stream)))
                }
            }
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(connected) => connected,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no connection within {}",
                    humantime::format_duration(timeout)
                ),
            )),
        }
    }
}

/// A connection to a backend: plain or TLS.
#[derive(Debug)]
pub enum BackendStream {
    /// `http://`.
    Plain(TcpStream),
    /// `https://`.
    Tls(Box<TlsStream<TcpStream>>),
}

impl BackendStream {
    /// The protocol ALPN agreed on, over TLS.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            BackendStream::Plain(_) => None,
            BackendStream::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendStream::Plain(s) => s.is_write_vectored(),
            BackendStream::Tls(s) => s.is_write_vectored(),
        }
    }
}
