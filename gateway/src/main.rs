//! The `longconn-gateway` binary: parses the command line and runs `run`, `drain` or `install`.

use std::{os::unix::process::ExitStatusExt, process::ExitCode};

use clap::Parser;
use longconn_gateway::{
    Error, client,
    config::{Cli, Command, Config, DrainArgs, LogFormat},
    fds, install, logging,
};

/// One worker thread means the current-thread scheduler: no work stealing, no cross-thread
/// wake-ups.
fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all().build()
}

/// Runs `drain`, prints its report, and returns its exit code: 0 done, 1 with --wait when a
/// session was dropped, 2 on any error.
fn drain(args: &DrainArgs) -> u8 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("longconn-gateway drain: cannot start the runtime: {e}");
            return 2;
        }
    };
    match rt.block_on(client::drain(args)) {
        Ok(report) => {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            if args.wait && report.dropped > 0 {
                eprintln!(
                    "longconn-gateway drain: {} session(s) dropped",
                    report.dropped
                );
                1
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("longconn-gateway drain: {e}");
            2
        }
    }
}

/// Runs the command given after `--` and returns its exit code as a shell would: its own, 128
/// plus the signal that ended it, 127 when the program does not exist, 126 when it cannot start.
fn run_then(command: &[String]) -> u8 {
    match client::run_then(command) {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => u8::try_from(code).unwrap_or(1),
            (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
            (None, None) => 1,
        },
        Err(e) => {
            eprintln!("longconn-gateway drain: {e}");
            match e {
                Error::Hook { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 127,
                _ => 126,
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(Box::new(cli.run))) {
        Command::Run(args) => {
            let cfg = match Config::from_args(*args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("longconn-gateway: {e}");
                    return ExitCode::from(2);
                }
            };
            logging::init(cfg.log_format, &cfg.log_level);
            match fds::raise_nofile(cfg.limits.max_connections) {
                Ok(nofile) => tracing::info!(
                    soft = nofile.soft,
                    hard = nofile.hard,
                    at_start = nofile.was,
                    needed = fds::needed(cfg.limits.max_connections),
                    "open-file limit"
                ),
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::from(2);
                }
            }
            let local_token = match cfg.install_to.as_deref().map(install::install).transpose() {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "install failed");
                    return ExitCode::from(2);
                }
            };
            let rt = match runtime(cfg.worker_threads) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("longconn-gateway: cannot start the runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            match rt.block_on(longconn_gateway::run(cfg, local_token)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "gateway failed");
                    ExitCode::from(2)
                }
            }
        }
        Command::Drain(args) => {
            let level = std::env::var("LONGCONN_GATEWAY_LOG_LEVEL").unwrap_or_default();
            logging::init(LogFormat::Text, &level);
            let drained = drain(&args);
            // The command after `--`, the app's own preStop hook, runs after the drain whatever
            // the drain's outcome; when it fails, its failure is the one reported.
            ExitCode::from(match run_then(&args.then) {
                0 => drained,
                failed => failed,
            })
        }
        Command::Install(args) => match install::install(&args.dir) {
            Ok(_) => {
                println!("{}", args.dir.join(install::BINARY_NAME).display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("longconn-gateway install: {e}");
                ExitCode::from(2)
            }
        },
    }
}
