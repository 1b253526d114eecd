//! The rollout scenarios end to end (see `longconn_e2e::scenario`): every scenario runs in turn
//! on one cluster with real nodes, the operator installed with its chart, the gateway and echo
//! images, and live load through the Service's ClusterIP; each must pass. Each scenario's report
//! is printed as one JSON line, whatever the outcome.
//!
//! Needs the images built first: `make images && cargo test -p longconn-e2e --test scenarios`.

use std::io::Write as _;

use longconn_e2e::scenario::{self, Scenario, ScenarioOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rollout_scenario_passes() {
    let test = "every_rollout_scenario_passes";
    let Some(tools_dir) = longconn_e2e::tools::tools_dir_or_skip(test) else {
        return;
    };
    let temp = tempfile::tempdir().expect("tempdir");
    let mut options = ScenarioOptions::new(temp.path().join("scenarios"));
    options.tools_dir = tools_dir;
    let suite = scenario::run(&options, &Scenario::ALL, std::future::pending())
        .await
        .expect("the scenario harness starts");
    // Printed on the stderr handle so a passing run shows its numbers too.
    let mut err = std::io::stderr();
    for report in &suite.scenarios {
        let _ = writeln!(
            err,
            "{}",
            serde_json::to_string(report).expect("report as JSON")
        );
    }
    let failed: Vec<String> = suite
        .scenarios
        .iter()
        .filter(|r| !r.passed)
        .map(|r| {
            format!(
                "{}: {}{}",
                r.scenario,
                r.failures.join("; "),
                r.error
                    .as_deref()
                    .map(|e| format!(" (error: {e})"))
                    .unwrap_or_default()
            )
        })
        .collect();
    if !suite.passed {
        // Keep the logs of a failed run.
        let kept = temp.keep();
        let _ = writeln!(err, "logs kept in {}", kept.display());
    }
    assert!(
        suite.teardown_problems.is_empty(),
        "teardown: {:?}",
        suite.teardown_problems
    );
    assert!(
        std::fs::read_dir(format!(
            "/sys/class/net/{}",
            longconn_e2e::nodes::plan::BRIDGE
        ))
        .is_err(),
        "the nodes' bridge is still there"
    );
    assert!(
        failed.is_empty(),
        "scenarios failed:\n{}",
        failed.join("\n")
    );
    assert_eq!(suite.scenarios.len(), Scenario::ALL.len());
}
