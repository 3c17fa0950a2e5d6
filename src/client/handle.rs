//! What a [`ConnectionHandle`] does: each call one message to the connection's current actor
//! (or, for commands on a concurrent plugin, a run on the published direct route) and one
//! wait for the answer, bounded by a deadline that travels with the request.
//!
//! The rule for sending a request again is kameo's: a request no actor took (refused at the
//! mailbox, or dropped from it unread when the actor stopped) goes to the successor once one
//! runs; a request an actor took is always answered by that actor, however it ends (its reply
//! ports answer by themselves when dropped), and is never sent twice.

use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{ActorCell, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::connection::{CommandOutput, Connection, ConnectionKey, ResolvedConnectionParams};
use crate::deadline::Deadline;
use crate::error::{Error, Operation, Stage};
use crate::runtime::internal::WithJob;
use crate::runtime::messages::{ConnectionHandle, ConnectionMessage};
use crate::shared::{Direct, DirectRoute, Published};
use crate::status::{ConnectionState, ConnectionStatus};

/// How a request to an actor ended.
enum Delivery<T> {
    Answered(T),
    TimedOut,
    /// No actor took the request: the mailbox refused it, or it was dropped unread when the
    /// actor stopped. Safe to send again.
    NotTaken,
}

async fn deliver<T>(
    actor: &ActorRef<ConnectionMessage>,
    message: ConnectionMessage,
    answer: oneshot::Receiver<T>,
    deadline: Instant,
) -> Delivery<T> {
    if actor.send_message(message).is_err() {
        return Delivery::NotTaken;
    }
    tokio::pin!(answer);
    // The actor enforces the same deadline and answers with what the request was waiting for
    // (its turn, an open slot, a reconnect); a moment's grace lets that answer win the race
    // with this timer, so the caller learns the stage.
    let answered = match tokio::time::timeout_at(deadline, &mut answer).await {
        Ok(answered) => answered,
        Err(_) => match tokio::time::timeout(ANSWER_GRACE, &mut answer).await {
            Ok(answered) => answered,
            Err(_) => return Delivery::TimedOut,
        },
    };
    match answered {
        Ok(value) => Delivery::Answered(value),
        // Every request an actor takes is answered (see the module docs): a port dropped
        // unanswered was never taken.
        Err(_) => Delivery::NotTaken,
    }
}

/// How long past its deadline a call waits for the actor's own answer to that deadline.
const ANSWER_GRACE: Duration = Duration::from_millis(50);

impl ConnectionHandle {
    /// Waits until this connection's status satisfies `predicate`, for at most `timeout`; for
    /// tests and for callers that want to act on a state change without polling. A handle
    /// made before a restart watches the successor.
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
            // The connection was closed without ever reaching that status.
            Ok(Err(_)) => Err(self.closed()),
            Err(_) => Err(self.timed_out(Operation::WaitForStatus, timeout)),
        }
    }

    /// Asks the plugin whether the connection is alive. Bounded by the request timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only asks.
    pub async fn is_alive(&self) -> Result<bool, Error> {
        let bound = Deadline::after(self.timeouts.request);
        self.ask(
            |reply| ConnectionMessage::IsAlive { reply },
            bound,
            Operation::IsAlive,
        )
        .await?
    }

    /// Opens the connection with `params` unless it is already alive (then nothing is
    /// counted). The whole call, the wait for the connection's actor included, is bounded by
    /// the open timeout.
    ///
    /// # Cancel safety
    ///
    /// Once the actor has taken the request, the open runs even if this future is dropped; the
    /// connection may end up open. Dropped earlier, the request is dropped unrun.
    pub async fn open(&self, params: &ResolvedConnectionParams) -> Result<(), Error> {
        self.open_within(params, self.timeouts.open).await
    }

    /// [`open`](Self::open) with its own bound instead of the open timeout.
    ///
    /// # Cancel safety
    ///
    /// As [`open`](Self::open).
    pub async fn open_within(
        &self,
        params: &ResolvedConnectionParams,
        timeout: Duration,
    ) -> Result<(), Error> {
        let bound = Deadline::after(timeout);
        self.ask(
            |reply| ConnectionMessage::Open {
                params: params.clone(),
                deadline: Some(bound),
                reply,
            },
            bound,
            Operation::Open,
        )
        .await?
    }

    /// Runs `command` and returns its output. Waits for a reconnect in progress; the whole
    /// call is bounded by the request timeout.
    ///
    /// # Cancel safety
    ///
    /// When the plugin runs commands concurrently and the connection is open, the command runs
    /// on this future: dropping it drops the plugin's call (the SSH plugin then closes the
    /// command's channel). Otherwise the command waits in the connection's actor, which drops
    /// it unrun if this future is gone by its turn; once started, it runs to its end and its
    /// output is discarded.
    pub async fn execute_command(&self, command: &str) -> Result<String, Error> {
        self.execute_command_within(command, self.timeouts.request)
            .await
    }

    /// [`execute_command`](Self::execute_command) with its own bound, which replaces the
    /// request timeout for the whole call: waiting for the actor, for a reconnect and for the
    /// command.
    ///
    /// # Cancel safety
    ///
    /// As [`execute_command`](Self::execute_command).
    pub async fn execute_command_within(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<String, Error> {
        let bound = Deadline::after(timeout);
        if let Some(result) = self.run_direct(command, bound.at()).await {
            return result.and_then(|output| {
                output.into_result().map_err(|source| Error::Command {
                    key: ConnectionKey::clone(&self.key),
                    source,
                })
            });
        }
        self.ask(
            |reply| ConnectionMessage::ExecuteCommand {
                command: command.to_owned(),
                deadline: Some(bound),
                reply,
            },
            bound,
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
        let bound = Deadline::after(timeout);
        if let Some(result) = self.run_direct(command, bound.at()).await {
            return result;
        }
        self.ask(
            |reply| ConnectionMessage::RunCommand {
                command: command.to_owned(),
                deadline: Some(bound),
                reply,
            },
            bound,
            Operation::RunCommand,
        )
        .await?
    }

    /// Runs `f` inside the connection's actor with the concrete plugin type `C`, for what the
    /// [`Connection`] trait does not cover. Asking for the wrong type is
    /// [`Error::WrongConnectionType`]. The whole call is bounded by the request timeout.
    ///
    /// The closure runs at most once: it goes to a restarted actor only if no actor took it.
    ///
    /// # Cancel safety
    ///
    /// Once the actor has started the closure, it runs to its end even if this future is
    /// dropped, and its result is discarded; dropped earlier, the closure never runs.
    pub async fn with<C, R>(
        &self,
        f: impl for<'a> FnOnce(&'a mut C) -> BoxFuture<'a, R> + Send + 'static,
    ) -> Result<R, Error>
    where
        C: Connection,
        R: Send + 'static,
    {
        let bound = Deadline::after(self.timeouts.request);
        let (result_tx, result_rx) = oneshot::channel();
        let job = WithJob::new(f, result_tx);
        self.ask(
            |reply| ConnectionMessage::With {
                job: job.clone(),
                deadline: Some(bound),
                reply,
            },
            bound,
            Operation::With,
        )
        .await??;
        // Answered `Ok` only after the closure ran, and its result was sent first.
        result_rx.await.map_err(|_| self.closed())
    }

    /// Runs `command` on the plugin's concurrent runner without messaging the actor, when the
    /// actor has published one and its session is up. `None` when the command must go through
    /// the actor instead (not open, reconnecting, closed, a plugin without a runner, or the
    /// route withdrawn before the command got a slot).
    async fn run_direct(
        &self,
        command: &str,
        deadline: Instant,
    ) -> Option<Result<CommandOutput, Error>> {
        let route = self.published.borrow().route.clone();
        let route = route.filter(DirectRoute::is_usable)?;
        let bound = deadline.saturating_duration_since(Instant::now());
        match route.run(&self.key, command, bound).await {
            Direct::Ran(result) => Some(result),
            Direct::NotStarted => None,
        }
    }

    /// Sends a request to the connection's current actor and waits for the answer until
    /// `deadline`. A request no actor took goes to the successor once one runs (the actor is
    /// published on the connection's watch channel, which every restart of it shares); one an
    /// actor took is answered by it and never sent again.
    async fn ask<T: Send + 'static>(
        &self,
        build: impl Fn(RpcReplyPort<T>) -> ConnectionMessage,
        bound: Deadline,
        operation: Operation,
    ) -> Result<T, Error> {
        let mut published = self.published.clone();
        let mut refused_by = None;
        loop {
            let actor = self
                .next_actor(&mut published, refused_by.as_ref(), bound, operation)
                .await?;
            let (tx, rx) = oneshot::channel();
            match deliver(&actor, build(tx.into()), rx, bound.at()).await {
                Delivery::Answered(answer) => return Ok(answer),
                Delivery::TimedOut => return Err(self.timed_out(operation, bound.bound())),
                Delivery::NotTaken => refused_by = Some(actor.get_cell()),
            }
        }
    }

    /// The actor serving the connection now, other than `not` (one that refused a request):
    /// waits, until `deadline`, for a restart to bring a successor up. `Closed` once the
    /// connection is closed (nobody publishes on its channel any more), `Quarantined` while
    /// its key is quarantined.
    async fn next_actor(
        &self,
        published: &mut tokio::sync::watch::Receiver<Published>,
        not: Option<&ActorCell>,
        bound: Deadline,
        operation: Operation,
    ) -> Result<ActorRef<ConnectionMessage>, Error> {
        let usable = |p: &Published| {
            p.status.state == ConnectionState::Quarantined
                || p.actor
                    .as_ref()
                    .is_some_and(|actor| not.is_none_or(|dead| dead.get_id() != actor.get_id()))
        };
        let found = match tokio::time::timeout_at(bound.at(), published.wait_for(usable)).await {
            Ok(Ok(found)) => found.clone(),
            Ok(Err(_)) => return Err(self.closed()),
            Err(_) => return Err(self.timed_out(operation, bound.bound())),
        };
        match found.actor {
            Some(actor) if found.status.state != ConnectionState::Quarantined => {
                Ok(ActorRef::from(actor))
            }
            _ => Err(Error::Quarantined {
                key: ConnectionKey::clone(&self.key),
                remaining: found
                    .status
                    .next_attempt_at
                    .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
                    .unwrap_or_default(),
                reason: found
                    .status
                    .last_error
                    .map(|failure| failure.message)
                    .unwrap_or_default(),
            }),
        }
    }

    /// The error for a call whose bound ran out, naming what it was waiting for: a reconnect
    /// if the connection is reconnecting now, its answer otherwise. (The actor reports the
    /// same when it answers first; which of the two arrives first at the deadline is chance.)
    fn timed_out(&self, operation: Operation, after: Duration) -> Error {
        let reconnecting = matches!(
            self.published.borrow().status.state,
            ConnectionState::Lost | ConnectionState::Reconnecting
        );
        Error::Timeout {
            operation,
            key: Some(ConnectionKey::clone(&self.key)),
            stage: if reconnecting {
                Stage::Reconnect
            } else {
                Stage::Answer
            },
            after,
        }
    }

    fn closed(&self) -> Error {
        Error::Closed {
            key: ConnectionKey::clone(&self.key),
        }
    }
}
