//! One long-lived SFTP session per VM, shared by all file operations (requests are
//! multiplexed by id). Opening and closing a subsystem channel per operation raced with
//! dropbear's channel-number reuse: a late close for the old channel could end the next
//! one ("sender dropped"). The session is re-opened when its channel has ended.
use super::channel::{self, await_replies, Lease, Opener};
use super::GuestError;
use russh::client::Msg;
use russh::Channel;
use russh_sftp::client::SftpSession;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

struct Cached {
    session: Arc<SftpSession>,
    ended: Arc<AtomicBool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

#[derive(Default)]
pub struct SftpCache(tokio::sync::Mutex<Option<Cached>>);

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
pub async fn session<O: Opener>(opener: &O, cache: &SftpCache) -> Result<Arc<SftpSession>, GuestError> {
    let mut cached = cache.0.lock().await;
    if let Some(c) = cached.as_ref() {
        if !c.ended.load(Ordering::SeqCst) {
            return Ok(c.session.clone());
        }
    }
    *cached = None;
    let (Lease { channel, permit }, _) = channel::open_with(opener, "sftp subsystem request", |mut ch: Channel<Msg>| async move {
        let r = async {
            ch.request_subsystem(true, "sftp").await?;
            await_replies(&mut ch, 1).await
        }
        .await;
        (ch, r)
    })
    .await?;
    let ended = Arc::new(AtomicBool::new(false));
    let s = Arc::new(SftpSession::new(Watched { inner: channel.into_stream(), ended: ended.clone() }).await?);
    s.set_timeout(60);
    // The channel keeps its pool slot while the session is cached: the permit is kept with it.
    *cached = Some(Cached { session: s.clone(), ended, _permit: permit });
    Ok(s)
}
