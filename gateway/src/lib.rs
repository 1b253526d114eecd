//! longconn-gateway: the per-pod gateway that terminates long-lived client connections,
//! proxies them to the app in the same pod, and drains them when the operator asks.
//!
//! Modules, one job each: [`config`] (flags), [`proxy`] (listener and handshakes) with [`proxy_protocol`] and [`forwarded`]
//! (the client's real address), [`http`]
//! (request and response heads), [`frame`] (WebSocket frame scanner), [`session`] (one relayed
//! WebSocket session), [`http_proxy`] (plain HTTP), [`limits`] (admission and the shared
//! heartbeat clock), [`drain`] (drain state and report) with [`registry`] (the open sessions)
//! and [`rebalance`] (moving a share of them while serving), [`tls`] (rustls with hot reload),
//! [`admin`] (admin port), [`metrics`] (with [`fds`]: the open-file limit and process figures),
//! [`logging`] (level and format), [`access_log`] (one line per session and per request) with
//! [`reqid`] (request ids and trace context), [`moves`] (what a client declares about the
//! logical session it reopens after a drain), [`install`] and [`client`] (the `install` and
//! `drain` subcommands). The drain API's wire types and its client live in the crate
//! `longconn-drain-api`, which the operator shares.

pub mod access_log;
pub mod admin;
pub mod beacon;
pub mod client;
pub mod config;
pub mod conn;
pub mod drain;
pub mod error;
pub mod fds;
pub mod forwarded;
pub mod frame;
pub mod http;
pub mod http_proxy;
pub mod install;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod moves;
pub mod proxy;
pub mod proxy_protocol;
pub mod rebalance;
pub mod registry;
pub mod reqid;
pub mod session;
pub mod session_limits;
pub mod state;
pub mod tls;

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize},
};

use longconn_drain_api::DrainRequest;
use tokio::{
    net::{TcpListener, TcpSocket},
    signal::unix::{SignalKind, signal},
};

pub use error::{Error, Result};

use crate::{
    admin::Admin,
    config::Config,
    drain::Drain,
    limits::{Admission, Ticker},
    metrics::{DrainSeries, Metrics},
    proxy::Proxy,
    session::{SessionContext, SessionLimits},
    session_limits::{LimitSeries, RateLimits},
};

/// Binds a listener with `SO_REUSEADDR` (as `TcpListener::bind` does) and `TCP_NODELAY`, which
/// Linux passes on to every accepted connection: one system call per connection saved.
fn bind(what: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_nodelay(true)?;
        socket.bind(addr)?;
        socket.listen(1024)
    };
    listen().map_err(|source| Error::Bind { what, addr, source })
}

/// Runs the gateway until SIGTERM or SIGINT has started a drain and the drain has finished, plain
/// HTTP responses still streaming included.
/// `local_token` is the drain token written by `--install-to`, if any.
pub async fn run(cfg: Config, local_token: Option<String>) -> Result<()> {
    let (metrics, mut registry) = Metrics::new();
    let ledger = Arc::new(state::Ledger::open(cfg.state_file.as_deref())?);
    let drain = Drain::new(
        cfg.drain,
        metrics.clone(),
        DrainSeries::register(&mut registry),
    );
    let rate_limits = RateLimits {
        rates: cfg.session_rates,
        series: LimitSeries::register(&mut registry),
    };
    drain.set_history(ledger.history());
    tokio::spawn(Arc::clone(&ledger).keep(Arc::clone(&drain)));
    let admission = Admission::new(cfg.limits.clone(), metrics.clone());
    let ticker = Arc::new(Ticker::default());
    let tls = match &cfg.tls {
        Some(files) => {
            let (acceptor, reloader) = tls::acceptor(files, metrics.clone())?;
            tokio::spawn(reloader.run());
            Some(acceptor)
        }
        None => None,
    };
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    let listener = bind("client", cfg.listen)?;
    let admin_listener = bind("admin", cfg.admin_listen)?;
    tracing::info!(
        listen = %cfg.listen,
        admin = %cfg.admin_listen,
        upstream = %cfg.upstream,
        tls = cfg.tls.is_some(),
        proxy_protocol = cfg.client_addresses.proxy_protocol.as_str(),
        trusted_proxies = cfg.client_addresses.trusted_proxies.len(),
        "gateway started"
    );
    tokio::spawn(Arc::clone(&ticker).run(Ticker::period(&cfg.limits)));
    let admin = Arc::new(Admin {
        drain: Arc::clone(&drain),
        registry,
        upstream: cfg.upstream,
        token_file: cfg.admin_token_file.clone(),
        local_token,
    });
    tokio::spawn(admin.serve(admin_listener));
    let limits = &cfg.limits;
    let proxy = Arc::new(Proxy {
        upstream: cfg.upstream,
        tls,
        admission,
        addresses: cfg.client_addresses.clone(),
        session: Arc::new(SessionContext {
            drain: Arc::clone(&drain),
            ticker,
            metrics,
            limits: SessionLimits {
                heartbeat_interval: limits.heartbeat_interval,
                heartbeat_timeout: limits.heartbeat_timeout,
                idle_timeout: limits.idle_timeout,
                max_message_bytes: limits.max_message_bytes,
            },
            rate_limits,
        }),
        next_id: AtomicU64::new(1),
        refusals: AtomicUsize::new(0),
    });
    tokio::spawn(proxy.serve(listener));

    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    if let Err(e) = drain.start(&DrainRequest::default()) {
        tracing::error!(error = %e.0, "cannot start the drain");
    }
    // Streamed HTTP responses get the same drain: they end by themselves, or at the deadline.
    let drained = async {
        drain.finished().await;
        drain.streams_ended().await;
    };
    tokio::select! {
        () = drained => {}
        _ = term.recv() => tracing::warn!("second SIGTERM: exiting without waiting"),
        _ = int.recv() => tracing::warn!("second SIGINT: exiting without waiting"),
    }
    let report = drain.report();
    if let Err(e) = ledger.save(report.active, drain.is_finished()) {
        tracing::warn!(error = %e, "cannot save the gateway state");
    }
    if let Some(path) = &cfg.termination_report
        && let Err(e) = std::fs::write(path, serde_json::to_vec(&report).unwrap_or_default())
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the final report");
    }
    tracing::info!(
        sessions_at_start = report.sessions_at_start,
        migrated = report.migrated,
        moved_again = report.moved_again,
        closed_by_client = report.closed_by_client,
        dropped = report.dropped,
        active = report.active,
        refused = report.refused,
        health = ?report.health,
        "exiting"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nodelay_from_the_listener() {
        let listener = bind("client", "127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(accepted.nodelay().expect("getsockopt"));
        let taken = bind("client", addr).expect_err("port in use");
        assert!(taken.to_string().contains(&addr.to_string()), "{taken}");
    }
}
