//! Observe: every read a reconcile makes, gathered in one [`Observation`].
//!
//! Owned objects, pods and ReplicaSets come from the controller's caches ([`crate::cache`]),
//! the gateways' reports from the poller's ([`crate::gateways`]). The only request left is the
//! GET of a user's own TLS Secret (mode Secret), which carries no label of ours to watch by,
//! and the list of the pods' CPU from the resource metrics API while the autoscaling weighs CPU
//! beside sessions (at most every [`CPU_READ_EVERY`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use longconn_drain_api::DrainReport;
use serde_json::Value;

use crate::cache::CachedPod;
use crate::cpu;
use crate::crd::{LongConnService, TlsMode};
use crate::desired::{self, ObservedRevision, ServedApis};
use crate::gateways::{self, PodKey};
use crate::kinds::Kind;
use crate::labels::{self, names};
use crate::placement::ServiceFacts;
use crate::reconcile::{Context, Error};
use crate::rollout::{DELETION_COST, PodFacts};

/// How often the pods' CPU is read while the autoscaling needs it: metrics-server's shortest
/// resolution.
pub const CPU_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The CPU each pod uses, in millicores by pod name, or why it could not be read.
pub type CpuUsed = Result<BTreeMap<String, f64>, String>;

/// The objects labelled as created for one LongConnService, by kind.
#[derive(Clone, Debug, Default)]
pub struct Owned(BTreeMap<Kind, Vec<Arc<DynamicObject>>>);

impl Owned {
    pub fn find(&self, kind: Kind, name: &str) -> Option<&DynamicObject> {
        self.0
            .get(&kind)?
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some(name))
            .map(AsRef::as_ref)
    }

    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &DynamicObject> {
        self.0.get(&kind).into_iter().flatten().map(AsRef::as_ref)
    }

    pub fn iter(&self) -> impl Iterator<Item = (Kind, &DynamicObject)> {
        self.0
            .iter()
            .flat_map(|(kind, objects)| objects.iter().map(move |o| (*kind, o.as_ref())))
    }

    /// The pod fields the ControllerRevision of `revision` keeps, as JSON.
    pub fn pod_fields(&self, service: &str, revision: &str) -> Option<&Value> {
        self.find(
            Kind::ControllerRevision,
            &names::controller_revision(service, revision),
        )?
        .data
        .get("data")
    }

    /// A key of one of the Secrets, as text.
    pub fn secret_value(&self, secret: &str, key: &str) -> Option<String> {
        secret_value(self.find(Kind::Secret, secret)?, key)
    }
}

/// A key of a Secret, as text.
fn secret_value(secret: &DynamicObject, key: &str) -> Option<String> {
    let data = secret.data.get("data")?.get(key)?;
    let bytes: k8s_openapi::ByteString = serde_json::from_value(data.clone()).ok()?;
    String::from_utf8(bytes.0).ok()
}

/// A user's own TLS Secret (mode Secret), as read.
#[derive(Clone, Debug, PartialEq)]
pub enum UserSecret {
    /// Not mode Secret.
    NotUsed,
    Missing,
    Found(Box<Secret>),
}

/// Everything one reconcile reads.
#[derive(Clone, Debug)]
pub struct Observation {
    pub now: Timestamp,
    pub apis: ServedApis,
    pub owned: Owned,
    /// The admin token in the Secret, if there is one yet.
    pub admin_token: Option<String>,
    /// The LongConnService's pods (those its own ReplicaSets control), with their gateways'
    /// reports.
    pub pods: Vec<PodFacts>,
    /// Where each running pod's gateway answers, by pod name.
    pub admin: BTreeMap<String, (SocketAddr, PodKey)>,
    /// Where the drain-report finalizer is in each holding pod's finalizers, by pod name.
    pub finalizer_at: BTreeMap<String, usize>,
    /// The CPU the pods use, while `targetCPUUtilization` is set beside `targetSessionsPerPod`.
    pub cpu_used: Option<CpuUsed>,
    pub revisions: Vec<ObservedRevision>,
    /// Revisions whose Deployment reports ProgressDeadlineExceeded.
    pub stalled: Vec<String>,
    /// The client Service: the revision it selects.
    pub service: ServiceFacts,
    pub user_secret: UserSecret,
}

impl Observation {
    /// One line per pod, as the plan sees it (for the debug log).
    pub fn pod_lines(&self) -> Vec<String> {
        self.pods
            .iter()
            .map(|p| {
                format!(
                    "{} revision={} running={} ready={} terminating={} accepting={:?} routable={} report={:?}",
                    p.name,
                    p.revision,
                    p.running,
                    p.ready,
                    p.terminating,
                    p.accepting,
                    p.routable,
                    p.report.as_ref().map(|r| (r.state, r.active))
                )
            })
            .collect()
    }
}

/// Reads everything a reconcile of `lcs` needs.
pub async fn observe(
    ctx: &Context,
    lcs: &LongConnService,
    apis: ServedApis,
    now: Timestamp,
) -> Result<Observation, Error> {
    let ns = lcs.namespace().unwrap_or_default();
    let name = lcs.name_any();
    let owned = owned(ctx, &ns, &name, apis);
    let admin_token = owned.secret_value(&names::admin_token(&name), desired::ADMIN_TOKEN_KEY);
    let pods = service_pods(
        ctx,
        lcs,
        owned.of_kind(Kind::Deployment).map(|d| &d.metadata),
    );
    let port = desired::admin_port(lcs);
    let mut admin = BTreeMap::new();
    let mut finalizer_at = BTreeMap::new();
    let mut facts = Vec::new();
    let routable = ctx.caches.routable(&ns, &name);
    for pod in &pods {
        if let Some(i) = pod
            .finalizers()
            .iter()
            .position(|f| f == desired::DRAIN_REPORT_FINALIZER)
        {
            finalizer_at.insert(pod.name_any(), i);
        }
        let fact = pod_facts(ctx, pod, &routable);
        if let Some(ip) = pod.running_ip {
            admin.insert(
                fact.name.clone(),
                (SocketAddr::new(ip, port), gateways::key_of(pod)),
            );
        }
        facts.push(fact);
    }
    let user_secret = match lcs.spec.tls.mode {
        TlsMode::Secret => {
            let secret_name = lcs.spec.tls.secret_name.clone().unwrap_or_default();
            user_secret(ctx, &ns, &secret_name).await?
        }
        _ => UserSecret::NotUsed,
    };
    let cpu_used = cpu_used(ctx, lcs).await;
    Ok(Observation {
        now,
        apis,
        revisions: revisions(&owned),
        stalled: owned
            .of_kind(Kind::Deployment)
            .filter(|d| deployment_stalled(d))
            .filter_map(|d| d.labels().get(labels::REVISION).cloned())
            .collect(),
        service: client_service(&owned, &name),
        owned,
        admin_token,
        pods: facts,
        admin,
        finalizer_at,
        user_secret,
        cpu_used,
    })
}

/// The client Service as the cache shows it: the revision its selector names, and when the
/// operator changed that.
fn client_service(owned: &Owned, name: &str) -> ServiceFacts {
    let Some(service) = owned.find(Kind::Service, name) else {
        return ServiceFacts::default();
    };
    ServiceFacts {
        exists: true,
        revision: service.data["spec"]["selector"][labels::REVISION]
            .as_str()
            .map(str::to_owned),
        changed_at: service
            .annotations()
            .get(labels::ROUTING_CHANGED_AT)
            .and_then(|at| at.parse().ok()),
    }
}

/// The CPU each pod of `lcs` uses, from the resource metrics API, while its autoscaling weighs
/// CPU beside sessions: the last reading while it is younger than [`CPU_READ_EVERY`].
async fn cpu_used(ctx: &Context, lcs: &LongConnService) -> Option<CpuUsed> {
    let key = ObjectRef::from_obj(lcs);
    let both =
        lcs.spec.autoscaling.as_ref().is_some_and(|a| {
            a.target_sessions_per_pod.is_some() && a.target_cpu_utilization.is_some()
        });
    if !both {
        ctx.cpu_store(key, None);
        return None;
    }
    if let Some(read) = ctx.cpu_read(&key, CPU_READ_EVERY) {
        return Some(read);
    }
    let resource = ApiResource {
        group: cpu::METRICS_GROUP.to_owned(),
        version: cpu::METRICS_VERSION.to_owned(),
        api_version: format!("{}/{}", cpu::METRICS_GROUP, cpu::METRICS_VERSION),
        kind: "PodMetrics".to_owned(),
        plural: cpu::POD_METRICS.to_owned(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &lcs.namespace().unwrap_or_default(),
        &resource,
    );
    let selector = labels::selector_string(&labels::pods(&lcs.name_any()));
    let read = match api.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => Ok(cpu::usage(&list.items)),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(format!(
            "the resource metrics API ({}) is not served: install metrics-server",
            cpu::METRICS_GROUP
        )),
        Err(e) => Err(format!(
            "reading the pods' CPU from {}: {e}",
            cpu::METRICS_GROUP
        )),
    };
    ctx.cpu_store(key, Some(read.clone()));
    Some(read)
}

fn owned(ctx: &Context, ns: &str, name: &str, apis: ServedApis) -> Owned {
    let objects = Kind::ALL
        .into_iter()
        .filter(|kind| apis.serve(*kind))
        .map(|kind| (kind, ctx.caches.owned(kind, ns, name)))
        .collect();
    Owned(objects)
}

/// The pods of `lcs`: labelled as its pods and controlled by a ReplicaSet of one of its own
/// Deployments (`deployments`: the metadata of those labelled as its own).
fn service_pods<'a>(
    ctx: &Context,
    lcs: &LongConnService,
    deployments: impl Iterator<Item = &'a ObjectMeta>,
) -> Vec<Arc<CachedPod>> {
    let uid = lcs.uid().unwrap_or_default();
    let deployments: Vec<String> = deployments
        .filter(|d| d.owner_references.iter().flatten().any(|o| o.uid == uid))
        .filter_map(|d| d.uid.clone())
        .collect();
    ctx.caches.pods(
        &lcs.namespace().unwrap_or_default(),
        &lcs.name_any(),
        &deployments,
    )
}

fn pod_facts(ctx: &Context, pod: &CachedPod, routable: &BTreeSet<String>) -> PodFacts {
    let seen = ctx.reports.get(&gateways::key_of(pod));
    let terminating = pod.meta().deletion_timestamp.is_some();
    let report = seen.as_ref().filter(|s| !s.stale).map(|s| s.report.clone());
    // A terminating pod whose gateway has exited left its final report in its termination
    // message: that is the last word, whatever was read before.
    let report = final_report(pod).filter(|_| terminating).or(report);
    PodFacts {
        name: pod.name_any(),
        revision: pod
            .labels()
            .get(labels::REVISION)
            .cloned()
            .unwrap_or_default(),
        running: pod.running_ip.is_some(),
        ready: pod.ready,
        terminating,
        deletion_cost: pod
            .annotations()
            .get(DELETION_COST)
            .and_then(|v| v.parse().ok()),
        last_known: seen
            .as_ref()
            .map(|s| i64::try_from(s.report.active).unwrap_or(i64::MAX)),
        read_at: seen.as_ref().filter(|s| !s.stale).map(|s| s.read_at),
        report,
        held: pod
            .finalizers()
            .iter()
            .any(|f| f == desired::DRAIN_REPORT_FINALIZER),
        created: pod.creation_timestamp().map(|t| t.0),
        accepting: pod.labels().get(labels::ACCEPTING).map(|v| v == "true"),
        routable: routable.contains(&pod.name_any()),
        routing_changed_at: pod
            .annotations()
            .get(labels::ROUTING_CHANGED_AT)
            .and_then(|v| v.parse().ok()),
        cpu_requested: pod.cpu_requested,
        rebalance: ctx.reports.rebalance(&gateways::key_of(pod)),
    }
}

/// The report the gateway container left in its termination message when it exited.
fn final_report(pod: &CachedPod) -> Option<DrainReport> {
    serde_json::from_str(pod.gateway_message.as_deref()?).ok()
}

fn revisions(owned: &Owned) -> Vec<ObservedRevision> {
    owned
        .of_kind(Kind::Deployment)
        .filter_map(|d| {
            let revision = d.labels().get(labels::REVISION)?.clone();
            let int = |v: &Value| v.as_i64().and_then(|n| i32::try_from(n).ok()).unwrap_or(0);
            Some(ObservedRevision {
                revision,
                replicas: int(&d.data["spec"]["replicas"]),
                current_replicas: int(&d.data["status"]["replicas"]),
                ready_replicas: int(&d.data["status"]["readyReplicas"]),
            })
        })
        .collect()
}

fn deployment_stalled(d: &DynamicObject) -> bool {
    d.data["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded")
}

async fn user_secret(ctx: &Context, ns: &str, secret_name: &str) -> Result<UserSecret, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = api
        .get_opt(secret_name)
        .await
        .map_err(|source| Error::Get {
            kind: Kind::Secret,
            namespace: ns.to_owned(),
            name: secret_name.to_owned(),
            source,
        })?;
    Ok(match secret {
        Some(s) => UserSecret::Found(Box::new(s)),
        None => UserSecret::Missing,
    })
}

/// The gateways of one LongConnService, as the poller needs them.
pub struct GatewayView {
    pub token: String,
    pub pods: Vec<GatewayPod>,
}

/// One pod's gateway: where it answers (when running), whether it is read every tick, and
/// whether its rebalance report is read too (its part of the last round is not recorded
/// finished yet).
pub struct GatewayPod {
    pub key: PodKey,
    pub admin: Option<SocketAddr>,
    pub fast: bool,
    pub rebalancing: bool,
}

/// The gateways the poller reads for `lcs`; None until its admin token exists.
pub fn gateways(ctx: &Context, lcs: &LongConnService) -> Option<GatewayView> {
    let ns = lcs.namespace()?;
    let name = lcs.name_any();
    let token = secret_value(
        &ctx.caches
            .get(Kind::Secret, &ns, &names::admin_token(&name))?,
        desired::ADMIN_TOKEN_KEY,
    )?;
    let port = desired::admin_port(lcs);
    let followed: Vec<&str> = lcs
        .status
        .as_ref()
        .and_then(|s| s.rollout.as_ref())
        .map(|r| {
            r.draining
                .iter()
                .filter(|e| e.finished_at.is_none())
                .map(|e| e.pod.as_str())
                .collect()
        })
        .unwrap_or_default();
    let deployments = ctx.caches.owned_metadata(Kind::Deployment, &ns, &name);
    let service_pods = service_pods(ctx, lcs, deployments.iter());
    // A rollout, a scale or a pod's deletion in motion: the pods to drain next, and those
    // that take the moving sessions, are chosen by their sessions, and a choice made on counts
    // up to IDLE_EVERY old can be the wrong one (a drain waits for counts read within
    // rollout::FRESH).
    let in_motion =
        lcs.status.as_ref().is_some_and(|s| {
            s.update_revision.is_some() && s.update_revision != s.current_revision
        }) || service_pods
            .iter()
            .filter(|pod| pod.meta().deletion_timestamp.is_none())
            .count()
            != usize::try_from(lcs.spec.replicas).unwrap_or(0)
            || service_pods
                .iter()
                .any(|pod| pod.meta().deletion_timestamp.is_some());
    let pending = ctx.routing_pending(&ObjectRef::from_obj(lcs));
    let rebalancing: Vec<&str> = lcs
        .status
        .as_ref()
        .and_then(|s| s.rebalance.as_ref())
        .map(|r| {
            r.pods
                .iter()
                .filter(|p| p.outcome.is_none())
                .map(|p| p.pod.as_str())
                .collect()
        })
        .unwrap_or_default();
    let pods = service_pods
        .iter()
        .map(|pod| {
            let rebalancing = rebalancing.contains(&pod.name_any().as_str());
            GatewayPod {
                key: gateways::key_of(pod),
                admin: pod.running_ip.map(|ip| SocketAddr::new(ip, port)),
                // While a drain is under way, or a rollout, a scale or a round of rebalancing
                // is, every gateway is read each tick: where the moving sessions go next
                // depends on how many each receiver holds.
                fast: pod.meta().deletion_timestamp.is_some()
                    || !followed.is_empty()
                    || in_motion
                    || pending
                    || rebalancing,
                rebalancing,
            }
        })
        .collect();
    Some(GatewayView { token, pods })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use longconn_drain_api::DrainState;

    /// A pod whose gateway container ended with `message` in its termination message.
    fn ended(container: &str, message: &str) -> CachedPod {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "chat-a-0"},
            "status": {"initContainerStatuses": [{
                "name": container, "image": "gateway", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "message": message}}
            }]}
        }))
        .expect("pod");
        CachedPod::from(pod)
    }

    #[test]
    fn the_final_report_is_read_from_the_gateway_s_termination_message_only() {
        let report = r#"{"state":"Drained","sessionsAtStart":12,"active":0,"migrated":11,
            "closedByClient":1,"dropped":0,"refused":0,"restarts":0,"lostToRestarts":0}"#;
        let read = final_report(&ended(desired::GATEWAY_CONTAINER, report)).expect("read");
        assert_eq!(
            (read.state, read.migrated, read.closed_by_client),
            (DrainState::Drained, 11, 1)
        );
        // Another container's message, or one that is not a report, is no report.
        assert_eq!(final_report(&ended("app", report)), None);
        assert_eq!(
            final_report(&ended(desired::GATEWAY_CONTAINER, "exit 137")),
            None
        );
        assert_eq!(final_report(&CachedPod::default()), None);
    }
}
