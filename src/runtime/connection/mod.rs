//! The connection actor: owns one plugin instance, runs every call on it one at a time, and is
//! the one place where the connection's [`ConnectionState`] changes ([`ConnectionActorState::enter`]).
//!
//! Plugin calls are awaited here, inside the actor, each under its timeout and with panics
//! caught, so a slow or broken connection stalls only its own mailbox. The one exception is a
//! plugin's concurrent [`CommandRunner`]: while the session is up the actor publishes it as a
//! [`DirectRoute`] and handles run commands on it from their own tasks. What the actor does:
//!
//! - **Loss.** A plugin report ([`LossNotifier`]), a failed health check, or a dead connection
//!   found before a command moves `Open → Lost → Reconnecting`. The request in flight when the
//!   connection dropped gets the plugin's error; it is never re-run.
//! - **Reconnect.** Attempts follow the plugin's [`Backoff`](crate::Backoff) with jitter, each
//!   holding one of the supervisor's open slots. Requests that arrive meanwhile are parked with
//!   a deadline and run once the connection is back. Permanent failures (auth, host key,
//!   unknown host) give up after a few attempts and leave the connection `Failed`.
//! - **Crash.** A panic closes the instance, answers the caller with
//!   [`Error::PluginPanicked`], then fails the actor on purpose, so the supervisor sees an
//!   ordinary `ActorFailed` and restarts the key.

use std::collections::VecDeque;
use std::fmt;
use std::hash::RandomState;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{Instrument, warn};

use crate::connection::{
    Connection, ConnectionKey, FailureKind, OpenError, ResolvedConnectionParams,
};
use crate::deadline::Deadline;
use crate::error::Error;
use crate::events::{CloseReason, EventBus, EventKind};
use crate::guard::{Outcome, guarded};
use crate::policy::ConnectionPolicy;
use crate::runtime::internal::{Tick, TickKind};
use crate::runtime::messages::{ConnectionMessage, RoutedOpen, SupervisorMessage};
use crate::shared::{Activity, Count, OpenFor, OpenSlots, PluginCounters, Published};
use crate::status::{ConnectionState, ConnectionStatus};

mod commands;
mod lifecycle;
mod reconnect;
mod requests;
mod resources;
mod timers;
mod transition;

use requests::{CommandReply, CutOff, OpenReply, Reply, Request};
use resources::{Publisher, Timers};

/// The connection actor. Only the supervisor spawns it (its arguments cannot be built outside
/// this crate); it is public so embedders can name its messages and watch it.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnectionActor;

/// Whether a close is reported to the supervisor: not when the supervisor sent it itself and
/// has already taken the connection out of its pool (see `close_as` in lifecycle.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reporting {
    Report,
    FromPool,
}

/// What the supervisor hands a new connection actor.
pub struct ConnectionArgs {
    /// The creation's key, shared with the supervisor's bookkeeping and the handles.
    pub(crate) key: Arc<ConnectionKey>,
    pub(crate) connection: Box<dyn Connection>,
    pub(crate) supervisor: ActorRef<SupervisorMessage>,
    pub(crate) policy: ConnectionPolicy,
    pub(crate) open_slots: Arc<OpenSlots>,
    pub(crate) events: EventBus,
    /// Where the connection's status and direct route are published to its handles.
    pub(crate) published: watch::Sender<Published>,
    pub(crate) activity: Arc<Activity>,
    /// This plugin's counters, shared with the supervisor.
    pub(crate) counters: Arc<PluginCounters>,
    /// Set on a restart of a connection that was open: reopen with these at once.
    pub(crate) reopen_with: Option<ResolvedConnectionParams>,
}

/// A connection actor's private state. Public only because ractor's `Actor` trait names it.
pub struct ConnectionActorState {
    /// Shared with every reply port the actor holds (see `requests::Reply`), so a port costs
    /// a reference count, not a copy of the key.
    key: Arc<ConnectionKey>,
    /// This actor's id, which the supervisor's pool knows it by.
    id: ActorId,
    myself: ActorRef<ConnectionMessage>,
    connection: Box<dyn Connection>,
    /// The lifecycle: `status.state` is the one state enum, changed only by `enter`.
    status: ConnectionStatus,
    /// Publishes the status and, while commands may skip the actor, the direct route.
    published: Publisher,
    supervisor: ActorRef<SupervisorMessage>,
    policy: ConnectionPolicy,
    open_slots: Arc<OpenSlots>,
    events: EventBus,
    activity: Arc<Activity>,
    counters: Arc<PluginCounters>,
    /// The params of the last requested open: what a reconnect or retry opens with.
    params: Option<ResolvedConnectionParams>,
    /// Bumped on every open and loss, so a loss report from an older session is ignored.
    session: u64,
    /// Bumped whenever a reconnect is scheduled, so a stale timer does nothing.
    reconnect_generation: u64,
    /// Bumped for every backoff drawn, so each gets its own jitter.
    backoff_draws: u64,
    /// Requests waiting for a reconnect, with their deadlines.
    parked: VecDeque<(Deadline, Request)>,
    /// When the open session was lost, for the reconnect-duration metric.
    lost_at: Option<tokio::time::Instant>,
    timers: Timers,
    random: RandomState,
    /// Commands the actor itself started on the runner (replayed after a reconnect); aborted
    /// on close so none outlives the connection.
    commands: JoinSet<()>,
    /// Closed by `replace_connection`: requests sent after the close are left unanswered
    /// (never taken), so the handles send them again to the new instance.
    replaced: bool,
    span: tracing::Span,
}

impl Actor for ConnectionActor {
    type Msg = ConnectionMessage;
    type State = ConnectionActorState;
    type Arguments = ConnectionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ConnectionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let span = tracing::info_span!(
            "connection",
            host = %args.key.hostname,
            plugin = %args.key.plugin_name
        );
        let restart = args.reopen_with.is_some();
        let mut state = ConnectionActorState {
            key: args.key,
            id: myself.get_id(),
            myself: myself.clone(),
            connection: args.connection,
            status: ConnectionStatus::new(ConnectionState::Created),
            published: Publisher::new(args.published, myself.get_cell()),
            supervisor: args.supervisor,
            policy: args.policy,
            open_slots: args.open_slots,
            events: args.events,
            activity: args.activity,
            counters: args.counters,
            params: args.reopen_with,
            session: 0,
            reconnect_generation: 0,
            backoff_draws: 0,
            parked: VecDeque::new(),
            lost_at: None,
            timers: Timers::default(),
            random: RandomState::new(),
            commands: JoinSet::new(),
            replaced: false,
            span,
        };
        if let Some(lifetime) = state.policy.max_lifetime {
            state.timers.lifetime = Some(state.tick_after(lifetime, TickKind::LifetimeExpired));
        }
        state.schedule_idle_check(None);
        state.counters.metrics.moved(None, Some(state.status.state));
        // The lineage's channel may still show the crashed predecessor's last status.
        state.publish();
        if restart {
            // A restarted connection that was open reopens at once, as a reconnect.
            state.schedule_reconnect_in(Duration::ZERO);
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        // Boxed: ractor keeps the handler's future inside every actor's task, idle or not.
        // Inline it cost about 5 KB of every idle connection's memory (14,060 against 8,845
        // bytes in the 100k benchmark), and moving it for each message was slower than this
        // one allocation.
        Box::pin(state.handle(message).instrument(span)).await
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Stopped without a Close (by its owner, or by shutdown): still close exactly once.
        let span = state.span.clone();
        state.close(CloseReason::Requested).instrument(span).await;
        Ok(())
    }
}

impl Drop for ConnectionActorState {
    /// A connection actor that ends without closing its connection was killed: its supervisor
    /// stopped (by its owner, a kill or a panic) and ractor killed its children, so neither a
    /// `Close` nor `post_stop` ran. Dropping cannot wait, so the close runs on a task of its
    /// own, bounded by the close timeout, counted and announced as any close.
    fn drop(&mut self) {
        let metrics = &self.counters.metrics;
        metrics.moved(Some(self.status.state), None);
        metrics
            .parked_requests
            .decrement(self.status.waiting_requests as f64);
        if matches!(
            self.status.state,
            ConnectionState::Closing | ConnectionState::Closed
        ) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!(key = %self.key, "connection actor dropped outside a runtime; not closed");
            return;
        };
        let mut connection = std::mem::replace(&mut self.connection, Box::new(Detached));
        let key = ConnectionKey::clone(&self.key);
        let (counters, events) = (self.counters.clone(), self.events.clone());
        let bound = self.policy.timeouts.close;
        runtime.spawn(async move {
            match guarded(bound, connection.close()).await {
                Outcome::Done(()) => {}
                Outcome::TimedOut(after) => warn!(%key, ?after, "close timed out; dropped"),
                Outcome::Panicked(message) => warn!(%key, %message, "plugin panicked in close"),
            }
            counters.count(Count::Closed);
            events.emit(
                &key,
                EventKind::Closed {
                    reason: CloseReason::Shutdown,
                },
            );
        });
    }
}

/// What a connection actor holds once its plugin instance has been handed to the task that
/// closes it.
struct Detached;

#[async_trait::async_trait]
impl Connection for Detached {
    fn is_alive(&self) -> bool {
        false
    }

    async fn open(&mut self, _params: &ResolvedConnectionParams) -> Result<(), OpenError> {
        Err(OpenError::new(
            FailureKind::Unknown,
            "the connection was closed",
        ))
    }

    async fn close(&mut self) {}
}

impl ConnectionActorState {
    async fn handle(&mut self, message: ConnectionMessage) -> Result<(), ActorProcessingErr> {
        let activity = self.activity.clone();
        let _in_use =
            (!matches!(message, ConnectionMessage::Internal(_))).then(|| activity.use_started());
        self.dispatch_message(message).await
    }

    async fn dispatch_message(
        &mut self,
        message: ConnectionMessage,
    ) -> Result<(), ActorProcessingErr> {
        if self.status.state == ConnectionState::Closed {
            // Only messages queued behind the Close get here: answer, don't touch the plugin.
            self.refuse(message);
            return Ok(());
        }
        match message {
            ConnectionMessage::Open {
                params,
                deadline,
                reply,
            } => {
                let deadline = deadline.unwrap_or_else(|| self.open_deadline());
                let reply = OpenReply::Done(self.reply(reply, CutOff::Closed));
                self.open(params, deadline, reply).await
            }
            ConnectionMessage::Routed(routed) => {
                let RoutedOpen {
                    params,
                    handle,
                    reply,
                } = *routed;
                let deadline = self.open_deadline();
                let reply = OpenReply::Handle(Box::new(handle), self.reply(reply, CutOff::Closed));
                self.open(params, deadline, reply).await
            }
            ConnectionMessage::IsAlive { reply } => {
                let reply = self.reply(reply, CutOff::Closed);
                let result = self.alive_now();
                self.answer(reply, result).await
            }
            ConnectionMessage::ExecuteCommand {
                command,
                deadline,
                reply,
            } => {
                let deadline = self.request_deadline(deadline);
                let reply = CommandReply::Stdout(self.reply(reply, CutOff::Command));
                self.run_or_park(deadline, Request::Command { command, reply })
                    .await
            }
            ConnectionMessage::RunCommand {
                command,
                deadline,
                reply,
            } => {
                let deadline = self.request_deadline(deadline);
                let reply = CommandReply::Output(self.reply(reply, CutOff::Command));
                self.run_or_park(deadline, Request::Command { command, reply })
                    .await
            }
            ConnectionMessage::With {
                job,
                deadline,
                reply,
            } => {
                let deadline = self.request_deadline(deadline);
                let reply = self.reply(reply, CutOff::Closed);
                self.run_or_park(deadline, Request::With { job, reply })
                    .await
            }
            ConnectionMessage::Retry { reply } => {
                let reply = self.reply(reply, CutOff::Closed);
                if self.reconnecting() {
                    // The next reconnect attempt, now: a failure keeps the connection
                    // reconnecting (a transient outage must not switch reconnection off), a
                    // success replays the parked requests.
                    Timers::cancel(&mut self.timers.reconnect);
                    self.reconnect(OpenFor::Caller).await?;
                    let result = match self.status.state {
                        ConnectionState::Open => Ok(()),
                        _ => Err(self.unavailable()),
                    };
                    reply.send(result);
                    return Ok(());
                }
                let result = match self.params.clone() {
                    Some(params) if self.status.state != ConnectionState::Open => {
                        self.open_requested(params, None).await
                    }
                    Some(_) => Ok(()),
                    None => Err(self.unavailable()),
                };
                let reopened = result.is_ok();
                self.answer(reply, result).await?;
                // Requests parked before the connection failed run now.
                if reopened {
                    self.replay_parked().await?;
                }
                Ok(())
            }
            ConnectionMessage::Close { reason, reply } => {
                self.close_and_stop(reason, reply, Reporting::Report).await;
                Ok(())
            }
            ConnectionMessage::Internal(Tick(tick)) => self.on_tick(tick).await,
        }
    }

    /// Takes a caller's reply port: from here on the request is answered, whatever happens.
    fn reply<T>(&self, port: RpcReplyPort<Result<T, Error>>, cut_off: CutOff) -> Reply<T> {
        Reply::new(port, &self.key, cut_off)
    }

    /// A request's deadline, or the request timeout from now for one that came without.
    fn request_deadline(&self, deadline: Option<Deadline>) -> Deadline {
        deadline.unwrap_or_else(|| Deadline::after(self.policy.timeouts.request))
    }

    /// The deadline of an open that came without one: the open timeout from now.
    fn open_deadline(&self) -> Deadline {
        Deadline::after(self.policy.timeouts.open)
    }

    fn refuse(&self, message: ConnectionMessage) {
        if self.replaced && !matches!(message, ConnectionMessage::Close { .. }) {
            // Dropped with its reply port: the sender sees it was not taken, and asks again.
            return;
        }
        let closed = || Error::Closed {
            key: ConnectionKey::clone(&self.key),
        };
        match message {
            ConnectionMessage::Open { reply, .. }
            | ConnectionMessage::With { reply, .. }
            | ConnectionMessage::Retry { reply } => {
                let _ = reply.send(Err(closed()));
            }
            ConnectionMessage::IsAlive { reply } => {
                let _ = reply.send(Err(closed()));
            }
            ConnectionMessage::ExecuteCommand { reply, .. } => {
                let _ = reply.send(Err(closed()));
            }
            ConnectionMessage::RunCommand { reply, .. } => {
                let _ = reply.send(Err(closed()));
            }
            ConnectionMessage::Close { reply, .. } => {
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            ConnectionMessage::Routed(routed) => {
                let _ = routed.reply.send(Err(closed()));
            }
            ConnectionMessage::Internal(_) => {}
        }
    }
}

impl fmt::Debug for ConnectionArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionArgs")
            .field("key", &self.key)
            .field("connection", &self.connection.type_name())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ConnectionActorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionActorState")
            .field("key", &self.key)
            .field("id", &self.id)
            .field("connection", &self.connection.type_name())
            .field("status", &self.status)
            .field("parked", &self.parked.len())
            .finish_non_exhaustive()
    }
}
