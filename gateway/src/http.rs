//! HTTP/1.1 heads: parsing the client's request and the upstream's response with `httparse`,
//! checking a WebSocket upgrade, rewriting heads for the other leg, and the gateway's own short
//! responses (400, 403, 429, 502, 503).
//!
//! The gateway reads only heads; bodies and WebSocket frames pass through untouched. A head may be
//! at most [`MAX_HEAD_BYTES`] long; anything longer, or anything `httparse` refuses, is a 400.

use std::io::Write as _;

use crate::reqid::RequestIds;

/// Largest request or response head accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// Why a head was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    TooLarge,
    Malformed,
}

/// Where a part of the head lies in [`Head`]'s bytes. Heads are at most [`MAX_HEAD_BYTES`]
/// long, so two `u16` offsets do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Part {
    start: u16,
    end: u16,
}

const _: () = assert!(MAX_HEAD_BYTES <= u16::MAX as usize);

impl Part {
    /// The part of `base` that `slice`, a subslice of it, covers. An empty slice is the empty
    /// part wherever it points: `httparse` returns a static `""` for a missing reason phrase.
    fn of(base: &[u8], slice: &[u8]) -> Part {
        let start = (slice.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
        match start.checked_add(slice.len()) {
            // Within `base`, which is at most MAX_HEAD_BYTES long: the casts are lossless.
            Some(end) if !slice.is_empty() && end <= base.len() => Part {
                start: start as u16,
                end: end as u16,
            },
            _ => Part::default(),
        }
    }
}

/// A parsed head: a copy of its bytes and where each part lies in them, so that a head costs two
/// allocations however many headers it has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    raw: Box<[u8]>,
    /// Request method (empty for responses).
    method: Part,
    /// Request target (empty for responses).
    path: Part,
    /// Response reason phrase (empty for requests).
    reason: Part,
    headers: Vec<(Part, Part)>,
    /// Response status (0 for requests).
    pub status: u16,
    /// HTTP minor version (1 for HTTP/1.1).
    pub minor: u8,
    /// Length of the head in the buffer, including the blank line.
    pub len: usize,
}

/// The parts of a start line a [`Head`] keeps, each pointing into the parsed buffer: a request's
/// method and target, a response's reason phrase.
#[derive(Default)]
struct StartLine<'a> {
    method: Option<&'a str>,
    path: Option<&'a str>,
    reason: Option<&'a str>,
}

impl Head {
    /// The head in `buf[..len]` with its start line's parts and its headers. Status and version
    /// are the callers' to set.
    fn new(buf: &[u8], len: usize, start: StartLine<'_>, h: &[httparse::Header<'_>]) -> Head {
        let base = &buf[..len];
        let part = |s: Option<&str>| s.map(|s| Part::of(base, s.as_bytes())).unwrap_or_default();
        Head {
            raw: base.into(),
            method: part(start.method),
            path: part(start.path),
            reason: part(start.reason),
            headers: h
                .iter()
                .map(|h| (Part::of(base, h.name.as_bytes()), Part::of(base, h.value)))
                .collect(),
            status: 0,
            minor: 0,
            len,
        }
    }

    fn get(&self, p: Part) -> &[u8] {
        &self.raw[usize::from(p.start)..usize::from(p.end)]
    }

    /// The headers as (name, value) pairs, in the order received.
    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|&(n, v)| (self.get(n), self.get(v)))
    }
}

/// Parses a request head from the start of `buf`; `Ok(None)` means more bytes are needed.
pub fn parse_request(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(len)) => Ok(Some(Head {
            minor: req.version.unwrap_or(0),
            ..Head::new(
                buf,
                len,
                StartLine {
                    method: req.method,
                    path: req.path,
                    reason: None,
                },
                req.headers,
            )
        })),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Malformed),
    }
}

/// Parses a response head from the start of `buf`; `Ok(None)` means more bytes are needed.
pub fn parse_response(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(len)) => Ok(Some(Head {
            status: res.code.unwrap_or(0),
            minor: res.version.unwrap_or(0),
            ..Head::new(
                buf,
                len,
                StartLine {
                    reason: res.reason,
                    ..StartLine::default()
                },
                res.headers,
            )
        })),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(HeadError::Malformed),
    }
}

/// True if a comma-separated header value contains `token` (case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

impl Head {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Every value of header `name` (case-insensitive), in the order received.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The request's method (empty for responses).
    pub fn method(&self) -> &[u8] {
        self.get(self.method)
    }

    /// The request target, query string included (empty for responses).
    pub fn target(&self) -> &[u8] {
        self.get(self.path)
    }

    /// The body length a `Content-Length` header announces: `Ok(None)` without one, an error
    /// for a value that is not a number or for two headers that disagree.
    pub fn content_length(&self) -> Result<Option<u64>, &'static str> {
        let mut found = None;
        for (_, v) in self
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"content-length"))
        {
            let n = std::str::from_utf8(v.trim_ascii())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or("malformed Content-Length")?;
            if found.is_some_and(|f| f != n) {
                return Err("conflicting Content-Length headers");
            }
            found = Some(n);
        }
        Ok(found)
    }

    /// True if any `name` header lists `token`.
    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers()
            .any(|(n, v)| n.eq_ignore_ascii_case(name.as_bytes()) && has_token(v, token))
    }

    /// True if the request asks for a WebSocket upgrade (valid or not).
    pub fn wants_websocket(&self) -> bool {
        self.header_has_token("upgrade", "websocket")
    }

    /// Checks the parts of an upgrade request RFC 6455 section 4.2.1 requires.
    pub fn check_websocket(&self) -> Result<(), &'static str> {
        if self.get(self.method) != b"GET" {
            return Err("WebSocket upgrade must use GET");
        }
        if self.minor < 1 {
            return Err("WebSocket upgrade needs HTTP/1.1");
        }
        if !self.header_has_token("connection", "upgrade") {
            return Err("Connection header lacks upgrade");
        }
        if self.header("host").is_none() {
            return Err("missing Host header");
        }
        match self.header("sec-websocket-key") {
            Some(k) if k.trim_ascii().len() == 24 => {}
            _ => return Err("missing or malformed Sec-WebSocket-Key"),
        }
        match self.header("sec-websocket-version") {
            Some(v) if v.trim_ascii() == b"13" => Ok(()),
            _ => Err("unsupported Sec-WebSocket-Version (need 13)"),
        }
    }

    /// The request's `Origin`, lowercased, if present.
    pub fn origin(&self) -> Option<String> {
        self.header("origin")
            .map(|o| String::from_utf8_lossy(o.trim_ascii()).to_ascii_lowercase())
    }

    /// Encodes a request head for the upstream. Hop-by-hop headers are dropped;
    /// `Sec-WebSocket-Extensions` is dropped too (the gateway never negotiates compression); a
    /// WebSocket upgrade keeps `Connection: Upgrade`, a plain request gets `Connection: close`.
    /// The request's `X-Request-Id` and `traceparent` are `ids` (see [`crate::reqid`]).
    /// `X-Forwarded-For` gets `peer` appended (the socket's peer, or the one its PROXY header
    /// names); `X-Real-IP` is `client`, the peer or the client a trusted proxy named (see
    /// [`crate::forwarded`]).
    pub fn encode_request(
        &self,
        peer: std::net::IpAddr,
        client: std::net::IpAddr,
        tls: bool,
        ids: &RequestIds,
    ) -> Vec<u8> {
        let websocket = self.wants_websocket();
        let mut out = Vec::with_capacity(self.len + 192);
        out.extend_from_slice(self.get(self.method));
        out.push(b' ');
        out.extend_from_slice(self.get(self.path));
        out.extend_from_slice(if self.minor == 0 {
            b" HTTP/1.0\r\n"
        } else {
            b" HTTP/1.1\r\n"
        });
        for (name, value) in self.headers() {
            let drop = [
                "connection",
                "keep-alive",
                "proxy-connection",
                "upgrade",
                "te",
            ]
            .iter()
            .chain(&[
                "sec-websocket-extensions",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-real-ip",
            ])
            .any(|h| name.eq_ignore_ascii_case(h.as_bytes()));
            if !drop && !ids.replaces(name) {
                push_header(&mut out, name, value);
            }
        }
        ids.write_headers(&mut out);
        if websocket {
            out.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: websocket\r\n");
        } else {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"X-Forwarded-For: ");
        // Several X-Forwarded-For headers are one list (RFC 9110, 5.3).
        for earlier in self.header_values("x-forwarded-for") {
            out.extend_from_slice(earlier);
            out.extend_from_slice(b", ");
        }
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{peer}\r\nX-Real-IP: {client}\r\n");
        push_header(
            &mut out,
            b"X-Forwarded-Proto",
            if tls { b"https" } else { b"http" },
        );
        out.extend_from_slice(b"\r\n");
        out
    }

    /// Encodes a response head for the client. For `101` it keeps the upgrade headers and drops
    /// any `Sec-WebSocket-Extensions` (never negotiated); otherwise it marks the connection
    /// `Connection: close`, since the gateway serves one request per client connection.
    pub fn encode_response(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len + 32);
        // Writing to a Vec cannot fail.
        let _ = write!(out, "HTTP/1.1 {} ", self.status);
        out.extend_from_slice(self.get(self.reason));
        out.extend_from_slice(b"\r\n");
        let upgrade = self.status == 101;
        for (name, value) in self.headers() {
            let hop = ["connection", "keep-alive", "proxy-connection"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h.as_bytes()));
            let ext = name.eq_ignore_ascii_case(b"sec-websocket-extensions");
            if (upgrade && !ext) || (!upgrade && !hop) {
                push_header(&mut out, name, value);
            }
        }
        if !upgrade && self.status >= 200 {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The head of a `GET /` with the header lines `headers` (each ending in CRLF), for tests.
#[cfg(test)]
pub(crate) fn get_with_headers(headers: &str) -> Head {
    let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
    parse_request(raw.as_bytes())
        .expect("valid")
        .expect("complete")
}

/// A short response written by the gateway itself, always with `Connection: close`.
pub fn simple_response(status: u16, reason: &str, extra: &[(&str, String)], body: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reqid::{RequestId, TraceParent};

    /// Fixed ids, so that heads can be compared byte for byte.
    fn ids() -> RequestIds {
        RequestIds {
            request_id: RequestId::Given("r-1".into()),
            trace: TraceParent {
                trace_id: std::array::from_fn(|i| i as u8 + 1),
                parent_id: std::array::from_fn(|i| i as u8 + 1),
                flags: 1,
            },
            trace_kept: false,
        }
    }

    const UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\nOrigin: https://App.example.com\r\n\r\nrest";

    #[test]
    fn content_length_is_read_and_bad_or_conflicting_ones_are_errors() {
        let length = |headers: &str| {
            let raw = format!("POST / HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
            parse_request(raw.as_bytes())
                .expect("valid")
                .expect("complete")
                .content_length()
        };
        assert_eq!(length(""), Ok(None));
        assert_eq!(length("Content-Length: 42\r\n"), Ok(Some(42)));
        assert_eq!(
            length("Content-Length: 7\r\ncontent-length: 7\r\n"),
            Ok(Some(7))
        );
        assert!(length("Content-Length: 7\r\nContent-Length: 8\r\n").is_err());
        assert!(length("Content-Length: -1\r\n").is_err());
        assert!(length("Content-Length: 99999999999999999999999\r\n").is_err());
    }

    #[test]
    fn upgrade_request_is_recognised_and_extensions_are_stripped() {
        let head = parse_request(UPGRADE).expect("valid").expect("complete");
        assert!(head.wants_websocket());
        head.check_websocket().expect("valid upgrade");
        assert_eq!(&UPGRADE[head.len..], b"rest");
        assert_eq!(head.origin().as_deref(), Some("https://app.example.com"));
        let up = String::from_utf8(head.encode_request(
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.1".parse().expect("ip"),
            false,
            &ids(),
        ))
        .expect("utf8");
        assert!(!up.to_ascii_lowercase().contains("extensions"), "{up}");
        assert!(up.contains("Connection: Upgrade\r\n"), "{up}");
        assert!(up.contains("X-Forwarded-For: 10.0.0.1\r\n"), "{up}");
        assert!(up.ends_with("\r\n\r\n"));
    }

    #[test]
    fn heads_are_rewritten_exactly() {
        let req =
            b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\nConnection: close\r\n\
            X-Real-IP: 6.6.6.6\r\nAccept: */*\r\nX-Forwarded-For: 5.6.7.8\r\n\r\n";
        let head = parse_request(req).expect("valid").expect("complete");
        assert_eq!(head.header("HOST"), Some(&b"x"[..]));
        let (peer, client) = ("::1".parse().expect("ip"), "5.6.7.8".parse().expect("ip"));
        assert_eq!(
            String::from_utf8(head.encode_request(peer, client, true, &ids())).expect("utf8"),
            "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\
             X-Request-Id: r-1\r\ntraceparent: 00-0102030405060708090a0b0c0d0e0f10-0102030405060708-01\r\n\
             Connection: close\r\nX-Forwarded-For: 1.2.3.4, 5.6.7.8, ::1\r\nX-Real-IP: 5.6.7.8\r\n\
             X-Forwarded-Proto: https\r\n\r\n"
        );
        let res = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: abc\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n";
        let head = parse_response(res).expect("valid").expect("complete");
        assert_eq!((head.status, head.minor, head.len), (101, 1, res.len()));
        assert_eq!(
            String::from_utf8(head.encode_response()).expect("utf8"),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: abc\r\n\r\n"
        );
    }

    #[test]
    fn the_request_carries_one_request_id_and_traceparent_and_tracestate_only_with_its_trace() {
        let req =
            b"GET / HTTP/1.1\r\nX-Request-Id: a b\r\ntraceparent: junk\r\nX-REQUEST-ID: c\r\n\
            tracestate: k=v\r\nTraceparent: more\r\n\r\n";
        let head = parse_request(req).expect("valid").expect("complete");
        let encode = |ids: &RequestIds| {
            String::from_utf8(head.encode_request(
                "10.0.0.1".parse().expect("ip"),
                "10.0.0.1".parse().expect("ip"),
                false,
                ids,
            ))
            .expect("utf8")
            .to_ascii_lowercase()
        };
        let replaced = encode(&ids());
        assert_eq!(replaced.matches("x-request-id:").count(), 1, "{replaced}");
        assert_eq!(replaced.matches("traceparent:").count(), 1, "{replaced}");
        assert!(replaced.contains("x-request-id: r-1\r\n"), "{replaced}");
        assert!(!replaced.contains("tracestate"), "{replaced}");
        let kept = encode(&RequestIds {
            trace_kept: true,
            ..ids()
        });
        assert!(kept.contains("tracestate: k=v\r\n"), "{kept}");
    }

    #[test]
    fn empty_parts_are_kept_empty() {
        for (res, status_line) in [
            (
                &b"HTTP/1.1 200\r\nX-Empty:\r\n\r\n"[..],
                "HTTP/1.1 200 \r\n",
            ),
            (b"HTTP/1.1 204 \r\nX-Empty: \r\n\r\n", "HTTP/1.1 204 \r\n"),
        ] {
            let head = parse_response(res).expect("valid").expect("complete");
            assert_eq!(head.header("x-empty"), Some(&b""[..]));
            let out = String::from_utf8(head.encode_response()).expect("utf8");
            assert!(out.starts_with(status_line), "{out}");
            assert!(out.contains("X-Empty: \r\n"), "{out}");
        }
        let head = parse_request(b"GET / HTTP/1.1\r\nX-Empty:\r\n\r\n").expect("valid");
        assert_eq!(head.expect("complete").header("x-empty"), Some(&b""[..]));
    }

    #[test]
    fn partial_head_needs_more_and_huge_head_is_refused() {
        assert_eq!(parse_request(&UPGRADE[..30]), Ok(None));
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD_BYTES + 1, b'a');
        assert_eq!(parse_request(&huge), Err(HeadError::TooLarge));
        huge.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse_request(&huge),
            Err(HeadError::TooLarge),
            "complete but too large"
        );
        assert_eq!(
            parse_request(b"\x01\x02 garbage\r\n\r\n"),
            Err(HeadError::Malformed)
        );
    }

    #[test]
    fn bad_upgrades_name_the_problem() {
        let no_key = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let head = parse_request(no_key).expect("valid").expect("complete");
        assert!(
            head.check_websocket()
                .expect_err("must fail")
                .contains("Key")
        );
        let post =
            b"POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let head = parse_request(post).expect("valid").expect("complete");
        assert!(
            head.check_websocket()
                .expect_err("must fail")
                .contains("GET")
        );
    }

    #[test]
    fn plain_response_is_marked_connection_close() {
        let res = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: keep-alive\r\n\r\ndata: 1\n\n";
        let head = parse_response(res).expect("valid").expect("complete");
        let out = String::from_utf8(head.encode_response()).expect("utf8");
        assert!(
            out.contains("Connection: close\r\n") && !out.contains("keep-alive"),
            "{out}"
        );
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_heads_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            if let Ok(Some(h)) = parse_request(&bytes) {
                let _ = h.check_websocket();
                let _ = h.encode_request("127.0.0.1".parse().expect("ip"), "127.0.0.1".parse().expect("ip"), true, &RequestIds::for_request(&h));
            }
            if let Ok(Some(h)) = parse_response(&bytes) {
                let _ = h.encode_response();
            }
        }

        /// Well-formed heads, empty reason phrases and header values included, keep every part
        /// through parsing and re-encoding.
        #[test]
        fn generated_heads_survive_parsing_and_re_encoding(
            method in "GET|POST|PUT",
            path in "/[a-z0-9/?=&]{0,20}",
            headers in proptest::collection::vec(("X-[A-Za-z0-9-]{1,12}", "([!-~]([ -~]{0,20}[!-~])?)?"), 0..8),
            status in 101u16..600,
            reason in proptest::option::of("([A-Za-z]([A-Za-z ]{0,16}[A-Za-z])?)?"),
        ) {
            let fields: String = headers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
            let value = |head: &Head, name: &str| head.header(name).map(<[u8]>::to_vec);
            let first = |name: &str| {
                headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_bytes().to_vec())
            };

            let req = format!("{method} {path} HTTP/1.1\r\nHost: h\r\n{fields}\r\n");
            let head = parse_request(req.as_bytes()).expect("valid").expect("complete");
            proptest::prop_assert_eq!(head.len, req.len());
            proptest::prop_assert_eq!(head.get(head.method), method.as_bytes());
            proptest::prop_assert_eq!(head.get(head.path), path.as_bytes());
            let encoded = head.encode_request("10.1.2.3".parse().expect("ip"), "10.1.2.3".parse().expect("ip"), false, &ids());
            let again = parse_request(&encoded).expect("valid").expect("complete");
            proptest::prop_assert_eq!(again.get(again.path), path.as_bytes());
            for (name, _) in &headers {
                proptest::prop_assert_eq!(value(&head, name), first(name));
                proptest::prop_assert_eq!(value(&again, name), first(name));
            }

            let status_line = match &reason {
                Some(r) => format!("HTTP/1.1 {status} {r}\r\n"),
                None => format!("HTTP/1.1 {status}\r\n"),
            };
            let res = format!("{status_line}{fields}\r\n");
            let head = parse_response(res.as_bytes()).expect("valid").expect("complete");
            proptest::prop_assert_eq!(head.status, status);
            let reason = reason.unwrap_or_default();
            proptest::prop_assert_eq!(head.get(head.reason), reason.as_bytes());
            let again = parse_response(&head.encode_response()).expect("valid").expect("complete");
            proptest::prop_assert_eq!(again.status, status);
            proptest::prop_assert_eq!(again.get(again.reason), reason.as_bytes());
            for (name, _) in &headers {
                proptest::prop_assert_eq!(value(&again, name), first(name));
            }
        }
    }
}
