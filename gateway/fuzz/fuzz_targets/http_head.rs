//! Fuzzes the HTTP head handling: parsing requests and responses, the upgrade check, and
//! re-encoding for the other leg. It must never panic, and a re-encoded request must parse (or be
//! refused as too large, since the gateway adds headers).
#![no_main]

use libfuzzer_sys::fuzz_target;
use longconn_gateway::{
    http::{HeadError, parse_request, parse_response},
    reqid::RequestIds,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(head)) = parse_request(data) {
        let _ = head.check_websocket();
        let _ = head.origin();
        let ids = RequestIds::for_request(&head);
        let peer = "127.0.0.1".parse().expect("ip");
        let encoded = head.encode_request(peer, peer, false, &ids);
        // The gateway adds a few headers, so a head at the limits may become too large.
        assert!(
            matches!(parse_request(&encoded), Ok(Some(_)) | Err(HeadError::TooLarge)),
            "re-encoded request must parse"
        );
    }
    if let Ok(Some(head)) = parse_response(data) {
        let _ = head.encode_response();
    }
});
