//! Probes and lifecycle handlers as the kubelet runs them: `httpGet` (plain HTTP; a 2xx or 3xx
//! status succeeds), `tcpSocket` (a connection succeeds) and `exec` (exit code 0 succeeds), each
//! bounded by its timeout; plus the counting of successes and failures against the thresholds.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What a handler does, independent of whether it is a probe or a hook.
#[derive(Debug, Clone, Copy)]
pub enum Handler<'a> {
    Http(&'a HTTPGetAction),
    Tcp(&'a TCPSocketAction),
    Exec(&'a ExecAction),
}

impl<'a> Handler<'a> {
    /// The handler of a probe, if it has one this runner supports.
    pub fn of_probe(probe: &'a Probe) -> Option<Self> {
        if let Some(http) = &probe.http_get {
            Some(Handler::Http(http))
        } else if let Some(tcp) = &probe.tcp_socket {
            Some(Handler::Tcp(tcp))
        } else {
            probe.exec.as_ref().map(Handler::Exec)
        }
    }
}

/// Where and how handlers of one container run.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub pod_ip: &'a str,
    pub container: &'a Container,
    pub env: &'a [(String, String)],
    pub workdir: &'a Path,
    /// The namespaces an `exec` handler joins (the container's).
    pub enter: super::mounts::Enter<'a>,
}

/// Runs the handler once; `Ok(())` is success, `Err(why)` failure.
pub async fn run(
    handler: Handler<'_>,
    target: &Target<'_>,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, run_unbounded(handler, target)).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

async fn run_unbounded(handler: Handler<'_>, target: &Target<'_>) -> Result<(), String> {
    match handler {
        Handler::Tcp(tcp) => {
            let host = tcp.host.as_deref().unwrap_or(target.pod_ip);
            let port = port(&tcp.port, target.container)?;
            tokio::net::TcpStream::connect((host, port))
                .await
                .map(drop)
                .map_err(|err| format!("connect {host}:{port}: {err}"))
        }
        Handler::Http(http) => {
            let host = http.host.as_deref().unwrap_or(target.pod_ip);
            let port = port(&http.port, target.container)?;
            let path = http.path.as_deref().unwrap_or("/");
            let status = http_get(host, port, path).await?;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("GET http://{host}:{port}{path}: status {status}"))
            }
        }
        Handler::Exec(exec) => {
            let command = exec.command.as_deref().unwrap_or_default();
            let Some((program, args)) = command.split_first() else {
                return Err("exec with an empty command".into());
            };
            let mut command = std::process::Command::new(program);
            command
                .args(args)
                .env_clear()
                .envs(target.env.iter().map(|(k, v)| (k, v)))
                .current_dir(target.workdir);
            target.enter.apply(&mut command, target.workdir)?;
            let status = tokio::process::Command::from(command)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|err| format!("exec {program}: {err}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("exec {program}: {status}"))
            }
        }
    }
}

/// A numeric port, or a named port of the container.
fn port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(number) => {
            u16::try_from(*number).map_err(|_| format!("port {number} out of range"))
        }
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|candidate| candidate.name.as_deref() == Some(name.as_str()))
            .and_then(|candidate| u16::try_from(candidate.container_port).ok())
            .ok_or_else(|| format!("container has no port named {name}")),
    }
}

/// A minimal HTTP/1.1 GET returning the status code.
async fn http_get(host: &str, port: u16, path: &str) -> Result<u16, String> {
    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|err| format!("connect {host}:{port}: {err}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.36\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|err| format!("write to {host}:{port}: {err}"))?;
    let mut head = [0u8; 64];
    let mut filled = 0;
    while filled < head.len() {
        let read = stream
            .read(&mut head[filled..])
            .await
            .map_err(|err| format!("read from {host}:{port}: {err}"))?;
        if read == 0 {
            break;
        }
        filled += read;
        if head[..filled].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..filled]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no HTTP status from {host}:{port}: {line:?}"))
}

/// The state of one probe of one container: when it runs next and its current verdict.
#[derive(Debug, Clone)]
pub struct ProbeState {
    next: Instant,
    successes: i32,
    failures: i32,
    /// The current verdict after applying the thresholds.
    pub passing: bool,
    /// Why the last run failed, if it did.
    pub last_error: Option<String>,
}

impl ProbeState {
    /// A probe of a container started at `started`; it first runs after the initial delay and
    /// starts out failing.
    pub fn new(probe: &Probe, started: Instant) -> Self {
        Self {
            next: started + seconds(probe.initial_delay_seconds, 0),
            successes: 0,
            failures: 0,
            passing: false,
            last_error: None,
        }
    }

    /// Whether it is time to run the probe.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Records one run's result; returns true if the verdict changed.
    pub fn record(&mut self, probe: &Probe, now: Instant, result: Result<(), String>) -> bool {
        self.next = now + seconds(probe.period_seconds, 10);
        let before = self.passing;
        match result {
            Ok(()) => {
                self.successes += 1;
                self.failures = 0;
                self.last_error = None;
                if self.successes >= probe.success_threshold.unwrap_or(1).max(1) {
                    self.passing = true;
                }
            }
            Err(why) => {
                self.failures += 1;
                self.successes = 0;
                self.last_error = Some(why);
                if self.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                    self.passing = false;
                }
            }
        }
        before != self.passing
    }
}

/// The probe's timeout (default 1 s).
pub fn timeout(probe: &Probe) -> Duration {
    seconds(probe.timeout_seconds, 1)
}

fn seconds(value: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(value.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(json: serde_json::Value) -> Probe {
        serde_json::from_value(json).expect("probe")
    }

    #[test]
    fn thresholds_decide_the_verdict() {
        let spec = probe(
            serde_json::json!({"periodSeconds": 1, "failureThreshold": 2, "successThreshold": 1}),
        );
        let start = Instant::now();
        let mut state = ProbeState::new(&spec, start);
        assert!(state.due(start));
        assert!(state.record(&spec, start, Ok(())));
        assert!(state.passing);
        assert!(!state.record(&spec, start, Err("down".into())));
        assert!(state.passing, "one failure is below the threshold");
        assert!(state.record(&spec, start, Err("down".into())));
        assert!(!state.passing);
        assert!(!state.due(start));
    }

    #[tokio::test]
    async fn handlers_succeed_and_fail_for_real() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            for _ in 0..4 {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 512];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            }
        });
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "app", "ports": [{"name": "http", "containerPort": port}]
        }))
        .expect("container");
        let dir = std::env::temp_dir();
        let target = Target {
            pod_ip: "127.0.0.1",
            container: &container,
            env: &[],
            workdir: &dir,
            enter: Default::default(),
        };
        let http = probe(serde_json::json!({"httpGet": {"port": "http", "path": "/readyz"}}));
        let tcp = probe(serde_json::json!({"tcpSocket": {"port": port}}));
        let exec_ok = probe(serde_json::json!({"exec": {"command": ["/bin/sh", "-c", "exit 0"]}}));
        let exec_bad = probe(serde_json::json!({"exec": {"command": ["/bin/sh", "-c", "exit 3"]}}));
        let closed = probe(serde_json::json!({"tcpSocket": {"port": 1}}));
        let second = Duration::from_secs(1);
        for (spec, ok) in [
            (&http, true),
            (&tcp, true),
            (&exec_ok, true),
            (&exec_bad, false),
            (&closed, false),
        ] {
            let handler = Handler::of_probe(spec).expect("handler");
            assert_eq!(run(handler, &target, second).await.is_ok(), ok, "{spec:?}");
        }
    }
}
