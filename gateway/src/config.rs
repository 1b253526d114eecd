//! Command line and environment: the flags of `longconn-gateway`, their defaults, and the
//! validation that turns them into a [`Config`].
//!
//! Every flag of `run` can also be set through the environment as `LONGCONN_GATEWAY_<FLAG>`
//! (`--max-connections` is `LONGCONN_GATEWAY_MAX_CONNECTIONS`). Durations are strings such as
//! `30s`, `5m` or `1h30m`. [`Config::from_args`] checks every value and reports all bad ones at
//! once, one line per flag, so a pod that will not start says exactly why.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use longconn_drain_api::DrainStrategy;

use crate::{
    error::{Error, Result},
    forwarded::{self, ClientAddresses},
    proxy_protocol::ProxyProtocol,
    session_limits::{SessionLimitArgs, SessionRates},
};

/// The gateway's command line.
#[derive(Debug, Parser)]
#[command(
    name = "longconn-gateway",
    version,
    about = "Per-pod gateway for long-lived connections: proxies WebSocket and HTTP to the app, enforces limits, drains on request.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `run`, accepted without the subcommand too (`run` is the default).
    #[command(flatten)]
    pub run: RunArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve: the default when no subcommand is given.
    Run(Box<RunArgs>),
    /// Start (or join) a drain through the admin API; with --wait, return when it has finished.
    Drain(DrainArgs),
    /// Copy this binary (and a fresh local drain token) into DIR, then exit.
    Install(InstallArgs),
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Flags of `longconn-gateway run`.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Address clients connect to.
    #[arg(long, env = "LONGCONN_GATEWAY_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// The app inside the pod.
    #[arg(
        long,
        env = "LONGCONN_GATEWAY_UPSTREAM",
        default_value = "127.0.0.1:8080"
    )]
    pub upstream: SocketAddr,
    /// Address of the admin port (/healthz, /readyz, /metrics, /drain).
    #[arg(
        long,
        env = "LONGCONN_GATEWAY_ADMIN_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub admin_listen: SocketAddr,
    /// File holding the bearer token of the drain API; read on every request, so it may rotate.
    #[arg(long, env = "LONGCONN_GATEWAY_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// PEM certificate chain; enables TLS together with --tls-key. Reloaded when it changes.
    #[arg(long, env = "LONGCONN_GATEWAY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching --tls-cert.
    #[arg(long, env = "LONGCONN_GATEWAY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// How often the certificate files are checked for changes.
    #[arg(long, env = "LONGCONN_GATEWAY_TLS_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
    /// Client connections per process; above it new ones get 503 with Retry-After.
    #[arg(
        long,
        env = "LONGCONN_GATEWAY_MAX_CONNECTIONS",
        default_value_t = 10_000
    )]
    pub max_connections: u64,
    /// How often an otherwise silent client is pinged.
    #[arg(long, env = "LONGCONN_GATEWAY_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// How long a ping may go unanswered before the session is closed.
    #[arg(long, env = "LONGCONN_GATEWAY_HEARTBEAT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,
    /// A session with no data message in either direction for this long is closed.
    #[arg(long, env = "LONGCONN_GATEWAY_IDLE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Time a client has for the TLS handshake plus its HTTP request head.
    #[arg(long, env = "LONGCONN_GATEWAY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Largest client message (all fragments); larger ones close the session with 1009.
    #[arg(
        long,
        env = "LONGCONN_GATEWAY_MAX_MESSAGE_BYTES",
        default_value_t = 1_048_576
    )]
    pub max_message_bytes: u64,
    /// Origins allowed to open WebSocket sessions (comma separated); empty allows any.
    #[arg(long, env = "LONGCONN_GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// New connections per second per client IP (token bucket refill); 0 disables the limit.
    #[arg(
        long,
        env = "LONGCONN_GATEWAY_RATE_LIMIT_CONNECTIONS_PER_SECOND_PER_IP",
        default_value_t = 50.0
    )]
    pub rate_limit_connections_per_second_per_ip: f64,
    /// Token bucket size: connections one IP may open at once.
    #[arg(long, env = "LONGCONN_GATEWAY_RATE_LIMIT_BURST", default_value_t = 100)]
    pub rate_limit_burst: u32,
    /// Connections in their handshake (TLS, request head) at once; more are refused at accept.
    #[arg(long, env = "LONGCONN_GATEWAY_MAX_HANDSHAKES", default_value_t = 1024)]
    pub max_handshakes: u64,
    /// Connections in their handshake at once from one client IP (an IPv6 /64); 0 turns it off.
    #[arg(
        long,
        env = "LONGCONN_GATEWAY_MAX_HANDSHAKES_PER_IP",
        default_value_t = 512
    )]
    pub max_handshakes_per_ip: u32,
    /// Plain HTTP connections at once (within --max-connections); more get 503.
    #[arg(
        long,
        env = "LONGCONN_GATEWAY_MAX_HTTP_CONNECTIONS",
        default_value_t = 1000
    )]
    pub max_http_connections: u64,
    /// A plain HTTP exchange with no byte moving either way for this long is ended (408 or 504
    /// when no response has started). Server-sent event streams keep it alive with each event.
    #[arg(long, env = "LONGCONN_GATEWAY_HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,
    /// Largest plain HTTP request body; larger ones get 413. 0: no limit.
    #[arg(
        long,
        env = "LONGCONN_GATEWAY_HTTP_MAX_BODY_BYTES",
        default_value_t = 0
    )]
    pub http_max_body_bytes: u64,
    /// PROXY protocol headers every client connection starts with (off, v1, v2, any); the
    /// address a header carries is the client's.
    #[arg(long, env = "LONGCONN_GATEWAY_PROXY_PROTOCOL", value_enum, default_value_t = ProxyProtocol::Off)]
    pub proxy_protocol: ProxyProtocol,
    /// Peers (comma-separated CIDRs) whose X-Forwarded-For names the client; none by default.
    #[arg(long, env = "LONGCONN_GATEWAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Default drain strategy: Notify (close frames spread over --drain-spread) or Wait.
    #[arg(long, env = "LONGCONN_GATEWAY_DRAIN_STRATEGY", default_value = "Notify", value_parser = parse_strategy)]
    pub drain_strategy: DrainStrategy,
    /// Default drain deadline; sessions left then are force-closed and counted as dropped.
    #[arg(long, env = "LONGCONN_GATEWAY_DRAIN_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Default window over which Notify spreads its close frames.
    #[arg(long, env = "LONGCONN_GATEWAY_DRAIN_SPREAD", default_value = "30s", value_parser = parse_duration)]
    pub drain_spread: Duration,
    /// Default close code of Notify (1012 Service Restart; 1001 Going Away for old clients).
    #[arg(
        long,
        env = "LONGCONN_GATEWAY_DRAIN_CLOSE_CODE",
        default_value_t = 1012
    )]
    pub drain_close_code: u16,
    /// Copy this binary and a local drain token into DIR at start (for the app's preStop hook).
    #[arg(long, env = "LONGCONN_GATEWAY_INSTALL_TO")]
    pub install_to: Option<PathBuf>,
    /// File that outlives this process in the pod (default: beside the installed binary), so
    /// the next process can report the sessions this one had open if it ends without a drain.
    #[arg(long, env = "LONGCONN_GATEWAY_STATE_FILE")]
    pub state_file: Option<PathBuf>,
    /// At exit, write the final drain report (JSON) to this file: Kubernetes keeps a
    /// container's `/dev/termination-log` in the pod's status after the process is gone.
    #[arg(long, env = "LONGCONN_GATEWAY_TERMINATION_REPORT")]
    pub termination_report: Option<PathBuf>,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long, env = "LONGCONN_GATEWAY_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Log format.
    #[arg(long, env = "LONGCONN_GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level: a level (error, warn, info, debug, trace, off) or `tracing` filter directives
    /// such as `info,longconn_gateway::access_log=off`.
    #[arg(long, env = "LONGCONN_GATEWAY_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Per-session message and byte rates (`--session-*`).
    #[command(flatten)]
    pub session_limits: SessionLimitArgs,
}

/// Flags of `longconn-gateway drain`.
#[derive(Clone, Debug, Args)]
pub struct DrainArgs {
    /// Wait until the drain has finished; exit 1 if any session was dropped.
    #[arg(long)]
    pub wait: bool,
    /// The gateway's admin address.
    #[arg(long, env = "LONGCONN_GATEWAY_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Bearer token file; defaults to the local token written by `install` beside this binary.
    #[arg(long, env = "LONGCONN_GATEWAY_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Override the gateway's default strategy.
    #[arg(long, value_parser = parse_strategy)]
    pub strategy: Option<DrainStrategy>,
    /// Override the gateway's default deadline.
    #[arg(long, value_parser = parse_duration)]
    pub deadline: Option<Duration>,
    /// Override the gateway's default spread.
    #[arg(long, value_parser = parse_duration)]
    pub spread: Option<Duration>,
    /// Override the gateway's default close code.
    #[arg(long)]
    pub close_code: Option<u16>,
    /// The reason text of Notify's close frames (at most 123 bytes of UTF-8); none by default.
    #[arg(long)]
    pub reason: Option<String>,
    /// When no drain is under way yet (the pod was deleted by someone other than the operator:
    /// an eviction, a node drain, `kubectl delete pod`), wait this long before starting one, so
    /// that the Service stops sending this pod new connections before clients are told to
    /// reconnect; the gateway keeps accepting meanwhile. A drain already started or finished
    /// (the operator's) is joined at once. `0s` turns it off.
    #[arg(long, env = "LONGCONN_GATEWAY_DRAIN_SETTLE", default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,
    /// When no drain is under way yet, give whoever orchestrates the pod's drains (the
    /// operator) up to this long to start one, checking every 250 ms; the drain it starts is
    /// joined at once. Only once this (and `--settle`) has passed with no drain does this hook
    /// start its own. The operator waits, for example, until the pod that replaces an evicted
    /// one is Ready, so that the sessions move there. `0s` (the default): no hand-off.
    #[arg(long, env = "LONGCONN_GATEWAY_DRAIN_HANDOFF", default_value = "0s", value_parser = parse_duration)]
    pub handoff: Duration,
    /// How often the report is polled with --wait.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Give up waiting after this long (exit 2).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub max_wait: Duration,
    /// With --wait: once a drain this call waited for has finished, stay this much longer, so
    /// the gateway (and its final report) outlives the hook long enough for whoever follows the
    /// drain from outside, the operator, to read it. A drain already finished when the call
    /// starts returns at once.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub linger: Duration,
    /// With --wait: a command to run once the drain is over, given after `--` (the app's own
    /// preStop hook, run without a shell). It runs even when the drain failed, and its exit
    /// status, when not 0, is the subcommand's.
    #[arg(last = true, requires = "wait", value_name = "COMMAND")]
    pub then: Vec<String>,
}

/// Flags of `longconn-gateway install`.
#[derive(Clone, Debug, Args)]
pub struct InstallArgs {
    /// Directory to copy the binary into (an emptyDir shared with the app container).
    pub dir: PathBuf,
}

/// The longest a drain may last or spread its close frames over (a week): longer ones are
/// refused, by the flags and by the drain API, as the LongConnService's schema refuses them.
pub const MAX_DRAIN: Duration = Duration::from_secs(7 * 24 * 3600);

/// Drain parameters used when a drain request leaves them out (and on SIGTERM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainDefaults {
    pub strategy: DrainStrategy,
    pub timeout: Duration,
    pub spread: Duration,
    pub close_code: u16,
}

/// Limits applied to every client connection and session.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_connections: u64,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_message_bytes: u64,
    pub allowed_origins: Vec<String>,
    pub rate_per_second: f64,
    pub rate_burst: u32,
    pub max_handshakes: u64,
    /// 0: no per-IP cap.
    pub max_handshakes_per_ip: u32,
    pub http: HttpLimits,
}

/// Limits of plain HTTP connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: u64,
    pub idle_timeout: Duration,
    /// 0: no limit.
    pub max_body_bytes: u64,
}

/// TLS certificate and key files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub reload_interval: Duration,
}

/// The validated configuration of a running gateway.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub admin_listen: SocketAddr,
    pub admin_token_file: Option<PathBuf>,
    pub tls: Option<TlsFiles>,
    pub limits: Limits,
    /// How clients' addresses are learnt.
    pub client_addresses: ClientAddresses,
    pub drain: DrainDefaults,
    pub install_to: Option<PathBuf>,
    /// Where the state that outlives the process is kept, if anywhere.
    pub state_file: Option<PathBuf>,
    /// Where the final drain report is written at exit, if anywhere.
    pub termination_report: Option<PathBuf>,
    pub worker_threads: Option<usize>,
    pub log_format: LogFormat,
    /// Checked by [`crate::logging::parse_filter`].
    pub log_level: String,
    /// What each WebSocket client may send per second.
    pub session_rates: SessionRates,
}

/// True for the close codes a drain may send: 1000, 1001, 1012, or an application code.
pub fn valid_drain_close_code(code: u16) -> bool {
    matches!(code, 1000 | 1001 | 1012 | 3000..=4999)
}

impl Config {
    /// Checks every value and returns all problems at once.
    pub fn from_args(a: RunArgs) -> Result<Config> {
        let mut bad = Vec::new();
        let mut nonzero = |flag: &str, d: Duration| {
            if d.is_zero() {
                bad.push(format!("--{flag}: must be longer than 0s"));
            }
        };
        nonzero("heartbeat-interval", a.heartbeat_interval);
        nonzero("heartbeat-timeout", a.heartbeat_timeout);
        nonzero("idle-timeout", a.idle_timeout);
        nonzero("handshake-timeout", a.handshake_timeout);
        nonzero("drain-timeout", a.drain_timeout);
        nonzero("tls-reload-interval", a.tls_reload_interval);
        nonzero("http-idle-timeout", a.http_idle_timeout);
        for (flag, n) in [
            ("max-connections", a.max_connections),
            ("max-handshakes", a.max_handshakes),
            ("max-http-connections", a.max_http_connections),
        ] {
            if n == 0 {
                bad.push(format!("--{flag}: must be at least 1"));
            }
        }
        if a.max_message_bytes == 0 {
            bad.push("--max-message-bytes: must be at least 1".to_owned());
        }
        if !a.rate_limit_connections_per_second_per_ip.is_finite()
            || a.rate_limit_connections_per_second_per_ip < 0.0
        {
            bad.push(format!(
                "--rate-limit-connections-per-second-per-ip: {} is not a rate (use a number >= 0; 0 disables)",
                a.rate_limit_connections_per_second_per_ip
            ));
        }
        if a.rate_limit_connections_per_second_per_ip > 0.0 && a.rate_limit_burst == 0 {
            bad.push("--rate-limit-burst: must be at least 1 when the rate limit is on".to_owned());
        }
        if a.drain_timeout > MAX_DRAIN {
            bad.push(format!(
                "--drain-timeout: {} is longer than the longest drain, {}",
                humantime::format_duration(a.drain_timeout),
                humantime::format_duration(MAX_DRAIN)
            ));
        }
        if a.drain_spread > a.drain_timeout {
            bad.push(format!(
                "--drain-spread: {} is longer than --drain-timeout {}; close frames would be sent after the deadline",
                humantime::format_duration(a.drain_spread),
                humantime::format_duration(a.drain_timeout)
            ));
        }
        if !valid_drain_close_code(a.drain_close_code) {
            bad.push(format!(
                "--drain-close-code: {} is not a close code a server may send for a drain (use 1012, 1001, 1000 or 3000-4999)",
                a.drain_close_code
            ));
        }
        for origin in &a.allowed_origins {
            if origin.trim().is_empty() || !origin.contains("://") {
                bad.push(format!(
                    "--allowed-origins: {origin:?} is not an origin like https://app.example.com"
                ));
            }
        }
        if a.worker_threads == Some(0) {
            bad.push("--worker-threads: must be at least 1".to_owned());
        }
        if let Err(e) = crate::logging::parse_filter(&a.log_level) {
            bad.push(format!("--log-level: {e}"));
        }
        let client_addresses = client_addresses(&a, &mut bad);
        let tls = match (a.tls_cert, a.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                reload_interval: a.tls_reload_interval,
            }),
            (None, None) => None,
            (Some(_), None) => {
                bad.push("--tls-key: required when --tls-cert is set".to_owned());
                None
            }
            (None, Some(_)) => {
                bad.push("--tls-cert: required when --tls-key is set".to_owned());
                None
            }
        };
        let session_rates = a.session_limits.rates().unwrap_or_else(|lines| {
            bad.extend(lines);
            SessionRates::default()
        });
        if !bad.is_empty() {
            return Err(Error::Config(bad.join("\n")));
        }
        Ok(Config {
            listen: a.listen,
            upstream: a.upstream,
            admin_listen: a.admin_listen,
            admin_token_file: a.admin_token_file,
            tls,
            limits: Limits {
                max_connections: a.max_connections,
                heartbeat_interval: a.heartbeat_interval,
                heartbeat_timeout: a.heartbeat_timeout,
                idle_timeout: a.idle_timeout,
                handshake_timeout: a.handshake_timeout,
                max_message_bytes: a.max_message_bytes,
                allowed_origins: a
                    .allowed_origins
                    .iter()
                    .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                    .collect(),
                rate_per_second: a.rate_limit_connections_per_second_per_ip,
                rate_burst: a.rate_limit_burst,
                max_handshakes: a.max_handshakes,
                max_handshakes_per_ip: a.max_handshakes_per_ip,
                http: HttpLimits {
                    max_connections: a.max_http_connections,
                    idle_timeout: a.http_idle_timeout,
                    max_body_bytes: a.http_max_body_bytes,
                },
            },
            client_addresses,
            drain: DrainDefaults {
                strategy: a.drain_strategy,
                timeout: a.drain_timeout,
                spread: a.drain_spread,
                close_code: a.drain_close_code,
            },
            state_file: a.state_file.or_else(|| {
                a.install_to
                    .as_ref()
                    .map(|dir| dir.join(crate::state::STATE_NAME))
            }),
            termination_report: a.termination_report,
            install_to: a.install_to,
            worker_threads: a.worker_threads,
            log_format: a.log_format,
            log_level: a.log_level,
            session_rates,
        })
    }
}

/// `--proxy-protocol` and `--trusted-proxies`; a bad CIDR is added to `bad`.
fn client_addresses(a: &RunArgs, bad: &mut Vec<String>) -> ClientAddresses {
    let mut trusted_proxies = Vec::new();
    for cidr in a.trusted_proxies.iter().filter(|c| !c.trim().is_empty()) {
        match forwarded::parse_cidr(cidr) {
            Ok(net) => trusted_proxies.push(net),
            Err(e) => bad.push(format!("--trusted-proxies: {e}")),
        }
    }
    ClientAddresses {
        proxy_protocol: a.proxy_protocol,
        trusted_proxies,
    }
}

/// Parses `30s`, `5m`, `1h30m` and the like.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e}; write durations like 30s, 5m or 1h30m"))
}

/// Parses a drain strategy, case-insensitively.
pub fn parse_strategy(s: &str) -> std::result::Result<DrainStrategy, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "notify" => Ok(DrainStrategy::Notify),
        "wait" => Ok(DrainStrategy::Wait),
        _ => Err("expected Notify or Wait".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("longconn-gateway").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_follow_the_design() {
        let cli = parse(&[]).expect("defaults parse");
        let cfg = Config::from_args(cli.run).expect("defaults are valid");
        assert_eq!(cfg.limits.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(cfg.limits.idle_timeout, Duration::from_secs(600));
        assert_eq!(cfg.drain.close_code, 1012);
        assert_eq!(cfg.drain.timeout, Duration::from_secs(300));
        assert!(cfg.tls.is_none());
    }

    #[test]
    fn durations_accept_compound_strings() {
        let cli = parse(&["run", "--drain-timeout", "1h30m"]).expect("parses");
        let Some(Command::Run(run)) = cli.command else {
            panic!("run subcommand expected")
        };
        assert_eq!(run.drain_timeout, Duration::from_secs(5400));
    }

    #[test]
    fn bad_duration_names_the_flag() {
        let err = parse(&["--idle-timeout", "ten minutes"]).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("--idle-timeout"), "{msg}");
        assert!(msg.contains("30s, 5m or 1h30m"), "{msg}");
    }

    #[test]
    fn validation_reports_every_bad_value_on_its_own_line() {
        let cli = parse(&[
            "--heartbeat-timeout",
            "0s",
            "--drain-close-code",
            "1006",
            "--tls-cert",
            "/x.pem",
            "--drain-spread",
            "10m",
            "--drain-timeout",
            "1m",
        ])
        .expect("parses");
        let err = Config::from_args(cli.run).expect_err("invalid");
        let msg = err.to_string();
        for needle in [
            "--heartbeat-timeout",
            "--drain-close-code: 1006",
            "--tls-key: required",
            "--drain-spread",
        ] {
            assert!(msg.contains(needle), "missing {needle:?} in {msg}");
        }
        assert!(msg.lines().count() >= 5, "{msg}");
    }

    #[test]
    fn a_bad_log_level_is_refused_naming_the_flag() {
        let cfg = Config::from_args(parse(&[]).expect("parses").run).expect("valid");
        assert_eq!(cfg.log_level, "info");
        let cli = parse(&["--log-level", "infoo"]).expect("parses");
        let err = Config::from_args(cli.run).expect_err("misspelt");
        assert!(
            err.to_string()
                .lines()
                .any(|l| l.starts_with("--log-level: \"infoo\" is not a level")),
            "{err}"
        );
        let cli =
            parse(&["--log-level", "warn,longconn_gateway::access_log=info"]).expect("parses");
        let cfg = Config::from_args(cli.run).expect("valid directives");
        assert_eq!(cfg.log_level, "warn,longconn_gateway::access_log=info");
    }

    #[test]
    fn session_limits_are_off_by_default_and_a_burst_without_its_rate_is_refused() {
        let cfg = Config::from_args(parse(&[]).expect("parses").run).expect("valid");
        assert!(!cfg.session_rates.any());
        let cli = parse(&[
            "--session-messages-per-second=20",
            "--session-limit-action=close",
        ])
        .expect("parses");
        let cfg = Config::from_args(cli.run).expect("valid");
        let messages = cfg.session_rates.messages.expect("a message limit");
        assert_eq!((messages.per_second, messages.burst), (20.0, 20.0));
        assert_eq!(
            cfg.session_rates.action,
            crate::session_limits::LimitAction::Close
        );
        let cli = parse(&["--session-bytes-burst=4096"]).expect("parses");
        let err = Config::from_args(cli.run).expect_err("a burst alone");
        assert!(
            err.to_string()
                .lines()
                .any(|l| l.starts_with("--session-bytes-burst: needs --session-bytes-per-second")),
            "{err}"
        );
    }

    #[test]
    fn a_drain_longer_than_a_week_is_refused_at_start() {
        let cli = parse(&["--drain-timeout", "8days"]).expect("parses");
        let err = Config::from_args(cli.run).expect_err("too long");
        assert!(
            err.to_string()
                .contains("--drain-timeout: 8days is longer than the longest drain, 7days"),
            "{err}"
        );
    }

    #[test]
    fn client_address_flags_parse_and_a_bad_cidr_names_the_flag() {
        let cfg = Config::from_args(parse(&[]).expect("parses").run).expect("valid");
        assert_eq!(cfg.client_addresses, ClientAddresses::default());
        let cli = parse(&[
            "--proxy-protocol",
            "any",
            "--trusted-proxies",
            "10.0.0.0/8,192.0.2.1",
        ])
        .expect("parses");
        let cfg = Config::from_args(cli.run).expect("valid");
        assert_eq!(cfg.client_addresses.proxy_protocol, ProxyProtocol::Any);
        assert_eq!(cfg.client_addresses.trusted_proxies.len(), 2);
        let cli = parse(&["--trusted-proxies", "10.0.0.0/8,10.1/99"]).expect("parses");
        let err = Config::from_args(cli.run).expect_err("bad cidr");
        assert!(
            err.to_string()
                .contains("--trusted-proxies: \"10.1/99\" is not a CIDR"),
            "{err}"
        );
        assert!(parse(&["--proxy-protocol", "v3"]).is_err());
    }

    #[test]
    fn drain_subcommand_takes_its_own_flags() {
        let cli = parse(&["drain", "--wait", "--admin", "127.0.0.1:1"]).expect("parses");
        let Some(Command::Drain(d)) = cli.command else {
            panic!("drain subcommand expected")
        };
        assert!(d.wait);
        assert_eq!(d.admin, "127.0.0.1:1");
        assert!(d.then.is_empty());
        assert_eq!(d.settle, Duration::from_secs(2));
        assert_eq!(d.reason, None);
    }

    #[test]
    fn drain_takes_a_command_after_the_double_dash_with_wait_only() {
        let cli = parse(&["drain", "--wait", "--", "/bin/app", "stop", "--now"]).expect("parses");
        let Some(Command::Drain(d)) = cli.command else {
            panic!("drain subcommand expected")
        };
        assert_eq!(d.then, ["/bin/app", "stop", "--now"]);
        let err = parse(&["drain", "--", "/bin/app"]).expect_err("a command needs --wait");
        assert!(err.to_string().contains("--wait"), "{err}");
    }
}
