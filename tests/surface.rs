//! The public surface itself: the owning guard, the event stream as a `futures::Stream`, and
//! errors that name their operation, stage and key as types.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use connection_supervisor::{
    ConnectionManager, Error, EventKind, Operation, Stage, SupervisorConfig, SupervisorGuard,
};
use futures::StreamExt;

const WAIT: Duration = Duration::from_secs(30);

async fn guarded_mock() -> (SupervisorGuard, Arc<Ledger>) {
    let ledger = Arc::new(Ledger::default());
    let config =
        SupervisorConfig::default().factory(mock_factory(ledger.clone(), |_| Behaviour::default()));
    let guard = SupervisorGuard::spawn(config)
        .await
        .expect("supervisor starts");
    (guard, ledger)
}

#[tokio::test]
async fn dropping_the_guard_shuts_the_supervisor_down_and_closes_every_connection_once() {
    let (guard, ledger) = guarded_mock().await;
    // The guard derefs to its manager; a clone of the manager outlives the guard.
    let manager: ConnectionManager = (*guard).clone();
    for host in ["r1", "r2", "r3"] {
        guard
            .open_connection(&key(host), &params(host))
            .await
            .unwrap()
            .unwrap();
    }
    let supervisor = manager.supervisor();
    drop(guard);

    supervisor
        .wait(Some(WAIT))
        .await
        .expect("the supervisor stops after its guard is dropped");
    ledger.assert_all_closed_once();
    assert_eq!(Ledger::get(&ledger.closed), 3);
    assert!(matches!(
        manager.get_or_create(key("r4")).await,
        Err(Error::ShutDown)
    ));
}

#[tokio::test]
async fn a_disarmed_guard_leaves_the_supervisor_running_and_shutdown_waits_for_it() {
    let (guard, ledger) = guarded_mock().await;
    let manager = guard.disarm();
    manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        manager
            .connection_status(&key("r1"))
            .await
            .unwrap()
            .map(|s| s.state),
        Some(connection_supervisor::ConnectionState::Open),
        "the supervisor outlived the disarmed guard"
    );

    let guard = SupervisorGuard::new(manager.clone());
    guard.shutdown().await.unwrap();
    // shutdown() returns once the supervisor has stopped: nothing is left to wait for.
    assert!(matches!(
        manager.connection_status(&key("r1")).await,
        Err(Error::ShutDown)
    ));
    ledger.assert_all_closed_once();
}

#[tokio::test]
async fn the_event_stream_is_a_stream_that_ends_after_shutdown() {
    let (manager, ledger) = mock_manager().await;
    let events = manager.subscribe().await.unwrap();
    manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap()
        .unwrap();
    manager.shutdown().await.unwrap();

    // Through the futures combinators alone: the stream ends, so collect() returns.
    let kinds: Vec<EventKind> = tokio::time::timeout(WAIT, events.map(|e| e.kind).collect())
        .await
        .expect("the stream ends once the supervisor is gone");
    assert!(
        matches!(
            kinds.as_slice(),
            [
                EventKind::Created,
                EventKind::Opening,
                EventKind::Opened,
                EventKind::Closed { .. }
            ]
        ),
        "{kinds:?}"
    );
    ledger.assert_all_closed_once();
}

#[tokio::test(start_paused = true)]
async fn errors_name_operation_stage_and_key_as_types() {
    let ledger = Arc::new(Ledger::default());
    let factory = mock_factory(ledger.clone(), |_| Behaviour {
        open_delay: Duration::from_secs(3600),
        ..Behaviour::default()
    });
    let manager = ConnectionManager::spawn(
        SupervisorConfig::default()
            .factory(factory)
            .open_timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let error = manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap_err();
    let Error::Timeout {
        operation,
        key: Some(failed),
        stage,
        after,
    } = &error
    else {
        panic!("expected an open timeout, got {error:?}");
    };
    assert_eq!(
        (*operation, failed, *stage, *after),
        (
            Operation::Open,
            &key("r1"),
            Stage::Answer,
            Duration::from_secs(5)
        )
    );
    assert_eq!(error.key(), Some(&key("r1")));
    assert_eq!(
        error.to_string(),
        "open on r1/mock timed out after 5s",
        "Display reads as before the types"
    );

    let mut events = manager.subscribe().await.unwrap();
    let not_seen = events
        .wait_for(Duration::from_millis(10), |_| false)
        .await
        .unwrap_err();
    assert!(
        matches!(&not_seen, Error::EventNotSeen { after, .. } if *after == Duration::from_millis(10)),
        "{not_seen:?}"
    );
    assert_eq!(not_seen.key(), None);
    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}
