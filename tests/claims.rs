//! Claims of the README and docs/architecture.md that had no test of their own (issue 10):
//! giving up after `max_reconnect_attempts`, `reconnect(false)`, subscribers that fall behind,
//! panics in `health_check` and `command_runner`, lifetime expiry during a running command,
//! and eviction when every connection is busy. Tests on tokio's paused clock are
//! deterministic: virtual time only moves when everything is idle.

use std::time::Duration;

use connection_supervisor::testing::{FaultConnection, FaultLedger, FaultPlugin};
use connection_supervisor::{
    AtLimit, Backoff, CloseReason, ConnectionHandle, ConnectionManager, ConnectionPolicy,
    ConnectionState, Error, EventDelivery, EventKind, EventStream, FailureKind, LimitScope,
    ResolvedConnectionParams, SupervisorConfig,
};
use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, oneshot};

const WAIT: Duration = Duration::from_secs(120);

fn policy() -> ConnectionPolicy {
    ConnectionPolicy::default().backoff(
        Backoff::default()
            .initial(Duration::from_millis(100))
            .max(Duration::from_secs(2))
            .multiplier(2.0)
            .jitter(0.2),
    )
}

async fn start(plugin: &FaultPlugin, config: SupervisorConfig) -> (ConnectionManager, EventStream) {
    let manager = ConnectionManager::spawn(config.factory(plugin.factory()))
        .await
        .expect("supervisor starts");
    let events = manager.subscribe().await.expect("subscribe");
    (manager, events)
}

async fn open(manager: &ConnectionManager, plugin: &FaultPlugin, host: &str) -> ConnectionHandle {
    manager
        .open_connection(&plugin.key(host), &ResolvedConnectionParams::new(host))
        .await
        .unwrap_or_else(|error| panic!("open {host}: {error}"))
        .expect("a fault key")
}

fn get(counter: &std::sync::atomic::AtomicUsize) -> usize {
    FaultLedger::get(counter)
}

async fn counters(manager: &ConnectionManager) -> connection_supervisor::ConnectionCounters {
    manager
        .connection_counters_for("fault")
        .await
        .expect("counters")
        .expect("the plugin made connections")
}

/// Shuts down and checks that every instance was closed once, and every close finished.
async fn finish(manager: ConnectionManager, plugin: &FaultPlugin) {
    manager.shutdown().await.expect("shutdown");
    let ledger = plugin.ledger();
    assert_eq!(get(&ledger.closed), get(&ledger.created), "{ledger:?}");
    assert_eq!(get(&ledger.close_abandoned), 0, "{ledger:?}");
    assert_eq!(get(&ledger.closed_twice), 0, "{ledger:?}");
    assert_eq!(get(&ledger.dropped_unclosed), 0, "{ledger:?}");
}

/// An event's kind without its jitter and timestamps, so a sequence reads as a list.
fn summary(kind: &EventKind) -> String {
    match kind {
        EventKind::Reconnecting { attempt, .. } => format!("Reconnecting {attempt}"),
        EventKind::OpenFailed { failure, attempt } => {
            format!("OpenFailed {attempt} {:?}", failure.kind)
        }
        EventKind::GaveUp { failure } => format!("GaveUp {:?}", failure.kind),
        EventKind::Lost { .. } => "Lost".to_owned(),
        other => format!("{other:?}"),
    }
}

/// Returns once `count` commands are running on the plugin (nothing reports that as an event).
async fn until_commands_run(plugin: &FaultPlugin, count: usize) {
    let running = async {
        while get(&plugin.ledger().commands_in_flight) < count {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(WAIT, running)
        .await
        .expect("the commands started in time");
}

// ---- max_reconnect_attempts ----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn after_max_reconnect_attempts_the_key_gives_up_with_the_last_cause() {
    const MAX: u32 = 3;
    let plugin = FaultPlugin::new("fault");
    let config = SupervisorConfig::default().policy(policy().max_reconnect_attempts(MAX));
    let (manager, mut events) = start(&plugin, config).await;
    let key = plugin.key("r1");
    let handle = open(&manager, &plugin, "r1").await;

    // The host refuses (a transient kind, retried for ever without the limit), and fails the
    // last attempt differently, so the cause given up with is seen to be the last one.
    events
        .wait_for_key(&key, WAIT, |k| *k == EventKind::Opened)
        .await
        .unwrap();
    plugin.fail_opens("r1", Some(FailureKind::Refused));
    plugin.drop_sessions("r1");
    let parked = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.execute_command_within("echo never", WAIT).await })
    };
    handle
        .wait_for_status(WAIT, |status| status.waiting_requests == 1)
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let event = events.wait_for_key(&key, WAIT, |_| true).await.unwrap();
        if matches!(event.kind, EventKind::OpenFailed { attempt, .. } if attempt == MAX - 1) {
            plugin.fail_opens("r1", Some(FailureKind::Transport));
        }
        seen.push(summary(&event.kind));
        if matches!(event.kind, EventKind::GaveUp { .. }) {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            "Lost",
            "Reconnecting 1",
            "OpenFailed 1 Refused",
            "Reconnecting 2",
            "OpenFailed 2 Refused",
            "Reconnecting 3",
            "OpenFailed 3 Transport",
            "GaveUp Transport",
        ]
    );

    let error = parked.await.unwrap().unwrap_err();
    assert!(
        matches!(&error, Error::Unavailable { key: k, state: ConnectionState::Failed, cause: Some(c) }
            if *k == key && c.kind == FailureKind::Transport),
        "the parked request: {error:?}"
    );
    let status = handle.status();
    assert_eq!(status.state, ConnectionState::Failed);
    assert_eq!(
        status.last_error.map(|e| e.kind),
        Some(FailureKind::Transport)
    );
    let now = counters(&manager).await;
    assert_eq!(
        (
            now.open_calls,
            now.losses,
            now.failed_open_calls,
            now.reconnects
        ),
        (1, 1, MAX as usize, 0),
        "exactly {MAX} failed opens after the loss: {now:?}"
    );

    // An hour later: not one more attempt, and requests still get the cause.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(get(&plugin.ledger().open_attempts), 1 + MAX as usize);
    let error = handle.execute_command("echo still").await.unwrap_err();
    assert_eq!(
        error.failure_kind(),
        Some(FailureKind::Transport),
        "{error}"
    );
    finish(manager, &plugin).await;
}

// ---- reconnect(false) ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn without_reconnect_a_lost_connection_fails_at_once_until_opened_or_retried() {
    let plugin = FaultPlugin::new("fault");
    let config = SupervisorConfig::default().policy(policy().reconnect(false));
    let (manager, mut events) = start(&plugin, config).await;
    let key = plugin.key("r1");
    let handle = open(&manager, &plugin, "r1").await;
    events
        .wait_for_key(&key, WAIT, |k| *k == EventKind::Opened)
        .await
        .unwrap();

    plugin.drop_sessions("r1");
    let mut seen = Vec::new();
    let gave_up = loop {
        let event = events.wait_for_key(&key, WAIT, |_| true).await.unwrap();
        seen.push(summary(&event.kind));
        if matches!(event.kind, EventKind::GaveUp { .. }) {
            break event;
        }
    };
    assert_eq!(seen, ["Lost", "GaveUp Transport"], "no reconnect attempt");
    let failure = gave_up.kind.failure().expect("GaveUp has a cause");
    assert!(failure.message.contains("scripted drop"), "{failure}");
    assert_eq!(handle.status().state, ConnectionState::Failed);
    let error = handle.execute_command("echo x").await.unwrap_err();
    assert!(
        matches!(&error, Error::Unavailable { state: ConnectionState::Failed, cause: Some(c), .. }
            if c.kind == FailureKind::Transport),
        "{error:?}"
    );
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        get(&plugin.ledger().open_attempts),
        1,
        "nothing reopened it"
    );

    // An explicit open brings it back.
    let reopened = open(&manager, &plugin, "r1").await;
    assert!(reopened.same_connection(&handle));
    assert_eq!(handle.execute_command("echo back").await.unwrap(), "back");

    // A session that died silently is found by the next request, which is answered at once
    // rather than parked for a reconnect that will never come; `retry` brings it back too.
    plugin.kill_sessions_silently("r1");
    let error = handle.execute_command("echo x").await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert_eq!(handle.status().state, ConnectionState::Failed);
    manager.retry(&key).await.unwrap();
    assert_eq!(handle.status().state, ConnectionState::Open);
    assert_eq!(handle.execute_command("echo again").await.unwrap(), "again");

    let now = counters(&manager).await;
    assert_eq!(
        (
            now.open_calls,
            now.losses,
            now.failed_open_calls,
            now.reconnects
        ),
        (3, 2, 0, 0),
        "{now:?}"
    );
    finish(manager, &plugin).await;
}

// ---- falling behind the event buffer -------------------------------------------------------

const EVENT_CAPACITY: usize = 4;

/// Opens r0 (3 events: Created, Opening, Opened), then opens and closes r1, r2 and r3 (4 events
/// each): 15 events, 11 more than the buffer keeps.
async fn fifteen_events(manager: &ConnectionManager, plugin: &FaultPlugin) {
    open(manager, plugin, "r0").await;
    more_than_the_buffer_keeps(manager, plugin).await;
}

/// Opens and closes r1, r2 and r3: 12 events, three times what the buffer keeps.
async fn more_than_the_buffer_keeps(manager: &ConnectionManager, plugin: &FaultPlugin) {
    for host in ["r1", "r2", "r3"] {
        open(manager, plugin, host).await;
        manager.close_connection(&plugin.key(host)).await.unwrap();
    }
}

/// An embedder's actor that records what it is told.
struct Recorder;

impl Actor for Recorder {
    type Msg = EventDelivery;
    type State = mpsc::UnboundedSender<String>;
    type Arguments = mpsc::UnboundedSender<String>;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        delivery: Self::Msg,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = tx.send(match delivery {
            EventDelivery::Event(event) => format!("{} {:?}", event.key, event.kind),
            other => format!("{other:?}"),
        });
        Ok(())
    }
}

/// Two workers: the forwarding task is held in `block_in_place`, which needs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_subscriber_that_falls_behind_is_told_how_many_events_it_lost() {
    let plugin = FaultPlugin::new("fault");
    let config = SupervisorConfig::default().event_capacity(EVENT_CAPACITY);
    let manager = ConnectionManager::spawn(config.factory(plugin.factory()))
        .await
        .unwrap();
    let (tx, mut told) = mpsc::unbounded_channel();
    let (recorder, join) = Actor::spawn(None, Recorder, tx).await.unwrap();
    // An actor's own mailbox is unbounded, so a slow actor never lags: only the task that
    // forwards events to it can fall behind the buffer. It runs `convert`, so holding
    // `convert` on the first event is how this subscriber falls behind.
    let (held_tx, mut held) = mpsc::unbounded_channel::<()>();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    manager
        .subscribe_actor(recorder.clone(), move |delivery| {
            let _ = held_tx.send(());
            // Returns at once after the sender is dropped.
            tokio::task::block_in_place(|| gate.recv().ok());
            Some(delivery)
        })
        .await
        .unwrap();

    open(&manager, &plugin, "r0").await;
    tokio::time::timeout(WAIT, held.recv())
        .await
        .expect("the forwarder took the first event")
        .expect("the forwarder runs");
    // Fewer events than the buffer keeps were out, so what it holds is r0's first. Now 12 more
    // (14 past it) while it is held: the 10 oldest of them are lost.
    more_than_the_buffer_keeps(&manager, &plugin).await;
    drop(release);
    let mut deliveries = Vec::new();
    for _ in 0..6 {
        let delivery = tokio::time::timeout(WAIT, told.recv())
            .await
            .expect("deliveries after the release")
            .expect("the recorder runs");
        deliveries.push(delivery);
    }
    assert_eq!(
        deliveries,
        [
            "r0/fault Created",
            "Lagged(10)",
            "r3/fault Created",
            "r3/fault Opening",
            "r3/fault Opened",
            "r3/fault Closed { reason: Requested }",
        ]
    );

    // Caught up: events come as they happen, then the end of the stream after shutdown.
    manager.close_connection(&plugin.key("r0")).await.unwrap();
    manager.shutdown().await.unwrap();
    let mut rest = Vec::new();
    while let Some(delivery) = tokio::time::timeout(WAIT, told.recv()).await.unwrap() {
        let ended = delivery == "Ended";
        rest.push(delivery);
        if ended {
            break;
        }
    }
    assert_eq!(rest, ["r0/fault Closed { reason: Requested }", "Ended"]);
    recorder.stop(None);
    join.await.unwrap();
}

#[tokio::test]
async fn a_stream_that_falls_behind_counts_what_it_missed_and_goes_on() {
    let plugin = FaultPlugin::new("fault");
    let config = SupervisorConfig::default().event_capacity(EVENT_CAPACITY);
    let (manager, mut events) = start(&plugin, config).await;
    fifteen_events(&manager, &plugin).await;
    assert_eq!(events.missed(), 0, "nothing is known missed before reading");

    let mut kept = Vec::new();
    for _ in 0..EVENT_CAPACITY {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap()
            .unwrap();
        kept.push(format!("{} {:?}", event.key, event.kind));
    }
    assert_eq!(
        kept,
        [
            "r3/fault Created",
            "r3/fault Opening",
            "r3/fault Opened",
            "r3/fault Closed { reason: Requested }",
        ]
    );
    assert_eq!(events.missed(), 15 - EVENT_CAPACITY as u64);

    manager.close_connection(&plugin.key("r0")).await.unwrap();
    let current = events.wait_for(WAIT, |_| true).await.unwrap();
    assert_eq!(
        (current.key, current.kind),
        (
            plugin.key("r0"),
            EventKind::Closed {
                reason: CloseReason::Requested
            }
        )
    );
    assert_eq!(events.missed(), 11, "nothing more missed once caught up");
    manager.shutdown().await.unwrap();
    assert!(
        events.next().await.is_none(),
        "the stream ends after shutdown"
    );
}

// ---- panics in health_check and command_runner ---------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_panic_in_a_health_check_crashes_and_restarts_the_key_reopened() {
    let plugin = FaultPlugin::new("fault");
    let config =
        SupervisorConfig::default().policy(policy().health_check_interval(Duration::from_secs(5)));
    let (manager, mut events) = start(&plugin, config).await;
    let key = plugin.key("r1");
    let handle = open(&manager, &plugin, "r1").await;
    let other = open(&manager, &plugin, "r2").await;

    plugin.panic_on_next_health_check("r1");
    events
        .wait_for_key(&key, WAIT, |k| {
            *k == EventKind::Closed {
                reason: CloseReason::Crashed,
            }
        })
        .await
        .unwrap();
    let restarted = events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Restarted { .. }))
        .await
        .unwrap();
    assert!(
        matches!(&restarted.kind, EventKind::Restarted { restarts: 1, reason }
            if reason.contains("health_check") && reason.contains("scripted panic")),
        "{restarted:?}"
    );
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnected { .. }))
        .await
        .unwrap();

    // The old handle reaches the fresh, reopened instance; the other key never noticed.
    assert_eq!(handle.execute_command("echo back").await.unwrap(), "back");
    let commands_on_r1 = handle
        .with(|c: &mut FaultConnection| async move { c.commands() }.boxed())
        .await
        .unwrap();
    assert_eq!(commands_on_r1, 1, "a fresh instance");
    assert_eq!(other.execute_command("echo fine").await.unwrap(), "fine");
    let now = counters(&manager).await;
    assert_eq!(
        (
            now.crashes,
            now.restarts,
            now.create_calls,
            now.close_calls,
            now.reconnects,
            now.losses
        ),
        (1, 1, 3, 1, 1, 0),
        "{now:?}"
    );
    assert_eq!(get(&plugin.ledger().panics), 1);
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_command_runner_leaves_commands_going_through_the_actor() {
    let plugin = FaultPlugin::new("fault");
    let (manager, _events) = start(&plugin, SupervisorConfig::default().policy(policy())).await;
    plugin.concurrent_commands("broken", Some(4));
    plugin.panic_in_command_runner("broken", true);
    plugin.concurrent_commands("fine", Some(4));
    let broken = open(&manager, &plugin, "broken").await;
    let fine = open(&manager, &plugin, "fine").await;
    assert_eq!(get(&plugin.ledger().panics), 1, "the runner was asked");

    let three_at_once = |handle: &ConnectionHandle| {
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let handle = handle.clone();
                tokio::spawn(async move { handle.execute_command("sleep 1000").await })
            })
            .collect();
        async move {
            for task in tasks {
                assert_eq!(task.await.unwrap().unwrap(), "");
            }
        }
    };
    // Through the actor, one at a time, and all of them succeed.
    three_at_once(&broken).await;
    assert_eq!(get(&plugin.ledger().max_commands_in_flight), 1);
    // The same commands on a runner run together: the one-at-a-time above was the actor.
    three_at_once(&fine).await;
    assert_eq!(get(&plugin.ledger().max_commands_in_flight), 3);

    assert_eq!(broken.status().state, ConnectionState::Open);
    let now = counters(&manager).await;
    assert_eq!((now.crashes, now.restarts), (0, 0), "no crash: {now:?}");
    finish(manager, &plugin).await;
}

// ---- lifetime expiry during a command ------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn lifetime_expiry_lets_a_running_command_finish_then_closes() {
    let plugin = FaultPlugin::new("fault");
    let config = SupervisorConfig::default().policy(policy().max_lifetime(Duration::from_secs(1)));
    let (manager, mut events) = start(&plugin, config).await;
    // "direct" runs commands on its runner, beside its actor; "actor" runs them in its actor.
    plugin.concurrent_commands("direct", Some(4));
    let hosts = ["direct", "actor"];
    let mut commands = Vec::new();
    for host in hosts {
        let handle = open(&manager, &plugin, host).await;
        commands.push(tokio::spawn(async move {
            handle.execute_command("sleep 5000").await
        }));
    }
    // Both run through the lifetime (1 s) and four seconds past it.
    for (host, command) in hosts.iter().zip(commands) {
        match command.await.unwrap() {
            Ok(output) => assert_eq!(output, ""),
            Err(error) => panic!("the command on {host} was cut off: {error}"),
        }
    }
    let mut expired = Vec::new();
    while expired.len() < hosts.len() {
        let closed = events
            .wait_for(WAIT, |e| {
                e.kind
                    == EventKind::Closed {
                        reason: CloseReason::Lifetime,
                    }
            })
            .await
            .unwrap();
        expired.push(closed.key.hostname);
    }
    expired.sort();
    assert_eq!(
        expired,
        ["actor", "direct"],
        "closed once the commands ended"
    );
    assert_eq!(get(&plugin.ledger().closed), 2);
    finish(manager, &plugin).await;
}

// ---- eviction when every connection is busy ------------------------------------------------

/// Two connections at the limit, each running a long command ("direct" on its runner beside
/// its actor, "actor" inside its actor): a third key is refused naming `scope`, and neither
/// busy connection is closed to make room.
async fn every_connection_busy_refuses_a_new_key(config: SupervisorConfig, scope: LimitScope) {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin, config.at_limit(AtLimit::EvictIdle)).await;
    plugin.concurrent_commands("direct", Some(4));
    let mut commands = Vec::new();
    for host in ["direct", "actor"] {
        let handle = open(&manager, &plugin, host).await;
        commands.push(tokio::spawn(async move {
            handle
                .execute_command_within("sleep 60000", Duration::from_secs(120))
                .await
        }));
    }
    until_commands_run(&plugin, 2).await;

    let error = manager.get_or_create(plugin.key("new")).await.unwrap_err();
    assert!(
        matches!(&error, Error::LimitReached { key, scope: s, limit: 2 }
            if *key == plugin.key("new") && *s == scope),
        "{error:?}"
    );
    assert!(error.to_string().contains("none is idle"), "{error}");
    let error = manager
        .open_connection(&plugin.key("new"), &ResolvedConnectionParams::new("new"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::LimitReached { .. }), "{error:?}");
    assert_eq!(get(&plugin.ledger().close_abandoned), 0);
    assert_eq!(
        get(&plugin.ledger().closed),
        0,
        "a busy connection was closed"
    );
    for host in ["direct", "actor"] {
        let status = manager.connection_status(&plugin.key(host)).await.unwrap();
        assert_eq!(
            status.map(|s| s.state),
            Some(ConnectionState::Open),
            "{host}"
        );
    }
    for command in commands {
        assert_eq!(command.await.unwrap().unwrap(), "", "not cut off");
    }

    // Once a command ended its connection is idle, and makes room.
    manager.get_or_create(plugin.key("new")).await.unwrap();
    events
        .wait_for(WAIT, |e| {
            e.kind
                == EventKind::Closed {
                    reason: CloseReason::Evicted,
                }
        })
        .await
        .unwrap();
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn at_the_total_limit_with_every_connection_busy_a_new_key_is_refused() {
    let config = SupervisorConfig::default()
        .policy(policy())
        .max_connections(2);
    every_connection_busy_refuses_a_new_key(config, LimitScope::Total).await;
}

#[tokio::test(start_paused = true)]
async fn at_a_plugin_limit_with_every_connection_busy_a_new_key_is_refused() {
    let config = SupervisorConfig::default()
        .policy(policy())
        .max_connections_for("fault", 2);
    every_connection_busy_refuses_a_new_key(config, LimitScope::Plugin("fault".to_owned())).await;
}

// ---- an open queued behind a crash ---------------------------------------------------------

/// docs/architecture.md: "if ... the actor reached had already closed or stopped, the caller
/// gets `Closed` and the manager asks once more"; README: a panicking plugin "costs its caller
/// an error and nothing else". An open routed to an actor that then crashes must reach the
/// restarted connection, or at worst fail as `Closed`; never as `ShutDown` while the
/// supervisor runs.
#[tokio::test(start_paused = true)]
async fn an_open_queued_behind_a_crash_reaches_the_restarted_connection() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin, SupervisorConfig::default().policy(policy())).await;
    let key = plugin.key("r1");
    let handle = open(&manager, &plugin, "r1").await;

    // Keep the actor busy in a closure that panics when released.
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let (holding_tx, holding_rx) = oneshot::channel::<()>();
    let crashing = {
        let handle = handle.clone();
        tokio::spawn(async move {
            handle
                .with(move |_: &mut FaultConnection| {
                    async move {
                        let _ = holding_tx.send(());
                        let _ = release_rx.await;
                        panic!("scripted panic in a with closure");
                    }
                    .boxed()
                })
                .await
        })
    };
    holding_rx.await.unwrap();
    let opening = {
        let manager = manager.clone();
        let key = key.clone();
        tokio::spawn(async move {
            manager
                .open_connection(&key, &ResolvedConnectionParams::new("r1"))
                .await
        })
    };
    // On this one-thread runtime the spawned task sends its request as soon as this one
    // yields; the supervisor handles its messages in order, so once it answered a later one it
    // has routed the open to the busy actor's mailbox.
    tokio::task::yield_now().await;
    manager.connection_status(&key).await.unwrap();
    release_tx.send(()).unwrap();
    assert!(matches!(
        crashing.await.unwrap(),
        Err(Error::PluginPanicked { .. })
    ));
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Restarted { .. }))
        .await
        .unwrap();
    let opened = opening.await.unwrap();
    assert!(
        matches!(&opened, Ok(Some(_)) | Err(Error::Closed { .. })),
        "{opened:?}"
    );
    finish(manager, &plugin).await;
}
