//! One HTTP/1.1 GET over a fresh connection, as the kubelet's httpGet probes and Prometheus'
//! scrapes send it.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::WAIT;

/// Sends `GET path` to `addr` and returns the response's status code.
pub async fn get_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    get(addr, path).await.map(|(status, _)| status)
}

/// Sends `GET path` to `addr` and returns the response's status code and body.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|status| status.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or_else(String::new, |(_, body)| body.to_owned());
        Ok((status, body))
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .map_err(|_| std::io::Error::other(format!("GET {path} at {addr}: no answer")))?
}
