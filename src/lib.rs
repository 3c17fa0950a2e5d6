//! # connection-supervisor
//!
//! Keeps connections to many hosts alive for programs that talk to fleets: one connection per
//! key (hostname + plugin name), each owned by its own actor, all owned by a supervisor actor
//! that routes requests by key.
//!
//! It keeps the contract of genja's lock-based `ConnectionManager` (a factory, lazy
//! get-or-create, open-if-not-alive, close, per-plugin counters) but replaces its shared
//! `DashMap<_, Arc<Mutex<dyn Connection>>>` with message passing on [ractor]:
//!
//! - a slow factory, open or command holds up only its own key, never the pool;
//! - every wait is bounded ([`Timeouts`]), and a call to a stopped actor is an error, not a hang;
//! - a panicking factory or plugin costs its caller an error and nothing else;
//! - close-all and shutdown close every connection exactly once, even while other tasks are
//!   creating connections.
//!
//! ```no_run
//! use std::sync::Arc;
//! use connection_supervisor::{
//!     Connection, ConnectionFactory, ConnectionKey, ConnectionManager, OpenError,
//!     ResolvedConnectionParams,
//! };
//!
//! #[derive(Default)]
//! struct Telnetish { open: bool }
//!
//! #[async_trait::async_trait]
//! impl Connection for Telnetish {
//!     fn is_alive(&self) -> bool { self.open }
//!     async fn open(&mut self, _params: &ResolvedConnectionParams) -> Result<(), OpenError> {
//!         self.open = true;
//!         Ok(())
//!     }
//!     async fn close(&mut self) { self.open = false; }
//! }
//!
//! # async fn run() -> Result<(), connection_supervisor::Error> {
//! let factory: Arc<ConnectionFactory> = Arc::new(|key: &ConnectionKey| {
//!     (key.plugin_name == "telnetish")
//!         .then(|| Box::new(Telnetish::default()) as Box<dyn Connection>)
//! });
//! let manager = ConnectionManager::with_connection_factory(factory).await?;
//! let key = ConnectionKey::new("r1", "telnetish");
//! let handle = manager
//!     .open_connection(&key, &ResolvedConnectionParams::new("10.0.0.1"))
//!     .await?
//!     .expect("the factory serves this plugin");
//! assert!(handle.is_alive().await?);
//! manager.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! Bottom to top; each file depends only on files above it in this list (a file that names a
//! type defined in another depends on it), so the crate reads top-down.
//!
//! - [`connection`]: what a plugin implements and is given: key, params, the [`Connection`]
//!   and [`CommandRunner`] traits, their errors, the factory and the loss notifier.
//! - `status.rs`: lifecycle state, status snapshot, failure info, counters: plain data.
//! - `error.rs`: the one [`Error`] type, with the [`Operation`] and [`Stage`] it names.
//! - `policy.rs`: per-plugin [`ConnectionPolicy`] (timeouts, backoff, health, idle, lifetime)
//!   and the [`RestartPolicy`]; `config.rs`: [`SupervisorConfig`], which holds them, and its
//!   validation;
//!   `deadline.rs`: the [`Deadline`] a request carries.
//! - `events.rs`: lifecycle [`ConnectionEvent`]s, the bus and the [`EventStream`].
//! - `guard.rs`: every plugin call runs bounded and with panics caught.
//! - `shared.rs`: the little that is shared between tasks instead of owned by an actor, and
//!   who writes it.
//! - [`runtime`]: the actors: `messages.rs` (the message enums and the [`ConnectionHandle`]
//!   they answer with), `internal.rs` (their private messages), `supervisor/` (pool and
//!   creation, restarts, limits, shutdown) and `connection/` (lifecycle, reconnect, commands,
//!   timers).
//! - `client/`: [`ConnectionManager`] and [`SupervisorGuard`] over the supervisor's messages,
//!   and the async calls of [`ConnectionHandle`]; `replace_connection` (genja 0.5's session
//!   verification) is `supervisor/replace.rs`.
//! - `genja` (feature `genja`): on top of `client/`, genja 0.5's runners, plugins and
//!   inventory on the supervisor.
//! - [`ssh`] (feature `ssh`) and [`testing`] (feature `testing`): beside the rest, depending
//!   only on [`connection`] (and `ssh/jump.rs` on the client API, through which a host opens
//!   its jump host).
//!
//! docs/architecture.md describes how a request flows through the actors.

#![deny(missing_docs, missing_debug_implementations)]

mod client;
#[cfg(feature = "cluster")]
pub mod cluster;
mod config;
pub mod connection;
mod deadline;
mod error;
mod events;
#[cfg(feature = "genja")]
pub mod genja;
mod guard;
pub mod metrics;
mod policy;
pub mod runtime;
mod shared;
#[cfg(feature = "ssh")]
pub mod ssh;
mod status;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::{ConnectionManager, SupervisorGuard};
pub use config::{AtLimit, SupervisorConfig};
pub use connection::{
    CommandError, CommandOutput, CommandRunner, Connection, ConnectionFactory, ConnectionKey,
    Extras, FailureKind, LossNotifier, OpenError, ResolvedConnectionParams,
};
pub use deadline::Deadline;
pub use error::{Error, LimitScope, Operation, Stage};
pub use events::{CloseReason, ConnectionEvent, EventDelivery, EventKind, EventStream};
pub use policy::{Backoff, ConnectionPolicy, RestartPolicy, Timeouts};
pub use runtime::messages::ConnectionHandle;
pub use status::{ConnectionCounters, ConnectionState, ConnectionStatus, FailureInfo};

/// Compiles the README's examples as doctests, so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
