//! What crosses the wire between nodes: one RPC, [`ShardMessage::Call`], carrying a
//! [`Request`] and answered with a [`Reply`]. Both are JSON inside ractor_cluster's frames.
//!
//! Nothing here carries credentials: a request names a key, and the node that runs it resolves
//! the key's params from its own inventory or secret source.

use ractor::{BytesConvertable, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};

use crate::ConnectionKey;

/// A key as it crosses the wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WireKey {
    /// [`ConnectionKey::hostname`].
    pub hostname: String,
    /// [`ConnectionKey::plugin_name`].
    pub plugin_name: String,
}

impl WireKey {
    /// The empty key of requests about no key ([`Operation::Counters`], ...).
    pub fn none() -> Self {
        Self {
            hostname: String::new(),
            plugin_name: String::new(),
        }
    }
}

impl From<&ConnectionKey> for WireKey {
    fn from(key: &ConnectionKey) -> Self {
        Self {
            hostname: key.hostname.clone(),
            plugin_name: key.plugin_name.clone(),
        }
    }
}

impl From<&WireKey> for ConnectionKey {
    fn from(key: &WireKey) -> Self {
        ConnectionKey::new(key.hostname.clone(), key.plugin_name.clone())
    }
}

/// What a request asks of the node it reaches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Operation {
    /// Open the key's connection (get-or-create, then open if not alive).
    Open,
    /// Run a command on the key's connection, opening it first if needed.
    Run {
        /// The command line.
        command: String,
    },
    /// Close the key's connection.
    Close,
    /// The key's state, as its `Debug` name (`"Open"`, `"Closed"`, ...), if the node has it.
    Status,
    /// The node's [`NodeCounters`].
    Counters,
    /// Every member's counters, as the receiving member collects them (for a client, which
    /// may reach only the member it joined).
    MemberCounters,
    /// The member that owns the key, in the receiving node's view.
    Owner,
    /// The members the receiving node sees.
    Members,
    /// Close the key here because its new owner is about to open it (the handover).
    Release,
}

/// One request from one node (or cluster client) to another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The sending node's name: a request from a node that is not an authenticated peer of the
    /// receiver is refused.
    pub from: String,
    /// The key the request is about (ignored by [`Operation::Counters`] and
    /// [`Operation::Members`]).
    pub key: WireKey,
    /// What to do.
    pub operation: Operation,
    /// Milliseconds the request may still take. Relative, since nodes' clocks differ.
    pub budget_ms: u64,
    /// Whether a node already routed it here: a forwarded request is run by its receiver if
    /// the receiver owns the key, and answered [`Reply::NotOwner`] otherwise, never forwarded
    /// again (views of the membership may differ for a moment; no request goes round).
    pub forwarded: bool,
}

/// A node's counters, as one node reports them and as `ClusterNode::cluster_counters` sums
/// them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCounters {
    /// Requests this node received (from its own callers and from other nodes).
    pub received: u64,
    /// Requests it ran on its own connections.
    pub served_locally: u64,
    /// Requests it sent on to the key's owner.
    pub forwarded: u64,
    /// Times a request waited for a new owner because the old one left or did not answer.
    pub waited_for_owner: u64,
    /// Keys it closed because another member became their owner (handovers and sweeps).
    pub released: u64,
    /// Requests refused because their sender was not an authenticated member.
    pub refused: u64,
    /// Keys whose connections are open on this node now.
    pub open_keys: u64,
}

/// The field-wise sum of two nodes' counters.
impl std::ops::Add for NodeCounters {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            received: self.received + other.received,
            served_locally: self.served_locally + other.served_locally,
            forwarded: self.forwarded + other.forwarded,
            waited_for_owner: self.waited_for_owner + other.waited_for_owner,
            released: self.released + other.released,
            refused: self.refused + other.refused,
            open_keys: self.open_keys + other.open_keys,
        }
    }
}

/// Why a request failed, as far as the caller needs to tell cases apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The command ran and failed (non-zero exit, rejected): trying again fails the same way.
    Command,
    /// The connection could not be opened or was lost: a later try may succeed.
    Connection,
    /// The request's time ran out.
    Deadline,
    /// The node has no params for the key in its inventory.
    UnknownKey,
    /// The sender is not an authenticated member of the receiver.
    Refused,
    /// The message could not be decoded.
    Malformed,
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Done, with nothing to say.
    Done,
    /// A command's output.
    Output(String),
    /// A key's state name, if the node has the key.
    Status(Option<String>),
    /// A node's counters.
    Counters(NodeCounters),
    /// Counters by member name.
    MemberCounters(Vec<(String, NodeCounters)>),
    /// A member's name, if there is any member.
    Owner(Option<String>),
    /// Member names, sorted.
    Members(Vec<String>),
    /// The receiver does not own the key (in its view): ask again once views agree.
    NotOwner {
        /// The owner in the receiver's view.
        owner: Option<String>,
    },
    /// The request failed.
    Failed {
        /// What kind of failure.
        kind: FailureKind,
        /// The error, naming the key, the node and the stage.
        message: String,
    },
}

// `from_bytes` cannot fail by contract; a frame that does not decode becomes a value the
// receiver refuses (a request) or the caller reports (a reply), never a panic in the session.
impl BytesConvertable for Request {
    fn into_bytes(self) -> Vec<u8> {
        serde_json::to_vec(&self).unwrap_or_default()
    }
    fn from_bytes(bytes: Vec<u8>) -> Self {
        // A request that did not decode has an empty sender, which no member has: refused.
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Request {
            from: String::new(),
            key: WireKey {
                hostname: String::new(),
                plugin_name: String::new(),
            },
            operation: Operation::Status,
            budget_ms: 0,
            forwarded: true,
        })
    }
}

impl BytesConvertable for Reply {
    fn into_bytes(self) -> Vec<u8> {
        serde_json::to_vec(&self).unwrap_or_default()
    }
    fn from_bytes(bytes: Vec<u8>) -> Self {
        serde_json::from_slice(&bytes).unwrap_or_else(|error| Reply::Failed {
            kind: FailureKind::Malformed,
            message: format!("a reply from another node did not decode: {error}"),
        })
    }
}

/// The shard actor's message: the one remote-capable message of the cluster layer.
#[derive(RactorClusterMessage)]
pub enum ShardMessage {
    /// A request, answered on the port.
    #[rpc]
    Call(Request, RpcReplyPort<Reply>),
}

impl std::fmt::Debug for ShardMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardMessage::Call(request, _) => f.debug_tuple("Call").field(request).finish(),
        }
    }
}
