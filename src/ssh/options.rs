//! What the SSH plugin can be told: host-key policy, credentials, keepalive, channels.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::algorithms::AlgorithmPolicy;
use super::cli::Platforms;
use crate::connection::ResolvedConnectionParams;

use super::ssh_config::SshConfigFile;

/// The longest keepalive interval handed to russh, which adds it to the clock unchecked: about
/// 30 years, an interval that never elapses in practice.
const KEEPALIVE_INTERVAL_CAP: Duration = Duration::from_secs(86_400 * 365 * 30);

/// How server host keys are checked. A refused key fails the open with
/// [`FailureKind::HostKey`](crate::FailureKind::HostKey), which is permanent: it is not retried in a loop.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
#[non_exhaustive]
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
/// `private_key` (the key text), `private_key_passphrase` (or `passphrase`), `agent` (a
/// bool), `connect_timeout` (seconds) and `jump` (a jump host: see
/// [`jump_host`](Self::jump_host) and the [module docs](super#jump-hosts)). A key named in the extras replaces
/// [`Self::identities`] for that host. Between the two comes the OpenSSH client config, when
/// [`SshOptions::ssh_config`] names one: params and extras first, then the config, then these
/// options.
///
/// `Debug` never prints the password, the key or its passphrase.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct SshOptions {
    /// Port when the params give none. Defaults to 22.
    pub port: u16,
    /// User when the params give none.
    pub username: Option<String>,
    /// Password when the params give none: answers keyboard-interactive password prompts and
    /// the `password` method, which are tried after the public keys.
    pub password: Option<String>,
    /// Private keys tried in order when the params' extras name none, as OpenSSH's repeatable
    /// `IdentityFile`. For a key file `PATH`, an OpenSSH user certificate in `PATH-cert.pub` is
    /// offered too, right after the key. Empty by default.
    pub identities: Vec<PrivateKeySource>,
    /// Passphrase of the encrypted private keys (the same for all of them). A key that is
    /// encrypted and cannot be decrypted with it is skipped; if nothing else gets in, the open
    /// fails with [`FailureKind::Config`](crate::FailureKind::Config) naming the key.
    pub private_key_passphrase: Option<String>,
    /// Offer the identities of an ssh-agent before the key files, as `ssh` does. Off by default.
    pub agent: bool,
    /// The agent's socket; `None`, the default, takes `SSH_AUTH_SOCK` when a connection opens.
    pub agent_socket: Option<PathBuf>,
    /// How host keys are checked. Defaults to strict against `~/.ssh/known_hosts`.
    pub host_key_policy: HostKeyPolicy,
    /// How often to send a keepalive on an idle session. Defaults to 15 s; `None` or zero turns
    /// keepalives off (a dead peer is then noticed only when a request fails).
    pub keepalive_interval: Option<Duration>,
    /// Unanswered keepalives before the session is declared lost. Defaults to 3; 0 never
    /// declares it lost for missed keepalives.
    pub keepalive_max: usize,
    /// Commands that may run at once on one connection, each on its own channel. Defaults to
    /// 8, below OpenSSH's `MaxSessions` of 10. 0 is taken as 1.
    pub max_channels: usize,
    /// The OpenSSH client config to apply (`Host` blocks: `HostName`, `Port`, `User`,
    /// `ConnectTimeout`, `ServerAliveInterval`, `StrictHostKeyChecking`, `UserKnownHostsFile`).
    /// Defaults to `None`: no config is read unless asked for, so a program behaves the same
    /// whichever account runs it (see [`SshOptions::ssh_config`]).
    pub ssh_config: Option<SshConfigFile>,
    /// Bound on reaching a usable transport: TCP connect, the server's banner and the key
    /// exchange (host-key check included), as one budget, like OpenSSH's `ConnectTimeout`.
    /// Defaults to `None`: only the supervisor's open timeout bounds them, and a stalled
    /// handshake then fails with that timeout's message instead of the stage's.
    pub connect_timeout: Option<Duration>,
    /// The platform profiles the params' `platform` selects from (see [`super::cli`]).
    /// Defaults to the built-in ones.
    pub platforms: Platforms,
    /// Which algorithms are offered when the params' `algorithms` extra gives none. Defaults
    /// to [`AlgorithmPolicy::Modern`].
    pub algorithms: AlgorithmPolicy,
    /// Jump hosts (bastions) by name, for `extras.jump`: each is opened as a supervised
    /// connection of its own, keyed `(name, "ssh")`, with these params (which may name a jump
    /// host of their own). See [`jump_host`](Self::jump_host).
    pub jump_hosts: BTreeMap<String, ResolvedConnectionParams>,
}

impl Default for SshOptions {
    fn default() -> Self {
        Self {
            port: 22,
            username: None,
            password: None,
            identities: Vec::new(),
            private_key_passphrase: None,
            agent: false,
            agent_socket: None,
            host_key_policy: HostKeyPolicy::default(),
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            max_channels: 8,
            ssh_config: None,
            connect_timeout: None,
            platforms: Platforms::builtin(),
            algorithms: AlgorithmPolicy::Modern,
            jump_hosts: BTreeMap::new(),
        }
    }
}

impl SshOptions {
    /// Registers a jump host (bastion) under `name`, for hosts whose `extras.jump` names it.
    /// It is opened with `params` as a supervised connection of its own, keyed
    /// `ConnectionKey::new(name, "ssh")`, once for every host behind it; the options fill in
    /// what the params leave out, as for any host. Its params may carry an `extras.jump` of
    /// their own (a chain of jump hosts); a loop is refused with
    /// [`FailureKind::Config`](crate::FailureKind::Config). Jump hosts need a factory linked to
    /// its supervisor: see [`factory_with_link`](super::factory_with_link).
    pub fn jump_host(mut self, name: impl Into<String>, params: ResolvedConnectionParams) -> Self {
        self.jump_hosts.insert(name.into(), params);
        self
    }

    /// Sets the port used when the params give none (default 22).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Sets the user used when the params give none.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Sets the password used when the params give none.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Makes `key` the only private key used when the params' extras give none (replacing
    /// any set before; [`Self::identity`] adds one instead).
    pub fn private_key(mut self, key: PrivateKeySource) -> Self {
        self.identities = vec![key];
        self
    }

    /// Adds a private key, tried after those added before.
    pub fn identity(mut self, key: PrivateKeySource) -> Self {
        self.identities.push(key);
        self
    }

    /// Adds a private key file, tried after those added before, as each `IdentityFile` line of
    /// an OpenSSH config does. A leading `~/` stands for the home directory. A certificate in
    /// `PATH-cert.pub` is offered too.
    pub fn identity_file(self, path: impl Into<PathBuf>) -> Self {
        self.identity(PrivateKeySource::Path(path.into()))
    }

    /// Sets the passphrase of the encrypted private keys.
    pub fn private_key_passphrase(mut self, passphrase: impl Into<String>) -> Self {
        self.private_key_passphrase = Some(passphrase.into());
        self
    }

    /// Offers the identities of an ssh-agent first (`true`), as `ssh` does when
    /// `SSH_AUTH_SOCK` is set. Off by default.
    pub fn agent(mut self, agent: bool) -> Self {
        self.agent = agent;
        self
    }

    /// Sets the agent's socket (default: `SSH_AUTH_SOCK` when a connection opens). Turns the
    /// agent on.
    pub fn agent_socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.agent_socket = Some(socket.into());
        self.agent = true;
        self
    }

    /// Sets how host keys are checked (default strict against `~/.ssh/known_hosts`).
    pub fn host_key_policy(mut self, policy: HostKeyPolicy) -> Self {
        self.host_key_policy = policy;
        self
    }

    /// Sets the keepalive interval (default 15 s). `None` or `Duration::ZERO` turns keepalives
    /// off, as OpenSSH's `ServerAliveInterval 0` does (a zero interval would otherwise send one
    /// after every packet). No upper limit: an interval beyond about 30 years is taken as 30
    /// years, which never elapses in practice.
    pub fn keepalive_interval(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.keepalive_interval = interval.into();
        self
    }

    /// Sets how many unanswered keepalives declare the session lost (default 3). Any number: 0
    /// never declares it lost for missed keepalives (russh's rule), so only a failed request or
    /// the transport's own end notices a dead peer.
    pub fn keepalive_max(mut self, max: usize) -> Self {
        self.keepalive_max = max;
        self
    }

    /// Sets how many commands may run at once on one connection (default 8). 0 is taken as 1;
    /// anything above tokio's semaphore limit (`usize::MAX >> 3`) as that limit. The server's
    /// own limit still applies: OpenSSH refuses channels beyond its `MaxSessions` (10), and a
    /// refused channel fails its command.
    pub fn max_channels(mut self, channels: usize) -> Self {
        self.max_channels = channels;
        self
    }

    /// Reads this OpenSSH client config file at every open and applies the `Host` blocks that
    /// match the host's name (the params' `hostname`, as in `ssh NAME`). Its values come after
    /// the params and extras and before these options: `HostName` replaces the address
    /// connected to, `Port`, `User` and `ConnectTimeout` apply when the params (and extras)
    /// give none, `ServerAliveInterval` replaces [`SshOptions::keepalive_interval`], and
    /// `StrictHostKeyChecking` (`yes`/`ask`: strict, `accept-new`, `no`/`off`: accept any) and
    /// `UserKnownHostsFile` replace the [`HostKeyPolicy`]. A file that is missing, unreadable or
    /// malformed fails the open with [`FailureKind::Config`](crate::FailureKind::Config).
    ///
    /// Beware: the config can loosen the host-key policy set here (`StrictHostKeyChecking no`),
    /// as it does for `ssh`.
    pub fn ssh_config(mut self, path: impl Into<PathBuf>) -> Self {
        self.ssh_config = Some(SshConfigFile::Path(path.into()));
        self
    }

    /// Sets the algorithms offered when the params' `algorithms` extra (and the ssh config)
    /// give none (default [`AlgorithmPolicy::Modern`]; see [`AlgorithmPolicy`] for legacy
    /// devices and explicit lists).
    pub fn algorithms(mut self, policy: AlgorithmPolicy) -> Self {
        self.algorithms = policy;
        self
    }

    /// Sets the platform profiles the params' `platform` selects from (default
    /// [`Platforms::builtin`]).
    pub fn platforms(mut self, platforms: Platforms) -> Self {
        self.platforms = platforms;
        self
    }

    /// Applies `~/.ssh/config` as [`SshOptions::ssh_config`] does, when that file exists (the
    /// `ssh` client's behaviour). Not the default, because the file belongs to whoever runs
    /// the program: `Host *` lines written for interactive use would silently change what a
    /// service connects to, as whom, and how host keys are checked.
    pub fn user_ssh_config(mut self) -> Self {
        self.ssh_config = Some(SshConfigFile::User);
        self
    }

    /// Reads no OpenSSH client config (the default).
    pub fn no_ssh_config(mut self) -> Self {
        self.ssh_config = None;
        self
    }

    /// Sets the bound on TCP connect, banner and key exchange together (default `None`: the
    /// supervisor's open timeout alone). A host's `extras.connect_timeout` (seconds) or its
    /// ssh config's `ConnectTimeout` come first. `Duration::ZERO` is taken as `None`.
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.connect_timeout = timeout.into().filter(|timeout| !timeout.is_zero());
        self
    }
}

/// The keepalive interval russh is given, from the options' or an ssh config's
/// `ServerAliveInterval`: zero is off, and a longer interval than russh can add to the clock is
/// capped. Applied when a session opens, so a value set on the field directly is covered too.
pub(super) fn effective_keepalive(interval: Option<Duration>) -> Option<Duration> {
    interval
        .filter(|interval| !interval.is_zero())
        .map(|interval| interval.min(KEEPALIVE_INTERVAL_CAP))
}

impl fmt::Debug for SshOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |set: bool| if set { Some("<redacted>") } else { None };
        f.debug_struct("SshOptions")
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &redacted(self.password.is_some()))
            .field("identities", &self.identities)
            .field(
                "private_key_passphrase",
                &redacted(self.private_key_passphrase.is_some()),
            )
            .field("agent", &self.agent)
            .field("agent_socket", &self.agent_socket)
            .field("host_key_policy", &self.host_key_policy)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_max", &self.keepalive_max)
            .field("max_channels", &self.max_channels)
            .field("ssh_config", &self.ssh_config)
            .field("connect_timeout", &self.connect_timeout)
            .field("platforms", &self.platforms)
            .field("algorithms", &self.algorithms)
            // Names only: the params carry passwords and keys.
            .field("jump_hosts", &self.jump_hosts.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_keepalive_is_off_and_a_huge_one_is_capped() {
        let with = |interval: Option<Duration>| {
            effective_keepalive(
                SshOptions::default()
                    .keepalive_interval(interval)
                    .keepalive_interval,
            )
        };
        assert_eq!(with(None), None);
        assert_eq!(with(Some(Duration::ZERO)), None);
        let five = Duration::from_secs(5);
        assert_eq!(with(Some(five)), Some(five));
        assert_eq!(with(Some(Duration::MAX)), Some(KEEPALIVE_INTERVAL_CAP));
    }
}
