//! Pod networking, as a CNI bridge plugin would do it: the runner creates one Linux bridge with a
//! private /16 (by default `longconn0`, 10.244.0.0/16, the host side at 10.244.0.1), and each pod
//! gets a network namespace (`ip netns`, named `<bridge>-<n>`) with loopback up and a veth pair
//! whose pod end is `eth0` with the pod's IP. Apps bind their usual ports (0.0.0.0 or 127.0.0.1)
//! unchanged, 127.0.0.1 inside a pod is private to the pod, and the host reaches pod IPs through
//! the bridge. No route leads anywhere else: pods reach each other and the host's bridge address.
//!
//! In-cluster clients find the API server at `KUBERNETES_SERVICE_HOST=127.0.0.1` and the API
//! server's own port, as on the host: the runner listens on that address inside each pod's
//! namespace and forwards every connection to the API server (the API server's certificate names
//! 127.0.0.1, so TLS verification holds).
//!
//! Without root or without `ip`, pods fall back to `127.<octet>.x.y` addresses on the host's
//! loopback (apps must then listen on `$(POD_IP)`); the choice is logged once. A /16 that another
//! interface already uses (another runner's bridge) is refused: two bridges on one subnet make the
//! host route pod traffic to the wrong one.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;
use std::path::Path;
use std::process::Command;

use nix::sched::CloneFlags;

/// Where pod IPs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkOptions {
    /// The bridge's name (at most 9 characters: veths are named `<bridge>v<n>`).
    pub bridge: String,
    /// The first two octets of the pods' /16 (the bridge takes `.0.1`).
    pub prefix: [u8; 2],
    /// Use network namespaces when possible (root and `ip` present); else always 127.x.
    pub namespaces: bool,
    /// The second octet of fallback 127.x pod IPs.
    pub loopback_octet: u8,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        Self {
            bridge: "longconn0".into(),
            prefix: [10, 244],
            namespaces: true,
            loopback_octet: 77,
        }
    }
}

/// The node-wide network: a bridge, or loopback addresses.
#[derive(Debug)]
pub enum Network {
    Bridge { bridge: String, prefix: [u8; 2] },
    Loopback { octet: u8 },
}

/// One pod's network: its IP and, on a bridge, its namespace (kept open for `setns`).
#[derive(Debug)]
pub struct PodNetwork {
    pub ip: String,
    namespace: Option<Namespace>,
}

#[derive(Debug)]
struct Namespace {
    name: String,
    veth: String,
    file: File,
}

impl Network {
    /// Creates the bridge (replacing a stale one of the same name together with its pod
    /// namespaces) or, when that is not possible, chooses loopback addresses. Fails only when
    /// another interface already has an address in the bridge's /16.
    pub fn setup(options: &NetworkOptions) -> Result<Self, String> {
        let loopback = Network::Loopback {
            octet: options.loopback_octet,
        };
        if !options.namespaces {
            tracing::info!("pod network: 127.x addresses (network namespaces disabled)");
            return Ok(loopback);
        }
        if !nix::unistd::geteuid().is_root() {
            tracing::info!("pod network: 127.x addresses (network namespaces need root)");
            return Ok(loopback);
        }
        let Ok(addresses) = ip_output(&["-o", "-4", "addr", "show"]) else {
            tracing::info!("pod network: 127.x addresses (no `ip` command: install iproute2)");
            return Ok(loopback);
        };
        if let Some((interface, address)) = subnet_user(&addresses, options.prefix, &options.bridge)
        {
            let [a, b] = options.prefix;
            return Err(format!(
                "{a}.{b}.0.0/16 for bridge {} overlaps {address} on interface {interface} \
                 (another pod runner's bridge?): give this runner another prefix",
                options.bridge
            ));
        }
        cleanup(&options.bridge);
        let [a, b] = options.prefix;
        let host = format!("{a}.{b}.0.1/16");
        let created = ip(&["link", "add", "name", &options.bridge, "type", "bridge"])
            .and_then(|()| ip(&["addr", "add", &host, "dev", &options.bridge]))
            .and_then(|()| ip(&["link", "set", &options.bridge, "up"]));
        match created {
            Ok(()) => {
                tracing::info!(bridge = %options.bridge, %host, "pod network: a network namespace per pod on a bridge");
                Ok(Network::Bridge {
                    bridge: options.bridge.clone(),
                    prefix: options.prefix,
                })
            }
            Err(why) => {
                cleanup(&options.bridge);
                tracing::info!(%why, "pod network: 127.x addresses (cannot create the bridge)");
                Ok(loopback)
            }
        }
    }

    /// The host's address as pods see it (the bridge), or 127.0.0.1.
    pub fn host_ip(&self) -> String {
        match self {
            Network::Bridge { prefix: [a, b], .. } => format!("{a}.{b}.0.1"),
            Network::Loopback { .. } => "127.0.0.1".into(),
        }
    }

    /// The bridge's name, if pods get namespaces.
    pub fn bridge(&self) -> Option<&str> {
        match self {
            Network::Bridge { bridge, .. } => Some(bridge),
            Network::Loopback { .. } => None,
        }
    }

    /// Sets up the network of the `index`th pod (0-based, at most 65 000).
    pub fn pod(&self, index: u32) -> Result<PodNetwork, String> {
        match self {
            Network::Loopback { octet } => Ok(PodNetwork {
                ip: loopback_ip(*octet, index),
                namespace: None,
            }),
            Network::Bridge { bridge, prefix } => {
                let address_only = bridge_ip(*prefix, index)?;
                let name = format!("{bridge}-{index}");
                let veth = format!("{bridge}v{index}");
                let address = format!("{address_only}/16");
                // Leftovers of an earlier pod with this index go first.
                let _ = ip(&["netns", "del", &name]);
                let _ = ip(&["link", "del", &veth]);
                let result = ip(&["netns", "add", &name])
                    .and_then(|()| ip(&["-n", &name, "link", "set", "lo", "up"]))
                    .and_then(|()| {
                        ip(&[
                            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                            &name,
                        ])
                    })
                    .and_then(|()| ip(&["link", "set", &veth, "master", bridge, "up"]))
                    .and_then(|()| ip(&["-n", &name, "addr", "add", &address, "dev", "eth0"]))
                    .and_then(|()| ip(&["-n", &name, "link", "set", "eth0", "up"]))
                    .and_then(|()| {
                        let path = Path::new("/run/netns").join(&name);
                        File::open(&path).map_err(|err| format!("open {}: {err}", path.display()))
                    });
                match result {
                    Ok(file) => Ok(PodNetwork {
                        ip: address_only,
                        namespace: Some(Namespace { name, veth, file }),
                    }),
                    Err(why) => {
                        let _ = ip(&["netns", "del", &name]);
                        let _ = ip(&["link", "del", &veth]);
                        Err(why)
                    }
                }
            }
        }
    }

    /// Removes the bridge (pod namespaces go with their pods; stale ones go here too).
    pub fn teardown(&self) {
        if let Network::Bridge { bridge, .. } = self {
            cleanup(bridge);
        }
    }
}

impl PodNetwork {
    /// The pod's network namespace, to `setns` into; `None` on loopback addresses.
    pub fn namespace_file(&self) -> Option<&File> {
        self.namespace.as_ref().map(|ns| &ns.file)
    }

    /// A TCP listener on `address` inside the pod's namespace (on the host without one).
    pub fn listen(&self, address: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
        let Some(file) = self.namespace_file() else {
            return std::net::TcpListener::bind(address);
        };
        let file = file.try_clone()?;
        // A socket belongs to the namespace it was created in: create it from a thread that
        // joined the pod's namespace (the namespace is per thread), then hand it over.
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                    let listener = std::net::TcpListener::bind(address)?;
                    listener.set_nonblocking(true)?;
                    Ok(listener)
                })
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("listener thread panicked")))
        })
    }

    /// Deletes the namespace (its veth pair goes with it).
    pub fn teardown(&mut self) {
        if let Some(ns) = self.namespace.take() {
            drop(ns.file);
            if let Err(why) = ip(&["netns", "del", &ns.name]) {
                tracing::warn!(%why, netns = %ns.name, "cannot delete the pod's network namespace");
            }
            let _ = ip(&["link", "del", &ns.veth]);
        }
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Deletes `bridge` and every network namespace named `<bridge>-<n>`, if any: what a runner on
/// that bridge leaves when it is killed. Errors are ignored (there may be nothing to delete).
pub fn cleanup(bridge: &str) {
    let prefix = format!("{bridge}-");
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_ours = name
                .strip_prefix(&prefix)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if is_ours {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
    if Path::new("/sys/class/net").join(bridge).exists() {
        let _ = ip(&["link", "del", bridge]);
    }
}

/// Runs `ip ARGS`, returning its stderr on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    ip_output(args).map(drop)
}

/// Runs `ip ARGS`, returning its stdout, or its stderr on failure.
fn ip_output(args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|err| format!("ip {}: {err}", args.join(" ")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The interface other than `bridge`, and its address, whose IPv4 network overlaps
/// `a.b.0.0/16`, from the output of `ip -o -4 addr show`
/// (`5: name    inet 10.249.0.1/16 brd ... scope global name ...`).
fn subnet_user(addresses: &str, [a, b]: [u8; 2], bridge: &str) -> Option<(String, String)> {
    let ours = u32::from(Ipv4Addr::new(a, b, 0, 0));
    addresses.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let interface = words.nth(1)?.trim_end_matches(':');
        let address = words.skip_while(|word| *word != "inet").nth(1)?;
        let (ip, len) = address.split_once('/')?;
        let ip = u32::from(ip.parse::<Ipv4Addr>().ok()?);
        let len = len.parse::<u32>().ok()?.min(16);
        let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
        let overlaps = ip & mask == ours & mask;
        (overlaps && interface != bridge && len > 0)
            .then(|| (interface.to_string(), address.to_string()))
    })
}

/// The `index`th pod IP in the bridge's /16: skips `.0.0`, the bridge's `.0.1`, and `.255`/`.0`
/// last octets.
fn bridge_ip([a, b]: [u8; 2], index: u32) -> Result<String, String> {
    let third = index / 253;
    let fourth = index % 253 + 2;
    let third = u8::try_from(third).map_err(|_| format!("no pod IP left for index {index}"))?;
    let fourth = u8::try_from(fourth).unwrap_or(2);
    Ok(Ipv4Addr::new(a, b, third, fourth).to_string())
}

/// The `index`th fallback pod IP: `127.<octet>.<index / 250>.<index % 250 + 2>`.
fn loopback_ip(octet: u8, index: u32) -> String {
    let third = u8::try_from((index / 250) % 256).unwrap_or(0);
    let fourth = u8::try_from(index % 250 + 2).unwrap_or(2);
    Ipv4Addr::new(127, octet, third, fourth).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_ips_skip_the_network_the_bridge_and_broadcast_addresses() {
        assert_eq!(bridge_ip([10, 244], 0).as_deref(), Ok("10.244.0.2"));
        assert_eq!(bridge_ip([10, 244], 252).as_deref(), Ok("10.244.0.254"));
        assert_eq!(bridge_ip([10, 244], 253).as_deref(), Ok("10.244.1.2"));
        assert!(bridge_ip([10, 244], 253 * 256).is_err());
    }

    #[test]
    fn a_subnet_another_interface_uses_is_found_but_not_our_own_bridge() {
        let addresses = "\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\       valid_lft forever
7: lcscen0    inet 10.248.0.1/16 scope global lcscen0\\       valid_lft forever
";
        let user = |prefix, bridge| subnet_user(addresses, prefix, bridge);
        assert_eq!(user([10, 247], "lcload0"), None);
        assert_eq!(
            user([10, 248], "lchelm0"),
            Some(("lcscen0".into(), "10.248.0.1/16".into()))
        );
        assert_eq!(user([10, 248], "lcscen0"), None, "our own (stale) bridge");
        assert_eq!(
            user([192, 0], "lchelm0"),
            Some(("eth0".into(), "192.0.2.2/24".into())),
            "a smaller network inside ours"
        );
        let wide = "9: wide    inet 10.0.0.1/8 scope global wide\\       valid_lft forever\n";
        assert_eq!(
            subnet_user(wide, [10, 247], "lcload0"),
            Some(("wide".into(), "10.0.0.1/8".into())),
            "a larger network around ours"
        );
    }

    #[test]
    fn loopback_ips_skip_network_and_broadcast_addresses() {
        assert_eq!(loopback_ip(77, 0), "127.77.0.2");
        assert_eq!(loopback_ip(77, 249), "127.77.0.251");
        assert_eq!(loopback_ip(77, 250), "127.77.1.2");
    }
}
