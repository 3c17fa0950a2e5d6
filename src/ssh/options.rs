//! What the SSH plugin can be told: host-key policy, credentials, keepalive, channels.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::algorithms::AlgorithmPolicy;

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
/// `private_key` (the key text) and `private_key_passphrase`.
///
/// `Debug` never prints the password, the key or its passphrase.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
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
    /// How often to send a keepalive on an idle session. Defaults to 15 s; `None` or zero turns
    /// keepalives off (a dead peer is then noticed only when a request fails).
    pub keepalive_interval: Option<Duration>,
    /// Unanswered keepalives before the session is declared lost. Defaults to 3; 0 never
    /// declares it lost for missed keepalives.
    pub keepalive_max: usize,
    /// Commands that may run at once on one connection, each on its own channel. Defaults to
    /// 8, below OpenSSH's `MaxSessions` of 10. 0 is taken as 1.
    pub max_channels: usize,
    /// Which algorithms are offered when the params' `algorithms` extra gives none. Defaults
    /// to [`AlgorithmPolicy::Modern`].
    pub algorithms: AlgorithmPolicy,
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
            algorithms: AlgorithmPolicy::Modern,
        }
    }
}

impl SshOptions {
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

    /// Sets the private key used when the params' extras give none.
    pub fn private_key(mut self, key: PrivateKeySource) -> Self {
        self.private_key = Some(key);
        self
    }

    /// Sets the passphrase of an encrypted private key.
    pub fn private_key_passphrase(mut self, passphrase: impl Into<String>) -> Self {
        self.private_key_passphrase = Some(passphrase.into());
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

    /// Sets the algorithms offered when the params' `algorithms` extra gives none (default
    /// [`AlgorithmPolicy::Modern`]; see [`AlgorithmPolicy`] for legacy devices and explicit
    /// lists).
    pub fn algorithms(mut self, policy: AlgorithmPolicy) -> Self {
        self.algorithms = policy;
        self
    }

    /// The keepalive interval russh is given: zero is off, and a longer interval than russh can
    /// add to the clock is capped. Applied when a session opens, so a value set on the field
    /// directly is covered too.
    pub(super) fn effective_keepalive_interval(&self) -> Option<Duration> {
        self.keepalive_interval
            .filter(|interval| !interval.is_zero())
            .map(|interval| interval.min(KEEPALIVE_INTERVAL_CAP))
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
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_keepalive_is_off_and_a_huge_one_is_capped() {
        let with = |interval: Option<Duration>| {
            SshOptions::default()
                .keepalive_interval(interval)
                .effective_keepalive_interval()
        };
        assert_eq!(with(None), None);
        assert_eq!(with(Some(Duration::ZERO)), None);
        let five = Duration::from_secs(5);
        assert_eq!(with(Some(five)), Some(five));
        assert_eq!(with(Some(Duration::MAX)), Some(KEEPALIVE_INTERVAL_CAP));
    }
}
