//! The CLI session of one SSH connection, as the connection uses it: opened after
//! authentication when the platform selects a shell profile, and its runner.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::connection::{
    CommandError, CommandOutput, CommandRunner, OpenError, ResolvedConnectionParams,
};

use super::super::host_keys::{Liveness, Session};
use super::profile::{Platforms, SessionKind};
use super::shell::{ConfigFailure, ShellSession};

/// The params' extras key holding the enable secret.
pub const SECRET_EXTRA: &str = "secret";
/// The params' extras key overriding the profile's read timeout, in seconds.
pub const READ_TIMEOUT_EXTRA: &str = "read_timeout";

/// The CLI session of one SSH connection: its shell, shared by the connection (commands
/// through the actor, configuration sets) and its runner (commands on callers' tasks).
pub(in crate::ssh) struct CliSession {
    shell: Arc<Mutex<ShellSession>>,
    liveness: Arc<Liveness>,
    session: Arc<Session>,
}

impl CliSession {
    /// Opens the shell when `params.platform` selects a shell profile in `platforms`;
    /// `Ok(None)` when it selects none (exec channels, as without a platform).
    pub(in crate::ssh) async fn open(
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
        let shell = ShellSession::start(
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
    pub(in crate::ssh) async fn run(&self, command: &str) -> Result<CommandOutput, CommandError> {
        run_in(&self.shell, command).await
    }

    /// A runner over the same shell, one command at a time.
    pub(in crate::ssh) fn runner(&self) -> (Arc<dyn CommandRunner>, usize) {
        let runner = CliRunner {
            shell: self.shell.clone(),
            liveness: self.liveness.clone(),
            session: self.session.clone(),
        };
        (Arc::new(runner), 1)
    }

    /// Runs a configuration set in the shell, after the commands before it.
    pub(super) async fn send_config(&self, lines: &[String]) -> Result<String, ConfigFailure> {
        self.shell.lock().await.send_config(lines).await
    }
}

/// Runs commands in the shell, one at a time, on callers' tasks.
struct CliRunner {
    shell: Arc<Mutex<ShellSession>>,
    liveness: Arc<Liveness>,
    session: Arc<Session>,
}

#[async_trait]
impl CommandRunner for CliRunner {
    async fn run(&self, command: &str) -> Result<CommandOutput, CommandError> {
        run_in(&self.shell, command).await
    }

    fn is_alive(&self) -> bool {
        self.liveness.is_alive() && !self.session.is_closed()
    }
}

/// One command in `shell`, once the commands before it are done. What a terminal shows is one
/// stream and no exit status: the output is all stdout, and the status unknown.
async fn run_in(shell: &Mutex<ShellSession>, command: &str) -> Result<CommandOutput, CommandError> {
    let output = shell.lock().await.run(command).await?;
    Ok(CommandOutput {
        stdout: output,
        stderr: String::new(),
        exit_status: None,
    })
}
