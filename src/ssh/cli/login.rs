//! Logging in to a device's shell: the PTY and shell requests, the first prompt, the setup
//! commands, the learned prompt (two identical prompts in a row, so that a banner line that
//! looks like a prompt is not taken for one), privileged mode and paging off.

use std::sync::Arc;
use std::time::Duration;

use russh::ChannelMsg;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::connection::{FailureKind, OpenError};

use super::super::host_keys::{Liveness, Session};
use super::profile::Platform;
use super::shell::{
    LEARN_PROBES, PTY_COLUMNS, PTY_ROWS, ReadError, ReplyEnd, ShellSession, TAIL_LINES,
};
use super::text::Screen;

/// The least time a login (terminal, shell, prompt, setup, enable, paging off) is given.
const LOGIN_BOUND: Duration = Duration::from_secs(10);

impl ShellSession {
    /// Opens the shell on `session` and prepares it, all within `login_timeout`. `secret`
    /// enters privileged mode where the platform has one; it is sent to the device and
    /// nowhere else.
    pub(super) async fn start(
        session: &Session,
        platform: Arc<Platform>,
        host: &str,
        read_timeout: Duration,
        secret: Option<&str>,
        liveness: Arc<Liveness>,
    ) -> Result<Self, OpenError> {
        // The whole login has at least LOGIN_BOUND: a short read timeout meant for commands
        // must not cut a slow device's banner short. The supervisor's open timeout bounds it.
        let deadline = Instant::now() + read_timeout.max(LOGIN_BOUND);
        let refused = |what: &str, error: &dyn std::fmt::Display| {
            OpenError::new(
                FailureKind::Transport,
                format!(
                    "{host}: cannot open a {what} for platform {}: {error}",
                    platform.name
                ),
            )
        };
        let channel = session
            .channel_open_session()
            .await
            .map_err(|e| refused("shell channel", &e))?;
        let mut shell = Self {
            channel,
            platform: platform.clone(),
            host: host.to_owned(),
            identity: None,
            prompt: String::new(),
            screen: Screen::default(),
            in_sync: false,
            read_timeout,
            liveness,
            closed: false,
        };
        shell
            .channel
            .request_pty(true, "vt100", PTY_COLUMNS, PTY_ROWS, 0, 0, &[])
            .await
            .map_err(|e| refused("terminal", &e))?;
        shell.confirm("terminal (pty-req)", deadline).await?;
        shell
            .channel
            .request_shell(true)
            .await
            .map_err(|e| refused("shell", &e))?;
        shell.confirm("shell", deadline).await?;
        shell.login(secret, deadline).await?;
        shell.in_sync = true;
        Ok(shell)
    }

    /// Waits for the answer to a request sent with `want_reply`, keeping any data.
    pub(super) async fn confirm(&mut self, what: &str, deadline: Instant) -> Result<(), OpenError> {
        loop {
            match tokio::time::timeout_at(deadline, self.channel.wait()).await {
                Ok(Some(ChannelMsg::Success)) => return Ok(()),
                Ok(Some(ChannelMsg::Failure)) => {
                    // A server that serves no shells: only a change of platform helps.
                    return Err(OpenError::new(
                        FailureKind::Config,
                        format!(
                            "{}: the server refused a {what}; platform {} needs an interactive \
                             shell (choose an exec platform such as `linux` for this host)",
                            self.host, self.platform.name
                        ),
                    ));
                }
                Ok(Some(ChannelMsg::Data { data })) => self.screen.push(&data),
                Ok(Some(ChannelMsg::ExtendedData { data, .. })) => self.screen.push(&data),
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(OpenError::new(
                        FailureKind::Transport,
                        format!(
                            "{}: the shell channel closed before the {what} was answered",
                            self.host
                        ),
                    ));
                }
                Err(_) => {
                    return Err(OpenError::new(
                        FailureKind::Timeout,
                        format!("{}: no answer to the {what} request", self.host),
                    ));
                }
            }
        }
    }

    /// Finds the first prompt, runs the setup, learns the prompt, enters privileged mode and
    /// turns paging off.
    pub(super) async fn login(
        &mut self,
        secret: Option<&str>,
        deadline: Instant,
    ) -> Result<(), OpenError> {
        let platform = self.platform.clone();
        let login_prompt = platform.login_prompt.as_ref().unwrap_or(&platform.prompt);
        let first = self
            .read_reply(None, &[login_prompt], None, false, deadline)
            .await
            .map_err(|e| self.login_error(e, "the first prompt"))?;
        if let ReplyEnd::Prompt(prompt) = first.ended {
            self.prompt = prompt;
        }
        for command in &platform.profile.setup {
            self.screen.clear();
            self.send(&format!("{command}{}", platform.profile.newline))
                .await
                .map_err(|e| self.login_error(e, command))?;
            let reply = self
                .read_reply(
                    Some(command),
                    &[&platform.prompt, login_prompt],
                    None,
                    false,
                    deadline,
                )
                .await
                .map_err(|e| self.login_error(e, command))?;
            if let ReplyEnd::Prompt(prompt) = reply.ended {
                self.prompt = prompt;
            }
        }
        self.learn_prompt(deadline).await?;
        if let Some(secret) = secret {
            self.enable(secret, deadline).await?;
        }
        for command in &platform.profile.paging_off {
            match self.exchange(command, deadline).await {
                Ok(output) => {
                    if let Some(error) = self.error_in(&output) {
                        warn!(host = %self.host, %command, %error, "paging could not be turned off; the pager is answered instead");
                    }
                }
                Err(error) => return Err(self.login_error(error, command)),
            }
        }
        Ok(())
    }

    /// Sends empty lines until two prompts in a row name the same device: a banner line that
    /// looks like a prompt is not taken for one.
    pub(super) async fn learn_prompt(&mut self, deadline: Instant) -> Result<(), OpenError> {
        let platform = self.platform.clone();
        let mut previous = self.base_of(&self.prompt.clone());
        for _ in 0..LEARN_PROBES {
            self.screen.clear();
            self.send(&platform.profile.newline)
                .await
                .map_err(|e| self.login_error(e, "an empty line"))?;
            let reply = self
                .read_reply(None, &[&platform.prompt], None, false, deadline)
                .await
                .map_err(|e| self.login_error(e, "an empty line"))?;
            let ReplyEnd::Prompt(prompt) = reply.ended else {
                continue;
            };
            let base = self.base_of(&prompt);
            self.prompt = prompt;
            if base.is_some() && base == previous {
                self.identity = base;
                debug!(host = %self.host, prompt = %self.prompt.trim_end(), "prompt learned");
                return Ok(());
            }
            previous = base;
        }
        Err(OpenError::new(
            FailureKind::Unknown,
            format!(
                "{}: no stable {} prompt after login; last lines received:\n{}",
                self.host,
                platform.name,
                self.screen.tail(TAIL_LINES)
            ),
        ))
    }

    /// Enters privileged mode with `secret`, unless the prompt already is privileged or the
    /// platform has no such mode.
    pub(super) async fn enable(
        &mut self,
        secret: &str,
        deadline: Instant,
    ) -> Result<(), OpenError> {
        let platform = self.platform.clone();
        let (Some(enable), Some(password_prompt)) =
            (&platform.profile.enable, &platform.password_prompt)
        else {
            debug!(host = %self.host, platform = %platform.name, "a secret was given, but the platform has no enable");
            return Ok(());
        };
        if self.is_privileged() {
            return Ok(());
        }
        self.screen.clear();
        let newline = &platform.profile.newline;
        self.send(&format!("{}{newline}", enable.command))
            .await
            .map_err(|e| self.login_error(e, &enable.command))?;
        let reply = self
            .read_reply(
                Some(&enable.command),
                &[&platform.prompt],
                Some(password_prompt),
                true,
                deadline,
            )
            .await
            .map_err(|e| self.login_error(e, &enable.command))?;
        let mut answer = reply.output;
        match reply.ended {
            ReplyEnd::Prompt(prompt) => self.prompt = prompt,
            ReplyEnd::Other => {
                self.screen.clear();
                self.send(&format!("{secret}{newline}"))
                    .await
                    .map_err(|e| self.login_error(e, "the enable secret"))?;
                let reply = self
                    .read_reply(None, &[&platform.prompt], None, true, deadline)
                    .await
                    .map_err(|e| self.login_error(e, "the enable secret"))?;
                answer = reply.output;
                if let ReplyEnd::Prompt(prompt) = reply.ended {
                    self.prompt = prompt;
                }
            }
        }
        if self.is_privileged() {
            return Ok(());
        }
        // Devices do not echo the secret; should one, it still never reaches the message.
        let answer = answer.replace(secret, "<redacted>");
        Err(OpenError::new(
            FailureKind::Auth,
            format!(
                "{}: `{}` was refused (check the secret); the prompt is still `{}`: {}",
                self.host,
                enable.command,
                self.prompt.trim_end(),
                answer.trim()
            ),
        ))
    }

    pub(super) fn is_privileged(&self) -> bool {
        self.platform
            .privileged
            .as_ref()
            .is_none_or(|privileged| privileged.is_match(&self.prompt))
    }

    /// Whether the last prompt says configuration mode.
    pub(super) fn in_config_mode(&self) -> bool {
        self.platform
            .config_prompt
            .as_ref()
            .is_none_or(|config| config.is_match(&self.prompt))
    }

    pub(super) fn login_error(&self, error: ReadError, step: &str) -> OpenError {
        let (kind, what) = match error {
            ReadError::Timeout => (
                FailureKind::Timeout,
                format!("no {} prompt in time", self.platform.name),
            ),
            ReadError::Closed => (FailureKind::Transport, "the shell closed".to_owned()),
        };
        OpenError::new(
            kind,
            format!(
                "{}: logging in, at {step}: {what}; last lines received:\n{}",
                self.host,
                self.screen.tail(TAIL_LINES)
            ),
        )
    }
}
