//! The benchmark's load generator and echo upstream (`gateway/bench/run.sh` drives it).
//!
//! Subcommands: `echo` (WebSocket echo server, the upstream of every proxy), `cert` (a
//! self-signed certificate for 127.0.0.1), `idle` (RSS per idle proxied session), `throughput`
//! (echo messages per second at saturation), `latency` (round-trip percentiles at a fixed
//! rate), `handshakes` (new sessions per second, plain or TLS). Each measurement prints one
//! `key=value` line. It only ever talks to 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use rustls::{ClientConfig, RootCertStore, pki_types::CertificateDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::{Connector, tungstenite::Message};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// WebSocket echo server.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Writes cert.pem, key.pem and combined.pem for 127.0.0.1 into DIR.
    Cert { dir: std::path::PathBuf },
    /// Opens SESSIONS idle sessions through TARGET and reports the RSS growth of PIDS.
    Idle {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        sessions: usize,
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
    },
    /// Closed-loop echo at saturation.
    Throughput {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 8)]
        depth: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Open-loop echo at RATE messages per second; reports p50 and p99 round trips.
    Latency {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        rate: u64,
        #[arg(long, default_value_t = 50)]
        connections: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// New sessions per second (connect, upgrade, drop).
    Handshakes {
        #[arg(long)]
        target: SocketAddr,
        /// PEM certificate to trust; enables TLS.
        #[arg(long)]
        tls_cert: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

const PAYLOAD: usize = 128;

async fn connect(target: SocketAddr) -> Ws {
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(format!("ws://{target}/bench")),
    )
    .await
    .expect("connect timeout")
    .expect("connect");
    ws
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn total_rss(pids: &[u32]) -> u64 {
    pids.iter().map(|p| rss_kib(*p)).sum()
}

async fn echo_server(listen: SocketAddr) {
    let listener = TcpListener::bind(listen).await.unwrap();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn idle(target: SocketAddr, sessions: usize, pids: &[u32]) {
    // Warm up: a few sessions opened, used and closed, so allocator pools exist before the baseline.
    for _ in 0..20 {
        let mut ws = connect(target).await;
        ws.send(Message::binary(vec![1u8; PAYLOAD])).await.unwrap();
        ws.next().await.unwrap().unwrap();
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = total_rss(pids);
    let mut all = Vec::with_capacity(sessions);
    for chunk in 0..sessions.div_ceil(200) {
        let n = 200.min(sessions - chunk * 200);
        let opened = futures_util::future::join_all((0..n).map(|_| async move {
            let mut ws = connect(target).await;
            ws.send(Message::binary(vec![2u8; PAYLOAD])).await.unwrap();
            ws.next().await.unwrap().unwrap();
            ws
        }))
        .await;
        all.extend(opened);
    }
    // Let the proxies settle, then measure with every session idle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = total_rss(pids);
    let per = (after.saturating_sub(before)) as f64 / sessions as f64;
    println!(
        "kib_per_session={per:.2} rss_before_kib={before} rss_after_kib={after} sessions={}",
        all.len()
    );
    drop(all);
}

fn payload(start: Instant) -> Vec<u8> {
    let mut p = vec![0u8; PAYLOAD];
    let t = start.elapsed().as_nanos() as u64;
    p[..8].copy_from_slice(&t.to_be_bytes());
    p
}

async fn throughput(target: SocketAddr, connections: usize, depth: usize, seconds: u64) {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut ws = connect(target).await;
        let count = Arc::clone(&count);
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            for _ in 0..depth {
                ws.feed(Message::binary(vec![3u8; PAYLOAD])).await.unwrap();
            }
            ws.flush().await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                match ws.next().await {
                    Some(Ok(m)) if m.is_binary() => {
                        count.fetch_add(1, Ordering::Relaxed);
                        if ws.send(m).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c0 = count.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let n = count.load(Ordering::Relaxed) - c0;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    println!("msgs_per_sec={rate:.0}");
}

async fn latency(target: SocketAddr, rate: u64, connections: usize, seconds: u64) {
    let start = Instant::now();
    let per_conn = (rate as f64 / connections as f64).max(0.1);
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let mut readers = Vec::new();
    for i in 0..connections {
        let ws = connect(target).await;
        let (mut tx, mut rx) = ws.split();
        let end = start + Duration::from_secs(1 + seconds);
        tokio::spawn(async move {
            // Stagger the connections over one interval.
            tokio::time::sleep(interval.mul_f64(i as f64 / connections as f64)).await;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while Instant::now() < end {
                tick.tick().await;
                if tx.send(Message::binary(payload(start))).await.is_err() {
                    return;
                }
            }
        });
        readers.push(tokio::spawn(async move {
            let mut rtts = Vec::new();
            let warm = Duration::from_secs(1);
            let end = Duration::from_secs(1 + seconds);
            while let Ok(Some(Ok(m))) =
                tokio::time::timeout(Duration::from_secs(5), rx.next()).await
            {
                let now = start.elapsed();
                if let Message::Binary(b) = m {
                    let sent = Duration::from_nanos(u64::from_be_bytes(b[..8].try_into().unwrap()));
                    if sent >= warm {
                        rtts.push((now - sent).as_micros() as u64);
                    }
                    if sent >= end {
                        break;
                    }
                }
                if now > end + Duration::from_secs(2) {
                    break;
                }
            }
            rtts
        }));
    }
    let mut all = Vec::new();
    for r in readers {
        all.extend(r.await.unwrap());
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "p50_us={} p99_us={} samples={} rate={rate}",
        pct(0.50),
        pct(0.99),
        all.len()
    );
}

fn tls_connector(cert: &std::path::Path) -> Connector {
    let pem = std::fs::read(cert).unwrap();
    let mut roots = RootCertStore::empty();
    let der: CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
    roots.add(der).unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    Connector::Rustls(Arc::new(config))
}

async fn handshakes(
    target: SocketAddr,
    tls: Option<std::path::PathBuf>,
    concurrency: usize,
    seconds: u64,
) {
    let connector = tls.as_deref().map(tls_connector);
    let scheme = if connector.is_some() { "wss" } else { "ws" };
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (done, failed, connector) = (Arc::clone(&done), Arc::clone(&failed), connector.clone());
        let url = format!("{scheme}://{target}/bench");
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let Ok(tcp) = TcpStream::connect(target).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                // Reset instead of TIME_WAIT, so a run does not exhaust local ports.
                let _ = tcp.set_zero_linger();
                let connect = tokio_tungstenite::client_async_tls_with_config(
                    url.as_str(),
                    tcp,
                    None,
                    connector.clone(),
                );
                match tokio::time::timeout(Duration::from_secs(10), connect).await {
                    Ok(Ok(_)) => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let t0 = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    println!(
        "handshakes_per_sec={rate:.0} failed={}",
        failed.load(Ordering::Relaxed)
    );
}

fn cert(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (c.cert.pem(), c.signing_key.serialize_pem());
    std::fs::write(dir.join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.join("key.pem"), &key).unwrap();
    std::fs::write(dir.join("combined.pem"), format!("{cert}{key}")).unwrap();
}

#[tokio::main]
async fn main() {
    match Cli::parse().cmd {
        Cmd::Echo { listen } => echo_server(listen).await,
        Cmd::Cert { dir } => cert(&dir),
        Cmd::Idle {
            target,
            sessions,
            pids,
        } => idle(target, sessions, &pids).await,
        Cmd::Throughput {
            target,
            connections,
            depth,
            seconds,
        } => throughput(target, connections, depth, seconds).await,
        Cmd::Latency {
            target,
            rate,
            connections,
            seconds,
        } => latency(target, rate, connections, seconds).await,
        Cmd::Handshakes {
            target,
            tls_cert,
            concurrency,
            seconds,
        } => handshakes(target, tls_cert, concurrency, seconds).await,
    }
}
