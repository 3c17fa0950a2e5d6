//! The baseline: a minimal, faithful re-implementation of upstream genja's lock-based
//! `ConnectionManager` (`genja_core::inventory`), the design this crate replaces.
//!
//! What is kept, because it decides the cost being compared:
//!
//! - the pool is a `DashMap<ConnectionKey, Arc<tokio::sync::Mutex<dyn Connection>>>`;
//! - `get_or_create` clones the factory out of an `RwLock`, then takes the key's map entry
//!   (a shard write lock, also for a key that exists) and runs the factory inside it;
//! - the per-plugin counters live in a `DashMap<String, Counters>`, bumped through `entry`;
//! - `open_connection` is `get_or_create`, then the connection's mutex, then `open` only if
//!   `!is_alive()`;
//! - `close_connection` / `close_all_connections` are synchronous and use `blocking_lock`, as
//!   upstream's are (so they must run outside the runtime's worker threads: the benchmarks call
//!   them through `spawn_blocking`).
//!
//! Left out: `insert`, `get`, `set_connection_factory` and the newer upstream's per-key
//! lifecycle lock (a second `DashMap` of `Arc<Mutex<()>>` taken around `open_connection`),
//! which would only add cost to the baseline's hot path.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use connection_supervisor::{ConnectionKey, ResolvedConnectionParams};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::Mutex;

/// Upstream's `Connection` trait, without the prototype-pattern `create`. `Send` only where
/// upstream also asks `Sync`: the connection is only ever used under its mutex, and the
/// 20 ms fleet (`rtt.rs`) puts the library's SSH plugin, a `dyn Connection` (`Send`), in it.
#[async_trait]
pub trait BaselineConnection: Send {
    /// Whether the connection is usable.
    fn is_alive(&self) -> bool;
    /// Connects.
    async fn open(&mut self, params: &ResolvedConnectionParams) -> Result<(), String>;
    /// Runs one command.
    async fn execute_command(&mut self, command: &str) -> Result<String, String>;
    /// Releases the connection (synchronous upstream).
    fn close(&mut self);
}

/// A pooled connection, as upstream hands it out.
pub type Shared = Arc<Mutex<dyn BaselineConnection>>;

/// Upstream's factory type.
pub type BaselineFactory = dyn Fn(&ConnectionKey) -> Option<Shared> + Send + Sync;

/// Upstream's per-plugin counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections the factory made.
    pub create_calls: usize,
    /// Opens that ran because the connection was not alive.
    pub open_calls: usize,
    /// Closes of pooled connections.
    pub close_calls: usize,
}

/// The lock-based manager.
pub struct BaselineManager {
    connections: DashMap<ConnectionKey, Shared>,
    factory: RwLock<Option<Arc<BaselineFactory>>>,
    counters: DashMap<String, Counters>,
}

impl BaselineManager {
    /// A manager with `factory`.
    pub fn with_connection_factory(factory: Arc<BaselineFactory>) -> Self {
        Self {
            connections: DashMap::new(),
            factory: RwLock::new(Some(factory)),
            counters: DashMap::new(),
        }
    }

    fn connection_factory(&self) -> Result<Arc<BaselineFactory>, String> {
        let guard = self
            .factory
            .read()
            .map_err(|_| "connection factory lock poisoned".to_owned())?;
        guard
            .clone()
            .ok_or_else(|| "connection factory not set".to_owned())
    }

    /// The pooled connection for `key`, made by the factory (inside the map entry) if absent.
    pub fn get_or_create(&self, key: ConnectionKey) -> Result<Option<Shared>, String> {
        let factory = self.connection_factory()?;
        match self.connections.entry(key) {
            Entry::Occupied(entry) => Ok(Some(entry.get().clone())),
            Entry::Vacant(entry) => {
                let plugin = entry.key().plugin_name.clone();
                let Some(connection) = factory(entry.key()) else {
                    return Ok(None);
                };
                self.counters.entry(plugin).or_default().create_calls += 1;
                entry.insert(connection.clone());
                Ok(Some(connection))
            }
        }
    }

    /// `get_or_create`, then lock, then open unless alive.
    pub async fn open_connection(
        &self,
        key: &ConnectionKey,
        params: &ResolvedConnectionParams,
    ) -> Result<Option<Shared>, String> {
        let Some(connection) = self.get_or_create(key.clone())? else {
            return Ok(None);
        };
        {
            let mut guard = connection.lock().await;
            if !guard.is_alive() {
                guard.open(params).await?;
                self.counters
                    .entry(key.plugin_name.clone())
                    .or_default()
                    .open_calls += 1;
            }
        }
        Ok(Some(connection))
    }

    /// What a caller does to run a command upstream: find the connection, lock it, call it.
    pub async fn execute_command(
        &self,
        key: &ConnectionKey,
        command: &str,
    ) -> Result<String, String> {
        let connection = self
            .connections
            .get(key)
            .map(|entry| entry.value().clone())
            .ok_or_else(|| format!("no connection for {key}"))?;
        let mut guard = connection.lock().await;
        guard.execute_command(command).await
    }

    /// Closes every pooled connection, then clears the map (upstream: iterate, then clear).
    /// Blocking: call it off the runtime's worker threads.
    pub fn close_all_connections(&self) {
        self.connections.iter().for_each(|entry| {
            let mut connection = entry.value().blocking_lock();
            connection.close();
            self.counters
                .entry(entry.key().plugin_name.clone())
                .or_default()
                .close_calls += 1;
        });
        self.connections.clear();
    }

    /// A copy of every plugin's counters.
    pub fn connection_counters_snapshot(&self) -> HashMap<String, Counters> {
        self.counters
            .iter()
            .map(|entry| (entry.key().clone(), *entry.value()))
            .collect()
    }
}
