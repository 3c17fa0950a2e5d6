//! The supervisor as a plain ractor actor inside someone else's tree.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use connection_supervisor::runtime::{ConnectionSupervisor, SupervisorMessage};
use connection_supervisor::{ConnectionManager, Error, SupervisorConfig};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent, call_t};
use tokio::sync::mpsc;

/// A user's own actor that owns the connection supervisor and reports what its children do.
struct Parent;

struct ParentArgs {
    config: SupervisorConfig,
    events: mpsc::UnboundedSender<String>,
}

struct ParentState {
    supervisor: ActorRef<SupervisorMessage>,
    events: mpsc::UnboundedSender<String>,
}

enum ParentMessage {
    Supervisor(ractor::RpcReplyPort<ActorRef<SupervisorMessage>>),
}

// Without ractor's blanket impl (its `cluster` feature), every message type needs its own.
#[cfg(feature = "cluster")]
impl ractor::Message for ParentMessage {}

impl Actor for Parent {
    type Msg = ParentMessage;
    type State = ParentState;
    type Arguments = ParentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ParentArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (supervisor, _) =
            Actor::spawn_linked(None, ConnectionSupervisor, args.config, myself.get_cell()).await?;
        Ok(ParentState {
            supervisor,
            events: args.events,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ParentMessage::Supervisor(reply) => {
                let _ = reply.send(state.supervisor.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let text = match event {
            SupervisionEvent::ActorFailed(_, reason) => format!("failed: {reason}"),
            SupervisionEvent::ActorTerminated(..) => "terminated".to_owned(),
            _ => return Ok(()),
        };
        let _ = state.events.send(text);
        Ok(())
    }
}

#[tokio::test]
async fn a_supervisor_linked_under_a_user_actor_is_driven_by_plain_messages() {
    let ledger = Arc::new(Ledger::default());
    let factory = mock_factory(ledger.clone(), |k| Behaviour {
        panic_in: (k.hostname == "bad").then_some(PanicIn::Open),
        ..Behaviour::default()
    });
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (parent, parent_join) = Actor::spawn(
        None,
        Parent,
        ParentArgs {
            config: SupervisorConfig::default().factory(factory),
            events: events_tx,
        },
    )
    .await
    .unwrap();
    let supervisor = call_t!(parent, ParentMessage::Supervisor, 5_000).unwrap();

    // Plain ractor messages, no wrapper.
    let handle = call_t!(
        supervisor,
        |reply| SupervisorMessage::GetOrCreate {
            key: key("r1"),
            reply
        },
        5_000
    )
    .unwrap()
    .unwrap()
    .unwrap();
    handle.open(&params("r1")).await.unwrap();
    let counters = call_t!(
        supervisor,
        |reply| SupervisorMessage::CountersFor {
            plugin_name: MOCK.to_owned(),
            reply
        },
        5_000
    )
    .unwrap()
    .unwrap();
    assert_eq!((counters.create_calls, counters.open_calls), (1, 1));

    // One message that finds, creates and opens: the answer comes from the connection's actor.
    let opened = call_t!(
        supervisor,
        |reply| SupervisorMessage::OpenConnection {
            key: key("r2"),
            params: params("r2"),
            reply
        },
        5_000
    )
    .unwrap()
    .unwrap()
    .unwrap();
    assert!(opened.is_alive().await.unwrap());
    let error = call_t!(
        supervisor,
        |reply| SupervisorMessage::OpenConnection {
            key: key("bad"),
            params: params("bad"),
            reply
        },
        5_000
    )
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(&error, Error::PluginPanicked { key: failed, .. } if *failed == key("bad")),
        "{error}"
    );

    // The typed wrapper over the same actor.
    let manager = ConnectionManager::from_supervisor(supervisor.clone())
        .await
        .unwrap();
    let bad = manager.get_or_create(key("bad")).await.unwrap().unwrap();
    assert!(matches!(
        bad.open(&params("bad")).await,
        Err(Error::PluginPanicked { .. })
    ));
    bad.actor()
        .wait(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(manager.get_or_create(key("r1")).await.unwrap().is_some());

    // The connection's failure stayed inside the connection supervisor: the parent heard
    // nothing about it.
    assert!(events.try_recv().is_err());

    manager.shutdown().await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap(),
        Some("terminated".to_owned()),
        "the parent sees its supervisor stop normally"
    );
    ledger.assert_all_closed_once();
    parent.stop(None);
    parent_join.await.unwrap();
}
