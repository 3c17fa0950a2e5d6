//! genja's runners on the supervisor: [`SupervisedResolver`] resolves a task's connection as
//! genja's own runtime resolver does and opens it through the supervisor; genja's tasks get a
//! [`SupervisedConnection`], a genja `Connection` that forwards to the connection's handle.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use genja_core::GenjaError;
use genja_core::inventory::{self as genja, Inventory};
use genja_core::task::{Task, TaskConnectionResolver};
use tokio::sync::Mutex;

use crate::client::ConnectionManager;
use crate::connection::{ConnectionKey, ResolvedConnectionParams};
use crate::runtime::messages::{ConnectionHandle, SupervisorMessage};
use crate::status::ConnectionState;

use super::convert::{key_from_genja, key_to_genja, params_from_genja};

/// A genja [`TaskConnectionResolver`] backed by the supervisor: pass it to a genja runner
/// (`PluginRunner::run_task(task, hosts, Some(Arc::new(resolver)), ..)`).
///
/// A task's key is `task.get_connection_key(hostname)` and its params
/// `inventory.resolve_connection_params(hostname, plugin)`, as in genja's own runtime
/// resolver; a task without a connection plugin resolves to `None`. The connection is opened
/// with [`ConnectionManager::open_connection`] (waiting for a reconnect in progress instead of
/// failing), and session verification replaces it with
/// [`ConnectionManager::replace_connection`]. Failures reach genja as
/// `GenjaError::Message` with this crate's error text, which names the key and the stage.
#[derive(Clone)]
pub struct SupervisedResolver {
    manager: ConnectionManager,
    inventory: Arc<Inventory>,
}

impl SupervisedResolver {
    /// A resolver over `manager`'s supervisor and genja's `inventory`.
    pub fn new(manager: ConnectionManager, inventory: Arc<Inventory>) -> Self {
        Self { manager, inventory }
    }

    /// The manager the connections are opened through.
    pub fn manager(&self) -> &ConnectionManager {
        &self.manager
    }

    /// The inventory the params are resolved from.
    pub fn inventory(&self) -> &Arc<Inventory> {
        &self.inventory
    }

    /// The task's key for `hostname` and the host's params for its plugin, as genja's own
    /// runtime resolver resolves them; `None` when the task declares no connection.
    fn key_and_params(
        &self,
        task: &dyn Task,
        hostname: &str,
    ) -> Result<Option<(ConnectionKey, ResolvedConnectionParams)>, GenjaError> {
        let Some(key) = task.get_connection_key(hostname) else {
            return Ok(None);
        };
        let params = self
            .inventory
            .resolve_connection_params(hostname, &key.plugin_name)
            .ok_or_else(|| {
                GenjaError::Message(format!(
                    "failed to resolve connection params for host '{hostname}' using plugin '{}'",
                    key.plugin_name
                ))
            })?;
        Ok(Some((key_from_genja(&key), params_from_genja(&params))))
    }

    fn wrap(
        &self,
        key: ConnectionKey,
        handle: Option<ConnectionHandle>,
    ) -> Option<Arc<Mutex<dyn genja::Connection>>> {
        let handle = handle?;
        let connection = SupervisedConnection {
            manager: self.manager.clone(),
            key,
            handle: Some(handle),
        };
        Some(Arc::new(Mutex::new(connection)))
    }
}

impl fmt::Debug for SupervisedResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisedResolver")
            .field("manager", &self.manager)
            .field("hosts", &self.inventory.hosts().len())
            .finish()
    }
}

#[async_trait]
impl TaskConnectionResolver for SupervisedResolver {
    async fn resolve_task_connection(
        &self,
        task: &dyn Task,
        hostname: &str,
    ) -> Result<Option<Arc<Mutex<dyn genja::Connection>>>, GenjaError> {
        let Some((key, params)) = self.key_and_params(task, hostname)? else {
            return Ok(None);
        };
        let handle = self
            .manager
            .open_connection(&key, &params)
            .await
            .map_err(|error| GenjaError::Message(error.to_string()))?;
        Ok(self.wrap(key, handle))
    }

    async fn replace_task_connection(
        &self,
        task: &dyn Task,
        hostname: &str,
    ) -> Result<Option<Arc<Mutex<dyn genja::Connection>>>, GenjaError> {
        // The params are resolved again, as genja does, so a replacement uses the host's
        // current inventory entry.
        let Some((key, params)) = self.key_and_params(task, hostname)? else {
            return Ok(None);
        };
        let handle = self
            .manager
            .replace_connection(&key, &params)
            .await
            .map_err(|error| GenjaError::Message(error.to_string()))?;
        Ok(self.wrap(key, handle))
    }
}

/// The connection a genja task gets from a [`SupervisedResolver`]: genja's `Connection` trait
/// over a [`ConnectionHandle`]. Its mutex guards only this thin forwarder; the plugin instance
/// lives in its own actor, so tasks on other hosts never wait on it.
///
/// - `is_alive` reads the handle's published status (open or not) without blocking.
/// - `open` opens through the supervisor (`open_connection`); `execute_command` runs through
///   the handle, waiting for a reconnect in progress, within the request timeout.
/// - `close` asks the supervisor to close the key; the close runs in the connection's actor.
/// - `create(key)` makes an unopened forwarder for another key of the same supervisor, as
///   genja's prototype pattern expects; its `open` resolves it.
pub struct SupervisedConnection {
    manager: ConnectionManager,
    key: ConnectionKey,
    handle: Option<ConnectionHandle>,
}

impl SupervisedConnection {
    /// The handle this forwards to; `None` before `open` or after `close`.
    pub fn handle(&self) -> Option<&ConnectionHandle> {
        self.handle.as_ref()
    }

    /// The key this forwards to.
    pub fn key(&self) -> &ConnectionKey {
        &self.key
    }
}

impl fmt::Debug for SupervisedConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisedConnection")
            .field("key", &self.key)
            .field("handle", &self.handle)
            .finish()
    }
}

#[async_trait]
impl genja::Connection for SupervisedConnection {
    fn create(&self, key: &genja::ConnectionKey) -> Box<dyn genja::Connection> {
        Box::new(SupervisedConnection {
            manager: self.manager.clone(),
            key: key_from_genja(key),
            handle: None,
        })
    }

    fn is_alive(&self) -> bool {
        self.handle
            .as_ref()
            .is_some_and(|handle| handle.status().state == ConnectionState::Open)
    }

    async fn open(&mut self, params: &genja::ResolvedConnectionParams) -> Result<(), String> {
        let params = params_from_genja(params);
        match self.manager.open_connection(&self.key, &params).await {
            Ok(Some(handle)) => {
                self.handle = Some(handle);
                Ok(())
            }
            Ok(None) => Err(format!("{}: no connection plugin for this key", self.key)),
            Err(error) => Err(error.to_string()),
        }
    }

    async fn execute_command(&mut self, command: &str) -> Result<String, String> {
        match &self.handle {
            Some(handle) => handle
                .execute_command(command)
                .await
                .map_err(|error| error.to_string()),
            None => Err(format!("{}: not open", self.key)),
        }
    }

    fn close(&mut self) -> genja::ConnectionKey {
        // genja's close is synchronous: the close is sent to the supervisor, which has the
        // connection's actor close it (bounded by the close timeout), and not waited for.
        let (reply, _) = tokio::sync::oneshot::channel();
        let close = SupervisorMessage::CloseConnection {
            key: self.key.clone(),
            reply: reply.into(),
        };
        // A supervisor already gone has closed every connection.
        let _ = self.manager.supervisor().cast(close);
        self.handle = None;
        key_to_genja(&self.key)
    }
}
