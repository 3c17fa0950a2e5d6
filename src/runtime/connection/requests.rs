//! Requests the actor has taken, and where each one's answer goes.
//!
//! Every reply port the actor takes is wrapped in a [`Reply`], which answers by itself if it is
//! dropped unanswered: the actor crashed, was killed, or closed with the request still in hand.
//! So a caller whose reply port is dropped *without* an answer knows that no actor took its
//! request, and only such a request is ever sent again (to a restarted actor). A request that
//! was taken is answered exactly once, by the actor or by its `Reply`, and never re-run.

use std::sync::Arc;

use ractor::{ActorRef, RpcReplyPort};

use crate::connection::{CommandError, CommandOutput, ConnectionKey};
use crate::deadline::Deadline;
use crate::error::{Error, Operation};
use crate::runtime::internal::WithJob;
use crate::runtime::messages::{ConnectionHandle, ConnectionMessage};

/// What a request that was taken and then cut off (by a close, a crash or a kill) is told.
#[derive(Clone, Copy)]
pub(super) enum CutOff {
    /// `Error::Closed`: nothing of it ran, or (an open) nothing is left of it.
    Closed,
    /// `CommandError::ConnectionLost`: a command may have started on the device; it is not
    /// re-run.
    Command,
}

impl CutOff {
    fn error(self, key: &ConnectionKey) -> Error {
        match self {
            Self::Closed => Error::Closed { key: key.clone() },
            Self::Command => Error::Command {
                key: key.clone(),
                source: CommandError::ConnectionLost(
                    "the connection was closed or its actor stopped before the command \
                     finished; it was not re-run"
                        .to_owned(),
                ),
            },
        }
    }
}

/// A reply port that cannot be left unanswered (see the module docs).
pub(super) struct Reply<T> {
    port: Option<RpcReplyPort<Result<T, Error>>>,
    key: Arc<ConnectionKey>,
    cut_off: CutOff,
}

impl<T> Reply<T> {
    pub(super) fn new(
        port: RpcReplyPort<Result<T, Error>>,
        key: &Arc<ConnectionKey>,
        cut_off: CutOff,
    ) -> Self {
        Self {
            port: Some(port),
            key: key.clone(),
            cut_off,
        }
    }

    pub(super) fn send(mut self, result: Result<T, Error>) {
        if let Some(port) = self.port.take() {
            let _ = port.send(result);
        }
    }

    /// Whether the caller stopped waiting.
    pub(super) fn is_closed(&self) -> bool {
        self.port.as_ref().is_none_or(RpcReplyPort::is_closed)
    }

    /// The bare port, for a request handed back to the mailbox unrun.
    fn into_port(mut self) -> Option<RpcReplyPort<Result<T, Error>>> {
        self.port.take()
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(port) = self.port.take() {
            let _ = port.send(Err(self.cut_off.error(&self.key)));
        }
    }
}

/// A request that runs on the plugin, and can therefore be parked while reconnecting. Each
/// carries the deadline its caller set: past it, it is answered with a timeout, not run.
pub(super) enum Request {
    Open {
        reply: OpenReply,
    },
    Command {
        command: String,
        reply: CommandReply,
    },
    With {
        job: WithJob,
        reply: Reply<()>,
    },
}

/// Where an open's answer goes: the caller of `Open`, or (routed by the supervisor) the caller
/// of `OpenConnection`, who also gets the handle.
pub(super) enum OpenReply {
    Done(Reply<()>),
    Handle(Box<ConnectionHandle>, Reply<Option<ConnectionHandle>>),
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
            Self::Done(reply) => reply.send(result),
            Self::Handle(handle, reply) => reply.send(result.map(|()| Some(*handle))),
        }
    }
}

/// Where a command's answer goes: just its output (failing on a non-zero exit status), or the
/// whole [`CommandOutput`].
pub(super) enum CommandReply {
    Stdout(Reply<String>),
    Output(Reply<CommandOutput>),
}

impl CommandReply {
    /// Hands the command back to `actor`'s mailbox, unrun, as the request it came in as.
    pub(super) fn resend(
        self,
        actor: &ActorRef<ConnectionMessage>,
        command: String,
        deadline: Deadline,
    ) {
        let deadline = Some(deadline);
        let message = match self {
            Self::Stdout(reply) => {
                reply
                    .into_port()
                    .map(|reply| ConnectionMessage::ExecuteCommand {
                        command,
                        deadline,
                        reply,
                    })
            }
            Self::Output(reply) => reply
                .into_port()
                .map(|reply| ConnectionMessage::RunCommand {
                    command,
                    deadline,
                    reply,
                }),
        };
        // An actor that is gone drops the message unread, and its caller sends it on to the
        // successor: it never ran.
        if let Some(message) = message {
            let _ = actor.send_message(message);
        }
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
                reply.send(result);
            }
            Self::Output(reply) => reply.send(result),
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
            Self::With { reply, .. } => reply.send(Err(error)),
            Self::Command { reply, .. } => reply.send(key, Err(error)),
        }
    }
}
