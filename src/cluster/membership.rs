//! Who is in the cluster, from ractor_cluster's node-session events.
//!
//! A peer is a node or client whose session is *ready* (authenticated, state exchanged); it is
//! gone when its last session disconnects. Members are the peers that own keys (their names
//! start with [`MEMBER_PREFIX`]) plus this node if it is a member. ractor_cluster has no
//! failure detector of its own: a peer is gone when its TCP session closes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use ractor_cluster::NodeEventSubscription;
use ractor_cluster::node::NodeServerSessionInformation;
use tokio::sync::{broadcast, watch};

/// The wire name of a member (a node that owns keys) starts with this.
pub const MEMBER_PREFIX: &str = "node:";
/// The wire name of a client (owns nothing) starts with this.
pub const CLIENT_PREFIX: &str = "client:";

/// Something that happened to the cluster, as seen by one node.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterEvent {
    /// A peer (member or client) authenticated and finished its handshake.
    PeerUp {
        /// Its wire name (`node:NAME` or `client:NAME`).
        name: String,
    },
    /// A peer's last session closed.
    PeerDown {
        /// Its wire name.
        name: String,
    },
    /// This node opened the keys it took over from members that left.
    TookOver {
        /// The members that left.
        from: Vec<String>,
        /// Keys opened (or tried).
        keys: usize,
        /// Of them, the opens that failed.
        failed: usize,
        /// From the membership change to the last open.
        elapsed: std::time::Duration,
    },
    /// A session closed before it authenticated: a wrong cookie, or not a node of this
    /// cluster. Nothing it sent was run.
    Refused {
        /// The peer's network address.
        peer_addr: String,
    },
}

#[derive(Default)]
struct Sessions {
    /// Ready sessions per peer name (a peer may briefly have two while ractor_cluster drops a
    /// duplicate connection: the peer stays until its last one closes).
    ready: HashMap<String, HashSet<u64>>,
    /// Session ids that authenticated, to tell a refused session from a peer leaving.
    authenticated: HashSet<u64>,
}

/// The membership one node sees.
pub(crate) struct Membership {
    /// This node's wire name.
    own: String,
    /// Whether this node is a member (it is then always in the member set).
    member: bool,
    sessions: Mutex<Sessions>,
    members: watch::Sender<BTreeSet<String>>,
    events: broadcast::Sender<ClusterEvent>,
}

impl Membership {
    /// `own`: this node's wire name; `member`: whether it owns keys.
    pub(crate) fn new(own: String, member: bool) -> Arc<Self> {
        let members: BTreeSet<String> = member.then(|| own.clone()).into_iter().collect();
        Arc::new(Self {
            own,
            member,
            sessions: Mutex::new(Sessions::default()),
            members: watch::Sender::new(members),
            events: broadcast::Sender::new(1024),
        })
    }

    fn sessions(&self) -> MutexGuard<'_, Sessions> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent sets.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn members(&self) -> BTreeSet<String> {
        self.members.borrow().clone()
    }

    pub(crate) fn watch(&self) -> watch::Receiver<BTreeSet<String>> {
        self.members.subscribe()
    }

    pub(crate) fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }

    pub(crate) fn publish(&self, event: ClusterEvent) {
        let _ = self.events.send(event);
    }

    /// Whether `name` is this node or an authenticated peer.
    pub(crate) fn is_peer(&self, name: &str) -> bool {
        self.own == name || self.sessions().ready.contains_key(name)
    }

    fn publish_members(&self, sessions: &Sessions) {
        let mut members: BTreeSet<String> = sessions
            .ready
            .keys()
            .filter(|name| name.starts_with(MEMBER_PREFIX))
            .cloned()
            .collect();
        if self.member {
            members.insert(self.own.clone());
        }
        self.members.send_if_modified(|current| {
            let changed = *current != members;
            *current = members;
            changed
        });
    }

    fn ready(&self, id: u64, name: String) {
        let mut sessions = self.sessions();
        let entry = sessions.ready.entry(name.clone()).or_default();
        let first = entry.is_empty();
        entry.insert(id);
        if first {
            tracing::info!(peer = %name, "cluster peer up");
            // Members first: whoever reacts to the event sees the new set.
            self.publish_members(&sessions);
            let _ = self.events.send(ClusterEvent::PeerUp { name });
        }
    }

    fn disconnected(&self, id: u64, name: Option<String>, peer_addr: String) {
        let mut sessions = self.sessions();
        let was_authenticated = sessions.authenticated.remove(&id);
        let mut gone = None;
        // A duplicate connection ractor_cluster dropped also ends unauthenticated: it is no
        // refusal when its peer is up through the other one.
        let peer_up = name
            .as_ref()
            .is_some_and(|name| sessions.ready.contains_key(name));
        if let Some(name) = name
            && let Some(ids) = sessions.ready.get_mut(&name)
        {
            ids.remove(&id);
            if ids.is_empty() {
                sessions.ready.remove(&name);
                gone = Some(name);
            }
        }
        if let Some(name) = gone {
            tracing::warn!(peer = %name, "cluster peer down");
            self.publish_members(&sessions);
            let _ = self.events.send(ClusterEvent::PeerDown { name });
        } else if !was_authenticated && !peer_up {
            // The cookie is never part of this line: ractor_cluster only tells us the session
            // ended unauthenticated.
            tracing::warn!(
                peer_addr = %peer_addr,
                "cluster session closed before it authenticated (wrong cookie, or not a node of this cluster)"
            );
            let _ = self.events.send(ClusterEvent::Refused { peer_addr });
        }
    }
}

/// ractor_cluster's event callback, feeding [`Membership`]. The callbacks run inside the
/// NodeServer actor: they only take a short lock and publish.
pub(crate) struct Subscription(pub(crate) Arc<Membership>);

/// The peer's name as it announced it: ractor_cluster sends `NAME@HOSTNAME`, and a node's
/// name, not the host it runs on, is what ownership is computed from.
fn peer_name(ses: &NodeServerSessionInformation) -> Option<String> {
    let full = &ses.peer_name.as_ref()?.name;
    Some(
        full.rsplit_once('@')
            .map_or(full.as_str(), |(name, _)| name)
            .to_owned(),
    )
}

impl NodeEventSubscription for Subscription {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        self.0
            .disconnected(ses.node_id, peer_name(&ses), ses.peer_addr.clone());
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        self.0.sessions().authenticated.insert(ses.node_id);
    }

    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        if let Some(name) = peer_name(&ses) {
            self.0.ready(ses.node_id, name);
        }
    }
}
