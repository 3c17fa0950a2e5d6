//! What a [`ConnectionHandle`] does: each call one message to the connection's actor (or,
//! for commands on a concurrent plugin, a run on the published direct route), one bounded wait
//! for the answer, and one retry through the supervisor when the actor was restarted.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ractor::{ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use crate::client::manager::ask_supervisor;
use crate::connection::{CommandOutput, Connection, ConnectionKey, ResolvedConnectionParams};
use crate::error::{Error, Operation, Stage};
use crate::runtime::internal::WithJob;
use crate::runtime::messages::{ConnectionHandle, ConnectionMessage, SupervisorMessage};
use crate::shared::{Direct, DirectRoute};
use crate::status::ConnectionStatus;

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

impl ConnectionHandle {
    /// Waits until this instance's status satisfies `predicate`, for at most `timeout`; for
    /// tests and for callers that want to act on a state change without polling.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only watches.
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
            Err(_) => Err(self.timed_out(Operation::WaitForStatus, timeout)),
        }
    }

    /// Asks the plugin whether the connection is alive.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only asks.
    pub async fn is_alive(&self) -> Result<bool, Error> {
        self.ask(
            |reply| ConnectionMessage::IsAlive { reply },
            self.timeouts.request,
            Operation::IsAlive,
        )
        .await?
    }

    /// Opens the connection with `params` unless it is already alive (then nothing is
    /// counted). Bounded by the open timeout.
    ///
    /// # Cancel safety
    ///
    /// Once sent, the open runs in the connection's actor even if this future is dropped; the
    /// connection may end up open.
    pub async fn open(&self, params: &ResolvedConnectionParams) -> Result<(), Error> {
        self.open_within(params, self.timeouts.open).await
    }

    /// Opens with its own bound instead of the open timeout.
    ///
    /// # Cancel safety
    ///
    /// As [`open`](Self::open).
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
            timeout.saturating_add(self.timeouts.request),
            Operation::Open,
        )
        .await?
    }

    /// Runs `command` and returns its output. Waits for a reconnect in progress; the whole
    /// call is bounded by the request timeout.
    ///
    /// # Cancel safety
    ///
    /// When the plugin runs commands concurrently and the connection is open, the command runs on
    /// this future: dropping it drops the plugin's call (the SSH plugin's channel with it).
    /// Otherwise the command was sent to the connection's actor and runs there even if this future
    /// is dropped; its output is discarded.
    pub async fn execute_command(&self, command: &str) -> Result<String, Error> {
        self.execute_command_within(command, self.timeouts.request)
            .await
    }

    /// Runs `command` with its own bound instead of the request timeout.
    ///
    /// # Cancel safety
    ///
    /// As [`execute_command`](Self::execute_command).
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
            timeout.saturating_add(self.timeouts.request),
            Operation::ExecuteCommand,
        )
        .await?
    }

    /// Runs `command` and returns everything it produced: stdout, stderr and exit status,
    /// whatever the status (only failures to run it at all are errors).
    ///
    /// # Cancel safety
    ///
    /// As [`execute_command`](Self::execute_command).
    pub async fn run_command(&self, command: &str) -> Result<CommandOutput, Error> {
        self.run_command_within(command, self.timeouts.request)
            .await
    }

    /// [`run_command`](Self::run_command) with its own bound instead of the request timeout.
    ///
    /// # Cancel safety
    ///
    /// As [`execute_command`](Self::execute_command).
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
            timeout.saturating_add(self.timeouts.request),
            Operation::RunCommand,
        )
        .await?
    }

    /// Runs `f` inside the connection's actor with the concrete plugin type `C`, for what the
    /// [`Connection`] trait does not cover. Asking for the wrong type is
    /// [`Error::WrongConnectionType`]. Bounded by the request timeout.
    ///
    /// # Cancel safety
    ///
    /// Once sent, the closure runs in the connection's actor even if this future is dropped; its
    /// result is discarded.
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
        let bound = self.timeouts.request.saturating_mul(2);
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
            Delivery::TimedOut => return Err(self.timed_out(Operation::With, bound)),
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
        if let Some(route) = route.filter(DirectRoute::is_usable)
            && let Direct::Ran(result) = route.run(&self.key, command, timeout).await
        {
            return Ok(result);
        }
        Err(timeout.saturating_sub(started.elapsed()))
    }

    /// Sends a request to this connection's actor; if that actor is gone because it crashed,
    /// asks the supervisor for its successor and sends the request once more there.
    async fn ask<T: Send + 'static>(
        &self,
        build: impl Fn(RpcReplyPort<T>) -> ConnectionMessage,
        bound: Duration,
        operation: Operation,
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
            self.timeouts.open.saturating_add(self.timeouts.request),
            Operation::Resolve,
        )
        .await;
        match resolved {
            Ok(Ok(Some(handle))) => Ok(handle),
            Ok(Ok(None)) | Err(Error::ShutDown) => Err(self.closed()),
            Ok(Err(error)) | Err(error) => Err(error),
        }
    }

    fn timed_out(&self, operation: Operation, after: Duration) -> Error {
        Error::Timeout {
            operation,
            key: Some(ConnectionKey::clone(&self.key)),
            stage: Stage::Answer,
            after,
        }
    }

    fn closed(&self) -> Error {
        Error::Closed {
            key: ConnectionKey::clone(&self.key),
        }
    }
}
