//! The admin port: `/healthz`, `/readyz`, `/metrics` (OpenMetrics) and the drain API
//! (`POST /drain`, `GET /drain`, `POST /rebalance`, `GET /rebalance`) behind a bearer token.
//!
//! The token is read from `--admin-token-file` on every request, so a rotated Secret takes effect
//! at once, and compared in constant time. A gateway started with `--install-to` also accepts
//! the local token it wrote beside the installed binary, which lets the app container's preStop
//! hook drain without the Secret appearing in its spec.

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use longconn_drain_api::{DrainRequest, RebalanceRequest};

use crate::{drain::Drain, metrics, rebalance::Refused};

/// What the admin handlers need.
pub struct Admin {
    pub drain: Arc<Drain>,
    pub registry: Registry,
    pub upstream: SocketAddr,
    pub token_file: Option<PathBuf>,
    pub local_token: Option<String>,
}

type Res = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Res {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Res {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut res = text(status, body);
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            res
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

impl Admin {
    /// Serves the admin port forever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let me = Arc::clone(&me);
                    async move { Ok::<_, Infallible>(me.handle(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(tcp), svc);
                if let Err(e) = conn.await {
                    debug!(error = %e, "admin connection ended");
                }
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Res {
        let path = req.uri().path().to_owned();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => self.ready().await,
            (&Method::GET, "/metrics") => {
                let mut res = text(StatusCode::OK, metrics::render(&self.registry));
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                res
            }
            (m, api @ ("/drain" | "/rebalance")) if m == Method::GET || m == Method::POST => {
                if let Err(res) = self.authorize(&req) {
                    return *res;
                }
                match (m == Method::GET, api) {
                    (true, "/drain") => json(StatusCode::OK, &self.drain.report()),
                    (true, _) => json(StatusCode::OK, &self.drain.rebalance_report()),
                    (false, "/drain") => self.start_drain(req).await,
                    (false, _) => self.start_rebalance(req).await,
                }
            }
            (_, "/healthz" | "/readyz" | "/metrics" | "/drain" | "/rebalance") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn ready(&self) -> Res {
        if self.drain.is_draining() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        let probe = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(self.upstream));
        match probe.await {
            Ok(Ok(_)) => text(StatusCode::OK, "ready\n"),
            _ => text(StatusCode::SERVICE_UNAVAILABLE, "upstream unreachable\n"),
        }
    }

    /// Checks the bearer token against the token file (read now) and the local token.
    fn authorize(&self, req: &Request<Incoming>) -> Result<(), Box<Res>> {
        let unauthorized = |msg: &str| {
            let mut res = text(StatusCode::UNAUTHORIZED, format!("{msg}\n"));
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            res
        };
        let mut accepted: Vec<Vec<u8>> = Vec::new();
        if let Some(path) = &self.token_file {
            match std::fs::read(path) {
                Ok(t) if !t.trim_ascii().is_empty() => accepted.push(t.trim_ascii().to_vec()),
                Ok(_) => warn!(path = %path.display(), "admin token file is empty"),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "cannot read the admin token file")
                }
            }
        }
        if let Some(t) = &self.local_token {
            accepted.push(t.as_bytes().to_vec());
        }
        if accepted.is_empty() {
            return Err(Box::new(unauthorized("no admin token is configured")));
        }
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .map(<[u8]>::trim_ascii)
            .unwrap_or_default();
        // Compare with every accepted token, without stopping early.
        let ok = accepted.iter().fold(subtle::Choice::from(0), |acc, t| {
            acc | t.as_slice().ct_eq(given)
        });
        if bool::from(ok) {
            Ok(())
        } else {
            Err(Box::new(unauthorized("invalid bearer token")))
        }
    }

    async fn start_drain(&self, req: Request<Incoming>) -> Res {
        let request: DrainRequest = match read_body(req, "drain").await {
            Ok(Some(r)) => r,
            Ok(None) => DrainRequest::default(),
            Err(res) => return *res,
        };
        match self.drain.start(&request) {
            Ok(report) => json(StatusCode::OK, &report),
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{}\n", e.0)),
        }
    }

    async fn start_rebalance(&self, req: Request<Incoming>) -> Res {
        let request: RebalanceRequest = match read_body(req, "rebalance").await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "invalid rebalance request: the body must give id, sessions and spread\n",
                );
            }
            Err(res) => return *res,
        };
        match self.drain.rebalance(&request) {
            Ok(report) => json(StatusCode::OK, &report),
            Err(Refused::Invalid(e)) => text(StatusCode::BAD_REQUEST, format!("{}\n", e.0)),
            Err(Refused::Conflict(why)) => text(StatusCode::CONFLICT, format!("{why}\n")),
        }
    }
}

/// Reads a JSON request body of at most 64 KiB: `None` when it is empty, a `400` naming `what`
/// and the problem when it is not a `T`.
async fn read_body<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    what: &str,
) -> Result<Option<T>, Box<Res>> {
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let res = text(StatusCode::BAD_REQUEST, format!("cannot read body: {e}\n"));
            return Err(Box::new(res));
        }
    };
    if body.trim_ascii().is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&body).map(Some).map_err(|e| {
        let res = text(
            StatusCode::BAD_REQUEST,
            format!("invalid {what} request: {e}\n"),
        );
        Box::new(res)
    })
}
