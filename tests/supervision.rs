//! Supervision: loss, reconnect with backoff, permanent failures, crash restarts and
//! quarantine, bounded waits, limits, idle and lifetime expiry, events, shutdown. Tests on
//! tokio's paused clock are deterministic: virtual time only moves when everything is idle.

use std::time::Duration;

use connection_supervisor::runtime::ConnectionMessage;
use connection_supervisor::testing::{FaultLedger, FaultPlugin};
use connection_supervisor::{
    AtLimit, Backoff, CloseReason, ConnectionManager, ConnectionPolicy, ConnectionState, Error,
    EventDelivery, EventKind, EventStream, FailureKind, Operation, ResolvedConnectionParams,
    RestartPolicy, Stage, SupervisorConfig,
};

const WAIT: Duration = Duration::from_secs(120);

fn backoff() -> Backoff {
    Backoff::default()
        .initial(Duration::from_millis(100))
        .max(Duration::from_secs(2))
        .multiplier(2.0)
        .jitter(0.2)
}

fn policy() -> ConnectionPolicy {
    ConnectionPolicy::default().backoff(backoff())
}

async fn start(plugin: &FaultPlugin, config: SupervisorConfig) -> (ConnectionManager, EventStream) {
    let manager = ConnectionManager::spawn(config.factory(plugin.factory()))
        .await
        .expect("supervisor starts");
    let events = manager.subscribe().await.expect("subscribe");
    (manager, events)
}

fn params(host: &str) -> ResolvedConnectionParams {
    ResolvedConnectionParams::new(host)
}

fn get(counter: &std::sync::atomic::AtomicUsize) -> usize {
    FaultLedger::get(counter)
}

async fn finish(manager: ConnectionManager, plugin: &FaultPlugin) {
    manager.shutdown().await.expect("shutdown");
    let ledger = plugin.ledger();
    assert_eq!(
        get(&ledger.closed),
        get(&ledger.created),
        "closed != created: {ledger:?}"
    );
    assert_eq!(get(&ledger.closed_twice), 0, "{ledger:?}");
    assert_eq!(get(&ledger.dropped_unclosed), 0, "{ledger:?}");
}

#[tokio::test(start_paused = true)]
async fn a_reported_loss_is_reconnected_after_the_first_backoff_step() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin, SupervisorConfig::default().policy(policy())).await;
    let key = plugin.key("r1");
    let handle = manager
        .open_connection(&key, &params("r1"))
        .await
        .unwrap()
        .unwrap();

    assert_eq!(plugin.drop_sessions("r1"), 1);
    let lost = events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Lost { .. }))
        .await
        .unwrap();
    assert!(matches!(&lost.kind, EventKind::Lost { reason } if reason.contains("scripted drop")));
    let scheduled = events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnecting { .. }))
        .await
        .unwrap();
    let EventKind::Reconnecting { attempt, delay } = scheduled.kind else {
        unreachable!()
    };
    assert_eq!(attempt, 1);
    assert!(
        (80..=120).contains(&delay.as_millis()),
        "first delay {delay:?}"
    );
    events
        .wait_for_key(&key, WAIT, |k| {
            matches!(k, EventKind::Reconnected { attempts: 1 })
        })
        .await
        .unwrap();

    assert_eq!(handle.status().state, ConnectionState::Open);
    assert_eq!(handle.execute_command("echo back").await.unwrap(), "back");
    let counters = manager
        .connection_counters_for("fault")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            counters.create_calls,
            counters.open_calls,
            counters.losses,
            counters.reconnects
        ),
        (1, 2, 1, 1),
        "{counters:?}"
    );
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_while_the_host_is_down_and_resets_when_it_is_back() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin, SupervisorConfig::default().policy(policy())).await;
    let key = plugin.key("r1");
    manager.open_connection(&key, &params("r1")).await.unwrap();

    plugin.fail_opens("r1", Some(FailureKind::Refused));
    plugin.drop_sessions("r1");
    let mut delays = Vec::new();
    while delays.len() < 5 {
        let event = events
            .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnecting { .. }))
            .await
            .unwrap();
        if let EventKind::Reconnecting { attempt, delay } = event.kind {
            assert_eq!(attempt as usize, delays.len() + 1);
            delays.push(delay);
        }
    }
    // 100, 200, 400, 800, 1600 ms, each within ±20 %.
    for (n, delay) in delays.iter().enumerate() {
        let base = 100.0 * 2f64.powi(n as i32);
        let ms = delay.as_secs_f64() * 1000.0;
        assert!(
            ms >= base * 0.8 - 1.0 && ms <= base * 1.2 + 1.0,
            "attempt {}: {delay:?}",
            n + 1
        );
    }
    let status = manager.connection_status(&key).await.unwrap().unwrap();
    assert_eq!(status.state, ConnectionState::Reconnecting);
    assert_eq!(status.attempts, 4);
    assert_eq!(
        status.last_error.as_ref().map(|e| e.kind),
        Some(FailureKind::Refused)
    );
    assert!(status.next_attempt_at.is_some());

    plugin.fail_opens("r1", None);
    let back = events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnected { .. }))
        .await
        .unwrap();
    assert_eq!(back.kind, EventKind::Reconnected { attempts: 5 });
    let status = manager.connection_status(&key).await.unwrap().unwrap();
    assert_eq!((status.state, status.attempts), (ConnectionState::Open, 0));
    assert_eq!(
        status.last_error.map(|e| e.kind),
        Some(FailureKind::Refused),
        "kept for operators"
    );
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_gives_up_after_a_few_attempts_and_never_storms() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin, SupervisorConfig::default().policy(policy())).await;
    let key = plugin.key("r1");
    let handle = manager
        .open_connection(&key, &params("r1"))
        .await
        .unwrap()
        .unwrap();

    plugin.fail_opens("r1", Some(FailureKind::Auth));
    plugin.drop_sessions("r1");
    let gave_up = events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::GaveUp { .. }))
        .await
        .unwrap();
    assert_eq!(
        gave_up.kind.failure().map(|f| f.kind),
        Some(FailureKind::Auth)
    );
    let attempts_at_give_up = get(&plugin.ledger().open_attempts);
    assert_eq!(
        attempts_at_give_up,
        1 + 2,
        "the first open, then 2 permanent failures"
    );

    // An hour of virtual time later: not one more attempt.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(get(&plugin.ledger().open_attempts), attempts_at_give_up);
    assert_eq!(handle.status().state, ConnectionState::Failed);

    let error = handle.execute_command("show version").await.unwrap_err();
    assert!(
        matches!(&error, Error::Unavailable { state: ConnectionState::Failed, cause: Some(c), .. } if c.kind == FailureKind::Auth),
        "{error:?}"
    );
    assert_eq!(error.failure_kind(), Some(FailureKind::Auth));
    assert!(
        error.to_string().contains("authentication rejected"),
        "{error}"
    );

    // Fixed credentials + an explicit retry bring it back.
    plugin.fail_opens("r1", None);
    manager.retry(&key).await.unwrap();
    assert_eq!(handle.status().state, ConnectionState::Open);
    assert_eq!(handle.execute_command("echo ok").await.unwrap(), "ok");
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn requests_during_a_reconnect_wait_for_it_and_run_once_it_is_back() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin, SupervisorConfig::default().policy(policy())).await;
    let key = plugin.key("r1");
    let handle = manager
        .open_connection(&key, &params("r1"))
        .await
        .unwrap()
        .unwrap();

    plugin.fail_next_opens("r1", 3, FailureKind::Refused);
    plugin.drop_sessions("r1");
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnecting { .. }))
        .await
        .unwrap();
    let waiting = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.execute_command("echo after the outage").await })
    };
    let output = tokio::time::timeout(WAIT, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(output, "after the outage");
    assert_eq!(get(&plugin.ledger().commands_ok), 1, "ran exactly once");
    assert_eq!(handle.status().state, ConnectionState::Open);
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn an_explicit_retry_cuts_the_backoff_short_and_runs_the_waiting_requests() {
    let plugin = FaultPlugin::new("fault");
    let slow_backoff = ConnectionPolicy::default().backoff(
        Backoff::default()
            .initial(Duration::from_secs(20))
            .max(Duration::from_secs(20))
            .multiplier(1.0)
            .jitter(0.0),
    );
    let (manager, mut events) =
        start(&plugin, SupervisorConfig::default().policy(slow_backoff)).await;
    let key = plugin.key("r1");
    let handle = manager
        .open_connection(&key, &params("r1"))
        .await
        .unwrap()
        .unwrap();
    plugin.drop_sessions("r1");
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnecting { .. }))
        .await
        .unwrap();
    let waiting = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.execute_command("echo soon").await })
    };
    handle
        .wait_for_status(WAIT, |status| status.waiting_requests == 1)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    manager.retry(&key).await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), "soon");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_for_a_reconnect_is_bounded_and_never_runs_late() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin, SupervisorConfig::default().policy(policy())).await;
    let key = plugin.key("r1");
    let handle = manager
        .open_connection(&key, &params("r1"))
        .await
        .unwrap()
        .unwrap();

    plugin.fail_opens("r1", Some(FailureKind::Refused));
    plugin.drop_sessions("r1");
    let started = tokio::time::Instant::now();
    let error = handle
        .execute_command_within("echo too late", Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Timeout {
                stage: Stage::Reconnect,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        started.elapsed() <= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    plugin.fail_opens("r1", None);
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnected { .. }))
        .await
        .unwrap();
    assert_eq!(handle.execute_command("echo now").await.unwrap(), "now");
    assert_eq!(
        get(&plugin.ledger().commands_started),
        1,
        "the timed-out request never ran"
    );
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_request_in_flight_when_the_session_drops_fails_as_lost_and_is_not_rerun() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin, SupervisorConfig::default().policy(policy())).await;
    let key = plugin.key("r1");
    let handle = manager
        .open_connection(&key, &params("r1"))
        .await
        .unwrap()
        .unwrap();

    let in_flight = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.execute_command("sleep 10000").await })
    };
    // Let the command start, then pull the plug under it.
    while get(&plugin.ledger().commands_started) == 0 {
        tokio::task::yield_now().await;
    }
    plugin.drop_sessions("r1");
    let error = in_flight.await.unwrap().unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Command {
                source: connection_supervisor::CommandError::ConnectionLost(_),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("connection lost"), "{error}");
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnected { .. }))
        .await
        .unwrap();
    assert_eq!(
        get(&plugin.ledger().commands_started),
        1,
        "not re-run after the reconnect"
    );
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_health_check_finds_a_silently_dead_session() {
    let plugin = FaultPlugin::new("fault");
    let config = SupervisorConfig::default()
        .policy(policy().health_check_interval(Some(Duration::from_secs(5))));
    let (manager, mut events) = start(&plugin, config).await;
    let key = plugin.key("r1");
    manager.open_connection(&key, &params("r1")).await.unwrap();

    plugin.kill_sessions_silently("r1");
    let lost = events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Lost { .. }))
        .await
        .unwrap();
    assert!(
        matches!(&lost.kind, EventKind::Lost { reason } if reason.contains("health check")),
        "{lost:?}"
    );
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnected { .. }))
        .await
        .unwrap();
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_loss_after_some_commands_is_noticed_and_repaired() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin, SupervisorConfig::default().policy(policy())).await;
    let key = plugin.key("r1");
    let handle = manager
        .open_connection(&key, &params("r1"))
        .await
        .unwrap()
        .unwrap();
    plugin.lose_after_commands("r1", 3);
    for i in 0..3 {
        assert_eq!(
            handle.execute_command(&format!("echo {i}")).await.unwrap(),
            i.to_string()
        );
    }
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Lost { .. }))
        .await
        .unwrap();
    // The next request waits for the reconnect rather than failing.
    assert_eq!(handle.execute_command("echo 3").await.unwrap(), "3");
    let counters = manager
        .connection_counters_for("fault")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((counters.losses, counters.reconnects), (1, 1));
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_restarts_the_key_reopened_with_its_last_params_and_old_handles_follow() {
    let plugin = FaultPlugin::new("fault");
    let (manager, mut events) = start(&plugin, SupervisorConfig::default().policy(policy())).await;
    let key = plugin.key("r1");
    let other = manager
        .open_connection(&plugin.key("r2"), &params("r2"))
        .await
        .unwrap()
        .unwrap();
    let handle = manager
        .open_connection(&key, &params("r1"))
        .await
        .unwrap()
        .unwrap();

    plugin.panic_on_next_command("r1");
    let error = handle.execute_command("show version").await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::PluginPanicked {
                operation: Operation::ExecuteCommand,
                ..
            }
        ),
        "{error:?}"
    );
    let restarted = events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Restarted { .. }))
        .await
        .unwrap();
    assert!(
        matches!(&restarted.kind, EventKind::Restarted { restarts: 1, reason } if reason.contains("panicked"))
    );
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnected { .. }))
        .await
        .unwrap();

    // The old handle reaches the restarted, reopened connection.
    assert_eq!(handle.execute_command("echo again").await.unwrap(), "again");
    assert_eq!(
        other.execute_command("echo untouched").await.unwrap(),
        "untouched"
    );
    let status = manager.connection_status(&key).await.unwrap().unwrap();
    assert_eq!(status.state, ConnectionState::Open);
    let counters = manager
        .connection_counters_for("fault")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            counters.create_calls,
            counters.open_calls,
            counters.close_calls,
            counters.restarts
        ),
        (3, 3, 1, 1),
        "{counters:?}"
    );
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn crashing_too_often_quarantines_only_that_key_until_the_cool_down_ends() {
    let plugin = FaultPlugin::new("fault");
    let restart = RestartPolicy::default()
        .max_restarts(3)
        .window(Duration::from_secs(5))
        .quarantine(Duration::from_secs(30));
    let config = SupervisorConfig::default()
        .policy(policy())
        .restart_policy(restart);
    let (manager, mut events) = start(&plugin, config).await;
    let key = plugin.key("bad");
    let good = manager
        .open_connection(&plugin.key("good"), &params("good"))
        .await
        .unwrap()
        .unwrap();
    let handle = manager
        .open_connection(&key, &params("bad"))
        .await
        .unwrap()
        .unwrap();

    plugin.panic_on_every_command("bad", true);
    for _ in 0..4 {
        let error = handle.execute_command("boom").await.unwrap_err();
        assert!(matches!(error, Error::PluginPanicked { .. }), "{error:?}");
    }
    let quarantined = events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Quarantined { .. }))
        .await
        .unwrap();
    assert!(
        matches!(quarantined.kind, EventKind::Quarantined { duration, .. } if duration == Duration::from_secs(30))
    );

    let error = manager.get_or_create(key.clone()).await.unwrap_err();
    assert!(
        matches!(&error, Error::Quarantined { remaining, .. } if *remaining <= Duration::from_secs(30)),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("quarantined for another"),
        "{error}"
    );
    assert!(matches!(
        handle.execute_command("x").await,
        Err(Error::Quarantined { .. })
    ));
    let status = manager.connection_status(&key).await.unwrap().unwrap();
    assert_eq!(status.state, ConnectionState::Quarantined);
    assert_eq!(good.execute_command("echo fine").await.unwrap(), "fine");

    tokio::time::sleep(Duration::from_secs(31)).await;
    plugin.panic_on_every_command("bad", false);
    let fresh = manager
        .open_connection(&key, &params("bad"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        fresh.execute_command("echo healed").await.unwrap(),
        "healed"
    );
    let counters = manager
        .connection_counters_for("fault")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (counters.restarts, counters.quarantines),
        (3, 1),
        "{counters:?}"
    );
    finish(manager, &plugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_are_bounded_across_the_whole_supervisor() {
    let plugin = FaultPlugin::new("fault");
    let config = SupervisorConfig::default()
        .policy(policy())
        .max_concurrent_opens(4);
    let (manager, _events) = start(&plugin, config).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let host = format!("r{i}");
        plugin.open_delay(&host, Duration::from_millis(20));
        let manager = manager.clone();
        let key = plugin.key(&host);
        tasks.push(tokio::spawn(async move {
            manager.open_connection(&key, &params(&host)).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap().unwrap();
    }
    let max = get(&plugin.ledger().max_opens_in_flight);
    assert!(max <= 4, "{max} opens ran at once");
    assert!(max >= 2, "opens did overlap ({max})");
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn at_the_limit_the_least_recently_used_idle_connection_makes_room() {
    let plugin = FaultPlugin::new("fault");
    let config = SupervisorConfig::default()
        .policy(policy())
        .max_connections(2);
    let (manager, mut events) = start(&plugin, config).await;
    let first = manager
        .open_connection(&plugin.key("a"), &params("a"))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    manager
        .open_connection(&plugin.key("b"), &params("b"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.execute_command("echo recent").await.unwrap(); // now "b" is the least recently used
    tokio::time::sleep(Duration::from_secs(1)).await;

    manager
        .open_connection(&plugin.key("c"), &params("c"))
        .await
        .unwrap();
    let evicted = events
        .wait_for(WAIT, |e| {
            matches!(
                e.kind,
                EventKind::Closed {
                    reason: CloseReason::Evicted
                }
            )
        })
        .await
        .unwrap();
    assert_eq!(evicted.key, plugin.key("b"));
    assert!(
        manager
            .connection_status(&plugin.key("a"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        manager
            .connection_status(&plugin.key("b"))
            .await
            .unwrap()
            .is_none()
    );
    finish(manager, &plugin).await;
}

#[tokio::test]
async fn at_the_limit_refusal_names_the_scope_and_the_key() {
    let plugin = FaultPlugin::new("fault");
    let config = SupervisorConfig::default()
        .max_connections_for("fault", 1)
        .at_limit(AtLimit::Refuse);
    let (manager, _events) = start(&plugin, config).await;
    manager.get_or_create(plugin.key("a")).await.unwrap();
    let error = manager.get_or_create(plugin.key("b")).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot create b/fault: plugin \"fault\" limit of 1 connections reached and none is idle"
    );
    // Closing one frees the slot.
    manager.close_connection(&plugin.key("a")).await.unwrap();
    manager.get_or_create(plugin.key("b")).await.unwrap();
    finish(manager, &plugin).await;
}

#[tokio::test(start_paused = true)]
async fn idle_and_old_connections_are_closed_through_the_pool() {
    let plugin = FaultPlugin::new("fault");
    let config = SupervisorConfig::default()
        .policy(policy().idle_timeout(Some(Duration::from_secs(60))))
        .plugin_policy("old", policy().max_lifetime(Some(Duration::from_secs(600))));
    let old_plugin = FaultPlugin::new("old");
    let olds = old_plugin.factory();
    let faults = plugin.factory();
    let factory: std::sync::Arc<connection_supervisor::ConnectionFactory> =
        std::sync::Arc::new(move |key| faults(key).or_else(|| olds(key)));
    let manager = ConnectionManager::spawn(config.factory(factory))
        .await
        .unwrap();
    let mut events = manager.subscribe().await.unwrap();

    let busy = manager
        .open_connection(&plugin.key("busy"), &params("busy"))
        .await
        .unwrap()
        .unwrap();
    manager
        .open_connection(&plugin.key("idle"), &params("idle"))
        .await
        .unwrap();
    manager
        .open_connection(&old_plugin.key("r1"), &params("r1"))
        .await
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(30)).await;
        busy.execute_command("echo still here").await.unwrap();
    }
    let idle = events
        .wait_for(WAIT, |e| {
            matches!(
                e.kind,
                EventKind::Closed {
                    reason: CloseReason::Idle
                }
            )
        })
        .await
        .unwrap();
    assert_eq!(idle.key, plugin.key("idle"));
    assert!(
        manager
            .connection_status(&plugin.key("busy"))
            .await
            .unwrap()
            .is_some()
    );

    let old = events
        .wait_for(Duration::from_secs(900), |e| {
            matches!(
                e.kind,
                EventKind::Closed {
                    reason: CloseReason::Lifetime
                }
            )
        })
        .await
        .unwrap();
    assert_eq!(old.key, old_plugin.key("r1"));
    // The next request for an expired key gets a fresh connection.
    manager
        .open_connection(&plugin.key("idle"), &params("idle"))
        .await
        .unwrap();
    manager.shutdown().await.unwrap();
    for ledger in [plugin.ledger(), old_plugin.ledger()] {
        assert_eq!(get(&ledger.closed), get(&ledger.created), "{ledger:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn status_answers_while_an_open_hangs_and_the_open_is_bounded() {
    let plugin = FaultPlugin::new("fault");
    let config = SupervisorConfig::default()
        .policy(policy())
        .open_timeout(Duration::from_secs(5));
    let (manager, mut events) = start(&plugin, config).await;
    let key = plugin.key("r1");
    plugin.hang_opens("r1", true);
    let opening = {
        let manager = manager.clone();
        let key = key.clone();
        tokio::spawn(async move { manager.open_connection(&key, &params("r1")).await })
    };
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Opening))
        .await
        .unwrap();
    let status = manager.connection_status(&key).await.unwrap().unwrap();
    assert_eq!(status.state, ConnectionState::Opening);

    let error = opening.await.unwrap().unwrap_err();
    assert_eq!(error.failure_kind(), Some(FailureKind::Timeout));
    // A per-call bound overrides the policy's.
    let handle = manager.get_or_create(key.clone()).await.unwrap().unwrap();
    let started = tokio::time::Instant::now();
    let error = handle
        .open_within(&params("r1"), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Timeout { after, .. } if after == Duration::from_secs(1)));
    assert!(started.elapsed() < Duration::from_secs(2));
    let status = manager.connection_status(&key).await.unwrap().unwrap();
    assert_eq!(status.state, ConnectionState::Failed);
    assert_eq!(
        status.last_error.map(|e| e.kind),
        Some(FailureKind::Timeout)
    );
    finish(manager, &plugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_actor_task_and_timer_and_ends_subscriptions() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let plugin = FaultPlugin::new("fault");
    let config = SupervisorConfig::default().policy(
        policy()
            .health_check_interval(Some(Duration::from_secs(60)))
            .idle_timeout(Some(Duration::from_secs(600)))
            .max_lifetime(Some(Duration::from_secs(3600))),
    );
    let (manager, mut events) = start(&plugin, config).await;
    let (sink, _sink_join) = ractor::Actor::spawn(None, EventSink, ()).await.unwrap();
    manager.subscribe_actor(sink.clone(), Some).await.unwrap();
    for i in 0..20 {
        let host = format!("r{i}");
        manager
            .open_connection(&plugin.key(&host), &params(&host))
            .await
            .unwrap();
    }
    // One connection waits out a reconnect backoff, with a request parked on it.
    plugin.fail_opens("r0", Some(FailureKind::Refused));
    plugin.drop_sessions("r0");
    events
        .wait_for_key(&plugin.key("r0"), WAIT, |k| {
            matches!(k, EventKind::Reconnecting { .. })
        })
        .await
        .unwrap();
    let r0 = manager
        .get_or_create(plugin.key("r0"))
        .await
        .unwrap()
        .unwrap();
    let parked = {
        let r0 = r0.clone();
        tokio::spawn(async move { r0.execute_command("echo parked").await })
    };
    r0.wait_for_status(WAIT, |status| status.waiting_requests == 1)
        .await
        .unwrap();
    assert!(metrics.num_alive_tasks() > baseline + 20);

    manager.shutdown().await.unwrap();
    assert!(
        matches!(parked.await.unwrap(), Err(Error::Closed { .. })),
        "the parked request is answered"
    );
    sink.stop(None);
    // Tasks end right after they answer: wait (bounded) for the count to settle.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metrics.num_alive_tasks() > baseline && tokio::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        metrics.num_alive_tasks(),
        baseline,
        "tasks left running after shutdown"
    );
    // The stream saw the closes, then ended.
    let mut closes = 0;
    while let Some(event) = events.next().await {
        if matches!(
            event.kind,
            EventKind::Closed {
                reason: CloseReason::Shutdown
            }
        ) {
            closes += 1;
        }
    }
    assert_eq!(closes, 20);
    assert!(matches!(
        manager.get_or_create(plugin.key("r1")).await,
        Err(Error::ShutDown)
    ));
    let ledger = plugin.ledger();
    assert_eq!(get(&ledger.closed), get(&ledger.created));
    assert_eq!(get(&ledger.dropped_unclosed), 0);
}

/// A ractor actor that receives lifecycle events, as an embedder's would.
struct EventSink;

impl ractor::Actor for EventSink {
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
async fn a_ractor_actor_can_subscribe_to_events() {
    use ractor::{Actor, ActorProcessingErr, ActorRef};
    use tokio::sync::mpsc;

    struct Counter;
    impl Actor for Counter {
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

    let plugin = FaultPlugin::new("fault");
    let (manager, _events) = start(&plugin, SupervisorConfig::default()).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (counter, join) = Actor::spawn(None, Counter, tx).await.unwrap();
    manager
        .subscribe_actor(counter.clone(), |delivery| match &delivery {
            EventDelivery::Event(event) => {
                matches!(event.kind, EventKind::Opened | EventKind::Closed { .. })
                    .then_some(delivery)
            }
            _ => Some(delivery),
        })
        .await
        .unwrap();
    manager
        .open_connection(&plugin.key("r1"), &params("r1"))
        .await
        .unwrap();
    manager.close_connection(&plugin.key("r1")).await.unwrap();
    let first = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, "r1/fault Opened");
    assert_eq!(second, "r1/fault Closed { reason: Requested }");
    // Shutting down closes r2: its close still arrives, and the end of the stream after it.
    manager
        .open_connection(&plugin.key("r2"), &params("r2"))
        .await
        .unwrap();
    finish(manager, &plugin).await;
    let mut rest = Vec::new();
    while let Some(line) = tokio::time::timeout(WAIT, rx.recv()).await.unwrap() {
        let ended = line == "Ended";
        rest.push(line);
        if ended {
            break;
        }
    }
    assert_eq!(
        rest,
        [
            "r2/fault Opened",
            "r2/fault Closed { reason: Shutdown }",
            "Ended"
        ]
    );
    counter.stop(None);
    join.await.unwrap();
}

/// A count is made before the event that announces it is published: a subscriber that reacts
/// to an event by reading the counters sees that event counted. Run on two workers, so that
/// the subscriber and the connection's actor really run side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_counted_before_a_subscriber_sees_it() {
    const ROUNDS: usize = 50;
    let plugin = FaultPlugin::new("fault");
    let quick = ConnectionPolicy::default().backoff(
        Backoff::default()
            .initial(Duration::from_millis(1))
            .max(Duration::from_millis(1))
            .multiplier(1.0)
            .jitter(0.0),
    );
    let (manager, mut events) = start(&plugin, SupervisorConfig::default().policy(quick)).await;
    let key = plugin.key("r1");
    let counters = || async {
        manager
            .connection_counters_for("fault")
            .await
            .unwrap()
            .unwrap()
    };
    manager
        .open_connection(&key, &params("r1"))
        .await
        .unwrap()
        .unwrap();
    for round in 1..=ROUNDS {
        assert_eq!(plugin.drop_sessions("r1"), 1);
        events
            .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Lost { .. }))
            .await
            .unwrap();
        assert_eq!(
            counters().await.losses,
            round,
            "round {round}: loss seen, not counted"
        );
        events
            .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Reconnected { .. }))
            .await
            .unwrap();
        let now = counters().await;
        assert_eq!(
            (now.reconnects, now.open_calls),
            (round, round + 1),
            "round {round}: reconnect seen, not counted: {now:?}"
        );
    }
    let handle = manager.get_or_create(key.clone()).await.unwrap().unwrap();
    handle
        .actor()
        .cast(ConnectionMessage::Close {
            reason: CloseReason::Requested,
            reply: None,
        })
        .unwrap();
    events
        .wait_for_key(&key, WAIT, |k| matches!(k, EventKind::Closed { .. }))
        .await
        .unwrap();
    assert_eq!(counters().await.close_calls, 1, "close seen, not counted");
    finish(manager, &plugin).await;
}
