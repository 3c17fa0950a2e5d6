//! A genja plugin (written here, implementing genja-core's `Connection` trait) run under
//! `GenjaPlugin`: it opens and runs commands, and a panic in it or an open error from it
//! behaves as for any plugin of this crate.
#![cfg(feature = "genja")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use connection_supervisor::genja::GenjaPlugin;
use connection_supervisor::{
    CommandError, ConnectionManager, Error, EventKind, FailureKind, ResolvedConnectionParams,
};
use genja_core::inventory::{Connection, ConnectionKey};

/// What the plugin's instances did, across instances.
#[derive(Debug, Default)]
struct Seen {
    created: AtomicUsize,
    opened: AtomicUsize,
    closed: AtomicUsize,
    last_user: std::sync::Mutex<Option<String>>,
}

/// A genja plugin as a genja user writes one: an `alive` flag, `create` as its prototype.
#[derive(Debug)]
struct RouterPlugin {
    key: ConnectionKey,
    alive: bool,
    seen: Arc<Seen>,
}

#[async_trait]
impl Connection for RouterPlugin {
    fn create(&self, key: &ConnectionKey) -> Box<dyn Connection> {
        self.seen.created.fetch_add(1, Ordering::SeqCst);
        Box::new(RouterPlugin {
            key: key.clone(),
            alive: false,
            seen: self.seen.clone(),
        })
    }

    fn is_alive(&self) -> bool {
        self.alive
    }

    async fn open(
        &mut self,
        params: &genja_core::inventory::ResolvedConnectionParams,
    ) -> Result<(), String> {
        *self.seen.last_user.lock().unwrap() = params.username.clone();
        match self.key.hostname.as_str() {
            "broken" => Err("boom".to_string()),
            "locked" => Err("authentication failed for admin".to_string()),
            "slow" => Err("connect timed out".to_string()),
            _ => {
                self.alive = true;
                self.seen.opened.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    }

    async fn execute_command(&mut self, command: &str) -> Result<String, String> {
        match command {
            "panic" => panic!("the genja plugin panics"),
            "fail" => Err("no such command".to_string()),
            _ => Ok(format!("{}: {command}", self.key.hostname)),
        }
    }

    fn close(&mut self) -> ConnectionKey {
        self.alive = false;
        self.seen.closed.fetch_add(1, Ordering::SeqCst);
        self.key.clone()
    }
}

/// A genja plugin that keeps genja's default `execute_command`.
#[derive(Debug)]
struct NoCommands;

#[async_trait]
impl Connection for NoCommands {
    fn create(&self, _key: &ConnectionKey) -> Box<dyn Connection> {
        Box::new(NoCommands)
    }
    fn is_alive(&self) -> bool {
        true
    }
    async fn open(
        &mut self,
        _params: &genja_core::inventory::ResolvedConnectionParams,
    ) -> Result<(), String> {
        Ok(())
    }
    fn close(&mut self) -> ConnectionKey {
        ConnectionKey::new("quiet", "telnet")
    }
}

async fn manager() -> (ConnectionManager, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let prototype = RouterPlugin {
        key: ConnectionKey::new("prototype", "router"),
        alive: false,
        seen: seen.clone(),
    };
    let factory = GenjaPlugin::prototypes([
        (
            "router".to_string(),
            Box::new(prototype) as Box<dyn Connection>,
        ),
        (
            "telnet".to_string(),
            Box::new(NoCommands) as Box<dyn Connection>,
        ),
    ]);
    let manager = ConnectionManager::with_connection_factory(factory)
        .await
        .unwrap();
    (manager, seen)
}

fn key(host: &str) -> connection_supervisor::ConnectionKey {
    connection_supervisor::ConnectionKey::new(host, "router")
}

fn params(host: &str) -> ResolvedConnectionParams {
    let mut params = ResolvedConnectionParams::new(host);
    params.username = Some("admin".to_string());
    params.password = Some("s3cret".to_string());
    params
}

#[tokio::test]
async fn a_genja_plugin_opens_runs_commands_and_closes_once() {
    let (manager, seen) = manager().await;
    let router = manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        router.execute_command("show version").await.unwrap(),
        "r1: show version"
    );
    assert_eq!(seen.last_user.lock().unwrap().as_deref(), Some("admin"));
    let error = router.execute_command("fail").await.unwrap_err();
    assert!(
        matches!(&error, Error::Command { source: CommandError::Other(m), .. } if m == "no such command")
    );
    // Unknown plugin names get None, as from genja's registry.
    assert!(
        manager
            .get_or_create(connection_supervisor::ConnectionKey::new("r1", "netconf"))
            .await
            .unwrap()
            .is_none()
    );

    manager.close_connection(&key("r1")).await.unwrap();
    assert_eq!(seen.closed.load(Ordering::SeqCst), 1);
    manager.shutdown().await.unwrap();
    assert_eq!(
        seen.created.load(Ordering::SeqCst),
        seen.closed.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn genja_s_default_execute_command_is_unsupported() {
    let (manager, _seen) = manager().await;
    let quiet = manager
        .open_connection(
            &connection_supervisor::ConnectionKey::new("quiet", "telnet"),
            &params("quiet"),
        )
        .await
        .unwrap()
        .unwrap();
    let error = quiet.execute_command("show clock").await.unwrap_err();
    assert!(matches!(
        error,
        Error::Command {
            source: CommandError::Unsupported,
            ..
        }
    ));
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn open_errors_are_typed_unknown_unless_the_message_says_more() {
    let (manager, seen) = manager().await;
    for (host, kind) in [
        ("broken", FailureKind::Unknown),
        ("locked", FailureKind::Auth),
        ("slow", FailureKind::Timeout),
    ] {
        let error = manager
            .open_connection(&key(host), &params(host))
            .await
            .unwrap_err();
        assert_eq!(error.failure_kind(), Some(kind), "{host}: {error}");
        assert!(matches!(&error, Error::Open { .. }), "{host}: {error}");
        // The password never reaches an error.
        assert!(!format!("{error} {error:?}").contains("s3cret"));
    }
    assert_eq!(
        manager
            .connection_counters_for("router")
            .await
            .unwrap()
            .map(|c| c.open_calls),
        Some(0)
    );
    manager.shutdown().await.unwrap();
    assert_eq!(
        seen.created.load(Ordering::SeqCst),
        seen.closed.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn a_panic_in_a_genja_plugin_costs_its_caller_an_error_and_the_key_a_restart() {
    let (manager, seen) = manager().await;
    let mut events = manager.subscribe().await.unwrap();
    let router = manager
        .open_connection(&key("r1"), &params("r1"))
        .await
        .unwrap()
        .unwrap();
    let error = router.execute_command("panic").await.unwrap_err();
    assert!(matches!(error, Error::PluginPanicked { .. }), "{error}");
    events
        .wait_for_key(&key("r1"), std::time::Duration::from_secs(5), |e| {
            matches!(e, EventKind::Reconnected { .. })
        })
        .await
        .unwrap();
    // The same handle reaches the fresh, reopened instance.
    assert_eq!(
        router.execute_command("show clock").await.unwrap(),
        "r1: show clock"
    );
    let counters = manager
        .connection_counters_for("router")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((counters.crashes, counters.restarts), (1, 1));
    assert_eq!(seen.opened.load(Ordering::SeqCst), 2);
    // The crashed instance was closed inside its actor before the restart.
    assert_eq!(seen.closed.load(Ordering::SeqCst), 1);
    manager.shutdown().await.unwrap();
    assert_eq!(
        seen.created.load(Ordering::SeqCst),
        seen.closed.load(Ordering::SeqCst)
    );
}
