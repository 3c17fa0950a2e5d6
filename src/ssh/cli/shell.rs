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
use tracing::debug;

use crate::connection::CommandError;

use super::super::host_keys::Liveness;
use super::profile::Platform;
use super::text::{Screen, render};

/// Terminal size asked for: wide enough that devices do not wrap the echo of a long command
/// (IOS's `terminal width 511`), tall enough that they do not page by the window size.
pub(super) const PTY_COLUMNS: u32 = 511;
pub(super) const PTY_ROWS: u32 = 1000;
/// Lines of received text an error about a missing prompt shows.
pub(super) const TAIL_LINES: usize = 6;
/// Prompts probed at most to learn a stable one after login.
pub(super) const LEARN_PROBES: usize = 4;

/// How a read ended without its end.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The deadline passed.
    Timeout,
    /// The shell (or the whole session) ended.
    Closed,
}

/// What ended a reply.
pub(super) enum ReplyEnd {
    /// The prompt, this line.
    Prompt(String),
    /// The alternative pattern (a password prompt).
    Other,
}

/// A reply: the output between the echo and what ended it, and what ended it.
pub(super) struct Reply {
    pub(super) output: String,
    pub(super) ended: ReplyEnd,
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
pub(super) struct ShellSession {
    pub(super) channel: russh::Channel<Msg>,
    pub(super) platform: Arc<Platform>,
    pub(super) host: String,
    /// The device's name as its prompt shows it (the `base` group, cut to `identity_chars`).
    pub(super) identity: Option<String>,
    /// The last prompt seen.
    pub(super) prompt: String,
    pub(super) screen: Screen,
    /// False from a command's send until its prompt is back: a command abandoned in between
    /// (timed out, or its caller gone) leaves the shell to be re-synchronised first.
    pub(super) in_sync: bool,
    pub(super) read_timeout: Duration,
    pub(super) liveness: Arc<Liveness>,
    pub(super) closed: bool,
}

impl ShellSession {
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
    pub(super) async fn run_unchecked(&mut self, command: &str) -> Result<String, CommandError> {
        if command.contains(['\n', '\r']) {
            // The device would run each line on its own, and the echo check would wait for
            // an echo that never comes in one piece.
            return Err(CommandError::Other(format!(
                "{}: a CLI command is one line; send the lines one by one (or as a \
                 configuration set): {command:?}",
                self.host
            )));
        }
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
    pub(super) async fn exchange(
        &mut self,
        command: &str,
        deadline: Instant,
    ) -> Result<String, ReadError> {
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
        if let ReplyEnd::Prompt(prompt) = reply.ended {
            self.prompt = prompt;
        }
        self.in_sync = true;
        Ok(reply.output)
    }

    /// Interrupts whatever runs and waits for the prompt; reports the session lost when it
    /// does not come back within the read timeout.
    pub(super) async fn resync(&mut self, why: &str) -> Result<(), CommandError> {
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
                if let ReplyEnd::Prompt(prompt) = reply.ended {
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
    pub(super) fn lost_error(&mut self, reason: &str) -> CommandError {
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
    pub(super) fn drain(&mut self) {
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

    pub(super) async fn send(&mut self, text: &str) -> Result<(), ReadError> {
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
    pub(super) async fn receive(&mut self, deadline: Instant) -> Result<(), ReadError> {
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
    pub(super) async fn read_reply(
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
                        ended: ReplyEnd::Prompt(line[at..].to_owned()),
                    });
                }
                if other.is_some_and(|other| other.is_match(&line)) {
                    let output = self.output(from, start, "");
                    return Ok(Reply {
                        output,
                        ended: ReplyEnd::Other,
                    });
                }
            }
            self.receive(deadline).await?;
        }
    }

    /// Where a prompt starts on `line`, if `line` ends with one (of this device, when
    /// `identity`).
    pub(super) fn prompt_start(&self, prompt: &Regex, line: &str, identity: bool) -> Option<usize> {
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
    pub(super) fn same_device(&self, known: &str, base: &str) -> bool {
        base == known
            || (known.chars().count() >= self.platform.profile.identity_chars
                && base.starts_with(known))
    }

    /// The `base` of a prompt line, cut to `identity_chars`; the whole prompt when the
    /// platform's regex has no `base`.
    pub(super) fn base_of(&self, prompt: &str) -> Option<String> {
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
    pub(super) fn output(&self, from: usize, last_line: usize, rest: &str) -> String {
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
    pub(super) fn error_in(&self, output: &str) -> Option<String> {
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
}
