//! Self-signed TLS: a CA per LongConnService and a serving certificate it signs.
//!
//! [`plan`] is the pure part: given the material found in the Secrets ([`Stored`], key by key),
//! the names wanted, and `now`, it decides about the CA and the serving certificate apart, and
//! says why anything is issued anew. A serving certificate that is missing, unreadable, not
//! signed by the CA, for other names or expiring is issued by the CA in place; the CA itself is
//! only replaced when it is missing, unreadable or expiring, and a new CA brings a new serving
//! certificate. [`ensure`] runs the plan and generates keys where needed (ECDSA P-256, with
//! rcgen). Both certificates are renewed at 2/3 of their lifetime.

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::desired::CertBundle;

/// The CA lives this many times longer than the serving certificate.
pub const CA_LIFETIME_FACTOR: i32 = 10;
/// Certificates are valid from this long before issuance, for clock skew.
const BACKDATE: SignedDuration = SignedDuration::from_mins(5);

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
    NamesChanged,
    CaRenewed,
    OtherIssuer,
}

impl IssueReason {
    pub fn describe(self) -> &'static str {
        match self {
            IssueReason::Missing => "no certificate yet",
            IssueReason::Unreadable => "the stored certificate could not be read",
            IssueReason::Expiring => "it reached 2/3 of its lifetime",
            IssueReason::NamesChanged => "its DNS names changed",
            IssueReason::CaRenewed => "the CA was renewed",
            IssueReason::OtherIssuer => "it was not signed by this CA",
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

/// What the Secrets of mode SelfSigned hold, key by key; any key may be missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// `ca.crt` of the CA Secret.
    pub ca_cert: Option<String>,
    /// `ca.key` of the CA Secret.
    pub ca_key: Option<String>,
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
            ca_cert: ca("ca.crt"),
            ca_key: ca("ca.key"),
            cert: serving("tls.crt"),
            key: serving("tls.key"),
        }
    }

    /// Nothing stored yet.
    pub fn is_empty(&self) -> bool {
        *self == Stored::default()
    }
}

impl From<&CertBundle> for Stored {
    fn from(bundle: &CertBundle) -> Stored {
        Stored {
            ca_cert: Some(bundle.ca_cert_pem.clone()),
            ca_key: Some(bundle.ca_key_pem.clone()),
            cert: Some(bundle.cert_pem.clone()),
            key: Some(bundle.key_pem.clone()),
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A stored certificate that parses and whose key fits it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Usable {
    pem: CertAndKey,
    inspected: Inspected,
}

/// Reads one stored certificate and its key: usable, or why it has to be issued anew.
fn usable(cert: Option<&String>, key: Option<&String>) -> Result<Usable, IssueReason> {
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
            cert_pem: cert.clone(),
            key_pem: key.clone(),
        },
        inspected,
    })
}

/// The decision for one certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Keep,
    Issue(IssueReason),
}

/// The decisions about the CA and the serving certificate, taken apart: a serving certificate
/// that has to go is issued anew by the CA that stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub ca: Decision,
    pub serving: Decision,
}

/// Decides about the CA and the serving certificate found in the Secrets.
pub fn plan(stored: &Stored, dns_names: &[String], now: Timestamp) -> Plan {
    decide(&Found::read(stored), dns_names, now)
}

/// The stored material, read.
struct Found {
    ca: Result<Usable, IssueReason>,
    serving: Result<Usable, IssueReason>,
}

impl Found {
    fn read(stored: &Stored) -> Found {
        Found {
            ca: usable(stored.ca_cert.as_ref(), stored.ca_key.as_ref()),
            serving: usable(stored.cert.as_ref(), stored.key.as_ref()),
        }
    }
}

fn decide(found: &Found, dns_names: &[String], now: Timestamp) -> Plan {
    let ca = match &found.ca {
        Err(reason) => Decision::Issue(*reason),
        Ok(ca) if now >= ca.inspected.lifetime.renew_at() => Decision::Issue(IssueReason::Expiring),
        Ok(_) => Decision::Keep,
    };
    let serving = match (&found.ca, ca, &found.serving) {
        (_, _, Err(reason)) => Decision::Issue(*reason),
        (_, Decision::Issue(_), Ok(_)) | (Err(_), _, Ok(_)) => {
            Decision::Issue(IssueReason::CaRenewed)
        }
        (Ok(ca), Decision::Keep, Ok(serving)) => serving_decision(serving, ca, dns_names, now),
    };
    Plan { ca, serving }
}

/// Keeps a serving certificate signed by `ca` that still fits; otherwise says why not.
fn serving_decision(
    serving: &Usable,
    ca: &Usable,
    dns_names: &[String],
    now: Timestamp,
) -> Decision {
    if !signed_by(&serving.pem.cert_pem, &ca.pem.cert_pem) {
        Decision::Issue(IssueReason::OtherIssuer)
    } else if now >= serving.inspected.lifetime.renew_at() {
        Decision::Issue(IssueReason::Expiring)
    } else if !same_names(&serving.inspected.dns_names, dns_names) {
        Decision::Issue(IssueReason::NamesChanged)
    } else {
        Decision::Keep
    }
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
    pub serving: Lifetime,
    /// Set when the CA was issued now.
    pub ca_issued: Option<IssueReason>,
    /// Set when the serving certificate was issued now.
    pub serving_issued: Option<IssueReason>,
}

/// Keeps what is still good and issues what is not.
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
    let issued = |decision: Decision| match decision {
        Decision::Keep => None,
        Decision::Issue(reason) => Some(reason),
    };

    let ca = match (&found.ca, plan.ca) {
        (Ok(ca), Decision::Keep) => ca.pem.clone(),
        _ => issue_ca(common_name, validity * CA_LIFETIME_FACTOR, now)?,
    };
    let (serving, lifetime) = match (&found.serving, plan.serving) {
        (Ok(serving), Decision::Keep) => (serving.pem.clone(), serving.inspected.lifetime),
        _ => issue_serving(&ca, dns_names, validity, now)?,
    };

    Ok(Ensured {
        bundle: CertBundle {
            ca_cert_pem: ca.cert_pem,
            ca_key_pem: ca.key_pem,
            cert_pem: serving.cert_pem,
            key_pem: serving.key_pem,
        },
        serving: lifetime,
        ca_issued: issued(plan.ca),
        serving_issued: issued(plan.serving),
    })
}

fn lifetime(now: Timestamp, validity: SignedDuration) -> Lifetime {
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
    let life = lifetime(now, validity);
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

    /// The first issue, from empty Secrets.
    fn issue(validity: std::time::Duration, now: Timestamp) -> Ensured {
        ensure(&Stored::default(), "chat", &names(), validity, now).expect("issued")
    }

    #[test]
    fn first_ensure_issues_ca_and_serving_certificate_for_the_names() {
        let now = at("2026-01-01T00:00:00Z");
        let e = issue(90 * DAY, now);
        assert_eq!(e.ca_issued, Some(IssueReason::Missing));
        assert_eq!(e.serving_issued, Some(IssueReason::Missing));
        let served = inspect(&e.bundle.cert_pem).expect("parses");
        assert_eq!(served.dns_names, names());
        assert_eq!(served.lifetime.not_after, at("2026-04-01T00:00:00Z"));
        assert_eq!(served.lifetime, e.serving);
    }

    #[test]
    fn certificates_are_kept_until_two_thirds_of_their_lifetime() {
        let t0 = at("2026-01-01T00:00:00Z");
        let first = issue(90 * DAY, t0);
        let renew_at = first.serving.renew_at();
        // 2/3 of (90 days + 5 minutes of backdating), counted from the backdated start.
        assert_eq!(renew_at, at("2026-03-01T23:58:20Z"));

        let before = renew_at
            .checked_sub(SignedDuration::from_secs(1))
            .expect("t");
        let kept = ensure(
            &Stored::from(&first.bundle),
            "chat",
            &names(),
            90 * DAY,
            before,
        )
        .expect("kept");
        assert_eq!(kept.ca_issued, None);
        assert_eq!(kept.serving_issued, None);
        assert_eq!(kept.bundle, first.bundle);

        let renewed = ensure(
            &Stored::from(&first.bundle),
            "chat",
            &names(),
            90 * DAY,
            renew_at,
        )
        .expect("renewed");
        assert_eq!(renewed.ca_issued, None, "the CA lives ten times longer");
        assert_eq!(renewed.serving_issued, Some(IssueReason::Expiring));
        assert_eq!(renewed.bundle.ca_cert_pem, first.bundle.ca_cert_pem);
        assert_ne!(renewed.bundle.cert_pem, first.bundle.cert_pem);
    }

    #[test]
    fn changed_dns_names_reissue_the_serving_certificate_only() {
        let now = at("2026-01-01T00:00:00Z");
        let first = issue(90 * DAY, now);
        let mut more = names();
        more.push("chat.example.com".to_owned());
        let e =
            ensure(&Stored::from(&first.bundle), "chat", &more, 90 * DAY, now).expect("reissued");
        assert_eq!(e.ca_issued, None);
        assert_eq!(e.serving_issued, Some(IssueReason::NamesChanged));
        assert_eq!(inspect(&e.bundle.cert_pem).expect("parses").dns_names, more);
    }

    #[test]
    fn an_expiring_ca_brings_a_new_serving_certificate() {
        let t0 = at("2026-01-01T00:00:00Z");
        let first = issue(DAY, t0);
        let ca = inspect(&first.bundle.ca_cert_pem).expect("ca parses");
        let later = ca.lifetime.renew_at();
        let e =
            ensure(&Stored::from(&first.bundle), "chat", &names(), DAY, later).expect("renewed");
        assert_eq!(e.ca_issued, Some(IssueReason::Expiring));
        assert_eq!(e.serving_issued, Some(IssueReason::CaRenewed));
        assert_ne!(e.bundle.ca_cert_pem, first.bundle.ca_cert_pem);
    }

    #[test]
    fn garbage_in_the_secret_is_replaced() {
        let now = at("2026-01-01T00:00:00Z");
        let first = issue(DAY, now);
        let broken = CertBundle {
            cert_pem: "not a certificate".to_owned(),
            ..first.bundle.clone()
        };
        let e = ensure(&Stored::from(&broken), "chat", &names(), DAY, now).expect("reissued");
        assert_eq!(e.serving_issued, Some(IssueReason::Unreadable));
        assert!(inspect(&e.bundle.cert_pem).is_some());
    }

    #[test]
    fn losing_only_the_serving_secret_reissues_it_from_the_same_ca() {
        let now = at("2026-01-01T00:00:00Z");
        let first = issue(DAY, now);
        let ca_only = Stored {
            cert: None,
            key: None,
            ..Stored::from(&first.bundle)
        };
        let e = ensure(&ca_only, "chat", &names(), DAY, now).expect("reissued");
        assert_eq!(e.ca_issued, None);
        assert_eq!(e.serving_issued, Some(IssueReason::Missing));
        assert_eq!(e.bundle.ca_cert_pem, first.bundle.ca_cert_pem);
        assert_eq!(e.bundle.ca_key_pem, first.bundle.ca_key_pem);
        assert!(signed_by(&e.bundle.cert_pem, &first.bundle.ca_cert_pem));
    }

    #[test]
    fn a_serving_key_that_does_not_fit_the_certificate_is_reissued_from_the_same_ca() {
        let now = at("2026-01-01T00:00:00Z");
        let first = issue(DAY, now);
        let other = issue(DAY, now);
        let mismatched = Stored {
            key: Some(other.bundle.key_pem),
            ..Stored::from(&first.bundle)
        };
        let e = ensure(&mismatched, "chat", &names(), DAY, now).expect("reissued");
        assert_eq!(e.ca_issued, None);
        assert_eq!(e.serving_issued, Some(IssueReason::Unreadable));
        assert_eq!(e.bundle.ca_cert_pem, first.bundle.ca_cert_pem);
    }

    #[test]
    fn a_serving_certificate_from_another_ca_is_reissued_from_ours() {
        let now = at("2026-01-01T00:00:00Z");
        let first = issue(DAY, now);
        let other = issue(DAY, now);
        let foreign = Stored {
            cert: Some(other.bundle.cert_pem),
            key: Some(other.bundle.key_pem),
            ..Stored::from(&first.bundle)
        };
        let e = ensure(&foreign, "chat", &names(), DAY, now).expect("reissued");
        assert_eq!(e.ca_issued, None);
        assert_eq!(e.serving_issued, Some(IssueReason::OtherIssuer));
        assert!(signed_by(&e.bundle.cert_pem, &first.bundle.ca_cert_pem));
    }
}
