//! gRPC through the proxy, with a real implementation on both ends
//! (Python's `grpcio`, `tests/grpc/echo.py`): three gRPC servers as an `h2c`
//! pool keyed on the `x-user` metadata, and a gRPC client through the
//! proxy. Skipped (SKIP printed) when `python3` with `grpc` is missing;
//! `.ci/run` installs it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::common::*;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/grpc/echo.py")
}

/// Whether python3 can import grpc; prints SKIP for `test` when not.
fn grpc_available(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import grpc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP {test}: python3 with grpcio is not installed (pip install grpcio)");
    }
    ok
}

/// A gRPC echo server called `name`, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(name: &str) -> Server {
        let mut child = Command::new("python3")
            .arg(script())
            .args(["serve", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no port: {line:?}"));
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_keep_their_trailers_status_and_streams_and_a_users_calls_stay_on_one_backend() {
    const TEST: &str =
        "grpc_calls_keep_their_trailers_status_and_streams_and_a_users_calls_stay_on_one_backend";
    if !grpc_available(TEST) {
        return;
    }
    let servers: Vec<(String, Server)> = ["g1", "g2", "g3"]
        .iter()
        .map(|name| ((*name).to_owned(), Server::start(name)))
        .collect();
    let backends: Vec<String> = servers
        .iter()
        .map(|(name, server)| {
            format!(
                "{{ name = \"{name}\", url = \"http://127.0.0.1:{}\" }}",
                server.port
            )
        })
        .collect();
    let proxy = start_proxy(&format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n\
         [[pools]]\nname = \"grpc\"\nkey = \"header:x-user\"\n\
         upstream = {{ protocol = \"h2c\", request_timeout = \"1s\" }}\n\
         health_check = {{ interval = \"1h\", timeout = \"1s\" }}\n\
         backends = [{}]\n",
        backends.join(", ")
    ))
    .await;
    let target = format!("127.0.0.1:{}", proxy.local_addr().port());
    let users: Vec<String> = (0..12).map(|i| format!("user-{i}")).collect();
    let users = users.join(",");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script())
            .args(["call", &target, &users])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    let mut used = std::collections::HashSet::new();
    for (user, calls) in result["unary"].as_object().unwrap() {
        let calls = calls.as_array().unwrap();
        assert_eq!(calls.len(), 5);
        // Every unary call of the user on one backend, its trailer intact.
        let backend = calls[0][1].as_str().unwrap().to_owned();
        for (i, call) in calls.iter().enumerate() {
            assert_eq!(call[0], format!("{backend}:hello-{i}"), "{user}");
            assert_eq!(call[1], backend.as_str(), "{user}");
        }
        // The stream both ways: five answers, from the same backend.
        let stream = result["bidi"][user].as_array().unwrap();
        let expected: Vec<String> = (0..5).map(|i| format!("{backend}:m{i}")).collect();
        assert_eq!(stream, &expected, "{user}");
        used.insert(backend);
    }
    assert!(used.len() >= 2, "12 users on {used:?}");
    // A stream that outlasts request_timeout (1 s) once it has started.
    let slow = result["slow"].as_array().unwrap();
    assert_eq!(slow.len(), 3, "{slow:?}");
    assert!(slow[2].as_str().unwrap().ends_with(":slow-2"), "{slow:?}");
    // An error status and its message pass through.
    let error = result["error"].as_array().unwrap();
    assert_eq!(error[0], "NOT_FOUND");
    assert!(
        error[1].as_str().unwrap().starts_with("no such thing: g"),
        "{error:?}"
    );
}
