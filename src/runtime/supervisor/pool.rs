//! The pool: finding a key's connection, creating it through the factory (off the supervisor's
//! task, see `factories.rs`), handing it to every caller that waited for it, and the pool's
//! bookkeeping.

use std::sync::Arc;

use ractor::{Actor, ActorId, RpcReplyPort};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use crate::connection::{Connection, ConnectionKey, ResolvedConnectionParams};
use crate::error::{Error, Stage};
use crate::events::EventKind;
use crate::guard::guarded;
use crate::runtime::connection::{ConnectionActor, ConnectionArgs};
use crate::runtime::internal::{Tick, TickKind};
use crate::runtime::messages::{ConnectionHandle, ConnectionMessage};
use crate::shared::{Activity, Count, Published};

use super::SupervisorState;
use super::factories::FactoryJob;
use super::slots::{Creation, Pooled, Quarantine, Queued, Slot, Waiter, answer_all, quarantined};

impl SupervisorState {
    pub(super) fn get_or_create(&mut self, key: ConnectionKey, reply: Waiter) {
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
            Some(Slot::Replacing(replacement)) => {
                replacement.queued.push(Queued::Get(reply));
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
        self.start_creation(key, lineage, vec![reply], None, None);
    }

    pub(super) fn start_creation(
        &mut self,
        key: ConnectionKey,
        lineage: u64,
        waiters: Vec<Waiter>,
        reopen_with: Option<ResolvedConnectionParams>,
        published: Option<watch::Sender<Published>>,
    ) {
        let id = self.fresh_id();
        if !self.run_factory(id, &Arc::new(key.clone())) {
            answer_all(waiters, || Err(Error::FactoryNotSet));
            return;
        }
        self.insert_slot(
            key,
            Slot::Creating(Creation {
                id,
                lineage,
                waiters,
                closer: None,
                reopen_with,
                published,
            }),
        );
    }

    /// Starts creation `id` of `key`: the factory on a runner, which reports `FactoryDone`,
    /// and a deadline after the open timeout (`deadlines.rs`). `false` when no factory is set.
    pub(super) fn run_factory(&mut self, id: u64, key: &Arc<ConnectionKey>) -> bool {
        let Some(factory) = self.config.factory.clone() else {
            return false;
        };
        let timeouts = self.config.policy_for(&key.plugin_name).timeouts;
        self.factories.submit(FactoryJob {
            supervisor: self.myself.clone(),
            factory,
            creation: id,
            key: key.clone(),
            close_timeout: timeouts.close,
        });
        self.deadlines
            .start(&self.myself, id, key.clone(), timeouts.open);
        true
    }

    pub(super) async fn finish_creation(
        &mut self,
        id: u64,
        shared_key: Arc<ConnectionKey>,
        result: Result<Option<Box<dyn Connection>>, String>,
    ) {
        let Some((key, creation)) = self.take_creation(id, &shared_key) else {
            // Its creation expired: nobody waits for this connection any more.
            if let Ok(Some(connection)) = result {
                self.close_unpooled(Arc::unwrap_or_clone(shared_key), connection);
            }
            return;
        };
        let Creation {
            lineage,
            waiters,
            closer,
            reopen_with,
            published,
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
        let published_tx = published.unwrap_or_else(|| watch::channel(Published::new()).0);
        let (handle, activity) = match self
            .spawn_connection(
                &shared_key,
                connection,
                lineage,
                reopen_with.clone(),
                &published_tx,
            )
            .await
        {
            Ok(spawned) => spawned,
            Err(error) => {
                answer_all(waiters, || Err(error.clone()));
                return;
            }
        };
        for waiter in waiters {
            waiter.serve(&handle);
        }
        match closer {
            Some((closer, reason)) => {
                // Never pooled: nothing for the actor to report back.
                let close = TickKind::Close {
                    reason,
                    reply: closer,
                };
                let _ = handle
                    .actor()
                    .cast(ConnectionMessage::Internal(Tick(close)));
            }
            None => {
                self.insert_slot(
                    key,
                    Slot::Ready(Pooled {
                        handle,
                        reopen_with,
                        activity,
                        published: published_tx,
                    }),
                );
            }
        }
    }

    /// Counts a connection the factory made and spawns its actor on the lineage's channel.
    pub(super) async fn spawn_connection(
        &mut self,
        key: &Arc<ConnectionKey>,
        connection: Box<dyn Connection>,
        lineage: u64,
        reopen_with: Option<ResolvedConnectionParams>,
        published: &watch::Sender<Published>,
    ) -> Result<(ConnectionHandle, Arc<Activity>), Error> {
        let counters = self.counters_for(&key.plugin_name);
        counters.count(Count::Created);
        self.events.emit(key, EventKind::Created);
        let policy = self.config.policy_for(&key.plugin_name).clone();
        let timeouts = policy.timeouts;
        let published_rx = published.subscribe();
        let activity = Arc::new(Activity::new(self.epoch));
        let args = ConnectionArgs {
            key: key.clone(),
            connection,
            supervisor: self.myself.clone(),
            policy,
            open_slots: self.open_slots.clone(),
            events: self.events.clone(),
            published: published.clone(),
            activity: activity.clone(),
            counters,
            reopen_with,
        };
        let spawned =
            Actor::spawn_linked(None, ConnectionActor, args, self.myself.get_cell()).await;
        let actor = match spawned {
            Ok((actor, _join)) => actor,
            Err(spawn_error) => {
                // Only happens when the supervisor itself is stopping; the connection (never
                // opened) went down with the failed spawn.
                error!(%key, %spawn_error, "could not start a connection actor");
                return Err(Error::Spawn {
                    key: Some(ConnectionKey::clone(key)),
                    message: spawn_error.to_string(),
                });
            }
        };
        self.children.insert(actor.get_id(), key.clone());
        let handle = ConnectionHandle::new(key.clone(), actor, lineage, timeouts, published_rx);
        Ok((handle, activity))
    }

    /// Takes creation `id` of `key` out of the pool, or out of the orphans if the key was
    /// closed while it ran, with the key it was held under; `None` once it has ended (finished
    /// or expired).
    fn take_creation(&mut self, id: u64, key: &ConnectionKey) -> Option<(ConnectionKey, Creation)> {
        let current = matches!(self.pool.get(key), Some(Slot::Creating(c)) if c.id == id);
        if current {
            match self.take_entry(key) {
                Some((key, Slot::Creating(creation))) => Some((key, creation)),
                _ => None,
            }
        } else {
            self.orphans.remove(&id)
        }
    }

    /// A creation whose factory did not return within the open timeout: its waiters get a
    /// timeout naming the factory, a close waiting on it is answered, and the key is free for a
    /// new creation. What the factory returns later is closed (`finish_creation`).
    pub(super) fn expire_creation(&mut self, id: u64, key: &ConnectionKey) {
        let Some((key, creation)) = self.take_creation(id, key) else {
            return;
        };
        let after = self.config.policy_for(&key.plugin_name).timeouts.open;
        warn!(%key, ?after, "the connection factory did not return in time");
        for waiter in creation.waiters {
            let operation = waiter.operation();
            waiter.answer(Err(Error::Timeout {
                operation,
                key: Some(key.clone()),
                stage: Stage::Factory,
                after,
            }));
        }
        if let Some((closer, _)) = creation.closer {
            let _ = closer.send(());
        }
    }

    /// Closes a connection the factory made for nobody (its creation expired), counting it
    /// as created and closed so the counters still balance.
    pub(super) fn close_unpooled(
        &mut self,
        key: ConnectionKey,
        mut connection: Box<dyn Connection>,
    ) {
        let counters = self.counters_for(&key.plugin_name);
        counters.count(Count::Created);
        let bound = self.config.policy_for(&key.plugin_name).timeouts.close;
        warn!(%key, "the factory returned after its creation expired; closing what it made");
        tokio::spawn(async move {
            let _ = guarded(bound, connection.close()).await;
            counters.count(Count::Closed);
        });
    }

    pub(super) fn retry(&mut self, key: ConnectionKey, reply: RpcReplyPort<Result<(), Error>>) {
        match self.pool.get(&key) {
            Some(Slot::Ready(pooled)) => {
                let _ = pooled
                    .handle
                    .actor()
                    .cast(ConnectionMessage::Retry { reply });
            }
            Some(Slot::Creating(_) | Slot::Replacing(_)) => {
                let _ = reply.send(Ok(()));
            }
            Some(Slot::Quarantined(_)) => {
                if let Some(Slot::Quarantined(quarantine)) = self.take_slot(&key) {
                    self.restarts.remove(&key);
                    let Quarantine {
                        lineage, published, ..
                    } = quarantine;
                    self.start_creation(key, lineage, Vec::new(), None, Some(published));
                }
                let _ = reply.send(Ok(()));
            }
            None => {
                let _ = reply.send(Err(Error::Closed { key }));
            }
        }
    }

    /// Whether `actor` is the one serving `key` in the pool right now.
    pub(super) fn is_pooled(&self, key: &ConnectionKey, actor: ActorId) -> bool {
        matches!(
            self.pool.get(key),
            Some(Slot::Ready(pooled)) if pooled.handle.actor().get_id() == actor
        )
    }

    /// Removes `key`'s pool entry if `actor` still serves it (a connection closed or stopped
    /// by a direct message, not through the supervisor).
    pub(super) fn unpool(&mut self, key: &ConnectionKey, actor: ActorId) {
        if self.is_pooled(key, actor) {
            self.take_slot(key);
        }
    }

    pub(super) fn insert_slot(&mut self, key: ConnectionKey, slot: Slot) {
        if slot.holds_a_connection() {
            self.pooled += 1;
            // Looked up before inserting: `entry` would clone the plugin name every time.
            match self.pooled_per_plugin.get_mut(&key.plugin_name) {
                Some(count) => *count += 1,
                None => {
                    self.pooled_per_plugin.insert(key.plugin_name.clone(), 1);
                }
            }
        }
        self.pool.insert(key, slot);
    }

    pub(super) fn take_slot(&mut self, key: &ConnectionKey) -> Option<Slot> {
        self.take_entry(key).map(|(_, slot)| slot)
    }

    /// Like `take_slot`, with the key the pool held it under, to be reused rather than cloned.
    pub(super) fn take_entry(&mut self, key: &ConnectionKey) -> Option<(ConnectionKey, Slot)> {
        let (key, slot) = self.pool.remove_entry(key)?;
        self.uncount(&key, &slot);
        Some((key, slot))
    }

    /// Takes `slot`, just removed from the pool, out of the counts the limits read.
    pub(super) fn uncount(&mut self, key: &ConnectionKey, slot: &Slot) {
        if slot.holds_a_connection() {
            self.pooled -= 1;
            if let Some(count) = self.pooled_per_plugin.get_mut(&key.plugin_name) {
                *count -= 1;
            }
        }
    }

    pub(super) fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}
