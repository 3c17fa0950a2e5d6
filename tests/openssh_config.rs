//! An OpenSSH client config with `Host` patterns, and a port that never speaks, against the
//! OpenSSH fixture (`scripts/sshd-fixture.sh start`), with the `ssh` client as the reference:
//! for every host alias, the plugin must open exactly when `ssh -F CONFIG ALIAS true` succeeds.
//!
//! Skipped (with a note) when the fixture is not running, unless `CI` is set: then it fails.

#![cfg(all(feature = "ssh", feature = "testing"))]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use connection_supervisor::ssh::{SshConnection, SshOptions};
use connection_supervisor::{Connection, FailureKind, OpenError, ResolvedConnectionParams};
use tokio::net::TcpListener;

/// Bound on every open; the connect timeouts in the config are shorter.
const OPEN_BOUND: Duration = Duration::from_secs(20);

/// What `fixture.env` says about the running sshd.
struct Fixture {
    host: String,
    port: u16,
    user: String,
    password: String,
    known_hosts: PathBuf,
}

impl Fixture {
    /// `None` (after a note) when the fixture is not running and `CI` is not set.
    fn load() -> Option<Self> {
        let dir: PathBuf = match std::env::var_os("SSHD_FIXTURE_DIR") {
            Some(dir) if !dir.is_empty() => dir.into(),
            _ => "/tmp/cs-sshd-fixture".into(),
        };
        let path = dir.join("fixture.env");
        let Ok(text) = std::fs::read_to_string(&path) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but the OpenSSH fixture is not running ({} missing)",
                path.display()
            );
            eprintln!("OpenSSH fixture not running: run scripts/sshd-fixture.sh start");
            return None;
        };
        let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let var = |name: &str| {
            vars.get(name)
                .copied()
                .unwrap_or_else(|| panic!("{} has no {name}", path.display()))
                .to_owned()
        };
        Some(Self {
            host: var("SSHD_HOST"),
            port: var("SSHD_PORT").parse().expect("SSHD_PORT is a port"),
            user: var("SSHD_USER"),
            password: var("SSHD_PASSWORD"),
            known_hosts: var("SSHD_KNOWN_HOSTS").into(),
        })
    }
}

fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cs-openssh-config-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// An `SSH_ASKPASS` program that answers the password prompt with `password`, read from a
/// file so it never appears on a command line.
fn askpass(dir: &Path, password: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let secret = dir.join("password");
    std::fs::write(&secret, password).expect("password file");
    let script = dir.join("askpass.sh");
    std::fs::write(&script, format!("#!/bin/sh\ncat '{}'\n", secret.display()))
        .expect("askpass script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    script
}

/// Whether `ssh [ARGS] true` succeeds, and what it said on stderr.
async fn ssh(askpass: &Path, args: &[String]) -> (bool, String) {
    let mut command = Command::new("ssh");
    command
        .args(["-o", "BatchMode=no", "-o", "NumberOfPasswordPrompts=1"])
        .args(args)
        .arg("true")
        .env("SSH_ASKPASS", askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .stdin(Stdio::null());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the ssh task")
        .expect("ssh runs (openssh-client is installed with the fixture)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Opens a connection with `options`, runs `true`, closes it.
async fn ours(options: SshOptions, params: &ResolvedConnectionParams) -> Result<(), OpenError> {
    let mut connection = SshConnection::new(Arc::new(options));
    tokio::time::timeout(OPEN_BOUND, connection.open(params))
        .await
        .expect("the open ends within its bound")?;
    connection
        .execute_command("true")
        .await
        .expect("a command runs on the open session");
    connection.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_patterns_open_exactly_where_ssh_does() {
    let Some(fx) = Fixture::load() else { return };
    let dir = scratch_dir();
    let askpass = askpass(&dir, &fx.password);
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("address").port()
    };
    let empty = dir.join("empty_known_hosts");
    std::fs::write(&empty, "").expect("written");
    let learnt = dir.join("learnt_known_hosts");
    let config = dir.join("config");
    std::fs::write(
        &config,
        format!(
            "Host cs-bad\n    Port {closed}\n\
             Host cs-unknown-key cs-any-key\n    UserKnownHostsFile {empty}\n\
             Host cs-any-key\n    StrictHostKeyChecking no\n\
             Host cs-learn\n    StrictHostKeyChecking accept-new\n    UserKnownHostsFile {learnt}\n\
             Host cs-* !cs-direct\n    HostName {host}\n    Port {port}\n    User {user}\n\
             Host *\n    UserKnownHostsFile {known}\n    StrictHostKeyChecking yes\n\
             \x20   ConnectTimeout 5\n    PubkeyAuthentication no\n\
             \x20   PreferredAuthentications password\n",
            empty = empty.display(),
            learnt = learnt.display(),
            host = fx.host,
            port = fx.port,
            user = fx.user,
            known = fx.known_hosts.display(),
        ),
    )
    .expect("config written");

    // alias, whether it must open
    let cases = [
        ("cs-ok", true),
        ("cs-bad", false), // `Host cs-bad`'s Port comes first: nothing listens there
        ("cs-unknown-key", false), // its known_hosts is empty and checking is strict
        ("cs-any-key", true), // StrictHostKeyChecking no
        ("cs-learn", true), // accept-new records the key
        ("cs-direct", false), // excluded from the HostName block: the name does not resolve
    ];
    for (alias, expected) in cases {
        let (ssh_ok, ssh_said) = ssh(
            &askpass,
            &["-F".into(), config.display().to_string(), alias.into()],
        )
        .await;
        // Each side learns the key afresh.
        let _ = std::fs::remove_file(&learnt);
        let params = ResolvedConnectionParams {
            hostname: alias.into(),
            password: Some(fx.password.clone()),
            ..ResolvedConnectionParams::default()
        };
        let result = ours(SshOptions::default().ssh_config(&config), &params).await;
        assert_eq!(ssh_ok, expected, "ssh -F CONFIG {alias}: {ssh_said}");
        assert_eq!(
            result.is_ok(),
            ssh_ok,
            "{alias}: ours {result:?}, ssh {ssh_ok} ({ssh_said})"
        );
        if let Err(error) = result {
            let named = error.message().contains(alias)
                || error.message().contains(&format!(":{closed}"))
                || error
                    .message()
                    .contains(&format!("{}:{}", fx.host, fx.port));
            assert!(named, "{alias}: the error names no address: {error}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A port that accepts TCP and never speaks: `ssh -o ConnectTimeout=1` gives up during the
/// banner exchange, and so do we, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_port_fails_for_ssh_and_for_us_at_the_banner() {
    let Some(fx) = Fixture::load() else { return };
    let dir = scratch_dir();
    let askpass = askpass(&dir, &fx.password);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let (ssh_ok, ssh_said) = ssh(
        &askpass,
        &[
            "-o".into(),
            "ConnectTimeout=1".into(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-p".into(),
            port.to_string(),
            format!("{}@127.0.0.1", fx.user),
        ],
    )
    .await;
    assert!(!ssh_ok, "ssh connected to a silent port: {ssh_said}");
    assert!(ssh_said.contains("banner"), "ssh said: {ssh_said}");

    let params = ResolvedConnectionParams {
        hostname: "127.0.0.1".into(),
        port: Some(port),
        username: Some(fx.user.clone()),
        password: Some(fx.password.clone()),
        ..ResolvedConnectionParams::default()
    };
    let error = ours(
        SshOptions::default().connect_timeout(Duration::from_secs(1)),
        &params,
    )
    .await
    .expect_err("a silent port does not open");
    assert_eq!(error.kind(), FailureKind::Timeout, "{error}");
    assert!(
        error
            .message()
            .contains(&format!("no SSH banner from 127.0.0.1:{port} within 1 s")),
        "{error}"
    );
    holder.abort();
    let _ = std::fs::remove_dir_all(dir);
}
