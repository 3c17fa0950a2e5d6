//! An in-process SSH server that imitates a network device, for tests.
//!
//! Longer than 600 lines on purpose for now: it is one server (configuration, accept loop,
//! session handler and command set) that tests read as a whole; the channel bookkeeping
//! already lives in `ssh_server/channels.rs`, and the command set is the next to move out
//! when the device-session work (issue 12) grows it.
//!
//! [`SshTestServer`] listens on `127.0.0.1`, accepts password, public-key, certificate and/or
//! keyboard-interactive logins for one user (see [`AuthMethod`]) and answers `exec` requests
//! with a small, fixed command set (see [`SshTestServer`]). Tests use its control methods to
//! provoke the failures a connection supervisor must survive: dropping every live connection at once ([`SshTestServer::drop_all_sessions`]), the device
//! going away and coming back on the same port with the same host key
//! ([`SshTestServer::stop`] / [`SshTestServer::restart`]), credentials suddenly refused
//! ([`SshTestServer::set_reject_auth`]), slow commands and channel opens
//! ([`SshTestServer::set_latency`], [`SshTestServer::set_channel_open_latency`]), a network
//! link's round-trip time ([`SshTestServer::set_round_trip`]) and channels
//! refused ([`SshTestServer::set_refuse_channels`],
//! [`SshTestServerConfig::max_channels`]). It counts what a client leaves behind: open channels
//! ([`SshTestServer::open_channel_count`]) and running commands
//! ([`SshTestServer::running_command_count`]). It also serves as a bastion: direct-tcpip
//! channels are connected to the address asked for and counted
//! ([`SshTestServer::forwarded_connections`]; `ssh_server/forward.rs`).
//!
//! Every background task belongs to the [`SshTestServer`] value: dropping it (or calling
//! [`SshTestServer::stop`]) closes the listener and every connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use connection_supervisor::testing::{SshTestServer, SshTestServerConfig};
//!
//! let server = SshTestServer::start(SshTestServerConfig::default()).await?;
//! let known_hosts_line = server.known_hosts_line()?;
//! // ... connect to server.addr() as `admin` / `admin` and run `show version` ...
//! server.drop_all_sessions().await;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use russh::keys::{Algorithm, PrivateKey, PublicKey};
use russh::server::{self, Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, Sig};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

mod algorithms;
mod auth;
mod channels;
mod cli;
mod delay;
mod forward;

pub use algorithms::{ServerAlgorithms, generate_host_key};
pub use auth::{AuthMethod, PASSWORD_PROMPT, sign_user_certificate};
use channels::{Channels, Gauge};
pub use cli::{CliDevice, CliDeviceState, CliPlatform, DEFAULT_SECRET};

/// Username accepted by [`SshTestServerConfig::default`].
pub const DEFAULT_USERNAME: &str = "admin";
/// Password accepted by [`SshTestServerConfig::default`].
pub const DEFAULT_PASSWORD: &str = "admin";
/// Hostname reported by [`SshTestServerConfig::default`].
pub const DEFAULT_HOSTNAME: &str = "device";

/// Exit status of a command the fake device does not know (the shell convention for
/// "command not found").
pub const INVALID_COMMAND_EXIT_STATUS: u32 = 127;

/// How long [`SshTestServer::restart`] keeps retrying to bind its old port when the operating
/// system still reports it in use.
const REBIND_DEADLINE: Duration = Duration::from_secs(2);
/// Pause between two bind attempts during [`REBIND_DEADLINE`].
const REBIND_RETRY_INTERVAL: Duration = Duration::from_millis(20);
/// How long [`SshTestServer::drop_all_sessions`] waits for killed sessions to wind down. They
/// normally end within a millisecond; the bound only keeps a wedged session from hanging a test.
const SESSION_END_DEADLINE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Errors returned by [`SshTestServer`] and [`generate_ed25519_key`].
#[derive(Debug, thiserror::Error)]
pub enum SshTestServerError {
    /// Binding or configuring the listening socket failed.
    #[error("SSH test server I/O error: {0}")]
    Io(#[from] io::Error),
    /// Generating or encoding an SSH key failed.
    #[error("SSH test server key error: {0}")]
    Key(#[from] russh::keys::ssh_key::Error),
}

/// Generates a fresh Ed25519 private key.
///
/// Useful to give [`SshTestServerConfig::host_key`] a key that survives several servers, or to
/// make a client key whose public half goes into [`SshTestServerConfig::authorized_key`].
pub fn generate_ed25519_key() -> Result<PrivateKey, SshTestServerError> {
    Ok(PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?)
}

/// Writes a known_hosts file at `path` that trusts exactly the host keys of `servers`, one
/// [`SshTestServer::known_hosts_line`] each, for a client that checks host keys strictly.
pub fn write_known_hosts<'a>(
    path: &Path,
    servers: impl IntoIterator<Item = &'a SshTestServer>,
) -> Result<(), SshTestServerError> {
    let mut text = String::new();
    for server in servers {
        text.push_str(&server.known_hosts_line()?);
        text.push('\n');
    }
    std::fs::write(path, text)?;
    Ok(())
}

/// Settings for [`SshTestServer::start`].
///
/// Build it with struct-update syntax over [`Default`]:
/// `SshTestServerConfig { reject_auth: true, ..Default::default() }`.
#[derive(Clone)]
pub struct SshTestServerConfig {
    /// Name the fake device reports (output of `hostname`, and part of `show version`).
    pub hostname: String,
    /// The only username that can log in.
    pub username: String,
    /// Password accepted for [`Self::username`]; `None` disables password logins.
    pub password: Option<String>,
    /// Public key accepted for [`Self::username`]; `None` disables public-key logins.
    pub authorized_key: Option<PublicKey>,
    /// Login methods offered, in this order (the `none` probe and failures list them).
    /// Defaults to password and public key; `vec![AuthMethod::KeyboardInteractive]` makes a
    /// keyboard-interactive-only device. A method offered without its credential still fails.
    pub auth_methods: Vec<AuthMethod>,
    /// A CA whose user certificates log [`Self::username`] in when they name it as a
    /// principal (OpenSSH's `TrustedUserCAKeys`); see [`sign_user_certificate`].
    pub trusted_user_ca: Option<PublicKey>,
    /// Host key the server presents. `None` generates a new Ed25519 key at start; pass a key to
    /// keep the identity fixed across servers (a [`SshTestServer::restart`] always keeps it).
    pub host_key: Option<PrivateKey>,
    /// Port to listen on, on 127.0.0.1; `0` picks a free one.
    pub port: u16,
    /// Delay added before every command runs, to imitate a slow device. Adjustable later with
    /// [`SshTestServer::set_latency`].
    pub latency: Duration,
    /// Round-trip time of the network link the device imitates: every byte in either
    /// direction, from the TCP handshake on, is delayed by half of it, with many in flight at
    /// once (see `ssh_server/delay.rs`). Unlike [`Self::latency`], paid on every round trip of
    /// the SSH handshake and of every command. `Duration::ZERO`, the default, is loopback.
    /// Adjustable later with [`SshTestServer::set_round_trip`].
    pub round_trip: Duration,
    /// Start out refusing every login, whatever the credentials. Adjustable later with
    /// [`SshTestServer::set_reject_auth`].
    pub reject_auth: bool,
    /// Most channels one connection may have open at once; one more is refused with
    /// `ConnectFailed`, as OpenSSH's `MaxSessions` (10 by default) refuses it. `None`, the
    /// default, sets no limit.
    pub max_channels: Option<usize>,
    /// Which algorithms the server speaks; [`ServerAlgorithms::LegacyOnly`] imitates an old
    /// device (and needs an RSA [`Self::host_key`]).
    pub algorithms: ServerAlgorithms,
    /// Host keys offered beside [`Self::host_key`] (of other types), as `sshd` offers one per
    /// `HostKey` line; the client picks the type.
    pub extra_host_keys: Vec<PrivateKey>,
    /// Serve a PTY shell imitating a network device's CLI (see [`CliDevice`]); `None`, the
    /// default, refuses shells.
    pub cli: Option<CliDevice>,
}

impl Default for SshTestServerConfig {
    fn default() -> Self {
        Self {
            hostname: DEFAULT_HOSTNAME.to_owned(),
            username: DEFAULT_USERNAME.to_owned(),
            password: Some(DEFAULT_PASSWORD.to_owned()),
            authorized_key: None,
            auth_methods: vec![AuthMethod::Password, AuthMethod::PublicKey],
            trusted_user_ca: None,
            host_key: None,
            port: 0,
            latency: Duration::ZERO,
            round_trip: Duration::ZERO,
            reject_auth: false,
            max_channels: None,
            algorithms: ServerAlgorithms::Modern,
            extra_host_keys: Vec::new(),
            cli: None,
        }
    }
}

// Hand-written so that test logs never show the password or the private host key.
impl fmt::Debug for SshTestServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshTestServerConfig")
            .field("hostname", &self.hostname)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "authorized_key",
                &self.authorized_key.as_ref().map(PublicKey::algorithm),
            )
            .field("auth_methods", &self.auth_methods)
            .field(
                "trusted_user_ca",
                &self.trusted_user_ca.as_ref().map(PublicKey::algorithm),
            )
            .field("host_key", &self.host_key.as_ref().map(|_| "<redacted>"))
            .field("port", &self.port)
            .field("latency", &self.latency)
            .field("round_trip", &self.round_trip)
            .field("reject_auth", &self.reject_auth)
            .field("max_channels", &self.max_channels)
            .field("algorithms", &self.algorithms)
            .field(
                "extra_host_keys",
                &self
                    .extra_host_keys
                    .iter()
                    .map(PrivateKey::algorithm)
                    .collect::<Vec<_>>(),
            )
            .field("cli", &self.cli)
            .finish()
    }
}

/// An SSH server on 127.0.0.1 imitating a network device, serving in background tasks.
///
/// Logins: [`SshTestServerConfig::username`] with the configured password and/or public key.
/// Commands, answered on `exec` requests (surrounding whitespace is ignored):
///
/// | command | stdout | stderr | exit status |
/// | --- | --- | --- | --- |
/// | `show version` | a few lines of version text naming the hostname | | 0 |
/// | `hostname` | the hostname and a newline | | 0 |
/// | `echo <text>` | `<text>` and a newline | | 0 |
/// | `sleep <ms>` | nothing, after waiting `<ms>` milliseconds | | 0 |
/// | `exit <code>` | | | `<code>` |
/// | `stderr <text>` | | `<text>` and a newline | 1 |
/// | `cat` | what the client sent on the channel, once it sends EOF | | 0 |
/// | anything else | | `% Invalid input` and a newline | 127 |
///
/// Each command then gets EOF and a channel close. Commands run in their own tasks, so several
/// channels of one connection run concurrently. Shell requests are refused, unless
/// [`SshTestServerConfig::cli`] makes the server imitate a device's CLI. A command whose
/// channel the client closes is stopped; one whose channel gets a `signal` request is stopped
/// too, and its channel gets `exit-signal`, EOF and a close, as a killed process's would.
///
/// Must be started from within a Tokio runtime. Dropping the value stops the server like
/// [`Self::stop`] does (without waiting).
pub struct SshTestServer {
    shared: Arc<Shared>,
    ssh_config: Arc<server::Config>,
    addr: SocketAddr,
    host_key_public: PublicKey,
    /// The accept loop while listening. An async mutex because `stop`/`restart` hold it across
    /// the wait for the old loop to end, which serialises concurrent lifecycle calls.
    accept_task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for SshTestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshTestServer")
            .field("addr", &self.addr)
            .field("hostname", &self.shared.hostname)
            .field("username", &self.shared.username)
            .field("session_count", &self.session_count())
            .finish_non_exhaustive()
    }
}

impl SshTestServer {
    /// Binds 127.0.0.1 on [`SshTestServerConfig::port`] (a free port when `0`) and starts
    /// serving in the background.
    pub async fn start(config: SshTestServerConfig) -> Result<Self, SshTestServerError> {
        let host_key = match config.host_key {
            Some(key) => key,
            None => generate_ed25519_key()?,
        };
        let host_key_public = host_key.public_key().clone();
        let preferred = config.algorithms.preferred(&host_key)?;
        let mut keys = vec![host_key];
        keys.extend(config.extra_host_keys);
        let ssh_config = Arc::new(server::Config {
            keys,
            preferred,
            methods: auth::method_set(&config.auth_methods),
            // russh pads every rejection to 1 s by default (timing-attack defence); tests that
            // exercise bad credentials would crawl.
            auth_rejection_time: Duration::ZERO,
            auth_rejection_time_initial: Some(Duration::ZERO),
            // Only `run_on_socket` reads this flag; our own accept loop sets TCP_NODELAY itself
            // (see `serve_connection`). Kept true so the config says what the server does.
            nodelay: true,
            // Sessions end when a test says so, never because a test paused for a while.
            inactivity_timeout: None,
            ..Default::default()
        });
        let shared = Arc::new(Shared {
            hostname: config.hostname,
            username: config.username,
            password: config.password,
            authorized_key: config.authorized_key,
            trusted_user_ca: config.trusted_user_ca,
            latency_nanos: AtomicU64::new(duration_to_nanos(config.latency)),
            round_trip_nanos: AtomicU64::new(duration_to_nanos(config.round_trip)),
            reject_auth: AtomicBool::new(config.reject_auth),
            auth_attempts: AtomicU64::new(0),
            refuse_channels: AtomicBool::new(false),
            channel_open_latency_nanos: AtomicU64::new(0),
            max_channels: config.max_channels,
            open_channels: Gauge::default(),
            running_commands: Gauge::default(),
            signals: AtomicU64::new(0),
            channels_opened: AtomicU64::new(0),
            sessions: Mutex::new(HashMap::new()),
            forwarding: Arc::default(),
            session_ended: Notify::new(),
            next_session_id: AtomicU64::new(0),
            cli: config
                .cli
                .map(|device| Arc::new(CliDeviceState::new(device))),
        });

        let requested = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, config.port));
        let listener = bind_listener(requested)?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, ssh_config.clone(), shared.clone()));
        tracing::debug!(%addr, "SSH test server listening");

        Ok(Self {
            shared,
            ssh_config,
            addr,
            host_key_public,
            accept_task: tokio::sync::Mutex::new(Some(task)),
        })
    }

    /// The address the server listens on (always 127.0.0.1, also while stopped).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the server listens on; stays the same across [`Self::restart`].
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The server's public host key, to check what a client was shown or to build a
    /// known_hosts file.
    pub fn host_key_public(&self) -> &PublicKey {
        &self.host_key_public
    }

    /// An OpenSSH known_hosts line for this server, `[127.0.0.1]:PORT ssh-ed25519 AAAA...`,
    /// without a trailing newline.
    ///
    /// Written to a file, it is accepted by `russh::keys::check_known_hosts_path("127.0.0.1",
    /// port, key, path)` and by OpenSSH's `ssh`. The host part is `127.0.0.1`, so a client must
    /// look the server up under that name, not `localhost`.
    pub fn known_hosts_line(&self) -> Result<String, SshTestServerError> {
        // known_hosts omits the port only for 22, and russh's lookup mirrors that.
        let host = match self.port() {
            22 => "127.0.0.1".to_owned(),
            port => format!("[127.0.0.1]:{port}"),
        };
        // Without its comment the key is exactly what russh's `learn_known_hosts` writes.
        let key = PublicKey::new(self.host_key_public.key_data().clone(), "");
        Ok(format!("{host} {}", key.to_openssh()?))
    }

    /// Stops listening and kills every live session, then waits (bounded) until the listener
    /// is closed and the sessions are gone. Does nothing more if already stopped.
    pub async fn stop(&self) {
        let mut accept_task = self.accept_task.lock().await;
        stop_accepting(&mut accept_task).await;
        self.drop_all_sessions().await;
    }

    /// Listens again on the same port with the same host key and credentials, first stopping
    /// the server as [`Self::stop`] does if it is still running.
    ///
    /// Fails if the port cannot be bound again within about two seconds, e.g. because another
    /// process took it in the meantime.
    pub async fn restart(&self) -> Result<(), SshTestServerError> {
        let mut accept_task = self.accept_task.lock().await;
        stop_accepting(&mut accept_task).await;
        self.drop_all_sessions().await;

        // Sessions that were just killed leave the port's server side in TIME_WAIT: the bind
        // below only succeeds because `bind_listener` sets SO_REUSEADDR. The retry covers the
        // rare moment where the kernel still reports the old listener.
        let deadline = tokio::time::Instant::now() + REBIND_DEADLINE;
        let listener = loop {
            match bind_listener(self.addr) {
                Ok(listener) => break listener,
                Err(e)
                    if e.kind() == io::ErrorKind::AddrInUse
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(REBIND_RETRY_INTERVAL).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        *accept_task = Some(tokio::spawn(accept_loop(
            listener,
            self.ssh_config.clone(),
            self.shared.clone(),
        )));
        tracing::debug!(addr = %self.addr, "SSH test server listening again");
        Ok(())
    }

    /// Kills the TCP connection of every live session at once, as a network failure or a
    /// device reboot would (no SSH disconnect message is sent), and waits (bounded) until those
    /// sessions have ended. The server keeps listening. Returns how many sessions were killed.
    pub async fn drop_all_sessions(&self) -> usize {
        let killed: Vec<u64> = {
            let sessions = self.shared.lock_sessions();
            for socket in sessions.values() {
                // Shutting down our duplicate of the socket ends the connection for both the
                // client (FIN) and russh's session task (read EOF), whatever it is doing.
                let _ = socket.shutdown(Shutdown::Both);
            }
            sessions.keys().copied().collect()
        };
        self.wait_sessions_ended(&killed).await;
        killed.len()
    }

    /// Makes every later login attempt fail (`true`) or be checked normally again (`false`).
    /// Sessions already logged in are unaffected.
    pub fn set_reject_auth(&self, reject: bool) {
        self.shared.reject_auth.store(reject, Ordering::Relaxed);
    }

    /// Sets the delay added before each command that starts from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.shared
            .latency_nanos
            .store(duration_to_nanos(latency), Ordering::Relaxed);
    }

    /// Sets the round-trip time of the link (see [`SshTestServerConfig::round_trip`]) for the
    /// connections accepted from now on; those already open keep theirs.
    pub fn set_round_trip(&self, round_trip: Duration) {
        self.shared
            .round_trip_nanos
            .store(duration_to_nanos(round_trip), Ordering::Relaxed);
    }

    /// Makes every later channel open fail with `ConnectFailed` (`true`), as it does on a
    /// server whose session limit is reached, or be accepted again (`false`). Channels already
    /// open are unaffected.
    pub fn set_refuse_channels(&self, refuse: bool) {
        self.shared.refuse_channels.store(refuse, Ordering::SeqCst);
    }

    /// Sets the delay before each channel opened from now on is accepted, to imitate a device
    /// slow to start a session. Other channels of the connection are not held up meanwhile.
    pub fn set_channel_open_latency(&self, latency: Duration) {
        self.shared
            .channel_open_latency_nanos
            .store(duration_to_nanos(latency), Ordering::Relaxed);
    }

    /// Number of channels open on every connection: opened by a client and not yet closed by
    /// either side, nor ended with their connection. The server closes a channel once its
    /// command finished; one whose command never does stays open until the client closes it.
    pub fn open_channel_count(&self) -> usize {
        self.shared.open_channels.count()
    }

    /// Number of channels opened since the server was created, on every connection: accepted,
    /// or to be accepted once [`Self::set_channel_open_latency`]'s delay has passed.
    pub fn channels_opened(&self) -> u64 {
        self.shared.channels_opened.load(Ordering::SeqCst)
    }

    /// Number of commands still running, on every connection.
    pub fn running_command_count(&self) -> usize {
        self.shared.running_commands.count()
    }

    /// Number of `signal` requests received on channels that were open, since the server was
    /// created.
    pub fn signals_received(&self) -> u64 {
        self.shared.signals.load(Ordering::SeqCst)
    }

    /// Number of live TCP connections, whether or not they have logged in yet.
    pub fn session_count(&self) -> usize {
        self.shared.lock_sessions().len()
    }

    /// Number of login attempts carrying a credential (a password, a public key or
    /// certificate, or a keyboard-interactive exchange; a key counts once even when the client
    /// first probes it and then signs) since the server was created, across restarts. The `none` method that clients use to list the methods on
    /// offer is not counted. Lets a test prove a client does not retry in a loop.
    pub fn auth_attempts(&self) -> u64 {
        self.shared.auth_attempts.load(Ordering::Relaxed)
    }

    /// What the CLI device did, when the server imitates one ([`SshTestServerConfig::cli`]).
    pub fn cli(&self) -> Option<&CliDeviceState> {
        self.shared.cli.as_deref()
    }

    /// Waits until none of the sessions `ids` is registered any more, or the deadline passes.
    async fn wait_sessions_ended(&self, ids: &[u64]) {
        let wait = async {
            loop {
                // Register interest before checking, so a removal in between is not missed.
                let ended = self.shared.session_ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                if !self
                    .shared
                    .lock_sessions()
                    .keys()
                    .any(|id| ids.contains(id))
                {
                    return;
                }
                ended.await;
            }
        };
        if tokio::time::timeout(SESSION_END_DEADLINE, wait)
            .await
            .is_err()
        {
            tracing::warn!("SSH test server: killed sessions did not end in time");
        }
    }
}

impl Drop for SshTestServer {
    fn drop(&mut self) {
        if let Some(task) = self.accept_task.get_mut().take() {
            // Aborting drops the listener and the connection tasks it owns; their registrations
            // shut their sockets down, which ends russh's session tasks and, with them, the
            // command tasks.
            task.abort();
        }
        // Don't wait for the abort to land: kill the connections right now.
        for socket in self.shared.lock_sessions().values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// Aborts the accept loop, if any, and waits until it is gone so its port is free again.
async fn stop_accepting(accept_task: &mut Option<JoinHandle<()>>) {
    if let Some(task) = accept_task.take() {
        task.abort();
        // The loop never ends on its own, so this only reports the cancellation.
        let _ = task.await;
    }
}

/// Binds a listening socket with SO_REUSEADDR, so a port whose old connections linger in
/// TIME_WAIT can be listened on again.
fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn duration_to_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// State shared by the server value, its accept loop and every session.
struct Shared {
    hostname: String,
    username: String,
    password: Option<String>,
    authorized_key: Option<PublicKey>,
    trusted_user_ca: Option<PublicKey>,
    latency_nanos: AtomicU64,
    round_trip_nanos: AtomicU64,
    reject_auth: AtomicBool,
    auth_attempts: AtomicU64,
    refuse_channels: AtomicBool,
    channel_open_latency_nanos: AtomicU64,
    max_channels: Option<usize>,
    open_channels: Gauge,
    running_commands: Gauge,
    signals: AtomicU64,
    channels_opened: AtomicU64,
    /// A duplicate of each live connection's socket, by session id, so the server can kill
    /// connections that russh owns.
    sessions: Mutex<HashMap<u64, std::net::TcpStream>>,
    /// Direct-tcpip channels: the server as a bastion.
    forwarding: Arc<forward::Forwarding>,
    /// Signalled whenever a session leaves `sessions`.
    session_ended: Notify,
    next_session_id: AtomicU64,
    cli: Option<Arc<CliDeviceState>>,
}

impl Shared {
    fn lock_sessions(&self) -> MutexGuard<'_, HashMap<u64, std::net::TcpStream>> {
        // The map stays consistent even if a holder panicked: every update is a single call.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed))
    }

    fn channel_open_latency(&self) -> Duration {
        Duration::from_nanos(self.channel_open_latency_nanos.load(Ordering::Relaxed))
    }

    fn count_auth_attempt(&self) {
        self.auth_attempts.fetch_add(1, Ordering::Relaxed);
    }

    fn password_ok(&self, user: &str, password: &str) -> bool {
        !self.reject_auth.load(Ordering::Relaxed)
            && user == self.username
            && self.password.as_deref() == Some(password)
    }

    fn key_ok(&self, user: &str, key: &PublicKey) -> bool {
        !self.reject_auth.load(Ordering::Relaxed)
            && user == self.username
            && self
                .authorized_key
                .as_ref()
                // Compare key material only: comments are not part of a key's identity.
                .is_some_and(|authorized| authorized.key_data() == key.key_data())
    }
}

/// Accepts connections until aborted. Owns the connection tasks, so aborting it also aborts
/// them (see [`SessionRegistration`] for what that does to the connections).
async fn accept_loop(listener: TcpListener, ssh_config: Arc<server::Config>, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(stream, peer, ssh_config.clone(), shared.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "SSH test server: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            // Reap finished connection tasks so the set does not grow for ever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Runs one SSH connection to its end.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    ssh_config: Arc<server::Config>,
    shared: Arc<Shared>,
) {
    // `server::Config::nodelay` is only applied by russh's `run_on_socket`; without this every
    // small reply waits for Nagle's algorithm (~40 ms per round trip on loopback).
    if let Err(e) = stream.set_nodelay(true) {
        tracing::warn!(error = %e, "SSH test server: set_nodelay failed");
    }
    let (stream, _registration) = match SessionRegistration::register(&shared, stream) {
        Ok(registered) => registered,
        Err(e) => {
            tracing::warn!(error = %e, %peer, "SSH test server: cannot track connection, closing it");
            return;
        }
    };
    let handler = SessionHandler {
        shared: shared.clone(),
        commands: JoinSet::new(),
        channels: Channels::default(),
        conversation: auth::Conversation::default(),
    };
    let round_trip = Duration::from_nanos(shared.round_trip_nanos.load(Ordering::Relaxed));
    if round_trip.is_zero() {
        run_session(ssh_config, stream, handler, peer).await;
    } else {
        delay::serve(stream, round_trip, |line| {
            run_session(ssh_config, line, handler, peer)
        })
        .await;
    }
}

async fn run_session<S>(
    ssh_config: Arc<server::Config>,
    stream: S,
    handler: SessionHandler,
    peer: SocketAddr,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match server::run_stream(ssh_config, stream, handler).await {
        Ok(session) => match session.await {
            Ok(()) => tracing::debug!(%peer, "SSH test session ended"),
            Err(e) => tracing::debug!(error = %e, %peer, "SSH test session ended with an error"),
        },
        Err(e) => tracing::debug!(error = %e, %peer, "SSH test session setup failed"),
    }
}

/// A live connection's entry in [`Shared::sessions`]. Dropping it (the session ended, or its
/// task was aborted) shuts the socket down and removes the entry.
struct SessionRegistration {
    shared: Arc<Shared>,
    id: u64,
}

impl SessionRegistration {
    /// Registers a duplicate of `stream`'s socket and gives the stream back.
    fn register(shared: &Arc<Shared>, stream: TcpStream) -> io::Result<(TcpStream, Self)> {
        // Tokio has no way to clone a socket; going through std does, and keeps the stream
        // non-blocking as `from_std` requires.
        let std_stream = stream.into_std()?;
        let duplicate = std_stream.try_clone()?;
        let stream = TcpStream::from_std(std_stream)?;
        let id = shared.next_session_id.fetch_add(1, Ordering::Relaxed);
        shared.lock_sessions().insert(id, duplicate);
        Ok((
            stream,
            Self {
                shared: shared.clone(),
                id,
            },
        ))
    }
}

impl Drop for SessionRegistration {
    fn drop(&mut self) {
        let removed = self.shared.lock_sessions().remove(&self.id);
        if let Some(socket) = removed {
            // When the task was aborted rather than finished, russh still holds the socket:
            // shutting it down makes that session end too. Afterwards closing the duplicate
            // leaves russh's descriptor as the last one, so the connection closes with it.
            let _ = socket.shutdown(Shutdown::Both);
        }
        self.shared.session_ended.notify_waiters();
    }
}

/// Per-connection russh handler.
struct SessionHandler {
    shared: Arc<Shared>,
    /// Running commands. Dropped with the handler when the session ends, which aborts them.
    commands: JoinSet<()>,
    /// This session's open channels; what is left of them goes with the handler too.
    channels: Channels,
    /// Where this session's keyboard-interactive login stands.
    conversation: auth::Conversation,
}

impl server::Handler for SessionHandler {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        self.shared.count_auth_attempt();
        Ok(if self.shared.password_ok(user, password) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    // russh calls this exactly once per key a client tries (at its probe, or at its signed
    // request when it skips the probe), which makes it the place to count key attempts.
    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        self.shared.count_auth_attempt();
        Ok(auth::accept_if(
            self.shared.offer_ok(user, offer.public_key),
        ))
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        Ok(auth::accept_if(
            self.shared.certificate_ok(user, certificate),
        ))
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.conversation.step(&self.shared, user, response))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.shared.key_ok(user, key.public_key) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let full = self
            .shared
            .max_channels
            .is_some_and(|max| self.channels.len() >= max);
        if full || self.shared.refuse_channels.load(Ordering::SeqCst) {
            // What OpenSSH answers when its session limit is reached.
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        }
        // Recorded before the client can use it. Commands reply through the session handle, so
        // the channel object itself is not kept.
        self.channels
            .opened(channel.id(), self.shared.open_channels.enter());
        self.shared.channels_opened.fetch_add(1, Ordering::SeqCst);
        let latency = self.shared.channel_open_latency();
        if latency.is_zero() {
            reply.accept().await;
        } else {
            // Not here: the session loop waits for this callback, which would hold up every
            // other channel of the connection.
            self.commands.spawn(async move {
                tokio::time::sleep(latency).await;
                reply.accept().await;
            });
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let forwarding = &self.shared.forwarding;
        forward::open(
            forwarding,
            &mut self.commands,
            channel,
            host_to_connect,
            port_to_connect,
            reply,
        );
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.write_stdin(channel, data);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.close_stdin(channel);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // russh has already answered with our close; the command has nobody to answer to.
        if let Some(open) = self.channels.remove(channel) {
            open.stop();
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(open) = self.channels.remove(channel) else {
            return Ok(());
        };
        self.shared.signals.fetch_add(1, Ordering::SeqCst);
        // Every signal kills a command of the fake device; the channel then ends as a killed
        // process's does.
        open.stop();
        session.exit_signal_request(channel, signal, false, "killed", "en")?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _columns: u32,
        _rows: u32,
        _pixel_width: u32,
        _pixel_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match &self.shared.cli {
            Some(_) => session.channel_success(channel)?,
            None => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(state), Some(stdin)) = (&self.shared.cli, self.channels.pipe_stdin(channel))
        else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        let shell = cli::serve(
            state.clone(),
            self.shared.hostname.clone(),
            self.shared.username.clone(),
            stdin,
            session.handle(),
            channel,
        );
        let task = self.commands.spawn(shell);
        self.channels.started(channel, task);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let command = String::from_utf8_lossy(data).into_owned();
        let handle = session.handle();
        let latency = self.shared.latency();
        let hostname = self.shared.hostname.clone();
        let stdin = match command.trim() {
            "cat" => self.channels.pipe_stdin(channel),
            _ => None,
        };
        let table = self.channels.clone();
        let running = self.shared.running_commands.enter();
        // Drop the results of commands that already finished so the set stays small.
        while self.commands.try_join_next().is_some() {}
        // The session loop waits for this callback before reading the next packet: running
        // the command here would serialise every channel of the connection.
        let task = self.commands.spawn(async move {
            let _running = running;
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let output = match stdin {
                Some(stdin) => CommandOutput {
                    stdout: channels::cat(stdin).await,
                    ..CommandOutput::default()
                },
                None => run_command(&command, &hostname).await,
            };
            // Send errors only mean the client went away; there is nobody left to tell.
            if !output.stdout.is_empty() {
                let _ = handle.data(channel, output.stdout).await;
            }
            if !output.stderr.is_empty() {
                let _ = handle.extended_data(channel, 1, output.stderr).await;
            }
            let _ = handle
                .exit_status_request(channel, output.exit_status)
                .await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
            // Not `stop`: this task is the command, and it has finished.
            drop(table.remove(channel));
        });
        self.channels.started(channel, task);
        Ok(())
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Default)]
struct CommandOutput {
    stdout: String,
    stderr: String,
    exit_status: u32,
}

/// Runs one command of the fake device's command set.
async fn run_command(command: &str, hostname: &str) -> CommandOutput {
    let command = command.trim();
    let (name, argument) = match command.split_once(' ') {
        Some((name, argument)) => (name, Some(argument)),
        None => (command, None),
    };
    match (name, argument) {
        ("show", Some(what)) if what.trim() == "version" => CommandOutput {
            stdout: format!(
                "Test Network OS Software, Version 1.0.0 (connection-supervisor SshTestServer)\n\
                 {hostname} uptime is 0 minutes\n\
                 Model number: TEST-SSH-1\n\
                 System serial number: TEST0000001\n"
            ),
            ..Default::default()
        },
        ("hostname", None) => CommandOutput {
            stdout: format!("{hostname}\n"),
            ..Default::default()
        },
        ("echo", text) => CommandOutput {
            stdout: format!("{}\n", text.unwrap_or_default()),
            ..Default::default()
        },
        ("sleep", Some(ms)) => match ms.trim().parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                CommandOutput::default()
            }
            Err(_) => invalid_input(),
        },
        ("exit", Some(code)) => match code.trim().parse::<u32>() {
            Ok(exit_status) => CommandOutput {
                exit_status,
                ..Default::default()
            },
            Err(_) => invalid_input(),
        },
        ("stderr", text) => CommandOutput {
            stderr: format!("{}\n", text.unwrap_or_default()),
            exit_status: 1,
            ..Default::default()
        },
        _ => invalid_input(),
    }
}

fn invalid_input() -> CommandOutput {
    CommandOutput {
        stderr: "% Invalid input\n".to_owned(),
        exit_status: INVALID_COMMAND_EXIT_STATUS,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn command_set() {
        let out = run_command("show version", "r1").await;
        assert!(out.stdout.contains("r1 uptime"), "{out:?}");
        assert_eq!(out.exit_status, 0);

        assert_eq!(run_command("hostname\n", "r1").await.stdout, "r1\n");
        assert_eq!(run_command("echo a  b", "r1").await.stdout, "a  b\n");
        assert_eq!(run_command("echo", "r1").await.stdout, "\n");
        assert_eq!(run_command("exit 3", "r1").await.exit_status, 3);

        let out = run_command("stderr oops", "r1").await;
        assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", "oops\n"));
        assert_eq!(out.exit_status, 1);

        for bad in ["", "show", "sleep x", "exit -1", "hostname extra", "reload"] {
            let out = run_command(bad, "r1").await;
            assert_eq!(out.exit_status, INVALID_COMMAND_EXIT_STATUS, "{bad:?}");
            assert_eq!(out.stderr, "% Invalid input\n", "{bad:?}");
        }
    }

    /// Tests share the server across tasks (`Arc`) and drive it from spawned tasks.
    #[test]
    fn server_and_its_futures_are_send_and_sync() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: &T) {}
        fn check(server: &SshTestServer) {
            send_sync(server);
            send(&server.stop());
            send(&server.restart());
            send(&server.drop_all_sessions());
            send(&SshTestServer::start(SshTestServerConfig::default()));
        }
        let _ = check;
    }

    #[test]
    fn debug_hides_secrets() {
        let config = SshTestServerConfig {
            password: Some("hunter2".to_owned()),
            ..Default::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
