//! What the actor does when one of its timers fires or its plugin reports a loss: health checks,
//! idle and lifetime expiry, reconnect attempts, parked requests' deadlines.

use std::time::Duration;

use ractor::ActorProcessingErr;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::error::Operation;
use crate::events::CloseReason;
use crate::guard::{Outcome, guarded};
use crate::runtime::internal::{ReportKind, Tick, TickKind};
use crate::runtime::messages::ConnectionMessage;
use crate::shared::OpenFor;
use crate::status::ConnectionState;

use super::resources::Timers;
use super::{ConnectionActorState, Reporting};

/// How soon an expired connection that was busy is looked at again.
const BUSY_RECHECK: Duration = Duration::from_secs(1);

impl ConnectionActorState {
    pub(super) async fn on_tick(&mut self, tick: TickKind) -> Result<(), ActorProcessingErr> {
        match tick {
            TickKind::Close { reason, reply } => {
                self.close_and_stop(reason, Some(reply), Reporting::FromPool)
                    .await;
            }
            TickKind::Lost { generation, reason } => {
                if generation == self.session && self.status.state == ConnectionState::Open {
                    self.lose(reason);
                }
            }
            TickKind::ReconnectDue { generation } => {
                if generation == self.reconnect_generation && self.reconnecting() {
                    return self.reconnect(OpenFor::Background).await;
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
                            let error = self.panicked(Operation::HealthCheck, message);
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
                if self.activity.is_busy() || !self.parked.is_empty() {
                    // Old age never cuts a running command off (its close would end the
                    // session under it): expire once the connection is free. Nothing tells
                    // the actor when a command on the runner ends, so look again shortly.
                    let again = self
                        .policy
                        .max_lifetime
                        .map_or(BUSY_RECHECK, |lifetime| lifetime.min(BUSY_RECHECK));
                    self.timers.lifetime = Some(self.tick_after(again, TickKind::LifetimeExpired));
                } else {
                    self.report(ReportKind::Expired {
                        key: self.key.clone(),
                        actor: self.id,
                        reason: CloseReason::Lifetime,
                    });
                }
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

    pub(super) fn schedule_health_check(&mut self) {
        if let Some(interval) = self.policy.health_check_interval {
            Timers::cancel(&mut self.timers.health);
            self.timers.health = Some(self.tick_after(interval, TickKind::HealthCheckDue));
        }
    }

    pub(super) fn schedule_idle_check(&mut self, after: Option<Duration>) {
        if let Some(limit) = self.policy.idle_timeout {
            let after = after.unwrap_or(limit);
            self.timers.idle = Some(self.tick_after(after, TickKind::IdleCheck));
        }
    }

    pub(super) fn tick_after(&self, delay: Duration, tick: TickKind) -> JoinHandle<()> {
        let myself = self.myself.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = myself.cast(ConnectionMessage::Internal(Tick(tick)));
        })
    }
}
