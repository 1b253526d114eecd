//! The revision: a short, stable hash of everything that shapes a pod.
//!
//! It names each revision's Deployment (`<name>-<revision>`). It covers the pod template and
//! the gateway, drain and TLS settings (they become the gateway's flags and volumes) plus the
//! resolved gateway image, and nothing else: scaling, disruption or monitoring changes do not
//! start a rollout.

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::crd::LongConnService;
use crate::desired::{Settings, tls_secret_name};

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
    let spec = &lcs.spec;
    // Struct fields serialize in declaration order and the user's maps are BTreeMaps, so the
    // same spec always encodes to the same bytes.
    let input = json!({
        "template": spec.template,
        "gateway": spec.gateway,
        "drain": spec.drain,
        "tls": {"mode": spec.tls.mode, "secret": tls_secret_name(lcs)},
        "image": gateway_image(lcs, settings),
    });
    let digest = Sha256::digest(input.to_string().as_bytes());
    // Letters and digits Kubernetes names accept; no vowels, so no words.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    digest
        .iter()
        .take(LEN)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}
