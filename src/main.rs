//! The `affinity` command: parses the command line and calls the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;
use tokio::signal::unix::{Signal, SignalKind, signal};

use affinity::balance::churn::churn;
use affinity::config::{Config, ConfigErrors, ConfigWarning, PoolConfig};
use affinity::entry::logging::{self, LogFormat};
use affinity::listener::{Addresses, Drain, ProxyHandle, ReloadFailed};

/// mimalloc: per-thread free lists suit the proxy's many short-lived
/// allocations (request heads, header maps, futures) better than glibc's
/// malloc, which showed up at ~6% of CPU under load.
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// With `--features dhat-heap` (heap profiling, see `bench/idle_heap.sh`):
/// every allocation goes through dhat, which records where it was made.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

/// The running dhat profiler: dropped (which writes `dhat-heap.json`) when
/// SIGTERM or SIGINT arrives, before the drain, so the file's "at t-end"
/// figures are what was live while the connections were still open; else
/// when `main` returns.
#[cfg(feature = "dhat-heap")]
static PROFILER: std::sync::Mutex<Option<dhat::Profiler>> = std::sync::Mutex::new(None);

/// Writes the heap profile now (once; later calls do nothing).
#[cfg(feature = "dhat-heap")]
fn write_heap_profile() {
    let profiler = PROFILER.lock().map(|mut p| p.take()).unwrap_or(None);
    drop(profiler);
}

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

    /// With --churn: only this pool (default: every hash pool in turn).
    #[arg(long, requires = "churn", value_name = "NAME")]
    pool: Option<String>,

    /// Also serve built-in demo backends on every loopback backend address
    /// of the config, each answering with its own name.
    #[arg(long)]
    demo: bool,

    /// Binary upgrade: listen on the addresses of a running instance beside
    /// it (without this, an address in use is an error); then stop the old
    /// one with SIGTERM, and it drains.
    #[arg(long, conflicts_with_all = ["check", "churn"])]
    upgrade: bool,

    /// Print the man page (roff) and exit.
    #[arg(long, exclusive = true)]
    man: bool,

    /// Log format on stderr; RUST_LOG filters (default: info).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print shell completions for SHELL: source them, or install them where
    /// your shell looks (e.g. `affinity completions bash >
    /// /etc/bash_completion.d/affinity`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
}

fn main() -> ExitCode {
    #[cfg(feature = "dhat-heap")]
    if let Ok(mut profiler) = PROFILER.lock() {
        // 40 frames, not dhat's 10: enough to reach, from the allocator,
        // the hyper, tokio or affinity code that asked for the memory.
        *profiler = Some(dhat::Profiler::builder().trim_backtraces(Some(40)).build());
    }
    let code = run_main();
    #[cfg(feature = "dhat-heap")]
    write_heap_profile();
    code
}

fn run_main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    if cli.man {
        return print_man_page();
    }
    if let Some(Command::Completions { shell }) = cli.command {
        // Into a buffer first: clap_complete panics when its writer fails
        // (say `affinity completions bash | head`).
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "affinity", &mut script);
        return print_stdout(&script, "completions");
    }
    logging::init(cli.log_format);
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(errors) => {
            print_errors(&cli.config, &errors);
            return ExitCode::FAILURE;
        }
    };
    if cli.check {
        return check(&cli.config, &config);
    }
    log_warnings(config.warnings());
    if cli.churn {
        return run_churn(&config, cli.pool.as_deref(), cli.json);
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
    let addresses = if cli.upgrade {
        Addresses::Shared
    } else {
        Addresses::Exclusive
    };
    runtime.block_on(run(config, cli.config, cli.demo, addresses))
}

/// Writes the man page, generated from the same definition as `--help`.
fn print_man_page() -> ExitCode {
    let mut page = Vec::new();
    match clap_mangen::Man::new(Cli::command()).render(&mut page) {
        Ok(()) => print_stdout(&page, "the man page"),
        Err(e) => {
            eprintln!("affinity: cannot render the man page: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `bytes` (`what`) to stdout; a reader that went away (`| head`)
/// ends it quietly with exit 1, any other failure with a message.
fn print_stdout(bytes: &[u8], what: &str) -> ExitCode {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("affinity: cannot write {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One error: `affinity: ERROR`. Several: a header line with their number,
/// then one line each, in file order, so each one can be grepped alone.
fn print_errors(path: &Path, errors: &ConfigErrors) {
    match errors.count() {
        1 => eprintln!("affinity: {}", errors.first()),
        n => eprintln!("affinity: {}: {n} errors\n{errors}", path.display()),
    }
}

/// A valid config's warnings, once each, at start and on every reload.
fn log_warnings(warnings: &[ConfigWarning]) {
    for warning in warnings {
        tracing::warn!(%warning, "config warning");
    }
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

/// Serves until SIGTERM or SIGINT, then drains; SIGHUP reloads `path`.
async fn run(config: Config, path: PathBuf, demo: bool, addresses: Addresses) -> ExitCode {
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
    let proxy = match affinity::listener::start_with(config, workers, addresses).await {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("affinity: {e}");
            return ExitCode::FAILURE;
        }
    };
    if addresses == Addresses::Shared {
        tracing::info!(
            "listening beside the running instance; stop that one with SIGTERM and it drains"
        );
    }
    let name = loop {
        match stop.recv().await {
            Received::Reload => reload(&proxy, &path).await,
            Received::Stop(name) => break name,
        }
    };
    tracing::info!("{name} received; shutting down");
    #[cfg(feature = "dhat-heap")]
    write_heap_profile();
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
        Ok(reloaded) => {
            log_warnings(&reloaded.warnings);
            if reloaded.needs_restart.is_empty() {
                tracing::info!("config reloaded");
            } else {
                tracing::warn!(
                    needs_restart = ?reloaded.needs_restart,
                    "config reloaded, except settings that need a restart"
                );
            }
        }
        Err(ReloadFailed::Config(errors)) => {
            for error in &errors {
                tracing::error!(%error, "invalid config");
            }
            tracing::error!(
                config = %path.display(),
                errors = errors.count(),
                "invalid config; keeping the running one"
            );
        }
        Err(ReloadFailed::Apply(error)) => {
            tracing::error!(%error, "cannot apply the config; keeping the running one");
        }
        Err(ReloadFailed::Tls(error)) => {
            tracing::error!(%error, "cannot use the new certificates; keeping the running config and certificates");
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

/// `--check`: the config is valid, and so is every certificate its TLS
/// listeners name (read, key matching, not expired); prints the summary
/// and each certificate's names and expiry, or what is wrong.
fn check(path: &Path, config: &Config) -> ExitCode {
    let certificates = match affinity::listener::check(config) {
        Ok(certificates) => certificates,
        Err(error) => {
            eprintln!("affinity: {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    };
    println!("{}: ok", path.display());
    for warning in config.warnings() {
        println!("warning: {warning}");
    }
    let now = std::time::SystemTime::now();
    for (_, loaded) in &certificates {
        for warning in loaded.warnings(now) {
            println!("warning: {}: {warning}", path.display());
        }
    }
    print!("{}", config.summary());
    for (listener, loaded) in &certificates {
        for certificate in loaded.certificates() {
            println!(
                "certificate   {listener}: {} (expires {}) from {}",
                certificate.names.join(", "),
                humantime::format_rfc3339_seconds(certificate.not_after),
                certificate.files.cert.display()
            );
        }
    }
    ExitCode::SUCCESS
}

/// `--churn`: the report of pool `only`, or of every pool in turn (the
/// hash pools; a classic one is named and skipped unless asked for).
fn run_churn(config: &Config, only: Option<&str>, json: bool) -> ExitCode {
    let pools: Vec<&PoolConfig> = match only {
        Some(name) => match config.pool(name) {
            Some(pool) => vec![pool],
            None => {
                let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
                eprintln!(
                    "affinity: no pool {name:?}; the pools are {}",
                    names.join(", ")
                );
                return ExitCode::FAILURE;
            }
        },
        None => config.pools.iter().map(|p| &**p).collect(),
    };
    let several = pools.len() > 1;
    let mut reports = Vec::new();
    for pool in pools {
        // A pool --churn cannot measure: skipped among several, an error alone.
        let unmeasurable = |message: String| {
            if several {
                if !json {
                    println!("pool {}: skipped: {message}\n", pool.name);
                }
                None
            } else {
                eprintln!("affinity: {message}");
                Some(ExitCode::FAILURE)
            }
        };
        let Some(algorithm) = pool.balancer.hash_algorithm() else {
            let message = format!(
                "--churn measures consistent hashing; pool {:?} uses {}, which keeps no key mapping (use maglev or ring_hash)",
                pool.name, pool.balancer.algorithm
            );
            match unmeasurable(message) {
                Some(code) => return code,
                None => continue,
            }
        };
        if pool.backends.is_empty() {
            let message = format!(
                "pool {:?} has no backends in the file (it discovers them from DNS); --churn measures the file's backends",
                pool.name
            );
            match unmeasurable(message) {
                Some(code) => return code,
                None => continue,
            }
        }
        let draining: Vec<bool> = pool.backends.iter().map(|b| b.drain).collect();
        match churn(algorithm, &pool.members(), &draining) {
            Ok(mut report) => {
                let slow_start = pool.balancer.slow_start;
                report.slow_start_seconds =
                    (!slow_start.is_zero()).then_some(slow_start.as_secs_f64());
                reports.push((pool.name.as_str(), report));
            }
            Err(e) => {
                eprintln!("affinity: pool {:?}: {e}", pool.name);
                return ExitCode::FAILURE;
            }
        }
    }
    match (json, several) {
        (true, false) => reports
            .iter()
            .for_each(|(_, r)| println!("{}", r.to_json())),
        (true, true) => {
            let by_pool: Vec<String> = reports
                .iter()
                .map(|(name, report)| format!("{}:{}", serde_json::json!(name), report.to_json()))
                .collect();
            println!("{{{}}}", by_pool.join(","));
        }
        (false, false) => reports.iter().for_each(|(_, r)| print!("{}", r.render())),
        (false, true) => {
            for (name, report) in &reports {
                println!("pool {name}");
                print!("{}", report.render());
                println!();
            }
        }
    }
    ExitCode::SUCCESS
}
