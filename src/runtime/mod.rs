//! The actors behind the manager, for embedding in your own actor tree: the
//! [`ConnectionSupervisor`] (one per pool, routes by key, restarts crashed connections) and the
//! [`ConnectionActor`] (one per connection, owns the plugin instance), with the messages they
//! take. Link the supervisor under an actor of yours with `Actor::spawn_linked`, message it
//! with [`SupervisorMessage`]s, or wrap it with
//! [`ConnectionManager::from_supervisor`](crate::ConnectionManager::from_supervisor).
//!
//! Their state and their internal messages are private; docs/architecture.md describes how a
//! request flows through them.

mod connection;
pub(crate) mod internal;
pub(crate) mod messages;
mod supervisor;

pub use connection::ConnectionActor;
pub use messages::{ConnectionMessage, SupervisorMessage};
pub use supervisor::ConnectionSupervisor;
