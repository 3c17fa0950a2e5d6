//! Where the factory runs: on tokio's blocking pool, never on a worker or on the supervisor's
//! task, since it is a synchronous closure that may block. A blocking task per creation cost
//! more than the whole rest of a creation at 100,000 keys (a pool thread woken, a task and a
//! `JoinHandle` to await it, memory freed on another thread than the one that allocated it), so
//! creations queue here and a few blocking runners drain the queue, each lingering briefly for
//! the next one.
//!
//! A runner inside a factory call never holds up the others: whenever every runner is inside
//! one while creations wait, another runner starts. A slow factory holds up only its own key.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ractor::ActorRef;
use tracing::warn;

use crate::connection::{ConnectionFactory, ConnectionKey};
use crate::guard::panic_message;
use crate::runtime::internal::{Report, ReportKind};
use crate::runtime::messages::SupervisorMessage;

/// How long an idle runner waits for the next creation before its thread goes back to the
/// pool: long enough to carry a burst, short enough not to hold a thread when nothing comes.
const LINGER: Duration = Duration::from_millis(20);

/// One factory call to make, and where its result goes.
pub(super) struct FactoryJob {
    pub(super) supervisor: ActorRef<SupervisorMessage>,
    pub(super) factory: Arc<ConnectionFactory>,
    pub(super) creation: u64,
    pub(super) key: Arc<ConnectionKey>,
    pub(super) close_timeout: Duration,
}

/// The supervisor's factory queue and its runners.
pub(super) struct FactoryRunners {
    inner: Arc<RunnerShared>,
}

struct RunnerShared {
    queue: Mutex<FactoryQueue>,
    ready: Condvar,
    runtime: tokio::runtime::Handle,
}

#[derive(Default)]
struct FactoryQueue {
    jobs: VecDeque<FactoryJob>,
    /// Runners not inside a factory call: taking a job, or waiting for one.
    free: usize,
    /// Of those, the ones waiting on `ready`.
    waiting: usize,
    /// A waiting runner has been woken and has not yet taken the lock: it will drain the
    /// queue, so creations queued meanwhile need no wake-up of their own. Without this, a
    /// burst of creations cost a futex wake and a context switch each (half the CPU time of
    /// 100,000 creations was in the kernel).
    woken: bool,
}

impl FactoryRunners {
    /// Runners on the blocking pool of the runtime this is called on.
    pub(super) fn new() -> Self {
        Self {
            inner: Arc::new(RunnerShared {
                queue: Mutex::new(FactoryQueue::default()),
                ready: Condvar::new(),
                runtime: tokio::runtime::Handle::current(),
            }),
        }
    }

    /// Queues `job`; a free runner takes it, or a new one starts if none is free.
    pub(super) fn submit(&self, job: FactoryJob) {
        let mut queue = self.inner.lock();
        queue.jobs.push_back(job);
        if queue.free == 0 {
            queue.free += 1;
            drop(queue);
            self.inner.start_runner();
        } else if queue.waiting > 0 && !queue.woken {
            queue.woken = true;
            drop(queue);
            self.inner.ready.notify_one();
        }
    }
}

impl RunnerShared {
    fn lock(&self) -> MutexGuard<'_, FactoryQueue> {
        // Nothing panics while holding the lock (the factory runs outside it), but a poisoned
        // queue is still a consistent one.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start_runner(self: &Arc<Self>) {
        let inner = self.clone();
        // If the runtime is shutting down the runner never starts; the creation then expires
        // like any whose factory does not return, and nobody is left to wait for it anyway.
        drop(self.runtime.spawn_blocking(move || inner.run()));
    }

    fn run(self: Arc<Self>) {
        let mut queue = self.lock();
        loop {
            if let Some(job) = queue.jobs.pop_front() {
                queue.free -= 1;
                if queue.free == 0 && !queue.jobs.is_empty() {
                    // Every runner is now inside a factory call: the creations still queued
                    // get one of their own, so they never wait for a slow factory.
                    queue.free += 1;
                    self.start_runner();
                }
                drop(queue);
                self.make(job);
                queue = self.lock();
                queue.free += 1;
                continue;
            }
            queue.waiting += 1;
            let (guard, waited) = self
                .ready
                .wait_timeout(queue, LINGER)
                .unwrap_or_else(PoisonError::into_inner);
            queue = guard;
            queue.waiting -= 1;
            // Whoever was woken, this runner now drains the queue before it waits again.
            queue.woken = false;
            if waited.timed_out() && queue.jobs.is_empty() {
                queue.free -= 1;
                return;
            }
        }
    }

    /// Calls the factory, panics caught, and reports `FactoryDone`.
    fn make(&self, job: FactoryJob) {
        let FactoryJob {
            supervisor,
            factory,
            creation,
            key,
            close_timeout,
        } = job;
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
            self.runtime.spawn(async move {
                let _ = tokio::time::timeout(close_timeout, connection.close()).await;
            });
        }
    }
}
