//! Requests that run on the plugin: commands (in the actor, or on the plugin's concurrent runner
//! when it has one) and `with` closures, or parked while the connection reconnects.

use std::time::Duration;

use ractor::ActorProcessingErr;

use crate::connection::{CommandError, CommandOutput, ConnectionKey};
use crate::deadline::Deadline;
use crate::error::{Error, Operation, Stage};
use crate::guard::{Outcome, guarded, sync_guarded};
use crate::runtime::internal::WithJob;
use crate::shared::{Direct, DirectRoute};
use crate::status::ConnectionState;

use super::ConnectionActorState;
use super::lifecycle::panic_in;
use super::requests::{CommandReply, Request};

impl ConnectionActorState {
    /// Runs a request now, or parks it while the connection is reconnecting. A request whose
    /// caller stopped waiting is dropped unrun; one whose deadline passed while it waited for
    /// its turn is answered with a timeout, unrun.
    pub(super) async fn run_or_park(
        &mut self,
        deadline: Deadline,
        request: Request,
    ) -> Result<(), ActorProcessingErr> {
        if request.caller_gone() {
            return Ok(());
        }
        if deadline.has_passed() {
            let error = self.expired(request.operation(), deadline, Stage::Queue);
            request.fail(&self.key, error);
            return Ok(());
        }
        if self.status.state == ConnectionState::Open && !matches!(self.alive_now(), Ok(true)) {
            // Never hand a request to a connection known to be dead.
            self.lose("found dead before a request".to_owned());
        }
        if self.reconnecting() {
            self.park(deadline, request);
            return Ok(());
        }
        if self.status.state == ConnectionState::Failed {
            request.fail(&self.key, self.unavailable());
            return Ok(());
        }
        match request {
            Request::Open { reply } => {
                reply.send(Ok(()));
                Ok(())
            }
            Request::Command { command, reply } => {
                let bound = deadline.remaining();
                if let Some(route) = self.published.route.clone() {
                    self.spawn_command(route, command, deadline, reply);
                    return Ok(());
                }
                let started = tokio::time::Instant::now();
                let outcome = guarded(bound, self.connection.execute_command(&command)).await;
                let took = started.elapsed().as_secs_f64();
                self.counters.metrics.command_duration.record(took);
                let result = match outcome {
                    Outcome::Done(Ok(stdout)) => Ok(CommandOutput {
                        stdout,
                        ..CommandOutput::default()
                    }),
                    // A failed exit is still an answer for whoever wants the whole output.
                    Outcome::Done(Err(CommandError::ExitStatus { status, stderr })) => {
                        Ok(CommandOutput {
                            stdout: String::new(),
                            stderr,
                            exit_status: Some(status),
                        })
                    }
                    Outcome::Done(Err(source)) => Err(Error::Command {
                        key: ConnectionKey::clone(&self.key),
                        source,
                    }),
                    Outcome::TimedOut(after) => {
                        Err(self.timed_out(Operation::ExecuteCommand, after))
                    }
                    Outcome::Panicked(message) => {
                        Err(self.panicked(Operation::ExecuteCommand, message))
                    }
                };
                self.notice_loss_after_request();
                let crash = panic_in(&result);
                reply.send(&self.key, result);
                match crash {
                    Some(error) => self.crash(error).await,
                    None => Ok(()),
                }
            }
            Request::With { job, reply } => {
                let result = self.run_with(job, deadline.remaining()).await;
                self.notice_loss_after_request();
                self.answer(reply, result).await
            }
        }
    }

    /// Runs a command that came to the actor (sent to it directly, or parked during a
    /// reconnect) on the plugin's concurrent runner, on a task of its own, so the actor is free
    /// for the next request. The tasks are aborted when the connection closes.
    pub(super) fn spawn_command(
        &mut self,
        route: DirectRoute,
        command: String,
        deadline: Deadline,
        reply: CommandReply,
    ) {
        while self.commands.try_join_next().is_some() {}
        let key = ConnectionKey::clone(&self.key);
        let actor = self.myself.clone();
        self.commands.spawn(async move {
            match route.run(&key, &command, deadline.remaining()).await {
                Direct::Ran(result) => reply.send(&key, result),
                // Lost before it started: back to the actor, which parks it for the reconnect.
                Direct::NotStarted => reply.resend(&actor, command, deadline),
            }
        });
    }

    /// A request that failed because the session dropped under it has its error; the next
    /// one must not find the connection `Open`.
    pub(super) fn notice_loss_after_request(&mut self) {
        if self.status.state == ConnectionState::Open
            && matches!(sync_guarded(|| self.connection.is_alive()), Ok(false))
        {
            self.lose("the session ended during a request".to_owned());
        }
    }

    pub(super) async fn run_with(&mut self, job: WithJob, bound: Duration) -> Result<(), Error> {
        let actual = self.connection.type_name();
        let wrong_type = || Error::WrongConnectionType {
            key: ConnectionKey::clone(&self.key),
            expected: job.expected,
            actual,
        };
        // Taken exactly once: a copy of this job sent to another actor finds it gone.
        let Some(run) = job.take() else {
            return Err(Error::Closed {
                key: ConnectionKey::clone(&self.key),
            });
        };
        let Some(future) = run(self.connection.as_mut()) else {
            return Err(wrong_type());
        };
        match guarded(bound, future).await {
            Outcome::Done(()) => Ok(()),
            Outcome::TimedOut(after) => Err(self.timed_out(Operation::With, after)),
            Outcome::Panicked(message) => Err(self.panicked(Operation::With, message)),
        }
    }
}
