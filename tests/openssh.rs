//! The SSH plugin through the supervisor against a real OpenSSH server: the fixture that
//! `scripts/sshd-fixture.sh start` runs on 127.0.0.1 (as root; `.ci/run` starts it).
//!
//! The fixture is found through `${SSHD_FIXTURE_DIR:-/tmp/cs-sshd-fixture}/fixture.env`. When
//! that file is missing, each test prints a note and passes, unless `CI` is set: then it fails,
//! so CI cannot go green without having talked to OpenSSH.
//!
//! Every test uses the one sshd and one of them stops and restarts it, so each test holds
//! [`LOCK`] for its whole body. Every wait for a state is a wait for a lifecycle event, bounded.

#![cfg(all(feature = "ssh", feature = "testing"))]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use connection_supervisor::ssh::{self, HostKeyPolicy, PLUGIN_NAME, PrivateKeySource, SshOptions};
use connection_supervisor::testing::generate_ed25519_key;
use connection_supervisor::{
    Backoff, CommandError, CommandOutput, ConnectionCounters, ConnectionKey, ConnectionManager,
    ConnectionPolicy, ConnectionState, Error, EventKind, EventStream, FailureKind,
    ResolvedConnectionParams, SupervisorConfig, Timeouts,
};
use tokio::sync::{Mutex, MutexGuard};

/// Serialises the tests of this file: they share one sshd, and one of them restarts it.
static LOCK: Mutex<()> = Mutex::const_new(());

/// Bound on every wait for an event.
const WAIT: Duration = Duration::from_secs(10);

const NOT_RUNNING: &str = "OpenSSH fixture not running: run scripts/sshd-fixture.sh start";

/// What `fixture.env` says about the running sshd.
#[derive(Debug)]
struct Fixture {
    dir: PathBuf,
    host: String,
    port: u16,
    user: String,
    password: String,
    key: PathBuf,
    known_hosts: PathBuf,
}

impl Fixture {
    fn dir() -> PathBuf {
        match std::env::var_os("SSHD_FIXTURE_DIR") {
            Some(dir) if !dir.is_empty() => dir.into(),
            _ => "/tmp/cs-sshd-fixture".into(),
        }
    }

    /// `None` when there is no `fixture.env` (the fixture is not started); a file that is there
    /// but malformed fails the test.
    fn load(dir: &Path) -> Option<Self> {
        let path = dir.join("fixture.env");
        let text = std::fs::read_to_string(&path).ok()?;
        let vars: HashMap<&str, &str> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        let var = |name: &str| {
            vars.get(name)
                .copied()
                .unwrap_or_else(|| panic!("{} has no {name}", path.display()))
        };
        Some(Self {
            dir: dir.to_owned(),
            host: var("SSHD_HOST").to_owned(),
            port: var("SSHD_PORT")
                .parse()
                .expect("SSHD_PORT is a port number"),
            user: var("SSHD_USER").to_owned(),
            password: var("SSHD_PASSWORD").to_owned(),
            key: var("SSHD_KEY").into(),
            known_hosts: var("SSHD_KNOWN_HOSTS").into(),
        })
    }

    /// sshd's log (`LogLevel VERBOSE`), appended to across restarts.
    fn log(&self) -> PathBuf {
        self.dir.join("sshd.log")
    }

    /// Rejected password attempts for the fixture's user that sshd has logged so far.
    fn failed_passwords(&self) -> usize {
        let needle = format!("Failed password for {} from ", self.user);
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(&needle))
            .count()
    }

    /// Password login, nothing else.
    fn password_params(&self) -> ResolvedConnectionParams {
        ResolvedConnectionParams {
            hostname: self.host.clone(),
            port: Some(self.port),
            username: Some(self.user.clone()),
            password: Some(self.password.clone()),
            ..ResolvedConnectionParams::default()
        }
    }

    /// Key login with the key named in the host's extras, no password.
    fn key_params(&self) -> ResolvedConnectionParams {
        ResolvedConnectionParams {
            password: None,
            extras: Some(
                [(
                    "private_key_path".to_owned(),
                    serde_json::Value::String(self.key.display().to_string()),
                )]
                .into(),
            ),
            ..self.password_params()
        }
    }

    /// Options that trust only the fixture's host key; keepalives as by default.
    fn strict_options(&self) -> SshOptions {
        options(HostKeyPolicy::Strict(self.known_hosts.clone()))
    }
}

/// Takes [`LOCK`] and reads the fixture. `None` means skip (the note is printed); with `CI` set
/// a missing fixture fails the test instead.
async fn setup(test: &str) -> Option<(MutexGuard<'static, ()>, Fixture)> {
    let lock = LOCK.lock().await;
    let dir = Fixture::dir();
    // Read under the lock: the restart test removes fixture.env while the server is down.
    if let Some(fixture) = Fixture::load(&dir) {
        return Some((lock, fixture));
    }
    let missing = dir.join("fixture.env");
    if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
        panic!("{NOT_RUNNING} (no {}; CI is set)", missing.display());
    }
    eprintln!("skipping {test}: {NOT_RUNNING} (no {})", missing.display());
    None
}

fn options(host_key_policy: HostKeyPolicy) -> SshOptions {
    SshOptions::default().host_key_policy(host_key_policy)
}

/// The SSH plugin's counters, which every test here has by the time it asks.
async fn ssh_counters(manager: &ConnectionManager) -> ConnectionCounters {
    let counters = manager.connection_counters_for(PLUGIN_NAME).await.unwrap();
    counters.expect("the ssh plugin created a connection")
}

fn key() -> ConnectionKey {
    ConnectionKey::new("openssh", PLUGIN_NAME)
}

/// A supervisor with the SSH factory, quick reconnects and bounds well inside the test's
/// budget, and a subscription to its events.
async fn manager(options: SshOptions) -> (ConnectionManager, EventStream) {
    let policy = ConnectionPolicy::default()
        .timeouts(
            Timeouts::default()
                .open(Duration::from_secs(10))
                .request(Duration::from_secs(10))
                .close(Duration::from_secs(5)),
        )
        .backoff(
            Backoff::default()
                .initial(Duration::from_millis(200))
                .max(Duration::from_secs(1)),
        );
    let config = SupervisorConfig::default()
        .factory(ssh::factory(options))
        .policy(policy);
    let manager = ConnectionManager::spawn(config).await.unwrap();
    let events = manager.subscribe().await.unwrap();
    (manager, events)
}

/// Runs `scripts/sshd-fixture.sh ACTION DIR` (with `SSHD_FIXTURE_PORT=port` when given),
/// returning a description of the failure if it failed.
fn fixture_script(action: &str, dir: &Path, port: Option<u16>) -> Result<(), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sshd-fixture.sh");
    let mut command = std::process::Command::new("bash");
    command.arg(&script).arg(action).arg(dir);
    match port {
        Some(port) => command.env("SSHD_FIXTURE_PORT", port.to_string()),
        None => command.env_remove("SSHD_FIXTURE_PORT"),
    };
    let output = command
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "sshd-fixture.sh {action} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Brings a stopped fixture back on its port when dropped, so a failing assertion cannot leave
/// it down for the other tests (or for whoever started it).
struct RestartOnDrop<'a> {
    fixture: &'a Fixture,
    restarted: bool,
}

impl RestartOnDrop<'_> {
    /// Starts the fixture again on the same port now, failing the test if it cannot.
    async fn restart(&mut self) {
        let (dir, port) = (self.fixture.dir.clone(), self.fixture.port);
        tokio::task::spawn_blocking(move || fixture_script("start", &dir, Some(port)))
            .await
            .unwrap()
            .unwrap();
        self.restarted = true;
    }
}

impl Drop for RestartOnDrop<'_> {
    fn drop(&mut self) {
        if !self.restarted {
            // Never panic here: this may run while the test is already unwinding.
            if let Err(error) = fixture_script("start", &self.fixture.dir, Some(self.fixture.port))
            {
                eprintln!("could not bring the OpenSSH fixture back: {error}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_report_stdout_stderr_and_exit_status_with_password_and_key_auth() {
    let Some((_lock, fx)) = setup("commands_report_stdout_stderr_and_exit_status").await else {
        return;
    };
    let key_in_options = fx
        .strict_options()
        .private_key(PrivateKeySource::Path(fx.key.clone()));
    let mut no_credentials = fx.password_params();
    no_credentials.password = None;
    let logins = [
        ("password", fx.strict_options(), fx.password_params()),
        ("key from extras", fx.strict_options(), fx.key_params()),
        ("key from options", key_in_options, no_credentials),
    ];
    for (login, options, params) in logins {
        let (manager, _events) = manager(options).await;
        let handle = manager
            .open_connection(&key(), &params)
            .await
            .unwrap_or_else(|e| panic!("{login}: {e}"))
            .expect("the ssh factory serves \"ssh\"");

        let hello = handle.run_command("echo hello").await.unwrap();
        assert_eq!(
            hello,
            CommandOutput {
                stdout: "hello\n".into(),
                stderr: String::new(),
                exit_status: Some(0),
            },
            "{login}"
        );
        let failing = "echo oops 1>&2; exit 3";
        let oops = handle.run_command(failing).await.unwrap();
        assert_eq!(
            oops,
            CommandOutput {
                stdout: String::new(),
                stderr: "oops\n".into(),
                exit_status: Some(3),
            },
            "{login}"
        );
        assert_eq!(
            handle.execute_command("echo hello").await.unwrap(),
            "hello\n"
        );
        let error = handle.execute_command(failing).await.unwrap_err();
        assert!(
            matches!(
                &error,
                Error::Command {
                    source: CommandError::ExitStatus { status: 3, stderr },
                    ..
                } if stderr == "oops\n"
            ),
            "{login}: {error:?}"
        );

        let counters = ssh_counters(&manager).await;
        assert_eq!(
            (counters.open_calls, counters.failed_open_calls),
            (1, 0),
            "{login}: {counters:?}"
        );
        manager.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_host_key_checking_accepts_the_known_key_only() {
    let Some((_lock, fx)) = setup("strict_host_key_checking_accepts_the_known_key_only").await
    else {
        return;
    };
    let scratch = tempdir("host-keys");

    // The fixture's own known_hosts: accepted.
    let (manager_ok, _) = manager(fx.strict_options()).await;
    let handle = manager_ok
        .open_connection(&key(), &fx.password_params())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handle.execute_command("echo in").await.unwrap(), "in\n");
    manager_ok.shutdown().await.unwrap();

    // Another ed25519 key recorded for [127.0.0.1]:PORT, in the fixture's format: a changed key.
    let impostor = generate_ed25519_key().unwrap();
    let impostor = impostor.public_key().to_openssh().unwrap();
    let changed = scratch.join("known_hosts_changed");
    std::fs::write(
        &changed,
        format!("[{}]:{} {}\n", fx.host, fx.port, impostor.trim()),
    )
    .unwrap();
    // An empty file, and no file at all: an unknown host.
    let empty = scratch.join("known_hosts_empty");
    std::fs::write(&empty, "").unwrap();
    let absent = scratch.join("no_such_known_hosts");

    for (case, path) in [("changed", changed), ("empty", empty), ("absent", absent)] {
        let (manager, _) = manager(options(HostKeyPolicy::Strict(path))).await;
        let error = manager
            .open_connection(&key(), &fx.password_params())
            .await
            .unwrap_err();
        assert_eq!(
            error.failure_kind(),
            Some(FailureKind::HostKey),
            "{case}: {error}"
        );
        let status = manager.connection_status(&key()).await.unwrap().unwrap();
        assert_eq!(status.state, ConnectionState::Failed, "{case}: {status:?}");
        assert_eq!(
            status.last_error.map(|e| e.kind),
            Some(FailureKind::HostKey),
            "{case}"
        );
        manager.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_auth_failure_tried_once() {
    let Some((_lock, fx)) = setup("a_wrong_password_is_an_auth_failure_tried_once").await else {
        return;
    };
    let (manager, mut events) = manager(fx.strict_options()).await;
    let mut wrong = fx.password_params();
    wrong.password = Some("not-the-password-hunter2".into());
    let before = fx.failed_passwords();

    let error = manager.open_connection(&key(), &wrong).await.unwrap_err();
    assert_eq!(error.failure_kind(), Some(FailureKind::Auth), "{error}");
    assert!(!error.to_string().contains("hunter2"), "{error}");
    assert!(!format!("{error:?}").contains("hunter2"), "{error:?}");

    // sshd's privileged monitor logs the failure after it has answered the session process,
    // so the line can land a moment after the client saw the rejection; sshd offers nothing to
    // wait on but its log, so poll it (bounded).
    let deadline = Instant::now() + WAIT;
    while fx.failed_passwords() < before + 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fx.failed_passwords() - before, 1, "one rejected attempt");

    // The stream still holds the first attempt's events: consume them before looking for more.
    events
        .wait_for_key(&key(), WAIT, |kind| {
            matches!(kind, EventKind::OpenFailed { .. })
        })
        .await
        .unwrap();

    // Now prove the ABSENCE of retries, which no event can signal: give the supervisor two
    // seconds of real time (ten times the first backoff, twice its cap) to retry on its own.
    // The wait doubles as a check that it schedules no attempt either.
    let retry = events
        .wait_for_key(&key(), Duration::from_secs(2), |kind| {
            matches!(
                kind,
                EventKind::Opening | EventKind::Reconnecting { .. } | EventKind::OpenFailed { .. }
            )
        })
        .await;
    assert!(retry.is_err(), "retried after an auth failure: {retry:?}");
    assert_eq!(
        fx.failed_passwords() - before,
        1,
        "sshd saw another attempt"
    );

    let status = manager.connection_status(&key()).await.unwrap().unwrap();
    assert_eq!(status.state, ConnectionState::Failed, "{status:?}");
    assert_eq!(status.last_error.map(|e| e.kind), Some(FailureKind::Auth));
    let counters = ssh_counters(&manager).await;
    assert_eq!(
        (counters.open_calls, counters.failed_open_calls),
        (0, 1),
        "{counters:?}"
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_reported_lost_and_reconnected_when_it_returns() {
    let Some((_lock, fx)) =
        setup("a_killed_server_is_reported_lost_and_reconnected_when_it_returns").await
    else {
        return;
    };
    let (manager, mut events) = manager(fx.strict_options()).await;
    let handle = manager
        .open_connection(&key(), &fx.password_params())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        handle.execute_command("echo before").await.unwrap(),
        "before\n"
    );

    // Kill sshd and every session it serves. From here on the guard restarts it whatever
    // happens.
    let mut server = RestartOnDrop {
        fixture: &fx,
        restarted: false,
    };
    let dir = fx.dir.clone();
    tokio::task::spawn_blocking(move || fixture_script("stop", &dir, None))
        .await
        .unwrap()
        .unwrap();

    let lost = events
        .wait_for_key(&key(), WAIT, |kind| matches!(kind, EventKind::Lost { .. }))
        .await
        .unwrap();
    eprintln!("lost: {:?}", lost.kind);
    // Nothing listens while the server is down: reconnect attempts are refused, with backoff.
    let refused = events
        .wait_for_key(&key(), WAIT, |kind| {
            matches!(kind, EventKind::OpenFailed { .. })
        })
        .await
        .unwrap();
    assert_eq!(
        refused.kind.failure().map(|f| f.kind),
        Some(FailureKind::Refused),
        "{refused:?}"
    );

    server.restart().await;
    let reconnected = events
        .wait_for_key(&key(), WAIT, |kind| {
            matches!(kind, EventKind::Reconnected { .. })
        })
        .await
        .unwrap();
    assert!(
        matches!(reconnected.kind, EventKind::Reconnected { attempts } if attempts >= 2),
        "{reconnected:?}"
    );
    assert_eq!(
        handle.run_command("echo after").await.unwrap(),
        CommandOutput {
            stdout: "after\n".into(),
            stderr: String::new(),
            exit_status: Some(0),
        }
    );

    let counters = ssh_counters(&manager).await;
    assert!(counters.losses >= 1, "{counters:?}");
    assert!(counters.reconnects >= 1, "{counters:?}");
    assert!(counters.open_calls >= 2, "{counters:?}");
    assert!(counters.failed_open_calls >= 1, "{counters:?}");
    let status = manager.connection_status(&key()).await.unwrap().unwrap();
    assert_eq!(status.state, ConnectionState::Open, "{status:?}");
    manager.shutdown().await.unwrap();
}

/// The processes of `user` whose argv[0] is `marker` (a command run as `exec -a MARKER ...`,
/// so that concurrent runs of this test never see each other's), read from /proc: the server
/// is on this machine.
fn processes(user: &str, marker: &str) -> Vec<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let uid = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&user))
        .and_then(|fields| fields.get(2).map(|uid| uid.to_string()))
        .unwrap_or_else(|| panic!("no user {user} in /etc/passwd"));
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go while we look: one that is gone is not there.
        let (Ok(cmdline), Ok(status)) = (
            std::fs::read(entry.path().join("cmdline")),
            std::fs::read_to_string(entry.path().join("status")),
        ) else {
            continue;
        };
        let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
        let real_uid = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next());
        if argv0 == marker.as_bytes() && real_uid == Some(uid.as_str()) {
            found.push(pid);
        }
    }
    found
}

/// Kills what a failed run of the test left behind, so a `sleep` does not outlive it.
struct KillOnDrop {
    user: String,
    markers: Vec<String>,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for marker in &self.markers {
            for pid in processes(&self.user, marker) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_commands_leave_no_process_and_no_channel_behind() {
    let Some((_lock, fx)) =
        setup("timed_out_commands_leave_no_process_and_no_channel_behind").await
    else {
        return;
    };
    let (manager, _events) = manager(fx.strict_options()).await;
    let handle = manager
        .open_connection(&key(), &fx.password_params())
        .await
        .unwrap()
        .unwrap();
    // `cat` waits for stdin, which the plugin never sends, and ends when its channel closes;
    // `sleep` ends only when signalled. sshd allows 10 channels per connection (MaxSessions),
    // so ten left behind would make every later command fail.
    let programs = ["cat", "sleep 600"];
    let markers: Vec<String> = programs
        .iter()
        .map(|program| {
            let name = program.split(' ').next().unwrap_or_default();
            format!("cs-abandoned-{name}-{}", std::process::id())
        })
        .collect();
    let _cleanup = KillOnDrop {
        user: fx.user.clone(),
        markers: markers.clone(),
    };
    for (program, marker) in programs.iter().zip(&markers) {
        let command = format!("exec -a {marker} {program}");
        for _ in 0..10 {
            let error = handle
                .execute_command_within(&command, Duration::from_millis(300))
                .await
                .unwrap_err();
            assert!(
                matches!(error, Error::Timeout { .. }),
                "{program}: {error:?}"
            );
        }
        // sshd publishes nothing when a process ends: look at the machine (bounded).
        let deadline = Instant::now() + WAIT;
        let mut left = processes(&fx.user, marker);
        while !left.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = processes(&fx.user, marker);
        }
        assert!(left.is_empty(), "{program}: still running: {left:?}");
        assert_eq!(
            handle.execute_command("echo next").await.unwrap(),
            "next\n",
            "{program}"
        );
    }
    let counters = ssh_counters(&manager).await;
    assert_eq!(
        (counters.open_calls, counters.losses),
        (1, 0),
        "one session throughout: {counters:?}"
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_right_after_a_burst_of_timed_out_ones_are_not_refused() {
    let Some((_lock, fx)) =
        setup("commands_right_after_a_burst_of_timed_out_ones_are_not_refused").await
    else {
        return;
    };
    let (manager, _events) = manager(fx.strict_options()).await;
    let handle = manager
        .open_connection(&key(), &fx.password_params())
        .await
        .unwrap()
        .unwrap();
    let marker = format!("cs-burst-sleep-{}", std::process::id());
    let _cleanup = KillOnDrop {
        user: fx.user.clone(),
        markers: vec![marker.clone()],
    };
    let slow = format!("exec -a {marker} sleep 600");
    // Eight commands (the plugin's channel limit) time out together and eight more follow at
    // once. sshd frees a session's place in MaxSessions (10) only once its process is reaped,
    // a moment after the signal: the followers must wait for that, not be refused.
    for round in 0..3 {
        let runs = (0..8).map(|_| handle.execute_command_within(&slow, Duration::from_millis(300)));
        for result in futures::future::join_all(runs).await {
            assert!(
                matches!(result, Err(Error::Timeout { .. })),
                "{round}: {result:?}"
            );
        }
        let runs = (0..8).map(|_| handle.execute_command("echo next"));
        for result in futures::future::join_all(runs).await {
            assert_eq!(result.unwrap(), "next\n", "round {round}");
        }
    }
    let deadline = Instant::now() + WAIT;
    while !processes(&fx.user, &marker).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(processes(&fx.user, &marker), Vec::<u32>::new());
    let counters = ssh_counters(&manager).await;
    assert_eq!(
        (counters.open_calls, counters.losses),
        (1, 0),
        "one session throughout: {counters:?}"
    );
    manager.shutdown().await.unwrap();
}

/// A fresh directory under the temp dir for one test's files.
fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cs-openssh-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
