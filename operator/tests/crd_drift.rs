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

/// Every `format` of the schema is one the API server knows for its type: an unknown one is
/// accepted but prints `Warning: unrecognized format` at every install and apply of the CRD.
#[test]
fn every_format_in_the_schema_is_one_the_api_server_knows() {
    fn walk(path: &str, node: &serde_json::Value, unknown: &mut Vec<String>) {
        match node {
            serde_json::Value::Object(map) => {
                let kind = map.get("type").and_then(serde_json::Value::as_str);
                if let Some(format) = map.get("format").and_then(serde_json::Value::as_str) {
                    let known = match kind {
                        Some("integer") => ["int32", "int64"].contains(&format),
                        Some("number") => ["float", "double"].contains(&format),
                        _ => ["byte", "date", "date-time", "duration", "int-or-string"]
                            .contains(&format),
                    };
                    if !known {
                        unknown.push(format!("{path}: {kind:?} {format}"));
                    }
                }
                // Defaults, examples and enums are values, not schemas.
                let schemas = map
                    .iter()
                    .filter(|(key, _)| !["default", "example", "enum"].contains(&key.as_str()));
                for (key, child) in schemas {
                    walk(&format!("{path}.{key}"), child, unknown);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(&format!("{path}[{i}]"), child, unknown);
                }
            }
            _ => {}
        }
    }
    let crd = serde_json::to_value(longconn_operator::crd::crd()).expect("CRD serializes");
    let mut unknown = Vec::new();
    walk("", &crd, &mut unknown);
    assert!(
        unknown.is_empty(),
        "formats the API server does not know: {unknown:#?}"
    );
}
