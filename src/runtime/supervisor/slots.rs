//! What the pool holds for a key: a connection being created (and who waits for it), a ready
//! connection, or a quarantine; and how a waiting caller is answered.

use std::sync::Arc;
use std::time::SystemTime;

use ractor::RpcReplyPort;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::connection::{ConnectionKey, FailureKind, ResolvedConnectionParams};
use crate::error::{Error, Operation};
use crate::events::CloseReason;
use crate::metrics::GaugeGuard;
use crate::runtime::messages::{ConnectionHandle, ConnectionMessage, GetOrCreateReply, RoutedOpen};
use crate::shared::{Activity, Published};
use crate::status::{ConnectionState, ConnectionStatus, FailureInfo};

pub(super) enum Slot {
    Creating(Creation),
    Ready(Pooled),
    Quarantined(Quarantine),
    /// `replace_connection` under way: requests for the key queue until it ends.
    Replacing(Box<Replacement>),
}

/// A replacement in progress: the old instance closing, the new one being made, then opened.
pub(super) struct Replacement {
    pub(super) id: u64,
    pub(super) lineage: u64,
    /// The lineage's channel: handles of the old instance follow to the new one through it.
    pub(super) published: watch::Sender<Published>,
    pub(super) params: ResolvedConnectionParams,
    pub(super) reply: RpcReplyPort<GetOrCreateReply>,
    pub(super) phase: Phase,
    /// What arrived for the key meanwhile, handled in order once the replacement ends.
    pub(super) queued: Vec<Queued>,
}

pub(super) enum Phase {
    ClosingOld,
    /// The factory runs; its deadline (`deadlines.rs`) ends the step if it outlives the open
    /// timeout.
    Creating,
    /// The new instance's actor runs and opens it.
    Opening(Box<Pooled>),
}

/// A request that waits for a replacement to end.
pub(super) enum Queued {
    Get(Waiter),
    Replace(ResolvedConnectionParams, RpcReplyPort<GetOrCreateReply>),
    Close(RpcReplyPort<()>, CloseReason),
}

pub(super) struct Creation {
    pub(super) id: u64,
    pub(super) lineage: u64,
    pub(super) waiters: Vec<Waiter>,
    /// Set once the key is closed while the factory runs (only on orphans).
    pub(super) closer: Option<(RpcReplyPort<()>, CloseReason)>,
    /// A restart of a connection that was open: the new actor reopens with these.
    pub(super) reopen_with: Option<ResolvedConnectionParams>,
    /// A restart: the lineage's channel, so handles made before the crash see the successor.
    pub(super) published: Option<watch::Sender<Published>>,
}

/// A caller waiting for a connection: for its handle, or for it to be open.
pub(super) enum Waiter {
    Handle(RpcReplyPort<GetOrCreateReply>),
    Open(ResolvedConnectionParams, RpcReplyPort<GetOrCreateReply>),
}

impl Waiter {
    /// The call the waiter made, for its error.
    pub(super) fn operation(&self) -> Operation {
        match self {
            Self::Handle(_) => Operation::GetOrCreate,
            Self::Open(..) => Operation::OpenConnection,
        }
    }

    pub(super) fn answer(self, answer: GetOrCreateReply) {
        let (Self::Handle(reply) | Self::Open(_, reply)) = self;
        let _ = reply.send(answer);
    }

    /// Hands over the connection: the handle at once, or the open request to the connection's
    /// actor, which answers the caller itself once the open is done.
    pub(super) fn serve(self, handle: &ConnectionHandle) {
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

pub(super) struct Pooled {
    pub(super) handle: ConnectionHandle,
    /// The params of its last successful open, for reopening after a crash.
    pub(super) reopen_with: Option<ResolvedConnectionParams>,
    pub(super) activity: Arc<Activity>,
    /// The lineage's channel, handed to the actor that replaces this one after a crash.
    pub(super) published: watch::Sender<Published>,
}

pub(super) struct Quarantine {
    pub(super) until: Instant,
    pub(super) until_wall: SystemTime,
    pub(super) reason: String,
    pub(super) lineage: u64,
    /// The lineage's channel: old handles read the quarantine from it, and a restart after it
    /// goes on publishing there.
    pub(super) published: watch::Sender<Published>,
    /// Counts the key in the quarantined-connections gauge for as long as the quarantine is
    /// held, however it ends.
    pub(super) _gauged: Option<GaugeGuard>,
}

impl Quarantine {
    /// The status a quarantined key reports: no actor runs for it.
    pub(super) fn status(&self) -> ConnectionStatus {
        let mut status = ConnectionStatus::new(ConnectionState::Quarantined);
        status.last_error = Some(FailureInfo::new(FailureKind::Unknown, self.reason.clone()));
        status.next_attempt_at = Some(self.until_wall);
        status
    }
}

impl Slot {
    pub(super) fn holds_a_connection(&self) -> bool {
        !matches!(self, Slot::Quarantined(_))
    }

    /// The replacement under way for this key, if any: requests wait in it.
    pub(super) fn replacing(&mut self) -> Option<&mut Replacement> {
        match self {
            Slot::Replacing(replacement) => Some(replacement.as_mut()),
            _ => None,
        }
    }
}

pub(super) fn quarantined(key: &ConnectionKey, quarantine: &Quarantine, now: Instant) -> Error {
    Error::Quarantined {
        key: key.clone(),
        remaining: quarantine.until.saturating_duration_since(now),
        reason: quarantine.reason.clone(),
    }
}

pub(super) fn answer_all(waiters: Vec<Waiter>, answer: impl Fn() -> GetOrCreateReply) {
    for waiter in waiters {
        waiter.answer(answer());
    }
}
