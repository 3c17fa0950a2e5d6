//! The SSH plugin (feature `ssh`, on by default): real SSH through [russh], with verified host
//! keys, password and public-key authentication, parallel commands over one session, and loss
//! reported to the supervisor the moment the session ends.
//!
//! ```no_run
//! use connection_supervisor::{ConnectionKey, ConnectionManager, ResolvedConnectionParams};
//! use connection_supervisor::ssh::{self, HostKeyPolicy, SshOptions};
//!
//! # async fn run() -> Result<(), connection_supervisor::Error> {
//! let options = SshOptions {
//!     host_key_policy: HostKeyPolicy::Strict("/etc/fleet/known_hosts".into()),
//!     ..SshOptions::default()
//! };
//! let manager = ConnectionManager::with_connection_factory(ssh::factory(options)).await?;
//! let params = ResolvedConnectionParams {
//!     hostname: "10.0.0.1".into(),
//!     username: Some("admin".into()),
//!     password: Some("secret".into()),
//!     ..Default::default()
//! };
//! let router = manager
//!     .open_connection(&ConnectionKey::new("r1", ssh::PLUGIN_NAME), &params)
//!     .await?
//!     .expect("the ssh factory serves plugin \"ssh\"");
//! let output = router.run_command("show version").await?;
//! println!("{} (exit {:?})", output.stdout, output.exit_status);
//! # Ok(()) }
//! ```
//!
//! The core knows nothing of SSH: this module only implements
//! [`Connection`] and [`CommandRunner`].

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use russh::client::{self, DisconnectReason};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, Disconnect};
use tracing::{debug, info};

use crate::connection::{
    CommandError, CommandOutput, CommandRunner, Connection, ConnectionFactory, ConnectionKey,
    FailureKind, LossNotifier, OpenError, ResolvedConnectionParams,
};

/// The plugin name the SSH factory serves.
pub const PLUGIN_NAME: &str = "ssh";

/// How server host keys are checked. A refused key fails the open with
/// [`FailureKind::HostKey`], which is permanent: it is not retried in a loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Only keys recorded in this known_hosts file are accepted; unknown and changed keys are
    /// refused. The default, against `~/.ssh/known_hosts`.
    Strict(PathBuf),
    /// Unknown hosts have their key recorded in this file (trust on first use); a changed key
    /// is refused.
    AcceptNew(PathBuf),
    /// Every key is accepted. Only for lab networks and tests: it gives up protection against
    /// a man in the middle, so it must be chosen explicitly.
    AcceptAny,
}

impl Default for HostKeyPolicy {
    fn default() -> Self {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        Self::Strict(home.join(".ssh").join("known_hosts"))
    }
}

/// Where a private key comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum PrivateKeySource {
    /// An OpenSSH or PEM private key file.
    Path(PathBuf),
    /// The key itself, in OpenSSH or PEM text form.
    InMemory(String),
}

impl fmt::Debug for PrivateKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(path) => f.debug_tuple("Path").field(path).finish(),
            Self::InMemory(_) => f.write_str("InMemory(<redacted>)"),
        }
    }
}

/// Settings for every SSH connection the factory makes. Per host, `ResolvedConnectionParams`
/// overrides them: `port`, `username`, `password`, and in `extras` `private_key_path`,
/// `private_key` (the key text) and `private_key_passphrase`.
///
/// `Debug` never prints the password, the key or its passphrase.
#[derive(Clone, PartialEq)]
pub struct SshOptions {
    /// Port when the params give none. Defaults to 22.
    pub port: u16,
    /// User when the params give none.
    pub username: Option<String>,
    /// Password when the params give none. Tried after the private key, if both are set.
    pub password: Option<String>,
    /// Private key when the params' extras give none. Tried first.
    pub private_key: Option<PrivateKeySource>,
    /// Passphrase of the private key, if it is encrypted.
    pub private_key_passphrase: Option<String>,
    /// How host keys are checked. Defaults to strict against `~/.ssh/known_hosts`.
    pub host_key_policy: HostKeyPolicy,
    /// How often to send a keepalive on an idle session. Defaults to 15 s; `None` turns
    /// keepalives off (a dead peer is then noticed only when a request fails).
    pub keepalive_interval: Option<Duration>,
    /// Unanswered keepalives before the session is declared lost. Defaults to 3.
    pub keepalive_max: usize,
    /// Commands that may run at once on one connection, each on its own channel. Defaults to
    /// 8, below OpenSSH's `MaxSessions` of 10.
    pub max_channels: usize,
}

impl Default for SshOptions {
    fn default() -> Self {
        Self {
            port: 22,
            username: None,
            password: None,
            private_key: None,
            private_key_passphrase: None,
            host_key_policy: HostKeyPolicy::default(),
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            max_channels: 8,
        }
    }
}

impl fmt::Debug for SshOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |set: bool| if set { Some("<redacted>") } else { None };
        f.debug_struct("SshOptions")
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &redacted(self.password.is_some()))
            .field("private_key", &self.private_key)
            .field(
                "private_key_passphrase",
                &redacted(self.private_key_passphrase.is_some()),
            )
            .field("host_key_policy", &self.host_key_policy)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_max", &self.keepalive_max)
            .field("max_channels", &self.max_channels)
            .finish()
    }
}

/// A factory that makes an [`SshConnection`] for keys whose plugin is [`PLUGIN_NAME`], and
/// `None` for any other plugin.
pub fn factory(options: SshOptions) -> Arc<ConnectionFactory> {
    let options = Arc::new(options);
    Arc::new(move |key: &ConnectionKey| {
        (key.plugin_name == PLUGIN_NAME)
            .then(|| Box::new(SshConnection::new(options.clone())) as Box<dyn Connection>)
    })
}

type Session = client::Handle<ClientHandler>;

/// One SSH connection: a russh session, opened and reopened by the supervisor.
pub struct SshConnection {
    options: Arc<SshOptions>,
    session: Option<Arc<Session>>,
    /// Cleared by russh's `disconnected` callback the moment the session ends.
    alive: Arc<AtomicBool>,
    notifier: Option<LossNotifier>,
}

impl fmt::Debug for SshConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshConnection")
            .field("options", &self.options)
            .field("open", &self.session.is_some())
            .finish_non_exhaustive()
    }
}

impl SshConnection {
    /// An unopened connection with `options`.
    pub fn new(options: Arc<SshOptions>) -> Self {
        Self {
            options,
            session: None,
            alive: Arc::new(AtomicBool::new(false)),
            notifier: None,
        }
    }

    async fn disconnect(&mut self) {
        self.alive.store(false, Ordering::SeqCst);
        if let Some(session) = self.session.take() {
            let _ = session
                .disconnect(Disconnect::ByApplication, "closing", "en")
                .await;
        }
    }
}

#[async_trait]
impl Connection for SshConnection {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
            && self
                .session
                .as_ref()
                .is_some_and(|session| !session.is_closed())
    }

    fn set_loss_notifier(&mut self, notifier: LossNotifier) {
        self.notifier = Some(notifier);
    }

    async fn open(&mut self, params: &ResolvedConnectionParams) -> Result<(), OpenError> {
        // A reopen replaces whatever is left of the previous session.
        self.disconnect().await;
        let port = params.port.unwrap_or(self.options.port);
        let host = params.hostname.as_str();
        let credentials = Credentials::resolve(&self.options, params)?;

        let addrs: Vec<_> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| OpenError::new(FailureKind::Dns, format!("cannot resolve {host}: {e}")))?
            .collect();
        let stream = connect_any(&addrs, host, port).await?;
        let _ = stream.set_nodelay(true);

        let alive = Arc::new(AtomicBool::new(true));
        let refusal = Arc::new(Mutex::new(None));
        let handler = ClientHandler {
            host: host.to_owned(),
            port,
            policy: self.options.host_key_policy.clone(),
            refusal: refusal.clone(),
            alive: alive.clone(),
            notifier: self.notifier.clone(),
        };
        let config = Arc::new(client::Config {
            nodelay: true,
            keepalive_interval: self.options.keepalive_interval,
            keepalive_max: self.options.keepalive_max,
            ..client::Config::default()
        });
        let mut session = client::connect_stream(config, stream, handler)
            .await
            .map_err(|error| {
                let refused = refusal
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                match refused {
                    Some(reason) => OpenError::new(FailureKind::HostKey, reason),
                    None => classify(&error, host, port),
                }
            })?;
        credentials.authenticate(&mut session, host).await?;
        info!(%host, port, user = %credentials.username, "ssh session open");
        self.session = Some(Arc::new(session));
        self.alive = alive;
        Ok(())
    }

    async fn close(&mut self) {
        self.disconnect().await;
    }

    async fn execute_command(&mut self, command: &str) -> Result<String, CommandError> {
        let session = self
            .session
            .clone()
            .ok_or_else(|| CommandError::ConnectionLost("not open".to_owned()))?;
        run_on(&session, command).await?.into_result()
    }

    fn command_runner(&self) -> Option<(Arc<dyn CommandRunner>, usize)> {
        let runner = SshRunner {
            session: self.session.clone()?,
            alive: self.alive.clone(),
        };
        Some((Arc::new(runner), self.options.max_channels))
    }
}

/// Runs commands as parallel channels over one session.
struct SshRunner {
    session: Arc<Session>,
    alive: Arc<AtomicBool>,
}

#[async_trait]
impl CommandRunner for SshRunner {
    async fn run(&self, command: &str) -> Result<CommandOutput, CommandError> {
        run_on(&self.session, command).await
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst) && !self.session.is_closed()
    }
}

async fn run_on(session: &Session, command: &str) -> Result<CommandOutput, CommandError> {
    let lost = |what: &str, error: russh::Error| {
        if session.is_closed() {
            CommandError::ConnectionLost(format!("{what}: {error}"))
        } else {
            CommandError::Other(format!("{what}: {error}"))
        }
    };
    let mut channel = session
        .channel_open_session()
        .await
        .map_err(|e| lost("cannot open a channel", e))?;
    channel
        .exec(true, command)
        .await
        .map_err(|e| lost("cannot start the command", e))?;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut exit_status = None;
    let mut closed_cleanly = false;
    while let Some(message) = channel.wait().await {
        match message {
            ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, ext: 1 } => stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status: code } => exit_status = Some(code),
            ChannelMsg::Eof | ChannelMsg::Close => closed_cleanly = true,
            _ => {}
        }
    }
    if exit_status.is_none() && !closed_cleanly {
        return Err(CommandError::ConnectionLost(
            "the session ended before the command finished".to_owned(),
        ));
    }
    Ok(CommandOutput {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        exit_status,
    })
}

async fn connect_any(
    addrs: &[std::net::SocketAddr],
    host: &str,
    port: u16,
) -> Result<tokio::net::TcpStream, OpenError> {
    let mut last = None;
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some(error),
        }
    }
    Err(match last {
        Some(error) => classify_io(&error, host, port),
        None => OpenError::new(FailureKind::Dns, format!("{host} resolved to no address")),
    })
}

fn classify_io(error: &io::Error, host: &str, port: u16) -> OpenError {
    let kind = match error.kind() {
        io::ErrorKind::ConnectionRefused => FailureKind::Refused,
        io::ErrorKind::TimedOut => FailureKind::Timeout,
        _ => FailureKind::Transport,
    };
    OpenError::new(kind, format!("{host}:{port}: {error}"))
}

fn classify(error: &russh::Error, host: &str, port: u16) -> OpenError {
    match error {
        russh::Error::IO(io) => classify_io(io, host, port),
        russh::Error::UnknownKey => OpenError::new(
            FailureKind::HostKey,
            format!("host key of {host}:{port} refused"),
        ),
        russh::Error::ConnectionTimeout | russh::Error::KeepaliveTimeout => {
            OpenError::new(FailureKind::Timeout, format!("{host}:{port}: {error}"))
        }
        _ => OpenError::new(
            FailureKind::Transport,
            format!("ssh handshake with {host}:{port} failed: {error}"),
        ),
    }
}

/// The credentials for one open, resolved from the params first, then the options. Kept only
/// for the duration of the open.
struct Credentials {
    username: String,
    password: Option<String>,
    key: Option<PrivateKeySource>,
    passphrase: Option<String>,
}

impl Credentials {
    fn resolve(options: &SshOptions, params: &ResolvedConnectionParams) -> Result<Self, OpenError> {
        let extra = |name: &str| {
            params
                .extras
                .as_ref()
                .and_then(|extras| extras.get(name))
                .and_then(|value| value.as_str())
                .map(str::to_owned)
        };
        let username = params
            .username
            .clone()
            .or_else(|| options.username.clone())
            .ok_or_else(|| {
                OpenError::new(
                    FailureKind::Auth,
                    format!("no username for {} (params or SshOptions)", params.hostname),
                )
            })?;
        let key = extra("private_key")
            .map(PrivateKeySource::InMemory)
            .or_else(|| extra("private_key_path").map(|p| PrivateKeySource::Path(p.into())))
            .or_else(|| options.private_key.clone());
        let password = params.password.clone().or_else(|| options.password.clone());
        if key.is_none() && password.is_none() {
            return Err(OpenError::new(
                FailureKind::Auth,
                format!(
                    "no password or private key for {username}@{}",
                    params.hostname
                ),
            ));
        }
        Ok(Self {
            username,
            password,
            key,
            passphrase: extra("private_key_passphrase")
                .or_else(|| options.private_key_passphrase.clone()),
        })
    }

    fn load_key(&self, source: &PrivateKeySource) -> Result<PrivateKey, OpenError> {
        let passphrase = self.passphrase.as_deref();
        match source {
            PrivateKeySource::Path(path) => {
                russh::keys::load_secret_key(path, passphrase).map_err(|e| {
                    OpenError::new(
                        FailureKind::Auth,
                        format!("cannot load the private key {}: {e}", path.display()),
                    )
                })
            }
            PrivateKeySource::InMemory(text) => russh::keys::decode_secret_key(text, passphrase)
                .map_err(|e| {
                    OpenError::new(
                        FailureKind::Auth,
                        format!("cannot decode the private key: {e}"),
                    )
                }),
        }
    }

    /// Tries the private key, then the password; fails with `Auth` when neither is accepted.
    async fn authenticate(&self, session: &mut Session, host: &str) -> Result<(), OpenError> {
        let transport = |e: russh::Error| {
            OpenError::new(FailureKind::Transport, format!("ssh auth with {host}: {e}"))
        };
        let mut tried = Vec::new();
        if let Some(source) = &self.key {
            let key = self.load_key(source)?;
            let hash: Option<HashAlg> = session
                .best_supported_rsa_hash()
                .await
                .map_err(transport)?
                .flatten();
            let result = session
                .authenticate_publickey(
                    self.username.clone(),
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await
                .map_err(transport)?;
            if result.success() {
                return Ok(());
            }
            tried.push("public key");
        }
        if let Some(password) = &self.password {
            let result = session
                .authenticate_password(self.username.clone(), password.clone())
                .await
                .map_err(transport)?;
            if result.success() {
                return Ok(());
            }
            tried.push("password");
        }
        Err(OpenError::new(
            FailureKind::Auth,
            format!(
                "{host} rejected {} for user {}",
                tried.join(" and "),
                self.username
            ),
        ))
    }
}

/// russh's per-session callbacks: host-key verification and loss reporting.
struct ClientHandler {
    host: String,
    port: u16,
    policy: HostKeyPolicy,
    /// Why the host key was refused, for a clear error (russh only says "unknown key").
    refusal: Arc<Mutex<Option<String>>>,
    alive: Arc<AtomicBool>,
    notifier: Option<LossNotifier>,
}

impl ClientHandler {
    fn verify(&self, key: &PublicKey) -> Result<(), String> {
        let (host, port) = (self.host.as_str(), self.port);
        let fingerprint = key.fingerprint(HashAlg::Sha256);
        let check = |path: &PathBuf| russh::keys::check_known_hosts_path(host, port, key, path);
        match &self.policy {
            HostKeyPolicy::AcceptAny => Ok(()),
            HostKeyPolicy::Strict(path) => match check(path) {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!(
                    "host key {fingerprint} of {host}:{port} is not in {}",
                    path.display()
                )),
                Err(russh::keys::Error::KeyChanged { line }) => Err(format!(
                    "host key of {host}:{port} CHANGED: {fingerprint} does not match line {line} of {}",
                    path.display()
                )),
                Err(error) => Err(format!(
                    "cannot check the host key of {host}:{port} against {}: {error}",
                    path.display()
                )),
            },
            HostKeyPolicy::AcceptNew(path) => match check(path) {
                Ok(true) => Ok(()),
                Err(russh::keys::Error::KeyChanged { line }) => Err(format!(
                    "host key of {host}:{port} CHANGED: {fingerprint} does not match line {line} of {}",
                    path.display()
                )),
                // Unknown host (or no file yet): trust on first use.
                Ok(false) | Err(_) => {
                    russh::keys::known_hosts::learn_known_hosts_path(host, port, key, path)
                        .map_err(|error| {
                            format!("cannot record the host key in {}: {error}", path.display())
                        })?;
                    info!(%host, port, %fingerprint, "recorded a new host key");
                    Ok(())
                }
            },
        }
    }
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_public_key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            // A certificate is checked by the key it certifies, as OpenSSH does without a
            // @cert-authority line.
            russh::keys::PublicKeyOrCertificate::Certificate(certificate) => {
                PublicKey::new(certificate.public_key().clone(), "")
            }
        };
        match self.verify(&key) {
            Ok(()) => Ok(true),
            Err(reason) => {
                debug!(host = %self.host, %reason, "host key refused");
                *self.refusal.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
                Ok(false)
            }
        }
    }

    async fn disconnected(
        &mut self,
        reason: DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        // Report, don't propagate: the supervisor decides what a loss means.
        self.alive.store(false, Ordering::SeqCst);
        let reason = match reason {
            DisconnectReason::ReceivedDisconnect(info) => {
                format!("the server disconnected: {info:?}")
            }
            DisconnectReason::Error(error) => format!("the session ended: {error}"),
        };
        if let Some(notifier) = &self.notifier {
            notifier.connection_lost(reason);
        }
        Ok(())
    }
}
