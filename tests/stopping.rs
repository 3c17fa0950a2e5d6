//! Whatever ends the supervisor closes every connection exactly once: its owner stopping or
//! failing, a direct `stop()`, or a kill (the path a panic inside the supervisor takes too:
//! ractor kills the children of an actor that fails, without their `post_stop`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use connection_supervisor::runtime::{ConnectionSupervisor, SupervisorMessage};
use connection_supervisor::{
    CloseReason, ConnectionEvent, ConnectionManager, EventKind, EventStream, SupervisorConfig,
};
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, call_t};

const WAIT: Duration = Duration::from_secs(60);
const HOSTS: [&str; 3] = ["r1", "r2", "r3"];

/// A user's actor that owns a connection supervisor, and can be told to fail.
struct Owner;

enum OwnerMessage {
    Supervisor(ractor::RpcReplyPort<ActorRef<SupervisorMessage>>),
    Fail,
}

#[cfg(feature = "cluster")]
impl ractor::Message for OwnerMessage {}

impl Actor for Owner {
    type Msg = OwnerMessage;
    type State = ActorRef<SupervisorMessage>;
    type Arguments = SupervisorConfig;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        config: SupervisorConfig,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (supervisor, _) =
            Actor::spawn_linked(None, ConnectionSupervisor, config, myself.get_cell()).await?;
        Ok(supervisor)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        supervisor: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            OwnerMessage::Supervisor(reply) => {
                let _ = reply.send(supervisor.clone());
                Ok(())
            }
            OwnerMessage::Fail => Err("the owner's own bug".into()),
        }
    }
}

struct Setup {
    owner: ActorRef<OwnerMessage>,
    owner_join: tokio::task::JoinHandle<()>,
    supervisor: ActorRef<SupervisorMessage>,
    events: EventStream,
    ledger: Arc<Ledger>,
}

/// An owner with a supervisor under it, three open mock connections, and their events.
async fn setup() -> Setup {
    let ledger = Arc::new(Ledger::default());
    let config =
        SupervisorConfig::default().factory(mock_factory(ledger.clone(), |_| Behaviour::default()));
    let (owner, owner_join) = Actor::spawn(None, Owner, config)
        .await
        .expect("owner starts");
    let supervisor = call_t!(owner, OwnerMessage::Supervisor, 5_000).expect("supervisor");
    let manager = ConnectionManager::from_supervisor(supervisor.clone())
        .await
        .expect("manager");
    let events = manager.subscribe().await.expect("subscribe");
    for host in HOSTS {
        manager
            .open_connection(&key(host), &params(host))
            .await
            .expect("open")
            .expect("a mock key");
    }
    Setup {
        owner,
        owner_join,
        supervisor,
        events,
        ledger,
    }
}

/// Every event until the stream ends, which it does once the supervisor, its connection
/// actors and any close still running for them are gone.
async fn the_rest(events: EventStream) -> Vec<ConnectionEvent> {
    tokio::time::timeout(WAIT, events.collect())
        .await
        .expect("the event stream ends once everything has stopped")
}

fn assert_each_closed_once(events: &[ConnectionEvent], ledger: &Ledger) {
    let closed: Vec<_> = events
        .iter()
        .filter(|event| matches!(event.kind, EventKind::Closed { .. }))
        .map(|event| event.key.hostname.clone())
        .collect();
    let mut sorted = closed.clone();
    sorted.sort();
    assert_eq!(sorted, HOSTS, "one Closed event per connection: {events:?}");
    assert!(
        events.iter().all(|event| !matches!(
            event.kind,
            EventKind::Closed { reason } if reason != CloseReason::Shutdown
        )),
        "every close is a shutdown close: {events:?}"
    );
    ledger.assert_all_closed_once();
    assert_eq!(Ledger::get(&ledger.closed), HOSTS.len(), "{ledger:?}");
}

#[tokio::test]
async fn the_owner_stopping_closes_every_connection_once() {
    let setup = setup().await;
    setup.owner.stop(None);
    setup.owner_join.await.expect("the owner stops");
    let events = the_rest(setup.events).await;
    assert_each_closed_once(&events, &setup.ledger);
}

#[tokio::test]
async fn the_owner_failing_closes_every_connection_once() {
    let setup = setup().await;
    setup
        .owner
        .cast(OwnerMessage::Fail)
        .expect("the owner takes it");
    setup.owner_join.await.expect("the owner fails");
    let events = the_rest(setup.events).await;
    assert_each_closed_once(&events, &setup.ledger);
}

#[tokio::test]
async fn stopping_the_supervisor_directly_closes_every_connection_once() {
    let setup = setup().await;
    setup.supervisor.stop(None);
    let events = the_rest(setup.events).await;
    assert_each_closed_once(&events, &setup.ledger);
    setup.owner.stop(None);
    setup.owner_join.await.expect("the owner stops");
}

#[tokio::test]
async fn killing_the_supervisor_still_closes_every_connection_once() {
    let setup = setup().await;
    setup.supervisor.kill();
    let events = the_rest(setup.events).await;
    assert_each_closed_once(&events, &setup.ledger);
    setup.owner.stop(None);
    setup.owner_join.await.expect("the owner stops");
}
