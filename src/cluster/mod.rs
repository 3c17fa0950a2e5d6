//! Keys sharded across nodes (feature `cluster`), on ractor_cluster: a layer above the client
//! API, which it uses and which knows nothing of it.
//!
//! - `hrw.rs`: rendezvous hashing, which member owns a key: a pure function.
//! - `config.rs`: [`NodeConfig`], the [`Cookie`] (redacted everywhere), [`ClusterError`].
//! - `wire.rs`: the one remote message ([`ShardMessage`]) and what it carries.
//! - `membership.rs`: members and peers from ractor_cluster's node-session events.
//! - `shard.rs`: the shard actor: routing to the owner, waiting for a new one, handover,
//!   counters.
//! - `node.rs`: [`ClusterNode`]: starting, joining, the calls a program makes.
//!
//! Guarantees and limits are in the README's "Several machines" section.

mod config;
pub mod hrw;
mod membership;
mod node;
mod shard;
mod wire;

pub use config::{ClusterError, Cookie, NodeConfig, ParamsResolver, Role};
pub use membership::{CLIENT_PREFIX, ClusterEvent, MEMBER_PREFIX};
pub use node::ClusterNode;
pub use wire::{FailureKind, NodeCounters, Operation, Reply, Request, ShardMessage, WireKey};
