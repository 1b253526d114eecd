//! Is an object already as desired?
//!
//! A reconcile that finds everything as desired must write nothing, so before applying a
//! manifest the reconciler asks [`satisfied`]: does every field we set already hold our value?
//! The API server adds defaults and status, so the observed object is a superset; and Go's
//! `omitempty` drops zero values, so a desired `false`, `0`, `""`, `[]` or `{}` matches a field
//! that is absent. The API server also rewrites resource quantities in canonical form (`1024Mi`
//! is stored as `1Gi`, `0.5` as `500m`), so quantities compare by value.

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
        _ => contains_at(
            value,
            have.get(key).unwrap_or(&Value::Null),
            Field::Other.child(key),
        ),
    })
}

/// The first field that differs between two values of one type, either way (one that `new`
/// adds or changes, else one it drops), as a JSON path; None when they serialize alike.
pub fn first_change<T: serde::Serialize>(old: &T, new: &T) -> Option<String> {
    let old = serde_json::to_value(old).unwrap_or_default();
    let new = serde_json::to_value(new).unwrap_or_default();
    first_difference(&new, &old).or_else(|| first_difference(&old, &new))
}

/// The first field of `desired` that `observed` does not hold, as a JSON path (`spec.replicas`),
/// for the log line that says why an object was updated; None when [`satisfied`].
pub fn first_difference(desired: &Value, observed: &Value) -> Option<String> {
    fn walk(want: &Value, have: &Value, field: Field, path: &str) -> Option<String> {
        match (want, have) {
            (Value::Object(w), Value::Object(h)) => w.iter().find_map(|(k, v)| {
                walk(
                    v,
                    h.get(k).unwrap_or(&Value::Null),
                    field.child(k),
                    &format!("{path}.{k}"),
                )
            }),
            (Value::Array(w), Value::Array(h)) if w.len() == h.len() => w
                .iter()
                .zip(h)
                .enumerate()
                .find_map(|(i, (a, b))| walk(a, b, Field::Other, &format!("{path}[{i}]"))),
            (w, h) => (!contains_at(w, h, field)).then(|| path.trim_start_matches('.').to_owned()),
        }
    }
    if satisfied(desired, observed) {
        return None;
    }
    let (Value::Object(want), Value::Object(_)) = (desired, observed) else {
        return Some(String::new());
    };
    want.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind"))
        .find_map(|(key, value)| {
            if key == "metadata" {
                return ["labels", "annotations", "ownerReferences"]
                    .iter()
                    .find(|k| !contains(&value[**k], &observed["metadata"][**k]))
                    .map(|k| format!("metadata.{k}"));
            }
            walk(
                value,
                observed.get(key).unwrap_or(&Value::Null),
                Field::Other.child(key),
                key,
            )
        })
        .or(Some(String::new()))
}

/// True when `have` contains `want`: objects by key, arrays element by element.
pub fn contains(want: &Value, have: &Value) -> bool {
    contains_at(want, have, Field::Other)
}

/// Where a value sits, as far as comparing it goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    /// A map of resource quantities (`requests`, `limits`, ...): its values are quantities.
    Quantities,
    /// One resource quantity (`sizeLimit`, a value of a `requests` map, ...).
    Quantity,
    Other,
}

impl Field {
    /// The field at `key` inside a field of kind `self`.
    fn child(self, key: &str) -> Field {
        match (self, key) {
            (Field::Quantities, _) | (_, "sizeLimit" | "averageValue" | "tolerance") => {
                Field::Quantity
            }
            (_, "requests" | "limits" | "hard" | "capacity" | "allocatable") => Field::Quantities,
            _ => Field::Other,
        }
    }
}

fn contains_at(want: &Value, have: &Value, field: Field) -> bool {
    match (want, have) {
        // A field we do not set (no annotations on a Deployment, say) holds whatever others put
        // there (the Deployment controller's `deployment.kubernetes.io/revision`).
        (Value::Null, _) => true,
        (want, Value::Null) => is_zero(want),
        (Value::Object(w), Value::Object(h)) => w
            .iter()
            .all(|(k, v)| contains_at(v, h.get(k).unwrap_or(&Value::Null), field.child(k))),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len()
                && w.iter()
                    .zip(h)
                    .all(|(a, b)| contains_at(a, b, Field::Other))
        }
        (Value::Number(w), Value::Number(h)) => w.as_f64() == h.as_f64(),
        (Value::String(w), Value::String(h)) if field == Field::Quantity && w != h => {
            matches!((quantity(w), quantity(h)), (Some(a), Some(b)) if same_quantity(a, b))
        }
        (w, h) => w == h,
    }
}

/// The value of a Kubernetes quantity (`500m`, `1.5`, `64Mi`, `1e3`), or None if it is not one.
pub fn quantity(s: &str) -> Option<f64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp => {
            let exp = exp.strip_prefix('e').or_else(|| exp.strip_prefix('E'))?;
            10f64.powi(exp.parse().ok()?)
        }
    };
    Some(number * factor)
}

fn same_quantity(a: f64, b: f64) -> bool {
    (a - b).abs() <= f64::EPSILON * 16.0 * a.abs().max(b.abs())
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
    fn annotations_others_add_where_we_set_none_are_not_drift() {
        let desired = json!({"metadata": {"labels": {"a": "b"}}, "spec": {"replicas": 3}});
        let observed = json!({"metadata": {"labels": {"a": "b"},
            "annotations": {"deployment.kubernetes.io/revision": "1"}}, "spec": {"replicas": 3}});
        assert!(satisfied(&desired, &observed));
        assert_eq!(first_difference(&desired, &observed), None);
    }

    #[test]
    fn the_first_difference_names_the_field() {
        let desired = json!({"metadata": {"labels": {"a": "b"}},
            "spec": {"template": {"spec": {"containers": [{"args": ["--x"]}]}}}});
        let observed = json!({"metadata": {"labels": {"a": "b"}},
            "spec": {"template": {"spec": {"containers": [{"args": ["--y"]}]}}}});
        assert_eq!(
            first_difference(&desired, &observed).as_deref(),
            Some("spec.template.spec.containers[0].args[0]")
        );
        let relabelled = json!({"metadata": {"labels": {"a": "c"}}});
        assert_eq!(
            first_difference(&desired, &relabelled).as_deref(),
            Some("metadata.labels")
        );
    }

    #[test]
    fn zero_values_match_absent_fields_as_omitempty_drops_them() {
        let desired = json!({"spec": {"env": [], "readOnly": false, "name": "", "labels": {}}});
        assert!(satisfied(&desired, &json!({"spec": {}})));
    }

    #[test]
    fn quantities_compare_by_value_as_the_api_server_canonicalizes_them() {
        let desired = json!({"spec": {"containers": [{"resources": {
            "requests": {"cpu": "0.5", "memory": "1024Mi"}, "limits": {"memory": "1e9"}}}],
            "volumes": [{"emptyDir": {"sizeLimit": "65536Ki"}}]}});
        let observed = json!({"spec": {"containers": [{"resources": {
            "requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1G"}}}],
            "volumes": [{"emptyDir": {"sizeLimit": "64Mi"}}]}});
        assert!(satisfied(&desired, &observed));
        let grown = json!({"spec": {"containers": [{"resources": {
            "requests": {"cpu": "600m", "memory": "1Gi"}, "limits": {"memory": "1G"}}}],
            "volumes": [{"emptyDir": {"sizeLimit": "64Mi"}}]}});
        assert!(!satisfied(&desired, &grown));
    }

    #[test]
    fn strings_outside_quantities_compare_exactly() {
        let desired = json!({"metadata": {"labels": {"size": "1000"}}});
        assert!(!satisfied(
            &desired,
            &json!({"metadata": {"labels": {"size": "1k"}}})
        ));
    }

    #[test]
    fn parses_every_quantity_suffix() {
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("1Ki"), Some(1024.0));
        assert_eq!(quantity("1.5G"), Some(1.5e9));
        assert_eq!(quantity("12e3"), Some(12e3));
        assert_eq!(quantity("ten"), None);
        assert_eq!(quantity("5x"), None);
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
