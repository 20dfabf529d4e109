//! `protocol = "tcp"` listeners: each connection keyed by the client's
//! address through the pool, connected along the key's fallback order,
//! relayed both ways with half-close; TCP health checks; Redis from Debian
//! as the backends.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::common::*;

/// A TCP backend: on each connection it writes `NAME\n`, then echoes what
/// it reads, upper-cased, until the client's FIN, then closes.
pub(crate) struct EchoBackend {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl EchoBackend {
    pub(crate) async fn start(name: &str) -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        let label = name.to_owned();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let label = label.clone();
                connections.spawn(async move {
                    if stream
                        .write_all(format!("{label}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let mut buffer = [0u8; 4096];
                    loop {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let upper = buffer[..n].to_ascii_uppercase();
                                if stream.write_all(&upper).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        EchoBackend {
            name: name.to_owned(),
            addr,
            tasks,
        }
    }

    /// Stops listening and closes every connection.
    pub(crate) fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

pub(crate) fn tcp_config(backends: &[&EchoBackend], extra: &str) -> String {
    let mut text = String::from(
        "[[listeners]]\nname = \"tcp\"\naddress = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"echo\"\n\
         idle_timeout = \"5s\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\
         [listener]\ndrain_timeout = \"2s\"\n\
         [[pools]]\nname = \"echo\"\n\
         health_check = { type = \"tcp\", interval = \"100ms\", timeout = \"80ms\", healthy_threshold = 1, unhealthy_threshold = 1 }\n",
    );
    text.push_str(extra);
    text.push_str("backends = [\n");
    for b in backends {
        text.push_str(&format!(
            "  {{ name = \"{}\", url = \"tcp://{}\" }},\n",
            b.name, b.addr
        ));
    }
    text.push_str("]\n");
    text
}

/// Which backend a connection from `source` reaches: the greeting line.
pub(crate) async fn backend_for(source: IpAddr, proxy: SocketAddr) -> String {
    let mut stream = connect_stream_from(source, proxy).await;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while bounded(stream.read(&mut byte)).await.unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

pub(crate) fn client(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 9, i))
}

#[tokio::test]
async fn every_client_address_reaches_one_backend_and_a_dead_backend_moves_only_its_clients() {
    let mut backends = Vec::new();
    for i in 0..3 {
        backends.push(EchoBackend::start(&format!("e{i}")).await);
    }
    let refs: Vec<&EchoBackend> = backends.iter().collect();
    let proxy = start_proxy(&tcp_config(&refs, "")).await;
    let addr = proxy.listener_addr("tcp").unwrap();
    let mut first = Vec::new();
    for i in 1..=24 {
        let home = backend_for(client(i), addr).await;
        for _ in 0..2 {
            assert_eq!(backend_for(client(i), addr).await, home, "client {i}");
        }
        first.push(home);
    }
    let used: std::collections::BTreeSet<&String> = first.iter().collect();
    assert!(
        used.len() >= 2,
        "24 addresses all on one backend: {first:?}"
    );
    // /lookup by ip= answers what connections do.
    let mut admin = Client::connect(proxy.admin_addr().unwrap()).await;
    for (i, home) in first.iter().enumerate().take(6) {
        let lookup = admin
            .get(&format!("/lookup?ip={}", client(i as u8 + 1)), &[])
            .await;
        let lookup: serde_json::Value = serde_json::from_str(lookup.text()).unwrap();
        assert_eq!(lookup["backend"], home.as_str(), "{lookup}");
    }
    // Kill the busiest backend: only its clients move.
    let victim = first
        .iter()
        .max_by_key(|name| first.iter().filter(|n| n == name).count())
        .unwrap()
        .clone();
    let index = backends.iter().position(|b| b.name == victim).unwrap();
    backends[index].stop();
    until_healthy_count(&proxy.pool_named("echo").unwrap(), 2).await;
    for (i, home) in first.iter().enumerate() {
        let now = backend_for(client(i as u8 + 1), addr).await;
        if *home == victim {
            assert_ne!(now, victim, "client {i}");
        } else {
            assert_eq!(&now, home, "client {i} moved though its backend is up");
        }
    }
}

#[tokio::test]
async fn a_client_that_half_closes_gets_the_whole_answer_and_a_dead_backend_closes_the_client() {
    let mut backend = EchoBackend::start("e0").await;
    let proxy = start_proxy(&tcp_config(&[&backend], "")).await;
    let addr = proxy.listener_addr("tcp").unwrap();

    let mut stream = connect_stream_from(client(1), addr).await;
    let payload = "hello through a half-closed connection ".repeat(5_000);
    stream.write_all(payload.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    bounded(stream.read_to_string(&mut answer)).await.unwrap();
    assert_eq!(answer, format!("e0\n{}", payload.to_ascii_uppercase()));
    // Counted when it ended: one connection, its bytes each way.
    let mut admin = Client::connect(proxy.admin_addr().unwrap()).await;
    let metrics = admin.get("/metrics", &[]).await;
    let metrics = metrics.text();
    assert!(
        metrics.contains(
            "affinity_tcp_connections_total{pool=\"echo\",backend=\"e0\",outcome=\"closed\"} 1"
        ),
        "{metrics}"
    );
    let to_backend = format!(
        "affinity_tcp_bytes_total{{pool=\"echo\",backend=\"e0\",direction=\"to_backend\"}} {}",
        payload.len()
    );
    assert!(metrics.contains(&to_backend), "{metrics}");

    // A backend killed mid-stream: the client's connection closes.
    let mut open = connect_stream_from(client(2), addr).await;
    let mut greeting = [0u8; 3];
    bounded(open.read_exact(&mut greeting)).await.unwrap();
    backend.stop();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), open.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the client's connection was left open");
}

#[tokio::test]
async fn with_no_backend_up_a_connection_is_closed_and_tcp_probes_mark_backends_down() {
    let mut backends = vec![
        EchoBackend::start("e0").await,
        EchoBackend::start("e1").await,
    ];
    let refs: Vec<&EchoBackend> = backends.iter().collect();
    let proxy = start_proxy(&tcp_config(&refs, "")).await;
    let addr = proxy.listener_addr("tcp").unwrap();
    for b in &mut backends {
        b.stop();
    }
    until_healthy_count(&proxy.pool_named("echo").unwrap(), 0).await;
    let mut stream = connect_stream_from(client(3), addr).await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok_and(|r| r.is_ok_and(|n| n == 0)),
        "expected a closed connection"
    );
}

/// Three Redis servers from Debian behind a tcp listener: every client
/// address always reaches the same Redis, and `redis-benchmark` through the
/// proxy completes without an error.
#[tokio::test]
async fn redis_behind_a_tcp_listener() {
    let Some(server) = ["redis-server", "/usr/bin/redis-server"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .arg("--version")
                .output()
                .is_ok()
        })
    else {
        eprintln!("SKIP: redis-server is not installed");
        return;
    };
    let mut children = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(server)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        children.push(child);
        ports.push(port);
    }
    let mut text = String::from(
        "[[listeners]]\nname = \"redis\"\naddress = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"cache\"\n\
         [[pools]]\nname = \"cache\"\nhealth_check = { type = \"tcp\", interval = \"100ms\", timeout = \"80ms\", healthy_threshold = 1, unhealthy_threshold = 3 }\nbackends = [\n",
    );
    for (i, port) in ports.iter().enumerate() {
        text.push_str(&format!(
            "  {{ name = \"redis-{i}\", url = \"tcp://127.0.0.1:{port}\" }},\n"
        ));
    }
    text.push_str("]\n");
    // Wait for the servers to listen.
    for port in &ports {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(("127.0.0.1", *port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let proxy = start_proxy(&text).await;
    let addr = proxy.listener_addr("redis").unwrap();
    // SET through the proxy from eight addresses; each key lands on exactly
    // one Redis, and a GET from the same address finds it.
    for i in 1..=8u8 {
        let mut stream = connect_stream_from(client(i), addr).await;
        let key = format!("k{i}");
        let set = format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$1\r\n{i}\r\n",
            key.len()
        );
        stream.write_all(set.as_bytes()).await.unwrap();
        let mut reply = [0u8; 5];
        bounded(stream.read_exact(&mut reply)).await.unwrap();
        assert_eq!(&reply, b"+OK\r\n");
        let mut again = connect_stream_from(client(i), addr).await;
        let get = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
        again.write_all(get.as_bytes()).await.unwrap();
        let mut reply = [0u8; 7];
        bounded(again.read_exact(&mut reply)).await.unwrap();
        assert_eq!(&reply, format!("$1\r\n{i}\r\n").as_bytes(), "key {key}");
    }
    let Some(benchmark) = ["redis-benchmark", "/usr/bin/redis-benchmark"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .arg("--version")
                .output()
                .is_ok()
        })
    else {
        eprintln!("SKIP: redis-benchmark is not installed");
        return;
    };
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(benchmark)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
                "-n",
                "5000",
                "-c",
                "10",
                "-t",
                "set,get",
                "-q",
            ])
            .output(),
    )
    .await
    .expect("redis-benchmark finished")
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("SET:") && text.contains("GET:"), "{text}");
    assert!(!text.to_lowercase().contains("error"), "{text}");
    eprintln!(
        "redis-benchmark through the proxy: {}",
        text.lines()
            .filter(|l| l.contains("requests per second"))
            .map(|l| l.rsplit('\r').next().unwrap_or(l))
            .collect::<Vec<_>>()
            .join(" | ")
    );
}
