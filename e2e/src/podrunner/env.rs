//! A container's environment as the kubelet builds it: `envFrom` first, then `env` in order, with
//! values from literals (with `$(VAR)` expansion), the downward API (`fieldRef`,
//! `resourceFieldRef`), Secrets and ConfigMaps; plus the variables every container gets
//! (`HOSTNAME`, `PATH`, and where to reach the API server). Pure: the referenced Secrets and
//! ConfigMaps are fetched beforehand into [`Sources`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVarSource, Pod};

/// The node resources a container sees when it sets no limit.
pub const NODE_CPU_CORES: u64 = 8;
/// See [`NODE_CPU_CORES`].
pub const NODE_MEMORY_BYTES: u64 = 16 << 30;

/// Data of the Secrets and ConfigMaps a pod references, by name (Secret values already decoded).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
}

/// Where the pod runs: the addresses the downward API and in-cluster clients need.
#[derive(Debug, Clone)]
pub struct Placement {
    pub pod_ip: String,
    pub host_ip: String,
    /// Host and port of the API server as the pod reaches it.
    pub apiserver_host: String,
    pub apiserver_port: u16,
}

/// Names of the Secrets and ConfigMaps a container's environment reads.
pub fn referenced(container: &Container) -> (Vec<String>, Vec<String>) {
    let mut secrets = Vec::new();
    let mut config_maps = Vec::new();
    for from in container.env_from.iter().flatten() {
        if let Some(secret) = &from.secret_ref {
            secrets.push(secret.name.clone());
        }
        if let Some(config_map) = &from.config_map_ref {
            config_maps.push(config_map.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(source) = &var.value_from {
            if let Some(key) = &source.secret_key_ref {
                secrets.push(key.name.clone());
            }
            if let Some(key) = &source.config_map_key_ref {
                config_maps.push(key.name.clone());
            }
        }
    }
    (secrets, config_maps)
}

/// The container's environment, in the order the kubelet sets it (later entries win).
pub fn resolve(
    pod: &Pod,
    container: &Container,
    placement: &Placement,
    sources: &Sources,
) -> Result<Vec<(String, String)>, String> {
    let mut vars: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        (
            "HOSTNAME".into(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        (
            "KUBERNETES_SERVICE_HOST".into(),
            placement.apiserver_host.clone(),
        ),
        (
            "KUBERNETES_SERVICE_PORT".into(),
            placement.apiserver_port.to_string(),
        ),
        (
            "KUBERNETES_SERVICE_PORT_HTTPS".into(),
            placement.apiserver_port.to_string(),
        ),
    ];
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, name, optional) = if let Some(secret) = &from.secret_ref {
            (
                sources.secrets.get(&secret.name),
                &secret.name,
                secret.optional,
            )
        } else if let Some(config_map) = &from.config_map_ref {
            (
                sources.config_maps.get(&config_map.name),
                &config_map.name,
                config_map.optional,
            )
        } else {
            continue;
        };
        match data {
            Some(data) => vars.extend(
                data.iter()
                    .map(|(key, value)| (format!("{prefix}{key}"), value.clone())),
            ),
            None if optional == Some(true) => {}
            None => return Err(format!("envFrom: {name} not found")),
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(source)) => match value_from(pod, container, placement, sources, source)? {
                Some(value) => value,
                None => continue,
            },
            (Some(value), None) => expand(value, &vars),
            (None, None) => String::new(),
        };
        set(&mut vars, &var.name, value);
    }
    Ok(vars)
}

fn set(vars: &mut Vec<(String, String)>, name: &str, value: String) {
    vars.retain(|(existing, _)| existing != name);
    vars.push((name.to_string(), value));
}

/// `None` for an optional reference that is missing (the variable is then not set).
fn value_from(
    pod: &Pod,
    container: &Container,
    placement: &Placement,
    sources: &Sources,
    source: &EnvVarSource,
) -> Result<Option<String>, String> {
    if let Some(field) = &source.field_ref {
        return field_value(pod, placement, &field.field_path).map(Some);
    }
    if let Some(resource) = &source.resource_field_ref {
        let target = match &resource.container_name {
            Some(name) if !name.is_empty() => pod
                .spec
                .iter()
                .flat_map(|spec| spec.containers.iter())
                .find(|candidate| &candidate.name == name)
                .ok_or_else(|| format!("resourceFieldRef: no container {name}"))?,
            _ => container,
        };
        let divisor = resource
            .divisor
            .as_ref()
            .map(|quantity| quantity.0.as_str());
        return resource_value(target, &resource.resource, divisor).map(Some);
    }
    if let Some(key) = &source.secret_key_ref {
        return lookup(
            &sources.secrets,
            &key.name,
            &key.key,
            key.optional,
            "secret",
        );
    }
    if let Some(key) = &source.config_map_key_ref {
        return lookup(
            &sources.config_maps,
            &key.name,
            &key.key,
            key.optional,
            "configMap",
        );
    }
    Err("valueFrom names no source".into())
}

fn lookup(
    objects: &BTreeMap<String, BTreeMap<String, String>>,
    name: &str,
    key: &str,
    optional: Option<bool>,
    kind: &str,
) -> Result<Option<String>, String> {
    match objects.get(name).and_then(|data| data.get(key)) {
        Some(value) => Ok(Some(value.clone())),
        None if optional == Some(true) => Ok(None),
        None => Err(format!("{kind} {name} has no key {key}")),
    }
}

/// The downward API's `fieldRef` paths.
pub fn field_value(pod: &Pod, placement: &Placement, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let indexed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(
            map.and_then(|map| map.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    if let Some(value) = indexed("metadata.labels", meta.labels.as_ref()) {
        return Ok(value);
    }
    if let Some(value) = indexed("metadata.annotations", meta.annotations.as_ref()) {
        return Ok(value);
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => placement.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => placement.host_ip.clone(),
        other => return Err(format!("fieldRef {other} is not supported")),
    })
}

/// `resourceFieldRef`: a limit or request in units of `divisor`, rounded up; a missing limit is
/// the node's allocatable amount, as on a real node.
fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
) -> Result<String, String> {
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("resourceFieldRef {resource} is not supported"))?;
    let resources = container.resources.as_ref();
    let set = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("resourceFieldRef {resource} is not supported")),
    };
    let quantity = set.and_then(|set| set.get(name)).map(|q| q.0.as_str());
    // Values in milli-units so CPU "250m" and memory bytes share one path.
    let (value, default_divisor) = match name {
        "cpu" => (
            quantity
                .map(parse_milli)
                .transpose()?
                .unwrap_or(NODE_CPU_CORES * 1000),
            1000,
        ),
        "memory" | "ephemeral-storage" => (
            quantity
                .map(parse_milli)
                .transpose()?
                .unwrap_or(NODE_MEMORY_BYTES * 1000),
            1000,
        ),
        _ => return Err(format!("resourceFieldRef {resource} is not supported")),
    };
    let divisor = divisor
        .map(parse_milli)
        .transpose()?
        .unwrap_or(default_divisor)
        .max(1);
    Ok(value.div_ceil(divisor).to_string())
}

/// A Kubernetes quantity (`250m`, `2`, `64Mi`, `1G`) in thousandths of its unit.
fn parse_milli(quantity: &str) -> Result<u64, String> {
    let quantity = quantity.trim();
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("quantity {quantity} is not supported"))?;
    let factor: f64 = match suffix {
        "m" => 1.0,
        "" => 1e3,
        "k" => 1e6,
        "M" => 1e9,
        "G" => 1e12,
        "T" => 1e15,
        "Ki" => 1024.0 * 1e3,
        "Mi" => 1024.0 * 1024.0 * 1e3,
        "Gi" => 1024.0 * 1024.0 * 1024.0 * 1e3,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1e3,
        _ => return Err(format!("quantity {quantity} is not supported")),
    };
    Ok((number * factor).ceil() as u64)
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, `$$` is a literal `$`, and an
/// undefined reference stays as written.
pub fn expand(input: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(close) = body.find(')')
        {
            let name = &body[..close];
            match vars.iter().rev().find(|(key, _)| key == name) {
                Some((_, value)) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let env = vars(&[("POD_IP", "198.18.0.5"), ("PORT", "8080")]);
        assert_eq!(expand("$(POD_IP):$(PORT)", &env), "198.18.0.5:8080");
        assert_eq!(expand("$$(POD_IP)", &env), "$(POD_IP)");
        assert_eq!(expand("$(MISSING) $", &env), "$(MISSING) $");
        assert_eq!(expand("a$(PORT", &env), "a$(PORT");
    }

    #[test]
    fn quantities_parse_in_thousandths() {
        assert_eq!(parse_milli("250m"), Ok(250));
        assert_eq!(parse_milli("2"), Ok(2000));
        assert_eq!(parse_milli("64Mi"), Ok(64 * 1024 * 1024 * 1000));
        assert!(parse_milli("3x").is_err());
    }

    #[test]
    fn downward_api_and_references_resolve_in_order() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "echo-1", "namespace": "chat", "uid": "u-1",
                         "labels": {"app": "echo"}},
            "spec": {"nodeName": "node-0", "containers": [{
                "name": "echo",
                "resources": {"limits": {"cpu": "1500m", "memory": "64Mi"}},
                "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "LISTEN", "value": "$(POD_IP):8080"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "admin", "key": "token"}}},
                    {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "none", "key": "x", "optional": true}}},
                    {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                ],
            }]},
        }))
        .expect("pod");
        let container = &pod.spec.as_ref().expect("spec").containers[0];
        let placement = Placement {
            pod_ip: "198.18.0.7".into(),
            host_ip: "198.18.0.1".into(),
            apiserver_host: "198.18.0.1".into(),
            apiserver_port: 6443,
        };
        let mut sources = Sources::default();
        sources.secrets.insert(
            "admin".into(),
            [("token".to_string(), "s3cret".to_string())].into(),
        );
        sources.config_maps.insert(
            "settings".into(),
            [("mode".to_string(), "fast".to_string())].into(),
        );
        assert_eq!(
            referenced(container),
            (vec!["admin".into(), "none".into()], vec!["settings".into()])
        );
        let env = resolve(&pod, container, &placement, &sources).expect("resolve");
        let get = |name: &str| {
            env.iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        assert_eq!(get("CFG_mode"), Some("fast"));
        assert_eq!(get("POD_NAME"), Some("echo-1"));
        assert_eq!(get("LISTEN"), Some("198.18.0.7:8080"));
        assert_eq!(get("APP"), Some("echo"));
        assert_eq!(get("TOKEN"), Some("s3cret"));
        assert_eq!(get("GONE"), None);
        assert_eq!(get("CPUS"), Some("2"));
        assert_eq!(get("MEM_MI"), Some("64"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("6443"));
    }
}
