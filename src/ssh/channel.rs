//! One command on a channel of its own, and what becomes of the channel when the command's
//! caller stops waiting (its bound ran out, or its future was dropped): the remote process is
//! signalled and the channel closed, without waiting in `Drop`. Left open, abandoned channels
//! use up the server's channels (OpenSSH's `MaxSessions`, 10) until no command can run at all.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use russh::client::Msg;
use russh::{Channel, ChannelMsg, Sig};
use tracing::debug;

use crate::connection::{CommandError, CommandOutput};

use super::host_keys::{Liveness, Session};

/// Bound on cleaning up after an abandoned command: finishing its channel's open, if it was
/// under way, then the signal and the close.
const CLEANUP_BOUND: Duration = Duration::from_secs(10);

/// The pauses before opening a refused channel again, before the session is given up on. A
/// server frees the place of a channel we closed only once its process is gone (OpenSSH reaps
/// the child first), so a command that closely follows abandoned ones can be refused for a
/// moment by a session that is fine.
const REFUSAL_RETRIES: [Duration; 4] = [
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_millis(500),
];

/// Runs `command` on a new channel of `session` (to `address`, named in errors). A session
/// that cannot open a channel is reported lost through `liveness`.
pub(super) async fn run(
    session: &Arc<Session>,
    liveness: &Liveness,
    address: &str,
    command: &str,
) -> Result<CommandOutput, CommandError> {
    let channel = open(session).await.map_err(|error| {
        // A server that keeps refusing channels on a session that used to take them (its
        // channel limit reached, by channels of ours it still counts, or its own trouble) will
        // not run another command on it: a new session starts from a clean slate.
        let reason = format!("cannot open a channel on {address}: {error}");
        liveness.lost(reason.clone());
        CommandError::ConnectionLost(reason)
    })?;
    let mut channel = CommandChannel {
        channel: Some(channel),
        started: false,
    };
    let lost = |what: &str, error: russh::Error| {
        if session.is_closed() {
            CommandError::ConnectionLost(format!("{what}: {error}"))
        } else {
            CommandError::Other(format!("{what}: {error}"))
        }
    };
    channel
        .exec(command)
        .await
        .map_err(|e| lost("cannot start the command", e))?;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut exit_status = None;
    let mut closed_cleanly = false;
    while let Some(message) = channel.next().await {
        match message {
            ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, ext: 1 } => stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status: code } => exit_status = Some(code),
            ChannelMsg::Eof | ChannelMsg::Close => closed_cleanly = true,
            _ => {}
        }
    }
    if exit_status.is_none() && !closed_cleanly {
        return Err(CommandError::ConnectionLost(
            "the session ended before the command finished".to_owned(),
        ));
    }
    Ok(CommandOutput {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        exit_status,
    })
}

/// Opens a channel, trying again a few times while the server refuses it.
async fn open(session: &Arc<Session>) -> Result<Channel<Msg>, russh::Error> {
    let mut pauses = REFUSAL_RETRIES.iter();
    loop {
        let refusal = match PendingOpen::new(session.clone()).await {
            Err(refusal @ russh::Error::ChannelOpenFailure(_)) => refusal,
            opened => return opened,
        };
        let Some(pause) = pauses.next() else {
            return Err(refusal);
        };
        debug!("channel refused ({refusal}), trying again in {pause:?}");
        tokio::time::sleep(*pause).await;
    }
}

/// A command's channel, owned until the channel is gone. Dropped before that, the command was
/// abandoned: the channel is cleaned up (see [`abandon`] and [`clean_up`]).
struct CommandChannel {
    /// `None` once the channel is gone and nothing is left to clean up.
    channel: Option<Channel<Msg>>,
    /// Whether the command may have been started: from the moment its request may have left.
    started: bool,
}

impl CommandChannel {
    async fn exec(&mut self, command: &str) -> Result<(), russh::Error> {
        self.started = true;
        match &self.channel {
            Some(channel) => channel.exec(true, command).await,
            None => Err(russh::Error::SendError),
        }
    }

    /// The channel's next message; `None` once the channel is gone (closed by the server, or
    /// its session ended).
    async fn next(&mut self) -> Option<ChannelMsg> {
        let message = self.channel.as_mut()?.wait().await;
        if message.is_none() {
            self.channel = None;
        }
        message
    }
}

impl Drop for CommandChannel {
    fn drop(&mut self) {
        if let Some(channel) = self.channel.take() {
            clean_up(Box::pin(abandon(channel, self.started)));
        }
    }
}

/// Ends an abandoned command's channel, and the command (if `started`) with it where the
/// server allows.
async fn abandon(channel: Channel<Msg>, started: bool) {
    // The signal first: a closed channel has no process left to deliver it to. OpenSSH (7.9+)
    // kills the command's process group with it; closing alone ends only commands that stop
    // when their stdin or stdout goes (`cat`), while a `sleep` keeps running, keeps its place
    // in MaxSessions, and outlives even the connection. Not without a command: OpenSSH logs
    // an error for a signal to a session with no process. No EOF: the close ends the input
    // too. Errors only mean the session is gone, and the channel with it.
    if started {
        let _ = channel.signal(Sig::TERM).await;
    }
    let _ = channel.close().await;
}

/// Runs `cleanup` right now as far as it gets without waiting, so its messages are queued on
/// the session before anything the caller does next: the next command's channel open should
/// not overtake the close that makes room for it. What cannot go at once (russh queues 10
/// messages per session) runs on a task of its own; the next open then may be refused for a
/// moment, which [`REFUSAL_RETRIES`] absorbs.
fn clean_up(mut cleanup: Pin<Box<dyn Future<Output = ()> + Send>>) {
    let mut now = Context::from_waker(Waker::noop());
    if cleanup.as_mut().poll(&mut now).is_pending() {
        spawn_cleanup(cleanup);
    }
}

/// Runs `cleanup` on the current runtime, bounded by [`CLEANUP_BOUND`].
fn spawn_cleanup(cleanup: impl Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async move {
                if tokio::time::timeout(CLEANUP_BOUND, cleanup).await.is_err() {
                    debug!("an abandoned ssh channel was not closed within {CLEANUP_BOUND:?}");
                }
            });
        }
        // Dropped outside any runtime: russh's session cannot be reached either; the channel
        // ends with its session.
        Err(_) => debug!("no runtime to close an abandoned ssh channel on"),
    }
}

type Opening = Pin<Box<dyn Future<Output = Result<Channel<Msg>, russh::Error>> + Send>>;

/// A channel being opened. Dropped once the request is on its way but before the server
/// answered, it lets the open finish on a task of its own and closes the channel: russh has no
/// way to close a channel whose open was abandoned, and the server would keep it open.
struct PendingOpen {
    /// `None` once it has completed.
    opening: Option<Opening>,
    /// Whether the request may have left: before the first poll nothing was asked.
    polled: bool,
}

impl PendingOpen {
    fn new(session: Arc<Session>) -> Self {
        Self {
            opening: Some(Box::pin(
                async move { session.channel_open_session().await },
            )),
            polled: false,
        }
    }
}

impl Future for PendingOpen {
    type Output = Result<Channel<Msg>, russh::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Unpin: it only holds a boxed future.
        let this = self.get_mut();
        let Some(opening) = this.opening.as_mut() else {
            // Polled again after it completed: a bug of ours, reported as an error.
            return Poll::Ready(Err(russh::Error::Inconsistent));
        };
        this.polled = true;
        let opened = ready!(opening.as_mut().poll(cx));
        this.opening = None;
        Poll::Ready(opened)
    }
}

impl Drop for PendingOpen {
    fn drop(&mut self) {
        if let Some(opening) = self.opening.take()
            && self.polled
        {
            spawn_cleanup(async move {
                if let Ok(channel) = opening.await {
                    abandon(channel, false).await;
                }
            });
        }
    }
}
