//! What a connection actor owns that must not outlive it: its timers and its end of the
//! published route. Both clean up when dropped, however the actor ends.

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::shared::{DirectRoute, Published};
use crate::status::ConnectionStatus;

/// The actor's end of the [`Published`] channel. Withdraws the route when dropped, so a route
/// never outlives its actor, however the actor ends.
pub(super) struct Publisher {
    pub(super) route: Option<DirectRoute>,
    pub(super) tx: watch::Sender<Published>,
}

impl Publisher {
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
        self.route(None);
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
