//! The behaviours of upstream genja's `ConnectionManager` tests, ported to the actor design.

mod common;

use std::sync::Arc;

use common::*;
use connection_supervisor::{
    ConnectionCounters, ConnectionKey, ConnectionManager, Error, FailureKind, SupervisorConfig,
};

fn counters(create: usize, open: usize, close: usize) -> ConnectionCounters {
    let mut counters = ConnectionCounters::default();
    counters.create_calls = create;
    counters.open_calls = open;
    counters.close_calls = close;
    counters
}

#[tokio::test]
async fn get_or_create_reuses_the_pooled_connection() {
    let (manager, ledger) = mock_manager().await;
    let first = manager.get_or_create(key("r1")).await.unwrap().unwrap();
    let second = manager.get_or_create(key("r1")).await.unwrap().unwrap();
    assert!(first.same_connection(&second));
    assert_eq!(Ledger::get(&ledger.factory_calls), 1);
    let counters_now = manager.connection_counters_for(MOCK).await.unwrap();
    assert_eq!(counters_now, Some(counters(1, 0, 0)));
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn close_removes_counts_and_the_next_get_makes_a_new_one() {
    let (manager, ledger) = mock_manager().await;
    let first = manager.get_or_create(key("r1")).await.unwrap().unwrap();
    manager.close_connection(&key("r1")).await.unwrap();
    assert_eq!(
        manager.connection_counters_for(MOCK).await.unwrap(),
        Some(counters(1, 0, 1))
    );
    assert!(matches!(first.is_alive().await, Err(Error::Closed { .. })));

    let second = manager.get_or_create(key("r1")).await.unwrap().unwrap();
    assert!(!first.same_connection(&second));
    assert_eq!(Ledger::get(&ledger.created), 2);
    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}

#[tokio::test]
async fn close_of_an_unknown_key_is_ok_and_counts_nothing() {
    let (manager, _ledger) = mock_manager().await;
    manager.close_connection(&key("nobody")).await.unwrap();
    assert_eq!(manager.connection_counters_for(MOCK).await.unwrap(), None);
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn close_all_closes_the_rest_including_never_opened_ones() {
    let (manager, ledger) = mock_manager().await;
    manager.get_or_create(key("key1")).await.unwrap();
    manager.get_or_create(key("key2")).await.unwrap();
    manager.close_connection(&key("key1")).await.unwrap();
    manager.close_all_connections().await.unwrap();
    assert_eq!(
        manager.connection_counters_for(MOCK).await.unwrap(),
        Some(counters(2, 0, 2))
    );
    ledger.assert_all_closed_once();
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_a_factory_calls_fail_with_the_upstream_message() {
    let manager = ConnectionManager::spawn(SupervisorConfig::default())
        .await
        .unwrap();
    let error = manager.get_or_create(key("r1")).await.unwrap_err();
    assert_eq!(error.to_string(), "connection factory not set");
    let error = manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::FactoryNotSet));

    // Setting one later makes the same calls work.
    let ledger = Arc::new(Ledger::default());
    manager
        .set_connection_factory(mock_factory(ledger.clone(), |_| Behaviour::default()))
        .await
        .unwrap();
    assert!(manager.get_or_create(key("r1")).await.unwrap().is_some());
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_open_error_passes_through_and_the_instance_stays_for_a_retry() {
    let ledger = Arc::new(Ledger::default());
    let manager = ConnectionManager::with_connection_factory(mock_factory(ledger.clone(), |_| {
        failing(FailureKind::Unknown, "boom")
    }))
    .await
    .unwrap();

    let error = manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("boom"), "{error}");
    match &error {
        Error::Open {
            key: failed,
            source,
        } => {
            assert_eq!(failed, &key("r1"));
            assert_eq!(source.to_string(), "boom");
        }
        other => panic!("expected an open error, got {other:?}"),
    }
    let after_failure = manager
        .connection_counters_for(MOCK)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (after_failure.create_calls, after_failure.open_calls),
        (1, 0)
    );
    assert_eq!(after_failure.failed_open_calls, 1);

    // The retry runs on the same pooled instance: no second creation.
    let _ = manager.open_connection(&key("r1"), &params("r1")).await;
    let after_retry = manager
        .connection_counters_for(MOCK)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after_retry.create_calls, 1);
    assert_eq!(after_retry.failed_open_calls, 2);
    assert_eq!(Ledger::get(&ledger.created), 1);
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_factory_without_a_plugin_gives_none_pools_nothing_and_is_asked_again() {
    let (manager, ledger) = mock_manager().await;
    let other = ConnectionKey::new("r1", "netconf");
    assert!(
        manager
            .get_or_create(other.clone())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        manager
            .open_connection(&other, &params("r1"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        manager.connection_counters_for("netconf").await.unwrap(),
        None
    );
    assert!(
        manager
            .connection_counters_snapshot()
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(Ledger::get(&ledger.factory_calls), 2);
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn counters_after_open_then_close() {
    let (manager, ledger) = mock_manager().await;
    let handle = manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap()
        .unwrap();
    assert!(handle.is_alive().await.unwrap());
    assert_eq!(
        manager.connection_counters_for(MOCK).await.unwrap(),
        Some(counters(1, 1, 0))
    );
    manager.close_connection(&key("r1")).await.unwrap();
    assert_eq!(
        manager.connection_counters_for(MOCK).await.unwrap(),
        Some(counters(1, 1, 1))
    );
    ledger.assert_all_closed_once();
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn opening_an_alive_connection_twice_counts_one_open() {
    let (manager, _ledger) = mock_manager().await;
    let first = manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap()
        .unwrap();
    let second = manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap()
        .unwrap();
    assert!(first.same_connection(&second));
    assert_eq!(
        manager.connection_counters_for(MOCK).await.unwrap(),
        Some(counters(1, 1, 0))
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_snapshot_tracks_each_plugin_separately() {
    let ledger = Arc::new(Ledger::default());
    let mock = mock_factory(ledger.clone(), |_| Behaviour::default());
    // Two plugin names served by the same mock type.
    let factory: Arc<connection_supervisor::ConnectionFactory> =
        Arc::new(move |k: &ConnectionKey| mock(&ConnectionKey::new(k.hostname.clone(), MOCK)));
    let manager = ConnectionManager::with_connection_factory(factory)
        .await
        .unwrap();
    manager
        .open_connection(&ConnectionKey::new("r1", "ssh"), &params("r1"))
        .await
        .unwrap();
    manager
        .get_or_create(ConnectionKey::new("r1", "netconf"))
        .await
        .unwrap();
    let snapshot = manager.connection_counters_snapshot().await.unwrap();
    assert_eq!(snapshot.len(), 2);
    assert_eq!(snapshot["ssh"], counters(1, 1, 0));
    assert_eq!(snapshot["netconf"], counters(1, 0, 0));
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn three_tasks_opening_one_key_end_at_one_one_one_after_close() {
    let (manager, ledger) = mock_manager().await;
    let handles = open_concurrently(&manager, (0..3).map(|_| "r1".to_owned())).await;
    assert!(handles.windows(2).all(|w| w[0].same_connection(&w[1])));
    manager.close_connection(&key("r1")).await.unwrap();
    assert_eq!(
        manager.connection_counters_for(MOCK).await.unwrap(),
        Some(counters(1, 1, 1))
    );
    ledger.assert_all_closed_once();
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn commands_run_through_the_handle() {
    let (manager, _ledger) = mock_manager().await;
    let handle = manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        handle.execute_command("show version").await.unwrap(),
        "ran show version"
    );
    manager.shutdown().await.unwrap();
}
