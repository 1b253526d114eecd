//! Integration tests across longconn's crates live in `tests/tests/`; this library holds their
//! shared helpers: [`gateway_bin`] (the real `longconn-gateway` binary of this workspace),
//! [`pod`] (a pod of the Deployment the operator generates, run on this machine without
//! Kubernetes), [`upstream`] (a WebSocket echo app standing in for the user's) and [`http`] (a
//! one-request HTTP client for probes). Everything listens on 127.0.0.1 only, and every wait is
//! bounded.

pub mod gateway_bin;
pub mod http;
pub mod pod;
pub mod upstream;

use std::time::Duration;

/// The bound of every wait in these tests: a gateway starting, a probe, a hook running.
pub const WAIT: Duration = Duration::from_secs(60);
