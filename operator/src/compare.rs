//! Is an object already as desired?
//!
//! A reconcile that finds everything as desired must write nothing, so before applying a
//! manifest the reconciler asks [`satisfied`]: does every field we set already hold our value?
//! The API server adds defaults and status, so the observed object is a superset; and Go's
//! `omitempty` drops zero values, so a desired `false`, `0`, `""`, `[]` or `{}` matches a field
//! that is absent.

use serde_json::Value;

/// True when `observed` already holds every field of `desired` (ignoring `apiVersion`, `kind`
/// and metadata other than labels, annotations and owner references).
pub fn satisfied(desired: &Value, observed: &Value) -> bool {
    let (Value::Object(want), Value::Object(have)) = (desired, observed) else {
        return false;
    };
    want.iter().all(|(key, value)| match key.as_str() {
        "apiVersion" | "kind" => true,
        "metadata" => ["labels", "annotations", "ownerReferences"]
            .iter()
            .all(|k| contains(&value[*k], &observed["metadata"][*k])),
        _ => contains(value, have.get(key).unwrap_or(&Value::Null)),
    })
}

/// True when `have` contains `want`: objects by key, arrays element by element.
pub fn contains(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (want, Value::Null) => is_zero(want),
        (Value::Object(w), Value::Object(h)) => w
            .iter()
            .all(|(k, v)| contains(v, h.get(k).unwrap_or(&Value::Null))),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| contains(a, b))
        }
        (Value::Number(w), Value::Number(h)) => w.as_f64() == h.as_f64(),
        (w, h) => w == h,
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_zero),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_defaults_and_status_do_not_count_as_drift() {
        let desired = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "chat", "labels": {"a": "b"}},
            "spec": {"ports": [{"port": 8443, "name": "client"}]}});
        let observed = json!({"metadata": {"name": "chat", "labels": {"a": "b"},
            "resourceVersion": "7", "managedFields": []},
            "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 8443, "name": "client", "protocol": "TCP"}]},
            "status": {}});
        assert!(satisfied(&desired, &observed));
    }

    #[test]
    fn a_changed_or_missing_field_is_drift() {
        let desired = json!({"spec": {"replicas": 3, "paused": true}});
        assert!(!satisfied(
            &desired,
            &json!({"spec": {"replicas": 2, "paused": true}})
        ));
        assert!(!satisfied(&desired, &json!({"spec": {"replicas": 3}})));
        assert!(!satisfied(
            &json!({"metadata": {"labels": {"x": "1"}}}),
            &json!({"metadata": {}})
        ));
    }

    #[test]
    fn zero_values_match_absent_fields_as_omitempty_drops_them() {
        let desired = json!({"spec": {"env": [], "readOnly": false, "name": "", "labels": {}}});
        assert!(satisfied(&desired, &json!({"spec": {}})));
    }

    #[test]
    fn arrays_must_match_in_length_and_order() {
        let desired = json!({"spec": {"ports": [{"port": 1}, {"port": 2}]}});
        assert!(!satisfied(
            &desired,
            &json!({"spec": {"ports": [{"port": 1}]}})
        ));
        assert!(!satisfied(
            &desired,
            &json!({"spec": {"ports": [{"port": 2}, {"port": 1}]}})
        ));
    }
}
