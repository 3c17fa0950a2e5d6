//! What happened to connections, as a stream of lifecycle events ([`ConnectionEvent`]) that
//! tests and operators wait on instead of sleeping: the bus the actors publish on, the
//! subscriber's [`EventStream`], and the forwarding task behind `subscribe_actor`.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};

use ractor::ActorRef;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::connection::ConnectionKey;
use crate::error::Error;
use crate::status::FailureInfo;

/// Why a connection was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// `close_connection`, or a direct `Close` message.
    Requested,
    /// `close_all_connections`.
    CloseAll,
    /// The supervisor is shutting down.
    Shutdown,
    /// Unused for longer than the idle timeout.
    Idle,
    /// Older than the maximum lifetime.
    Lifetime,
    /// Closed to make room under a connection limit.
    Evicted,
    /// The plugin panicked; the instance was closed before the actor failed.
    Crashed,
    /// `replace_connection`: a new instance takes this one's place, and its handles follow.
    Replaced,
}

/// What happened to a connection.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// The factory made the connection.
    Created,
    /// A requested open started.
    Opening,
    /// A requested open succeeded.
    Opened,
    /// An open or reconnect attempt failed.
    OpenFailed {
        /// The cause.
        failure: FailureInfo,
        /// Failed attempts in a row, this one included.
        attempt: u32,
    },
    /// An open connection went away.
    Lost {
        /// What noticed it (the plugin's report, a failed health check, a dead connection
        /// found before a command).
        reason: String,
    },
    /// A reconnect attempt is scheduled.
    Reconnecting {
        /// Which attempt (1 for the first after the loss).
        attempt: u32,
        /// The backoff before it.
        delay: Duration,
    },
    /// A reconnect succeeded.
    Reconnected {
        /// How many attempts it took.
        attempts: u32,
    },
    /// Reconnecting gave up: the connection stays `Failed` until opened, retried or closed.
    GaveUp {
        /// The last cause.
        failure: FailureInfo,
    },
    /// The connection's actor crashed and was restarted with a fresh instance.
    Restarted {
        /// Restarts of this key within the restart window, this one included.
        restarts: u32,
        /// Why the actor failed.
        reason: String,
    },
    /// The key crashed too often and refuses requests for a while.
    Quarantined {
        /// How long.
        duration: Duration,
        /// Why the last actor failed.
        reason: String,
    },
    /// The connection was closed.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

impl EventKind {
    /// The failure behind this event, if there is one.
    pub fn failure(&self) -> Option<&FailureInfo> {
        match self {
            Self::OpenFailed { failure, .. } | Self::GaveUp { failure } => Some(failure),
            _ => None,
        }
    }
}

/// One lifecycle event of one connection.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ConnectionEvent {
    /// The connection.
    pub key: ConnectionKey,
    /// What happened.
    pub kind: EventKind,
    /// When.
    pub at: SystemTime,
}

/// A subscription to a supervisor's lifecycle events, from
/// [`ConnectionManager::subscribe`](crate::ConnectionManager::subscribe).
///
/// Events of one key arrive in the order they happened. A subscriber that falls more than the
/// configured capacity behind skips the oldest events and is told how many it missed
/// ([`missed`](Self::missed)).
///
/// It is a [`futures::Stream`] of [`ConnectionEvent`]s that ends once the supervisor has shut
/// down and every event was read, so the stream combinators work on it; [`next`](Self::next)
/// and [`wait_for`](Self::wait_for) are there for the common cases without importing
/// `StreamExt`.
pub struct EventStream {
    inner: BroadcastStream<ConnectionEvent>,
    missed: u64,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("missed", &self.missed)
            .finish_non_exhaustive()
    }
}

impl Stream for EventStream {
    type Item = ConnectionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match ready!(self.inner.poll_next_unpin(cx)) {
                Some(Ok(event)) => return Poll::Ready(Some(event)),
                Some(Err(BroadcastStreamRecvError::Lagged(missed))) => self.missed += missed,
                None => return Poll::Ready(None),
            }
        }
    }
}

impl EventStream {
    pub(crate) fn new(receiver: broadcast::Receiver<ConnectionEvent>) -> Self {
        Self {
            inner: BroadcastStream::new(receiver),
            missed: 0,
        }
    }

    /// The next event; `None` once the supervisor has shut down and every event was read.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an event is taken from the stream only when this returns it.
    pub async fn next(&mut self) -> Option<ConnectionEvent> {
        StreamExt::next(self).await
    }

    /// Waits for the next event that matches `predicate`, skipping the others, for at most
    /// `timeout`. The error ([`Error::EventNotSeen`]) lists the last events seen, so a failing
    /// test says what happened instead.
    ///
    /// # Cancel safety
    ///
    /// Events skipped before the future is dropped stay skipped; the matching event is taken
    /// from the stream only when this returns it, so nothing else is lost.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut predicate: impl FnMut(&ConnectionEvent) -> bool,
    ) -> Result<ConnectionEvent, Error> {
        let mut seen: Vec<String> = Vec::new();
        let search = async {
            while let Some(event) = self.next().await {
                if predicate(&event) {
                    return Some(event);
                }
                if seen.len() == 8 {
                    seen.remove(0);
                }
                seen.push(format!("{} {:?}", event.key, event.kind));
            }
            None
        };
        match tokio::time::timeout(timeout, search).await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err(Error::ShutDown),
            Err(_) => Err(Error::EventNotSeen {
                after: timeout,
                last_seen: seen,
            }),
        }
    }

    /// Waits for `key`'s next event of the kind `matches` accepts. Cancel safety as
    /// [`wait_for`](Self::wait_for).
    pub async fn wait_for_key(
        &mut self,
        key: &ConnectionKey,
        timeout: Duration,
        mut matches: impl FnMut(&EventKind) -> bool,
    ) -> Result<ConnectionEvent, Error> {
        self.wait_for(timeout, |event| &event.key == key && matches(&event.kind))
            .await
    }

    /// How many events this subscriber missed by falling behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

/// Where the supervisor and its connection actors publish events. Cloned into each actor;
/// sending with no subscriber costs next to nothing.
#[derive(Clone, Debug)]
pub(crate) struct EventBus {
    sender: broadcast::Sender<ConnectionEvent>,
}

impl EventBus {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity).0,
        }
    }

    pub(crate) fn emit(&self, key: &ConnectionKey, kind: EventKind) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        let _ = self.sender.send(ConnectionEvent {
            key: key.clone(),
            kind,
            at: SystemTime::now(),
        });
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.sender.subscribe()
    }
}

/// What an actor subscribed with
/// [`ConnectionManager::subscribe_actor`](crate::ConnectionManager::subscribe_actor) is told,
/// in order.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum EventDelivery {
    /// The next event.
    Event(ConnectionEvent),
    /// The actor fell this many events behind the supervisor's event buffer
    /// ([`SupervisorConfig::event_capacity`](crate::SupervisorConfig)) and they are lost; what
    /// follows is current again.
    Lagged(u64),
    /// The supervisor stopped and every event it emitted has been delivered: nothing follows.
    /// An actor that stops here has seen everything, which stopping on the supervisor's
    /// `ActorTerminated` does not promise (ractor delivers that ahead of queued messages).
    Ended,
}

// An actor may take `EventDelivery` as its own message type; without ractor's blanket impl
// (its `cluster` feature) only this crate can give it the impl.
#[cfg(feature = "cluster")]
impl ractor::Message for EventDelivery {}

/// Forwards events to a ractor actor until the supervisor shuts down or the actor stops.
pub(crate) fn forward_to_actor<M: ractor::Message>(
    mut receiver: broadcast::Receiver<ConnectionEvent>,
    actor: ActorRef<M>,
    convert: impl Fn(EventDelivery) -> Option<M> + Send + 'static,
) {
    tokio::spawn(async move {
        // Ends with the actor, not only at its next event: a subscriber that stopped while
        // nothing happened must not keep a task (and a receiver) alive until the supervisor
        // stops.
        let cell = actor.get_cell();
        let stopped = cell.wait(None);
        tokio::pin!(stopped);
        loop {
            let received = tokio::select! {
                received = receiver.recv() => received,
                _ = &mut stopped => return,
            };
            let (delivery, last) = match received {
                Ok(event) => (EventDelivery::Event(event), false),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, actor = %actor.get_id(), "event subscriber fell behind");
                    (EventDelivery::Lagged(missed), false)
                }
                Err(broadcast::error::RecvError::Closed) => (EventDelivery::Ended, true),
            };
            if let Some(message) = convert(delivery)
                && actor.send_message(message).is_err()
            {
                return;
            }
            if last {
                return;
            }
        }
    });
}
