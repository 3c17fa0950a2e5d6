//! No configuration can panic the library (issue 10, item 6). Every setting of
//! `SupervisorConfig`, `ConnectionPolicy` (default and per plugin), `Timeouts`, `Backoff`,
//! `RestartPolicy` and `SshOptions`, and every per-call bound, is tried at its extremes
//! (`Duration::MAX`, `Duration::ZERO`, `u32::MAX`, `usize::MAX`, `f64::MAX`, `f64::INFINITY`,
//! `f64::NAN`). Each must either be refused up front with `Error::InvalidConfig` naming the
//! setting and its scope, or work: a short scenario (open, a command, a loss, crashes up to a
//! quarantine, close, shutdown) ends as it does with the defaults and nothing panics, neither
//! on the caller's side (caught here with `catch_unwind`) nor inside an actor or a task
//! (counted by a panic hook: ractor catches an actor's panic and turns it into a failed actor,
//! which a caller may only see as `Closed` or `ShutDown`).
//!
//! Each test runs its cases one after another and reports every failing case at once. Run with
//! `--nocapture` to see the outcome of each.
#![cfg(feature = "testing")]

use std::cell::RefCell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Once;
use std::time::Duration;

use futures::FutureExt;

use connection_supervisor::testing::{FaultLedger, FaultPlugin};
use connection_supervisor::{
    Backoff, ConnectionHandle, ConnectionPolicy, ConnectionState, Error, EventKind, EventStream,
    ResolvedConnectionParams, RestartPolicy, SupervisorConfig, SupervisorGuard, Timeouts,
};

/// Virtual time on the paused clock: every wait of a scenario that should end does so long
/// before this.
const WAIT: Duration = Duration::from_secs(600);
/// The bound on a whole case, so a call whose own bound is `Duration::MAX` cannot hang the test.
const CASE_BOUND: Duration = Duration::from_secs(3600);
const PLUGIN: &str = "fault";

thread_local! {
    /// Panics on this thread. `#[tokio::test]` runs the test and every task it spawns (actors
    /// included) on the test's own thread, so these are the current test's panics.
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let place = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            // The fault plugin's scripted panics are expected, and many: keep them quiet.
            if !message.contains("scripted panic") {
                default(info);
            }
            PANICS.with(|panics| panics.borrow_mut().push(format!("{message}{place}")));
        }));
    });
}

/// Panics on this thread since the last call, except the fault plugin's scripted ones.
fn take_unexpected_panics() -> Vec<String> {
    PANICS
        .with(|panics| std::mem::take(&mut *panics.borrow_mut()))
        .into_iter()
        .filter(|message| !message.contains("scripted panic"))
        .collect()
}

/// What one case came to.
enum Outcome {
    /// Refused up front, with this message.
    Refused(String),
    Worked,
    Failed(String),
}

/// Runs `scenario` under the case bound, catching a panic on the caller's side and counting
/// those anywhere else on this thread.
async fn run_case<F>(scenario: F) -> Outcome
where
    F: Future<Output = Result<Outcome, String>>,
{
    take_unexpected_panics();
    let caught = AssertUnwindSafe(tokio::time::timeout(CASE_BOUND, scenario))
        .catch_unwind()
        .await;
    let result = match caught {
        Err(payload) => Err(format!(
            "panicked in the caller: {}",
            payload
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default()
        )),
        Ok(Err(_)) => Err(format!("did not end within {CASE_BOUND:?}")),
        Ok(Ok(result)) => result,
    };
    // Let tasks still running (a shutdown's stragglers) get to a panic, if they have one.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let panics = take_unexpected_panics();
    match result {
        Ok(outcome) if panics.is_empty() => outcome,
        Ok(_) => Outcome::Failed(format!("panicked: {panics:?}")),
        Err(failure) if panics.is_empty() => Outcome::Failed(failure),
        Err(failure) => Outcome::Failed(format!("{failure}; panicked: {panics:?}")),
    }
}

/// Checks each case's outcome: a refusal must name every one of `names` (the setting and its
/// scope). Prints one line per case and fails with every failing case.
fn judge(results: Vec<(String, Vec<&'static str>, Outcome)>) {
    let mut failures = Vec::new();
    for (case, names, outcome) in results {
        let line = match outcome {
            Outcome::Worked => format!("works    {case}"),
            Outcome::Refused(message) => {
                let missing: Vec<_> = names.iter().filter(|n| !message.contains(*n)).collect();
                if !missing.is_empty() {
                    failures.push(format!(
                        "{case}: refused without naming {missing:?}: {message}"
                    ));
                }
                format!("refused  {case}: {message}")
            }
            Outcome::Failed(why) => {
                failures.push(format!("{case}: {why}"));
                format!("FAILED   {case}: {why}")
            }
        };
        println!("{line}");
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn params(host: &str) -> ResolvedConnectionParams {
    ResolvedConnectionParams::new(host)
}

fn get(counter: &std::sync::atomic::AtomicUsize) -> usize {
    FaultLedger::get(counter)
}

/// Spawns a supervisor over a fresh fault plugin; `Refused` if the configuration is invalid.
async fn spawn(
    config: SupervisorConfig,
    plugin: &FaultPlugin,
) -> Result<Result<(SupervisorGuard, EventStream), Outcome>, String> {
    match SupervisorGuard::spawn(config.factory(plugin.factory())).await {
        Ok(guard) => {
            let events = guard
                .subscribe()
                .await
                .map_err(|e| format!("subscribe: {e}"))?;
            Ok(Ok((guard, events)))
        }
        Err(Error::InvalidConfig(message)) => Ok(Err(Outcome::Refused(message))),
        Err(other) => Err(format!("spawn failed other than as invalid: {other}")),
    }
}

async fn open(
    guard: &SupervisorGuard,
    plugin: &FaultPlugin,
    host: &str,
) -> Result<ConnectionHandle, String> {
    guard
        .open_connection(&plugin.key(host), &params(host))
        .await
        .map_err(|e| format!("open {host}: {e}"))?
        .ok_or_else(|| format!("open {host}: no plugin"))
}

async fn echo(handle: &ConnectionHandle, text: &str) -> Result<(), String> {
    match handle.execute_command(&format!("echo {text}")).await {
        Ok(out) if out == text => Ok(()),
        other => Err(format!("command on {}: {other:?}", handle.key())),
    }
}

/// Shuts down and checks the plugin's ledger: every instance closed exactly once.
async fn finish(guard: SupervisorGuard, plugin: &FaultPlugin) -> Result<Outcome, String> {
    guard
        .shutdown()
        .await
        .map_err(|e| format!("shutdown: {e}"))?;
    let ledger = plugin.ledger();
    if get(&ledger.closed) != get(&ledger.created)
        || get(&ledger.closed_twice) != 0
        || get(&ledger.dropped_unclosed) != 0
    {
        return Err(format!(
            "not every instance closed exactly once: {ledger:?}"
        ));
    }
    Ok(Outcome::Worked)
}

/// The scenario every configuration must get through: open and a command; a reported loss
/// (the reconnect is scheduled, or the connection gives up); a close; then a key that crashes
/// until it is quarantined (or five times); a close; shutdown.
async fn scenario(config: SupervisorConfig) -> Result<Outcome, String> {
    let plugin = FaultPlugin::new(PLUGIN);
    let (guard, mut events) = match spawn(config, &plugin).await? {
        Ok(started) => started,
        Err(refused) => return Ok(refused),
    };

    let r1 = plugin.key("r1");
    let handle = open(&guard, &plugin, "r1").await?;
    echo(&handle, "one").await?;
    if plugin.drop_sessions("r1") != 1 {
        return Err("r1 had no session to drop".into());
    }
    events
        .wait_for_key(&r1, WAIT, |kind| {
            matches!(
                kind,
                EventKind::Reconnecting { .. } | EventKind::GaveUp { .. }
            )
        })
        .await
        .map_err(|e| format!("after the loss: {e}"))?;
    guard
        .close_connection(&r1)
        .await
        .map_err(|e| format!("close r1: {e}"))?;

    let r2 = plugin.key("r2");
    let handle = open(&guard, &plugin, "r2").await?;
    for crash in 1..=5 {
        plugin.panic_on_next_command("r2");
        match handle.execute_command("echo boom").await {
            Err(Error::PluginPanicked { .. }) => {}
            other => return Err(format!("crash {crash}: the caller got {other:?}")),
        }
        let event = events
            .wait_for_key(&r2, WAIT, |kind| {
                matches!(
                    kind,
                    EventKind::Restarted { .. } | EventKind::Quarantined { .. }
                )
            })
            .await
            .map_err(|e| format!("after crash {crash}: {e}"))?;
        if matches!(event.kind, EventKind::Quarantined { .. }) {
            match guard.get_or_create(r2.clone()).await {
                Err(Error::Quarantined { .. }) => break,
                other => return Err(format!("quarantined r2 answered {other:?}")),
            }
        }
        events
            .wait_for_key(&r2, WAIT, |kind| {
                matches!(kind, EventKind::Reconnected { .. })
            })
            .await
            .map_err(|e| format!("reopen after crash {crash}: {e}"))?;
        echo(&handle, "again").await?;
    }
    guard
        .close_connection(&r2)
        .await
        .map_err(|e| format!("close r2: {e}"))?;
    finish(guard, &plugin).await
}

/// Each setting of a `ConnectionPolicy` at its extremes: (what was set, what a refusal must
/// name, the policy).
fn policy_cases() -> Vec<(String, Vec<&'static str>, ConnectionPolicy)> {
    let p = ConnectionPolicy::default;
    let t = Timeouts::default;
    let b = Backoff::default;
    let mut cases = Vec::new();
    let mut case = |what: String, names: &[&'static str], policy: ConnectionPolicy| {
        cases.push((what, names.to_vec(), policy));
    };
    for (label, d) in [("MAX", Duration::MAX), ("ZERO", Duration::ZERO)] {
        case(
            format!("timeouts.open = {label}"),
            &["open timeout"],
            p().timeouts(t().open(d)),
        );
        case(
            format!("timeouts.request = {label}"),
            &["request timeout"],
            p().timeouts(t().request(d)),
        );
        case(
            format!("timeouts.close = {label}"),
            &["close timeout"],
            p().timeouts(t().close(d)),
        );
        case(
            format!("backoff.initial = {label}"),
            &["backoff", "initial"],
            p().backoff(b().initial(d)),
        );
        case(
            format!("backoff.max = {label}"),
            &["backoff", "max"],
            p().backoff(b().max(d)),
        );
        case(
            format!("health_check_interval = {label}"),
            &["health check interval"],
            p().health_check_interval(d),
        );
        case(
            format!("idle_timeout = {label}"),
            &["idle timeout"],
            p().idle_timeout(d),
        );
        case(
            format!("max_lifetime = {label}"),
            &["max lifetime"],
            p().max_lifetime(d),
        );
    }
    let max = Duration::MAX;
    case(
        "every timeout = MAX".into(),
        &["timeout"],
        p().timeouts(t().open(max).request(max).close(max)),
    );
    case(
        "backoff.initial = backoff.max = MAX".into(),
        &["backoff"],
        p().backoff(b().initial(max).max(max)),
    );
    for (label, x) in [
        ("f64::MAX", f64::MAX),
        ("INFINITY", f64::INFINITY),
        ("NAN", f64::NAN),
    ] {
        case(
            format!("backoff.multiplier = {label}"),
            &["backoff", "multiplier"],
            p().backoff(b().multiplier(x)),
        );
        case(
            format!("backoff.multiplier = {label}, backoff.max = MAX"),
            &["backoff", "multiplier"],
            p().backoff(b().multiplier(x).max(max)),
        );
        case(
            format!("backoff.jitter = {label}"),
            &["backoff", "jitter"],
            p().backoff(b().jitter(x)),
        );
    }
    for (label, n) in [("u32::MAX", u32::MAX), ("0", 0)] {
        case(
            format!("permanent_failure_attempts = {label}"),
            &["permanent_failure_attempts"],
            p().permanent_failure_attempts(n),
        );
        case(
            format!("max_reconnect_attempts = {label}"),
            &["max_reconnect_attempts"],
            p().max_reconnect_attempts(n),
        );
    }
    cases
}

#[tokio::test(start_paused = true)]
async fn the_default_policy_at_its_extremes_is_refused_by_name_or_works() {
    count_panics();
    let mut results = Vec::new();
    for (what, mut names, policy) in policy_cases() {
        names.push("default policy");
        let outcome = run_case(scenario(SupervisorConfig::default().policy(policy))).await;
        results.push((format!("default policy: {what}"), names, outcome));
    }
    judge(results);
}

#[tokio::test(start_paused = true)]
async fn a_plugins_policy_at_its_extremes_is_refused_by_name_or_works() {
    count_panics();
    let mut results = Vec::new();
    for (what, mut names, policy) in policy_cases() {
        names.push("\"fault\"");
        let config = SupervisorConfig::default().plugin_policy(PLUGIN, policy);
        let outcome = run_case(scenario(config)).await;
        results.push((format!("policy for {PLUGIN:?}: {what}"), names, outcome));
    }
    judge(results);
}

#[tokio::test(start_paused = true)]
async fn the_restart_policy_at_its_extremes_is_refused_by_name_or_works() {
    count_panics();
    let r = RestartPolicy::default;
    let mut cases: Vec<(String, Vec<&'static str>, RestartPolicy)> = Vec::new();
    for (label, n) in [("u32::MAX", u32::MAX), ("0", 0)] {
        cases.push((
            format!("max_restarts = {label}"),
            vec!["max_restarts"],
            r().max_restarts(n),
        ));
    }
    for (label, d) in [("MAX", Duration::MAX), ("ZERO", Duration::ZERO)] {
        cases.push((format!("window = {label}"), vec!["window"], r().window(d)));
        cases.push((
            format!("quarantine = {label}"),
            vec!["quarantine"],
            r().quarantine(d),
        ));
        // Quarantined at the first crash, so the quarantine's own deadline is reached for sure.
        cases.push((
            format!("max_restarts = 0, quarantine = {label}"),
            vec!["quarantine"],
            r().max_restarts(0).quarantine(d),
        ));
    }
    let mut results = Vec::new();
    for (what, mut names, restart) in cases {
        names.push("restart");
        let outcome = run_case(scenario(
            SupervisorConfig::default().restart_policy(restart),
        ))
        .await;
        results.push((format!("restart policy: {what}"), names, outcome));
    }
    judge(results);
}

#[tokio::test(start_paused = true)]
async fn supervisor_settings_at_their_extremes_are_refused_by_name_or_work() {
    count_panics();
    let s = SupervisorConfig::default;
    let semaphore_max = tokio::sync::Semaphore::MAX_PERMITS;
    let mut cases: Vec<(String, Vec<&'static str>, SupervisorConfig)> = Vec::new();
    for (label, n) in [
        ("usize::MAX", usize::MAX),
        ("Semaphore::MAX_PERMITS", semaphore_max),
        ("Semaphore::MAX_PERMITS + 1", semaphore_max + 1),
        ("0", 0),
    ] {
        cases.push((
            format!("max_concurrent_opens = {label}"),
            vec!["max_concurrent_opens"],
            s().max_concurrent_opens(n),
        ));
    }
    for (label, n) in [("usize::MAX", usize::MAX), ("0", 0)] {
        cases.push((
            format!("max_connections = {label}"),
            vec!["max_connections"],
            s().max_connections(n),
        ));
        cases.push((
            format!("max_connections_for({PLUGIN:?}) = {label}"),
            vec!["max_connections_for", "\"fault\""],
            s().max_connections_for(PLUGIN, n),
        ));
    }
    for (label, n) in [
        ("usize::MAX", usize::MAX),
        ("usize::MAX / 2 (tokio's limit)", usize::MAX >> 1),
        ("2^40", 1 << 40),
        ("0", 0),
    ] {
        cases.push((
            format!("event_capacity = {label}"),
            vec!["event_capacity"],
            s().event_capacity(n),
        ));
    }
    let mut results = Vec::new();
    for (what, names, config) in cases {
        let outcome = run_case(scenario(config)).await;
        results.push((what, names, outcome));
    }
    judge(results);
}

#[test]
fn backoff_waits_never_panic_and_never_exceed_max() {
    let huge = Backoff::default().initial(Duration::MAX).max(Duration::MAX);
    assert_eq!(huge.base_delay(1), Duration::MAX);
    assert_eq!(huge.base_delay(u32::MAX), Duration::MAX);
    let steep = Backoff::default().multiplier(f64::MAX).max(Duration::MAX);
    assert_eq!(steep.base_delay(3), Duration::MAX);
    // Values validate() refuses still give a wait, not a panic: base_delay is public.
    for multiplier in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -2.0, 0.0] {
        let odd = Backoff::default().multiplier(multiplier);
        for attempt in [0, 1, 2, 3, u32::MAX] {
            assert!(
                odd.base_delay(attempt) <= odd.max,
                "{odd:?} attempt {attempt}"
            );
        }
    }
    let nan = Backoff::default().multiplier(f64::NAN);
    assert_eq!(
        nan.base_delay(2),
        nan.max,
        "NaN waits the longest, not zero"
    );
}

#[test]
fn the_largest_accepted_limits_validate_and_one_more_is_refused_by_name() {
    let largest = SupervisorConfig::default()
        .max_concurrent_opens(tokio::sync::Semaphore::MAX_PERMITS)
        .event_capacity(1 << 20);
    assert!(largest.validate().is_ok());
    let error = SupervisorConfig::default()
        .event_capacity((1 << 20) + 1)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(error.contains("event_capacity"), "{error}");
}

/// A per-call bound: the call's name, and the call made with `bound` on an open connection
/// (`handle`) whose supervisor is `guard`. Ok when it worked; for a zero bound a timeout is
/// working too.
type PerCall = for<'a> fn(&'a Ctx, Duration) -> futures::future::BoxFuture<'a, Result<(), Error>>;

struct Ctx {
    guard: SupervisorGuard,
    plugin: FaultPlugin,
    handle: ConnectionHandle,
    events: tokio::sync::Mutex<EventStream>,
}

async fn per_call_scenario(
    call: PerCall,
    bound: Duration,
    concurrent: bool,
    reconnecting: bool,
) -> Result<Outcome, String> {
    let plugin = FaultPlugin::new(PLUGIN);
    if concurrent {
        plugin.concurrent_commands("r1", Some(4));
    }
    // Reconnects take a while, so a call made during one waits (parked in the actor).
    let policy = ConnectionPolicy::default().backoff(
        Backoff::default()
            .initial(Duration::from_secs(5))
            .max(Duration::from_secs(5)),
    );
    let (guard, events) = match spawn(SupervisorConfig::default().policy(policy), &plugin).await? {
        Ok(started) => started,
        Err(refused) => return Ok(refused),
    };
    let handle = open(&guard, &plugin, "r1").await?;
    let ctx = Ctx {
        guard,
        plugin,
        handle,
        events: tokio::sync::Mutex::new(events),
    };
    if reconnecting {
        ctx.plugin.drop_sessions("r1");
        ctx.events
            .lock()
            .await
            .wait_for_key(&ctx.plugin.key("r1"), WAIT, |kind| {
                matches!(kind, EventKind::Reconnecting { .. })
            })
            .await
            .map_err(|e| format!("reconnect not scheduled: {e}"))?;
    }
    match call(&ctx, bound).await {
        Ok(()) => {}
        Err(Error::Timeout { .. } | Error::EventNotSeen { .. }) if bound.is_zero() => {}
        Err(error) => return Err(format!("the call failed: {error}")),
    }
    let Ctx {
        guard,
        plugin,
        handle,
        ..
    } = ctx;
    echo(&handle, "after").await?;
    guard
        .close_connection(handle.key())
        .await
        .map_err(|e| format!("close: {e}"))?;
    finish(guard, &plugin).await
}

fn execute_within(ctx: &Ctx, bound: Duration) -> futures::future::BoxFuture<'_, Result<(), Error>> {
    Box::pin(async move {
        let out = ctx
            .handle
            .execute_command_within("echo within", bound)
            .await?;
        assert_eq!(out, "within");
        Ok(())
    })
}

fn run_within(ctx: &Ctx, bound: Duration) -> futures::future::BoxFuture<'_, Result<(), Error>> {
    Box::pin(async move {
        let out = ctx.handle.run_command_within("echo within", bound).await?;
        assert_eq!(out.stdout, "within");
        Ok(())
    })
}

fn open_within(ctx: &Ctx, bound: Duration) -> futures::future::BoxFuture<'_, Result<(), Error>> {
    Box::pin(async move { ctx.handle.open_within(&params("r1"), bound).await })
}

fn wait_for_status(
    ctx: &Ctx,
    bound: Duration,
) -> futures::future::BoxFuture<'_, Result<(), Error>> {
    Box::pin(async move {
        ctx.handle
            .wait_for_status(bound, |status| status.state == ConnectionState::Open)
            .await
            .map(drop)
    })
}

fn wait_for_event(ctx: &Ctx, bound: Duration) -> futures::future::BoxFuture<'_, Result<(), Error>> {
    Box::pin(async move {
        // An event that does come: the reconnect after a loss (made here if the connection is
        // still open).
        let key = ctx.plugin.key("r1");
        let mut events = ctx.events.lock().await;
        if ctx.handle.status().state == ConnectionState::Open {
            ctx.plugin.drop_sessions("r1");
        }
        events
            .wait_for_key(&key, bound, |kind| {
                matches!(kind, EventKind::Reconnected { .. })
            })
            .await
            .map(drop)
    })
}

#[tokio::test(start_paused = true)]
async fn per_call_bounds_at_their_extremes_work() {
    count_panics();
    let calls: [(&str, PerCall); 5] = [
        ("ConnectionHandle::execute_command_within", execute_within),
        ("ConnectionHandle::run_command_within", run_within),
        ("ConnectionHandle::open_within", open_within),
        ("ConnectionHandle::wait_for_status", wait_for_status),
        ("EventStream::wait_for", wait_for_event),
    ];
    let mut results = Vec::new();
    for (name, call) in calls {
        for (label, bound) in [("MAX", Duration::MAX), ("ZERO", Duration::ZERO)] {
            for concurrent in [false, true] {
                for reconnecting in [false, true] {
                    let case = format!(
                        "{name}({label}){}{}",
                        if concurrent {
                            ", concurrent commands"
                        } else {
                            ""
                        },
                        if reconnecting {
                            ", while reconnecting"
                        } else {
                            ""
                        },
                    );
                    let outcome =
                        run_case(per_call_scenario(call, bound, concurrent, reconnecting)).await;
                    // Nothing here is configuration: a refusal would be a failure.
                    let outcome = match outcome {
                        Outcome::Refused(message) => Outcome::Failed(format!("refused: {message}")),
                        other => other,
                    };
                    results.push((case, Vec::new(), outcome));
                }
            }
        }
    }
    judge(results);
}

#[cfg(feature = "ssh")]
mod ssh_options {
    use super::*;
    use connection_supervisor::ConnectionKey;
    use connection_supervisor::ssh::{self, HostKeyPolicy, SshOptions};
    use connection_supervisor::testing::{
        DEFAULT_PASSWORD, DEFAULT_USERNAME, SshTestServer, SshTestServerConfig,
    };

    /// Open, a few commands (some at once, on channels), close, shutdown, against the embedded
    /// server on the real clock; no loss on the way.
    async fn ssh_scenario(options: SshOptions) -> Result<Outcome, String> {
        let server = SshTestServer::start(SshTestServerConfig::default())
            .await
            .map_err(|e| format!("server: {e}"))?;
        let options = options.host_key_policy(HostKeyPolicy::AcceptAny);
        let config = SupervisorConfig::default().factory(ssh::factory(options));
        let guard = SupervisorGuard::spawn(config)
            .await
            .map_err(|e| format!("spawn: {e}"))?;
        let key = ConnectionKey::new("d1", ssh::PLUGIN_NAME);
        let params = ResolvedConnectionParams {
            hostname: "127.0.0.1".into(),
            port: Some(server.port()),
            username: Some(DEFAULT_USERNAME.into()),
            password: Some(DEFAULT_PASSWORD.into()),
            ..ResolvedConnectionParams::default()
        };
        let handle = guard
            .open_connection(&key, &params)
            .await
            .map_err(|e| format!("open: {e}"))?
            .ok_or("no plugin")?;
        for round in 0..3 {
            let commands: Vec<String> = (0..4).map(|i| format!("echo {round}-{i}")).collect();
            let runs = commands
                .iter()
                .map(|command| handle.run_command_within(command, Duration::from_secs(20)));
            for (i, output) in futures::future::join_all(runs)
                .await
                .into_iter()
                .enumerate()
            {
                match output {
                    Ok(output) if output.stdout == format!("{round}-{i}\n") => {}
                    other => return Err(format!("command {round}-{i}: {other:?}")),
                }
            }
        }
        let counters = guard
            .connection_counters_for(ssh::PLUGIN_NAME)
            .await
            .map_err(|e| format!("counters: {e}"))?
            .ok_or("no counters")?;
        if counters.losses != 0 || handle.status().state != ConnectionState::Open {
            return Err(format!(
                "the session did not stay up: {counters:?}, {:?}",
                handle.status()
            ));
        }
        guard
            .close_connection(&key)
            .await
            .map_err(|e| format!("close: {e}"))?;
        guard
            .shutdown()
            .await
            .map_err(|e| format!("shutdown: {e}"))?;
        Ok(Outcome::Worked)
    }

    #[tokio::test]
    async fn ssh_options_at_their_extremes_work() {
        count_panics();
        let o = SshOptions::default;
        let cases = [
            (
                "keepalive_interval = MAX",
                o().keepalive_interval(Duration::MAX),
            ),
            (
                "keepalive_interval = ZERO",
                o().keepalive_interval(Duration::ZERO),
            ),
            ("keepalive_max = usize::MAX", o().keepalive_max(usize::MAX)),
            ("keepalive_max = 0", o().keepalive_max(0)),
            ("max_channels = usize::MAX", o().max_channels(usize::MAX)),
            ("max_channels = 0", o().max_channels(0)),
        ];
        let mut results = Vec::new();
        for (what, options) in cases {
            // The SSH factory cannot refuse its options: each must work.
            let outcome = match run_case(ssh_scenario(options)).await {
                Outcome::Refused(message) => Outcome::Failed(format!("refused: {message}")),
                other => other,
            };
            results.push((format!("SshOptions: {what}"), Vec::new(), outcome));
        }
        judge(results);
    }
}
