//! What a connection is and has done, as plain data: its lifecycle state, a status snapshot,
//! the last failure, and the per-plugin counters. Written by the actors, read by everyone.

use std::fmt;
use std::time::SystemTime;

use crate::connection::FailureKind;

/// Where a connection is in its life. Only its connection actor moves it, in one method.
///
/// ```text
/// Created ──open──▶ Opening ──ok──▶ Open ──loss──▶ Lost ──▶ Reconnecting ──ok──▶ Open
///                      │                                       │  ▲   │
///                      └──err──▶ Failed ◀── gave up ───────────┘  └───┘ err: back off, retry
/// any ──close / stop / crash──▶ Closing ──▶ Closed
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Made by the factory, never opened.
    Created,
    /// A requested open is running.
    Opening,
    /// Opened and believed usable.
    Open,
    /// Was open and went away; a reconnect is about to be scheduled.
    Lost,
    /// Waiting for the next reconnect attempt, or running it. Requests wait for it.
    Reconnecting,
    /// The last requested open failed, or reconnecting gave up; requests fail with the cause
    /// until the connection is opened again, retried or closed.
    Failed,
    /// `close` is running.
    Closing,
    /// Closed; the actor is stopping.
    Closed,
    /// The key's actor crashed too often and is not restarted until the quarantine ends
    /// (reported by the supervisor; no actor runs).
    Quarantined,
}

impl ConnectionState {
    /// A short, stable, snake_case name (`"open"`, `"reconnecting"`, ...): the `state` label
    /// of the connections metric.
    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Opening => "opening",
            Self::Open => "open",
            Self::Lost => "lost",
            Self::Reconnecting => "reconnecting",
            Self::Failed => "failed",
            Self::Closing => "closing",
            Self::Closed => "closed",
            Self::Quarantined => "quarantined",
        }
    }
}

/// Why something failed: the kind, which decides the retry policy, and a message that never
/// contains secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailureInfo {
    /// What kind of failure it was.
    pub kind: FailureKind,
    /// What happened, in the plugin's or the supervisor's words.
    pub message: String,
}

impl FailureInfo {
    /// A failure of `kind`, described by `message` (which must not contain secrets).
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for FailureInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// A snapshot of one connection's state, as [`ConnectionManager::connection_status`]
/// returns it.
///
/// [`ConnectionManager::connection_status`]: crate::ConnectionManager::connection_status
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ConnectionStatus {
    /// The lifecycle state.
    pub state: ConnectionState,
    /// Failed open attempts since the last successful open.
    pub attempts: u32,
    /// The last failure, kept after recovery so an operator can see what happened.
    pub last_error: Option<FailureInfo>,
    /// When the next reconnect attempt is due (while reconnecting) or the quarantine ends.
    pub next_attempt_at: Option<SystemTime>,
    /// Requests waiting for a reconnect to finish.
    pub waiting_requests: usize,
}

impl ConnectionStatus {
    pub(crate) fn new(state: ConnectionState) -> Self {
        Self {
            state,
            attempts: 0,
            last_error: None,
            next_attempt_at: None,
            waiting_requests: 0,
        }
    }
}

/// Per-plugin counts of lifecycle calls, as upstream genja keeps them, plus what supervision
/// adds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionCounters {
    /// Connections the factory made (it returned `Some`), restarts included.
    pub create_calls: usize,
    /// Opens that ran because the connection was not alive, and succeeded (reconnects
    /// included).
    pub open_calls: usize,
    /// Closes of pooled connections, opened or not.
    pub close_calls: usize,
    /// Open attempts that failed (error or timeout), reconnect attempts included.
    pub failed_open_calls: usize,
    /// Open connections that were lost.
    pub losses: usize,
    /// Successful reopens of lost (or restarted) connections.
    pub reconnects: usize,
    /// Connection actors that failed (a plugin panicked), whether pooled or already closing.
    pub crashes: usize,
    /// Pooled connection actors restarted after a crash.
    pub restarts: usize,
    /// Keys quarantined after crashing too often.
    pub quarantines: usize,
    /// Open attempts whose bound ran out while they waited for an open slot (the supervisor's
    /// budget, or the target address's handshake limit), before the plugin was even asked.
    pub open_slot_timeouts: usize,
}
