//! The test server's CLI device mode: a PTY shell imitating one platform's command line, for
//! testing clients that drive network devices through their prompt.
//!
//! The imitation does what makes those clients hard to write: a login banner with a line
//! that looks like a prompt (sent apart from the real prompt), a `--More--` pager until
//! paging is turned off, `enable` behind a password prompt, a configuration mode with its own
//! prompts (and a candidate configuration that needs `commit` on IOS-XR and Junos), the
//! platform's error text for unknown commands, a command that returns its prompt only when
//! interrupted (`hang`) and one that never does (`wedge`).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use russh::ChannelId;
use russh::server::Handle;
use tokio::time::Instant;

use super::channels::Stdin;

/// Lines per page while paging is on.
const PAGE_LINES: usize = 20;

/// The platform a CLI test device imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CliPlatform {
    /// Cisco IOS: `R1>`, `enable`, `R1#`, `R1(config)#`.
    CiscoIos,
    /// Cisco NX-OS: logs in at `R1#`.
    CiscoNxos,
    /// Cisco IOS-XR: `RP/0/RP0/CPU0:R1#`, a candidate configuration applied by `commit`.
    CiscoXr,
    /// Arista EOS: `R1>`, `enable`, `R1#`.
    AristaEos,
    /// Junos: `admin@R1> `, `configure` into `admin@R1# ` under an `[edit]` line, `commit`.
    JuniperJunos,
    /// A bash-like shell: `admin@R1:~$ `, whose prompt a `PS1='...'` line sets.
    LinuxShell,
}

impl CliPlatform {
    /// The platform profile name the SSH plugin ships for this platform.
    pub fn profile_name(self) -> &'static str {
        match self {
            Self::CiscoIos => "cisco_ios",
            Self::CiscoNxos => "cisco_nxos",
            Self::CiscoXr => "cisco_xr",
            Self::AristaEos => "arista_eos",
            Self::JuniperJunos => "juniper_junos",
            Self::LinuxShell => "linux_shell",
        }
    }

    fn cisco_like(self) -> bool {
        matches!(
            self,
            Self::CiscoIos | Self::CiscoNxos | Self::CiscoXr | Self::AristaEos
        )
    }

    fn has_enable(self) -> bool {
        matches!(self, Self::CiscoIos | Self::CiscoNxos | Self::AristaEos)
    }

    fn starts_privileged(self) -> bool {
        !matches!(self, Self::CiscoIos | Self::AristaEos)
    }

    fn has_candidate(self) -> bool {
        matches!(self, Self::CiscoXr | Self::JuniperJunos)
    }
}

/// Settings of the CLI device mode ([`SshTestServerConfig::cli`](super::SshTestServerConfig::cli)).
#[derive(Clone)]
#[non_exhaustive]
pub struct CliDevice {
    /// The platform imitated.
    pub platform: CliPlatform,
    /// The password `enable` asks for (platforms with `enable`). Defaults to `enable-secret`.
    pub secret: String,
    /// Printed before the first prompt, and sent apart from it. Defaults to a banner whose
    /// last line looks like a prompt of the platform (naming another device).
    pub banner: Option<String>,
}

impl CliDevice {
    /// A device of `platform` with the default secret and banner.
    pub fn new(platform: CliPlatform) -> Self {
        Self {
            platform,
            secret: DEFAULT_SECRET.to_owned(),
            banner: None,
        }
    }
}

/// The enable secret of [`CliDevice::new`].
pub const DEFAULT_SECRET: &str = "enable-secret";

impl fmt::Debug for CliDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CliDevice")
            .field("platform", &self.platform)
            .field("secret", &"<redacted>")
            .field("banner", &self.banner)
            .finish()
    }
}

/// What the CLI device did, across every shell and restart of its server
/// ([`SshTestServer::cli`](super::SshTestServer::cli)).
pub struct CliDeviceState {
    device: CliDevice,
    shells: AtomicU64,
    enables: AtomicU64,
    commands: AtomicU64,
    running: Mutex<Vec<String>>,
}

impl fmt::Debug for CliDeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CliDeviceState")
            .field("device", &self.device)
            .field("shells", &self.shells_opened())
            .field("enables", &self.enables())
            .finish_non_exhaustive()
    }
}

impl CliDeviceState {
    pub(super) fn new(device: CliDevice) -> Self {
        Self {
            device,
            shells: AtomicU64::new(0),
            enables: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            running: Mutex::new(Vec::new()),
        }
    }

    /// Shells opened so far.
    pub fn shells_opened(&self) -> u64 {
        self.shells.load(Ordering::SeqCst)
    }

    /// Successful `enable`s so far (a correct secret given).
    pub fn enables(&self) -> u64 {
        self.enables.load(Ordering::SeqCst)
    }

    /// Command lines received at a prompt so far (empty lines not counted).
    pub fn commands_received(&self) -> u64 {
        self.commands.load(Ordering::SeqCst)
    }

    /// The configuration lines applied so far (committed, where the platform commits).
    pub fn running_config(&self) -> Vec<String> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn apply(&self, lines: impl IntoIterator<Item = String>) {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(lines);
    }
}

/// Serves one shell until the client closes it or sends `exit` at the top level.
pub(super) async fn serve(
    state: Arc<CliDeviceState>,
    hostname: String,
    username: String,
    mut stdin: Stdin,
    handle: Handle,
    channel: ChannelId,
) {
    state.shells.fetch_add(1, Ordering::SeqCst);
    let mut terminal = Terminal::new(state, hostname, username);
    let (banner, first_prompt) = terminal.greeting();
    // Two writes: a client that takes the banner's prompt-like last line for the prompt is
    // caught out.
    if handle.data(channel, banner).await.is_err() {
        return;
    }
    tokio::task::yield_now().await;
    if handle.data(channel, first_prompt).await.is_err() {
        return;
    }
    loop {
        let wake = terminal.wake_at();
        let input = tokio::select! {
            input = stdin.recv() => input,
            () = sleep_until(wake), if wake.is_some() => {
                terminal.wake();
                Some(Vec::new())
            }
        };
        let Some(input) = input else { return };
        for byte in input {
            terminal.feed(byte);
        }
        terminal.run_queued();
        let output = std::mem::take(&mut terminal.out);
        if !output.is_empty() && handle.data(channel, output).await.is_err() {
            return;
        }
        if terminal.logged_out {
            let _ = handle.exit_status_request(channel, 0).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
            return;
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    User,
    Privileged,
    /// Configuration mode, with the sub-mode (`if` for an interface) if any.
    Config(Option<String>),
}

/// What the terminal is doing instead of waiting at its prompt.
enum Busy {
    /// A command runs until then.
    Sleeping(Instant),
    /// `hang`: until interrupted.
    Hung,
    /// `wedge`: for ever.
    Wedged,
    /// The pager waits, with the lines still to show.
    Paging(VecDeque<String>),
    /// `enable` waits for the secret, typed so far.
    Password(String),
}

struct Terminal {
    state: Arc<CliDeviceState>,
    platform: CliPlatform,
    hostname: String,
    username: String,
    mode: Mode,
    paging: bool,
    /// A Linux shell's prompt, once set with `PS1=`.
    ps1: Option<String>,
    line: String,
    /// Input that arrived while busy, for when the prompt is back.
    queued: VecDeque<u8>,
    busy: Option<Busy>,
    candidate: Vec<String>,
    /// Set after a `\r`, so that the `\n` of a `\r\n` is not a second (empty) line.
    after_cr: bool,
    out: String,
    logged_out: bool,
}

impl Terminal {
    fn new(state: Arc<CliDeviceState>, hostname: String, username: String) -> Self {
        let platform = state.device.platform;
        Self {
            platform,
            hostname,
            username,
            mode: if platform.starts_privileged() {
                Mode::Privileged
            } else {
                Mode::User
            },
            paging: true,
            ps1: None,
            line: String::new(),
            queued: VecDeque::new(),
            busy: None,
            candidate: Vec::new(),
            after_cr: false,
            out: String::new(),
            logged_out: false,
            state,
        }
    }

    /// The banner, then the first prompt.
    fn greeting(&self) -> (String, String) {
        let banner = match &self.state.device.banner {
            Some(banner) => banner.replace('\n', "\r\n"),
            None => format!(
                "\r\n*** Lab device. Authorised access only. ***\r\n\
                 Last configured from the console of:\r\n{}",
                self.prompt_named("banner-host")
            ),
        };
        (banner, format!("\r\n\r\n{}", self.prompt()))
    }

    fn prompt(&self) -> String {
        self.prompt_named(&self.hostname)
    }

    fn prompt_named(&self, host: &str) -> String {
        let config = |sub: &Option<String>| match sub {
            Some(sub) => format!("(config-{sub})#"),
            None => "(config)#".to_owned(),
        };
        match (self.platform, &self.mode) {
            (CliPlatform::JuniperJunos, Mode::Config(_)) => {
                format!("\r\n[edit]\r\n{}@{host}# ", self.username)
            }
            (CliPlatform::JuniperJunos, _) => format!("{}@{host}> ", self.username),
            (CliPlatform::LinuxShell, _) => match &self.ps1 {
                Some(ps1) => ps1.clone(),
                None => format!("{}@{host}:~$ ", self.username),
            },
            (CliPlatform::CiscoXr, Mode::Config(sub)) => {
                format!("RP/0/RP0/CPU0:{host}{}", config(sub))
            }
            (CliPlatform::CiscoXr, _) => format!("RP/0/RP0/CPU0:{host}#"),
            (_, Mode::User) => format!("{host}>"),
            (_, Mode::Privileged) => format!("{host}#"),
            (_, Mode::Config(sub)) => format!("{host}{}", config(sub)),
        }
    }

    fn wake_at(&self) -> Option<Instant> {
        match self.busy {
            Some(Busy::Sleeping(at)) => Some(at),
            _ => None,
        }
    }

    fn wake(&mut self) {
        if matches!(self.busy, Some(Busy::Sleeping(_))) {
            self.busy = None;
            self.show_prompt();
        }
    }

    fn show_prompt(&mut self) {
        let prompt = self.prompt();
        self.out.push_str(&prompt);
    }

    fn feed(&mut self, byte: u8) {
        match &mut self.busy {
            None => self.type_byte(byte),
            Some(Busy::Wedged) => {}
            Some(Busy::Hung | Busy::Sleeping(_)) => {
                if byte == 3 {
                    self.busy = None;
                    self.queued.clear();
                    self.out.push_str("^C\r\n");
                    self.show_prompt();
                } else {
                    self.queued.push_back(byte);
                }
            }
            Some(Busy::Paging(_)) => self.page(byte),
            Some(Busy::Password(typed)) => match byte {
                b'\r' | b'\n' => {
                    let typed = std::mem::take(typed);
                    self.busy = None;
                    self.after_cr = byte == b'\r';
                    self.out.push_str("\r\n");
                    if typed == self.state.device.secret {
                        self.state.enables.fetch_add(1, Ordering::SeqCst);
                        self.mode = Mode::Privileged;
                    } else {
                        self.out.push_str("% Access denied\r\n\r\n");
                    }
                    self.show_prompt();
                }
                3 => {
                    self.busy = None;
                    self.out.push_str("\r\n");
                    self.show_prompt();
                }
                byte => typed.push(char::from(byte)),
            },
        }
    }

    /// Runs input that arrived while a command was busy, now that the prompt is back.
    fn run_queued(&mut self) {
        while self.busy.is_none()
            && let Some(byte) = self.queued.pop_front()
        {
            self.type_byte(byte);
        }
    }

    /// A byte typed at the prompt: echoed, and a line ending runs the line.
    fn type_byte(&mut self, byte: u8) {
        let after_cr = std::mem::replace(&mut self.after_cr, false);
        match byte {
            b'\n' if after_cr => {}
            b'\r' | b'\n' => {
                self.after_cr = byte == b'\r';
                self.out.push_str("\r\n");
                let line = std::mem::take(&mut self.line);
                self.execute(line.trim());
                if self.busy.is_none() && !self.logged_out {
                    self.show_prompt();
                }
            }
            3 => {
                self.line.clear();
                self.out.push_str("^C\r\n");
                if matches!(self.mode, Mode::Config(_)) && self.platform.cisco_like() {
                    self.mode = Mode::Privileged;
                }
                self.show_prompt();
            }
            0x7f | 0x08 => {
                if self.line.pop().is_some() {
                    self.out.push_str("\u{8} \u{8}");
                }
            }
            byte => {
                let c = char::from(byte);
                self.line.push(c);
                self.out.push(c);
            }
        }
    }

    /// Prints `lines`, through the pager while paging is on.
    fn print(&mut self, lines: Vec<String>) {
        let mut lines: VecDeque<String> = lines.into();
        if self.paging && lines.len() > PAGE_LINES {
            self.show_page(&mut lines, PAGE_LINES);
            self.pager_prompt();
            self.busy = Some(Busy::Paging(lines));
        } else {
            for line in lines {
                self.out.push_str(&line);
                self.out.push_str("\r\n");
            }
        }
    }

    fn show_page(&mut self, lines: &mut VecDeque<String>, count: usize) {
        for line in lines.drain(..count.min(lines.len())) {
            self.out.push_str(&line);
            self.out.push_str("\r\n");
        }
    }

    fn pager_prompt(&mut self) {
        self.out.push_str(match self.platform {
            CliPlatform::JuniperJunos => "---(more)---",
            _ => " --More-- ",
        });
    }

    fn erase_pager(&mut self) {
        match self.platform {
            CliPlatform::JuniperJunos => self.out.push_str("\r                    \r"),
            _ => self.out.push_str(
                "\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}          \
                 \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}",
            ),
        }
    }

    fn page(&mut self, byte: u8) {
        let Some(Busy::Paging(mut rest)) = self.busy.take() else {
            return;
        };
        self.erase_pager();
        let count = match byte {
            b' ' => PAGE_LINES,
            b'\r' | b'\n' => 1,
            // `q`, Ctrl-C and anything else end the output.
            _ => 0,
        };
        if count == 0 {
            rest.clear();
        }
        self.show_page(&mut rest, count);
        if rest.is_empty() {
            self.show_prompt();
        } else {
            self.pager_prompt();
            self.busy = Some(Busy::Paging(rest));
        }
    }

    fn invalid(&mut self, line: &str) {
        let marker = format!("{}^", " ".repeat(self.prompt().len()));
        let lines: Vec<String> = match self.platform {
            CliPlatform::CiscoIos | CliPlatform::CiscoXr => vec![
                marker,
                "% Invalid input detected at '^' marker.".into(),
                String::new(),
            ],
            CliPlatform::CiscoNxos => vec![
                marker,
                "% Invalid command at '^' marker.".into(),
                String::new(),
            ],
            CliPlatform::AristaEos => vec!["% Invalid input".into()],
            CliPlatform::JuniperJunos => {
                let error = if matches!(self.mode, Mode::Config(_)) {
                    "syntax error."
                } else {
                    "syntax error, expecting <command>."
                };
                vec![marker, error.into()]
            }
            CliPlatform::LinuxShell => {
                let name = line.split_whitespace().next().unwrap_or_default();
                vec![format!("bash: {name}: command not found")]
            }
        };
        self.print(lines);
    }

    fn execute(&mut self, line: &str) {
        if line.is_empty() {
            return;
        }
        self.state.commands.fetch_add(1, Ordering::SeqCst);
        if matches!(self.mode, Mode::Config(_)) {
            return self.configure(line);
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let privileged = self.mode != Mode::User;
        match (self.platform, words.as_slice()) {
            (CliPlatform::LinuxShell, _) => self.shell(line),
            (_, ["terminal", "length", "0"]) if self.platform.cisco_like() => {
                self.paging = false;
                if self.platform == CliPlatform::AristaEos {
                    self.print(vec!["Pagination disabled.".into()]);
                }
            }
            (_, ["terminal", "width", _]) if self.platform.cisco_like() => {
                if self.platform == CliPlatform::AristaEos {
                    self.print(vec!["Width set to 511 columns.".into()]);
                }
            }
            (CliPlatform::JuniperJunos, ["set", "cli", "screen-length", "0"]) => {
                self.paging = false;
                self.print(vec!["Screen length set to 0".into()]);
            }
            (CliPlatform::JuniperJunos, ["set", "cli", "screen-width", width]) => {
                let text = format!("Screen width set to {width}");
                self.print(vec![text]);
            }
            (_, ["show", "version"]) => {
                let lines = vec![
                    format!(
                        "Test {} Software, Version 1.0.0 (connection-supervisor SshTestServer)",
                        self.platform.profile_name()
                    ),
                    format!("{} uptime is 0 minutes", self.hostname),
                    "Model number: TEST-CLI-1".into(),
                ];
                self.print(lines);
            }
            (_, ["show", "privilege"]) => {
                let level = if privileged { 15 } else { 1 };
                self.print(vec![format!("Current privilege level is {level}")]);
            }
            (_, ["show", "running-config"] | ["show", "configuration"]) => {
                let lines = self.running_config();
                self.print(lines);
            }
            (_, ["echo", ..]) => {
                let text = line.strip_prefix("echo").unwrap_or_default().trim();
                self.print(vec![text.to_owned()]);
            }
            (_, ["sleep", ms]) => match ms.parse::<u64>() {
                Ok(ms) => {
                    let until = Instant::now() + Duration::from_millis(ms);
                    self.busy = Some(Busy::Sleeping(until));
                }
                Err(_) => self.invalid(line),
            },
            (_, ["hang"]) => self.busy = Some(Busy::Hung),
            (_, ["wedge"]) => self.busy = Some(Busy::Wedged),
            (platform, ["enable"]) if platform.has_enable() => {
                if privileged {
                    return;
                }
                self.out.push_str("Password: ");
                self.busy = Some(Busy::Password(String::new()));
            }
            (platform, ["disable"]) if platform.has_enable() => self.mode = Mode::User,
            (platform, ["configure", "terminal"]) if platform.cisco_like() && privileged => {
                if platform == CliPlatform::CiscoIos {
                    self.print(vec![
                        "Enter configuration commands, one per line.  End with CNTL/Z.".into(),
                    ]);
                }
                self.mode = Mode::Config(None);
            }
            (CliPlatform::JuniperJunos, ["configure"]) => {
                self.print(vec!["Entering configuration mode".into()]);
                self.mode = Mode::Config(None);
            }
            (_, ["exit" | "logout"]) => self.logged_out = true,
            _ => self.invalid(line),
        }
    }

    /// A line of a Linux shell: `PS1=` sets the prompt, `echo` prints, `exit` logs out.
    fn shell(&mut self, line: &str) {
        if let Some((_, rest)) = line.split_once("PS1='")
            && let Some((ps1, _)) = rest.split_once('\'')
        {
            self.ps1 = Some(ps1.replace("\\$", "$"));
            return;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["echo", ..] => {
                let text = line.strip_prefix("echo").unwrap_or_default().trim();
                self.print(vec![text.to_owned()]);
            }
            ["exit"] => self.logged_out = true,
            ["hang"] => self.busy = Some(Busy::Hung),
            ["wedge"] => self.busy = Some(Busy::Wedged),
            [first, ..] if first.contains('=') || *first == "unset" || *first == "export" => {}
            _ => self.invalid(line),
        }
    }

    fn running_config(&self) -> Vec<String> {
        let mut lines = vec![
            "! test device configuration".to_owned(),
            format!("hostname {}", self.hostname),
        ];
        for n in 0..40 {
            lines.push(format!("interface Ethernet{n}"));
            lines.push(format!(" description port {n}"));
        }
        lines.extend(self.state.running_config());
        lines.push("end".to_owned());
        lines
    }

    /// A line in configuration mode.
    fn configure(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let junos = self.platform == CliPlatform::JuniperJunos;
        match words.as_slice() {
            ["end"] if !junos => self.leave_config(),
            ["exit"] if !junos => match &self.mode {
                Mode::Config(Some(_)) => self.mode = Mode::Config(None),
                _ => self.leave_config(),
            },
            ["exit", "configuration-mode"] | ["exit"] if junos => {
                self.print(vec!["Exiting configuration mode".into()]);
                self.leave_config();
            }
            ["commit", ..] if self.platform.has_candidate() => self.commit(),
            ["abort"] if self.platform == CliPlatform::CiscoXr => {
                self.candidate.clear();
                self.mode = Mode::Privileged;
            }
            ["rollback", "0"] if junos => {
                self.candidate.clear();
                self.print(vec!["load complete".into()]);
            }
            ["set" | "delete", _, ..] if junos => self.candidate.push(line.to_owned()),
            ["interface", _, ..] if !junos => {
                self.accept(line.to_owned());
                self.mode = Mode::Config(Some("if".into()));
            }
            [
                "description" | "ip" | "ipv6" | "no" | "hostname" | "logging" | "ntp"
                | "snmp-server" | "username" | "router" | "vlan" | "name" | "shutdown"
                | "switchport" | "spanning-tree" | "service" | "banner",
                ..,
            ] if !junos => {
                let indent = if matches!(self.mode, Mode::Config(Some(_))) {
                    " "
                } else {
                    ""
                };
                self.accept(format!("{indent}{line}"));
            }
            _ => self.invalid(line),
        }
    }

    fn accept(&mut self, line: String) {
        if self.platform.has_candidate() {
            self.candidate.push(line);
        } else {
            self.state.apply([line]);
        }
    }

    fn commit(&mut self) {
        let junos = self.platform == CliPlatform::JuniperJunos;
        if self
            .candidate
            .iter()
            .any(|line| line.contains("commit-fail"))
        {
            let lines = if junos {
                vec![
                    "error: configuration check-out failed: (statements constraint check failed)"
                        .into(),
                ]
            } else {
                vec![
                    "% Failed to commit one or more configuration items during a pseudo-atomic \
                     operation. All changes made have been reverted."
                        .into(),
                ]
            };
            self.print(lines);
            return;
        }
        self.state.apply(std::mem::take(&mut self.candidate));
        if junos {
            self.print(vec!["commit complete".into()]);
        }
    }

    fn leave_config(&mut self) {
        // Uncommitted lines are thrown away (the real devices ask first).
        self.candidate.clear();
        self.mode = Mode::Privileged;
    }
}
