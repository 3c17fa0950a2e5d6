//! Issue 10: a dropped caller future, for each public async method. Every one of them says in
//! its "# Cancel safety" section what happens to the work when the caller's future is
//! dropped; each test here drops the future at the moment that section is about and checks
//! exactly that, with events, counters, statuses and the fault plugin's ledger.
//!
//! The moments: polled once, so that the request is sent and still unanswered (the
//! supervisor or the connection's actor has not even read it yet); raced against a short
//! `timeout`, so that it is dropped while the work runs; or dropped once the work is known to
//! have started (an `Opening` event, a command in flight, a closure that said so).
//!
//! Not here: `ConnectionManager::spawn`, `with_connection_factory` and `SupervisorGuard::spawn`.
//! Their section is a warning ("not cancel safe: dropped after the supervisor actor started,
//! it leaves a supervisor running"), not a promise, and with ractor 0.16 their future finishes
//! on its first poll, so there is no moment after the start at which to drop it.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Behaviour, Ledger, MOCK, mock_factory};
use connection_supervisor::testing::{FaultConnection, FaultLedger, FaultPlugin};
use connection_supervisor::{
    Backoff, CloseReason, ConnectionCounters, ConnectionHandle, ConnectionKey, ConnectionManager,
    ConnectionPolicy, ConnectionState, ConnectionStatus, Error, EventDelivery, EventKind,
    EventStream, FailureKind, ResolvedConnectionParams, SupervisorConfig, SupervisorGuard,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(60);

fn policy() -> ConnectionPolicy {
    ConnectionPolicy::default().backoff(
        Backoff::default()
            .initial(Duration::from_millis(100))
            .max(Duration::from_secs(1))
            .multiplier(2.0)
            .jitter(0.2),
    )
}

fn config(plugin: &FaultPlugin) -> SupervisorConfig {
    SupervisorConfig::default()
        .policy(policy())
        .factory(plugin.factory())
}

/// A supervisor over `plugin` and a subscription to its events.
async fn start(plugin: &FaultPlugin) -> (ConnectionManager, EventStream) {
    let manager = ConnectionManager::spawn(config(plugin))
        .await
        .expect("supervisor");
    let events = manager.subscribe().await.expect("subscribe");
    (manager, events)
}

fn params(host: &str) -> ResolvedConnectionParams {
    ResolvedConnectionParams::new(host)
}

async fn open(manager: &ConnectionManager, plugin: &FaultPlugin, host: &str) -> ConnectionHandle {
    manager
        .open_connection(&plugin.key(host), &params(host))
        .await
        .expect("open")
        .expect("a fault key")
}

fn get(counter: &std::sync::atomic::AtomicUsize) -> usize {
    FaultLedger::get(counter)
}

async fn counters(manager: &ConnectionManager) -> ConnectionCounters {
    manager
        .connection_counters_for("fault")
        .await
        .expect("counters")
        .expect("the plugin made a connection")
}

/// Shuts down, then checks that every instance made was closed once and every close ended.
async fn finish(manager: ConnectionManager, plugin: &FaultPlugin) {
    manager.shutdown().await.expect("shutdown");
    let ledger = plugin.ledger();
    assert_eq!(get(&ledger.closed), get(&ledger.created), "{ledger:?}");
    assert_eq!(get(&ledger.close_abandoned), 0, "{ledger:?}");
    assert_eq!(get(&ledger.closed_twice), 0, "{ledger:?}");
    assert_eq!(get(&ledger.dropped_unclosed), 0, "{ledger:?}");
}

/// Polls `future` once, which sends its request, and drops it while it waits for the answer:
/// the caller gone at the earliest moment it can be gone with its request out.
async fn send_then_drop<F: Future>(future: F) {
    let mut future = std::pin::pin!(future);
    assert!(
        futures::poll!(future.as_mut()).is_pending(),
        "answered on its first poll: nothing left to cancel"
    );
}

/// Waits, bounded, until `condition` holds; for counts that no event reports. Spins without
/// letting a paused clock advance, so call it only once what it waits for needs no timer.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let wait = async {
        while !condition() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

/// Occupies the connection's actor with a `with` job until the returned sender is used or
/// dropped, so that requests sent meanwhile wait in its mailbox.
async fn hold_the_actor(handle: &ConnectionHandle) -> oneshot::Sender<()> {
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let (holding_tx, holding_rx) = oneshot::channel::<()>();
    let held = handle.clone();
    tokio::spawn(async move {
        let _ = held
            .with::<FaultConnection, _>(move |_| {
                async move {
                    let _ = holding_tx.send(());
                    let _ = release_rx.await;
                }
                .boxed()
            })
            .await;
    });
    tokio::time::timeout(WAIT, holding_rx)
        .await
        .expect("the actor started the job in time")
        .expect("the actor runs the job");
    release_tx
}

/// Waits until the connection's actor has handled everything sent to it so far: its mailbox
/// is first in, first out, and `is_alive` is answered by the actor (never on a direct route).
async fn actor_caught_up(handle: &ConnectionHandle) -> bool {
    tokio::time::timeout(WAIT, handle.is_alive())
        .await
        .expect("the actor answers in time")
        .expect("the actor answers")
}

/// What a read-only call must leave as it was.
#[derive(Debug, PartialEq)]
struct Seen {
    status: Option<ConnectionStatus>,
    counters: ConnectionCounters,
    /// created, open attempts, opened, closed, commands started, commands ok, in flight.
    ledger: [usize; 7],
}

async fn seen(manager: &ConnectionManager, plugin: &FaultPlugin, key: &ConnectionKey) -> Seen {
    let ledger = plugin.ledger();
    Seen {
        status: manager.connection_status(key).await.expect("status"),
        counters: counters(manager).await,
        ledger: [
            get(&ledger.created),
            get(&ledger.open_attempts),
            get(&ledger.opened),
            get(&ledger.closed),
            get(&ledger.commands_started),
            get(&ledger.commands_ok),
            get(&ledger.commands_in_flight),
        ],
    }
}

/// The four ways to run a command, which share one cancel-safety section.
#[derive(Clone, Copy, Debug)]
enum Command {
    Execute,
    ExecuteWithin,
    Run,
    RunWithin,
}

const COMMANDS: [Command; 4] = [
    Command::Execute,
    Command::ExecuteWithin,
    Command::Run,
    Command::RunWithin,
];

impl Command {
    fn call<'a>(
        self,
        handle: &'a ConnectionHandle,
        command: &'a str,
    ) -> BoxFuture<'a, Result<String, Error>> {
        match self {
            Self::Execute => handle.execute_command(command).boxed(),
            Self::ExecuteWithin => handle.execute_command_within(command, WAIT).boxed(),
            Self::Run => async move { handle.run_command(command).await.map(|o| o.stdout) }.boxed(),
            Self::RunWithin => async move {
                handle
                    .run_command_within(command, WAIT)
                    .await
                    .map(|o| o.stdout)
            }
            .boxed(),
        }
    }
}

// ---- ConnectionManager ----

#[tokio::test(start_paused = true)]
async fn set_connection_factory_dropped_after_sending_still_sets_the_factory() {
    let plugin = FaultPlugin::new("fault");
    let manager = ConnectionManager::spawn(SupervisorConfig::default().policy(policy()))
        .await
        .unwrap();
    let key = plugin.key("r1");
    assert!(matches!(
        manager.get_or_create(key.clone()).await,
        Err(Error::FactoryNotSet)
    ));

    send_then_drop(manager.set_connection_factory(plugin.factory())).await;

    let handle = manager.get_or_create(key).await.unwrap();
    assert!(handle.is_some(), "the factory was set without its caller");
    assert_eq!(get(&plugin.ledger().created), 1);
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn get_or_create_dropped_after_sending_still_creates_and_pools_the_connection() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin).await;
    let key = plugin.key("r1");

    send_then_drop(manager.get_or_create(key.clone())).await;

    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Created))
        .await
        .unwrap();
    assert_eq!(
        manager
            .connection_status(&key)
            .await
            .unwrap()
            .map(|s| s.state),
        Some(ConnectionState::Created),
        "pooled"
    );
    // The next call finds it: nothing is created twice.
    manager.get_or_create(key).await.unwrap().unwrap();
    assert_eq!(get(&plugin.ledger().created), 1);
    assert_eq!(counters(&manager).await.create_calls, 1);
    // Close-all or shutdown closes it.
    finish(manager, &plugin).await;
}

/// The doc: "Once sent, the request is handled even if this future is dropped: the connection
/// may be created, pooled and opened, and stays so; the next call finds it open."
///
/// Fails against the code as it is: the connection's actor drops a routed open whose caller is
/// gone (`ConnectionActorState::open`, the check that makes `ConnectionHandle::open` cancel
/// safe), so the connection is created and pooled but never opened until someone asks again.
#[tokio::test(start_paused = true)]
async fn open_connection_dropped_after_sending_still_opens_the_connection() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin).await;
    let key = plugin.key("r1");

    send_then_drop(manager.open_connection(&key, &params("r1"))).await;

    // Nobody asks again: the request that was sent is handled on its own.
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Opened))
        .await
        .expect("the open sent before the drop is handled");
    let handle = open(&manager, &plugin, "r1").await;
    assert_eq!(handle.status().state, ConnectionState::Open);
    let ledger = plugin.ledger();
    assert_eq!(
        (get(&ledger.created), get(&ledger.open_attempts)),
        (1, 1),
        "the next call finds it open: {ledger:?}"
    );
    assert_eq!(counters(&manager).await.open_calls, 1);
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn open_connection_dropped_while_the_open_runs_leaves_it_open_for_the_next_call() {
    let plugin = FaultPlugin::new("fault");
    plugin.open_delay("r1", Duration::from_secs(5));
    let (manager, mut events) = start(&plugin).await;
    let key = plugin.key("r1");

    let params = params("r1");
    {
        let opening = manager.open_connection(&key, &params);
        let mut opening = std::pin::pin!(opening);
        assert!(futures::poll!(opening.as_mut()).is_pending());
        events
            .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Opening))
            .await
            .unwrap();
    }

    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Opened))
        .await
        .expect("the open runs to its end without its caller");
    let handle = open(&manager, &plugin, "r1").await;
    assert_eq!(handle.status().state, ConnectionState::Open);
    let ledger = plugin.ledger();
    assert_eq!(
        (get(&ledger.open_attempts), get(&ledger.opened)),
        (1, 1),
        "no second open: {ledger:?}"
    );
    assert_eq!(counters(&manager).await.open_calls, 1);
    finish(manager, &plugin).await;
}

/// A manager over mock connections whose close takes 5 s, so that a close can be caught
/// running; `hosts` are open.
async fn slow_closes(hosts: &[&str]) -> (ConnectionManager, EventStream, Arc<Ledger>) {
    let ledger = Arc::new(Ledger::default());
    let factory = mock_factory(ledger.clone(), |_| Behaviour {
        close_delay: Duration::from_secs(5),
        ..Behaviour::default()
    });
    let manager = ConnectionManager::with_connection_factory(factory)
        .await
        .unwrap();
    let events = manager.subscribe().await.unwrap();
    for host in hosts {
        manager
            .open_connection(&common::key(host), &common::params(host))
            .await
            .unwrap()
            .unwrap();
    }
    (manager, events, ledger)
}

/// Waits for one `Closed` event with `reason` per key in `keys`, in any order.
async fn wait_closed(events: &mut EventStream, keys: &[ConnectionKey], reason: CloseReason) {
    let mut closed = HashSet::new();
    while closed.len() < keys.len() {
        let event = events
            .wait_for(WAIT, |e| e.kind == EventKind::Closed { reason })
            .await
            .unwrap_or_else(|error| panic!("closed only {closed:?}: {error}"));
        assert!(keys.contains(&event.key), "{event:?}");
        closed.insert(event.key);
    }
}

#[tokio::test(start_paused = true)]
async fn close_connection_dropped_after_sending_or_while_closing_still_closes() {
    let (manager, mut events, ledger) = slow_closes(&["a", "b"]).await;
    let (a, b) = (common::key("a"), common::key("b"));

    // `a`: dropped before the supervisor has read the request.
    send_then_drop(manager.close_connection(&a)).await;
    // `b`: dropped while the plugin's close runs (it takes 5 s).
    let waited = tokio::time::timeout(Duration::from_secs(1), manager.close_connection(&b)).await;
    assert!(
        waited.is_err(),
        "the close outlasted its caller: {waited:?}"
    );

    wait_closed(&mut events, &[a.clone(), b.clone()], CloseReason::Requested).await;
    assert_eq!(Ledger::get(&ledger.closed), 2, "{ledger:?}");
    assert_eq!(Ledger::get(&ledger.close_abandoned), 0, "{ledger:?}");
    assert_eq!(manager.connection_status(&a).await.unwrap(), None);
    assert_eq!(manager.connection_status(&b).await.unwrap(), None);
    let counters = manager
        .connection_counters_for(MOCK)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counters.close_calls, 2, "{counters:?}");
    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}

#[tokio::test(start_paused = true)]
async fn close_all_connections_dropped_after_sending_still_closes_every_connection() {
    let hosts = ["a", "b", "c"];
    let (manager, mut events, ledger) = slow_closes(&hosts).await;
    let keys: Vec<_> = hosts.iter().map(|host| common::key(host)).collect();

    send_then_drop(manager.close_all_connections()).await;

    wait_closed(&mut events, &keys, CloseReason::CloseAll).await;
    assert_eq!(Ledger::get(&ledger.closed), 3, "{ledger:?}");
    assert_eq!(Ledger::get(&ledger.close_abandoned), 0, "{ledger:?}");
    for key in &keys {
        assert_eq!(manager.connection_status(key).await.unwrap(), None);
    }
    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}

#[tokio::test(start_paused = true)]
async fn retry_dropped_after_sending_still_runs_the_attempt() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin).await;
    let key = plugin.key("r1");
    // An auth failure leaves the connection `Failed`, with no reconnect of its own to come.
    plugin.fail_next_opens("r1", 1, FailureKind::Auth);
    let error = manager
        .open_connection(&key, &params("r1"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Open { .. }), "{error:?}");
    assert_eq!(
        manager
            .connection_status(&key)
            .await
            .unwrap()
            .map(|s| s.state),
        Some(ConnectionState::Failed)
    );

    send_then_drop(manager.retry(&key)).await;

    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Opened))
        .await
        .expect("the retry runs without its caller");
    assert_eq!(
        manager
            .connection_status(&key)
            .await
            .unwrap()
            .map(|s| s.state),
        Some(ConnectionState::Open)
    );
    assert_eq!(get(&plugin.ledger().open_attempts), 2);
    let counters = counters(&manager).await;
    assert_eq!(
        (counters.failed_open_calls, counters.open_calls),
        (1, 1),
        "{counters:?}"
    );
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn status_and_counter_queries_dropped_change_nothing() {
    let plugin = FaultPlugin::new("fault");
    let (manager, _events) = start(&plugin).await;
    let key = plugin.key("r1");
    open(&manager, &plugin, "r1").await;
    let before = seen(&manager, &plugin, &key).await;

    send_then_drop(manager.connection_status(&key)).await;
    send_then_drop(manager.connection_counters_for("fault")).await;
    send_then_drop(manager.connection_counters_snapshot()).await;

    // `seen` asks the supervisor too, after the dropped queries: it is still answering.
    assert_eq!(seen(&manager, &plugin, &key).await, before);
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn from_supervisor_dropped_changes_nothing() {
    let plugin = FaultPlugin::new("fault");
    let (manager, _events) = start(&plugin).await;
    let key = plugin.key("r1");
    open(&manager, &plugin, "r1").await;
    let before = seen(&manager, &plugin, &key).await;

    send_then_drop(ConnectionManager::from_supervisor(manager.supervisor())).await;

    assert_eq!(seen(&manager, &plugin, &key).await, before);
    let again = ConnectionManager::from_supervisor(manager.supervisor())
        .await
        .unwrap();
    assert_eq!(again.timeouts(), manager.timeouts());
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn subscribe_dropped_before_its_answer_changes_nothing() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin).await;
    let key = plugin.key("r1");

    send_then_drop(manager.subscribe()).await;

    open(&manager, &plugin, "r1").await;
    for expected in [EventKind::Created, EventKind::Opening, EventKind::Opened] {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((&event.key, &event.kind), (&key, &expected));
    }
    assert_eq!(events.missed(), 0);
    let mut later = manager.subscribe().await.unwrap();
    manager.close_connection(&key).await.unwrap();
    later
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Closed { .. }))
        .await
        .unwrap();
    finish(manager, &plugin).await;
}

/// An actor that takes lifecycle events and does nothing with them.
struct Sink;

impl Actor for Sink {
    type Msg = EventDelivery;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn subscribe_actor_dropped_before_its_answer_starts_no_forwarding_task() {
    let plugin = FaultPlugin::new("fault");
    let (manager, _events) = start(&plugin).await;
    let (sink, _join) = Actor::spawn(None, Sink, ()).await.unwrap();
    // The forwarding task owns `convert`: whether the closure is still alive tells whether a
    // task was started for it.
    let token = Arc::new(());
    {
        let held = token.clone();
        let subscribing = manager.subscribe_actor(sink.clone(), move |delivery| {
            let _held = &held;
            Some(delivery)
        });
        let mut subscribing = std::pin::pin!(subscribing);
        assert!(futures::poll!(subscribing.as_mut()).is_pending());
        // Answered after the subscription (the mailbox is in order): the subscription now
        // waits, unread, in the dropped future's reply port.
        manager.connection_status(&plugin.key("r1")).await.unwrap();
    }
    assert_eq!(
        Arc::strong_count(&token),
        1,
        "a forwarding task outlived the dropped call"
    );

    // The measure works: a subscription that completes keeps its closure in its task.
    let kept = Arc::new(());
    let held = kept.clone();
    manager
        .subscribe_actor(sink.clone(), move |delivery| {
            let _held = &held;
            Some(delivery)
        })
        .await
        .unwrap();
    assert_eq!(Arc::strong_count(&kept), 2);
    finish(manager, &plugin).await;
    sink.stop(None);
}

#[tokio::test(start_paused = true)]
async fn shutdown_dropped_after_sending_still_closes_everything_and_stops() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin).await;
    open(&manager, &plugin, "r1").await;
    open(&manager, &plugin, "r2").await;

    send_then_drop(manager.shutdown()).await;

    manager
        .supervisor()
        .get_cell()
        .wait(Some(WAIT))
        .await
        .expect("the supervisor stops without the caller");
    assert_shut_down(&manager, &plugin, &mut events, 2).await;
}

/// The supervisor has stopped after closing `expected` connections, each once, each with a
/// `Closed { Shutdown }` event, and then ended the event stream.
async fn assert_shut_down(
    manager: &ConnectionManager,
    plugin: &FaultPlugin,
    events: &mut EventStream,
    expected: usize,
) {
    let mut closed = 0;
    let read = async {
        while let Some(event) = events.next().await {
            if event.kind
                == (EventKind::Closed {
                    reason: CloseReason::Shutdown,
                })
            {
                closed += 1;
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the event stream ends");
    assert_eq!(closed, expected);
    let ledger = plugin.ledger();
    assert_eq!(get(&ledger.closed), expected, "{ledger:?}");
    assert_eq!(get(&ledger.created), expected, "{ledger:?}");
    assert_eq!(get(&ledger.close_abandoned), 0, "{ledger:?}");
    assert_eq!(get(&ledger.dropped_unclosed), 0, "{ledger:?}");
    assert!(matches!(
        manager.connection_status(&plugin.key("r1")).await,
        Err(Error::ShutDown)
    ));
}

// ---- SupervisorGuard ----

#[tokio::test(start_paused = true)]
async fn supervisor_guard_shutdown_dropped_after_sending_still_shuts_down() {
    let plugin = FaultPlugin::new("fault");
    let guard = SupervisorGuard::spawn(config(&plugin)).await.unwrap();
    let manager = ConnectionManager::clone(&guard);
    let mut events = manager.subscribe().await.unwrap();
    open(&manager, &plugin, "r1").await;
    open(&manager, &plugin, "r2").await;

    // The guard is consumed and disarmed: only the message its first poll sent can stop the
    // supervisor now.
    send_then_drop(guard.shutdown()).await;

    manager
        .supervisor()
        .get_cell()
        .wait(Some(WAIT))
        .await
        .expect("the supervisor stops without the caller");
    assert_shut_down(&manager, &plugin, &mut events, 2).await;
}

#[tokio::test(start_paused = true)]
async fn dropping_a_supervisor_guard_shuts_the_supervisor_down() {
    let plugin = FaultPlugin::new("fault");
    let guard = SupervisorGuard::spawn(config(&plugin)).await.unwrap();
    let manager = ConnectionManager::clone(&guard);
    let mut events = manager.subscribe().await.unwrap();
    open(&manager, &plugin, "r1").await;
    open(&manager, &plugin, "r2").await;

    drop(guard);

    manager
        .supervisor()
        .get_cell()
        .wait(Some(WAIT))
        .await
        .expect("the supervisor stops once its guard is dropped");
    assert_shut_down(&manager, &plugin, &mut events, 2).await;
}

// ---- ConnectionHandle ----

#[tokio::test(start_paused = true)]
async fn is_alive_dropped_changes_nothing() {
    let plugin = FaultPlugin::new("fault");
    let (manager, _events) = start(&plugin).await;
    let key = plugin.key("r1");
    let handle = open(&manager, &plugin, "r1").await;
    let before = seen(&manager, &plugin, &key).await;

    // Dropped while the question waits behind a busy actor, then while it waits unread by an
    // idle one.
    let release = hold_the_actor(&handle).await;
    send_then_drop(handle.is_alive()).await;
    let _ = release.send(());
    send_then_drop(handle.is_alive()).await;

    assert!(actor_caught_up(&handle).await);
    assert_eq!(seen(&manager, &plugin, &key).await, before);
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn wait_for_status_dropped_changes_nothing() {
    let plugin = FaultPlugin::new("fault");
    let (manager, _events) = start(&plugin).await;
    let key = plugin.key("r1");
    let handle = open(&manager, &plugin, "r1").await;
    let before = seen(&manager, &plugin, &key).await;

    let failed = |s: &ConnectionStatus| s.state == ConnectionState::Failed;
    send_then_drop(handle.wait_for_status(WAIT, failed)).await;
    let waited =
        tokio::time::timeout(Duration::from_secs(1), handle.wait_for_status(WAIT, failed)).await;
    assert!(waited.is_err(), "{waited:?}");

    assert_eq!(seen(&manager, &plugin, &key).await, before);
    // Watching still works for the next caller.
    handle
        .wait_for_status(WAIT, |s| s.state == ConnectionState::Open)
        .await
        .unwrap();
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_command_dropped_while_it_waits_behind_a_busy_actor_is_dropped_unrun() {
    let plugin = FaultPlugin::new("fault");
    let (manager, _events) = start(&plugin).await;
    let handle = open(&manager, &plugin, "r1").await;

    let release = hold_the_actor(&handle).await;
    for command in COMMANDS {
        send_then_drop(command.call(&handle, "echo dropped")).await;
    }
    let _ = release.send(());

    assert!(actor_caught_up(&handle).await);
    let ledger = plugin.ledger();
    assert_eq!(get(&ledger.commands_started), 0, "{ledger:?}");
    assert_eq!(handle.execute_command("echo next").await.unwrap(), "next");
    assert_eq!(get(&ledger.commands_started), 1, "{ledger:?}");
    finish(manager, &plugin).await;
}

/// The "otherwise" of the doc on a plugin that does have a runner: while the connection is
/// reconnecting the route is withdrawn, so commands wait in the actor, parked.
#[tokio::test(start_paused = true)]
async fn a_command_dropped_while_parked_for_a_reconnect_is_dropped_unrun() {
    let plugin = FaultPlugin::new("fault");
    plugin.concurrent_commands("r1", Some(4));
    let (manager, mut events) = start(&plugin).await;
    let key = plugin.key("r1");
    let handle = open(&manager, &plugin, "r1").await;
    plugin.fail_opens("r1", Some(FailureKind::Refused));
    plugin.drop_sessions("r1");
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Lost { .. }))
        .await
        .unwrap();

    {
        let mut calls: Vec<_> = COMMANDS
            .iter()
            .map(|command| command.call(&handle, "echo parked"))
            .collect();
        for call in &mut calls {
            assert!(futures::poll!(call.as_mut()).is_pending());
        }
        handle
            .wait_for_status(WAIT, |s| s.waiting_requests == COMMANDS.len())
            .await
            .unwrap();
    }

    plugin.fail_opens("r1", None);
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnected { .. }))
        .await
        .unwrap();
    assert!(actor_caught_up(&handle).await);
    // A replayed command would run on a task of the actor's; this one needs the paused clock
    // to move, which it does only once every other task is idle, so any such task has run.
    handle.execute_command("sleep 10").await.unwrap();
    let ledger = plugin.ledger();
    assert_eq!(get(&ledger.commands_started), 1, "{ledger:?}");
    assert_eq!(handle.status().waiting_requests, 0);
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_command_dropped_once_the_actor_started_it_runs_to_its_end() {
    let plugin = FaultPlugin::new("fault");
    let (manager, _events) = start(&plugin).await;
    let handle = open(&manager, &plugin, "r1").await;
    let ledger = plugin.ledger();

    for (done, command) in COMMANDS.into_iter().enumerate() {
        {
            let mut call = command.call(&handle, "sleep 5000");
            assert!(futures::poll!(call.as_mut()).is_pending());
            until("the actor starts the command", || {
                get(&ledger.commands_in_flight) == 1
            })
            .await;
        }
        // Queued behind the command, so answered once it ended.
        assert!(actor_caught_up(&handle).await);
        assert_eq!(
            get(&ledger.commands_ok),
            done + 1,
            "{command:?} ran to its end: {ledger:?}"
        );
        assert_eq!(get(&ledger.commands_in_flight), 0, "{ledger:?}");
    }
    assert_eq!(handle.status().state, ConnectionState::Open);
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_command_on_a_concurrent_runner_is_dropped_with_its_future() {
    let plugin = FaultPlugin::new("fault");
    plugin.concurrent_commands("r1", Some(4));
    let (manager, _events) = start(&plugin).await;
    let handle = open(&manager, &plugin, "r1").await;
    let ledger = plugin.ledger();

    for (started, command) in COMMANDS.into_iter().enumerate() {
        let mut call = command.call(&handle, "sleep 600000");
        // The command runs on this future: nothing starts it but polling it.
        let mut polls = 0;
        while get(&ledger.commands_started) == started {
            assert!(futures::poll!(call.as_mut()).is_pending());
            polls += 1;
            assert!(polls < 100, "{command:?} never started: {ledger:?}");
        }
        assert_eq!(get(&ledger.commands_in_flight), 1, "{ledger:?}");
        drop(call);
        assert_eq!(
            get(&ledger.commands_in_flight),
            0,
            "{command:?}: the plugin's call went with the future: {ledger:?}"
        );
    }
    assert_eq!(get(&ledger.commands_ok), 0, "{ledger:?}");
    assert_eq!(handle.status().state, ConnectionState::Open);
    assert_eq!(handle.execute_command("echo next").await.unwrap(), "next");
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn with_dropped_before_the_actor_starts_it_never_runs() {
    let plugin = FaultPlugin::new("fault");
    let (manager, _events) = start(&plugin).await;
    let handle = open(&manager, &plugin, "r1").await;
    let ran = Arc::new(AtomicBool::new(false));

    let release = hold_the_actor(&handle).await;
    let flag = ran.clone();
    send_then_drop(handle.with::<FaultConnection, _>(move |_| {
        async move { flag.store(true, Ordering::SeqCst) }.boxed()
    }))
    .await;
    let _ = release.send(());

    assert!(actor_caught_up(&handle).await);
    assert!(
        !ran.load(Ordering::SeqCst),
        "the closure ran without its caller"
    );
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn with_dropped_once_started_runs_to_its_end() {
    let plugin = FaultPlugin::new("fault");
    let (manager, _events) = start(&plugin).await;
    let handle = open(&manager, &plugin, "r1").await;
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel::<()>();

    {
        let call = handle.with::<FaultConnection, _>(move |_| {
            async move {
                let _ = started_tx.send(());
                let _ = release_rx.await;
                let _ = done_tx.send(());
            }
            .boxed()
        });
        let mut call = std::pin::pin!(call);
        assert!(futures::poll!(call.as_mut()).is_pending());
        tokio::time::timeout(WAIT, started_rx)
            .await
            .expect("the actor starts the closure")
            .expect("the closure runs");
    }
    let _ = release_tx.send(());

    tokio::time::timeout(WAIT, done_rx)
        .await
        .expect("the closure finishes in time")
        .expect("the closure ran to its end without its caller");
    assert!(actor_caught_up(&handle).await);
    finish(manager, &plugin).await;
}

/// `open` and `open_within`, which share a cancel-safety section.
fn open_call<'a>(
    handle: &'a ConnectionHandle,
    params: &'a ResolvedConnectionParams,
    within: bool,
) -> BoxFuture<'a, Result<(), Error>> {
    if within {
        handle.open_within(params, WAIT).boxed()
    } else {
        handle.open(params).boxed()
    }
}

#[tokio::test(start_paused = true)]
async fn open_dropped_before_the_actor_takes_it_opens_nothing() {
    let plugin = FaultPlugin::new("fault");
    let (manager, _events) = start(&plugin).await;
    let handle = manager
        .get_or_create(plugin.key("r1"))
        .await
        .unwrap()
        .unwrap();

    let release = hold_the_actor(&handle).await;
    let params = params("r1");
    for within in [false, true] {
        send_then_drop(open_call(&handle, &params, within)).await;
    }
    let _ = release.send(());

    assert!(!actor_caught_up(&handle).await);
    assert_eq!(handle.status().state, ConnectionState::Created);
    assert_eq!(get(&plugin.ledger().open_attempts), 0);
    assert_eq!(counters(&manager).await.open_calls, 0);
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn open_dropped_once_the_actor_took_it_still_opens() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin).await;

    for (host, within) in [("r1", false), ("r2", true)] {
        plugin.open_delay(host, Duration::from_secs(5));
        let key = plugin.key(host);
        let handle = manager.get_or_create(key.clone()).await.unwrap().unwrap();
        let params = params(host);
        {
            let mut call = open_call(&handle, &params, within);
            assert!(futures::poll!(call.as_mut()).is_pending());
            events
                .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Opening))
                .await
                .unwrap();
        }
        events
            .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Opened))
            .await
            .expect("the open runs to its end without its caller");
        assert_eq!(handle.status().state, ConnectionState::Open);
        assert!(handle.is_alive().await.unwrap());
    }
    assert_eq!(get(&plugin.ledger().opened), 2);
    assert_eq!(counters(&manager).await.open_calls, 2);
    finish(manager, &plugin).await;
}

// ---- EventStream ----

#[tokio::test(start_paused = true)]
async fn next_dropped_takes_no_event() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin).await;
    let key = plugin.key("r1");

    // Dropped while waiting with nothing to take, by hand and by a timeout.
    send_then_drop(events.next()).await;
    let waited = tokio::time::timeout(Duration::from_secs(1), events.next()).await;
    assert!(waited.is_err(), "{waited:?}");
    // Dropped after the events it waited for arrived, before it was polled again.
    {
        let mut next = std::pin::pin!(events.next());
        assert!(futures::poll!(next.as_mut()).is_pending());
        open(&manager, &plugin, "r1").await;
    }

    for expected in [EventKind::Created, EventKind::Opening, EventKind::Opened] {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((&event.key, &event.kind), (&key, &expected), "none lost");
    }
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn wait_for_dropped_keeps_what_it_skipped_skipped_and_loses_nothing_after() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin).await;
    let closed = |k: &EventKind| matches!(k, EventKind::Closed { .. });

    for (host, by_key) in [("r1", false), ("r2", true)] {
        let key = plugin.key(host);
        open(&manager, &plugin, host).await;
        // Takes Created, Opening and Opened, none of which matches, and waits for a close.
        if by_key {
            send_then_drop(events.wait_for_key(&key, WAIT, closed)).await;
        } else {
            send_then_drop(events.wait_for(WAIT, |e| closed(&e.kind))).await;
        }
        manager.close_connection(&key).await.unwrap();

        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.key, key);
        assert!(
            closed(&event.kind),
            "the skipped events stay skipped, and the close that came after the drop is \
             there: {event:?}"
        );
    }
    finish(manager, &plugin).await;
}
