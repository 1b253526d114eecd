//! `drain`: the admin API client used by the app container's preStop hook. It starts (or joins)
//! a drain with `POST /drain`, and with `--wait` polls `GET /drain` until the report says
//! Drained, printing the final report as JSON.

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
    let body = serde_json::to_vec(&request).map_err(|e| Error::Admin {
        addr: args.admin.clone(),
        reason: e.to_string(),
    })?;
    let (status, bytes) = call(&args.admin, Method::POST, "/drain", token, body).await?;
    let mut report = parse_report(&args.admin, status, &bytes)?;
    if !args.wait {
        return Ok(report);
    }
    let give_up = tokio::time::Instant::now() + args.max_wait;
    while !report.is_finished() {
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
        let (status, bytes) = call(&args.admin, Method::GET, "/drain", token, Vec::new()).await?;
        report = parse_report(&args.admin, status, &bytes)?;
    }
    Ok(report)
}
