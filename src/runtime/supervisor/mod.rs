//! The supervisor actor: owns the pool (key → connection actor), the factory and the counters,
//! routes requests by key, and restarts connection actors that crash.
//!
//! It never awaits a plugin. The factory runs on a task of its own and reports back with a
//! message; opens, commands and closes run inside each connection's actor; anything that has to
//! wait for several of those (close-all, shutdown) is handed to a short-lived task that holds
//! only reply ports. The only thing the supervisor awaits is spawning a connection actor, a few
//! microseconds.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::time::Instant;
use tracing::debug;

use crate::config::SupervisorConfig;
use crate::connection::ConnectionKey;
use crate::error::Error;
use crate::events::{CloseReason, EventBus};
use crate::runtime::internal::{Report, ReportKind};
use crate::runtime::messages::SupervisorMessage;
use crate::shared::{OpenSlots, PluginCounters};
use crate::status::{ConnectionState, ConnectionStatus};

mod deadlines;
mod factories;
mod limits;
mod pool;
mod replace;
mod restart;
mod shutdown;
mod slots;

use slots::{Creation, Slot, Waiter};

/// The supervisor actor. Spawn it with a [`SupervisorConfig`] as arguments, directly or linked
/// under an actor of your own (`Actor::spawn_linked`), then talk to it with
/// [`SupervisorMessage`]s or wrap it with
/// [`ConnectionManager::from_supervisor`](crate::ConnectionManager::from_supervisor).
///
/// A failing connection actor never stops the supervisor: it is restarted with a fresh
/// instance (reopened if it was open) within the restart policy, or its key is quarantined.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnectionSupervisor;

/// The supervisor's private state. Public only because ractor's `Actor` trait names it.
pub struct SupervisorState {
    myself: ActorRef<SupervisorMessage>,
    config: SupervisorConfig,
    pool: HashMap<ConnectionKey, Slot>,
    /// Every live connection actor (pooled, or closing) and its key, for routing supervision
    /// events; an entry leaves only when its actor has ended.
    children: HashMap<ActorId, Arc<ConnectionKey>>,
    /// Creations whose key was closed while the factory was still running: whatever the
    /// factory makes is handed to the waiters already queued, then closed at once, so no
    /// connection is ever dropped without `close`.
    orphans: HashMap<u64, (ConnectionKey, Creation)>,
    /// Per plugin, shared with that plugin's connection actors, which count what happens to
    /// them before they publish the event (see `shared.rs`).
    counters: HashMap<String, Arc<PluginCounters>>,
    /// Pooled connections (creating or ready) in total and per plugin, for the limits.
    pooled: usize,
    pooled_per_plugin: HashMap<String, usize>,
    /// Recent restart times per key, for the restart intensity.
    restarts: HashMap<ConnectionKey, VecDeque<Instant>>,
    events: EventBus,
    /// Where the factory runs (see `factories.rs`).
    factories: factories::FactoryRunners,
    /// When each creation under way runs out of time (see `deadlines.rs`).
    deadlines: deadlines::CreationDeadlines,
    open_slots: Arc<OpenSlots>,
    epoch: Instant,
    next_id: u64,
    shutting_down: bool,
}

impl Actor for ConnectionSupervisor {
    type Msg = SupervisorMessage;
    type State = SupervisorState;
    type Arguments = SupervisorConfig;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        config: SupervisorConfig,
    ) -> Result<Self::State, ActorProcessingErr> {
        config.validate()?;
        Ok(SupervisorState {
            myself,
            events: EventBus::new(config.event_capacity),
            factories: factories::FactoryRunners::new(),
            deadlines: deadlines::CreationDeadlines::default(),
            open_slots: Arc::new(OpenSlots::new(
                config.max_concurrent_opens,
                config.max_handshakes_per_address,
            )),
            config,
            pool: HashMap::new(),
            children: HashMap::new(),
            orphans: HashMap::new(),
            counters: HashMap::new(),
            pooled: 0,
            pooled_per_plugin: HashMap::new(),
            restarts: HashMap::new(),
            epoch: Instant::now(),
            next_id: 0,
            shutting_down: false,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMessage::GetOrCreate { key, reply } => {
                state.get_or_create(key, Waiter::Handle(reply))
            }
            SupervisorMessage::OpenConnection { key, params, reply } => {
                state.get_or_create(key, Waiter::Open(params, reply))
            }
            SupervisorMessage::ReplaceConnection { key, params, reply } => {
                state.replace(key, params, reply);
            }
            SupervisorMessage::CloseConnection { key, reply } => {
                state.close(key, reply, CloseReason::Requested);
            }
            SupervisorMessage::CloseAll { reply } => {
                if state.shutting_down {
                    let _ = reply.send(Err(Error::ShutDown));
                } else {
                    state.close_all(reply);
                }
            }
            SupervisorMessage::Retry { key, reply } => state.retry(key, reply),
            SupervisorMessage::Status { key, reply } => {
                let _ = reply.send(state.status(&key));
            }
            SupervisorMessage::Subscribe { reply } => {
                let _ = reply.send(state.events.subscribe());
            }
            SupervisorMessage::SetFactory { factory, reply } => {
                state.config.factory = Some(factory);
                let _ = reply.send(());
            }
            SupervisorMessage::CountersFor { plugin_name, reply } => {
                let _ = reply.send(state.counters.get(&plugin_name).map(|c| c.snapshot()));
            }
            SupervisorMessage::CountersSnapshot { reply } => {
                let snapshot = state
                    .counters
                    .iter()
                    .map(|(plugin, counters)| (plugin.clone(), counters.snapshot()))
                    .collect();
                let _ = reply.send(snapshot);
            }
            SupervisorMessage::Timeouts { reply } => {
                let _ = reply.send(state.config.default_policy.timeouts);
            }
            SupervisorMessage::PluginTimeouts { reply } => {
                let _ = reply.send(state.config.plugin_timeouts());
            }
            SupervisorMessage::Shutdown { reply } => state.shutdown(reply),
            SupervisorMessage::Report(Report(report)) => state.apply_report(report).await,
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Stopped by `stop()` (its own, or its owner stopping its children) rather than by a
        // Shutdown message: close every pooled connection now, bounded like a shutdown, while
        // the connection actors still run (ractor kills them right after this returns). A kill
        // or a panic skips this; each connection then closes itself as its actor is dropped.
        state.shutting_down = true;
        let pending = state.close_every_pooled(CloseReason::Shutdown);
        if !pending.is_empty() {
            let bound = state.longest_close_wait();
            let _ = tokio::time::timeout(bound, shutdown::all_done(pending)).await;
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Overridden so that a child's end never stops the supervisor (ractor's default would).
        match event {
            SupervisionEvent::ActorFailed(cell, reason) => {
                state.connection_failed(cell.get_id(), reason.to_string());
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let actor = cell.get_id();
                if let Some(key) = state.children.remove(&actor) {
                    debug!(%key, ?reason, "connection actor stopped");
                    state.unpool(&key, actor);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl SupervisorState {
    /// The counters of `plugin_name`, made on its first connection.
    fn counters_for(&mut self, plugin_name: &str) -> Arc<PluginCounters> {
        if let Some(counters) = self.counters.get(plugin_name) {
            return counters.clone();
        }
        let counters = Arc::new(PluginCounters::new(plugin_name));
        self.counters
            .insert(plugin_name.to_owned(), counters.clone());
        counters
    }

    fn status(&self, key: &ConnectionKey) -> Option<ConnectionStatus> {
        Some(match self.pool.get(key)? {
            Slot::Ready(pooled) => pooled.handle.status(),
            Slot::Creating(_) => ConnectionStatus::new(ConnectionState::Created),
            Slot::Quarantined(quarantine) => quarantine.status(),
            Slot::Replacing(replacement) => replacement.published.borrow().status.clone(),
        })
    }

    async fn apply_report(&mut self, report: ReportKind) {
        match report {
            ReportKind::FactoryDone {
                creation,
                key,
                result,
            } => {
                self.deadlines.end(creation);
                if self.is_replacement(&key, creation) {
                    let key = Arc::unwrap_or_clone(key);
                    self.replacement_made(creation, key, result).await;
                } else {
                    self.finish_creation(creation, key, result).await;
                }
            }
            ReportKind::Opened { key, params } => {
                if let Some(Slot::Ready(pooled)) = self.pool.get_mut(&key) {
                    pooled.reopen_with = params;
                }
            }
            ReportKind::CreationsDue => {
                for (creation, key) in self.deadlines.take_expired(&self.myself) {
                    if self.is_replacement(&key, creation) {
                        self.replacement_expired(creation, Arc::unwrap_or_clone(key));
                    } else {
                        self.expire_creation(creation, &key);
                    }
                }
            }
            ReportKind::ReplaceProgress {
                replacement,
                key,
                step,
            } => self.replacement_step(replacement, key, step).await,
            ReportKind::Closed { key, actor, reason } => {
                // A connection closed by a direct message (not through the supervisor) leaves
                // the pool here. A crashed one is still pooled until its ActorFailed arrives,
                // which restarts it: the actor only reports Closed before failing.
                if reason != CloseReason::Crashed {
                    self.unpool(&key, actor);
                }
            }
            ReportKind::Expired { key, actor, reason } => {
                if self.is_pooled(&key, actor) {
                    let (reply, _) = tokio::sync::oneshot::channel();
                    self.close(Arc::unwrap_or_clone(key), reply.into(), reason);
                }
            }
        }
    }
}

impl fmt::Debug for SupervisorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorState")
            .field("config", &self.config)
            .field("pooled", &self.pooled)
            .field("orphans", &self.orphans.len())
            .field("counters", &self.counters)
            .field("shutting_down", &self.shutting_down)
            .finish_non_exhaustive()
    }
}
