//! Pins the exact API requests a reconcile makes, against an in-memory API server.
//!
//! The fake answers gets, server-side applies, deletes and event posts the way the API server
//! would for this operator's purposes, and logs every request. Before each reconcile the
//! controller's caches are filled from the fake's objects, as the watches would fill them, so
//! the log shows exactly what a reconcile sends besides its watches. The real API server is
//! exercised by the end-to-end tests; here the point is the request sequence: the status is
//! recorded before anything is acted on, nothing is listed or read that the caches hold, and a
//! reconcile which finds everything as desired sends no request at all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::Client;
use kube::api::DynamicObject;
use kube::client::Body;
use longconn_operator::arrivals;
use longconn_operator::cache::{self, Writers};
use longconn_operator::crd::LongConnService;
use longconn_operator::desired::Settings;
use longconn_operator::kinds::Kind;
use longconn_operator::metrics::Metrics;
use longconn_operator::reconcile::{self, Context};
use serde_json::{Value, json};

const LCS_PATH: &str = "/apis/longconn.dev/v1alpha1/namespaces/default/longconnservices";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
const PODS: &str = "/api/v1/namespaces/default/pods";
const SERVICES: &str = "/api/v1/namespaces/default/services";

/// Objects by collection path, then by name.
#[derive(Default)]
struct Store {
    collections: BTreeMap<String, BTreeMap<String, Value>>,
    log: Vec<String>,
    served_groups: Vec<&'static str>,
    /// Resources of the served groups that discovery leaves out, as a cluster with only some of
    /// a group's CRDs installed would.
    unserved_resources: Vec<&'static str>,
    /// Discovery answers 503 (a transient failure) instead of its usual answer.
    discovery_failing: bool,
    /// A collection whose server-side applies are refused as invalid (422), with this message.
    refused_applies: Option<(&'static str, &'static str)>,
    next_uid: u32,
    /// The last resourceVersion handed out.
    version: u64,
}

impl Store {
    /// The `chat` resource as stored.
    fn chat(&mut self) -> &mut Value {
        self.collections
            .get_mut(LCS_PATH)
            .and_then(|c| c.get_mut("chat"))
            .expect("lcs")
    }
}

/// A request's collection, object name and subresource (`status`, `scale`).
fn split(path: &str) -> Option<(String, Option<String>, Option<String>)> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ns_at = parts.iter().position(|p| *p == "namespaces")?;
    let collection_end = ns_at + 3;
    if parts.len() < collection_end {
        return None;
    }
    let collection = format!("/{}", parts[..collection_end].join("/"));
    let name = parts.get(collection_end).map(|s| (*s).to_owned());
    let subresource = parts.get(collection_end + 1).map(|s| (*s).to_owned());
    Some((collection, name, subresource))
}

fn matches_selector(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        object["metadata"]["labels"][k] == v
    })
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

fn conflict() -> (StatusCode, Value) {
    (
        StatusCode::CONFLICT,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "conflict"}),
    )
}

fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

fn handle(
    store: &mut Store,
    method: &Method,
    path: &str,
    query: &str,
    body: Value,
) -> (StatusCode, Value) {
    store.log.push(format!("{method} {path}"));
    if let Some(group_version) = path
        .strip_prefix("/apis/")
        .filter(|p| p.matches('/').count() == 1)
    {
        let group = group_version.split('/').next().unwrap_or_default();
        if store.discovery_failing {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 503, "message": "unavailable"}),
            );
        }
        if !store.served_groups.contains(&group) {
            return not_found();
        }
        let plurals: &[&str] = if group == "monitoring.coreos.com" {
            &["servicemonitors", "prometheusrules"]
        } else {
            &["certificates"]
        };
        let resources: Vec<Value> = plurals
            .iter()
            .filter(|p| !store.unserved_resources.contains(p))
            .map(|p| json!({"name": p, "singularName": "", "namespaced": true, "kind": "X", "verbs": ["get"]}))
            .collect();
        return (
            StatusCode::OK,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                   "resources": resources}),
        );
    }
    let Some((collection, name, subresource)) = split(path) else {
        return not_found();
    };
    let status = subresource.as_deref() == Some("status");
    if collection.ends_with("/events") && *method == Method::POST {
        return (StatusCode::CREATED, body);
    }
    let objects = store.collections.entry(collection.clone()).or_default();
    match (method.clone(), name) {
        (Method::GET, None) => {
            let selector = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("labelSelector="))
                .map(|s| {
                    s.replace("%3D", "=")
                        .replace("%2C", ",")
                        .replace("%2F", "/")
                })
                .unwrap_or_default();
            let items: Vec<Value> = objects
                .values()
                .filter(|o| matches_selector(o, &selector))
                .cloned()
                .collect();
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
            )
        }
        (Method::GET, Some(name)) => match objects.get(&name) {
            Some(o) => (StatusCode::OK, o.clone()),
            None => not_found(),
        },
        (Method::PATCH, Some(name)) if status => {
            store.version += 1;
            let version = store.version.to_string();
            let objects = store.collections.entry(collection).or_default();
            match objects.get_mut(&name) {
                Some(o) => {
                    let precondition = &body["metadata"]["resourceVersion"];
                    if !precondition.is_null() && *precondition != o["metadata"]["resourceVersion"]
                    {
                        return conflict();
                    }
                    o["status"] = body["status"].clone();
                    o["metadata"]["resourceVersion"] = json!(version);
                    (StatusCode::OK, o.clone())
                }
                None => not_found(),
            }
        }
        // The scale subresource: a merge patch of `spec.replicas`, conditional on the
        // resourceVersion it names; the answer is an autoscaling/v1 Scale.
        (Method::PATCH, Some(name)) if subresource.as_deref() == Some("scale") => {
            store.version += 1;
            let version = store.version.to_string();
            let objects = store.collections.entry(collection).or_default();
            let Some(o) = objects.get_mut(&name) else {
                return not_found();
            };
            let precondition = &body["metadata"]["resourceVersion"];
            if !precondition.is_null() && *precondition != o["metadata"]["resourceVersion"] {
                return conflict();
            }
            o["spec"]["replicas"] = body["spec"]["replicas"].clone();
            o["metadata"]["resourceVersion"] = json!(version);
            let generation = o["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            o["metadata"]["generation"] = json!(generation);
            (
                StatusCode::OK,
                json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                    "metadata": {"name": name, "namespace": "default", "resourceVersion": version},
                    "spec": {"replicas": o["spec"]["replicas"]},
                    "status": {"replicas": o["status"]["replicas"].as_i64().unwrap_or(0)}}),
            )
        }
        // A JSON Patch (a list of operations), applied whole or not at all.
        (Method::PATCH, Some(name)) if body.is_array() => {
            store.version += 1;
            let version = store.version.to_string();
            let objects = store.collections.entry(collection).or_default();
            let Some(o) = objects.get_mut(&name) else {
                return not_found();
            };
            let operations: json_patch::Patch = serde_json::from_value(body).expect("a JSON Patch");
            let mut patched = o.clone();
            if let Err(e) = json_patch::patch(&mut patched, &operations) {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422, "message": e.to_string()}),
                );
            }
            *o = patched;
            o["metadata"]["resourceVersion"] = json!(version);
            (StatusCode::OK, o.clone())
        }
        (Method::PATCH, Some(_)) if store.refused_applies.is_some_and(|(c, _)| c == collection) => {
            let message = store.refused_applies.map(|(_, m)| m).unwrap_or_default();
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422, "message": message}),
            )
        }
        (Method::PATCH, Some(name)) => {
            // A server-side apply that is not forced conflicts with fields someone else set.
            let forced = query.split('&').any(|kv| kv == "force=true");
            let ours = objects.get(&name).is_none_or(|o| {
                o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "longconn-operator"
            });
            if !forced && !ours {
                return conflict();
            }
            store.next_uid += 1;
            store.version += 1;
            let uid = format!("uid-{}", store.next_uid);
            let version = store.version.to_string();
            let objects = store.collections.entry(collection).or_default();
            let o = objects
                .entry(name)
                .or_insert_with(|| json!({"metadata": {"uid": uid}}));
            merge(o, &body);
            o["metadata"]["resourceVersion"] = json!(version);
            (StatusCode::OK, o.clone())
        }
        (Method::DELETE, Some(name)) => match objects.remove(&name) {
            Some(o) => (StatusCode::OK, o),
            None => not_found(),
        },
        _ => not_found(),
    }
}

/// Starts the fake; returns a client talking to it.
fn fake(store: Arc<Mutex<Store>>) -> Client {
    let (service, mut handle_rx) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, send)) = handle_rx.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (status, reply) = {
                let mut store = store.lock().expect("store");
                handle(
                    &mut store,
                    &parts.method,
                    parts.uri.path(),
                    parts.uri.query().unwrap_or(""),
                    body,
                )
            };
            let response = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                .expect("response");
            send.send_response(response);
        }
    });
    Client::new(service, "default")
}

fn chat() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/chat.yaml"
    ))
    .expect("example");
    let mut lcs: Value = serde_yaml::from_str(&text).expect("yaml");
    lcs["metadata"]["uid"] = json!("lcs-uid");
    lcs["metadata"]["generation"] = json!(1);
    lcs["metadata"]["resourceVersion"] = json!("1");
    lcs
}

/// The `chat` resource's status condition of type `kind`.
fn condition(store: &Store, kind: &str) -> Value {
    store.collections[LCS_PATH]["chat"]["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} condition"))
}

/// The `chat` resource's condition of type `kind` has this status and reason, and a message
/// that contains `message_part`.
fn assert_condition(store: &Store, kind: &str, (status, reason): (&str, &str), message_part: &str) {
    let c = condition(store, kind);
    assert_eq!(
        (&c["status"], &c["reason"]),
        (&json!(status), &json!(reason)),
        "{c}"
    );
    assert!(
        c["message"]
            .as_str()
            .is_some_and(|m| m.contains(message_part)),
        "{kind} does not say {message_part:?}: {c}"
    );
}

/// The collection each cache is filled from.
const CACHED: [(&str, Kind); 10] = [
    ("/api/v1/namespaces/default/secrets", Kind::Secret),
    (
        "/apis/cert-manager.io/v1/namespaces/default/certificates",
        Kind::Certificate,
    ),
    (
        "/apis/apps/v1/namespaces/default/deployments",
        Kind::Deployment,
    ),
    (SERVICES, Kind::Service),
    (
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
        Kind::PodDisruptionBudget,
    ),
    (
        "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies",
        Kind::NetworkPolicy,
    ),
    (
        "/apis/monitoring.coreos.com/v1/namespaces/default/servicemonitors",
        Kind::ServiceMonitor,
    ),
    (
        "/apis/monitoring.coreos.com/v1/namespaces/default/prometheusrules",
        Kind::PrometheusRule,
    ),
    (
        "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers",
        Kind::HorizontalPodAutoscaler,
    ),
    (
        "/apis/apps/v1/namespaces/default/controllerrevisions",
        Kind::ControllerRevision,
    ),
];
const REPLICA_SETS: &str = "/apis/apps/v1/namespaces/default/replicasets";
const ENDPOINT_SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

/// Fills the caches from the fake's objects, as the watches (which select the managed-by
/// label) would.
fn sync(store: &Store, writers: &Mutex<Writers>) {
    let mut writers = writers.lock().expect("writers");
    writers.reset();
    let managed =
        |o: &&Value| matches_selector(o, "app.kubernetes.io/managed-by=longconn-operator");
    let objects = |path: &str| -> Vec<Value> {
        store
            .collections
            .get(path)
            .into_iter()
            .flat_map(|c| c.values())
            .filter(managed)
            .cloned()
            .collect()
    };
    for (path, kind) in CACHED {
        let ar = kind.api_resource();
        for mut o in objects(path) {
            o["apiVersion"] = json!(ar.api_version);
            o["kind"] = json!(ar.kind);
            o["metadata"]["namespace"] = json!("default");
            let object: DynamicObject = serde_json::from_value(o).expect("object");
            writers.apply_owned(kind, object);
        }
    }
    for o in objects(PODS) {
        writers.apply_pod(serde_json::from_value(o).expect("pod"));
    }
    for mut o in objects(REPLICA_SETS) {
        o["apiVersion"] = json!("apps/v1");
        o["kind"] = json!("ReplicaSet");
        writers.apply_replica_set(serde_json::from_value(o).expect("replica set"));
    }
    for o in objects(ENDPOINT_SLICES) {
        writers.apply_endpoint_slice(serde_json::from_value(o).expect("endpoint slice"));
    }
}

/// What the EndpointSlice controller would show for the client Service: `ready` pods, with the
/// Service's labels copied onto the slice.
fn set_endpoints(s: &mut Store, ready: &[&str]) {
    let endpoints: Vec<Value> = ready
        .iter()
        .map(|pod| {
            json!({"addresses": ["192.0.2.99"], "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"}})
        })
        .collect();
    s.collections
        .entry(ENDPOINT_SLICES.to_owned())
        .or_default()
        .insert(
            "chat-abcde".to_owned(),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "chat-abcde", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "chat",
                    "app.kubernetes.io/instance": "chat",
                    "app.kubernetes.io/managed-by": "longconn-operator"}},
            "addressType": "IPv4", "endpoints": endpoints}),
        );
}

/// One reconcile of `chat` with caches as fresh as the fake; returns the requests it sent.
async fn reconcile_once(store: &Arc<Mutex<Store>>, fixture: &Fixture) -> Vec<String> {
    reconcile_named(store, fixture, "chat").await
}

/// One reconcile of the LongConnService `name`, as [`reconcile_once`].
async fn reconcile_named(store: &Arc<Mutex<Store>>, fixture: &Fixture, name: &str) -> Vec<String> {
    if fixture.ctx.served_apis().borrow().is_none() {
        // As the operator does on its own schedule, before any reconcile.
        fixture.ctx.discover().await;
    }
    let lcs: LongConnService = {
        let mut s = store.lock().expect("store");
        s.log.clear();
        sync(&s, &fixture.writers);
        serde_json::from_value(s.collections[LCS_PATH][name].clone()).expect("lcs")
    };
    reconcile::reconcile(Arc::new(lcs), fixture.ctx.clone())
        .await
        .expect("reconcile succeeds");
    store.lock().expect("store").log.clone()
}

/// What the Deployment controller would report once the pods are up.
fn mark_deployments_ready(store: &Arc<Mutex<Store>>) {
    let mut s = store.lock().expect("store");
    if let Some(deployments) = s
        .collections
        .get_mut("/apis/apps/v1/namespaces/default/deployments")
    {
        for d in deployments.values_mut() {
            let n = d["spec"]["replicas"].clone();
            d["status"] = json!({"replicas": n, "readyReplicas": n, "updatedReplicas": n});
            // The Deployment controller annotates what it rolled out; the operator sets no
            // annotation of its own there, and must not take this one as drift.
            d["metadata"]["annotations"] = json!({"deployment.kubernetes.io/revision": "1"});
        }
    }
}

/// The reconciler's context and the writers of its caches.
struct Fixture {
    ctx: Arc<Context>,
    writers: Mutex<Writers>,
}

fn fixture(store: &Arc<Mutex<Store>>) -> Fixture {
    let (caches, writers) = cache::new();
    let ctx = Context::new(
        fake(store.clone()),
        Settings::default(),
        Arc::new(Metrics::default()),
        caches,
    );
    Fixture {
        ctx: Arc::new(ctx),
        writers: Mutex::new(writers),
    }
}

fn setup(served_groups: Vec<&'static str>) -> (Arc<Mutex<Store>>, Fixture) {
    let store = Arc::new(Mutex::new(Store {
        served_groups,
        // The resource starts at resourceVersion 1.
        version: 1,
        ..Store::default()
    }));
    add_service(&store, chat());
    let fixture = fixture(&store);
    (store, fixture)
}

/// Stores the LongConnService `lcs` under its name.
fn add_service(store: &Arc<Mutex<Store>>, lcs: Value) {
    let name = lcs["metadata"]["name"].as_str().expect("name").to_owned();
    store
        .lock()
        .expect("store")
        .collections
        .entry(LCS_PATH.to_owned())
        .or_default()
        .insert(name, lcs);
}

const CONTROLLER_REVISIONS: &str = "/apis/apps/v1/namespaces/default/controllerrevisions";
const LCS_EVENTS: &str = "POST /apis/events.k8s.io/v1/namespaces/default/events";

#[tokio::test]
async fn first_reconcile_records_status_then_creates_every_object_then_steady_state_sends_nothing()
{
    let (store, fixture) = setup(vec![]);

    let first = reconcile_once(&store, &fixture).await;
    let deployment = first
        .iter()
        .find_map(|l| l.strip_prefix(&format!("PATCH {DEPLOYMENTS}/")))
        .expect("a deployment was applied")
        .to_owned();
    let secrets = "/api/v1/namespaces/default/secrets";
    let mut expected: Vec<String> = vec![
        // Recorded first (discovery ran before, on its own schedule)...
        format!("PATCH {LCS_PATH}/chat/status"),
        // ...then the Events that follow the record: the CA and serving certificate issued,
        // MonitoringReady=False (no ServiceMonitor API)...
        LCS_EVENTS.into(),
        LCS_EVENTS.into(),
    ];
    // ...then the objects, each one request, no read: the caches say what exists.
    for (path, name) in [
        (secrets, "chat-admin-token"),
        (secrets, "chat-ca"),
        (secrets, "chat-tls"),
        (DEPLOYMENTS, deployment.as_str()),
        (SERVICES, "chat"),
        (
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
            "chat",
        ),
        (
            "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies",
            "chat",
        ),
        (SERVICES, "chat-metrics"),
        (CONTROLLER_REVISIONS, deployment.as_str()),
    ] {
        expected.push(format!("PATCH {path}/{name}"));
    }
    // One Event listing what was created.
    expected.push(LCS_EVENTS.into());
    assert_eq!(first, expected);

    mark_deployments_ready(&store);
    let second = reconcile_once(&store, &fixture).await;
    assert_eq!(
        second,
        [format!("PATCH {LCS_PATH}/chat/status")],
        "pods became ready: only the status changes"
    );

    let third = reconcile_once(&store, &fixture).await;
    assert!(
        third.is_empty(),
        "steady state: no request at all: {third:#?}"
    );
}

/// New LongConnServices created in a burst: the first is set up at once, the next one, come
/// right after it, sends nothing until no new one has come for `arrivals::IDLE`.
#[tokio::test]
async fn a_new_service_come_right_after_another_is_set_up_once_the_burst_is_over() {
    let (store, fixture) = setup(vec![]);
    let mut second = chat();
    second["metadata"]["name"] = json!("chat-2");
    second["metadata"]["uid"] = json!("lcs-uid-2");
    add_service(&store, second);

    let first = reconcile_named(&store, &fixture, "chat").await;
    assert_eq!(
        first.first(),
        Some(&format!("PATCH {LCS_PATH}/chat/status"))
    );
    let held = reconcile_named(&store, &fixture, "chat-2").await;
    assert!(held.is_empty(), "waits for the burst: {held:#?}");
    // The first, set up, is not held by the burst: its pods becoming ready is recorded.
    mark_deployments_ready(&store);
    let during = reconcile_named(&store, &fixture, "chat").await;
    assert_eq!(during, [format!("PATCH {LCS_PATH}/chat/status")]);

    tokio::time::sleep(arrivals::IDLE).await;
    let set_up = reconcile_named(&store, &fixture, "chat-2").await;
    assert_eq!(
        set_up.first(),
        Some(&format!("PATCH {LCS_PATH}/chat-2/status")),
        "{set_up:#?}"
    );
    assert!(set_up.len() > 5, "every object is applied: {set_up:#?}");
}

#[tokio::test]
async fn every_event_is_an_event_of_its_own_even_with_the_reason_of_the_last() {
    let (store, fixture) = setup(vec![]);
    let lcs: LongConnService =
        serde_json::from_value(store.lock().expect("store").collections[LCS_PATH]["chat"].clone())
            .expect("lcs");
    for pod in ["chat-a-1", "chat-a-2"] {
        fixture
            .ctx
            .event(
                &lcs,
                kube::runtime::events::EventType::Normal,
                "PodDrained",
                format!("pod {pod} drained"),
            )
            .await;
    }
    let s = store.lock().expect("store");
    assert_eq!(
        s.log,
        [LCS_EVENTS, LCS_EVENTS],
        "two POSTs, no PATCH of the first"
    );
}

#[tokio::test(start_paused = true)]
async fn a_change_of_counts_alone_waits_to_be_recorded_with_the_next_write() {
    let (store, fixture) = setup(vec![]);
    reconcile_once(&store, &fixture).await;
    mark_deployments_ready(&store);
    reconcile_once(&store, &fixture).await;
    let set_status = |field: &str, n: i64| {
        let mut s = store.lock().expect("store");
        for d in s
            .collections
            .get_mut(DEPLOYMENTS)
            .expect("deployments")
            .values_mut()
        {
            d["status"][field] = json!(n);
        }
    };
    // One pod of three not ready: Progressing says so at once.
    set_status("readyReplicas", 2);
    let now = reconcile_once(&store, &fixture).await;
    assert_eq!(now, [format!("PATCH {LCS_PATH}/chat/status")]);
    // A fourth pod, not ready either: only counts change.
    set_status("replicas", 4);
    let soon = reconcile_once(&store, &fixture).await;
    assert!(soon.is_empty(), "written with the next change: {soon:#?}");
    tokio::time::advance(longconn_operator::plan::COUNTS_RECORD).await;
    let later = reconcile_once(&store, &fixture).await;
    assert_eq!(later, [format!("PATCH {LCS_PATH}/chat/status")]);
    let s = store.lock().expect("store");
    assert_eq!(s.collections[LCS_PATH]["chat"]["status"]["replicas"], 4);
}

#[tokio::test]
async fn a_reconcile_that_saw_a_stale_status_records_nothing_and_does_nothing() {
    let (store, fixture) = setup(vec![]);
    reconcile_once(&store, &fixture).await;
    mark_deployments_ready(&store);
    // The cache still shows the object as it was before someone else's status write.
    let stale: LongConnService = {
        let mut s = store.lock().expect("store");
        let lcs = s.collections[LCS_PATH]["chat"].clone();
        s.version += 1;
        let version = s.version.to_string();
        s.chat()["metadata"]["resourceVersion"] = json!(version);
        s.log.clear();
        sync(&s, &fixture.writers);
        serde_json::from_value(lcs).expect("lcs")
    };
    reconcile::reconcile(Arc::new(stale), fixture.ctx.clone())
        .await
        .expect("a stale view is not an error");
    let log = store.lock().expect("store").log.clone();
    assert_eq!(
        log,
        [format!("PATCH {LCS_PATH}/chat/status")],
        "refused by its precondition; no Event, no other write"
    );
}

#[tokio::test]
async fn an_object_of_the_same_name_owned_by_someone_else_is_left_alone() {
    let (store, fixture) = setup(vec![]);
    let theirs = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "chat", "namespace": "default", "uid": "theirs", "labels": {"team": "web"}},
        "spec": {"ports": [{"port": 80}]}});
    store
        .lock()
        .expect("store")
        .collections
        .entry(SERVICES.to_owned())
        .or_default()
        .insert("chat".to_owned(), theirs.clone());

    let log = reconcile_once(&store, &fixture).await;
    assert!(
        log.contains(&"PATCH /api/v1/namespaces/default/services/chat".to_owned()),
        "applied without force: {log:#?}"
    );
    // The conflict shows in the next status.
    reconcile_once(&store, &fixture).await;
    let s = store.lock().expect("store");
    assert_eq!(s.collections[SERVICES]["chat"], theirs);
    assert_condition(
        &s,
        "Degraded",
        ("True", "OwnershipConflict"),
        "Service chat already exists",
    );
}

#[tokio::test]
async fn a_deployment_the_api_server_refuses_stops_progressing_with_its_message() {
    let (store, fixture) = setup(vec![]);
    let refusal = "Deployment.apps is invalid: spec.template.spec.containers: Required value";
    store.lock().expect("store").refused_applies =
        Some(("/apis/apps/v1/namespaces/default/deployments", refusal));

    reconcile_once(&store, &fixture).await;
    // The refusal shows in the status the next reconcile records.
    reconcile_once(&store, &fixture).await;
    let s = store.lock().expect("store");
    assert_condition(&s, "Progressing", ("False", "RevisionRefused"), refusal);
    assert_condition(&s, "Degraded", ("True", "ApplyFailed"), refusal);
}

#[tokio::test]
async fn with_the_monitoring_api_served_a_service_monitor_and_its_alerts_are_applied() {
    let (store, fixture) = setup(vec!["monitoring.coreos.com"]);
    let log = reconcile_once(&store, &fixture).await;
    for path in [
        "/apis/monitoring.coreos.com/v1/namespaces/default/servicemonitors/chat",
        "/apis/monitoring.coreos.com/v1/namespaces/default/prometheusrules/chat",
    ] {
        assert!(log.contains(&format!("PATCH {path}")), "{log:#?}");
    }
    let s = store.lock().expect("store");
    assert_condition(
        &s,
        "MonitoringReady",
        ("True", "ServiceMonitorReady"),
        "PrometheusRule chat alerts on them",
    );
}

#[tokio::test]
async fn without_the_prometheus_rule_api_the_service_monitor_is_applied_and_monitoring_is_not_ready()
 {
    let (store, fixture) = setup(vec!["monitoring.coreos.com"]);
    store
        .lock()
        .expect("store")
        .unserved_resources
        .push("prometheusrules");
    let log = reconcile_once(&store, &fixture).await;
    assert!(log.contains(
        &"PATCH /apis/monitoring.coreos.com/v1/namespaces/default/servicemonitors/chat".to_owned()
    ));
    assert!(
        !log.iter().any(|l| l.contains("prometheusrules")),
        "{log:#?}"
    );
    let s = store.lock().expect("store");
    assert_condition(
        &s,
        "MonitoringReady",
        ("False", "PrometheusRuleAPIMissing"),
        "spec.monitoring.prometheusRule.enabled=false",
    );
}

#[tokio::test]
async fn objects_no_longer_desired_are_deleted() {
    let (store, fixture) = setup(vec![]);
    reconcile_once(&store, &fixture).await;
    // Turn TLS off: the CA and serving Secrets are no longer desired.
    {
        let mut s = store.lock().expect("store");
        s.chat()["spec"]["tls"] = json!({"mode": "Disabled"});
    }
    let log = reconcile_once(&store, &fixture).await;
    assert!(
        log.contains(&"DELETE /api/v1/namespaces/default/secrets/chat-ca".to_owned()),
        "{log:#?}"
    );
    assert!(log.contains(&"DELETE /api/v1/namespaces/default/secrets/chat-tls".to_owned()));
    assert!(
        !log.iter()
            .any(|l| l.starts_with("DELETE") && l.ends_with("chat-admin-token"))
    );
}

#[tokio::test]
async fn a_failed_discovery_keeps_the_last_answer_instead_of_dropping_the_service_monitor() {
    let (store, fixture) = setup(vec!["monitoring.coreos.com"]);
    reconcile_once(&store, &fixture).await;
    store.lock().expect("store").discovery_failing = true;
    assert!(!fixture.ctx.discover().await, "the answer did not change");
    assert!(
        store
            .lock()
            .expect("store")
            .log
            .contains(&"GET /apis/monitoring.coreos.com/v1".to_owned()),
        "discovery was asked again"
    );
    let log = reconcile_once(&store, &fixture).await;
    assert!(!log.iter().any(|l| l.starts_with("DELETE")), "{log:#?}");
    let s = store.lock().expect("store");
    assert!(
        s.collections["/apis/monitoring.coreos.com/v1/namespaces/default/servicemonitors"]
            .contains_key("chat")
    );
    let monitoring = condition(&s, "MonitoringReady");
    assert_eq!(monitoring["status"], "True");
}

#[tokio::test(start_paused = true)]
async fn an_optional_api_is_watched_only_once_discovery_finds_it() {
    let (store, fixture) = setup(vec![]);
    let (_, writers) = cache::new();
    fixture.ctx.discover().await;
    let (triggers, _woken) = tokio::sync::mpsc::unbounded_channel();
    let _watches = writers.spawn(
        &fake(store.clone()),
        Some("default"),
        &triggers,
        &fixture.ctx.served_apis(),
    );
    let monitors = "/apis/monitoring.coreos.com/v1/namespaces/default/servicemonitors";
    let asked = |store: &Arc<Mutex<Store>>| {
        let s = store.lock().expect("store");
        (
            s.log.iter().filter(|l| l.ends_with(monitors)).count(),
            s.log.iter().filter(|l| l.ends_with(DEPLOYMENTS)).count(),
        )
    };
    // Five minutes in which the watch of every built-in kind is asked (and, the fake serving
    // no watch, fails and is asked again with backoff).
    tokio::time::sleep(std::time::Duration::from_secs(300)).await;
    let (monitor_requests, deployment_requests) = asked(&store);
    assert!(deployment_requests > 0, "the built-in kinds are watched");
    assert_eq!(
        monitor_requests, 0,
        "an API the cluster does not serve is not asked for"
    );

    store
        .lock()
        .expect("store")
        .served_groups
        .push("monitoring.coreos.com");
    assert!(fixture.ctx.discover().await, "the answer changed");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(asked(&store).0 > 0, "watched once served");
}

/// Adds pod `i` of `deployment` as a ReplicaSet of that Deployment would create it and a
/// kubelet report it. Its IP is in TEST-NET-1 (192.0.2.0/24, never routed), so its gateway's
/// report cannot be read.
fn add_pod(s: &mut Store, deployment: &str, i: usize, ip: &str) -> String {
    let deployment_uid = s.collections[DEPLOYMENTS][deployment]["metadata"]["uid"].clone();
    let revision = revision_of(deployment);
    let labels = json!({"longconn.dev/service": "chat", "longconn.dev/revision": revision,
        "longconn.dev/accepting": "true", "app.kubernetes.io/managed-by": "longconn-operator"});
    let rs = format!("{deployment}-rs");
    let rs_uid = format!("uid-{rs}");
    s.collections
        .entry(REPLICA_SETS.to_owned())
        .or_default()
        .insert(
            rs.clone(),
            json!({"metadata": {"name": rs, "namespace": "default", "uid": rs_uid,
                "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                    "name": deployment, "uid": deployment_uid, "controller": true}]}}),
        );
    let name = format!("{deployment}-{i}");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
            "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": rs, "uid": rs_uid, "controller": true}]},
        "spec": {"containers": [{"name": "app"}]},
        "status": {"phase": "Running", "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}]}
    });
    s.collections
        .entry(PODS.to_owned())
        .or_default()
        .insert(name.clone(), pod);
    name
}

fn revision_of(deployment: &str) -> String {
    deployment.trim_start_matches("chat-").to_owned()
}

#[tokio::test]
async fn a_rollout_only_scales_the_old_revision_and_removes_a_pod_after_recording_its_drain() {
    let (store, fixture) = setup(vec![]);
    reconcile_once(&store, &fixture).await;
    mark_deployments_ready(&store);
    reconcile_once(&store, &fixture).await;
    let old = {
        let s = store.lock().expect("store");
        s.collections[DEPLOYMENTS]
            .keys()
            .next()
            .expect("deployment")
            .clone()
    };
    {
        let mut s = store.lock().expect("store");
        for i in 0..3 {
            add_pod(&mut s, &old, i, &format!("192.0.2.{}", i + 1));
        }
        let lcs = s.chat();
        lcs["spec"]["template"]["metadata"] = json!({"annotations": {"release": "2"}});
        lcs["metadata"]["generation"] = json!(2);
    }

    // The template changed: the new revision surges by one; the old one is not touched.
    let log = reconcile_once(&store, &fixture).await;
    let new = {
        let s = store.lock().expect("store");
        s.collections[DEPLOYMENTS]
            .keys()
            .find(|name| **name != old)
            .expect("a new deployment")
            .clone()
    };
    let writes: Vec<&String> = log
        .iter()
        .filter(|l| !l.starts_with("GET") && !l.contains("/events"))
        .collect();
    assert_eq!(
        writes,
        [
            &format!("PATCH {LCS_PATH}/chat/status"),
            &format!("PATCH {DEPLOYMENTS}/{new}"),
            &format!("PATCH {CONTROLLER_REVISIONS}/{new}"),
        ],
        "recorded first, then acted: {log:#?}"
    );
    {
        // The new revision is recorded with what changed, its pod fields kept beside it.
        let s = store.lock().expect("store");
        let history = &s.collections[LCS_PATH]["chat"]["status"]["history"];
        assert_eq!(history[1]["number"], 2, "{history}");
        assert_eq!(history[1]["revision"], revision_of(&new));
        assert_eq!(history[1]["change"], "template.metadata: unset → {…}");
        let kept = &s.collections[CONTROLLER_REVISIONS][&new];
        assert_eq!(kept["revision"], 2);
        assert_eq!(
            kept["data"]["template"]["metadata"]["annotations"]["release"],
            "2"
        );
    }
    {
        let s = store.lock().expect("store");
        assert_eq!(s.collections[DEPLOYMENTS][&new]["spec"]["replicas"], 1);
        let old_deployment = &s.collections[DEPLOYMENTS][&old];
        assert_eq!(old_deployment["spec"]["replicas"], 3);
        assert!(
            old_deployment["spec"]["template"]["metadata"]["annotations"]["release"].is_null(),
            "the old revision keeps its own template"
        );
        let rollout = &s.collections[LCS_PATH]["chat"]["status"]["rollout"];
        assert_eq!(rollout["phase"], "Surging");
        assert_eq!(rollout["revision"], revision_of(&new));
    }

    // The surge pod is Ready: the client Service selects the new revision alone (one write of
    // the Service, none of the old pods), so that what they hold moves only to the new
    // revision; no drain starts before that shows.
    let new_pod = {
        let mut s = store.lock().expect("store");
        add_pod(&mut s, &new, 0, "192.0.2.10")
    };
    mark_deployments_ready(&store);
    let log = reconcile_once(&store, &fixture).await;
    let writes: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with("PATCH /api/v1"))
        .collect();
    assert_eq!(writes, [&format!("PATCH {SERVICES}/chat")], "{log:#?}");
    {
        let s = store.lock().expect("store");
        let service = &s.collections[SERVICES]["chat"];
        assert_eq!(
            service["spec"]["selector"]["longconn.dev/revision"],
            revision_of(&new),
            "{service:#}"
        );
        assert!(
            service["metadata"]["annotations"]["longconn.dev/routing-changed-at"].is_string(),
            "{service:#}"
        );
        let pod = &s.collections[PODS][&format!("{old}-0")];
        assert_eq!(pod["metadata"]["labels"]["longconn.dev/accepting"], "true");
        let rollout = &s.collections[LCS_PATH]["chat"]["status"]["rollout"];
        assert!(
            rollout["draining"].as_array().is_none_or(Vec::is_empty),
            "{rollout:#}"
        );
    }

    // The EndpointSlices show only the new pod, and the proxies have had time to follow: one
    // old pod is chosen and asked to drain (its gateway cannot be reached here, so its report
    // stays unread); nothing is removed yet.
    {
        let mut s = store.lock().expect("store");
        set_endpoints(&mut s, &[&new_pod]);
        let service = s
            .collections
            .get_mut(SERVICES)
            .and_then(|services| services.get_mut("chat"))
            .expect("the client Service");
        service["metadata"]["annotations"]["longconn.dev/routing-changed-at"] =
            json!("2026-01-01T00:00:00Z");
    }
    let log = reconcile_once(&store, &fixture).await;
    assert!(
        !log.iter().any(|l| l.starts_with("PATCH /api/v1")),
        "{log:#?}"
    );
    let draining = {
        let s = store.lock().expect("store");
        let rollout = &s.collections[LCS_PATH]["chat"]["status"]["rollout"];
        assert_eq!(rollout["phase"], "Draining", "{rollout:#}");
        let draining = rollout["draining"].as_array().expect("draining").clone();
        assert_eq!(draining.len(), 1, "one pod ready to receive, one drain");
        draining[0]["pod"].as_str().expect("pod").to_owned()
    };

    // Its drain is recorded as finished and the pod carries the lowest deletion cost: only now
    // does the old Deployment shrink, by exactly one, with a merge patch of its size alone.
    {
        let mut s = store.lock().expect("store");
        let lcs = s.chat();
        lcs["status"]["rollout"]["draining"][0]["finishedAt"] = json!("2026-01-01T00:00:00Z");
        let pods = s.collections.get_mut(PODS).expect("pods");
        let drained = pods.get_mut(&draining).expect("drained pod");
        drained["metadata"]["annotations"] =
            json!({"controller.kubernetes.io/pod-deletion-cost": "-2147483648"});
        drained["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    }
    let log = reconcile_once(&store, &fixture).await;
    let writes: Vec<&String> = log
        .iter()
        .filter(|l| !l.starts_with("GET") && !l.contains("/events"))
        .collect();
    assert_eq!(
        writes,
        [
            &format!("PATCH {LCS_PATH}/chat/status"),
            &format!("PATCH {DEPLOYMENTS}/{new}"),
            &format!("PATCH {DEPLOYMENTS}/{old}"),
        ],
        "the new revision grows as the old one shrinks: {log:#?}"
    );
    let s = store.lock().expect("store");
    assert_eq!(s.collections[DEPLOYMENTS][&old]["spec"]["replicas"], 2);
    assert_eq!(s.collections[DEPLOYMENTS][&new]["spec"]["replicas"], 2);
    assert!(
        s.collections[DEPLOYMENTS][&old]["spec"]["template"]["metadata"]["annotations"]["release"]
            .is_null()
    );
}

/// The `chat` resource with autoscaling on sessions (`autoscaling` merged into its spec).
fn set_autoscaling(store: &Arc<Mutex<Store>>, autoscaling: Value) {
    let mut s = store.lock().expect("store");
    let lcs = s.chat();
    lcs["spec"]["autoscaling"] = autoscaling;
    let generation = lcs["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
    lcs["metadata"]["generation"] = json!(generation);
}

/// Pods of the one Deployment, Ready, whose gateways report `sessions` open sessions each.
fn pods_with_sessions(store: &Arc<Mutex<Store>>, fixture: &Fixture, sessions: &[u64]) {
    let mut s = store.lock().expect("store");
    let deployment = s.collections[DEPLOYMENTS]
        .keys()
        .next()
        .expect("deployment")
        .clone();
    for (i, active) in sessions.iter().enumerate() {
        let pod = add_pod(&mut s, &deployment, i, &format!("192.0.2.{}", i + 1));
        let report = longconn_drain_api::DrainReport {
            active: *active,
            ..longconn_drain_api::DrainReport::default()
        };
        let key = longconn_operator::gateways::PodKey {
            namespace: "default".to_owned(),
            name: pod.clone(),
            uid: format!("uid-{pod}"),
        };
        fixture
            .ctx
            .reports
            .record(key, Some(report), std::time::Instant::now());
    }
}

#[tokio::test]
async fn the_session_autoscaling_records_its_decision_then_scales_through_the_scale_subresource() {
    let (store, fixture) = setup(vec![]);
    set_autoscaling(
        &store,
        json!({"minReplicas": 1, "maxReplicas": 10, "targetSessionsPerPod": 100}),
    );
    reconcile_once(&store, &fixture).await;
    mark_deployments_ready(&store);
    // Three pods at 250 sessions each: 750 over a target of 100 is 8 pods, and the default
    // scale-up policies allow 3 + 4 within 15 s.
    pods_with_sessions(&store, &fixture, &[250, 250, 250]);
    let log = reconcile_once(&store, &fixture).await;
    let service_writes: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("/longconnservices/") || l.contains("/events"))
        .collect();
    assert_eq!(
        service_writes,
        [
            &format!("PATCH {LCS_PATH}/chat/status"),
            &LCS_EVENTS.to_owned(),
            &format!("PATCH {LCS_PATH}/chat/scale"),
        ],
        "recorded, announced, then scaled: {log:#?}"
    );
    {
        let s = store.lock().expect("store");
        let lcs = &s.collections[LCS_PATH]["chat"];
        assert_eq!(lcs["spec"]["replicas"], 7);
        let autoscaling = &lcs["status"]["autoscaling"];
        assert_eq!(autoscaling["desiredReplicas"], 7);
        assert_eq!(autoscaling["sessionsPerPod"], 250);
        assert_eq!(autoscaling["lastDecision"]["from"], 3);
        assert_eq!(autoscaling["lastDecision"]["replicas"], 7);
        assert_eq!(
            autoscaling["lastDecision"]["reason"],
            "sessions 750 over 3 pods, target 100 per pod: 8 pods; limited by the scale-up \
             policy: 4 pods per 15s"
        );
        assert_condition(
            &s,
            "ScalingActive",
            ("True", "ScaleUpLimit"),
            "sessions 750 over 3 pods",
        );
    }
    let metrics = fixture.ctx.metrics.encode();
    assert!(
        metrics.contains(r#"longconn_operator_autoscale_decisions_total{direction="up"} 1"#),
        "{metrics}"
    );

    // The scale shows: the policy's 15 s are not over, so nothing more is written to the
    // LongConnService, and the decision is not announced again.
    let log = reconcile_once(&store, &fixture).await;
    assert!(
        !log.iter()
            .any(|l| l.ends_with("/scale") || l.contains("/events")),
        "{log:#?}"
    );
}

#[tokio::test]
async fn a_horizontal_pod_autoscaler_gives_way_to_the_operator_reading_cpu_when_sessions_join() {
    let (store, fixture) = setup(vec![]);
    let hpas = "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers";
    set_autoscaling(
        &store,
        json!({"minReplicas": 1, "maxReplicas": 10, "targetCPUUtilization": 70}),
    );
    let log = reconcile_once(&store, &fixture).await;
    assert!(log.contains(&format!("PATCH {hpas}/chat")), "{log:#?}");
    set_autoscaling(
        &store,
        json!({"minReplicas": 1, "maxReplicas": 10, "targetCPUUtilization": 70,
            "targetSessionsPerPod": 100}),
    );
    let log = reconcile_once(&store, &fixture).await;
    assert!(log.contains(&format!("DELETE {hpas}/chat")), "{log:#?}");
    // The operator reads the pods' CPU itself.
    assert!(
        log.iter()
            .any(|l| l.starts_with("GET /apis/metrics.k8s.io/v1beta1/namespaces/default/pods")),
        "{log:#?}"
    );
    let s = store.lock().expect("store");
    assert_condition(
        &s,
        "ScalingActive",
        ("False", "NoSessionReports"),
        "no serving pod's gateway has reported its open sessions yet; CPU: no serving pod's CPU use has been read yet",
    );
}

#[tokio::test]
async fn undo_writes_the_earlier_revision_back_into_the_spec_in_one_conditional_patch() {
    let (store, fixture) = setup(vec![]);
    reconcile_once(&store, &fixture).await;
    mark_deployments_ready(&store);
    reconcile_once(&store, &fixture).await;
    let first_template = store.lock().expect("store").chat()["spec"]["template"].clone();
    {
        let mut s = store.lock().expect("store");
        let lcs = s.chat();
        lcs["spec"]["template"]["metadata"] = json!({"annotations": {"release": "2"}});
        lcs["spec"]["replicas"] = json!(5);
        lcs["metadata"]["generation"] = json!(2);
    }
    reconcile_once(&store, &fixture).await;
    {
        let mut s = store.lock().expect("store");
        let history = &s.chat()["status"]["history"];
        assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");
        s.chat()["metadata"]["annotations"] = json!({"longconn.dev/undo": "1"});
    }

    let log = reconcile_once(&store, &fixture).await;
    assert_eq!(
        log,
        [format!("PATCH {LCS_PATH}/chat"), LCS_EVENTS.to_owned()],
        "one patch of the LongConnService, one Event, nothing else"
    );
    {
        let mut s = store.lock().expect("store");
        let lcs = s.chat();
        assert_eq!(
            lcs["spec"]["template"], first_template,
            "revision 1's template"
        );
        assert_eq!(
            lcs["spec"]["replicas"], 5,
            "the replicas are not the revision's"
        );
        assert!(
            lcs["metadata"]["annotations"]["longconn.dev/undo"].is_null(),
            "the annotation is removed in the same write: {}",
            lcs["metadata"]
        );
    }

    // The revision returned to is recorded again, with the next number.
    let log = reconcile_once(&store, &fixture).await;
    assert!(
        log.contains(&format!("PATCH {LCS_PATH}/chat/status")),
        "{log:#?}"
    );
    let s = store.lock().expect("store");
    let numbers: Vec<&Value> = s.collections[LCS_PATH]["chat"]["status"]["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|r| &r["number"])
        .collect();
    assert_eq!(numbers, [&json!(2), &json!(3)]);
}

#[tokio::test]
async fn an_undo_to_a_revision_not_recorded_only_removes_the_annotation_and_warns() {
    let (store, fixture) = setup(vec![]);
    reconcile_once(&store, &fixture).await;
    let spec = {
        let mut s = store.lock().expect("store");
        s.chat()["metadata"]["annotations"] = json!({"longconn.dev/undo": "9"});
        s.chat()["spec"].clone()
    };
    let log = reconcile_once(&store, &fixture).await;
    assert_eq!(
        log,
        [format!("PATCH {LCS_PATH}/chat"), LCS_EVENTS.to_owned()]
    );
    let mut s = store.lock().expect("store");
    assert_eq!(s.chat()["spec"], spec, "the spec is left alone");
    assert!(s.chat()["metadata"]["annotations"]["longconn.dev/undo"].is_null());
}
