//! The shard actor (through which other nodes reach this one) and what it runs on: routing
//! every request to its key's owner, the handover, the counters.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, pg};
use tokio::sync::watch;

use super::config::Resolver;
use super::hrw;
use futures::StreamExt;

use super::membership::{ClusterEvent, Membership};
use super::wire::{FailureKind, NodeCounters, Operation, Reply, Request, ShardMessage, WireKey};
use crate::{CommandError, ConnectionKey, ConnectionManager, Error};

/// How often a request whose owner is not reachable yet looks again, at most: membership
/// changes wake it at once; this only bounds the wait when an owner is known but its shard
/// actor is not visible yet (process groups are exchanged just after authentication).
const RETRY_STEP: Duration = Duration::from_millis(20);
/// The bound on opening one taken-over key.
const TAKEOVER_BUDGET: Duration = Duration::from_secs(60);
/// Taken-over keys opened at once.
const TAKEOVER_PARALLEL: usize = 32;

/// The process group of a member's shard actor.
fn shard_group(member: &str) -> String {
    format!("connection-supervisor/shard/{member}")
}

/// The string rendezvous hashing sees for a key.
fn hash_key(key: &WireKey) -> String {
    format!("{}\u{0}{}", key.hostname, key.plugin_name)
}

#[derive(Default)]
pub(super) struct ShardStats {
    received: AtomicU64,
    served_locally: AtomicU64,
    forwarded: AtomicU64,
    waited_for_owner: AtomicU64,
    released: AtomicU64,
    refused: AtomicU64,
}

/// What the shard actor and the node handle share.
pub(super) struct Core {
    /// This node's wire name (`node:NAME` or `client:NAME`).
    pub(super) name: String,
    pub(super) manager: Option<ConnectionManager>,
    pub(super) resolver: Option<Resolver>,
    pub(super) membership: Arc<Membership>,
    /// Keys with a connection opened here (and not released since).
    pub(super) open: Mutex<HashSet<ConnectionKey>>,
    pub(super) counters: ShardStats,
    pub(super) release_timeout: Duration,
    /// Keys this node opens when it becomes their owner because their owner left.
    pub(super) takeover_keys: Vec<ConnectionKey>,
    pub(super) shard: std::sync::OnceLock<ActorRef<ShardMessage>>,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn failed(kind: FailureKind, message: String) -> Reply {
    Reply::Failed { kind, message }
}

impl Core {
    fn open_keys(&self) -> MutexGuard<'_, HashSet<ConnectionKey>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn counters(&self) -> NodeCounters {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NodeCounters {
            received: load(&self.counters.received),
            served_locally: load(&self.counters.served_locally),
            forwarded: load(&self.counters.forwarded),
            waited_for_owner: load(&self.counters.waited_for_owner),
            released: load(&self.counters.released),
            refused: load(&self.counters.refused),
            open_keys: self.open_keys().len() as u64,
        }
    }

    pub(super) fn owner_in(members: &BTreeSet<String>, key: &WireKey) -> Option<String> {
        hrw::owner(&hash_key(key), members.iter().map(String::as_str)).map(str::to_owned)
    }

    /// The shard actor of `member`: our own, or the remote one ractor_cluster mirrors here.
    pub(super) fn shard_of(&self, member: &str) -> Option<ActorRef<ShardMessage>> {
        if member == self.name {
            return self.shard.get().cloned();
        }
        pg::get_members(&shard_group(member))
            .into_iter()
            .find(|cell| !cell.get_id().is_local())
            .map(ActorRef::from)
    }

    /// Sends one request to `member`'s shard and waits at most `budget` for the reply.
    pub(super) async fn call(
        &self,
        member: &str,
        operation: Operation,
        key: WireKey,
        budget: Duration,
    ) -> Option<Reply> {
        let shard = self.shard_of(member)?;
        let request = Request {
            from: self.name.clone(),
            key,
            operation,
            budget_ms: budget.as_millis() as u64,
            forwarded: true,
        };
        match shard
            .call(|port| ShardMessage::Call(request, port), Some(budget))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(reply)) => Some(reply),
            _ => None,
        }
    }

    /// Every member's counters that answered within `budget`.
    pub(super) async fn collect_counters(&self, budget: Duration) -> Vec<(String, NodeCounters)> {
        let mut all = Vec::new();
        for member in self.membership.members() {
            if member == self.name {
                all.push((member, self.counters()));
            } else if let Some(Reply::Counters(counters)) = self
                .call(&member, Operation::Counters, WireKey::none(), budget)
                .await
            {
                all.push((member, counters));
            }
        }
        all
    }

    /// Answers one request: refused unless its sender is this node or an authenticated peer.
    pub(super) async fn serve(self: Arc<Self>, request: Request) -> Reply {
        bump(&self.counters.received);
        if !self.membership.is_peer(&request.from) {
            bump(&self.counters.refused);
            tracing::warn!(from = %request.from, node = %self.name, "refused a request from a node that is not an authenticated member");
            return failed(
                FailureKind::Refused,
                format!(
                    "node {} refused a request from {:?}: not an authenticated member",
                    self.name, request.from
                ),
            );
        }
        match request.operation {
            Operation::Counters => Reply::Counters(self.counters()),
            Operation::MemberCounters => {
                let budget = Duration::from_millis(request.budget_ms);
                Reply::MemberCounters(self.collect_counters(budget).await)
            }
            Operation::Members => Reply::Members(self.membership.members().into_iter().collect()),
            Operation::Owner => {
                Reply::Owner(Self::owner_in(&self.membership.members(), &request.key))
            }
            Operation::Release => {
                self.release(&ConnectionKey::from(&request.key)).await;
                Reply::Done
            }
            Operation::Open | Operation::Run { .. } | Operation::Close | Operation::Status => {
                self.route(request).await
            }
        }
    }

    /// Closes `key` here if it is open here: another member owns it now.
    async fn release(&self, key: &ConnectionKey) {
        let was_open = self.open_keys().remove(key);
        if let (true, Some(manager)) = (was_open, &self.manager) {
            if let Err(error) = manager.close_connection(key).await {
                tracing::warn!(%key, node = %self.name, %error, "closing a released key");
            }
            bump(&self.counters.released);
        }
    }

    /// Closes every key open here that another member owns in `members`.
    pub(super) async fn sweep(&self, members: &BTreeSet<String>) {
        let moved: Vec<ConnectionKey> = self
            .open_keys()
            .iter()
            .filter(|key| {
                Self::owner_in(members, &WireKey::from(*key)).as_deref() != Some(&self.name)
            })
            .cloned()
            .collect();
        for key in moved {
            self.release(&key).await;
        }
    }

    /// Sends `request` to its key's owner (or runs it here if that is us), waiting for a new
    /// owner when the old one leaves, until the request's budget runs out.
    async fn route(&self, mut request: Request) -> Reply {
        let started = Instant::now();
        let budget = Duration::from_millis(request.budget_ms);
        let deadline = started + budget;
        let mut members_rx = self.membership.watch();
        loop {
            let members = members_rx.borrow_and_update().clone();
            let owner = Self::owner_in(&members, &request.key);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return failed(
                    FailureKind::Deadline,
                    format!(
                        "{}/{}: no owner answered within {budget:?} (node {}, owner {owner:?}, members {members:?})",
                        request.key.hostname, request.key.plugin_name, self.name
                    ),
                );
            }
            match owner {
                Some(owner) if owner == self.name => {
                    let reply = self.run_locally(&request, &members, deadline).await;
                    // A connection failure while the key moved away: the new owner runs it.
                    let moved = matches!(
                        &reply,
                        Reply::Failed {
                            kind: FailureKind::Connection,
                            ..
                        }
                    ) && Self::owner_in(&self.membership.members(), &request.key)
                        .as_deref()
                        != Some(&self.name);
                    if !moved {
                        return reply;
                    }
                }
                Some(owner) if request.forwarded => {
                    // Our views differ for a moment: the sender asks again, never a third node.
                    return Reply::NotOwner { owner: Some(owner) };
                }
                Some(owner) => match self.shard_of(&owner) {
                    Some(shard) => {
                        bump(&self.counters.forwarded);
                        let mut sent = request.clone();
                        sent.from = self.name.clone();
                        // A member's view decides: the owner runs it or says it is not the
                        // owner. A client's view may hold only the member it joined, which
                        // routes it on.
                        sent.forwarded = self.manager.is_some();
                        sent.budget_ms = remaining.as_millis() as u64;
                        let call =
                            shard.call(|port| ShardMessage::Call(sent, port), Some(remaining));
                        let gone = wait_until_gone(members_rx.clone(), owner.clone());
                        let outcome = tokio::select! {
                            outcome = call => Some(outcome),
                            () = gone => None,
                        };
                        match outcome {
                            Some(Ok(ractor::rpc::CallResult::Success(reply))) => match reply {
                                Reply::NotOwner { .. }
                                | Reply::Failed {
                                    kind: FailureKind::Refused,
                                    ..
                                } => {
                                    // Its view (or its list of peers) lags ours by one event.
                                    wait_change(&mut members_rx, deadline).await;
                                }
                                reply => return reply,
                            },
                            _ => {
                                bump(&self.counters.waited_for_owner);
                                tracing::info!(%owner, key = %request.key.hostname, node = %self.name, "owner unreachable: waiting for a new owner");
                                wait_change(&mut members_rx, deadline).await;
                            }
                        }
                    }
                    None => wait_change(&mut members_rx, deadline).await,
                },
                None => wait_change(&mut members_rx, deadline).await,
            }
            request.budget_ms = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64;
        }
    }

    /// Runs `request` on this node's own connection. A first open of a key asks its previous
    /// owner (the owner without us) to close it first: the handover.
    async fn run_locally(
        &self,
        request: &Request,
        members: &BTreeSet<String>,
        deadline: Instant,
    ) -> Reply {
        let key = ConnectionKey::from(&request.key);
        let Some(manager) = &self.manager else {
            return failed(
                FailureKind::Connection,
                format!("{key}: node {} owns no keys (a client)", self.name),
            );
        };
        bump(&self.counters.served_locally);
        match &request.operation {
            Operation::Close => {
                self.open_keys().remove(&key);
                return match manager.close_connection(&key).await {
                    Ok(()) => Reply::Done,
                    Err(error) => failed(
                        FailureKind::Connection,
                        format!("node {}: {error}", self.name),
                    ),
                };
            }
            Operation::Status => {
                return match manager.connection_status(&key).await {
                    Ok(status) => Reply::Status(status.map(|s| format!("{:?}", s.state))),
                    Err(error) => failed(
                        FailureKind::Connection,
                        format!("node {}: {error}", self.name),
                    ),
                };
            }
            _ => {}
        }
        let first_open = !self.open_keys().contains(&key);
        if first_open {
            self.hand_over(&request.key, members, deadline).await;
        }
        let Some(params) = self.resolver.as_ref().and_then(|resolve| resolve(&key)) else {
            return failed(
                FailureKind::UnknownKey,
                format!("{key}: not in node {}'s inventory", self.name),
            );
        };
        let handle = match manager.open_connection(&key, &params).await {
            Ok(Some(handle)) => handle,
            Ok(None) => {
                return failed(
                    FailureKind::UnknownKey,
                    format!("{key}: node {} has no plugin for it", self.name),
                );
            }
            Err(error) => {
                return failed(
                    FailureKind::Connection,
                    format!("node {}: {error}", self.name),
                );
            }
        };
        self.open_keys().insert(key.clone());
        let Operation::Run { command } = &request.operation else {
            return Reply::Done;
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        match handle.execute_command_within(command, remaining).await {
            Ok(output) => Reply::Output(output),
            Err(
                error @ Error::Command {
                    source: CommandError::ExitStatus { .. } | CommandError::Other(_),
                    ..
                },
            ) => failed(FailureKind::Command, format!("node {}: {error}", self.name)),
            Err(error) => failed(
                FailureKind::Connection,
                format!("node {}: {error}", self.name),
            ),
        }
    }

    /// Asks the key's previous owner to close it, bounded by the release timeout. A previous
    /// owner that is gone has nothing open; one that does not answer in time is logged and
    /// the open goes ahead (the README states this window).
    async fn hand_over(&self, key: &WireKey, members: &BTreeSet<String>, deadline: Instant) {
        let others: BTreeSet<String> = members
            .iter()
            .filter(|m| **m != self.name)
            .cloned()
            .collect();
        let Some(previous) = Self::owner_in(&others, key) else {
            return;
        };
        let Some(shard) = self.shard_of(&previous) else {
            return;
        };
        let wait = self
            .release_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let request = Request {
            from: self.name.clone(),
            key: key.clone(),
            operation: Operation::Release,
            budget_ms: wait.as_millis() as u64,
            forwarded: true,
        };
        match shard
            .call(|port| ShardMessage::Call(request, port), Some(wait))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(_)) => {}
            other => {
                tracing::warn!(key = %key.hostname, %previous, node = %self.name, outcome = ?other.map(|_| ()), "handover: the previous owner did not confirm the close")
            }
        }
    }
}

/// Waits until the member set changes or `deadline` passes, at most [`RETRY_STEP`].
async fn wait_change(members: &mut watch::Receiver<BTreeSet<String>>, deadline: Instant) {
    let step = RETRY_STEP.min(deadline.saturating_duration_since(Instant::now()));
    let _ = tokio::time::timeout(step, members.changed()).await;
}

/// Resolves when `member` is no longer in the member set (never, if the set stops changing).
async fn wait_until_gone(mut members: watch::Receiver<BTreeSet<String>>, member: String) {
    if members
        .wait_for(|set| !set.contains(&member))
        .await
        .is_err()
    {
        std::future::pending::<()>().await;
    }
}

/// The remote-capable actor through which other nodes reach this one. A member's joins its
/// process group, so that other nodes find it; a client's does not (nobody routes to a client)
/// and serves only its own node's requests.
pub(super) struct Shard {
    pub(super) member: bool,
}

impl Actor for Shard {
    type Msg = ShardMessage;
    type State = Arc<Core>;
    type Arguments = Arc<Core>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        core: Arc<Core>,
    ) -> Result<Arc<Core>, ActorProcessingErr> {
        if self.member {
            pg::join(shard_group(&core.name), vec![myself.get_cell()]);
        }
        Ok(core)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        core: &mut Arc<Core>,
    ) -> Result<(), ActorProcessingErr> {
        let ShardMessage::Call(request, port) = message;
        // Never awaited here: a slow open must not hold up the next request.
        let core = core.clone();
        tokio::spawn(async move {
            let reply = core.serve(request).await;
            let _ = port.send(reply);
        });
        Ok(())
    }
}

/// On every membership change, closes the keys that moved to another member.
/// When a member leaves, opens at once the keys of `takeover_keys` it owned and we own now,
/// instead of waiting for their next request: the failover.
pub(super) async fn sweep_on_change(core: Arc<Core>) {
    let mut members = core.membership.watch();
    let mut before = members.borrow_and_update().clone();
    while members.changed().await.is_ok() {
        let set = members.borrow_and_update().clone();
        core.sweep(&set).await;
        let left: Vec<String> = before.difference(&set).cloned().collect();
        if !left.is_empty() && core.manager.is_some() {
            tokio::spawn(take_over(core.clone(), before.clone(), set.clone(), left));
        }
        before = set;
    }
}

/// Opens the keys that moved to us from the members in `left`, a few at a time.
async fn take_over(
    core: Arc<Core>,
    before: BTreeSet<String>,
    now: BTreeSet<String>,
    left: Vec<String>,
) {
    let started = Instant::now();
    let ours: Vec<WireKey> = core
        .takeover_keys
        .iter()
        .map(WireKey::from)
        .filter(|key| {
            Core::owner_in(&before, key).is_some_and(|old| left.contains(&old))
                && Core::owner_in(&now, key).as_deref() == Some(core.name.as_str())
        })
        .collect();
    let count = ours.len();
    let opens = futures::stream::iter(ours).map(|key| {
        let core = core.clone();
        async move {
            let request = Request {
                from: core.name.clone(),
                key,
                operation: Operation::Open,
                budget_ms: TAKEOVER_BUDGET.as_millis() as u64,
                forwarded: true,
            };
            core.route(request).await
        }
    });
    let failed = opens
        .buffer_unordered(TAKEOVER_PARALLEL)
        .filter(|reply| std::future::ready(matches!(reply, Reply::Failed { .. })))
        .count()
        .await;
    let event = ClusterEvent::TookOver {
        from: left,
        keys: count,
        failed,
        elapsed: started.elapsed(),
    };
    tracing::info!(node = %core.name, ?event, "takeover done");
    core.membership.publish(event);
}
