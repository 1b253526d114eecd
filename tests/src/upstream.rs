//! A WebSocket echo app on 127.0.0.1, standing in for the user's app behind the gateway: it
//! accepts every connection (so the gateway's `/readyz` finds its port open) and echoes every
//! message of a WebSocket session.

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};

/// Starts the echo app on a free port; it runs until the test's runtime ends.
pub async fn start_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the echo app");
    let addr = listener.local_addr().expect("the echo app's address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(echo(tcp));
        }
    });
    addr
}

/// Echoes one WebSocket session; a connection that is not one (a readiness check) just ends.
async fn echo(tcp: TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            return;
        }
    }
}
