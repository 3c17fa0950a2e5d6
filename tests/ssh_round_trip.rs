//! The embedded SSH server's network link (`SshTestServerConfig::round_trip`): every round trip
//! of the handshake and of a command pays it, and it delays without serialising (many round
//! trips in flight at once, as on a real link). Only lower bounds on time, and one upper bound
//! with a margin of seconds (pipelined against serialised).

#![cfg(all(feature = "ssh", feature = "testing"))]

mod raw_ssh;

use std::time::{Duration, Instant};

use connection_supervisor::testing::{
    DEFAULT_PASSWORD, DEFAULT_USERNAME, SshTestServer, SshTestServerConfig,
};
use raw_ssh::*;

const RTT: Duration = Duration::from_millis(100);

async fn linked_server() -> SshTestServer {
    SshTestServer::start(SshTestServerConfig {
        round_trip: RTT,
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn each_round_trip_of_login_and_command_pays_the_link() {
    let server = linked_server().await;
    let started = Instant::now();
    let conn = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    let login = started.elapsed();
    // TCP's handshake (imitated), the version banners, key exchange, NEWKEYS with the
    // userauth service request, the password: one round trip each at the least.
    assert!(
        login >= RTT * 5,
        "login took {login:?}, under 5 round trips"
    );

    let started = Instant::now();
    assert_eq!(exec(&conn.handle, "echo x").await.stdout, "x\n");
    let command = started.elapsed();
    // Opening the channel, then the exec request and its answer.
    assert!(
        command >= RTT * 2,
        "a command took {command:?}, under 2 round trips"
    );
}

#[tokio::test]
async fn round_trips_overlap_on_one_connection() {
    let server = linked_server().await;
    let conn = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    const COMMANDS: u32 = 16;
    let started = Instant::now();
    let runs = (0..COMMANDS).map(|_| exec(&conn.handle, "echo x"));
    let outputs = futures::future::join_all(runs).await;
    let elapsed = started.elapsed();
    assert!(outputs.iter().all(|o| o.stdout == "x\n"), "{outputs:?}");
    assert!(elapsed >= RTT * 2, "{elapsed:?}");
    // One after another they would take 32 round trips (3.2 s); in flight together, about 2.
    assert!(
        elapsed < RTT * COMMANDS,
        "the link serialised the commands: {elapsed:?}"
    );
}

#[tokio::test]
async fn set_round_trip_applies_to_later_connections() {
    let server = SshTestServer::start(SshTestServerConfig::default())
        .await
        .unwrap();
    server.set_round_trip(RTT);
    let conn = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    let started = Instant::now();
    exec(&conn.handle, "echo x").await;
    assert!(started.elapsed() >= RTT * 2, "{:?}", started.elapsed());
}

#[tokio::test]
async fn dropping_sessions_still_ends_them_through_the_link() {
    let server = linked_server().await;
    let conn = login_password(server.addr(), DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    assert_eq!(server.drop_all_sessions().await, 1);
    tokio::time::timeout(Duration::from_secs(10), conn.disconnected)
        .await
        .expect("the client saw its session end")
        .ok();
    assert_eq!(server.session_count(), 0);
}
