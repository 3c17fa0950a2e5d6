//! Behaviour of the embedded SSH test server (`testing::SshTestServer`), driven by a raw russh
//! client (`raw_ssh`), with nothing of the supervisor or the SSH plugin in between.
//!
//! The server publishes no event for "a session was unregistered", "the listener is closed" or
//! "its tasks have ended", so the few tests about those poll the observable state with a short
//! interval and a deadline (`poll_until`); every other wait is for a real event (the client's
//! session-end notification, a channel closing).

#![cfg(all(feature = "ssh", feature = "testing"))]

mod raw_ssh;

use std::time::{Duration, Instant};

use connection_supervisor::testing::{
    DEFAULT_PASSWORD, DEFAULT_USERNAME, SshTestServer, SshTestServerConfig, generate_ed25519_key,
};
use raw_ssh::*;

const LIMIT: Duration = Duration::from_secs(5);

/// Checks `done` every 5 ms until it holds, failing the test with `what` after [`LIMIT`]. Only
/// for states the server reports no event for (see the module docs).
async fn poll_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn default_server() -> SshTestServer {
    SshTestServer::start(SshTestServerConfig::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn password_auth_ok_and_wrong_password_rejected() {
    let server = default_server().await;
    let conn = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    assert_eq!(exec(&conn.handle, "hostname").await.stdout, "device\n");
    assert_eq!(server.auth_attempts(), 1);

    let mut conn = connect(server.addr(), HostKeyCheck::AcceptAny)
        .await
        .unwrap();
    assert!(!auth_password(&mut conn, DEFAULT_USERNAME, "wrong").await);
    assert!(!auth_password(&mut conn, "nobody", DEFAULT_PASSWORD).await);
    assert_eq!(server.auth_attempts(), 3);
}

#[tokio::test]
async fn public_key_auth() {
    let client_key = generate_ed25519_key().unwrap();
    let server = SshTestServer::start(SshTestServerConfig {
        password: None,
        authorized_key: Some(client_key.public_key().clone()),
        ..Default::default()
    })
    .await
    .unwrap();

    let mut conn = connect(server.addr(), HostKeyCheck::AcceptAny)
        .await
        .unwrap();
    let other_key = generate_ed25519_key().unwrap();
    assert!(
        !auth_key(&mut conn, DEFAULT_USERNAME, &other_key).await,
        "unknown key accepted"
    );
    assert!(
        !auth_key(&mut conn, "nobody", &client_key).await,
        "wrong user accepted"
    );
    // Password logins are off when no password is configured.
    assert!(!auth_password(&mut conn, DEFAULT_USERNAME, DEFAULT_PASSWORD).await);
    assert!(
        auth_key(&mut conn, DEFAULT_USERNAME, &client_key).await,
        "authorized key refused"
    );
    assert_eq!(exec(&conn.handle, "echo key").await.stdout, "key\n");
    // One count per attempt, even though a key login is a probe plus a signed request.
    assert_eq!(server.auth_attempts(), 4);
}

#[tokio::test]
async fn reject_auth_refuses_good_credentials_until_cleared() {
    let server = SshTestServer::start(SshTestServerConfig {
        reject_auth: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut conn = connect(server.addr(), HostKeyCheck::AcceptAny)
        .await
        .unwrap();
    assert!(!auth_password(&mut conn, DEFAULT_USERNAME, DEFAULT_PASSWORD).await);
    assert_eq!(server.auth_attempts(), 1, "the client retried on its own");

    server.set_reject_auth(false);
    assert!(auth_password(&mut conn, DEFAULT_USERNAME, DEFAULT_PASSWORD).await);

    server.set_reject_auth(true);
    let mut conn = connect(server.addr(), HostKeyCheck::AcceptAny)
        .await
        .unwrap();
    assert!(!auth_password(&mut conn, DEFAULT_USERNAME, DEFAULT_PASSWORD).await);
    assert_eq!(server.auth_attempts(), 3);
}

#[tokio::test]
async fn command_set() {
    let server = SshTestServer::start(SshTestServerConfig {
        hostname: "core-sw-1".to_owned(),
        ..Default::default()
    })
    .await
    .unwrap();
    let conn = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    let h = &conn.handle;

    let out = exec(h, "show version").await;
    assert!(out.stdout.lines().count() >= 3, "{out:?}");
    assert!(out.stdout.contains("core-sw-1"), "{out:?}");
    assert_eq!((out.stderr.as_str(), out.exit_status), ("", Some(0)));

    let ok = |stdout: &str| ExecOutput {
        stdout: stdout.to_owned(),
        stderr: String::new(),
        exit_status: Some(0),
    };
    assert_eq!(exec(h, "hostname").await, ok("core-sw-1\n"));
    assert_eq!(exec(h, "echo hello  world").await, ok("hello  world\n"));
    assert_eq!(exec(h, "sleep 10").await, ok(""));
    assert_eq!(
        exec(h, "exit 42").await,
        ExecOutput {
            exit_status: Some(42),
            ..Default::default()
        }
    );
    assert_eq!(
        exec(h, "stderr boom").await,
        ExecOutput {
            stderr: "boom\n".to_owned(),
            exit_status: Some(1),
            ..Default::default()
        }
    );
    for bad in ["reload", "show running-config", "sleep soon"] {
        assert_eq!(
            exec(h, bad).await,
            ExecOutput {
                stderr: "% Invalid input\n".to_owned(),
                exit_status: Some(127),
                ..Default::default()
            },
            "{bad}"
        );
    }
}

#[tokio::test]
async fn channels_of_one_connection_run_concurrently() {
    let server = default_server().await;
    let conn = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    let started = Instant::now();
    let runs = (0..8).map(|_| exec(&conn.handle, "sleep 200"));
    let outputs = futures::future::join_all(runs).await;
    let elapsed = started.elapsed();
    assert!(
        outputs.iter().all(|o| o.exit_status == Some(0)),
        "{outputs:?}"
    );
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(1),
        "commands ran one after another: {elapsed:?}"
    );
}

#[tokio::test]
async fn latency_delays_each_command() {
    let server = SshTestServer::start(SshTestServerConfig {
        latency: Duration::from_millis(150),
        ..Default::default()
    })
    .await
    .unwrap();
    let conn = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    let started = Instant::now();
    assert_eq!(exec(&conn.handle, "echo x").await.stdout, "x\n");
    assert!(started.elapsed() >= Duration::from_millis(150));

    server.set_latency(Duration::ZERO);
    let started = Instant::now();
    exec(&conn.handle, "echo x").await;
    // Below the old latency, whatever else runs on the machine: the delay is gone.
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn drop_all_sessions_ends_client_sessions_and_keeps_listening() {
    let server = default_server().await;
    let first = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    let second = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    // A command in flight must not keep its session alive.
    let mut busy = first.handle.channel_open_session().await.unwrap();
    busy.exec(true, "sleep 60000").await.unwrap();
    assert_eq!(server.session_count(), 2);

    assert_eq!(server.drop_all_sessions().await, 2);
    assert_eq!(server.session_count(), 0);
    wait_disconnected(first.disconnected, LIMIT).await;
    wait_disconnected(second.disconnected, LIMIT).await;
    assert!(first.handle.is_closed() && second.handle.is_closed());
    wait_channel_closed(&mut busy, LIMIT).await;

    let again = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    assert_eq!(exec(&again.handle, "echo back").await.stdout, "back\n");
    assert_eq!(server.session_count(), 1);
}

#[tokio::test]
async fn client_disconnect_is_counted_out() {
    let server = default_server().await;
    let conn = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    assert_eq!(server.session_count(), 1);
    disconnect(&conn.handle).await;
    wait_disconnected(conn.disconnected, LIMIT).await;
    // The server unregisters the session when its own side has read the disconnect, a moment
    // after the client's side ended; it publishes no event for that.
    poll_until(
        "the session uncounted after the client disconnected",
        async || server.session_count() == 0,
    )
    .await;
}

#[tokio::test]
async fn stop_then_restart_on_same_port_with_same_host_key() {
    let server = default_server().await;
    let port = server.port();
    let known_hosts = TempFile::new("known_hosts");
    std::fs::write(
        known_hosts.path(),
        format!("{}\n", server.known_hosts_line().unwrap()),
    )
    .unwrap();
    let strict = HostKeyCheck::KnownHosts {
        host: "127.0.0.1".to_owned(),
        port,
        path: known_hosts.path().to_owned(),
    };

    let conn = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    server.stop().await;
    wait_disconnected(conn.disconnected, LIMIT).await;
    assert_eq!(server.session_count(), 0);
    assert!(
        connect(server.addr(), HostKeyCheck::AcceptAny)
            .await
            .is_err(),
        "still listening"
    );
    server.stop().await; // idempotent

    server.restart().await.unwrap();
    assert_eq!(server.port(), port);
    let mut conn = connect(server.addr(), strict.clone()).await.unwrap();
    assert!(auth_password(&mut conn, DEFAULT_USERNAME, DEFAULT_PASSWORD).await);
    assert_eq!(exec(&conn.handle, "hostname").await.stdout, "device\n");

    // Restarting a running server drops its sessions too.
    server.restart().await.unwrap();
    wait_disconnected(conn.disconnected, LIMIT).await;
    let conn = connect(server.addr(), strict).await.unwrap();
    drop(conn);
}

#[tokio::test]
async fn known_hosts_line_round_trips_through_russh() {
    let server = default_server().await;
    let line = server.known_hosts_line().unwrap();
    assert!(
        line.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", server.port())),
        "{line}"
    );

    let file = TempFile::new("known_hosts");
    std::fs::write(file.path(), format!("# test\n{line}\n")).unwrap();
    let check =
        |key| russh::keys::check_known_hosts_path("127.0.0.1", server.port(), key, file.path());
    assert!(
        check(server.host_key_public()).unwrap(),
        "own host key not accepted"
    );

    let other = generate_ed25519_key().unwrap();
    assert!(
        matches!(
            check(other.public_key()),
            Err(russh::keys::Error::KeyChanged { .. })
        ),
        "a different key was not rejected"
    );
    // The line is only for this port.
    let wrong_port = server.port().wrapping_add(1);
    assert!(
        !russh::keys::check_known_hosts_path(
            "127.0.0.1",
            wrong_port,
            server.host_key_public(),
            file.path()
        )
        .unwrap()
    );

    // And a client checking strictly against the file gets in; one expecting another key does not.
    let strict = |path: &std::path::Path| HostKeyCheck::KnownHosts {
        host: "127.0.0.1".to_owned(),
        port: server.port(),
        path: path.to_owned(),
    };
    assert!(connect(server.addr(), strict(file.path())).await.is_ok());
    let other_file = TempFile::new("known_hosts_other");
    let other_server = SshTestServer::start(SshTestServerConfig {
        host_key: Some(other),
        ..Default::default()
    })
    .await
    .unwrap();
    let other_line = other_server.known_hosts_line().unwrap();
    let other_line =
        other_line.replace(&other_server.port().to_string(), &server.port().to_string());
    std::fs::write(other_file.path(), format!("{other_line}\n")).unwrap();
    assert!(
        connect(server.addr(), strict(other_file.path()))
            .await
            .is_err(),
        "changed host key accepted"
    );
}

#[tokio::test]
async fn fixed_host_key_is_used() {
    let key = generate_ed25519_key().unwrap();
    let server = SshTestServer::start(SshTestServerConfig {
        host_key: Some(key.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        server.host_key_public().key_data(),
        key.public_key().key_data()
    );
}

#[tokio::test]
async fn dropping_the_server_ends_everything() {
    let server = default_server().await;
    let addr = server.addr();
    let conn = login_password(addr, DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    let mut busy = conn.handle.channel_open_session().await.unwrap();
    busy.exec(true, "sleep 60000").await.unwrap();
    drop(server);
    wait_disconnected(conn.disconnected, LIMIT).await;
    wait_channel_closed(&mut busy, LIMIT).await;
    // The listener goes with the accept task, once the runtime has processed the abort that
    // `drop` requested (no event tells when).
    poll_until("the listener closed after drop", async || {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
}

#[tokio::test]
async fn given_port_is_used() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let server = SshTestServer::start(SshTestServerConfig {
        port,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(server.port(), port);
    // A second server on the same port fails with an error, not a panic.
    assert!(
        SshTestServer::start(SshTestServerConfig {
            port,
            ..Default::default()
        })
        .await
        .is_err()
    );
}

/// Waits until the runtime runs no more tasks than `baseline` (aborted tasks end when the
/// runtime next gets to them; there is no event for that).
async fn wait_tasks_back_to(baseline: usize) {
    let metrics = tokio::runtime::Handle::current().metrics();
    poll_until(&format!("tasks back to {baseline}"), async || {
        metrics.num_alive_tasks() <= baseline
    })
    .await;
}

#[tokio::test]
async fn no_task_outlives_the_server_or_a_stop() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();

    for drop_instead_of_stop in [false, true] {
        let server = default_server().await;
        let conn = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
        let busy = conn.handle.channel_open_session().await.unwrap();
        busy.exec(true, "sleep 60000").await.unwrap();
        // Make sure the command task is running before counting.
        assert_eq!(exec(&conn.handle, "echo ready").await.stdout, "ready\n");
        // accept loop + connection + russh session + command, plus the client's session task.
        assert!(
            metrics.num_alive_tasks() >= baseline + 5,
            "{}",
            metrics.num_alive_tasks()
        );

        if drop_instead_of_stop {
            drop(server);
            wait_disconnected(conn.disconnected, LIMIT).await;
            drop((conn.handle, busy));
            wait_tasks_back_to(baseline).await;
        } else {
            server.stop().await;
            wait_disconnected(conn.disconnected, LIMIT).await;
            drop((conn.handle, busy));
            // A stopped server keeps no task of its own.
            wait_tasks_back_to(baseline).await;
            drop(server);
        }
    }
}

/// Waits until nothing is open or running on `server` (the server publishes no event for a
/// channel or a command ending).
async fn wait_nothing_left(server: &SshTestServer) {
    poll_until("no channel open and no command running", async || {
        server.open_channel_count() == 0 && server.running_command_count() == 0
    })
    .await;
}

#[tokio::test]
async fn cat_echoes_its_stdin_once_it_ends_and_channels_are_counted() {
    let server = default_server().await;
    let conn = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    let mut channel = conn.handle.channel_open_session().await.unwrap();
    channel.exec(true, "cat").await.unwrap();
    channel.data_bytes(&b"hello "[..]).await.unwrap();
    channel.data_bytes(&b"there\n"[..]).await.unwrap();
    // Still reading: the command runs and its channel is open until the client sends EOF.
    poll_until("cat running", async || server.running_command_count() == 1).await;
    assert_eq!(server.open_channel_count(), 1);

    channel.eof().await.unwrap();
    let mut stdout = Vec::new();
    let mut exit_status = None;
    while let Some(message) = channel.wait().await {
        match message {
            russh::ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
            russh::ChannelMsg::ExitStatus { exit_status: code } => exit_status = Some(code),
            _ => {}
        }
    }
    assert_eq!(
        (stdout.as_slice(), exit_status),
        (&b"hello there\n"[..], Some(0))
    );
    wait_nothing_left(&server).await;
    assert_eq!(server.signals_received(), 0);
}

#[tokio::test]
async fn closing_a_channel_stops_its_command() {
    let server = default_server().await;
    let conn = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    let channel = conn.handle.channel_open_session().await.unwrap();
    channel.exec(true, "sleep 60000").await.unwrap();
    poll_until("sleep running", async || {
        server.running_command_count() == 1
    })
    .await;

    // russh's client never tells a channel that the server confirmed its own close, so the
    // server's count is what shows the close landed.
    channel.close().await.unwrap();
    wait_nothing_left(&server).await;
    // The session is unharmed.
    assert_eq!(exec(&conn.handle, "echo on").await.stdout, "on\n");
}

#[tokio::test]
async fn a_signal_kills_the_command_and_ends_its_channel() {
    let server = default_server().await;
    let conn = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    let mut channel = conn.handle.channel_open_session().await.unwrap();
    channel.exec(true, "cat").await.unwrap();
    poll_until("cat running", async || server.running_command_count() == 1).await;

    channel.signal(russh::Sig::TERM).await.unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while let Some(message) = channel.wait().await {
            match message {
                russh::ChannelMsg::ExitSignal { signal_name, .. } => {
                    seen.push(format!("exit-signal {signal_name:?}"))
                }
                russh::ChannelMsg::Eof => seen.push("eof".to_owned()),
                russh::ChannelMsg::Close => seen.push("close".to_owned()),
                _ => {}
            }
        }
    })
    .await
    .expect("the channel ends after the signal");
    assert_eq!(seen, ["exit-signal TERM", "eof", "close"]);
    assert_eq!(server.signals_received(), 1);
    wait_nothing_left(&server).await;
}

#[tokio::test]
async fn channel_opens_can_be_refused_or_limited() {
    let server = SshTestServer::start(SshTestServerConfig {
        max_channels: Some(2),
        ..Default::default()
    })
    .await
    .unwrap();
    let conn = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    let refused = |result: Result<russh::Channel<russh::client::Msg>, russh::Error>| {
        matches!(
            result,
            Err(russh::Error::ChannelOpenFailure(
                russh::ChannelOpenFailure::ConnectFailed
            ))
        )
    };

    server.set_refuse_channels(true);
    assert!(refused(conn.handle.channel_open_session().await));
    assert_eq!(server.open_channel_count(), 0);
    server.set_refuse_channels(false);

    // At the limit, as OpenSSH's MaxSessions: a third channel is refused while two are open.
    let first = conn.handle.channel_open_session().await.unwrap();
    first.exec(true, "sleep 60000").await.unwrap();
    let second = conn.handle.channel_open_session().await.unwrap();
    assert_eq!(server.open_channel_count(), 2);
    assert!(refused(conn.handle.channel_open_session().await));

    // A closed one frees its place.
    first.close().await.unwrap();
    poll_until("one channel left", async || {
        server.open_channel_count() == 1
    })
    .await;
    assert_eq!(exec(&conn.handle, "echo room").await.stdout, "room\n");
    drop(second);
}

#[tokio::test]
async fn a_slow_channel_open_holds_up_no_other_channel() {
    let server = default_server().await;
    let conn = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    let open = conn.handle.channel_open_session().await.unwrap();

    server.set_channel_open_latency(Duration::from_secs(60));
    let slow = conn.handle.channel_open_session();
    tokio::pin!(slow);
    // Polled once so the request is on its way, then left pending.
    assert!(futures::poll!(slow.as_mut()).is_pending());
    open.exec(true, "echo meanwhile").await.unwrap();
    let mut open = open;
    let mut stdout = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while let Some(message) = open.wait().await {
            if let russh::ChannelMsg::Data { data } = message {
                stdout.extend_from_slice(&data);
            }
        }
    })
    .await
    .expect("the open channel answered while another one was being opened");
    assert_eq!(stdout, b"meanwhile\n");
    assert!(futures::poll!(slow.as_mut()).is_pending(), "opened early");
}
