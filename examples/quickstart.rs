//! Upstream genja's `ConnectionManager` doc examples, rewritten for this crate: the same
//! factory, the same counters, `.await` on every call, and a connection per actor instead of a
//! connection per mutex.
//!
//! Run with `cargo run --example quickstart`.

use std::error::Error as StdError;
use std::sync::Arc;

use async_trait::async_trait;
use connection_supervisor::{
    CommandError, Connection, ConnectionFactory, ConnectionKey, ConnectionManager, OpenError,
    ResolvedConnectionParams,
};
use futures::FutureExt;

/// A stand-in device connection: upstream's examples flip a flag, and so does this one. The
/// real SSH plugin lives in `connection_supervisor::ssh`.
struct DemoConnection {
    plugin: String,
    alive: bool,
    commands: usize,
}

#[async_trait]
impl Connection for DemoConnection {
    fn is_alive(&self) -> bool {
        self.alive
    }

    async fn open(&mut self, params: &ResolvedConnectionParams) -> Result<(), OpenError> {
        if params.username.is_none() {
            return Err("no username in the params".into());
        }
        self.alive = true;
        Ok(())
    }

    async fn close(&mut self) {
        self.alive = false;
    }

    async fn execute_command(&mut self, command: &str) -> Result<String, CommandError> {
        self.commands += 1;
        Ok(format!("{} answered `{command}`", self.plugin))
    }
}

fn params() -> ResolvedConnectionParams {
    ResolvedConnectionParams {
        hostname: "10.0.0.1".to_string(),
        port: Some(22),
        username: Some("admin".to_string()),
        password: None,
        platform: None,
        extras: None,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn StdError>> {
    // The factory only constructs; opening is the connection's own job. Unknown plugin names
    // get None, and nothing is pooled for them.
    let factory: Arc<ConnectionFactory> = Arc::new(|key: &ConnectionKey| {
        matches!(key.plugin_name.as_str(), "ssh" | "netconf").then(|| {
            Box::new(DemoConnection {
                plugin: key.plugin_name.clone(),
                alive: false,
                commands: 0,
            }) as Box<dyn Connection>
        })
    });
    let manager = ConnectionManager::with_connection_factory(factory).await?;

    // Monitoring connection usage: open twice, close once.
    let key = ConnectionKey::new("router1", "ssh");
    let handle = manager
        .open_connection(&key, &params())
        .await?
        .ok_or("no plugin for ssh")?;
    manager.open_connection(&key, &params()).await?; // reuses the open connection
    println!("{}", handle.execute_command("show version").await?);
    let commands = handle
        .with(|demo: &mut DemoConnection| async move { demo.commands }.boxed())
        .await?;
    println!("commands run on {key}: {commands}");
    manager.close_connection(&key).await?;
    let counters = manager
        .connection_counters_for("ssh")
        .await?
        .ok_or("no counters")?;
    println!("after open, reuse and close: {counters:?}");
    assert_eq!(
        (
            counters.create_calls,
            counters.open_calls,
            counters.close_calls
        ),
        (1, 1, 1)
    );

    // Detecting leaks: five routers opened, close-all closes every one.
    for i in 1..=5 {
        let key = ConnectionKey::new(format!("router{i}"), "ssh");
        manager.open_connection(&key, &params()).await?;
    }
    manager.close_all_connections().await?;
    let counters = manager
        .connection_counters_for("ssh")
        .await?
        .ok_or("no counters")?;
    println!("after five more and close-all: {counters:?}");
    assert_eq!(counters.create_calls, counters.close_calls);

    // Comparing connection types: one snapshot, a counter set per plugin.
    manager
        .open_connection(&ConnectionKey::new("router1", "ssh"), &params())
        .await?;
    manager
        .open_connection(&ConnectionKey::new("router1", "netconf"), &params())
        .await?;
    let telnet = manager
        .get_or_create(ConnectionKey::new("router1", "telnet"))
        .await?;
    println!("telnet has a plugin: {}", telnet.is_some());
    let mut snapshot: Vec<_> = manager
        .connection_counters_snapshot()
        .await?
        .into_iter()
        .collect();
    snapshot.sort_by(|a, b| a.0.cmp(&b.0));
    for (plugin, counters) in snapshot {
        println!("{plugin:>8}: {counters:?}");
    }

    // A typed error, not a bare string: the key and the plugin's message.
    let mut no_user = params();
    no_user.username = None;
    if let Err(error) = manager
        .open_connection(&ConnectionKey::new("router9", "ssh"), &no_user)
        .await
    {
        println!("as expected: {error}");
    }

    manager.shutdown().await?;
    Ok(())
}
