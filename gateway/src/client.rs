//! The admin API client. `drain` is what the app container's preStop hook runs: it starts (or
//! joins) a drain with `POST /drain`, and with `--wait` polls `GET /drain` until the report says
//! Drained, printing the final report as JSON. [`report`] and [`start_drain`] are the same calls
//! for other programs; the operator reads every gateway's report through them.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{
    api::{DrainReport, DrainRequest},
    config::DrainArgs,
    error::{Error, Result},
    install,
};

/// Sends one request to the admin API and returns status and body.
async fn call(
    addr: &str,
    method: Method,
    path: &str,
    token: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes)> {
    let fail = |reason: String| Error::Admin {
        addr: addr.to_owned(),
        reason,
    };
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| fail(format!("cannot connect: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| fail(e.to_string()))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| fail("no answer within 10s".into()))?
}

fn parse_report(addr: &str, status: StatusCode, body: &Bytes) -> Result<DrainReport> {
    if status != StatusCode::OK {
        return Err(Error::Admin {
            addr: addr.to_owned(),
            reason: format!("{status}: {}", String::from_utf8_lossy(body).trim()),
        });
    }
    serde_json::from_slice(body).map_err(|e| Error::Admin {
        addr: addr.to_owned(),
        reason: format!("unreadable report: {e}"),
    })
}

/// Reads the drain report of the gateway whose admin port is `addr` (`GET /drain`).
pub async fn report(addr: &str, token: &str) -> Result<DrainReport> {
    let (status, bytes) = call(addr, Method::GET, "/drain", token, Vec::new()).await?;
    parse_report(addr, status, &bytes)
}

/// Starts or joins a drain of the gateway whose admin port is `addr` (`POST /drain`).
pub async fn start_drain(addr: &str, token: &str, request: &DrainRequest) -> Result<DrainReport> {
    let body = serde_json::to_vec(request).map_err(|e| Error::Admin {
        addr: addr.to_owned(),
        reason: e.to_string(),
    })?;
    let (status, bytes) = call(addr, Method::POST, "/drain", token, body).await?;
    parse_report(addr, status, &bytes)
}

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
