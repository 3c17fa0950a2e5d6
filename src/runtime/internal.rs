//! The runtime's own messages: timers and loss reports a connection actor sends itself,
//! reports to the supervisor from its tasks and connection actors, and the type-erased
//! closure behind `ConnectionHandle::with`. Crate-private: they appear in the public message
//! enums only as opaque variants nobody outside can build.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use ractor::{ActorId, RpcReplyPort};

use crate::connection::{Connection, ConnectionKey, ResolvedConnectionParams};
use crate::error::Error;
use crate::events::CloseReason;

/// A timer or loss report for a connection actor.
pub struct Tick(pub(crate) TickKind);

pub(crate) enum TickKind {
    /// A close from the supervisor, which has already taken the connection out of its pool:
    /// handled as a `Close` message, but not reported back.
    Close {
        reason: CloseReason,
        reply: RpcReplyPort<()>,
    },
    Lost {
        generation: u64,
        reason: String,
    },
    ReconnectDue {
        generation: u64,
    },
    HealthCheckDue,
    IdleCheck,
    LifetimeExpired,
    ExpireParked,
    /// A concurrent command's task saw its plugin panic: crash like any plugin panic.
    CommandPanicked {
        error: Error,
    },
    /// A concurrent command failed as if the connection was lost: check it.
    CheckAlive,
}

pub(crate) type WithRun =
    Box<dyn for<'a> FnOnce(&'a mut (dyn Connection + 'static)) -> Option<BoxFuture<'a, ()>> + Send>;

/// A closure to run on the concrete connection type, type-erased so it can travel in a message.
/// Made only by [`ConnectionHandle::with`](crate::ConnectionHandle::with).
///
/// Clones share the one closure, which the first actor to run it takes: a handle keeps a clone,
/// so a message that no actor took (the closure still in place) can go to a restarted actor,
/// and the closure still runs at most once.
#[derive(Clone)]
pub struct WithJob {
    pub(crate) expected: &'static str,
    run: Arc<Mutex<Option<WithRun>>>,
}

impl WithJob {
    pub(crate) fn new<C, R>(
        f: impl for<'a> FnOnce(&'a mut C) -> BoxFuture<'a, R> + Send + 'static,
        result: tokio::sync::oneshot::Sender<R>,
    ) -> Self
    where
        C: Connection,
        R: Send + 'static,
    {
        let run: WithRun = Box::new(move |connection: &mut (dyn Connection + 'static)| {
            let connection: &mut dyn Any = connection;
            let concrete = connection.downcast_mut::<C>()?;
            Some(Box::pin(async move {
                let _ = result.send(f(concrete).await);
            }))
        });
        Self {
            expected: std::any::type_name::<C>(),
            run: Arc::new(Mutex::new(Some(run))),
        }
    }

    /// The closure, for the one actor that runs it; `None` if another already took it.
    pub(crate) fn take(&self) -> Option<WithRun> {
        // A poisoned lock only means another taker panicked holding it; the slot is still valid.
        self.run
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// A report to the supervisor from one of its own tasks or connection actors. Keys travel as
/// the one `Arc` each creation makes and everything about that connection shares: at 100,000
/// keys, cloning two strings into every report, job and map was a good part of the cost.
pub struct Report(pub(crate) ReportKind);

pub(crate) enum ReportKind {
    /// The factory call for creation `creation` returned.
    FactoryDone {
        creation: u64,
        key: Arc<ConnectionKey>,
        result: Result<Option<Box<dyn Connection>>, String>,
    },
    /// A connection opened: the supervisor keeps its params for reopening after a crash.
    Opened {
        key: Arc<ConnectionKey>,
        params: Option<ResolvedConnectionParams>,
    },
    /// The earliest creation deadline has passed: creations still waiting for their factory
    /// then are answered with a timeout, and whatever the factory returns later is closed.
    CreationsDue,
    /// A connection actor closed its connection: it leaves the pool.
    Closed {
        key: Arc<ConnectionKey>,
        actor: ActorId,
        reason: CloseReason,
    },
    /// A connection outlived its idle timeout or lifetime: close it through the pool.
    Expired {
        key: Arc<ConnectionKey>,
        actor: ActorId,
        reason: CloseReason,
    },
    /// A step of replacement `replacement` of `key` ended (its waits run on tasks of their own).
    ReplaceProgress {
        replacement: u64,
        key: ConnectionKey,
        step: ReplaceStep,
    },
}

/// What a replacement's delegated wait saw.
#[derive(Debug)]
pub(crate) enum ReplaceStep {
    /// The old instance is closed (or its close outlived the close wait and goes on alone).
    OldClosed,
    /// The new instance's open ended.
    Opened(Result<(), Error>),
}

impl fmt::Debug for Tick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match &self.0 {
            TickKind::Close { .. } => "Close",
            TickKind::Lost { .. } => "Lost",
            TickKind::ReconnectDue { .. } => "ReconnectDue",
            TickKind::HealthCheckDue => "HealthCheckDue",
            TickKind::IdleCheck => "IdleCheck",
            TickKind::LifetimeExpired => "LifetimeExpired",
            TickKind::ExpireParked => "ExpireParked",
            TickKind::CommandPanicked { .. } => "CommandPanicked",
            TickKind::CheckAlive => "CheckAlive",
        };
        f.write_str(name)
    }
}

impl fmt::Debug for WithJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithJob")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never prints params: they carry the password.
        match &self.0 {
            ReportKind::FactoryDone { creation, key, .. } => f
                .debug_struct("FactoryDone")
                .field("creation", creation)
                .field("key", key)
                .finish_non_exhaustive(),
            ReportKind::Opened { key, .. } => f
                .debug_struct("Opened")
                .field("key", key)
                .finish_non_exhaustive(),
            ReportKind::CreationsDue => f.write_str("CreationsDue"),
            ReportKind::Closed { key, actor, reason } => f
                .debug_struct("Closed")
                .field("key", key)
                .field("actor", actor)
                .field("reason", reason)
                .finish(),
            ReportKind::Expired { key, actor, reason } => f
                .debug_struct("Expired")
                .field("key", key)
                .field("actor", actor)
                .field("reason", reason)
                .finish(),
            ReportKind::ReplaceProgress {
                replacement,
                key,
                step,
            } => f
                .debug_struct("ReplaceProgress")
                .field("replacement", replacement)
                .field("key", key)
                .field("step", step)
                .finish(),
        }
    }
}
