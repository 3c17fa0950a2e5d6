//! One PTY shell on a device: log in (find and learn the prompt, run the setup, enter
//! privileged mode, turn paging off), then run commands one at a time, each read until the
//! device's prompt comes back after the command's echo.
//!
//! Why the echo: output that arrives late (a prompt printed twice, what is left of an
//! interrupted command) comes before the echo of the next command, so it is never taken for
//! that command's output; netmiko calls this `cmd_verify`.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use regex::Regex;
use russh::ChannelMsg;
use russh::client::Msg;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::connection::{CommandError, FailureKind, OpenError};

use super::super::host_keys::{Liveness, Session};
use super::profile::Platform;
use super::text::{Screen, render};

/// Terminal size asked for: wide enough that devices do not wrap the echo of a long command
/// (IOS's `terminal width 511`), tall enough that they do not page by the window size.
const PTY_COLUMNS: u32 = 511;
const PTY_ROWS: u32 = 1000;
/// Lines of received text an error about a missing prompt shows.
const TAIL_LINES: usize = 6;
/// Prompts probed at most to learn a stable one after login.
const LEARN_PROBES: usize = 4;

/// How a read ended without its end.
#[derive(Debug)]
enum ReadError {
    /// The deadline passed.
    Timeout,
    /// The shell (or the whole session) ended.
    Closed,
}

/// What ended a reply.
enum Ended {
    /// The prompt, this line.
    Prompt(String),
    /// The alternative pattern (a password prompt).
    Other,
}

/// A reply: the output between the echo and what ended it, and what ended it.
struct Reply {
    output: String,
    ended: Ended,
}

/// A configuration set that failed, in the shell's terms.
#[derive(Debug)]
pub(super) enum ConfigFailure {
    /// The device rejected a line (1-based `number`).
    Line {
        number: usize,
        line: String,
        output: String,
    },
    /// The commit failed.
    Commit { output: String },
    /// The shell itself failed (missing prompt, lost session).
    Command(CommandError),
}

/// One open PTY shell and what was learned of it.
pub(super) struct Shell {
    channel: russh::Channel<Msg>,
    platform: Arc<Platform>,
    host: String,
    /// The device's name as its prompt shows it (the `base` group, cut to `identity_chars`).
    identity: Option<String>,
    /// The last prompt seen.
    prompt: String,
    screen: Screen,
    /// False from a command's send until its prompt is back: a command abandoned in between
    /// (timed out, or its caller gone) leaves the shell to be re-synchronised first.
    in_sync: bool,
    read_timeout: Duration,
    liveness: Arc<Liveness>,
    closed: bool,
}

impl Shell {
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
        let deadline = Instant::now() + read_timeout;
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
    async fn confirm(&mut self, what: &str, deadline: Instant) -> Result<(), OpenError> {
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
    async fn login(&mut self, secret: Option<&str>, deadline: Instant) -> Result<(), OpenError> {
        let platform = self.platform.clone();
        let login_prompt = platform.login_prompt.as_ref().unwrap_or(&platform.prompt);
        let first = self
            .read_reply(None, &[login_prompt], None, false, deadline)
            .await
            .map_err(|e| self.login_error(e, "the first prompt"))?;
        if let Ended::Prompt(prompt) = first.ended {
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
            if let Ended::Prompt(prompt) = reply.ended {
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
    async fn learn_prompt(&mut self, deadline: Instant) -> Result<(), OpenError> {
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
            let Ended::Prompt(prompt) = reply.ended else {
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
    async fn enable(&mut self, secret: &str, deadline: Instant) -> Result<(), OpenError> {
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
            Ended::Prompt(prompt) => self.prompt = prompt,
            Ended::Other => {
                self.screen.clear();
                self.send(&format!("{secret}{newline}"))
                    .await
                    .map_err(|e| self.login_error(e, "the enable secret"))?;
                let reply = self
                    .read_reply(None, &[&platform.prompt], None, true, deadline)
                    .await
                    .map_err(|e| self.login_error(e, "the enable secret"))?;
                answer = reply.output;
                if let Ended::Prompt(prompt) = reply.ended {
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

    fn is_privileged(&self) -> bool {
        self.platform
            .privileged
            .as_ref()
            .is_none_or(|privileged| privileged.is_match(&self.prompt))
    }

    /// Whether the last prompt says configuration mode.
    fn in_config_mode(&self) -> bool {
        self.platform
            .config_prompt
            .as_ref()
            .is_none_or(|config| config.is_match(&self.prompt))
    }

    fn login_error(&self, error: ReadError, step: &str) -> OpenError {
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

    /// Runs one command and returns its output, without its echo and prompt. A line matching
    /// an error pattern fails it with the output; a prompt that does not come back within the
    /// read timeout fails it with the last lines received, after which the shell is
    /// re-synchronised (interrupted until its prompt comes back) or, failing that, reported
    /// lost so that the supervisor reconnects.
    pub(super) async fn run(&mut self, command: &str) -> Result<String, CommandError> {
        let output = self.run_unchecked(command).await?;
        match self.error_in(&output) {
            Some(_) => Err(CommandError::Other(format!(
                "{}: `{command}` was rejected: {}",
                self.host,
                output.trim()
            ))),
            None => Ok(output),
        }
    }

    /// [`run`](Self::run) without looking for error markers.
    async fn run_unchecked(&mut self, command: &str) -> Result<String, CommandError> {
        if self.closed {
            return Err(self.lost_error("the shell is closed"));
        }
        if !self.in_sync {
            self.resync("an earlier command was abandoned").await?;
        }
        let deadline = Instant::now() + self.read_timeout;
        match self.exchange(command, deadline).await {
            Ok(output) => Ok(output),
            Err(ReadError::Closed) => Err(self.lost_error("the device closed the shell")),
            Err(ReadError::Timeout) => {
                let message = format!(
                    "{}: the prompt did not come back within {:?} after `{command}`; last lines \
                     received:\n{}",
                    self.host,
                    self.read_timeout,
                    self.screen.tail(TAIL_LINES)
                );
                match self.resync(&message).await {
                    Ok(()) => Err(CommandError::Other(format!(
                        "{message}\n(the command was interrupted and the shell is back at its prompt)"
                    ))),
                    Err(lost) => Err(lost),
                }
            }
        }
    }

    /// Sends `command` and reads its reply up to the prompt (identity checked).
    async fn exchange(&mut self, command: &str, deadline: Instant) -> Result<String, ReadError> {
        let platform = self.platform.clone();
        self.drain();
        self.screen.clear();
        self.in_sync = false;
        self.send(&format!("{command}{}", platform.profile.newline))
            .await?;
        let echo = (platform.profile.echo && !command.trim().is_empty()).then_some(command);
        let reply = self
            .read_reply(echo, &[&platform.prompt], None, true, deadline)
            .await?;
        if let Ended::Prompt(prompt) = reply.ended {
            self.prompt = prompt;
        }
        self.in_sync = true;
        Ok(reply.output)
    }

    /// Interrupts whatever runs and waits for the prompt; reports the session lost when it
    /// does not come back within the read timeout.
    async fn resync(&mut self, why: &str) -> Result<(), CommandError> {
        let platform = self.platform.clone();
        debug!(host = %self.host, %why, "re-synchronising the shell");
        let deadline = Instant::now() + self.read_timeout;
        self.drain();
        self.screen.clear();
        let interrupt = format!("{}{}", platform.profile.interrupt, platform.profile.newline);
        let result = match self.send(&interrupt).await {
            Ok(()) => {
                self.read_reply(None, &[&platform.prompt], None, true, deadline)
                    .await
            }
            Err(error) => Err(error),
        };
        match result {
            Ok(reply) => {
                if let Ended::Prompt(prompt) = reply.ended {
                    self.prompt = prompt;
                }
                self.in_sync = true;
                Ok(())
            }
            Err(_) => {
                let reason = format!(
                    "{why}; the shell did not come back to its prompt when interrupted, so the \
                     session is given up and reconnected"
                );
                Err(self.lost_error(&reason))
            }
        }
    }

    /// Reports the session lost (once) and closes the shell for good.
    fn lost_error(&mut self, reason: &str) -> CommandError {
        self.closed = true;
        let reason = if reason.starts_with(&self.host) {
            reason.to_owned()
        } else {
            format!("{}: {reason}", self.host)
        };
        self.liveness.lost(reason.clone());
        CommandError::ConnectionLost(reason)
    }

    /// Discards what already arrived without waiting: late output of an earlier command.
    fn drain(&mut self) {
        while let Some(message) = self.channel.wait().now_or_never() {
            match message {
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                    self.closed = true;
                    return;
                }
                _ => {}
            }
        }
    }

    async fn send(&mut self, text: &str) -> Result<(), ReadError> {
        if self.closed {
            return Err(ReadError::Closed);
        }
        self.channel
            .data_bytes(text.as_bytes().to_vec())
            .await
            .map_err(|_| {
                self.closed = true;
                ReadError::Closed
            })
    }

    /// The next chunk into the screen.
    async fn receive(&mut self, deadline: Instant) -> Result<(), ReadError> {
        loop {
            match tokio::time::timeout_at(deadline, self.channel.wait()).await {
                Err(_) => return Err(ReadError::Timeout),
                Ok(Some(ChannelMsg::Data { data })) => {
                    self.screen.push(&data);
                    return Ok(());
                }
                Ok(Some(ChannelMsg::ExtendedData { data, .. })) => {
                    self.screen.push(&data);
                    return Ok(());
                }
                Ok(Some(ChannelMsg::Eof | ChannelMsg::Close) | None) => {
                    self.closed = true;
                    return Err(ReadError::Closed);
                }
                Ok(Some(_)) => {}
            }
        }
    }

    /// Reads until the last line is one of `prompts` (naming this device when `identity`) or
    /// matches `other`, after the echo of `echo` when given; answers the pager on the way.
    async fn read_reply(
        &mut self,
        echo: Option<&str>,
        prompts: &[&Regex],
        other: Option<&Regex>,
        identity: bool,
        deadline: Instant,
    ) -> Result<Reply, ReadError> {
        let platform = self.platform.clone();
        // Where the reply starts: after the line holding the echo.
        let mut from = if echo.is_none() { Some(0) } else { None };
        let mut echo_at = None;
        loop {
            if from.is_none()
                && let Some(echo) = echo
            {
                let raw = self.screen.raw();
                if echo_at.is_none() {
                    echo_at = raw.find(echo).map(|at| at + echo.len());
                }
                if let Some(at) = echo_at {
                    from = raw[at..].find('\n').map(|newline| at + newline + 1);
                }
            }
            let line = self.screen.last_line();
            if let Some(pager) = &platform.pager
                && let Some(found) = pager.find(&line)
            {
                self.screen.cut_last_line(found.start());
                self.send(&platform.profile.pager_answer).await?;
                continue;
            }
            if let Some(from) = from
                && self.screen.last_line_start() >= from
            {
                let start = self.screen.last_line_start();
                if let Some(at) = prompts
                    .iter()
                    .find_map(|prompt| self.prompt_start(prompt, &line, identity))
                {
                    let output = self.output(from, start, &line[..at]);
                    return Ok(Reply {
                        output,
                        ended: Ended::Prompt(line[at..].to_owned()),
                    });
                }
                if other.is_some_and(|other| other.is_match(&line)) {
                    let output = self.output(from, start, "");
                    return Ok(Reply {
                        output,
                        ended: Ended::Other,
                    });
                }
            }
            self.receive(deadline).await?;
        }
    }

    /// Where a prompt starts on `line`, if `line` ends with one (of this device, when
    /// `identity`).
    fn prompt_start(&self, prompt: &Regex, line: &str, identity: bool) -> Option<usize> {
        let captures = prompt.captures(line)?;
        let whole = captures.get(0)?;
        if identity
            && let (Some(known), Some(base)) = (&self.identity, captures.name("base"))
            && !self.same_device(known, base.as_str())
        {
            return None;
        }
        Some(whole.start())
    }

    /// Whether a prompt's `base` names the device learned at login: equal, or, when the
    /// learned name was cut to `identity_chars`, starting with it.
    fn same_device(&self, known: &str, base: &str) -> bool {
        base == known
            || (known.chars().count() >= self.platform.profile.identity_chars
                && base.starts_with(known))
    }

    /// The `base` of a prompt line, cut to `identity_chars`; the whole prompt when the
    /// platform's regex has no `base`.
    fn base_of(&self, prompt: &str) -> Option<String> {
        let captures = self.platform.prompt.captures(prompt)?;
        let base = captures
            .name("base")
            .map_or_else(|| prompt.trim(), |base| base.as_str());
        Some(
            base.chars()
                .take(self.platform.profile.identity_chars.max(1))
                .collect(),
        )
    }

    /// The reply's text from `from` to the last line (at `last_line`), plus `rest` (what
    /// precedes a prompt on the last line), rendered, without the platform's context lines.
    fn output(&self, from: usize, last_line: usize, rest: &str) -> String {
        let mut output = render(&self.screen.raw()[from..last_line]);
        output.push_str(rest);
        let mut lines: Vec<&str> = output.split_inclusive('\n').collect();
        let all = lines.len();
        while let Some(last) = lines.last()
            && self
                .platform
                .context
                .iter()
                .any(|context| context.is_match(last.trim_end()))
        {
            lines.pop();
        }
        let output: String = lines.concat();
        // What a context line leaves (the blank line Junos prints above `[edit]`) is not
        // output; an empty line a command printed is.
        if lines.len() < all && output.trim().is_empty() {
            String::new()
        } else {
            output
        }
    }

    /// The first line matching one of the platform's error patterns.
    fn error_in(&self, output: &str) -> Option<String> {
        output
            .lines()
            .find(|line| {
                self.platform
                    .errors
                    .iter()
                    .any(|error| error.is_match(line))
            })
            .map(str::to_owned)
    }

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
    async fn discard(&mut self) {
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
