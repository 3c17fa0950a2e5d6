//! [`ClusterNode`]: starting a node (its NodeServer, its shard actor), joining peers, and the
//! calls a program makes on the cluster through it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{NodeServer, NodeServerMessage};
use tokio::sync::broadcast;

use super::config::{ClusterError, NodeConfig, ParamsResolver, Role};
use super::membership::{CLIENT_PREFIX, ClusterEvent, MEMBER_PREFIX, Membership, Subscription};
use super::shard::{Core, Shard, ShardStats, sweep_on_change};
use super::wire::{FailureKind, NodeCounters, Operation, Reply, Request, ShardMessage, WireKey};
use crate::{ConnectionKey, ConnectionManager};

/// A node of the cluster (a member that owns keys, or a client), and the way to send requests
/// to any key's owner from here.
pub struct ClusterNode {
    core: Arc<Core>,
    server: ActorRef<NodeServerMessage>,
    shard: ActorRef<ShardMessage>,
    sweeper: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("name", &self.core.name)
            .finish_non_exhaustive()
    }
}

impl ClusterNode {
    /// Starts a node: its NodeServer on `config.listen`, its shard actor, then joins each
    /// peer of `config.join` (waiting for it to authenticate).
    ///
    /// A member needs `manager` (its own supervisor) and `resolver` (its own params source);
    /// a client passes `None` for both.
    pub async fn start(
        config: NodeConfig,
        manager: Option<ConnectionManager>,
        resolver: Option<Arc<ParamsResolver>>,
    ) -> Result<Self, ClusterError> {
        let prefix = match config.role {
            Role::Member => MEMBER_PREFIX,
            Role::Client => CLIENT_PREFIX,
        };
        let name = format!("{prefix}{}", config.name);
        if config.role == Role::Member && (manager.is_none() || resolver.is_none()) {
            return Err(ClusterError::Config(format!(
                "member {name} needs a manager and a params resolver"
            )));
        }
        if config.listen.port() == 0 {
            return Err(ClusterError::Config(format!(
                "{name}: listen on a fixed port, not 0: peers connect back to it"
            )));
        }
        let membership = Membership::new(name.clone(), config.role == Role::Member);
        let start_err = |reason: String| ClusterError::Start {
            node: name.clone(),
            reason,
        };
        let server = NodeServer::new(
            config.listen.port(),
            config.cookie.expose().to_owned(),
            name.clone(),
            config.listen.ip().to_string(),
            None,
            // Members reach each other's peers; a client talks to the member it joined.
            Some(match config.role {
                Role::Member => NodeConnectionMode::Transitive,
                Role::Client => NodeConnectionMode::Isolated,
            }),
        )
        .with_listen_addr(config.listen.ip());
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| start_err(format!("its NodeServer on {}: {e}", config.listen)))?;
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "connection-supervisor".into(),
                subscription: Box::new(Subscription(membership.clone())),
            })
            .map_err(|e| start_err(format!("subscribing to node events: {e}")))?;
        let core = Arc::new(Core {
            name: name.clone(),
            manager,
            resolver,
            membership,
            open: Mutex::new(HashSet::new()),
            counters: ShardStats::default(),
            release_timeout: config.release_timeout,
            takeover_keys: config.takeover_keys.clone(),
            shard: std::sync::OnceLock::new(),
        });
        let member = config.role == Role::Member;
        let (shard, _) = Actor::spawn(None, Shard { member }, core.clone())
            .await
            .map_err(|e| start_err(format!("its shard actor: {e}")))?;
        let _ = core.shard.set(shard.clone());
        let sweeper = tokio::spawn(sweep_on_change(core.clone()));
        let node = Self {
            core,
            server,
            shard,
            sweeper,
        };
        for peer in &config.join {
            node.join(*peer, config.join_timeout).await?;
        }
        Ok(node)
    }

    /// Connects to the node at `peer` and waits (at most `timeout`) until it is an
    /// authenticated peer. A wrong cookie is reported as a refusal.
    pub async fn join(
        &self,
        peer: std::net::SocketAddr,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let join_err = |reason: String| ClusterError::Join {
            node: self.core.name.clone(),
            peer,
            reason,
        };
        let mut events = self.core.membership.events();
        ractor_cluster::client_connect(&self.server, peer)
            .await
            .map_err(|e| join_err(format!("connecting: {e:?}")))?;
        let wait = async {
            loop {
                match events.recv().await {
                    Ok(ClusterEvent::PeerUp { .. }) => return Ok(()),
                    Ok(ClusterEvent::Refused { .. }) => {
                        return Err(join_err(
                            "refused before authentication (wrong cookie?)".into(),
                        ));
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(join_err("the node stopped".into()));
                    }
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| join_err(format!("not authenticated within {timeout:?}")))?
    }

    /// This node's wire name (`node:NAME` or `client:NAME`).
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The members this node sees (itself included if it is a member), sorted.
    pub fn members(&self) -> Vec<String> {
        self.core.membership.members().into_iter().collect()
    }

    /// Waits until this node sees at least `count` members, at most `timeout`; whether it did.
    pub async fn wait_for_members(&self, count: usize, timeout: Duration) -> bool {
        let mut members = self.core.membership.watch();
        tokio::time::timeout(timeout, members.wait_for(|set| set.len() >= count))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    /// Cluster events as this node sees them (peers up and down, refused sessions).
    pub fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.core.membership.events()
    }

    /// The member that owns `key` in this node's view of the membership.
    pub fn owner_of(&self, key: &ConnectionKey) -> Option<String> {
        Core::owner_in(&self.core.membership.members(), &WireKey::from(key))
    }

    /// This node's counters.
    pub fn counters(&self) -> NodeCounters {
        self.core.counters()
    }

    /// The shard actor other nodes call (for tests of what it refuses).
    pub fn shard(&self) -> ActorRef<ShardMessage> {
        self.shard.clone()
    }

    /// Sends `operation` on `key` to its owner, through this node, within `budget`.
    pub async fn request(
        &self,
        key: &ConnectionKey,
        operation: Operation,
        budget: Duration,
    ) -> Result<Reply, ClusterError> {
        let request = Request {
            from: self.core.name.clone(),
            key: WireKey::from(key),
            operation,
            budget_ms: budget.as_millis() as u64,
            forwarded: false,
        };
        match self.core.clone().serve(request).await {
            Reply::Failed { kind, message } => Err(ClusterError::Request { kind, message }),
            reply => Ok(reply),
        }
    }

    /// Runs `command` on `key`'s connection, on its owner, within `budget` (which also bounds
    /// waiting for a new owner after the old one left).
    pub async fn run_command(
        &self,
        key: &ConnectionKey,
        command: &str,
        budget: Duration,
    ) -> Result<String, ClusterError> {
        match self
            .request(
                key,
                Operation::Run {
                    command: command.to_owned(),
                },
                budget,
            )
            .await?
        {
            Reply::Output(output) => Ok(output),
            other => Err(unexpected(key, other)),
        }
    }

    /// Opens `key`'s connection on its owner.
    pub async fn open(&self, key: &ConnectionKey, budget: Duration) -> Result<(), ClusterError> {
        self.request(key, Operation::Open, budget).await.map(|_| ())
    }

    /// Closes `key`'s connection on its owner.
    pub async fn close(&self, key: &ConnectionKey, budget: Duration) -> Result<(), ClusterError> {
        self.request(key, Operation::Close, budget)
            .await
            .map(|_| ())
    }

    /// `key`'s state on its owner (`"Open"`, `"Closed"`, ...), if the owner has the key.
    pub async fn status(
        &self,
        key: &ConnectionKey,
        budget: Duration,
    ) -> Result<Option<String>, ClusterError> {
        match self.request(key, Operation::Status, budget).await? {
            Reply::Status(state) => Ok(state),
            other => Err(unexpected(key, other)),
        }
    }

    /// Every member's counters (those that answered within `budget`), by member name. A
    /// client asks a member it reaches to collect them.
    pub async fn member_counters(&self, budget: Duration) -> Vec<(String, NodeCounters)> {
        if self.core.manager.is_some() {
            return self.core.collect_counters(budget).await;
        }
        for member in self.core.membership.members() {
            let reply = self
                .core
                .call(&member, Operation::MemberCounters, WireKey::none(), budget)
                .await;
            if let Some(Reply::MemberCounters(all)) = reply {
                return all;
            }
        }
        Vec::new()
    }

    /// The sum of [`Self::member_counters`].
    pub async fn cluster_counters(&self, budget: Duration) -> NodeCounters {
        self.member_counters(budget)
            .await
            .into_iter()
            .fold(NodeCounters::default(), |sum, (_, counters)| sum + counters)
    }

    /// Stops the shard actor and the NodeServer (closing every node session). The node's
    /// supervisor is the caller's to shut down.
    pub async fn shutdown(self) {
        self.sweeper.abort();
        let _ = self
            .shard
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        let _ = self
            .server
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
    }
}

fn unexpected(key: &ConnectionKey, reply: Reply) -> ClusterError {
    ClusterError::Request {
        kind: FailureKind::Malformed,
        message: format!("{key}: unexpected reply {reply:?}"),
    }
}
