//! A pod of the Deployment the operator generates, run on this machine without Kubernetes.
//!
//! [`Pod::new`] takes what `longconn_operator::desired::desired` builds for a LongConnService
//! (observed offline, as `longconn-operator render` does, but with a real self-signed
//! certificate and a known admin token), and gives the pod what the kubelet would: its volumes,
//! as directories of a temporary directory (an emptyDir empty, a Secret's keys as files), and
//! its network namespace, as ports on 127.0.0.1 (every container port on a free port, the app's
//! port on the test's own upstream). [`Pod::remap`] rewrites one argument of a container
//! accordingly, and nothing else: an address in the pod becomes its port on 127.0.0.1, a path
//! under one of the container's mounts becomes the path in that volume's directory. Every other
//! flag, name and value is run exactly as generated.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    time::Instant,
};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Container, PodSpec, Probe, Secret},
    },
    apimachinery::pkg::util::intstr::IntOrString,
    jiff::Timestamp,
};
use longconn_operator::{
    certs,
    crd::LongConnService,
    desired::{self, GATEWAY_CONTAINER, Observed, ServedApis, Settings},
    kinds::Kind,
};

use crate::{WAIT, gateway_bin::gateway_binary, http};

/// The admin token the Secret `<name>-admin-token` holds in these tests. The gateway container
/// mounts it; the app containers never see it.
pub const ADMIN_TOKEN: &str = "the-secrets-admin-token";

/// A LongConnService sample of this repository (`path` from the repository's root), with the
/// namespace and uid the API server would give it.
pub fn sample(path: &str) -> LongConnService {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let full = manifest_dir.parent().unwrap_or(manifest_dir).join(path);
    let text = std::fs::read_to_string(&full)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()));
    let mut lcs: LongConnService = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is no LongConnService: {e}", full.display()));
    lcs.metadata
        .namespace
        .get_or_insert_with(|| "default".to_owned());
    lcs.metadata.uid = Some("11111111-2222-3333-4444-555555555555".to_owned());
    lcs
}

/// A generated pod with its volumes and ports on this machine.
pub struct Pod {
    /// Everything `desired` generated for the LongConnService, every optional API served.
    pub manifests: Vec<desired::Manifest>,
    /// The pod spec of the generated Deployment, exactly as generated.
    pub spec: PodSpec,
    /// Volume name → its directory.
    volumes: BTreeMap<String, PathBuf>,
    /// Port in the pod → port on 127.0.0.1.
    ports: BTreeMap<u16, u16>,
    root: tempfile::TempDir,
}

impl Pod {
    /// The pod `desired` generates for `lcs`, its volumes mounted under a temporary directory,
    /// its container ports on free ports and the app's port (`spec.gateway.upstreamPort`) on
    /// `upstream`.
    pub fn new(lcs: &LongConnService, upstream: SocketAddr) -> Pod {
        let manifests = generate(lcs);
        let deployment: Deployment = manifests
            .iter()
            .find(|m| m.kind == Kind::Deployment)
            .map(|m| serde_json::from_value(m.object.clone()).expect("a Deployment"))
            .expect("desired builds a Deployment");
        let spec = deployment
            .spec
            .and_then(|d| d.template.spec)
            .expect("the Deployment has a pod spec");
        let secrets: Vec<Secret> = manifests
            .iter()
            .filter(|m| m.kind == Kind::Secret)
            .map(|m| serde_json::from_value(m.object.clone()).expect("a Secret"))
            .collect();
        let root = tempfile::tempdir().expect("a temporary directory");
        let volumes = mount_volumes(&spec, &secrets, root.path());

        let mut ports = BTreeMap::new();
        for container in all_containers(&spec) {
            for port in container.ports.iter().flatten() {
                let port = u16::try_from(port.container_port).expect("a port number");
                ports.insert(port, free_port());
            }
        }
        let app_port = u16::try_from(lcs.spec.gateway.upstream_port).expect("a port number");
        ports.insert(app_port, upstream.port());
        Pod {
            manifests,
            spec,
            volumes,
            ports,
            root,
        }
    }

    /// The container called `name`, main or init.
    pub fn container(&self, name: &str) -> &Container {
        all_containers(&self.spec)
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("the pod has no container {name}"))
    }

    /// The gateway sidecar.
    pub fn gateway(&self) -> &Container {
        self.container(GATEWAY_CONTAINER)
    }

    /// Where `port` of the pod is reached from this machine.
    pub fn host_addr(&self, port: u16) -> SocketAddr {
        let host = self
            .ports
            .get(&port)
            .unwrap_or_else(|| panic!("port {port} is not a port of the pod"));
        SocketAddr::from(([127, 0, 0, 1], *host))
    }

    /// Where the container port called `name` of `container` is reached from this machine.
    pub fn named_port(&self, container: &Container, name: &str) -> SocketAddr {
        let port = container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("container {} has no port {name}", container.name));
        self.host_addr(u16::try_from(port.container_port).expect("a port number"))
    }

    /// `arg` of `container` as it runs on this machine: an address in the pod (on 0.0.0.0 or
    /// 127.0.0.1) becomes its port on 127.0.0.1, a path under one of the container's mounts
    /// becomes that path in the volume's directory; `--flag=value` keeps its flag. Any other
    /// argument is returned as it is.
    pub fn remap(&self, container: &Container, arg: &str) -> String {
        let (flag, value) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (&arg[..=flag.len()], value),
            _ => ("", arg),
        };
        if let Ok(addr) = value.parse::<SocketAddr>() {
            let in_pod = addr.ip().is_unspecified() || addr.ip().is_loopback();
            return match self.ports.get(&addr.port()) {
                Some(port) if in_pod => format!("{flag}127.0.0.1:{port}"),
                _ => arg.to_owned(),
            };
        }
        let mut mounts = self.mounts(container);
        // The deepest mount first, as a path resolves in the container.
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        for (mount_path, dir) in mounts {
            if let Some(rest) = value.strip_prefix(mount_path.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return format!("{flag}{}{rest}", dir.display());
            }
        }
        arg.to_owned()
    }

    /// The directory each mount of `container` shows: (mount path, directory).
    pub fn mounts(&self, container: &Container) -> Vec<(String, PathBuf)> {
        container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                let dir = self
                    .volumes
                    .get(&m.name)
                    .unwrap_or_else(|| panic!("no volume {} in the pod", m.name));
                let dir = match &m.sub_path {
                    Some(sub) if !sub.is_empty() => dir.join(sub),
                    _ => dir.clone(),
                };
                (m.mount_path.clone(), dir)
            })
            .collect()
    }

    /// The directory of the volume called `name`.
    pub fn volume(&self, name: &str) -> &Path {
        self.volumes
            .get(name)
            .unwrap_or_else(|| panic!("no volume {name} in the pod"))
    }

    /// Starts the gateway container: the image's entrypoint, the gateway binary of this
    /// workspace, with the generated arguments remapped and no environment but what the
    /// container sets. Returns once its startup probe answers 200.
    pub async fn start_gateway(&self) -> RunningGateway {
        let gateway = self.gateway();
        assert!(
            gateway.command.is_none(),
            "the gateway runs its image's entrypoint"
        );
        let args: Vec<String> = gateway
            .args
            .iter()
            .flatten()
            .map(|arg| self.remap(gateway, arg))
            .collect();
        let log = self.root.path().join("gateway.log");
        let out = std::fs::File::create(&log).expect("the gateway's log file");
        let child = std::process::Command::new(gateway_binary())
            .args(&args)
            .env_clear()
            .envs(container_env(gateway))
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("the gateway starts");
        let mut running = RunningGateway { child, log, args };
        let startup = gateway.startup_probe.as_ref().expect("a startup probe");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(200) = self.probe(gateway, startup).await {
                return running;
            }
            if let Ok(Some(status)) = running.child.try_wait() {
                panic!(
                    "the gateway exited ({status}) with the generated flags {:?}:\n{}",
                    running.args,
                    running.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the gateway's startup probe never answered 200:\n{}",
                running.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Runs one httpGet `probe` of `container` as the kubelet would; returns the status code.
    pub async fn probe(&self, container: &Container, probe: &Probe) -> std::io::Result<u16> {
        let get = probe.http_get.as_ref().expect("an httpGet probe");
        assert!(
            get.scheme.as_deref().is_none_or(|s| s == "HTTP"),
            "a plain HTTP probe"
        );
        let addr = match &get.port {
            IntOrString::Int(port) => self.host_addr(u16::try_from(*port).expect("a port")),
            IntOrString::String(name) => self.named_port(container, name),
        };
        http::get_status(addr, get.path.as_deref().unwrap_or("/")).await
    }

    /// Runs the preStop exec hook of `container` as the kubelet would, with its arguments
    /// remapped and only the container's environment (and this machine's `PATH`, where its
    /// image would have one); returns its output once it has exited.
    pub async fn run_pre_stop(&self, container: &Container) -> Output {
        let command: Vec<String> = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.exec.as_ref())
            .and_then(|e| e.command.clone())
            .unwrap_or_else(|| panic!("container {} has no exec preStop hook", container.name))
            .iter()
            .map(|arg| self.remap(container, arg))
            .collect();
        let (program, args) = command.split_first().expect("a command");
        let run = tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(container_env(container))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(WAIT, run)
            .await
            .unwrap_or_else(|_| panic!("the preStop hook {command:?} did not return"))
            .unwrap_or_else(|e| panic!("cannot run the preStop hook {command:?}: {e}"))
    }
}

/// The gateway process of a [`Pod`]; killed when dropped.
pub struct RunningGateway {
    child: Child,
    log: PathBuf,
    /// The arguments it runs with, remapped.
    pub args: Vec<String>,
}

impl RunningGateway {
    /// What it wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `desired` builds for `lcs`, observed offline with a fresh self-signed certificate,
/// [`ADMIN_TOKEN`] and every optional API served.
fn generate(lcs: &LongConnService) -> Vec<desired::Manifest> {
    let settings = Settings::default();
    let name = lcs.metadata.name.clone().expect("a name");
    let validity = lcs.spec.tls.validity.to_std().expect("a validity");
    let dns_names = desired::certificate_dns_names(lcs, &settings);
    let certificate = certs::ensure(
        &certs::Stored::default(),
        &name,
        &dns_names,
        validity,
        Timestamp::now(),
    )
    .expect("a self-signed certificate");
    let observed = Observed {
        update_replicas: Some(lcs.spec.replicas),
        admin_token: ADMIN_TOKEN.to_owned(),
        certificate: Some(certificate.bundle),
        apis: ServedApis {
            service_monitor: true,
            prometheus_rule: true,
            cert_manager: true,
        },
        routing: desired::ServiceRouting::default(),
    };
    desired::desired(lcs, &observed, &settings)
}

/// Makes a directory per volume of `spec` under `root`: an emptyDir (or a volume of a kind the
/// tests do not fill) empty, a Secret's keys as files.
fn mount_volumes(spec: &PodSpec, secrets: &[Secret], root: &Path) -> BTreeMap<String, PathBuf> {
    let mut volumes = BTreeMap::new();
    for volume in spec.volumes.iter().flatten() {
        let dir = root.join("volumes").join(&volume.name);
        std::fs::create_dir_all(&dir).expect("a volume directory");
        if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.as_ref()) {
            let secret = secrets
                .iter()
                .find(|s| s.metadata.name.as_ref() == Some(name))
                .unwrap_or_else(|| panic!("desired builds no Secret {name} for the pod"));
            for (key, value) in secret.data.iter().flatten() {
                std::fs::write(dir.join(key), &value.0).expect("a Secret's file");
            }
        }
        volumes.insert(volume.name.clone(), dir);
    }
    volumes
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
}

/// The plain `env` values a container sets.
fn container_env(container: &Container) -> Vec<(String, String)> {
    container
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect()
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remapping_changes_only_addresses_in_the_pod_and_paths_under_mounts() {
        let upstream = SocketAddr::from(([127, 0, 0, 1], 40_000));
        let pod = Pod::new(&sample("examples/chat.yaml"), upstream);
        let gateway = pod.gateway();
        let bin = pod.volume("longconn-bin").display().to_string();
        let admin = pod.named_port(gateway, "admin");
        assert_eq!(
            pod.remap(gateway, "--install-to=/longconn/bin"),
            format!("--install-to={bin}")
        );
        assert_eq!(
            pod.remap(gateway, "/longconn/bin/longconn-gateway"),
            format!("{bin}/longconn-gateway")
        );
        assert_eq!(
            pod.remap(gateway, "--upstream=127.0.0.1:8080"),
            "--upstream=127.0.0.1:40000"
        );
        assert_eq!(
            pod.remap(gateway, "--admin-listen=0.0.0.0:9901"),
            format!("--admin-listen={admin}")
        );
        assert_eq!(pod.remap(gateway, "127.0.0.1:9901"), admin.to_string());
        for unchanged in [
            "--drain-timeout=2m",
            "--admin",
            "/longconn/binary",
            "--other=10.0.0.1:9901",
            "run",
        ] {
            assert_eq!(pod.remap(gateway, unchanged), unchanged);
        }
        // The app container does not mount the admin token: its path stays as it is.
        let app = pod.container("app");
        assert_eq!(
            pod.remap(app, "/etc/longconn/admin/token"),
            "/etc/longconn/admin/token"
        );
    }
}
