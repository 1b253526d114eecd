//! The benchmark's load generator and echo upstream (`gateway/bench/run.sh` drives it).
//!
//! Subcommands: `echo` (WebSocket echo server, the upstream of every proxy), `relay` (a byte
//! relay without WebSocket awareness, the reference for a proxy on this runtime), `cert` (a
//! self-signed certificate for 127.0.0.1), `idle` (RSS per idle proxied session), `stalled`
//! (RSS and descriptors held by connections that never finish a handshake), `throughput`
//! (echo messages per second at saturation), `latency` (round-trip percentiles at a fixed
//! rate, beside a direct path probed in the same seconds), `handshakes` (new sessions per second, plain or TLS). Each measurement prints one
//! `key=value` line. It only ever talks to 127.0.0.1.
//!
//! The echo upstream and the throughput, latency and handshake clients speak WebSocket through
//! the few lines of [`wire`] and batch what they can, so that as much of the machine as possible
//! is left to the proxy under test; the idle measurement uses tungstenite, a complete client.
//! Everything runs on one thread (the latency sender on a second), so that a benchmark can pin
//! the load to one CPU and the proxy to the other.
#![allow(clippy::unwrap_used)]

mod wire;

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use longconn_gateway::{
    http,
    proxy::{read_head, read_response},
};
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key};

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
    /// A byte relay to UPSTREAM that knows nothing of WebSocket: a minimal proxy on this
    /// runtime, the benchmark's reference for the gateway's own cost per message.
    Relay {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
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
    /// Opens CONNECTIONS to TARGET that never finish their handshake (plain: the start of a
    /// request head; with --tls: nothing, so the TLS handshake never starts) and reports the RSS
    /// growth and open descriptors of PIDS, and how many the proxy still holds after a while.
    Stalled {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        connections: usize,
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
        #[arg(long)]
        tls: bool,
    },
    /// Closed-loop echo at saturation; reports the rate and the CPU time PIDS spent per message.
    Throughput {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 8)]
        depth: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Open-loop echo at RATE messages per second; reports p50 and p99 round trips.
    Latency(Probe),
    /// New sessions per second (connect, upgrade, reset); reports the rate and the CPU time PIDS
    /// spent per session.
    Handshakes {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
        /// Enables TLS; the server must present this PEM certificate (see `tls_connector`).
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

/// The upstream: a WebSocket echo server. Every read is answered with one write that carries all
/// the complete frames it held, so its cost per message falls as the load rises.
async fn echo_server(listen: SocketAddr) {
    let listener = TcpListener::bind(listen).await.unwrap();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = echo_session(tcp).await;
        });
    }
}

/// The reference relay: per connection one task that connects to `upstream` and copies bytes
/// both ways with tokio's `copy_bidirectional`, on this one thread, as the gateway runs with
/// `--worker-threads 1`. No frame scanning, limits, timers, drain or metrics.
async fn relay_server(listen: SocketAddr, upstream: SocketAddr) {
    let listener = TcpListener::bind(listen).await.unwrap();
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
}

async fn echo_session(mut tcp: TcpStream) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let (head, mut buf) = read_head(&mut tcp, http::parse_request)
        .await
        .map_err(io::Error::other)?;
    let Some(key) = head.header("sec-websocket-key") else {
        return tcp
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
    };
    let accept = derive_accept_key(key.trim_ascii());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    tcp.write_all(response.as_bytes()).await?;
    let mut out = Vec::new();
    loop {
        let mut at = 0;
        let mut closed = false;
        while let Some(f) = wire::next_frame(&buf[at..]) {
            at += f.len;
            let head = match f.opcode() {
                wire::OP_PONG => continue,
                wire::OP_PING => wire::fin(wire::OP_PONG),
                _ => f.head,
            };
            wire::push_header(&mut out, head, f.payload.len(), None);
            wire::xor_into(&mut out, f.payload, f.mask);
            if f.opcode() == wire::OP_CLOSE {
                closed = true;
                break;
            }
        }
        buf.drain(..at);
        if !out.is_empty() {
            tcp.write_all(&out).await?;
            out.clear();
        }
        if closed || !read_more(&mut tcp, &mut buf).await? {
            return Ok(());
        }
    }
}

/// Reads what is available into `buf` (at least 16 KiB of room); false at end of stream.
async fn read_more(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    if buf.capacity() - buf.len() < 16 * 1024 {
        buf.reserve(16 * 1024);
    }
    Ok(tcp.read_buf(buf).await? > 0)
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

/// Open descriptors of PIDS.
fn open_fds(pids: &[u32]) -> usize {
    pids.iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok())
        .map(|d| d.count())
        .sum()
}

async fn stalled(target: SocketAddr, connections: usize, pids: &[u32], tls: bool) {
    let (rss_before, fds_before) = (total_rss(pids), open_fds(pids));
    let start: &[u8] = if tls {
        b""
    } else {
        b"GET /bench HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    };
    let mut open = Vec::with_capacity(connections);
    let mut not_accepted = 0usize;
    for chunk in 0..connections.div_ceil(500) {
        let n = 500.min(connections - chunk * 500);
        let opened = futures_util::future::join_all((0..n).map(|_| async move {
            let connect = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target));
            let mut tcp = connect.await.ok()?.ok()?;
            tcp.write_all(start).await.ok()?;
            Some(tcp)
        }))
        .await;
        for tcp in opened {
            match tcp {
                Some(tcp) => open.push(tcp),
                None => not_accepted += 1,
            }
        }
    }
    // Well within every proxy's handshake or header timeout (10 s and more).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss_after, fds_after) = (total_rss(pids), open_fds(pids));
    // Held: the proxy neither answered nor closed it.
    let mut buf = [0u8; 64];
    let held = open
        .iter()
        .filter(
            |tcp| matches!(tcp.try_read(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        )
        .count();
    println!(
        "stalled_rss_kib={} rss_kib={rss_after} fds={} held={held} refused={} not_accepted={not_accepted} connections={connections}",
        rss_after.saturating_sub(rss_before),
        fds_after.saturating_sub(fds_before),
        open.len() - held,
    );
}

/// The mask of every frame the load generator sends (any key is valid for a server).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Opens a session with the hand-written client; returns the stream and any bytes read past
/// the `101`.
async fn open(target: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut tcp = TcpStream::connect(target).await.expect("connect");
    tcp.set_nodelay(true).unwrap();
    tcp.write_all(&wire::upgrade_request(&target.to_string()))
        .await
        .unwrap();
    let (head, rest) = tokio::time::timeout(Duration::from_secs(30), read_response(&mut tcp))
        .await
        .expect("upgrade timeout")
        .expect("upgrade");
    assert!(wire::is_accepted(&head), "upgrade refused");
    (tcp, rest)
}

/// Time the processes `pids` (all their threads) have spent on a CPU.
fn cpu_time(pids: &[u32]) -> Duration {
    let mut ns = 0u64;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

/// User and system time of the processes `pids` so far, in clock ticks (see [`user_system_in`]).
fn user_system(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| user_system_in(&stat))
        .fold((0, 0), |(u, s), (du, ds)| (u + du, s + ds))
}

/// `utime` and `stime` from a `/proc/<pid>/stat` line. They are the 14th and 15th fields; the
/// command name (the 2nd) is in parentheses and may itself hold spaces and parentheses, so the
/// fields are counted from the last `)`.
fn user_system_in(stat: &str) -> Option<(u64, u64)> {
    let mut after = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    Some((after.next()?.parse().ok()?, after.next()?.parse().ok()?))
}

/// What [`window`] measured.
struct Window {
    /// Operations per second.
    rate: f64,
    /// The proxy's CPU microseconds per operation.
    cpu_us_per_op: f64,
    /// The proxy's CPU time over the wall time.
    share: f64,
    /// User space's part of the proxy's CPU time (the kernel samples both at its tick).
    user_share: f64,
}

/// Measures `ops` (a counter) and the CPU time of `pids` over `seconds`.
async fn window(ops: &AtomicU64, pids: &[u32], seconds: u64) -> Window {
    let (n0, c0, us0, t0) = (
        ops.load(Ordering::Relaxed),
        cpu_time(pids),
        user_system(pids),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (n, cpu, us, wall) = (
        ops.load(Ordering::Relaxed) - n0,
        cpu_time(pids) - c0,
        user_system(pids),
        t0.elapsed(),
    );
    let (user, system) = (us.0 - us0.0, us.1 - us0.1);
    Window {
        rate: n as f64 / wall.as_secs_f64(),
        cpu_us_per_op: cpu.as_secs_f64() * 1e6 / n.max(1) as f64,
        share: cpu.as_secs_f64() / wall.as_secs_f64(),
        user_share: user as f64 / (user + system).max(1) as f64,
    }
}

/// Closed loop: each connection keeps `depth` messages in flight and answers every echo it reads
/// with a new message, all of one read's answers in one write.
async fn throughput(
    target: SocketAddr,
    connections: usize,
    depth: usize,
    seconds: u64,
    pids: &[u32],
) {
    let count = Arc::new(AtomicU64::new(0));
    let mut one = Vec::new();
    wire::push_frame(
        &mut one,
        wire::fin(wire::OP_BINARY),
        &[3u8; PAYLOAD],
        Some(MASK),
    );
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (mut tcp, mut buf) = open(target).await;
        let (count, one) = (Arc::clone(&count), one.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = one.repeat(depth);
            loop {
                if tcp.write_all(&out).await.is_err() {
                    return;
                }
                let mut at = 0;
                let mut echoed = 0;
                while echoed == 0 {
                    match read_more(&mut tcp, &mut buf).await {
                        Ok(true) => {}
                        _ => return,
                    }
                    while let Some(f) = wire::next_frame(&buf[at..]) {
                        at += f.len;
                        echoed += usize::from(f.opcode() == wire::OP_BINARY);
                    }
                }
                buf.drain(..at);
                count.fetch_add(echoed as u64, Ordering::Relaxed);
                out.clear();
                for _ in 0..echoed {
                    out.extend_from_slice(&one);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let w = window(&count, pids, seconds).await;
    for t in tasks {
        t.abort();
    }
    println!(
        "msgs_per_sec={:.0} proxy_cpu_us_per_op={:.2} proxy_cpu_share={:.2} proxy_user_share={:.3}",
        w.rate, w.cpu_us_per_op, w.share, w.user_share
    );
}

/// Open loop: one thread sends RATE messages per second to TARGET, evenly spaced (it sleeps
/// between sends, so the spacing is as fine as the kernel's timers), round robin over the
/// connections; each message carries the time it was due, and the round trip counts from then, so
/// a stalled sender shows as latency instead of hiding it.
///
/// With an `anchor` (the upstream itself), every `anchor_every`-th message of the same schedule
/// goes there instead, over connections of its own, and the proxied messages still come at RATE:
/// the anchor's round trips are taken in the same seconds as the proxy's, so whatever the machine
/// does to both (a CPU taken away, another process's burst) is in both, and the difference of the
/// two is what the proxy adds.
async fn latency(probe: Probe) {
    let Probe {
        target,
        anchor,
        anchor_every,
        rate,
        connections,
        seconds,
        pids,
        cpus,
    } = probe;
    // As many messages per connection to the anchor as to the target.
    let anchors = anchor.map_or(0, |_| connections.div_ceil(anchor_every as usize - 1));
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for i in 0..connections + anchors {
        let to = if i < connections {
            target
        } else {
            anchor.unwrap()
        };
        let (tcp, buf) = open(to).await;
        let std = tcp.into_std().unwrap();
        writers.push(std.try_clone().unwrap());
        readers.push((i >= connections, TcpStream::from_std(std).unwrap(), buf));
    }
    let start = Instant::now();
    let warm = Duration::from_secs(1);
    let end = warm + Duration::from_secs(seconds);
    let total_rate = match anchor {
        Some(_) => rate as f64 * anchor_every as f64 / (anchor_every - 1) as f64,
        None => rate as f64,
    };
    let interval = Duration::from_secs_f64(1.0 / total_rate.max(1.0));
    let sender = std::thread::spawn(move || {
        // Sleeps end when they are due, not up to the default 50 us later: at tens of thousands
        // of messages per second that slack would send them in bursts instead of evenly.
        nix::sys::prctl::set_timerslack(1).unwrap();
        let mut frame = Vec::with_capacity(PAYLOAD + 16);
        let (mut late, mut to_target, mut to_anchor) = (0u64, 0usize, 0usize);
        for k in 0u32.. {
            let due = interval * k;
            if due >= end {
                break;
            }
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            } else {
                late += 1;
            }
            let conn = if anchors > 0 && u64::from(k) % anchor_every == anchor_every - 1 {
                to_anchor += 1;
                connections + to_anchor % anchors
            } else {
                to_target += 1;
                to_target % connections
            };
            frame.clear();
            push_probe(&mut frame, due.as_nanos() as u64);
            if !send_all(&mut writers[conn], &frame, start, end) {
                return late;
            }
        }
        // Tell every reader that nothing more is coming.
        for w in &mut writers {
            frame.clear();
            push_probe(&mut frame, u64::MAX);
            send_all(w, &frame, start, end);
        }
        late
    });
    let load = tokio::spawn(async move {
        tokio::time::sleep_until((start + warm).into()).await;
        let (c0, b0, w0) = (cpu_time(&pids), cpus_busy(&cpus), Instant::now());
        tokio::time::sleep_until((start + end).into()).await;
        let wall = w0.elapsed().as_secs_f64();
        let (b1, total) = cpus_busy(&cpus);
        (
            (cpu_time(&pids) - c0).as_secs_f64() / wall,
            (b1 - b0.0) as f64 / (total - b0.1).max(1) as f64,
        )
    });
    let mut tasks = Vec::new();
    for (is_anchor, mut tcp, mut buf) in readers {
        tasks.push(tokio::spawn(async move {
            let mut rtts = Vec::new();
            loop {
                let mut at = 0;
                while let Some(f) = wire::next_frame(&buf[at..]) {
                    at += f.len;
                    if f.opcode() != wire::OP_BINARY || f.payload.len() < 8 {
                        continue;
                    }
                    let now = start.elapsed();
                    let due = u64::from_be_bytes(f.payload[..8].try_into().unwrap());
                    if due == u64::MAX {
                        return (is_anchor, rtts);
                    }
                    let due = Duration::from_nanos(due);
                    if due >= warm {
                        rtts.push(now.saturating_sub(due).as_micros() as u64);
                    }
                }
                buf.drain(..at);
                match tokio::time::timeout(Duration::from_secs(5), read_more(&mut tcp, &mut buf))
                    .await
                {
                    Ok(Ok(true)) => {}
                    _ => return (is_anchor, rtts),
                }
            }
        }));
    }
    let (mut proxied, mut direct) = (Vec::new(), Vec::new());
    for t in tasks {
        let (is_anchor, rtts) = t.await.unwrap();
        if is_anchor { &mut direct } else { &mut proxied }.extend(rtts);
    }
    let late = sender.join().unwrap();
    let (proxy_share, busy) = load.await.unwrap();
    let mut line = format!(
        "{} rate={rate} sender_late={late}",
        percentiles("", &mut proxied)
    );
    if anchor.is_some() {
        line = format!("{line} {}", percentiles("anchor_", &mut direct));
    }
    println!("{line} proxy_cpu_share={proxy_share:.3} cpus_busy={busy:.3}");
}

/// What the latency probe sends where, and whose CPU time it reports.
#[derive(clap::Args)]
struct Probe {
    #[arg(long)]
    target: SocketAddr,
    /// Also probes this address (the upstream itself) in the same seconds and reports its
    /// round trips as `anchor_*`.
    #[arg(long)]
    anchor: Option<SocketAddr>,
    /// Every Nth message of the schedule goes to the anchor instead (RATE still reaches the
    /// target, so the anchor adds RATE / (N - 1)).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..))]
    anchor_every: u64,
    /// Reports these processes' CPU share over the measured seconds as `proxy_cpu_share`.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Reports how busy these CPUs were over the measured seconds as `cpus_busy` (their mean).
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    #[arg(long)]
    rate: u64,
    #[arg(long, default_value_t = 50)]
    connections: usize,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

/// Busy and total time of `cpus` so far, in clock ticks (see [`cpus_busy_in`]).
fn cpus_busy(cpus: &[usize]) -> (u64, u64) {
    cpus_busy_in(
        &std::fs::read_to_string("/proc/stat").unwrap_or_default(),
        cpus,
    )
}

/// Busy and total time of `cpus` in the text of `/proc/stat`, in clock ticks. Busy is everything
/// but idle, iowait and steal: steal is time the hypervisor gave to someone else.
fn cpus_busy_in(stat: &str, cpus: &[usize]) -> (u64, u64) {
    let (mut busy, mut total) = (0, 0);
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields.next().and_then(|f| f.strip_prefix("cpu")) else {
            continue;
        };
        if !cpu.parse().is_ok_and(|n: usize| cpus.contains(&n)) {
            continue;
        }
        let v: Vec<u64> = fields.take(8).map(|f| f.parse().unwrap_or(0)).collect();
        if let [user, nice, system, idle, iowait, irq, softirq, steal] = v[..] {
            busy += user + nice + system + irq + softirq;
            total += user + nice + system + idle + iowait + irq + softirq + steal;
        }
    }
    (busy, total)
}

/// A probe message: 128 bytes, the first 8 the time it was due (ns since the start; `u64::MAX`
/// ends the run).
fn push_probe(frame: &mut Vec<u8>, due_ns: u64) {
    let mut payload = [0u8; PAYLOAD];
    payload[..8].copy_from_slice(&due_ns.to_be_bytes());
    wire::push_frame(frame, wire::fin(wire::OP_BINARY), &payload, Some(MASK));
}

/// Writes all of `frame` to a non-blocking socket shared with its reader. A full send buffer at
/// these rates means the run is overloaded: it retries until 5 s after the end of the run at the
/// latest. False when the socket failed.
fn send_all(w: &mut std::net::TcpStream, frame: &[u8], start: Instant, end: Duration) -> bool {
    use std::io::Write;
    let mut sent = 0;
    while sent < frame.len() && start.elapsed() < end + Duration::from_secs(5) {
        match w.write(&frame[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(_) => return false,
        }
    }
    true
}

/// `p50_us=.. p99_us=.. p999_us=.. samples=..`, each key after `prefix`.
fn percentiles(prefix: &str, rtts: &mut [u64]) -> String {
    rtts.sort_unstable();
    let pct = |p: f64| {
        rtts.get(((rtts.len() as f64 * p) as usize).min(rtts.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    format!(
        "{prefix}p50_us={} {prefix}p99_us={} {prefix}p999_us={} {prefix}samples={}",
        pct(0.50),
        pct(0.99),
        pct(0.999),
        rtts.len()
    )
}

/// A TLS client that checks only that the server presents `cert` (byte for byte) and skips the
/// two signature checks a verifying client makes (the certificate's and the handshake's). The
/// server does all of its handshake work either way; the client's share shrinks, so that one CPU
/// of load can keep a proxy's TLS handshakes busy.
fn tls_connector(cert: &std::path::Path) -> TlsConnector {
    let pem = std::fs::read(cert).unwrap();
    let expected: CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(ExpectCert {
        expected,
        schemes: provider
            .signature_verification_algorithms
            .supported_schemes(),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// See [`tls_connector`].
#[derive(Debug)]
struct ExpectCert {
    expected: CertificateDer<'static>,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for ExpectCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.expected.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// Sends the upgrade request and reads the answer; true for a valid `101`.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, request: &[u8]) -> io::Result<bool> {
    s.write_all(request).await?;
    let (head, _) = read_response(s).await.map_err(io::Error::other)?;
    Ok(wire::is_accepted(&head))
}

/// Connect, upgrade, reset; `concurrency` at a time.
async fn handshakes(
    target: SocketAddr,
    tls: Option<std::path::PathBuf>,
    concurrency: usize,
    seconds: u64,
    pids: &[u32],
) {
    let connector = tls.as_deref().map(tls_connector);
    let request: Arc<[u8]> = wire::upgrade_request(&target.to_string()).into();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (done, failed, stop) = (Arc::clone(&done), Arc::clone(&failed), Arc::clone(&stop));
        let (connector, request) = (connector.clone(), Arc::clone(&request));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let attempt = async {
                    let mut tcp = TcpStream::connect(target).await?;
                    tcp.set_nodelay(true)?;
                    // Reset instead of TIME_WAIT, so a run does not exhaust local ports.
                    tcp.set_zero_linger()?;
                    match &connector {
                        Some(c) => {
                            let name = ServerName::from(target.ip());
                            let mut s = c.connect(name, tcp).await?;
                            upgrade(&mut s, &request).await
                        }
                        None => upgrade(&mut tcp, &request).await,
                    }
                };
                match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                    Ok(Ok(true)) => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let w = window(&done, pids, seconds).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "handshakes_per_sec={:.0} proxy_cpu_us_per_op={:.2} proxy_cpu_share={:.2} failed={}",
        w.rate,
        w.cpu_us_per_op,
        w.share,
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

#[tokio::main(flavor = "current_thread")]
async fn main() {
    match Cli::parse().cmd {
        Cmd::Echo { listen } => echo_server(listen).await,
        Cmd::Relay { listen, upstream } => relay_server(listen, upstream).await,
        Cmd::Cert { dir } => cert(&dir),
        Cmd::Idle {
            target,
            sessions,
            pids,
        } => idle(target, sessions, &pids).await,
        Cmd::Stalled {
            target,
            connections,
            pids,
            tls,
        } => stalled(target, connections, &pids, tls).await,
        Cmd::Throughput {
            target,
            pids,
            connections,
            depth,
            seconds,
        } => throughput(target, connections, depth, seconds, &pids).await,
        Cmd::Latency(probe) => latency(probe).await,
        Cmd::Handshakes {
            target,
            pids,
            tls_cert,
            concurrency,
            seconds,
        } => handshakes(target, tls_cert, concurrency, seconds, &pids).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  900 0 300 5000 10 0 20 70 0 0
cpu0 400 0 100 2000 5 0 10 30 0 0
cpu1 500 0 200 3000 5 0 10 40 0 0
intr 12345
ctxt 678
";

    #[test]
    fn cpus_busy_counts_only_the_cpus_asked_for_and_not_steal() {
        assert_eq!(cpus_busy_in(STAT, &[0]), (510, 2545));
        assert_eq!(cpus_busy_in(STAT, &[1]), (710, 3755));
        assert_eq!(cpus_busy_in(STAT, &[0, 1]), (1220, 6300));
        assert_eq!(cpus_busy_in(STAT, &[]), (0, 0));
        assert_eq!(cpus_busy_in(STAT, &[7]), (0, 0));
    }

    #[test]
    fn user_and_system_time_are_read_after_the_command_name() {
        let line = "4508 (nginx: (worker) x) S 4506 4506 4506 0 -1 4194560 1339 0 0 0 \
                    731 2094 0 0 20 0 1 0 1234 1000 300";
        assert_eq!(user_system_in(line), Some((731, 2094)));
        assert_eq!(user_system_in("4508 (nginx) S 1 2"), None);
        assert_eq!(user_system_in("no command name"), None);
    }

    #[test]
    fn percentiles_name_their_keys_and_pick_by_rank() {
        let mut rtts: Vec<u64> = (1..=1000).rev().collect();
        assert_eq!(
            percentiles("anchor_", &mut rtts),
            "anchor_p50_us=501 anchor_p99_us=991 anchor_p999_us=1000 anchor_samples=1000"
        );
        assert_eq!(
            percentiles("", &mut []),
            "p50_us=0 p99_us=0 p999_us=0 samples=0"
        );
    }
}
