//! TLS termination: TLS 1.2 and 1.3 handshakes, a certificate swapped the way Kubernetes
//! updates a Secret volume (`..data` symlink to a timestamped directory) while sessions stay up,
//! and connections over the rate closed at accept without a handshake.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::{ClientConfig, RootCertStore, pki_types::CertificateDer};
use tokio::io::AsyncReadExt;
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

/// A gateway with the flags `extra`, serving a certificate that expires in 2031 from a volume
/// published as Kubernetes does (in `temp_dir(name)`): the gateway, the volume and the pair.
async fn tls_gateway(name: &str, extra: &[&str]) -> (Gateway, PathBuf, (String, String)) {
    let (up, _) = start_upstream().await;
    let dir = temp_dir(name);
    let pair = cert(2031);
    publish(&dir, "..2031", &pair);
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    let mut args = vec![
        "--tls-cert",
        path_str(&cert_file),
        "--tls-key",
        path_str(&key_file),
    ];
    args.extend_from_slice(extra);
    let gw = Gateway::start(up, &args).await;
    (gw, dir, pair)
}

#[tokio::test]
async fn tls_certificate_reload_keeps_existing_sessions_open() {
    let (gw, dir, old) = tls_gateway("tls", &["--tls-reload-interval", "100ms"]).await;
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
async fn a_tls_connection_over_the_rate_is_closed_at_accept_without_a_handshake() {
    let (gw, dir, pair) = tls_gateway(
        "tls-rate",
        &[
            "--rate-limit-connections-per-second-per-ip",
            "0.1",
            "--rate-limit-burst",
            "1",
            "--handshake-timeout",
            "10s",
        ],
    )
    .await;
    let mut admitted = wss(&gw, client(&pair.0, &rustls::version::TLS13))
        .await
        .unwrap();
    echo(&mut admitted, "the burst").await;
    // The bound: closed at once, before it sends a byte and unanswered (an answer would take the
    // handshake), where an admitted connection would wait for its ClientHello for the handshake
    // timeout (10 s).
    for _ in 0..5 {
        let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(std::time::Duration::from_secs(3), tcp.read(&mut buf))
            .await
            .expect("closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    // A client that tries the handshake is refused, not kept waiting.
    let refused = wss(&gw, client(&pair.0, &rustls::version::TLS13))
        .await
        .expect_err("refused");
    assert_ne!(refused, "timeout");
    let [rate_limited, tls_errors, active] = gw
        .metrics_of([
            r#"longconn_gateway_handshake_rejections_total{reason="rate_limited"}"#,
            r#"longconn_gateway_handshake_rejections_total{reason="tls_error"}"#,
            "longconn_gateway_connections_active",
        ])
        .await;
    assert_eq!((rate_limited, tls_errors, active), (6.0, 0.0, 1.0));
    echo(&mut admitted, "still served").await;
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
