//! The cluster's public-key infrastructure: a cluster CA and the certificates signed by it (the
//! API server's serving certificate, client certificates for the admin, the controller manager,
//! the scheduler and metrics-server, serving certificates for those three), a front-proxy CA with
//! its client certificate, and the service-account signing key pair. Everything is written as PEM files
//! under one folder; private keys are readable by the owner only.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};

/// The first address of the service range, which Kubernetes gives to the `kubernetes` Service.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// The user metrics-server is (its client certificate's common name).
pub const METRICS_SERVER_USER: &str = "system:metrics-server";

/// The name the aggregator checks metrics-server's serving certificate for: its Service's.
pub const METRICS_SERVER_DNS_NAME: &str = "metrics-server.kube-system.svc";

/// How long the certificates are valid: long enough for any test run, short enough to be obviously
/// throw-away.
const VALIDITY_DAYS: i64 = 30;

/// A certificate and its key as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Every file of the cluster PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: CertFiles,
    pub apiserver: CertFiles,
    pub admin: CertFiles,
    pub controller_manager: CertFiles,
    pub scheduler: CertFiles,
    pub controller_manager_serving: CertFiles,
    pub scheduler_serving: CertFiles,
    /// metrics-server's client certificate (user [`METRICS_SERVER_USER`]), for the API server
    /// and the kubelets.
    pub metrics_server: CertFiles,
    /// metrics-server's serving certificate: its Service's name, loopback and the API server's
    /// other address, where it listens beside it.
    pub metrics_server_serving: CertFiles,
    pub front_proxy_ca: CertFiles,
    pub front_proxy_client: CertFiles,
    /// The service-account token signing key (private).
    pub service_account_key: PathBuf,
    /// The service-account token verification key (public).
    pub service_account_pub: PathBuf,
    /// The API server's client certificate for the kubelets (`kubectl logs`, `exec`).
    pub apiserver_kubelet_client: CertFiles,
    /// kube-proxy's client certificate (user `system:kube-proxy`).
    pub kube_proxy: CertFiles,
    /// Per node: the kubelet's client and serving certificates.
    pub nodes: Vec<NodeCerts>,
}

/// A kubelet's identities: its client certificate (user `system:node:<name>` in group
/// `system:nodes`, what the Node authorizer and NodeRestriction expect) and its serving certificate
/// for the node's address.
#[derive(Debug, Clone)]
pub struct NodeCerts {
    pub name: String,
    pub client: CertFiles,
    pub serving: CertFiles,
}

/// What the PKI is for beyond the control plane on 127.0.0.1.
#[derive(Debug, Clone, Default)]
pub struct PkiOptions {
    /// Another address the API server serves on (the host's address on the node network).
    pub apiserver_ip: Option<Ipv4Addr>,
    /// The nodes, by name and address.
    pub nodes: Vec<(String, Ipv4Addr)>,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usage {
    Server,
    Client,
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// Generates a new PKI into `dir` (created if missing), replacing any files there.
    pub fn generate(dir: &Path) -> Result<Self> {
        Self::generate_with(dir, &PkiOptions::default())
    }

    /// As [`Pki::generate`], with the certificates nodes need.
    pub fn generate_with(dir: &Path, options: &PkiOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        let loopback = vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "::1".to_string(),
        ];

        let (ca, ca_files) = new_ca(dir, "ca", "longconn-e2e-ca")?;
        let mut apiserver_names = loopback.clone();
        apiserver_names.extend(
            [
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ]
            .map(String::from),
        );
        apiserver_names.push(IpAddr::V4(KUBERNETES_SERVICE_IP).to_string());
        if let Some(ip) = options.apiserver_ip {
            apiserver_names.push(ip.to_string());
        }
        let apiserver = leaf(
            dir,
            &ca,
            "apiserver",
            "kube-apiserver",
            &[],
            apiserver_names,
            Usage::Server,
        )?;
        let admin = leaf(
            dir,
            &ca,
            "admin",
            "kubernetes-admin",
            &["system:masters"],
            vec![],
            Usage::Client,
        )?;
        let controller_manager = leaf(
            dir,
            &ca,
            "controller-manager",
            "system:kube-controller-manager",
            &[],
            vec![],
            Usage::Client,
        )?;
        let scheduler = leaf(
            dir,
            &ca,
            "scheduler",
            "system:kube-scheduler",
            &[],
            vec![],
            Usage::Client,
        )?;
        let controller_manager_serving = leaf(
            dir,
            &ca,
            "controller-manager-serving",
            "kube-controller-manager",
            &[],
            loopback.clone(),
            Usage::Server,
        )?;
        let scheduler_serving = leaf(
            dir,
            &ca,
            "scheduler-serving",
            "kube-scheduler",
            &[],
            loopback.clone(),
            Usage::Server,
        )?;
        let metrics_server = leaf(
            dir,
            &ca,
            "metrics-server",
            METRICS_SERVER_USER,
            &[],
            vec![],
            Usage::Client,
        )?;
        let mut metrics_server_names = loopback;
        metrics_server_names.push(METRICS_SERVER_DNS_NAME.to_string());
        if let Some(ip) = options.apiserver_ip {
            metrics_server_names.push(ip.to_string());
        }
        let metrics_server_serving = leaf(
            dir,
            &ca,
            "metrics-server-serving",
            "metrics-server",
            &[],
            metrics_server_names,
            Usage::Server,
        )?;

        let (front_proxy, front_proxy_ca) =
            new_ca(dir, "front-proxy-ca", "longconn-e2e-front-proxy-ca")?;
        let front_proxy_client = leaf(
            dir,
            &front_proxy,
            "front-proxy-client",
            "front-proxy-client",
            &[],
            vec![],
            Usage::Client,
        )?;

        let sa = KeyPair::generate().map_err(|source| Error::Pki {
            what: "service-account key".into(),
            source,
        })?;
        let service_account_key = dir.join("sa.key");
        let service_account_pub = dir.join("sa.pub");
        write_private(&service_account_key, &sa.serialize_pem())?;
        write_public(&service_account_pub, &sa.public_key_pem())?;

        let apiserver_kubelet_client = leaf(
            dir,
            &ca,
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            &["system:masters"],
            vec![],
            Usage::Client,
        )?;
        let kube_proxy = leaf(
            dir,
            &ca,
            "kube-proxy",
            "system:kube-proxy",
            &[],
            vec![],
            Usage::Client,
        )?;
        let nodes = options
            .nodes
            .iter()
            .map(|(name, ip)| {
                Ok(NodeCerts {
                    name: name.clone(),
                    client: leaf(
                        dir,
                        &ca,
                        &format!("kubelet-{name}"),
                        &format!("system:node:{name}"),
                        &["system:nodes"],
                        vec![],
                        Usage::Client,
                    )?,
                    serving: leaf(
                        dir,
                        &ca,
                        &format!("kubelet-{name}-serving"),
                        name,
                        &[],
                        vec![name.clone(), ip.to_string()],
                        Usage::Server,
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        Ok(Self {
            ca: ca_files,
            apiserver,
            admin,
            controller_manager,
            scheduler,
            controller_manager_serving,
            scheduler_serving,
            metrics_server,
            metrics_server_serving,
            front_proxy_ca,
            front_proxy_client,
            service_account_key,
            service_account_pub,
            apiserver_kubelet_client,
            kube_proxy,
            nodes,
        })
    }
}

fn validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(VALIDITY_DAYS);
}

fn new_ca(dir: &Path, file: &str, common_name: &str) -> Result<(Ca, CertFiles)> {
    let pki_error = |source| Error::Pki {
        what: format!("CA {common_name}"),
        source,
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_error)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    validity(&mut params);
    let key = KeyPair::generate().map_err(pki_error)?;
    let cert = params.self_signed(&key).map_err(pki_error)?;
    let files = CertFiles {
        cert: dir.join(format!("{file}.crt")),
        key: dir.join(format!("{file}.key")),
    };
    write_public(&files.cert, &cert.pem())?;
    write_private(&files.key, &key.serialize_pem())?;
    Ok((
        Ca {
            issuer: Issuer::new(params, key),
        },
        files,
    ))
}

fn leaf(
    dir: &Path,
    ca: &Ca,
    file: &str,
    common_name: &str,
    organizations: &[&str],
    names: Vec<String>,
    usage: Usage,
) -> Result<CertFiles> {
    let pki_error = |source| Error::Pki {
        what: format!("certificate {common_name}"),
        source,
    };
    let mut params = CertificateParams::new(names).map_err(pki_error)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    for organization in organizations {
        params
            .distinguished_name
            .push(DnType::OrganizationName, *organization);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![match usage {
        Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    let key = KeyPair::generate().map_err(pki_error)?;
    let cert = params.signed_by(&key, &ca.issuer).map_err(pki_error)?;
    let files = CertFiles {
        cert: dir.join(format!("{file}.crt")),
        key: dir.join(format!("{file}.key")),
    };
    write_public(&files.cert, &cert.pem())?;
    write_private(&files.key, &key.serialize_pem())?;
    Ok(files)
}

fn write_public(path: &Path, pem: &str) -> Result<()> {
    std::fs::write(path, pem).map_err(Error::io("write", path))
}

fn write_private(path: &Path, pem: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io("write", path))?;
    file.write_all(pem.as_bytes())
        .map_err(Error::io("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_every_file_with_private_keys_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::generate(dir.path()).expect("generate");
        for files in [&pki.ca, &pki.apiserver, &pki.admin, &pki.front_proxy_client] {
            let cert = std::fs::read_to_string(&files.cert).expect("cert");
            assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
            let mode = std::fs::metadata(&files.key)
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{}", files.key.display());
        }
        let public = std::fs::read_to_string(&pki.service_account_pub).expect("sa.pub");
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
    }
}
