//! `crds/` must hold exactly what `longconn-operator crd` prints; regenerate with `make crd`.

#[test]
fn committed_crd_matches_the_rust_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/longconnservices.longconn.dev.yaml"
    );
    let committed =
        std::fs::read_to_string(path).expect("crds/longconnservices.longconn.dev.yaml exists");
    let generated = longconn_operator::crd::crd_yaml().expect("CRD serializes");
    assert!(
        committed == generated,
        "crds/longconnservices.longconn.dev.yaml is stale: run `make crd` and commit the result"
    );
}
