//! The access log: one info-level line when a WebSocket session ends (`session ended`) and one
//! when a plain HTTP request ends (`request ended`), each carrying everything about it, so that
//! one line answers who, what, how long, how much and why it ended without joining others.
//!
//! What a line needs from the request head is taken when the connection is admitted, into one
//! [`Entry`] on the heap that the session holds by a pointer: the path (without its query string,
//! which often carries credentials, and at most [`MAX_PATH`] bytes), the method, the request id,
//! the trace id, and what the client declared about its logical session ([`Declared`]: its
//! `Longconn-Session-Id` and `Longconn-Session-Moves`). Bytes are counted where the relay reads
//! them anyway.
//!
//! The lines' target is this module, `longconn_gateway::access_log`: `--log-level
//! info,longconn_gateway::access_log=off` keeps the gateway's other lines and drops these.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::atomic::{AtomicU16, AtomicU64, Ordering},
    task::{Context, Poll},
    time::Instant,
};

use tokio::io::{AsyncRead, ReadBuf};
use tracing::info;

use crate::{http::Head, metrics::CloseReason, moves::Declared, reqid::RequestIds};

/// The longest path a line carries; longer ones are cut (at a character boundary).
pub const MAX_PATH: usize = 256;

/// What the access log knows of a connection from its admission on.
#[derive(Debug)]
pub struct Entry {
    id: u64,
    peer: SocketAddr,
    /// The client a trusted proxy named, or the peer's address.
    client: IpAddr,
    started: Instant,
    /// The method, a space, and the path.
    request_line: Box<str>,
    ids: RequestIds,
    declared: Declared,
}

/// How a WebSocket session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionEnd {
    pub reason: CloseReason,
    /// The code of the session's first close frame, whoever sent it; 1005 for one without a
    /// code, 1006 when the connection ended without any.
    pub close_code: u16,
    /// WebSocket bytes read from the client (and relayed to the app) after the handshake.
    pub from_client: u64,
    /// WebSocket bytes read from the app (and relayed to the client) after the handshake.
    pub to_client: u64,
}

impl Entry {
    /// The entry of connection `id` from `peer` on behalf of `client`, admitted at `started`
    /// with request `head`.
    pub fn new(
        id: u64,
        peer: SocketAddr,
        client: IpAddr,
        started: Instant,
        head: &Head,
        ids: RequestIds,
    ) -> Box<Entry> {
        let method = String::from_utf8_lossy(head.method());
        let path = path_of(head.target());
        Box::new(Entry {
            id,
            peer,
            client,
            started,
            request_line: format!("{method} {path}").into(),
            ids,
            declared: Declared::from_head(head),
        })
    }

    /// The connection's id, as the gateway's debug lines show it (hex).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// What the client declared about its logical session.
    pub fn declared(&self) -> &Declared {
        &self.declared
    }

    fn method(&self) -> &str {
        self.request_line.split_once(' ').map_or("", |(m, _)| m)
    }

    fn path(&self) -> &str {
        self.request_line.split_once(' ').map_or("", |(_, p)| p)
    }

    /// Milliseconds since the connection was accepted, to the microsecond.
    fn duration_ms(&self) -> f64 {
        let micros = self.started.elapsed().as_micros();
        micros as f64 / 1000.0
    }

    /// Logs the end of a WebSocket session.
    pub fn session_ended(&self, end: SessionEnd) {
        info!(
            id = %format_args!("{:x}", self.id),
            peer = %self.peer,
            client = %self.client,
            path = self.path(),
            request_id = %self.ids.request_id,
            trace_id = %self.ids.trace.trace_id(),
            session_id = self.declared.id.as_deref(),
            session_moves = self.declared.moves,
            duration_ms = self.duration_ms(),
            bytes_from_client = end.from_client,
            bytes_to_client = end.to_client,
            close_code = end.close_code,
            reason = end.reason.as_str(),
            "session ended"
        );
    }

    /// Logs the end of a plain HTTP request (or of an upgrade the app refused).
    pub fn request_ended(&self, tally: &Tally) {
        info!(
            id = %format_args!("{:x}", self.id),
            peer = %self.peer,
            client = %self.client,
            method = self.method(),
            path = self.path(),
            status = tally.status(),
            request_id = %self.ids.request_id,
            trace_id = %self.ids.trace.trace_id(),
            duration_ms = self.duration_ms(),
            bytes_from_client = tally.from_client.load(Ordering::Relaxed),
            bytes_to_client = tally.to_client.load(Ordering::Relaxed),
            "request ended"
        );
    }
}

/// The path of a request target: without its query string or fragment, at most [`MAX_PATH`]
/// bytes, any byte that is not UTF-8 replaced.
fn path_of(target: &[u8]) -> String {
    let end = target
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(target.len());
    let mut path = String::from_utf8_lossy(&target[..end]).into_owned();
    if path.len() > MAX_PATH {
        let mut cut = MAX_PATH;
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        path.truncate(cut);
    }
    path
}

/// What a plain HTTP exchange moved, counted as it goes, so that an exchange cut short (by
/// either side, or a drain's deadline) still reports what it had moved.
#[derive(Debug, Default)]
pub struct Tally {
    /// The status of the app's final response head; 0 until one was relayed.
    status: AtomicU16,
    /// Body bytes read from the client (and relayed to the app).
    from_client: AtomicU64,
    /// Body bytes read from the app (and relayed to the client).
    to_client: AtomicU64,
}

impl Tally {
    /// Records the status of a response head relayed to the client; a `1xx` head is not the
    /// final one and is not recorded.
    pub fn set_status(&self, status: u16) {
        if status >= 200 {
            self.status.store(status, Ordering::Relaxed);
        }
    }

    /// The status relayed, if any.
    pub fn status(&self) -> Option<u16> {
        Some(self.status.load(Ordering::Relaxed)).filter(|&s| s != 0)
    }

    /// Counts `n` body bytes from the client.
    pub fn add_from_client(&self, n: usize) {
        self.from_client.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts `n` body bytes to the client.
    pub fn add_to_client(&self, n: usize) {
        self.to_client.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `src`, with what is read from it counted as bytes from the client.
    pub fn count_from_client<R>(&self, src: R) -> Counted<'_, R> {
        Counted {
            src,
            count: &self.from_client,
        }
    }

    /// `src`, with what is read from it counted as bytes to the client.
    pub fn count_to_client<R>(&self, src: R) -> Counted<'_, R> {
        Counted {
            src,
            count: &self.to_client,
        }
    }
}

/// A reader that counts the bytes read through it.
#[derive(Debug)]
pub struct Counted<'a, R> {
    src: R,
    count: &'a AtomicU64,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<'_, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.src).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.count.fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::http::parse_request;

    #[test]
    fn the_path_leaves_out_the_query_and_is_bounded() {
        assert_eq!(path_of(b"/chat?token=secret"), "/chat");
        assert_eq!(path_of(b"/a/b#frag"), "/a/b");
        assert_eq!(path_of(b"*"), "*");
        let long = format!("/{}", "\u{e9}".repeat(MAX_PATH));
        let cut = path_of(long.as_bytes());
        assert!(
            cut.len() <= MAX_PATH && cut.len() >= MAX_PATH - 1,
            "{}",
            cut.len()
        );
        assert!(long.starts_with(&cut));
    }

    #[test]
    fn an_entry_keeps_the_method_and_path_of_its_request() {
        let head = parse_request(b"POST /echo?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")
            .expect("valid")
            .expect("complete");
        let ids = RequestIds::for_request(&head);
        let entry = Entry::new(
            7,
            "127.0.0.1:9".parse().expect("addr"),
            "127.0.0.1".parse().expect("ip"),
            Instant::now(),
            &head,
            ids,
        );
        assert_eq!((entry.method(), entry.path()), ("POST", "/echo"));
        assert_eq!(entry.id(), 7);
        assert_eq!(entry.declared(), &Declared::default());
    }

    #[tokio::test]
    async fn a_tally_counts_what_is_read_through_it_and_only_final_statuses() {
        let tally = Tally::default();
        assert_eq!(tally.status(), None);
        tally.set_status(100);
        assert_eq!(tally.status(), None, "1xx is not the final response");
        tally.set_status(204);
        assert_eq!(tally.status(), Some(204));
        let mut src = tally.count_from_client(&b"twelve bytes"[..]);
        let mut out = Vec::new();
        src.read_to_end(&mut out).await.expect("read");
        tally.add_from_client(3);
        tally.add_to_client(5);
        assert_eq!(tally.from_client.load(Ordering::Relaxed), 15);
        assert_eq!(tally.to_client.load(Ordering::Relaxed), 5);
    }
}
