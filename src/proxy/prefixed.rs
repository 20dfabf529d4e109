//! A stream with bytes already read put back in front of it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream whose reads yield `prefix` first, then what the stream gives;
/// writes go to the stream. For bytes read past a message that belong to
/// what follows it: after a backend's `101` head (the tunnel's first bytes,
/// [`crate::proxy::upstream::h1`]), after a PROXY header read with
/// `listener::proxy_protocol::read_header`.
#[derive(Debug)]
pub struct Prefixed<S> {
    /// Bytes still to yield before reading `inner`.
    prefix: Bytes,
    /// The stream.
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` read before it.
    pub fn new(prefix: impl Into<Bytes>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix: prefix.into(),
            inner,
        }
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The stream, to change settings (reading or writing it directly
    /// would bypass the prefix order).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The bytes of the prefix not yet read, and the stream.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn prefixed_reads_the_prefix_then_the_stream_and_writes_to_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut stream = Prefixed::new(b"abc".to_vec(), server);
        client.write_all(b"def").await.unwrap();
        let mut two = [0; 2];
        stream.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"ab");
        stream.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"cd");
        stream.write_all(b"pong").await.unwrap();
        stream.flush().await.unwrap();
        stream.shutdown().await.unwrap();
        let mut pong = Vec::new();
        client.read_to_end(&mut pong).await.unwrap();
        assert_eq!(pong, b"pong");
        drop(client);
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"ef");
        let (unread, _) = stream.into_parts();
        assert!(unread.is_empty());
    }

    #[test]
    fn prefixed_gives_back_the_unread_part_of_its_prefix() {
        let (unread, _) = Prefixed::new(b"abc".to_vec(), tokio::io::empty()).into_parts();
        assert_eq!(&unread[..], b"abc");
    }
}
