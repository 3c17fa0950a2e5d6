//! The one error type every public call returns.

use std::fmt;
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
        /// Which call panicked ([`Operation::Open`], [`Operation::ExecuteCommand`],
        /// [`Operation::With`], ...).
        operation: Operation,
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
        /// Which limit: the total, or one plugin's.
        scope: LimitScope,
        /// The limit.
        limit: usize,
    },

    /// The connection is reconnecting and already holds as many waiting requests as its
    /// policy allows
    /// ([`ConnectionPolicy::max_waiting_requests`](crate::ConnectionPolicy::max_waiting_requests)):
    /// this one was refused at once instead of queued. Back off and try again.
    #[error("{key} is reconnecting with {waiting} requests already waiting; this one was refused")]
    Overloaded {
        /// The connection.
        key: ConnectionKey,
        /// How many requests were waiting.
        waiting: usize,
    },

    /// No answer came within the bound. The work may still finish in the background; the
    /// caller just stopped waiting.
    #[error(
        "{operation} on {} timed out after {after:?}{}",
        key.as_ref().map_or_else(|| "the supervisor".to_owned(), ToString::to_string),
        stage.suffix()
    )]
    Timeout {
        /// The call that timed out.
        operation: Operation,
        /// The connection it concerned; `None` for calls to the supervisor as a whole.
        key: Option<ConnectionKey>,
        /// What the call was waiting for when its bound ran out.
        stage: Stage,
        /// How long the caller waited.
        after: Duration,
    },

    /// [`EventStream::wait_for`](crate::EventStream::wait_for) saw no matching event within its
    /// bound. `last_seen` lists the last events it skipped, so a failing test says what
    /// happened instead.
    #[error("no matching event within {after:?}; last events seen: [{}]", last_seen.join("; "))]
    EventNotSeen {
        /// How long it waited.
        after: Duration,
        /// The last few events seen (at most eight), oldest first.
        last_seen: Vec<String>,
    },

    /// The supervisor has shut down (or was stopped by its owner) and takes no more requests.
    #[error("the connection supervisor is shut down")]
    ShutDown,

    /// A configuration value makes no sense; the message says which and why.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// An actor could not be started: the supervisor (`key` is `None`), or a connection's actor
    /// while its supervisor was stopping.
    #[error(
        "failed to start {}: {message}",
        key.as_ref().map_or_else(|| "the connection supervisor".to_owned(), |key| format!("the actor of {key}"))
    )]
    Spawn {
        /// The connection whose actor failed to start, if it was one.
        key: Option<ConnectionKey>,
        /// ractor's reason.
        message: String,
    },
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
                operation: Operation::Open,
                ..
            } => Some(FailureKind::Timeout),
            _ => None,
        }
    }

    /// The key this error concerns, if it concerns one.
    pub fn key(&self) -> Option<&ConnectionKey> {
        match self {
            Self::Open { key, .. }
            | Self::Command { key, .. }
            | Self::FactoryPanicked { key, .. }
            | Self::PluginPanicked { key, .. }
            | Self::WrongConnectionType { key, .. }
            | Self::Closed { key }
            | Self::Unavailable { key, .. }
            | Self::Quarantined { key, .. }
            | Self::LimitReached { key, .. }
            | Self::Overloaded { key, .. } => Some(key),
            Self::Timeout { key, .. } | Self::Spawn { key, .. } => key.as_ref(),
            Self::FactoryNotSet
            | Self::EventNotSeen { .. }
            | Self::ShutDown
            | Self::InvalidConfig(_) => None,
        }
    }
}

/// A call an [`Error`] can name: the public calls of the manager and of a handle, and the
/// plugin's own methods. `Display` is the method's name (`open_connection`, `execute_command`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// [`ConnectionManager::set_connection_factory`](crate::ConnectionManager::set_connection_factory).
    SetConnectionFactory,
    /// [`ConnectionManager::get_or_create`](crate::ConnectionManager::get_or_create).
    GetOrCreate,
    /// [`ConnectionManager::open_connection`](crate::ConnectionManager::open_connection).
    OpenConnection,
    /// [`ConnectionManager::close_connection`](crate::ConnectionManager::close_connection).
    CloseConnection,
    /// [`ConnectionManager::replace_connection`](crate::ConnectionManager::replace_connection).
    ReplaceConnection,
    /// [`ConnectionManager::close_all_connections`](crate::ConnectionManager::close_all_connections).
    CloseAllConnections,
    /// [`ConnectionManager::retry`](crate::ConnectionManager::retry).
    Retry,
    /// [`ConnectionManager::connection_status`](crate::ConnectionManager::connection_status).
    ConnectionStatus,
    /// [`ConnectionManager::subscribe`](crate::ConnectionManager::subscribe) and
    /// `subscribe_actor`.
    Subscribe,
    /// [`ConnectionManager::connection_counters_for`](crate::ConnectionManager::connection_counters_for).
    ConnectionCountersFor,
    /// [`ConnectionManager::connection_counters_snapshot`](crate::ConnectionManager::connection_counters_snapshot).
    ConnectionCountersSnapshot,
    /// [`ConnectionManager::shutdown`](crate::ConnectionManager::shutdown).
    Shutdown,
    /// [`ConnectionManager::from_supervisor`](crate::ConnectionManager::from_supervisor) asking
    /// the supervisor for its timeouts.
    Timeouts,
    /// [`ConnectionHandle::wait_for_status`](crate::ConnectionHandle::wait_for_status).
    WaitForStatus,
    /// The plugin's `is_alive`, or [`ConnectionHandle::is_alive`](crate::ConnectionHandle::is_alive).
    IsAlive,
    /// The plugin's `open`, or [`ConnectionHandle::open`](crate::ConnectionHandle::open).
    Open,
    /// A command: the plugin's `execute_command` or its runner, or
    /// [`ConnectionHandle::execute_command`](crate::ConnectionHandle::execute_command).
    ExecuteCommand,
    /// [`ConnectionHandle::run_command`](crate::ConnectionHandle::run_command).
    RunCommand,
    /// [`ConnectionHandle::with`](crate::ConnectionHandle::with).
    With,
    /// The plugin's `health_check`.
    HealthCheck,
}

impl Operation {
    /// The method's name, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SetConnectionFactory => "set_connection_factory",
            Self::GetOrCreate => "get_or_create",
            Self::OpenConnection => "open_connection",
            Self::CloseConnection => "close_connection",
            Self::ReplaceConnection => "replace_connection",
            Self::CloseAllConnections => "close_all_connections",
            Self::Retry => "retry",
            Self::ConnectionStatus => "connection_status",
            Self::Subscribe => "subscribe",
            Self::ConnectionCountersFor => "connection_counters_for",
            Self::ConnectionCountersSnapshot => "connection_counters_snapshot",
            Self::Shutdown => "shutdown",
            Self::Timeouts => "timeouts",
            Self::WaitForStatus => "wait_for_status",
            Self::IsAlive => "is_alive",
            Self::Open => "open",
            Self::ExecuteCommand => "execute_command",
            Self::RunCommand => "run_command",
            Self::With => "with",
            Self::HealthCheck => "health_check",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a timed-out call was waiting for when its bound ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// The answer: the actor's reply, or the plugin call it was running.
    Answer,
    /// A reconnect of its connection: the request was parked until the connection came back,
    /// and it did not come back in time.
    Reconnect,
    /// Its turn: the connection's actor was busy with earlier requests until the deadline
    /// passed, so the request was never started.
    Queue,
    /// An open slot: the supervisor's open budget or the target address's handshake limit
    /// (see [`SupervisorConfig::max_concurrent_opens`](crate::SupervisorConfig::max_concurrent_opens))
    /// was taken by other opens until the bound ran out; the plugin was never asked.
    OpenSlot,
    /// The factory: it did not return a connection for the key within the key's open timeout.
    /// Whatever it returns later is closed at once.
    Factory,
}

impl Stage {
    fn suffix(self) -> &'static str {
        match self {
            Self::Answer => "",
            Self::Reconnect => " waiting for a reconnect",
            Self::Queue => " waiting for its turn",
            Self::Factory => " waiting for the connection factory",
            Self::OpenSlot => " waiting for an open slot",
        }
    }
}

/// Which connection limit refused a new connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitScope {
    /// [`SupervisorConfig::max_connections`](crate::SupervisorConfig::max_connections).
    Total,
    /// [`SupervisorConfig::max_connections_for`](crate::SupervisorConfig::max_connections_for)
    /// this plugin.
    Plugin(String),
}

impl fmt::Display for LimitScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Total => f.write_str("total"),
            Self::Plugin(name) => write!(f, "plugin {name:?}"),
        }
    }
}
