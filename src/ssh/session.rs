//! One SSH connection on russh: connect, authenticate, run commands on channels of one
//! session, and notice when the session ends.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use russh::Disconnect;
use russh::client::{self};
use tracing::info;

use crate::connection::{
    CommandError, CommandOutput, CommandRunner, Connection, FailureKind, LossNotifier, OpenError,
    ResolvedConnectionParams,
};

use super::algorithms;
use super::auth::Credentials;
use super::channel;
use super::host_keys::{self, ClientHandler, Liveness, Session};
use super::options::SshOptions;

/// One SSH connection: a russh session, opened and reopened by the supervisor.
pub struct SshConnection {
    options: Arc<SshOptions>,
    session: Option<Arc<Session>>,
    /// Cleared the moment the session ends (russh's `disconnected` callback) or can no longer
    /// open channels (the runner).
    liveness: Arc<Liveness>,
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
            liveness: Arc::new(Liveness::none()),
            notifier: None,
        }
    }

    async fn disconnect(&mut self) {
        self.liveness.closed();
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
        let algorithms = algorithms::for_host(&self.options.algorithms, params, port)?;
        let policy = self.options.host_key_policy.clone();
        // Read before the handshake: the key types it records order what we ask the server for.
        let known_hosts = host_keys::load_known_hosts(&policy, host, port)
            .map_err(|reason| OpenError::new(FailureKind::HostKey, reason))?;
        let mut preferred = algorithms.preferred();
        host_keys::order_host_keys(&mut preferred, known_hosts.as_ref(), host, port);

        let addrs: Vec<_> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| classify_lookup(&e, host))?
            .collect();
        let stream = connect_any(&addrs, host, port).await?;
        let _ = stream.set_nodelay(true);

        let liveness = Arc::new(Liveness::new(self.notifier.clone()));
        let refusal = Arc::new(Mutex::new(None));
        let handler = ClientHandler {
            host: host.to_owned(),
            port,
            policy,
            known_hosts,
            refusal: refusal.clone(),
            liveness: liveness.clone(),
        };
        let config = Arc::new(client::Config {
            nodelay: true,
            keepalive_interval: self.options.effective_keepalive_interval(),
            keepalive_max: self.options.keepalive_max,
            preferred,
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
        self.liveness = liveness;
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
        channel::run(&session, &self.liveness, command)
            .await?
            .into_result()
    }

    fn command_runner(&self) -> Option<(Arc<dyn CommandRunner>, usize)> {
        let runner = SshRunner {
            session: self.session.clone()?,
            liveness: self.liveness.clone(),
        };
        Some((Arc::new(runner), self.options.max_channels))
    }
}

/// Runs commands as parallel channels over one session.
struct SshRunner {
    session: Arc<Session>,
    liveness: Arc<Liveness>,
}

#[async_trait]
impl CommandRunner for SshRunner {
    async fn run(&self, command: &str) -> Result<CommandOutput, CommandError> {
        channel::run(&self.session, &self.liveness, command).await
    }

    fn is_alive(&self) -> bool {
        self.liveness.is_alive() && !self.session.is_closed()
    }
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
        russh::Error::NoCommonAlgo { kind, ours, theirs } => {
            algorithms::negotiation_error(kind, ours, theirs, host, port)
        }
        russh::Error::ConnectionTimeout | russh::Error::KeepaliveTimeout => {
            OpenError::new(FailureKind::Timeout, format!("{host}:{port}: {error}"))
        }
        _ => OpenError::new(
            FailureKind::Transport,
            format!("ssh handshake with {host}:{port} failed: {error}"),
        ),
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
