//! `longconn-e2e bench-operator` end to end at a small size, so the harness is proven to work:
//! its own control plane without nodes, 5 plain Deployments, 5 LongConnServices with no operator
//! running, then the operator as a host process and 5 LongConnServices, a 2-s idle period, every figure present, and everything stopped. It
//! judges nothing against the targets: at this size they say nothing.

mod common;

use std::time::Duration;

use longconn_e2e::bench::operator::{self, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_bench_measures_five_services_beside_five_deployments() {
    let Some(tools_dir) =
        common::tools_dir_or_skip("operator_bench_measures_five_services_beside_five_deployments")
    else {
        return;
    };
    let operator_bin = longconn_e2e::tools::default_bin_dir().join("longconn-operator");
    assert!(
        operator_bin.is_file(),
        "{} missing: run `cargo build -p longconn-operator` first",
        operator_bin.display()
    );
    let temp = tempfile::tempdir().expect("tempdir");
    let mut options = Options::new(temp.path().join("bench"), operator_bin);
    options.tools_dir = tools_dir;
    options.count = 5;
    options.idle = Duration::from_secs(2);
    options.converge_timeout = Duration::from_secs(180);

    let report = operator::run(&options)
        .await
        .unwrap_or_else(|err| panic!("bench-operator: {err}"));
    println!("{}", report.table());
    println!("{}", serde_json::to_string(&report).expect("json"));

    assert_eq!(report.count, 5);
    for phase in [report.anchor, report.longconn] {
        assert!(phase.creates_seconds > 0.0, "{phase:?}");
        assert!(
            phase.converged_seconds >= phase.creates_seconds,
            "{phase:?}"
        );
    }
    // The operator read and wrote to make 5 services: it lists, applies and writes status.
    let get = report.converging_requests.get("GET").copied().unwrap_or(0);
    let patch = report
        .converging_requests
        .get("PATCH")
        .copied()
        .unwrap_or(0);
    assert!(get > 0 && patch > 0, "{:?}", report.converging_requests);
    assert!(
        report.converging_reconciles_per_service >= 1.0,
        "{report:?}"
    );
    assert!(report.settled_rss_bytes > 0, "{report:?}");
    assert!(
        report.peak_rss_bytes >= report.settled_rss_bytes,
        "{report:?}"
    );
    assert!(report.bare_creates_seconds > 0.0, "{report:?}");
    assert_eq!(report.table().lines().count(), 12);

    // The run stopped the operator (its environment names the kubeconfig) and the control plane.
    let left = common::processes_mentioning(temp.path());
    assert!(left.is_empty(), "processes left: {left:?}");
}
