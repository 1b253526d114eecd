//! `longconn-echo`: the app behind the gateway in the examples and end-to-end tests. A WebSocket
//! echo server (every text or binary message comes back unchanged, pings are answered, a close is
//! returned) that also answers plain HTTP `GET /healthz` with 200.
//!
//! ```sh
//! longconn-echo --listen 127.0.0.1:8080
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
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

#[derive(Debug, Parser)]
#[command(name = "longconn-echo", about = "WebSocket echo server with /healthz")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
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
    tracing::info!(listen = %cli.listen, "echo server listening");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(async move {
                        if let Err(why) = serve(stream).await {
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

/// One connection: a WebSocket upgrade is echoed, anything else gets a plain HTTP answer.
async fn serve(mut stream: TcpStream) -> Result<(), String> {
    let (head, head_len) = tokio::time::timeout(HEAD_TIMEOUT, peek_head(&stream))
        .await
        .map_err(|_| "no request head in time".to_string())??;
    let lower = head.to_ascii_lowercase();
    if lower.contains("upgrade: websocket") {
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
    let answer: &[u8] = if healthy {
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
    } else {
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    };
    // The head is consumed before the answer: a socket closed with unread data sends a reset,
    // which can reach the client before it has read the answer.
    let mut consumed = vec![0u8; head_len];
    stream
        .read_exact(&mut consumed)
        .await
        .map_err(|err| err.to_string())?;
    stream
        .write_all(answer)
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
