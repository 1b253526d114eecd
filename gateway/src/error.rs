//! The crate's one error type.
//!
//! Every fallible operation of the gateway that is reported to an operator of the process (start-up,
//! listeners, TLS material, the admin client of `drain --wait`, `install`) returns [`Error`]. Per-
//! session failures are not errors of the process: they end one session and are counted in
//! metrics and in the drain report instead.

use std::{io, net::SocketAddr, path::PathBuf};

/// What failed, and on which file, address or value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more flags had bad values; each line names the flag and the problem.
    #[error("invalid configuration:\n{0}")]
    Config(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("cannot read {what} {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("invalid TLS material ({cert} / {key}): {reason}")]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot keep the gateway state in {path}: {source}")]
    State { path: PathBuf, source: io::Error },
    #[error("cannot install the gateway binary into {dir}: {source}")]
    Install { dir: PathBuf, source: io::Error },
    #[error("admin API at {addr}: {reason}")]
    Admin { addr: String, reason: String },
    #[error(transparent)]
    DrainApi(#[from] longconn_drain_api::Error),
    #[error("cannot run {program} after the drain: {source}")]
    Hook { program: String, source: io::Error },
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot install the signal handler: {0}")]
    Signal(io::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
