//! The SSH plugin's channels through the supervisor, against the embedded SSH server: a command
//! that times out or whose caller goes away leaves no channel and no command behind, and a
//! session that can no longer open channels is reported lost and reconnected.
//!
//! The server publishes no event for a channel closing or a command ending, so those waits poll
//! its counts (`wait_until`, bounded); lifecycle waits are waits for events.

#![cfg(all(feature = "ssh", feature = "testing"))]

use std::time::{Duration, Instant};

use connection_supervisor::ssh::{self, HostKeyPolicy, SshOptions};
use connection_supervisor::testing::{
    DEFAULT_PASSWORD, DEFAULT_USERNAME, SshTestServer, SshTestServerConfig,
};
use connection_supervisor::{
    Backoff, CommandError, ConnectionHandle, ConnectionKey, ConnectionManager, ConnectionPolicy,
    Error, EventKind, EventStream, ResolvedConnectionParams, SupervisorConfig,
};

/// Bound on every wait.
const WAIT: Duration = Duration::from_secs(10);
/// A bound that a `cat` waiting for stdin always outlives.
const SHORT: Duration = Duration::from_millis(100);

/// Checks `done` every 5 ms until it holds, failing the test with `what` after [`WAIT`].
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A device that, like OpenSSH by default, allows 10 channels per connection: leaked channels
/// make every later command fail.
async fn device() -> SshTestServer {
    SshTestServer::start(SshTestServerConfig {
        max_channels: Some(10),
        ..SshTestServerConfig::default()
    })
    .await
    .unwrap()
}

fn key() -> ConnectionKey {
    ConnectionKey::new("r1", ssh::PLUGIN_NAME)
}

/// A supervisor with quick reconnects, its events, and a handle to `server`, opened.
async fn open(server: &SshTestServer) -> (ConnectionManager, EventStream, ConnectionHandle) {
    let policy = ConnectionPolicy::default().backoff(
        Backoff::default()
            .initial(Duration::from_millis(50))
            .max(Duration::from_millis(200)),
    );
    let options = SshOptions::default().host_key_policy(HostKeyPolicy::AcceptAny);
    let config = SupervisorConfig::default()
        .factory(ssh::factory(options))
        .policy(policy);
    let manager = ConnectionManager::spawn(config).await.unwrap();
    let events = manager.subscribe().await.unwrap();
    let params = ResolvedConnectionParams {
        hostname: "127.0.0.1".into(),
        port: Some(server.port()),
        username: Some(DEFAULT_USERNAME.into()),
        password: Some(DEFAULT_PASSWORD.into()),
        ..ResolvedConnectionParams::default()
    };
    let handle = manager
        .open_connection(&key(), &params)
        .await
        .unwrap()
        .unwrap();
    (manager, events, handle)
}

/// Waits until the server has seen `opened` channels in all, and none of them is still open
/// nor its command running. (A command abandoned before its channel was even confirmed opens
/// the channel late and closes it, so the total must be reached before "none open" means
/// anything.)
async fn wait_cleaned_up(server: &SshTestServer, opened: u64) {
    wait_until(
        &format!("{opened} channels opened, none left open, no command running"),
        || {
            server.channels_opened() == opened
                && server.open_channel_count() == 0
                && server.running_command_count() == 0
        },
    )
    .await;
}

/// The handle still works on the same session: nothing was reported lost or reconnected.
async fn still_usable(
    manager: &ConnectionManager,
    handle: &ConnectionHandle,
    server: &SshTestServer,
) {
    assert_eq!(
        handle.execute_command("echo still here").await.unwrap(),
        "still here\n"
    );
    let counters = manager
        .connection_counters_for(ssh::PLUGIN_NAME)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (counters.losses, counters.open_calls),
        (0, 1),
        "{counters:?}"
    );
    assert_eq!(server.session_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_timed_out_commands_leave_no_channel_and_the_next_command_works() {
    let server = device().await;
    let (manager, _events, handle) = open(&server).await;

    for _ in 0..10 {
        let error = handle
            .execute_command_within("cat", SHORT)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    }
    wait_cleaned_up(&server, 10).await;
    // Each `cat` that had started was signalled (on a loaded machine a bound can run out
    // before the command started: then there is nothing to signal).
    assert!(server.signals_received() <= 10);
    still_usable(&manager, &handle, &server).await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_caller_goes_away_closes_its_channel() {
    let server = device().await;
    let (manager, _events, handle) = open(&server).await;

    // The caller's own bound around the call, shorter than the command.
    let gave_up = tokio::time::timeout(SHORT, handle.execute_command("cat")).await;
    assert!(gave_up.is_err(), "{gave_up:?}");
    wait_cleaned_up(&server, 1).await;

    // The caller's task aborted while the command runs on the device: signalled, and closed.
    let signals = server.signals_received();
    let caller = tokio::spawn({
        let handle = handle.clone();
        async move { handle.execute_command("cat").await }
    });
    wait_until("cat running", || server.running_command_count() == 1).await;
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    wait_cleaned_up(&server, 2).await;
    assert_eq!(server.signals_received(), signals + 1);

    still_usable(&manager, &handle, &server).await;
    manager.shutdown().await.unwrap();
}

/// Runs `command` on `handle` `count` times at once, each within `bound`.
async fn at_once(
    handle: &ConnectionHandle,
    count: usize,
    command: &str,
    bound: Duration,
) -> Vec<Result<String, Error>> {
    let runs = (0..count).map(|_| handle.execute_command_within(command, bound));
    futures::future::join_all(runs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_right_after_a_burst_of_timed_out_ones_find_room() {
    let server = device().await;
    let (manager, _events, handle) = open(&server).await;

    // Eight commands (the plugin's channel limit) time out together and eight more follow at
    // once: with 10 channels per connection, they fit only if the first eight made room.
    for round in 0..5 {
        for result in at_once(&handle, 8, "cat", SHORT).await {
            assert!(
                matches!(result, Err(Error::Timeout { .. })),
                "{round}: {result:?}"
            );
        }
        for result in at_once(&handle, 8, "echo next", WAIT).await {
            assert_eq!(result.unwrap(), "next\n", "round {round}");
        }
    }
    wait_cleaned_up(&server, 80).await;
    still_usable(&manager, &handle, &server).await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_times_out_while_its_channel_opens_closes_it_once_open() {
    let server = device().await;
    let (manager, _events, handle) = open(&server).await;

    // The device confirms channels only after the callers have given up on them.
    let before = server.channels_opened();
    server.set_channel_open_latency(Duration::from_millis(300));
    for _ in 0..3 {
        let error = handle
            .execute_command_within("cat", SHORT)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    }
    server.set_channel_open_latency(Duration::ZERO);
    // Opened late and closed at once, with no signal: no command was started on them.
    wait_until("the three channels opened, then closed", || {
        server.channels_opened() == before + 3 && server.open_channel_count() == 0
    })
    .await;
    assert_eq!(server.signals_received(), 0);
    assert_eq!(server.running_command_count(), 0);
    still_usable(&manager, &handle, &server).await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_cannot_open_channels_is_lost_and_reconnected() {
    let server = device().await;
    let (manager, mut events, handle) = open(&server).await;

    server.set_refuse_channels(true);
    let error = handle.execute_command("echo refused").await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Command { source: CommandError::ConnectionLost(why), .. } if why.contains("channel")
        ),
        "{error:?}"
    );
    let lost = events
        .wait_for_key(&key(), WAIT, |kind| matches!(kind, EventKind::Lost { .. }))
        .await
        .unwrap();
    eprintln!("lost: {:?}", lost.kind);

    server.set_refuse_channels(false);
    events
        .wait_for_key(&key(), WAIT, |kind| {
            matches!(kind, EventKind::Reconnected { .. })
        })
        .await
        .unwrap();
    assert_eq!(handle.execute_command("echo back").await.unwrap(), "back\n");
    let counters = manager
        .connection_counters_for(ssh::PLUGIN_NAME)
        .await
        .unwrap()
        .unwrap();
    assert!(
        counters.losses >= 1 && counters.reconnects >= 1,
        "{counters:?}"
    );
    // The old session was closed when the new one was opened.
    wait_until("one session on the device", || server.session_count() == 1).await;
    manager.shutdown().await.unwrap();
}
