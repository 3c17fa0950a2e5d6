//! Configuration sets: the typed API ([`send_config`] over a handle, [`ConfigError`]) and the
//! shell side (configuration mode, each line checked, commit, discard on failure).

use tracing::warn;

use crate::connection::CommandError;
use crate::{ConnectionHandle, ConnectionKey, Error};

use super::super::SshConnection;
use super::shell::{ConfigFailure, ShellSession};

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

impl SshConnection {
    /// The configuration set behind [`send_config`], inside the connection's actor.
    async fn send_config_as(
        &mut self,
        key: ConnectionKey,
        lines: &[String],
    ) -> Result<String, ConfigError> {
        let Some(cli) = self.cli() else {
            return Err(ConfigError::NotCli { key });
        };
        cli.send_config(lines)
            .await
            .map_err(|failure| match failure {
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

impl ShellSession {
    /// Runs a configuration set: enter configuration mode, each line (stopping at the first
    /// the device rejects), commit where the platform needs it, leave. On a failure, the
    /// platform's discard commands leave configuration mode without applying the candidate.
    pub(super) async fn send_config(&mut self, lines: &[String]) -> Result<String, ConfigFailure> {
        let platform = self.platform.clone();
        let Some(config) = &platform.profile.config else {
            return Err(ConfigFailure::Command(CommandError::Other(format!(
                "{}: platform {} has no configuration mode in its profile",
                self.host, platform.name
            ))));
        };
        let mut transcript = String::new();
        let entered = self
            .run(&config.enter)
            .await
            .map_err(ConfigFailure::Command)?;
        transcript.push_str(&entered);
        if !self.in_config_mode() {
            return Err(ConfigFailure::Command(CommandError::Other(format!(
                "{}: `{}` did not enter configuration mode (prompt `{}`): {}",
                self.host,
                config.enter,
                self.prompt.trim_end(),
                entered.trim()
            ))));
        }
        for (index, line) in lines.iter().enumerate() {
            let output = self
                .run_unchecked(line)
                .await
                .map_err(ConfigFailure::Command)?;
            if self.error_in(&output).is_some() {
                self.discard().await;
                return Err(ConfigFailure::Line {
                    number: index + 1,
                    line: line.clone(),
                    output: output.trim().to_owned(),
                });
            }
            transcript.push_str(&output);
        }
        if let Some(commit) = &config.commit {
            let output = self
                .run_unchecked(commit)
                .await
                .map_err(ConfigFailure::Command)?;
            let confirmed = platform
                .commit_ok
                .as_ref()
                .is_none_or(|ok| ok.is_match(&output));
            if self.error_in(&output).is_some() || !confirmed {
                self.discard().await;
                return Err(ConfigFailure::Commit {
                    output: output.trim().to_owned(),
                });
            }
            transcript.push_str(&output);
        }
        let output = self
            .run(&config.exit)
            .await
            .map_err(ConfigFailure::Command)?;
        transcript.push_str(&output);
        Ok(transcript)
    }

    /// Leaves configuration mode after a failure, throwing the candidate away where there is
    /// one. Best effort: the set has failed already, and its error says why.
    pub(super) async fn discard(&mut self) {
        let platform = self.platform.clone();
        let Some(config) = &platform.profile.config else {
            return;
        };
        let commands = if config.discard.is_empty() {
            std::slice::from_ref(&config.exit)
        } else {
            &config.discard[..]
        };
        for command in commands {
            if let Err(error) = self.run_unchecked(command).await {
                warn!(host = %self.host, %command, %error, "leaving configuration mode after a failed set");
                return;
            }
        }
    }
}
