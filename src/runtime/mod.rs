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
//! # Stopping
//!
//! However the supervisor ends, every connection is closed exactly once, each within its close
//! timeout: a [`SupervisorMessage::Shutdown`] closes them and answers when all are done; a
//! `stop()` (the supervisor's own, or its owner stopping its children) closes them in the
//! supervisor's `post_stop` before ractor stops the connection actors; a kill, a panic in the
//! supervisor, or an owner that stops or fails (ractor then kills the whole subtree, and no
//! `post_stop` runs) leaves each connection actor to close its connection on a task of its own
//! as it is dropped. Only the first two let anyone wait for the closes, so an owner that must
//! know its connections are closed before it goes on should, in its own `post_stop`, send
//! `Shutdown` with `call!` (or call
//! [`ConnectionManager::shutdown`](crate::ConnectionManager::shutdown)) and wait for the
//! answer.
//!
//! # Clustered builds
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
