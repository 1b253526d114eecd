//! Names and labels shared by everything the operator creates.
//!
//! Every object carries the standard `app.kubernetes.io/{name,instance,managed-by}` labels; the
//! reconciler lists objects by [`ownership_selector`] to find the ones that are ours and deletes
//! those no longer desired, so orphans cannot survive.

use std::collections::BTreeMap;

/// The field manager of every server-side apply, and the `managed-by` label value.
pub const MANAGER: &str = "longconn-operator";

pub const NAME: &str = "app.kubernetes.io/name";
pub const INSTANCE: &str = "app.kubernetes.io/instance";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const COMPONENT: &str = "app.kubernetes.io/component";

/// Selects every pod of a LongConnService, whatever its revision.
pub const SERVICE: &str = "longconn.dev/service";
/// The revision of a pod or Deployment.
pub const REVISION: &str = "longconn.dev/revision";
/// On a pod: `"true"` while it takes new sessions (the client Service selects it), `"false"`
/// once the operator has taken it out of the Service (it keeps the sessions it holds). Pods
/// start with `"true"` from their template; see [`crate::placement`].
pub const ACCEPTING: &str = "longconn.dev/accepting";
/// On a pod: when the operator last set [`ACCEPTING`] (RFC 3339); on the client Service: when
/// it last changed the revision the Service selects. A drain waits until every node's proxy
/// has followed the change.
pub const ROUTING_CHANGED_AT: &str = "longconn.dev/routing-changed-at";

/// Labels on every object the operator creates for the LongConnService `name`.
pub fn common(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME.to_owned(), name.to_owned()),
        (INSTANCE.to_owned(), name.to_owned()),
        (MANAGED_BY.to_owned(), MANAGER.to_owned()),
    ])
}

/// The label selector (as a string) that finds what the operator created for `name`.
pub fn ownership_selector(name: &str) -> String {
    format!("{INSTANCE}={name},{MANAGED_BY}={MANAGER}")
}

/// Selector of every pod of `name`, across revisions (Service, PDB, scale subresource).
pub fn pods(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(SERVICE.to_owned(), name.to_owned())])
}

/// Selector of the pods of `name` that take new sessions (the client Service, which adds the
/// [`REVISION`] it routes to: see [`crate::placement::selects`]).
pub fn accepting_pods(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (SERVICE.to_owned(), name.to_owned()),
        (ACCEPTING.to_owned(), "true".to_owned()),
    ])
}

/// Selector of the pods of one revision (its Deployment).
pub fn revision_pods(name: &str, revision: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (SERVICE.to_owned(), name.to_owned()),
        (REVISION.to_owned(), revision.to_owned()),
    ])
}

/// Renders a label map as a selector string (`a=b,c=d`).
pub fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Names of the objects of a LongConnService.
pub mod names {
    pub fn deployment(name: &str, revision: &str) -> String {
        format!("{name}-{revision}")
    }
    /// The ControllerRevision that keeps a revision's pod fields.
    pub fn controller_revision(name: &str, revision: &str) -> String {
        format!("{name}-{revision}")
    }
    pub fn admin_token(name: &str) -> String {
        format!("{name}-admin-token")
    }
    pub fn ca(name: &str) -> String {
        format!("{name}-ca")
    }
    pub fn serving_cert(name: &str) -> String {
        format!("{name}-tls")
    }
    pub fn metrics_service(name: &str) -> String {
        format!("{name}-metrics")
    }
}
