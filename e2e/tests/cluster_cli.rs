//! `longconn-e2e cluster up | env | down` as a person runs them: `up` returns with the cluster
//! running, the printed `env` lines make the built kubectl and helm talk to it, and `down` stops
//! every process. `up` starts three real nodes by default, and `down` removes them from the host.

mod common;

use std::path::Path;
use std::process::Command;

use longconn_e2e::cluster;
use longconn_e2e::process;

fn longconn_e2e(args: &[&str], dir: &Path, tools_dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_longconn-e2e"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .arg("--tools-dir")
        .arg(tools_dir)
        .output()
        .expect("run longconn-e2e")
}

#[test]
fn cluster_up_env_down_work_from_a_shell() {
    let Some(tools_dir) = common::tools_dir_or_skip("cluster_up_env_down_work_from_a_shell") else {
        return;
    };
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().join("cluster");

    let up = longconn_e2e(&["cluster", "up"], &dir, &tools_dir);
    assert!(
        up.status.success(),
        "up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let state = cluster::read_state(&dir.join("state.json"))
        .expect("state")
        .expect("state file written");
    assert!(state.processes.iter().all(process::is_running), "{state:?}");
    assert_eq!(state.nodes, 3, "three nodes by default");
    assert!(
        String::from_utf8_lossy(&up.stderr).contains("nodes: 3 Ready"),
        "up says how long the nodes took: {}",
        String::from_utf8_lossy(&up.stderr)
    );

    // A second `up` on a running folder refuses instead of starting a second cluster.
    let again = longconn_e2e(&["cluster", "up"], &dir, &tools_dir);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    let env = longconn_e2e(&["cluster", "env"], &dir, &tools_dir);
    assert!(env.status.success());
    let env = String::from_utf8(env.stdout).expect("utf-8");
    let script = format!(
        "set -eu\n{env}\nkubectl version -o json\nkubectl get namespace default -o name\nkubectl get nodes --no-headers\nhelm version --short\n"
    );
    let shell = Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .env_remove("KUBECONFIG")
        .output()
        .expect("sh");
    let stdout = String::from_utf8_lossy(&shell.stdout);
    let down = longconn_e2e(&["cluster", "down"], &dir, &tools_dir);
    assert!(
        shell.status.success(),
        "{script}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&shell.stderr)
    );
    // Both the built kubectl and the server report the pinned release.
    assert_eq!(
        stdout.matches("\"gitVersion\": \"v1.36.3\"").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("namespace/default"), "{stdout}");
    assert_eq!(stdout.matches(" Ready ").count(), 3, "{stdout}");
    assert!(stdout.contains("v3.22.0"), "{stdout}");

    assert!(
        down.status.success(),
        "down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    for record in &state.processes {
        assert!(
            process::group_members(record.pid).is_empty(),
            "{} (pgid {}) left processes behind",
            record.name,
            record.pid
        );
    }
    assert!(!dir.join("state.json").exists());
    let namespaces = std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.file_name().to_string_lossy().starts_with("longconn-"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(namespaces, 0, "the nodes' network namespaces are gone");
    // `down` on a stopped cluster is a no-op.
    let down_again = longconn_e2e(&["cluster", "down"], &dir, &tools_dir);
    assert!(down_again.status.success());
}
