//! # Network devices
//!
//! Most network devices (Cisco IOS and NX-OS, Arista EOS, Junos, ...) refuse or mishandle SSH
//! `exec` requests: they serve a PTY shell with a prompt, a pager, a privileged mode behind
//! `enable` and a configuration mode. The params' `platform` (genja's and Nornir's host
//! attribute, netmiko's `device_type`) selects a [`PlatformProfile`] from
//! [`SshOptions::platforms`](super::SshOptions::platforms); with a shell profile, the
//! connection opens one PTY shell after authentication and every command runs in it, one at a
//! time:
//!
//! - **Login**: the first prompt is found and learned (a banner line that looks like a prompt
//!   is not taken for one: the prompt must come back the same after an empty line), the
//!   profile's setup commands run, privileged mode is entered when the params' extras give a
//!   `secret` (never logged; `ResolvedConnectionParams`'s `Debug` shows only the extras'
//!   names), and paging is turned off.
//! - **Reading**: a command's output ends at the device's prompt, found after the command's
//!   echo, not by waiting: the prompt may change with the mode (`R1#`, `R1(config-if)#`) but
//!   must name the same device. The echo and the prompt are removed; a `--More--` pager is
//!   answered and removed; a line matching the profile's error patterns (`% Invalid input`)
//!   fails the command with the device's text.
//! - **A prompt that does not come back** within the read timeout (the profile's, 10 s, or
//!   the params' extras `read_timeout` in seconds) fails the command with the last lines
//!   received. The command is then interrupted (Ctrl-C) until the prompt comes back; if it
//!   does not, the session is reported lost and the supervisor reconnects it.
//! - **Reconnects** log in again the same way, so privileged mode is entered again. A command
//!   in flight when the session dropped fails with `ConnectionLost` and is not re-run.
//! - **Configuration**: [`send_config`] enters configuration mode, sends each line, stops at
//!   the first line the device rejects and reports it, commits where the platform needs it
//!   (IOS-XR, Junos) and leaves; a failed set is discarded where the platform has a candidate.
//!
//! ```no_run
//! use connection_supervisor::{ConnectionKey, ConnectionManager, Extras, ResolvedConnectionParams};
//! use connection_supervisor::ssh::{self, SshOptions, cli};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = ConnectionManager::with_connection_factory(ssh::factory(SshOptions::default())).await?;
//! let mut extras = Extras::new();
//! extras.insert("secret".into(), "enable-secret".into());
//! let params = ResolvedConnectionParams {
//!     hostname: "10.0.0.1".into(),
//!     username: Some("admin".into()),
//!     password: Some("admin-password".into()),
//!     platform: Some("cisco_ios".into()),
//!     extras: Some(extras),
//!     ..Default::default()
//! };
//! let router = manager
//!     .open_connection(&ConnectionKey::new("r1", ssh::PLUGIN_NAME), &params)
//!     .await?
//!     .expect("the ssh factory serves plugin \"ssh\"");
//! println!("{}", router.execute_command("show ip interface brief").await?);
//! cli::send_config(&router, ["interface Gi0/1", "description uplink"]).await?;
//! # Ok(()) }
//! ```
//!
//! Shipped profiles: `cisco_ios`, `cisco_nxos`, `cisco_xr`, `arista_eos`, `juniper_junos`,
//! `linux` (exec channels, as without a platform) and `linux_shell` (a PTY shell whose prompt
//! is set to `cs-shell$ `), with NAPALM's names as aliases (`ios`, `nxos`, `iosxr`, `eos`,
//! `junos`). Add or override platforms with [`Platforms::insert`] or [`Platforms::load_file`]
//! (the TOML of `src/ssh/cli/platforms.toml`). A `platform` no profile names keeps exec
//! channels.
//!
//! Limits: commands run one at a time per shell session (the runner's parallelism is 1); the
//! output is what the terminal shows (stdout and stderr merged, no exit status); a command
//! that asks a question (`[confirm]`) runs into the read timeout and is interrupted.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::connection::{
    CommandError, CommandOutput, CommandRunner, OpenError, ResolvedConnectionParams,
};
use crate::{ConnectionHandle, ConnectionKey, Error};

use super::SshConnection;
use super::host_keys::{Liveness, Session};

mod profile;
mod shell;
mod text;

pub use profile::{
    ConfigSettings, EnableSettings, PlatformProfile, Platforms, ProfileError, SessionKind,
};

use shell::{ConfigFailure, Shell};

/// The params' extras key holding the enable secret.
pub const SECRET_EXTRA: &str = "secret";
/// The params' extras key overriding the profile's read timeout, in seconds.
pub const READ_TIMEOUT_EXTRA: &str = "read_timeout";

/// A configuration set that did not go through.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The device rejected a line. The lines before it were sent; on platforms with a
    /// candidate configuration (IOS-XR, Junos) nothing was applied, elsewhere (IOS, NX-OS,
    /// EOS) the lines before it are in the running configuration.
    #[error("{key}: configuration line {number} `{line}` rejected: {output}")]
    Rejected {
        /// The connection.
        key: ConnectionKey,
        /// The line's number in the set, from 1.
        number: usize,
        /// The line.
        line: String,
        /// What the device answered.
        output: String,
    },
    /// The commit failed; the candidate was discarded.
    #[error("{key}: commit failed: {output}")]
    Commit {
        /// The connection.
        key: ConnectionKey,
        /// What the device answered.
        output: String,
    },
    /// The shell failed under the set (a prompt that did not come back, a lost session), or
    /// the connection's platform has no configuration mode.
    #[error("{key}: configuration set failed: {source}")]
    Command {
        /// The connection.
        key: ConnectionKey,
        /// What went wrong.
        #[source]
        source: CommandError,
    },
    /// The connection does not run a CLI shell: no platform, or an exec platform.
    #[error("{key}: not a CLI session (its platform selects no shell profile)")]
    NotCli {
        /// The connection.
        key: ConnectionKey,
    },
    /// The supervisor could not run the set: closed, unavailable, timed out, not an SSH
    /// connection.
    #[error(transparent)]
    Supervisor(#[from] Error),
}

/// Sends a configuration set to the device behind `handle` (an SSH connection whose platform
/// selects a shell profile): enters configuration mode, sends each line and checks it for the
/// platform's error patterns, stops at the first rejected line, commits where the platform
/// needs it and leaves configuration mode. Returns what the device printed.
///
/// Runs inside the connection's actor (through [`ConnectionHandle::with`]), so it waits for a
/// reconnect in progress, holds the shell for the whole set (no command of another caller
/// lands in the middle) and is bounded by the request timeout as a whole.
pub async fn send_config<I, S>(handle: &ConnectionHandle, lines: I) -> Result<String, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let lines: Vec<String> = lines.into_iter().map(Into::into).collect();
    let key = handle.key().clone();
    handle
        .with(move |connection: &mut SshConnection| {
            Box::pin(async move { connection.send_config_as(key, &lines).await })
        })
        .await?
}

/// The CLI session of one SSH connection: its shell, shared by the connection (commands
/// through the actor, configuration sets) and its runner (commands on callers' tasks).
pub(super) struct CliSession {
    shell: Arc<Mutex<Shell>>,
    liveness: Arc<Liveness>,
    session: Arc<Session>,
}

impl CliSession {
    /// Opens the shell when `params.platform` selects a shell profile in `platforms`;
    /// `Ok(None)` when it selects none (exec channels, as without a platform).
    pub(super) async fn open(
        platforms: &Platforms,
        params: &ResolvedConnectionParams,
        session: &Arc<Session>,
        liveness: &Arc<Liveness>,
    ) -> Result<Option<Self>, OpenError> {
        let Some(platform) = params
            .platform
            .as_deref()
            .and_then(|name| platforms.resolve(name))
        else {
            return Ok(None);
        };
        if platform.profile.session != SessionKind::Shell {
            return Ok(None);
        }
        let extra = |name: &str| params.extras.as_ref().and_then(|extras| extras.get(name));
        let secret = extra(SECRET_EXTRA).and_then(|value| value.as_str());
        let read_timeout = extra(READ_TIMEOUT_EXTRA)
            .and_then(serde_json::Value::as_f64)
            .filter(|secs| secs.is_finite() && *secs > 0.0)
            .map_or_else(|| platform.read_timeout(), Duration::from_secs_f64);
        let shell = Shell::start(
            session,
            platform.clone(),
            &params.hostname,
            read_timeout,
            secret,
            liveness.clone(),
        )
        .await?;
        Ok(Some(Self {
            shell: Arc::new(Mutex::new(shell)),
            liveness: liveness.clone(),
            session: session.clone(),
        }))
    }

    /// Runs one command in the shell, after those before it.
    pub(super) async fn run(&self, command: &str) -> Result<CommandOutput, CommandError> {
        let output = self.shell.lock().await.run(command).await?;
        Ok(CommandOutput {
            stdout: output,
            stderr: String::new(),
            exit_status: None,
        })
    }

    /// A runner over the same shell, one command at a time.
    pub(super) fn runner(&self) -> (Arc<dyn CommandRunner>, usize) {
        let runner = CliRunner {
            shell: self.shell.clone(),
            liveness: self.liveness.clone(),
            session: self.session.clone(),
        };
        (Arc::new(runner), 1)
    }

    async fn send_config(
        &self,
        key: ConnectionKey,
        lines: &[String],
    ) -> Result<String, ConfigError> {
        let result = self.shell.lock().await.send_config(lines).await;
        result.map_err(|failure| match failure {
            ConfigFailure::Line {
                number,
                line,
                output,
            } => ConfigError::Rejected {
                key,
                number,
                line,
                output,
            },
            ConfigFailure::Commit { output } => ConfigError::Commit { key, output },
            ConfigFailure::Command(source) => ConfigError::Command { key, source },
        })
    }
}

impl SshConnection {
    /// The configuration set behind [`send_config`], inside the connection's actor.
    async fn send_config_as(
        &mut self,
        key: ConnectionKey,
        lines: &[String],
    ) -> Result<String, ConfigError> {
        match self.cli() {
            Some(cli) => cli.send_config(key, lines).await,
            None => Err(ConfigError::NotCli { key }),
        }
    }
}

/// Runs commands in the shell, one at a time, on callers' tasks.
struct CliRunner {
    shell: Arc<Mutex<Shell>>,
    liveness: Arc<Liveness>,
    session: Arc<Session>,
}

#[async_trait]
impl CommandRunner for CliRunner {
    async fn run(&self, command: &str) -> Result<CommandOutput, CommandError> {
        let output = self.shell.lock().await.run(command).await?;
        Ok(CommandOutput {
            stdout: output,
            stderr: String::new(),
            exit_status: None,
        })
    }

    fn is_alive(&self) -> bool {
        self.liveness.is_alive() && !self.session.is_closed()
    }
}
