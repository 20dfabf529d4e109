//! The `affinity` command: parses the command line and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use affinity::churn::churn;
use affinity::config::Config;
use affinity::selector::HashAlgorithm;

/// A consistent-hashing, session-affinity HTTP load balancer.
#[derive(Debug, Parser)]
#[command(name = "affinity", version, about, long_about = None)]
struct Cli {
    /// The config file.
    #[arg(short, long, value_name = "PATH", default_value = "config.toml")]
    config: PathBuf,

    /// Validate the config, print a summary of the pool and exit (0 if valid, 1 if not).
    #[arg(long, conflicts_with = "churn")]
    check: bool,

    /// Dry run, no traffic: each backend's share of keys, and how many keys
    /// move if one backend leaves or one more joins, beside the optimum.
    #[arg(long)]
    churn: bool,

    /// With --churn: print one JSON object instead of a table.
    #[arg(long, requires = "churn")]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    eprintln!("affinity: the proxy is not built yet; use --check or --churn");
    ExitCode::FAILURE
}

fn run_churn(config: &Config, json: bool) -> ExitCode {
    let Some(algorithm) = HashAlgorithm::from_config(&config.balancer) else {
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
