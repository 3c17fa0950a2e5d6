//! Authentication as OpenSSH's `ssh` does it, against the embedded SSH server: only the
//! methods the server offers, in OpenSSH's order (public keys, keyboard-interactive,
//! password); encrypted keys; certificates beside a key; failures that say what was tried and
//! what the server offers; local problems (an unreadable key, a wrong passphrase, an agent
//! that is not there) reported as configuration errors naming the file or socket.

#![cfg(all(feature = "ssh", feature = "testing"))]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use connection_supervisor::ssh::{self, HostKeyPolicy, SshOptions};
use connection_supervisor::testing::{
    AuthMethod, DEFAULT_PASSWORD, DEFAULT_USERNAME, SshTestServer, SshTestServerConfig,
    generate_ed25519_key, sign_user_certificate, write_known_hosts,
};
use connection_supervisor::{
    ConnectionKey, ConnectionManager, Error, FailureKind, ResolvedConnectionParams,
    SupervisorConfig,
};
use russh::keys::PrivateKey;
use russh::keys::ssh_key::LineEnding;

/// A fresh directory for this test's files (known_hosts, keys).
fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cs-ssh-auth-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn server(config: SshTestServerConfig) -> SshTestServer {
    SshTestServer::start(config).await.unwrap()
}

/// Options that trust `server`'s host key and nothing else.
fn options(server: &SshTestServer) -> SshOptions {
    let known_hosts = scratch_dir().join("known_hosts");
    write_known_hosts(&known_hosts, [server]).unwrap();
    SshOptions::default().host_key_policy(HostKeyPolicy::Strict(known_hosts))
}

/// The server's user, with `password` (none when `None`).
fn params(server: &SshTestServer, password: Option<&str>) -> ResolvedConnectionParams {
    ResolvedConnectionParams {
        hostname: "127.0.0.1".into(),
        port: Some(server.port()),
        username: Some(DEFAULT_USERNAME.into()),
        password: password.map(str::to_owned),
        ..ResolvedConnectionParams::default()
    }
}

fn with_extras(
    mut params: ResolvedConnectionParams,
    extras: &[(&str, serde_json::Value)],
) -> ResolvedConnectionParams {
    params.extras = Some(
        extras
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect(),
    );
    params
}

/// Writes `key` to `dir/name` in OpenSSH format, encrypted with `passphrase` if given.
fn write_key(dir: &Path, name: &str, key: &PrivateKey, passphrase: Option<&str>) -> PathBuf {
    let key = match passphrase {
        Some(passphrase) => key.encrypt(&mut rand::rng(), passphrase).unwrap(),
        None => key.clone(),
    };
    let path = dir.join(name);
    std::fs::write(&path, key.to_openssh(LineEnding::LF).unwrap().as_bytes()).unwrap();
    path
}

/// Opens one connection with `options` and `params`, runs `hostname` on it, and shuts down.
async fn login(options: SshOptions, params: &ResolvedConnectionParams) -> Result<String, Error> {
    let config = SupervisorConfig::default().factory(ssh::factory(options));
    let manager = ConnectionManager::spawn(config).await.unwrap();
    let key = ConnectionKey::new("r1", ssh::PLUGIN_NAME);
    let result = match manager.open_connection(&key, params).await {
        Ok(handle) => {
            handle
                .expect("the ssh factory serves \"ssh\"")
                .execute_command("hostname")
                .await
        }
        Err(error) => Err(error),
    };
    manager.shutdown().await.unwrap();
    result
}

fn assert_mentions(error: &Error, parts: &[&str]) {
    let message = error.to_string();
    for part in parts {
        assert!(message.contains(part), "{part:?} is not in: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyboard_interactive_only_device_takes_the_password_at_its_prompt() {
    let device = server(SshTestServerConfig {
        auth_methods: vec![AuthMethod::KeyboardInteractive],
        ..SshTestServerConfig::default()
    })
    .await;
    let output = login(options(&device), &params(&device, Some(DEFAULT_PASSWORD)))
        .await
        .unwrap();
    assert_eq!(output, "device\n");
    assert_eq!(device.auth_attempts(), 1, "one exchange");

    // A wrong password: one exchange, then a failure naming what was tried and offered.
    let error = login(options(&device), &params(&device, Some("hunter2-wrong")))
        .await
        .unwrap_err();
    assert_eq!(error.failure_kind(), Some(FailureKind::Auth), "{error}");
    let addr = format!("127.0.0.1:{}", device.port());
    assert_mentions(
        &error,
        &[
            &format!("{addr} rejected user admin: tried keyboard-interactive;"),
            "the server offers keyboard-interactive",
        ],
    );
    assert!(
        !format!("{error} {error:?}").contains("hunter2"),
        "{error:?}"
    );
    assert_eq!(device.auth_attempts(), 2, "the password is not sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_methods_the_server_offers_are_tried() {
    let dir = scratch_dir();
    let client_key = generate_ed25519_key().unwrap();
    let key_path = write_key(&dir, "id_ed25519", &client_key, None);

    // Password only: the key is never offered.
    let password_only = server(SshTestServerConfig {
        auth_methods: vec![AuthMethod::Password],
        authorized_key: Some(client_key.public_key().clone()),
        ..SshTestServerConfig::default()
    })
    .await;
    let with_key = options(&password_only).identity_file(&key_path);
    login(with_key, &params(&password_only, Some(DEFAULT_PASSWORD)))
        .await
        .unwrap();
    assert_eq!(password_only.auth_attempts(), 1, "only the password");

    // Key only: the password is never sent, and without the key there is nothing to try.
    let key_only = server(SshTestServerConfig {
        auth_methods: vec![AuthMethod::PublicKey],
        authorized_key: Some(client_key.public_key().clone()),
        ..SshTestServerConfig::default()
    })
    .await;
    let with_key = options(&key_only).identity_file(&key_path);
    login(with_key, &params(&key_only, Some(DEFAULT_PASSWORD)))
        .await
        .unwrap();
    assert_eq!(key_only.auth_attempts(), 1, "only the key");
    let error = login(
        options(&key_only),
        &params(&key_only, Some(DEFAULT_PASSWORD)),
    )
    .await
    .unwrap_err();
    assert_eq!(error.failure_kind(), Some(FailureKind::Auth), "{error}");
    assert_mentions(
        &error,
        &[
            &format!(
                "127.0.0.1:{}: no method to log in as admin",
                key_only.port()
            ),
            "the server offers publickey, and we have a password",
        ],
    );
    assert_eq!(key_only.auth_attempts(), 1, "the password was not sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_names_the_methods_tried_and_those_the_server_offers() {
    let dir = scratch_dir();
    let first = write_key(&dir, "id_a", &generate_ed25519_key().unwrap(), None);
    let second = write_key(&dir, "id_b", &generate_ed25519_key().unwrap(), None);
    let device = server(SshTestServerConfig {
        auth_methods: vec![AuthMethod::PublicKey, AuthMethod::Password],
        authorized_key: Some(generate_ed25519_key().unwrap().public_key().clone()),
        ..SshTestServerConfig::default()
    })
    .await;
    let two_keys = options(&device)
        .identity_file(&first)
        .identity_file(&second);
    let error = login(two_keys, &params(&device, Some("wrong")))
        .await
        .unwrap_err();
    assert_eq!(error.failure_kind(), Some(FailureKind::Auth), "{error}");
    assert_mentions(
        &error,
        &[&format!(
            "127.0.0.1:{} rejected user admin: tried publickey (2 keys), password; the server \
             offers publickey,password",
            device.port()
        )],
    );
    assert_eq!(
        device.auth_attempts(),
        3,
        "two keys and a password, once each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_key_needs_its_passphrase_and_a_wrong_one_is_a_config_error() {
    let dir = scratch_dir();
    let client_key = generate_ed25519_key().unwrap();
    let path = write_key(&dir, "id_encrypted", &client_key, Some("correct horse"));
    let device = server(SshTestServerConfig {
        auth_methods: vec![AuthMethod::PublicKey, AuthMethod::Password],
        authorized_key: Some(client_key.public_key().clone()),
        ..SshTestServerConfig::default()
    })
    .await;
    let key_options = || options(&device).identity_file(&path);

    // The passphrase from the options, and from the host's extras (`passphrase` alias).
    login(
        key_options().private_key_passphrase("correct horse"),
        &params(&device, None),
    )
    .await
    .unwrap();
    let extras = with_extras(
        params(&device, None),
        &[("passphrase", "correct horse".into())],
    );
    login(key_options(), &extras).await.unwrap();

    // Wrong and missing: a local error naming the file, never the passphrase.
    let wrong = login(
        key_options().private_key_passphrase("hunter2-wrong"),
        &params(&device, None),
    )
    .await
    .unwrap_err();
    assert_eq!(wrong.failure_kind(), Some(FailureKind::Config), "{wrong}");
    assert_mentions(&wrong, &[&path.display().to_string(), "wrong passphrase?"]);
    assert!(
        !format!("{wrong} {wrong:?}").contains("hunter2"),
        "{wrong:?}"
    );
    let missing = login(key_options(), &params(&device, None))
        .await
        .unwrap_err();
    assert_eq!(
        missing.failure_kind(),
        Some(FailureKind::Config),
        "{missing}"
    );
    assert_mentions(
        &missing,
        &[&path.display().to_string(), "no passphrase is set"],
    );

    // As `ssh` does, a key that cannot be used is passed over when the password gets in.
    login(
        key_options().private_key_passphrase("hunter2-wrong"),
        &params(&device, Some(DEFAULT_PASSWORD)),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_key_file_or_a_missing_agent_is_a_config_error_naming_it() {
    let dir = scratch_dir();
    let device = server(SshTestServerConfig {
        auth_methods: vec![AuthMethod::PublicKey],
        authorized_key: Some(generate_ed25519_key().unwrap().public_key().clone()),
        ..SshTestServerConfig::default()
    })
    .await;
    let absent = dir.join("no_such_key");
    let error = login(
        options(&device).identity_file(&absent),
        &params(&device, None),
    )
    .await
    .unwrap_err();
    assert_eq!(error.failure_kind(), Some(FailureKind::Config), "{error}");
    assert_mentions(
        &error,
        &[&format!("cannot read the private key {}", absent.display())],
    );

    let socket = dir.join("no_agent.sock");
    let error = login(
        options(&device).agent_socket(&socket),
        &params(&device, None),
    )
    .await
    .unwrap_err();
    assert_eq!(error.failure_kind(), Some(FailureKind::Config), "{error}");
    assert_mentions(&error, &[&format!("the ssh-agent at {}", socket.display())]);

    // A bad value in the extras: a local error naming the extra, not its value.
    let bad = with_extras(params(&device, None), &[("agent", "yes".into())]);
    let error = login(options(&device), &bad).await.unwrap_err();
    assert_eq!(error.failure_kind(), Some(FailureKind::Config), "{error}");
    assert_mentions(&error, &["extras.agent", "must be true or false"]);
    assert_eq!(device.auth_attempts(), 0, "nothing was offered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_beside_the_key_logs_in_where_the_key_alone_does_not() {
    let dir = scratch_dir();
    let ca = generate_ed25519_key().unwrap();
    let client_key = generate_ed25519_key().unwrap();
    let path = write_key(&dir, "id_ed25519", &client_key, None);
    let device = server(SshTestServerConfig {
        auth_methods: vec![AuthMethod::PublicKey],
        trusted_user_ca: Some(ca.public_key().clone()),
        ..SshTestServerConfig::default()
    })
    .await;

    // The key alone is not authorized.
    let error = login(
        options(&device).identity_file(&path),
        &params(&device, None),
    )
    .await
    .unwrap_err();
    assert_eq!(error.failure_kind(), Some(FailureKind::Auth), "{error}");

    // With `KEY-cert.pub` beside it, signed by the CA for this user: in.
    let certificate =
        sign_user_certificate(&ca, client_key.public_key(), DEFAULT_USERNAME).unwrap();
    let mut cert_path = path.clone().into_os_string();
    cert_path.push("-cert.pub");
    std::fs::write(&cert_path, certificate.to_openssh().unwrap()).unwrap();
    login(
        options(&device).identity_file(&path),
        &params(&device, None),
    )
    .await
    .unwrap();

    // Signed for another user: refused, and the failure counts the certificate.
    let other = sign_user_certificate(&ca, client_key.public_key(), "someone-else").unwrap();
    std::fs::write(&cert_path, other.to_openssh().unwrap()).unwrap();
    let error = login(
        options(&device).identity_file(&path),
        &params(&device, None),
    )
    .await
    .unwrap_err();
    assert_mentions(&error, &["tried publickey (1 key, 1 certificate)"]);
}
