//! `longconn-echo`: the app behind the gateway in the examples and end-to-end tests. A WebSocket
//! echo server (every text or binary message comes back unchanged, pings are answered, a close is
//! returned) that also answers plain HTTP `GET /healthz` with 200.
//!
//! `--refuse-upgrades-percent P` plays an app that fails: it answers P % of the WebSocket upgrades
//! with `503 Service Unavailable`, spread evenly over the attempts (never `/healthz`), for the
//! health gate of a rollout to see.
//!
//! ```sh
//! longconn-echo --listen 127.0.0.1:8080
//! longconn-echo --listen 127.0.0.1:8080 --refuse-upgrades-percent 50   # every second upgrade
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request head looked at.
const HEAD_MAX: usize = 8192;
/// The answer to a WebSocket upgrade the app refuses.
const REFUSED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

#[derive(Debug, Parser)]
#[command(name = "longconn-echo", about = "WebSocket echo server with /healthz")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The share of WebSocket upgrades answered `503 Service Unavailable`, in percent.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    refuse_upgrades_percent: u8,
}

/// Which WebSocket upgrades the app refuses: a share of them, spread evenly over the attempts.
#[derive(Debug)]
struct Refusals {
    percent: u8,
    attempts: AtomicU64,
}

impl Refusals {
    fn new(percent: u8) -> Refusals {
        Refusals {
            percent,
            attempts: AtomicU64::new(0),
        }
    }

    /// Counts an upgrade attempt; true when it is one to refuse.
    fn refuse_next(&self) -> bool {
        let attempt = self.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        refuses(attempt, self.percent)
    }
}

/// True when attempt `n` (1, 2, ...) is one of the `percent` % refused: the first `n` attempts
/// hold exactly `floor(n * percent / 100)` refusals, so attempt `n` is refused when that number
/// grows with it.
fn refuses(n: u64, percent: u8) -> bool {
    let refused_by = |n: u64| u128::from(n) * u128::from(percent) / 100;
    refused_by(n) > refused_by(n.saturating_sub(1))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let listener = match TcpListener::bind(cli.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("longconn-echo: listen on {}: {err}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(listen = %cli.listen, refuse_upgrades_percent = cli.refuse_upgrades_percent, "echo server listening");
    let refusals = Arc::new(Refusals::new(cli.refuse_upgrades_percent));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let refusals = Arc::clone(&refusals);
                    tokio::spawn(async move {
                        if let Err(why) = serve(stream, &refusals).await {
                            tracing::debug!(%peer, %why, "connection ended");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            _ = terminated() => return ExitCode::SUCCESS,
        }
    }
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// One connection: a WebSocket upgrade is echoed (or refused, see [`Refusals`]), anything else
/// gets a plain HTTP answer.
async fn serve(stream: TcpStream, refusals: &Refusals) -> Result<(), String> {
    let (head, head_len) = tokio::time::timeout(HEAD_TIMEOUT, peek_head(&stream))
        .await
        .map_err(|_| "no request head in time".to_string())??;
    let lower = head.to_ascii_lowercase();
    let upgrade = lower.contains("upgrade: websocket");
    if upgrade && refusals.refuse_next() {
        return answer(stream, head_len, REFUSED).await;
    }
    if upgrade {
        let mut socket = tokio_tungstenite::accept_async(stream)
            .await
            .map_err(|err| format!("handshake: {err}"))?;
        while let Some(message) = socket.next().await {
            match message.map_err(|err| err.to_string())? {
                message @ (Message::Text(_) | Message::Binary(_)) => {
                    socket.send(message).await.map_err(|err| err.to_string())?;
                }
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        return Ok(());
    }
    let healthy = lower.starts_with("get /healthz ");
    let plain: &[u8] = if healthy {
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
    } else {
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    };
    answer(stream, head_len, plain).await
}

/// Answers a request whose head is `head_len` bytes with `bytes`, and closes the connection.
async fn answer(mut stream: TcpStream, head_len: usize, bytes: &[u8]) -> Result<(), String> {
    // The head is consumed before the answer: a socket closed with unread data sends a reset,
    // which can reach the client before it has read the answer.
    let mut consumed = vec![0u8; head_len];
    stream
        .read_exact(&mut consumed)
        .await
        .map_err(|err| err.to_string())?;
    stream
        .write_all(bytes)
        .await
        .map_err(|err| err.to_string())?;
    stream.shutdown().await.map_err(|err| err.to_string())
}

/// The request head and its length in bytes, read without consuming it (the WebSocket handshake
/// reads it again).
async fn peek_head(stream: &TcpStream) -> Result<(String, usize), String> {
    let mut buffer = vec![0u8; HEAD_MAX];
    for _ in 0..200 {
        let seen = stream.peek(&mut buffer).await.map_err(|e| e.to_string())?;
        if seen == 0 {
            return Err("closed before a request".into());
        }
        let head = &buffer[..seen];
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = &head[..end + 4];
            return Ok((String::from_utf8_lossy(head).into_owned(), head.len()));
        }
        if seen == HEAD_MAX {
            return Ok((String::from_utf8_lossy(head).into_owned(), seen));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err("request head incomplete".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attempts (1-based) of the first `n` that `percent` refuses.
    fn refused(percent: u8, n: u64) -> Vec<u64> {
        (1..=n).filter(|&i| refuses(i, percent)).collect()
    }

    #[test]
    fn the_refused_share_of_upgrades_is_exact_and_spread_evenly() {
        assert_eq!(refused(0, 1000), Vec::<u64>::new());
        assert_eq!(refused(100, 5), [1, 2, 3, 4, 5]);
        assert_eq!(refused(50, 6), [2, 4, 6]);
        assert_eq!(refused(25, 12), [4, 8, 12]);
        assert_eq!(refused(30, 10), [4, 7, 10]);
        for percent in 0..=100 {
            for n in [1, 7, 99, 100, 101, 1000] {
                assert_eq!(
                    refused(percent, n).len() as u64,
                    n * u64::from(percent) / 100,
                    "{percent} % of {n}"
                );
            }
        }
        let refusals = Refusals::new(50);
        let first_four = [(); 4].map(|()| refusals.refuse_next());
        assert_eq!(first_four, [false, true, false, true]);
    }

    #[test]
    fn the_share_is_a_percentage_and_none_unless_asked() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["longconn-echo"], args].concat());
        let cli = parse(&[]).expect("no flags");
        assert_eq!(cli.refuse_upgrades_percent, 0);
        let cli = parse(&["--refuse-upgrades-percent", "100"]).expect("100 is the most");
        assert_eq!(cli.refuse_upgrades_percent, 100);
        for bad in ["101", "-1", "half"] {
            assert!(
                parse(&["--refuse-upgrades-percent", bad]).is_err(),
                "{bad} is refused"
            );
        }
    }
}
