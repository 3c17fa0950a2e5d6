//! The messages the supervisor and its connection actors are asked with, and the
//! [`ConnectionHandle`] they answer with: the protocol between callers and the runtime.
//!
//! The handle and the messages name each other (a handle sends [`ConnectionMessage`]s; an
//! open is answered with a handle), so they live together here. What a handle *does* (its
//! async calls, the retry on a restarted actor, the direct command route) is in
//! `client/handle.rs`; this file holds only what travels.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use ractor::{ActorRef, RpcReplyPort};
use tokio::sync::{broadcast, watch};

use crate::connection::{
    CommandOutput, ConnectionFactory, ConnectionKey, ResolvedConnectionParams,
};
use crate::deadline::Deadline;
use crate::error::Error;
use crate::events::{CloseReason, ConnectionEvent};
use crate::policy::Timeouts;
use crate::runtime::internal::{Report, Tick, WithJob};
use crate::shared::Published;
use crate::status::{ConnectionCounters, ConnectionStatus};

/// The answer to a get-or-create: the pooled connection, `None` when the factory has no plugin
/// for the key, or an error.
pub(crate) type GetOrCreateReply = Result<Option<ConnectionHandle>, Error>;

/// Everything the supervisor can be asked. Send these with ractor's `call!`/`cast!` when you
/// embed the supervisor in your own actor tree; [`ConnectionManager`](crate::ConnectionManager)
/// is a typed wrapper over exactly these messages.
#[non_exhaustive]
pub enum SupervisorMessage {
    /// Returns the pooled connection for `key`, creating it through the factory when there is
    /// none. Concurrent requests for one key share one creation.
    GetOrCreate {
        /// The connection wanted.
        key: ConnectionKey,
        /// Where the answer goes.
        reply: RpcReplyPort<GetOrCreateReply>,
    },
    /// Like `GetOrCreate`, then opens the connection with `params` unless it is already alive,
    /// and answers with the handle once it is open (or with the open's error). The supervisor
    /// forwards the request, reply port included, to the connection's actor and does not wait
    /// for the open: one message to the supervisor, one to the actor, one answer.
    OpenConnection {
        /// The connection wanted.
        key: ConnectionKey,
        /// What to open it with.
        params: ResolvedConnectionParams,
        /// Where the answer goes. `Err(Closed)` means the connection was closed while the
        /// request was on its way: ask again for a new one.
        reply: RpcReplyPort<GetOrCreateReply>,
    },
    /// Closes the connection for `key` and removes it from the pool. Answers once the plugin's
    /// `close` has returned (or its close timeout has passed). An unknown key answers at once.
    CloseConnection {
        /// The connection to close.
        key: ConnectionKey,
        /// Answered when the close is done.
        reply: RpcReplyPort<()>,
    },
    /// Replaces the connection for `key` with a new instance: the old one is closed, a new one
    /// is made by the factory and opened with `params`, and only then is the key served again
    /// (requests for it that arrive meanwhile wait and get the new one). Handles to the old
    /// instance follow to the new one. `Ok(None)` when the factory has no plugin for the key,
    /// and a failed open, closes the new instance and leaves the key empty.
    ReplaceConnection {
        /// The connection to replace.
        key: ConnectionKey,
        /// What to open the new instance with.
        params: ResolvedConnectionParams,
        /// Answered with the new instance once it is open, or with the error.
        reply: RpcReplyPort<GetOrCreateReply>,
    },
    /// Closes every pooled connection exactly once and empties the pool. Connections created
    /// after this message is handled are not affected.
    CloseAll {
        /// Answered when every close is done, or with a timeout naming how long it waited.
        reply: RpcReplyPort<Result<(), Error>>,
    },
    /// Retries a failed connection now (or lifts a quarantine and restarts it).
    Retry {
        /// The connection.
        key: ConnectionKey,
        /// The outcome of the attempt.
        reply: RpcReplyPort<Result<(), Error>>,
    },
    /// A snapshot of one connection's status; `None` if the key is not pooled.
    Status {
        /// The connection.
        key: ConnectionKey,
        /// Where the snapshot goes.
        reply: RpcReplyPort<Option<ConnectionStatus>>,
    },
    /// A new subscription to lifecycle events.
    Subscribe {
        /// Where the receiver goes.
        reply: RpcReplyPort<broadcast::Receiver<ConnectionEvent>>,
    },
    /// Replaces the factory. Connections already pooled are kept.
    SetFactory {
        /// The new factory.
        factory: Arc<ConnectionFactory>,
        /// Answered once the factory is in place.
        reply: RpcReplyPort<()>,
    },
    /// A copy of one plugin's counters, `None` when that plugin never created a connection.
    CountersFor {
        /// The plugin name.
        plugin_name: String,
        /// Where the copy goes.
        reply: RpcReplyPort<Option<ConnectionCounters>>,
    },
    /// A copy of every plugin's counters.
    CountersSnapshot {
        /// Where the copy goes.
        reply: RpcReplyPort<HashMap<String, ConnectionCounters>>,
    },
    /// The default policy's timeouts, which bound the supervisor's own answers.
    Timeouts {
        /// Where the timeouts go.
        reply: RpcReplyPort<Timeouts>,
    },
    /// The timeouts of every plugin with a policy of its own, which bound the calls that
    /// concern one of its keys.
    PluginTimeouts {
        /// Where the timeouts go, by plugin name.
        reply: RpcReplyPort<HashMap<String, Timeouts>>,
    },
    /// Stops taking requests, closes every connection exactly once (bounded by the close
    /// timeout), stops every connection actor, then stops the supervisor itself.
    Shutdown {
        /// Answered when the supervisor has stopped.
        reply: RpcReplyPort<()>,
    },
    /// A report from the supervisor's own tasks and connection actors. Only this crate can make
    /// one.
    Report(Report),
}

/// Everything a connection actor can be asked. A [`ConnectionHandle`](crate::ConnectionHandle)
/// sends these directly, without going through the supervisor.
#[non_exhaustive]
pub enum ConnectionMessage {
    /// Opens the connection with `params` unless it is already alive (counts an open on
    /// success). While reconnecting, waits for the reconnect instead of starting another.
    Open {
        /// What to open with.
        params: ResolvedConnectionParams,
        /// When the caller stops waiting: the open runs with the time left, and is not started
        /// after it. `None` gives it the policy's open timeout from when it is handled.
        deadline: Option<Deadline>,
        /// Answered when the connection is open or the open failed.
        reply: RpcReplyPort<Result<(), Error>>,
    },
    /// Asks the plugin whether the connection is alive.
    IsAlive {
        /// The plugin's answer.
        reply: RpcReplyPort<Result<bool, Error>>,
    },
    /// Runs one command through the plugin; waits for a reconnect in progress.
    ExecuteCommand {
        /// The command line.
        command: String,
        /// When the caller stops waiting: the command runs with the time left, and is not
        /// started after it. `None` gives it the policy's request timeout from when it is
        /// handled.
        deadline: Option<Deadline>,
        /// The command's output or its error.
        reply: RpcReplyPort<Result<String, Error>>,
    },
    /// Like `ExecuteCommand`, but answers with the whole [`CommandOutput`] (stdout, stderr,
    /// exit status) whatever the exit status.
    RunCommand {
        /// The command line.
        command: String,
        /// When the caller stops waiting: the command runs with the time left, and is not
        /// started after it. `None` gives it the policy's request timeout from when it is
        /// handled.
        deadline: Option<Deadline>,
        /// The command's output or its error.
        reply: RpcReplyPort<Result<CommandOutput, Error>>,
    },
    /// Runs a closure on the concrete plugin type; built by
    /// [`ConnectionHandle::with`](crate::ConnectionHandle::with).
    With {
        /// The closure.
        job: WithJob,
        /// As for commands.
        deadline: Option<Deadline>,
        /// `Ok` once the closure ran (its result travels on its own channel).
        reply: RpcReplyPort<Result<(), Error>>,
    },
    /// Retries a `Failed` (or reconnecting) connection now with its last params.
    Retry {
        /// Answered with the outcome of the attempt.
        reply: RpcReplyPort<Result<(), Error>>,
    },
    /// Closes the connection (once, however often asked) and stops the actor.
    Close {
        /// Why; reported in the `Closed` event.
        reason: CloseReason,
        /// Answered when the plugin's `close` returned or timed out.
        reply: Option<RpcReplyPort<()>>,
    },
    /// An open the supervisor routed here for
    /// [`SupervisorMessage::OpenConnection`]: handled like `Open`, answered with the handle.
    /// Only this crate can make one.
    Routed(Box<RoutedOpen>),
    /// The actor's own timers and its plugin's loss reports. Only this crate can make one.
    Internal(Tick),
}

/// An open request the supervisor forwarded with its caller's reply port, so the caller gets
/// the handle and the open's outcome in one answer without the supervisor waiting for the
/// open.
pub struct RoutedOpen {
    pub(crate) params: ResolvedConnectionParams,
    pub(crate) handle: ConnectionHandle,
    pub(crate) reply: RpcReplyPort<GetOrCreateReply>,
}

/// A cheap, cloneable handle to one pooled connection. Calls go straight to the connection's
/// actor (no supervisor hop) and run one at a time, in the order they arrive; commands on a
/// plugin that runs them concurrently (a [`CommandRunner`](crate::CommandRunner), as SSH) run
/// from the caller's own task instead, up to the plugin's limit at once, while the connection
/// is open.
///
/// /// If the connection's actor crashed and was restarted, an old handle follows: its status,
/// direct route and calls are the successor's (a call no actor took goes to the successor; one
/// an actor took is answered by it and never sent twice). A handle to a connection that was
/// *closed* never silently reaches a newer connection of the same key: it gets
/// [`Error::Closed`].
#[derive(Clone)]
pub struct ConnectionHandle {
    pub(crate) key: Arc<ConnectionKey>,
    pub(crate) actor: ActorRef<ConnectionMessage>,
    /// Shared by every restart of one connection; a close ends it.
    pub(crate) lineage: u64,
    pub(crate) timeouts: Timeouts,
    /// The status, and the route commands take while they can skip the actor
    /// (`DirectRoute`), as the actor publishes them.
    pub(crate) published: watch::Receiver<Published>,
}

impl fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("key", &self.key)
            .field("actor", &self.actor.get_id())
            .field("lineage", &self.lineage)
            .finish()
    }
}

impl ConnectionHandle {
    pub(crate) fn new(
        key: Arc<ConnectionKey>,
        actor: ActorRef<ConnectionMessage>,
        lineage: u64,
        timeouts: Timeouts,
        published: watch::Receiver<Published>,
    ) -> Self {
        Self {
            key,
            actor,
            lineage,
            timeouts,
            published,
        }
    }

    pub(crate) fn lineage(&self) -> u64 {
        self.lineage
    }

    /// The key this connection is pooled under.
    pub fn key(&self) -> &ConnectionKey {
        &self.key
    }

    /// Whether both handles point at the same connection instance (what `Arc::ptr_eq` told
    /// upstream). A restarted or re-created connection is a different instance.
    pub fn same_connection(&self, other: &ConnectionHandle) -> bool {
        self.actor.get_id() == other.actor.get_id()
    }

    /// The connection's actor, for monitoring it or messaging it directly.
    pub fn actor(&self) -> &ActorRef<ConnectionMessage> {
        &self.actor
    }

    ///     /// The latest lifecycle snapshot of this connection (of its successor after a restart),
    /// read without messaging its actor, so it answers even while the connection is busy.
    pub fn status(&self) -> ConnectionStatus {
        self.published.borrow().status.clone()
    }
}

impl fmt::Debug for SupervisorMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::GetOrCreate { key, .. } => f.debug_tuple("GetOrCreate").field(key).finish(),
            // Params print redacted (see ResolvedConnectionParams' Debug).
            Self::OpenConnection { key, params, .. } => f
                .debug_tuple("OpenConnection")
                .field(key)
                .field(params)
                .finish(),
            Self::CloseConnection { key, .. } => {
                f.debug_tuple("CloseConnection").field(key).finish()
            }
            Self::ReplaceConnection { key, params, .. } => f
                .debug_tuple("ReplaceConnection")
                .field(key)
                .field(params)
                .finish(),
            Self::CloseAll { .. } => f.write_str("CloseAll"),
            Self::Retry { key, .. } => f.debug_tuple("Retry").field(key).finish(),
            Self::Status { key, .. } => f.debug_tuple("Status").field(key).finish(),
            Self::Subscribe { .. } => f.write_str("Subscribe"),
            Self::SetFactory { .. } => f.write_str("SetFactory"),
            Self::CountersFor { plugin_name, .. } => {
                f.debug_tuple("CountersFor").field(plugin_name).finish()
            }
            Self::CountersSnapshot { .. } => f.write_str("CountersSnapshot"),
            Self::Timeouts { .. } => f.write_str("Timeouts"),
            Self::PluginTimeouts { .. } => f.write_str("PluginTimeouts"),
            Self::Shutdown { .. } => f.write_str("Shutdown"),
            Self::Report(report) => f.debug_tuple("Report").field(report).finish(),
        }
    }
}

impl fmt::Debug for ConnectionMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Params print redacted (see ResolvedConnectionParams' Debug).
            Self::Open {
                params, deadline, ..
            } => f
                .debug_struct("Open")
                .field("params", params)
                .field("deadline", deadline)
                .finish(),
            Self::Routed(open) => f.debug_tuple("Routed").field(open).finish(),
            Self::IsAlive { .. } => f.write_str("IsAlive"),
            Self::RunCommand { deadline, .. } => f
                .debug_struct("RunCommand")
                .field("deadline", deadline)
                .finish_non_exhaustive(),
            // Commands can carry secrets (e.g. `enable` passwords typed inline): not printed.
            Self::ExecuteCommand { deadline, .. } => f
                .debug_struct("ExecuteCommand")
                .field("deadline", deadline)
                .finish_non_exhaustive(),
            Self::With { job, .. } => f.debug_tuple("With").field(job).finish(),
            Self::Retry { .. } => f.write_str("Retry"),
            Self::Close { reason, .. } => f.debug_struct("Close").field("reason", reason).finish(),
            Self::Internal(tick) => f.debug_tuple("Internal").field(tick).finish(),
        }
    }
}

impl fmt::Debug for RoutedOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutedOpen")
            .field("params", &self.params)
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

// With ractor's `cluster` feature ractor has no blanket `Message` impl, so each message type
// needs its own; without it, these would conflict with the blanket impl. Neither message is
// serializable (they carry reply ports, handles and closures): a remote actor cannot be sent
// one, which is ractor's default for a type that does not override `serializable`.
#[cfg(feature = "cluster")]
impl ractor::Message for SupervisorMessage {}
#[cfg(feature = "cluster")]
impl ractor::Message for ConnectionMessage {}
