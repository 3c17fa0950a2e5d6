//! genja's connection plugins under supervision: [`GenjaPlugin`] runs any implementation of
//! genja-core's `Connection` trait as a plugin of this crate, inside its own actor, with the
//! supervisor's timeouts, reconnects and panic handling.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use genja_core::inventory as genja;
use tokio::sync::Mutex;

use crate::connection::{
    CommandError, Connection, ConnectionFactory, ConnectionKey, FailureKind, OpenError,
    ResolvedConnectionParams,
};

use super::convert::{key_to_genja, params_to_genja};

/// A genja `Connection` run as a plugin of this crate.
///
/// - `open` calls the genja plugin's `open` with the params converted to genja's; its
///   `String` error becomes an [`OpenError`] of kind [`FailureKind::Unknown`], unless the
///   message says more ("timed out", "refused", "authentication", "host key", "resolve", "reset"
///   and the like give the matching kind, so that auth failures are not retried in a loop).
/// - `close` calls genja's synchronous `close` inside the connection's actor, once.
/// - `execute_command` forwards; genja's default ("does not implement execute_command")
///   becomes [`CommandError::Unsupported`].
/// - A panic in any of them is caught by the connection's actor, as for any plugin: the caller
///   gets `Error::PluginPanicked` and the key is restarted with a fresh instance.
///
/// genja's `is_alive` is its plugin's own word: a plugin that caches an `alive` flag and never
/// notices a drop is reconnected only when a command fails (set a `health_check_interval` for
/// the supervisor to ask it regularly).
pub struct GenjaPlugin {
    inner: Inner,
}

enum Inner {
    /// Made by [`GenjaPlugin::new`] or a prototype: owned by the actor alone.
    Owned(Box<dyn genja::Connection>),
    /// From a genja `ConnectionFactory`, which hands out `Arc<Mutex<_>>`: the actor is the only
    /// user unless the factory kept a clone.
    Shared(Arc<Mutex<dyn genja::Connection>>),
}

impl GenjaPlugin {
    /// Runs `connection`, a genja plugin instance.
    pub fn new(connection: Box<dyn genja::Connection>) -> Self {
        Self {
            inner: Inner::Owned(connection),
        }
    }

    /// Runs a connection a genja `ConnectionFactory` made. `is_alive` is asked with
    /// `try_lock`: if something else holds the mutex at that instant, the connection is taken
    /// to be in use, so alive.
    pub fn shared(connection: Arc<Mutex<dyn genja::Connection>>) -> Self {
        Self {
            inner: Inner::Shared(connection),
        }
    }

    /// This crate's factory over a genja `ConnectionFactory`, such as the one genja's plugin
    /// manager builds from its registered connection plugins
    /// (`genja_plugin_manager::connection_factory::build_connection_factory`). The key is
    /// converted to genja's; `None` stays `None` (no plugin for that name).
    pub fn factory(factory: Arc<genja::ConnectionFactory>) -> Arc<ConnectionFactory> {
        Arc::new(move |key: &ConnectionKey| {
            let made = factory(&key_to_genja(key))?;
            Some(Box::new(GenjaPlugin::shared(made)) as Box<dyn Connection>)
        })
    }

    /// This crate's factory over genja plugin objects by plugin name, using genja's prototype
    /// pattern: a key of plugin `name` gets `prototype.create(&key)`; other names get `None`.
    pub fn prototypes(
        prototypes: impl IntoIterator<Item = (String, Box<dyn genja::Connection>)>,
    ) -> Arc<ConnectionFactory> {
        let prototypes: HashMap<String, Box<dyn genja::Connection>> =
            prototypes.into_iter().collect();
        Arc::new(move |key: &ConnectionKey| {
            let prototype = prototypes.get(&key.plugin_name)?;
            let made = prototype.create(&key_to_genja(key));
            Some(Box::new(GenjaPlugin::new(made)) as Box<dyn Connection>)
        })
    }
}

impl fmt::Debug for GenjaPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the plugin's own Debug: genja plugins commonly derive it over their params,
        // password included.
        let kind = match self.inner {
            Inner::Owned(_) => "owned",
            Inner::Shared(_) => "shared",
        };
        f.debug_struct("GenjaPlugin")
            .field("instance", &kind)
            .finish_non_exhaustive()
    }
}

/// The failure kind a genja plugin's error message names, if any: genja errors are bare
/// strings, so the words are all there is.
fn failure_kind(message: &str) -> FailureKind {
    let message = message.to_ascii_lowercase();
    let says = |words: &[&str]| words.iter().any(|word| message.contains(word));
    if says(&["timed out", "timeout"]) {
        FailureKind::Timeout
    } else if says(&["host key", "hostkey"]) {
        FailureKind::HostKey
    } else if says(&["auth", "permission denied", "password", "credential"]) {
        FailureKind::Auth
    } else if says(&["refused"]) {
        FailureKind::Refused
    } else if says(&[
        "resolve",
        "name or service not known",
        "no such host",
        "dns",
    ]) {
        FailureKind::Dns
    } else if says(&["reset", "broken pipe", "eof", "unreachable"]) {
        FailureKind::Transport
    } else {
        FailureKind::Unknown
    }
}

/// The message genja-core's default `execute_command` returns.
const UNSUPPORTED: &str = "connection does not implement execute_command";

#[async_trait]
impl Connection for GenjaPlugin {
    fn is_alive(&self) -> bool {
        match &self.inner {
            Inner::Owned(connection) => connection.is_alive(),
            Inner::Shared(connection) => connection
                .try_lock()
                .map_or(true, |connection| connection.is_alive()),
        }
    }

    async fn open(&mut self, params: &ResolvedConnectionParams) -> Result<(), OpenError> {
        let params = params_to_genja(params);
        let result = match &mut self.inner {
            Inner::Owned(connection) => connection.open(&params).await,
            Inner::Shared(connection) => connection.lock().await.open(&params).await,
        };
        result.map_err(|message| OpenError::new(failure_kind(&message), message))
    }

    async fn close(&mut self) {
        let _key = match &mut self.inner {
            Inner::Owned(connection) => connection.close(),
            Inner::Shared(connection) => connection.lock().await.close(),
        };
    }

    async fn execute_command(&mut self, command: &str) -> Result<String, CommandError> {
        let result = match &mut self.inner {
            Inner::Owned(connection) => connection.execute_command(command).await,
            Inner::Shared(connection) => connection.lock().await.execute_command(command).await,
        };
        result.map_err(|message| {
            if message == UNSUPPORTED {
                CommandError::Unsupported
            } else {
                CommandError::Other(message)
            }
        })
    }

    fn type_name(&self) -> &'static str {
        "connection_supervisor::genja::GenjaPlugin"
    }
}
