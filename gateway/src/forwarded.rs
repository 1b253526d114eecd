//! The client address of a connection: the socket's peer, or the address its PROXY header gives
//! (see [`proxy_protocol`](crate::proxy_protocol)), or, when that peer is a trusted proxy
//! (`--trusted-proxies`), the address its `X-Forwarded-For` names.
//!
//! The `X-Forwarded-For` entries are read from the right, the one the trusted peer appended
//! last: trusted entries are skipped, the first one that is not trusted is the client. An entry
//! that is not an IP address ends the walk at the last trusted address before it (nothing to the
//! left of a forged entry can be believed); when every entry is trusted, the leftmost is the
//! client.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::proxy_protocol::ProxyProtocol;

/// How the client port learns its clients' addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientAddresses {
    pub proxy_protocol: ProxyProtocol,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl ClientAddresses {
    /// True if `ip` is within one of the trusted CIDRs.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = unmapped(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// True when the per-client limits can be checked at accept, on the socket's peer: it is the
    /// client (no PROXY header to wait for) and not a trusted proxy speaking for others.
    pub fn peer_is_client_at_accept(&self, peer: IpAddr) -> bool {
        self.proxy_protocol == ProxyProtocol::Off && !self.trusts(peer)
    }

    /// The client behind `peer`, given the request's `X-Forwarded-For` values (in header order).
    pub fn client<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'a [u8]>,
    ) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let entries: Vec<&[u8]> = forwarded_for
            .flat_map(|value| value.split(|&b| b == b','))
            .collect();
        let mut client = peer;
        for entry in entries.iter().rev() {
            match parse_entry(entry) {
                Some(ip) if self.trusts(ip) => client = ip,
                Some(ip) => return ip,
                None => break,
            }
        }
        client
    }
}

/// Parses the CIDRs of `--trusted-proxies`; a bare address is a /32 or /128.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR like 10.0.0.0/8 or 2001:db8::/32"))
}

/// An entry of `X-Forwarded-For`: an address, perhaps with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?.trim();
    let ip = s
        .parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))?;
    Some(unmapped(ip))
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(trusted: &[&str]) -> ClientAddresses {
        ClientAddresses {
            proxy_protocol: ProxyProtocol::Off,
            trusted_proxies: trusted
                .iter()
                .map(|s| parse_cidr(s).expect("cidr"))
                .collect(),
        }
    }

    fn client(a: &ClientAddresses, peer: &str, xff: &[&str]) -> String {
        let peer = peer.parse().expect("ip");
        a.client(peer, xff.iter().map(|v| v.as_bytes())).to_string()
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client_and_only_behind_a_trusted_peer() {
        let a = addresses(&["10.0.0.0/8", "2001:db8::/32"]);
        assert_eq!(
            client(&a, "10.1.1.1", &["6.6.6.6, 203.0.113.5, 10.2.2.2"]),
            "203.0.113.5"
        );
        assert_eq!(
            client(&a, "10.1.1.1", &["6.6.6.6", "203.0.113.5:4000"]),
            "203.0.113.5"
        );
        assert_eq!(
            client(&a, "::ffff:10.1.1.1", &["[2001:db8::9]:1, 198.51.100.1"]),
            "198.51.100.1"
        );
        assert_eq!(
            client(&a, "192.0.2.1", &["203.0.113.5"]),
            "192.0.2.1",
            "untrusted peer"
        );
        assert_eq!(client(&a, "10.1.1.1", &[]), "10.1.1.1", "no header");
        assert_eq!(
            client(&a, "10.1.1.1", &["10.3.3.3, 10.2.2.2"]),
            "10.3.3.3",
            "all trusted"
        );
        assert_eq!(
            client(&a, "10.1.1.1", &["6.6.6.6, forged, 10.2.2.2"]),
            "10.2.2.2"
        );
    }

    #[test]
    fn per_client_limits_wait_for_the_header_or_skip_trusted_peers() {
        let mut a = addresses(&["10.0.0.0/8"]);
        assert!(a.peer_is_client_at_accept("192.0.2.1".parse().expect("ip")));
        assert!(!a.peer_is_client_at_accept("10.0.0.1".parse().expect("ip")));
        a.proxy_protocol = ProxyProtocol::Any;
        assert!(!a.peer_is_client_at_accept("192.0.2.1".parse().expect("ip")));
    }

    #[test]
    fn cidrs_and_bare_addresses_parse_and_nonsense_is_named() {
        assert_eq!(
            parse_cidr("10.0.0.1").expect("v4").to_string(),
            "10.0.0.1/32"
        );
        assert_eq!(
            parse_cidr(" 2001:db8::/32 ").expect("v6").to_string(),
            "2001:db8::/32"
        );
        let err = parse_cidr("10.0.0.0/33").expect_err("bad prefix");
        assert!(err.contains("not a CIDR"), "{err}");
    }
}
