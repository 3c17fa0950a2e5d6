//! The SSH plugin through the supervisor, against the embedded SSH server (real SSH on
//! loopback): commands, host keys, authentication, loss and reconnect, parallel channels,
//! fan-out. Every wait for a state is a wait for an event, bounded.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use connection_supervisor::ssh::{self, HostKeyPolicy, PrivateKeySource, SshOptions};
use connection_supervisor::testing::{
    DEFAULT_PASSWORD, DEFAULT_USERNAME, SshTestServer, SshTestServerConfig, generate_ed25519_key,
    write_known_hosts,
};
use connection_supervisor::{
    Backoff, CommandError, ConnectionKey, ConnectionManager, ConnectionPolicy, ConnectionState,
    Error, EventKind, EventStream, FailureKind, ResolvedConnectionParams, SupervisorConfig,
};

const WAIT: Duration = Duration::from_secs(20);

/// A fresh directory for this test's files (known_hosts, keys).
fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cs-ssh-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn device(name: &str) -> SshTestServer {
    SshTestServer::start(SshTestServerConfig {
        hostname: name.to_owned(),
        ..SshTestServerConfig::default()
    })
    .await
    .unwrap()
}

fn known_hosts(servers: &[&SshTestServer]) -> PathBuf {
    let path = scratch_dir().join("known_hosts");
    write_known_hosts(&path, servers.iter().copied()).unwrap();
    path
}

fn options(policy: HostKeyPolicy) -> SshOptions {
    SshOptions::default()
        .host_key_policy(policy)
        .keepalive_interval(Some(Duration::from_secs(5)))
}

fn params(server: &SshTestServer) -> ResolvedConnectionParams {
    ResolvedConnectionParams {
        hostname: "127.0.0.1".into(),
        port: Some(server.port()),
        username: Some(DEFAULT_USERNAME.into()),
        password: Some(DEFAULT_PASSWORD.into()),
        ..ResolvedConnectionParams::default()
    }
}

fn key(name: &str) -> ConnectionKey {
    ConnectionKey::new(name, ssh::PLUGIN_NAME)
}

async fn manager(options: SshOptions) -> (ConnectionManager, EventStream) {
    let policy = ConnectionPolicy::default().backoff(
        Backoff::default()
            .initial(Duration::from_millis(50))
            .max(Duration::from_millis(200))
            .multiplier(2.0)
            .jitter(0.2),
    );
    let config = SupervisorConfig::default()
        .factory(ssh::factory(options))
        .policy(policy);
    let manager = ConnectionManager::spawn(config).await.unwrap();
    let events = manager.subscribe().await.unwrap();
    (manager, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_return_stdout_stderr_and_exit_status() {
    let server = device("core-sw1").await;
    let (manager, _events) = manager(options(HostKeyPolicy::Strict(known_hosts(&[&server])))).await;
    let handle = manager
        .open_connection(&key("core-sw1"), &params(&server))
        .await
        .unwrap()
        .unwrap();

    let version = handle.run_command("show version").await.unwrap();
    assert!(version.stdout.contains("core-sw1"), "{version:?}");
    assert_eq!(version.exit_status, Some(0));
    assert_eq!(
        handle.execute_command("hostname").await.unwrap(),
        "core-sw1\n"
    );
    assert_eq!(
        handle.execute_command("echo hi there").await.unwrap(),
        "hi there\n"
    );

    let failed = handle.run_command("exit 3").await.unwrap();
    assert_eq!(failed.exit_status, Some(3));
    let stderr = handle.run_command("stderr oops").await.unwrap();
    assert_eq!(
        (stderr.stderr.as_str(), stderr.exit_status),
        ("oops\n", Some(1))
    );
    let error = handle.execute_command("stderr oops").await.unwrap_err();
    assert!(
        matches!(&error, Error::Command { source: CommandError::ExitStatus { status: 1, stderr }, .. } if stderr == "oops\n"),
        "{error:?}"
    );
    let unknown = handle.run_command("reload in 5").await.unwrap();
    assert_eq!(unknown.exit_status, Some(127));

    manager.shutdown().await.unwrap();
    // Closed politely: the server sees the session go (it notices asynchronously, so wait for
    // it, bounded).
    let deadline = Instant::now() + WAIT;
    while server.session_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.session_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_keys_are_verified_strictly_by_default() {
    let server = device("r1").await;
    let stranger = device("stranger").await; // same kind of key, different identity

    // The right known_hosts: accepted.
    let (manager_ok, _) = manager(options(HostKeyPolicy::Strict(known_hosts(&[&server])))).await;
    manager_ok
        .open_connection(&key("r1"), &params(&server))
        .await
        .unwrap();
    manager_ok.shutdown().await.unwrap();

    // An empty one: unknown host, refused, permanent.
    let empty = scratch_dir().join("known_hosts");
    std::fs::write(&empty, "").unwrap();
    let (manager_unknown, _) = manager(options(HostKeyPolicy::Strict(empty))).await;
    let error = manager_unknown
        .open_connection(&key("r1"), &params(&server))
        .await
        .unwrap_err();
    assert_eq!(error.failure_kind(), Some(FailureKind::HostKey), "{error}");
    assert!(error.to_string().contains("is not in"), "{error}");
    manager_unknown.shutdown().await.unwrap();

    // Another key recorded for the same host and port: a changed key, refused.
    let changed = scratch_dir().join("known_hosts");
    let impostor = stranger.known_hosts_line().unwrap().replace(
        &format!("]:{} ", stranger.port()),
        &format!("]:{} ", server.port()),
    );
    std::fs::write(&changed, impostor + "\n").unwrap();
    let (manager_changed, _) = manager(options(HostKeyPolicy::Strict(changed))).await;
    let error = manager_changed
        .open_connection(&key("r1"), &params(&server))
        .await
        .unwrap_err();
    assert_eq!(error.failure_kind(), Some(FailureKind::HostKey));
    assert!(error.to_string().contains("CHANGED"), "{error}");
    manager_changed.shutdown().await.unwrap();

    // Accept-any, when asked for explicitly.
    let (manager_any, _) = manager(options(HostKeyPolicy::AcceptAny)).await;
    manager_any
        .open_connection(&key("r1"), &params(&server))
        .await
        .unwrap();
    manager_any.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_new_records_an_unknown_key_and_refuses_a_changed_one() {
    let server = device("r1").await;
    let port = server.port();
    let file = scratch_dir().join("known_hosts");
    let (manager, _) = manager(options(HostKeyPolicy::AcceptNew(file.clone()))).await;
    manager
        .open_connection(&key("r1"), &params(&server))
        .await
        .unwrap();
    let recorded = std::fs::read_to_string(&file).unwrap();
    assert!(
        recorded.contains(&format!("[127.0.0.1]:{port}")),
        "{recorded}"
    );
    manager.close_all_connections().await.unwrap();

    // The device is replaced by one with another host key on the same address.
    server.stop().await;
    let replacement = SshTestServer::start(SshTestServerConfig {
        port,
        ..SshTestServerConfig::default()
    })
    .await
    .unwrap();
    let error = manager
        .open_connection(&key("r1"), &params(&replacement))
        .await
        .unwrap_err();
    assert_eq!(error.failure_kind(), Some(FailureKind::HostKey));
    manager.shutdown().await.unwrap();
}

/// What is at `path`, to tell whether anything was written there: a file's size and
/// modification time (its bytes may be unreadable), or a directory's entries.
fn snapshot(path: &std::path::Path) -> String {
    let metadata = std::fs::metadata(path).unwrap();
    if metadata.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        names.sort();
        format!("{names:?}")
    } else {
        format!(
            "{} bytes, {:?}",
            metadata.len(),
            metadata.modified().unwrap()
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_new_refuses_when_the_known_hosts_file_cannot_be_read() {
    let server = device("r1").await;
    let port = server.port();
    let dir = scratch_dir();
    // An entry for this very host that cannot be parsed: its key is unknowable, not unknown.
    let corrupt = dir.join("known_hosts_corrupt");
    std::fs::write(
        &corrupt,
        format!("[127.0.0.1]:{port} ssh-ed25519 AAAA-not-a-key\n"),
    )
    .unwrap();
    let not_utf8 = dir.join("known_hosts_not_utf8");
    std::fs::write(&not_utf8, b"\xff\xfe[127.0.0.1] garbage\n").unwrap();
    let folder = dir.join("kh");
    std::fs::create_dir(&folder).unwrap();
    // Each with what the message must say about why.
    let mut cases = vec![
        ("corrupt entry", corrupt, "invalid"),
        ("not UTF-8", not_utf8, "UTF-8"),
        ("a directory", folder, "Is a directory"),
    ];
    // Unreadable by mode: only meaningful when not running as root, which reads it anyway.
    let unreadable = dir.join("known_hosts_unreadable");
    std::fs::write(&unreadable, "").unwrap();
    std::fs::set_permissions(
        &unreadable,
        std::os::unix::fs::PermissionsExt::from_mode(0o200),
    )
    .unwrap();
    if std::fs::read(&unreadable).is_err() {
        cases.push(("permission denied", unreadable, "Permission denied"));
    }

    for (case, path, reason) in cases {
        let before = snapshot(&path);
        let (manager, _) = manager(options(HostKeyPolicy::AcceptNew(path.clone()))).await;
        let error = manager
            .open_connection(&key("r1"), &params(&server))
            .await
            .unwrap_err();
        assert_eq!(
            error.failure_kind(),
            Some(FailureKind::HostKey),
            "{case}: {error}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&path.display().to_string()),
            "{case}: the path is not named: {message}"
        );
        assert!(
            message.contains("cannot read") && message.contains(reason),
            "{case}: the reason ({reason}) is not given: {message}"
        );
        assert_eq!(snapshot(&path), before, "{case}: something was written");
        manager.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_auth_from_options_or_from_the_hosts_extras() {
    let client_key = generate_ed25519_key().unwrap();
    let server = SshTestServer::start(SshTestServerConfig {
        password: None,
        authorized_key: Some(client_key.public_key().clone()),
        ..SshTestServerConfig::default()
    })
    .await
    .unwrap();
    let text = client_key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .unwrap()
        .to_string();
    let path = scratch_dir().join("id_ed25519");
    std::fs::write(&path, &text).unwrap();
    let mut no_password = params(&server);
    no_password.password = None;

    // In memory, from the options.
    let (manager_a, _) = manager(
        options(HostKeyPolicy::Strict(known_hosts(&[&server])))
            .private_key(PrivateKeySource::InMemory(text.clone())),
    )
    .await;
    let handle = manager_a
        .open_connection(&key("r1"), &no_password)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        handle.execute_command("hostname").await.unwrap(),
        "device\n"
    );
    manager_a.shutdown().await.unwrap();

    // A path, per host, from the extras.
    let (manager_b, _) = manager(options(HostKeyPolicy::Strict(known_hosts(&[&server])))).await;
    let mut with_key = no_password.clone();
    with_key.extras = Some(
        [(
            "private_key_path".to_owned(),
            serde_json::Value::String(path.display().to_string()),
        )]
        .into(),
    );
    manager_b
        .open_connection(&key("r1"), &with_key)
        .await
        .unwrap();
    // Neither key nor password: a clear auth error before any connection attempt.
    let error = manager_b
        .open_connection(&key("r2"), &no_password)
        .await
        .unwrap_err();
    assert_eq!(error.failure_kind(), Some(FailureKind::Auth));
    assert!(
        error.to_string().contains("no password or private key"),
        "{error}"
    );
    manager_b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_auth_failure_that_is_never_retried_in_a_loop() {
    let server = device("r1").await;
    let (manager, mut events) =
        manager(options(HostKeyPolicy::Strict(known_hosts(&[&server])))).await;
    let mut wrong = params(&server);
    wrong.password = Some("hunter2-wrong".into());
    let error = manager
        .open_connection(&key("r1"), &wrong)
        .await
        .unwrap_err();
    assert_eq!(error.failure_kind(), Some(FailureKind::Auth));
    assert!(
        !error.to_string().contains("hunter2"),
        "a secret in an error: {error}"
    );
    assert!(!format!("{error:?}").contains("hunter2"));
    assert_eq!(server.auth_attempts(), 1);

    // Credentials revoked while connected: the reconnect gives up after the permanent-failure
    // attempts instead of hammering the device.
    let handle = manager
        .open_connection(&key("r1"), &params(&server))
        .await
        .unwrap()
        .unwrap();
    let before = server.auth_attempts();
    server.set_reject_auth(true);
    server.drop_all_sessions().await;
    events
        .wait_for_key(&key("r1"), WAIT, |k| matches!(k, EventKind::GaveUp { .. }))
        .await
        .unwrap();
    assert_eq!(server.auth_attempts() - before, 2);
    // No further attempt comes, however long we wait for one (bounded here to 10× the backoff
    // cap).
    let another = events
        .wait_for_key(&key("r1"), Duration::from_secs(2), |k| {
            matches!(
                k,
                EventKind::Reconnecting { .. } | EventKind::OpenFailed { .. }
            )
        })
        .await;
    assert!(another.is_err(), "retried after giving up: {another:?}");
    assert_eq!(handle.status().state, ConnectionState::Failed);
    assert_eq!(server.auth_attempts() - before, 2);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_sessions_and_a_restarted_server_are_reconnected() {
    let server = device("r1").await;
    let (manager, mut events) =
        manager(options(HostKeyPolicy::Strict(known_hosts(&[&server])))).await;
    let handle = manager
        .open_connection(&key("r1"), &params(&server))
        .await
        .unwrap()
        .unwrap();

    // The device drops the session: russh reports it, the supervisor reconnects at once.
    server.drop_all_sessions().await;
    events
        .wait_for_key(&key("r1"), WAIT, |k| matches!(k, EventKind::Lost { .. }))
        .await
        .unwrap();
    events
        .wait_for_key(&key("r1"), WAIT, |k| {
            matches!(k, EventKind::Reconnected { .. })
        })
        .await
        .unwrap();
    assert_eq!(handle.execute_command("echo back").await.unwrap(), "back\n");

    // The device goes away for a while: refused attempts with backoff, then back.
    server.stop().await;
    events
        .wait_for_key(&key("r1"), WAIT, |k| matches!(k, EventKind::Lost { .. }))
        .await
        .unwrap();
    let refused = events
        .wait_for_key(&key("r1"), WAIT, |k| {
            matches!(k, EventKind::OpenFailed { .. })
        })
        .await
        .unwrap();
    assert_eq!(
        refused.kind.failure().map(|f| f.kind),
        Some(FailureKind::Refused)
    );
    server.restart().await.unwrap();
    events
        .wait_for_key(&key("r1"), WAIT, |k| {
            matches!(k, EventKind::Reconnected { .. })
        })
        .await
        .unwrap();
    assert_eq!(
        handle.execute_command("echo again").await.unwrap(),
        "again\n"
    );
    let counters = manager
        .connection_counters_for("ssh")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counters.losses, 2, "{counters:?}");
    assert_eq!(counters.reconnects, 2, "{counters:?}");
    assert!(counters.failed_open_calls >= 1, "{counters:?}");
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_to_one_host_run_as_parallel_channels() {
    let server = device("r1").await;
    let (manager, _) = manager(options(HostKeyPolicy::Strict(known_hosts(&[&server])))).await;
    let handle = manager
        .open_connection(&key("r1"), &params(&server))
        .await
        .unwrap()
        .unwrap();
    let started = Instant::now();
    let commands: Vec<_> = (0..8)
        .map(|_| {
            let handle = handle.clone();
            tokio::spawn(async move { handle.execute_command("sleep 200").await })
        })
        .collect();
    for command in commands {
        command.await.unwrap().unwrap();
    }
    let took = started.elapsed();
    // One after another would take 1.6 s; in parallel, about 0.2 s.
    assert!(
        took < Duration::from_millis(1000),
        "8 × 200 ms took {took:?}"
    );
    assert_eq!(server.session_count(), 1, "all on one connection");
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_hosts_open_at_once_and_fifty_dropped_ones_all_come_back() {
    let mut servers = Vec::new();
    for i in 0..200 {
        servers.push(device(&format!("d{i}")).await);
    }
    let refs: Vec<&SshTestServer> = servers.iter().collect();
    let (manager, mut events) = manager(options(HostKeyPolicy::Strict(known_hosts(&refs)))).await;
    let opens: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(i, server)| {
            let manager = manager.clone();
            let params = params(server);
            tokio::spawn(async move {
                manager
                    .open_connection(&key(&format!("d{i}")), &params)
                    .await
            })
        })
        .collect();
    for open in opens {
        open.await.unwrap().unwrap().unwrap();
    }
    let counters = manager
        .connection_counters_for("ssh")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counters.open_calls, 200);

    for server in &servers[..50] {
        server.drop_all_sessions().await;
    }
    let mut back = std::collections::HashSet::new();
    while back.len() < 50 {
        let event = events
            .wait_for(WAIT, |e| matches!(e.kind, EventKind::Reconnected { .. }))
            .await
            .unwrap();
        back.insert(event.key);
    }
    for i in 0..50 {
        assert!(back.contains(&key(&format!("d{i}"))));
        let status = manager
            .connection_status(&key(&format!("d{i}")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.state, ConnectionState::Open);
    }
    manager.shutdown().await.unwrap();
}

#[test]
fn ssh_options_never_print_secrets() {
    let options = SshOptions::default()
        .password("hunter2")
        .private_key(PrivateKeySource::InMemory(
            "-----BEGIN OPENSSH PRIVATE KEY----- s3cr3t".into(),
        ))
        .private_key_passphrase("p4ss");
    let shown = format!("{options:?}");
    for secret in ["hunter2", "s3cr3t", "p4ss"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
}
