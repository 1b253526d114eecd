//! Kubeconfig files for the cluster's users (the admin, the controller manager, the scheduler).
//! They are written as JSON, which every kubeconfig reader accepts, and point at the PKI files
//! rather than embedding them.

use std::path::Path;

use crate::error::{Error, Result};
use crate::pki::CertFiles;

/// The cluster and context name used in every kubeconfig.
pub const CLUSTER_NAME: &str = "longconn-e2e";

/// Writes a kubeconfig for `user` at `path`: server `server`, trusting `ca`, authenticating with
/// the client certificate `client`.
pub fn write(path: &Path, server: &str, ca: &Path, user: &str, client: &CertFiles) -> Result<()> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": CLUSTER_NAME,
            "cluster": {
                "server": server,
                "certificate-authority": ca,
            },
        }],
        "users": [{
            "name": user,
            "user": {
                "client-certificate": client.cert,
                "client-key": client.key,
            },
        }],
        "contexts": [{
            "name": CLUSTER_NAME,
            "context": {
                "cluster": CLUSTER_NAME,
                "user": user,
                "namespace": "default",
            },
        }],
        "current-context": CLUSTER_NAME,
        "preferences": {},
    });
    let text = serde_json::to_string_pretty(&config).map_err(|source| Error::State {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, text + "\n").map_err(Error::io("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_kubeconfig_reads_back_with_the_admin_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.kubeconfig");
        let client = CertFiles {
            cert: dir.path().join("admin.crt"),
            key: dir.path().join("admin.key"),
        };
        write(
            &path,
            "https://127.0.0.1:6443",
            &dir.path().join("ca.crt"),
            "admin",
            &client,
        )
        .expect("write");
        let config = kube::config::Kubeconfig::read_from(&path).expect("read");
        assert_eq!(config.current_context.as_deref(), Some(CLUSTER_NAME));
        assert_eq!(config.clusters.len(), 1);
        let cluster = config.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
    }
}
