//! Crashes: a pooled connection actor that failed is restarted with a fresh instance (reopened if
//! it was open) within the restart intensity, or its key is quarantined.

use std::sync::Arc;

use ractor::ActorId;
use tokio::time::Instant;
use tracing::{error, warn};

use crate::deadline::{deadline_after, wall_deadline_after};
use crate::events::EventKind;
use crate::metrics::GaugeGuard;
use crate::shared::Count;
use crate::status::ConnectionState;

use super::SupervisorState;
use super::slots::{Quarantine, Slot};

impl SupervisorState {
    /// A connection actor failed. A pooled one is restarted within the restart intensity, or
    /// its key quarantined; one that was already being closed is just counted.
    pub(super) fn connection_failed(&mut self, actor: ActorId, reason: String) {
        let Some(key) = self.children.remove(&actor) else {
            return;
        };
        let counters = self.counters_for(&key.plugin_name);
        counters.count(Count::Crashed);
        if !self.is_pooled(&key, actor) {
            return;
        }
        let Some(Slot::Ready(pooled)) = self.take_slot(&key) else {
            return;
        };
        let lineage = pooled.handle.lineage();
        if self.shutting_down {
            return;
        }
        let policy = self.config.restart;
        let now = Instant::now();
        let key = Arc::unwrap_or_clone(key);
        let history = self.restarts.entry(key.clone()).or_default();
        history.push_back(now);
        while history
            .front()
            .is_some_and(|&at| now.duration_since(at) > policy.window)
        {
            history.pop_front();
        }
        let restarts = history.len() as u32;
        if restarts > policy.max_restarts {
            error!(%key, %reason, restarts, "connection crashed too often; quarantined");
            counters.count(Count::Quarantined);
            let quarantine = Quarantine {
                until: deadline_after(policy.quarantine),
                until_wall: wall_deadline_after(policy.quarantine),
                reason: reason.clone(),
                lineage,
                published: pooled.published,
                _gauged: counters
                    .metrics
                    .connections_in(ConnectionState::Quarantined)
                    .map(GaugeGuard::new),
            };
            // Handles of this lineage read the quarantine, and their calls get its error.
            let status = quarantine.status();
            quarantine.published.send_modify(|published| {
                published.status = status;
                published.route = None;
                published.actor = None;
            });
            // Announced last, like every lifecycle event: whoever sees it finds the key
            // counted, gauged and published as quarantined.
            self.events.emit(
                &key,
                EventKind::Quarantined {
                    duration: policy.quarantine,
                    reason,
                },
            );
            self.insert_slot(key, Slot::Quarantined(quarantine));
            return;
        }
        warn!(%key, %reason, restarts, "connection actor failed; restarting it");
        counters.count(Count::Restarted);
        self.events
            .emit(&key, EventKind::Restarted { restarts, reason });
        self.start_creation(
            key,
            lineage,
            Vec::new(),
            pooled.reopen_with,
            Some(pooled.published),
        );
    }
}
