//! The typed front door: [`ConnectionManager`] (a cheap handle to the supervisor actor) and
//! [`ConnectionHandle`] (a cheap handle to one connection's actor), with the counters they
//! report.
//!
//! Every call here is one message to an actor and one bounded wait for its answer: no call can
//! wait forever, and a call to an actor that has stopped becomes an error (or, for a connection
//! whose actor was restarted, is sent again to its successor).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ractor::{ActorRef, Message, RpcReplyPort};
use tokio::sync::{oneshot, watch};

use crate::config::{SupervisorConfig, Timeouts};
use crate::connection::{
    CommandOutput, Connection, ConnectionFactory, ConnectionKey, ResolvedConnectionParams,
};
use crate::connection_actor::{ConnectionMessage, WithJob};
use crate::error::Error;
use crate::events::{EventDelivery, EventStream, forward_to_actor};
use crate::shared::{Direct, DirectRoute, Published};
use crate::status::{ConnectionCounters, ConnectionStatus};
use crate::supervisor::{ConnectionSupervisor, SupervisorMessage};

/// How a request to an actor ended.
enum Delivery<T> {
    Answered(T),
    TimedOut,
    /// The actor is gone: it refused the message (returned here) or dropped it unanswered.
    Gone(Option<ConnectionMessage>),
}

async fn deliver<T>(
    actor: &ActorRef<ConnectionMessage>,
    message: ConnectionMessage,
    answer: oneshot::Receiver<T>,
    bound: Duration,
) -> Delivery<T> {
    if let Err(ractor::MessagingErr::SendErr(message)) = actor.send_message(message) {
        return Delivery::Gone(Some(message));
    }
    match tokio::time::timeout(bound, answer).await {
        Ok(Ok(value)) => Delivery::Answered(value),
        Ok(Err(_)) => Delivery::Gone(None),
        Err(_) => Delivery::TimedOut,
    }
}

/// Sends one request to the supervisor and waits at most `bound` for the answer.
async fn ask_supervisor<T: Send + 'static>(
    supervisor: &ActorRef<SupervisorMessage>,
    build: impl FnOnce(RpcReplyPort<T>) -> SupervisorMessage,
    bound: Duration,
    operation: &'static str,
) -> Result<T, Error> {
    use ractor::rpc::CallResult;
    match supervisor.call(build, Some(bound)).await {
        Ok(CallResult::Success(answer)) => Ok(answer),
        Ok(CallResult::Timeout) => Err(Error::Timeout {
            operation,
            target: "supervisor".to_owned(),
            after: bound,
        }),
        Ok(CallResult::SenderError) | Err(_) => Err(Error::ShutDown),
    }
}

/// A cheap, cloneable handle to a running supervisor: the genja `ConnectionManager` API, each
/// method one message to the supervisor actor.
///
/// Drop it freely: the supervisor keeps running until [`shutdown`](Self::shutdown) (or until
/// its owner stops it, when it is linked into your own actor tree).
#[derive(Clone)]
pub struct ConnectionManager {
    supervisor: ActorRef<SupervisorMessage>,
    timeouts: Timeouts,
}

impl fmt::Debug for ConnectionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("supervisor", &self.supervisor.get_id())
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

impl ConnectionManager {
    /// Starts a supervisor with `factory` and the default configuration.
    pub async fn with_connection_factory(factory: Arc<ConnectionFactory>) -> Result<Self, Error> {
        Self::spawn(SupervisorConfig::default().factory(factory)).await
    }

    /// Starts a supervisor with `config`. The supervisor is an unlinked, unnamed actor; to put
    /// it under a supervisor of your own, spawn [`ConnectionSupervisor`] with
    /// `Actor::spawn_linked` and use [`from_supervisor`](Self::from_supervisor).
    pub async fn spawn(config: SupervisorConfig) -> Result<Self, Error> {
        config.validate()?;
        let timeouts = config.default_policy.timeouts;
        let (supervisor, _join) = ractor::Actor::spawn(None, ConnectionSupervisor, config)
            .await
            .map_err(|error| Error::Spawn(error.to_string()))?;
        Ok(Self {
            supervisor,
            timeouts,
        })
    }

    /// Wraps a supervisor that is already running (for example one you linked under your own
    /// actor), asking it for its timeouts.
    pub async fn from_supervisor(supervisor: ActorRef<SupervisorMessage>) -> Result<Self, Error> {
        let timeouts = ask_supervisor(
            &supervisor,
            |reply| SupervisorMessage::Timeouts { reply },
            Timeouts::default().request,
            "timeouts",
        )
        .await?;
        Ok(Self {
            supervisor,
            timeouts,
        })
    }

    /// The supervisor actor, for linking, monitoring or messaging it directly.
    pub fn supervisor(&self) -> ActorRef<SupervisorMessage> {
        self.supervisor.clone()
    }

    /// The default policy's timeouts, which bound this manager's own calls.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Sets (or replaces) the factory. Connections already pooled are kept.
    pub async fn set_connection_factory(
        &self,
        factory: Arc<ConnectionFactory>,
    ) -> Result<(), Error> {
        self.ask(
            |reply| SupervisorMessage::SetFactory { factory, reply },
            "set_connection_factory",
        )
        .await
    }

    /// The pooled connection for `key`, created through the factory if there is none yet;
    /// `Ok(None)` when the factory has no plugin for the key (nothing is pooled then, and the
    /// next call asks the factory again). Concurrent calls for one key create it once.
    pub async fn get_or_create(
        &self,
        key: ConnectionKey,
    ) -> Result<Option<ConnectionHandle>, Error> {
        self.ask(
            |reply| SupervisorMessage::GetOrCreate { key, reply },
            "get_or_create",
        )
        .await?
    }

    /// The pooled connection for `key`, opened with `params` unless it is already alive.
    ///
    /// A failed open returns the plugin's error ([`Error::Open`]) and leaves the instance
    /// pooled, so the next call retries on it. While the connection is reconnecting, waits for
    /// the reconnect instead of starting another attempt.
    pub async fn open_connection(
        &self,
        key: &ConnectionKey,
        params: &ResolvedConnectionParams,
    ) -> Result<Option<ConnectionHandle>, Error> {
        // The supervisor finds (or creates) the connection and hands the request to its actor,
        // which answers: three messages, and the supervisor never waits for the open. The
        // bound covers a creation, the open and the answer.
        let bound = self.timeouts.request * 2 + self.timeouts.open;
        // One retry: a close that raced with the request removed the instance it reached; the
        // caller asked for an open connection, so ask for the new one.
        for attempt in 0..2 {
            let answer = ask_supervisor(
                &self.supervisor,
                |reply| SupervisorMessage::OpenConnection {
                    key: key.clone(),
                    params: params.clone(),
                    reply,
                },
                bound,
                "open_connection",
            )
            .await?;
            match answer {
                Err(Error::Closed { .. }) if attempt == 0 => continue,
                answer => return answer,
            }
        }
        Err(Error::Closed { key: key.clone() })
    }

    /// Closes the connection for `key` and removes it from the pool; an unknown key is `Ok` and
    /// counts nothing. Returns once the plugin's `close` has returned or timed out. Closing a
    /// quarantined key lifts the quarantine.
    pub async fn close_connection(&self, key: &ConnectionKey) -> Result<(), Error> {
        use ractor::rpc::CallResult;
        let bound = self.timeouts.close_wait();
        let target = key.to_string();
        let key = key.clone();
        match self
            .supervisor
            .call(
                |reply| SupervisorMessage::CloseConnection { key, reply },
                Some(bound),
            )
            .await
        {
            // A dropped reply means the connection's actor ended before answering: the
            // connection is gone, which is what was asked.
            Ok(CallResult::Success(())) | Ok(CallResult::SenderError) => Ok(()),
            Ok(CallResult::Timeout) => Err(Error::Timeout {
                operation: "close_connection",
                target,
                after: bound,
            }),
            Err(_) => Err(Error::ShutDown),
        }
    }

    /// Closes every pooled connection exactly once and empties the pool.
    pub async fn close_all_connections(&self) -> Result<(), Error> {
        ask_supervisor(
            &self.supervisor,
            |reply| SupervisorMessage::CloseAll { reply },
            self.timeouts.close_wait() * 2 + self.timeouts.request,
            "close_all_connections",
        )
        .await?
    }

    /// Retries a `Failed` connection now with its last params, or restarts a quarantined key.
    pub async fn retry(&self, key: &ConnectionKey) -> Result<(), Error> {
        let key = key.clone();
        ask_supervisor(
            &self.supervisor,
            |reply| SupervisorMessage::Retry { key, reply },
            self.timeouts.open + self.timeouts.request,
            "retry",
        )
        .await?
    }

    /// A snapshot of `key`'s lifecycle: state, failed attempts, last error with its kind, and
    /// when the next attempt is due. `None` if the key is not pooled. Answered at once, even
    /// while the connection is busy opening.
    pub async fn connection_status(
        &self,
        key: &ConnectionKey,
    ) -> Result<Option<ConnectionStatus>, Error> {
        let key = key.clone();
        self.ask(
            |reply| SupervisorMessage::Status { key, reply },
            "connection_status",
        )
        .await
    }

    /// A stream of every connection's lifecycle events from now on. It ends after shutdown.
    pub async fn subscribe(&self) -> Result<EventStream, Error> {
        let receiver = self
            .ask(|reply| SupervisorMessage::Subscribe { reply }, "subscribe")
            .await?;
        Ok(EventStream::new(receiver))
    }

    /// Delivers every lifecycle event to a ractor actor, converted by `convert` into the
    /// actor's own message type (`None` skips one), until the supervisor shuts down or the
    /// actor stops. Falling behind arrives as [`EventDelivery::Lagged`]; the end of the stream,
    /// after the supervisor's last event, as [`EventDelivery::Ended`].
    pub async fn subscribe_actor<M: Message>(
        &self,
        actor: ActorRef<M>,
        convert: impl Fn(EventDelivery) -> Option<M> + Send + 'static,
    ) -> Result<(), Error> {
        let receiver = self
            .ask(|reply| SupervisorMessage::Subscribe { reply }, "subscribe")
            .await?;
        forward_to_actor(receiver, actor, convert);
        Ok(())
    }

    /// A copy of `plugin_name`'s counters, `None` if it never created a connection.
    pub async fn connection_counters_for(
        &self,
        plugin_name: &str,
    ) -> Result<Option<ConnectionCounters>, Error> {
        let plugin_name = plugin_name.to_owned();
        self.ask(
            |reply| SupervisorMessage::CountersFor { plugin_name, reply },
            "connection_counters_for",
        )
        .await
    }

    /// A copy of every plugin's counters.
    pub async fn connection_counters_snapshot(
        &self,
    ) -> Result<HashMap<String, ConnectionCounters>, Error> {
        self.ask(
            |reply| SupervisorMessage::CountersSnapshot { reply },
            "connection_counters_snapshot",
        )
        .await
    }

    /// Closes every connection exactly once (each within its close timeout), stops every
    /// connection actor and timer, then the supervisor. Afterwards every call fails with
    /// [`Error::ShutDown`]. Calling it again (or from a clone) waits for the same shutdown.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let bound = self.timeouts.close_wait() * 4 + self.timeouts.request;
        match ask_supervisor(
            &self.supervisor,
            |reply| SupervisorMessage::Shutdown { reply },
            bound,
            "shutdown",
        )
        .await
        {
            Err(Error::ShutDown) => Ok(()),
            other => other,
        }
    }

    async fn ask<T: Send + 'static>(
        &self,
        build: impl FnOnce(RpcReplyPort<T>) -> SupervisorMessage,
        operation: &'static str,
    ) -> Result<T, Error> {
        ask_supervisor(&self.supervisor, build, self.timeouts.request, operation).await
    }
}

/// A cheap, cloneable handle to one pooled connection. Calls go straight to the connection's
/// actor (no supervisor hop) and run one at a time, in the order they arrive; commands on a
/// plugin that runs them concurrently (a [`CommandRunner`](crate::CommandRunner), as SSH) run
/// from the caller's own task instead, up to the plugin's limit at once, while the connection
/// is open.
///
/// If the connection's actor crashed and was restarted, a call made through an old handle is
/// sent to the new actor (one extra hop through the supervisor). A handle to a connection that
/// was *closed* never silently reaches a newer connection of the same key: it gets
/// [`Error::Closed`].
#[derive(Clone)]
pub struct ConnectionHandle {
    key: Arc<ConnectionKey>,
    actor: ActorRef<ConnectionMessage>,
    /// Shared by every restart of one connection; a close ends it.
    lineage: u64,
    supervisor: ActorRef<SupervisorMessage>,
    timeouts: Timeouts,
    /// The status, and the route commands take while they can skip the actor
    /// (`DirectRoute`), as the actor publishes them.
    published: watch::Receiver<Published>,
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
        key: ConnectionKey,
        actor: ActorRef<ConnectionMessage>,
        lineage: u64,
        supervisor: ActorRef<SupervisorMessage>,
        timeouts: Timeouts,
        published: watch::Receiver<Published>,
    ) -> Self {
        Self {
            key: Arc::new(key),
            actor,
            lineage,
            supervisor,
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

    /// The latest lifecycle snapshot of this instance, read without messaging its actor (so it
    /// answers even while the connection is busy).
    pub fn status(&self) -> ConnectionStatus {
        self.published.borrow().status.clone()
    }

    /// Waits until this instance's status satisfies `predicate`, for at most `timeout`; for
    /// tests and for callers that want to act on a state change without polling.
    pub async fn wait_for_status(
        &self,
        timeout: Duration,
        mut predicate: impl FnMut(&ConnectionStatus) -> bool,
    ) -> Result<ConnectionStatus, Error> {
        let mut published = self.published.clone();
        let wait = published.wait_for(|p| predicate(&p.status));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(found)) => Ok(found.status.clone()),
            // The actor ended without ever reaching that status.
            Ok(Err(_)) => Err(self.closed()),
            Err(_) => Err(self.timed_out("wait_for_status", timeout)),
        }
    }

    /// Asks the plugin whether the connection is alive.
    pub async fn is_alive(&self) -> Result<bool, Error> {
        self.ask(
            |reply| ConnectionMessage::IsAlive { reply },
            self.timeouts.request,
            "is_alive",
        )
        .await?
    }

    /// Opens the connection with `params` unless it is already alive (then nothing is
    /// counted). Bounded by the open timeout.
    pub async fn open(&self, params: &ResolvedConnectionParams) -> Result<(), Error> {
        self.open_within(params, self.timeouts.open).await
    }

    /// Opens with its own bound instead of the open timeout.
    pub async fn open_within(
        &self,
        params: &ResolvedConnectionParams,
        timeout: Duration,
    ) -> Result<(), Error> {
        self.ask(
            |reply| ConnectionMessage::Open {
                params: params.clone(),
                timeout: Some(timeout),
                reply,
            },
            timeout + self.timeouts.request,
            "open",
        )
        .await?
    }

    /// Runs `command` and returns its output. Waits for a reconnect in progress; the whole
    /// call is bounded by the request timeout.
    pub async fn execute_command(&self, command: &str) -> Result<String, Error> {
        self.execute_command_within(command, self.timeouts.request)
            .await
    }

    /// Runs `command` with its own bound instead of the request timeout.
    pub async fn execute_command_within(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<String, Error> {
        let timeout = match self.run_direct(command, timeout).await {
            Ok(result) => {
                return result.and_then(|output| {
                    output.into_result().map_err(|source| Error::Command {
                        key: ConnectionKey::clone(&self.key),
                        source,
                    })
                });
            }
            Err(remaining) => remaining,
        };
        self.ask(
            |reply| ConnectionMessage::ExecuteCommand {
                command: command.to_owned(),
                timeout: Some(timeout),
                reply,
            },
            timeout + self.timeouts.request,
            "execute_command",
        )
        .await?
    }

    /// Runs `command` and returns everything it produced: stdout, stderr and exit status,
    /// whatever the status (only failures to run it at all are errors).
    pub async fn run_command(&self, command: &str) -> Result<CommandOutput, Error> {
        self.run_command_within(command, self.timeouts.request)
            .await
    }

    /// [`run_command`](Self::run_command) with its own bound instead of the request timeout.
    pub async fn run_command_within(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, Error> {
        let timeout = match self.run_direct(command, timeout).await {
            Ok(result) => return result,
            Err(remaining) => remaining,
        };
        self.ask(
            |reply| ConnectionMessage::RunCommand {
                command: command.to_owned(),
                timeout: Some(timeout),
                reply,
            },
            timeout + self.timeouts.request,
            "run_command",
        )
        .await?
    }

    /// Runs `f` inside the connection's actor with the concrete plugin type `C`, for what the
    /// [`Connection`] trait does not cover. Asking for the wrong type is
    /// [`Error::WrongConnectionType`]. Bounded by the request timeout.
    pub async fn with<C, R>(
        &self,
        f: impl for<'a> FnOnce(&'a mut C) -> BoxFuture<'a, R> + Send + 'static,
    ) -> Result<R, Error>
    where
        C: Connection,
        R: Send + 'static,
    {
        let (result_tx, result_rx) = oneshot::channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        let message = ConnectionMessage::With {
            job: WithJob::new(f, result_tx),
            reply: reply_tx.into(),
        };
        let bound = self.timeouts.request * 2;
        // The closure can be sent only once; a refused message comes back and goes to the
        // restarted actor, but one dropped unanswered by a crashing actor cannot be re-sent.
        let delivery = match deliver(&self.actor, message, reply_rx, bound).await {
            Delivery::Gone(Some(message)) => {
                let fresh = self.resolve().await?;
                let ConnectionMessage::With { job, .. } = message else {
                    return Err(self.closed());
                };
                let (reply_tx, reply_rx) = oneshot::channel();
                let message = ConnectionMessage::With {
                    job,
                    reply: reply_tx.into(),
                };
                deliver(&fresh.actor, message, reply_rx, bound).await
            }
            other => other,
        };
        match delivery {
            Delivery::Answered(answer) => answer?,
            Delivery::TimedOut => return Err(self.timed_out("with", bound)),
            Delivery::Gone(_) => return Err(self.closed()),
        }
        result_rx.await.map_err(|_| self.closed())
    }

    /// Runs `command` on the plugin's concurrent runner without messaging the actor, when the
    /// actor has published one and its session is up. Otherwise (not open, reconnecting,
    /// closed, or a plugin without a runner) the command must go through the actor, within
    /// what is left of `timeout`, which is returned as the error.
    async fn run_direct(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<Result<CommandOutput, Error>, Duration> {
        let started = Instant::now();
        let route = self.published.borrow().route.clone();
        if let Some(route) = route.filter(DirectRoute::is_usable) {
            if let Direct::Ran(result) = route.run(&self.key, command, timeout).await {
                return Ok(result);
            }
        }
        Err(timeout.saturating_sub(started.elapsed()))
    }

    /// Sends a request to this connection's actor; if that actor is gone because it crashed,
    /// asks the supervisor for its successor and sends the request once more there.
    async fn ask<T: Send + 'static>(
        &self,
        build: impl Fn(RpcReplyPort<T>) -> ConnectionMessage,
        bound: Duration,
        operation: &'static str,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        match deliver(&self.actor, build(tx.into()), rx, bound).await {
            Delivery::Answered(answer) => return Ok(answer),
            Delivery::TimedOut => return Err(self.timed_out(operation, bound)),
            Delivery::Gone(_) => {}
        }
        let fresh = self.resolve().await?;
        let (tx, rx) = oneshot::channel();
        match deliver(&fresh.actor, build(tx.into()), rx, bound).await {
            Delivery::Answered(answer) => Ok(answer),
            Delivery::TimedOut => Err(self.timed_out(operation, bound)),
            Delivery::Gone(_) => Err(self.closed()),
        }
    }

    /// The current handle of this connection after a restart; `Closed` if it was closed.
    async fn resolve(&self) -> Result<ConnectionHandle, Error> {
        let key = ConnectionKey::clone(&self.key);
        let lineage = self.lineage;
        let resolved = ask_supervisor(
            &self.supervisor,
            |reply| SupervisorMessage::Resolve {
                key,
                lineage,
                reply,
            },
            self.timeouts.open + self.timeouts.request,
            "resolve",
        )
        .await;
        match resolved {
            Ok(Ok(Some(handle))) => Ok(handle),
            Ok(Ok(None)) | Err(Error::ShutDown) => Err(self.closed()),
            Ok(Err(error)) | Err(error) => Err(error),
        }
    }

    fn timed_out(&self, operation: &'static str, after: Duration) -> Error {
        Error::Timeout {
            operation,
            target: self.key.to_string(),
            after,
        }
    }

    fn closed(&self) -> Error {
        Error::Closed {
            key: ConnectionKey::clone(&self.key),
        }
    }
}
