//! TLS termination with rustls (TLS 1.2 and 1.3 only) and hot reload of the certificate.
//!
//! The certificate and key are read from files. Kubernetes updates a mounted Secret by writing a
//! new timestamped directory and swapping the `..data` symlink, so the paths stay the same while
//! their contents change. [`CertReloader::run`] re-reads both files every `--tls-reload-interval`
//! and, when the bytes differ and form a valid pair, swaps the [`CertifiedKey`] that the resolver
//! hands to new handshakes. Connections already established keep their session keys and stay
//! up. A bad pair (for example a half-written update) is logged, counted, and retried.

use std::{
    fmt,
    path::Path,
    sync::{Arc, RwLock},
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio_rustls::TlsAcceptor;

use crate::{
    config::TlsFiles,
    error::{Error, Result},
    metrics::{Metrics, ReloadResult, ResultLabel},
};

/// Hands out the current certificate.
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertResolver")
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A parsed certificate chain and key, with the leaf's notAfter in Unix seconds.
struct Loaded {
    key: Arc<CertifiedKey>,
    not_after: i64,
    raw: (Vec<u8>, Vec<u8>),
}

fn load(files: &TlsFiles) -> Result<Loaded> {
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|source| Error::ReadFile {
            what,
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read("TLS certificate", &files.cert)?;
    let key_pem = read("TLS key", &files.key)?;
    parse(files, cert_pem, key_pem)
}

fn parse(files: &TlsFiles, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<Loaded> {
    let bad = |reason: String| Error::Tls {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("certificate PEM: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| bad("no certificate in the file".into()))?;
    let (_, x509) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| bad(format!("certificate DER: {e}")))?;
    let not_after = x509.validity().not_after.timestamp();
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(format!("key PEM: {e}")))?;
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| bad(format!("key does not fit the certificate: {e}")))?;
    Ok(Loaded {
        key: Arc::new(certified),
        not_after,
        raw: (cert_pem, key_pem),
    })
}

/// Watches the files and swaps the resolver's certificate.
pub struct CertReloader {
    files: TlsFiles,
    resolver: Arc<CertResolver>,
    last: (Vec<u8>, Vec<u8>),
    metrics: Metrics,
}

/// Builds the acceptor from the files (failing start-up if they are bad) and the reloader.
pub fn acceptor(files: &TlsFiles, metrics: Metrics) -> Result<(TlsAcceptor, CertReloader)> {
    let loaded = load(files)?;
    metrics.cert_expiry.set(loaded.not_after);
    let resolver = Arc::new(CertResolver {
        current: RwLock::new(loaded.key),
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls {
            cert: files.cert.clone(),
            key: files.key.clone(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let reloader = CertReloader {
        files: files.clone(),
        resolver,
        last: loaded.raw,
        metrics,
    };
    Ok((TlsAcceptor::from(Arc::new(config)), reloader))
}

impl CertReloader {
    /// Checks the files once; returns true if a new certificate was installed.
    pub fn check(&mut self) -> bool {
        let (Ok(cert), Ok(key)) = (
            std::fs::read(&self.files.cert),
            std::fs::read(&self.files.key),
        ) else {
            return false;
        };
        if (&cert, &key) == (&self.last.0, &self.last.1) {
            return false;
        }
        match parse(&self.files, cert, key) {
            Ok(loaded) => {
                *self
                    .resolver
                    .current
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = loaded.key;
                self.metrics.cert_expiry.set(loaded.not_after);
                self.metrics
                    .tls_reloads
                    .get_or_create(&ResultLabel {
                        result: ReloadResult::Success,
                    })
                    .inc();
                self.last = loaded.raw;
                tracing::info!(not_after = loaded.not_after, "TLS certificate reloaded");
                true
            }
            Err(e) => {
                self.metrics
                    .tls_reloads
                    .get_or_create(&ResultLabel {
                        result: ReloadResult::Error,
                    })
                    .inc();
                tracing::warn!(error = %e, "TLS files changed but cannot be used yet; keeping the current certificate");
                false
            }
        }
    }

    /// Checks the files every reload interval, forever.
    pub async fn run(mut self) {
        let mut interval = tokio::time::interval(self.files.reload_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.check();
        }
    }
}
