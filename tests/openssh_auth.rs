//! Authentication against real OpenSSH servers, each configuration also tried with the `ssh`
//! client: the plugin must get in exactly where `ssh` gets in, and fail where it fails.
//!
//! The servers are the fixture's authentication servers (`scripts/sshd-fixture.sh start`, the
//! `SSHD_AUTH_*` lines of `${SSHD_FIXTURE_DIR:-/tmp/cs-sshd-fixture}/fixture.env`): one that
//! offers keyboard-interactive only (PAM asks for the password), one that offers public keys
//! only (an encrypted key is authorized, and user certificates of a CA are trusted). When the
//! fixture is missing each test prints a note and passes, unless `CI` is set: then it fails.
//!
//! Passwords and passphrases reach `ssh` and `ssh-add` through `SSH_ASKPASS` (with
//! `SSH_ASKPASS_REQUIRE=force`); where `ssh` could only ask a person, it runs with `BatchMode`.
//! The agent tests run their own `ssh-agent -a SOCKET -D`, stopped by its PID.

#![cfg(all(feature = "ssh", feature = "testing"))]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use connection_supervisor::ssh::{self, HostKeyPolicy, SshOptions};
use connection_supervisor::{
    ConnectionKey, ConnectionManager, ConnectionPolicy, Error, FailureKind,
    ResolvedConnectionParams, SupervisorConfig, Timeouts,
};

const NOT_RUNNING: &str =
    "OpenSSH fixture (with its SSHD_AUTH_* servers) not running: run scripts/sshd-fixture.sh start";

/// Bound on waiting for an agent's socket to appear.
const AGENT_START: Duration = Duration::from_secs(10);

/// What `fixture.env` says about the authentication servers.
#[derive(Clone, Debug)]
struct Fixture {
    user: String,
    password: String,
    kbdint_port: u16,
    pubkey_port: u16,
    /// Encrypted with `passphrase`, authorized on the public-key server.
    key: PathBuf,
    passphrase: String,
    /// Not authorized; `cert_key-cert.pub` is signed by the CA the server trusts.
    cert_key: PathBuf,
    known_hosts: PathBuf,
}

/// Reads the fixture; `None` means skip (the note is printed), and with `CI` set a missing
/// fixture fails the test instead.
fn fixture(test: &str) -> Option<Fixture> {
    let dir: PathBuf = match std::env::var_os("SSHD_FIXTURE_DIR") {
        Some(dir) if !dir.is_empty() => dir.into(),
        _ => "/tmp/cs-sshd-fixture".into(),
    };
    let path = dir.join("fixture.env");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let vars: HashMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    if !vars.contains_key("SSHD_AUTH_PUBKEY_PORT") {
        if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
            panic!(
                "{NOT_RUNNING} (no SSHD_AUTH_* in {}; CI is set)",
                path.display()
            );
        }
        eprintln!(
            "skipping {test}: {NOT_RUNNING} (no SSHD_AUTH_* in {})",
            path.display()
        );
        return None;
    }
    let var = |name: &str| {
        vars.get(name)
            .copied()
            .unwrap_or_else(|| panic!("{} has no {name}", path.display()))
    };
    let port = |name: &str| var(name).parse().expect("a port number");
    Some(Fixture {
        user: var("SSHD_USER").to_owned(),
        password: var("SSHD_PASSWORD").to_owned(),
        kbdint_port: port("SSHD_AUTH_KBDINT_PORT"),
        pubkey_port: port("SSHD_AUTH_PUBKEY_PORT"),
        key: var("SSHD_AUTH_KEY").into(),
        passphrase: var("SSHD_AUTH_PASSPHRASE").to_owned(),
        cert_key: var("SSHD_AUTH_CERT_KEY").into(),
        known_hosts: var("SSHD_AUTH_KNOWN_HOSTS").into(),
    })
}

/// A fresh directory for one test's files (askpass, agent socket, copied keys).
fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cs-openssh-auth-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Fixture {
    fn options(&self) -> SshOptions {
        SshOptions::default().host_key_policy(HostKeyPolicy::Strict(self.known_hosts.clone()))
    }

    fn params(&self, port: u16, password: Option<&str>) -> ResolvedConnectionParams {
        ResolvedConnectionParams {
            hostname: "127.0.0.1".into(),
            port: Some(port),
            username: Some(self.user.clone()),
            password: password.map(str::to_owned),
            ..ResolvedConnectionParams::default()
        }
    }

    /// `ssh` to `port` with the fixture's known_hosts, no config file, no agent unless `args`
    /// name one, running `hostname`. `secret` is what askpass answers every prompt with;
    /// without one `ssh` runs in batch mode. `true` when it got in and ran the command.
    fn ssh(&self, port: u16, args: &[&str], secret: Option<&str>) -> bool {
        let dir = scratch_dir();
        let mut command = Command::new("ssh");
        command
            .args(["-F", "/dev/null", "-n"])
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=yes"])
            .args(["-o", "ConnectTimeout=10"])
            .args(["-o", "NumberOfPasswordPrompts=1"])
            .args(["-o", "LogLevel=ERROR"])
            .args(args)
            .args(["-p", &port.to_string()])
            .stdin(Stdio::null())
            .env_remove("SSH_AUTH_SOCK");
        if !args.iter().any(|arg| arg.starts_with("IdentityAgent=")) {
            command.args(["-o", "IdentityAgent=none"]);
        }
        match secret {
            Some(secret) => askpass(&mut command, &dir, secret),
            None => {
                command.args(["-o", "BatchMode=yes"]);
            }
        }
        command
            .arg(format!("{}@127.0.0.1", self.user))
            .arg("hostname");
        let output = command.output().expect("ssh runs");
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!(
            "ssh -p {port} {args:?}: {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        output.status.success() && !output.stdout.is_empty()
    }
}

/// Makes `command` take its passwords and passphrases from an askpass script that prints
/// `secret` (kept in a file of `dir`, readable by us only).
fn askpass(command: &mut Command, dir: &Path, secret: &str) {
    use std::os::unix::fs::PermissionsExt;
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let script = dir.join("askpass");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec cat '{}'\n", secret_file.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    command
        .env("SSH_ASKPASS", &script)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0");
}

/// Logs in with the plugin and runs `hostname`; the error if it did not get in.
async fn plugin(options: SshOptions, params: &ResolvedConnectionParams) -> Result<(), Error> {
    let policy = ConnectionPolicy::default().timeouts(
        Timeouts::default()
            .open(Duration::from_secs(20))
            .request(Duration::from_secs(10)),
    );
    let config = SupervisorConfig::default()
        .factory(ssh::factory(options))
        .policy(policy);
    let manager = ConnectionManager::spawn(config).await.unwrap();
    let key = ConnectionKey::new("openssh-auth", ssh::PLUGIN_NAME);
    let result = match manager.open_connection(&key, params).await {
        Ok(handle) => handle
            .expect("the ssh factory serves \"ssh\"")
            .execute_command("hostname")
            .await
            .map(drop),
        Err(error) => Err(error),
    };
    manager.shutdown().await.unwrap();
    result
}

/// Runs `ssh` off the async workers (it blocks for as long as the login takes).
async fn ssh(fx: &Fixture, port: u16, args: Vec<String>, secret: Option<String>) -> bool {
    let fx = fx.clone();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fx.ssh(port, &args, secret.as_deref())
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|arg| (*arg).to_owned()).collect()
}

/// The plugin and `ssh` agree: both in, or both out.
#[track_caller]
fn assert_agree(case: &str, plugin: &Result<(), Error>, ssh: bool, expected: bool) {
    assert_eq!(
        (plugin.is_ok(), ssh),
        (expected, expected),
        "{case}: plugin {plugin:?}, ssh got in: {ssh}"
    );
}

#[track_caller]
fn assert_failed(result: &Result<(), Error>, kind: FailureKind, parts: &[&str]) {
    let error = result.as_ref().expect_err("a failure");
    assert_eq!(error.failure_kind(), Some(kind), "{error}");
    let message = error.to_string();
    for part in parts {
        assert!(message.contains(part), "{part:?} is not in: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyboard_interactive_only_takes_the_password_where_ssh_does() {
    let Some(fx) = fixture("keyboard_interactive_only_takes_the_password_where_ssh_does") else {
        return;
    };
    let port = fx.kbdint_port;
    let no_keys = args(&["-o", "PubkeyAuthentication=no"]);

    let ours = plugin(fx.options(), &fx.params(port, Some(&fx.password))).await;
    let theirs = ssh(&fx, port, no_keys.clone(), Some(fx.password.clone())).await;
    assert_agree("right password", &ours, theirs, true);

    let wrong = "hunter2-wrong";
    let ours = plugin(fx.options(), &fx.params(port, Some(wrong))).await;
    let theirs = ssh(&fx, port, no_keys, Some(wrong.to_owned())).await;
    assert_agree("wrong password", &ours, theirs, false);
    assert_failed(
        &ours,
        FailureKind::Auth,
        &[
            &format!("127.0.0.1:{port} rejected user {}", fx.user),
            "tried keyboard-interactive;",
            "the server offers keyboard-interactive",
        ],
    );
    let error = ours.unwrap_err();
    assert!(!format!("{error} {error:?}").contains(wrong), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_key_gets_in_with_its_passphrase_only() {
    let Some(fx) = fixture("an_encrypted_key_gets_in_with_its_passphrase_only") else {
        return;
    };
    let port = fx.pubkey_port;
    let key = fx.key.display().to_string();
    let only_this_key = args(&["-o", "IdentitiesOnly=yes", "-i", &key]);
    let with_key = || fx.options().identity_file(&fx.key);

    let ours = plugin(
        with_key().private_key_passphrase(fx.passphrase.clone()),
        &fx.params(port, None),
    )
    .await;
    let theirs = ssh(
        &fx,
        port,
        only_this_key.clone(),
        Some(fx.passphrase.clone()),
    )
    .await;
    assert_agree("right passphrase", &ours, theirs, true);

    let ours = plugin(
        with_key().private_key_passphrase("hunter2-wrong"),
        &fx.params(port, None),
    )
    .await;
    let theirs = ssh(
        &fx,
        port,
        only_this_key.clone(),
        Some("hunter2-wrong".into()),
    )
    .await;
    assert_agree("wrong passphrase", &ours, theirs, false);
    assert_failed(&ours, FailureKind::Config, &[&key, "wrong passphrase?"]);
    let error = ours.unwrap_err();
    assert!(
        !format!("{error} {error:?}").contains("hunter2"),
        "{error:?}"
    );

    // No passphrase: ssh could only ask a person (batch mode).
    let ours = plugin(with_key(), &fx.params(port, None)).await;
    let theirs = ssh(&fx, port, only_this_key, None).await;
    assert_agree("no passphrase", &ours, theirs, false);
    assert_failed(&ours, FailureKind::Config, &[&key, "no passphrase is set"]);

    // A password is no way in where only public keys are offered.
    let ours = plugin(fx.options(), &fx.params(port, Some(&fx.password))).await;
    let theirs = ssh(
        &fx,
        port,
        args(&["-o", "PubkeyAuthentication=no"]),
        Some(fx.password.clone()),
    )
    .await;
    assert_agree("password only", &ours, theirs, false);
    assert_failed(
        &ours,
        FailureKind::Auth,
        &["the server offers publickey, and we have a password"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_beside_the_key_gets_in_where_ssh_does() {
    let Some(fx) = fixture("a_certificate_beside_the_key_gets_in_where_ssh_does") else {
        return;
    };
    let port = fx.pubkey_port;
    let with_cert = fx.cert_key.display().to_string();
    let ours = plugin(
        fx.options().identity_file(&fx.cert_key),
        &fx.params(port, None),
    )
    .await;
    let theirs = ssh(
        &fx,
        port,
        args(&["-o", "IdentitiesOnly=yes", "-i", &with_cert]),
        None,
    )
    .await;
    assert_agree("with its certificate", &ours, theirs, true);

    // The same key without the certificate beside it is not authorized.
    let dir = scratch_dir();
    let bare = dir.join("bare_key");
    std::fs::copy(&fx.cert_key, &bare).unwrap();
    let bare_arg = bare.display().to_string();
    let ours = plugin(fx.options().identity_file(&bare), &fx.params(port, None)).await;
    let theirs = ssh(
        &fx,
        port,
        args(&["-o", "IdentitiesOnly=yes", "-i", &bare_arg]),
        None,
    )
    .await;
    assert_agree("without its certificate", &ours, theirs, false);
    assert_failed(&ours, FailureKind::Auth, &["tried publickey (1 key)"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An `ssh-agent -a SOCKET -D` of our own, killed (by its PID) when dropped.
struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Agent {
    fn start(dir: &Path) -> Self {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-a")
            .arg(&socket)
            .arg("-D")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent runs");
        let agent = Self { child, socket };
        // The agent says nothing when it listens; its socket appearing is the sign.
        let deadline = Instant::now() + AGENT_START;
        while !agent.socket.exists() {
            assert!(Instant::now() < deadline, "ssh-agent did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        agent
    }

    /// `ssh-add KEY` (which also loads `KEY-cert.pub`), answering a passphrase prompt with
    /// `passphrase`.
    fn add(&self, key: &Path, passphrase: Option<&str>, dir: &Path) {
        let mut command = Command::new("ssh-add");
        command
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.socket)
            .stdin(Stdio::null());
        if let Some(passphrase) = passphrase {
            askpass(&mut command, dir, passphrase);
        }
        let output = command.output().expect("ssh-add runs");
        assert!(
            output.status.success(),
            "ssh-add {}: {}",
            key.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_keys_and_certificates_get_in_where_ssh_does() {
    let Some(fx) = fixture("the_agents_keys_and_certificates_get_in_where_ssh_does") else {
        return;
    };
    let port = fx.pubkey_port;
    let dir = scratch_dir();
    let mut agent = Agent::start(&dir);
    let socket = agent.socket.display().to_string();
    let through_agent = args(&["-o", &format!("IdentityAgent={socket}")]);
    let agent_socket = agent.socket.clone();
    let with_agent = || fx.options().agent_socket(&agent_socket);

    // An empty agent: nothing to offer.
    let ours = plugin(with_agent(), &fx.params(port, None)).await;
    let theirs = ssh(&fx, port, through_agent.clone(), None).await;
    assert_agree("empty agent", &ours, theirs, false);
    assert_failed(
        &ours,
        FailureKind::Auth,
        &["no method to log in", "we have an agent"],
    );

    // The encrypted key, unlocked into the agent with its passphrase.
    agent.add(&fx.key, Some(&fx.passphrase), &dir);
    let ours = plugin(with_agent(), &fx.params(port, None)).await;
    let theirs = ssh(&fx, port, through_agent.clone(), None).await;
    assert_agree("agent key", &ours, theirs, true);

    // A fresh agent holding only the certificate's key and the certificate itself.
    agent.stop();
    let _ = std::fs::remove_file(&agent.socket);
    let mut agent = Agent::start(&dir);
    agent.add(&fx.cert_key, None, &dir);
    let ours = plugin(with_agent(), &fx.params(port, None)).await;
    let theirs = ssh(&fx, port, through_agent.clone(), None).await;
    assert_agree("agent certificate", &ours, theirs, true);

    // The agent gone, and nothing else to try: a local error naming its socket.
    agent.stop();
    let ours = plugin(with_agent(), &fx.params(port, None)).await;
    let theirs = ssh(&fx, port, through_agent, None).await;
    assert_agree("agent gone", &ours, theirs, false);
    assert_failed(
        &ours,
        FailureKind::Config,
        &[&format!("the ssh-agent at {socket}")],
    );
    let _ = std::fs::remove_dir_all(&dir);
}
