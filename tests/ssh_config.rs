//! The SSH plugin with an OpenSSH client config, against the embedded server, and the stage
//! of every failure: each names the address and what did not happen (TCP connect, banner, key
//! exchange, host key, authentication, channel open).

#![cfg(all(feature = "ssh", feature = "testing"))]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use connection_supervisor::ssh::{HostKeyPolicy, SshConnection, SshOptions};
use connection_supervisor::testing::{
    DEFAULT_PASSWORD, DEFAULT_USERNAME, SshTestServer, SshTestServerConfig, write_known_hosts,
};
use connection_supervisor::{
    CommandError, Connection, ConnectionKey, ConnectionManager, ConnectionPolicy, FailureKind,
    OpenError, ResolvedConnectionParams, SupervisorConfig, ssh,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Bound on every open in these tests; the connect timeouts under test are far shorter.
const OPEN_BOUND: Duration = Duration::from_secs(20);

/// A directory of this test's own.
fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cs-ssh-config-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

async fn device() -> SshTestServer {
    SshTestServer::start(SshTestServerConfig::default())
        .await
        .expect("the embedded server starts")
}

fn known_hosts(dir: &Path, servers: &[&SshTestServer]) -> PathBuf {
    let path = dir.join("known_hosts");
    write_known_hosts(&path, servers.iter().copied()).expect("known_hosts written");
    path
}

/// A port on 127.0.0.1 with nothing listening.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address").port()
}

/// Only a password: the user, host and port come from the config (or the test says them).
fn password_only(hostname: &str) -> ResolvedConnectionParams {
    ResolvedConnectionParams {
        hostname: hostname.into(),
        password: Some(DEFAULT_PASSWORD.into()),
        ..ResolvedConnectionParams::default()
    }
}

/// Opens one `SshConnection` directly (no supervisor, so no retries) and runs `hostname` on it.
async fn open_and_run(
    options: SshOptions,
    params: &ResolvedConnectionParams,
) -> Result<String, OpenError> {
    let mut connection = SshConnection::new(Arc::new(options));
    tokio::time::timeout(OPEN_BOUND, connection.open(params))
        .await
        .expect("the open ends within its bound")?;
    let out = connection
        .execute_command("hostname")
        .await
        .expect("a command runs on the open session");
    connection.close().await;
    Ok(out)
}

fn assert_failure(result: Result<String, OpenError>, kind: FailureKind, needles: &[&str]) {
    let error = result.expect_err("the open must fail");
    assert_eq!(error.kind(), kind, "{error}");
    for needle in needles {
        assert!(
            error.message().contains(needle),
            "{needle:?} missing from: {error}"
        );
    }
}

#[tokio::test]
async fn host_patterns_hostname_port_and_user_first_match_wins() {
    let server = device().await;
    let dir = scratch_dir();
    let closed = closed_port().await;
    let config = dir.join("config");
    std::fs::write(
        &config,
        format!(
            "# first obtained value wins: the specific block before the pattern\n\
             Host dev-1\n    Port {port}\n\
             Host dev-* !dev-9\n    HostName 127.0.0.1\n    User {user}\n    Port {closed}\n\
             Host *\n    User nobody\n    ConnectTimeout 5\n",
            port = server.port(),
            user = DEFAULT_USERNAME,
        ),
    )
    .expect("config written");
    let options = SshOptions::default()
        .host_key_policy(HostKeyPolicy::Strict(known_hosts(&dir, &[&server])))
        .ssh_config(&config);

    let out = open_and_run(options.clone(), &password_only("dev-1"))
        .await
        .expect("dev-1: HostName, User from `dev-*`, Port from `dev-1`");
    assert_eq!(out.trim(), "device");

    assert_failure(
        open_and_run(options.clone(), &password_only("dev-2")).await,
        FailureKind::Refused,
        &[&format!("TCP connect to 127.0.0.1:{closed} failed")],
    );
    // The params' port comes before the config's.
    let with_port = ResolvedConnectionParams {
        port: Some(server.port()),
        ..password_only("dev-2")
    };
    open_and_run(options.clone(), &with_port)
        .await
        .expect("params beat the config");

    // `!dev-9` excludes it from the block with HostName: the name itself is looked up.
    let error = open_and_run(options.clone(), &password_only("dev-9"))
        .await
        .expect_err("dev-9 has no HostName and does not resolve");
    assert!(error.message().contains("dev-9"), "{error}");

    // Without the config, nothing maps dev-1 anywhere.
    let error = open_and_run(options.no_ssh_config(), &password_only("dev-1"))
        .await
        .expect_err("no config: no user");
    assert!(error.message().contains("no username"), "{error}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn strict_host_key_checking_and_user_known_hosts_file_come_from_the_config() {
    let server = device().await;
    let dir = scratch_dir();
    let trusted = known_hosts(&dir, &[&server]);
    let empty = dir.join("empty_known_hosts");
    std::fs::write(&empty, "").expect("empty known_hosts");
    let config = dir.join("config");
    std::fs::write(
        &config,
        format!(
            "Host trusting\n    StrictHostKeyChecking no\n\
             Host listed\n    UserKnownHostsFile {}\n\
             Host learning\n    StrictHostKeyChecking accept-new\n\
             Host *\n    HostName 127.0.0.1\n    Port {}\n    User {}\n",
            trusted.display(),
            server.port(),
            DEFAULT_USERNAME
        ),
    )
    .expect("config written");
    // The options trust nothing: whatever connects, the config made it.
    let options = SshOptions::default()
        .host_key_policy(HostKeyPolicy::Strict(empty.clone()))
        .ssh_config(&config);

    assert_failure(
        open_and_run(options.clone(), &password_only("plain")).await,
        FailureKind::HostKey,
        &[&format!("127.0.0.1:{}", server.port()), "is not in"],
    );
    open_and_run(options.clone(), &password_only("trusting"))
        .await
        .expect("StrictHostKeyChecking no accepts any key");
    open_and_run(options.clone(), &password_only("listed"))
        .await
        .expect("UserKnownHostsFile holds the key");
    open_and_run(options.clone(), &password_only("learning"))
        .await
        .expect("accept-new records the key");
    let learnt = std::fs::read_to_string(&empty).expect("known_hosts readable");
    assert!(
        learnt.contains("[127.0.0.1]:"),
        "accept-new wrote {learnt:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_unreadable_or_malformed_config_is_a_config_error_naming_the_file() {
    let dir = scratch_dir();
    let broken = dir.join("broken");
    std::fs::write(&broken, "Host a\n    Port 22\n    Port twenty-two\n").expect("written");
    assert_failure(
        open_and_run(
            SshOptions::default().ssh_config(&broken),
            &password_only("a"),
        )
        .await,
        FailureKind::Config,
        &[&broken.display().to_string(), "line 3"],
    );
    let missing = dir.join("missing");
    assert_failure(
        open_and_run(
            SshOptions::default().ssh_config(&missing),
            &password_only("a"),
        )
        .await,
        FailureKind::Config,
        &[&missing.display().to_string()],
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A port that accepts TCP and never speaks: the banner stage, within the connect timeout.
#[tokio::test]
async fn a_silent_port_fails_with_the_banner_message_within_the_connect_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    // Accepts and holds every connection, sending nothing.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let params = ResolvedConnectionParams {
        port: Some(port),
        username: Some("admin".into()),
        extras: Some([("connect_timeout".to_owned(), serde_json::json!(0.5))].into()),
        ..password_only("127.0.0.1")
    };
    let started = Instant::now();
    assert_failure(
        open_and_run(
            SshOptions::default().host_key_policy(HostKeyPolicy::AcceptAny),
            &params,
        )
        .await,
        FailureKind::Timeout,
        &[&format!("no SSH banner from 127.0.0.1:{port} within 0.5 s")],
    );
    // The connect timeout, not the open's bound, ended it.
    assert!(
        started.elapsed() < OPEN_BOUND / 2,
        "{:?}",
        started.elapsed()
    );

    // Through the supervisor: the same message, and the options' timeout when extras say none.
    let manager = ConnectionManager::spawn(
        SupervisorConfig::default()
            .factory(ssh::factory(
                SshOptions::default()
                    .host_key_policy(HostKeyPolicy::AcceptAny)
                    .connect_timeout(Duration::from_millis(300)),
            ))
            .policy(ConnectionPolicy::default().first_open_attempts(1)),
    )
    .await
    .expect("supervisor");
    let error = manager
        .open_connection(
            &ConnectionKey::new("silent", ssh::PLUGIN_NAME),
            &ResolvedConnectionParams {
                extras: None,
                ..params
            },
        )
        .await
        .expect_err("a silent port does not open");
    assert_eq!(error.failure_kind(), Some(FailureKind::Timeout), "{error}");
    assert!(
        error
            .to_string()
            .contains(&format!("no SSH banner from 127.0.0.1:{port} within 0.3 s")),
        "{error}"
    );
    manager.shutdown().await.expect("shutdown");
    holder.abort();
}

/// A server that sends its banner and then nothing: the key exchange stage.
#[tokio::test]
async fn a_banner_then_silence_is_a_stalled_key_exchange() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(b"SSH-2.0-Stalled_1.0\r\n").await;
            held.push(stream);
        }
    });
    let params = ResolvedConnectionParams {
        port: Some(port),
        username: Some("admin".into()),
        ..password_only("127.0.0.1")
    };
    assert_failure(
        open_and_run(
            SshOptions::default()
                .host_key_policy(HostKeyPolicy::AcceptAny)
                .connect_timeout(Duration::from_millis(500)),
            &params,
        )
        .await,
        FailureKind::Timeout,
        &[&format!(
            "key exchange with 127.0.0.1:{port} did not finish within 0.5 s"
        )],
    );
    holder.abort();
}

#[tokio::test]
async fn every_stage_names_the_address() {
    let server = device().await;
    let dir = scratch_dir();
    let address = format!("127.0.0.1:{}", server.port());
    let params = ResolvedConnectionParams {
        port: Some(server.port()),
        username: Some(DEFAULT_USERNAME.into()),
        ..password_only("127.0.0.1")
    };
    let strict =
        SshOptions::default().host_key_policy(HostKeyPolicy::Strict(known_hosts(&dir, &[&server])));

    // TCP connect, refused.
    let closed = closed_port().await;
    assert_failure(
        open_and_run(
            strict.clone(),
            &ResolvedConnectionParams {
                port: Some(closed),
                ..params.clone()
            },
        )
        .await,
        FailureKind::Refused,
        &[&format!("TCP connect to 127.0.0.1:{closed} failed")],
    );
    // Host key, unknown.
    let empty = dir.join("empty");
    std::fs::write(&empty, "").expect("written");
    assert_failure(
        open_and_run(
            strict.clone().host_key_policy(HostKeyPolicy::Strict(empty)),
            &params,
        )
        .await,
        FailureKind::HostKey,
        &[&address],
    );
    // Authentication.
    assert_failure(
        open_and_run(
            strict.clone(),
            &ResolvedConnectionParams {
                password: Some("wrong".into()),
                ..params.clone()
            },
        )
        .await,
        FailureKind::Auth,
        &[&address],
    );
    // Channel open, refused by the server on an open session.
    let mut connection = SshConnection::new(Arc::new(strict));
    connection.open(&params).await.expect("opens");
    server.set_refuse_channels(true);
    let error = connection
        .execute_command("hostname")
        .await
        .expect_err("the channel is refused");
    assert!(
        matches!(&error, CommandError::ConnectionLost(why) if why.contains("cannot open a channel") && why.contains(&address)),
        "{error}"
    );
    connection.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn identity_file_from_the_config_logs_in_where_the_options_key_does_not() {
    let dir = scratch_dir();
    let authorized = connection_supervisor::testing::generate_ed25519_key().expect("a key");
    let other = connection_supervisor::testing::generate_ed25519_key().expect("another key");
    let server = SshTestServer::start(SshTestServerConfig {
        authorized_key: Some(authorized.public_key().clone()),
        auth_methods: vec![connection_supervisor::testing::AuthMethod::PublicKey],
        ..SshTestServerConfig::default()
    })
    .await
    .expect("the embedded server starts");
    let write_key = |name: &str, key: &russh::keys::PrivateKey| {
        let path = dir.join(name);
        let text = key
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .expect("the key encodes");
        std::fs::write(&path, text.as_bytes()).expect("key written");
        path
    };
    let (good, bad) = (
        write_key("id_good", &authorized),
        write_key("id_bad", &other),
    );
    let config = dir.join("config");
    std::fs::write(
        &config,
        format!(
            "Host dev\n    HostName 127.0.0.1\n    Port {}\n    User {}\n    IdentityFile {}\n",
            server.port(),
            DEFAULT_USERNAME,
            good.display()
        ),
    )
    .expect("config written");
    let base = SshOptions::default()
        .host_key_policy(HostKeyPolicy::Strict(known_hosts(&dir, &[&server])))
        .identity_file(&bad);
    let params = ResolvedConnectionParams::new("dev");

    // The options' key alone is refused; the config's IdentityFile replaces it and gets in.
    let error = open_and_run(
        base.clone().no_ssh_config(),
        &ResolvedConnectionParams {
            port: Some(server.port()),
            username: Some(DEFAULT_USERNAME.into()),
            ..ResolvedConnectionParams::new("127.0.0.1")
        },
    )
    .await
    .expect_err("the options' key is not authorized");
    assert_eq!(error.kind(), FailureKind::Auth, "{error}");
    let out = open_and_run(base.ssh_config(&config), &params)
        .await
        .expect("IdentityFile from the config logs in");
    assert_eq!(out.trim(), "device");
    let _ = std::fs::remove_dir_all(dir);
}
