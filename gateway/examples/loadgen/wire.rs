//! The WebSocket wire format at its simplest, for the benchmark's clients and echo upstream: a
//! fixed upgrade request, the accept check, and frame encoding and scanning (heads are read with
//! the gateway's own `proxy::read_head`). Hand-written
//! so that the load generator and the upstream spend as little CPU per message as the kernel
//! allows (they share the machine with the proxy under test); correctness of real WebSocket
//! traffic is tested elsewhere with tungstenite.

use longconn_gateway::http::Head;

/// The request key of RFC 6455's example, and the answer it must get.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

pub use longconn_gateway::frame::{OP_BINARY, OP_CLOSE, OP_PING, OP_PONG};

/// A complete upgrade request for `/bench` on `host`.
pub fn upgrade_request(host: &str) -> Vec<u8> {
    format!(
        "GET /bench HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// True if `head` is a `101` carrying the accept value for [`KEY`].
pub fn is_accepted(head: &Head) -> bool {
    head.status == 101
        && head
            .header("sec-websocket-accept")
            .is_some_and(|v| v.trim_ascii() == ACCEPT.as_bytes())
}

/// First byte of a final (unfragmented) frame with `opcode`.
pub const fn fin(opcode: u8) -> u8 {
    0x80 | opcode
}

/// Appends a frame header: `head` is the first byte (FIN and opcode); `mask` is `Some` for client
/// frames, which RFC 6455 requires masked.
pub fn push_header(out: &mut Vec<u8>, head: u8, len: usize, mask: Option<[u8; 4]>) {
    out.push(head);
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match len {
        n if n < 126 => out.push(bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// Appends a whole frame, masking `payload` with `mask` if given.
pub fn push_frame(out: &mut Vec<u8>, head: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    push_header(out, head, payload.len(), mask);
    xor_into(out, payload, mask);
}

/// One complete frame found by [`next_frame`].
pub struct Frame<'a> {
    /// The first byte: FIN and opcode.
    pub head: u8,
    pub mask: Option<[u8; 4]>,
    /// The payload as sent (still masked if `mask` is set).
    pub payload: &'a [u8],
    /// Length of the whole frame in the buffer.
    pub len: usize,
}

/// The first complete frame at the start of `buf`, or `None` if more bytes are needed.
pub fn next_frame(buf: &[u8]) -> Option<Frame<'_>> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (mut at, len) = match b1 & 0x7F {
        126 => (
            4,
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
        ),
        127 => (10, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
        n => (2, u64::from(n)),
    };
    let mask = if b1 & 0x80 != 0 {
        let m: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    let end = at.checked_add(usize::try_from(len).ok()?)?;
    Some(Frame {
        head: b0,
        mask,
        payload: buf.get(at..end)?,
        len: end,
    })
}

impl Frame<'_> {
    pub fn opcode(&self) -> u8 {
        self.head & 0x0F
    }
}

/// Appends `payload` to `out`, applying `mask` (masking and unmasking are the same XOR).
pub fn xor_into(out: &mut Vec<u8>, payload: &[u8], mask: Option<[u8; 4]>) {
    match mask {
        Some(m) => out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4])),
        None => out.extend_from_slice(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_at_every_length_class() {
        for n in [0, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mut buf = Vec::new();
            push_frame(&mut buf, fin(OP_BINARY), &payload, Some([1, 2, 3, 4]));
            assert!(next_frame(&buf[..buf.len() - 1]).is_none(), "partial frame");
            let f = next_frame(&buf).expect("complete");
            assert_eq!((f.head, f.opcode(), f.len), (0x82, OP_BINARY, buf.len()));
            let mut plain = Vec::new();
            xor_into(&mut plain, f.payload, f.mask);
            assert_eq!(plain, payload);
        }
    }

    #[test]
    fn accept_value_is_the_rfc_example() {
        let derived = tokio_tungstenite::tungstenite::handshake::derive_accept_key(KEY.as_bytes());
        assert_eq!(derived, ACCEPT);
        let parse = |h: &[u8]| {
            longconn_gateway::http::parse_response(h)
                .expect("valid")
                .expect("complete")
        };
        let head =
            format!("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n");
        assert!(is_accepted(&parse(head.as_bytes())));
        let wrong = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\r\n";
        assert!(!is_accepted(&parse(wrong.as_bytes())));
        assert!(!is_accepted(&parse(
            b"HTTP/1.1 503 Service Unavailable\r\n\r\n"
        )));
    }
}
