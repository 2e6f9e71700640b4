//! Pass-through: the peeked bytes and everything after them, relayed unchanged to the
//! original destination, both directions, with half-close propagated.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::counting::{ByteCounters, CountingIo};
use crate::peek::PrefixedIo;
use crate::record::CloseReason;
use crate::upstream::Route;

/// Splice buffer per direction: large enough for bulk transfers, small enough for many
/// concurrent connections.
const SPLICE_BUFFER: usize = 64 * 1024;

/// Relays until both directions are closed; returns the close reason.
pub(crate) async fn run(
    client: PrefixedIo<TcpStream>,
    route: &Route,
    mark: Option<u32>,
    connect_timeout: Duration,
    counters: Arc<ByteCounters>,
) -> CloseReason {
    let mut upstream = match route.connect(mark, connect_timeout).await {
        Ok(stream) => stream,
        Err(failure) => return CloseReason::from(&failure),
    };
    let mut client = CountingIo::new(client, counters);
    match tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        SPLICE_BUFFER,
        SPLICE_BUFFER,
    )
    .await
    {
        Ok(_) => CloseReason::Eof,
        Err(e) => CloseReason::Splice(e.to_string()),
    }
}
