//! Where the control-plane binaries live: the tools folder that `make tools`
//! (`e2e/controlplane/build.sh`) fills, and the check that every binary is there.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Environment variable naming the tools folder; without it, `<repository>/.tools`.
pub const TOOLS_DIR_ENV: &str = "LONGCONN_E2E_TOOLS_DIR";

/// The binaries `make tools` builds.
pub const BINARIES: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "helm",
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
