//! The actors behind the manager, for embedding in your own actor tree: the
//! [`ConnectionSupervisor`] (one per pool, routes by key, restarts crashed connections) and the
//! [`ConnectionActor`] (one per connection, owns the plugin instance), with the messages they
//! take. Link the supervisor under an actor of yours with `Actor::spawn_linked`, message it
//! with [`SupervisorMessage`]s, or wrap it with
//! [`ConnectionManager::from_supervisor`](crate::ConnectionManager::from_supervisor).
//!
//! Their state and their internal messages are private; docs/architecture.md describes how a
//! request flows through them.
//!
//! In a build where ractor's `cluster` feature is on (as `ractor_cluster` turns it on), turn
//! on this crate's `cluster` feature too: it gives [`SupervisorMessage`], [`ConnectionMessage`]
//! and [`EventDelivery`](crate::EventDelivery) the explicit `ractor::Message` impls that ractor
//! then requires. The actors stay local: their messages carry reply ports and closures and
//! cannot be sent to another node.

mod connection;
pub(crate) mod internal;
pub(crate) mod messages;
mod supervisor;

pub use connection::ConnectionActor;
pub use messages::{ConnectionMessage, SupervisorMessage};
pub use supervisor::ConnectionSupervisor;
