//! `affinity --demo`: tiny built-in backends, so the shipped config works
//! out of the box.
//!
//! For every backend whose URL names a loopback address (`127.0.0.0/8`,
//! `::1` or `localhost`), a small HTTP server listens on that address and
//! answers every request, on every path (the health-check path included),
//! with `200`, its backend name and a newline as the body, and an
//! `x-backend: NAME` header. Backends on other hosts are left alone: they
//! are expected to be real servers.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Response, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::Config;

/// The header naming the demo backend that answered.
pub static X_BACKEND: HeaderName = HeaderName::from_static("x-backend");

/// Why the demo backends could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A backend's address could not be bound.
    #[error("demo backend {name:?} cannot listen on {address}: {source}")]
    Bind {
        /// The backend.
        name: String,
        /// Its address.
        address: SocketAddr,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// The running demo backends; dropping this stops them.
#[derive(Debug)]
pub struct DemoBackends {
    addresses: Vec<(String, SocketAddr)>,
    _tasks: JoinSet<()>,
}

impl DemoBackends {
    /// Each demo backend's name and bound address.
    pub fn addresses(&self) -> &[(String, SocketAddr)] {
        &self.addresses
    }
}

/// Starts a demo backend for every loopback backend of every pool of
/// `config` (one for an address that several pools share).
pub async fn start(config: &Config) -> Result<DemoBackends, DemoError> {
    let mut tasks = JoinSet::new();
    let mut addresses: Vec<(String, SocketAddr)> = Vec::new();
    for backend in config.pools.iter().flat_map(|p| &p.backends) {
        let Some(address) = loopback_address(&backend.url) else {
            tracing::info!(
                backend = %backend.name,
                url = %backend.url,
                "not a loopback address; no demo backend for it"
            );
            continue;
        };
        if addresses.iter().any(|(_, taken)| *taken == address) {
            continue;
        }
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| DemoError::Bind {
                name: backend.name.clone(),
                address,
                source,
            })?;
        tracing::info!(backend = %backend.name, %address, "demo backend listening on {address}");
        addresses.push((backend.name.clone(), address));
        tasks.spawn(serve(listener, backend.name.clone()));
    }
    Ok(DemoBackends {
        addresses,
        _tasks: tasks,
    })
}

/// The socket address of a loopback backend URL, if it is one.
fn loopback_address(url: &Uri) -> Option<SocketAddr> {
    let host = url.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse::<IpAddr>().ok()?
    };
    ip.is_loopback()
        .then(|| SocketAddr::new(ip, url.port_u16().unwrap_or(80)))
}

async fn serve(listener: TcpListener, name: String) {
    let body = Bytes::from(format!("{name}\n"));
    let Ok(name_header) = HeaderValue::from_str(&name) else {
        tracing::warn!(backend = %name, "backend name is not a valid header value; demo backend off");
        return;
    };
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(backend = %name, %error, "demo backend accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (body, name_header) = (body.clone(), name_header.clone());
        let service = service_fn(move |_request| {
            let mut response = Response::new(Full::new(body.clone()));
            let headers = response.headers_mut();
            headers.insert(&X_BACKEND, name_header.clone());
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            async move { Ok::<_, Infallible>(response) }
        });
        connections.spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            // A client that goes away mid-request is not worth a log line.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_get_a_demo_address_and_others_do_not() {
        let cases = [
            ("http://127.0.0.1:9001", Some("127.0.0.1:9001")),
            ("http://127.1.2.3:80", Some("127.1.2.3:80")),
            ("http://127.0.0.1", Some("127.0.0.1:80")),
            ("http://[::1]:9001", Some("[::1]:9001")),
            ("http://localhost:9002", Some("127.0.0.1:9002")),
            ("http://10.0.0.1:9001", None),
            ("http://backend.internal:9001", None),
        ];
        for (url, want) in cases {
            let url: Uri = url.parse().unwrap();
            let want = want.map(|a| a.parse::<SocketAddr>().unwrap());
            assert_eq!(loopback_address(&url), want, "{url}");
        }
    }
}
