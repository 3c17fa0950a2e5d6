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
use std::time::Duration;

use ractor::{ActorRef, Message, RpcReplyPort};

use crate::config::SupervisorConfig;
use crate::connection::{ConnectionFactory, ConnectionKey, ResolvedConnectionParams};
use crate::deadline::Deadline;
use crate::error::{Error, Operation, Stage};
use crate::events::{EventDelivery, EventStream, forward_to_actor};
use crate::policy::Timeouts;
use crate::runtime::ConnectionSupervisor;
use crate::runtime::messages::{ConnectionHandle, SupervisorMessage};
use crate::status::{ConnectionCounters, ConnectionStatus};

/// How a request to the supervisor ended, when it did not time out.
enum Asked<T> {
    Answered(T),
    /// The reply port was dropped unanswered while the supervisor runs: the supervisor passed
    /// the request on to a connection actor (an open, a retry), which stopped before taking it.
    /// Never taken, so safe to send again.
    NotTaken,
}

/// Sends one request to the supervisor and waits at most `bound` for the answer.
/// [`Error::ShutDown`] only when the supervisor itself is gone.
async fn call_supervisor<T: Send + 'static>(
    supervisor: &ActorRef<SupervisorMessage>,
    build: impl FnOnce(RpcReplyPort<T>) -> SupervisorMessage,
    bound: Duration,
    operation: Operation,
) -> Result<Asked<T>, Error> {
    use ractor::rpc::CallResult;
    match supervisor.call(build, Some(bound)).await {
        Ok(CallResult::Success(answer)) => Ok(Asked::Answered(answer)),
        Ok(CallResult::Timeout) => Err(Error::Timeout {
            operation,
            key: None,
            stage: Stage::Answer,
            after: bound,
        }),
        Ok(CallResult::SenderError) if is_running(supervisor) => Ok(Asked::NotTaken),
        Ok(CallResult::SenderError) | Err(_) => Err(Error::ShutDown),
    }
}

/// Whether the supervisor still takes requests (a draining one is shutting down).
fn is_running(supervisor: &ActorRef<SupervisorMessage>) -> bool {
    use ractor::ActorStatus;
    matches!(
        supervisor.get_status(),
        ActorStatus::Starting | ActorStatus::Running | ActorStatus::Upgrading
    )
}

/// [`call_supervisor`] for requests the supervisor answers itself.
async fn ask_supervisor<T: Send + 'static>(
    supervisor: &ActorRef<SupervisorMessage>,
    build: impl FnOnce(RpcReplyPort<T>) -> SupervisorMessage,
    bound: Duration,
    operation: Operation,
) -> Result<T, Error> {
    match call_supervisor(supervisor, build, bound, operation).await? {
        Asked::Answered(answer) => Ok(answer),
        // The supervisor answers these itself: an unanswered port means it is stopping.
        Asked::NotTaken => Err(Error::ShutDown),
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
    /// The default policy's timeouts, which bound the calls that concern no single plugin.
    timeouts: Timeouts,
    /// The timeouts of plugins with a policy of their own: a call about one of their keys is
    /// bounded by them, so a plugin allowed a 120 s open is not cut off at the default's 30 s.
    plugin_timeouts: Arc<HashMap<String, Timeouts>>,
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
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped after the supervisor actor started, it leaves a supervisor running
    /// that nobody holds. Don't race it against a timer; `spawn` bounds itself.
    pub async fn with_connection_factory(factory: Arc<ConnectionFactory>) -> Result<Self, Error> {
        Self::spawn(SupervisorConfig::default().factory(factory)).await
    }

    /// Starts a supervisor with `config`. The supervisor is an unlinked, unnamed actor; to put
    /// it under a supervisor of your own, spawn [`ConnectionSupervisor`] with
    /// `Actor::spawn_linked` and use [`from_supervisor`](Self::from_supervisor).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped after the supervisor actor started, it leaves a supervisor running
    /// that nobody holds. Don't race it against a timer; it returns as soon as the actor is up.
    pub async fn spawn(config: SupervisorConfig) -> Result<Self, Error> {
        config.validate()?;
        let timeouts = config.default_policy.timeouts;
        let plugin_timeouts = Arc::new(config.plugin_timeouts());
        let (supervisor, _join) = ractor::Actor::spawn(None, ConnectionSupervisor, config)
            .await
            .map_err(|error| Error::Spawn {
                key: None,
                message: error.to_string(),
            })?;
        Ok(Self {
            supervisor,
            timeouts,
            plugin_timeouts,
        })
    }

    /// Wraps a supervisor that is already running (for example one you linked under your own
    /// actor), asking it for its timeouts.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only asks the supervisor for its timeouts.
    pub async fn from_supervisor(supervisor: ActorRef<SupervisorMessage>) -> Result<Self, Error> {
        let timeouts = ask_supervisor(
            &supervisor,
            |reply| SupervisorMessage::Timeouts { reply },
            Timeouts::default().request,
            Operation::Timeouts,
        )
        .await?;
        let plugin_timeouts = ask_supervisor(
            &supervisor,
            |reply| SupervisorMessage::PluginTimeouts { reply },
            timeouts.request,
            Operation::Timeouts,
        )
        .await?;
        Ok(Self {
            supervisor,
            timeouts,
            plugin_timeouts: Arc::new(plugin_timeouts),
        })
    }

    /// The timeouts that bound a call about a key of `plugin_name`.
    fn timeouts_for(&self, plugin_name: &str) -> Timeouts {
        self.plugin_timeouts
            .get(plugin_name)
            .copied()
            .unwrap_or(self.timeouts)
    }

    /// The longest close wait of any policy: what a close-all or shutdown may take.
    fn longest_close_wait(&self) -> Duration {
        self.plugin_timeouts
            .values()
            .chain(std::iter::once(&self.timeouts))
            .map(Timeouts::close_wait)
            .max()
            .unwrap_or_default()
    }

    /// The supervisor actor, for linking, monitoring or messaging it directly.
    pub fn supervisor(&self) -> ActorRef<SupervisorMessage> {
        self.supervisor.clone()
    }

    /// The default policy's timeouts, which bound the calls that concern no single plugin; a
    /// call about one key is bounded by that key's plugin policy.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Sets (or replaces) the factory. Connections already pooled are kept.
    ///
    /// # Cancel safety
    ///
    /// Once sent, the message is handled even if this future is dropped: the factory may be
    /// replaced without the caller knowing.
    pub async fn set_connection_factory(
        &self,
        factory: Arc<ConnectionFactory>,
    ) -> Result<(), Error> {
        self.ask(
            |reply| SupervisorMessage::SetFactory { factory, reply },
            Operation::SetConnectionFactory,
        )
        .await
    }

    /// The pooled connection for `key`, created through the factory if there is none yet;
    /// `Ok(None)` when the factory has no plugin for the key (nothing is pooled then, and the
    /// next call asks the factory again). Concurrent calls for one key create it once.
    ///
    /// # Cancel safety
    ///
    /// Once sent, the request is handled even if this future is dropped: the connection may be
    /// created and pooled, where the next call finds it (and close-all or shutdown closes it).
    pub async fn get_or_create(
        &self,
        key: ConnectionKey,
    ) -> Result<Option<ConnectionHandle>, Error> {
        self.ask(
            |reply| SupervisorMessage::GetOrCreate { key, reply },
            Operation::GetOrCreate,
        )
        .await?
    }

    /// The pooled connection for `key`, opened with `params` unless it is already alive.
    ///
    /// A failed open returns the plugin's error ([`Error::Open`]) and leaves the instance
    /// pooled, so the next call retries on it. While the connection is reconnecting, waits for
    /// the reconnect instead of starting another attempt.
    ///
    /// # Cancel safety
    ///
    /// Once sent, the request is handled even if this future is dropped: the connection may be
    /// created, pooled and opened, and stays so; the next call finds it open.
    pub async fn open_connection(
        &self,
        key: &ConnectionKey,
        params: &ResolvedConnectionParams,
    ) -> Result<Option<ConnectionHandle>, Error> {
        // The supervisor finds (or creates) the connection and hands the request to its actor,
        // which answers: three messages, and the supervisor never waits for the open. The
        // bound covers a creation, the wait for the actor and the open.
        let timeouts = self.timeouts_for(&key.plugin_name);
        let bound = Deadline::after(timeouts.request.saturating_add(timeouts.open));
        let mut closed_once = false;
        loop {
            let answer = call_supervisor(
                &self.supervisor,
                |reply| SupervisorMessage::OpenConnection {
                    key: key.clone(),
                    params: params.clone(),
                    reply,
                },
                bound.remaining(),
                Operation::OpenConnection,
            )
            .await?;
            match answer {
                // A connection actor stopped (crashed) before taking the open: the supervisor
                // has its successor, or is making it. An open is never taken twice.
                Asked::NotTaken if !bound.has_passed() => continue,
                Asked::NotTaken => {
                    return Err(Error::Timeout {
                        operation: Operation::OpenConnection,
                        key: Some(key.clone()),
                        stage: Stage::Answer,
                        after: bound.bound(),
                    });
                }
                // A close that raced with the request removed the instance it reached; the
                // caller asked for an open connection, so ask once for the new one.
                Asked::Answered(Err(Error::Closed { .. })) if !closed_once => closed_once = true,
                Asked::Answered(answer) => return answer,
            }
        }
    }

    /// Replaces `key`'s connection with a new, opened instance, for genja 0.5's session
    /// verification: closes the pooled one (counted), creates one through the factory and opens
    /// it with `params` (counted on success). Atomic for the key: opens of it that arrive
    /// meanwhile wait and get the new instance; handles to the old one follow to it. `Ok(None)`
    /// when the factory has no plugin for the key, and a failed open (its error returned),
    /// leave the key empty (the failed instance is closed).
    ///
    /// # Cancel safety
    ///
    /// Once sent, the replacement runs to its end even if this future is dropped.
    pub async fn replace_connection(
        &self,
        key: &ConnectionKey,
        params: &ResolvedConnectionParams,
    ) -> Result<Option<ConnectionHandle>, Error> {
        // The old close, the factory, the open, and the actor's and the supervisor's answers.
        let t = self.timeouts_for(&key.plugin_name);
        let bound = [t.open, t.open, t.request, t.request]
            .into_iter()
            .fold(t.close_wait(), Duration::saturating_add);
        let (key, params) = (key.clone(), params.clone());
        let build = |reply| SupervisorMessage::ReplaceConnection { key, params, reply };
        ask_supervisor(&self.supervisor, build, bound, Operation::ReplaceConnection).await?
    }

    /// Closes the connection for `key` and removes it from the pool; an unknown key is `Ok` and
    /// counts nothing. Returns once the plugin's `close` has returned or timed out. Closing a
    /// quarantined key lifts the quarantine.
    ///
    /// # Cancel safety
    ///
    /// Once sent, the close runs to its end even if this future is dropped; only the wait is
    /// abandoned.
    pub async fn close_connection(&self, key: &ConnectionKey) -> Result<(), Error> {
        use ractor::rpc::CallResult;
        let bound = self.timeouts_for(&key.plugin_name).close_wait();
        let key_for_error = key.clone();
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
                operation: Operation::CloseConnection,
                key: Some(key_for_error),
                stage: Stage::Answer,
                after: bound,
            }),
            Err(_) => Err(Error::ShutDown),
        }
    }

    /// Closes every pooled connection exactly once and empties the pool.
    ///
    /// # Cancel safety
    ///
    /// Once sent, every close runs to its end even if this future is dropped; only the wait is
    /// abandoned.
    pub async fn close_all_connections(&self) -> Result<(), Error> {
        ask_supervisor(
            &self.supervisor,
            |reply| SupervisorMessage::CloseAll { reply },
            self.longest_close_wait()
                .saturating_mul(2)
                .saturating_add(self.timeouts.request),
            Operation::CloseAllConnections,
        )
        .await?
    }

    /// Retries a `Failed` connection now with its last params, or restarts a quarantined key.
    ///
    /// # Cancel safety
    ///
    /// Once sent, the attempt runs even if this future is dropped; only its outcome is lost.
    pub async fn retry(&self, key: &ConnectionKey) -> Result<(), Error> {
        let timeouts = self.timeouts_for(&key.plugin_name);
        let bound = Deadline::after(timeouts.open.saturating_add(timeouts.request));
        loop {
            let asked = key.clone();
            match call_supervisor(
                &self.supervisor,
                |reply| SupervisorMessage::Retry { key: asked, reply },
                bound.remaining(),
                Operation::Retry,
            )
            .await?
            {
                Asked::Answered(answer) => return answer,
                // The connection's actor stopped before taking it: ask its successor.
                Asked::NotTaken if !bound.has_passed() => {}
                Asked::NotTaken => {
                    return Err(Error::Timeout {
                        operation: Operation::Retry,
                        key: Some(key.clone()),
                        stage: Stage::Answer,
                        after: bound.bound(),
                    });
                }
            }
        }
    }

    /// A snapshot of `key`'s lifecycle: state, failed attempts, last error with its kind, and
    /// when the next attempt is due. `None` if the key is not pooled. Answered at once, even
    /// while the connection is busy opening.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn connection_status(
        &self,
        key: &ConnectionKey,
    ) -> Result<Option<ConnectionStatus>, Error> {
        let key = key.clone();
        self.ask(
            |reply| SupervisorMessage::Status { key, reply },
            Operation::ConnectionStatus,
        )
        .await
    }

    /// A stream of every connection's lifecycle events from now on. It ends after shutdown.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a subscription whose answer is dropped is dropped with it.
    pub async fn subscribe(&self) -> Result<EventStream, Error> {
        let receiver = self
            .ask(
                |reply| SupervisorMessage::Subscribe { reply },
                Operation::Subscribe,
            )
            .await?;
        Ok(EventStream::new(receiver))
    }

    /// Delivers every lifecycle event to a ractor actor, converted by `convert` into the
    /// actor's own message type (`None` skips one), until the supervisor shuts down or the
    /// actor stops. Falling behind arrives as [`EventDelivery::Lagged`]; the end of the stream,
    /// after the supervisor's last event, as [`EventDelivery::Ended`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the forwarding task starts only once the subscription has arrived, so a future
    /// dropped before that starts nothing.
    pub async fn subscribe_actor<M: Message>(
        &self,
        actor: ActorRef<M>,
        convert: impl Fn(EventDelivery) -> Option<M> + Send + 'static,
    ) -> Result<(), Error> {
        let receiver = self
            .ask(
                |reply| SupervisorMessage::Subscribe { reply },
                Operation::Subscribe,
            )
            .await?;
        forward_to_actor(receiver, actor, convert);
        Ok(())
    }

    /// A copy of `plugin_name`'s counters, `None` if it never created a connection.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn connection_counters_for(
        &self,
        plugin_name: &str,
    ) -> Result<Option<ConnectionCounters>, Error> {
        let plugin_name = plugin_name.to_owned();
        self.ask(
            |reply| SupervisorMessage::CountersFor { plugin_name, reply },
            Operation::ConnectionCountersFor,
        )
        .await
    }

    /// A copy of every plugin's counters.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn connection_counters_snapshot(
        &self,
    ) -> Result<HashMap<String, ConnectionCounters>, Error> {
        self.ask(
            |reply| SupervisorMessage::CountersSnapshot { reply },
            Operation::ConnectionCountersSnapshot,
        )
        .await
    }

    /// Closes every connection exactly once (each within its close timeout), stops every
    /// connection actor and timer, then the supervisor. Afterwards every call fails with
    /// [`Error::ShutDown`]. Calling it again (or from a clone) waits for the same shutdown.
    ///
    /// # Cancel safety
    ///
    /// Once the supervisor has the message, the shutdown runs to its end even if this future is
    /// dropped.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let bound = self
            .longest_close_wait()
            .saturating_mul(4)
            .saturating_add(self.timeouts.request);
        match ask_supervisor(
            &self.supervisor,
            |reply| SupervisorMessage::Shutdown { reply },
            bound,
            Operation::Shutdown,
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
        operation: Operation,
    ) -> Result<T, Error> {
        ask_supervisor(&self.supervisor, build, self.timeouts.request, operation).await
    }
}

/// Owns a supervisor for programs that do not embed it in an actor tree: derefs to its
/// [`ConnectionManager`], and shuts the supervisor down when dropped, so that returning early
/// or unwinding still closes every connection (the way mini-redis's `DbDropGuard` ends its
/// background task).
///
/// Dropping cannot wait, so it only sends the shutdown: the supervisor closes every connection
/// on its own task, each within its close timeout, as long as the runtime keeps running. Call
/// [`shutdown`](Self::shutdown) instead to wait for it and see its result.
#[derive(Debug)]
pub struct SupervisorGuard {
    manager: ConnectionManager,
    /// Cleared by `shutdown` and `disarm`, which take the shutdown out of the drop.
    armed: bool,
}

impl SupervisorGuard {
    /// Starts a supervisor with `config` and takes ownership of it.
    ///
    /// # Cancel safety
    ///
    /// As [`ConnectionManager::spawn`].
    pub async fn spawn(config: SupervisorConfig) -> Result<Self, Error> {
        ConnectionManager::spawn(config).await.map(Self::new)
    }

    /// Takes ownership of the supervisor behind `manager`: dropping the guard shuts it down for
    /// every clone of the manager.
    pub fn new(manager: ConnectionManager) -> Self {
        Self {
            manager,
            armed: true,
        }
    }

    /// Shuts the supervisor down and waits for it, as [`ConnectionManager::shutdown`].
    ///
    /// # Cancel safety
    ///
    /// As [`ConnectionManager::shutdown`]: the guard is consumed either way, and once the
    /// supervisor has the message the shutdown runs to its end.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.armed = false;
        self.manager.shutdown().await
    }

    /// Gives the manager back without shutting the supervisor down.
    pub fn disarm(mut self) -> ConnectionManager {
        self.armed = false;
        self.manager.clone()
    }
}

impl std::ops::Deref for SupervisorGuard {
    type Target = ConnectionManager;

    fn deref(&self) -> &ConnectionManager {
        &self.manager
    }
}

impl Drop for SupervisorGuard {
    fn drop(&mut self) {
        if self.armed {
            // Nobody waits for the answer; a supervisor already gone has nothing to close.
            let (reply, _) = tokio::sync::oneshot::channel();
            let _ = self.manager.supervisor.cast(SupervisorMessage::Shutdown {
                reply: reply.into(),
            });
        }
    }
}
