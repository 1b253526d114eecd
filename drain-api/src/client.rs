//! The client of the drain API: one HTTP/1.1 request per call to a gateway's admin port, with the
//! bearer token, bounded by [`CALL_TIMEOUT`]. [`report`] reads the drain report (`GET /drain`);
//! [`start_drain`] starts a drain or joins the one under way (`POST /drain`);
//! [`rebalance_report`] and [`start_rebalance`] do the same for a rebalance (`GET` and `POST
//! /rebalance`). Every failure is an [`Error`] that names the admin address and what went wrong
//! there.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use serde::{Serialize, de::DeserializeOwned};

use crate::wire::{DrainReport, DrainRequest, RebalanceReport, RebalanceRequest};

/// How long one call may take, from connecting to the last byte of the answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What failed, at which admin address.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("admin API at {addr}: cannot connect: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("admin API at {addr}: invalid request: {source}")]
    Request {
        addr: String,
        source: hyper::http::Error,
    },
    #[error("admin API at {addr}: {source}")]
    Http { addr: String, source: hyper::Error },
    #[error("admin API at {addr}: no answer within {}s", CALL_TIMEOUT.as_secs())]
    Timeout { addr: String },
    /// The gateway answered, but not with 200: 401 for a wrong token, 400 for a bad request, 409
    /// for a rebalance it cannot start now (another one is moving, or the gateway drains).
    #[error("admin API at {addr}: {status}: {body}")]
    Status {
        addr: String,
        status: StatusCode,
        body: String,
    },
    #[error("admin API at {addr}: cannot encode the request: {source}")]
    Encode {
        addr: String,
        source: serde_json::Error,
    },
    #[error("admin API at {addr}: unreadable report: {source}")]
    Decode {
        addr: String,
        source: serde_json::Error,
    },
}

/// The result of a drain API call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reads the drain report of the gateway whose admin port is `addr` (`GET /drain`).
pub async fn report(addr: &str, token: &str) -> Result<DrainReport> {
    read(addr, token, "/drain").await
}

/// Starts or joins a drain of the gateway whose admin port is `addr` (`POST /drain`); returns
/// the report as the drain began (or as it stands, if one was under way).
pub async fn start_drain(addr: &str, token: &str, request: &DrainRequest) -> Result<DrainReport> {
    post(addr, token, "/drain", request).await
}

/// Reads the report of the last rebalance of the gateway whose admin port is `addr` (`GET
/// /rebalance`).
pub async fn rebalance_report(addr: &str, token: &str) -> Result<RebalanceReport> {
    read(addr, token, "/rebalance").await
}

/// Starts a rebalance of the gateway whose admin port is `addr` (`POST /rebalance`); returns its
/// report as it began, or as it stands when `request.id` is that of the gateway's last
/// rebalance. A gateway that cannot start it now answers 409 ([`Error::Status`]).
pub async fn start_rebalance(
    addr: &str,
    token: &str,
    request: &RebalanceRequest,
) -> Result<RebalanceReport> {
    post(addr, token, "/rebalance", request).await
}

/// `GET path`, read as a `T`.
async fn read<T: DeserializeOwned>(addr: &str, token: &str, path: &str) -> Result<T> {
    let (status, body) = call(addr, Method::GET, path, token, Bytes::new()).await?;
    parse_answer(addr, status, &body)
}

/// `POST path` with `request` as JSON, the answer read as a `T`.
async fn post<T: DeserializeOwned>(
    addr: &str,
    token: &str,
    path: &str,
    request: &impl Serialize,
) -> Result<T> {
    let body = serde_json::to_vec(request).map_err(|source| Error::Encode {
        addr: addr.to_owned(),
        source,
    })?;
    let (status, body) = call(addr, Method::POST, path, token, Bytes::from(body)).await?;
    parse_answer(addr, status, &body)
}

/// Sends one request to `path` and returns the status and the whole body.
async fn call(
    addr: &str,
    method: Method,
    path: &str,
    token: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes)> {
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| Error::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let http = |source| Error::Http {
            addr: addr.to_owned(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(http)?;
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|source| Error::Request {
                addr: addr.to_owned(),
                source,
            })?;
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(http)?;
        Ok((status, body.to_bytes()))
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| Error::Timeout {
            addr: addr.to_owned(),
        })?
}

fn parse_answer<T: DeserializeOwned>(addr: &str, status: StatusCode, body: &Bytes) -> Result<T> {
    if status != StatusCode::OK {
        return Err(Error::Status {
            addr: addr.to_owned(),
            status,
            body: String::from_utf8_lossy(body).trim().to_owned(),
        });
    }
    serde_json::from_slice(body).map_err(|source| Error::Decode {
        addr: addr.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::wire::{DrainState, DrainStrategy, RebalanceState};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Serves one connection on 127.0.0.1 with `response` (a whole HTTP/1.1 response) and
    /// returns the request it read.
    async fn answer_once(response: String) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let served = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            // The request is complete once its head and its Content-Length bytes arrived.
            while !request_complete(&seen) {
                let n = tcp.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            tcp.write_all(response.as_bytes()).await.unwrap();
            tcp.shutdown().await.unwrap();
            String::from_utf8_lossy(&seen).into_owned()
        });
        (addr, served)
    }

    fn request_complete(seen: &[u8]) -> bool {
        let text = String::from_utf8_lossy(seen);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        body.len() >= length
    }

    /// A whole HTTP/1.1 response with `body`.
    fn response(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    const REPORT: &str = r#"{"state":"Draining","sessionsAtStart":3,"active":2,"migrated":1,"closedByClient":0,"dropped":0}"#;

    #[tokio::test]
    async fn report_sends_the_bearer_token_and_reads_the_report() {
        let (addr, served) = answer_once(response("200 OK", REPORT)).await;
        let report = tokio::time::timeout(CALL_TIMEOUT, report(&addr, "t0ken"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.state, DrainState::Draining);
        assert_eq!((report.sessions_at_start, report.active), (3, 2));
        let request = served.await.unwrap();
        assert!(request.starts_with("GET /drain HTTP/1.1\r\n"), "{request}");
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: bearer t0ken\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn start_drain_posts_the_request_as_camel_case_json() {
        let (addr, served) = answer_once(response("200 OK", REPORT)).await;
        let request = DrainRequest {
            strategy: Some(DrainStrategy::Wait),
            deadline: Some(Duration::from_secs(90)),
            spread: None,
            close_code: Some(1001),
            reason: Some("moving: revision 7c9f".to_owned()),
        };
        start_drain(&addr, "t0ken", &request).await.unwrap();
        let seen = served.await.unwrap();
        assert!(seen.starts_with("POST /drain HTTP/1.1\r\n"), "{seen}");
        let body = seen.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(body).unwrap(),
            serde_json::json!({
                "strategy": "Wait",
                "deadline": "1m 30s",
                "closeCode": 1001,
                "reason": "moving: revision 7c9f"
            })
        );
    }

    #[tokio::test]
    async fn a_refusal_is_a_status_error_with_the_gateways_words() {
        let (addr, _served) =
            answer_once(response("401 Unauthorized", "invalid bearer token\n")).await;
        let err = report(&addr, "wrong").await.unwrap_err();
        assert!(
            matches!(&err, Error::Status { status, body, .. }
                if *status == StatusCode::UNAUTHORIZED && body == "invalid bearer token"),
            "{err:?}"
        );
        assert!(err.to_string().contains(&addr), "{err}");
    }

    #[tokio::test]
    async fn an_unreadable_report_is_a_decode_error() {
        let (addr, _served) = answer_once(response("200 OK", "not a report")).await;
        let err = report(&addr, "t").await.unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = report(&format!("127.0.0.1:{port}"), "t").await.unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn start_rebalance_posts_to_rebalance_and_reads_its_report() {
        let answer = r#"{"id":"rebalance 7","state":"Moving","requested":5,"selected":3,"pending":3,"moved":0,"closedByClient":0,"dropped":0,"takenByDrain":0,"movedAgain":0}"#;
        let (addr, served) = answer_once(response("200 OK", answer)).await;
        let request = RebalanceRequest {
            id: "rebalance 7".to_owned(),
            sessions: 5,
            spread: Duration::from_secs(30),
            close_code: None,
            reason: None,
            keep_moved_for: None,
        };
        let report = start_rebalance(&addr, "t0ken", &request).await.unwrap();
        assert_eq!(
            (report.state, report.selected, report.id.as_str()),
            (RebalanceState::Moving, 3, "rebalance 7")
        );
        let seen = served.await.unwrap();
        assert!(seen.starts_with("POST /rebalance HTTP/1.1\r\n"), "{seen}");
        let body = seen.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(body).unwrap(),
            serde_json::json!({"id": "rebalance 7", "sessions": 5, "spread": "30s"})
        );
    }

    #[tokio::test]
    async fn rebalance_report_reads_the_report_of_the_last_rebalance() {
        let answer = r#"{"id":"","state":"Idle","requested":0,"selected":0,"pending":0,"moved":0,"closedByClient":0,"dropped":0,"takenByDrain":0,"movedAgain":0}"#;
        let (addr, served) = answer_once(response("200 OK", answer)).await;
        let report = rebalance_report(&addr, "t0ken").await.unwrap();
        assert_eq!(report.state, RebalanceState::Idle);
        assert!(report.started_at.is_none());
        let seen = served.await.unwrap();
        assert!(seen.starts_with("GET /rebalance HTTP/1.1\r\n"), "{seen}");
    }
}
