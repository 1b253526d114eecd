//! The controller's caches: every object the operator owns, the pods of every LongConnService
//! and the ReplicaSets that own them, each kept current by one watch.
//!
//! A reconcile reads only from here: it lists nothing and GETs nothing from the API server.
//! The watches that fill the caches are also the controller's triggers ([`Writers::spawn`]
//! sends what each change concerns), so what wakes a reconcile is already in the cache.
//! `managedFields` are dropped on the way in, and so are pods' specs but for each container's
//! CPU request (what the CPU autoscaling weighs a pod's use against).
//!
//! Owned objects are kept compact ([`Compact`]): as JSON text, with only what they are looked
//! up by beside it. A `serde_json::Value` takes eight to ten times the room of its text (every
//! map is a B-tree with its own nodes), and a thousand LongConnServices own seven thousand
//! objects; a reconcile expands only the few of its own service.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::core::DynamicResourceScope;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::crd::LongConnService;
use crate::desired::ServedApis;
use crate::kinds::Kind;
use crate::labels::{self, MANAGED_BY, MANAGER};

/// Read side of the caches, held by the reconciler.
#[derive(Clone)]
pub struct Caches {
    owned: BTreeMap<Kind, Store<Compact>>,
    pods: Store<Pod>,
    replica_sets: Store<PartialObjectMeta<ReplicaSet>>,
    endpoint_slices: Store<EndpointSlice>,
}

/// Write side of the caches: fed by the watches (or, in tests, by hand).
pub struct Writers {
    owned: BTreeMap<Kind, Writer<Compact>>,
    pods: Writer<Pod>,
    replica_sets: Writer<PartialObjectMeta<ReplicaSet>>,
    endpoint_slices: Writer<EndpointSlice>,
}

/// Empty caches and the writers that fill them.
pub fn new() -> (Caches, Writers) {
    let owned: BTreeMap<Kind, Writer<Compact>> = Kind::ALL
        .into_iter()
        .map(|kind| (kind, Writer::new(kind.api_resource())))
        .collect();
    let (pods, pod_writer) = reflector::store();
    let (replica_sets, replica_set_writer) = reflector::store();
    let (endpoint_slices, endpoint_slice_writer) = reflector::store();
    let caches = Caches {
        owned: owned.iter().map(|(k, w)| (*k, w.as_reader())).collect(),
        pods,
        replica_sets,
        endpoint_slices,
    };
    let writers = Writers {
        owned,
        pods: pod_writer,
        replica_sets: replica_set_writer,
        endpoint_slices: endpoint_slice_writer,
    };
    (caches, writers)
}

/// The selector of everything the operator created (pods carry the labels of their template).
/// Lists come in pages of [`PAGE`]: each page is read whole before it is made compact.
fn managed() -> watcher::Config {
    watcher::Config::default()
        .labels(&format!("{MANAGED_BY}={MANAGER}"))
        .page_size(PAGE)
}

/// The label the EndpointSlice controller puts on each slice: the Service it serves.
const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Objects per page of a watch's list.
const PAGE: u32 = 100;

/// An owned object as the cache keeps it: the whole object as JSON text, and beside it only the
/// metadata the caches look objects up by (name, namespace, uid, resourceVersion, owner
/// references and the instance label).
#[derive(Clone, Debug)]
pub struct Compact {
    metadata: ObjectMeta,
    json: Box<str>,
}

impl Compact {
    /// The object whole again, for a reconcile to read.
    pub fn expand(&self) -> DynamicObject {
        let mut object = serde_json::from_str::<DynamicObject>(&self.json).unwrap_or_else(|e| {
            // Written by `From<DynamicObject>` just before: cannot happen.
            warn!(error = %e, "a cached object does not read back");
            DynamicObject {
                types: None,
                metadata: ObjectMeta::default(),
                data: Value::Null,
            }
        });
        let kept = self.metadata.clone();
        let meta = &mut object.metadata;
        meta.name = kept.name;
        meta.namespace = kept.namespace;
        meta.uid = kept.uid;
        meta.resource_version = kept.resource_version;
        meta.owner_references = kept.owner_references;
        if let Some(instance) = kept.labels {
            meta.labels.get_or_insert_default().extend(instance);
        }
        object
    }
}

impl From<DynamicObject> for Compact {
    /// The metadata kept beside the text is taken out of it: the text holds each part once.
    fn from(mut object: DynamicObject) -> Self {
        let meta = &mut object.metadata;
        let instance = meta
            .labels
            .as_mut()
            .and_then(|labels| labels.remove_entry(labels::INSTANCE))
            .map(|label| BTreeMap::from([label]));
        if instance.is_some() && meta.labels.as_ref().is_some_and(BTreeMap::is_empty) {
            meta.labels = None;
        }
        let metadata = ObjectMeta {
            name: meta.name.take(),
            namespace: meta.namespace.take(),
            uid: meta.uid.take(),
            resource_version: meta.resource_version.take(),
            owner_references: meta.owner_references.take(),
            labels: instance,
            ..ObjectMeta::default()
        };
        let json = serde_json::to_string(&object).unwrap_or_default();
        Compact {
            metadata,
            json: json.into_boxed_str(),
        }
    }
}

impl Resource for Compact {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::group(dt)
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::version(dt)
    }

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::kind(dt)
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::api_version(dt)
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        DynamicObject::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A watch event, its object made compact.
fn compact(event: Event<DynamicObject>) -> Event<Compact> {
    match event {
        Event::Apply(o) => Event::Apply(o.into()),
        Event::Delete(o) => Event::Delete(o.into()),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(o.into()),
        Event::InitDone => Event::InitDone,
    }
}

/// How a watch backs off after a failure: 0.8 s, doubling up to 30 s, starting over only once
/// two minutes passed since the last failure. A watch reports the start of each list before
/// the list can fail, and the stream resets its backoff on every report, so kube's own
/// backoff stays at its first step: a watch of an API the cluster does not serve would ask
/// for it about once a second.
pub struct WatchBackoff {
    next: Duration,
    failed_at: Option<tokio::time::Instant>,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(800);
    const MAX: Duration = Duration::from_secs(30);
    const STARTS_OVER_AFTER: Duration = Duration::from_secs(120);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self {
            next: Self::FIRST,
            failed_at: None,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(Self::MAX);
        self.failed_at = Some(tokio::time::Instant::now());
        Some(delay)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        if self
            .failed_at
            .is_none_or(|at| at.elapsed() >= Self::STARTS_OVER_AFTER)
        {
            *self = Self::default();
        }
    }
}

/// Where the watches send the LongConnServices whose reconcile a change should wake.
pub type Triggers = mpsc::UnboundedSender<ObjectRef<LongConnService>>;

impl Writers {
    /// Starts one task per cache, over one namespace or all: each watches its kind, reflects
    /// what it sees into the store and sends the LongConnService a change concerns to
    /// `triggers` (an owned object: its owner; a pod: the service it is labelled with;
    /// ReplicaSets only fill their cache). The watches run apart from the controller, so a
    /// busy reconcile never keeps one from being read: the API server closes a watch whose
    /// reader falls behind, and catching up then costs a relist while the cache stands still.
    /// Dropping the set stops them.
    pub fn spawn(
        self,
        client: &Client,
        namespace: Option<&str>,
        triggers: &Triggers,
        apis: &watch::Receiver<Option<ServedApis>>,
    ) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        for (kind, writer) in self.owned {
            let ar = kind.api_resource();
            let api: Api<DynamicObject> = match namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                None => Api::all_with(client.clone(), &ar),
            };
            tasks.spawn(watch_while_served(
                kind,
                api,
                writer,
                apis.clone(),
                triggers.clone(),
            ));
        }
        let pods = watcher::watcher(scoped::<Pod>(client, namespace), managed())
            .backoff(WatchBackoff::default())
            .modify(|p| {
                p.managed_fields_mut().clear();
                p.spec = p.spec.as_ref().map(crate::cpu::requests_only);
            })
            .reflect(self.pods)
            .touched_objects();
        // A pod that starts terminating (an eviction, a node drain) is followed at once,
        // before its drain report can go away with it.
        tasks.spawn(forward("Pod".to_owned(), pods, triggers.clone(), |p| {
            service_of(p.meta())
        }));
        let replica_sets = watcher::watcher(
            scoped::<PartialObjectMeta<ReplicaSet>>(client, namespace),
            managed(),
        )
        .backoff(WatchBackoff::default())
        .modify(|r| r.managed_fields_mut().clear())
        .reflect(self.replica_sets)
        .touched_objects();
        tasks.spawn(forward(
            "ReplicaSet".to_owned(),
            replica_sets,
            triggers.clone(),
            |_| None,
        ));
        // The EndpointSlice controller copies a Service's labels onto its slices, so the slices
        // of the operator's Services carry its managed-by label. Only which pods each lists as
        // ready is kept: a drain waits until its pod has left them.
        let endpoint_slices =
            watcher::watcher(scoped::<EndpointSlice>(client, namespace), managed())
                .backoff(WatchBackoff::default())
                .modify(slim_endpoint_slice)
                .reflect(self.endpoint_slices)
                .touched_objects();
        tasks.spawn(forward(
            "EndpointSlice".to_owned(),
            endpoint_slices,
            triggers.clone(),
            |s| instance_of(s.meta()),
        ));
        tasks
    }

    /// Puts an object of `kind` in the cache (tests).
    pub fn apply_owned(&mut self, kind: Kind, object: DynamicObject) {
        if let Some(writer) = self.owned.get_mut(&kind) {
            writer.apply_watcher_event(&Event::Apply(object.into()));
        }
    }

    /// Puts a pod in the cache (tests).
    pub fn apply_pod(&mut self, pod: Pod) {
        self.pods.apply_watcher_event(&Event::Apply(pod));
    }

    /// Puts an EndpointSlice in the cache (tests).
    pub fn apply_endpoint_slice(&mut self, mut slice: EndpointSlice) {
        slim_endpoint_slice(&mut slice);
        self.endpoint_slices
            .apply_watcher_event(&Event::Apply(slice));
    }

    /// Puts a ReplicaSet in the cache (tests).
    pub fn apply_replica_set(&mut self, replica_set: PartialObjectMeta<ReplicaSet>) {
        self.replica_sets
            .apply_watcher_event(&Event::Apply(replica_set));
    }

    /// Empties every cache and marks it as listed (tests: the start of a fresh view).
    pub fn reset(&mut self) {
        for writer in self.owned.values_mut() {
            writer.apply_watcher_event(&Event::Init);
            writer.apply_watcher_event(&Event::InitDone);
        }
        self.pods.apply_watcher_event(&Event::Init);
        self.pods.apply_watcher_event(&Event::InitDone);
        self.replica_sets.apply_watcher_event(&Event::Init);
        self.replica_sets.apply_watcher_event(&Event::InitDone);
        self.endpoint_slices.apply_watcher_event(&Event::Init);
        self.endpoint_slices.apply_watcher_event(&Event::InitDone);
    }
}

/// Watches the owned objects of `kind` into `writer` while the cluster serves their API (as
/// discovery last said; always, for the built-in kinds), sending their owners to `triggers`.
/// A watch of an API that is not served would only fail again and again; it starts once
/// discovery finds the API, and stops if it goes away.
async fn watch_while_served(
    kind: Kind,
    api: Api<DynamicObject>,
    mut writer: Writer<Compact>,
    mut apis: watch::Receiver<Option<ServedApis>>,
    triggers: Triggers,
) {
    let served = move |apis: &Option<ServedApis>, yes: bool| {
        apis.is_some_and(|apis| apis.serve(kind) == yes)
    };
    while !triggers.is_closed() {
        if apis.wait_for(|a| served(a, true)).await.is_err() {
            return;
        }
        let mut unserved = apis.clone();
        let gone = async move {
            let _ = unserved.wait_for(|a| served(a, false)).await;
        };
        let objects = watcher::watcher(api.clone(), managed())
            .backoff(WatchBackoff::default())
            .modify(|o| o.managed_fields_mut().clear())
            .map_ok(|event| {
                let event = compact(event);
                writer.apply_watcher_event(&event);
                event
            })
            .touched_objects()
            .take_until(gone);
        forward(format!("{kind:?}"), objects, triggers.clone(), |o| {
            owner_of(o.meta())
        })
        .await;
    }
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Reads `objects` (a watch's touched or applied objects) to its end, sending the
/// LongConnService each one concerns (`concerns`) to `triggers`; stops when no one receives
/// them any more.
pub async fn forward<K>(
    kind: String,
    objects: impl Stream<Item = Result<K, watcher::Error>>,
    triggers: Triggers,
    concerns: impl Fn(&K) -> Option<ObjectRef<LongConnService>>,
) {
    let mut objects = std::pin::pin!(objects);
    while let Some(object) = objects.next().await {
        match object {
            Ok(object) => {
                if let Some(service) = concerns(&object)
                    && triggers.send(service).is_err()
                {
                    return;
                }
            }
            Err(error) => log_watch_error(&kind, &error),
        }
    }
}

/// Logs a failed watch request (the watcher retries with backoff). The watch of an optional
/// API the cluster does not serve (ServiceMonitor, cert-manager's Certificate) fails with 404
/// on every retry until it is installed, which the MonitoringReady and CertificateReady
/// conditions already say: that one is not a warning.
pub fn log_watch_error(kind: &str, error: &watcher::Error) {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 404 => {
            debug!(kind, %error, "an optional API is not served; its watch retries with backoff");
        }
        _ => warn!(kind, %error, "watch failed; retrying with backoff"),
    }
}

/// The LongConnService that controls an owned object, from its owner references.
pub fn owner_of(meta: &ObjectMeta) -> Option<ObjectRef<LongConnService>> {
    let owner = controller_of(meta)?;
    let namespace = meta.namespace.as_deref()?;
    (owner.kind == LongConnService::kind(&())
        && owner.api_version == LongConnService::api_version(&()))
    .then(|| ObjectRef::new(&owner.name).within(namespace))
}

/// Keeps of an EndpointSlice only its metadata's names and labels and, per endpoint, the pod it
/// points to and whether it is ready.
fn slim_endpoint_slice(slice: &mut EndpointSlice) {
    slice.managed_fields_mut().clear();
    slice.metadata.annotations = None;
    slice.ports = None;
    for endpoint in slice.endpoints.iter_mut().flatten() {
        endpoint.addresses.clear();
        endpoint.hints = None;
        endpoint.hostname = None;
        endpoint.node_name = None;
        endpoint.zone = None;
        endpoint.deprecated_topology = None;
        if let Some(conditions) = endpoint.conditions.as_mut() {
            conditions.serving = None;
            conditions.terminating = None;
        }
        if let Some(target) = endpoint.target_ref.as_mut() {
            *target = k8s_openapi::api::core::v1::ObjectReference {
                name: target.name.take(),
                ..Default::default()
            };
        }
    }
}

/// The LongConnService an object is labelled as created for (the instance label).
fn instance_of(meta: &ObjectMeta) -> Option<ObjectRef<LongConnService>> {
    let name = meta.labels.as_ref()?.get(labels::INSTANCE)?;
    Some(ObjectRef::new(name).within(meta.namespace.as_deref()?))
}

/// The LongConnService a pod is labelled as belonging to.
fn service_of(meta: &ObjectMeta) -> Option<ObjectRef<LongConnService>> {
    let service = meta.labels.as_ref()?.get(labels::SERVICE)?;
    Some(ObjectRef::new(service).within(meta.namespace.as_deref()?))
}

/// Whether `store` holds its first list, without waiting. Only for stores no task awaits: a
/// store's readiness remembers one waker, and this check would replace a waiter's.
fn is_ready<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

impl Caches {
    /// Whether every cache the reconcile needs has been listed once. The caches of optional
    /// APIs count only when the cluster serves them.
    pub fn ready(&self, apis: ServedApis) -> bool {
        let owned = self
            .owned
            .iter()
            .all(|(kind, store)| !apis.serve(*kind) || is_ready(store));
        owned
            && is_ready(&self.pods)
            && is_ready(&self.replica_sets)
            && is_ready(&self.endpoint_slices)
    }

    /// The pods the EndpointSlices of Service `service` in `namespace` list as ready: where
    /// the Service sends new connections (a missing `ready` means ready, as the API says).
    pub fn routable(&self, namespace: &str, service: &str) -> BTreeSet<String> {
        self.endpoint_slices
            .state_filter(|s| {
                s.metadata.namespace.as_deref() == Some(namespace)
                    && s.labels().get(SERVICE_NAME).map(String::as_str) == Some(service)
            })
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .filter_map(|e| e.target_ref.as_ref()?.name.clone())
            .collect()
    }

    /// The objects of `kind` in `namespace` labelled as created for the LongConnService `name`.
    pub fn owned(&self, kind: Kind, namespace: &str, name: &str) -> Vec<Arc<DynamicObject>> {
        self.owned_compact(kind, namespace, name)
            .iter()
            .map(|o| Arc::new(o.expand()))
            .collect()
    }

    /// What [`Compact`] keeps of the metadata of the objects [`Caches::owned`] returns (name,
    /// namespace, uid, resourceVersion, owner references), without expanding them.
    pub fn owned_metadata(&self, kind: Kind, namespace: &str, name: &str) -> Vec<ObjectMeta> {
        self.owned_compact(kind, namespace, name)
            .iter()
            .map(|o| o.metadata.clone())
            .collect()
    }

    fn owned_compact(&self, kind: Kind, namespace: &str, name: &str) -> Vec<Arc<Compact>> {
        let Some(store) = self.owned.get(&kind) else {
            return Vec::new();
        };
        store.state_filter(|o| {
            o.metadata.namespace.as_deref() == Some(namespace)
                && o.labels().get(labels::INSTANCE).map(String::as_str) == Some(name)
        })
    }

    /// The object of `kind` called `name` in `namespace`, if the operator's watch holds it
    /// (that is: it carries the managed-by label).
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<DynamicObject> {
        self.get_compact(kind, namespace, name).map(|o| o.expand())
    }

    /// The resourceVersion of [`Caches::get`]'s object, without expanding it.
    pub fn resource_version(&self, kind: Kind, namespace: &str, name: &str) -> Option<String> {
        self.get_compact(kind, namespace, name)?
            .metadata
            .resource_version
            .clone()
    }

    fn get_compact(&self, kind: Kind, namespace: &str, name: &str) -> Option<Arc<Compact>> {
        let store = self.owned.get(&kind)?;
        store.get(&ObjectRef::new_with(name, kind.api_resource()).within(namespace))
    }

    /// The pods of the LongConnService `name` whose controller is a ReplicaSet owned by one of
    /// `deployments` (uids): pods anyone else created with the same labels are not its pods,
    /// and never see its admin token.
    pub fn pods(&self, namespace: &str, name: &str, deployments: &[String]) -> Vec<Arc<Pod>> {
        self.pods.state_filter(|pod| {
            pod.metadata.namespace.as_deref() == Some(namespace)
                && pod.labels().get(labels::SERVICE).map(String::as_str) == Some(name)
                && self.controlled_by(pod, namespace, deployments)
        })
    }

    /// Terminating pods that still carry the drain-report finalizer, with its place among
    /// their finalizers.
    pub fn held_pods(&self) -> Vec<(Arc<Pod>, usize)> {
        self.pods
            .state()
            .into_iter()
            .filter(|p| p.meta().deletion_timestamp.is_some())
            .filter_map(|p| {
                let at = p
                    .finalizers()
                    .iter()
                    .position(|f| f == crate::desired::DRAIN_REPORT_FINALIZER)?;
                Some((p, at))
            })
            .collect()
    }

    fn controlled_by(&self, pod: &Pod, namespace: &str, deployments: &[String]) -> bool {
        let Some(owner) = controller_of(pod.meta()) else {
            return false;
        };
        if owner.kind != "ReplicaSet" {
            return false;
        }
        let key = ObjectRef::new(&owner.name).within(namespace);
        self.replica_sets.get(&key).is_some_and(|rs| {
            rs.metadata.uid.as_deref() == Some(owner.uid.as_str())
                && controller_of(&rs.metadata)
                    .is_some_and(|d| d.kind == "Deployment" && deployments.contains(&d.uid))
        })
    }
}

fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_deref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(kind: &str, name: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            controller: Some(true),
            ..OwnerReference::default()
        }
    }

    fn pod(name: &str, owner_ref: Option<OwnerReference>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("default".to_owned()),
                labels: Some(labels::pods("chat")),
                owner_references: owner_ref.map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn a_compact_object_expands_to_the_object_it_was_made_from() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "chat-abc", "namespace": "default", "resourceVersion": "7",
                         "uid": "u-1", "labels": {"app.kubernetes.io/instance": "chat", "x": "y"},
                         "ownerReferences": [{"apiVersion": "longconn.dev/v1alpha1",
                             "kind": "LongConnService", "name": "chat", "uid": "u-0"}]},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "app"}]}}},
            "status": {"readyReplicas": 2},
        }))
        .expect("object");
        let compact = Compact::from(object.clone());
        assert_eq!(compact.expand(), object);
        assert!(
            !compact.json.contains("u-0") && !compact.json.contains("chat-abc"),
            "each part once: {}",
            compact.json
        );
        let only_instance = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "labels": {"app.kubernetes.io/instance": "chat"}},
        });
        let unlabelled =
            serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}});
        for object in [only_instance, unlabelled] {
            let object: DynamicObject = serde_json::from_value(object).expect("object");
            assert_eq!(Compact::from(object.clone()).expand(), object);
        }
        assert_eq!(compact.metadata.name, object.metadata.name);
        assert_eq!(compact.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(
            compact.labels().get(labels::INSTANCE).map(String::as_str),
            Some("chat"),
            "what the caches look objects up by is kept beside the text"
        );
    }

    #[test]
    fn only_pods_of_the_service_s_own_replica_sets_are_its_pods() {
        let (caches, mut writers) = new();
        writers.reset();
        writers.apply_replica_set(PartialObjectMeta::<ReplicaSet> {
            metadata: ObjectMeta {
                name: Some("chat-abc-123".to_owned()),
                namespace: Some("default".to_owned()),
                uid: Some("rs-uid".to_owned()),
                owner_references: Some(vec![owner("Deployment", "chat-abc", "deploy-uid")]),
                ..ObjectMeta::default()
            },
            ..PartialObjectMeta::default()
        });
        writers.apply_pod(pod(
            "ours",
            Some(owner("ReplicaSet", "chat-abc-123", "rs-uid")),
        ));
        writers.apply_pod(pod("labelled-only", None));
        writers.apply_pod(pod(
            "other-owner",
            Some(owner("ReplicaSet", "chat-abc-123", "forged-uid")),
        ));
        let names: Vec<String> = caches
            .pods("default", "chat", &["deploy-uid".to_owned()])
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(names, ["ours"]);
        assert!(
            caches
                .pods("default", "chat", &["another-deployment".to_owned()])
                .is_empty()
        );
    }

    #[test]
    fn an_owned_object_is_found_by_kind_namespace_and_name() {
        let (caches, mut writers) = new();
        writers.reset();
        let mut secret =
            DynamicObject::new("chat-admin-token", &Kind::Secret.api_resource()).within("default");
        secret.metadata.labels = Some(labels::pods("chat"));
        writers.apply_owned(Kind::Secret, secret);
        assert!(
            caches
                .get(Kind::Secret, "default", "chat-admin-token")
                .is_some()
        );
        assert!(
            caches
                .get(Kind::Secret, "other", "chat-admin-token")
                .is_none()
        );
        assert!(
            caches
                .get(Kind::Deployment, "default", "chat-admin-token")
                .is_none()
        );
    }

    fn service_ref() -> OwnerReference {
        OwnerReference {
            api_version: LongConnService::api_version(&()).into_owned(),
            kind: LongConnService::kind(&()).into_owned(),
            name: "chat".to_owned(),
            uid: "lcs-uid".to_owned(),
            controller: Some(true),
            ..OwnerReference::default()
        }
    }

    fn meta(owner_ref: Option<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            name: Some("chat-tls".to_owned()),
            namespace: Some("default".to_owned()),
            owner_references: owner_ref.map(|o| vec![o]),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn an_owned_object_concerns_the_service_that_controls_it() {
        let chat = ObjectRef::new("chat").within("default");
        assert_eq!(owner_of(&meta(Some(service_ref()))), Some(chat));
        let not_controller = OwnerReference {
            controller: None,
            ..service_ref()
        };
        assert_eq!(owner_of(&meta(Some(not_controller))), None);
        let other_kind = OwnerReference {
            kind: "ConfigMap".to_owned(),
            ..service_ref()
        };
        assert_eq!(owner_of(&meta(Some(other_kind))), None);
        assert_eq!(owner_of(&meta(None)), None);
    }

    #[tokio::test]
    async fn a_watch_sends_each_touched_object_s_service_and_goes_on_past_errors() {
        let (triggers, mut woken) = mpsc::unbounded_channel();
        let labelled = pod("chat-abc-123-x", None);
        let mut unlabelled = pod("other", None);
        unlabelled.metadata.labels = None;
        let touched = futures::stream::iter([
            Ok(labelled.clone()),
            Err(watcher::Error::NoResourceVersion),
            Ok(unlabelled),
            Ok(labelled),
        ]);
        forward("Pod".to_owned(), touched, triggers, |p: &Pod| {
            service_of(p.meta())
        })
        .await;
        let chat = ObjectRef::new("chat").within("default");
        assert_eq!(woken.recv().await, Some(chat.clone()));
        assert_eq!(woken.recv().await, Some(chat));
        assert_eq!(woken.recv().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_that_keeps_failing_backs_off_to_thirty_seconds_despite_resets() {
        let mut backoff = WatchBackoff::default();
        let mut delays = Vec::new();
        for _ in 0..8 {
            let delay = backoff.next().expect("a delay");
            delays.push(delay.as_millis());
            tokio::time::advance(delay).await;
            // The watch reports the start of its next list before that list fails.
            backoff.reset();
        }
        assert_eq!(delays, [800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_that_ran_two_minutes_without_failing_starts_over() {
        let mut backoff = WatchBackoff::default();
        backoff.next();
        backoff.next();
        tokio::time::advance(Duration::from_secs(120)).await;
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(800)));
    }
}
