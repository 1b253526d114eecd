//! The sample corpus under `tests/samples/` checked against the generated CRD schema: every
//! good sample passes the OpenAPI schema and the CEL rules; every bad one is refused with a
//! message that contains the text of its `# expect:` line. The end-to-end tests apply the same
//! corpus to a real API server, which is the final judge.

use std::path::{Path, PathBuf};

use longconn_operator::crd::LongConnService;
use serde_json::Value;

fn openapi_schema() -> Value {
    let crd = serde_json::to_value(longconn_operator::crd::crd()).expect("crd serializes");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Turns a Kubernetes structural schema into a JSON Schema that behaves as the API server does
/// with strict field validation: nullable becomes a null type, and objects with declared
/// properties refuse unknown fields.
fn json_schema(node: &Value) -> Value {
    let Value::Object(map) = node else {
        return node.clone();
    };
    let mut out = serde_json::Map::new();
    for (k, v) in map {
        match k.as_str() {
            "properties" => {
                let props = v
                    .as_object()
                    .map(|p| p.iter().map(|(n, s)| (n.clone(), json_schema(s))).collect())
                    .unwrap_or_default();
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" => {
                out.insert(k.clone(), json_schema(v));
            }
            "allOf" | "anyOf" | "oneOf" => {
                let list = v
                    .as_array()
                    .map(|l| l.iter().map(json_schema).collect())
                    .unwrap_or_default();
                out.insert(k.clone(), Value::Array(list));
            }
            "nullable" | "format" | "default" => {}
            k if k.starts_with("x-kubernetes-") => {}
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if map.get("nullable") == Some(&Value::Bool(true))
        && let Some(Value::String(t)) = map.get("type")
    {
        out.insert("type".to_owned(), serde_json::json!([t, "null"]));
    }
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if map.contains_key("properties") && !preserve && !map.contains_key("additionalProperties") {
        out.insert("additionalProperties".to_owned(), Value::Bool(false));
    }
    Value::Object(out)
}

/// Every reason the schema and the CEL rules give for refusing `object`.
fn refusals(object: &Value) -> Vec<String> {
    let schema = openapi_schema();
    let mut structural = json_schema(&schema);
    // metadata is validated by the API server itself, not by the CRD schema.
    structural["properties"]["metadata"] = serde_json::json!({"type": "object"});
    // apiVersion and kind are checked by the API server before the schema.
    structural["additionalProperties"] = Value::Bool(true);
    let validator = jsonschema::validator_for(&structural).expect("schema compiles");
    let mut out: Vec<String> = validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", field_path(&e.instance_path().to_string())))
        .collect();
    if out.is_empty()
        && let Err(errors) = kube_cel::validate(&schema, object, None)
    {
        out.extend(errors.iter().map(ToString::to_string));
    }
    out
}

/// A JSON pointer written as the API server names fields: `spec.rollout.steps[0].replicas`.
fn field_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').filter(|s| !s.is_empty()) {
        if segment.parse::<usize>().is_ok() {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(segment);
        }
    }
    path
}

fn samples(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/samples")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("samples dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no samples in {}", dir.display());
    files
}

fn load(path: &Path) -> (String, Value) {
    let text = std::fs::read_to_string(path).expect("read sample");
    let value: Value = serde_yaml::from_str(&text).expect("sample is YAML");
    (text, value)
}

#[test]
fn every_good_sample_passes_schema_and_cel_rules() {
    for path in samples("good") {
        let (_, object) = load(&path);
        let refused = refusals(&object);
        assert!(
            refused.is_empty(),
            "{} refused: {refused:#?}",
            path.display()
        );
        let lcs: LongConnService = serde_json::from_value(object).expect("deserializes");
        assert!(lcs.spec.drain.timeout.to_std().is_ok());
    }
}

#[test]
fn every_bad_sample_is_refused_with_a_message_naming_the_field() {
    for path in samples("bad") {
        let (text, object) = load(&path);
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()));
        let refused = refusals(&object);
        assert!(
            refused.iter().any(|r| r.contains(expect)),
            "{}: expected a refusal containing {expect:?}, got {refused:#?}",
            path.display()
        );
    }
}
