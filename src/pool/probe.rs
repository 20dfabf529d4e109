//! One active health probe: `GET http://<authority><path>` on a new
//! connection, bounded by `health_check.timeout`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::pool::health::Observation;
use crate::pool::target::Target;

/// One probe: `GET http://<authority><path>` with `Host: <authority>` on a
/// new connection, within `timeout`.
pub async fn probe(target: &Target, h2: bool, path: &str, timeout: Duration) -> Observation {
    match tokio::time::timeout(timeout, exchange(target, h2, path, timeout)).await {
        Err(_elapsed) => Observation::ProbeTimeout,
        Ok(Err(error)) => Observation::ProbeError(error),
        Ok(Ok(status)) if status.is_success() || status.is_redirection() => {
            Observation::ProbeOk(status)
        }
        Ok(Ok(status)) => Observation::ProbeStatus(status),
    }
}

/// One TCP probe (`health_check.type = "tcp"`): whether a connection (and
/// its TLS handshake, for an `https://` backend) opens within `timeout`;
/// it is closed at once.
pub async fn connects(target: &Target, timeout: Duration) -> Observation {
    match target.connect(timeout).await {
        Ok(_stream) => Observation::Connected,
        Err(error) if error.kind() == std::io::ErrorKind::TimedOut => Observation::ProbeTimeout,
        Err(error) => Observation::ProbeError(format!("connect: {error}")),
    }
}

/// One probe: a `GET` of `path` over a new connection, HTTP/2 when `h2`
/// (prior knowledge, or TLS with ALPN `h2`: pools that send their requests
/// so), else HTTP/1.1; the status it answered.
async fn exchange(
    target: &Target,
    h2: bool,
    path: &str,
    timeout: Duration,
) -> Result<StatusCode, String> {
    let authority = target.authority();
    let stream = target
        .connect(timeout)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if h2 {
        let scheme = if target.is_tls() { "https" } else { "http" };
        let request = Request::get(format!("{scheme}://{authority}{path}"))
            .version(hyper::Version::HTTP_2)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .map_err(|e| e.to_string())?;
        // Ends when the sender is dropped, after the answer.
        tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(response.status());
    }
    let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
    let request = Request::get(path)
        .header(HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request);
    tokio::pin!(connection, response);
    tokio::select! {
        biased;
        response = &mut response => response.map(|r| r.status()).map_err(|e| e.to_string()),
        // The connection may end right after delivering the response (the
        // server closed it): the response, or its error, is ready by now.
        ended = &mut connection => match (response.await, ended) {
            (Ok(r), _) => Ok(r.status()),
            (Err(_), Err(e)) => Err(e.to_string()),
            (Err(e), Ok(())) => Err(e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use hyper::http::uri::Authority;

    use super::*;

    #[tokio::test]
    async fn a_probe_of_a_closed_port_is_an_error_not_a_hang() {
        // A loopback address no other test listens on, so the closed port
        // stays closed.
        let listener = tokio::net::TcpListener::bind("127.0.99.2:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let authority: Authority = addr.to_string().parse().unwrap();
        let observation = probe(
            &Target::plain(authority),
            false,
            "/health",
            Duration::from_secs(2),
        )
        .await;
        assert!(
            matches!(observation, Observation::ProbeError(_)),
            "{observation:?}"
        );
    }

    #[tokio::test]
    async fn a_probe_sends_get_of_the_path_with_the_backend_authority_as_host() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                head.extend_from_slice(&buf[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 302 Found\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(head).unwrap()
        });
        let authority: Authority = addr.to_string().parse().unwrap();
        let observation = probe(
            &Target::plain(authority),
            false,
            "/ready",
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(observation, Observation::ProbeOk(StatusCode::FOUND));
        let head = server.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /ready http/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("host: {addr}\r\n")), "{head}");
    }

    #[tokio::test]
    async fn a_probe_of_a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let authority: Authority = addr.to_string().parse().unwrap();
        let observation = probe(
            &Target::plain(authority),
            false,
            "/health",
            Duration::from_millis(50),
        )
        .await;
        assert_eq!(observation, Observation::ProbeTimeout);
        drop(listener);
    }
}
