//! `replace_connection`: the key's instance closed, a new one made by the factory and opened,
//! atomically for the key. Requests for the key that arrive meanwhile queue in its slot and
//! are handled, in order, once the replacement ends, so an open that raced it gets the new
//! instance. The supervisor waits for none of it: the old instance's close and the new one's
//! open are waited for by short-lived tasks that report back, and the factory runs on a task
//! of its own as for any creation.
//!
//! The new instance is published on the old one's lineage channel, so handles to the old
//! instance follow to it; the old actor leaves requests it is sent after its close unanswered
//! (never taken), so the handles send them again to the new one.

use std::sync::Arc;

use ractor::{ActorRef, RpcReplyPort};
use tokio::sync::{oneshot, watch};
use tracing::{debug, warn};

use crate::connection::{Connection, ConnectionKey, ResolvedConnectionParams};
use crate::deadline::Deadline;
use crate::error::{Error, Operation, Stage};
use crate::events::CloseReason;
use crate::runtime::internal::{ReplaceStep, Report, ReportKind};
use crate::runtime::messages::{ConnectionMessage, GetOrCreateReply, SupervisorMessage};
use crate::shared::Published;

use super::SupervisorState;
use super::slots::{Phase, Pooled, Queued, Replacement, Slot};

impl SupervisorState {
    pub(super) fn replace(
        &mut self,
        key: ConnectionKey,
        params: ResolvedConnectionParams,
        reply: RpcReplyPort<GetOrCreateReply>,
    ) {
        if self.shutting_down {
            let _ = reply.send(Err(Error::ShutDown));
            return;
        }
        if let Some(replacement) = self.pool.get_mut(&key).and_then(Slot::replacing) {
            replacement.queued.push(Queued::Replace(params, reply));
            return;
        }
        if self.config.factory.is_none() {
            let _ = reply.send(Err(Error::FactoryNotSet));
            return;
        }
        if !self.pool.contains_key(&key)
            && let Err(error) = self.make_room(&key)
        {
            let _ = reply.send(Err(error));
            return;
        }
        self.restarts.remove(&key);
        let id = self.fresh_id();
        let mut queued = Vec::new();
        let (lineage, published, closing) = match self.take_slot(&key) {
            Some(Slot::Ready(pooled)) => {
                let (tx, rx) = oneshot::channel();
                let close = ConnectionMessage::Close {
                    reason: CloseReason::Replaced,
                    reply: Some(tx.into()),
                };
                // An actor already gone drops the port: the wait below ends at once.
                let _ = pooled.handle.actor().cast(close);
                (pooled.handle.lineage(), pooled.published, Some(rx))
            }
            Some(Slot::Creating(mut creation)) => {
                // Its waiters asked for the key's connection: they get the new instance. What
                // the factory makes for the old creation is closed as soon as it lands.
                queued.extend(creation.waiters.drain(..).map(Queued::Get));
                let published = creation.published.take().unwrap_or_else(fresh_channel);
                let (tx, rx) = oneshot::channel();
                creation.closer = Some((tx.into(), CloseReason::Replaced));
                let lineage = creation.lineage;
                self.orphans.insert(creation.id, (key.clone(), creation));
                (lineage, published, Some(rx))
            }
            Some(Slot::Quarantined(quarantine)) => (quarantine.lineage, quarantine.published, None),
            Some(Slot::Replacing(_)) | None => (self.fresh_id(), fresh_channel(), None),
        };
        self.insert_slot(
            key.clone(),
            Slot::Replacing(Box::new(Replacement {
                id,
                lineage,
                published,
                params,
                reply,
                phase: Phase::ClosingOld,
                queued,
            })),
        );
        match closing {
            Some(closed) => {
                // A close outlasting its bound goes on in its actor, which closes exactly
                // once; the replacement does not wait for it any longer.
                let bound = self
                    .config
                    .policy_for(&key.plugin_name)
                    .timeouts
                    .close_wait();
                let supervisor = self.myself.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(bound, closed).await;
                    report(&supervisor, id, key, ReplaceStep::OldClosed);
                });
            }
            None => self.replacement_create(id, &key),
        }
    }

    /// Whether `id` is the replacement of `key` waiting for its factory.
    pub(super) fn is_replacement(&self, key: &ConnectionKey, id: u64) -> bool {
        matches!(
            self.pool.get(key),
            Some(Slot::Replacing(r)) if r.id == id && matches!(r.phase, Phase::Creating)
        )
    }

    fn replacement_create(&mut self, id: u64, key: &ConnectionKey) {
        let started = self.run_factory(id, &Arc::new(key.clone()));
        let Some(replacement) = self.pool.get_mut(key).and_then(Slot::replacing) else {
            self.deadlines.end(id);
            return;
        };
        if started {
            replacement.phase = Phase::Creating;
        } else {
            self.end_replacement(key, Err(Error::FactoryNotSet));
        }
    }

    /// The factory of replacement `id` returned: a new instance gets its actor, on the old
    /// lineage's channel, and is opened; anything else ends the replacement, the key empty.
    pub(super) async fn replacement_made(
        &mut self,
        id: u64,
        key: ConnectionKey,
        result: Result<Option<Box<dyn Connection>>, String>,
    ) {
        let Some(Slot::Replacing(mut replacement)) = self.take_slot(&key) else {
            return;
        };
        let connection = match result {
            Ok(Some(connection)) => connection,
            Ok(None) => {
                debug!(%key, "no plugin for this key; the replaced connection is not replaced");
                return self.finish(key, replacement, Ok(None));
            }
            Err(message) => {
                let error = Error::FactoryPanicked {
                    key: key.clone(),
                    message,
                };
                return self.finish(key, replacement, Err(error));
            }
        };
        if self.shutting_down {
            self.close_unpooled(key.clone(), connection);
            return self.finish(key, replacement, Err(Error::ShutDown));
        }
        let spawned = self
            .spawn_connection(
                &Arc::new(key.clone()),
                connection,
                replacement.lineage,
                None,
                &replacement.published,
            )
            .await;
        let (handle, activity) = match spawned {
            Ok(spawned) => spawned,
            Err(error) => return self.finish(key, replacement, Err(error)),
        };
        let timeouts = self.config.policy_for(&key.plugin_name).timeouts;
        let (tx, rx) = oneshot::channel();
        let open = ConnectionMessage::Open {
            params: replacement.params.clone(),
            deadline: Some(Deadline::after(timeouts.open)),
            reply: tx.into(),
        };
        // Refused, the port is dropped and the wait below ends with `Closed`.
        let _ = handle.actor().send_message(open);
        {
            let (supervisor, key) = (self.myself.clone(), key.clone());
            // The actor answers within the open's deadline; the request timeout is the grace
            // for its answer, as for any call to it.
            let bound = timeouts.open.saturating_add(timeouts.request);
            tokio::spawn(async move {
                let result = match tokio::time::timeout(bound, rx).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err(Error::Closed { key: key.clone() }),
                    Err(_) => Err(Error::Timeout {
                        operation: Operation::ReplaceConnection,
                        key: Some(key.clone()),
                        stage: Stage::Answer,
                        after: bound,
                    }),
                };
                report(&supervisor, id, key, ReplaceStep::Opened(result));
            });
        }
        replacement.phase = Phase::Opening(Box::new(Pooled {
            handle,
            reopen_with: Some(replacement.params.clone()),
            activity,
            published: replacement.published.clone(),
        }));
        self.insert_slot(key, Slot::Replacing(replacement));
    }

    /// The factory of replacement `id` outlived the open timeout: what it makes later is
    /// closed (`finish_creation` finds no creation for it).
    pub(super) fn replacement_expired(&mut self, id: u64, key: ConnectionKey) {
        if !self.is_replacement(&key, id) {
            return;
        }
        let after = self.config.policy_for(&key.plugin_name).timeouts.open;
        warn!(%key, ?after, "the connection factory did not return in time for a replacement");
        let error = Error::Timeout {
            operation: Operation::ReplaceConnection,
            key: Some(key.clone()),
            stage: Stage::Factory,
            after,
        };
        self.end_replacement(&key, Err(error));
    }

    pub(super) async fn replacement_step(
        &mut self,
        id: u64,
        key: ConnectionKey,
        step: ReplaceStep,
    ) {
        let phase = match self.pool.get(&key) {
            Some(Slot::Replacing(r)) if r.id == id => &r.phase,
            _ => return,
        };
        match (step, phase) {
            (ReplaceStep::OldClosed, Phase::ClosingOld) => self.replacement_create(id, &key),
            (ReplaceStep::Opened(result), Phase::Opening(_)) => {
                let Some(Slot::Replacing(mut replacement)) = self.take_slot(&key) else {
                    return;
                };
                let Phase::Opening(pooled) =
                    std::mem::replace(&mut replacement.phase, Phase::ClosingOld)
                else {
                    return;
                };
                match result {
                    Ok(()) => {
                        let handle = pooled.handle.clone();
                        self.insert_slot(key.clone(), Slot::Ready(*pooled));
                        self.finish(key, replacement, Ok(Some(handle)));
                    }
                    Err(error) => {
                        // Leaves the key empty, as upstream does, but closes the instance
                        // (upstream drops it unclosed): every instance made is closed once.
                        let _ = pooled.handle.actor().cast(ConnectionMessage::Close {
                            reason: CloseReason::Requested,
                            reply: None,
                        });
                        self.finish(key, replacement, Err(error));
                    }
                }
            }
            _ => {}
        }
    }

    /// A shutdown reached a key being replaced: it does not wait for the replacement. Its
    /// caller and everything queued behind it get `ShutDown` (queued closes are done); a new
    /// instance already running is closed with `reply`; an old one still closing, or a factory
    /// still running, finish on their own (an instance made for nobody is closed when it
    /// lands, see `finish_creation`).
    pub(super) fn abandon_replacement(
        &mut self,
        replacement: Box<Replacement>,
        reply: RpcReplyPort<()>,
        reason: CloseReason,
    ) {
        let Replacement {
            id,
            reply: caller,
            queued,
            phase,
            ..
        } = *replacement;
        let _ = caller.send(Err(Error::ShutDown));
        for request in queued {
            match request {
                Queued::Get(waiter) => waiter.answer(Err(Error::ShutDown)),
                Queued::Replace(_, reply) => {
                    let _ = reply.send(Err(Error::ShutDown));
                }
                Queued::Close(reply, _) => {
                    let _ = reply.send(());
                }
            }
        }
        match phase {
            Phase::Opening(pooled) => {
                let _ = pooled.handle.actor().cast(ConnectionMessage::Close {
                    reason,
                    reply: Some(reply),
                });
            }
            Phase::Creating => {
                self.deadlines.end(id);
                let _ = reply.send(());
            }
            Phase::ClosingOld => {
                let _ = reply.send(());
            }
        }
    }

    /// Ends the replacement under way for `key` with `answer`, leaving the key empty.
    fn end_replacement(&mut self, key: &ConnectionKey, answer: GetOrCreateReply) {
        if let Some(Slot::Replacing(replacement)) = self.take_slot(key) {
            if let Phase::Creating = replacement.phase {
                self.deadlines.end(replacement.id);
            }
            self.finish(key.clone(), replacement, answer);
        }
    }

    /// Answers the replacement's caller, then handles what queued behind it, in order.
    fn finish(
        &mut self,
        key: ConnectionKey,
        replacement: Box<Replacement>,
        answer: GetOrCreateReply,
    ) {
        let Replacement { reply, queued, .. } = *replacement;
        let _ = reply.send(answer);
        for request in queued {
            match request {
                Queued::Get(waiter) => self.get_or_create(key.clone(), waiter),
                Queued::Replace(params, reply) => self.replace(key.clone(), params, reply),
                Queued::Close(reply, reason) => self.close(key.clone(), reply, reason),
            }
        }
    }
}

fn fresh_channel() -> watch::Sender<Published> {
    watch::channel(Published::new()).0
}

fn report(
    supervisor: &ActorRef<SupervisorMessage>,
    id: u64,
    key: ConnectionKey,
    step: ReplaceStep,
) {
    let step = ReportKind::ReplaceProgress {
        replacement: id,
        key,
        step,
    };
    // Gone only when the supervisor stopped, which closed or killed every connection.
    let _ = supervisor.cast(SupervisorMessage::Report(Report(step)));
}
