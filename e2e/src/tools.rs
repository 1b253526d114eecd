//! Where the control-plane binaries live: the tools folder that `make tools`
//! (`e2e/controlplane/build.sh`) fills, and the check that every binary is there.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Environment variable naming the tools folder; without it, `<repository>/.tools`.
pub const TOOLS_DIR_ENV: &str = "LONGCONN_E2E_TOOLS_DIR";

/// The binaries `make tools` builds: the control plane, the nodes' components (kubelet,
/// kube-proxy, containerd with its runc shim and `ctr`), the clients and metrics-server.
pub const BINARIES: [&str; 12] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "kubectl",
    "helm",
    "metrics-server",
];

/// The repository this crate belongs to.
pub fn repository_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The tools folder: `$LONGCONN_E2E_TOOLS_DIR`, else `<repository>/.tools`.
pub fn default_tools_dir() -> PathBuf {
    std::env::var_os(TOOLS_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| repository_root().join(".tools"))
}

/// A tools folder whose binaries have all been found.
#[derive(Debug, Clone)]
pub struct Tools {
    dir: PathBuf,
}

impl Tools {
    /// Checks that `dir` holds every binary in [`BINARIES`].
    pub fn find(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        for binary in BINARIES {
            if !dir.join(binary).is_file() {
                return Err(Error::ToolMissing { binary, dir });
            }
        }
        Ok(Self { dir })
    }

    /// The folder itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of one binary of the folder.
    pub fn binary(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Where `cargo build` put this workspace's binaries: `$CARGO_TARGET_DIR/debug`, else
/// `<repository>/target/debug`.
pub fn default_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository_root().join("target"))
        .join("debug")
}

/// Set by `make test` (after `make tools`): a missing tools folder then fails the tests.
pub const REQUIRE_TOOLS_ENV: &str = "LONGCONN_E2E_REQUIRE_TOOLS";

/// The tools folder, or `None` (after printing why the test is skipped) when it does not exist
/// and `LONGCONN_E2E_REQUIRE_TOOLS` is unset. A folder that exists but lacks a binary is not
/// skipped: starting the cluster then fails and names the binary.
pub fn tools_dir_or_skip(test: &str) -> Option<PathBuf> {
    let dir = default_tools_dir();
    if dir.exists() || std::env::var_os(REQUIRE_TOOLS_ENV).is_some() {
        return Some(dir);
    }
    // Written to the stderr handle rather than with eprintln!, which the test harness captures
    // and hides for a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no control-plane tools in {} (run `make tools`; set {REQUIRE_TOOLS_ENV}=1 to fail instead of skipping)",
        dir.display()
    );
    None
}
