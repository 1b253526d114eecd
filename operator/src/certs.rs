//! Self-signed TLS: a CA per LongConnService, the serving certificate it signs, and the CA's
//! rotation.
//!
//! Everything lives in two Secrets, so the operator may restart at any step and carry on:
//! `<name>-ca` holds `ca.crt`, `ca.key` and, while a CA rotation runs, `ca-previous.crt` and
//! `ca-previous.key`; `<name>-tls` holds `tls.crt`, `tls.key` and the same `ca.crt`. `ca.crt`
//! is the trust bundle clients pin: the CA, followed during a rotation by the previous CA.
//!
//! The decisions are pure functions of what the Secrets hold, the names wanted and `now`:
//! 1. `Found::read`: each certificate with its key, usable or why not (a key that does not
//!    fit its certificate makes it unreadable).
//! 2. [`plan`]: the CA and the serving certificate, decided apart, in phases: the CA
//!    (`ca_step`: replaced at once only when missing, unreadable or expired; at 2/3 of its
//!    lifetime a rotation starts instead), the roles of the stored CAs and which one signs
//!    (`Roles`), the serving certificate (`serving_step`: issued anew by the signing CA when
//!    missing, unreadable, expiring, for other names or not signed by a CA in use; nothing
//!    else touches it), and whether the previous CA goes (`settled`).
//! 3. [`ensure`]: runs the plan, generating keys where needed (ECDSA P-256, with rcgen).
//! 4. [`next_step`]: when the stored material needs the next step; the reconciler requeues then.
//!
//! A rotation, step by step (the overlap ends at [`overlap_ends`] of the new CA):
//! - the new CA is issued and `ca.crt` becomes the bundle of new and previous CA; the serving
//!   certificate stays, and is renewed by the previous CA, until the overlap has passed, so
//!   clients have that long to pick up the bundle;
//! - when the overlap has passed, the serving certificate is issued by the new CA;
//! - once that certificate has been served for [`SETTLE`] (every pod has loaded it), or the
//!   previous CA expires, the previous CA leaves `ca.crt`.
//!
//! Serving certificates are renewed at 2/3 of their lifetime and never outlive the CA that
//! signs them.

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// The CA lives this many times longer than the serving certificate.
pub const CA_LIFETIME_FACTOR: i32 = 10;
/// Certificates are valid from this long before issuance, for clock skew.
const BACKDATE: SignedDuration = SignedDuration::from_mins(5);
/// The shortest overlap of a new CA with the previous one.
pub const MIN_OVERLAP: SignedDuration = SignedDuration::from_hours(1);
/// How long the previous CA stays in `ca.crt` after the serving certificate moved to the new
/// CA: time for the kubelet to update every pod's mounted Secret (about a minute) and for the
/// gateway to reload it, with a wide margin, so no client that trusts only the new `ca.crt`
/// meets a pod that still serves the old certificate.
pub const SETTLE: SignedDuration = SignedDuration::from_hours(1);

/// Keys of the CA Secret (`ca.crt` also in the serving Secret).
pub const CA_CRT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const PREVIOUS_CA_CRT: &str = "ca-previous.crt";
pub const PREVIOUS_CA_KEY: &str = "ca-previous.key";
/// Keys of the serving Secret (`kubernetes.io/tls`).
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("certificate validity {0:?} is out of range")]
    Validity(std::time::Duration),
}

/// Why a certificate is (re)issued; the words appear in Events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueReason {
    Missing,
    Unreadable,
    Expiring,
    Expired,
    NamesChanged,
    CaReplaced,
    OtherIssuer,
    OverlapEnded,
}

impl IssueReason {
    pub fn describe(self) -> &'static str {
        match self {
            IssueReason::Missing => "no certificate yet",
            IssueReason::Unreadable => "the stored certificate could not be read",
            IssueReason::Expiring => "it reached 2/3 of its lifetime",
            IssueReason::Expired => "it expired",
            IssueReason::NamesChanged => "its DNS names changed",
            IssueReason::CaReplaced => "the CA was replaced",
            IssueReason::OtherIssuer => "it was not signed by the CA",
            IssueReason::OverlapEnded => "the overlap of the new CA with the previous one ended",
        }
    }
}

/// The lifetime of a certificate, as read from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

impl Lifetime {
    /// When to renew: 2/3 of the way from `not_before` to `not_after`.
    pub fn renew_at(&self) -> Timestamp {
        let span = self.not_after.duration_since(self.not_before);
        self.not_before
            .checked_add(span * 2 / 3)
            .unwrap_or(self.not_after)
    }

    /// When the certificate was issued: its start without the backdating for clock skew.
    pub fn issued_at(&self) -> Timestamp {
        self.not_before
            .checked_add(BACKDATE)
            .unwrap_or(self.not_before)
    }
}

/// What a stored certificate says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    pub lifetime: Lifetime,
    pub dns_names: Vec<String>,
}

/// Parses the first certificate of a PEM text and hands it to `f`.
fn parsed<T>(pem: &str, f: impl FnOnce(&X509Certificate<'_>) -> Option<T>) -> Option<T> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    f(&pem.parse_x509().ok()?)
}

/// Reads lifetime and DNS names from a PEM certificate.
pub fn inspect(pem: &str) -> Option<Inspected> {
    parsed(pem, |cert| {
        let validity = cert.validity();
        let lifetime = Lifetime {
            not_before: Timestamp::from_second(validity.not_before.timestamp()).ok()?,
            not_after: Timestamp::from_second(validity.not_after.timestamp()).ok()?,
        };
        let dns_names = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some((*d).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Inspected {
            lifetime,
            dns_names,
        })
    })
}

/// Whether `key` is the private key of the certificate `cert`.
fn key_fits(cert: &str, key: &str) -> bool {
    let Ok(key) = KeyPair::from_pem(key) else {
        return false;
    };
    parsed(cert, |cert| {
        Some(cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
    })
    .unwrap_or(false)
}

/// Whether `cert` carries a valid signature by the key of the certificate `issuer`.
fn signed_by(cert: &str, issuer: &str) -> bool {
    parsed(cert, |cert| {
        parsed(issuer, |issuer| {
            Some(
                cert.issuer() == issuer.subject()
                    && cert.verify_signature(Some(issuer.public_key())).is_ok(),
            )
        })
    })
    .unwrap_or(false)
}

/// The certificates to keep in the Secrets of mode SelfSigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertBundle {
    /// The CA: signs serving certificates, except during a rotation's overlap.
    pub ca: CertAndKey,
    /// During a rotation: the CA being replaced, still trusted; it signs serving certificates
    /// until the overlap has passed.
    pub previous_ca: Option<CertAndKey>,
    /// The serving certificate and its key.
    pub serving: CertAndKey,
}

impl CertBundle {
    /// `ca.crt`: the CA, then the previous CA during a rotation.
    pub fn trust_bundle(&self) -> String {
        let mut bundle = self.ca.cert_pem.clone();
        if let Some(previous) = &self.previous_ca {
            if !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            bundle.push_str(&previous.cert_pem);
        }
        bundle
    }

    /// The data of the CA Secret, by key.
    pub fn ca_secret_data(&self) -> BTreeMap<&'static str, String> {
        let mut data = BTreeMap::from([
            (CA_CRT, self.trust_bundle()),
            (CA_KEY, self.ca.key_pem.clone()),
        ]);
        if let Some(previous) = &self.previous_ca {
            data.insert(PREVIOUS_CA_CRT, previous.cert_pem.clone());
            data.insert(PREVIOUS_CA_KEY, previous.key_pem.clone());
        }
        data
    }

    /// The data of the serving Secret, by key. `tls.crt` holds the serving certificate alone:
    /// clients verify it against the CA they pinned, and a CA sent along adds nothing to that.
    pub fn serving_secret_data(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            (CA_CRT, self.trust_bundle()),
            (TLS_CRT, self.serving.cert_pem.clone()),
            (TLS_KEY, self.serving.key_pem.clone()),
        ])
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What the Secrets of mode SelfSigned hold, key by key; any key may be missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// `ca.crt` of the CA Secret: the CA first, then the previous CA during a rotation.
    pub ca_cert: Option<String>,
    pub ca_key: Option<String>,
    pub previous_ca_cert: Option<String>,
    pub previous_ca_key: Option<String>,
    /// `tls.crt` of the serving Secret.
    pub cert: Option<String>,
    /// `tls.key` of the serving Secret.
    pub key: Option<String>,
}

impl Stored {
    /// Reads the keys through `ca` (the CA Secret) and `serving` (the serving Secret).
    pub fn read(
        ca: impl Fn(&str) -> Option<String>,
        serving: impl Fn(&str) -> Option<String>,
    ) -> Stored {
        Stored {
            ca_cert: ca(CA_CRT),
            ca_key: ca(CA_KEY),
            previous_ca_cert: ca(PREVIOUS_CA_CRT),
            previous_ca_key: ca(PREVIOUS_CA_KEY),
            cert: serving(TLS_CRT),
            key: serving(TLS_KEY),
        }
    }

    /// Nothing stored yet.
    pub fn is_empty(&self) -> bool {
        *self == Stored::default()
    }
}

impl From<&CertBundle> for Stored {
    /// What the Secrets built from `bundle` hold.
    fn from(bundle: &CertBundle) -> Stored {
        let ca = bundle.ca_secret_data();
        let serving = bundle.serving_secret_data();
        Stored::read(|key| ca.get(key).cloned(), |key| serving.get(key).cloned())
    }
}

/// The first certificate of a PEM bundle, as it was written.
fn first_certificate(bundle: &str) -> &str {
    const END: &str = "-----END CERTIFICATE-----";
    let Some(at) = bundle.find(END) else {
        return bundle;
    };
    let end = at + END.len();
    let end = bundle[end..]
        .find('\n')
        .map_or(bundle.len(), |n| end + n + 1);
    &bundle[..end]
}

/// A stored certificate that parses and whose key fits it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Usable {
    pem: CertAndKey,
    inspected: Inspected,
}

impl Usable {
    fn lifetime(&self) -> Lifetime {
        self.inspected.lifetime
    }

    fn signed_by(&self, ca: &Usable) -> bool {
        signed_by(&self.pem.cert_pem, &ca.pem.cert_pem)
    }
}

/// Reads one stored certificate and its key: usable, or why it has to be issued anew.
fn usable(cert: Option<&str>, key: Option<&String>) -> Result<Usable, IssueReason> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Err(IssueReason::Missing),
        (Some(cert), Some(key)) => (cert, key),
        _ => return Err(IssueReason::Unreadable),
    };
    let inspected = inspect(cert).ok_or(IssueReason::Unreadable)?;
    if !key_fits(cert, key) {
        return Err(IssueReason::Unreadable);
    }
    Ok(Usable {
        pem: CertAndKey {
            cert_pem: cert.to_owned(),
            key_pem: key.clone(),
        },
        inspected,
    })
}

/// The stored material, read.
#[derive(Clone, Debug)]
struct Found {
    ca: Result<Usable, IssueReason>,
    /// Only a usable previous CA that `ca.crt` publishes counts; any other is dropped (or, left
    /// out of `ca.crt`, ignored: dropping it would change nothing that is compared).
    previous: Option<Usable>,
    serving: Result<Usable, IssueReason>,
}

impl Found {
    fn read(stored: &Stored) -> Found {
        Found {
            ca: usable(
                stored.ca_cert.as_deref().map(first_certificate),
                stored.ca_key.as_ref(),
            ),
            previous: usable(
                stored.previous_ca_cert.as_deref(),
                stored.previous_ca_key.as_ref(),
            )
            .ok()
            .filter(|previous| {
                let published = stored.ca_cert.as_deref().unwrap_or_default();
                published.contains(previous.pem.cert_pem.trim())
            }),
            serving: usable(stored.cert.as_deref(), stored.key.as_ref()),
        }
    }
}

/// What happens to the CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaStep {
    Keep,
    /// A new CA at once, without overlap: the stored one cannot be used.
    Replace(IssueReason),
    /// A new CA; the stored one becomes the previous CA for the overlap.
    Rotate,
}

/// Which CA signs a serving certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signer {
    Ca,
    PreviousCa,
}

/// What happens to the serving certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServingStep {
    Keep,
    Issue(IssueReason, Signer),
}

/// The decisions about the stored material at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub ca: CaStep,
    pub serving: ServingStep,
    /// The previous CA leaves `ca.crt` (and the CA Secret).
    pub drop_previous: bool,
}

impl Plan {
    /// Nothing to do.
    pub const KEEP: Plan = Plan {
        ca: CaStep::Keep,
        serving: ServingStep::Keep,
        drop_previous: false,
    };
}

/// Decides about the material stored in the Secrets.
pub fn plan(stored: &Stored, dns_names: &[String], now: Timestamp) -> Plan {
    decide(&Found::read(stored), dns_names, now)
}

/// The phases of [`plan`], in order.
fn decide(found: &Found, dns_names: &[String], now: Timestamp) -> Plan {
    let previous = found
        .previous
        .as_ref()
        .filter(|p| now < p.lifetime().not_after);
    let ca = ca_step(found, previous, now);
    let roles = Roles::after(ca, found, previous, now);
    let serving = serving_step(found, &roles, dns_names, now);
    let drop_previous = found.previous.is_some()
        && match ca {
            CaStep::Replace(_) | CaStep::Rotate => true,
            CaStep::Keep => previous.is_none() || settled(found, &roles, serving, now),
        };
    Plan {
        ca,
        serving,
        drop_previous,
    }
}

/// The CA: replaced at once when it cannot be used, rotated when due and no previous CA is
/// still in use (`previous`: the stored previous CA, if not expired).
fn ca_step(found: &Found, previous: Option<&Usable>, now: Timestamp) -> CaStep {
    match &found.ca {
        Err(reason) => CaStep::Replace(*reason),
        Ok(ca) if now >= ca.lifetime().not_after => CaStep::Replace(IssueReason::Expired),
        Ok(ca) if previous.is_none() && now >= ca.lifetime().renew_at() => CaStep::Rotate,
        Ok(_) => CaStep::Keep,
    }
}

/// The stored CAs in the roles they hold after the CA step (a CA issued now is not stored
/// yet), and which role signs serving certificates: the previous CA while the overlap lasts.
struct Roles<'a> {
    ca: Option<&'a Usable>,
    previous: Option<&'a Usable>,
    signer: Signer,
}

impl<'a> Roles<'a> {
    fn after(
        step: CaStep,
        found: &'a Found,
        previous: Option<&'a Usable>,
        now: Timestamp,
    ) -> Roles<'a> {
        let stored = found.ca.as_ref().ok();
        let (ca, previous, overlapping) = match step {
            CaStep::Keep => {
                let overlapping = previous.is_some()
                    && stored.is_some_and(|ca| now < overlap_ends(ca.lifetime()));
                (stored, previous, overlapping)
            }
            CaStep::Replace(_) => (None, None, false),
            CaStep::Rotate => (None, stored, true),
        };
        let signer = if overlapping {
            Signer::PreviousCa
        } else {
            Signer::Ca
        };
        Roles {
            ca,
            previous,
            signer,
        }
    }

    /// Which role signed `cert`, if any.
    fn issuer_of(&self, cert: &Usable) -> Option<Signer> {
        if self.ca.is_some_and(|ca| cert.signed_by(ca)) {
            Some(Signer::Ca)
        } else if self
            .previous
            .is_some_and(|previous| cert.signed_by(previous))
        {
            Some(Signer::PreviousCa)
        } else {
            None
        }
    }
}

/// The serving certificate: kept while it is signed by a CA in use, fits the names and is not
/// due; otherwise issued by the signing role.
fn serving_step(
    found: &Found,
    roles: &Roles<'_>,
    dns_names: &[String],
    now: Timestamp,
) -> ServingStep {
    let issue = |reason| ServingStep::Issue(reason, roles.signer);
    let serving = match &found.serving {
        Err(reason) => return issue(*reason),
        Ok(serving) => serving,
    };
    match roles.issuer_of(serving) {
        None if roles.ca.is_none() && roles.previous.is_none() => issue(IssueReason::CaReplaced),
        None => issue(IssueReason::OtherIssuer),
        Some(Signer::PreviousCa) if roles.signer == Signer::Ca => issue(IssueReason::OverlapEnded),
        Some(_) if now >= serving.lifetime().renew_at() => issue(IssueReason::Expiring),
        Some(_) if !same_names(&serving.inspected.dns_names, dns_names) => {
            issue(IssueReason::NamesChanged)
        }
        Some(_) => ServingStep::Keep,
    }
}

/// Whether the previous CA may go: the overlap is over and the serving certificate, kept and
/// signed by the CA, has been in place for [`SETTLE`].
fn settled(found: &Found, roles: &Roles<'_>, serving: ServingStep, now: Timestamp) -> bool {
    match (&found.serving, serving) {
        (Ok(kept), ServingStep::Keep) => {
            roles.signer == Signer::Ca
                && roles.issuer_of(kept) == Some(Signer::Ca)
                && now >= settled_at(kept.lifetime())
        }
        _ => false,
    }
}

/// When the overlap of a new CA with the previous one ends: [`MIN_OVERLAP`] or a tenth of the
/// new CA's lifetime (one `tls.validity`), whichever is longer, after it was issued.
pub fn overlap_ends(ca: Lifetime) -> Timestamp {
    let tenth = ca.not_after.duration_since(ca.not_before) / 10;
    let overlap = tenth.max(MIN_OVERLAP);
    ca.issued_at().checked_add(overlap).unwrap_or(ca.not_after)
}

/// When the previous CA may leave `ca.crt`, for a serving certificate of the new CA.
fn settled_at(serving: Lifetime) -> Timestamp {
    serving
        .issued_at()
        .checked_add(SETTLE)
        .unwrap_or(serving.not_after)
}

/// When the stored material needs its next step: a renewal, the end of an overlap, the
/// removal of the previous CA. Never before `now`.
pub fn next_step(stored: &Stored, now: Timestamp) -> Timestamp {
    let found = Found::read(stored);
    let mut times = Vec::new();
    if let Ok(serving) = &found.serving {
        times.push(serving.lifetime().renew_at());
    }
    if let Ok(ca) = &found.ca {
        times.push(ca.lifetime().not_after);
        match &found.previous {
            None => times.push(ca.lifetime().renew_at()),
            Some(previous) => {
                times.push(previous.lifetime().not_after);
                let overlap_end = overlap_ends(ca.lifetime());
                if now < overlap_end {
                    times.push(overlap_end);
                } else if let Ok(serving) = &found.serving {
                    times.push(settled_at(serving.lifetime()));
                }
            }
        }
    }
    times.into_iter().min().unwrap_or(now).max(now)
}

fn same_names(a: &[String], b: &[String]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b
}

/// The outcome of [`ensure`]: the material to store and what happened.
#[derive(Clone, Debug)]
pub struct Ensured {
    pub bundle: CertBundle,
    /// The serving certificate's lifetime.
    pub serving: Lifetime,
    /// What was decided, and done.
    pub plan: Plan,
    /// When the material needs its next step ([`next_step`]); the reconciler requeues then.
    pub next: Timestamp,
}

impl Ensured {
    /// How many certificates were issued.
    pub fn issued(&self) -> u64 {
        let ca = u64::from(self.plan.ca != CaStep::Keep);
        let serving = u64::from(self.plan.serving != ServingStep::Keep);
        ca + serving
    }

    /// What changed, in words for an Event; `None` when nothing did.
    pub fn describe(&self) -> Option<String> {
        let mut done = Vec::new();
        match self.plan.ca {
            CaStep::Keep => {}
            CaStep::Replace(reason) => {
                done.push(format!("issued a new CA ({})", reason.describe()));
            }
            CaStep::Rotate => {
                let switch = inspect(&self.bundle.ca.cert_pem)
                    .map(|ca| format!(" at {}", overlap_ends(ca.lifetime)))
                    .unwrap_or_default();
                done.push(format!(
                    "started a CA rotation (the CA reached 2/3 of its lifetime): a new CA is published in ca.crt beside the previous one, and the serving certificate moves to it{switch}"
                ));
            }
        }
        if let ServingStep::Issue(reason, signer) = self.plan.serving {
            let by = match signer {
                Signer::Ca => "",
                Signer::PreviousCa => " signed by the previous CA",
            };
            done.push(format!(
                "issued a new serving certificate{by} ({})",
                reason.describe()
            ));
        }
        if self.plan.drop_previous && self.plan.ca == CaStep::Keep {
            done.push("removed the previous CA from ca.crt".to_owned());
        }
        (!done.is_empty()).then(|| done.join("; "))
    }
}

/// Keeps what is still good, issues what is not, and moves a CA rotation on.
pub fn ensure(
    stored: &Stored,
    common_name: &str,
    dns_names: &[String],
    validity: std::time::Duration,
    now: Timestamp,
) -> Result<Ensured, Error> {
    let validity = SignedDuration::try_from(validity).map_err(|_| Error::Validity(validity))?;
    let found = Found::read(stored);
    let plan = decide(&found, dns_names, now);

    let new_ca = || issue_ca(common_name, validity * CA_LIFETIME_FACTOR, now);
    let (ca, previous_ca) = match (plan.ca, found.ca) {
        (CaStep::Keep, Ok(ca)) => {
            let previous = found.previous.filter(|_| !plan.drop_previous);
            (ca.pem, previous.map(|p| p.pem))
        }
        (CaStep::Rotate, Ok(old)) => (new_ca()?, Some(old.pem)),
        _ => (new_ca()?, None),
    };
    let (serving, lifetime) = match (plan.serving, found.serving) {
        (ServingStep::Keep, Ok(serving)) => (serving.pem, serving.inspected.lifetime),
        (step, _) => {
            let signer = match step {
                ServingStep::Issue(_, Signer::PreviousCa) => previous_ca.as_ref().unwrap_or(&ca),
                _ => &ca,
            };
            issue_serving(signer, dns_names, validity, now)?
        }
    };

    let bundle = CertBundle {
        ca,
        previous_ca,
        serving,
    };
    let next = next_step(&Stored::from(&bundle), now);
    Ok(Ensured {
        bundle,
        serving: lifetime,
        plan,
        next,
    })
}

/// A lifetime from `now`, in whole seconds as a certificate stores it: what is issued reads
/// back the same, so the status recorded at issuance is the status of every later look.
fn lifetime(now: Timestamp, validity: SignedDuration) -> Lifetime {
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
    Lifetime {
        not_before,
        not_after: now.checked_add(validity).unwrap_or(Timestamp::MAX),
    }
}

fn set_lifetime(params: &mut CertificateParams, lifetime: Lifetime) -> Result<(), Error> {
    let to_time = |t: Timestamp| {
        time::OffsetDateTime::from_unix_timestamp(t.as_second())
            .map_err(|_| Error::Validity(std::time::Duration::ZERO))
    };
    params.not_before = to_time(lifetime.not_before)?;
    params.not_after = to_time(lifetime.not_after)?;
    Ok(())
}

fn issue_ca(
    common_name: &str,
    validity: SignedDuration,
    now: Timestamp,
) -> Result<CertAndKey, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{common_name} longconn CA"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "longconn");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_lifetime(&mut params, lifetime(now, validity))?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a serving certificate signed by `ca`, ending no later than `ca` does.
fn issue_serving(
    ca: &CertAndKey,
    dns_names: &[String],
    validity: SignedDuration,
    now: Timestamp,
) -> Result<(CertAndKey, Lifetime), Error> {
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem)?)?;
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    if let Some(first) = dns_names.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.clone());
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let mut life = lifetime(now, validity);
    if let Some(ca) = inspect(&ca.cert_pem) {
        life.not_after = life.not_after.min(ca.lifetime.not_after);
    }
    set_lifetime(&mut params, life)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((
        CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
        life,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["chat".to_owned(), "chat.default.svc".to_owned()]
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);
    const SECOND: SignedDuration = SignedDuration::from_secs(1);

    #[test]
    fn an_issued_lifetime_is_what_its_certificate_reads_back() {
        let issued = issue(90 * DAY, at("2026-01-01T00:00:00.75Z"));
        let read = inspect(&issued.bundle.serving.cert_pem).expect("serving");
        assert_eq!(issued.serving, read.lifetime);
    }

    /// The first issue, from empty Secrets.
    fn issue(validity: std::time::Duration, now: Timestamp) -> Ensured {
        ensure(&Stored::default(), "chat", &names(), validity, now).expect("issued")
    }

    /// A reconcile at `now` that reads what `stored` holds.
    fn reconcile(stored: &Stored, validity: std::time::Duration, now: Timestamp) -> Ensured {
        ensure(stored, "chat", &names(), validity, now).expect("ensured")
    }

    /// The next step after `state`, read back from the Secrets it wrote: a second before
    /// `state.next` nothing is due, at `state.next` something is.
    fn advance(state: &Ensured, validity: std::time::Duration) -> Ensured {
        let stored = Stored::from(&state.bundle);
        let before = state.next.checked_sub(SECOND).expect("t");
        assert_eq!(plan(&stored, &names(), before), Plan::KEEP, "at {before}");
        assert_eq!(next_step(&stored, before), state.next);
        let after = reconcile(&stored, validity, state.next);
        assert_ne!(after.plan, Plan::KEEP, "at {}", state.next);
        after
    }

    fn certificates_in(bundle: &str) -> Vec<String> {
        bundle
            .split_inclusive("-----END CERTIFICATE-----\n")
            .map(str::to_owned)
            .collect()
    }

    /// Only a new serving certificate.
    fn serving_issued(reason: IssueReason, by: Signer) -> Plan {
        Plan {
            serving: ServingStep::Issue(reason, by),
            ..Plan::KEEP
        }
    }

    /// What `bundle` stored, but the serving Secret lost.
    fn without_serving(bundle: &CertBundle) -> Stored {
        Stored {
            cert: None,
            key: None,
            ..Stored::from(bundle)
        }
    }

    #[test]
    fn first_ensure_issues_ca_and_serving_certificate_for_the_names() {
        let now = at("2026-01-01T00:00:00Z");
        let e = issue(90 * DAY, now);
        assert_eq!(
            e.plan,
            Plan {
                ca: CaStep::Replace(IssueReason::Missing),
                serving: ServingStep::Issue(IssueReason::Missing, Signer::Ca),
                drop_previous: false,
            }
        );
        assert_eq!(e.issued(), 2);
        let served = inspect(&e.bundle.serving.cert_pem).expect("parses");
        assert_eq!(served.dns_names, names());
        assert_eq!(served.lifetime.not_after, at("2026-04-01T00:00:00Z"));
        assert_eq!(served.lifetime, e.serving);
        assert!(signed_by(&e.bundle.serving.cert_pem, &e.bundle.ca.cert_pem));
        assert_eq!(e.bundle.previous_ca, None);
        assert_eq!(e.bundle.trust_bundle(), e.bundle.ca.cert_pem);
    }

    #[test]
    fn certificates_are_kept_until_two_thirds_of_their_lifetime() {
        let t0 = at("2026-01-01T00:00:00Z");
        let first = issue(90 * DAY, t0);
        // 2/3 of (90 days + 5 minutes of backdating), counted from the backdated start.
        assert_eq!(first.serving.renew_at(), at("2026-03-01T23:58:20Z"));
        assert_eq!(first.next, first.serving.renew_at());

        let stored = Stored::from(&first.bundle);
        let before = first.next.checked_sub(SECOND).expect("t");
        let kept = reconcile(&stored, 90 * DAY, before);
        assert_eq!(kept.plan, Plan::KEEP);
        assert_eq!(kept.describe(), None);
        assert_eq!(kept.bundle, first.bundle);

        let renewed = reconcile(&stored, 90 * DAY, first.next);
        assert_eq!(
            renewed.plan,
            serving_issued(IssueReason::Expiring, Signer::Ca),
            "the CA lives ten times longer"
        );
        assert_eq!(renewed.bundle.ca, first.bundle.ca);
        assert_ne!(renewed.bundle.serving, first.bundle.serving);
    }

    #[test]
    fn changed_dns_names_reissue_the_serving_certificate_only() {
        let now = at("2026-01-01T00:00:00Z");
        let first = issue(90 * DAY, now);
        let mut more = names();
        more.push("chat.example.com".to_owned());
        let e = ensure(&Stored::from(&first.bundle), "chat", &more, 90 * DAY, now).expect("e");
        assert_eq!(
            e.plan.serving,
            ServingStep::Issue(IssueReason::NamesChanged, Signer::Ca)
        );
        assert_eq!(e.bundle.ca, first.bundle.ca);
        let served = inspect(&e.bundle.serving.cert_pem).expect("parses");
        assert_eq!(served.dns_names, more);
    }

    #[test]
    fn garbage_in_the_secret_is_replaced() {
        let now = at("2026-01-01T00:00:00Z");
        let first = issue(DAY, now);
        let broken = Stored {
            cert: Some("not a certificate".to_owned()),
            ..Stored::from(&first.bundle)
        };
        let e = reconcile(&broken, DAY, now);
        assert_eq!(
            e.plan.serving,
            ServingStep::Issue(IssueReason::Unreadable, Signer::Ca)
        );
        assert!(inspect(&e.bundle.serving.cert_pem).is_some());
    }

    #[test]
    fn losing_only_the_serving_secret_reissues_it_from_the_same_ca() {
        let now = at("2026-01-01T00:00:00Z");
        let first = issue(DAY, now);
        let ca_only = without_serving(&first.bundle);
        let e = reconcile(&ca_only, DAY, now);
        assert_eq!(e.plan, serving_issued(IssueReason::Missing, Signer::Ca));
        assert_eq!(e.bundle.ca, first.bundle.ca);
        assert!(signed_by(
            &e.bundle.serving.cert_pem,
            &first.bundle.ca.cert_pem
        ));
    }

    #[test]
    fn a_serving_key_that_does_not_fit_the_certificate_is_reissued_from_the_same_ca() {
        let now = at("2026-01-01T00:00:00Z");
        let first = issue(DAY, now);
        let other = issue(DAY, now);
        let mismatched = Stored {
            key: Some(other.bundle.serving.key_pem),
            ..Stored::from(&first.bundle)
        };
        let e = reconcile(&mismatched, DAY, now);
        assert_eq!(e.plan.ca, CaStep::Keep);
        assert_eq!(
            e.plan.serving,
            ServingStep::Issue(IssueReason::Unreadable, Signer::Ca)
        );
        assert_eq!(e.bundle.ca, first.bundle.ca);
    }

    #[test]
    fn a_serving_certificate_from_another_ca_is_reissued_from_ours() {
        let now = at("2026-01-01T00:00:00Z");
        let ours = issue(DAY, now).bundle;
        let theirs = issue(DAY, now).bundle;
        let foreign = Stored::from(&CertBundle {
            serving: theirs.serving,
            ..ours.clone()
        });
        let e = reconcile(&foreign, DAY, now);
        assert_eq!(e.plan.ca, CaStep::Keep);
        assert_eq!(
            e.plan.serving,
            ServingStep::Issue(IssueReason::OtherIssuer, Signer::Ca)
        );
        assert!(signed_by(&e.bundle.serving.cert_pem, &ours.ca.cert_pem));
    }

    #[test]
    fn losing_the_ca_secret_replaces_the_ca_and_the_serving_certificate() {
        let now = at("2026-01-01T00:00:00Z");
        let first = issue(DAY, now);
        let serving_only = Stored {
            ca_cert: None,
            ca_key: None,
            ..Stored::from(&first.bundle)
        };
        let e = reconcile(&serving_only, DAY, now);
        assert_eq!(
            e.plan,
            Plan {
                ca: CaStep::Replace(IssueReason::Missing),
                serving: ServingStep::Issue(IssueReason::CaReplaced, Signer::Ca),
                drop_previous: false,
            }
        );
        assert!(signed_by(&e.bundle.serving.cert_pem, &e.bundle.ca.cert_pem));
    }

    #[test]
    fn a_ca_found_expired_is_replaced_at_once_without_overlap() {
        let t0 = at("2026-01-01T00:00:00Z");
        let first = issue(DAY, t0);
        let expired = inspect(&first.bundle.ca.cert_pem)
            .expect("ca")
            .lifetime
            .not_after;
        let e = reconcile(&Stored::from(&first.bundle), DAY, expired);
        assert_eq!(
            e.plan,
            Plan {
                ca: CaStep::Replace(IssueReason::Expired),
                serving: ServingStep::Issue(IssueReason::CaReplaced, Signer::Ca),
                drop_previous: false,
            }
        );
        assert_eq!(e.bundle.previous_ca, None);
    }

    /// Issue, serving renewals, the CA's rotation (both CAs published, serving by the old one,
    /// renewed by it during the overlap), the move to the new CA, the old CA dropped. Every
    /// step reads only what the previous one stored, as a restarted operator would.
    #[test]
    fn a_ca_rotation_publishes_both_cas_before_serving_moves_to_the_new_one() {
        let validity = 30 * DAY;
        let issued = issue(validity, at("2026-01-01T00:00:00Z"));
        let old_ca = issued.bundle.ca.clone();
        assert_eq!(issued.next, at("2026-01-20T23:58:20Z"));
        // The next step, its plan, and the CA that signs the serving certificate after it.
        let step = |state: &Ensured, plan: Plan, signer: &CertAndKey| {
            let after = advance(state, validity);
            assert_eq!(after.plan, plan, "at {}", state.next);
            let serving = &after.bundle.serving.cert_pem;
            assert!(signed_by(serving, &signer.cert_pem), "at {}", state.next);
            after
        };
        let renewal = |by| serving_issued(IssueReason::Expiring, by);

        // Serving renewals by the same CA, every 20 days, until the CA is due.
        let ca_due = at("2026-07-19T23:58:20Z");
        let mut state = issued;
        let mut renewals = 0;
        while state.next < ca_due {
            state = step(&state, renewal(Signer::Ca), &old_ca);
            assert_eq!(state.bundle.ca, old_ca);
            renewals += 1;
        }
        assert_eq!(renewals, 10);
        assert_eq!(state.next, ca_due);

        // The CA is due: a new CA, published beside the old one; serving stays.
        let rotate = Plan {
            ca: CaStep::Rotate,
            ..Plan::KEEP
        };
        let rotating = step(&state, rotate, &old_ca);
        let new_ca = rotating.bundle.ca.clone();
        assert_ne!(new_ca, old_ca);
        assert_eq!(rotating.bundle.previous_ca, Some(old_ca.clone()));
        assert_eq!(rotating.bundle.serving, state.bundle.serving);
        let both = vec![new_ca.cert_pem.clone(), old_ca.cert_pem.clone()];
        assert_eq!(certificates_in(&rotating.bundle.trust_bundle()), both);
        let switch = at("2026-08-18T23:58:50Z");
        let new_lifetime = inspect(&new_ca.cert_pem).expect("ca").lifetime;
        assert_eq!(overlap_ends(new_lifetime), switch, "30 days and 30 s");

        // A serving renewal within the overlap is still signed by the old CA.
        assert_eq!(rotating.next, at("2026-08-08T23:41:40Z"));
        let renewed = step(&rotating, renewal(Signer::PreviousCa), &old_ca);
        assert_eq!(certificates_in(&renewed.bundle.trust_bundle()), both);

        // The overlap is over: serving moves to the new CA, both stay published.
        assert_eq!(renewed.next, switch);
        let moved = serving_issued(IssueReason::OverlapEnded, Signer::Ca);
        let switched = step(&renewed, moved, &new_ca);
        assert_eq!(certificates_in(&switched.bundle.trust_bundle()), both);

        // An hour later every pod serves the new certificate: the old CA goes.
        assert_eq!(switched.next, at("2026-08-19T00:58:50Z"));
        let drop = Plan {
            drop_previous: true,
            ..Plan::KEEP
        };
        let settled = step(&switched, drop, &new_ca);
        assert_eq!(settled.issued(), 0);
        assert_eq!(settled.bundle.previous_ca, None);
        assert_eq!(settled.bundle.trust_bundle(), new_ca.cert_pem);
        assert_eq!(settled.bundle.serving, switched.bundle.serving);

        // Back to plain serving renewals by the new CA.
        assert_eq!(settled.next, at("2026-09-07T23:57:10Z"));
        step(&settled, renewal(Signer::Ca), &new_ca);
    }

    /// A rotation just started (with the serving certificate issued at the same moment, by the
    /// previous CA).
    fn rotation_started(validity: std::time::Duration) -> Ensured {
        let first = issue(validity, at("2026-01-01T00:00:00Z"));
        let ca = inspect(&first.bundle.ca.cert_pem).expect("ca").lifetime;
        let stored = without_serving(&first.bundle);
        let rotating = reconcile(&stored, validity, ca.renew_at());
        assert_eq!(rotating.plan.ca, CaStep::Rotate);
        rotating
    }

    #[test]
    fn a_serving_certificate_lost_during_the_overlap_comes_from_the_previous_ca() {
        let rotating = rotation_started(DAY);
        let previous = rotating.bundle.previous_ca.clone().expect("previous");
        assert!(signed_by(
            &rotating.bundle.serving.cert_pem,
            &previous.cert_pem
        ));
        let lost = without_serving(&rotating.bundle);
        let e = reconcile(&lost, DAY, rotating.next);
        assert_eq!(
            e.plan.serving,
            ServingStep::Issue(IssueReason::Missing, Signer::PreviousCa)
        );
        assert!(signed_by(&e.bundle.serving.cert_pem, &previous.cert_pem));
        assert_eq!(e.bundle.previous_ca, Some(previous));
    }

    #[test]
    fn a_serving_certificate_lost_after_the_overlap_comes_from_the_new_ca_and_both_stay() {
        let rotating = rotation_started(DAY);
        let new_ca = inspect(&rotating.bundle.ca.cert_pem).expect("ca").lifetime;
        let lost = without_serving(&rotating.bundle);
        let e = reconcile(&lost, DAY, overlap_ends(new_ca));
        assert_eq!(e.plan, serving_issued(IssueReason::Missing, Signer::Ca));
        assert!(signed_by(
            &e.bundle.serving.cert_pem,
            &rotating.bundle.ca.cert_pem
        ));
        assert_eq!(e.bundle.previous_ca, rotating.bundle.previous_ca);
        assert_eq!(e.next, settled_at(e.serving));
    }

    #[test]
    fn an_expired_previous_ca_is_dropped() {
        let rotating = rotation_started(DAY);
        let previous = rotating.bundle.previous_ca.as_ref().expect("previous");
        let expired = inspect(&previous.cert_pem).expect("ca").lifetime.not_after;
        let e = reconcile(&Stored::from(&rotating.bundle), DAY, expired);
        assert!(e.plan.drop_previous);
        assert_eq!(e.bundle.previous_ca, None);
        assert!(signed_by(
            &e.bundle.serving.cert_pem,
            &rotating.bundle.ca.cert_pem
        ));
    }

    #[test]
    fn a_previous_ca_left_out_of_ca_crt_is_ignored() {
        let rotating = rotation_started(DAY);
        let edited = Stored {
            ca_cert: Some(rotating.bundle.ca.cert_pem.clone()),
            ..Stored::from(&rotating.bundle)
        };
        let e = reconcile(&edited, DAY, rotating.next);
        assert_eq!(e.bundle.previous_ca, None);
        assert!(!e.plan.drop_previous);
        assert_eq!(
            e.plan.serving,
            ServingStep::Issue(IssueReason::OtherIssuer, Signer::Ca)
        );
    }

    #[test]
    fn the_secrets_of_a_rotation_hold_both_cas_and_read_back_the_same() {
        let rotating = rotation_started(DAY);
        let bundle = &rotating.bundle;
        let ca = bundle.ca_secret_data();
        let serving = bundle.serving_secret_data();
        assert_eq!(
            ca.keys().copied().collect::<Vec<_>>(),
            [PREVIOUS_CA_CRT, PREVIOUS_CA_KEY, CA_CRT, CA_KEY]
        );
        assert_eq!(
            serving.keys().copied().collect::<Vec<_>>(),
            [CA_CRT, TLS_CRT, TLS_KEY]
        );
        assert_eq!(certificates_in(&ca[CA_CRT]).len(), 2);
        assert_eq!(serving[CA_CRT], ca[CA_CRT]);
        assert_eq!(serving[TLS_CRT], bundle.serving.cert_pem, "the leaf alone");

        let stored = Stored::read(|k| ca.get(k).cloned(), |k| serving.get(k).cloned());
        let again = reconcile(&stored, DAY, rotating.next.checked_sub(SECOND).expect("t"));
        assert_eq!(again.plan, Plan::KEEP);
        assert_eq!(&again.bundle, bundle);
    }

    #[test]
    fn the_overlap_is_a_tenth_of_the_ca_lifetime_and_at_least_an_hour() {
        let from = at("2026-01-01T00:00:00Z");
        let ca = |days: i64| Lifetime {
            not_before: from,
            not_after: from
                .checked_add(SignedDuration::from_hours(24 * days))
                .expect("t"),
        };
        let issued = from.checked_add(BACKDATE).expect("t");
        let after = |d: SignedDuration| issued.checked_add(d).expect("t");
        assert_eq!(
            overlap_ends(ca(900)),
            after(SignedDuration::from_hours(24 * 90))
        );
        let short = Lifetime {
            not_before: from,
            not_after: from.checked_add(SignedDuration::from_hours(5)).expect("t"),
        };
        assert_eq!(overlap_ends(short), after(MIN_OVERLAP));
    }

    #[test]
    fn a_serving_certificate_ends_no_later_than_its_ca() {
        let now = at("2026-01-01T00:00:00Z");
        let ca = issue_ca("chat", SignedDuration::from_hours(24), now).expect("ca");
        let validity = SignedDuration::from_hours(24 * 90);
        let (_, life) = issue_serving(&ca, &names(), validity, now).expect("serving");
        assert_eq!(
            life.not_after,
            inspect(&ca.cert_pem).expect("ca").lifetime.not_after
        );
    }
}
