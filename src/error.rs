//! The one error type every public call returns.

use std::time::Duration;

use crate::connection::{CommandError, ConnectionKey, FailureKind, OpenError};
use crate::status::{ConnectionState, FailureInfo};

/// What went wrong with a call to the supervisor or to a connection.
///
/// Each variant names the key it concerns, so a caller juggling many hosts can tell which one
/// failed, and keeps the cause typed (a timeout is not an auth failure). No variant ever carries
/// a password or key material.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `get_or_create` or `open_connection` was called before any factory was set.
    #[error("connection factory not set")]
    FactoryNotSet,

    /// The plugin's `open` failed; `source` is its error, unchanged.
    #[error("failed to open {key} ({kind}): {source}", kind = source.kind())]
    Open {
        /// The connection that failed to open.
        key: ConnectionKey,
        /// The plugin's error.
        source: OpenError,
    },

    /// The plugin's `execute_command` failed; `source` is its error, unchanged.
    #[error("command on {key} failed: {source}")]
    Command {
        /// The connection the command ran on.
        key: ConnectionKey,
        /// The plugin's error.
        source: CommandError,
    },

    /// The factory panicked while making a connection for `key`. Nothing was pooled.
    #[error("connection factory panicked for {key}: {message}")]
    FactoryPanicked {
        /// The key the factory was asked for.
        key: ConnectionKey,
        /// The panic message.
        message: String,
    },

    /// The plugin panicked. The instance was closed and dropped; other keys are unaffected.
    #[error("plugin panicked in {operation} on {key}: {message}")]
    PluginPanicked {
        /// The connection whose plugin panicked.
        key: ConnectionKey,
        /// Which call panicked (`open`, `execute_command`, `with`, ...).
        operation: &'static str,
        /// The panic message.
        message: String,
    },

    /// [`ConnectionHandle::with`](crate::ConnectionHandle::with) asked for a type the
    /// connection is not.
    #[error("{key} is a {actual}, not a {expected}")]
    WrongConnectionType {
        /// The connection asked.
        key: ConnectionKey,
        /// The type the caller asked for.
        expected: &'static str,
        /// The connection's real type.
        actual: &'static str,
    },

    /// The connection was closed (by `close_connection`, `close_all_connections` or shutdown)
    /// before or while the call was handled. Ask the manager for the key again for a new one.
    #[error("connection {key} is closed")]
    Closed {
        /// The closed connection.
        key: ConnectionKey,
    },

    /// The connection is not usable: it failed to open, or reconnecting gave up (see
    /// [`FailureKind::is_permanent`]). It stays so until opened again, retried or closed.
    #[error("connection {key} is {state:?}{}", cause.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Unavailable {
        /// The connection.
        key: ConnectionKey,
        /// Its state when the request arrived.
        state: ConnectionState,
        /// The last failure, if there was one.
        cause: Option<FailureInfo>,
    },

    /// The key's connection crashed more often than the restart policy allows; it refuses
    /// requests until the quarantine ends (or the key is closed).
    #[error("{key} is quarantined for another {remaining:?} after repeated crashes: {reason}")]
    Quarantined {
        /// The quarantined key.
        key: ConnectionKey,
        /// Time left in quarantine.
        remaining: Duration,
        /// Why its actor last failed.
        reason: String,
    },

    /// A connection limit is reached and nothing idle could be evicted to make room.
    #[error("cannot create {key}: {scope} limit of {limit} connections reached and none is idle")]
    LimitReached {
        /// The key that was refused.
        key: ConnectionKey,
        /// `total` or `plugin "<name>"`.
        scope: String,
        /// The limit.
        limit: usize,
    },

    /// No answer came within the bound. The work may still finish in the background; the
    /// caller just stopped waiting.
    #[error("{operation} on {target} timed out after {after:?}")]
    Timeout {
        /// What was waited for (`open`, `execute_command`, `close_all_connections`, ...).
        operation: &'static str,
        /// The key, or `supervisor` for calls that concern no single key.
        target: String,
        /// How long the caller waited.
        after: Duration,
    },

    /// The supervisor has shut down (or was stopped by its owner) and takes no more requests.
    #[error("the connection supervisor is shut down")]
    ShutDown,

    /// A configuration value makes no sense; the message says which and why.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// The supervisor actor could not be started.
    #[error("failed to start the connection supervisor: {0}")]
    Spawn(String),
}

impl Error {
    /// The failure kind when this is an open failure, so callers can branch on auth vs.
    /// refused vs. timeout without matching on variants.
    pub fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            Self::Open { source, .. } => Some(source.kind()),
            Self::Unavailable {
                cause: Some(cause), ..
            } => Some(cause.kind),
            Self::Timeout {
                operation: "open", ..
            } => Some(FailureKind::Timeout),
            _ => None,
        }
    }
}
