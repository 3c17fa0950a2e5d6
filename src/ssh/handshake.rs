//! Reaching a usable SSH transport, stage by stage: the TCP connect, the server's banner, and
//! the key exchange with its host-key check. Each stage fails with its own message naming the
//! address, and one connect timeout bounds them together, as OpenSSH's `ConnectTimeout`
//! bounds its connect and banner wait.
//!
//! russh reads the banner inside `connect_stream` and says nothing about how far it got, so
//! the stream it is given is watched: whether the server sent anything, and whether a line
//! starting `SSH-` arrived, tells "no banner" from "banner, then a stalled key exchange".

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use russh::client;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::connection::{FailureKind, OpenError};

use super::algorithms;
use super::host_keys::{ClientHandler, Session};

/// `host:port`, with an IPv6 literal in brackets.
pub(super) fn address(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A duration as people write it: `2 s`, `0.5 s`.
pub(super) fn seconds(duration: Duration) -> String {
    let text = format!("{:.3}", duration.as_secs_f64());
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} s")
}

/// The connect timeout of one open: a deadline set when the TCP connect starts, shared by the
/// stages after it.
pub(super) struct Budget {
    timeout: Option<Duration>,
    deadline: Option<Instant>,
}

impl Budget {
    /// Starts now; `None` is no bound (the supervisor's open timeout still applies).
    pub(super) fn start(timeout: Option<Duration>) -> Self {
        Self {
            timeout,
            deadline: timeout.map(|timeout| Instant::now() + timeout),
        }
    }

    /// `future`'s output, or `None` when the budget ran out first.
    async fn run<F: Future>(&self, future: F) -> Option<F::Output> {
        match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
            None => Some(future.await),
        }
    }

    fn timeout(&self) -> String {
        self.timeout.map(seconds).unwrap_or_default()
    }
}

/// Connects to the first of `addrs` that answers, within `budget`.
pub(super) async fn tcp_connect(
    addrs: &[SocketAddr],
    host: &str,
    port: u16,
    budget: &Budget,
) -> Result<TcpStream, OpenError> {
    let mut last = None;
    for addr in addrs {
        // Name the address tried when the host is a name that resolved to it.
        let target = match addr.ip().to_string() == host.trim_matches(['[', ']']) {
            true => address(host, port),
            false => format!("{} ({addr})", address(host, port)),
        };
        match budget.run(TcpStream::connect(addr)).await {
            Some(Ok(stream)) => return Ok(stream),
            Some(Err(error)) => last = Some((target, error)),
            None => {
                return Err(OpenError::new(
                    FailureKind::Timeout,
                    format!(
                        "TCP connect to {target} timed out after {}",
                        budget.timeout()
                    ),
                ));
            }
        }
    }
    Err(match last {
        Some((target, error)) => {
            let kind = match error.kind() {
                io::ErrorKind::ConnectionRefused => FailureKind::Refused,
                io::ErrorKind::TimedOut => FailureKind::Timeout,
                _ => FailureKind::Transport,
            };
            OpenError::new(kind, format!("TCP connect to {target} failed: {error}"))
        }
        None => OpenError::new(FailureKind::Dns, format!("{host} resolved to no address")),
    })
}

/// The SSH handshake over `stream` up to the end of the key exchange (the host key checked by
/// `handler`), within what is left of `budget`. `address` is named in every failure.
pub(super) async fn handshake<S>(
    config: Arc<client::Config>,
    stream: S,
    handler: ClientHandler,
    address: &str,
    budget: &Budget,
) -> Result<Session, OpenError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let progress = Arc::new(AtomicU8::new(NOTHING));
    let refusal = handler.refusal.clone();
    let stream = Watched {
        inner: stream,
        progress: progress.clone(),
        scan: Scan::default(),
    };
    let outcome = budget
        .run(client::connect_stream(config, stream, handler))
        .await;
    let progress = progress.load(Ordering::SeqCst);
    match outcome {
        Some(Ok(session)) => Ok(session),
        None if progress == BANNER => Err(OpenError::new(
            FailureKind::Timeout,
            format!(
                "key exchange with {address} did not finish within {}",
                budget.timeout()
            ),
        )),
        None => Err(OpenError::new(
            FailureKind::Timeout,
            format!(
                "no SSH banner from {address} within {}{}",
                budget.timeout(),
                if progress == OTHER_BYTES {
                    " (it sent bytes, but no line starting \"SSH-\")"
                } else {
                    ""
                }
            ),
        )),
        Some(Err(error)) => {
            let refused = refusal
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            Err(match refused {
                Some(reason) => OpenError::new(FailureKind::HostKey, reason),
                None => classify(&error, address, progress == BANNER),
            })
        }
    }
}

fn classify(error: &russh::Error, address: &str, banner_seen: bool) -> OpenError {
    let io_kind = |io: &io::Error| match io.kind() {
        io::ErrorKind::TimedOut => FailureKind::Timeout,
        _ => FailureKind::Transport,
    };
    if !banner_seen {
        let kind = match error {
            russh::Error::IO(io) => io_kind(io),
            _ => FailureKind::Transport,
        };
        let what = match error {
            russh::Error::Disconnect | russh::Error::HUP => {
                "closed the connection before sending an SSH banner".to_owned()
            }
            russh::Error::Version => "sent no valid SSH banner (is it an SSH server?)".to_owned(),
            other => format!("failed before its SSH banner: {other}"),
        };
        return OpenError::new(kind, format!("{address} {what}"));
    }
    if let russh::Error::NoCommonAlgo { kind, ours, theirs } = error {
        return algorithms::negotiation_error(kind, ours, theirs, address);
    }
    let kind = match error {
        russh::Error::UnknownKey => FailureKind::HostKey,
        russh::Error::IO(io) => io_kind(io),
        russh::Error::ConnectionTimeout | russh::Error::KeepaliveTimeout => FailureKind::Timeout,
        _ => FailureKind::Transport,
    };
    OpenError::new(kind, format!("key exchange with {address} failed: {error}"))
}

/// [`Watched::progress`]: nothing received yet.
const NOTHING: u8 = 0;
/// Bytes received, but no line starting `SSH-` (yet): RFC 4253 allows other lines first.
const OTHER_BYTES: u8 = 1;
/// A whole line starting `SSH-` received: the banner.
const BANNER: u8 = 2;

/// A stream that records how far the server's side of the handshake got before the banner.
struct Watched<S> {
    inner: S,
    progress: Arc<AtomicU8>,
    scan: Scan,
}

/// Where the scan of the received bytes is, until the banner.
#[derive(Default)]
struct Scan {
    /// Bytes of the current line so far, while they can still be a prefix of `SSH-`.
    matched: usize,
    /// The current line is not at its start (`matched` counts only then).
    mid_line: bool,
    /// The current line starts `SSH-`.
    banner_line: bool,
}

impl Scan {
    /// Scans `bytes`; true once a whole banner line has been seen.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        const PREFIX: &[u8] = b"SSH-";
        for &byte in bytes {
            if byte == b'\n' {
                if self.banner_line {
                    return true;
                }
                *self = Self::default();
                continue;
            }
            if self.banner_line || self.mid_line {
                continue;
            }
            if PREFIX.get(self.matched) == Some(&byte) {
                self.matched += 1;
                self.banner_line = self.matched == PREFIX.len();
            } else {
                self.mid_line = true;
            }
        }
        false
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let received = &buf.filled()[before..];
        if !received.is_empty() && this.progress.load(Ordering::Relaxed) != BANNER {
            let progress = if this.scan.feed(received) {
                BANNER
            } else {
                OTHER_BYTES
            };
            this.progress.store(progress, Ordering::SeqCst);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_is_a_whole_line_starting_ssh() {
        let mut scan = Scan::default();
        assert!(!scan.feed(b"hello SSH-2.0-x\r\n"), "not at a line start");
        assert!(!scan.feed(b"SS"));
        assert!(!scan.feed(b"H-2.0-OpenSSH_9.2"));
        assert!(scan.feed(b"\r\nrest"));
        assert!(!Scan::default().feed(b"SSX-2.0\n"));
    }

    #[test]
    fn addresses_and_seconds() {
        assert_eq!(address("10.0.0.1", 22), "10.0.0.1:22");
        assert_eq!(address("::1", 22), "[::1]:22");
        assert_eq!(seconds(Duration::from_secs(2)), "2 s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(seconds(Duration::from_millis(250)), "0.25 s");
    }
}
