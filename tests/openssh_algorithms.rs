//! Algorithm policy and host-key checks against real OpenSSH servers, each case also run with
//! the `ssh` client and equivalent options: the plugin must connect exactly where `ssh` does.
//!
//! The servers are the `SSHD_ALGO_*` block of `scripts/sshd-fixture.sh` (a legacy-only sshd, a
//! modern one with ed25519, ecdsa and rsa host keys, one with a host certificate), found through
//! `${SSHD_FIXTURE_DIR:-/tmp/cs-sshd-fixture}/fixture.env`. Without it each test prints a note
//! and passes, unless `CI` is set: then it fails.

#![cfg(all(feature = "ssh", feature = "testing"))]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use connection_supervisor::ssh::{HostKeyPolicy, SshConnection, SshOptions};
use connection_supervisor::{Connection, FailureKind, OpenError, ResolvedConnectionParams};
use serde_json::{Value, json};

/// Bound on one `ssh` run or one plugin open.
const WAIT: Duration = Duration::from_secs(30);

const NOT_RUNNING: &str =
    "OpenSSH algorithm fixture not running: run scripts/sshd-fixture.sh start";

/// The fixture's `KEY=VALUE` lines.
struct Fixture {
    vars: HashMap<String, String>,
}

impl Fixture {
    /// `None` (after a note) when the fixture is not running and `CI` is not set.
    fn load(test: &str) -> Option<Self> {
        let dir: PathBuf = match std::env::var_os("SSHD_FIXTURE_DIR") {
            Some(dir) if !dir.is_empty() => dir.into(),
            _ => "/tmp/cs-sshd-fixture".into(),
        };
        let path = dir.join("fixture.env");
        let vars: HashMap<String, String> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        if vars.contains_key("SSHD_ALGO_MODERN_PORT") {
            return Some(Self { vars });
        }
        if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
            panic!(
                "{NOT_RUNNING} (no SSHD_ALGO_* in {}; CI is set)",
                path.display()
            );
        }
        eprintln!(
            "skipping {test}: {NOT_RUNNING} (no SSHD_ALGO_* in {})",
            path.display()
        );
        None
    }

    fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("fixture.env has no {name}"))
    }

    fn port(&self, name: &str) -> u16 {
        self.var(name).parse().expect("a port number")
    }
}

/// One configuration: a server, a known_hosts file, and the same algorithm settings for
/// `ssh` (`-o` options) and the plugin (the `algorithms` extra).
struct Case<'a> {
    name: &'a str,
    port: u16,
    known_hosts: &'a str,
    ssh_options: &'a [&'a str],
    algorithms: Option<Value>,
}

const LEGACY_SSH_OPTIONS: &[&str] = &[
    "KexAlgorithms=+diffie-hellman-group14-sha1",
    "HostKeyAlgorithms=+ssh-rsa",
    "Ciphers=+aes128-cbc",
    "MACs=+hmac-sha1",
];

/// Whether `ssh` logs in and runs `true` with strict host-key checking against the case's
/// known_hosts file only, answering the password through `SSH_ASKPASS`.
async fn ssh_connects(fixture: &Fixture, case: &Case<'_>) -> bool {
    let mut command = tokio::process::Command::new("ssh");
    command
        .args(["-F", "/dev/null", "-p", &case.port.to_string()])
        .args(["-o", &format!("UserKnownHostsFile={}", case.known_hosts)])
        .args(["-o", "GlobalKnownHostsFile=/dev/null"])
        .args(["-o", "StrictHostKeyChecking=yes"])
        .args(["-o", "PreferredAuthentications=password"])
        .args(["-o", "PubkeyAuthentication=no"])
        .args(["-o", "NumberOfPasswordPrompts=1"])
        .args(["-o", "ConnectTimeout=10"]);
    for option in case.ssh_options {
        command.args(["-o", option]);
    }
    command
        .arg(format!("{}@127.0.0.1", fixture.var("SSHD_USER")))
        .arg("true")
        .env("SSH_ASKPASS", fixture.var("SSHD_ALGO_ASKPASS"))
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", "none")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(WAIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{}: ssh did not finish within {WAIT:?}", case.name))
        .expect("the ssh client runs");
    eprintln!(
        "{}: ssh {}: {}",
        case.name,
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    output.status.success()
}

/// The plugin's open (then `true`, then close) for the case.
async fn plugin_connects(fixture: &Fixture, case: &Case<'_>) -> Result<(), OpenError> {
    let options = SshOptions::default()
        .host_key_policy(HostKeyPolicy::Strict(case.known_hosts.into()))
        .keepalive_interval(None);
    let params = ResolvedConnectionParams {
        hostname: "127.0.0.1".into(),
        port: Some(case.port),
        username: Some(fixture.var("SSHD_USER").to_owned()),
        password: Some(fixture.var("SSHD_PASSWORD").to_owned()),
        extras: case
            .algorithms
            .clone()
            .map(|algorithms| [("algorithms".to_owned(), algorithms)].into()),
        ..ResolvedConnectionParams::default()
    };
    let mut connection = SshConnection::new(Arc::new(options));
    tokio::time::timeout(WAIT, connection.open(&params))
        .await
        .unwrap_or_else(|_| panic!("{}: the plugin's open did not finish", case.name))?;
    connection
        .execute_command("true")
        .await
        .unwrap_or_else(|error| panic!("{}: command failed: {error}", case.name));
    connection.close().await;
    Ok(())
}

/// Runs `ssh` and the plugin on the case; asserts both connect when `expected`, both fail
/// otherwise, and returns the plugin's error.
async fn both(fixture: &Fixture, case: Case<'_>, expected: bool) -> Option<OpenError> {
    let ssh = ssh_connects(fixture, &case).await;
    let plugin = plugin_connects(fixture, &case).await;
    eprintln!("{}: plugin {plugin:?}", case.name);
    assert_eq!(ssh, expected, "{}: ssh", case.name);
    assert_eq!(plugin.is_ok(), expected, "{}: plugin {plugin:?}", case.name);
    plugin.err()
}

#[tokio::test]
async fn a_legacy_only_sshd_needs_the_legacy_algorithms_as_ssh_does() {
    let Some(fixture) = Fixture::load("a_legacy_only_sshd_needs_the_legacy_algorithms") else {
        return;
    };
    let port = fixture.port("SSHD_ALGO_LEGACY_PORT");
    let known_hosts = fixture.var("SSHD_ALGO_KH_LEGACY");
    let case = |name, ssh_options, algorithms| Case {
        name,
        port,
        known_hosts,
        ssh_options,
        algorithms,
    };

    let error = both(
        &fixture,
        case("legacy sshd, modern client", &[], None),
        false,
    )
    .await
    .expect("an error");
    assert_eq!(error.kind(), FailureKind::Negotiation, "{error}");
    let message = error.message();
    for part in [
        format!("127.0.0.1:{port}"),
        "diffie-hellman-group14-sha1".to_owned(),
        "curve25519-sha256".to_owned(),
        "algorithms = \"legacy\"".to_owned(),
    ] {
        assert!(message.contains(&part), "{part:?} missing from: {message}");
    }

    both(
        &fixture,
        case(
            "legacy sshd, legacy policy",
            LEGACY_SSH_OPTIONS,
            Some(json!("legacy")),
        ),
        true,
    )
    .await;
    both(
        &fixture,
        case(
            "legacy sshd, explicit lists",
            LEGACY_SSH_OPTIONS,
            Some(json!({
                "kex": "+diffie-hellman-group14-sha1",
                "host_key_algorithms": "+ssh-rsa",
                "ciphers": "+aes128-cbc",
                "macs": "+hmac-sha1",
            })),
        ),
        true,
    )
    .await;
    // Only the key exchange added: the cipher is still missing, for both.
    let error = both(
        &fixture,
        case(
            "legacy sshd, only kex added",
            &[
                "KexAlgorithms=+diffie-hellman-group14-sha1",
                "HostKeyAlgorithms=+ssh-rsa",
            ],
            Some(json!({"kex": "+diffie-hellman-group14-sha1"})),
        ),
        false,
    )
    .await
    .expect("an error");
    assert_eq!(error.kind(), FailureKind::Negotiation, "{error}");
    assert!(error.message().contains("aes128-cbc"), "{error}");
}

#[tokio::test]
async fn host_keys_are_checked_as_ssh_checks_them() {
    let Some(fixture) = Fixture::load("host_keys_are_checked_as_ssh_checks_them") else {
        return;
    };
    let modern = fixture.port("SSHD_ALGO_MODERN_PORT");
    let cert = fixture.port("SSHD_ALGO_CERT_PORT");
    let case = |name, port, known_hosts: &str| Case {
        name,
        port,
        known_hosts: fixture.var(known_hosts),
        ssh_options: &[],
        algorithms: None,
    };

    // The server prefers ed25519; known_hosts holds only its RSA and ECDSA keys.
    both(
        &fixture,
        case("rsa+ecdsa known", modern, "SSHD_ALGO_KH_RSA_ECDSA"),
        true,
    )
    .await;
    both(
        &fixture,
        case("hashed (ssh-keyscan -H)", modern, "SSHD_ALGO_KH_HASHED"),
        true,
    )
    .await;
    // ed25519 revoked, ECDSA listed: asked for ECDSA, both connect.
    both(
        &fixture,
        case(
            "ed25519 revoked, ecdsa listed",
            modern,
            "SSHD_ALGO_KH_REVOKED",
        ),
        true,
    )
    .await;
    let error = both(
        &fixture,
        case("only a revoked key", modern, "SSHD_ALGO_KH_REVOKED_ONLY"),
        false,
    )
    .await
    .expect("an error");
    assert_eq!(error.kind(), FailureKind::HostKey, "{error}");
    assert!(error.message().contains("REVOKED"), "{error}");
    let error = both(
        &fixture,
        case("host not listed", modern, "SSHD_ALGO_KH_UNLISTED"),
        false,
    )
    .await
    .expect("an error");
    assert_eq!(error.kind(), FailureKind::HostKey, "{error}");
    assert!(
        error.message().contains("the host is not listed there"),
        "{error}"
    );

    // A host certificate: trusted through @cert-authority, refused from another CA.
    both(
        &fixture,
        case("@cert-authority", cert, "SSHD_ALGO_KH_CA"),
        true,
    )
    .await;
    let error = both(
        &fixture,
        case("another CA", cert, "SSHD_ALGO_KH_WRONG_CA"),
        false,
    )
    .await
    .expect("an error");
    assert_eq!(error.kind(), FailureKind::HostKey, "{error}");
    assert!(error.message().contains("@cert-authority"), "{error}");
}
