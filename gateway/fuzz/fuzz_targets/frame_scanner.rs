//! Fuzzes the WebSocket frame scanner: arbitrary bytes, split at an arbitrary point, in both
//! roles. It must never panic, and scanning in two pieces or one byte at a time (which never takes
//! the whole-message fast path) must agree with scanning at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longconn_gateway::frame::{FrameScanner, Role, Scanned};

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(bytes.len());
    for role in [Role::Client, Role::Server] {
        let mut whole = FrameScanner::new(role, 4096);
        let mut whole_seen = Scanned::default();
        let whole_result = whole.scan(bytes, &mut whole_seen);

        let mut parts = FrameScanner::new(role, 4096);
        let mut parts_seen = Scanned::default();
        let parts_result = parts
            .scan(&bytes[..at], &mut parts_seen)
            .and_then(|()| parts.scan(&bytes[at..], &mut parts_seen));

        let mut bytewise = FrameScanner::new(role, 4096);
        let mut bytewise_seen = Scanned::default();
        let bytewise_result = bytes
            .chunks(1)
            .try_for_each(|b| bytewise.scan(b, &mut bytewise_seen));

        assert_eq!(whole_result, parts_result);
        assert_eq!(whole_result, bytewise_result);
        if whole_result.is_ok() {
            assert_eq!(whole_seen, parts_seen);
            assert_eq!(whole_seen, bytewise_seen);
            for other in [&parts, &bytewise] {
                assert_eq!(whole.at_boundary(), other.at_boundary());
                assert_eq!(whole.closed(), other.closed());
                assert_eq!(whole.close_code(), other.close_code());
            }
        }
    }
});
