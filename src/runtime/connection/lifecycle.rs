//! Opening and closing: the one place the state changes ([`ConnectionActorState::enter`]),
//! a requested open and each open attempt, what an open or failure records, the close that
//! runs exactly once however the actor ends, and the crash that follows a plugin panic.

use std::time::Duration;

use ractor::{ActorProcessingErr, RpcReplyPort};
use tracing::{debug, warn};

use crate::connection::{
    ConnectionKey, FailureKind, LossNotifier, OpenError, ResolvedConnectionParams,
};
use crate::deadline::Deadline;
use crate::error::{Error, Operation, Stage};
use crate::events::CloseReason;
use crate::guard::{Outcome, guarded, sync_guarded};
use crate::runtime::internal::{Report, ReportKind, Tick, TickKind};
use crate::runtime::messages::{ConnectionMessage, SupervisorMessage};
use crate::shared::{Count, DirectRoute, OpenFor, RouteNotice};

use super::transition::{Happened, RouteChange, step};
use crate::status::{ConnectionState, FailureInfo};

use super::requests::{OpenReply, Reply, Request};
use super::{ConnectionActorState, Reporting};

/// The error to crash with, if the plugin panicked.
pub(super) fn panic_in<T>(result: &Result<T, Error>) -> Option<Error> {
    match result {
        Err(error @ Error::PluginPanicked { .. }) => Some(error.clone()),
        _ => None,
    }
}

/// How an open attempt ended.
pub(super) enum OpenAttempt {
    Opened,
    Failed(Error, FailureInfo),
    Panicked(Error),
}

impl ConnectionActorState {
    /// Sends the answer; if the call panicked, closes the instance and fails the actor, so the
    /// supervisor restarts the key and nobody uses a half-broken plugin again.
    pub(super) async fn answer<T>(
        &mut self,
        reply: Reply<T>,
        result: Result<T, Error>,
    ) -> Result<(), ActorProcessingErr> {
        let crash = panic_in(&result);
        reply.send(result);
        match crash {
            Some(error) => self.crash(error).await,
            None => Ok(()),
        }
    }

    pub(super) async fn crash(&mut self, error: Error) -> Result<(), ActorProcessingErr> {
        self.close(CloseReason::Crashed).await;
        Err(error.to_string().into())
    }

    pub(super) fn alive_now(&self) -> Result<bool, Error> {
        sync_guarded(|| self.connection.is_alive())
            .map_err(|message| self.panicked(Operation::IsAlive, message))
    }

    pub(super) async fn open(
        &mut self,
        params: ResolvedConnectionParams,
        deadline: Deadline,
        reply: OpenReply,
    ) -> Result<(), ActorProcessingErr> {
        // A handle's open whose caller stopped waiting is dropped unrun. An open_connection
        // is not: it promises that the connection ends up open, for the next call to find.
        if reply.is_closed() && matches!(reply, OpenReply::Done(_)) {
            return Ok(());
        }
        if deadline.has_passed() {
            reply.send(Err(self.expired(Operation::Open, deadline, Stage::Queue)));
            return Ok(());
        }
        if self.status.state == ConnectionState::Open && !matches!(self.alive_now(), Ok(true)) {
            // Found dead: that is a loss (counted, backed off, parked requests kept), not a
            // failed open.
            self.lose("found dead before an open".to_owned());
        }
        if self.reconnecting() {
            // Someone else's reconnect is already under way: wait for it rather than adding an
            // attempt (no retry storms from many callers).
            self.park(deadline, Request::Open { reply });
            return Ok(());
        }
        let result = self
            .open_requested(params, Some(deadline.remaining()))
            .await;
        let crash = panic_in(&result);
        reply.send(result);
        match crash {
            Some(error) => self.crash(error).await,
            None => Ok(()),
        }
    }

    /// An open asked for by a caller: counted, reported, answered with the plugin's error.
    pub(super) async fn open_requested(
        &mut self,
        params: ResolvedConnectionParams,
        timeout: Option<Duration>,
    ) -> Result<(), Error> {
        if self.alive_now()? {
            if self.status.state != ConnectionState::Open {
                self.enter(Happened::FoundAlive);
            }
            return Ok(());
        }
        self.params = Some(params);
        self.enter(Happened::OpenStarted);
        let deadline = Deadline::after(timeout.unwrap_or(self.policy.timeouts.open));
        let mut tries = 0;
        loop {
            tries += 1;
            match self
                .attempt_open(Some(deadline.remaining()), OpenFor::Caller)
                .await
            {
                OpenAttempt::Opened => {
                    self.opened(false);
                    return Ok(());
                }
                OpenAttempt::Failed(error, failure) => {
                    let kind = failure.kind;
                    self.open_failed(failure);
                    // A refusal, reset or timeout is often a server shedding load (OpenSSH's
                    // MaxStartups drops): try again, with backoff, while the caller still
                    // waits. Permanent kinds and panics are not retried.
                    let pause = self.jittered_backoff(tries);
                    let transient = matches!(
                        kind,
                        FailureKind::Refused | FailureKind::Transport | FailureKind::Timeout
                    );
                    if transient
                        && tries < self.policy.first_open_attempts
                        && deadline.remaining() > pause
                    {
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    self.enter(Happened::OpenAbandoned);
                    self.fail_parked(|| error.clone());
                    return Err(error);
                }
                OpenAttempt::Panicked(error) => return Err(error),
            }
        }
    }

    /// One open attempt with the last params: waits for an open slot and runs the plugin's
    /// `open`, both within the open timeout.
    pub(super) async fn attempt_open(
        &mut self,
        timeout: Option<Duration>,
        purpose: OpenFor,
    ) -> OpenAttempt {
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
        let started = tokio::time::Instant::now();
        // Before the slot: a plugin that waits here for another connection (a jump host) holds
        // no slot that the other connection could need for its own open.
        match guarded(bound, self.connection.prepare(&params)).await {
            Outcome::Done(Ok(())) => {}
            Outcome::Done(Err(source)) => return self.open_error(source),
            Outcome::TimedOut(after) => {
                let failure = FailureInfo::new(
                    FailureKind::Timeout,
                    format!("getting ready to open (prepare) timed out after {after:?}"),
                );
                return OpenAttempt::Failed(self.timed_out(Operation::Open, bound), failure);
            }
            Outcome::Panicked(message) => {
                return OpenAttempt::Panicked(self.panicked(Operation::Open, message));
            }
        }
        let bound_left = bound.saturating_sub(started.elapsed());
        // Keys of other plugins (or of this one) can point at the same server: the handshake
        // limit is per target address, whatever the key.
        let address = format!(
            "{}:{}",
            params.hostname,
            params
                .port
                .map_or_else(|| self.key.plugin_name.clone(), |port| port.to_string())
        );
        let slots = self.open_slots.clone();
        let waited = slots.acquire(purpose, &address);
        let permit = match tokio::time::timeout(bound_left, waited).await {
            Ok(permit) => permit,
            Err(_) => {
                self.counters.count(Count::OpenSlotTimeout);
                let failure = FailureInfo::new(
                    FailureKind::Timeout,
                    format!("no open slot for {address} within {bound:?}"),
                );
                let error = Error::Timeout {
                    operation: Operation::Open,
                    key: Some(ConnectionKey::clone(&self.key)),
                    stage: Stage::OpenSlot,
                    after: bound,
                };
                return OpenAttempt::Failed(error, failure);
            }
        };
        let connection = &mut self.connection;
        let opening = tokio::time::Instant::now();
        let call = async move {
            let _permit = permit;
            connection.open(&params).await
        };
        match guarded(bound.saturating_sub(started.elapsed()), call).await {
            Outcome::Done(Ok(())) => {
                let took = opening.elapsed().as_secs_f64();
                self.counters.metrics.open_duration.record(took);
                OpenAttempt::Opened
            }
            Outcome::Done(Err(source)) => self.open_error(source),
            Outcome::TimedOut(after) => {
                let failure = FailureInfo {
                    kind: FailureKind::Timeout,
                    message: format!("open timed out after {after:?}"),
                };
                let _ = after;
                OpenAttempt::Failed(self.timed_out(Operation::Open, bound), failure)
            }
            Outcome::Panicked(message) => {
                OpenAttempt::Panicked(self.panicked(Operation::Open, message))
            }
        }
    }

    /// A failed attempt with the plugin's own error.
    fn open_error(&self, source: OpenError) -> OpenAttempt {
        let failure = FailureInfo {
            kind: source.kind(),
            message: source.message().to_owned(),
        };
        let error = Error::Open {
            key: ConnectionKey::clone(&self.key),
            source,
        };
        OpenAttempt::Failed(error, failure)
    }

    /// The plugin's concurrent runner as a direct route, if it has one; asked on every entry
    /// into `Open`, since each session has its own.
    fn direct_route(&self) -> Option<DirectRoute> {
        match sync_guarded(|| self.connection.command_runner()) {
            Ok(Some((runner, limit))) => {
                let actor = self.myself.clone();
                Some(DirectRoute::new(
                    runner,
                    limit,
                    self.activity.clone(),
                    self.counters.metrics.command_duration.clone(),
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
        }
    }

    pub(super) fn opened(&mut self, reconnect: bool) {
        self.enter(if reconnect {
            Happened::Reconnected
        } else {
            Happened::Opened
        });
        self.report(ReportKind::Opened {
            key: self.key.clone(),
            params: self.params.clone(),
        });
        self.schedule_health_check();
    }

    pub(super) fn open_failed(&mut self, failure: FailureInfo) {
        debug!(%failure, "open failed");
        self.enter(Happened::OpenFailed(failure));
    }

    /// Closes the plugin instance unless it already is: the only path to `Closed`, so a
    /// connection is closed exactly once whichever way the actor ends.
    pub(super) async fn close(&mut self, reason: CloseReason) {
        self.close_as(reason, Reporting::Report).await;
    }

    /// `close`, telling the supervisor (`Reporting::Report`) unless it sent the close itself
    /// and has already taken the connection out of its pool (`Reporting::FromPool`): at
    /// 100,000 connections a report per close doubled the supervisor's share of a close-all.
    pub(super) async fn close_as(&mut self, reason: CloseReason, reporting: Reporting) {
        if matches!(
            self.status.state,
            ConnectionState::Closing | ConnectionState::Closed
        ) {
            return;
        }
        self.replaced = reason == CloseReason::Replaced;
        self.timers.cancel_all();
        self.commands.abort_all();
        // Built only if a request is parked: most closes have none, and a key is two strings.
        let key = self.key.clone();
        self.fail_parked(|| Error::Closed {
            key: ConnectionKey::clone(&key),
        });
        self.enter(Happened::CloseStarted);
        match guarded(self.policy.timeouts.close, self.connection.close()).await {
            Outcome::Done(()) => {}
            Outcome::TimedOut(after) => warn!(?after, "close timed out; connection dropped"),
            Outcome::Panicked(message) => warn!(%message, "plugin panicked in close"),
        }
        self.enter(Happened::Closed(reason));
        if reporting == Reporting::Report {
            self.report(ReportKind::Closed {
                key: self.key.clone(),
                actor: self.id,
                reason,
            });
        }
    }

    /// Closes and stops the actor, then answers `reply`: a `Close` message.
    pub(super) async fn close_and_stop(
        &mut self,
        reason: CloseReason,
        reply: Option<RpcReplyPort<()>>,
        reporting: Reporting,
    ) {
        self.close_as(reason, reporting).await;
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
        self.myself.stop(None);
    }

    /// The one place the lifecycle state changes: [`step`] decides the move, applied here in
    /// one order: the status, the direct route (published on entering `Open`, withdrawn on
    /// leaving it, so it never outlives the session it points to), the status for watchers,
    /// the counts, then the event (counted before it is published, so a subscriber that reads
    /// the counters after seeing an event finds it counted).
    pub(super) fn enter(&mut self, happened: Happened) {
        let step = match step(&self.status, happened) {
            Ok(step) => step,
            Err(illegal) => {
                // A bug in the actor, not in anyone's input: keep the state, say so loudly.
                warn!(%illegal, "refused");
                debug_assert!(false, "{illegal}");
                return;
            }
        };
        let previous = self.status.state;
        // The step's status is a copy of this one, so `waiting_requests` (kept by `publish`
        // for the parked-requests gauge) is carried over unchanged.
        self.status = step.status;
        let next = self.status.state;
        if previous != next {
            debug!(from = ?previous, to = ?next, "state");
            let metrics = &self.counters.metrics;
            // Closed connections are gone (their actor stops): no longer gauged.
            metrics.moved(
                Some(previous),
                (next != ConnectionState::Closed).then_some(next),
            );
            match next {
                ConnectionState::Lost => self.lost_at = Some(tokio::time::Instant::now()),
                ConnectionState::Open => {
                    if let Some(lost_at) = self.lost_at.take() {
                        metrics
                            .reconnect_duration
                            .record(lost_at.elapsed().as_secs_f64());
                    }
                }
                ConnectionState::Failed | ConnectionState::Closed => self.lost_at = None,
                _ => {}
            }
        }
        match step.route {
            RouteChange::Publish => {
                let route = self.direct_route();
                self.published.route(route);
            }
            RouteChange::Withdraw => self.published.route(None),
            RouteChange::Keep => {}
        }
        self.publish();
        for count in step.counts {
            self.counters.count(count);
        }
        if let Some(event) = step.event {
            self.events.emit(&self.key, event);
        }
    }

    /// Publishes the status to watchers (handles, the supervisor's status queries).
    pub(super) fn publish(&mut self) {
        let (before, now) = (self.status.waiting_requests, self.parked.len());
        let parked = &self.counters.metrics.parked_requests;
        if now > before {
            parked.increment((now - before) as f64);
        } else if before > now {
            parked.decrement((before - now) as f64);
        }
        self.status.waiting_requests = now;
        self.published.status(&self.status);
    }

    pub(super) fn report(&self, report: ReportKind) {
        // The supervisor is gone only during its own shutdown, when counts no longer matter.
        let _ = self
            .supervisor
            .cast(SupervisorMessage::Report(Report(report)));
    }

    pub(super) fn unavailable(&self) -> Error {
        Error::Unavailable {
            key: ConnectionKey::clone(&self.key),
            state: self.status.state,
            cause: self.status.last_error.clone(),
        }
    }

    /// The answer to a request whose deadline passed before it could run.
    pub(super) fn expired(&self, operation: Operation, deadline: Deadline, stage: Stage) -> Error {
        Error::Timeout {
            operation,
            key: Some(ConnectionKey::clone(&self.key)),
            stage,
            after: deadline.bound(),
        }
    }

    pub(super) fn timed_out(&self, operation: Operation, after: Duration) -> Error {
        Error::Timeout {
            operation,
            key: Some(ConnectionKey::clone(&self.key)),
            stage: Stage::Answer,
            after,
        }
    }

    pub(super) fn panicked(&self, operation: Operation, message: String) -> Error {
        warn!(%operation, %message, "plugin panicked");
        Error::PluginPanicked {
            key: ConnectionKey::clone(&self.key),
            operation,
            message,
        }
    }
}
