//! What the end-to-end tests share: finding the tools folder, or skipping when it was never built.

use std::io::Write as _;
use std::path::PathBuf;

use longconn_e2e::tools;

/// Set by `make test` (after `make tools`): a missing tools folder then fails the tests.
pub const REQUIRE_TOOLS_ENV: &str = "LONGCONN_E2E_REQUIRE_TOOLS";

/// The tools folder, or `None` (after printing why the test is skipped) when it does not exist
/// and `LONGCONN_E2E_REQUIRE_TOOLS` is unset. A folder that exists but lacks a binary is not
/// skipped: starting the cluster then fails and names the binary.
pub fn tools_dir_or_skip(test: &str) -> Option<PathBuf> {
    let dir = tools::default_tools_dir();
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

/// Starts a cluster in `<temp>/cluster` from the tools in `tools_dir`.
#[allow(dead_code)] // not every test binary uses every helper
pub async fn cluster_up(
    temp: &std::path::Path,
    tools_dir: PathBuf,
) -> longconn_e2e::cluster::Cluster {
    longconn_e2e::cluster::Cluster::up(longconn_e2e::cluster::ClusterOptions {
        dir: temp.join("cluster"),
        tools_dir,
        ..longconn_e2e::cluster::ClusterOptions::default()
    })
    .await
    .expect("cluster up")
}

/// Creates namespace `name`.
#[allow(dead_code)]
pub async fn create_namespace(client: &kube::Client, name: &str) {
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    namespaces
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
                .expect("namespace"),
        )
        .await
        .expect("create namespace");
}
pub mod chat;
