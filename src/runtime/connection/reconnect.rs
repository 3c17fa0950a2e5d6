//! Loss and reconnect: a lost session schedules attempts with backoff and jitter; requests that
//! arrive meanwhile are parked with their deadlines and replayed once the connection is back,
//! or answered when it gives up or closes.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::time::Duration;

use ractor::ActorProcessingErr;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::connection::{ConnectionKey, FailureKind};
use crate::deadline::Deadline;
use crate::deadline::wall_deadline_after;
use crate::error::{Error, Stage};
use crate::runtime::internal::TickKind;
use crate::shared::OpenFor;
use crate::status::{ConnectionState, FailureInfo};

use super::ConnectionActorState;
use super::lifecycle::OpenAttempt;
use super::requests::Request;
use super::resources::Timers;
use super::transition::Happened;

impl ConnectionActorState {
    /// The connection went away while open: invalidate the old session, then reconnect (or
    /// give up at once if the policy says not to reconnect).
    pub(super) fn lose(&mut self, reason: String) {
        info!(%reason, "connection lost");
        self.session += 1;
        Timers::cancel(&mut self.timers.health);
        self.enter(Happened::Lost(reason.clone()));
        if self.policy.reconnect && self.params.is_some() {
            self.schedule_reconnect();
        } else {
            self.give_up(FailureInfo {
                kind: FailureKind::Transport,
                message: format!("lost and not reconnecting: {reason}"),
            });
        }
    }

    pub(super) fn schedule_reconnect(&mut self) {
        let delay = self.jittered_backoff(self.status.attempts + 1);
        self.schedule_reconnect_in(delay);
    }

    /// The policy's backoff before attempt `attempt`, spread by this actor's own randomness so
    /// that hosts dropped together do not come back in lockstep.
    pub(super) fn jittered_backoff(&mut self, attempt: u32) -> Duration {
        self.backoff_draws = self.backoff_draws.wrapping_add(1);
        let unit = (self.random.hash_one(self.backoff_draws) >> 11) as f64 / (1u64 << 53) as f64;
        self.policy.backoff.delay(attempt, unit)
    }

    pub(super) fn schedule_reconnect_in(&mut self, delay: Duration) {
        self.reconnect_generation += 1;
        self.enter(Happened::ReconnectScheduled {
            delay,
            at: wall_deadline_after(delay),
        });
        let tick = TickKind::ReconnectDue {
            generation: self.reconnect_generation,
        };
        Timers::cancel(&mut self.timers.reconnect);
        self.timers.reconnect = Some(self.tick_after(delay, tick));
    }

    /// One reconnect attempt now: in the background budget when its timer fired, in the
    /// callers' when `retry` asked for it.
    pub(super) async fn reconnect(&mut self, purpose: OpenFor) -> Result<(), ActorProcessingErr> {
        self.timers.reconnect = None;
        match self.attempt_open(None, purpose).await {
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

    pub(super) fn give_up(&mut self, failure: FailureInfo) {
        warn!(%failure, "gave up reconnecting");
        self.enter(Happened::GaveUp(failure));
        let error = self.unavailable();
        self.fail_parked(|| error.clone());
    }

    pub(super) fn reconnecting(&self) -> bool {
        matches!(
            self.status.state,
            ConnectionState::Lost | ConnectionState::Reconnecting
        )
    }

    pub(super) fn park(&mut self, deadline: Deadline, request: Request) {
        if self.parked.len() >= self.policy.max_waiting_requests {
            let error = Error::Overloaded {
                key: ConnectionKey::clone(&self.key),
                waiting: self.parked.len(),
            };
            request.fail(&self.key, error);
            return;
        }
        self.parked.push_back((deadline, request));
        let deadline = deadline.at();
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
    pub(super) fn expire_parked(&mut self) {
        let now = Instant::now();
        let (expired, waiting): (VecDeque<_>, VecDeque<_>) = self
            .parked
            .drain(..)
            .partition(|(deadline, _)| deadline.at() <= now);
        self.parked = waiting;
        for (deadline, request) in expired {
            let error = self.expired(request.operation(), deadline, Stage::Reconnect);
            request.fail(&self.key, error);
        }
        self.publish();
        if let Some(next) = self.parked.iter().map(|(deadline, _)| deadline.at()).min() {
            let timer =
                self.tick_after(next.saturating_duration_since(now), TickKind::ExpireParked);
            self.timers.parked = Some((next, timer));
        }
    }

    pub(super) async fn replay_parked(&mut self) -> Result<(), ActorProcessingErr> {
        let parked = std::mem::take(&mut self.parked);
        if let Some((_, timer)) = self.timers.parked.take() {
            timer.abort();
        }
        for (deadline, request) in parked {
            if request.caller_gone() {
                continue; // its caller stopped waiting: running it now would surprise nobody
            }
            if deadline.has_passed() {
                self.parked.push_back((deadline, request));
                continue;
            }
            // May park again if the connection drops during the replay.
            self.run_or_park(deadline, request).await?;
        }
        self.expire_parked();
        Ok(())
    }

    pub(super) fn fail_parked(&mut self, error: impl Fn() -> Error) {
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
}
