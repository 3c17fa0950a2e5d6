//! A scriptable mock plugin and the bookkeeping tests use to prove that every connection made
//! was closed exactly once.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use connection_supervisor::{
    CommandError, Connection, ConnectionFactory, ConnectionKey, ConnectionManager, FailureKind,
    OpenError, ResolvedConnectionParams,
};
use tokio::sync::Notify;

/// The plugin name the mock factory serves; any other name gets `None`.
pub const MOCK: &str = "mock";

/// Where a mock connection panics, if anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanicIn {
    Open,
    Command,
    Close,
    IsAlive,
}

/// How the connections for one key behave.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Every open fails with this error.
    pub open_error: Option<OpenError>,
    /// Every open takes this long.
    pub open_delay: Duration,
    /// Every close takes this long.
    pub close_delay: Duration,
    /// Notified when an open starts (lets a test know an open is in progress without sleeping).
    pub open_started: Option<Arc<Notify>>,
    /// Every open waits until this is notified (`notify_one`, once per open): an open that
    /// lasts exactly as long as the test wants.
    pub open_gate: Option<Arc<Notify>>,
    pub panic_in: Option<PanicIn>,
}

/// What happened to every mock connection, as the plugin saw it.
#[derive(Default, Debug)]
pub struct Ledger {
    pub factory_calls: AtomicUsize,
    pub created: AtomicUsize,
    pub opened: AtomicUsize,
    /// Closes that completed: counted when `close` returns, so a test that sees the count knows
    /// the close finished.
    pub closed: AtomicUsize,
    /// Closes that started but never returned (the supervisor's close timeout dropped them).
    pub close_abandoned: AtomicUsize,
    /// close() called on an already closed instance: must stay 0.
    pub closed_twice: AtomicUsize,
    /// Instances dropped without close(): must stay 0.
    pub dropped_unclosed: AtomicUsize,
}

impl Ledger {
    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }

    /// Every instance made was closed once and only once, and every close completed.
    pub fn assert_all_closed_once(&self) {
        let created = Self::get(&self.created);
        assert_eq!(
            Self::get(&self.closed),
            created,
            "closed != created: {self:?}"
        );
        assert_eq!(
            Self::get(&self.close_abandoned),
            0,
            "close abandoned: {self:?}"
        );
        assert_eq!(Self::get(&self.closed_twice), 0, "double close: {self:?}");
        assert_eq!(
            Self::get(&self.dropped_unclosed),
            0,
            "dropped unclosed: {self:?}"
        );
    }
}

pub struct MockConnection {
    alive: bool,
    closed: bool,
    behaviour: Behaviour,
    ledger: Arc<Ledger>,
    /// Commands run on this instance, so tests can tell instances apart through `with`.
    pub commands_run: usize,
}

impl MockConnection {
    fn new(behaviour: Behaviour, ledger: Arc<Ledger>) -> Self {
        ledger.created.fetch_add(1, Ordering::SeqCst);
        Self {
            alive: false,
            closed: false,
            behaviour,
            ledger,
            commands_run: 0,
        }
    }

    fn maybe_panic(&self, place: PanicIn) {
        if self.behaviour.panic_in == Some(place) {
            panic!("mock panics in {place:?}");
        }
    }
}

#[async_trait]
impl Connection for MockConnection {
    fn is_alive(&self) -> bool {
        self.maybe_panic(PanicIn::IsAlive);
        self.alive
    }

    async fn open(&mut self, _params: &ResolvedConnectionParams) -> Result<(), OpenError> {
        if let Some(started) = &self.behaviour.open_started {
            started.notify_one();
        }
        if let Some(gate) = &self.behaviour.open_gate {
            gate.notified().await;
        }
        if !self.behaviour.open_delay.is_zero() {
            tokio::time::sleep(self.behaviour.open_delay).await;
        }
        self.maybe_panic(PanicIn::Open);
        if let Some(error) = &self.behaviour.open_error {
            return Err(error.clone());
        }
        self.alive = true;
        self.ledger.opened.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn close(&mut self) {
        if self.closed {
            self.ledger.closed_twice.fetch_add(1, Ordering::SeqCst);
        }
        self.closed = true;
        self.alive = false;
        let pending = PendingClose(Some(&self.ledger));
        if !self.behaviour.close_delay.is_zero() {
            tokio::time::sleep(self.behaviour.close_delay).await;
        }
        pending.finished();
        // The scripted panic comes as close returns, after its work is done and counted.
        self.maybe_panic(PanicIn::Close);
    }

    async fn execute_command(&mut self, command: &str) -> Result<String, CommandError> {
        self.maybe_panic(PanicIn::Command);
        if !self.alive {
            return Err(CommandError::ConnectionLost("not open".into()));
        }
        self.commands_run += 1;
        Ok(format!("ran {command}"))
    }
}

/// A close under way: counted as completed when it returns, or as abandoned if its future is
/// dropped first (the supervisor's close timeout).
struct PendingClose<'a>(Option<&'a Ledger>);

impl PendingClose<'_> {
    fn finished(mut self) {
        if let Some(ledger) = self.0.take() {
            ledger.closed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for PendingClose<'_> {
    fn drop(&mut self) {
        if let Some(ledger) = self.0.take() {
            ledger.close_abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for MockConnection {
    fn drop(&mut self) {
        if !self.closed {
            self.ledger.dropped_unclosed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A mock factory for plugin [`MOCK`] whose connections behave as `behaviour(key)` says.
pub fn mock_factory(
    ledger: Arc<Ledger>,
    behaviour: impl Fn(&ConnectionKey) -> Behaviour + Send + Sync + 'static,
) -> Arc<ConnectionFactory> {
    Arc::new(move |key: &ConnectionKey| {
        ledger.factory_calls.fetch_add(1, Ordering::SeqCst);
        (key.plugin_name == MOCK).then(|| {
            Box::new(MockConnection::new(behaviour(key), ledger.clone())) as Box<dyn Connection>
        })
    })
}

/// A manager over well-behaved mock connections, and the ledger that watches them.
pub async fn mock_manager() -> (ConnectionManager, Arc<Ledger>) {
    let ledger = Arc::new(Ledger::default());
    let factory = mock_factory(ledger.clone(), |_| Behaviour::default());
    let manager = ConnectionManager::with_connection_factory(factory)
        .await
        .expect("supervisor starts");
    (manager, ledger)
}

pub fn key(host: &str) -> ConnectionKey {
    ConnectionKey::new(host, MOCK)
}

pub fn params(host: &str) -> ResolvedConnectionParams {
    ResolvedConnectionParams::new(host)
}

pub fn failing(kind: FailureKind, message: &str) -> Behaviour {
    Behaviour {
        open_error: Some(OpenError::new(kind, message)),
        ..Behaviour::default()
    }
}

/// Waits (bounded) until the supervisor has no connection actor left.
pub async fn assert_no_connection_actors(manager: &ConnectionManager) {
    let supervisor = manager.supervisor();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let children = supervisor.get_children();
        if children.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} connection actors still running",
            children.len()
        );
        // Stopping is asynchronous after a close answers: wait on the actors themselves.
        for child in children {
            let _ = child.wait(Some(Duration::from_secs(1))).await;
        }
    }
}

/// Opens one mock key per host, each on its own task, all at once, and returns the handles in
/// host order. Panics (failing the test) if any open fails.
pub async fn open_concurrently(
    manager: &ConnectionManager,
    hosts: impl IntoIterator<Item = String>,
) -> Vec<connection_supervisor::ConnectionHandle> {
    let tasks: Vec<_> = hosts
        .into_iter()
        .map(|host| {
            let manager = manager.clone();
            tokio::spawn(async move {
                manager
                    .open_connection(&key(&host), &params(&host))
                    .await
                    .unwrap_or_else(|error| panic!("open {host}: {error}"))
                    .unwrap_or_else(|| panic!("no plugin for {host}"))
            })
        })
        .collect();
    let mut handles = Vec::with_capacity(tasks.len());
    for task in tasks {
        handles.push(task.await.expect("open task"));
    }
    handles
}
