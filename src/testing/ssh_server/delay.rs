//! A network link with a round-trip time, between a device's socket and its SSH session.
//!
//! Loopback answers in microseconds, which flatters every design that makes round trips. The
//! line delays every byte in each direction by half the round-trip time, as a long link does:
//! chunks are stamped when they arrive and handed on when their time is up, so many can be in
//! flight at once (a delay, not a bandwidth limit), and order is kept.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the duplex pipe between the line and the session buffers (russh's packets are smaller).
const PIPE_BUFFER: usize = 256 * 1024;
const READ_CHUNK: usize = 32 * 1024;

/// Runs `session` on a stream that reaches `socket` through a line of `round_trip`, until the
/// session has ended and everything it sent has been delivered.
///
/// On a real link the client's TCP handshake costs it one round trip before it can send, and
/// the server accepts half a round trip after that; on loopback the connect returns at once.
/// So the session starts 1.5 round trips after the accept: the server's first bytes then reach
/// the client two round trips after its connect, and the client's first bytes reach the server
/// 1.5 round trips after it, as over the real link.
pub(super) async fn serve<F, S>(socket: TcpStream, round_trip: Duration, session: F)
where
    F: FnOnce(DuplexStream) -> S,
    S: Future<Output = ()>,
{
    let one_way = round_trip / 2;
    let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
    let (from_client, to_client) = socket.into_split();
    let (from_session, to_session) = tokio::io::split(theirs);
    let handshake = round_trip + one_way;
    let served = async {
        tokio::time::sleep(handshake).await;
        session(ours).await;
    };
    // The client's bytes after the session ended have nobody to read them: once the session
    // and what it sent are done, the connection is.
    let upstream = async {
        carry(from_client, to_session, one_way).await;
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = async { tokio::join!(served, carry(from_session, to_client, one_way)) } => {}
        () = upstream => {}
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read; the end (EOF or a read error)
/// is passed on as a shutdown, `delay` after it too.
fn carry<R, W>(mut from: R, mut to: W, delay: Duration) -> impl Future<Output = ()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Unbounded: the line holds what is in flight, as a link does; a reader that falls behind
    // only makes chunks wait past their time.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Option<Vec<u8>>)>();
    let read = async move {
        let mut buffer = vec![0; READ_CHUNK];
        loop {
            let chunk = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => None,
                Ok(n) => buffer.get(..n).map(<[u8]>::to_vec),
            };
            let end = chunk.is_none();
            if tx.send((Instant::now() + delay, chunk)).is_err() || end {
                return;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            match chunk {
                Some(bytes) => {
                    if to.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                None => break,
            }
        }
        // Nothing waits for this end any more: an error only means it is gone already.
        let _ = to.shutdown().await;
    };
    async move {
        tokio::join!(read, write);
    }
}
