//! Reading the ClientHello without consuming it: [`peek_client_hello`] buffers the first
//! flight until the pure parser has an answer, and [`PrefixedIo`] replays those bytes to
//! whoever reads next (the TLS acceptor or the pass-through splice).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tollgate_wire::{parse_client_hello_with_limit, ClientHello, HelloError, MalformedReason};

/// Why no ClientHello could be peeked. Each variant is a fail-closed decision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeekError {
    /// The client sent no complete ClientHello within the peek timeout.
    #[error("no complete ClientHello within {0:?}")]
    Timeout(Duration),
    /// The client closed the connection before a complete ClientHello.
    #[error("client closed the connection after {read} bytes, before a complete ClientHello")]
    Eof {
        /// Bytes received before the close.
        read: usize,
    },
    /// The client speaks something other than TLS.
    #[error("not TLS")]
    NotTls,
    /// The client sent a malformed ClientHello.
    #[error("malformed ClientHello: {0}")]
    Malformed(MalformedReason),
    /// Reading from the client failed.
    #[error("reading the ClientHello failed: {0}")]
    Io(#[source] io::Error),
}

/// Reads from `io` until a complete ClientHello has arrived (or a verdict is final), at most
/// `timeout` in total, and returns it with an I/O object that replays every byte read.
pub async fn peek_client_hello<T>(
    io: T,
    timeout: Duration,
    max_len: usize,
) -> Result<(ClientHello, PrefixedIo<T>), PeekError>
where
    T: AsyncRead + Unpin,
{
    peek_client_hello_after(BytesMut::with_capacity(1024), io, timeout, max_len).await
}

/// [`peek_client_hello`] for a stream whose first bytes were already read into `buf` (by the
/// protocol sniffer, or after a tunnel handshake); they are replayed too.
pub async fn peek_client_hello_after<T>(
    mut buf: BytesMut,
    mut io: T,
    timeout: Duration,
    max_len: usize,
) -> Result<(ClientHello, PrefixedIo<T>), PeekError>
where
    T: AsyncRead + Unpin,
{
    let read = async {
        loop {
            match parse_client_hello_with_limit(&buf, max_len) {
                Ok(hello) => return Ok(hello),
                Err(HelloError::NotTls) => return Err(PeekError::NotTls),
                Err(HelloError::Malformed(reason)) => return Err(PeekError::Malformed(reason)),
                Err(HelloError::Incomplete { needed }) => {
                    buf.reserve(needed.unwrap_or(0).max(512));
                    let n = io.read_buf(&mut buf).await.map_err(PeekError::Io)?;
                    if n == 0 {
                        return Err(PeekError::Eof { read: buf.len() });
                    }
                }
                // A verdict this crate does not know yet: fail closed.
                Err(other) => return Err(PeekError::Io(io::Error::other(other))),
            }
        }
    };
    let hello = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| PeekError::Timeout(timeout))??;
    Ok((hello, PrefixedIo::new(buf.freeze(), io)))
}

/// An I/O object that first yields `prefix`, then reads from the inner stream; writes go
/// straight to the inner stream.
#[derive(Debug)]
pub struct PrefixedIo<T> {
    prefix: Bytes,
    io: T,
}

impl<T> PrefixedIo<T> {
    /// Wraps `io` so that reads return `prefix` first.
    pub fn new(prefix: Bytes, io: T) -> Self {
        PrefixedIo { prefix, io }
    }

    /// The bytes not yet replayed.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PrefixedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn replays_peeked_bytes_then_the_rest() {
        let hello = include_bytes!("../../tollgate-wire/tests/fixtures/openssl_sni_alpn.bin");
        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            // Dribble the hello in small pieces, then some application bytes.
            for chunk in hello.chunks(10) {
                client.write_all(chunk).await.unwrap();
            }
            client.write_all(b"after").await.unwrap();
            client.shutdown().await.unwrap();
        });
        let (parsed, mut io) = peek_client_hello(server, Duration::from_secs(5), 16 * 1024)
            .await
            .unwrap();
        assert_eq!(parsed.sni.as_deref(), Some("acct.snowflakecomputing.com"));
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        writer.await.unwrap();
        assert_eq!(&all[..hello.len()], &hello[..]);
        assert_eq!(&all[hello.len()..], b"after");
    }

    #[tokio::test]
    async fn silence_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let err = peek_client_hello(server, Duration::from_millis(50), 16 * 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, PeekError::Timeout(_)));
    }
}
