//! The `affinity` command: parses the command line and calls the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use affinity::balance::churn::churn;
use affinity::config::Config;
use affinity::listener::{Drain, ProxyHandle, ReloadFailed};

/// mimalloc: per-thread free lists suit the proxy's many short-lived
/// allocations (request heads, header maps, futures) better than glibc's
/// malloc, which showed up at ~6% of CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A consistent-hashing, session-affinity HTTP load balancer.
#[derive(Debug, Parser)]
#[command(name = "affinity", version, about, long_about = None)]
struct Cli {
    /// The config file.
    #[arg(short, long, value_name = "PATH", default_value = "config.toml")]
    config: PathBuf,

    /// Validate the config, print a summary of the pool and exit (0 if valid, 1 if not).
    #[arg(long, conflicts_with_all = ["churn", "demo"])]
    check: bool,

    /// Dry run, no traffic: each backend's share of keys, and how many keys
    /// move if one backend leaves or one more joins, beside the optimum.
    #[arg(long, conflicts_with = "demo")]
    churn: bool,

    /// With --churn: print one JSON object instead of a table.
    #[arg(long, requires = "churn")]
    json: bool,

    /// Also serve built-in demo backends on every loopback backend address
    /// of the config, each answering with its own name.
    #[arg(long)]
    demo: bool,

    /// Log format on stderr; RUST_LOG filters (default: info).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("affinity: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check {
        println!("{}: ok", cli.config.display());
        print!("{}", config.summary());
        return ExitCode::SUCCESS;
    }
    if cli.churn {
        return run_churn(&config, cli.json);
    }
    // The proxy runs one single-threaded runtime per core (see
    // `server::start_workers`); this one hosts the first worker, the signal
    // handlers and the demo backends.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("affinity: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config, cli.config, cli.demo))
}

/// Keeps the kernel from backing the heap with 2 MiB transparent huge
/// pages. mimalloc is built not to ask for them (`no_thp`); this also covers
/// kernels set to give them to every process (`enabled = always`). Each idle
/// client connection holds a few small buffers: with huge pages, partly used
/// 2 MiB pages count whole, and 10,000 idle connections took 325 MiB of RSS
/// instead of 203 MiB.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no
        // memory of ours; a failure (an old kernel) leaves things as they were.
        let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

/// The log filter when `RUST_LOG` is unset.
const DEFAULT_LOG_DIRECTIVES: &str = "info,access=off";

fn init_logging(format: LogFormat) {
    // Without RUST_LOG: info, and no access log (one line per request is
    // for operators who ask for it: RUST_LOG=info,access=info).
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::builder()
            .with_default_directive(LevelFilter::INFO.into())
            .parse_lossy(directives),
        _ => EnvFilter::new(DEFAULT_LOG_DIRECTIVES),
    };
    // A log line that cannot be written (stderr closed: the log collector
    // went away) is dropped: reporting it would write to stderr again, and
    // `eprintln!` panics when that fails. The proxy keeps serving.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Serves until SIGTERM or SIGINT, then drains; SIGHUP reloads `path`.
async fn run(config: Config, path: PathBuf, demo: bool) -> ExitCode {
    // Installed before anything starts: a signal that arrives as soon as the
    // listening address is logged must already mean "drain", not "die".
    let mut stop = match StopSignals::install() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("affinity: cannot listen for SIGTERM/SIGINT/SIGHUP: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Started before the proxy, so the proxy's first requests find them.
    let _demo = if demo {
        match affinity::entry::demo::start(&config).await {
            Ok(backends) => Some(backends),
            Err(e) => {
                eprintln!("affinity: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let proxy = match affinity::listener::start_workers(config, workers).await {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("affinity: {e}");
            return ExitCode::FAILURE;
        }
    };
    let name = loop {
        match stop.recv().await {
            Received::Reload => reload(&proxy, &path).await,
            Received::Stop(name) => break name,
        }
    };
    tracing::info!("{name} received; shutting down");
    if proxy.shutdown().await == Drain::TimedOut {
        tracing::warn!("some requests were cut off by the drain timeout");
    }
    ExitCode::SUCCESS
}

/// SIGHUP: re-reads the config file and, if it is valid, replaces the
/// running config; if not, logs why and keeps running the old one. Either
/// way the outcome shows in the admin endpoint's metrics and `/status`.
async fn reload(proxy: &ProxyHandle, path: &Path) {
    tracing::info!(config = %path.display(), "SIGHUP received; reloading");
    match proxy.reload_file(path).await {
        Ok(reloaded) if reloaded.needs_restart.is_empty() => tracing::info!("config reloaded"),
        Ok(reloaded) => tracing::warn!(
            needs_restart = ?reloaded.needs_restart,
            "config reloaded, except settings that need a restart"
        ),
        Err(ReloadFailed::Config(error)) => {
            tracing::error!(%error, "invalid config; keeping the running one");
        }
        Err(ReloadFailed::Apply(error)) => {
            tracing::error!(%error, "cannot apply the config; keeping the running one");
        }
    }
}

/// What a signal asks for.
enum Received {
    /// SIGHUP.
    Reload,
    /// SIGTERM or SIGINT, by name.
    Stop(&'static str),
}

/// SIGTERM, SIGINT and SIGHUP, caught from the moment they are installed.
struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next one.
    async fn recv(&mut self) -> Received {
        tokio::select! {
            _ = self.terminate.recv() => Received::Stop("SIGTERM"),
            _ = self.interrupt.recv() => Received::Stop("SIGINT"),
            _ = self.hangup.recv() => Received::Reload,
        }
    }
}

fn run_churn(config: &Config, json: bool) -> ExitCode {
    let Some(algorithm) = config.balancer.hash_algorithm() else {
        eprintln!(
            "affinity: --churn measures consistent hashing; balancer.algorithm is {}, \
             which keeps no key mapping (use maglev or ring_hash)",
            config.balancer.algorithm
        );
        return ExitCode::FAILURE;
    };
    match churn(algorithm, &config.members()) {
        Ok(report) if json => {
            println!("{}", report.to_json());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{}", report.render());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("affinity: {e}");
            ExitCode::FAILURE
        }
    }
}
