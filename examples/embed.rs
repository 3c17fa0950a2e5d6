//! The connection supervisor inside an actor system of your own.
//!
//! `Operator` is the user's actor: it spawns the `ConnectionSupervisor` linked under itself (so
//! it hears when the supervisor stops or fails, like any child), subscribes to the lifecycle
//! events as plain messages of its own type, logs the interesting ones and counts reconnects.
//! Other code can wait, without polling, until the operator has seen a number of reconnects:
//! the operator answers once it gets there. It stops when its event stream ends
//! (`EventDelivery::Ended`, after the supervisor's last event), so it never misses the closes
//! of a shutdown.
//!
//! Run with `cargo run --example embed`. It starts three embedded SSH devices, runs a command
//! on each through the supervisor, drops every session of one device and waits (bounded) until
//! the operator has seen the supervisor bring it back.

use std::error::Error as StdError;
use std::path::PathBuf;
use std::time::Duration;

use connection_supervisor::runtime::{ConnectionSupervisor, SupervisorMessage};
use connection_supervisor::ssh::{self, HostKeyPolicy, PLUGIN_NAME, SshOptions};
use connection_supervisor::testing::{
    DEFAULT_PASSWORD, DEFAULT_USERNAME, SshTestServer, SshTestServerConfig, write_known_hosts,
};
use connection_supervisor::{
    Backoff, ConnectionEvent, ConnectionKey, ConnectionManager, ConnectionPolicy, EventDelivery,
    EventKind, ResolvedConnectionParams, SupervisorConfig,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent, call_t};

/// The user's own actor, owning the connection supervisor.
struct Operator;

enum OperatorMessage {
    /// A lifecycle event from the supervisor's subscription.
    Lifecycle(ConnectionEvent),
    /// The subscription ended: the supervisor stopped and every event has arrived.
    StreamEnded,
    /// The supervisor, for whoever wants to message it directly.
    Supervisor(RpcReplyPort<ActorRef<SupervisorMessage>>),
    /// Answers with the number of reconnects seen once it is at least `at_least`.
    WaitForReconnects {
        at_least: u64,
        reply: RpcReplyPort<u64>,
    },
}

// ractor's `cluster` feature drops its blanket `Message` impl; this crate's `cluster` feature
// (which turns it on) is how a build says so.
#[cfg(feature = "cluster")]
impl ractor::Message for OperatorMessage {}

#[derive(Default)]
struct Counts {
    reconnects: u64,
    closes: u64,
}

struct OperatorState {
    supervisor: ActorRef<SupervisorMessage>,
    counts: Counts,
    /// Askers waiting for the reconnect count to reach their number.
    waiting: Vec<(u64, RpcReplyPort<u64>)>,
}

impl Actor for Operator {
    type Msg = OperatorMessage;
    type State = OperatorState;
    type Arguments = SupervisorConfig;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        config: SupervisorConfig,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (supervisor, _) =
            Actor::spawn_linked(None, ConnectionSupervisor, config, myself.get_cell()).await?;
        // Events arrive as this actor's own messages, in order per connection.
        ConnectionManager::from_supervisor(supervisor.clone())
            .await?
            .subscribe_actor(myself, |delivery| match delivery {
                EventDelivery::Event(event) => Some(OperatorMessage::Lifecycle(event)),
                EventDelivery::Ended => Some(OperatorMessage::StreamEnded),
                _ => None,
            })
            .await?;
        Ok(OperatorState {
            supervisor,
            counts: Counts::default(),
            waiting: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            OperatorMessage::StreamEnded => {
                // Stopping here, not on the supervisor's `ActorTerminated`, is what guarantees
                // the operator saw every event: ractor delivers supervision events ahead of
                // messages still queued.
                println!(
                    "operator: no more events ({} reconnect(s), {} close(s) seen); stopping",
                    state.counts.reconnects, state.counts.closes
                );
                myself.stop(None);
            }
            OperatorMessage::Lifecycle(event) => {
                let host = &event.key.hostname;
                match &event.kind {
                    EventKind::Opened => println!("operator: {host} is open"),
                    EventKind::Lost { reason } => println!("operator: {host} lost ({reason})"),
                    EventKind::Reconnecting { attempt, delay } => {
                        println!("operator: {host} reconnect attempt {attempt} in {delay:.0?}");
                    }
                    EventKind::Reconnected { attempts } => {
                        state.counts.reconnects += 1;
                        println!(
                            "operator: {host} is back after {attempts} attempt(s); {} reconnect(s) so far",
                            state.counts.reconnects
                        );
                    }
                    EventKind::Closed { reason } => {
                        state.counts.closes += 1;
                        println!("operator: {host} closed ({reason:?})");
                    }
                    _ => {}
                }
                let seen = state.counts.reconnects;
                let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut state.waiting)
                    .into_iter()
                    .partition(|(at_least, _)| seen >= *at_least);
                state.waiting = waiting;
                for (_, reply) in ready {
                    let _ = reply.send(seen);
                }
            }
            OperatorMessage::Supervisor(reply) => {
                let _ = reply.send(state.supervisor.clone());
            }
            OperatorMessage::WaitForReconnects { at_least, reply } => {
                let seen = state.counts.reconnects;
                if seen >= at_least {
                    let _ = reply.send(seen);
                } else {
                    state.waiting.push((at_least, reply));
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(..) => {
                // Its last events may still be on their way: stop once the stream has ended.
                println!("operator: the connection supervisor stopped");
            }
            SupervisionEvent::ActorFailed(_, reason) => {
                // A failed supervisor takes its connections with it: escalate, as any parent
                // would for a child it cannot do without.
                return Err(format!("the connection supervisor failed: {reason}").into());
            }
            _ => {}
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn StdError>> {
    let mut devices = Vec::new();
    for name in ["core-1", "edge-1", "edge-2"] {
        let device = SshTestServer::start(SshTestServerConfig {
            hostname: name.to_owned(),
            ..SshTestServerConfig::default()
        })
        .await?;
        devices.push((name, device));
    }
    let known_hosts_path: PathBuf =
        std::env::temp_dir().join(format!("cs-embed-{}-known_hosts", std::process::id()));
    write_known_hosts(&known_hosts_path, devices.iter().map(|(_, device)| device))?;

    let config = SupervisorConfig::default()
        .factory(ssh::factory(SshOptions::default().host_key_policy(
            HostKeyPolicy::Strict(known_hosts_path.clone()),
        )))
        .policy(
            ConnectionPolicy::default()
                .backoff(Backoff::default().initial(Duration::from_millis(200))),
        );
    let (operator, operator_done) = Actor::spawn(None, Operator, config).await?;

    // Any part of the program can drive the supervisor, through the typed wrapper or with
    // plain `SupervisorMessage`s.
    let supervisor = call_t!(operator, OperatorMessage::Supervisor, 5_000)?;
    let manager = ConnectionManager::from_supervisor(supervisor).await?;
    for (name, device) in &devices {
        let params = ResolvedConnectionParams {
            hostname: "127.0.0.1".into(),
            port: Some(device.port()),
            username: Some(DEFAULT_USERNAME.into()),
            password: Some(DEFAULT_PASSWORD.into()),
            ..ResolvedConnectionParams::default()
        };
        let handle = manager
            .open_connection(&ConnectionKey::new(*name, PLUGIN_NAME), &params)
            .await?
            .ok_or("the ssh factory serves \"ssh\" keys")?;
        print!("{name}: {}", handle.execute_command("show version").await?);
    }

    println!("main: dropping every session of edge-1");
    devices[1].1.drop_all_sessions().await;
    let seen = call_t!(
        operator,
        |reply| OperatorMessage::WaitForReconnects { at_least: 1, reply },
        10_000
    )?;
    println!("main: the operator has seen {seen} reconnect(s)");

    // Events reach the operator through its mailbox, after the calls that caused them return.
    // No need to wait for them here: the operator stops only once its event stream has ended,
    // after the supervisor's last event.
    manager.close_all_connections().await?;
    manager.shutdown().await?;
    operator_done.await?;
    let _ = std::fs::remove_file(known_hosts_path);
    Ok(())
}
