//! The promises of issue 10, each in the mode where it used to break: a command cut off is
//! answered and never re-sent, a running supervisor never answers `ShutDown`, `retry` during
//! a reconnect keeps reconnecting, deadlines travel with requests, an open that finds the
//! connection dead goes through loss, and old handles follow a restart.

use std::time::Duration;

use connection_supervisor::testing::{FaultConnection, FaultLedger, FaultPlugin};
use connection_supervisor::{
    Backoff, CommandError, ConnectionHandle, ConnectionManager, ConnectionPolicy, ConnectionState,
    Error, EventKind, EventStream, FailureKind, ResolvedConnectionParams, SupervisorConfig,
};
use futures::FutureExt;
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

/// A supervisor over `plugin`, its event stream, and `host`'s connection, open. `limit` makes
/// the host run commands concurrently (from the handle), as SSH does.
async fn start(
    plugin: &FaultPlugin,
    host: &str,
    limit: Option<usize>,
) -> (ConnectionManager, EventStream, ConnectionHandle) {
    plugin.concurrent_commands(host, limit);
    let config = SupervisorConfig::default()
        .policy(policy())
        .factory(plugin.factory());
    let manager = ConnectionManager::spawn(config).await.expect("supervisor");
    let events = manager.subscribe().await.expect("subscribe");
    let handle = manager
        .open_connection(&plugin.key(host), &ResolvedConnectionParams::new(host))
        .await
        .expect("open")
        .expect("a fault key");
    (manager, events, handle)
}

fn get(counter: &std::sync::atomic::AtomicUsize) -> usize {
    FaultLedger::get(counter)
}

async fn finish(manager: ConnectionManager, plugin: &FaultPlugin) {
    manager.shutdown().await.expect("shutdown");
    let ledger = plugin.ledger();
    assert_eq!(get(&ledger.closed), get(&ledger.created), "{ledger:?}");
    assert_eq!(get(&ledger.closed_twice), 0, "{ledger:?}");
    assert_eq!(get(&ledger.dropped_unclosed), 0, "{ledger:?}");
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

/// Occupies the connection's actor with a `with` job until the returned sender is used (or,
/// with `then_panic`, until the job panics on release).
async fn hold_the_actor(handle: &ConnectionHandle, then_panic: bool) -> oneshot::Sender<()> {
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let (holding_tx, holding_rx) = oneshot::channel::<()>();
    let held = handle.clone();
    tokio::spawn(async move {
        let _ = held
            .with::<FaultConnection, _>(move |_| {
                async move {
                    let _ = holding_tx.send(());
                    let _ = release_rx.await;
                    if then_panic {
                        panic!("scripted crash while holding the actor");
                    }
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

#[tokio::test(start_paused = true)]
async fn a_command_cut_off_by_a_crash_is_answered_as_lost_and_never_sent_again() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events, handle) = start(&plugin, "r1", Some(4)).await;
    let key = plugin.key("r1");

    // Park a long command during an outage, so that the actor itself runs it once the
    // connection is back (on a task of its own, as it does for replayed commands).
    plugin.fail_opens("r1", Some(FailureKind::Refused));
    plugin.drop_sessions("r1");
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Lost { .. }))
        .await
        .unwrap();
    let parked = handle.clone();
    let long = tokio::spawn(async move {
        parked
            .execute_command_within("sleep 600000", Duration::from_secs(1200))
            .await
    });
    handle
        .wait_for_status(WAIT, |s| s.waiting_requests == 1)
        .await
        .unwrap();
    plugin.fail_opens("r1", None);
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnected { .. }))
        .await
        .unwrap();
    until("the replayed command runs", || {
        get(&plugin.ledger().commands_in_flight) == 1
    })
    .await;

    // Another command panics: the actor crashes, and the command it was running is cut off.
    plugin.panic_on_next_command("r1");
    let panicked = handle.execute_command("boom").await.unwrap_err();
    assert!(
        matches!(panicked, Error::PluginPanicked { .. }),
        "{panicked:?}"
    );
    let cut_off = tokio::time::timeout(WAIT, long).await.unwrap().unwrap();
    assert!(
        matches!(
            &cut_off,
            Err(Error::Command {
                source: CommandError::ConnectionLost(_),
                ..
            })
        ),
        "the cut-off command is answered as lost: {cut_off:?}"
    );
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnected { .. }))
        .await
        .unwrap();
    // It started once, and the panicking one once: nothing was sent again.
    assert_eq!(get(&plugin.ledger().commands_started), 2);
    assert_eq!(handle.execute_command("echo back").await.unwrap(), "back");
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn requests_queued_at_a_crashing_actor_reach_its_successor_once() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events, handle) = start(&plugin, "r1", None).await;
    let key = plugin.key("r1");
    let release = hold_the_actor(&handle, true).await;

    // Queued behind the job that will crash the actor: an open through the supervisor, a
    // retry, and a command through an old handle. None of them was taken by the crashing
    // actor, so each goes to the restarted one, and none is answered `ShutDown`.
    let params = ResolvedConnectionParams::new("r1");
    let (opened, retried, echoed) = {
        let open = manager.open_connection(&key, &params);
        let retry = manager.retry(&key);
        let command = handle.execute_command("echo once");
        tokio::pin!(open, retry, command);
        // One poll each sends each request; the status query, answered after the supervisor
        // handled both of its requests, proves those were passed on to the busy actor.
        assert!(futures::poll!(&mut open).is_pending());
        assert!(futures::poll!(&mut retry).is_pending());
        assert!(futures::poll!(&mut command).is_pending());
        manager.connection_status(&key).await.unwrap();
        let _ = release.send(());
        tokio::time::timeout(WAIT, async { tokio::join!(open, retry, command) })
            .await
            .expect("every queued request is answered")
    };
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Restarted { .. }))
        .await
        .unwrap();
    let opened = opened
        .expect("the open reaches the restarted actor")
        .unwrap();
    assert!(opened.is_alive().await.unwrap());
    assert!(retried.is_ok(), "{retried:?}");
    assert_eq!(echoed.unwrap(), "once");
    assert_eq!(get(&plugin.ledger().commands_started), 1);
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_fails_during_an_outage_keeps_the_connection_reconnecting() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events, handle) = start(&plugin, "r1", None).await;
    let key = plugin.key("r1");
    plugin.fail_opens("r1", Some(FailureKind::Refused));
    plugin.drop_sessions("r1");
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnecting { .. }))
        .await
        .unwrap();

    let error = manager.retry(&key).await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Unavailable { state: ConnectionState::Reconnecting, cause: Some(cause), .. }
                if cause.kind == FailureKind::Refused
        ),
        "{error:?}"
    );
    assert_eq!(handle.status().state, ConnectionState::Reconnecting);
    // Reconnection is still on: once the host is back, it comes back by itself.
    plugin.fail_opens("r1", None);
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnected { .. }))
        .await
        .unwrap();
    assert_eq!(handle.status().state, ConnectionState::Open);
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_command_whose_caller_gave_up_never_runs_and_the_bound_replaces_the_timeout() {
    let plugin = FaultPlugin::new("fault");
    let (manager, _events, handle) = start(&plugin, "r1", None).await;
    let release = hold_the_actor(&handle, false).await;

    let started = tokio::time::Instant::now();
    let error = handle
        .execute_command_within("echo too late", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    // The bound is the whole call's: not 300 ms plus the request timeout (30 s).
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );

    let _ = release.send(());
    // The actor took the command only after its caller had gone: it never reached the device.
    assert_eq!(handle.execute_command("echo next").await.unwrap(), "next");
    assert_eq!(get(&plugin.ledger().commands_started), 1);
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn an_open_that_finds_the_connection_dead_goes_through_loss_and_reconnects() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events, handle) = start(&plugin, "r1", None).await;
    let key = plugin.key("r1");
    assert_eq!(plugin.kill_sessions_silently("r1"), 1);

    let reopened = manager
        .open_connection(&key, &ResolvedConnectionParams::new("r1"))
        .await
        .unwrap()
        .unwrap();
    assert!(reopened.same_connection(&handle));
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Lost { .. }))
        .await
        .unwrap();
    let counters = manager
        .connection_counters_for("fault")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            counters.losses,
            counters.reconnects,
            counters.failed_open_calls
        ),
        (1, 1, 0),
        "{counters:?}"
    );
    assert_eq!(handle.status().state, ConnectionState::Open);
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_handle_from_before_a_crash_follows_the_successor_fully() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events, old) = start(&plugin, "r1", Some(4)).await;
    let key = plugin.key("r1");

    plugin.panic_on_next_command("r1");
    assert!(old.execute_command("boom").await.is_err());
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnected { .. }))
        .await
        .unwrap();

    // Its status is the successor's, without a message.
    assert_eq!(old.status().state, ConnectionState::Open);
    old.wait_for_status(WAIT, |s| s.state == ConnectionState::Open)
        .await
        .unwrap();
    // It takes the successor's direct route: a command runs while the new actor is busy.
    let fresh = manager.get_or_create(key.clone()).await.unwrap().unwrap();
    assert!(!fresh.same_connection(&old), "a restart is a new instance");
    let release = hold_the_actor(&fresh, false).await;
    assert_eq!(old.execute_command("echo direct").await.unwrap(), "direct");
    let _ = release.send(());
    // And its actor calls reach the successor.
    assert!(old.is_alive().await.unwrap());
    finish(manager, &plugin).await;
}

// On the real clock: tokio does not auto-advance a paused clock while a blocking task runs.
#[tokio::test]
async fn a_hung_factory_stalls_nothing_and_what_it_makes_late_is_closed() {
    let plugin = FaultPlugin::new("fault");
    let inner = plugin.factory();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    // Blocks its thread, as a factory doing blocking I/O would.
    let factory: std::sync::Arc<connection_supervisor::ConnectionFactory> =
        std::sync::Arc::new(move |key: &connection_supervisor::ConnectionKey| {
            if key.hostname == "stuck" {
                let _ = released.lock().map(|released| released.recv());
            }
            inner(key)
        });
    let config = SupervisorConfig::default()
        .factory(factory)
        .open_timeout(Duration::from_secs(2));
    let manager = ConnectionManager::spawn(config).await.unwrap();

    // On this test's single-threaded runtime, a factory run on a worker would stall every
    // actor; the other key opens while the stuck one waits.
    let stuck = {
        let manager = manager.clone();
        let key = plugin.key("stuck");
        tokio::spawn(async move { manager.get_or_create(key).await })
    };
    let other = manager
        .open_connection(&plugin.key("r1"), &ResolvedConnectionParams::new("r1"))
        .await
        .unwrap()
        .unwrap();
    assert!(other.is_alive().await.unwrap());

    let error = tokio::time::timeout(WAIT, stuck)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Timeout {
                operation: connection_supervisor::Operation::GetOrCreate,
                stage: connection_supervisor::Stage::Factory,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        manager
            .connection_status(&plugin.key("stuck"))
            .await
            .unwrap(),
        None,
        "the key is free again"
    );

    // What the factory returns after its creation expired is closed, and counted as such.
    release.send(()).unwrap();
    let ledger = plugin.ledger();
    until("the late connection is closed", || {
        get(&ledger.created) == 2 && get(&ledger.closed) == 1
    })
    .await;
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_plugins_own_timeouts_bound_the_calls_about_its_keys() {
    let plugin = FaultPlugin::new("fault");
    // Longer than anything the default policy's timeouts allow the manager to wait.
    plugin.open_delay("slow", Duration::from_secs(200));
    let patient = policy().timeouts(
        connection_supervisor::Timeouts::default()
            .open(Duration::from_secs(300))
            .close(Duration::from_secs(60)),
    );
    let config = SupervisorConfig::default()
        .factory(plugin.factory())
        .plugin_policy("fault", patient);
    let manager = ConnectionManager::spawn(config).await.unwrap();
    let key = plugin.key("slow");

    let opened = manager
        .open_connection(&key, &ResolvedConnectionParams::new("slow"))
        .await
        .expect("the open may take the plugin's 300 s, not the default's 30 s")
        .unwrap();
    assert!(opened.is_alive().await.unwrap());
    // A close that takes its full 60 s: the manager waits for it.
    plugin.hang_close("slow", true);
    manager
        .close_connection(&key)
        .await
        .expect("the close may take the plugin's close timeout, not the default's");
    manager.shutdown().await.unwrap();
    let ledger = plugin.ledger();
    assert_eq!(
        (get(&ledger.closed_twice), get(&ledger.close_abandoned)),
        (0, 1),
        "the one close ran once, to its timeout: {ledger:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn callers_do_not_queue_behind_background_reconnects_and_a_slot_wait_is_its_own_error() {
    let plugin = FaultPlugin::new("fault");
    let config = SupervisorConfig::default()
        .factory(plugin.factory())
        .policy(policy())
        .max_concurrent_opens(2)
        .open_timeout(Duration::from_secs(5));
    let manager = ConnectionManager::spawn(config).await.unwrap();
    let mut events = manager.subscribe().await.unwrap();
    let hosts: Vec<String> = (0..6).map(|i| format!("down{i}")).collect();
    for host in &hosts {
        manager
            .open_connection(&plugin.key(host), &ResolvedConnectionParams::new(host))
            .await
            .unwrap()
            .unwrap();
    }
    // An outage: every reconnect attempt hangs until its open timeout, so the background
    // budget (2) is always full and four more reconnects wait for it.
    for host in &hosts {
        plugin.hang_opens(host, true);
        plugin.drop_sessions(host);
    }
    for _ in 0..2 {
        events
            .wait_for(WAIT, |e| matches!(e.kind, EventKind::Reconnecting { .. }))
            .await
            .unwrap();
    }
    // A healthy host opens at once: callers have a budget of their own.
    let healthy = manager
        .open_connection(
            &plugin.key("healthy"),
            &ResolvedConnectionParams::new("healthy"),
        )
        .await
        .expect("an open to a healthy host does not wait behind the reconnects")
        .unwrap();
    assert!(healthy.is_alive().await.unwrap());

    // The callers' budget itself full: the next open's wait for a slot is its own error.
    plugin.hang_opens("stuck1", true);
    plugin.hang_opens("stuck2", true);
    let stuck: Vec<_> = ["stuck1", "stuck2"]
        .into_iter()
        .map(|host| {
            let manager = manager.clone();
            let key = plugin.key(host);
            tokio::spawn(async move {
                manager
                    .open_connection(&key, &ResolvedConnectionParams::new(host))
                    .await
            })
        })
        .collect();
    // On this single-threaded runtime an actor that announced `Opening` has taken its slot:
    // the slots are free and it takes one before it first waits.
    let mut opening = std::collections::HashSet::new();
    while opening.len() < 2 {
        let event = events
            .wait_for(WAIT, |e| {
                matches!(e.kind, EventKind::Opening) && e.key.hostname.starts_with("stuck")
            })
            .await
            .unwrap();
        opening.insert(event.key.hostname);
    }
    // With a bound shorter than the stuck opens' (which would free their slots when they run
    // out), the wait for a slot is what runs out.
    let third = manager
        .get_or_create(plugin.key("third"))
        .await
        .unwrap()
        .unwrap();
    let error = third
        .open_within(
            &ResolvedConnectionParams::new("third"),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Timeout {
                stage: connection_supervisor::Stage::OpenSlot,
                ..
            }
        ),
        "{error:?}"
    );
    let counters = manager
        .connection_counters_for("fault")
        .await
        .unwrap()
        .unwrap();
    assert!(counters.open_slot_timeouts >= 1, "{counters:?}");
    for task in stuck {
        let _ = task.await;
    }
    for host in hosts.iter().map(String::as_str).chain(["stuck1", "stuck2"]) {
        plugin.hang_opens(host, false);
    }
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_first_open_rides_out_transient_refusals() {
    let plugin = FaultPlugin::new("fault");
    plugin.fail_next_opens("r1", 2, FailureKind::Refused);
    let config = SupervisorConfig::default()
        .factory(plugin.factory())
        .policy(policy());
    let manager = ConnectionManager::spawn(config).await.unwrap();
    let handle = manager
        .open_connection(&plugin.key("r1"), &ResolvedConnectionParams::new("r1"))
        .await
        .expect("two refusals are retried within the open timeout")
        .unwrap();
    assert!(handle.is_alive().await.unwrap());
    let counters = manager
        .connection_counters_for("fault")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (counters.failed_open_calls, counters.open_calls),
        (2, 1),
        "{counters:?}"
    );
    // A permanent failure is not retried.
    plugin.fail_next_opens("r2", 1, FailureKind::Auth);
    let error = manager
        .open_connection(&plugin.key("r2"), &ResolvedConnectionParams::new("r2"))
        .await
        .unwrap_err();
    assert_eq!(error.failure_kind(), Some(FailureKind::Auth));
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn handshakes_to_one_address_are_limited_whatever_the_keys() {
    let plugin = FaultPlugin::new("fault");
    let config = SupervisorConfig::default()
        .factory(plugin.factory())
        .max_handshakes_per_address(3);
    let manager = ConnectionManager::spawn(config).await.unwrap();
    // Twelve devices behind one terminal server: different keys, one address.
    let mut server = ResolvedConnectionParams::new("terminal-server");
    server.port = Some(2200);
    let opens: Vec<_> = (0..12)
        .map(|i| {
            let host = format!("device{i}");
            plugin.open_delay(&host, Duration::from_secs(1));
            let (manager, key, params) = (manager.clone(), plugin.key(&host), server.clone());
            tokio::spawn(async move { manager.open_connection(&key, &params).await })
        })
        .collect();
    for open in opens {
        assert!(open.await.unwrap().unwrap().is_some());
    }
    assert_eq!(get(&plugin.ledger().max_opens_in_flight), 3);
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn requests_waiting_for_a_reconnect_are_bounded() {
    let plugin = FaultPlugin::new("fault");
    let config = SupervisorConfig::default()
        .factory(plugin.factory())
        .policy(policy().max_waiting_requests(2));
    let manager = ConnectionManager::spawn(config).await.unwrap();
    let mut events = manager.subscribe().await.unwrap();
    let key = plugin.key("r1");
    let handle = manager
        .open_connection(&key, &ResolvedConnectionParams::new("r1"))
        .await
        .unwrap()
        .unwrap();
    plugin.fail_opens("r1", Some(FailureKind::Refused));
    plugin.drop_sessions("r1");
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnecting { .. }))
        .await
        .unwrap();
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            let handle = handle.clone();
            tokio::spawn(async move {
                handle
                    .execute_command_within(&format!("echo {i}"), Duration::from_secs(600))
                    .await
            })
        })
        .collect();
    handle
        .wait_for_status(WAIT, |s| s.waiting_requests == 2)
        .await
        .unwrap();
    let refused = handle.execute_command("echo 2").await.unwrap_err();
    assert!(
        matches!(refused, Error::Overloaded { waiting: 2, .. }),
        "{refused:?}"
    );
    plugin.fail_opens("r1", None);
    for (i, task) in waiting.into_iter().enumerate() {
        let echoed = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        assert_eq!(echoed.unwrap(), i.to_string());
    }
    finish(manager, &plugin).await;
}

/// An actor that takes events and does nothing with them.
struct Listener;

impl ractor::Actor for Listener {
    type Msg = connection_supervisor::EventDelivery;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ractor::ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }
}

#[tokio::test]
async fn a_subscriber_that_stops_takes_its_forwarding_task_with_it() {
    let plugin = FaultPlugin::new("fault");
    let manager = ConnectionManager::spawn(SupervisorConfig::default().factory(plugin.factory()))
        .await
        .unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let (listener, join) = ractor::Actor::spawn(None, Listener, ()).await.unwrap();
    manager
        .subscribe_actor(listener.clone(), Some)
        .await
        .unwrap();
    listener.stop(None);
    join.await.unwrap();
    // No event happens: the forwarding task must notice the stop by itself. Nothing announces
    // a task's end, so watch the runtime's count of live tasks, bounded.
    let settled = async {
        while metrics.num_alive_tasks() > baseline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WAIT, settled)
        .await
        .expect("the forwarding task ended with its actor");
    manager.shutdown().await.unwrap();
}
