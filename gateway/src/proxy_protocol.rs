//! The PROXY protocol (HAProxy's, versions 1 and 2) on the client port: a load balancer that
//! relays TCP sends, before anything else, a header with the address of the client it relays,
//! and the gateway takes that address for the connection's peer.
//!
//! [`read_header`] reads exactly the header and not one byte more (what follows, a TLS client
//! hello or an HTTP head, is read by the handshake as on any connection): the 12 bytes both
//! versions begin with, then for version 2 its 4 fixed bytes and the length they declare (at most
//! [`V2_MAX_BYTES`] in all), for version 1 one byte at a time up to its line end (at most
//! [`V1_MAX_BYTES`]). The bytes are parsed by the `ppp` crate. The caller bounds the time.

use std::net::SocketAddr;

use clap::ValueEnum;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Which PROXY protocol headers the client port takes (`--proxy-protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ProxyProtocol {
    /// No header: the socket's peer is the client.
    #[default]
    Off,
    /// Every connection starts with a version 1 (text) header.
    V1,
    /// Every connection starts with a version 2 (binary) header.
    V2,
    /// Every connection starts with a header of either version.
    Any,
}

impl ProxyProtocol {
    /// The flag's value, as `--proxy-protocol` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
            ProxyProtocol::Any => "any",
        }
    }

    fn takes_v1(self) -> bool {
        matches!(self, ProxyProtocol::V1 | ProxyProtocol::Any)
    }

    fn takes_v2(self) -> bool {
        matches!(self, ProxyProtocol::V2 | ProxyProtocol::Any)
    }
}

/// The longest version 1 header, line end included (the protocol's own limit).
pub const V1_MAX_BYTES: usize = 107;

/// The longest version 2 header taken: 16 fixed bytes and what they declare (addresses and TLVs).
/// Load balancers send at most a few hundred bytes of TLVs (the protocol suggests receivers
/// keep 536 bytes in all); a longer declared length closes the connection before it is read.
pub const V2_MAX_BYTES: usize = 16 + 2048;

/// The bytes a version 2 header begins with.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("connection ended before its PROXY header was complete: {0}")]
    Read(#[from] std::io::Error),
    #[error("the connection does not start with a PROXY header")]
    Missing,
    #[error("PROXY protocol version {0} is not accepted (--proxy-protocol={1})")]
    Version(u8, &'static str),
    #[error("PROXY header longer than {0} bytes")]
    TooLong(usize),
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
}

/// Reads the PROXY header a connection starts with and returns the client address it carries:
/// `None` for a header that carries none (v1 `UNKNOWN`, v2 `LOCAL`, or an address family other
/// than TCP over IPv4 or IPv6), in which case the socket's peer stays the client.
pub async fn read_header<R: AsyncRead + Unpin>(
    src: &mut R,
    accept: ProxyProtocol,
) -> Result<Option<SocketAddr>, HeaderError> {
    let mut buf = Vec::with_capacity(V1_MAX_BYTES);
    buf.resize(V2_SIGNATURE.len(), 0);
    src.read_exact(&mut buf).await?;
    if buf == V2_SIGNATURE {
        if !accept.takes_v2() {
            return Err(HeaderError::Version(2, accept.as_str()));
        }
        buf.resize(16, 0);
        src.read_exact(&mut buf[12..]).await?;
        let total = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if total > V2_MAX_BYTES {
            return Err(HeaderError::TooLong(V2_MAX_BYTES));
        }
        buf.resize(total, 0);
        src.read_exact(&mut buf[16..]).await?;
        return v2_client(&buf);
    }
    if !buf.starts_with(b"PROXY ") {
        return Err(HeaderError::Missing);
    }
    if !accept.takes_v1() {
        return Err(HeaderError::Version(1, accept.as_str()));
    }
    while !buf.ends_with(b"\r\n") {
        if buf.len() == V1_MAX_BYTES {
            return Err(HeaderError::TooLong(V1_MAX_BYTES));
        }
        buf.push(src.read_u8().await?);
    }
    v1_client(&buf)
}

fn v1_client(header: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    use ppp::v1::{Addresses, Header};
    let header = Header::try_from(header).map_err(|e| HeaderError::Malformed(e.to_string()))?;
    Ok(match header.addresses {
        Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unknown => None,
    })
}

fn v2_client(header: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    use ppp::v2::{Addresses, Command, Header};
    let header = Header::try_from(header).map_err(|e| HeaderError::Malformed(e.to_string()))?;
    if header.command == Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 2 PROXY header for TCP over IPv4 from `client` to 10.0.0.1:8443.
    fn v2_tcp4(client: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
        let SocketAddr::V4(client) = client else {
            panic!("IPv4 only")
        };
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11]);
        h.extend_from_slice(&(12 + tlvs.len() as u16).to_be_bytes());
        h.extend_from_slice(&client.ip().octets());
        h.extend_from_slice(&[10, 0, 0, 1]);
        h.extend_from_slice(&client.port().to_be_bytes());
        h.extend_from_slice(&8443u16.to_be_bytes());
        h.extend_from_slice(tlvs);
        h
    }

    async fn read(
        bytes: &[u8],
        accept: ProxyProtocol,
    ) -> (Result<Option<SocketAddr>, HeaderError>, usize) {
        let mut src = bytes;
        let got = read_header(&mut src, accept).await;
        (got, bytes.len() - src.len())
    }

    #[tokio::test]
    async fn a_v1_header_gives_its_source_and_leaves_the_request_unread() {
        let header = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 8443\r\n";
        let bytes = [&header[..], b"GET / HTTP/1.1\r\n\r\n"].concat();
        let (got, used) = read(&bytes, ProxyProtocol::V1).await;
        assert_eq!(
            got.expect("valid"),
            Some("203.0.113.7:51000".parse().expect("addr"))
        );
        assert_eq!(used, header.len());
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 8443\r\nGET";
        let (got, _) = read(v6, ProxyProtocol::Any).await;
        assert_eq!(
            got.expect("valid"),
            Some("[2001:db8::7]:51000".parse().expect("addr"))
        );
        let (got, used) = read(b"PROXY UNKNOWN\r\n\x16\x03\x01", ProxyProtocol::V1).await;
        assert_eq!(got.expect("valid"), None, "UNKNOWN keeps the socket's peer");
        assert_eq!(used, 15);
    }

    #[tokio::test]
    async fn a_v2_header_gives_its_source_and_local_keeps_the_peer() {
        let client: SocketAddr = "198.51.100.9:40000".parse().expect("addr");
        let header = v2_tcp4(client, &[0x04, 0x00, 0x01, 0x2a]);
        let bytes = [&header[..], b"\x16\x03\x01"].concat();
        let (got, used) = read(&bytes, ProxyProtocol::V2).await;
        assert_eq!(got.expect("valid"), Some(client));
        assert_eq!(used, header.len());
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        let (got, _) = read(&local, ProxyProtocol::Any).await;
        assert_eq!(got.expect("valid"), None);
    }

    #[tokio::test]
    async fn missing_malformed_oversized_and_unaccepted_headers_are_refused() {
        let client: SocketAddr = "198.51.100.9:40000".parse().expect("addr");
        let cases: [(&[u8], ProxyProtocol, &str); 7] = [
            (
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                ProxyProtocol::Any,
                "does not start",
            ),
            (b"PROXY TCP4 nonsense\r\n", ProxyProtocol::V1, "malformed"),
            (&[b'P'; 200], ProxyProtocol::Any, "does not start"),
            (b"PROXY ", ProxyProtocol::V1, "ended before"),
            (
                &v2_tcp4(client, &[]),
                ProxyProtocol::V1,
                "version 2 is not accepted",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyProtocol::V2,
                "version 1 is not accepted",
            ),
            (
                &[&b"PROXY TCP4 "[..], &[b'1'; 200]].concat(),
                ProxyProtocol::V1,
                "longer than 107",
            ),
        ];
        for (bytes, accept, needle) in cases {
            let (got, used) = read(bytes, accept).await;
            let err = got.expect_err("refused").to_string();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
            assert!(used <= V1_MAX_BYTES, "{used} bytes read");
        }
        let mut huge = v2_tcp4(client, &[]);
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        let (got, used) = read(&huge, ProxyProtocol::V2).await;
        assert!(
            matches!(got, Err(HeaderError::TooLong(V2_MAX_BYTES))),
            "{got:?}"
        );
        assert_eq!(used, 16, "the declared length is refused before it is read");
    }
}
