//! A programmable fault plugin: connections that fail, drop, hang and panic on command, with a
//! ledger of what each instance really did, so tests can check the supervisor's counters and
//! its close-exactly-once promise against the truth.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::connection::{
    CommandError, CommandOutput, CommandRunner, Connection, ConnectionFactory, ConnectionKey,
    FailureKind, LossNotifier, OpenError, ResolvedConnectionParams,
};

/// What the fault plugin's connections really did, counted by the connections themselves.
#[derive(Debug, Default)]
pub struct FaultLedger {
    /// Instances the factory made.
    pub created: AtomicUsize,
    /// Calls to `open` (the supervisor may time some out).
    pub open_attempts: AtomicUsize,
    /// Opens that succeeded.
    pub opened: AtomicUsize,
    /// Closes that completed: counted when `close` returns, so a test that sees the count
    /// knows the close finished.
    pub closed: AtomicUsize,
    /// Closes that started but never returned: the supervisor stopped waiting for them (its
    /// close timeout) or their actor was killed. Every close is counted once, here or in
    /// `closed`.
    pub close_abandoned: AtomicUsize,
    /// `close` called on an already closed instance (a supervisor bug if ever non-zero).
    pub closed_twice: AtomicUsize,
    /// Instances dropped without `close` (a supervisor bug if ever non-zero, except for
    /// actors killed after their close timeout).
    pub dropped_unclosed: AtomicUsize,
    /// Commands that started.
    pub commands_started: AtomicUsize,
    /// Commands that completed successfully.
    pub commands_ok: AtomicUsize,
    /// Scripted panics that fired.
    pub panics: AtomicUsize,
    /// Opens running right now, and the most that ever ran at once.
    pub opens_in_flight: AtomicUsize,
    /// The most opens that ran at once.
    pub max_opens_in_flight: AtomicUsize,
    /// Commands running right now, on every connection.
    pub commands_in_flight: AtomicUsize,
    /// The most commands that ran at once.
    pub max_commands_in_flight: AtomicUsize,
}

impl FaultLedger {
    /// Reads one counter.
    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

/// The script for one host; applies to every instance for that host, present and future.
#[derive(Default, Debug)]
struct HostScript {
    /// Opens fail (kind, remaining count; `None` count = until cleared).
    fail_opens: Option<(FailureKind, Option<usize>)>,
    open_delay: Duration,
    hang_opens: bool,
    hang_close: bool,
    panic_next_command: bool,
    panic_every_command: bool,
    panic_next_health_check: bool,
    panic_in_command_runner: bool,
    /// The session ends (reported to the supervisor) after this many more commands.
    lose_after_commands: Option<usize>,
    /// Live sessions, so the test can drop them from outside.
    sessions: Vec<Session>,
    /// Commands run concurrently through a [`CommandRunner`], at most this many at once.
    concurrent_commands: Option<usize>,
}

#[derive(Clone, Debug)]
struct Session {
    alive: Arc<AtomicBool>,
    dropped: Arc<Notify>,
    notifier: Option<LossNotifier>,
}

#[derive(Debug)]
struct Shared {
    plugin_name: String,
    ledger: Arc<FaultLedger>,
    hosts: Mutex<HashMap<String, HostScript>>,
}

impl Shared {
    // A poisoned lock only means a scripted panic happened while it was held, which the
    // scripts never do; recovering keeps the test's own assertions meaningful.
    fn hosts(&self) -> MutexGuard<'_, HashMap<String, HostScript>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with_host<T>(&self, host: &str, f: impl FnOnce(&mut HostScript) -> T) -> T {
        f(self.hosts().entry(host.to_owned()).or_default())
    }
}

/// A plugin for tests whose connections do what the test scripts, per host.
///
/// Commands: `echo TEXT` answers `TEXT`, `sleep MS` waits (and fails with `ConnectionLost` if
/// the session is dropped meanwhile), anything else answers `ok: COMMAND`.
#[derive(Clone)]
pub struct FaultPlugin {
    shared: Arc<Shared>,
}

impl fmt::Debug for FaultPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultPlugin")
            .field("plugin_name", &self.shared.plugin_name)
            .field("ledger", &self.shared.ledger)
            .finish_non_exhaustive()
    }
}

impl FaultPlugin {
    /// A fault plugin serving `plugin_name`; the factory returns `None` for other names.
    pub fn new(plugin_name: impl Into<String>) -> Self {
        Self {
            shared: Arc::new(Shared {
                plugin_name: plugin_name.into(),
                ledger: Arc::new(FaultLedger::default()),
                hosts: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The factory to give the supervisor.
    pub fn factory(&self) -> Arc<ConnectionFactory> {
        let shared = self.shared.clone();
        Arc::new(move |key: &ConnectionKey| {
            (key.plugin_name == shared.plugin_name).then(|| {
                shared.ledger.created.fetch_add(1, Ordering::SeqCst);
                Box::new(FaultConnection {
                    host: key.hostname.clone(),
                    shared: shared.clone(),
                    session: None,
                    closed: false,
                    commands: Arc::new(AtomicUsize::new(0)),
                }) as Box<dyn Connection>
            })
        })
    }

    /// The key of `host` for this plugin.
    pub fn key(&self, host: &str) -> ConnectionKey {
        ConnectionKey::new(host, self.shared.plugin_name.clone())
    }

    /// What the connections did so far.
    pub fn ledger(&self) -> &FaultLedger {
        &self.shared.ledger
    }

    /// The next `count` opens of `host` fail with `kind`.
    pub fn fail_next_opens(&self, host: &str, count: usize, kind: FailureKind) {
        self.shared
            .with_host(host, |script| script.fail_opens = Some((kind, Some(count))));
    }

    /// Every open of `host` fails with `kind` (`None`: opens work again).
    pub fn fail_opens(&self, host: &str, kind: Option<FailureKind>) {
        self.shared.with_host(host, |script| {
            script.fail_opens = kind.map(|kind| (kind, None))
        });
    }

    /// Opens of `host` take this long.
    pub fn open_delay(&self, host: &str, delay: Duration) {
        self.shared
            .with_host(host, |script| script.open_delay = delay);
    }

    /// Opens of `host` never return (until set back to false).
    pub fn hang_opens(&self, host: &str, hang: bool) {
        self.shared
            .with_host(host, |script| script.hang_opens = hang);
    }

    /// Closes of `host` never return.
    pub fn hang_close(&self, host: &str, hang: bool) {
        self.shared
            .with_host(host, |script| script.hang_close = hang);
    }

    /// The next command on `host` panics.
    pub fn panic_on_next_command(&self, host: &str) {
        self.shared
            .with_host(host, |script| script.panic_next_command = true);
    }

    /// Every command on `host` panics (until set back to false).
    pub fn panic_on_every_command(&self, host: &str, panic: bool) {
        self.shared
            .with_host(host, |script| script.panic_every_command = panic);
    }

    /// The next health check on `host` panics.
    pub fn panic_on_next_health_check(&self, host: &str) {
        self.shared
            .with_host(host, |script| script.panic_next_health_check = true);
    }

    /// Asking a connection of `host` for its [`CommandRunner`] (after each open) panics, until
    /// set back to false.
    pub fn panic_in_command_runner(&self, host: &str, panic: bool) {
        self.shared
            .with_host(host, |script| script.panic_in_command_runner = panic);
    }

    /// Connections of `host` opened from now on run commands through a [`CommandRunner`], at
    /// most `limit` at once, the way the SSH plugin runs channels; `None` (the default) runs
    /// them one at a time through the connection's `execute_command`.
    pub fn concurrent_commands(&self, host: &str, limit: Option<usize>) {
        self.shared
            .with_host(host, |script| script.concurrent_commands = limit);
    }

    /// The session of `host` ends after `count` more successful commands, reported to the
    /// supervisor the way a real plugin reports an EOF.
    pub fn lose_after_commands(&self, host: &str, count: usize) {
        self.shared
            .with_host(host, |script| script.lose_after_commands = Some(count));
    }

    /// Drops every live session of `host` now and reports the loss; returns how many.
    pub fn drop_sessions(&self, host: &str) -> usize {
        self.end_sessions(host, true)
    }

    /// Kills every live session of `host` without telling anyone: only a health check or the
    /// next request finds out.
    pub fn kill_sessions_silently(&self, host: &str) -> usize {
        self.end_sessions(host, false)
    }

    fn end_sessions(&self, host: &str, report: bool) -> usize {
        let sessions = self
            .shared
            .with_host(host, |script| std::mem::take(&mut script.sessions));
        for session in &sessions {
            end_session(session, report, "scripted drop");
        }
        sessions.len()
    }
}

fn end_session(session: &Session, report: bool, reason: &str) {
    session.alive.store(false, Ordering::SeqCst);
    session.dropped.notify_waiters();
    if report && let Some(notifier) = &session.notifier {
        notifier.connection_lost(reason);
    }
}

/// One connection of the fault plugin.
#[derive(Debug)]
pub struct FaultConnection {
    host: String,
    shared: Arc<Shared>,
    session: Option<Session>,
    closed: bool,
    commands: Arc<AtomicUsize>,
}

impl FaultConnection {
    /// Commands this instance completed.
    pub fn commands(&self) -> usize {
        self.commands.load(Ordering::SeqCst)
    }

    fn alive(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|session| session.alive.load(Ordering::SeqCst))
    }
}

/// Counts an open or a command in flight for as long as it lives, however it ends (even
/// dropped by a timeout), and keeps the most seen at once.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(now: &'a AtomicUsize, max: &AtomicUsize) -> Self {
        let count = now.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(count, Ordering::SeqCst);
        Self(now)
    }
}

/// A close under way: counted as completed when it returns, or as abandoned if its future is
/// dropped first (the supervisor's close timeout, a killed actor).
struct PendingClose<'a>(Option<&'a FaultLedger>);

impl PendingClose<'_> {
    fn finished(mut self) {
        if let Some(ledger) = self.0.take() {
            ledger.closed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for PendingClose<'_> {
    fn drop(&mut self) {
        if let Some(ledger) = self.0.take() {
            ledger.close_abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Connection for FaultConnection {
    fn is_alive(&self) -> bool {
        self.alive()
    }

    fn set_loss_notifier(&mut self, notifier: LossNotifier) {
        let session = Session {
            alive: Arc::new(AtomicBool::new(false)),
            dropped: Arc::new(Notify::new()),
            notifier: Some(notifier),
        };
        self.session = Some(session);
    }

    async fn open(&mut self, _params: &ResolvedConnectionParams) -> Result<(), OpenError> {
        let ledger = self.shared.ledger.clone();
        ledger.open_attempts.fetch_add(1, Ordering::SeqCst);
        let _in_flight = InFlight::new(&ledger.opens_in_flight, &ledger.max_opens_in_flight);
        let (delay, hang, failure) = self.shared.with_host(&self.host, |script| {
            let failure = match &mut script.fail_opens {
                Some((kind, None)) => Some(*kind),
                Some((kind, Some(remaining))) if *remaining > 0 => {
                    *remaining -= 1;
                    Some(*kind)
                }
                _ => None,
            };
            (script.open_delay, script.hang_opens, failure)
        });
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if hang {
            std::future::pending::<()>().await;
        }
        if let Some(kind) = failure {
            return Err(OpenError::new(
                kind,
                format!("scripted {kind} for {}", self.host),
            ));
        }
        let session = self.session.get_or_insert_with(|| Session {
            alive: Arc::new(AtomicBool::new(false)),
            dropped: Arc::new(Notify::new()),
            notifier: None,
        });
        session.alive.store(true, Ordering::SeqCst);
        let session = session.clone();
        self.shared
            .with_host(&self.host, |script| script.sessions.push(session));
        ledger.opened.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn close(&mut self) {
        let ledger = self.shared.ledger.clone();
        if self.closed {
            ledger.closed_twice.fetch_add(1, Ordering::SeqCst);
        }
        self.closed = true;
        let pending = PendingClose(Some(&ledger));
        if let Some(session) = self.session.take() {
            // Like a real disconnect, closing ends commands still running on the session.
            end_session(&session, false, "closed");
            self.shared.with_host(&self.host, |script| {
                script
                    .sessions
                    .retain(|live| !Arc::ptr_eq(&live.alive, &session.alive))
            });
        }
        if self
            .shared
            .with_host(&self.host, |script| script.hang_close)
        {
            std::future::pending::<()>().await;
        }
        pending.finished();
    }

    async fn health_check(&mut self) -> Result<(), String> {
        let panic_now = self.shared.with_host(&self.host, |script| {
            std::mem::take(&mut script.panic_next_health_check)
        });
        if panic_now {
            self.shared.ledger.panics.fetch_add(1, Ordering::SeqCst);
            panic!("scripted panic in a health check on {}", self.host);
        }
        if self.alive() {
            Ok(())
        } else {
            Err("is_alive() returned false".to_owned())
        }
    }

    async fn execute_command(&mut self, command: &str) -> Result<String, CommandError> {
        let session = self.session.clone();
        run_command(&self.shared, &self.host, session, &self.commands, command).await
    }

    fn command_runner(&self) -> Option<(Arc<dyn CommandRunner>, usize)> {
        let (limit, panic_now) = self.shared.with_host(&self.host, |script| {
            (script.concurrent_commands, script.panic_in_command_runner)
        });
        if panic_now {
            self.shared.ledger.panics.fetch_add(1, Ordering::SeqCst);
            panic!("scripted panic in command_runner on {}", self.host);
        }
        let limit = limit?;
        let runner = FaultRunner {
            shared: self.shared.clone(),
            host: self.host.clone(),
            session: self.session.clone()?,
            commands: self.commands.clone(),
        };
        Some((Arc::new(runner), limit))
    }
}

/// The fault plugin's commands run concurrently on one session.
struct FaultRunner {
    shared: Arc<Shared>,
    host: String,
    session: Session,
    commands: Arc<AtomicUsize>,
}

#[async_trait]
impl CommandRunner for FaultRunner {
    async fn run(&self, command: &str) -> Result<CommandOutput, CommandError> {
        let session = Some(self.session.clone());
        let stdout =
            run_command(&self.shared, &self.host, session, &self.commands, command).await?;
        Ok(CommandOutput {
            stdout,
            ..CommandOutput::default()
        })
    }

    fn is_alive(&self) -> bool {
        self.session.alive.load(Ordering::SeqCst)
    }
}

/// One command of the script language (see [`FaultPlugin`]), on `session`.
async fn run_command(
    shared: &Shared,
    host: &str,
    session: Option<Session>,
    completed: &AtomicUsize,
    command: &str,
) -> Result<String, CommandError> {
    let ledger = &shared.ledger;
    let Some(session) = session.filter(|s| s.alive.load(Ordering::SeqCst)) else {
        return Err(CommandError::ConnectionLost("not open".into()));
    };
    ledger.commands_started.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::new(&ledger.commands_in_flight, &ledger.max_commands_in_flight);
    let panic_now = shared.with_host(host, |script| {
        let now = script.panic_next_command || script.panic_every_command;
        script.panic_next_command = false;
        now
    });
    if panic_now {
        ledger.panics.fetch_add(1, Ordering::SeqCst);
        panic!("scripted panic in a command on {host}");
    }
    let output = if let Some(ms) = command.strip_prefix("sleep ") {
        let ms = ms.trim().parse::<u64>().map_err(|e| e.to_string())?;
        let dropped = session.dropped.notified();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => String::new(),
            _ = dropped => {
                return Err(CommandError::ConnectionLost("session dropped mid-command".into()));
            }
        }
    } else if let Some(text) = command.strip_prefix("echo ") {
        text.to_owned()
    } else {
        format!("ok: {command}")
    };
    if !session.alive.load(Ordering::SeqCst) {
        return Err(CommandError::ConnectionLost(
            "session dropped mid-command".into(),
        ));
    }
    completed.fetch_add(1, Ordering::SeqCst);
    ledger.commands_ok.fetch_add(1, Ordering::SeqCst);
    let lose_now = shared.with_host(host, |script| match &mut script.lose_after_commands {
        Some(0) | None => false,
        Some(remaining) => {
            *remaining -= 1;
            *remaining == 0
        }
    });
    if lose_now {
        shared.with_host(host, |script| {
            script.lose_after_commands = None;
            script
                .sessions
                .retain(|live| !Arc::ptr_eq(&live.alive, &session.alive));
        });
        end_session(&session, true, "scripted loss after commands");
    }
    Ok(output)
}

impl Drop for FaultConnection {
    fn drop(&mut self) {
        if !self.closed {
            self.shared
                .ledger
                .dropped_unclosed
                .fetch_add(1, Ordering::SeqCst);
        }
    }
}
