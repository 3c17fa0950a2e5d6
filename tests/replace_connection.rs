//! `ConnectionManager::replace_connection` (genja 0.5's session verification), without the
//! `genja` feature: the counters, a factory that has no plugin, a failed open, opens racing the
//! replacement, and old handles following to the new instance.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use connection_supervisor::{
    Connection, ConnectionCounters, ConnectionFactory, ConnectionKey, ConnectionManager,
    ConnectionState, Error, FailureKind,
};
use tokio::sync::Notify;

fn counters(create: usize, open: usize, close: usize) -> (usize, usize, usize) {
    (create, open, close)
}

async fn counted(manager: &ConnectionManager) -> (usize, usize, usize) {
    let c: ConnectionCounters = manager
        .connection_counters_for(MOCK)
        .await
        .unwrap()
        .unwrap_or_default();
    (c.create_calls, c.open_calls, c.close_calls)
}

/// A mock manager whose n-th instance (from 0) behaves as `behaviour(n)` says.
async fn manager_by_instance(
    behaviour: impl Fn(usize) -> Behaviour + Send + Sync + 'static,
) -> (ConnectionManager, Arc<Ledger>) {
    let ledger = Arc::new(Ledger::default());
    let made = AtomicUsize::new(0);
    let factory = mock_factory(ledger.clone(), move |_| {
        behaviour(made.fetch_add(1, Ordering::SeqCst))
    });
    let manager = ConnectionManager::with_connection_factory(factory)
        .await
        .unwrap();
    (manager, ledger)
}

#[tokio::test]
async fn replace_closes_the_old_instance_and_opens_a_new_one() {
    let (manager, ledger) = mock_manager().await;
    let old = manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counted(&manager).await, counters(1, 1, 0));

    let new = manager
        .replace_connection(&key("r1"), &params("r1"))
        .await
        .unwrap()
        .unwrap();
    assert!(!new.same_connection(&old));
    assert_eq!(counted(&manager).await, counters(2, 2, 1));
    // The old close finished before the new instance was made, not merely started.
    assert_eq!(Ledger::get(&ledger.closed), 1);
    assert_eq!(new.status().state, ConnectionState::Open);
    let pooled = manager.get_or_create(key("r1")).await.unwrap().unwrap();
    assert!(pooled.same_connection(&new));

    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}

#[tokio::test]
async fn replace_of_an_empty_key_creates_and_opens() {
    let (manager, ledger) = mock_manager().await;
    let new = manager
        .replace_connection(&key("r1"), &params("r1"))
        .await
        .unwrap();
    assert!(new.is_some());
    assert_eq!(counted(&manager).await, counters(1, 1, 0));
    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}

#[tokio::test]
async fn old_handles_follow_to_the_new_instance() {
    let (manager, ledger) = mock_manager().await;
    let old = manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap()
        .unwrap();
    old.execute_command("before").await.unwrap();
    let new = manager
        .replace_connection(&key("r1"), &params("r1"))
        .await
        .unwrap()
        .unwrap();

    // Calls through the old handle reach the new instance, which has run nothing yet.
    assert_eq!(old.execute_command("after").await.unwrap(), "ran after");
    let run_on_new = new
        .with(|c: &mut MockConnection| Box::pin(async move { c.commands_run }))
        .await
        .unwrap();
    assert_eq!(run_on_new, 1);
    assert!(old.is_alive().await.unwrap());
    assert_eq!(old.status().state, ConnectionState::Open);

    // A close ends the lineage: the old handle does not reach a later, unrelated instance.
    manager.close_connection(&key("r1")).await.unwrap();
    manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap();
    assert!(matches!(old.is_alive().await, Err(Error::Closed { .. })));

    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}

#[tokio::test]
async fn a_factory_without_a_plugin_leaves_the_key_empty() {
    let ledger = Arc::new(Ledger::default());
    let has_plugin = Arc::new(AtomicBool::new(true));
    let inner = mock_factory(ledger.clone(), |_| Behaviour::default());
    let switch = has_plugin.clone();
    let factory: Arc<ConnectionFactory> = Arc::new(move |key: &ConnectionKey| {
        if switch.load(Ordering::SeqCst) {
            inner(key)
        } else {
            None::<Box<dyn Connection>>
        }
    });
    let manager = ConnectionManager::with_connection_factory(factory)
        .await
        .unwrap();
    let old = manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap()
        .unwrap();

    has_plugin.store(false, Ordering::SeqCst);
    let replaced = manager
        .replace_connection(&key("r1"), &params("r1"))
        .await
        .unwrap();
    assert!(replaced.is_none());
    assert_eq!(counted(&manager).await, counters(1, 1, 1));
    assert_eq!(manager.connection_status(&key("r1")).await.unwrap(), None);
    assert!(matches!(old.is_alive().await, Err(Error::Closed { .. })));

    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}

#[tokio::test]
async fn a_failed_open_leaves_the_key_empty_and_returns_the_error() {
    let (manager, ledger) = manager_by_instance(|n| match n {
        0 => Behaviour::default(),
        _ => failing(FailureKind::Auth, "denied"),
    })
    .await;
    let old = manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap()
        .unwrap();

    let error = manager
        .replace_connection(&key("r1"), &params("r1"))
        .await
        .unwrap_err();
    assert!(matches!(&error, Error::Open { source, .. } if source.message() == "denied"));
    assert_eq!(error.failure_kind(), Some(FailureKind::Auth));
    assert_eq!(manager.connection_status(&key("r1")).await.unwrap(), None);
    // The failed instance is closed too (upstream drops it unclosed).
    assert_no_connection_actors(&manager).await;
    assert_eq!(counted(&manager).await, counters(2, 1, 2));
    assert!(matches!(old.is_alive().await, Err(Error::Closed { .. })));

    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}

#[tokio::test]
async fn opens_during_the_replacement_wait_and_get_the_new_instance() {
    let started = Arc::new(Notify::new());
    let gate = Arc::new(Notify::new());
    let (started_in, gate_in) = (started.clone(), gate.clone());
    let (manager, ledger) = manager_by_instance(move |n| match n {
        // The old instance's close lasts long enough for opens to arrive during it.
        0 => Behaviour {
            close_delay: Duration::from_millis(200),
            ..Behaviour::default()
        },
        // The new one's open waits for the test.
        _ => Behaviour {
            open_started: Some(started_in.clone()),
            open_gate: Some(gate_in.clone()),
            ..Behaviour::default()
        },
    })
    .await;
    let old = manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap()
        .unwrap();

    let replacing = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.replace_connection(&key("r1"), &params("r1")).await })
    };
    let open_now = |manager: &ConnectionManager| {
        let manager = manager.clone();
        tokio::spawn(async move { manager.open_connection(&key("r1"), &params("r1")).await })
    };
    let mut opens = Vec::new();
    // While the old instance closes...
    old.wait_for_status(Duration::from_secs(5), |s| {
        s.state == ConnectionState::Closing
    })
    .await
    .unwrap();
    opens.extend((0..3).map(|_| open_now(&manager)));
    // ...and while the new one opens.
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .unwrap();
    opens.extend((0..3).map(|_| open_now(&manager)));
    let gets: Vec<_> = (0..2)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move { manager.get_or_create(key("r1")).await })
        })
        .collect();
    gate.notify_one();

    let new = replacing.await.unwrap().unwrap().unwrap();
    assert!(!new.same_connection(&old));
    for open in opens {
        let handle = open.await.unwrap().unwrap().unwrap();
        assert!(handle.same_connection(&new), "an open got another instance");
    }
    for get in gets {
        let handle = get.await.unwrap().unwrap().unwrap();
        assert!(handle.same_connection(&new), "a get got another instance");
    }
    // One open of the new instance: the waiting opens found it open.
    assert_eq!(counted(&manager).await, counters(2, 2, 1));

    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}

#[tokio::test]
async fn a_close_during_the_replacement_runs_after_it() {
    let started = Arc::new(Notify::new());
    let gate = Arc::new(Notify::new());
    let (started_in, gate_in) = (started.clone(), gate.clone());
    let (manager, ledger) = manager_by_instance(move |n| match n {
        0 => Behaviour::default(),
        _ => Behaviour {
            open_started: Some(started_in.clone()),
            open_gate: Some(gate_in.clone()),
            ..Behaviour::default()
        },
    })
    .await;
    manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap();
    let replacing = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.replace_connection(&key("r1"), &params("r1")).await })
    };
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .unwrap();
    let closing = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.close_connection(&key("r1")).await })
    };
    gate.notify_one();
    assert!(replacing.await.unwrap().unwrap().is_some());
    closing.await.unwrap().unwrap();
    assert_eq!(manager.connection_status(&key("r1")).await.unwrap(), None);
    assert_eq!(counted(&manager).await, counters(2, 2, 2));
    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}

#[tokio::test]
async fn concurrent_replacements_are_serialised() {
    let (manager, ledger) = mock_manager().await;
    manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap();
    let replacements: Vec<_> = (0..4)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move { manager.replace_connection(&key("r1"), &params("r1")).await })
        })
        .collect();
    let mut handles = Vec::new();
    for replacement in replacements {
        handles.push(replacement.await.unwrap().unwrap().unwrap());
    }
    // Each replaced the one before it: four new instances, four closes, all distinct.
    for (i, a) in handles.iter().enumerate() {
        for b in &handles[i + 1..] {
            assert!(!a.same_connection(b));
        }
    }
    assert_eq!(counted(&manager).await, counters(5, 5, 4));
    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}

#[tokio::test]
async fn a_call_on_an_old_handle_during_the_close_goes_to_the_new_instance() {
    let (manager, ledger) = manager_by_instance(|n| match n {
        0 => Behaviour {
            close_delay: Duration::from_millis(200),
            ..Behaviour::default()
        },
        _ => Behaviour::default(),
    })
    .await;
    let old = manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap()
        .unwrap();
    let replacing = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.replace_connection(&key("r1"), &params("r1")).await })
    };
    old.wait_for_status(Duration::from_secs(5), |s| {
        s.state == ConnectionState::Closing
    })
    .await
    .unwrap();
    // Queued in the old actor's mailbox behind its close: left untaken, then sent again.
    assert_eq!(old.execute_command("during").await.unwrap(), "ran during");
    let new = replacing.await.unwrap().unwrap().unwrap();
    let run_on_new = new
        .with(|c: &mut MockConnection| Box::pin(async move { c.commands_run }))
        .await
        .unwrap();
    assert_eq!(run_on_new, 1);
    manager.shutdown().await.unwrap();
    ledger.assert_all_closed_once();
}

#[tokio::test]
async fn a_shutdown_during_the_replacement_closes_everything_once() {
    let started = Arc::new(Notify::new());
    let gate = Arc::new(Notify::new());
    let (started_in, gate_in) = (started.clone(), gate.clone());
    let (manager, ledger) = manager_by_instance(move |n| match n {
        0 => Behaviour::default(),
        _ => Behaviour {
            open_started: Some(started_in.clone()),
            open_gate: Some(gate_in.clone()),
            ..Behaviour::default()
        },
    })
    .await;
    manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap();
    let replacing = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.replace_connection(&key("r1"), &params("r1")).await })
    };
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .unwrap();
    let shutting = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.shutdown().await })
    };
    // The replacement's caller is answered without waiting for its open.
    let replaced = replacing.await.unwrap();
    assert!(matches!(replaced, Err(Error::ShutDown)), "{replaced:?}");
    gate.notify_one();
    shutting.await.unwrap().unwrap();
    ledger.assert_all_closed_once();
    assert_eq!(Ledger::get(&ledger.created), 2);
}
