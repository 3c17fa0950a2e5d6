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

use crate::config::{SupervisorConfig, Timeouts};
use crate::connection::{ConnectionFactory, ConnectionKey, ResolvedConnectionParams};
use crate::error::Error;
use crate::events::{EventDelivery, EventStream, forward_to_actor};
use crate::runtime::ConnectionSupervisor;
use crate::runtime::messages::{ConnectionHandle, SupervisorMessage};
use crate::status::{ConnectionCounters, ConnectionStatus};

/// Sends one request to the supervisor and waits at most `bound` for the answer.
pub(crate) async fn ask_supervisor<T: Send + 'static>(
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
