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
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use crate::config::ConnectionPolicy;
use crate::connection::{
    CommandError, CommandOutput, Connection, ConnectionKey, FailureKind, LossNotifier,
    ResolvedConnectionParams,
};
use crate::error::Error;
use crate::events::{CloseReason, EventBus, EventKind};
use crate::guard::{Outcome, guarded, sync_guarded};
use crate::runtime::internal::{Report, ReportKind, Tick, TickKind, WithJob};
use crate::runtime::messages::{
    ConnectionHandle, ConnectionMessage, GetOrCreateReply, RoutedOpen, SupervisorMessage,
};
use crate::shared::{Activity, Direct, DirectRoute, Published, RouteNotice};
use crate::status::{ConnectionState, ConnectionStatus, FailureInfo};

/// The connection actor. Only the supervisor spawns it (its arguments cannot be built outside
/// this crate); it is public so embedders can name its messages and watch it.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnectionActor;

/// What the supervisor hands a new connection actor.
pub struct ConnectionArgs {
    pub(crate) key: ConnectionKey,
    pub(crate) connection: Box<dyn Connection>,
    pub(crate) supervisor: ActorRef<SupervisorMessage>,
    pub(crate) policy: ConnectionPolicy,
    pub(crate) open_slots: Arc<Semaphore>,
    pub(crate) events: EventBus,
    /// Where the connection's status and direct route are published to its handles.
    pub(crate) published: watch::Sender<Published>,
    pub(crate) activity: Arc<Activity>,
    /// Set on a restart of a connection that was open: reopen with these at once.
    pub(crate) reopen_with: Option<ResolvedConnectionParams>,
}

/// A request that runs on the plugin, and can therefore be parked while reconnecting.
enum Request {
    Open {
        reply: OpenReply,
    },
    Command {
        command: String,
        timeout: Option<Duration>,
        reply: CommandReply,
    },
    With {
        job: WithJob,
        reply: RpcReplyPort<Result<(), Error>>,
    },
}

/// Where an open's answer goes: the caller of `Open`, or (routed by the supervisor) the caller
/// of `OpenConnection`, who also gets the handle.
enum OpenReply {
    Done(RpcReplyPort<Result<(), Error>>),
    Handle(Box<ConnectionHandle>, RpcReplyPort<GetOrCreateReply>),
}

impl OpenReply {
    fn is_closed(&self) -> bool {
        match self {
            Self::Done(reply) => reply.is_closed(),
            Self::Handle(_, reply) => reply.is_closed(),
        }
    }

    fn send(self, result: Result<(), Error>) {
        match self {
            Self::Done(reply) => {
                let _ = reply.send(result);
            }
            Self::Handle(handle, reply) => {
                let _ = reply.send(result.map(|()| Some(*handle)));
            }
        }
    }
}

/// Where a command's answer goes: just its output (failing on a non-zero exit status), or the
/// whole [`CommandOutput`].
enum CommandReply {
    Stdout(RpcReplyPort<Result<String, Error>>),
    Output(RpcReplyPort<Result<CommandOutput, Error>>),
}

impl CommandReply {
    /// Sends the command to `actor` again, as the request it came in as.
    fn resend(self, actor: &ActorRef<ConnectionMessage>, command: String, timeout: Duration) {
        let timeout = Some(timeout);
        let message = match self {
            Self::Stdout(reply) => ConnectionMessage::ExecuteCommand {
                command,
                timeout,
                reply,
            },
            Self::Output(reply) => ConnectionMessage::RunCommand {
                command,
                timeout,
                reply,
            },
        };
        // An actor that is gone drops the reply port, which its caller sees as `Closed`.
        let _ = actor.send_message(message);
    }

    fn is_closed(&self) -> bool {
        match self {
            Self::Stdout(reply) => reply.is_closed(),
            Self::Output(reply) => reply.is_closed(),
        }
    }

    fn send(self, key: &ConnectionKey, result: Result<CommandOutput, Error>) {
        match self {
            Self::Stdout(reply) => {
                let result = result.and_then(|output| {
                    output.into_result().map_err(|source| Error::Command {
                        key: key.clone(),
                        source,
                    })
                });
                let _ = reply.send(result);
            }
            Self::Output(reply) => {
                let _ = reply.send(result);
            }
        }
    }
}

impl Request {
    fn caller_gone(&self) -> bool {
        match self {
            Self::Open { reply } => reply.is_closed(),
            Self::With { reply, .. } => reply.is_closed(),
            Self::Command { reply, .. } => reply.is_closed(),
        }
    }

    fn operation(&self) -> &'static str {
        match self {
            Self::Open { .. } => "open",
            Self::Command { .. } => "execute_command",
            Self::With { .. } => "with",
        }
    }

    fn fail(self, key: &ConnectionKey, error: Error) {
        match self {
            Self::Open { reply } => reply.send(Err(error)),
            Self::With { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Self::Command { reply, .. } => reply.send(key, Err(error)),
        }
    }
}

/// The actor's end of the [`Published`] channel. Withdraws the route when dropped, so a route
/// never outlives its actor, however the actor ends.
struct Publisher {
    route: Option<DirectRoute>,
    tx: watch::Sender<Published>,
}

impl Publisher {
    fn status(&self, status: &ConnectionStatus) {
        self.tx
            .send_modify(|published| published.status = status.clone());
    }

    fn route(&mut self, route: Option<DirectRoute>) {
        if let Some(old) = self.route.take() {
            // Commands still waiting for a slot of the old session go to the actor instead.
            old.withdraw();
        }
        self.route = route.clone();
        self.tx.send_modify(|published| published.route = route);
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.route(None);
    }
}

/// The actor's timers; aborted when the state is dropped, however the actor ends, so no timer
/// outlives its connection.
#[derive(Default)]
struct Timers {
    reconnect: Option<JoinHandle<()>>,
    health: Option<JoinHandle<()>>,
    idle: Option<JoinHandle<()>>,
    lifetime: Option<JoinHandle<()>>,
    parked: Option<(Instant, JoinHandle<()>)>,
}

impl Timers {
    fn cancel(slot: &mut Option<JoinHandle<()>>) {
        if let Some(timer) = slot.take() {
            timer.abort();
        }
    }

    fn cancel_all(&mut self) {
        for slot in [
            &mut self.reconnect,
            &mut self.health,
            &mut self.idle,
            &mut self.lifetime,
        ] {
            Self::cancel(slot);
        }
        if let Some((_, timer)) = self.parked.take() {
            timer.abort();
        }
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        self.cancel_all();
    }
}

/// A connection actor's private state. Public only because ractor's `Actor` trait names it.
pub struct ConnectionActorState {
    key: ConnectionKey,
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
    open_slots: Arc<Semaphore>,
    events: EventBus,
    activity: Arc<Activity>,
    /// The params of the last requested open: what a reconnect or retry opens with.
    params: Option<ResolvedConnectionParams>,
    /// Bumped on every open and loss, so a loss report from an older session is ignored.
    session: u64,
    /// Bumped whenever a reconnect is scheduled, so a stale timer does nothing.
    reconnect_generation: u64,
    /// Requests waiting for a reconnect, with their deadlines.
    parked: VecDeque<(Instant, Request)>,
    timers: Timers,
    random: RandomState,
    /// Commands the actor itself started on the runner (replayed after a reconnect); aborted
    /// on close so none outlives the connection.
    commands: JoinSet<()>,
    span: tracing::Span,
}

/// The error to crash with, if the plugin panicked.
fn panic_in<T>(result: &Result<T, Error>) -> Option<Error> {
    match result {
        Err(error @ Error::PluginPanicked { .. }) => Some(error.clone()),
        _ => None,
    }
}

/// How an open attempt ended.
enum OpenAttempt {
    Opened,
    Failed(Error, FailureInfo),
    Panicked(Error),
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
            published: Publisher {
                route: None,
                tx: args.published,
            },
            supervisor: args.supervisor,
            policy: args.policy,
            open_slots: args.open_slots,
            events: args.events,
            activity: args.activity,
            params: args.reopen_with,
            session: 0,
            reconnect_generation: 0,
            parked: VecDeque::new(),
            timers: Timers::default(),
            random: RandomState::new(),
            commands: JoinSet::new(),
            span,
        };
        if let Some(lifetime) = state.policy.max_lifetime {
            state.timers.lifetime = Some(state.tick_after(lifetime, TickKind::LifetimeExpired));
        }
        state.schedule_idle_check(None);
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
                timeout,
                reply,
            } => self.open(params, timeout, OpenReply::Done(reply)).await,
            ConnectionMessage::Routed(routed) => {
                let RoutedOpen {
                    params,
                    handle,
                    reply,
                } = *routed;
                let reply = OpenReply::Handle(Box::new(handle), reply);
                self.open(params, None, reply).await
            }
            ConnectionMessage::IsAlive { reply } => {
                let result = self.alive_now();
                self.answer(reply, result).await
            }
            ConnectionMessage::ExecuteCommand {
                command,
                timeout,
                reply,
            } => {
                let deadline = Instant::now() + timeout.unwrap_or(self.policy.timeouts.request);
                let request = Request::Command {
                    command,
                    timeout,
                    reply: CommandReply::Stdout(reply),
                };
                self.run_or_park(deadline, request).await
            }
            ConnectionMessage::RunCommand {
                command,
                timeout,
                reply,
            } => {
                let deadline = Instant::now() + timeout.unwrap_or(self.policy.timeouts.request);
                let request = Request::Command {
                    command,
                    timeout,
                    reply: CommandReply::Output(reply),
                };
                self.run_or_park(deadline, request).await
            }
            ConnectionMessage::With { job, reply } => {
                let deadline = Instant::now() + self.policy.timeouts.request;
                self.run_or_park(deadline, Request::With { job, reply })
                    .await
            }
            ConnectionMessage::Retry { reply } => {
                let result = match self.params.clone() {
                    Some(params) if self.status.state != ConnectionState::Open => {
                        Timers::cancel(&mut self.timers.reconnect);
                        self.open_requested(params, None).await
                    }
                    Some(_) => Ok(()),
                    None => Err(self.unavailable()),
                };
                let reopened = result.is_ok();
                self.answer(reply, result).await?;
                // Requests parked during the reconnect this retry cut short run now.
                if reopened {
                    self.replay_parked().await?;
                }
                Ok(())
            }
            ConnectionMessage::Close { reason, reply } => {
                self.close(reason).await;
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
                self.myself.stop(None);
                Ok(())
            }
            ConnectionMessage::Internal(Tick(tick)) => self.on_tick(tick).await,
        }
    }

    async fn on_tick(&mut self, tick: TickKind) -> Result<(), ActorProcessingErr> {
        match tick {
            TickKind::Lost { generation, reason } => {
                if generation == self.session && self.status.state == ConnectionState::Open {
                    self.lose(reason);
                }
            }
            TickKind::ReconnectDue { generation } => {
                if generation == self.reconnect_generation && self.reconnecting() {
                    return self.reconnect().await;
                }
            }
            TickKind::HealthCheckDue => {
                self.timers.health = None;
                if self.status.state == ConnectionState::Open {
                    let bound = self.policy.timeouts.request;
                    match guarded(bound, self.connection.health_check()).await {
                        Outcome::Done(Ok(())) => self.schedule_health_check(),
                        Outcome::Done(Err(reason)) => {
                            self.lose(format!("health check failed: {reason}"))
                        }
                        Outcome::TimedOut(after) => {
                            self.lose(format!("health check timed out after {after:?}"))
                        }
                        Outcome::Panicked(message) => {
                            let error = self.panicked("health_check", message);
                            return self.crash(error).await;
                        }
                    }
                }
            }
            TickKind::IdleCheck => {
                self.timers.idle = None;
                if let Some(limit) = self.policy.idle_timeout {
                    let idle = self.activity.idle_for();
                    if self.activity.is_busy() || !self.parked.is_empty() {
                        // A command still running is use, however long ago it started.
                        self.schedule_idle_check(Some(limit));
                    } else if idle >= limit {
                        self.report(ReportKind::Expired {
                            key: self.key.clone(),
                            actor: self.id,
                            reason: CloseReason::Idle,
                        });
                    } else {
                        self.schedule_idle_check(Some(limit - idle));
                    }
                }
            }
            TickKind::LifetimeExpired => {
                self.timers.lifetime = None;
                self.report(ReportKind::Expired {
                    key: self.key.clone(),
                    actor: self.id,
                    reason: CloseReason::Lifetime,
                });
            }
            TickKind::CommandPanicked { error } => {
                warn!(%error, "plugin panicked in a concurrent command");
                return self.crash(error).await;
            }
            TickKind::CheckAlive => self.notice_loss_after_request(),
            TickKind::ExpireParked => {
                self.timers.parked = None;
                self.expire_parked();
            }
        }
        Ok(())
    }

    /// Runs a request now, or parks it while the connection is reconnecting.
    async fn run_or_park(
        &mut self,
        deadline: Instant,
        request: Request,
    ) -> Result<(), ActorProcessingErr> {
        if self.status.state == ConnectionState::Open && !matches!(self.alive_now(), Ok(true)) {
            // Never hand a request to a connection known to be dead.
            self.lose("found dead before a request".to_owned());
        }
        if self.reconnecting() {
            self.park(deadline, request);
            return Ok(());
        }
        if self.status.state == ConnectionState::Failed {
            request.fail(&self.key, self.unavailable());
            return Ok(());
        }
        match request {
            Request::Open { reply } => {
                reply.send(Ok(()));
                Ok(())
            }
            Request::Command {
                command,
                timeout,
                reply,
            } => {
                let bound = timeout.unwrap_or(self.policy.timeouts.request);
                if let Some(route) = self.published.route.clone() {
                    self.spawn_command(route, command, bound, reply);
                    return Ok(());
                }
                let result = match guarded(bound, self.connection.execute_command(&command)).await {
                    Outcome::Done(Ok(stdout)) => Ok(CommandOutput {
                        stdout,
                        ..CommandOutput::default()
                    }),
                    // A failed exit is still an answer for whoever wants the whole output.
                    Outcome::Done(Err(CommandError::ExitStatus { status, stderr })) => {
                        Ok(CommandOutput {
                            stdout: String::new(),
                            stderr,
                            exit_status: Some(status),
                        })
                    }
                    Outcome::Done(Err(source)) => Err(Error::Command {
                        key: self.key.clone(),
                        source,
                    }),
                    Outcome::TimedOut(after) => Err(self.timed_out("execute_command", after)),
                    Outcome::Panicked(message) => Err(self.panicked("execute_command", message)),
                };
                self.notice_loss_after_request();
                let crash = panic_in(&result);
                reply.send(&self.key, result);
                match crash {
                    Some(error) => self.crash(error).await,
                    None => Ok(()),
                }
            }
            Request::With { job, reply } => {
                let result = self.run_with(job).await;
                self.notice_loss_after_request();
                self.answer(reply, result).await
            }
        }
    }

    /// Runs a command that came to the actor (sent to it directly, or parked during a
    /// reconnect) on the plugin's concurrent runner, on a task of its own, so the actor is free
    /// for the next request. The tasks are aborted when the connection closes.
    fn spawn_command(
        &mut self,
        route: DirectRoute,
        command: String,
        bound: Duration,
        reply: CommandReply,
    ) {
        while self.commands.try_join_next().is_some() {}
        let key = self.key.clone();
        let actor = self.myself.clone();
        self.commands.spawn(async move {
            match route.run(&key, &command, bound).await {
                Direct::Ran(result) => reply.send(&key, result),
                // Lost before it started: back to the actor, which parks it for the reconnect.
                Direct::NotStarted => reply.resend(&actor, command, bound),
            }
        });
    }

    /// A request that failed because the session dropped under it has its error; the next
    /// one must not find the connection `Open`.
    fn notice_loss_after_request(&mut self) {
        if self.status.state == ConnectionState::Open
            && matches!(sync_guarded(|| self.connection.is_alive()), Ok(false))
        {
            self.lose("the session ended during a request".to_owned());
        }
    }

    /// Sends the answer; if the call panicked, closes the instance and fails the actor, so the
    /// supervisor restarts the key and nobody uses a half-broken plugin again.
    async fn answer<T>(
        &mut self,
        reply: RpcReplyPort<Result<T, Error>>,
        result: Result<T, Error>,
    ) -> Result<(), ActorProcessingErr> {
        let crash = panic_in(&result);
        let _ = reply.send(result);
        match crash {
            Some(error) => self.crash(error).await,
            None => Ok(()),
        }
    }

    async fn crash(&mut self, error: Error) -> Result<(), ActorProcessingErr> {
        self.close(CloseReason::Crashed).await;
        Err(error.to_string().into())
    }

    fn alive_now(&self) -> Result<bool, Error> {
        sync_guarded(|| self.connection.is_alive())
            .map_err(|message| self.panicked("is_alive", message))
    }

    async fn open(
        &mut self,
        params: ResolvedConnectionParams,
        timeout: Option<Duration>,
        reply: OpenReply,
    ) -> Result<(), ActorProcessingErr> {
        if self.reconnecting() {
            // Someone else's reconnect is already under way: wait for it rather than adding an
            // attempt (no retry storms from many callers).
            let deadline = Instant::now() + self.policy.timeouts.open;
            self.park(deadline, Request::Open { reply });
            return Ok(());
        }
        let result = self.open_requested(params, timeout).await;
        let crash = panic_in(&result);
        reply.send(result);
        match crash {
            Some(error) => self.crash(error).await,
            None => Ok(()),
        }
    }

    /// An open asked for by a caller: counted, reported, answered with the plugin's error.
    async fn open_requested(
        &mut self,
        params: ResolvedConnectionParams,
        timeout: Option<Duration>,
    ) -> Result<(), Error> {
        if self.alive_now()? {
            if self.status.state != ConnectionState::Open {
                self.enter(ConnectionState::Open, None);
            }
            return Ok(());
        }
        self.params = Some(params);
        self.enter(ConnectionState::Opening, Some(EventKind::Opening));
        match self.attempt_open(timeout).await {
            OpenAttempt::Opened => {
                self.opened(false);
                Ok(())
            }
            OpenAttempt::Failed(error, failure) => {
                self.open_failed(failure);
                self.enter(ConnectionState::Failed, None);
                self.fail_parked(|| error.clone());
                Err(error)
            }
            OpenAttempt::Panicked(error) => Err(error),
        }
    }

    /// One open attempt with the last params: waits for an open slot and runs the plugin's
    /// `open`, both within the open timeout.
    async fn attempt_open(&mut self, timeout: Option<Duration>) -> OpenAttempt {
        let Some(params) = self.params.clone() else {
            let failure = FailureInfo {
                kind: FailureKind::Unknown,
                message: "never opened: no params to reopen with".to_owned(),
            };
            return OpenAttempt::Failed(self.unavailable(), failure);
        };
        self.session += 1;
        let (actor, generation) = (self.myself.clone(), self.session);
        self.connection
            .set_loss_notifier(LossNotifier::new(move |reason: String| {
                let lost = TickKind::Lost { generation, reason };
                let _ = actor.cast(ConnectionMessage::Internal(Tick(lost)));
            }));
        let bound = timeout.unwrap_or(self.policy.timeouts.open);
        let slots = self.open_slots.clone();
        let connection = &mut self.connection;
        let call = async move {
            // A closed semaphore cannot happen (the supervisor never closes it); opening
            // without a slot would still be correct, only less polite.
            let _slot = slots.acquire_owned().await.ok();
            connection.open(&params).await
        };
        match guarded(bound, call).await {
            Outcome::Done(Ok(())) => OpenAttempt::Opened,
            Outcome::Done(Err(source)) => {
                let failure = FailureInfo {
                    kind: source.kind(),
                    message: source.message().to_owned(),
                };
                let error = Error::Open {
                    key: self.key.clone(),
                    source,
                };
                OpenAttempt::Failed(error, failure)
            }
            Outcome::TimedOut(after) => {
                let failure = FailureInfo {
                    kind: FailureKind::Timeout,
                    message: format!("open timed out after {after:?}"),
                };
                OpenAttempt::Failed(self.timed_out("open", after), failure)
            }
            Outcome::Panicked(message) => OpenAttempt::Panicked(self.panicked("open", message)),
        }
    }

    fn opened(&mut self, reconnect: bool) {
        let route = match sync_guarded(|| self.connection.command_runner()) {
            Ok(Some((runner, limit))) => {
                let actor = self.myself.clone();
                Some(DirectRoute::new(
                    runner,
                    limit,
                    self.activity.clone(),
                    move |notice| {
                        let tick = match notice {
                            RouteNotice::CheckAlive => TickKind::CheckAlive,
                            RouteNotice::Panicked(error) => TickKind::CommandPanicked { error },
                        };
                        let _ = actor.cast(ConnectionMessage::Internal(Tick(tick)));
                    },
                ))
            }
            Ok(None) => None,
            Err(message) => {
                warn!(%message, "plugin panicked in command_runner; running commands one at a time");
                None
            }
        };
        self.published.route(route);
        let attempts = self.status.attempts + 1;
        self.status.attempts = 0;
        self.status.next_attempt_at = None;
        let event = if reconnect {
            EventKind::Reconnected { attempts }
        } else {
            EventKind::Opened
        };
        self.enter(ConnectionState::Open, Some(event));
        self.report(ReportKind::Opened {
            key: self.key.clone(),
            params: self.params.clone(),
            reconnect,
        });
        self.schedule_health_check();
    }

    fn open_failed(&mut self, failure: FailureInfo) {
        debug!(%failure, "open failed");
        self.status.attempts += 1;
        self.status.last_error = Some(failure.clone());
        self.events.emit(
            &self.key,
            EventKind::OpenFailed {
                failure,
                attempt: self.status.attempts,
            },
        );
        self.report(ReportKind::OpenFailed {
            plugin_name: self.key.plugin_name.clone(),
        });
    }

    /// The connection went away while open: invalidate the old session, then reconnect (or
    /// give up at once if the policy says not to reconnect).
    fn lose(&mut self, reason: String) {
        info!(%reason, "connection lost");
        self.session += 1;
        Timers::cancel(&mut self.timers.health);
        self.published.route(None);
        self.enter(
            ConnectionState::Lost,
            Some(EventKind::Lost {
                reason: reason.clone(),
            }),
        );
        self.report(ReportKind::Lost {
            plugin_name: self.key.plugin_name.clone(),
        });
        self.status.attempts = 0;
        if self.policy.reconnect && self.params.is_some() {
            self.schedule_reconnect();
        } else {
            self.give_up(FailureInfo {
                kind: FailureKind::Transport,
                message: format!("lost and not reconnecting: {reason}"),
            });
        }
    }

    fn schedule_reconnect(&mut self) {
        let attempt = self.status.attempts + 1;
        let unit =
            (self.random.hash_one(self.reconnect_generation) >> 11) as f64 / (1u64 << 53) as f64;
        let delay = self.policy.backoff.delay(attempt, unit);
        self.schedule_reconnect_in(delay);
    }

    fn schedule_reconnect_in(&mut self, delay: Duration) {
        self.reconnect_generation += 1;
        self.status.next_attempt_at = Some(SystemTime::now() + delay);
        let attempt = self.status.attempts + 1;
        self.enter(
            ConnectionState::Reconnecting,
            Some(EventKind::Reconnecting { attempt, delay }),
        );
        let tick = TickKind::ReconnectDue {
            generation: self.reconnect_generation,
        };
        Timers::cancel(&mut self.timers.reconnect);
        self.timers.reconnect = Some(self.tick_after(delay, tick));
    }

    async fn reconnect(&mut self) -> Result<(), ActorProcessingErr> {
        self.timers.reconnect = None;
        self.status.next_attempt_at = None;
        match self.attempt_open(None).await {
            OpenAttempt::Opened => {
                self.opened(true);
                self.replay_parked().await
            }
            OpenAttempt::Failed(_, failure) => {
                let kind = failure.kind;
                self.open_failed(failure.clone());
                let attempts = self.status.attempts;
                let exhausted = (kind.is_permanent()
                    && attempts >= self.policy.permanent_failure_attempts)
                    || self
                        .policy
                        .max_reconnect_attempts
                        .is_some_and(|max| attempts >= max);
                if exhausted {
                    self.give_up(failure);
                } else {
                    self.schedule_reconnect();
                }
                Ok(())
            }
            OpenAttempt::Panicked(error) => {
                self.fail_parked(|| error.clone());
                self.crash(error).await
            }
        }
    }

    fn give_up(&mut self, failure: FailureInfo) {
        warn!(%failure, "gave up reconnecting");
        self.status.last_error = Some(failure.clone());
        self.status.next_attempt_at = None;
        self.enter(ConnectionState::Failed, Some(EventKind::GaveUp { failure }));
        let error = self.unavailable();
        self.fail_parked(|| error.clone());
    }

    fn reconnecting(&self) -> bool {
        matches!(
            self.status.state,
            ConnectionState::Lost | ConnectionState::Reconnecting
        )
    }

    fn park(&mut self, deadline: Instant, request: Request) {
        self.parked.push_back((deadline, request));
        self.publish();
        let sooner = self
            .timers
            .parked
            .as_ref()
            .is_none_or(|(due, _)| deadline < *due);
        if sooner {
            if let Some((_, timer)) = self.timers.parked.take() {
                timer.abort();
            }
            let delay = deadline.saturating_duration_since(Instant::now());
            let timer = self.tick_after(delay, TickKind::ExpireParked);
            self.timers.parked = Some((deadline, timer));
        }
    }

    /// Answers parked requests whose deadline passed, and re-arms the timer for the rest.
    fn expire_parked(&mut self) {
        let now = Instant::now();
        let (expired, waiting): (VecDeque<_>, VecDeque<_>) = self
            .parked
            .drain(..)
            .partition(|(deadline, _)| *deadline <= now);
        self.parked = waiting;
        for (_, request) in expired {
            let error = Error::Timeout {
                operation: request.operation(),
                target: format!("{} (waiting for a reconnect)", self.key),
                after: self.policy.timeouts.request,
            };
            request.fail(&self.key, error);
        }
        self.publish();
        if let Some(next) = self.parked.iter().map(|(deadline, _)| *deadline).min() {
            let timer =
                self.tick_after(next.saturating_duration_since(now), TickKind::ExpireParked);
            self.timers.parked = Some((next, timer));
        }
    }

    async fn replay_parked(&mut self) -> Result<(), ActorProcessingErr> {
        let parked = std::mem::take(&mut self.parked);
        if let Some((_, timer)) = self.timers.parked.take() {
            timer.abort();
        }
        for (deadline, request) in parked {
            if request.caller_gone() {
                continue; // its caller stopped waiting: running it now would surprise nobody
            }
            if deadline <= Instant::now() {
                self.parked.push_back((deadline, request));
                continue;
            }
            // May park again if the connection drops during the replay.
            self.run_or_park(deadline, request).await?;
        }
        self.expire_parked();
        Ok(())
    }

    fn fail_parked(&mut self, error: impl Fn() -> Error) {
        if self.parked.is_empty() {
            return;
        }
        for (_, request) in self.parked.drain(..) {
            request.fail(&self.key, error());
        }
        self.publish();
        if let Some((_, timer)) = self.timers.parked.take() {
            timer.abort();
        }
    }

    async fn run_with(&mut self, job: WithJob) -> Result<(), Error> {
        let actual = self.connection.type_name();
        let WithJob { expected, run } = job;
        let Some(future) = run(self.connection.as_mut()) else {
            return Err(Error::WrongConnectionType {
                key: self.key.clone(),
                expected,
                actual,
            });
        };
        match guarded(self.policy.timeouts.request, future).await {
            Outcome::Done(()) => Ok(()),
            Outcome::TimedOut(after) => Err(self.timed_out("with", after)),
            Outcome::Panicked(message) => Err(self.panicked("with", message)),
        }
    }

    /// Closes the plugin instance unless it already is: the only path to `Closed`, so a
    /// connection is closed exactly once whichever way the actor ends.
    async fn close(&mut self, reason: CloseReason) {
        if matches!(
            self.status.state,
            ConnectionState::Closing | ConnectionState::Closed
        ) {
            return;
        }
        self.timers.cancel_all();
        self.published.route(None);
        self.commands.abort_all();
        let closed = Error::Closed {
            key: self.key.clone(),
        };
        self.fail_parked(|| closed.clone());
        self.enter(ConnectionState::Closing, None);
        match guarded(self.policy.timeouts.close, self.connection.close()).await {
            Outcome::Done(()) => {}
            Outcome::TimedOut(after) => warn!(?after, "close timed out; connection dropped"),
            Outcome::Panicked(message) => warn!(%message, "plugin panicked in close"),
        }
        self.status.next_attempt_at = None;
        self.enter(ConnectionState::Closed, Some(EventKind::Closed { reason }));
        self.report(ReportKind::Closed {
            key: self.key.clone(),
            actor: self.id,
            reason,
        });
    }

    /// The one place the lifecycle state changes: publishes the new status to watchers and
    /// the event (if any) to subscribers.
    fn enter(&mut self, next: ConnectionState, event: Option<EventKind>) {
        if self.status.state != next {
            debug!(from = ?self.status.state, to = ?next, "state");
            self.status.state = next;
        }
        self.publish();
        if let Some(event) = event {
            self.events.emit(&self.key, event);
        }
    }

    /// Publishes the status to watchers (handles, the supervisor's status queries).
    fn publish(&mut self) {
        self.status.waiting_requests = self.parked.len();
        self.published.status(&self.status);
    }

    fn schedule_health_check(&mut self) {
        if let Some(interval) = self.policy.health_check_interval {
            Timers::cancel(&mut self.timers.health);
            self.timers.health = Some(self.tick_after(interval, TickKind::HealthCheckDue));
        }
    }

    fn schedule_idle_check(&mut self, after: Option<Duration>) {
        if let Some(limit) = self.policy.idle_timeout {
            let after = after.unwrap_or(limit);
            self.timers.idle = Some(self.tick_after(after, TickKind::IdleCheck));
        }
    }

    fn tick_after(&self, delay: Duration, tick: TickKind) -> JoinHandle<()> {
        let myself = self.myself.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = myself.cast(ConnectionMessage::Internal(Tick(tick)));
        })
    }

    fn report(&self, report: ReportKind) {
        // The supervisor is gone only during its own shutdown, when counts no longer matter.
        let _ = self
            .supervisor
            .cast(SupervisorMessage::Report(Report(report)));
    }

    fn refuse(&self, message: ConnectionMessage) {
        let closed = || Error::Closed {
            key: self.key.clone(),
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

    fn unavailable(&self) -> Error {
        Error::Unavailable {
            key: self.key.clone(),
            state: self.status.state,
            cause: self.status.last_error.clone(),
        }
    }

    fn timed_out(&self, operation: &'static str, after: Duration) -> Error {
        Error::Timeout {
            operation,
            target: self.key.to_string(),
            after,
        }
    }

    fn panicked(&self, operation: &'static str, message: String) -> Error {
        warn!(operation, %message, "plugin panicked");
        Error::PluginPanicked {
            key: self.key.clone(),
            operation,
            message,
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
