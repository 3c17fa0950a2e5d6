//! One SSH connection on russh: connect, authenticate, run commands on channels of one
//! session, and notice when the session ends.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use russh::Disconnect;
use russh::client::{self};
use tracing::info;

use crate::connection::{
    CommandError, CommandOutput, CommandRunner, Connection, ConnectionKey, FailureKind,
    LossNotifier, OpenError, ResolvedConnectionParams,
};

use super::algorithms;
use super::auth::Credentials;
use super::channel;
use super::cli::CliSession;
use super::handshake::{self, Budget};
use super::host_keys::{self, ClientHandler, Liveness, Session};
use super::jump::{self, Cascade, Endpoint, SupervisorLink, Tunnel};
use super::options::SshOptions;
use super::target::Target;

/// One SSH connection: a russh session, opened and reopened by the supervisor.
pub struct SshConnection {
    options: Arc<SshOptions>,
    session: Option<Arc<Session>>,
    /// Cleared the moment the session ends (russh's `disconnected` callback) or can no longer
    /// open channels (the runner).
    liveness: Arc<Liveness>,
    notifier: Option<LossNotifier>,
    /// `host:port` of the open session, for the messages of its commands.
    address: Arc<str>,
    /// The key it is pooled under, when the factory made it: a host must not be its own jump
    /// host.
    key: Option<ConnectionKey>,
    /// The supervisor its jump hosts are opened through, when the factory made it.
    link: Option<SupervisorLink>,
    /// The jump host the session runs through: made ready by `prepare`, then kept while the
    /// session lives, which it cannot outlive.
    tunnel: Option<Arc<Tunnel>>,
    /// Reports the session lost when its jump host is; ends with the session.
    cascade: Option<Cascade>,
    /// The PTY shell, when the params' platform selects a CLI profile: commands then run in
    /// it, one at a time, instead of on channels of their own.
    cli: Option<CliSession>,
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
            liveness: Arc::new(Liveness::none()),
            notifier: None,
            address: Arc::from(""),
            key: None,
            link: None,
            tunnel: None,
            cascade: None,
            cli: None,
        }
    }

    /// What the factory makes: a connection that knows its key and can open its jump hosts
    /// through the supervisor `link` is bound to.
    pub(super) fn linked(
        options: Arc<SshOptions>,
        key: ConnectionKey,
        link: SupervisorLink,
    ) -> Self {
        Self {
            key: Some(key),
            link: Some(link),
            ..Self::new(options)
        }
    }

    /// This connection as a jump host: its session, while it is usable.
    pub(super) fn endpoint(&self) -> Option<Endpoint> {
        let session = self.session.clone().filter(|_| self.is_alive())?;
        Some(Endpoint {
            session,
            liveness: self.liveness.clone(),
        })
    }

    /// The tunnel through the jump host the params (or, when their extras name none, the ssh
    /// config's `ProxyJump`) name, made ready by `prepare` or, for an open without one, now;
    /// `None` for a host reached directly.
    async fn tunnel_for(&mut self, target: &Target) -> Result<Option<Arc<Tunnel>>, OpenError> {
        let config_jump = target
            .ssh_config
            .as_ref()
            .and_then(|c| c.proxy_jump.as_deref());
        let route = jump::route(
            &self.options,
            self.key.as_ref(),
            &target.params,
            config_jump,
        )?;
        let Some(hop) = route else {
            return Ok(None);
        };
        match self.tunnel.take() {
            Some(tunnel) if tunnel.is_alive() && tunnel.serves(&hop) => Ok(Some(tunnel)),
            _ => {
                let tunnel = jump::reach(self.link.as_ref(), hop, Self::endpoint).await?;
                Ok(Some(Arc::new(tunnel)))
            }
        }
    }

    /// The CLI shell session, when the platform selected one.
    pub(super) fn cli(&self) -> Option<&CliSession> {
        self.cli.as_ref()
    }

    async fn disconnect(&mut self) {
        self.liveness.closed();
        self.cascade = None;
        self.cli = None;
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
        self.liveness.is_alive()
            && self
                .session
                .as_ref()
                .is_some_and(|session| !session.is_closed())
            && self.tunnel.as_ref().is_none_or(|tunnel| tunnel.is_alive())
    }

    /// Opens the jump host, if the host has one, before the open takes an open slot.
    async fn prepare(&mut self, params: &ResolvedConnectionParams) -> Result<(), OpenError> {
        let target = Target::resolve(&self.options, params)?;
        self.tunnel = self.tunnel_for(&target).await?;
        Ok(())
    }

    fn set_loss_notifier(&mut self, notifier: LossNotifier) {
        self.notifier = Some(notifier);
    }

    async fn open(&mut self, params: &ResolvedConnectionParams) -> Result<(), OpenError> {
        // A reopen replaces whatever is left of the previous session.
        self.disconnect().await;
        let target = Target::resolve(&self.options, params)?;
        let (host, port) = (target.host.as_str(), target.port);
        let config_identities = target
            .ssh_config
            .as_ref()
            .map_or(&[][..], |config| &config.identity_files[..]);
        let credentials = Credentials::resolve(&self.options, &target.params, config_identities)?;
        let address = handshake::address(host, port);
        let algorithms = algorithms::for_host(&target.algorithms, &target.params, port)?;
        let policy = target.host_key_policy.clone();
        // Read before the handshake: the key types it records order what we ask the server for.
        let known_hosts = host_keys::load_known_hosts(&policy, host, port)
            .map_err(|reason| OpenError::new(FailureKind::HostKey, reason))?;
        let mut preferred = algorithms.preferred();
        host_keys::order_host_keys(&mut preferred, known_hosts.as_ref(), host, port);
        let tunnel = self.tunnel_for(&target).await?;
        let budget = Budget::start(target.connect_timeout);

        let liveness = Arc::new(Liveness::new(self.notifier.clone()));
        let handler = ClientHandler {
            host: host.to_owned(),
            port,
            policy,
            known_hosts,
            refusal: Arc::new(Mutex::new(None)),
            liveness: liveness.clone(),
        };
        let config = Arc::new(client::Config {
            nodelay: true,
            keepalive_interval: target.keepalive_interval,
            keepalive_max: self.options.keepalive_max,
            preferred,
            ..client::Config::default()
        });
        let mut session = match &tunnel {
            Some(tunnel) => {
                let stream = tunnel.channel_to(host, port).await?;
                handshake::handshake(config, stream, handler, &address, &budget)
                    .await
                    .map_err(|error| {
                        OpenError::new(
                            error.kind(),
                            format!("{} (through {})", error.message(), tunnel.describe()),
                        )
                    })?
            }
            None => {
                let addrs: Vec<_> = tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| classify_lookup(&e, host))?
                    .collect();
                let stream = handshake::tcp_connect(&addrs, host, port, &budget).await?;
                let _ = stream.set_nodelay(true);
                handshake::handshake(config, stream, handler, &address, &budget).await?
            }
        };
        credentials.authenticate(&mut session, &address).await?;
        let session = Arc::new(session);
        self.cli =
            CliSession::open(&self.options.platforms, &target.params, &session, &liveness).await?;
        info!(%host, port, user = %credentials.username, cli = self.cli.is_some(), "ssh session open");
        self.session = Some(session);
        self.cascade = tunnel.as_ref().map(|tunnel| {
            let liveness = liveness.clone();
            tunnel.cascade(move |reason| liveness.lost(reason))
        });
        self.liveness = liveness;
        self.address = address.into();
        self.tunnel = tunnel;
        Ok(())
    }

    async fn close(&mut self) {
        self.disconnect().await;
        self.tunnel = None;
    }

    async fn execute_command(&mut self, command: &str) -> Result<String, CommandError> {
        let session = self
            .session
            .clone()
            .ok_or_else(|| CommandError::ConnectionLost("not open".to_owned()))?;
        if let Some(cli) = &self.cli {
            return cli.run(command).await?.into_result();
        }
        channel::run(&session, &self.liveness, &self.address, command)
            .await?
            .into_result()
    }

    fn command_runner(&self) -> Option<(Arc<dyn CommandRunner>, usize)> {
        if let Some(cli) = &self.cli {
            return Some(cli.runner());
        }
        let runner = SshRunner {
            session: self.session.clone()?,
            liveness: self.liveness.clone(),
            address: self.address.clone(),
            tunnel: self.tunnel.clone(),
        };
        Some((Arc::new(runner), self.options.max_channels))
    }
}

/// Runs commands as parallel channels over one session.
struct SshRunner {
    session: Arc<Session>,
    liveness: Arc<Liveness>,
    address: Arc<str>,
    tunnel: Option<Arc<Tunnel>>,
}

#[async_trait]
impl CommandRunner for SshRunner {
    async fn run(&self, command: &str) -> Result<CommandOutput, CommandError> {
        channel::run(&self.session, &self.liveness, &self.address, command).await
    }

    fn is_alive(&self) -> bool {
        self.liveness.is_alive()
            && !self.session.is_closed()
            && self.tunnel.as_ref().is_none_or(|tunnel| tunnel.is_alive())
    }
}

/// A failed name lookup. The resolver's error reaches us only as an `io::Error` whose kind is
/// uncategorised and whose message is `getaddrinfo`'s text (`gai_strerror`), so the message is
/// all there is to tell "no such host" (permanent: [`FailureKind::Dns`]) from "the name servers
/// did not answer" (`EAI_AGAIN`, transient: [`FailureKind::Timeout`], retried with backoff).
/// On Unix, `EAI_SYSTEM` arrives as the OS error itself (a local failure, also transient).
fn classify_lookup(error: &io::Error, host: &str) -> OpenError {
    let text = error.to_string().to_ascii_lowercase();
    let transient = matches!(
        error.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    ) || (cfg!(unix) && error.raw_os_error().is_some())
        // glibc and macOS: "Temporary failure in name resolution"; musl: "Try again"; Windows
        // (whose lookup errors are all OS errors): "This is usually a temporary error ...".
        || text.contains("temporary failure")
        || text.contains("temporary error")
        || text.contains("try again");
    if transient {
        OpenError::new(
            FailureKind::Timeout,
            format!("cannot resolve {host} for now (a temporary DNS failure): {error}"),
        )
    } else {
        OpenError::new(FailureKind::Dns, format!("cannot resolve {host}: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What std's `lookup_host` returns for a `getaddrinfo` failure other than `EAI_SYSTEM`.
    fn gai(detail: &str) -> io::Error {
        io::Error::other(format!("failed to lookup address information: {detail}"))
    }

    #[test]
    fn a_temporary_dns_failure_is_transient_and_an_unknown_host_is_not() {
        let transient = [
            gai("Temporary failure in name resolution"), // glibc EAI_AGAIN
            gai("Try again"),                            // musl EAI_AGAIN
            gai("temporary failure in name resolution"), // macOS EAI_AGAIN
            io::Error::from_raw_os_error(24),            // EAI_SYSTEM: EMFILE
            io::Error::from(io::ErrorKind::TimedOut),
        ];
        for error in &transient {
            let failure = classify_lookup(error, "r1.example");
            assert_eq!(failure.kind(), FailureKind::Timeout, "{error}");
            assert!(!failure.kind().is_permanent());
            assert!(failure.message().contains("r1.example"), "{failure}");
        }
        let unknown = [
            gai("Name or service not known"),           // glibc EAI_NONAME
            gai("No address associated with hostname"), // glibc EAI_NODATA
            gai("Name does not resolve"),               // musl EAI_NONAME
            gai("nodename nor servname provided, or not known"), // macOS EAI_NONAME
        ];
        for error in &unknown {
            let failure = classify_lookup(error, "r1.example");
            assert_eq!(failure.kind(), FailureKind::Dns, "{error}");
            assert!(failure.message().contains("r1.example"), "{failure}");
        }
    }
}
