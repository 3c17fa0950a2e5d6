//! The typed front door over the runtime's messages: [`ConnectionManager`] for the supervisor
//! and the async calls of [`ConnectionHandle`](crate::ConnectionHandle) for one connection.

mod handle;
mod manager;

pub use manager::{ConnectionManager, SupervisorGuard};
