//! Self-signed TLS: a CA per LongConnService and a serving certificate it signs.
//!
//! [`plan`] is the pure part: given the material found in the Secrets, the names and lifetime
//! wanted, and `now`, it says whether to keep it or issue anew, and why. [`ensure`] runs the plan
//! and generates keys where needed (ECDSA P-256, with rcgen). Both certificates are renewed at
//! 2/3 of their lifetime; a new CA always brings a new serving certificate.

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

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
}

impl IssueReason {
    pub fn describe(self) -> &'static str {
        match self {
            IssueReason::Missing => "no certificate yet",
            IssueReason::Unreadable => "the stored certificate could not be read",
            IssueReason::Expiring => "it reached 2/3 of its lifetime",
            IssueReason::NamesChanged => "its DNS names changed",
            IssueReason::CaRenewed => "the CA was renewed",
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

/// Reads lifetime and DNS names from a PEM certificate.
pub fn inspect(pem: &str) -> Option<Inspected> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
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
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Inspected {
        lifetime,
        dns_names,
    })
}

/// The decision for one certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Keep(Lifetime),
    Issue(IssueReason),
}

/// Decides about the CA and the serving certificate found in the Secrets.
pub fn plan(
    existing: Option<&CertBundle>,
    dns_names: &[String],
    now: Timestamp,
) -> (Decision, Decision) {
    let Some(bundle) = existing else {
        return (
            Decision::Issue(IssueReason::Missing),
            Decision::Issue(IssueReason::Missing),
        );
    };
    let ca = match inspect(&bundle.ca_cert_pem) {
        None => Decision::Issue(IssueReason::Unreadable),
        Some(i) if now >= i.lifetime.renew_at() => Decision::Issue(IssueReason::Expiring),
        Some(i) => Decision::Keep(i.lifetime),
    };
    let serving = match (ca, inspect(&bundle.cert_pem)) {
        (Decision::Issue(_), _) => Decision::Issue(IssueReason::CaRenewed),
        (_, None) => Decision::Issue(IssueReason::Unreadable),
        (_, Some(i)) if now >= i.lifetime.renew_at() => Decision::Issue(IssueReason::Expiring),
        (_, Some(i)) if !same_names(&i.dns_names, dns_names) => {
            Decision::Issue(IssueReason::NamesChanged)
        }
        (_, Some(i)) => Decision::Keep(i.lifetime),
    };
    (ca, serving)
}

fn same_names(a: &[String], b: &[String]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b
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

    fn complete(&self) -> Option<CertBundle> {
        Some(CertBundle {
            ca_cert_pem: self.ca_cert.clone()?,
            ca_key_pem: self.ca_key.clone()?,
            cert_pem: self.cert.clone()?,
            key_pem: self.key.clone()?,
        })
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
    let existing = stored.complete();
    let existing = existing.as_ref();
    let (ca_decision, serving_decision) = plan(existing, dns_names, now);

    let (ca_cert_pem, ca_key_pem, ca_issued) = match (ca_decision, existing) {
        (Decision::Keep(_), Some(b)) => (b.ca_cert_pem.clone(), b.ca_key_pem.clone(), None),
        (decision, _) => {
            let reason = match decision {
                Decision::Issue(r) => r,
                Decision::Keep(_) => IssueReason::Missing,
            };
            let (cert, key) = issue_ca(common_name, validity * CA_LIFETIME_FACTOR, now)?;
            (cert, key, Some(reason))
        }
    };

    let (cert_pem, key_pem, serving, serving_issued) = match (serving_decision, existing) {
        (Decision::Keep(lifetime), Some(b)) if ca_issued.is_none() => {
            (b.cert_pem.clone(), b.key_pem.clone(), lifetime, None)
        }
        (decision, _) => {
            let reason = match decision {
                Decision::Issue(r) => r,
                Decision::Keep(_) => IssueReason::CaRenewed,
            };
            let ca_key = KeyPair::from_pem(&ca_key_pem)?;
            let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key)?;
            let (cert, key, lifetime) = issue_serving(&issuer, dns_names, validity, now)?;
            (cert, key, lifetime, Some(reason))
        }
    };

    Ok(Ensured {
        bundle: CertBundle {
            ca_cert_pem,
            ca_key_pem,
            cert_pem,
            key_pem,
        },
        serving,
        ca_issued,
        serving_issued,
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
) -> Result<(String, String), Error> {
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
    Ok((cert.pem(), key.serialize_pem()))
}

fn issue_serving(
    issuer: &Issuer<'_, KeyPair>,
    dns_names: &[String],
    validity: SignedDuration,
    now: Timestamp,
) -> Result<(String, String, Lifetime), Error> {
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
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem(), life))
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

    #[test]
    fn first_ensure_issues_ca_and_serving_certificate_for_the_names() {
        let now = at("2026-01-01T00:00:00Z");
        let e = ensure(&Stored::default(), "chat", &names(), 90 * DAY, now).expect("issued");
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
        let first = ensure(&Stored::default(), "chat", &names(), 90 * DAY, t0).expect("issued");
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
        let first = ensure(&Stored::default(), "chat", &names(), 90 * DAY, now).expect("issued");
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
        let first = ensure(&Stored::default(), "chat", &names(), DAY, t0).expect("issued");
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
        let first = ensure(&Stored::default(), "chat", &names(), DAY, now).expect("issued");
        let broken = CertBundle {
            cert_pem: "not a certificate".to_owned(),
            ..first.bundle.clone()
        };
        let e = ensure(&Stored::from(&broken), "chat", &names(), DAY, now).expect("reissued");
        assert_eq!(e.serving_issued, Some(IssueReason::Unreadable));
        assert!(inspect(&e.bundle.cert_pem).is_some());
    }
}
