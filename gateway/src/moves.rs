//! Sessions that move: what a client declares, on its WebSocket upgrade, about the logical
//! session it opens, so that a drain can tell a session it moves for the first time from one it
//! moves again.
//!
//! Two optional request headers, both passed on to the app unchanged:
//! - `Longconn-Session-Id`: an id the client keeps across reconnects, 1 to [`MAX_SESSION_ID`]
//!   visible ASCII characters (the rule of `X-Request-Id`). Only the access log keeps it.
//! - `Longconn-Session-Moves`: how many times a drain has moved this logical session before, a
//!   decimal `u32`. The session keeps it (saturated to a byte) for its drain report: a session a
//!   drain moves that had declared 1 or more is counted `movedAgain`.
//!
//! A value that breaks these rules, or a header sent twice, is ignored as if it were absent:
//! it never refuses the connection.

use crate::{http::Head, reqid};

/// The header with the client's id of its logical session.
pub const SESSION_ID: &str = "longconn-session-id";
/// The header with how many times the logical session has been moved before.
pub const SESSION_MOVES: &str = "longconn-session-moves";
/// The longest `Longconn-Session-Id` kept.
pub const MAX_SESSION_ID: usize = reqid::MAX_REQUEST_ID;

/// What a client declared about its logical session; each part `None` when absent or malformed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Declared {
    pub id: Option<Box<str>>,
    pub moves: Option<u32>,
}

impl Declared {
    /// What the request `head` declares.
    pub fn from_head(head: &Head) -> Declared {
        Declared {
            id: only_one(head, SESSION_ID)
                .filter(|v| reqid::valid_request_id(v))
                // Visible ASCII only: always UTF-8.
                .map(|v| String::from_utf8_lossy(v).into()),
            moves: only_one(head, SESSION_MOVES).and_then(parse_moves),
        }
    }

    /// The moves declared, 0 when none were.
    pub fn moves_before(&self) -> u32 {
        self.moves.unwrap_or(0)
    }
}

/// The value of header `name` without surrounding blanks, if the head has exactly one.
fn only_one<'a>(head: &'a Head, name: &'a str) -> Option<&'a [u8]> {
    let mut values = head.header_values(name);
    match (values.next(), values.next()) {
        (Some(one), None) => Some(one.trim_ascii()),
        _ => None,
    }
}

/// A decimal `u32`: digits only (no sign), at most `u32::MAX`.
fn parse_moves(v: &[u8]) -> Option<u32> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::get_with_headers;

    fn declared(headers: &str) -> Declared {
        Declared::from_head(&get_with_headers(headers))
    }

    #[test]
    fn a_session_id_and_moves_are_read_when_well_formed() {
        let d = declared("Longconn-Session-Id: user-7/tab-2\r\nlongconn-session-moves:  3 \r\n");
        assert_eq!(d.id.as_deref(), Some("user-7/tab-2"));
        assert_eq!(d.moves, Some(3));
        assert_eq!(declared("").moves_before(), 0);
        assert_eq!(
            declared("Longconn-Session-Moves: 4294967295\r\n").moves,
            Some(u32::MAX)
        );
    }

    #[test]
    fn malformed_or_repeated_values_are_ignored_as_if_absent() {
        let long = "a".repeat(MAX_SESSION_ID + 1);
        for id in ["", "two words", "caf\u{e9}", long.as_str()] {
            let d = declared(&format!("Longconn-Session-Id: {id}\r\n"));
            assert_eq!(d.id, None, "{id:?}");
        }
        let longest = "a".repeat(MAX_SESSION_ID);
        let d = declared(&format!("Longconn-Session-Id: {longest}\r\n"));
        assert_eq!(d.id.as_deref(), Some(longest.as_str()));
        for moves in ["", "-1", "+1", "1.0", "0x10", "one", "4294967296", "1 2"] {
            let d = declared(&format!("Longconn-Session-Moves: {moves}\r\n"));
            assert_eq!(d, Declared::default(), "{moves:?}");
        }
        let twice = "Longconn-Session-Moves: 1\r\nLongconn-Session-Moves: 2\r\n\
                     Longconn-Session-Id: a\r\nLongconn-Session-Id: a\r\n";
        assert_eq!(declared(twice), Declared::default());
    }
}
