//! A streaming WebSocket frame scanner (RFC 6455 section 5) and builders for the few frames the
//! gateway writes itself.
//!
//! The gateway relays frames without decoding them: client frames arrive masked and are forwarded
//! upstream byte for byte (a masked frame is exactly what a server expects), and upstream frames
//! arrive unmasked and go to the client byte for byte. All it needs to know is where frames begin
//! and end, what kind each is, and whether the stream is well formed. [`FrameScanner`] learns that
//! from the bytes as they pass, keeping only a partly received header (at most 14 bytes) and a few
//! counters per direction; it never buffers a payload.
//!
//! This is why the gateway does not use tungstenite: tungstenite decodes every message into owned
//! buffers and keeps a read buffer and a write buffer per connection (several KiB each by
//! default, up to its frame and message limits), so an idle session would hold kilobytes on both
//! legs. Scanning in place keeps an idle session to a few hundred bytes of state and lets the
//! payload stay in the worker thread's shared read buffer.

/// Which side produced the frames being scanned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Client to server: every frame must be masked.
    Client,
    /// Server to client: no frame may be masked.
    Server,
}

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close code: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: going away (timeouts, shutdown of a leg).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: protocol error (malformed frame).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code: policy violation (a session's rate limit).
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;
/// Close code: message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: internal error (the upstream failed).
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;
/// Close code reported, never sent, for a close frame without a code (RFC 6455 7.4.1).
pub const CLOSE_NO_STATUS: u16 = 1005;
/// Close code reported, never sent, for a connection that ended without a close frame.
pub const CLOSE_ABNORMAL: u16 = 1006;

/// Why a stream is not acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes break RFC 6455; answered with close 1002.
    Protocol(&'static str),
    /// A message is larger than the limit; answered with close 1009.
    TooBig,
    /// The upstream broke the protocol; the client gets close 1011.
    Upstream,
    /// The [`Gate`] refused the next data frame: the client sends faster than its session limits
    /// allow. Held back, or answered with close 1008 (see [`crate::session_limits`]).
    OverRate,
}

impl FrameError {
    /// The close code that answers this error.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::Protocol(_) => CLOSE_PROTOCOL_ERROR,
            FrameError::TooBig => CLOSE_TOO_BIG,
            FrameError::Upstream => CLOSE_INTERNAL_ERROR,
            FrameError::OverRate => CLOSE_POLICY_VIOLATION,
        }
    }
}

/// What a call to [`FrameScanner::scan`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    /// Data messages completed (final text, binary or continuation frames).
    pub messages: u64,
    /// Data frames whose header was seen (any part of a message).
    pub data_frames: u64,
    /// A close frame was seen completely.
    pub close: bool,
    /// A pong frame was seen completely.
    pub pong: bool,
}

/// Decides, as a frame scanner reaches each data frame, whether it may pass now.
pub trait Gate {
    /// Whether a data frame of `payload` bytes may pass; `first` when it starts a message (text
    /// or binary, not a continuation). Takes what the frame costs when it may, nothing when not.
    /// Control frames are never asked about.
    fn admit(&mut self, first: bool, payload: u64) -> bool;
}

/// The gate of a scanner without limits: every frame passes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Open;

impl Gate for Open {
    #[inline(always)]
    fn admit(&mut self, _first: bool, _payload: u64) -> bool {
        true
    }
}

/// Scans one direction of a WebSocket stream. See the module documentation.
#[derive(Clone, Debug)]
pub struct FrameScanner {
    role: Role,
    header: [u8; 14],
    header_len: u8,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
    opcode: u8,
    /// A fragmented data message is under way.
    fragmented: bool,
    /// Payload bytes of the current message so far.
    message_len: u64,
    max_message: u64,
    closed: bool,
    /// The code of the close frame that passed ([`CLOSE_NO_STATUS`] for one without); 0 before.
    /// While a close frame's payload passes, `header` (free between headers) holds its mask key
    /// in bytes 0-3, the payload bytes seen in byte 4, and the code's two bytes in 5 and 6.
    close_code: u16,
}

impl FrameScanner {
    /// A scanner for frames sent by `role`, refusing messages over `max_message` bytes.
    pub fn new(role: Role, max_message: u64) -> Self {
        FrameScanner {
            role,
            header: [0; 14],
            header_len: 0,
            remaining: 0,
            opcode: 0,
            fragmented: false,
            message_len: 0,
            max_message,
            closed: false,
            close_code: 0,
        }
    }

    /// True between frames, where the gateway may insert a frame of its own.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0
    }

    /// True once a complete close frame has passed.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// The code of the close frame that passed, once it has: [`CLOSE_NO_STATUS`] when it had no
    /// code.
    pub fn close_code(&self) -> Option<u16> {
        self.closed.then_some(self.close_code)
    }

    /// Scans `data`, the bytes that follow everything scanned before, adding what it saw to `out`.
    /// After an error the stream is not scanned further by the caller.
    pub fn scan(&mut self, data: &[u8], out: &mut Scanned) -> Result<(), FrameError> {
        self.scan_to_error(data, out).map_err(|(e, _)| e)
    }

    /// [`FrameScanner::scan`], which on an error also says how many bytes of `data` came before
    /// the frame that broke the rules: whole frames (and the start of one split before `data`)
    /// that may still be relayed ahead of the close frame.
    pub fn scan_to_error(
        &mut self,
        data: &[u8],
        out: &mut Scanned,
    ) -> Result<(), (FrameError, usize)> {
        self.scan_gated(data, out, &mut Open)
    }

    /// [`FrameScanner::scan_to_error`] that asks `gate` before each data frame. When the gate
    /// refuses one, the error is [`FrameError::OverRate`] with the bytes before that frame, and
    /// the scanner is left as if it had scanned only those: the refused frame and what follows
    /// may be scanned again, from its first byte, once the gate lets it pass. (A header split
    /// between calls is the one case where the frame began in an earlier call: its bytes in this
    /// call are given back, and the part before stays gathered.)
    pub fn scan_gated<G: Gate>(
        &mut self,
        data: &[u8],
        out: &mut Scanned,
        gate: &mut G,
    ) -> Result<(), (FrameError, usize)> {
        // Where the frame being read began in `data` (0: before it).
        let mut frame_start = 0;
        let mut i = 0;
        while i < data.len() {
            if self.remaining > 0 {
                let left = (data.len() - i) as u64;
                let take = self.remaining.min(left);
                if self.opcode == OP_CLOSE {
                    // `take <= left`, which came from a usize.
                    self.read_close_code(&data[i..i + take as usize]);
                }
                self.remaining -= take;
                // `take <= left`, which came from a usize.
                i += take as usize;
                if self.remaining == 0 {
                    self.end_frame(out);
                }
                continue;
            }
            if self.header_len == 0 {
                // The most usual case: whole small data messages, passed over in a few steps.
                i += self.pass_whole_messages(&data[i..], out, gate);
                // The usual case: any other frame whose whole header is in `data`, read in place.
                frame_start = i;
                if let Some(&b1) = data.get(i + 1)
                    && let Some(h) = data.get(i..i + header_size(b1))
                {
                    i += h.len();
                    self.start_frame(h, out, gate)
                        .map_err(|e| (e, frame_start))?;
                    continue;
                }
                if i == data.len() {
                    break;
                }
            }
            // A header split between reads: gather it byte by byte.
            self.header[usize::from(self.header_len)] = data[i];
            self.header_len += 1;
            i += 1;
            let n = usize::from(self.header_len);
            if n >= 2 && n == header_size(self.header[1]) {
                let h = self.header;
                if let Err(e) = self.start_frame(&h[..n], out, gate) {
                    if e == FrameError::OverRate {
                        // Only a header begun in an earlier call completes here (one begun in
                        // this call would have been read whole above), so `frame_start` is 0
                        // and the header's bytes in this call are the `i` read so far.
                        self.header_len -= i as u8;
                    }
                    return Err((e, frame_start));
                }
            }
        }
        Ok(())
    }

    /// Passes over the frames at the start of `data` that are whole unfragmented text or binary
    /// messages with a 7- or 16-bit length within the limit (what most streams are made of), and
    /// returns the bytes passed. Call it between frames only. It stops at the first other frame
    /// and leaves it to the general path of [`FrameScanner::scan`], which would treat the frames
    /// it passes the same way: the proptests and the fuzz target check that it does, against
    /// streams scanned one byte at a time.
    #[inline]
    fn pass_whole_messages<G: Gate>(
        &mut self,
        data: &[u8],
        out: &mut Scanned,
        gate: &mut G,
    ) -> usize {
        if self.fragmented {
            return 0;
        }
        let mask_bit = match self.role {
            Role::Client => 0x80,
            Role::Server => 0,
        };
        // Larger lengths take the general path anyway (16-bit lengths at most here).
        let max = self.max_message.min(u64::from(u16::MAX)) as usize;
        let mut i = 0;
        let mut passed = 0;
        let mut last = (0, 0);
        // Four bytes: the first two of the header and, when present, the 16-bit length. A frame
        // shorter than that (an unmasked message of at most one byte) takes the general path.
        while let Some(&[b0, b1, l0, l1]) = data.get(i..i + 4) {
            // FIN, no reserved bits, text or binary; masked exactly when the client sent it.
            if !matches!(b0, 0x81 | 0x82) || b1 & 0x80 != mask_bit {
                break;
            }
            let len = match b1 & 0x7F {
                126 => usize::from(u16::from_be_bytes([l0, l1])),
                127 => break,
                n => usize::from(n),
            };
            // At most 65,535 + 8 past `i`, which is at most `data.len()`: no overflow.
            let end = i + header_size(b1) + len;
            // The gate is asked last, for a frame that passes here if it admits it: a refused
            // frame is left to the general path, which asks again and stops there.
            if len > max || end > data.len() || !gate.admit(true, len as u64) {
                break;
            }
            last = (b0 & 0x0F, len as u64);
            passed += 1;
            i = end;
        }
        if passed > 0 {
            (self.opcode, self.message_len) = last;
            out.data_frames += passed;
            out.messages += passed;
        }
        i
    }

    /// Starts the frame whose complete header is `h`.
    #[inline]
    fn start_frame<G: Gate>(
        &mut self,
        h: &[u8],
        out: &mut Scanned,
        gate: &mut G,
    ) -> Result<(), FrameError> {
        let fin = h[0] & 0x80 != 0;
        if h[0] & 0x70 != 0 {
            return Err(FrameError::Protocol(
                "reserved bits set without an extension",
            ));
        }
        let opcode = h[0] & 0x0F;
        let masked = h[1] & 0x80 != 0;
        match (self.role, masked) {
            (Role::Client, false) => return Err(FrameError::Protocol("client frame not masked")),
            (Role::Server, true) => return Err(FrameError::Protocol("server frame masked")),
            _ => {}
        }
        let len = match h[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => {
                let len = u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]);
                if len >> 63 != 0 {
                    return Err(FrameError::Protocol("64-bit length with the top bit set"));
                }
                len
            }
            n => u64::from(n),
        };
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(FrameError::Protocol("fragmented control frame"));
                }
                if len > 125 {
                    return Err(FrameError::Protocol("control frame longer than 125 bytes"));
                }
                if opcode == OP_CLOSE && len == 1 {
                    return Err(FrameError::Protocol("close frame with a 1-byte payload"));
                }
            }
            OP_TEXT | OP_BINARY => {
                if self.fragmented {
                    return Err(FrameError::Protocol("new message inside a fragmented one"));
                }
                if !gate.admit(true, len) {
                    return Err(FrameError::OverRate);
                }
                self.message_len = len;
                self.fragmented = !fin;
                out.data_frames += 1;
            }
            OP_CONTINUATION => {
                if !self.fragmented {
                    return Err(FrameError::Protocol("continuation without a message"));
                }
                if !gate.admit(false, len) {
                    return Err(FrameError::OverRate);
                }
                self.message_len = self.message_len.saturating_add(len);
                self.fragmented = !fin;
                out.data_frames += 1;
            }
            _ => return Err(FrameError::Protocol("unknown opcode")),
        }
        if matches!(opcode, OP_TEXT | OP_BINARY | OP_CONTINUATION) {
            if self.message_len > self.max_message {
                return Err(FrameError::TooBig);
            }
            if fin {
                out.messages += 1;
            }
        }
        if opcode == OP_CLOSE {
            // A control frame's header is 2 bytes, then the mask key if any.
            let key = if masked {
                [h[2], h[3], h[4], h[5]]
            } else {
                [0; 4]
            };
            self.header[..4].copy_from_slice(&key);
            self.header[4] = 0;
        }
        self.opcode = opcode;
        self.remaining = len;
        self.header_len = 0;
        if len == 0 {
            self.end_frame(out);
        }
        Ok(())
    }

    /// Keeps the first two bytes of a close frame's payload, `payload` being its next part.
    fn read_close_code(&mut self, payload: &[u8]) {
        for &b in payload {
            let seen = usize::from(self.header[4]);
            if seen >= 2 {
                return;
            }
            self.header[5 + seen] = b ^ self.header[seen];
            self.header[4] += 1;
        }
    }

    fn end_frame(&mut self, out: &mut Scanned) {
        match self.opcode {
            OP_CLOSE => {
                out.close = true;
                if !self.closed {
                    self.close_code = if self.header[4] >= 2 {
                        u16::from_be_bytes([self.header[5], self.header[6]])
                    } else {
                        CLOSE_NO_STATUS
                    };
                }
                self.closed = true;
            }
            OP_PONG => out.pong = true,
            _ => {}
        }
    }
}

/// The size of a frame header, from its second byte: 2, plus 2 or 8 for an extended length,
/// plus 4 for a mask key. At most 14.
fn header_size(b1: u8) -> usize {
    let ext = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// The longest reason text of a close frame, in bytes: its payload is at most 125 bytes, two of
/// which hold the code (RFC 6455, section 5.5).
pub const MAX_CLOSE_REASON: usize = 123;

/// A control frame of at most 125 payload bytes, built on the stack.
#[derive(Clone, Copy, Debug)]
pub struct ControlFrame {
    bytes: [u8; 2 + 4 + 125],
    len: usize,
}

impl ControlFrame {
    /// Builds a control frame; `mask` is required for frames sent to the upstream (the gateway
    /// is its client) and must be `None` towards clients. The payload is cut at 125 bytes.
    pub fn new(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Self {
        let payload = &payload[..payload.len().min(125)];
        let mut bytes = [0u8; 131];
        bytes[0] = 0x80 | (opcode & 0x0F);
        // At most 125, so it fits the 7-bit length.
        bytes[1] = payload.len() as u8;
        let mut at = 2;
        if let Some(key) = mask {
            bytes[1] |= 0x80;
            bytes[2..6].copy_from_slice(&key);
            at = 6;
        }
        for (i, b) in payload.iter().enumerate() {
            let k = mask.map_or(0, |key| key[i % 4]);
            bytes[at + i] = b ^ k;
        }
        ControlFrame {
            bytes,
            len: at + payload.len(),
        }
    }

    /// A close frame with `code` and no reason.
    pub fn close(code: u16, mask: Option<[u8; 4]>) -> Self {
        Self::close_saying(code, "", mask)
    }

    /// A close frame with `code` and `reason`, cut at a character boundary (so that it stays
    /// UTF-8) to the [`MAX_CLOSE_REASON`] bytes a close frame has room for.
    pub fn close_saying(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Self {
        let mut cut = reason.len().min(MAX_CLOSE_REASON);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut payload = [0u8; 125];
        payload[..2].copy_from_slice(&code.to_be_bytes());
        payload[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
        Self::new(OP_CLOSE, &payload[..2 + cut], mask)
    }

    /// A ping frame with `payload`.
    pub fn ping(payload: &[u8]) -> Self {
        Self::new(OP_PING, payload, None)
    }

    /// The encoded frame.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a frame as a peer would, with an optional mask.
    pub(crate) fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => v.push(m | n as u8),
            n if n < 65536 => {
                v.push(m | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(m | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if let Some(k) = mask {
            v.extend_from_slice(&k);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        } else {
            v.extend_from_slice(payload);
        }
        v
    }

    const K: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    fn scan_all(role: Role, max: u64, bytes: &[u8]) -> Result<Scanned, FrameError> {
        let mut s = FrameScanner::new(role, max);
        let mut out = Scanned::default();
        s.scan(bytes, &mut out)?;
        Ok(out)
    }

    #[test]
    fn counts_messages_split_at_every_byte() {
        let mut stream = frame(true, OP_TEXT, b"hello", K);
        stream.extend(frame(false, OP_BINARY, &[7; 300], K));
        stream.extend(frame(true, OP_PING, b"p", K));
        stream.extend(frame(true, OP_CONTINUATION, &[8; 70000], K));
        stream.extend(frame(true, OP_CLOSE, &1000u16.to_be_bytes(), K));
        for split in 0..stream.len().min(400) {
            let mut s = FrameScanner::new(Role::Client, 1 << 20);
            let mut out = Scanned::default();
            s.scan(&stream[..split], &mut out).expect("valid prefix");
            s.scan(&stream[split..], &mut out).expect("valid rest");
            assert_eq!(out.messages, 2, "split at {split}");
            assert!(out.close && s.closed() && s.at_boundary());
        }
    }

    #[test]
    fn the_close_code_is_read_masked_or_not_and_split_anywhere() {
        for (role, mask) in [(Role::Client, K), (Role::Server, None)] {
            let mut stream = frame(true, OP_TEXT, b"hello", mask);
            stream.extend(frame(true, OP_CLOSE, b"\x0f\xa1bye", mask));
            for split in 0..stream.len() {
                let mut s = FrameScanner::new(role, 1 << 20);
                let mut out = Scanned::default();
                s.scan(&stream[..split], &mut out).expect("valid prefix");
                assert_eq!(s.close_code(), None, "not closed yet at {split}");
                for byte in &stream[split..] {
                    s.scan(std::slice::from_ref(byte), &mut out)
                        .expect("valid rest");
                }
                assert_eq!(s.close_code(), Some(4001), "{role:?} split at {split}");
            }
            let empty = frame(true, OP_CLOSE, b"", mask);
            let mut s = FrameScanner::new(role, 100);
            s.scan(&empty, &mut Scanned::default()).expect("valid");
            assert_eq!(s.close_code(), Some(CLOSE_NO_STATUS));
        }
    }

    #[test]
    fn unmasked_client_frame_is_a_protocol_error() {
        let err =
            scan_all(Role::Client, 100, &frame(true, OP_TEXT, b"x", None)).expect_err("must fail");
        assert_eq!(err.close_code(), CLOSE_PROTOCOL_ERROR);
    }

    #[test]
    fn masked_server_frame_is_a_protocol_error() {
        let err =
            scan_all(Role::Server, 100, &frame(true, OP_TEXT, b"x", K)).expect_err("must fail");
        assert_eq!(err.close_code(), CLOSE_PROTOCOL_ERROR);
    }

    #[test]
    fn oversize_message_is_refused_from_its_header() {
        let header_only = &frame(true, OP_BINARY, &[0; 2000], K)[..8];
        let err = scan_all(Role::Client, 1000, header_only).expect_err("must fail");
        assert_eq!(err, FrameError::TooBig);
        assert_eq!(err.close_code(), CLOSE_TOO_BIG);
    }

    #[test]
    fn oversize_across_fragments_is_refused() {
        let mut s = frame(false, OP_TEXT, &[0; 600], K);
        s.extend(frame(true, OP_CONTINUATION, &[0; 600], K));
        assert_eq!(
            scan_all(Role::Client, 1000, &s).expect_err("must fail"),
            FrameError::TooBig
        );
    }

    #[test]
    fn malformed_frames_are_protocol_errors() {
        let cases: Vec<Vec<u8>> = vec![
            vec![0x80 | 0x40 | OP_TEXT, 0x80, 0, 0, 0, 0], // RSV1
            vec![0x80 | 0x3, 0x80, 0, 0, 0, 0],            // reserved opcode
            frame(false, OP_PING, b"", K),                 // fragmented control
            frame(true, OP_PING, &[0; 126], K),            // long control
            frame(true, OP_CONTINUATION, b"x", K),         // orphan continuation
            frame(true, OP_CLOSE, b"x", K),                // 1-byte close payload
            [
                frame(false, OP_TEXT, b"a", K),
                frame(true, OP_TEXT, b"b", K),
            ]
            .concat(),
            vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4], // 64-bit MSB
        ];
        for (i, c) in cases.iter().enumerate() {
            let err = scan_all(Role::Client, u64::MAX, c).expect_err(&format!("case {i}"));
            assert_eq!(err.close_code(), CLOSE_PROTOCOL_ERROR, "case {i}");
        }
    }

    #[test]
    fn control_frames_round_trip_through_the_scanner() {
        let close = ControlFrame::close(1012, Some([9, 8, 7, 6]));
        let mut s = FrameScanner::new(Role::Client, 10);
        let mut out = Scanned::default();
        s.scan(close.as_bytes(), &mut out).expect("valid");
        assert!(out.close);
        assert_eq!(
            ControlFrame::close_saying(1012, "moving", None).as_bytes(),
            b"\x88\x08\x03\xf4moving"
        );
        // 62 two-byte characters: cut to 61 (122 bytes), not into the 62nd.
        let long = ControlFrame::close_saying(1012, &"\u{e9}".repeat(62), None);
        assert_eq!(long.as_bytes()[1], 2 + 122);
        assert!(std::str::from_utf8(&long.as_bytes()[4..]).is_ok());
        let ping = ControlFrame::ping(b"hb");
        let mut s = FrameScanner::new(Role::Server, 10);
        s.scan(ping.as_bytes(), &mut out).expect("valid");
        assert_eq!(ping.as_bytes(), &[0x89, 2, b'h', b'b']);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_scan_the_same_at_once_split_or_byte_by_byte(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512), split in 0usize..512) {
            for role in [Role::Client, Role::Server] {
                let state = |s: &FrameScanner| (s.at_boundary(), s.closed(), s.close_code());
                let mut whole = FrameScanner::new(role, 1000);
                let mut whole_out = Scanned::default();
                let whole_result = whole.scan(&bytes, &mut whole_out);

                let mut split_scanner = FrameScanner::new(role, 1000);
                let mut split_out = Scanned::default();
                let at = split.min(bytes.len());
                let split_result = split_scanner
                    .scan(&bytes[..at], &mut split_out)
                    .and_then(|()| split_scanner.scan(&bytes[at..], &mut split_out));

                // One byte per call never sees a whole header: the gathering path only.
                let mut bytewise = FrameScanner::new(role, 1000);
                let mut bytewise_out = Scanned::default();
                let bytewise_result = bytes
                    .chunks(1)
                    .try_for_each(|b| bytewise.scan(b, &mut bytewise_out));

                proptest::prop_assert_eq!(whole_result, split_result);
                proptest::prop_assert_eq!(whole_result, bytewise_result);
                if whole_result.is_ok() {
                    proptest::prop_assert_eq!(whole_out, split_out);
                    proptest::prop_assert_eq!(whole_out, bytewise_out);
                    proptest::prop_assert_eq!(state(&whole), state(&split_scanner));
                    proptest::prop_assert_eq!(state(&whole), state(&bytewise));
                }
            }
        }

        #[test]
        fn mixed_streams_scan_the_same_at_once_and_byte_by_byte(
            parts in proptest::collection::vec((0u8..6, 0usize..400, proptest::bool::ANY), 1..12),
            client in proptest::bool::ANY,
            max in 100u64..500,
        ) {
            // Whole messages (the fast path's frames, some over the limit, some with a 16-bit
            // length), fragmented ones, control frames and a stray continuation: all read at once,
            // the fast path sees every frame it may take; byte by byte, none.
            let (role, mask) = if client { (Role::Client, K) } else { (Role::Server, None) };
            let stream: Vec<u8> = parts
                .iter()
                .flat_map(|&(kind, n, fin)| match kind {
                    0 => frame(true, OP_TEXT, &vec![b'a'; n], mask),
                    1 => frame(true, OP_BINARY, &vec![1; n], mask),
                    2 => [
                        frame(false, OP_TEXT, &vec![b'b'; n], mask),
                        frame(fin, OP_CONTINUATION, &vec![b'c'; n / 2], mask),
                    ]
                    .concat(),
                    3 => frame(true, OP_PING, &vec![2; n % 126], mask),
                    4 => frame(true, OP_PONG, &vec![3; n % 126], mask),
                    _ => frame(fin, OP_CONTINUATION, &vec![4; n], mask),
                })
                .collect();
            let state = |s: &FrameScanner| {
                (s.at_boundary(), s.closed(), s.fragmented, s.message_len, s.opcode)
            };
            let mut whole = FrameScanner::new(role, max);
            let mut whole_out = Scanned::default();
            let whole_result = whole.scan(&stream, &mut whole_out);
            let mut bytewise = FrameScanner::new(role, max);
            let mut bytewise_out = Scanned::default();
            let bytewise_result =
                stream.chunks(1).try_for_each(|b| bytewise.scan(b, &mut bytewise_out));
            proptest::prop_assert_eq!(whole_result, bytewise_result);
            if whole_result.is_ok() {
                proptest::prop_assert_eq!(whole_out, bytewise_out);
                proptest::prop_assert_eq!(state(&whole), state(&bytewise));
            }
        }

        #[test]
        fn valid_streams_scan_the_same_however_split(sizes in proptest::collection::vec(0usize..300, 1..8), split in 0usize..4000) {
            let stream: Vec<u8> = sizes.iter().flat_map(|n| frame(true, OP_BINARY, &vec![5u8; *n], K)).collect();
            let at = split.min(stream.len());
            let mut s = FrameScanner::new(Role::Client, 1000);
            let mut out = Scanned::default();
            s.scan(&stream[..at], &mut out).expect("valid");
            s.scan(&stream[at..], &mut out).expect("valid");
            proptest::prop_assert_eq!(out.messages, sizes.len() as u64);
            proptest::prop_assert!(s.at_boundary());
        }

        #[test]
        fn a_refused_frame_scans_again_from_where_the_gate_stopped(
            sizes in proptest::collection::vec((0usize..300, proptest::bool::ANY), 1..10),
            split in 0usize..4000,
            admit in 0usize..10,
        ) {
            // Fragmented messages and pings among whole ones; the stream arrives in two reads;
            // the gate lets `admit` data frames pass, then refuses.
            let mut stream = Vec::new();
            for (n, ping) in &sizes {
                let ping = if *ping { frame(true, OP_PING, b"p", K) } else { Vec::new() };
                if n % 3 == 0 {
                    // A fragmented message, with the ping between its frames.
                    stream.extend(frame(false, OP_BINARY, &vec![5u8; n / 2], K));
                    stream.extend(ping);
                    stream.extend(frame(true, OP_CONTINUATION, &vec![6u8; n - n / 2], K));
                } else {
                    stream.extend(frame(true, OP_TEXT, &vec![b'a'; *n], K));
                    stream.extend(ping);
                }
            }
            let mut whole = FrameScanner::new(Role::Client, u64::MAX);
            let mut whole_out = Scanned::default();
            let whole_result = whole.scan(&stream, &mut whole_out);
            proptest::prop_assume!(whole_result.is_ok());

            struct Count(usize);
            impl Gate for Count {
                fn admit(&mut self, _first: bool, _payload: u64) -> bool {
                    let pass = self.0 > 0;
                    self.0 = self.0.saturating_sub(1);
                    pass
                }
            }
            let at = split.min(stream.len());
            let mut gated = FrameScanner::new(Role::Client, u64::MAX);
            let mut out = Scanned::default();
            let mut gate = Count(admit);
            // What the gate held back, from the refused frame's first byte, is scanned again
            // with everything after it.
            let mut rest = Vec::new();
            for part in [&stream[..at], &stream[at..]] {
                if !rest.is_empty() {
                    rest.extend_from_slice(part);
                    continue;
                }
                if let Err((e, valid)) = gated.scan_gated(part, &mut out, &mut gate) {
                    proptest::prop_assert_eq!(e, FrameError::OverRate);
                    rest.extend_from_slice(&part[valid..]);
                }
            }
            gated.scan(&rest, &mut out).expect("the rest scans");
            let state = |s: &FrameScanner| (s.at_boundary(), s.closed(), s.close_code());
            proptest::prop_assert_eq!(out, whole_out);
            proptest::prop_assert_eq!(state(&gated), state(&whole));
        }
    }
}
