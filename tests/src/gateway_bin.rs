//! The real `longconn-gateway` binary, built from this workspace for the tests.
//!
//! Cargo tells an integration test where a binary is (`CARGO_BIN_EXE_<name>`) only for binaries
//! of the test's own package, and a dependency on another package's binary (an artifact
//! dependency) is unstable. Taking whatever lies in `target/debug` would run the binary last
//! built there, possibly an old one, which defeats a test of the flags the operator generates
//! for the gateway. So the tests ask cargo to build the binary, exactly as `cargo build -p
//! longconn-gateway --bin longconn-gateway` does, and read its path from cargo's JSON messages:
//! nothing is rebuilt when it is up to date, a stale binary is never run, and the build uses the
//! cargo, profile and target directory of the test run (cargo gives a test `CARGO` and passes
//! its environment on, `CARGO_TARGET_DIR` included).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

/// The path of this workspace's `longconn-gateway` binary, built once per test process.
pub fn gateway_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build("longconn-gateway", "longconn-gateway"))
}

/// Builds `binary` of `package` with the test run's profile; returns the executable's path.
fn build(package: &str, binary: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().unwrap_or(manifest_dir);
    let profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    let mut command = Command::new(cargo);
    // Without the variables cargo sets for the test's own package: build scripts that watch
    // them (ring's does) would otherwise see them change and rebuild, here and again in the
    // next test run.
    for (name, _) in std::env::vars_os() {
        if set_for_the_test(&name.to_string_lossy()) {
            command.env_remove(name);
        }
    }
    let output = command
        .current_dir(workspace)
        .args(["build", "--message-format=json-render-diagnostics"])
        .args(["--profile", profile, "-p", package, "--bin", binary])
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo build -p {package} --bin {binary} failed"
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == binary)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no {binary} executable"))
}

/// True for the variables cargo sets for a test of a package (its manifest, its name and
/// version, its binaries, its directories).
fn set_for_the_test(name: &str) -> bool {
    ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        || [
            "CARGO_CRATE_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ]
        .contains(&name)
}
