//! Buffering bodies for inspection without giving up on large ones: a request body over its cap
//! is refused; a response body over its cap is forwarded as it streams, uninspected.

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;

use crate::hooks::{BodyError, ProxyBody};

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The body is larger than allowed.
    #[error("the body is larger than {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: usize,
    },
    /// The peer's stream failed.
    #[error("reading the body failed: {0}")]
    Stream(BodyError),
}

/// Reads the whole body, failing once it passes `limit` bytes.
pub async fn collect_capped(mut body: ProxyBody, limit: usize) -> Result<Bytes, ReadError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Stream)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Reads up to `limit` bytes. Returns the whole body and `None` when it fits; otherwise the
/// bytes read so far and the rest of the body, still streaming.
pub async fn collect_prefix(
    mut body: ProxyBody,
    limit: usize,
) -> Result<(Bytes, Option<ProxyBody>), ReadError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Stream)?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                return Ok((buf.freeze(), Some(body)));
            }
        }
    }
    Ok((buf.freeze(), None))
}

/// `prefix` followed by what remains of `rest`.
pub fn chain(prefix: Bytes, rest: ProxyBody) -> ProxyBody {
    let first = futures_util::stream::once(async move { Ok::<_, BodyError>(Frame::data(prefix)) });
    let rest = http_body_util::BodyStream::new(rest);
    let stream = futures_util::StreamExt::chain(first, rest);
    http_body_util::StreamBody::new(stream).boxed()
}
