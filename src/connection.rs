//! What a plugin implements and what it is given: the key a connection is pooled under, the
//! parameters it is opened with, the [`Connection`] trait, the factory that makes connections,
//! and the errors a plugin reports.
//!
//! Everything here is plain data or a trait: no actor machinery. A plugin crate (the SSH plugin
//! in this crate, or one of yours) depends on this module only.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

/// Identifies one pooled connection: the host it talks to and the plugin that talks to it.
///
/// The supervisor keeps at most one connection per key, so `("r1", "ssh")` and
/// `("r1", "netconf")` are two connections to the same host.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionKey {
    /// The host the connection goes to, as the inventory names it.
    pub hostname: String,
    /// The name of the plugin that makes and drives the connection (`"ssh"`, ...).
    pub plugin_name: String,
}

impl ConnectionKey {
    /// Builds a key from a hostname and a plugin name.
    pub fn new(hostname: impl Into<String>, plugin_name: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            plugin_name: plugin_name.into(),
        }
    }
}

impl fmt::Display for ConnectionKey {
    /// `hostname/plugin`, the form used in every log line and error message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hostname, self.plugin_name)
    }
}

/// Plugin-specific settings that do not fit the common fields: a string-keyed map of JSON-like
/// values (for example a private key path, a device type, a per-host timeout).
pub type Extras = BTreeMap<String, serde_json::Value>;

/// Everything a plugin needs to open a connection to one host, resolved from the inventory.
///
/// `Debug` never prints the password and prints only the *names* of the extras, since extras
/// may carry key material.
#[derive(Clone, Default, PartialEq)]
pub struct ResolvedConnectionParams {
    /// The address to connect to (a DNS name or an IP address).
    pub hostname: String,
    /// The port, when not the plugin's default.
    pub port: Option<u16>,
    /// The user to authenticate as.
    pub username: Option<String>,
    /// The password to authenticate with. Never logged, never printed by `Debug`.
    pub password: Option<String>,
    /// The platform or device type (`"ios"`, `"junos"`, ...), for plugins that care.
    pub platform: Option<String>,
    /// Plugin-specific settings.
    pub extras: Option<Extras>,
}

impl ResolvedConnectionParams {
    /// Params for `hostname` with every optional field unset.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            ..Self::default()
        }
    }
}

impl fmt::Debug for ResolvedConnectionParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedConnectionParams")
            .field("hostname", &self.hostname)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("platform", &self.platform)
            .field(
                "extras",
                &self
                    .extras
                    .as_ref()
                    .map(|extras| extras.keys().collect::<Vec<_>>()),
            )
            .finish()
    }
}

/// Why an open failed. The kind decides what the supervisor does next: transient kinds are
/// retried with backoff, permanent ones are not retried in a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The peer did not answer within the open timeout.
    Timeout,
    /// The peer refused the TCP connection (nothing listening).
    Refused,
    /// The peer rejected our credentials.
    Auth,
    /// The peer's host key is unknown or does not match the one on record.
    HostKey,
    /// The hostname did not resolve.
    Dns,
    /// The connection broke during the handshake (reset, EOF, protocol error).
    Transport,
    /// The two sides share no algorithm for some part of the handshake (key exchange, host
    /// key, cipher, MAC). Permanent: only a change of settings on one side can fix it.
    Negotiation,
    /// A local setting cannot be used: a key file that cannot be read or decrypted, an
    /// unknown algorithm name, a malformed option. Permanent: the peer was never the problem.
    Config,
    /// Anything the plugin could not classify.
    Unknown,
}

impl FailureKind {
    /// Whether retrying is pointless until something changes on our side (credentials, known
    /// hosts, inventory): auth rejected, host key refused, unknown host, no algorithm in
    /// common, a local setting that cannot be used.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            Self::Auth | Self::HostKey | Self::Dns | Self::Negotiation | Self::Config
        )
    }
}

impl FailureKind {
    /// A short, stable, snake_case name (`"timeout"`, `"host_key"`, ...): the `kind` label of
    /// the failed-opens metric, and what logs and scripts can match on.
    pub fn name(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Auth => "auth",
            Self::HostKey => "host_key",
            Self::Dns => "dns",
            Self::Transport => "transport",
            Self::Negotiation => "negotiation",
            Self::Config => "config",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Timeout => "timeout",
            Self::Refused => "connection refused",
            Self::Auth => "authentication rejected",
            Self::HostKey => "host key refused",
            Self::Dns => "unknown host",
            Self::Transport => "transport error",
            Self::Negotiation => "no algorithm in common",
            Self::Config => "local configuration error",
            Self::Unknown => "unknown failure",
        })
    }
}

/// A failed [`Connection::open`]: what kind of failure it was and the plugin's own message.
///
/// `Display` is the plugin's message unchanged, so an upstream-style `Err("boom".into())`
/// still reads `boom`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OpenError {
    kind: FailureKind,
    message: String,
}

impl OpenError {
    /// An open failure of the given kind. The message must not contain secrets.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What kind of failure this was.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The plugin's description of the failure.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<String> for OpenError {
    /// An open failure of kind [`FailureKind::Unknown`].
    fn from(message: String) -> Self {
        Self::new(FailureKind::Unknown, message)
    }
}

impl From<&str> for OpenError {
    /// An open failure of kind [`FailureKind::Unknown`].
    fn from(message: &str) -> Self {
        Self::new(FailureKind::Unknown, message)
    }
}

/// A failed [`Connection::execute_command`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The plugin does not run commands (the trait's default).
    #[error("connection does not implement execute_command")]
    Unsupported,
    /// The connection went away while the command ran; the command was not re-run.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The command ran and reported failure.
    #[error("command exited with status {status}{}", stderr_suffix(stderr))]
    ExitStatus {
        /// The exit status the peer reported.
        status: u32,
        /// What the command wrote to its error stream.
        stderr: String,
    },
    /// Any other failure, in the plugin's words.
    #[error("{0}")]
    Other(String),
}

/// `: <stderr>` with surrounding whitespace trimmed, or nothing when the command wrote none.
fn stderr_suffix(stderr: &str) -> String {
    match stderr.trim() {
        "" => String::new(),
        text => format!(": {text}"),
    }
}

impl From<String> for CommandError {
    fn from(message: String) -> Self {
        Self::Other(message)
    }
}

impl From<&str> for CommandError {
    fn from(message: &str) -> Self {
        Self::Other(message.to_owned())
    }
}

/// What a command printed and how it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// Everything the command wrote to its output stream.
    pub stdout: String,
    /// Everything the command wrote to its error stream.
    pub stderr: String,
    /// The exit status the peer reported, if it reported one.
    pub exit_status: Option<u32>,
}

impl CommandOutput {
    /// The output if the command succeeded (exit status 0 or none reported), otherwise
    /// [`CommandError::ExitStatus`] with the status and the error stream.
    pub fn into_result(self) -> Result<String, CommandError> {
        match self.exit_status {
            None | Some(0) => Ok(self.stdout),
            Some(status) => Err(CommandError::ExitStatus {
                status,
                stderr: self.stderr,
            }),
        }
    }
}

/// Runs commands on an open connection through a shared reference, so several can run at once
/// (SSH channels multiplexed over one session, for example). A plugin hands one out through
/// [`Connection::command_runner`] after each open.
///
/// While the connection is open, a [`ConnectionHandle`](crate::ConnectionHandle) runs commands
/// on the runner directly, on the caller's own task, at most `limit` at a time: no message to
/// the connection's actor, which stays free for everything else. The actor withdraws the
/// runner the moment the session is lost or closed; commands then wait for the reconnect like
/// any other request.
#[async_trait]
pub trait CommandRunner: Send + Sync {
    /// Runs one command. Report a session that ended under the command as
    /// [`CommandError::ConnectionLost`], so the connection's actor checks it at once.
    async fn run(&self, command: &str) -> Result<CommandOutput, CommandError>;

    /// Whether the session is still up, checked before each command; must be cheap and must
    /// not block. When it says no, the command goes through the connection's actor, which
    /// notices the loss and holds the command until the reconnect instead of failing it. The
    /// default says yes.
    fn is_alive(&self) -> bool {
        true
    }
}

/// A connection to one host, as a plugin implements it.
///
/// The supervisor gives each connection its own actor, so every method here runs with exclusive
/// access (`&mut self`) and never concurrently with another method of the same connection. A
/// plugin therefore needs no locks of its own. Methods may take as long as they need: the
/// supervisor bounds them with its open, request and close timeouts, and other connections are
/// never held up by a slow one.
///
/// A panic in any method is caught: the caller gets [`Error::PluginPanicked`](crate::Error),
/// the instance is closed and dropped, and the supervisor carries on.
#[async_trait]
pub trait Connection: Any + Send {
    /// Whether the connection is usable right now. Called before every open (an alive
    /// connection is not reopened), so it must be cheap and must not block.
    fn is_alive(&self) -> bool;

    /// Connects and authenticates with `params`. Called on a fresh instance, and again on the
    /// same instance after a failed open or a lost connection.
    async fn open(&mut self, params: &ResolvedConnectionParams) -> Result<(), OpenError>;

    /// Gets ready for an open: called before every open attempt, before the attempt takes an
    /// open slot (the supervisor's open budget and the target address's handshake limit), and
    /// bounded, with the open that follows, by the open timeout.
    ///
    /// The place to wait for what the open depends on, such as another supervised connection
    /// (the SSH plugin opens a jump host here): waiting inside [`open`](Self::open) would hold
    /// an open slot meanwhile, and many connections waiting for one dependency could hold
    /// every slot while the dependency waits for one. An `Err` fails the attempt as a failed
    /// `open` would; `open` is then not called. The default does nothing.
    async fn prepare(&mut self, params: &ResolvedConnectionParams) -> Result<(), OpenError> {
        let _ = params;
        Ok(())
    }

    /// Releases the connection. Called exactly once per instance, whether it was opened or not.
    async fn close(&mut self);

    /// Runs one command and returns its output. The default says the plugin has no commands.
    async fn execute_command(&mut self, command: &str) -> Result<String, CommandError> {
        let _ = command;
        Err(CommandError::Unsupported)
    }

    /// For plugins that can run several commands at once on one connection: a runner and the
    /// most commands it may run at once. Asked after every successful open. The default,
    /// `None`, runs commands one at a time through [`execute_command`](Self::execute_command).
    fn command_runner(&self) -> Option<(Arc<dyn CommandRunner>, usize)> {
        None
    }

    /// Receives, before every open, the notifier through which the plugin reports that this
    /// session ended (EOF, reset, keepalive timeout) the moment it notices, so the supervisor
    /// reconnects without waiting for a health check. Keep it; the default ignores it.
    fn set_loss_notifier(&mut self, notifier: LossNotifier) {
        let _ = notifier;
    }

    /// An active probe, run every [`health_check_interval`] while the connection is open. An
    /// `Err` or a timeout counts as a loss; a panic crashes the connection's actor, which is
    /// restarted, as for any plugin panic. The default asks [`is_alive`].
    ///
    /// [`health_check_interval`]: crate::ConnectionPolicy::health_check_interval
    /// [`is_alive`]: Connection::is_alive
    async fn health_check(&mut self) -> Result<(), String> {
        if self.is_alive() {
            Ok(())
        } else {
            Err("is_alive() returned false".to_owned())
        }
    }

    /// The concrete type's name, for error messages when
    /// [`ConnectionHandle::with`](crate::ConnectionHandle::with) asks for the wrong type.
    fn type_name(&self) -> &'static str {
        std::any::type_name::<Self>()
    }
}

/// Lets a plugin report that its session ended, from any task, at any time.
///
/// Each notifier belongs to one open: a report from a session that was already replaced is
/// ignored, so a late callback from an old session cannot tear down the new one. The supervisor
/// builds one before every open and hands it over through [`Connection::set_loss_notifier`]; a
/// plugin's own unit tests can build one around any closure with [`LossNotifier::new`].
#[derive(Clone)]
pub struct LossNotifier {
    report: Arc<dyn Fn(String) + Send + Sync>,
}

impl LossNotifier {
    /// A notifier that hands each reported reason to `report`. `report` must be cheap and must
    /// not block: plugins call it from their I/O tasks.
    pub fn new(report: impl Fn(String) + Send + Sync + 'static) -> Self {
        Self {
            report: Arc::new(report),
        }
    }

    /// Reports the loss; `reason` says what was seen and must not contain secrets. Cheap and
    /// non-blocking; reporting twice is harmless.
    pub fn connection_lost(&self, reason: impl Into<String>) {
        (self.report)(reason.into());
    }
}

impl fmt::Debug for LossNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LossNotifier").finish_non_exhaustive()
    }
}

/// Makes a fresh, unopened connection for a key, or `None` when no plugin serves the key's
/// plugin name.
///
/// Called once per key (and again after that key's connection was closed), never under a lock
/// and never on the supervisor's own task, so a slow factory holds up only its own key. It
/// should only construct: I/O belongs in [`Connection::open`].
pub type ConnectionFactory = dyn Fn(&ConnectionKey) -> Option<Box<dyn Connection>> + Send + Sync;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_password_and_extra_values() {
        let mut extras = Extras::new();
        extras.insert("private_key".into(), "-----BEGIN KEY hunter2".into());
        let params = ResolvedConnectionParams {
            hostname: "r1".into(),
            username: Some("admin".into()),
            password: Some("hunter2".into()),
            extras: Some(extras),
            ..Default::default()
        };
        let shown = format!("{params:?}");
        assert!(!shown.contains("hunter2"), "secret leaked: {shown}");
        assert!(shown.contains("<redacted>") && shown.contains("private_key"));
    }

    #[test]
    fn open_error_from_str_is_unknown_and_displays_the_message() {
        let error: OpenError = "boom".into();
        assert_eq!(error.kind(), FailureKind::Unknown);
        assert_eq!(error.to_string(), "boom");
    }

    #[test]
    fn key_displays_host_and_plugin() {
        assert_eq!(ConnectionKey::new("r1", "ssh").to_string(), "r1/ssh");
    }
}
