//! A connection of the gRPC port: its place under the connection caps, and the HTTP/2 preface
//! deadline (`[grpc] read_timeout_secs`).

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};

/// A connection of the gRPC port, for tonic (which wants [`Connected`] on its streams): it holds
/// its place under the connection caps until it closes, and fails its reads (so hyper closes it)
/// if the client's HTTP/2 preface has not arrived within `[grpc] read_timeout_secs` of the
/// accept: h2 waits for the preface forever, and HTTP/2 keep-alive PINGs start only after it.
///
/// [`Connected`]: tonic::transport::server::Connected
pub(crate) struct Conn<IO> {
    io: IO,
    info: tonic::transport::server::TcpConnectInfo,
    _slot: ferry_http::limits::ConnectionSlot,
    /// Until the preface is in: its deadline and the bytes read so far.
    preface: Option<(std::pin::Pin<Box<tokio::time::Sleep>>, usize)>,
}

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`: what a client sends first (RFC 9113 §3.4).
const HTTP2_PREFACE_LEN: usize = 24;

impl<IO> Conn<IO> {
    pub(crate) fn new(
        io: IO,
        info: tonic::transport::server::TcpConnectInfo,
        slot: ferry_http::limits::ConnectionSlot,
        preface_timeout: std::time::Duration,
    ) -> Self {
        let deadline = Box::pin(tokio::time::sleep(preface_timeout));
        Conn { io, info, _slot: slot, preface: Some((deadline, 0)) }
    }
}

impl<IO> tonic::transport::server::Connected for Conn<IO> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.io).poll_read(cx, buf);
        let Some((deadline, read)) = this.preface.as_mut() else { return polled };
        match polled {
            Poll::Ready(Ok(())) => {
                *read += buf.filled().len() - before;
                if *read >= HTTP2_PREFACE_LEN {
                    this.preface = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no HTTP/2 preface within [grpc] read_timeout_secs",
            ))),
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
