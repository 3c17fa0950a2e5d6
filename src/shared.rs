//! Everything that is shared between tasks instead of owned by one actor, and why.
//!
//! Actors own their state; these are the exceptions, each written by one party:
//!
//! - [`Activity`]: atomics written by a connection's actor and by the commands running on its
//!   direct route, read by the supervisor to pick an idle connection to evict. A stale read
//!   costs at worst a less-than-ideal eviction choice.
//! - [`DirectRoute`]: the plugin's concurrent runner and a semaphore of its command slots,
//!   published by the connection's actor while the session is up, used by every handle to run
//!   commands from the caller's own task. Only the actor publishes or withdraws it; a command
//!   that sees the session fail tells the actor through a callback and changes nothing itself.
//! - [`Published`]: the `watch` value through which the actor publishes its status, the route
//!   and its own address. The actor serving the connection is its only writer, except while a
//!   crashed connection is being restarted or quarantined, when the supervisor publishes the
//!   quarantine.
//! - [`OpenSlots`]: the supervisor's budgets for opens (one for opens a caller waits for, one
//!   for background reconnects, so that callers never queue behind a reconnect storm) and a
//!   limit of handshakes per target address, so that forty keys behind one server, bastion or
//!   terminal server do not trip its connection limits. Semaphores: every connection actor
//!   takes and returns permits, nobody else writes them.
//! - [`PluginCounters`]: one plugin's counters, counted by the connection actors and the
//!   supervisor where the counted thing happens, read by the supervisor for
//!   `connection_counters_for`. Atomics rather than reports to the supervisor, so that a count
//!   is made before the event that announces it is published: a subscriber that sees
//!   `Reconnected` and then asks for the counters sees the reconnect counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ractor::ActorCell;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::connection::{CommandError, CommandOutput, CommandRunner, ConnectionKey, FailureKind};
use crate::error::{Error, Operation, Stage};
use crate::guard::{Outcome, guarded, sync_guarded};
use crate::metrics::{Gauge, GaugeGuard, Histogram, PluginMetrics};
use crate::status::{ConnectionCounters, ConnectionState, ConnectionStatus};

/// When a connection was last asked for something and whether it is busy: written by its
/// actor, read by the supervisor to pick the least recently used idle connection at a limit.
/// Atomics, not a lock: one writer, an occasional reader, and a stale read is harmless.
#[derive(Debug)]
pub(crate) struct Activity {
    epoch: Instant,
    last_used_ms: AtomicU64,
    /// Requests in progress: the one the actor is handling, and commands running on the
    /// plugin's runner outside it.
    in_use: AtomicUsize,
}

impl Activity {
    pub(crate) fn new(epoch: Instant) -> Self {
        let activity = Self {
            epoch,
            last_used_ms: AtomicU64::new(0),
            in_use: AtomicUsize::new(0),
        };
        activity.touch();
        activity
    }

    pub(crate) fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_used_ms.store(now, Ordering::Relaxed);
    }

    pub(crate) fn last_used_ms(&self) -> u64 {
        self.last_used_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn idle_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_used_ms()))
    }

    pub(crate) fn is_busy(&self) -> bool {
        self.in_use.load(Ordering::Relaxed) > 0
    }

    /// Stamps a use and counts it in progress until the guard drops.
    pub(crate) fn use_started(&self) -> InUse<'_> {
        self.touch();
        self.in_use.fetch_add(1, Ordering::Relaxed);
        InUse(self)
    }
}

pub(crate) struct InUse<'a>(&'a Activity);

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A plugin's concurrent command runner while its session is up, with what bounds and reports
/// the commands run on it.
///
/// The actor publishes it to the connection's handles, which run commands on it directly, on
/// the caller's own task: no message to the actor and no task per command, so a command costs
/// what the plugin's runner costs plus a slot, a timeout and a panic guard. The actor stays
/// the one that changes state: a command that finds the session lost or sees its plugin panic
/// tells the actor, which moves the state. The route is withdrawn, and its slots closed, the
/// moment the session is lost or the connection closes.
#[derive(Clone)]
pub(crate) struct DirectRoute {
    runner: Arc<dyn CommandRunner>,
    /// At most the plugin's limit of commands at once.
    slots: Arc<Semaphore>,
    activity: Arc<Activity>,
    command_duration: Histogram,
    /// How a command tells the actor what it saw; the actor decides what it means.
    notify: Arc<dyn Fn(RouteNotice) + Send + Sync>,
}

/// What a command on a [`DirectRoute`] tells the connection's actor.
pub(crate) enum RouteNotice {
    /// The command failed as if the session was lost: check it.
    CheckAlive,
    /// The plugin panicked under the command: crash like any plugin panic.
    Panicked(Error),
}

/// How a command sent down a [`DirectRoute`] ended.
pub(crate) enum Direct {
    /// It ran, well or not.
    Ran(Result<CommandOutput, Error>),
    /// The route was withdrawn before the command got a slot: it never reached the plugin, so
    /// it can safely go to the actor instead (which parks it during a reconnect).
    NotStarted,
}

impl DirectRoute {
    /// A route over `runner` with `limit` command slots: at least one, and at most tokio's
    /// semaphore limit, above which `Semaphore::new` panics (any plugin may ask for
    /// `usize::MAX`; no session runs that many commands at once anyway).
    pub(crate) fn new(
        runner: Arc<dyn CommandRunner>,
        limit: usize,
        activity: Arc<Activity>,
        command_duration: Histogram,
        notify: impl Fn(RouteNotice) + Send + Sync + 'static,
    ) -> Self {
        Self {
            runner,
            slots: Arc::new(Semaphore::new(limit.clamp(1, Semaphore::MAX_PERMITS))),
            activity,
            command_duration,
            notify: Arc::new(notify),
        }
    }

    /// Closes the slots: commands still waiting for one come back as
    /// [`Direct::NotStarted`] and go to the actor instead.
    pub(crate) fn withdraw(&self) {
        self.slots.close();
    }

    /// Whether a command sent now would reach a live session.
    pub(crate) fn is_usable(&self) -> bool {
        !self.slots.is_closed() && matches!(sync_guarded(|| self.runner.is_alive()), Ok(true))
    }

    /// Runs one command within `bound` (waiting for a slot included).
    pub(crate) async fn run(&self, key: &ConnectionKey, command: &str, bound: Duration) -> Direct {
        let _in_use = self.activity.use_started();
        let started = Instant::now();
        let run = async {
            let Ok(_slot) = self.slots.acquire().await else {
                return None;
            };
            Some(self.runner.run(command).await)
        };
        let outcome = guarded(bound, run).await;
        // A long command is use until it ends, not only when it starts.
        self.activity.touch();
        if !matches!(outcome, Outcome::Done(None)) {
            let took = started.elapsed().as_secs_f64();
            self.command_duration.record(took);
        }
        let result = match outcome {
            Outcome::Done(None) => return Direct::NotStarted,
            Outcome::Done(Some(Ok(output))) => Ok(output),
            Outcome::Done(Some(Err(source))) => {
                if matches!(source, CommandError::ConnectionLost(_)) {
                    (self.notify)(RouteNotice::CheckAlive);
                }
                Err(Error::Command {
                    key: key.clone(),
                    source,
                })
            }
            Outcome::TimedOut(after) => Err(Error::Timeout {
                operation: Operation::ExecuteCommand,
                key: Some(key.clone()),
                stage: Stage::Answer,
                after,
            }),
            Outcome::Panicked(message) => {
                let error = Error::PluginPanicked {
                    key: key.clone(),
                    operation: Operation::ExecuteCommand,
                    message,
                };
                (self.notify)(RouteNotice::Panicked(error.clone()));
                Err(error)
            }
        };
        Direct::Ran(result)
    }
}

/// What a connection's handles read without messaging its actor: its status, the direct route
/// and the actor serving it now. One `watch` channel for all three, since each channel costs
/// about 600 bytes per connection, and one channel per connection *lineage*: the supervisor
/// hands the same channel to every restart of a connection, so a handle made before a crash
/// sees the successor's status, takes its direct route and sends to its actor.
#[derive(Clone)]
pub(crate) struct Published {
    pub(crate) status: ConnectionStatus,
    pub(crate) route: Option<DirectRoute>,
    /// Set by each actor of the lineage when it starts, cleared when it ends.
    pub(crate) actor: Option<ActorCell>,
}

impl Published {
    pub(crate) fn new() -> Self {
        Self {
            status: ConnectionStatus::new(ConnectionState::Created),
            route: None,
            actor: None,
        }
    }
}

/// One plugin's [`ConnectionCounters`], counted where each thing happens (see the module
/// docs for why these are atomics), and its metrics, recorded at the same moment.
#[derive(Debug)]
pub(crate) struct PluginCounters {
    create_calls: AtomicUsize,
    open_calls: AtomicUsize,
    close_calls: AtomicUsize,
    failed_open_calls: AtomicUsize,
    losses: AtomicUsize,
    reconnects: AtomicUsize,
    crashes: AtomicUsize,
    restarts: AtomicUsize,
    quarantines: AtomicUsize,
    open_slot_timeouts: AtomicUsize,
    pub(crate) metrics: PluginMetrics,
}

/// What [`PluginCounters::count`] counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Count {
    Created,
    Opened,
    Reconnected,
    FailedOpen(FailureKind),
    Lost,
    Closed,
    Crashed,
    Restarted,
    Quarantined,
    OpenSlotTimeout,
}

impl PluginCounters {
    /// Zeroed counters, and the metrics series, of `plugin`.
    pub(crate) fn new(plugin: &str) -> Self {
        let zero = || AtomicUsize::new(0);
        Self {
            create_calls: zero(),
            open_calls: zero(),
            close_calls: zero(),
            failed_open_calls: zero(),
            losses: zero(),
            reconnects: zero(),
            crashes: zero(),
            restarts: zero(),
            quarantines: zero(),
            open_slot_timeouts: zero(),
            metrics: PluginMetrics::new(plugin),
        }
    }

    /// Counts one `what`, and records it in the metrics. Call it before publishing the event
    /// that announces it.
    pub(crate) fn count(&self, what: Count) {
        let m = &self.metrics;
        let (counter, metric) = match what {
            Count::Created => (&self.create_calls, Some(&m.creates)),
            Count::Opened => (&self.open_calls, Some(&m.opens)),
            Count::Reconnected => (&self.reconnects, Some(&m.reconnects)),
            Count::FailedOpen(kind) => {
                m.failed_open(kind);
                (&self.failed_open_calls, None)
            }
            Count::Lost => (&self.losses, Some(&m.losses)),
            Count::Closed => (&self.close_calls, Some(&m.closes)),
            Count::Crashed => (&self.crashes, Some(&m.crashes)),
            Count::Restarted => (&self.restarts, Some(&m.restarts)),
            Count::Quarantined => (&self.quarantines, Some(&m.quarantines)),
            Count::OpenSlotTimeout => (&self.open_slot_timeouts, None),
        };
        // SeqCst: a reader that learned of the event through any channel sees the count.
        counter.fetch_add(1, Ordering::SeqCst);
        if let Some(metric) = metric {
            metric.increment(1);
        }
    }

    /// A copy of the counters as they are now.
    pub(crate) fn snapshot(&self) -> ConnectionCounters {
        let read = |counter: &AtomicUsize| counter.load(Ordering::SeqCst);
        ConnectionCounters {
            create_calls: read(&self.create_calls),
            open_calls: read(&self.open_calls),
            close_calls: read(&self.close_calls),
            failed_open_calls: read(&self.failed_open_calls),
            losses: read(&self.losses),
            reconnects: read(&self.reconnects),
            crashes: read(&self.crashes),
            restarts: read(&self.restarts),
            quarantines: read(&self.quarantines),
            open_slot_timeouts: read(&self.open_slot_timeouts),
        }
    }
}

/// Whom an open is for, which decides the budget it draws on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum OpenFor {
    /// A caller waits for it: `open`, `open_connection`, `retry`.
    Caller,
    /// Nobody waits: a reconnect after a loss, a reopen after a restart.
    Background,
}

/// The supervisor's open budgets and per-address handshake limits (see the module docs).
#[derive(Debug)]
pub(crate) struct OpenSlots {
    callers: Arc<Semaphore>,
    background: Arc<Semaphore>,
    per_address: usize,
    /// How long opens wait here, and how many wait now.
    wait: Histogram,
    waiting: Gauge,
    /// One semaphore per target address while anyone holds or waits for it; dead entries are
    /// pruned whenever the map has doubled since the last prune, so it stays about the size of
    /// the addresses being opened at once.
    addresses: std::sync::Mutex<(HashMap<String, Weak<Semaphore>>, usize)>,
}

/// The permits of one open: its budget's and its address's, released when dropped.
#[derive(Debug)]
pub(crate) struct OpenPermit {
    _budget: OwnedSemaphorePermit,
    _address: OwnedSemaphorePermit,
}

impl OpenSlots {
    pub(crate) fn new(budget: usize, per_address: usize) -> Self {
        let permits = |n: usize| n.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            callers: Arc::new(Semaphore::new(permits(budget))),
            background: Arc::new(Semaphore::new(permits(budget))),
            per_address: permits(per_address),
            wait: crate::metrics::histogram("open_slot_wait_seconds", &[]),
            waiting: crate::metrics::gauge("open_slots_waiting", &[]),
            addresses: std::sync::Mutex::new((HashMap::new(), 64)),
        }
    }

    /// Waits for a handshake slot at `address`, then for one of `purpose`'s budget (in that
    /// order, so nobody holds a budget slot while queueing for a busy address). `None` only if
    /// a semaphore was closed, which nothing does.
    pub(crate) async fn acquire(&self, purpose: OpenFor, address: &str) -> Option<OpenPermit> {
        // Dropped with the wait, whether it got its slots or its caller gave up.
        let _waiting = GaugeGuard::new(&self.waiting);
        let started = Instant::now();
        let permit = self.acquire_both(purpose, address).await;
        self.wait.record(started.elapsed().as_secs_f64());
        permit
    }

    async fn acquire_both(&self, purpose: OpenFor, address: &str) -> Option<OpenPermit> {
        let address = self.address(address);
        let address = address.acquire_owned().await.ok()?;
        let budget = match purpose {
            OpenFor::Caller => self.callers.clone(),
            OpenFor::Background => self.background.clone(),
        };
        let budget = budget.acquire_owned().await.ok()?;
        Some(OpenPermit {
            _budget: budget,
            _address: address,
        })
    }

    fn address(&self, address: &str) -> Arc<Semaphore> {
        // A poisoned lock only means a panic elsewhere while it was held; the map is still
        // consistent (every change to it is a single insert or retain).
        let mut guard = self
            .addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (map, prune_at) = &mut *guard;
        if let Some(live) = map.get(address).and_then(Weak::upgrade) {
            return live;
        }
        if map.len() >= *prune_at {
            map.retain(|_, slot| slot.strong_count() > 0);
            *prune_at = (map.len() * 2).max(64);
        }
        let fresh = Arc::new(Semaphore::new(self.per_address));
        map.insert(address.to_owned(), Arc::downgrade(&fresh));
        fresh
    }
}
