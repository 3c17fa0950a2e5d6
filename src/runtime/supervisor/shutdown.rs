//! Closing: one key, every key, and the whole supervisor. The supervisor sends the closes and
//! hands the waiting to a short-lived task, so it never waits for a plugin itself.

use ractor::RpcReplyPort;
use tracing::warn;

use crate::connection::ConnectionKey;
use crate::error::{Error, Operation, Stage};
use crate::events::CloseReason;
use crate::runtime::internal::{Tick, TickKind};
use crate::runtime::messages::ConnectionMessage;

use super::SupervisorState;
use super::slots::{Queued, Slot};

impl SupervisorState {
    pub(super) fn close(
        &mut self,
        key: ConnectionKey,
        reply: RpcReplyPort<()>,
        reason: CloseReason,
    ) {
        if !self.shutting_down
            && let Some(replacement) = self.pool.get_mut(&key).and_then(Slot::replacing)
        {
            // Serialised with the replacement, as upstream's lifecycle lock does: the close
            // runs once it ends, and closes what it leaves.
            replacement.queued.push(Queued::Close(reply, reason));
            return;
        }
        self.restarts.remove(&key);
        if let Some(slot) = self.take_slot(&key) {
            self.close_slot(key, slot, reply, reason);
        } else {
            let _ = reply.send(());
        }
    }

    /// Closes what `slot`, already out of the pool and uncounted, holds for `key`.
    fn close_slot(
        &mut self,
        key: ConnectionKey,
        slot: Slot,
        reply: RpcReplyPort<()>,
        reason: CloseReason,
    ) {
        match slot {
            Slot::Replacing(replacement) => self.abandon_replacement(replacement, reply, reason),
            Slot::Quarantined(_) => {
                let _ = reply.send(());
            }
            Slot::Ready(pooled) => {
                // If the actor is already gone the reply port is dropped with the message and
                // the caller learns the connection is gone, which is what it asked for.
                let close = TickKind::Close { reason, reply };
                let _ = pooled
                    .handle
                    .actor()
                    .cast(ConnectionMessage::Internal(Tick(close)));
            }
            Slot::Creating(mut creation) => {
                creation.closer = Some((reply, reason));
                self.orphans.insert(creation.id, (key, creation));
            }
        }
    }

    /// Sends every pooled connection a close and returns the receivers that resolve when each
    /// is done. The pool is empty afterwards; the supervisor does not wait.
    pub(super) fn close_every_pooled(
        &mut self,
        reason: CloseReason,
    ) -> Vec<tokio::sync::oneshot::Receiver<()>> {
        // The pool is taken whole rather than closed key by key, which cloned every key (two
        // strings each) and looked each up again: at 100,000 keys that churn was measurable.
        let pool = std::mem::take(&mut self.pool);
        let mut pending = Vec::with_capacity(pool.len());
        for (key, mut slot) in pool {
            let (tx, rx) = tokio::sync::oneshot::channel();
            pending.push(rx);
            if !self.shutting_down
                && let Some(replacement) = slot.replacing()
            {
                // As in `close`: queued behind the replacement, which stays pooled.
                replacement.queued.push(Queued::Close(tx.into(), reason));
                self.pool.insert(key, slot);
                continue;
            }
            self.restarts.remove(&key);
            self.uncount(&key, &slot);
            self.close_slot(key, slot, tx.into(), reason);
        }
        pending
    }

    pub(super) fn close_all(&mut self, reply: RpcReplyPort<Result<(), Error>>) {
        let pending = self.close_every_pooled(CloseReason::CloseAll);
        let bound = self.longest_close_wait();
        tokio::spawn(async move {
            let result = match tokio::time::timeout(bound, all_done(pending)).await {
                Ok(_) => Ok(()),
                Err(_) => Err(Error::Timeout {
                    operation: Operation::CloseAllConnections,
                    key: None,
                    stage: Stage::Answer,
                    after: bound,
                }),
            };
            let _ = reply.send(result);
        });
    }

    pub(super) fn shutdown(&mut self, reply: RpcReplyPort<()>) {
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
        let children = self.myself.get_children();
        let pending = self.close_every_pooled(CloseReason::Shutdown);
        let bound = self.longest_close_wait();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(bound, all_done(pending)).await;
            // Connections closed earlier by close_connection may still be finishing: give them
            // the same bound, then kill whatever is stuck so nothing outlives the supervisor.
            me.stop_children_and_wait(Some("shutdown".into()), Some(bound))
                .await;
            for child in me.get_children() {
                warn!(actor = %child.get_id(), "connection actor did not stop in time; killed");
                child.kill();
            }
            // A child that had already unlinked itself on its way out is not in the tree any
            // more, yet may still be finishing: wait for every one there was, so that none is
            // running when the shutdown is answered.
            let _ = tokio::time::timeout(bound, async {
                for child in &children {
                    let _ = child.wait(None).await;
                }
            })
            .await;
            // drain, not stop: reports already queued (closes to count, creations to close)
            // are still handled; new requests are refused because shutting_down is set.
            let _ = me.drain_and_wait(Some(bound)).await;
            let _ = reply.send(());
        });
    }

    /// The longest a close-all or shutdown may wait for its closes: the slowest plugin's.
    pub(super) fn longest_close_wait(&self) -> std::time::Duration {
        self.config
            .plugin_policies
            .values()
            .chain(std::iter::once(&self.config.default_policy))
            .map(|policy| policy.timeouts.close_wait())
            .max()
            .unwrap_or_default()
    }
}

/// Waits for every close in `pending` to be answered. One after another, not with `join_all`:
/// the closes run in parallel anyway (each in its own actor), so waiting in turn costs at most
/// one wake-up per close, where `join_all`'s `FuturesUnordered` spent seconds on wake-ups and
/// re-polls at 100,000 closes.
pub(super) async fn all_done(pending: Vec<tokio::sync::oneshot::Receiver<()>>) {
    for done in pending {
        let _ = done.await;
    }
}
