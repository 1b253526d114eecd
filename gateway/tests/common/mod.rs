//! Shared helpers of the gateway's integration tests: an in-test upstream (WebSocket echo plus a
//! few plain HTTP routes) and a silent one, the gateway as a real child process, and raw-socket
//! clients.
//! Everything listens on 127.0.0.1 only; every wait is bounded.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

pub const WAIT: Duration = Duration::from_secs(30);

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the upstream saw.
#[derive(Default)]
pub struct UpstreamLog {
    pub heads: Mutex<Vec<String>>,
    /// How each WebSocket session ended, as the app saw it: the code of the close frame it
    /// received (1005 for one without a code), or `None` if its connection ended without one.
    pub ws_ends: Mutex<Vec<Option<u16>>>,
    /// Released by tests to let `/sse` send its second event.
    pub sse_go: Notify,
    /// The text messages it echoed, in order.
    pub echoed: Mutex<Vec<String>>,
}

/// Events `GET /ticks` sends, one every [`TICK_EVERY`].
pub const TICKS: usize = 6;
pub const TICK_EVERY: Duration = Duration::from_millis(400);

/// Starts the upstream on 127.0.0.1:0. `GET /refuse` (an upgrade or not) gets a `403` with a
/// 4-byte body. WebSocket: echoes every message; a text `close:<code>`
/// makes it close with that code, `die` makes it drop the connection, `flood` makes it send
/// until the write fails. HTTP: `GET /hello`, `POST /echo`, `GET /sse` (one event, then
/// a second one after `sse_go`, then the end), `GET /big` (64 MiB), `GET /ticks` ([`TICKS`]
/// events, one every [`TICK_EVERY`]), `POST /sink` (answers once the body has ended).
pub async fn start_upstream() -> (SocketAddr, Arc<UpstreamLog>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(UpstreamLog::default());
    let l2 = Arc::clone(&log);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let log = Arc::clone(&l2);
            tokio::spawn(async move { upstream_conn(tcp, log).await });
        }
    });
    (addr, log)
}

/// Starts an app on 127.0.0.1:0 that takes every connection and never answers (it reads
/// nothing and holds the connections).
pub async fn start_silent_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    addr
}

async fn upstream_conn(mut tcp: TcpStream, log: Arc<UpstreamLog>) {
    // Room for the largest head the gateway accepts (16 KiB) and the headers it adds.
    let mut buf = vec![0u8; 32 * 1024];
    let mut head;
    let deadline = Instant::now() + WAIT;
    loop {
        let n = tcp.peek(&mut buf).await.unwrap_or(0);
        head = String::from_utf8_lossy(&buf[..n]).to_string();
        if head.contains("\r\n\r\n") || n == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let head_only = head
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    log.heads.lock().unwrap().push(head_only.clone());
    if head_only.starts_with("GET /refuse ") {
        let _ = tcp
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
            .await;
        return;
    }
    if head_only
        .to_ascii_lowercase()
        .contains("upgrade: websocket")
    {
        let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
            return;
        };
        let mut end = None;
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Close(frame) => end = Some(frame.map_or(1005, |f| u16::from(f.code))),
                // The app fails: its connection ends without a close frame.
                Message::Text(t) if t.as_str() == "die" => return,
                // The app keeps sending (64 KiB messages, 64 MiB at most) until the client's
                // side stops taking them and the write fails.
                Message::Text(t) if t.as_str() == "flood" => {
                    let chunk = vec![b'x'; 64 * 1024];
                    for _ in 0..1024 {
                        if ws.send(Message::binary(chunk.clone())).await.is_err() {
                            break;
                        }
                    }
                }
                Message::Text(t) if t.starts_with("close:") => {
                    let code: u16 = t[6..].parse().unwrap();
                    let _ = ws
                        .close(Some(CloseFrame {
                            code: CloseCode::from(code),
                            reason: "".into(),
                        }))
                        .await;
                }
                Message::Text(_) | Message::Binary(_) => {
                    if let Message::Text(t) = &msg {
                        log.echoed.lock().unwrap().push(t.to_string());
                    }
                    let Ok(()) = ws.send(msg).await else { return };
                }
                _ => {}
            }
        }
        log.ws_ends.lock().unwrap().push(end);
        return;
    }
    // Plain HTTP: consume the head (and a body for /echo).
    let head_len = head.find("\r\n\r\n").map(|i| i + 4).unwrap_or(0);
    let mut consumed = vec![0u8; head_len];
    if tcp.read_exact(&mut consumed).await.is_err() {
        return;
    }
    let first = head_only.lines().next().unwrap_or_default().to_string();
    if first.starts_with("GET /hello") {
        let _ = tcp
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello",
            )
            .await;
    } else if first.starts_with("POST /echo") {
        let len: usize = head_only
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        let _ = tcp.read_exact(&mut body).await;
        let mut res = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
        res.extend_from_slice(&body);
        let _ = tcp.write_all(&res).await;
    } else if first.starts_with("GET /big") {
        // More than any socket buffer holds, until the client stops taking it.
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n")
            .await;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..1024 {
            if tcp.write_all(&chunk).await.is_err() {
                break;
            }
        }
    } else if first.starts_with("GET /ticks") {
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
            .await;
        for i in 0..TICKS {
            tokio::time::sleep(TICK_EVERY).await;
            let _ = tcp.write_all(format!("data: {i}\n\n").as_bytes()).await;
        }
    } else if first.starts_with("POST /sink") {
        // Reads the body to its end before answering.
        let mut sink = [0u8; 4096];
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await;
    } else if first.starts_with("GET /sse") {
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\ndata: one\n\n")
            .await;
        let _ = tokio::time::timeout(WAIT, log.sse_go.notified()).await;
        let _ = tcp.write_all(b"data: two\n\n").await;
    } else {
        let _ = tcp
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            .await;
    }
    let _ = tcp.shutdown().await;
}

/// The gateway as a child process.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub token_file: PathBuf,
    pub dir: PathBuf,
}

pub const TOKEN: &str = "s3cret-token";

/// A fresh temporary directory under the target dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "longconn-gw-{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ rand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_u64() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    u128::from(h.finish())
}

impl Gateway {
    /// Starts the gateway in front of `upstream` with extra flags; waits for /healthz.
    ///
    /// Its ports were free a moment before it binds them ([`free_port`]), so another process
    /// may take one first: a gateway that exits because an address is in use is started again
    /// on new ports, a few times at most.
    pub async fn start(upstream: SocketAddr, extra: &[&str]) -> Gateway {
        Gateway::start_on_ports(upstream, extra, free_port).await
    }

    /// [`Gateway::start`] with its ports (listener, then admin) taken from `port`.
    pub async fn start_on_ports(
        upstream: SocketAddr,
        extra: &[&str],
        mut port: impl FnMut() -> u16,
    ) -> Gateway {
        const ATTEMPTS: usize = 5;
        for _ in 1..ATTEMPTS {
            let mut gateway = Gateway::spawn(upstream, extra, None, &mut port);
            if gateway.healthy_unless_port_taken().await {
                return gateway;
            }
        }
        Gateway::spawn(upstream, extra, None, &mut port)
            .wait_healthy()
            .await
    }

    /// Waits for /healthz: true once it answers, false when the gateway exited because one of
    /// its addresses was in use; any other exit, or no answer within [`WAIT`], fails the test.
    async fn healthy_unless_port_taken(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok((200, _)) = self.admin_request("GET", "/healthz", None, "").await {
                return true;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = self.log();
                assert!(
                    log.contains("Address already in use"),
                    "gateway exited ({status}): {log}"
                );
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not come up: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the gateway without waiting for it (one that should refuse to start).
    pub fn spawn_only(upstream: SocketAddr, extra: &[&str]) -> Gateway {
        Gateway::spawn(upstream, extra, None, &mut free_port)
    }

    /// The gateway's log lines that are JSON objects with `message` (`--log-format json`).
    pub fn json_lines(&self, message: &str) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }

    /// Starts the gateway with its open-file limit set to `(soft, hard)` first, as a container
    /// runtime would; does not wait for it.
    pub fn spawn_with_nofile(upstream: SocketAddr, extra: &[&str], nofile: (u64, u64)) -> Gateway {
        Gateway::spawn(upstream, extra, Some(nofile), &mut free_port)
    }

    fn spawn(
        upstream: SocketAddr,
        extra: &[&str],
        nofile: Option<(u64, u64)>,
        port: &mut dyn FnMut() -> u16,
    ) -> Gateway {
        let dir = temp_dir("gw");
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], port()));
        let gateway = env!("CARGO_BIN_EXE_longconn-gateway");
        // util-linux's prlimit sets the limits and then runs the gateway in its place.
        let mut command = match nofile {
            Some((soft, hard)) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={soft}:{hard}")).arg(gateway);
                c
            }
            None => Command::new(gateway),
        };
        command
            .args([
                "run",
                "--listen",
                &addr.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .args(["--upstream", &upstream.to_string()])
            .args(["--admin-token-file", token_file.to_str().unwrap()])
            .args(extra)
            // The default of 10,000 connections needs more descriptors than some machines allow
            // (the gateway refuses to start then); the tests need far fewer. A flag in `extra`
            // wins over the variable.
            .env("LONGCONN_GATEWAY_MAX_CONNECTIONS", "1000")
            .env("LONGCONN_GATEWAY_LOG_LEVEL", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("stderr.log")).unwrap(),
            ));
        let child = command.spawn().unwrap();
        Gateway {
            child,
            addr,
            admin,
            token_file,
            dir,
        }
    }

    /// Waits for /healthz.
    pub async fn wait_healthy(mut self) -> Gateway {
        let healthy = self.healthy_unless_port_taken().await;
        assert!(healthy, "gateway did not come up: {}", self.log());
        self
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/chat", self.addr)
    }

    /// One admin request (HTTP/1.1, Connection: close); returns status and body.
    pub async fn admin_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        http_request(self.admin, method, path, token, body).await
    }

    /// The status of `GET /readyz`.
    pub async fn readyz(&self) -> u16 {
        self.admin_request("GET", "/readyz", None, "")
            .await
            .unwrap()
            .0
    }

    pub async fn metrics(&self) -> String {
        self.admin_request("GET", "/metrics", None, "")
            .await
            .unwrap()
            .1
    }

    /// The value of a metric series (exact line prefix), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        let [value] = self.metrics_of([series]).await;
        value
    }

    /// The values of several metric series (exact line prefixes; 0 when absent) from one scrape.
    pub async fn metrics_of<const N: usize>(&self, series: [&str; N]) -> [f64; N] {
        let text = self.metrics().await;
        series.map(|series| {
            text.lines()
                .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0.0)
        })
    }

    /// `POST /drain` with `body`; asserts 200 and returns the report.
    pub async fn post_drain(&self, body: &str) -> serde_json::Value {
        let (status, text) = self
            .admin_request("POST", "/drain", Some(TOKEN), body)
            .await
            .unwrap();
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    pub async fn drain_report(&self) -> serde_json::Value {
        self.report("/drain").await
    }

    /// Polls the drain report until it says Drained.
    pub async fn wait_drained(&self) -> serde_json::Value {
        self.wait_report("/drain", "Drained").await
    }

    /// `POST /rebalance` with `body`; returns the status and the body, the report when 200.
    pub async fn post_rebalance(&self, body: &str) -> (u16, String) {
        self.admin_request("POST", "/rebalance", Some(TOKEN), body)
            .await
            .unwrap()
    }

    pub async fn rebalance_report(&self) -> serde_json::Value {
        self.report("/rebalance").await
    }

    /// Polls the rebalance report until it says Done.
    pub async fn wait_rebalanced(&self) -> serde_json::Value {
        self.wait_report("/rebalance", "Done").await
    }

    /// `GET path` with the token: asserts 200 and returns the report.
    async fn report(&self, path: &str) -> serde_json::Value {
        let (status, body) = self
            .admin_request("GET", path, Some(TOKEN), "")
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Polls the report at `path` until its state is `done` (bounded).
    async fn wait_report(&self, path: &str, done: &str) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = self.report(path).await;
            if r["state"] == done {
                return r;
            }
            assert!(Instant::now() < deadline, "{path} did not finish: {r}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "gateway did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A raw HTTP/1.1 request; reads the response to EOF.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let run = async {
        let mut tcp = TcpStream::connect(addr).await?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status in {text:?}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .map_err(|_| std::io::Error::other("timeout"))?
}

/// Sends a raw request head and returns the whole response head (and the stream).
pub async fn raw_head(addr: SocketAddr, request: &str) -> (String, TcpStream) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    (head, tcp)
}

/// Requests the upstream's `/sse` stream through `addr` and reads until its first event; returns
/// the stream and what was read so far. The upstream then holds the stream open until `sse_go`
/// (or WAIT).
pub async fn open_event_stream(addr: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("data: one") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    (tcp, seen)
}

/// Reads up to and including the blank line, byte by byte (test code only).
pub async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    let deadline = Instant::now() + WAIT;
    while !head.ends_with(b"\r\n\r\n") {
        assert!(Instant::now() < deadline, "no head");
        match tokio::time::timeout(WAIT, tcp.read(&mut b)).await {
            Ok(Ok(1)) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).to_string()
}

/// The value of header `name` in a head (the one the app received), if exactly one.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    let mut values = head.lines().filter_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then_some(v.trim())
    });
    let one = values.next();
    assert!(values.next().is_none(), "{name} twice in {head}");
    one
}

pub fn upgrade_request(addr: SocketAddr, extra: &str) -> String {
    format!(
        "GET /chat HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Opens a raw WebSocket session (the test speaks frames itself).
pub async fn raw_session(addr: SocketAddr) -> TcpStream {
    let (head, tcp) = raw_head(addr, &upgrade_request(addr, "")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// A masked client frame.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80 | opcode];
    let key = [0x11, 0x22, 0x33, 0x44];
    assert!(payload.len() < 65536);
    if payload.len() < 126 {
        v.push(0x80 | payload.len() as u8);
    } else {
        v.push(0x80 | 126);
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    v.extend_from_slice(&key);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    v
}

/// A frame read from the server side (a whole stream or its read half): opcode and payload.
pub async fn read_server_frame<R>(tcp: &mut R) -> Option<(u8, Vec<u8>)>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut h = [0u8; 2];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut h))
        .await
        .ok()?
        .ok()?;
    let mut len = u64::from(h[1] & 0x7F);
    if len == 126 {
        let mut b = [0u8; 2];
        tcp.read_exact(&mut b).await.ok()?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        tcp.read_exact(&mut b).await.ok()?;
        len = u64::from_be_bytes(b);
    }
    let mut payload = vec![0u8; len as usize];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((h[0] & 0x0F, payload))
}

/// Reads frames until a close frame; returns its code.
pub async fn read_close_code(tcp: &mut TcpStream) -> Option<u16> {
    for _ in 0..1000 {
        let (op, payload) = read_server_frame(tcp).await?;
        if op == 0x8 {
            return Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
    None
}

/// A tungstenite client over plain TCP.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Connects a tungstenite client.
pub async fn ws_connect(url: &str) -> Ws {
    ws_connect_with(url, &[]).await
}

/// Connects a tungstenite client that sends `headers` with its upgrade request.
pub async fn ws_connect_with(url: &str, headers: &[(&'static str, &str)]) -> Ws {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};
    let mut request = url.into_client_request().unwrap();
    for &(name, value) in headers {
        request
            .headers_mut()
            .insert(name, HeaderValue::from_str(value).unwrap());
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect timeout")
        .expect("connect");
    ws
}

/// Opens a client that sends `headers` with its upgrade and checks that it talks to the app.
pub async fn talking_client(gw: &Gateway, i: usize, headers: &[(&'static str, &str)]) -> Ws {
    let mut ws = ws_connect_with(&gw.ws_url(), headers).await;
    assert_talks(&mut ws, &format!("hi {i}")).await;
    ws
}

/// Sends `text` and checks that the app echoes it (bounded).
pub async fn assert_talks(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let echo = tokio::time::timeout(WAIT, ws.next()).await;
    assert_eq!(
        echo.expect("an echo in time").unwrap().unwrap(),
        Message::text(text)
    );
}

/// Reads a tungstenite client until the end; returns the close code it received, if any.
pub async fn received_close_code<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    received_close(ws).await.map(|(code, _)| code)
}

/// Reads a tungstenite client until the end; returns the code and reason text of the close frame
/// it received, if any.
pub async fn received_close<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
) -> Option<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut close = None;
    for _ in 0..10_000 {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    close
}

/// Polls `f` until it returns true (bounded).
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
