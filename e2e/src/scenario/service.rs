//! The LongConnService a scenario runs, and what can be observed of it: its status (read by JSON
//! paths, so fields added later change nothing here) and its pods.
//!
//! The manifest is built for speed: the echo app behind the gateway, self-signed TLS, close
//! frames spread over 2 s, a connection rate limit high enough for a thousand clients that all
//! come from one address (the client host's, or the node's that translated the ClusterIP), and
//! short rollout deadlines where a scenario asks. The pods meet the restricted Pod Security level.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use longconn_operator::desired::GATEWAY_CONTAINER;
use serde::Serialize;
use serde_json::{Value, json};

use super::ScenarioError;

/// The field manager of everything the scenarios apply.
const FIELD_MANAGER: &str = "longconn-e2e";
/// The app's port inside the pod.
pub const APP_PORT: u16 = 8080;

/// The settings a scenario varies.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    pub replicas: i32,
    /// A value in the app's environment: changing it changes the pod template, so starts a
    /// rollout.
    pub revision: u32,
    /// The address the app listens on (`127.0.0.1:8080`; another port makes it never Ready).
    pub app_listen: String,
    pub drain_timeout: String,
    pub drain_spread: String,
    pub progress_deadline: String,
    pub max_dropped_sessions: i64,
    /// `spec.autoscaling` as applied; unset: none.
    pub autoscaling: Option<Value>,
    /// The compute resources of the app container and of the gateway (`spec.gateway.resources`);
    /// unset: none for the app, the operator's default for the gateway.
    pub resources: Option<Resources>,
    /// `spec.rollout.steps` as applied; unset: none.
    pub rollout_steps: Option<Value>,
    /// `spec.rollout.analysis` as applied; unset: no health gate.
    pub rollout_analysis: Option<Value>,
    /// The share of WebSocket upgrades the app answers 503 (`--refuse-upgrades-percent`).
    pub app_refuses_percent: u32,
}

/// The compute resources of a pod's two containers, as applied.
#[derive(Clone, Debug)]
pub struct Resources {
    pub app: Value,
    pub gateway: Value,
}

impl ServiceSpec {
    /// `chat` in `namespace`: 3 replicas, drain timeout 20s, spread 2s, progress deadline 3m,
    /// no dropped session allowed, no autoscaling.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: "chat".to_owned(),
            replicas: 3,
            revision: 1,
            app_listen: format!("127.0.0.1:{APP_PORT}"),
            drain_timeout: "20s".to_owned(),
            drain_spread: "2s".to_owned(),
            progress_deadline: "3m".to_owned(),
            max_dropped_sessions: 0,
            autoscaling: None,
            resources: None,
            rollout_steps: None,
            rollout_analysis: None,
            app_refuses_percent: 0,
        }
    }

    /// The LongConnService as applied.
    pub fn manifest(&self) -> Value {
        let mut manifest = json!({
            "apiVersion": "longconn.dev/v1alpha1",
            "kind": "LongConnService",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "replicas": self.replicas,
                "template": {"spec": {
                    // The restricted Pod Security level, which the scenario's namespace enforces.
                    "securityContext": {
                        "runAsNonRoot": true,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": "app",
                        "image": "ghcr.io/longconn/longconn-echo:0.1.0",
                        "args": ["--listen", self.app_listen],
                        "env": [{"name": "CHAT_REVISION", "value": self.revision.to_string()}],
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                }},
                "gateway": {
                    "upstreamPort": APP_PORT,
                    // Two descriptors per connection: the nodes give containers their own limit
                    // (the host's, 20,000 here), below what the default of 10,000 needs.
                    "maxConnections": 5000,
                    "rateLimit": {"connectionsPerSecondPerIP": 100_000, "burst": 100_000},
                },
                "tls": {"mode": "SelfSigned"},
                "drain": {
                    "strategy": "Notify",
                    "timeout": self.drain_timeout,
                    "spread": self.drain_spread,
                },
                "rollout": {
                    "maxSurge": 1,
                    "maxConcurrentDrains": 1,
                    "maxDroppedSessions": self.max_dropped_sessions,
                    "onDropBudgetExceeded": "Pause",
                    "progressDeadline": self.progress_deadline,
                },
                "disruption": {"maxUnavailable": 1},
            },
        });
        if let Some(autoscaling) = &self.autoscaling {
            manifest["spec"]["autoscaling"] = autoscaling.clone();
        }
        if let Some(steps) = &self.rollout_steps {
            manifest["spec"]["rollout"]["steps"] = steps.clone();
        }
        if let Some(analysis) = &self.rollout_analysis {
            manifest["spec"]["rollout"]["analysis"] = analysis.clone();
        }
        if self.app_refuses_percent > 0 {
            manifest["spec"]["template"]["spec"]["containers"][0]["args"] = json!([
                "--listen",
                self.app_listen,
                "--refuse-upgrades-percent",
                self.app_refuses_percent.to_string()
            ]);
        }
        if let Some(resources) = &self.resources {
            manifest["spec"]["template"]["spec"]["containers"][0]["resources"] =
                resources.app.clone();
            manifest["spec"]["gateway"]["resources"] = resources.gateway.clone();
        }
        manifest
    }

    fn api(&self, client: &kube::Client) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("longconn.dev", "v1alpha1", "LongConnService");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "longconnservices");
        Api::namespaced_with(client.clone(), &self.namespace, &resource)
    }

    /// Applies the manifest (server-side apply).
    pub async fn apply(&self, client: &kube::Client) -> Result<(), ScenarioError> {
        self.api(client)
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(self.manifest()),
            )
            .await
            .map_err(ScenarioError::kube(format!(
                "apply LongConnService {}/{}",
                self.namespace, self.name
            )))?;
        Ok(())
    }

    /// Merge-patches the object with `patch` (fields the manifest owns are left as they are).
    pub async fn merge(&self, client: &kube::Client, patch: Value) -> Result<(), ScenarioError> {
        self.api(client)
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(ScenarioError::kube(format!(
                "patch LongConnService {}/{}",
                self.namespace, self.name
            )))?;
        Ok(())
    }

    /// The object as the API server has it now.
    pub async fn observe(&self, client: &kube::Client) -> Result<Observed, ScenarioError> {
        let object = self
            .api(client)
            .get(&self.name)
            .await
            .map_err(ScenarioError::kube(format!(
                "get LongConnService {}/{}",
                self.namespace, self.name
            )))?;
        let object = serde_json::to_value(&object)
            .map_err(|e| ScenarioError::Setup(format!("LongConnService as JSON: {e}")))?;
        Ok(Observed(object))
    }

    /// The service's pods (label `longconn.dev/service`).
    pub async fn pods(&self, client: &kube::Client) -> Result<Vec<PodView>, ScenarioError> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.namespace);
        let list = pods
            .list(&ListParams::default().labels(&format!("longconn.dev/service={}", self.name)))
            .await
            .map_err(ScenarioError::kube(format!(
                "list the pods of {}/{}",
                self.namespace, self.name
            )))?;
        let mut views: Vec<PodView> = list.items.iter().map(PodView::of).collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(views)
    }
}

/// A LongConnService as JSON, read by paths.
#[derive(Clone, Debug)]
pub struct Observed(pub Value);

impl Observed {
    /// The value at a JSON pointer (`/status/rollout/phase`).
    pub fn at(&self, pointer: &str) -> Option<&Value> {
        self.0.pointer(pointer)
    }

    fn text(&self, pointer: &str) -> Option<String> {
        self.at(pointer).and_then(Value::as_str).map(str::to_owned)
    }

    pub fn generation(&self) -> Option<i64> {
        self.at("/metadata/generation").and_then(Value::as_i64)
    }

    pub fn observed_generation(&self) -> Option<i64> {
        self.at("/status/observedGeneration")
            .and_then(Value::as_i64)
    }

    pub fn update_revision(&self) -> Option<String> {
        self.text("/status/updateRevision")
    }

    pub fn current_revision(&self) -> Option<String> {
        self.text("/status/currentRevision")
    }

    /// `status.rollout`, if the operator wrote one.
    pub fn rollout(&self) -> Option<Rollout> {
        self.at("/status/rollout").map(|raw| Rollout(raw.clone()))
    }

    /// `status.conditions` as written.
    pub fn conditions(&self) -> Value {
        self.at("/status/conditions")
            .cloned()
            .unwrap_or(Value::Array(Vec::new()))
    }

    /// The condition of `type_`, as (status, reason, message).
    pub fn condition(&self, type_: &str) -> Option<Condition> {
        let conditions = self.at("/status/conditions")?.as_array()?;
        let found = conditions
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))?;
        let field = |name: &str| {
            found
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Some(Condition {
            status: field("status"),
            reason: field("reason"),
            message: field("message"),
        })
    }

    /// Progressing=False with `reason`.
    pub fn stopped_with(&self, reason: &str) -> bool {
        self.condition("Progressing")
            .is_some_and(|c| c.status == "False" && c.reason == reason)
    }

    /// One line for wait messages.
    pub fn summary(&self) -> String {
        let rollout = self.rollout().map_or("no status.rollout".to_owned(), |r| {
            format!(
                "rollout {} {} drained {} migrated {} dropped {}",
                r.revision().unwrap_or_default(),
                r.phase().unwrap_or_default(),
                r.pods_drained().unwrap_or(0),
                r.sessions_migrated().unwrap_or(0),
                r.sessions_dropped().unwrap_or(0)
            )
        });
        let progressing = self
            .condition("Progressing")
            .map_or("no Progressing condition".to_owned(), |c| {
                format!("Progressing={} ({})", c.status, c.reason)
            });
        format!(
            "updateRevision {:?}, currentRevision {:?}, {rollout}, {progressing}",
            self.update_revision(),
            self.current_revision()
        )
    }
}

/// A status condition.
#[derive(Clone, Debug, Serialize)]
pub struct Condition {
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// `status.rollout`, read by paths.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout(pub Value);

impl Rollout {
    fn text(&self, key: &str) -> Option<String> {
        self.0.get(key).and_then(Value::as_str).map(str::to_owned)
    }
    fn number(&self, key: &str) -> Option<i64> {
        self.0.get(key).and_then(Value::as_i64)
    }
    pub fn revision(&self) -> Option<String> {
        self.text("revision")
    }
    pub fn phase(&self) -> Option<String> {
        self.text("phase")
    }
    pub fn started_at(&self) -> Option<String> {
        self.text("startedAt")
    }
    pub fn pods_drained(&self) -> Option<i64> {
        self.number("podsDrained")
    }
    pub fn sessions_migrated(&self) -> Option<i64> {
        self.number("sessionsMigrated")
    }
    pub fn sessions_dropped(&self) -> Option<i64> {
        self.number("sessionsDropped")
    }
    /// The same rollout record as `other` (same revision and start)?
    pub fn same_record(&self, other: &Rollout) -> bool {
        self.revision() == other.revision() && self.started_at() == other.started_at()
    }
}

/// What the operator recorded since a baseline: the counts of the record now, less those of the
/// baseline when it is the same record (a later record counts from zero).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recorded {
    pub pods_drained: i64,
    pub sessions_migrated: i64,
    pub sessions_dropped: i64,
}

impl Recorded {
    /// `None` when there is no record now, or it is the baseline record unchanged.
    pub fn since(baseline: Option<&Rollout>, now: Option<&Rollout>) -> Option<Recorded> {
        let now = now?;
        let counts = |r: &Rollout| Recorded {
            pods_drained: r.pods_drained().unwrap_or(0),
            sessions_migrated: r.sessions_migrated().unwrap_or(0),
            sessions_dropped: r.sessions_dropped().unwrap_or(0),
        };
        match baseline {
            Some(base) if base.same_record(now) => {
                if base == now {
                    return None;
                }
                let (a, b) = (counts(base), counts(now));
                Some(Recorded {
                    pods_drained: b.pods_drained - a.pods_drained,
                    sessions_migrated: b.sessions_migrated - a.sessions_migrated,
                    sessions_dropped: b.sessions_dropped - a.sessions_dropped,
                })
            }
            _ => Some(counts(now)),
        }
    }

    /// What the operator recorded since `baseline` over `records`, each a record as last seen
    /// (in order; a record seen several times counts as its last version): the sum of what
    /// each adds to the one before. A scale-down decided in two steps leaves two records.
    pub fn over(baseline: Option<&Rollout>, records: &[Rollout]) -> Option<Recorded> {
        let mut last: Vec<&Rollout> = Vec::new();
        for record in records {
            match last.last_mut() {
                Some(seen) if seen.same_record(record) => *seen = record,
                _ => last.push(record),
            }
        }
        last.into_iter()
            .filter_map(|record| Recorded::since(baseline, Some(record)))
            .reduce(|a, b| Recorded {
                pods_drained: a.pods_drained + b.pods_drained,
                sessions_migrated: a.sessions_migrated + b.sessions_migrated,
                sessions_dropped: a.sessions_dropped + b.sessions_dropped,
            })
    }
}

/// What a scenario needs to know of a pod.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    pub name: String,
    pub revision: String,
    pub node: Option<String>,
    pub ip: Option<String>,
    pub ready: bool,
    pub terminating: bool,
    /// The gateway container's ID from its status (`containerd://<id>`).
    #[serde(skip)]
    pub gateway_container: Option<String>,
    /// Restarts of the gateway container.
    pub gateway_restarts: i32,
    /// The gateway container's port named `admin` (`/metrics` is served there).
    #[serde(skip)]
    pub admin_port: Option<u16>,
}

impl PodView {
    fn of(pod: &Pod) -> Self {
        let status = pod.status.clone().unwrap_or_default();
        let ready = status.phase.as_deref() == Some("Running")
            && status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
        let gateway = status
            .init_container_statuses
            .iter()
            .flatten()
            .find(|c| c.name == GATEWAY_CONTAINER);
        let admin_port = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .filter(|c| c.name == GATEWAY_CONTAINER)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some("admin"))
            .and_then(|p| u16::try_from(p.container_port).ok());
        let labels: BTreeMap<String, String> = pod.metadata.labels.clone().unwrap_or_default();
        PodView {
            name: pod.metadata.name.clone().unwrap_or_default(),
            revision: labels
                .get("longconn.dev/revision")
                .cloned()
                .unwrap_or_default(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ip: status.pod_ip.clone(),
            ready,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            gateway_container: gateway.and_then(|c| c.container_id.clone()),
            gateway_restarts: gateway.map_or(0, |c| c.restart_count),
            admin_port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(value: Value) -> Rollout {
        Rollout(value)
    }

    #[test]
    fn recorded_counts_from_the_baseline_of_the_same_record_and_from_zero_for_a_new_one() {
        let base = rollout(json!({"revision": "a", "startedAt": "t1", "podsDrained": 3,
            "sessionsMigrated": 100, "sessionsDropped": 1}));
        let same = rollout(json!({"revision": "a", "startedAt": "t1", "podsDrained": 4,
            "sessionsMigrated": 130, "sessionsDropped": 1}));
        let new = rollout(json!({"revision": "a", "startedAt": "t2", "podsDrained": 1,
            "sessionsMigrated": 30, "sessionsDropped": 0, "someLaterField": true}));
        assert_eq!(Recorded::since(Some(&base), Some(&base)), None);
        assert_eq!(Recorded::since(Some(&base), None), None);
        assert_eq!(
            Recorded::since(Some(&base), Some(&same)),
            Some(Recorded {
                pods_drained: 1,
                sessions_migrated: 30,
                sessions_dropped: 0
            })
        );
        assert_eq!(
            Recorded::since(Some(&base), Some(&new)),
            Some(Recorded {
                pods_drained: 1,
                sessions_migrated: 30,
                sessions_dropped: 0
            })
        );
        assert_eq!(
            Recorded::since(None, Some(&base)).map(|r| r.pods_drained),
            Some(3)
        );
    }

    #[test]
    fn records_seen_over_time_add_up_each_at_its_last_version() {
        let record = |started: &str, drained: i64, migrated: i64| {
            rollout(
                json!({"revision": "a", "startedAt": started, "podsDrained": drained,
                "sessionsMigrated": migrated, "sessionsDropped": 0}),
            )
        };
        let base = record("t1", 3, 100);
        // The baseline's record grows by 1 pod, then a second scale-down drains 2, then 3.
        let seen = [
            record("t1", 3, 100),
            record("t1", 4, 130),
            record("t2", 2, 40),
            record("t2", 3, 70),
        ];
        assert_eq!(
            Recorded::over(Some(&base), &seen),
            Some(Recorded {
                pods_drained: 4,
                sessions_migrated: 100,
                sessions_dropped: 0
            })
        );
        assert_eq!(Recorded::over(Some(&base), &seen[..1]), None);
        assert_eq!(
            Recorded::over(None, &seen[2..]).map(|r| r.pods_drained),
            Some(3)
        );
    }

    #[test]
    fn status_is_read_by_paths_and_conditions_by_type() {
        let observed = Observed(json!({"metadata": {"generation": 2}, "status": {
            "observedGeneration": 2, "updateRevision": "b", "currentRevision": "a",
            "conditions": [{"type": "Progressing", "status": "False",
                "reason": "ProgressDeadlineExceeded", "message": "m"}],
            "rollout": {"revision": "b", "phase": "Paused", "podsDrained": 0}}}));
        assert!(observed.stopped_with("ProgressDeadlineExceeded"));
        assert!(!observed.stopped_with("DropBudgetExceeded"));
        assert_eq!(observed.update_revision().as_deref(), Some("b"));
        let rollout = observed.rollout().expect("rollout");
        assert_eq!(rollout.phase().as_deref(), Some("Paused"));
        assert_eq!(rollout.pods_drained(), Some(0));
        assert_eq!(rollout.sessions_dropped(), None);
    }

    #[test]
    fn the_manifest_changes_the_template_with_the_revision_only() {
        let mut spec = ServiceSpec::new("ns");
        let first = spec.manifest();
        spec.revision = 2;
        let second = spec.manifest();
        assert_ne!(first["spec"]["template"], second["spec"]["template"]);
        assert_eq!(first["spec"]["gateway"], second["spec"]["gateway"]);
    }

    #[test]
    fn autoscaling_is_applied_only_when_set() {
        let mut spec = ServiceSpec::new("ns");
        assert_eq!(spec.manifest()["spec"].get("autoscaling"), None);
        spec.autoscaling = Some(json!({"minReplicas": 2, "maxReplicas": 6}));
        assert_eq!(
            spec.manifest()["spec"]["autoscaling"],
            json!({"minReplicas": 2, "maxReplicas": 6})
        );
    }
}
