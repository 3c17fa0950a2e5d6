//! Chaos: 100 keys, 1,000 concurrent callers and random faults of every kind for a few
//! seconds. Afterwards: nothing hung, no call waited past its bound, every error was one the
//! injected faults explain, the supervisor's counters agree with what the connections
//! themselves saw, and shutdown leaves nothing running.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use connection_supervisor::testing::{FaultLedger, FaultPlugin};
use connection_supervisor::{
    Backoff, CommandError, ConnectionManager, ConnectionPolicy, Error, FailureKind, Operation,
    ResolvedConnectionParams, RestartPolicy, SupervisorConfig, Timeouts,
};

const KEYS: usize = 100;
const CALLERS: usize = 1000;
const CHAOS_FOR: Duration = Duration::from_secs(6);

/// The failure kinds the chaos makes opens fail with.
const INJECTED_KINDS: [FailureKind; 5] = [
    FailureKind::Refused,
    FailureKind::Timeout,
    FailureKind::Transport,
    FailureKind::Auth,
    FailureKind::HostKey,
];

/// A tiny deterministic generator (xorshift64*), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn host(i: usize) -> String {
    format!("h{i:03}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_keeps_every_promise() {
    // The scripted panics are expected; keep the output readable.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("scripted panic") {
            default_hook(info);
        }
    }));
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline_tasks = metrics.num_alive_tasks();

    // The request bound is what the supervisor's own answers are held to, and the test fails
    // any of them that times out. 800 ms was once exceeded by a get_or_create on a 2-core machine
    // running three clusters of node processes beside this test: scheduling, not a hang. Hangs
    // are what this test is about, and the call bound below catches them at any request bound.
    let timeouts = Timeouts::default()
        .open(Duration::from_millis(800))
        .request(Duration::from_secs(2))
        .close(Duration::from_millis(300));
    let policy = ConnectionPolicy::default()
        .timeouts(timeouts)
        .backoff(
            Backoff::default()
                .initial(Duration::from_millis(50))
                .max(Duration::from_millis(400))
                .multiplier(2.0)
                .jitter(0.2),
        )
        .health_check_interval(Some(Duration::from_millis(300)));
    let plugin = FaultPlugin::new("chaos");
    let config = SupervisorConfig::default()
        .factory(plugin.factory())
        .policy(policy)
        // Enough open slots that no open times out waiting for one: then every failed open
        // counted by the supervisor is an open the plugin saw fail, and the two can be
        // compared exactly. Bounded opens have their own test.
        .max_concurrent_opens(KEYS)
        .restart_policy(
            RestartPolicy::default()
                .max_restarts(3)
                .window(Duration::from_secs(1))
                .quarantine(Duration::from_millis(500)),
        );
    let manager = ConnectionManager::spawn(config).await.unwrap();
    // Half the hosts run commands concurrently, straight from their handles, as SSH does.
    for i in (0..KEYS).step_by(2) {
        plugin.concurrent_commands(&host(i), Some(4));
    }

    // The longest any single call may take by its documented bounds: a request's own bound
    // (timeout + request), a re-resolve through the supervisor (open + request) and the
    // request once more. Anything beyond it (plus scheduling slack) is a hang.
    let request_bound = timeouts.request * 2;
    let resolve_bound = timeouts.open + timeouts.request;
    let worst_call = (request_bound + resolve_bound + request_bound) * 2 + timeouts.close * 4;
    let slack = Duration::from_secs(2);

    let stop_at = Instant::now() + CHAOS_FOR;
    let longest_ms = Arc::new(AtomicU64::new(0));
    let outcomes = Arc::new(OutcomeCounts::default());

    let chaos = {
        let plugin = plugin.clone();
        tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            while Instant::now() < stop_at {
                let target = host(rng.below(KEYS));
                match rng.below(8) {
                    0 => plugin.fail_next_opens(
                        &target,
                        1 + rng.below(3),
                        INJECTED_KINDS[rng.below(INJECTED_KINDS.len())],
                    ),
                    1 | 2 => {
                        plugin.drop_sessions(&target);
                    }
                    3 => {
                        plugin.kill_sessions_silently(&target);
                    }
                    4 => plugin.panic_on_next_command(&target),
                    5 => plugin.open_delay(&target, Duration::from_millis(rng.below(1200) as u64)),
                    6 => plugin.hang_close(&target, rng.below(2) == 0),
                    _ => plugin.lose_after_commands(&target, 1 + rng.below(5)),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let manager = manager.clone();
            let plugin = plugin.clone();
            let longest_ms = longest_ms.clone();
            let outcomes = outcomes.clone();
            tokio::spawn(async move {
                let mut rng = Rng(caller as u64 * 7919 + 1);
                while Instant::now() < stop_at {
                    let target = host(rng.below(KEYS));
                    let key = plugin.key(&target);
                    let started = Instant::now();
                    let (call, result) = match rng.below(20) {
                        0 => ("close_connection", manager.close_connection(&key).await),
                        1 | 2 => (
                            "connection_status",
                            manager.connection_status(&key).await.map(|_| ()),
                        ),
                        3..=6 => (
                            "open_connection",
                            manager
                                .open_connection(&key, &ResolvedConnectionParams::new(&target))
                                .await
                                .map(|_| ()),
                        ),
                        _ => match manager.get_or_create(key).await {
                            Ok(Some(handle)) => {
                                if handle.status().state
                                    == connection_supervisor::ConnectionState::Created
                                {
                                    handle
                                        .open(&ResolvedConnectionParams::new(&target))
                                        .await
                                        .ok();
                                }
                                let output =
                                    handle.execute_command(&format!("echo {caller}")).await;
                                ("execute_command", output.map(|_| ()))
                            }
                            Ok(None) => ("get_or_create", Ok(())),
                            Err(error) => ("get_or_create", Err(error)),
                        },
                    };
                    let took = started.elapsed();
                    longest_ms.fetch_max(took.as_millis() as u64, Ordering::Relaxed);
                    assert!(
                        took <= worst_call + slack,
                        "a call took {took:?} (bound {worst_call:?}): {result:?}"
                    );
                    outcomes.record(call, &result);
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("no caller panicked or hung");
    }
    chaos.await.unwrap();
    outcomes.assert_all_expected();

    // Faults off, then close everything: every instance made must now be closed exactly once,
    // and the counters must match what the instances themselves recorded.
    for i in 0..KEYS {
        let target = host(i);
        plugin.fail_opens(&target, None);
        plugin.open_delay(&target, Duration::ZERO);
        plugin.hang_close(&target, false);
        plugin.panic_on_every_command(&target, false);
    }
    manager.close_all_connections().await.unwrap();
    // Connections that callers closed but whose close did not finish within the caller's
    // bound (their actor was busy with opens queued ahead of it) are still closing: close-all
    // only waits for pooled ones. Wait for every actor to end before comparing.
    let supervisor = manager.supervisor();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(child) = supervisor.get_children().pop() {
        assert!(Instant::now() < deadline, "connection actors still running");
        let _ = child.wait(Some(Duration::from_secs(1))).await;
    }
    let counters = manager
        .connection_counters_for("chaos")
        .await
        .unwrap()
        .unwrap();
    let ledger = plugin.ledger();
    let get = FaultLedger::get;
    eprintln!(
        "chaos: longest call {} ms (bound {:?}); outcomes {outcomes:?}; counters {counters:?}; ledger {ledger:?}",
        longest_ms.load(Ordering::Relaxed),
        worst_call,
    );
    assert_eq!(counters.create_calls, get(&ledger.created), "creates");
    assert_eq!(counters.open_calls, get(&ledger.opened), "opens");
    // An attempt whose bound ran out while it waited for an open slot failed without the
    // plugin being asked: the supervisor counts it both as a failed open and apart.
    assert_eq!(
        counters.failed_open_calls,
        get(&ledger.open_attempts) - get(&ledger.opened) + counters.open_slot_timeouts,
        "failed opens"
    );
    // A close counts in the ledger when it returns, or as abandoned when a hanging one was
    // given up on after the close timeout; the supervisor counts both.
    let closes_ended = get(&ledger.closed) + get(&ledger.close_abandoned);
    assert_eq!(counters.close_calls, closes_ended, "closes");
    assert_eq!(closes_ended, get(&ledger.created), "every instance closed");
    assert_eq!(get(&ledger.closed_twice), 0, "closed twice");
    assert_eq!(get(&ledger.dropped_unclosed), 0, "dropped without close");
    // A panic is one crash, except that commands running concurrently on one instance may
    // panic together, or panic while it is already closing: that instance still ends once.
    assert!(
        counters.crashes <= get(&ledger.panics) && counters.crashes > 0,
        "crashes {} for {} panics",
        counters.crashes,
        get(&ledger.panics)
    );
    assert!(
        counters.restarts + counters.quarantines <= counters.crashes,
        "only pooled connections are restarted"
    );
    assert!(
        counters.restarts > 0,
        "crashes of pooled connections were restarted"
    );
    assert!(counters.reconnects <= counters.losses + counters.restarts);
    assert!(
        outcomes.ok() > 1000,
        "the chaos left room for work: {outcomes:?}"
    );
    assert!(get(&ledger.panics) > 0 && counters.losses > 0 && counters.failed_open_calls > 0);

    manager.shutdown().await.unwrap();
    assert!(supervisor.get_children().is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.num_alive_tasks() > baseline_tasks && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        metrics.num_alive_tasks(),
        baseline_tasks,
        "tasks left after shutdown"
    );
    assert_eq!(
        get(&ledger.closed) + get(&ledger.close_abandoned),
        get(&ledger.created)
    );
}

/// How calls ended, by kind, to show the chaos really produced every kind of failure, and the
/// errors nothing injected explains.
#[derive(Default, Debug)]
struct OutcomeCounts {
    ok: AtomicUsize,
    /// Expected errors, by what they say.
    errors: Mutex<BTreeMap<String, usize>>,
    /// Errors the chaos cannot explain, each with how often it came.
    unexpected: Mutex<BTreeMap<String, usize>>,
}

impl OutcomeCounts {
    fn record(&self, call: &str, result: &Result<(), Error>) {
        let error = match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(error) => error,
        };
        let (tally, label) = match expected(error) {
            Some(label) => (&self.errors, format!("{call}: {label}")),
            None => (&self.unexpected, format!("{call}: {error:?}")),
        };
        *tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(label)
            .or_default() += 1;
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    fn assert_all_expected(&self) {
        let unexpected = self
            .unexpected
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        assert!(
            unexpected.is_empty(),
            "errors the injected faults do not explain: {unexpected:#?}"
        );
    }
}

/// What the chaos can make a call fail with, given what it injects, as a label for the tally;
/// `None` for anything else. It injects open failures of [`INJECTED_KINDS`], opens slower
/// than the open timeout, dropped and silently killed sessions, panicking commands, hanging
/// closes and crashes often enough to quarantine, and it closes keys under other callers.
fn expected(error: &Error) -> Option<String> {
    let label = match error {
        Error::Open { source, .. } if INJECTED_KINDS.contains(&source.kind()) => {
            format!("open failed ({})", source.kind())
        }
        // Failed after an open failure, or gave up after permanent ones.
        Error::Unavailable {
            cause: Some(cause), ..
        } if INJECTED_KINDS.contains(&cause.kind) => format!("unavailable ({})", cause.kind),
        // Commands are `echo`, which fails only on a session that is gone.
        Error::Command {
            source: CommandError::ConnectionLost(_),
            ..
        } => "command: connection lost".to_owned(),
        Error::PluginPanicked {
            operation: Operation::ExecuteCommand,
            message,
            ..
        } if message.contains("scripted panic") => "command panicked".to_owned(),
        // Slow opens and hanging closes keep a connection's actor busy for up to the open or
        // close timeout, and whatever is queued behind them can run out of time. The
        // supervisor itself never waits for a plugin: its own calls do not time out.
        Error::Timeout {
            operation:
                operation @ (Operation::Open
                | Operation::OpenConnection
                | Operation::ExecuteCommand
                | Operation::CloseConnection),
            stage,
            ..
        } => format!("timeout ({operation}, {stage:?})"),
        Error::Closed { .. } => "closed".to_owned(),
        Error::Quarantined { .. } => "quarantined".to_owned(),
        _ => return None,
    };
    Some(label)
}
