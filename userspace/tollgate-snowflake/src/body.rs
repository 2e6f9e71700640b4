//! Phase 2 — the body: buffered for inspection without giving up on large ones. A request body
//! over its cap is refused (and the connection closed, since the client may still be sending);
//! a response body over its cap is passed on as it streams, uninspected. Bodies are decoded
//! (gzip by header and magic bytes) within the caps, and forwarded byte for byte as received.

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;

use http::Request;
use tollgate_proxy::{BodyError, ProxyBody};
use tollgate_wire::snowflake::{decode_body, BodyLimits};

use crate::reply::{full, Api, Refusal, RefusalKind};

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

/// Buffers and decodes a request body within `limits`; the request keeps its original bytes.
pub async fn read_request(
    request: Request<ProxyBody>,
    limits: &BodyLimits,
    api: Api,
) -> Result<(Request<ProxyBody>, Vec<u8>), Refusal> {
    let (parts, body) = request.into_parts();
    let refused = |e: &dyn std::fmt::Display| {
        Refusal::new(
            RefusalKind::BodyRejected,
            api,
            format!("Tollgate refused the request body: {e}"),
        )
    };
    let raw = collect_capped(body, limits.max_compressed)
        .await
        .map_err(|e| refused(&e).closing())?;
    let encoding = parts
        .headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let decoded = decode_body(encoding, &raw, limits).map_err(|e| refused(&e))?;
    Ok((Request::from_parts(parts, full(raw)), decoded.bytes))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use http_body_util::BodyExt as _;

    use super::*;

    fn request(body: Vec<u8>, gzip: bool) -> Request<ProxyBody> {
        let mut b = Request::post("/queries/v1/query-request");
        if gzip {
            b = b.header(http::header::CONTENT_ENCODING, "gzip");
        }
        b.body(full(Bytes::from(body))).unwrap()
    }

    #[tokio::test]
    async fn gzip_bodies_are_decoded_and_forwarded_as_received() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b"{\"sqlText\":\"select 1\"}").unwrap();
        let z = e.finish().unwrap();
        let (req, decoded) = read_request(
            request(z.clone(), true),
            &BodyLimits::default(),
            Api::Driver,
        )
        .await
        .unwrap();
        assert_eq!(decoded, b"{\"sqlText\":\"select 1\"}");
        let sent = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            sent.as_ref(),
            z.as_slice(),
            "the original bytes go upstream"
        );
    }

    #[tokio::test]
    async fn over_the_cap_is_refused_and_closes_and_bombs_are_refused() {
        let limits = BodyLimits {
            max_compressed: 16,
            ..BodyLimits::default()
        };
        let e = read_request(request(vec![b'x'; 17], false), &limits, Api::SqlApi)
            .await
            .unwrap_err();
        assert_eq!(e.kind, RefusalKind::BodyRejected);
        assert_eq!(e.api, Api::SqlApi);
        assert!(e.close, "an unread body closes the connection");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 64 << 20]).unwrap();
        let bomb = enc.finish().unwrap();
        let e = read_request(request(bomb, true), &BodyLimits::default(), Api::Driver)
            .await
            .unwrap_err();
        assert_eq!(e.kind, RefusalKind::BodyRejected);
        assert!(!e.close, "a body read to its end keeps the connection");
    }
}
