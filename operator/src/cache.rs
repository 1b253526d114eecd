//! The controller's caches: every object the operator owns, the pods of every LongConnService
//! and the ReplicaSets that own them, each kept current by one watch.
//!
//! A reconcile reads only from here: it lists nothing and GETs nothing from the API server.
//! The watches that fill the caches are also the controller's triggers ([`Writers::spawn`]
//! sends what each change concerns), so what wakes a reconcile is already in the cache.
//! `managedFields` are dropped on the way in. A pod is kept as a [`CachedPod`]: the few facts a
//! reconcile reads of it, not the whole object.
//!
//! Owned objects are kept compact ([`Compact`]): as JSON text compressed against the first
//! object of their kind ([`Packer`]), with only what they are looked up by beside it. A
//! `serde_json::Value` takes eight to ten times the room of its text (every map is a B-tree with
//! its own nodes), and a thousand LongConnServices own eleven thousand objects; a reconcile
//! expands only the few of its own service.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DynamicObject, PartialObjectMeta};
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
    pods: Store<CachedPod>,
    replica_sets: Store<PartialObjectMeta<ReplicaSet>>,
    endpoint_slices: Store<EndpointSlice>,
}

/// Write side of the caches: fed by the watches (or, in tests, by hand).
pub struct Writers {
    owned: BTreeMap<Kind, (Writer<Compact>, Packer)>,
    pods: Writer<CachedPod>,
    replica_sets: Writer<PartialObjectMeta<ReplicaSet>>,
    endpoint_slices: Writer<EndpointSlice>,
}

/// Empty caches and the writers that fill them.
pub fn new() -> (Caches, Writers) {
    let owned: BTreeMap<Kind, (Writer<Compact>, Packer)> = Kind::ALL
        .into_iter()
        .map(|kind| (kind, (Writer::new(kind), Packer::default())))
        .collect();
    let (pods, pod_writer) = reflector::store();
    let (replica_sets, replica_set_writer) = reflector::store();
    let (endpoint_slices, endpoint_slice_writer) = reflector::store();
    let caches = Caches {
        owned: owned
            .iter()
            .map(|(k, (w, _))| (*k, w.as_reader()))
            .collect(),
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

/// An owned object as the cache keeps it: the metadata the caches look objects up by (name,
/// namespace, uid, resourceVersion, owner references) and its instance label, and the rest of
/// the object as JSON text in an LZ4 block compressed against its kind's dictionary
/// ([`Packer`]).
#[derive(Clone, Debug)]
pub struct Compact {
    metadata: ObjectMeta,
    instance: Option<Box<str>>,
    body: Box<[u8]>,
    dictionary: Arc<[u8]>,
}

impl Compact {
    /// The object whole again, for a reconcile to read.
    pub fn expand(&self) -> DynamicObject {
        let mut object =
            lz4_flex::block::decompress_size_prepended_with_dict(&self.body, &self.dictionary)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    serde_json::from_slice::<DynamicObject>(&text).map_err(|e| e.to_string())
                })
                .unwrap_or_else(|e| {
                    // Written by `Packer::pack` just before: cannot happen.
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
        if let Some(instance) = &self.instance {
            meta.labels
                .get_or_insert_default()
                .insert(labels::INSTANCE.to_owned(), instance.to_string());
        }
        object
    }

    /// The LongConnService the object was created for, from its instance label.
    pub fn instance(&self) -> Option<&str> {
        self.instance.as_deref()
    }
}

/// Makes the objects of one kind compact. The first object it packs becomes the kind's
/// dictionary: the operator renders every object of a kind from one template, so the next ones
/// differ from it mostly in names, uids, hashes and status, and an LZ4 block that refers back
/// into it holds little more than those (key material, which is random, stays as long as it is).
#[derive(Debug, Default)]
pub struct Packer {
    dictionary: Option<Arc<[u8]>>,
}

impl Packer {
    /// `object` made compact. The metadata kept beside the text is taken out of it: the text
    /// holds each part once.
    pub fn pack(&mut self, mut object: DynamicObject) -> Compact {
        let meta = &mut object.metadata;
        let instance = meta
            .labels
            .as_mut()
            .and_then(|labels| labels.remove(labels::INSTANCE))
            .map(String::into_boxed_str);
        if instance.is_some() && meta.labels.as_ref().is_some_and(BTreeMap::is_empty) {
            meta.labels = None;
        }
        let metadata = ObjectMeta {
            name: meta.name.take(),
            namespace: meta.namespace.take(),
            uid: meta.uid.take(),
            resource_version: meta.resource_version.take(),
            owner_references: meta.owner_references.take(),
            ..ObjectMeta::default()
        };
        let text = serde_json::to_vec(&object).unwrap_or_default();
        let dictionary = self
            .dictionary
            .get_or_insert_with(|| Arc::from(text.as_slice()))
            .clone();
        Compact {
            metadata,
            instance,
            body: lz4_flex::block::compress_prepend_size_with_dict(&text, &dictionary)
                .into_boxed_slice(),
            dictionary,
        }
    }

    /// A watch event, its object made compact.
    fn event(&mut self, event: Event<DynamicObject>) -> Event<Compact> {
        map_event(event, |o| self.pack(o))
    }
}

/// A watch event with its object turned into what a cache keeps of it.
fn map_event<A, B>(event: Event<A>, mut keep: impl FnMut(A) -> B) -> Event<B> {
    match event {
        Event::Apply(o) => Event::Apply(keep(o)),
        Event::Delete(o) => Event::Delete(keep(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(keep(o)),
        Event::InitDone => Event::InitDone,
    }
}

/// A compact object's type is its [`Kind`]: one byte in each of the store's keys, where an
/// `ApiResource` would be five strings.
impl Resource for Compact {
    type DynamicType = Kind;
    type Scope = DynamicResourceScope;

    fn group(kind: &Kind) -> Cow<'_, str> {
        Cow::Borrowed(kind.names().group)
    }

    fn version(kind: &Kind) -> Cow<'_, str> {
        Cow::Borrowed(kind.names().version)
    }

    fn kind(kind: &Kind) -> Cow<'_, str> {
        Cow::Borrowed(kind.names().kind)
    }

    fn api_version(kind: &Kind) -> Cow<'_, str> {
        Cow::Borrowed(kind.names().api_version)
    }

    fn plural(kind: &Kind) -> Cow<'_, str> {
        Cow::Borrowed(kind.names().plural)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
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
        for (kind, (writer, packer)) in self.owned {
            let ar = kind.api_resource();
            let api: Api<DynamicObject> = match namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                None => Api::all_with(client.clone(), &ar),
            };
            tasks.spawn(watch_while_served(
                kind,
                api,
                writer,
                packer,
                apis.clone(),
                triggers.clone(),
            ));
        }
        let pods = watcher::watcher(scoped::<Pod>(client, namespace), managed())
            .backoff(WatchBackoff::default())
            .map_ok(|event| map_event(event, CachedPod::from))
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
        .modify(slim_replica_set)
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
        if let Some((writer, packer)) = self.owned.get_mut(&kind) {
            writer.apply_watcher_event(&Event::Apply(packer.pack(object)));
        }
    }

    /// Puts a pod in the cache (tests).
    pub fn apply_pod(&mut self, pod: Pod) {
        self.pods
            .apply_watcher_event(&Event::Apply(CachedPod::from(pod)));
    }

    /// Puts an EndpointSlice in the cache (tests).
    pub fn apply_endpoint_slice(&mut self, mut slice: EndpointSlice) {
        slim_endpoint_slice(&mut slice);
        self.endpoint_slices
            .apply_watcher_event(&Event::Apply(slice));
    }

    /// Puts a ReplicaSet in the cache (tests).
    pub fn apply_replica_set(&mut self, mut replica_set: PartialObjectMeta<ReplicaSet>) {
        slim_replica_set(&mut replica_set);
        self.replica_sets
            .apply_watcher_event(&Event::Apply(replica_set));
    }

    /// Empties every cache and marks it as listed (tests: the start of a fresh view).
    pub fn reset(&mut self) {
        for (writer, _) in self.owned.values_mut() {
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
    mut packer: Packer,
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
                let event = packer.event(event);
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

/// Keeps of a ReplicaSet's metadata what tells whose pods are whose: its name, namespace, uid
/// and owner references.
fn slim_replica_set(replica_set: &mut PartialObjectMeta<ReplicaSet>) {
    replica_set.metadata = ObjectMeta {
        name: replica_set.metadata.name.take(),
        namespace: replica_set.metadata.namespace.take(),
        uid: replica_set.metadata.uid.take(),
        resource_version: replica_set.metadata.resource_version.take(),
        owner_references: replica_set.metadata.owner_references.take(),
        ..ObjectMeta::default()
    };
}

/// The labels of an EndpointSlice the operator reads: the Service it serves and the
/// LongConnService that Service was created for.
const SLICE_LABELS: [&str; 2] = [SERVICE_NAME, labels::INSTANCE];

/// Keeps of an EndpointSlice only its metadata's names and the labels it is found by and, per
/// endpoint, the pod it points to and whether it is ready.
fn slim_endpoint_slice(slice: &mut EndpointSlice) {
    slice.managed_fields_mut().clear();
    slice.metadata.annotations = None;
    only(&mut slice.metadata.labels, &SLICE_LABELS);
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

/// The labels of a pod the operator reads: its service, revision and whether it accepts new
/// sessions.
const POD_LABELS: [&str; 3] = [labels::SERVICE, labels::REVISION, labels::ACCEPTING];

/// The annotations of a pod the operator reads: its deletion cost and when its routing changed.
const POD_ANNOTATIONS: [&str; 2] = [crate::rollout::DELETION_COST, labels::ROUTING_CHANGED_AT];

/// A pod as the cache keeps it: what the reconciler reads of it ([`crate::observe`]) and
/// nothing else. A parsed `Pod` is 2,416 bytes before any of its strings and each `Container`
/// it holds 2,144 (k8s-openapi 0.29), so a pod emptied but for its app's and its gateway's CPU
/// requests still took some 7 KB; this is 416 bytes before its strings.
#[derive(Clone, Debug, Default)]
pub struct CachedPod {
    /// Name, namespace, uid, resourceVersion, creation and deletion times, finalizers, owner
    /// references, and only the labels of [`POD_LABELS`] and annotations of
    /// [`POD_ANNOTATIONS`].
    metadata: ObjectMeta,
    /// Its Ready condition is True.
    pub ready: bool,
    /// Its IP while it runs (phase Running): where its gateway answers. None before it runs,
    /// and once it has ended.
    pub running_ip: Option<IpAddr>,
    /// What its containers and sidecars request of CPU, in millicores ([`crate::cpu::requested`]).
    pub cpu_requested: Option<f64>,
    /// The gateway container's termination message, once it exited: its final drain report.
    pub gateway_message: Option<Box<str>>,
}

impl From<Pod> for CachedPod {
    fn from(pod: Pod) -> Self {
        let mut meta = pod.metadata;
        only(&mut meta.labels, &POD_LABELS);
        only(&mut meta.annotations, &POD_ANNOTATIONS);
        let metadata = ObjectMeta {
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            resource_version: meta.resource_version,
            creation_timestamp: meta.creation_timestamp,
            deletion_timestamp: meta.deletion_timestamp,
            finalizers: meta.finalizers,
            owner_references: meta.owner_references,
            labels: meta.labels,
            annotations: meta.annotations,
            ..ObjectMeta::default()
        };
        let status = pod.status.unwrap_or_default();
        let gateway_message = status
            .init_container_statuses
            .into_iter()
            .flatten()
            .find(|c| c.name == crate::desired::GATEWAY_CONTAINER)
            .and_then(|c| c.state?.terminated?.message)
            .map(String::into_boxed_str);
        let running = status.phase.as_deref() == Some("Running");
        Self {
            metadata,
            ready: status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            running_ip: status
                .pod_ip
                .filter(|_| running)
                .and_then(|ip| ip.parse().ok()),
            cpu_requested: pod.spec.as_ref().and_then(crate::cpu::requested),
            gateway_message,
        }
    }
}

impl Resource for CachedPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn group(_: &()) -> Cow<'_, str> {
        Pod::group(&())
    }

    fn version(_: &()) -> Cow<'_, str> {
        Pod::version(&())
    }

    fn kind(_: &()) -> Cow<'_, str> {
        Pod::kind(&())
    }

    fn api_version(_: &()) -> Cow<'_, str> {
        Pod::api_version(&())
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Pod::plural(&())
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Keeps of `map` (labels, annotations) only the entries of `keys`; none when none is left.
fn only(map: &mut Option<BTreeMap<String, String>>, keys: &[&str]) {
    if let Some(entries) = map.as_mut() {
        entries.retain(|key, _| keys.contains(&key.as_str()));
        if entries.is_empty() {
            *map = None;
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
            o.metadata.namespace.as_deref() == Some(namespace) && o.instance() == Some(name)
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
        store.get(&ObjectRef::new_with(name, kind).within(namespace))
    }

    /// The pods of the LongConnService `name` whose controller is a ReplicaSet owned by one of
    /// `deployments` (uids): pods anyone else created with the same labels are not its pods,
    /// and never see its admin token.
    pub fn pods(&self, namespace: &str, name: &str, deployments: &[String]) -> Vec<Arc<CachedPod>> {
        self.pods.state_filter(|pod| {
            pod.metadata.namespace.as_deref() == Some(namespace)
                && pod.labels().get(labels::SERVICE).map(String::as_str) == Some(name)
                && self.controlled_by(pod, namespace, deployments)
        })
    }

    /// Terminating pods that still carry the drain-report finalizer, with its place among
    /// their finalizers.
    pub fn held_pods(&self) -> Vec<(Arc<CachedPod>, usize)> {
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

    fn controlled_by(&self, pod: &CachedPod, namespace: &str, deployments: &[String]) -> bool {
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
        let mut packer = Packer::default();
        let compact = packer.pack(object.clone());
        assert_eq!(compact.expand(), object);
        let text = |c: &Compact| {
            let text = lz4_flex::block::decompress_size_prepended_with_dict(&c.body, &c.dictionary)
                .expect("decompress");
            String::from_utf8(text).expect("utf-8")
        };
        assert!(
            !text(&compact).contains("u-0") && !text(&compact).contains("chat-abc"),
            "each part once: {}",
            text(&compact)
        );
        let only_instance = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "labels": {"app.kubernetes.io/instance": "chat"}},
        });
        let unlabelled =
            serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}});
        for object in [only_instance, unlabelled] {
            let object: DynamicObject = serde_json::from_value(object).expect("object");
            assert_eq!(Packer::default().pack(object.clone()).expand(), object);
        }
        assert_eq!(compact.metadata.name, object.metadata.name);
        assert_eq!(compact.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(
            compact.instance(),
            Some("chat"),
            "what the caches look objects up by is kept beside the text"
        );
    }

    /// The objects the operator renders for `examples/chat.yaml`, under the service name `name`.
    fn rendered(name: &str) -> Vec<(Kind, DynamicObject)> {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/chat.yaml");
        let text = std::fs::read_to_string(file).expect("examples/chat.yaml");
        let mut lcs: LongConnService = serde_yaml::from_str(&text).expect("a LongConnService");
        lcs.metadata.name = Some(name.to_owned());
        crate::desired::rendered(&lcs, &crate::desired::Settings::default())
            .into_iter()
            .map(|m| (m.kind, serde_json::from_value(m.object).expect("an object")))
            .collect()
    }

    #[test]
    fn the_next_objects_of_a_kind_are_packed_against_the_first() {
        let mut packers: BTreeMap<Kind, Packer> = BTreeMap::new();
        for (kind, object) in rendered("chat") {
            packers.entry(kind).or_default().pack(object);
        }
        for (kind, object) in rendered("lobby") {
            let text = serde_json::to_vec(&object).expect("json").len();
            let compact = packers.entry(kind).or_default().pack(object.clone());
            assert_eq!(compact.expand(), object, "{kind:?}");
            // The figures operator/README.md quotes (`-- --nocapture`).
            eprintln!(
                "{kind:?}: {text} bytes of text, {} packed",
                compact.body.len()
            );
            if kind == Kind::Deployment {
                assert!(
                    compact.body.len() * 8 < text,
                    "a second Deployment takes {} bytes packed, {text} as text",
                    compact.body.len()
                );
            }
        }
    }

    #[test]
    fn a_cached_pod_keeps_what_the_reconciler_reads() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "chat-1", "namespace": "default", "uid": "p-1",
                "resourceVersion": "9", "finalizers": ["longconn.dev/drain-report"],
                "creationTimestamp": "2026-12-04T00:00:00Z",
                "deletionTimestamp": "2026-12-05T00:00:00Z",
                "generateName": "chat-abc-",
                "labels": {"longconn.dev/service": "chat", "longconn.dev/revision": "abc",
                           "longconn.dev/accepting": "false", "pod-template-hash": "h",
                           "app.kubernetes.io/name": "chat"},
                "annotations": {"controller.kubernetes.io/pod-deletion-cost": "-5",
                                "longconn.dev/routing-changed-at": "2026-12-05T00:00:00Z",
                                "prometheus.io/scrape": "true"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                     "name": "chat-abc", "uid": "rs-1", "controller": true}],
            },
            "spec": {"nodeName": "node-1",
                     "containers": [{"name": "app", "image": "echo",
                         "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}],
                     "initContainers": [{"name": "longconn-gateway", "image": "g",
                         "restartPolicy": "Always",
                         "resources": {"requests": {"cpu": "50m"}}}]},
            "status": {
                "phase": "Running", "podIP": "10.244.1.5", "hostIP": "10.250.0.11",
                "conditions": [{"type": "Ready", "status": "True", "message": "m",
                                "lastTransitionTime": "2026-12-05T00:00:00Z"}],
                "initContainerStatuses": [
                    {"name": "install", "image": "i", "imageID": "i", "ready": false,
                     "restartCount": 0,
                     "state": {"terminated": {"exitCode": 0, "message": "installed"}}},
                    {"name": "longconn-gateway", "image": "g", "imageID": "i",
                     "ready": false, "restartCount": 0,
                     "state": {"terminated": {"exitCode": 0, "message": "{}"}}}],
                "containerStatuses": [{"name": "app", "image": "echo", "imageID": "i",
                    "ready": true, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 1, "message": "app's own"}}}],
            },
        }))
        .expect("pod");
        let pod = CachedPod::from(pod);
        let labels: Vec<&String> = pod.labels().keys().collect();
        assert_eq!(
            labels,
            [
                "longconn.dev/accepting",
                "longconn.dev/revision",
                "longconn.dev/service"
            ]
        );
        let annotations: Vec<&String> = pod.annotations().keys().collect();
        assert_eq!(
            annotations,
            [
                "controller.kubernetes.io/pod-deletion-cost",
                "longconn.dev/routing-changed-at"
            ]
        );
        let meta = pod.meta();
        assert_eq!(pod.finalizers(), ["longconn.dev/drain-report"]);
        assert!(meta.deletion_timestamp.is_some() && meta.creation_timestamp.is_some());
        assert_eq!(
            (
                pod.name_any(),
                pod.namespace(),
                pod.uid(),
                pod.resource_version()
            ),
            (
                "chat-1".to_owned(),
                Some("default".to_owned()),
                Some("p-1".to_owned()),
                Some("9".to_owned())
            )
        );
        assert_eq!(controller_of(meta).map(|o| o.uid.as_str()), Some("rs-1"));
        assert_eq!(meta.generate_name, None);
        assert!(pod.ready);
        assert_eq!(pod.running_ip, "10.244.1.5".parse().ok());
        // The app container and the gateway sidecar.
        assert_eq!(pod.cpu_requested, Some(300.0));
        // The gateway's message, not another container's.
        assert_eq!(pod.gateway_message.as_deref(), Some("{}"));
    }

    #[test]
    fn a_pod_not_yet_scheduled_is_neither_running_nor_ready_and_has_no_address() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "chat-1", "namespace": "default"},
            "spec": {"containers": [{"name": "app", "image": "echo"}]},
            "status": {"phase": "Pending",
                       "conditions": [{"type": "PodScheduled", "status": "False"}]},
        }))
        .expect("pod");
        let pod = CachedPod::from(pod);
        assert!(!pod.ready);
        assert_eq!(
            (
                pod.running_ip,
                pod.cpu_requested,
                pod.gateway_message.as_deref()
            ),
            (None, None, None)
        );
        assert_eq!(pod.labels(), &BTreeMap::new());
    }

    #[test]
    fn a_pod_that_ended_has_no_address_to_reach_its_gateway_at() {
        for phase in ["Pending", "Succeeded", "Failed"] {
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "chat-1", "namespace": "default"},
                "status": {"phase": phase, "podIP": "10.244.1.5"},
            }))
            .expect("pod");
            assert_eq!(CachedPod::from(pod).running_ip, None, "{phase}");
        }
    }

    #[test]
    fn a_cached_endpoint_slice_tells_which_pods_are_routable_and_whose_it_is() {
        let (caches, mut writers) = new();
        writers.reset();
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "chat-x1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "chat",
                                    "app.kubernetes.io/instance": "chat",
                                    "app.kubernetes.io/name": "chat",
                                    "endpointslice.kubernetes.io/managed-by": "c"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.5"], "conditions": {"ready": true},
                 "targetRef": {"kind": "Pod", "name": "chat-1", "namespace": "default"}},
                {"addresses": ["10.244.1.6"], "conditions": {"ready": false},
                 "targetRef": {"kind": "Pod", "name": "chat-2", "namespace": "default"}},
            ],
        }))
        .expect("slice");
        writers.apply_endpoint_slice(slice.clone());
        assert_eq!(
            caches.routable("default", "chat"),
            BTreeSet::from(["chat-1".to_owned()])
        );
        let mut slim = slice;
        slim_endpoint_slice(&mut slim);
        let labels: Vec<&String> = slim.labels().keys().collect();
        assert_eq!(
            labels,
            ["app.kubernetes.io/instance", "kubernetes.io/service-name"]
        );
        assert_eq!(
            instance_of(slim.meta()),
            Some(ObjectRef::new("chat").within("default"))
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
