//! Requests that run on the plugin and can therefore wait for a reconnect, and where each one's
//! answer goes.

use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};

use crate::connection::{CommandOutput, ConnectionKey};
use crate::error::{Error, Operation};
use crate::runtime::internal::WithJob;
use crate::runtime::messages::{ConnectionHandle, ConnectionMessage, GetOrCreateReply};

/// A request that runs on the plugin, and can therefore be parked while reconnecting.
pub(super) enum Request {
    Open {
        reply: OpenReply,
    },
    Command {
        command: String,
        timeout: Option<Duration>,
        reply: CommandReply,
    },
    With {
        job: WithJob,
        reply: RpcReplyPort<Result<(), Error>>,
    },
}

/// Where an open's answer goes: the caller of `Open`, or (routed by the supervisor) the caller
/// of `OpenConnection`, who also gets the handle.
pub(super) enum OpenReply {
    Done(RpcReplyPort<Result<(), Error>>),
    Handle(Box<ConnectionHandle>, RpcReplyPort<GetOrCreateReply>),
}

impl OpenReply {
    pub(super) fn is_closed(&self) -> bool {
        match self {
            Self::Done(reply) => reply.is_closed(),
            Self::Handle(_, reply) => reply.is_closed(),
        }
    }

    pub(super) fn send(self, result: Result<(), Error>) {
        match self {
            Self::Done(reply) => {
                let _ = reply.send(result);
            }
            Self::Handle(handle, reply) => {
                let _ = reply.send(result.map(|()| Some(*handle)));
            }
        }
    }
}

/// Where a command's answer goes: just its output (failing on a non-zero exit status), or the
/// whole [`CommandOutput`].
pub(super) enum CommandReply {
    Stdout(RpcReplyPort<Result<String, Error>>),
    Output(RpcReplyPort<Result<CommandOutput, Error>>),
}

impl CommandReply {
    /// Sends the command to `actor` again, as the request it came in as.
    pub(super) fn resend(
        self,
        actor: &ActorRef<ConnectionMessage>,
        command: String,
        timeout: Duration,
    ) {
        let timeout = Some(timeout);
        let message = match self {
            Self::Stdout(reply) => ConnectionMessage::ExecuteCommand {
                command,
                timeout,
                reply,
            },
            Self::Output(reply) => ConnectionMessage::RunCommand {
                command,
                timeout,
                reply,
            },
        };
        // An actor that is gone drops the reply port, which its caller sees as `Closed`.
        let _ = actor.send_message(message);
    }

    pub(super) fn is_closed(&self) -> bool {
        match self {
            Self::Stdout(reply) => reply.is_closed(),
            Self::Output(reply) => reply.is_closed(),
        }
    }

    pub(super) fn send(self, key: &ConnectionKey, result: Result<CommandOutput, Error>) {
        match self {
            Self::Stdout(reply) => {
                let result = result.and_then(|output| {
                    output.into_result().map_err(|source| Error::Command {
                        key: key.clone(),
                        source,
                    })
                });
                let _ = reply.send(result);
            }
            Self::Output(reply) => {
                let _ = reply.send(result);
            }
        }
    }
}

impl Request {
    pub(super) fn caller_gone(&self) -> bool {
        match self {
            Self::Open { reply } => reply.is_closed(),
            Self::With { reply, .. } => reply.is_closed(),
            Self::Command { reply, .. } => reply.is_closed(),
        }
    }

    pub(super) fn operation(&self) -> Operation {
        match self {
            Self::Open { .. } => Operation::Open,
            Self::Command { .. } => Operation::ExecuteCommand,
            Self::With { .. } => Operation::With,
        }
    }

    pub(super) fn fail(self, key: &ConnectionKey, error: Error) {
        match self {
            Self::Open { reply } => reply.send(Err(error)),
            Self::With { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Self::Command { reply, .. } => reply.send(key, Err(error)),
        }
    }
}
