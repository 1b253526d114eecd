//! The `drain` subcommand, which the app container's preStop hook runs: it reads the report with
//! `GET /drain`, waits `--settle` when no drain has started yet ([`settle_time`]), starts (or
//! joins) a drain with `POST /drain`, and with `--wait` polls `GET /drain` until the report says
//! Drained, printing the final report as JSON. The calls themselves are `longconn_drain_api`'s,
//! which the operator uses too; this module turns the subcommand's flags into them. A command
//! given after `--` (the app's own preStop hook) runs once the drain is over ([`run_then`]).
//!
//! Why the settle: a pod deleted by someone other than the operator (an eviction, a node drain,
//! `kubectl delete pod`) leaves the Service's endpoints at the moment its hook starts, and
//! kube-proxy takes up to about a second to stop sending it new connections. Close frames sent
//! at once would have clients reconnect to this very pod and be refused, so the hook waits first
//! while the gateway keeps accepting. The operator drains a pod before it deletes it: its drain
//! is found started, and joined at once. With `--handoff`, the hook also waits (up to that long)
//! for the operator to start the drain of a pod it did not delete itself, and joins it when it
//! does: the operator starts it once the sessions have somewhere to go.

use std::{process::ExitStatus, time::Duration};

use longconn_drain_api::{DrainReport, DrainRequest, DrainState, report, start_drain};

use crate::{
    config::DrainArgs,
    error::{Error, Result},
    install,
};

/// How often a hook waiting for a hand-off looks whether the drain has started.
const HANDOFF_POLL: Duration = Duration::from_millis(250);

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
    let before = report(&args.admin, token).await?;
    let wait = settle_time(&before, args.settle.max(args.handoff));
    if before.state != DrainState::Serving {
        tracing::info!(state = ?before.state, "a drain has started already: joining it without settling");
    } else if !wait.is_zero() {
        tracing::info!(
            settle = %humantime::format_duration(args.settle),
            handoff = %humantime::format_duration(args.handoff),
            "no drain under way: waiting, so that the Service stops sending this pod new connections (and the operator may start the drain) before clients are told to move; the gateway accepts meanwhile"
        );
        if args.handoff.is_zero() {
            tokio::time::sleep(wait).await;
        } else {
            let until = tokio::time::Instant::now() + wait;
            while tokio::time::Instant::now() < until {
                tokio::time::sleep_until(until.min(tokio::time::Instant::now() + HANDOFF_POLL))
                    .await;
                if report(&args.admin, token).await?.state != DrainState::Serving {
                    tracing::info!("the drain was started by someone else: joining it");
                    break;
                }
            }
        }
    }
    let mut last = start_drain(&args.admin, token, &request).await?;
    tracing::info!(state = ?last.state, sessions_at_start = last.sessions_at_start, "drain started or joined");
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

/// How long to wait before starting a drain, given the report read first: `settle` when no drain
/// has started, nothing when one has (under way or finished), since then the pod has already
/// left the Service's endpoints.
pub fn settle_time(before: &DrainReport, settle: Duration) -> Duration {
    match before.state {
        DrainState::Serving => settle,
        DrainState::Draining | DrainState::Drained => Duration::ZERO,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_gateway_nobody_drained_yet_is_given_the_settle_time() {
        let settle = Duration::from_secs(2);
        let at = |state| {
            let report = DrainReport {
                state,
                ..DrainReport::default()
            };
            settle_time(&report, settle)
        };
        assert_eq!(at(DrainState::Serving), settle);
        assert_eq!(at(DrainState::Draining), Duration::ZERO);
        assert_eq!(at(DrainState::Drained), Duration::ZERO);
    }
}
