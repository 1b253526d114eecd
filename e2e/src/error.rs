//! The crate's one error type: every failure says what it was doing and on which file, process or
//! object.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while starting, checking or stopping the local cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read, written or created.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The tools folder lacks a binary that `make tools` builds.
    #[error(
        "{binary} not found in {dir}: run `make tools` (or e2e/controlplane/build.sh {dir}) first"
    )]
    ToolMissing { binary: &'static str, dir: PathBuf },

    /// No free loopback port could be reserved.
    #[error("no free port on 127.0.0.1: {0}")]
    NoFreePort(#[source] std::io::Error),

    /// Generating a key or certificate failed.
    #[error("generate {what}: {source}")]
    Pki {
        what: String,
        #[source]
        source: rcgen::Error,
    },

    /// A component process could not be started.
    #[error("start {component} ({binary}): {source}")]
    Spawn {
        component: String,
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A component exited while the cluster was coming up.
    #[error("{component} exited with {status} while starting; last lines of {log}:\n{tail}")]
    Exited {
        component: String,
        status: String,
        log: PathBuf,
        tail: String,
    },

    /// A readiness condition did not hold within its deadline.
    #[error("{what} not ready after {after:?}: {last}")]
    NotReady {
        what: String,
        after: Duration,
        last: String,
    },

    /// A cluster is already running from this folder.
    #[error("a cluster is already running from {0}: run `longconn-e2e cluster down` first")]
    AlreadyRunning(PathBuf),

    /// Processes survived SIGKILL.
    #[error("processes still alive after SIGKILL: {0}")]
    Survivors(String),

    /// The state file of a cluster folder is unreadable.
    #[error("state file {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// Building a Kubernetes client from the written kubeconfig failed.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },

    /// The image archives the nodes load are missing.
    #[error("no image archives (with pause.oci.tar) in {0}: run `make images` first")]
    ImagesMissing(PathBuf),

    /// A host command (`ip`, `ctr`, ...) or host setting for the nodes failed.
    #[error("{action}: {detail}")]
    Host { action: String, detail: String },

    /// A call to the API server failed.
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] for `action` on `path`.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }

    /// An [`Error::Kube`] for `action`.
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }
}
