//! Helpers for testing code that uses the supervisor (feature `testing`): a programmable fault
//! plugin whose connections fail, drop, hang and panic on command and count what they really
//! did, and (with feature `ssh`) an embedded SSH server that imitates a network device. Wait for lifecycle events with [`EventStream::wait_for`](crate::EventStream::wait_for)
//! instead of sleeping.

mod fault;
#[cfg(feature = "ssh")]
mod ssh_server;

pub use fault::{FaultConnection, FaultLedger, FaultPlugin};
#[cfg(feature = "ssh")]
pub use ssh_server::*;
