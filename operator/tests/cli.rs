//! The command line, used the way a shell uses it.

use std::process::{Command, Stdio};

/// `longconn-operator render -f ... | head`: the reader is gone before the objects are written.
#[test]
fn render_into_a_pipe_closed_early_exits_quietly() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/chat.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_longconn-operator"))
        .args(["render", "-f", example])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start longconn-operator");
    drop(child.stdout.take());
    let output = child
        .wait_with_output()
        .expect("wait for longconn-operator");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
