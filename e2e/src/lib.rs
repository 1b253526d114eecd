//! longconn's end-to-end machinery: a real local Kubernetes control plane built from upstream
//! (see `e2e/controlplane/`), started and stopped from Rust so tests and `make demo` can run the
//! operator against a real API server.
//!
//! ```no_run
//! # async fn example() -> longconn_e2e::Result<()> {
//! use longconn_e2e::cluster::{Cluster, ClusterOptions};
//! let cluster = Cluster::up(ClusterOptions::default()).await?;
//! let version = cluster.client().apiserver_version().await;
//! cluster.down().await?;
//! # Ok(()) }
//! ```

pub mod bench;
pub mod cluster;
pub mod error;
pub mod kubeconfig;
pub mod load;
pub mod metrics_server;
pub mod nodes;
pub mod pki;
pub mod process;
pub mod tools;

pub use error::{Error, Result};
pub mod scenario;
