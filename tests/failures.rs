//! Panics, wrong types, timeouts and shutdown: each failure reaches its caller as a clear error
//! and touches nothing else.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use connection_supervisor::{
    Connection, ConnectionFactory, ConnectionKey, ConnectionManager, ConnectionState, Error,
    FailureKind, Operation, SupervisorConfig,
};
use futures::FutureExt;

async fn manager_with(
    behaviour: impl Fn(&ConnectionKey) -> Behaviour + Send + Sync + 'static,
    config: SupervisorConfig,
) -> (ConnectionManager, Arc<Ledger>) {
    let ledger = Arc::new(Ledger::default());
    let manager = ConnectionManager::spawn(config.factory(mock_factory(ledger.clone(), behaviour)))
        .await
        .unwrap();
    (manager, ledger)
}

fn panics_in(place: PanicIn) -> impl Fn(&ConnectionKey) -> Behaviour + Send + Sync + 'static {
    move |k| Behaviour {
        panic_in: (k.hostname == "bad").then_some(place),
        ..Behaviour::default()
    }
}

#[tokio::test]
async fn a_panicking_factory_fails_its_caller_only_and_is_asked_again() {
    let ledger = Arc::new(Ledger::default());
    let mock = mock_factory(ledger.clone(), |_| Behaviour::default());
    let factory: Arc<ConnectionFactory> = Arc::new(move |k: &ConnectionKey| {
        if k.hostname == "bad" {
            panic!("factory cannot build {k}");
        }
        mock(k)
    });
    let manager = ConnectionManager::with_connection_factory(factory)
        .await
        .unwrap();

    for _ in 0..2 {
        let error = manager.get_or_create(key("bad")).await.unwrap_err();
        assert!(
            matches!(&error, Error::FactoryPanicked { key: k, message } if k == &key("bad") && message.contains("cannot build")),
            "{error:?}"
        );
    }
    let good = manager
        .open_connection(&key("good"), &params("good"))
        .await
        .unwrap()
        .unwrap();
    assert!(good.is_alive().await.unwrap());
    assert_eq!(
        manager
            .connection_counters_for(MOCK)
            .await
            .unwrap()
            .unwrap()
            .create_calls,
        1
    );
    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}

#[tokio::test]
async fn a_plugin_panic_fails_the_caller_restarts_the_key_and_spares_the_rest() {
    for place in [PanicIn::Open, PanicIn::Command, PanicIn::IsAlive] {
        let (manager, ledger) = manager_with(panics_in(place), SupervisorConfig::default()).await;
        let good = manager
            .open_connection(&key("good"), &params("good"))
            .await
            .unwrap()
            .unwrap();
        let bad = manager.get_or_create(key("bad")).await.unwrap().unwrap();
        let error = match place {
            PanicIn::Open | PanicIn::IsAlive => bad.open(&params("bad")).await.unwrap_err(),
            PanicIn::Command => {
                // Commands need an open connection; the panic comes from the command itself.
                bad.open(&params("bad")).await.unwrap();
                bad.execute_command("show version").await.unwrap_err()
            }
            PanicIn::Close => unreachable!(),
        };
        assert!(
            matches!(&error, Error::PluginPanicked { key: k, message, .. } if k == &key("bad") && message.contains("mock panics")),
            "{place:?}: {error:?}"
        );

        // The broken instance is gone: its actor closed it and failed, the supervisor
        // restarted the key with a fresh instance, and the old handle reaches the new one.
        bad.actor()
            .wait(Some(Duration::from_secs(5)))
            .await
            .unwrap();
        let commands_on_the_fresh_instance = bad
            .with(|mock: &mut MockConnection| async move { mock.commands_run }.boxed())
            .await
            .unwrap();
        assert_eq!(commands_on_the_fresh_instance, 0, "{place:?}");
        let fresh = manager.get_or_create(key("bad")).await.unwrap().unwrap();
        assert!(!fresh.same_connection(&bad));

        assert_eq!(
            good.execute_command("x").await.unwrap(),
            "ran x",
            "{place:?}"
        );
        let counters = manager
            .connection_counters_for(MOCK)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(counters.create_calls, 3, "{place:?}: {counters:?}");
        assert_eq!(counters.close_calls, 1, "{place:?}: {counters:?}");
        assert_eq!(counters.restarts, 1, "{place:?}: {counters:?}");
        manager.shutdown().await.unwrap();
        ledger.assert_all_closed_once();
    }
}

#[tokio::test]
async fn a_panic_in_close_still_closes_and_counts() {
    let (manager, ledger) =
        manager_with(panics_in(PanicIn::Close), SupervisorConfig::default()).await;
    manager.get_or_create(key("bad")).await.unwrap();
    manager.close_connection(&key("bad")).await.unwrap();
    let counters = manager
        .connection_counters_for(MOCK)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counters.close_calls, 1);
    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}

#[tokio::test]
async fn with_reaches_the_concrete_type_and_rejects_a_wrong_one() {
    let (manager, _ledger) = mock_manager().await;
    let handle = manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap()
        .unwrap();
    handle.execute_command("one").await.unwrap();
    let commands = handle
        .with(|mock: &mut MockConnection| async move { mock.commands_run }.boxed())
        .await
        .unwrap();
    assert_eq!(commands, 1);

    struct NotTheMock;
    #[async_trait::async_trait]
    impl Connection for NotTheMock {
        fn is_alive(&self) -> bool {
            false
        }
        async fn open(
            &mut self,
            _: &connection_supervisor::ResolvedConnectionParams,
        ) -> Result<(), connection_supervisor::OpenError> {
            Ok(())
        }
        async fn close(&mut self) {}
    }
    let error = handle
        .with(|_: &mut NotTheMock| async {}.boxed())
        .await
        .unwrap_err();
    match &error {
        Error::WrongConnectionType {
            key: k,
            expected,
            actual,
        } => {
            assert_eq!(k, &key("r1"));
            assert!(expected.ends_with("NotTheMock"), "{expected}");
            assert!(actual.ends_with("MockConnection"), "{actual}");
        }
        other => panic!("expected WrongConnectionType, got {other:?}"),
    }
    // The connection is untouched by the refused closure.
    assert_eq!(handle.execute_command("two").await.unwrap(), "ran two");
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_panic_inside_with_is_a_plugin_panic() {
    let (manager, ledger) = mock_manager().await;
    let handle = manager.get_or_create(key("r1")).await.unwrap().unwrap();
    let error = handle
        .with(|_: &mut MockConnection| async { panic!("closure bug") }.boxed())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::PluginPanicked { operation: Operation::With, message, .. } if message.contains("closure bug")),
        "{error:?}"
    );
    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}

#[tokio::test(start_paused = true)]
async fn a_hanging_open_times_out_with_a_timeout_kind() {
    let (manager, ledger) = manager_with(
        |_| Behaviour {
            open_delay: Duration::from_secs(3600),
            ..Behaviour::default()
        },
        SupervisorConfig::default().open_timeout(Duration::from_secs(5)),
    )
    .await;
    let error = manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Timeout { operation: Operation::Open, after, .. } if *after == Duration::from_secs(5)),
        "{error:?}"
    );
    assert_eq!(error.failure_kind(), Some(FailureKind::Timeout));
    let handle = manager.get_or_create(key("r1")).await.unwrap().unwrap();
    assert_eq!(handle.status().state, ConnectionState::Failed);
    let counters = manager
        .connection_counters_for(MOCK)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((counters.open_calls, counters.failed_open_calls), (0, 1));
    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}

#[tokio::test(start_paused = true)]
async fn a_hanging_close_cannot_hold_up_close_all_past_its_bound() {
    let (manager, ledger) = manager_with(
        |k| Behaviour {
            close_delay: if k.hostname == "stuck" {
                Duration::from_secs(3600)
            } else {
                Duration::ZERO
            },
            ..Behaviour::default()
        },
        SupervisorConfig::default().close_timeout(Duration::from_secs(2)),
    )
    .await;
    for host in ["stuck", "fine"] {
        manager
            .open_connection(&key(host), &params(host))
            .await
            .unwrap();
    }
    let started = tokio::time::Instant::now();
    manager.close_all_connections().await.unwrap();
    assert!(
        started.elapsed() <= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let counters = manager
        .connection_counters_for(MOCK)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counters.close_calls, 2);
    manager.shutdown().await.unwrap();
    // Each instance was asked to close once: "fine" finished, "stuck" was given up on.
    assert_eq!(Ledger::get(&ledger.closed), 1, "{ledger:?}");
    assert_eq!(Ledger::get(&ledger.close_abandoned), 1, "{ledger:?}");
    assert_eq!(Ledger::get(&ledger.closed_twice), 0, "{ledger:?}");
    assert_eq!(Ledger::get(&ledger.dropped_unclosed), 0, "{ledger:?}");
}

#[tokio::test]
async fn the_error_for_a_failed_open_names_key_kind_and_cause_but_no_secret() {
    let (manager, _ledger) = manager_with(
        |_| failing(FailureKind::Auth, "permission denied for admin"),
        SupervisorConfig::default(),
    )
    .await;
    let mut with_secret = params("r1");
    with_secret.password = Some("hunter2".into());
    let error = manager
        .open_connection(&key("r1"), &with_secret)
        .await
        .unwrap_err();
    let text = error.to_string();
    assert_eq!(
        text,
        "failed to open r1/mock (authentication rejected): permission denied for admin"
    );
    assert_eq!(error.failure_kind(), Some(FailureKind::Auth));
    assert!(!format!("{error:?}").contains("hunter2"));
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_everything_once_stops_every_actor_and_refuses_later_calls() {
    let (manager, ledger) = mock_manager().await;
    let mut handles = Vec::new();
    for i in 0..100 {
        let host = format!("r{i}");
        let handle = if i % 2 == 0 {
            manager.open_connection(&key(&host), &params(&host)).await
        } else {
            manager.get_or_create(key(&host)).await
        };
        handles.push(handle.unwrap().unwrap());
    }
    let supervisor = manager.supervisor();
    manager.shutdown().await.unwrap();

    assert_eq!(supervisor.get_status(), ractor::ActorStatus::Stopped);
    assert!(supervisor.get_children().is_empty());
    for handle in &handles {
        assert_eq!(handle.actor().get_status(), ractor::ActorStatus::Stopped);
        assert!(matches!(handle.is_alive().await, Err(Error::Closed { .. })));
    }
    ledger.assert_all_closed_once();
    assert_eq!(Ledger::get(&ledger.created), 100);

    assert!(matches!(
        manager.get_or_create(key("r1")).await,
        Err(Error::ShutDown)
    ));
    assert!(matches!(
        manager.close_all_connections().await,
        Err(Error::ShutDown)
    ));
    // Shutting down twice is fine.
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_timeouts_are_rejected_by_name() {
    let error = ConnectionManager::spawn(SupervisorConfig::default().close_timeout(Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid configuration: default policy: the close timeout must be greater than zero"
    );
}
