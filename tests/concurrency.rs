//! Many callers at once: one creation per key, close-all racing creations, and no
//! head-of-line blocking behind a slow open. The time bounds here only catch hangs; speed is
//! measured in the benchmarks.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use connection_supervisor::{ConnectionManager, SupervisorConfig};
use tokio::sync::Notify;

/// Long enough for any of these steps on a loaded machine: reaching it means a hang.
const HANG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tasks_opening_one_key_create_and_open_it_once() {
    let (manager, ledger) = mock_manager().await;
    let handles = open_concurrently(&manager, (0..1000).map(|_| "r1".to_owned())).await;
    assert!(handles.iter().all(|h| h.same_connection(&handles[0])));
    let counters = manager
        .connection_counters_for(MOCK)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((counters.create_calls, counters.open_calls), (1, 1));
    assert!(handles[0].is_alive().await.unwrap());
    manager.shutdown().await.unwrap();
    assert_eq!(Ledger::get(&ledger.factory_calls), 1);
    assert_eq!(Ledger::get(&ledger.opened), 1);
    ledger.assert_all_closed_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_keys_opened_at_once_then_closed_all_leave_no_actor() {
    let (manager, ledger) = mock_manager().await;
    open_concurrently(&manager, (0..1000).map(|i| format!("r{i}"))).await;
    manager.close_all_connections().await.unwrap();
    let counters = manager
        .connection_counters_for(MOCK)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            counters.create_calls,
            counters.open_calls,
            counters.close_calls
        ),
        (1000, 1000, 1000)
    );
    assert_no_connection_actors(&manager).await;
    ledger.assert_all_closed_once();
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_all_racing_a_thousand_creations_never_drops_a_connection_unclosed() {
    let (manager, ledger) = mock_manager().await;
    let creators: Vec<_> = (0..1000)
        .map(|i| {
            let manager = manager.clone();
            tokio::spawn(async move {
                // Few hosts, so creations, reuses and closes interleave on the same keys.
                let host = format!("r{}", i % 50);
                manager.get_or_create(key(&host)).await.unwrap()
            })
        })
        .collect();
    let closers: Vec<_> = (0..20)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move { manager.close_all_connections().await.unwrap() })
        })
        .collect();
    for task in creators {
        assert!(task.await.unwrap().is_some());
    }
    for task in closers {
        task.await.unwrap();
    }
    manager.close_all_connections().await.unwrap();

    let counters = manager
        .connection_counters_for(MOCK)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counters.create_calls, counters.close_calls, "{counters:?}");
    assert_eq!(counters.create_calls, Ledger::get(&ledger.created));
    ledger.assert_all_closed_once();
    assert_no_connection_actors(&manager).await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_racing_closes_on_the_same_keys_each_get_an_open_connection() {
    let (manager, ledger) = mock_manager().await;
    let openers: Vec<_> = (0..1000)
        .map(|i| {
            let manager = manager.clone();
            tokio::spawn(async move {
                let host = format!("r{}", i % 20);
                let opened = manager.open_connection(&key(&host), &params(&host)).await;
                (host, opened)
            })
        })
        .collect();
    let closers: Vec<_> = (0..200)
        .map(|i| {
            let manager = manager.clone();
            tokio::spawn(async move {
                manager
                    .close_connection(&key(&format!("r{}", i % 20)))
                    .await
            })
        })
        .collect();
    for task in openers {
        // The supervisor hands an open to the connection's actor before any close it routes
        // later, so a racing close never turns an open into an error.
        let (host, opened) = task.await.unwrap();
        let handle = opened.unwrap().expect("a mock key");
        assert_eq!(
            handle.key(),
            &key(&host),
            "the handle is for the key asked for"
        );
    }
    for task in closers {
        task.await.unwrap().unwrap();
    }
    manager.close_all_connections().await.unwrap();
    let counters = manager
        .connection_counters_for(MOCK)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counters.create_calls, counters.close_calls, "{counters:?}");
    assert_eq!(
        counters.open_calls,
        Ledger::get(&ledger.opened),
        "{counters:?}"
    );
    ledger.assert_all_closed_once();
    assert_no_connection_actors(&manager).await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_open_blocks_neither_its_key_lookups_nor_other_keys() {
    let ledger = Arc::new(Ledger::default());
    let slow_open_started = Arc::new(Notify::new());
    let release_slow_open = Arc::new(Notify::new());
    let (started, release) = (slow_open_started.clone(), release_slow_open.clone());
    let factory = mock_factory(ledger.clone(), move |k| {
        if k.hostname == "slow" {
            Behaviour {
                open_started: Some(started.clone()),
                open_gate: Some(release.clone()),
                ..Behaviour::default()
            }
        } else {
            Behaviour::default()
        }
    });
    let manager = ConnectionManager::spawn(
        SupervisorConfig::default()
            .factory(factory)
            .open_timeout(Duration::from_secs(60)),
    )
    .await
    .unwrap();

    let slow = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.open_connection(&key("slow"), &params("slow")).await })
    };
    tokio::time::timeout(HANG, slow_open_started.notified())
        .await
        .expect("the slow open starts");

    // The slow open lasts until it is released: whatever waited behind it would hang here.
    let handle = tokio::time::timeout(HANG, manager.get_or_create(key("slow")))
        .await
        .expect("get_or_create on the key being opened answers while the open hangs")
        .unwrap()
        .unwrap();
    let others = open_concurrently(&manager, (0..1000).map(|i| format!("fast{i}")));
    tokio::time::timeout(HANG, others)
        .await
        .expect("1,000 other keys open while the slow open hangs");
    assert!(!slow.is_finished(), "the slow open is still running");
    assert_eq!(handle.key(), &key("slow"));
    assert_eq!(
        Ledger::get(&ledger.opened),
        1000,
        "only the fast keys opened"
    );

    release_slow_open.notify_one();
    let opened = tokio::time::timeout(HANG, slow)
        .await
        .expect("the slow open ends once released")
        .unwrap()
        .unwrap()
        .expect("a mock key");
    assert!(opened.same_connection(&handle));
    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}
