//! The connection lifecycle as one pure function: from the status and what happened, the next
//! status and what follows from it (the direct route, the counts, the event). The actor applies
//! a [`Step`] in one order (`ConnectionActorState::enter`); nothing else changes the state.
//! Being pure, the whole table is tested here without actors, including the moves it refuses.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::events::{CloseReason, EventKind};
use crate::shared::Count;
use crate::status::{ConnectionState, ConnectionStatus, FailureInfo};

/// What happened to a connection, as far as its lifecycle is concerned.
#[derive(Clone, Debug)]
pub(crate) enum Happened {
    /// A caller's open starts (the instance was not alive).
    OpenStarted,
    /// A caller asked for an open and found the instance alive already.
    FoundAlive,
    /// A caller's open succeeded.
    Opened,
    /// A reconnect attempt succeeded.
    Reconnected,
    /// One open attempt failed; the caller's retries or the reconnect schedule decide what next.
    OpenFailed(FailureInfo),
    /// A caller's open stopped retrying after its last failed attempt.
    OpenAbandoned,
    /// The open session went away.
    Lost(String),
    /// A reconnect attempt is due after `delay`, at `at` on the wall clock.
    ReconnectScheduled { delay: Duration, at: SystemTime },
    /// Reconnecting stopped: attempts exhausted, a permanent failure, or no reconnect policy.
    GaveUp(FailureInfo),
    /// The plugin's `close` starts.
    CloseStarted,
    /// The plugin's `close` ended (or timed out, or panicked): the instance is gone.
    Closed(CloseReason),
}

impl Happened {
    fn name(&self) -> &'static str {
        match self {
            Self::OpenStarted => "an open starting",
            Self::FoundAlive => "an open finding it alive",
            Self::Opened => "an open succeeding",
            Self::Reconnected => "a reconnect succeeding",
            Self::OpenFailed(_) => "an open attempt failing",
            Self::OpenAbandoned => "an open giving up",
            Self::Lost(_) => "a loss",
            Self::ReconnectScheduled { .. } => "a reconnect being scheduled",
            Self::GaveUp(_) => "reconnecting giving up",
            Self::CloseStarted => "a close starting",
            Self::Closed(_) => "a close ending",
        }
    }
}

/// What becomes of the direct route (the plugin's concurrent runner, which handles use without
/// messaging the actor): it exists exactly while the connection is `Open`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RouteChange {
    /// Entering `Open`: publish the new session's route.
    Publish,
    /// Leaving `Open`: withdraw it, so it never outlives its session.
    Withdraw,
    Keep,
}

/// One legal move and what follows from it, to be applied in this order: status, route,
/// counts, event (counted before it is published, so a subscriber reading the counters after
/// an event finds it counted).
#[derive(Debug)]
pub(crate) struct Step {
    pub(crate) status: ConnectionStatus,
    pub(crate) route: RouteChange,
    pub(crate) counts: Vec<Count>,
    pub(crate) event: Option<EventKind>,
}

/// A move the lifecycle does not allow; the state is left as it was.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct IllegalMove {
    pub(crate) from: ConnectionState,
    pub(crate) happened: &'static str,
}

impl fmt::Display for IllegalMove {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "illegal lifecycle move: {} while {:?}",
            self.happened, self.from
        )
    }
}

/// The lifecycle's transition function.
pub(crate) fn step(status: &ConnectionStatus, happened: Happened) -> Result<Step, IllegalMove> {
    use ConnectionState as S;
    let from = status.state;
    let illegal = |happened: &Happened| IllegalMove {
        from,
        happened: happened.name(),
    };
    let mut next = status.clone();
    let mut counts = Vec::new();
    let event = match (&happened, from) {
        (Happened::OpenStarted, S::Created | S::Failed) => {
            next.state = S::Opening;
            Some(EventKind::Opening)
        }
        (Happened::FoundAlive, S::Created | S::Failed) => {
            next.state = S::Open;
            None
        }
        (Happened::Opened, S::Opening) => {
            next.state = S::Open;
            next.attempts = 0;
            next.next_attempt_at = None;
            counts = vec![Count::Opened];
            Some(EventKind::Opened)
        }
        (Happened::Reconnected, S::Reconnecting) => {
            next.state = S::Open;
            next.attempts = 0;
            next.next_attempt_at = None;
            counts = vec![Count::Opened, Count::Reconnected];
            Some(EventKind::Reconnected {
                attempts: status.attempts + 1,
            })
        }
        (Happened::OpenFailed(info), S::Opening | S::Reconnecting) => {
            next.attempts = status.attempts + 1;
            next.last_error = Some(info.clone());
            next.next_attempt_at = None;
            counts = vec![Count::FailedOpen(info.kind)];
            Some(EventKind::OpenFailed {
                failure: info.clone(),
                attempt: next.attempts,
            })
        }
        (Happened::OpenAbandoned, S::Opening) => {
            next.state = S::Failed;
            None
        }
        (Happened::Lost(reason), S::Open) => {
            next.state = S::Lost;
            next.attempts = 0;
            counts = vec![Count::Lost];
            Some(EventKind::Lost {
                reason: reason.clone(),
            })
        }
        (Happened::ReconnectScheduled { delay, at }, S::Created | S::Lost | S::Reconnecting) => {
            next.state = S::Reconnecting;
            next.next_attempt_at = Some(*at);
            Some(EventKind::Reconnecting {
                attempt: status.attempts + 1,
                delay: *delay,
            })
        }
        (Happened::GaveUp(info), S::Lost | S::Reconnecting) => {
            next.state = S::Failed;
            next.last_error = Some(info.clone());
            next.next_attempt_at = None;
            Some(EventKind::GaveUp {
                failure: info.clone(),
            })
        }
        (
            Happened::CloseStarted,
            S::Created | S::Opening | S::Open | S::Lost | S::Reconnecting | S::Failed,
        ) => {
            next.state = S::Closing;
            None
        }
        (Happened::Closed(reason), S::Closing) => {
            next.state = S::Closed;
            next.next_attempt_at = None;
            counts = vec![Count::Closed];
            Some(EventKind::Closed { reason: *reason })
        }
        _ => return Err(illegal(&happened)),
    };
    let route = match (from == S::Open, next.state == S::Open) {
        (false, true) => RouteChange::Publish,
        (true, false) => RouteChange::Withdraw,
        _ => RouteChange::Keep,
    };
    Ok(Step {
        status: next,
        route,
        counts,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::FailureKind;
    use ConnectionState as S;

    const ALL: [ConnectionState; 9] = [
        S::Created,
        S::Opening,
        S::Open,
        S::Lost,
        S::Reconnecting,
        S::Failed,
        S::Closing,
        S::Closed,
        S::Quarantined,
    ];

    fn failure() -> FailureInfo {
        FailureInfo::new(FailureKind::Refused, "nobody home")
    }

    fn everything() -> Vec<Happened> {
        vec![
            Happened::OpenStarted,
            Happened::FoundAlive,
            Happened::Opened,
            Happened::Reconnected,
            Happened::OpenFailed(failure()),
            Happened::OpenAbandoned,
            Happened::Lost("reset".into()),
            Happened::ReconnectScheduled {
                delay: Duration::from_millis(5),
                at: SystemTime::UNIX_EPOCH,
            },
            Happened::GaveUp(failure()),
            Happened::CloseStarted,
            Happened::Closed(CloseReason::Requested),
        ]
    }

    fn at(state: ConnectionState) -> ConnectionStatus {
        ConnectionStatus::new(state)
    }

    /// Applies `moves` from `Created`, as the actor would, returning the last status.
    fn run(moves: Vec<Happened>) -> Result<(ConnectionStatus, Vec<Step>), IllegalMove> {
        let mut status = at(S::Created);
        let mut steps = Vec::new();
        for happened in moves {
            let step = step(&status, happened)?;
            status = step.status.clone();
            steps.push(step);
        }
        Ok((status, steps))
    }

    #[test]
    fn the_legal_moves_and_nothing_else() {
        let legal: &[(&str, &[ConnectionState], Option<ConnectionState>)] = &[
            (
                "an open starting",
                &[S::Created, S::Failed],
                Some(S::Opening),
            ),
            (
                "an open finding it alive",
                &[S::Created, S::Failed],
                Some(S::Open),
            ),
            ("an open succeeding", &[S::Opening], Some(S::Open)),
            ("a reconnect succeeding", &[S::Reconnecting], Some(S::Open)),
            (
                "an open attempt failing",
                &[S::Opening, S::Reconnecting],
                None,
            ),
            ("an open giving up", &[S::Opening], Some(S::Failed)),
            ("a loss", &[S::Open], Some(S::Lost)),
            (
                "a reconnect being scheduled",
                &[S::Created, S::Lost, S::Reconnecting],
                Some(S::Reconnecting),
            ),
            (
                "reconnecting giving up",
                &[S::Lost, S::Reconnecting],
                Some(S::Failed),
            ),
            (
                "a close starting",
                &[
                    S::Created,
                    S::Opening,
                    S::Open,
                    S::Lost,
                    S::Reconnecting,
                    S::Failed,
                ],
                Some(S::Closing),
            ),
            ("a close ending", &[S::Closing], Some(S::Closed)),
        ];
        for happened in everything() {
            let name = happened.name();
            let (_, from, to) = legal
                .iter()
                .find(|(n, _, _)| *n == name)
                .expect("every kind of move is in the table");
            for state in ALL {
                let result = step(&at(state), happened.clone());
                if from.contains(&state) {
                    let step = result.unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(
                        step.status.state,
                        to.unwrap_or(state),
                        "{name} from {state:?}"
                    );
                } else {
                    assert_eq!(
                        result.map(|s| s.status.state),
                        Err(IllegalMove {
                            from: state,
                            happened: name
                        })
                    );
                }
            }
        }
    }

    #[test]
    fn the_route_exists_exactly_while_open() {
        for state in ALL {
            for happened in everything() {
                if let Ok(step) = step(&at(state), happened) {
                    let expected = match (state == S::Open, step.status.state == S::Open) {
                        (false, true) => RouteChange::Publish,
                        (true, false) => RouteChange::Withdraw,
                        _ => RouteChange::Keep,
                    };
                    assert_eq!(step.route, expected);
                }
            }
        }
    }

    #[test]
    fn a_reconnect_counts_an_open_and_a_reconnect_and_reports_its_attempts() {
        let (status, steps) = run(vec![
            Happened::OpenStarted,
            Happened::Opened,
            Happened::Lost("reset".into()),
            Happened::ReconnectScheduled {
                delay: Duration::from_millis(1),
                at: SystemTime::UNIX_EPOCH,
            },
            Happened::OpenFailed(failure()),
            Happened::ReconnectScheduled {
                delay: Duration::from_millis(2),
                at: SystemTime::UNIX_EPOCH,
            },
            Happened::Reconnected,
        ])
        .unwrap();
        assert_eq!(status.state, S::Open);
        assert_eq!(status.attempts, 0);
        assert_eq!(status.next_attempt_at, None);
        assert_eq!(status.last_error, Some(failure()), "kept after recovery");
        let counted: Vec<_> = steps.iter().flat_map(|s| s.counts.iter()).collect();
        assert_eq!(
            format!("{counted:?}"),
            "[Opened, Lost, FailedOpen(Refused), Opened, Reconnected]"
        );
        let events: Vec<_> = steps.iter().filter_map(|s| s.event.clone()).collect();
        assert!(matches!(
            events.as_slice(),
            [
                EventKind::Opening,
                EventKind::Opened,
                EventKind::Lost { .. },
                EventKind::Reconnecting { attempt: 1, .. },
                EventKind::OpenFailed { attempt: 1, .. },
                EventKind::Reconnecting { attempt: 2, .. },
                EventKind::Reconnected { attempts: 2 },
            ]
        ));
    }

    #[test]
    fn a_close_is_counted_once_and_nothing_follows_it() {
        let (status, steps) = run(vec![
            Happened::OpenStarted,
            Happened::Opened,
            Happened::CloseStarted,
            Happened::Closed(CloseReason::Requested),
        ])
        .unwrap();
        assert_eq!(status.state, S::Closed);
        assert_eq!(steps[2].route, RouteChange::Withdraw);
        for happened in everything() {
            assert!(
                step(&status, happened).is_err(),
                "nothing moves a closed connection"
            );
        }
        assert!(
            step(&at(S::Closing), Happened::CloseStarted).is_err(),
            "a second close does not start"
        );
    }

    #[test]
    fn a_failed_open_is_counted_with_its_failure_and_keeps_the_state() {
        let step = step(&at(S::Opening), Happened::OpenFailed(failure())).unwrap();
        assert_eq!(step.status.state, S::Opening);
        assert_eq!(step.status.attempts, 1);
        assert!(matches!(
            step.counts.as_slice(),
            [Count::FailedOpen(FailureKind::Refused)]
        ));
    }
}
