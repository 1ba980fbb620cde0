//! One long-lived SFTP session per VM, shared by all file operations (requests are
//! multiplexed by id). Opening and closing a subsystem channel per operation raced with
//! dropbear's channel-number reuse: a late close for the old channel could end the next
//! one ("sender dropped"). The session is re-opened when its channel has ended.
use super::pool::Pool;
use super::GuestError;
use russh_sftp::client::SftpSession;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Default)]
pub struct SftpCache(tokio::sync::Mutex<Option<(Arc<SftpSession>, Arc<AtomicBool>)>>);

impl SftpCache {
    pub async fn clear(&self) {
        *self.0.lock().await = None;
    }
}

/// A channel stream that records when it ended (EOF or error).
struct Watched<S> {
    inner: S,
    ended: Arc<AtomicBool>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(&r, Poll::Ready(Err(_))) || (matches!(&r, Poll::Ready(Ok(()))) && buf.filled().len() == before && buf.remaining() > 0) {
            self.ended.store(true, Ordering::SeqCst);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(&r, Poll::Ready(Err(_))) {
            self.ended.store(true, Ordering::SeqCst);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ended.store(true, Ordering::SeqCst);
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The VM's SFTP session, opened on first use and again after its channel ended.
pub async fn session(pool: &Pool) -> Result<Arc<SftpSession>, GuestError> {
    let mut cached = pool.sftp_cache().0.lock().await;
    if let Some((s, ended)) = cached.as_ref() {
        if !ended.load(Ordering::SeqCst) {
            return Ok(s.clone());
        }
    }
    *cached = None;
    let mut attempt = 0;
    let s = loop {
        attempt += 1;
        let mut lease = pool.session().await?;
        let opened = async {
            lease.channel.request_subsystem(true, "sftp").await?;
            super::pool::await_replies(&mut lease.channel, 1).await?;
            Ok::<_, GuestError>(())
        };
        match opened.await {
            Ok(()) => {
                // The channel keeps its pool slot for the session's life: the permit goes with it.
                let (channel, permit) = lease.into_parts();
                let ended = Arc::new(AtomicBool::new(false));
                let stream = Watched { inner: PermitStream { inner: channel.into_stream(), _permit: permit }, ended: ended.clone() };
                break (Arc::new(SftpSession::new(stream).await?), ended);
            }
            Err(e) if attempt >= super::pool::OPEN_ATTEMPTS => return Err(e),
            Err(e) => tracing::debug!(error = %e, "sftp subsystem request failed on a fresh channel; retrying"),
        }
    };
    let (s, ended) = s;
    s.set_timeout(60);
    *cached = Some((s.clone(), ended));
    Ok(s)
}

/// Holds the channel's pool permit as long as the stream lives.
struct PermitStream<S> {
    inner: S,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for PermitStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PermitStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
