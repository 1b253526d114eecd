//! The revision: a short, stable hash of everything that shapes a pod.
//!
//! It names each revision's Deployment (`<name>-<revision>`). It is the hash of the pod template
//! exactly as the Deployment carries it (the revision label left empty): the user's template with
//! the gateway sidecar, its flags (the gateway and drain settings), image, TLS and token volumes
//! and the drain hook. Any change to what a pod runs, including one that comes with a new
//! operator version, therefore starts a drain-orchestrated rollout, never a Deployment's own
//! rolling update; scaling, disruption or monitoring changes start nothing.

use sha2::{Digest, Sha256};

use crate::crd::LongConnService;
use crate::desired::{self, Settings};

/// Length of the revision string.
pub const LEN: usize = 10;

/// The gateway image the pods run.
pub fn gateway_image(lcs: &LongConnService, settings: &Settings) -> String {
    lcs.spec
        .gateway
        .image
        .clone()
        .unwrap_or_else(|| settings.gateway_image.clone())
}

/// The revision of the spec as it is now.
pub fn of(lcs: &LongConnService, settings: &Settings) -> String {
    // k8s-openapi structs serialize fields in declaration order and maps as BTreeMaps, so the
    // same template always encodes to the same bytes.
    let template = desired::pod_template_for(lcs, settings, "");
    let input = serde_json::to_string(&template).unwrap_or_default();
    let digest = Sha256::digest(input.to_string().as_bytes());
    // Letters and digits Kubernetes names accept; no vowels, so no words.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    digest
        .iter()
        .take(LEN)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}
