//! What a node is started with: its name, address, role, peers and the cluster's cookie; and
//! the errors of the cluster layer.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::{ConnectionKey, ResolvedConnectionParams};

/// The cluster's shared secret (ractor_cluster's "magic cookie"): a node or client that does
/// not present it is refused. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Cookie(String);

impl Cookie {
    /// A cookie from its text (surrounding whitespace removed); refused when empty.
    pub fn new(text: impl Into<String>) -> Result<Self, ClusterError> {
        let text = text.into().trim().to_owned();
        if text.is_empty() {
            return Err(ClusterError::Config("the cookie is empty".into()));
        }
        Ok(Self(text))
    }

    /// The cookie in a file (its whole content, trimmed). The error names the file, never
    /// its content.
    pub fn from_file(path: &Path) -> Result<Self, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            ClusterError::Config(format!("cookie file {}: {error}", path.display()))
        })?;
        Self::new(text).map_err(|_| {
            ClusterError::Config(format!("cookie file {}: it is empty", path.display()))
        })
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Cookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cookie(<redacted>)")
    }
}

/// Whether a node owns keys or only sends requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Owns the keys rendezvous hashing gives it, and runs their requests.
    Member,
    /// Owns nothing: sends each request to a member, which routes it (`fleet --cluster`).
    Client,
}

/// How a node finds a key's params: from its own inventory or secret source, since no
/// credential crosses the wire. `None` when the node does not know the key.
pub type ParamsResolver = dyn Fn(&ConnectionKey) -> Option<ResolvedConnectionParams> + Send + Sync;

/// Everything a node is started with.
#[derive(Clone)]
pub struct NodeConfig {
    /// The node's name, unique in the cluster and stable across restarts: ownership is
    /// computed from names, so a node that comes back under the same name gets its keys back.
    pub name: String,
    /// The address to listen on for other nodes (port 0 is not supported: peers must be able
    /// to connect back to the address a node announces).
    pub listen: SocketAddr,
    /// The cluster's cookie.
    pub cookie: Cookie,
    /// Peers to join at start; more are found through them (transitive connections).
    pub join: Vec<SocketAddr>,
    /// Member or client.
    pub role: Role,
    /// How long [`super::ClusterNode::start`] waits for each peer of `join` to authenticate.
    pub join_timeout: Duration,
    /// How long a new owner waits for the previous owner to close a key (the handover) before
    /// it opens the key anyway.
    pub release_timeout: Duration,
    /// Keys this node opens at once when their owner leaves and it becomes their owner (its
    /// inventory's keys, say), instead of at their next request. Empty: none.
    pub takeover_keys: Vec<ConnectionKey>,
}

impl NodeConfig {
    /// A member named `name` listening on `listen`, joining nobody yet.
    pub fn member(name: impl Into<String>, listen: SocketAddr, cookie: Cookie) -> Self {
        Self {
            name: name.into(),
            listen,
            cookie,
            join: Vec::new(),
            role: Role::Member,
            join_timeout: Duration::from_secs(30),
            release_timeout: Duration::from_secs(5),
            takeover_keys: Vec::new(),
        }
    }

    /// A client named `name` that joins `entry` (and listens on `listen`, which members may
    /// connect back to).
    pub fn client(
        name: impl Into<String>,
        listen: SocketAddr,
        cookie: Cookie,
        entry: SocketAddr,
    ) -> Self {
        Self {
            join: vec![entry],
            role: Role::Client,
            ..Self::member(name, listen, cookie)
        }
    }
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("cookie", &self.cookie)
            .field("join", &self.join)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The cluster layer's errors. None of them carries the cookie or a credential.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The node's configuration cannot be used.
    #[error("cluster configuration: {0}")]
    Config(String),
    /// The node could not start (its listener, its actors).
    #[error("starting cluster node {node}: {reason}")]
    Start {
        /// The node's name.
        node: String,
        /// What failed.
        reason: String,
    },
    /// A peer refused us or could not be reached while joining.
    #[error("node {node} joining {peer}: {reason}")]
    Join {
        /// The joining node.
        node: String,
        /// The peer's address.
        peer: SocketAddr,
        /// What happened (a refused cookie is reported as such, without the cookie).
        reason: String,
    },
    /// A request failed; the message names the key, the node and the stage.
    #[error("{message}")]
    Request {
        /// What kind of failure.
        kind: super::wire::FailureKind,
        /// The error.
        message: String,
    },
}

pub(crate) type Resolver = Arc<ParamsResolver>;
