//! Plugins that run commands concurrently (a `CommandRunner`, as the SSH plugin's channels):
//! handles run those commands on the caller's task without messaging the connection's actor.
//! These tests pin down what that must not change: the plugin's limit, loss and reconnect,
//! parking, panics, close, and idle expiry.

use std::sync::Arc;
use std::time::Duration;

use connection_supervisor::testing::{FaultConnection, FaultLedger, FaultPlugin};
use connection_supervisor::{
    Backoff, CommandError, ConnectionHandle, ConnectionManager, ConnectionPolicy, Error, EventKind,
    EventStream, ResolvedConnectionParams, SupervisorConfig,
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

/// A supervisor over `plugin`, whose host `host` runs up to `limit` commands at once, and that
/// host's connection, open.
async fn start(
    plugin: &FaultPlugin,
    policy: ConnectionPolicy,
    host: &str,
    limit: usize,
) -> (ConnectionManager, EventStream, ConnectionHandle) {
    plugin.concurrent_commands(host, Some(limit));
    let config = SupervisorConfig::default()
        .policy(policy)
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

/// Occupies the connection's actor with a `with` job until the returned sender is used.
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

/// Returns once a command is running on the plugin (nothing reports that as an event).
async fn until_a_command_runs(plugin: &FaultPlugin) {
    let running = async {
        while get(&plugin.ledger().commands_in_flight) == 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(WAIT, running)
        .await
        .expect("a command started in time");
}

#[tokio::test]
async fn commands_run_while_the_connection_actor_is_busy() {
    let plugin = FaultPlugin::new("fault");
    let (manager, _events, handle) = start(&plugin, policy(), "r1", 4).await;
    let release = hold_the_actor(&handle).await;

    // The actor is stuck in the job; a command that needed it would wait for the release.
    let out = tokio::time::timeout(WAIT, handle.execute_command("echo direct"))
        .await
        .expect("the command did not need the actor");
    assert_eq!(out.unwrap(), "direct");
    let output = handle.run_command("echo whole").await.unwrap();
    assert_eq!(
        (output.stdout.as_str(), output.exit_status),
        ("whole", None)
    );

    let _ = release.send(());
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn at_most_the_plugins_limit_of_commands_run_at_once() {
    let plugin = FaultPlugin::new("fault");
    let (manager, _events, handle) = start(&plugin, policy(), "r1", 3).await;
    let commands: Vec<_> = (0..12)
        .map(|_| {
            let handle = handle.clone();
            tokio::spawn(async move { handle.execute_command("sleep 100").await })
        })
        .collect();
    for command in commands {
        command.await.unwrap().unwrap();
    }
    let ledger = plugin.ledger();
    assert_eq!(get(&ledger.commands_ok), 12);
    assert_eq!(get(&ledger.max_commands_in_flight), 3, "{ledger:?}");
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_reported_loss_holds_the_next_command_until_the_reconnect() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events, handle) = start(&plugin, policy(), "r1", 4).await;
    plugin.lose_after_commands("r1", 1);
    assert_eq!(handle.execute_command("echo last").await.unwrap(), "last");

    // The session is gone: this command waits for the reconnect instead of failing.
    assert_eq!(handle.execute_command("echo back").await.unwrap(), "back");
    events
        .wait_for(WAIT, |e| matches!(e.kind, EventKind::Reconnected { .. }))
        .await
        .unwrap();
    let counters = manager.connection_counters_for("fault").await.unwrap();
    assert_eq!(counters.map(|c| (c.losses, c.reconnects)), Some((1, 1)));
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_silently_dead_session_is_noticed_before_the_command_and_repaired() {
    let plugin = FaultPlugin::new("fault");
    let (manager, _events, handle) = start(&plugin, policy(), "r1", 4).await;
    assert_eq!(plugin.kill_sessions_silently("r1"), 1);

    // Nobody reported the loss; the runner says its session is down, so the command goes to
    // the actor, which finds it dead, reconnects, and then runs it.
    assert_eq!(handle.execute_command("echo after").await.unwrap(), "after");
    let counters = manager.connection_counters_for("fault").await.unwrap();
    assert_eq!(counters.map(|c| (c.losses, c.reconnects)), Some((1, 1)));
    assert_eq!(get(&plugin.ledger().opened), 2);
    finish(manager, &plugin).await;
}

// Real clock: on a paused one the polling wait would keep the clock from ever reaching its bound.
#[tokio::test]
async fn a_command_running_when_the_session_drops_fails_as_lost_and_is_not_rerun() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events, handle) = start(&plugin, policy(), "r1", 4).await;
    let running = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.execute_command("sleep 10000").await })
    };
    // Drop the session once the command is surely running on it.
    until_a_command_runs(&plugin).await;
    assert_eq!(plugin.drop_sessions("r1"), 1);
    let error = running.await.unwrap().unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Command {
                source: CommandError::ConnectionLost(_),
                ..
            }
        ),
        "{error}"
    );
    events
        .wait_for(WAIT, |e| matches!(e.kind, EventKind::Reconnected { .. }))
        .await
        .unwrap();
    assert_eq!(get(&plugin.ledger().commands_started), 1, "not re-run");
    finish(manager, &plugin).await;
}

#[tokio::test]
async fn a_panic_in_a_concurrent_command_fails_its_caller_and_restarts_the_key() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events, handle) = start(&plugin, policy(), "r1", 4).await;
    plugin.panic_on_next_command("r1");
    let error = handle.execute_command("echo boom").await.unwrap_err();
    assert!(
        matches!(error, Error::PluginPanicked { ref key, .. } if *key == plugin.key("r1")),
        "{error}"
    );
    events
        .wait_for(WAIT, |e| matches!(e.kind, EventKind::Restarted { .. }))
        .await
        .unwrap();
    // The old handle follows the restart; the restarted instance reopened and runs commands.
    assert_eq!(handle.execute_command("echo again").await.unwrap(), "again");
    let counters = manager.connection_counters_for("fault").await.unwrap();
    assert_eq!(counters.map(|c| (c.crashes, c.restarts)), Some((1, 1)));
    assert_eq!(get(&plugin.ledger().panics), 1);
    finish(manager, &plugin).await;
}

#[tokio::test]
async fn closing_ends_running_commands_and_refuses_those_waiting_for_a_slot() {
    let plugin = FaultPlugin::new("fault");
    let (manager, _events, handle) = start(&plugin, policy(), "r1", 1).await;
    let spawn = |command: &'static str| {
        let handle = handle.clone();
        tokio::spawn(async move { handle.execute_command(command).await })
    };
    let running = spawn("sleep 600000");
    until_a_command_runs(&plugin).await;
    let waiting: Vec<_> = (0..3).map(|_| spawn("echo never")).collect();

    manager.close_connection(&plugin.key("r1")).await.unwrap();
    // Both kinds answer long before their 30 s request timeout.
    let error = tokio::time::timeout(WAIT, running)
        .await
        .expect("the running command ended with the session")
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, Error::Command { .. }), "{error}");
    for command in waiting {
        let error = tokio::time::timeout(WAIT, command)
            .await
            .expect("a waiting command was answered")
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(error, Error::Closed { ref key } if *key == plugin.key("r1")),
            "{error}"
        );
    }
    assert_eq!(get(&plugin.ledger().commands_started), 1);
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_command_longer_than_the_idle_timeout_is_not_cut_off_as_idle() {
    let plugin = FaultPlugin::new("fault");
    let policy = policy().idle_timeout(Some(Duration::from_secs(1)));
    let (manager, mut events, handle) = start(&plugin, policy, "r1", 4).await;
    // Runs through five idle checks; only the time since it ended counts as idle.
    handle.execute_command("sleep 5000").await.unwrap();
    let closed = events
        .wait_for(WAIT, |e| matches!(e.kind, EventKind::Closed { .. }))
        .await
        .unwrap();
    assert_eq!(closed.key, plugin.key("r1"));
    finish(manager, &plugin).await;
}

#[tokio::test]
async fn many_callers_on_one_connection_all_get_their_own_answer() {
    let plugin = FaultPlugin::new("fault");
    let (manager, _events, handle) = start(&plugin, policy(), "r1", 8).await;
    let handle = Arc::new(handle);
    let tasks: Vec<_> = (0..64)
        .map(|caller| {
            let handle = handle.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    let out = handle.execute_command(&format!("echo {caller}-{i}")).await;
                    assert_eq!(out.unwrap(), format!("{caller}-{i}"));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(get(&plugin.ledger().commands_ok), 64 * 50);
    finish(manager, &plugin).await;
}
