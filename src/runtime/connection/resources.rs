//! What a connection actor owns that must not outlive it: its timers and its end of the
//! published route. Both clean up when dropped, however the actor ends.

use ractor::ActorCell;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::shared::{DirectRoute, Published};
use crate::status::ConnectionStatus;

/// The actor's end of the [`Published`] channel, which every actor of the connection's lineage
/// shares. Publishes the actor itself on creation, and withdraws it and its route when dropped,
/// so neither outlives the actor, however it ends (and a successor already up is left alone).
pub(super) struct Publisher {
    pub(super) route: Option<DirectRoute>,
    pub(super) tx: watch::Sender<Published>,
    me: ActorCell,
}

impl Publisher {
    pub(super) fn new(tx: watch::Sender<Published>, me: ActorCell) -> Self {
        tx.send_modify(|published| {
            published.actor = Some(me.clone());
            published.route = None;
        });
        Self {
            route: None,
            tx,
            me,
        }
    }

    pub(super) fn status(&self, status: &ConnectionStatus) {
        self.tx
            .send_modify(|published| published.status = status.clone());
    }

    pub(super) fn route(&mut self, route: Option<DirectRoute>) {
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
        if let Some(old) = self.route.take() {
            old.withdraw();
        }
        let me = self.me.get_id();
        self.tx.send_if_modified(|published| {
            let mine = published
                .actor
                .as_ref()
                .is_some_and(|actor| actor.get_id() == me);
            if mine {
                published.actor = None;
                published.route = None;
            }
            mine
        });
    }
}

/// The actor's timers; aborted when the state is dropped, however the actor ends, so no timer
/// outlives its connection.
#[derive(Default)]
pub(super) struct Timers {
    pub(super) reconnect: Option<JoinHandle<()>>,
    pub(super) health: Option<JoinHandle<()>>,
    pub(super) idle: Option<JoinHandle<()>>,
    pub(super) lifetime: Option<JoinHandle<()>>,
    pub(super) parked: Option<(Instant, JoinHandle<()>)>,
}

impl Timers {
    pub(super) fn cancel(slot: &mut Option<JoinHandle<()>>) {
        if let Some(timer) = slot.take() {
            timer.abort();
        }
    }

    pub(super) fn cancel_all(&mut self) {
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
