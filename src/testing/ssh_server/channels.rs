//! The channels of the test server's sessions: which are open, which command runs on each and
//! what it is sent on stdin, counted so that a test can check that a client left nothing
//! behind (a leaked channel, a command still running).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use russh::ChannelId;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// How many of something are live. Each one holds a [`Counted`], so the count goes down
/// however it ends: finished, aborted, or dropped with its session.
#[derive(Default)]
pub(super) struct Gauge(Arc<AtomicUsize>);

impl Gauge {
    pub(super) fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    pub(super) fn enter(&self) -> Counted {
        self.0.fetch_add(1, Ordering::SeqCst);
        Counted(self.0.clone())
    }
}

/// One live thing in a [`Gauge`]; dropping it counts it out.
pub(super) struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the stdin of a command that reads it (`cat`) receives.
pub(super) type Stdin = mpsc::UnboundedReceiver<Vec<u8>>;

/// One open channel as the server sees it.
pub(super) struct OpenChannel {
    _open: Counted,
    command: Option<AbortHandle>,
    stdin: Option<mpsc::UnboundedSender<Vec<u8>>>,
}

impl OpenChannel {
    /// Ends the channel's command if it still runs, as a device kills the process of a session
    /// whose channel is gone.
    pub(super) fn stop(self) {
        if let Some(command) = self.command {
            command.abort();
        }
    }
}

/// The open channels of one session, shared by its handler and its command tasks.
#[derive(Clone, Default)]
pub(super) struct Channels(Arc<Mutex<HashMap<ChannelId, OpenChannel>>>);

impl Channels {
    fn lock(&self) -> MutexGuard<'_, HashMap<ChannelId, OpenChannel>> {
        // Every update is a single call, so the map is consistent even after a panic.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(super) fn opened(&self, id: ChannelId, open: Counted) {
        self.lock().insert(
            id,
            OpenChannel {
                _open: open,
                command: None,
                stdin: None,
            },
        );
    }

    /// Connects the channel's stdin to a pipe and returns its reading end; `None` if the
    /// channel is already gone.
    pub(super) fn pipe_stdin(&self, id: ChannelId) -> Option<Stdin> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut channels = self.lock();
        channels.get_mut(&id)?.stdin = Some(sender);
        Some(receiver)
    }

    /// Records the task running the channel's command, so closing the channel can stop it.
    pub(super) fn started(&self, id: ChannelId, command: AbortHandle) {
        match self.lock().get_mut(&id) {
            Some(channel) => channel.command = Some(command),
            // Closed before its command was even recorded: nobody is left to read its output.
            None => command.abort(),
        }
    }

    /// Data the client sent on the channel, for its command's stdin (ignored by commands that
    /// read none).
    pub(super) fn write_stdin(&self, id: ChannelId, data: &[u8]) {
        if let Some(stdin) = self.lock().get(&id).and_then(|c| c.stdin.as_ref()) {
            // The command may have ended already; its input no longer matters.
            let _ = stdin.send(data.to_vec());
        }
    }

    /// The client sent EOF: the command's stdin ends.
    pub(super) fn close_stdin(&self, id: ChannelId) {
        if let Some(channel) = self.lock().get_mut(&id) {
            channel.stdin = None;
        }
    }

    /// Takes the channel out of the table: it is closed, or closing.
    pub(super) fn remove(&self, id: ChannelId) -> Option<OpenChannel> {
        self.lock().remove(&id)
    }
}

/// `cat`: everything the client sends, once it sends EOF (or closes the channel).
pub(super) async fn cat(mut stdin: Stdin) -> String {
    let mut input = Vec::new();
    while let Some(chunk) = stdin.recv().await {
        input.extend_from_slice(&chunk);
    }
    String::from_utf8_lossy(&input).into_owned()
}
