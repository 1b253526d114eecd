//! Request ids and W3C trace context: the `X-Request-Id` and `traceparent` every request carries
//! to the app, and the access log's lines carry too.
//!
//! - `X-Request-Id`: the client's is kept when it is 1 to [`MAX_REQUEST_ID`] visible ASCII
//!   characters (`!` to `~`, no spaces); otherwise, or when absent, the gateway makes one of 32
//!   lowercase hex digits (16 random bytes).
//! - `traceparent` ([W3C Trace Context](https://www.w3.org/TR/trace-context/)): the client's is
//!   kept as it is when it is valid: version `00`, a 32-hex-digit trace-id and a 16-hex-digit
//!   parent-id, neither all zeros, two hex digits of flags, lowercase, and the only one in the
//!   request. The gateway records no spans of its own, so it does not become the parent. A missing
//!   or invalid one is replaced by a new trace: random trace-id and parent-id, flags `01`
//!   (sampled: the gateway, at the edge, makes no sampling decision of its own, so an app that
//!   follows its parent's decision records every trace that starts here, and an app that wants
//!   fewer samples them itself). A `tracestate` goes with the `traceparent` it belongs to: kept
//!   with a kept one, dropped when the trace is replaced.
//!
//! The random bytes come from `rand`'s per-thread generator, seeded from the operating system.

use std::fmt;

use crate::http::Head;

/// The longest `X-Request-Id` kept from a client.
pub const MAX_REQUEST_ID: usize = 128;

/// A request's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestId {
    /// Made by the gateway: shown as 32 lowercase hex digits.
    Generated([u8; 16]),
    /// The client's own.
    Given(Box<str>),
}

impl RequestId {
    /// The client's value if it may be kept, else a new one.
    pub fn from_header(value: Option<&[u8]>) -> RequestId {
        match value.map(<[u8]>::trim_ascii) {
            Some(v) if valid_request_id(v) => {
                // Visible ASCII only: always UTF-8.
                RequestId::Given(String::from_utf8_lossy(v).into())
            }
            _ => RequestId::Generated(random_bytes()),
        }
    }
}

/// True for a request id the gateway keeps: 1 to [`MAX_REQUEST_ID`] visible ASCII characters.
pub fn valid_request_id(v: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&v.len()) && v.iter().all(|b| b.is_ascii_graphic())
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestId::Generated(bytes) => write_hex(f, bytes),
            RequestId::Given(s) => f.write_str(s),
        }
    }
}

/// A W3C `traceparent`, version 00.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// The length of a version-00 `traceparent`: `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;
/// Flags of a trace the gateway starts: sampled.
pub const GENERATED_FLAGS: u8 = 0x01;

impl TraceParent {
    /// Parses a version-00 `traceparent`; `None` when it is not one (see the module docs).
    pub fn parse(v: &[u8]) -> Option<TraceParent> {
        let v = v.trim_ascii();
        if v.len() != TRACEPARENT_LEN || &v[..3] != b"00-" || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let mut trace_id = [0; 16];
        let mut parent_id = [0; 8];
        let mut flags = [0; 1];
        hex_decode(&v[3..35], &mut trace_id)?;
        hex_decode(&v[36..52], &mut parent_id)?;
        hex_decode(&v[53..55], &mut flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags: flags[0],
        })
    }

    /// A new trace: random trace-id and parent-id, flags [`GENERATED_FLAGS`].
    pub fn generate() -> TraceParent {
        loop {
            let trace_id = random_bytes();
            let parent_id = random_bytes();
            // All zeros is invalid; one chance in 2^64, but a value must never be.
            if trace_id != [0; 16] && parent_id != [0; 8] {
                return TraceParent {
                    trace_id,
                    parent_id,
                    flags: GENERATED_FLAGS,
                };
            }
        }
    }

    /// The trace-id as 32 lowercase hex digits.
    pub fn trace_id(&self) -> impl fmt::Display + '_ {
        Hex(&self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        write_hex(f, &self.trace_id)?;
        f.write_str("-")?;
        write_hex(f, &self.parent_id)?;
        write!(f, "-{:02x}", self.flags)
    }
}

/// The ids a request carries to the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestIds {
    pub request_id: RequestId,
    pub trace: TraceParent,
    /// The client's `traceparent` was valid and is kept, so its `tracestate` goes with it.
    pub trace_kept: bool,
}

impl RequestIds {
    /// The ids for the request `head`: the client's where they are valid, new ones otherwise.
    pub fn for_request(head: &Head) -> RequestIds {
        let mut parents = head.header_values("traceparent");
        let kept = match (parents.next(), parents.next()) {
            (Some(one), None) => TraceParent::parse(one),
            // None, or more than one: the trace context is invalid.
            _ => None,
        };
        RequestIds {
            request_id: RequestId::from_header(head.header("x-request-id")),
            trace: kept.unwrap_or_else(TraceParent::generate),
            trace_kept: kept.is_some(),
        }
    }

    /// True for the headers of the client's that [`RequestIds::write_headers`] replaces: every
    /// `X-Request-Id` and `traceparent`, and `tracestate` unless the trace was kept.
    pub fn replaces(&self, name: &[u8]) -> bool {
        name.eq_ignore_ascii_case(b"x-request-id")
            || name.eq_ignore_ascii_case(b"traceparent")
            || (!self.trace_kept && name.eq_ignore_ascii_case(b"tracestate"))
    }

    /// Writes `X-Request-Id` and `traceparent` header lines.
    pub fn write_headers(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "X-Request-Id: {}\r\ntraceparent: {}\r\n",
            self.request_id, self.trace
        );
    }
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, self.0)
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// Decodes lowercase hex into `out` (exactly twice its length); `None` for anything else.
fn hex_decode(hex: &[u8], out: &mut [u8]) -> Option<()> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if hex.len() != 2 * out.len() {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

/// `N` random bytes, from the thread's generator (seeded from the operating system, no system
/// call per request).
fn random_bytes<const N: usize>() -> [u8; N] {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::get_with_headers;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn ids(headers: &str) -> RequestIds {
        RequestIds::for_request(&get_with_headers(headers))
    }

    #[test]
    fn a_valid_traceparent_round_trips_unchanged() {
        let tp = TraceParent::parse(VALID.as_bytes()).expect("valid");
        assert_eq!(tp.to_string(), VALID);
        assert_eq!(
            tp.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(tp.flags, 1);
        let unsampled = VALID.replace("-01", "-00");
        assert_eq!(
            TraceParent::parse(unsampled.as_bytes()).map(|t| t.to_string()),
            Some(unsampled)
        );
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            // Another version, upper case, all-zero ids, wrong lengths and separators.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bx-01",
            "",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn generated_traces_are_valid_distinct_and_sampled() {
        let a = TraceParent::generate();
        let b = TraceParent::generate();
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.parent_id, b.parent_id);
        assert_eq!(a.flags, GENERATED_FLAGS);
        let text = a.to_string();
        assert_eq!(TraceParent::parse(text.as_bytes()), Some(a), "{text}");
    }

    #[test]
    fn a_valid_client_request_id_is_kept_and_a_bad_one_replaced() {
        let kept = ids("X-Request-Id:  abc-123_XYZ/=.  \r\n");
        assert_eq!(kept.request_id, RequestId::Given("abc-123_XYZ/=.".into()));
        let long = "a".repeat(MAX_REQUEST_ID);
        assert_eq!(
            ids(&format!("x-request-id: {long}\r\n")).request_id,
            RequestId::Given(long.into())
        );
        for bad in [
            "X-Request-Id: has space\r\n".to_owned(),
            "X-Request-Id: tab\there\r\n".to_owned(),
            "X-Request-Id: \r\n".to_owned(),
            format!("X-Request-Id: {}\r\n", "a".repeat(MAX_REQUEST_ID + 1)),
            "X-Request-Id: caf\u{e9}\r\n".to_owned(),
            String::new(),
        ] {
            let id = ids(&bad).request_id;
            let RequestId::Generated(_) = id else {
                panic!("{bad:?} was kept as {id:?}")
            };
            let text = id.to_string();
            assert!(
                text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()),
                "{text}"
            );
        }
        assert_ne!(ids("").request_id, ids("").request_id);
    }

    #[test]
    fn a_kept_trace_keeps_its_tracestate_and_a_replaced_one_drops_it() {
        let kept = ids(&format!("traceparent: {VALID}\r\ntracestate: a=1\r\n"));
        assert!(kept.trace_kept);
        assert_eq!(kept.trace.to_string(), VALID);
        assert!(kept.replaces(b"Traceparent") && kept.replaces(b"X-REQUEST-ID"));
        assert!(!kept.replaces(b"tracestate"));

        let twice = ids(&format!("traceparent: {VALID}\r\ntraceparent: {VALID}\r\n"));
        assert!(!twice.trace_kept, "two traceparent headers are invalid");
        assert_ne!(twice.trace.to_string(), VALID);
        assert!(twice.replaces(b"tracestate"));

        let missing = ids("");
        assert!(!missing.trace_kept);
        assert_eq!(missing.trace.flags, GENERATED_FLAGS);
    }

    #[test]
    fn headers_are_written_as_the_app_reads_them() {
        let ids = RequestIds {
            request_id: RequestId::Generated([0xab; 16]),
            trace: TraceParent::parse(VALID.as_bytes()).expect("valid"),
            trace_kept: true,
        };
        let mut out = Vec::new();
        ids.write_headers(&mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            format!(
                "X-Request-Id: {}\r\ntraceparent: {VALID}\r\n",
                "ab".repeat(16)
            )
        );
    }
}
