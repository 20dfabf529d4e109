//! The `affinity` binary: `--check`, `--churn --json`, `--demo` (with a
//! graceful SIGTERM), `--help`, `--version` and the log formats.
//!
//! `--demo` runs on a temporary config with a port-0 listener and backend
//! ports found free just before, never on the shipped config's fixed ports.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_affinity");

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn affinity(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// A file in the system temp dir, removed on drop.
pub(crate) struct TempFile(PathBuf);

impl TempFile {
    pub(crate) fn new(name: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("affinity-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    pub(crate) fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A child process killed on drop, should a test fail before it exits.
pub(crate) struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    fn wait_timeout(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < limit, "the process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn check_accepts_the_shipped_config_and_prints_the_pool() {
    let config = manifest_dir().join("config.toml");
    let output = affinity(&["--check", "-c", config.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("config.toml: ok"), "{stdout}");
    for i in 1..=5 {
        assert!(stdout.contains(&format!("server-{i}")), "{stdout}");
    }
}

#[test]
fn check_rejects_a_bad_config_with_exit_1_naming_file_line_and_field() {
    let file = TempFile::new(
        "bad.toml",
        "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\nweight = 0\n",
    );
    let output = affinity(&["--check", "-c", file.path()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains(file.path()), "{stderr}");
    assert!(stderr.contains(":4:"), "{stderr}");
    assert!(stderr.contains("backends[0].weight"), "{stderr}");
}

#[test]
fn check_lists_every_mistake_of_a_file_in_file_order_and_exits_1() {
    let path = manifest_dir().join("tests/configs/bad/several_mistakes.toml");
    let path = path.to_str().unwrap();
    let output = affinity(&["--check", "-c", path]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 5, "{stderr}");
    assert_eq!(lines[0], format!("affinity: {path}: 4 errors"));
    for (line, (at, field)) in lines[1..].iter().zip([
        (8, "listener.address"),
        (10, "health_check.interval"),
        (15, "backends[0].weight"),
        (18, "backends[1].name"),
    ]) {
        assert!(
            line.starts_with(&format!("{path}:{at}:")),
            "line {at} expected: {stderr}"
        );
        assert!(line.contains(&format!(": {field}: ")), "{stderr}");
    }
}

#[test]
fn check_prints_a_warning_for_two_backends_on_one_url_and_exits_0() {
    let file = TempFile::new(
        "same-url.toml",
        "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:9001\"\n\
         [[backends]]\nname = \"b\"\nurl = \"http://127.0.0.1:9001\"\n",
    );
    let output = affinity(&["--check", "-c", file.path()]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], format!("{}: ok", file.path()), "{stdout}");
    assert!(
        lines[1].starts_with(&format!(
            "warning: {}:6:7: backends[1].url: same URL as backends[0] (\"a\", line 3)",
            file.path()
        )),
        "{stdout}"
    );
    assert_eq!(stdout.matches("warning: ").count(), 1, "{stdout}");
}

#[test]
fn a_warning_is_logged_once_when_the_config_is_loaded_to_run() {
    let file = TempFile::new(
        "same-url-churn.toml",
        "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:9001\"\n\
         [[backends]]\nname = \"b\"\nurl = \"http://127.0.0.1:9001\"\n",
    );
    let output = affinity(&["--churn", "-c", file.path()]);
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.matches("config warning").count(), 1, "{stderr}");
    assert!(
        stderr.contains("backends[1].url: same URL as backends[0]"),
        "{stderr}"
    );
}

#[test]
fn churn_json_prints_one_object_with_the_documented_fields() {
    let config = manifest_dir().join("config.toml");
    let output = affinity(&["--churn", "--json", "-c", config.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["algorithm"], "maglev");
    assert_eq!(report["table_size"], 65537);
    assert!(report["build_ms"].as_f64().unwrap() >= 0.0);
    let backends = report["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 5);
    let total: f64 = backends.iter().map(|b| b["share"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-9, "{total}");
    for (i, b) in backends.iter().enumerate() {
        assert_eq!(b["name"], format!("server-{}", i + 1));
        assert_eq!(b["weight"], 1);
    }
    let remove = report["remove"].as_array().unwrap();
    assert_eq!(remove.len(), 5);
    for r in remove {
        assert!(r["name"].is_string());
        assert!(r["moved"].as_f64().unwrap() >= r["optimal"].as_f64().unwrap() - 1e-12);
    }
    assert!(report["add"]["moved"].is_f64());
    assert!((report["add"]["optimal"].as_f64().unwrap() - 1.0 / 6.0).abs() < 1e-12);
}

/// Three pools: two hash pools and a round-robin one.
const THREE_POOLS: &str = "[[routes]]\npath_prefix = \"/a\"\npool = \"a\"\n\
    [[routes]]\npath_prefix = \"/b\"\npool = \"b\"\n[[routes]]\npool = \"rr\"\n\
    [[pools]]\nname = \"a\"\nbackends = [{ name = \"a1\", url = \"http://127.0.0.1:9001\" }, \
    { name = \"a2\", url = \"http://127.0.0.1:9002\" }]\n\
    [[pools]]\nname = \"b\"\nalgorithm = \"ring_hash\"\n\
    backends = [{ name = \"b1\", url = \"http://127.0.0.1:9003\" }]\n\
    [[pools]]\nname = \"rr\"\nalgorithm = \"round_robin\"\n\
    backends = [{ name = \"r1\", url = \"http://127.0.0.1:9004\" }]\n";

#[test]
fn churn_reports_every_hash_pool_in_turn_or_the_one_asked_for() {
    let file = TempFile::new("three-pools-churn.toml", THREE_POOLS);
    let output = affinity(&["--churn", "-c", file.path()]);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("pool a\nalgorithm maglev"), "{text}");
    assert!(text.contains("pool b\nalgorithm ring_hash"), "{text}");
    assert!(text.contains("pool rr: skipped"), "{text}");

    let output = affinity(&["--churn", "--json", "-c", file.path()]);
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["a"]["backends"].as_array().unwrap().len(), 2);
    assert_eq!(report["b"]["algorithm"], "ring_hash");
    assert!(report.get("rr").is_none(), "{report}");

    let output = affinity(&["--churn", "--json", "--pool", "a", "-c", file.path()]);
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["algorithm"], "maglev");

    for (pool, why) in [
        ("rr", "keeps no key mapping"),
        ("zz", "no pool \"zz\"; the pools are a, b, rr"),
    ] {
        let output = affinity(&["--churn", "--pool", pool, "-c", file.path()]);
        assert!(!output.status.success(), "{output:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.contains(why), "{stderr}");
    }
}

#[test]
fn help_and_version_describe_the_command() {
    let help = affinity(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for flag in ["--config", "--check", "--churn", "--demo", "--log-format"] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
    let version = affinity(&["--version"]);
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8(version.stdout).unwrap().trim(),
        format!("affinity {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Ports free right now on 127.0.0.1 (bound, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Starts `affinity --demo` on a temporary 3-backend config and returns the
/// process, the config file and the proxy address it logged.
fn start_demo(log_format: &str) -> (Running, TempFile, SocketAddr) {
    let mut text = String::from(
        "[listener]\naddress = \"127.0.0.1:0\"\ndrain_timeout = \"5s\"\n\
         [balancer]\nkey = \"header:X-User\"\n",
    );
    for (i, port) in free_ports(3).into_iter().enumerate() {
        text.push_str(&format!(
            "[[backends]]\nname = \"server-{}\"\nurl = \"http://127.0.0.1:{port}\"\n",
            i + 1
        ));
    }
    let file = TempFile::new(&format!("demo-{log_format}.toml"), &text);
    let (child, log, address) = start_affinity(&file, &["--demo", "--log-format", log_format]);
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || while log.recv().is_ok() {});
    (child, file, address)
}

/// Starts `affinity -c FILE ARGS` with `RUST_LOG=info`; returns the process,
/// its stderr lines (read on a thread: keep receiving, or drop the receiver
/// to discard them) and the proxy address it logged. JSON log lines are
/// checked to be JSON.
fn start_affinity(file: &TempFile, args: &[&str]) -> (Running, mpsc::Receiver<String>, SocketAddr) {
    start_affinity_logging(file, args, "info")
}

/// [`start_affinity`] with `RUST_LOG=rust_log`.
pub(crate) fn start_affinity_logging(
    file: &TempFile,
    args: &[&str],
    rust_log: &str,
) -> (Running, mpsc::Receiver<String>, SocketAddr) {
    let json = args.contains(&"json");
    let mut child = Running(
        Command::new(BIN)
            .args(["-c", file.path()])
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let address = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("affinity never logged its address");
        if json {
            let entry: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            assert!(entry["level"].is_string(), "{line}");
        }
        if let Some(rest) = line.split("listening on ").nth(1)
            && line.contains("affinity::listener")
        {
            let token: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            break token.parse::<SocketAddr>().unwrap();
        }
    };
    (child, rx, address)
}

/// Waits (at most 10 s) for a log line containing one of `needles`;
/// returns it.
fn wait_for_line(log: &mpsc::Receiver<String>, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no log line with any of {needles:?}"));
        if needles.iter().any(|n| line.contains(n)) {
            return line;
        }
    }
}

fn signal(child: &Running, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub(crate) fn terminate(child: &mut Running) -> ExitStatus {
    signal(child, "TERM");
    child.wait_timeout(Duration::from_secs(10))
}

#[tokio::test]
async fn demo_serves_named_backends_with_sticky_users_and_exits_0_on_sigterm() {
    let (mut child, _file, address) = start_demo("text");
    let mut client = Client::connect(address).await;
    let mut seen = std::collections::HashMap::new();
    for round in 0..3 {
        for user in 0..30 {
            let user = format!("user-{user}");
            let reply = client.get("/", &[("x-user", &user)]).await;
            assert_eq!(reply.status, 200);
            let name = reply.text().trim_end().to_owned();
            assert_eq!(reply.backend(), name);
            assert!(name.starts_with("server-"), "{name}");
            let first = seen.entry(user.clone()).or_insert_with(|| name.clone());
            assert_eq!(*first, name, "{user} moved in round {round}");
        }
    }
    let mut names: Vec<&String> = seen.values().collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 3, "30 users use all 3 demo backends");
    let health = client.get("/health", &[]).await;
    assert_eq!(health.status, 200);
    drop(client);
    assert_eq!(terminate(&mut child).code(), Some(0));
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let (mut child, _file, address) = start_demo("json");
    let mut client = Client::connect(address).await;
    assert_eq!(client.get("/", &[]).await.status, 200);
    drop(client);
    assert_eq!(terminate(&mut child).code(), Some(0));
}

#[test]
fn completions_come_for_bash_zsh_and_fish_from_the_same_definition_as_help() {
    for (shell, mark) in [
        ("bash", "complete -F _affinity"),
        ("zsh", "#compdef affinity"),
        ("fish", "complete -c affinity"),
    ] {
        let output = affinity(&["completions", shell]);
        assert_eq!(output.status.code(), Some(0), "{shell}");
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(script.contains(mark), "{shell}: {script}");
        assert!(
            script.contains("upgrade") && script.contains("check"),
            "{shell}"
        );
    }
    let unknown = affinity(&["completions", "cmd.exe"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn the_man_page_is_roff_naming_every_option() {
    let output = affinity(&["--man"]);
    assert_eq!(output.status.code(), Some(0));
    let page = String::from_utf8(output.stdout).unwrap();
    assert!(page.contains(".TH affinity 1"), "{page}");
    for option in [
        "config",
        "check",
        "churn",
        "demo",
        "upgrade",
        "man",
        "log\\-format",
    ] {
        assert!(
            page.contains(&format!("\\-\\-{option}")),
            "{option}: {page}"
        );
    }
    assert!(page.contains("completions"), "{page}");
}

#[test]
fn a_reader_that_goes_away_never_makes_the_command_panic() {
    for args in [&["completions", "bash"][..], &["--man"][..]] {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before anything is read: every write fails.
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_ne!(output.status.code(), None, "{args:?}: killed by a signal");
    }
}

#[test]
fn the_example_systemd_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIP: systemd-analyze is not installed");
        return;
    }
    // The unit as installed, with this build's binary and man page.
    let dir = std::env::temp_dir().join(format!("affinity-unit-{}", std::process::id()));
    let man1 = dir.join("man").join("man1");
    std::fs::create_dir_all(&man1).unwrap();
    std::fs::write(man1.join("affinity.1"), affinity(&["--man"]).stdout).unwrap();
    let unit = std::fs::read_to_string(manifest_dir().join("examples/systemd/affinity.service"))
        .unwrap()
        .replace("/usr/local/bin/affinity", BIN);
    let path = dir.join("affinity.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", dir.join("man"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_json_access_log_has_failed_backends_as_an_array_and_latency_in_microseconds() {
    let live = TestBackend::start("live").await;
    let dead = dead_address().await;
    let text = config_text(
        "[balancer]\nkey = \"header:X-User\"\n\
         [upstream]\nretries = 1\n",
        &[("live", live.addr), ("dead", dead)],
    );
    let file = TempFile::new("json-access.toml", &text);
    let (mut child, log, address) =
        start_affinity_logging(&file, &["--log-format", "json"], "info,access=info");
    let mut client = Client::connect(address).await;
    for user in 0..20 {
        let reply = client
            .get("/", &[("x-user", &format!("user-{user}"))])
            .await;
        assert_eq!(reply.status, 200);
    }
    drop(client);
    assert_eq!(terminate(&mut child).code(), Some(0));
    // The child has exited: its stderr ends, and so does this.
    let access: Vec<serde_json::Value> = log
        .iter()
        .map(|line| serde_json::from_str(&line).unwrap())
        .filter(|line: &serde_json::Value| line["target"] == "access")
        .collect();
    assert_eq!(access.len(), 20, "{access:?}");
    for line in &access {
        let fields = &line["fields"];
        assert!(fields["failed"].is_array(), "{line}");
        let latency = fields["latency_ms"].to_string();
        let decimals = latency.split('.').nth(1).map_or(0, str::len);
        assert!(
            decimals <= 3,
            "latency_ms {latency} is not rounded to microseconds"
        );
        assert!(
            fields["status"].is_u64() && fields["attempts"].is_u64(),
            "{line}"
        );
    }
    assert!(
        access
            .iter()
            .any(|line| line["fields"]["failed"] == serde_json::json!(["dead"])),
        "no request fell over from the dead backend: {access:?}"
    );
}

#[test]
fn a_listener_address_in_use_fails_with_exit_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let text = format!(
        "[listener]\naddress = \"{}\"\n[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n",
        taken.local_addr().unwrap()
    );
    let file = TempFile::new("taken.toml", &text);
    let output = affinity(&["-c", file.path()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}

#[tokio::test]
async fn a_second_affinity_on_the_same_address_fails_unless_it_upgrades() {
    let backend = TestBackend::start("a").await;
    let port = free_ports(1)[0];
    let text = config_text("", &[("a", backend.addr)])
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let file = TempFile::new("in-use.toml", &text);
    let (mut first, _log, address) = start_affinity(&file, &[]);
    assert_eq!(address.port(), port);
    let second = affinity(&["-c", file.path()]);
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8(second.stderr).unwrap();
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}"))
            && stderr.contains("--upgrade"),
        "{stderr}"
    );
    let (mut upgraded, _log, beside) = start_affinity(&file, &["--upgrade"]);
    assert_eq!(beside, address);
    assert_eq!(terminate(&mut first).code(), Some(0));
    assert_eq!(one_request(address).await.as_deref(), Ok("a"));
    assert_eq!(terminate(&mut upgraded).code(), Some(0));
}

/// One `GET /` on a new connection; the body of a `200`, or what went wrong.
async fn one_request(address: SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: upgrade.test\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(format!("answer: {response:?}")),
    }
}

/// The documented binary upgrade under load: clients open a new connection
/// for every request while a second instance starts with `--upgrade` and
/// the first is stopped with SIGTERM. Not one request may fail, given what
/// the procedure requires of the kernel: `net.ipv4.tcp_migrate_req = 1`, so
/// that connections queued on the old listener when it closes move to the
/// new one (`.ci/run` sets it). Without it the kernel resets those few, and
/// this test says so and checks only that the upgrade itself works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_under_load_fails_no_request() {
    let backend = TestBackend::start("a").await;
    let port = free_ports(1)[0];
    let text = config_text("", &[("a", backend.addr)])
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let file = TempFile::new("upgrade.toml", &text);
    let (mut old, _old_log, address) = start_affinity(&file, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let stop = stop.clone();
        clients.spawn(async move {
            let (mut sent, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                sent += 1;
                match one_request(address).await {
                    Ok(body) if body == "a" => {}
                    other => failed.push(format!("{other:?}")),
                }
            }
            (sent, failed)
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut new, _new_log, beside) = start_affinity(&file, &["--upgrade"]);
    assert_eq!(beside, address);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(terminate(&mut old).code(), Some(0));
    let served_before = backend.count();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut failed) = (0, Vec::new());
    while let Some(done) = clients.join_next().await {
        let (n, f) = done.unwrap();
        sent += n;
        failed.extend(f);
    }
    assert!(
        backend.count() > served_before,
        "the new instance served nothing"
    );
    assert_eq!(terminate(&mut new).code(), Some(0));
    assert!(sent > 100, "only {sent} requests");
    if affinity::listener::migrates_queued_connections() != Some(true) {
        println!(
            "SKIP the zero-failure check: net.ipv4.tcp_migrate_req is not 1 \
             ({} of {sent} failed)",
            failed.len()
        );
        return;
    }
    assert!(
        failed.is_empty(),
        "{} of {sent} failed, the first: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

/// The backend each `/k/<i>` URL key goes to under `text`, all healthy.
fn predicted(text: &str, keys: usize) -> Vec<String> {
    let config = parse(text);
    let orders = fallback_orders(&config.pools[0]);
    (0..keys)
        .map(|i| orders(format!("/k/{i}").as_bytes())[0].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sighup_reloads_valid_and_invalid_under_load_fail_no_request() {
    const KEYS: usize = 60;
    let backends = TestBackend::start_many(5).await;
    // Valid variants: all five; four, server-1 weighted 3; four without
    // server-5. Invalid ones: a typo, a duplicate name.
    let base = "[balancer]\nkey = \"url\"\n[health_check]\ninterval = \"1h\"\ntimeout = \"1s\"\n";
    let valid = [
        config_text(base, &pool(&backends)),
        config_text(base, &pool(&backends[..4])).replacen(
            "name = \"server-1\"\n",
            "name = \"server-1\"\nweight = 3\n",
            1,
        ),
        config_text(base, &pool(&backends[1..])),
    ];
    let invalid = [
        valid[1].replacen("[balancer]", "bogus = 1\n[balancer]", 1),
        format!(
            "{}[[backends]]\nname = \"server-2\"\nurl = \"http://127.0.0.1:1\"\n",
            valid[2]
        ),
    ];
    let file = TempFile::new("reload.toml", &valid[0]);
    let (child, log, address) = start_affinity(&file, &[]);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut client = Client::connect(address).await;
            let (mut sent, mut failed) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let reply = client
                    .get(&format!("/k/{}", sent as usize % KEYS), &[])
                    .await;
                if reply.status != 200 {
                    failed.push(format!("{} {}", reply.status, reply.text()));
                }
                sent += 1;
            }
            (sent, failed)
        })
    };

    let mut client = Client::connect(address).await;
    let mut running = &valid[0];
    for reload in 0..20 {
        if reload % 2 == 0 {
            running = &valid[(reload / 2 + 1) % valid.len()];
            std::fs::write(&file.0, running).unwrap();
            signal(&child, "HUP");
            let line = wait_for_line(&log, &["config reloaded", "keeping the running one"]);
            assert!(line.contains("config reloaded"), "reload {reload}: {line}");
        } else {
            std::fs::write(&file.0, &invalid[(reload / 2) % invalid.len()]).unwrap();
            signal(&child, "HUP");
            let line = wait_for_line(&log, &["config reloaded", "keeping the running one"]);
            assert!(line.contains("invalid config"), "reload {reload}: {line}");
            assert!(
                line.contains(file.path()),
                "the error names the file: {line}"
            );
        }
        // Whatever happened, requests go where the running config says.
        let want = predicted(running, KEYS);
        for (i, backend) in want.iter().enumerate() {
            let reply = client.get(&format!("/k/{i}"), &[]).await;
            assert_eq!(reply.status, 200);
            assert_eq!(reply.backend(), backend, "key {i} after reload {reload}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (sent, failed) = bounded(load).await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {failed:?}",
        failed.len()
    );
    assert!(sent >= 20, "the load sent only {sent}");
    drop(log);
    let mut child = child;
    assert_eq!(terminate(&mut child).code(), Some(0));
}

#[test]
fn a_reload_logs_every_error_of_an_invalid_file_and_the_warnings_of_a_valid_one() {
    let valid = "[listener]\naddress = \"127.0.0.1:0\"\n[health_check]\ninterval = \"1h\"\n\
                 [[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n";
    let file = TempFile::new("reload-all-errors.toml", valid);
    let (mut child, log, _address) = start_affinity(&file, &[]);

    // Lines 2 and 7 are wrong.
    let invalid = valid
        .replace("127.0.0.1:0", "nowhere")
        .replace("http://127.0.0.1:1", "ftp://127.0.0.1:1");
    std::fs::write(&file.0, invalid).unwrap();
    signal(&child, "HUP");
    let first = wait_for_line(&log, &["invalid config", "config reloaded"]);
    let second = wait_for_line(&log, &["invalid config", "config reloaded"]);
    let last = wait_for_line(&log, &["invalid config", "config reloaded"]);
    assert!(
        first.contains(&format!("{}:2:", file.path())) && first.contains("listener.address"),
        "{first}"
    );
    assert!(
        second.contains(&format!("{}:7:", file.path())) && second.contains("backends[0].url"),
        "{second}"
    );
    assert!(last.contains("keeping the running one"), "{last}");
    assert!(last.contains("errors=2"), "{last}");

    let same_url = format!("{valid}[[backends]]\nname = \"b\"\nurl = \"http://127.0.0.1:1\"\n");
    std::fs::write(&file.0, same_url).unwrap();
    signal(&child, "HUP");
    let warning = wait_for_line(
        &log,
        &["config warning", "config reloaded", "invalid config"],
    );
    assert!(warning.contains("config warning"), "{warning}");
    assert!(
        warning.contains("backends[1].url: same URL as backends[0]"),
        "{warning}"
    );
    let reloaded = wait_for_line(
        &log,
        &["config warning", "config reloaded", "invalid config"],
    );
    assert!(reloaded.contains("config reloaded"), "{reloaded}");
    drop(log);
    assert_eq!(terminate(&mut child).code(), Some(0));
}

/// The value of the unlabelled or labelled sample `sample` (its name and
/// labels as written) in a Prometheus text exposition.
fn sample_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sighup_reload_shows_in_the_admin_metrics_and_status_until_a_good_file_loads() {
    let backends = TestBackend::start_many(2).await;
    let admin_port = free_ports(1)[0];
    let sections = format!(
        "[admin]\naddress = \"127.0.0.1:{admin_port}\"\n\
         [health_check]\ninterval = \"1h\"\ntimeout = \"1s\"\n"
    );
    let good = config_text(&sections, &pool(&backends));
    let file = TempFile::new("reload-metrics.toml", &good);
    let (mut child, log, _address) = start_affinity(&file, &[]);
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let scrape = || async move {
        let reply = Client::connect(admin).await.get("/metrics", &[]).await;
        assert_eq!(reply.status, 200);
        let text = reply.text().to_owned();
        let get = |sample: &str| {
            sample_value(&text, sample).unwrap_or_else(|| panic!("no {sample}:\n{text}"))
        };
        (
            get("affinity_config_reloads_total{result=\"success\"}"),
            get("affinity_config_reloads_total{result=\"failure\"}"),
            get("affinity_config_last_reload_successful"),
        )
    };
    assert_eq!(scrape().await, (0.0, 0.0, 1.0));

    std::fs::write(&file.0, good.replacen("[admin]", "[admn]", 1)).unwrap();
    signal(&child, "HUP");
    let line = wait_for_line(&log, &["config reloaded", "keeping the running one"]);
    assert!(line.contains("invalid config"), "{line}");
    assert_eq!(scrape().await, (0.0, 1.0, 0.0));
    let status: serde_json::Value =
        serde_json::from_slice(&Client::connect(admin).await.get("/status", &[]).await.body)
            .unwrap();
    let error = status["last_reload"]["error"].as_str().unwrap();
    assert!(
        error.contains(file.path()) && error.contains("admn"),
        "{error}"
    );

    std::fs::write(&file.0, &good).unwrap();
    signal(&child, "HUP");
    let line = wait_for_line(&log, &["config reloaded", "keeping the running one"]);
    assert!(line.contains("config reloaded"), "{line}");
    assert_eq!(scrape().await, (1.0, 1.0, 1.0));
    drop(log);
    assert_eq!(terminate(&mut child).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish_refuses_new_connections_and_exits_0() {
    let backends = TestBackend::start_many(2).await;
    let text = config_text("[balancer]\nkey = \"url\"", &pool(&backends))
        .replace("drain_timeout = \"2s\"", "drain_timeout = \"5s\"");
    let file = TempFile::new("drain.toml", &text);
    let (mut child, log, address) = start_affinity(&file, &[]);
    std::thread::spawn(move || while log.recv().is_ok() {});
    let held = tokio::spawn(async move {
        let mut client = Client::connect(address).await;
        client.get("/hold", &[]).await
    });
    bounded(async {
        while backends.iter().map(TestBackend::count).sum::<u64>() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let signalled = Instant::now();
    signal(&child, "TERM");
    // The listener closes at once: new connections are refused.
    bounded(async {
        while tokio::net::TcpStream::connect(address).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for backend in &backends {
        backend.release();
    }
    let reply = bounded(held).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(child.wait_timeout(Duration::from_secs(5)).code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "exit took {:?}",
        signalled.elapsed()
    );
}

#[tokio::test]
async fn a_closed_stderr_neither_stops_serving_nor_fails_the_exit() {
    let dead = dead_address().await;
    let text = config_text("", &[("gone", dead)]);
    let file = TempFile::new("closed-stderr.toml", &text);
    let (mut child, log, address) = start_affinity(&file, &[]);
    // The reading thread ends at the next line, closing the pipe.
    drop(log);
    let mut client = Client::connect(address).await;
    for _ in 0..3 {
        // Each failed request logs a warning into the closed pipe.
        assert_eq!(client.get("/", &[]).await.status, 503);
    }
    drop(client);
    assert_eq!(terminate(&mut child).code(), Some(0));
}

/// SIGTERM with a tcp connection open: the listener stops accepting, the
/// connection keeps relaying until `drain_timeout`, then it is closed (its
/// access-log line says `shutdown`) and the process exits 0.
#[tokio::test]
async fn sigterm_lets_an_open_tcp_connection_run_until_the_drain_timeout_then_closes_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let backend = crate::tcp::EchoBackend::start("e0").await;
    let file = TempFile::new(
        "tcp-drain.toml",
        &format!(
            "[listener]\ndrain_timeout = \"1s\"\n\
             [[listeners]]\nname = \"tcp\"\naddress = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"echo\"\n\
             [[pools]]\nname = \"echo\"\nhealth_check = {{ type = \"tcp\", interval = \"1h\", timeout = \"1s\" }}\n\
             backends = [{{ name = \"e0\", url = \"tcp://{}\" }}]\n",
            backend.addr
        ),
    );
    let (mut child, log, address) = start_affinity(&file, &[]);
    let mut open = bounded(tokio::net::TcpStream::connect(address))
        .await
        .unwrap();
    let mut greeting = [0u8; 3];
    bounded(open.read_exact(&mut greeting)).await.unwrap();
    signal(&child, "TERM");
    let started = Instant::now();
    // The listeners close at once (each worker's): new connections are
    // refused.
    bounded(async {
        while tokio::net::TcpStream::connect(address).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    open.write_all(b"during the drain").await.unwrap();
    let mut echo = [0u8; 16];
    bounded(open.read_exact(&mut echo)).await.unwrap();
    assert_eq!(&echo, b"DURING THE DRAIN");
    let mut rest = Vec::new();
    bounded(open.read_to_end(&mut rest)).await.unwrap();
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(800) && closed_after < Duration::from_secs(5),
        "{closed_after:?}"
    );
    // (Connections the polling above got in before the listeners closed
    // end `closed`.)
    let line = wait_for_line(&log, &["outcome=\"shutdown\""]);
    assert!(
        line.contains("backend=\"e0\"") && line.contains("bytes_in=16"),
        "{line}"
    );
    assert_eq!(child.wait_timeout(Duration::from_secs(10)).code(), Some(0));
}
