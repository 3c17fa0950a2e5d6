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
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::SystemTime;

use futures::future::join_all;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tracing::{debug, error, warn};

use crate::config::{AtLimit, SupervisorConfig};
use crate::connection::{Connection, ConnectionFactory, ConnectionKey, ResolvedConnectionParams};
use crate::error::Error;
use crate::events::{CloseReason, EventBus, EventKind};
use crate::guard::panic_message;
use crate::runtime::connection::{ConnectionActor, ConnectionArgs};
use crate::runtime::internal::{Report, ReportKind};
use crate::runtime::messages::{
    ConnectionHandle, ConnectionMessage, GetOrCreateReply, RoutedOpen, SupervisorMessage,
};
use crate::shared::{Activity, Published};
use crate::status::{ConnectionCounters, ConnectionState, ConnectionStatus, FailureInfo};

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
    children: HashMap<ActorId, ConnectionKey>,
    /// Creations whose key was closed while the factory was still running: whatever the
    /// factory makes is handed to the waiters already queued, then closed at once, so no
    /// connection is ever dropped without `close`.
    orphans: HashMap<u64, (ConnectionKey, Creation)>,
    counters: HashMap<String, ConnectionCounters>,
    /// Pooled connections (creating or ready) in total and per plugin, for the limits.
    pooled: usize,
    pooled_per_plugin: HashMap<String, usize>,
    /// Recent restart times per key, for the restart intensity.
    restarts: HashMap<ConnectionKey, VecDeque<Instant>>,
    events: EventBus,
    open_slots: Arc<Semaphore>,
    epoch: Instant,
    next_id: u64,
    shutting_down: bool,
}

enum Slot {
    Creating(Creation),
    Ready(Pooled),
    Quarantined(Quarantine),
}

struct Creation {
    id: u64,
    lineage: u64,
    waiters: Vec<Waiter>,
    /// Set once the key is closed while the factory runs (only on orphans).
    closer: Option<(RpcReplyPort<()>, CloseReason)>,
    /// A restart of a connection that was open: the new actor reopens with these.
    reopen_with: Option<ResolvedConnectionParams>,
}

/// A caller waiting for a connection: for its handle, or for it to be open.
enum Waiter {
    Handle(RpcReplyPort<GetOrCreateReply>),
    Open(ResolvedConnectionParams, RpcReplyPort<GetOrCreateReply>),
}

impl Waiter {
    fn answer(self, answer: GetOrCreateReply) {
        let (Self::Handle(reply) | Self::Open(_, reply)) = self;
        let _ = reply.send(answer);
    }

    /// Hands over the connection: the handle at once, or the open request to the connection's
    /// actor, which answers the caller itself once the open is done.
    fn serve(self, handle: &ConnectionHandle) {
        match self {
            Self::Handle(reply) => {
                let _ = reply.send(Ok(Some(handle.clone())));
            }
            Self::Open(params, reply) => {
                let open = ConnectionMessage::Routed(Box::new(RoutedOpen {
                    params,
                    handle: handle.clone(),
                    reply,
                }));
                if let Err(ractor::MessagingErr::SendErr(ConnectionMessage::Routed(open))) =
                    handle.actor().send_message(open)
                {
                    // The actor stopped (closed, or crashed and not yet restarted): the caller
                    // asks again and reaches whatever replaced it.
                    let key = handle.key().clone();
                    let _ = open.reply.send(Err(Error::Closed { key }));
                }
            }
        }
    }
}

struct Pooled {
    handle: ConnectionHandle,
    /// The params of its last successful open, for reopening after a crash.
    reopen_with: Option<ResolvedConnectionParams>,
    activity: Arc<Activity>,
}

struct Quarantine {
    until: Instant,
    until_wall: SystemTime,
    reason: String,
    lineage: u64,
}

impl Slot {
    fn holds_a_connection(&self) -> bool {
        !matches!(self, Slot::Quarantined(_))
    }
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
            open_slots: Arc::new(Semaphore::new(config.max_concurrent_opens)),
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
            SupervisorMessage::Resolve {
                key,
                lineage,
                reply,
            } => state.resolve(key, lineage, reply),
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
                let _ = reply.send(state.counters.get(&plugin_name).copied());
            }
            SupervisorMessage::CountersSnapshot { reply } => {
                let _ = reply.send(state.counters.clone());
            }
            SupervisorMessage::Timeouts { reply } => {
                let _ = reply.send(state.config.default_policy.timeouts);
            }
            SupervisorMessage::Shutdown { reply } => state.shutdown(reply),
            SupervisorMessage::Report(Report(report)) => state.apply_report(report).await,
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
    fn get_or_create(&mut self, key: ConnectionKey, reply: Waiter) {
        if self.shutting_down {
            reply.answer(Err(Error::ShutDown));
            return;
        }
        match self.pool.get_mut(&key) {
            Some(Slot::Ready(pooled)) => {
                reply.serve(&pooled.handle);
                return;
            }
            Some(Slot::Creating(creation)) => {
                creation.waiters.push(reply);
                return;
            }
            Some(Slot::Quarantined(quarantine)) => {
                let now = Instant::now();
                if now < quarantine.until {
                    reply.answer(Err(quarantined(&key, quarantine, now)));
                    return;
                }
                // The quarantine is over: a fresh start, with a clean restart history.
                self.take_slot(&key);
                self.restarts.remove(&key);
            }
            None => {}
        }
        if self.config.factory.is_none() {
            reply.answer(Err(Error::FactoryNotSet));
            return;
        }
        if let Err(error) = self.make_room(&key) {
            reply.answer(Err(error));
            return;
        }
        let lineage = self.fresh_id();
        self.start_creation(key, lineage, vec![reply], None);
    }

    fn resolve(&mut self, key: ConnectionKey, lineage: u64, reply: RpcReplyPort<GetOrCreateReply>) {
        let answer = match self.pool.get_mut(&key) {
            Some(Slot::Ready(pooled)) if pooled.handle.lineage() == lineage => {
                Ok(Some(pooled.handle.clone()))
            }
            Some(Slot::Creating(creation)) if creation.lineage == lineage => {
                creation.waiters.push(Waiter::Handle(reply));
                return;
            }
            Some(Slot::Quarantined(quarantine)) if quarantine.lineage == lineage => {
                Err(quarantined(&key, quarantine, Instant::now()))
            }
            _ if self.shutting_down => Err(Error::ShutDown),
            _ => Err(Error::Closed { key }),
        };
        let _ = reply.send(answer);
    }

    fn start_creation(
        &mut self,
        key: ConnectionKey,
        lineage: u64,
        waiters: Vec<Waiter>,
        reopen_with: Option<ResolvedConnectionParams>,
    ) {
        let Some(factory) = self.config.factory.clone() else {
            answer_all(waiters, || Err(Error::FactoryNotSet));
            return;
        };
        let id = self.fresh_id();
        let close_timeout = self.config.policy_for(&key.plugin_name).timeouts.close;
        spawn_factory_task(self.myself.clone(), factory, id, key.clone(), close_timeout);
        self.insert_slot(
            key,
            Slot::Creating(Creation {
                id,
                lineage,
                waiters,
                closer: None,
                reopen_with,
            }),
        );
    }

    /// Makes room for one more connection of `key`'s plugin under the configured limits, by
    /// evicting the least recently used idle connection in the same scope, or refuses.
    fn make_room(&mut self, key: &ConnectionKey) -> Result<(), Error> {
        let plugin = &key.plugin_name;
        if let Some(&limit) = self.config.max_connections_per_plugin.get(plugin) {
            let count = self.pooled_per_plugin.get(plugin).copied().unwrap_or(0);
            if count >= limit {
                self.evict_one(key, Some(plugin.as_str()), limit)?;
            }
        }
        if let Some(limit) = self.config.max_connections {
            if self.pooled >= limit {
                self.evict_one(key, None, limit)?;
            }
        }
        Ok(())
    }

    fn evict_one(
        &mut self,
        key: &ConnectionKey,
        plugin: Option<&str>,
        limit: usize,
    ) -> Result<(), Error> {
        let refused = || Error::LimitReached {
            key: key.clone(),
            scope: plugin.map_or_else(|| "total".to_owned(), |p| format!("plugin {p:?}")),
            limit,
        };
        if self.config.at_limit == AtLimit::Refuse {
            return Err(refused());
        }
        let victim = self
            .pool
            .iter()
            .filter_map(|(candidate, slot)| match slot {
                Slot::Ready(pooled)
                    if plugin.is_none_or(|p| candidate.plugin_name == p)
                        && !pooled.activity.is_busy() =>
                {
                    Some((pooled.activity.last_used_ms(), candidate.clone()))
                }
                _ => None,
            })
            .min()
            .map(|(_, victim)| victim);
        let victim = victim.ok_or_else(refused)?;
        debug!(%victim, for_key = %key, "evicting the least recently used idle connection");
        let (reply, _) = tokio::sync::oneshot::channel();
        self.close(victim, reply.into(), CloseReason::Evicted);
        Ok(())
    }

    fn close(&mut self, key: ConnectionKey, reply: RpcReplyPort<()>, reason: CloseReason) {
        self.restarts.remove(&key);
        match self.take_slot(&key) {
            None | Some(Slot::Quarantined(_)) => {
                let _ = reply.send(());
            }
            Some(Slot::Ready(pooled)) => {
                // If the actor is already gone the reply port is dropped with the message and
                // the caller learns the connection is gone, which is what it asked for.
                let _ = pooled.handle.actor().cast(ConnectionMessage::Close {
                    reason,
                    reply: Some(reply),
                });
            }
            Some(Slot::Creating(mut creation)) => {
                creation.closer = Some((reply, reason));
                self.orphans.insert(creation.id, (key, creation));
            }
        }
    }

    /// Sends every pooled connection a close and returns the receivers that resolve when each
    /// is done. The pool is empty afterwards; the supervisor does not wait.
    fn close_every_pooled(
        &mut self,
        reason: CloseReason,
    ) -> Vec<tokio::sync::oneshot::Receiver<()>> {
        let keys: Vec<ConnectionKey> = self.pool.keys().cloned().collect();
        keys.into_iter()
            .map(|key| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.close(key, tx.into(), reason);
                rx
            })
            .collect()
    }

    fn close_all(&mut self, reply: RpcReplyPort<Result<(), Error>>) {
        let pending = self.close_every_pooled(CloseReason::CloseAll);
        let bound = self.longest_close_wait();
        tokio::spawn(async move {
            let result = match tokio::time::timeout(bound, join_all(pending)).await {
                Ok(_) => Ok(()),
                Err(_) => Err(Error::Timeout {
                    operation: "close_all_connections",
                    target: "supervisor".into(),
                    after: bound,
                }),
            };
            let _ = reply.send(result);
        });
    }

    fn retry(&mut self, key: ConnectionKey, reply: RpcReplyPort<Result<(), Error>>) {
        match self.pool.get(&key) {
            Some(Slot::Ready(pooled)) => {
                let _ = pooled
                    .handle
                    .actor()
                    .cast(ConnectionMessage::Retry { reply });
            }
            Some(Slot::Creating(_)) => {
                let _ = reply.send(Ok(()));
            }
            Some(Slot::Quarantined(quarantine)) => {
                let lineage = quarantine.lineage;
                self.take_slot(&key);
                self.restarts.remove(&key);
                self.start_creation(key, lineage, Vec::new(), None);
                let _ = reply.send(Ok(()));
            }
            None => {
                let _ = reply.send(Err(Error::Closed { key }));
            }
        }
    }

    fn status(&self, key: &ConnectionKey) -> Option<ConnectionStatus> {
        Some(match self.pool.get(key)? {
            Slot::Ready(pooled) => pooled.handle.status(),
            Slot::Creating(_) => ConnectionStatus::new(ConnectionState::Created),
            Slot::Quarantined(quarantine) => ConnectionStatus {
                state: ConnectionState::Quarantined,
                attempts: 0,
                last_error: Some(FailureInfo {
                    kind: crate::FailureKind::Unknown,
                    message: quarantine.reason.clone(),
                }),
                next_attempt_at: Some(quarantine.until_wall),
                waiting_requests: 0,
            },
        })
    }

    fn shutdown(&mut self, reply: RpcReplyPort<()>) {
        let me = self.myself.clone();
        if self.shutting_down {
            // A second shutdown waits for the first by waiting for the supervisor to exit.
            tokio::spawn(async move {
                me.wait(None).await.ok();
                let _ = reply.send(());
            });
            return;
        }
        self.shutting_down = true;
        let pending = self.close_every_pooled(CloseReason::Shutdown);
        let bound = self.longest_close_wait();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(bound, join_all(pending)).await;
            // Connections closed earlier by close_connection may still be finishing: give them
            // the same bound, then kill whatever is stuck so nothing outlives the supervisor.
            me.stop_children_and_wait(Some("shutdown".into()), Some(bound))
                .await;
            for child in me.get_children() {
                warn!(actor = %child.get_id(), "connection actor did not stop in time; killed");
                child.kill();
            }
            // drain, not stop: reports already queued (closes to count, creations to close)
            // are still handled; new requests are refused because shutting_down is set.
            let _ = me.drain_and_wait(Some(bound)).await;
            let _ = reply.send(());
        });
    }

    async fn apply_report(&mut self, report: ReportKind) {
        match report {
            ReportKind::FactoryDone {
                creation,
                key,
                result,
            } => self.finish_creation(creation, key, result).await,
            ReportKind::Opened {
                key,
                params,
                reconnect,
            } => {
                let counters = self.counters.entry(key.plugin_name.clone()).or_default();
                counters.open_calls += 1;
                if reconnect {
                    counters.reconnects += 1;
                }
                if let Some(Slot::Ready(pooled)) = self.pool.get_mut(&key) {
                    pooled.reopen_with = params;
                }
            }
            ReportKind::OpenFailed { plugin_name } => {
                self.counters
                    .entry(plugin_name)
                    .or_default()
                    .failed_open_calls += 1;
            }
            ReportKind::Lost { plugin_name } => {
                self.counters.entry(plugin_name).or_default().losses += 1;
            }
            ReportKind::Closed { key, actor, reason } => {
                self.counters
                    .entry(key.plugin_name.clone())
                    .or_default()
                    .close_calls += 1;
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
                    self.close(key, reply.into(), reason);
                }
            }
        }
    }

    async fn finish_creation(
        &mut self,
        id: u64,
        key: ConnectionKey,
        result: Result<Option<Box<dyn Connection>>, String>,
    ) {
        let current = matches!(self.pool.get(&key), Some(Slot::Creating(c)) if c.id == id);
        let creation = if current {
            match self.take_slot(&key) {
                Some(Slot::Creating(creation)) => creation,
                _ => return,
            }
        } else {
            match self.orphans.remove(&id) {
                Some((_, creation)) => creation,
                None => return,
            }
        };
        let Creation {
            lineage,
            waiters,
            closer,
            reopen_with,
            ..
        } = creation;
        let connection = match result {
            Ok(Some(connection)) => connection,
            Ok(None) => {
                debug!(%key, "no plugin for this key");
                answer_all(waiters, || Ok(None));
                drop(closer);
                return;
            }
            Err(message) => {
                error!(%key, %message, "connection factory panicked");
                answer_all(waiters, || {
                    Err(Error::FactoryPanicked {
                        key: key.clone(),
                        message: message.clone(),
                    })
                });
                drop(closer);
                return;
            }
        };
        self.counters
            .entry(key.plugin_name.clone())
            .or_default()
            .create_calls += 1;
        self.events.emit(&key, EventKind::Created);
        let policy = self.config.policy_for(&key.plugin_name).clone();
        let timeouts = policy.timeouts;
        let (published_tx, published_rx) = watch::channel(Published::new());
        let activity = Arc::new(Activity::new(self.epoch));
        let args = ConnectionArgs {
            key: key.clone(),
            connection,
            supervisor: self.myself.clone(),
            policy,
            open_slots: self.open_slots.clone(),
            events: self.events.clone(),
            published: published_tx,
            activity: activity.clone(),
            reopen_with: reopen_with.clone(),
        };
        let spawned =
            Actor::spawn_linked(None, ConnectionActor, args, self.myself.get_cell()).await;
        let actor = match spawned {
            Ok((actor, _join)) => actor,
            Err(spawn_error) => {
                // Only happens when the supervisor itself is stopping; the connection (never
                // opened) went down with the failed spawn.
                error!(%key, %spawn_error, "could not start a connection actor");
                answer_all(waiters, || {
                    Err(Error::Spawn(format!(
                        "connection actor for {key}: {spawn_error}"
                    )))
                });
                return;
            }
        };
        let handle = ConnectionHandle::new(
            key.clone(),
            actor,
            lineage,
            self.myself.clone(),
            timeouts,
            published_rx,
        );
        for waiter in waiters {
            waiter.serve(&handle);
        }
        self.children.insert(handle.actor().get_id(), key.clone());
        match closer {
            Some((closer, reason)) => {
                let _ = handle.actor().cast(ConnectionMessage::Close {
                    reason,
                    reply: Some(closer),
                });
            }
            None => {
                self.insert_slot(
                    key,
                    Slot::Ready(Pooled {
                        handle,
                        reopen_with,
                        activity,
                    }),
                );
            }
        }
    }

    /// A connection actor failed. A pooled one is restarted within the restart intensity, or
    /// its key quarantined; one that was already being closed is just counted.
    fn connection_failed(&mut self, actor: ActorId, reason: String) {
        let Some(key) = self.children.remove(&actor) else {
            return;
        };
        self.counters
            .entry(key.plugin_name.clone())
            .or_default()
            .crashes += 1;
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
            self.events.emit(
                &key,
                EventKind::Quarantined {
                    duration: policy.quarantine,
                    reason: reason.clone(),
                },
            );
            self.counters
                .entry(key.plugin_name.clone())
                .or_default()
                .quarantines += 1;
            self.insert_slot(
                key,
                Slot::Quarantined(Quarantine {
                    until: now + policy.quarantine,
                    until_wall: SystemTime::now() + policy.quarantine,
                    reason,
                    lineage,
                }),
            );
            return;
        }
        warn!(%key, %reason, restarts, "connection actor failed; restarting it");
        self.counters
            .entry(key.plugin_name.clone())
            .or_default()
            .restarts += 1;
        self.events
            .emit(&key, EventKind::Restarted { restarts, reason });
        self.start_creation(key, lineage, Vec::new(), pooled.reopen_with);
    }

    /// Whether `actor` is the one serving `key` in the pool right now.
    fn is_pooled(&self, key: &ConnectionKey, actor: ActorId) -> bool {
        matches!(
            self.pool.get(key),
            Some(Slot::Ready(pooled)) if pooled.handle.actor().get_id() == actor
        )
    }

    /// Removes `key`'s pool entry if `actor` still serves it (a connection closed or stopped
    /// by a direct message, not through the supervisor).
    fn unpool(&mut self, key: &ConnectionKey, actor: ActorId) {
        if self.is_pooled(key, actor) {
            self.take_slot(key);
        }
    }

    fn insert_slot(&mut self, key: ConnectionKey, slot: Slot) {
        if slot.holds_a_connection() {
            self.pooled += 1;
            *self
                .pooled_per_plugin
                .entry(key.plugin_name.clone())
                .or_default() += 1;
        }
        self.pool.insert(key, slot);
    }

    fn take_slot(&mut self, key: &ConnectionKey) -> Option<Slot> {
        let slot = self.pool.remove(key)?;
        if slot.holds_a_connection() {
            self.pooled -= 1;
            if let Some(count) = self.pooled_per_plugin.get_mut(&key.plugin_name) {
                *count -= 1;
            }
        }
        Some(slot)
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The longest a close-all or shutdown may wait for its closes: the slowest plugin's.
    fn longest_close_wait(&self) -> std::time::Duration {
        self.config
            .plugin_policies
            .values()
            .chain(std::iter::once(&self.config.default_policy))
            .map(|policy| policy.timeouts.close_wait())
            .max()
            .unwrap_or_default()
    }
}

fn quarantined(key: &ConnectionKey, quarantine: &Quarantine, now: Instant) -> Error {
    Error::Quarantined {
        key: key.clone(),
        remaining: quarantine.until.saturating_duration_since(now),
        reason: quarantine.reason.clone(),
    }
}

fn answer_all(waiters: Vec<Waiter>, answer: impl Fn() -> GetOrCreateReply) {
    for waiter in waiters {
        waiter.answer(answer());
    }
}

/// Runs the factory off the supervisor's task, so a slow factory holds up only its own key,
/// and a panicking one only its own callers.
fn spawn_factory_task(
    supervisor: ActorRef<SupervisorMessage>,
    factory: Arc<ConnectionFactory>,
    creation: u64,
    key: ConnectionKey,
    close_timeout: std::time::Duration,
) {
    tokio::spawn(async move {
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| factory(&key)))
            .map_err(|payload| panic_message(payload.as_ref()));
        let report = ReportKind::FactoryDone {
            creation,
            key,
            result,
        };
        if let Err(ractor::MessagingErr::SendErr(SupervisorMessage::Report(Report(
            ReportKind::FactoryDone {
                key,
                result: Ok(Some(mut connection)),
                ..
            },
        )))) = supervisor.cast(SupervisorMessage::Report(Report(report)))
        {
            // The supervisor stopped while the factory ran: nobody else will close this one.
            warn!(%key, "supervisor gone before the connection was pooled; closing it");
            let _ = tokio::time::timeout(close_timeout, connection.close()).await;
        }
    });
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
