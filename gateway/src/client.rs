//! The `drain` subcommand, which the app container's preStop hook runs: it starts (or joins) a
//! drain with `POST /drain`, and with `--wait` polls `GET /drain` until the report says Drained,
//! printing the final report as JSON. The calls themselves are `longconn_drain_api`'s, which
//! the operator uses too; this module turns the subcommand's flags into them. A command given
//! after `--` (the app's own preStop hook) runs once the drain is over ([`run_then`]).

use std::process::ExitStatus;

use longconn_drain_api::{DrainReport, DrainRequest, report, start_drain};

use crate::{
    config::DrainArgs,
    error::{Error, Result},
    install,
};

/// Runs `drain`; returns the last report seen.
pub async fn drain(args: &DrainArgs) -> Result<DrainReport> {
    let token_path = args
        .admin_token_file
        .clone()
        .or_else(install::local_token_path)
        .ok_or_else(|| Error::Admin {
            addr: args.admin.clone(),
            reason: "no token: pass --admin-token-file (or run the binary installed by `install`)"
                .into(),
        })?;
    let token = std::fs::read_to_string(&token_path).map_err(|source| Error::ReadFile {
        what: "admin token",
        path: token_path.clone(),
        source,
    })?;
    let token = token.trim();
    let request = DrainRequest {
        strategy: args.strategy,
        deadline: args.deadline,
        spread: args.spread,
        close_code: args.close_code,
        reason: args.reason.clone(),
    };
    let mut last = start_drain(&args.admin, token, &request).await?;
    if !args.wait {
        return Ok(last);
    }
    let give_up = tokio::time::Instant::now() + args.max_wait;
    let waited = !last.is_finished();
    while !last.is_finished() {
        if tokio::time::Instant::now() >= give_up {
            return Err(Error::Admin {
                addr: args.admin.clone(),
                reason: format!(
                    "drain not finished after {}",
                    humantime::format_duration(args.max_wait)
                ),
            });
        }
        tokio::time::sleep(args.poll_interval).await;
        last = report(&args.admin, token).await?;
    }
    if waited {
        tokio::time::sleep(args.linger).await;
    }
    Ok(last)
}

/// Runs `command` (program and arguments, no shell) with this process's standard streams and
/// waits for it. An empty command succeeds at once.
pub fn run_then(command: &[String]) -> Result<ExitStatus> {
    let Some((program, args)) = command.split_first() else {
        return Ok(ExitStatus::default());
    };
    std::process::Command::new(program)
        .args(args)
        .status()
        .map_err(|source| Error::Hook {
            program: program.clone(),
            source,
        })
}
