//! Plain HTTP/1.1 reverse proxying: one request per client connection, relayed to the upstream
//! with `Connection: close`, the response streamed back as it arrives (so server-sent events and
//! long polls work), and the client told `Connection: close` too.
//!
//! Plain requests are not WebSocket sessions: they are not counted in the drain report. A drain
//! refuses new ones with 503 and cuts the ones still streaming when its deadline passes; until
//! then they keep the process at SIGTERM as sessions do.

use std::{pin::pin, sync::Arc};

use tokio::{
    io::{AsyncWriteExt, copy},
    net::TcpStream,
};
use tracing::debug;

use crate::{
    access_log::Tally,
    conn::ClientConn,
    drain::{Drain, Phase},
    proxy::read_response,
};

/// Relays one request and its response, counting in `tally` what it moved.
pub async fn serve(
    client: ClientConn,
    upstream: TcpStream,
    request: Vec<u8>,
    body_start: Vec<u8>,
    drain: &Arc<Drain>,
    tally: &Tally,
) {
    let _stream = drain.open_stream();
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = upstream.into_split();
    let up = async {
        uw.write_all(&request).await?;
        uw.write_all(&body_start).await?;
        tally.add_from_client(body_start.len());
        copy(&mut tally.count_from_client(&mut cr), &mut uw).await?;
        uw.shutdown().await?;
        std::io::Result::Ok(())
    };
    let down = async {
        // The first head is rewritten; anything after it (the body, or the final response after a
        // `100 Continue`) passes through as is.
        let (head, rest) = read_response(&mut ur)
            .await
            .map_err(std::io::Error::other)?;
        cw.write_all(&head.encode_response()).await?;
        tally.set_status(head.status);
        cw.write_all(&rest).await?;
        tally.add_to_client(rest.len());
        copy(&mut tally.count_to_client(&mut ur), &mut cw).await?;
        cw.shutdown().await?;
        std::io::Result::Ok(())
    };
    let deadline = async {
        let mut changes = pin!(drain.listen());
        while !matches!(drain.phase(), Phase::Deadline { .. }) {
            changes.as_mut().fired().await;
        }
    };
    tokio::pin!(up, down, deadline);
    let mut up_done = false;
    loop {
        tokio::select! {
            r = &mut up, if !up_done => {
                up_done = true;
                if let Err(e) = r { debug!(error = %e, "request relay ended"); }
            }
            r = &mut down => {
                if let Err(e) = r { debug!(error = %e, "response relay ended"); }
                return;
            }
            _ = &mut deadline => {
                debug!("drain deadline: cutting the HTTP response");
                return;
            }
        }
    }
}
