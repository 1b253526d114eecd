//! TLS termination: TLS 1.2 and 1.3 handshakes, and a certificate swapped the way Kubernetes
//! updates a Secret volume (`..data` symlink to a timestamped directory) while sessions stay up.
#![allow(clippy::unwrap_used)]

mod common;

use std::{path::Path, sync::Arc};

use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::{ClientConfig, RootCertStore, pki_types::CertificateDer};
use tokio_tungstenite::{Connector, tungstenite::Message};

/// A self-signed certificate for 127.0.0.1 expiring on 1 January of `year`: (cert PEM, key PEM).
fn cert(year: i32) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes a version of the Secret volume and points `..data` at it atomically.
fn publish(dir: &Path, version: &str, (cert, key): &(String, String)) {
    let v = dir.join(version);
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("tls.crt"), cert).unwrap();
    std::fs::write(v.join("tls.key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key"] {
        let link = dir.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(format!("..data/{name}"), link).unwrap();
        }
    }
}

fn client(cert_pem: &str, version: &'static rustls::SupportedProtocolVersion) -> Connector {
    let mut roots = RootCertStore::empty();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes()).unwrap();
    roots.add(CertificateDer::clone(&der)).unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    Connector::Rustls(Arc::new(config))
}

async fn wss(
    gw: &Gateway,
    connector: Connector,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
> {
    let url = format!("wss://{}/chat", gw.addr);
    let connect =
        tokio_tungstenite::connect_async_tls_with_config(url, None, true, Some(connector));
    match tokio::time::timeout(WAIT, connect).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timeout".into()),
    }
}

async fn echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
}

#[tokio::test]
async fn tls_certificate_reload_keeps_existing_sessions_open() {
    let (up, _) = start_upstream().await;
    let dir = temp_dir("tls");
    let old = cert(2031);
    publish(&dir, "..2031", &old);
    let gw = Gateway::start(
        up,
        &[
            "--tls-cert",
            path_str(&dir.join("tls.crt")),
            "--tls-key",
            path_str(&dir.join("tls.key")),
            "--tls-reload-interval",
            "100ms",
        ],
    )
    .await;
    let expiry = "longconn_gateway_certificate_expiry_timestamp_seconds";
    assert_eq!(gw.metric(expiry).await, 1_924_992_000.0);
    let mut v12 = wss(&gw, client(&old.0, &rustls::version::TLS12))
        .await
        .unwrap();
    let mut v13 = wss(&gw, client(&old.0, &rustls::version::TLS13))
        .await
        .unwrap();
    echo(&mut v12, "tls 1.2").await;
    echo(&mut v13, "tls 1.3").await;

    let new = cert(2032);
    publish(&dir, "..2032", &new);
    eventually("new handshakes present the new certificate", || async {
        wss(&gw, client(&new.0, &rustls::version::TLS13))
            .await
            .is_ok()
    })
    .await;
    assert!(
        wss(&gw, client(&old.0, &rustls::version::TLS13))
            .await
            .is_err()
    );
    assert_eq!(gw.metric(expiry).await, 1_956_528_000.0);
    // The sessions opened under the old certificate are still up.
    echo(&mut v12, "after reload").await;
    echo(&mut v13, "after reload").await;
    assert_eq!(gw.metric("longconn_gateway_sessions_active").await, 2.0);

    // A broken update (key from another pair) is refused and the current certificate stays.
    let other = cert(2033);
    publish(&dir, "..broken", &(new.0.clone(), other.1));
    eventually("the broken update is counted", || async {
        gw.metric(r#"longconn_gateway_tls_reloads_total{result="error"}"#)
            .await
            >= 1.0
    })
    .await;
    let mut still = wss(&gw, client(&new.0, &rustls::version::TLS12))
        .await
        .unwrap();
    echo(&mut still, "still served").await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn missing_tls_files_stop_the_gateway_with_a_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_longconn-gateway"))
        .args([
            "--tls-cert",
            "/nonexistent/tls.crt",
            "--tls-key",
            "/nonexistent/tls.key",
        ])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--max-connections", "100"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/tls.crt"), "{err}");
}
