//! Platform profiles as data: what a device's CLI looks like (prompts, pager, error markers)
//! and how to drive it (paging off, enable, configuration mode), and the registry that maps a
//! params' `platform` to one. The built-in profiles are `platforms.toml`, embedded at build
//! time; users add or override entries with [`Platforms::insert`] or [`Platforms::load_file`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// The built-in profiles, in the format [`Platforms::from_toml_str`] reads.
const BUILTIN: &str = include_str!("platforms.toml");

/// How commands reach a platform's devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SessionKind {
    /// One PTY shell per connection: commands run in it one at a time, their end found by the
    /// prompt. What network devices need.
    #[default]
    Shell,
    /// A channel per command, several at once, as without a platform.
    Exec,
}

/// How a platform enters privileged mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnableSettings {
    /// The command that asks for privileged mode (`enable`).
    pub command: String,
    /// Regex matching the device's password prompt on the last line (`(?i)password:\s*$`).
    pub password_prompt: String,
}

/// How a platform enters, commits and leaves configuration mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSettings {
    /// The command that enters configuration mode (`configure terminal`, `configure`).
    pub enter: String,
    /// The command that leaves it (`end`, `exit configuration-mode`).
    pub exit: String,
    /// The command that applies the lines, for platforms with a candidate configuration
    /// (IOS-XR, Junos: `commit`); `None` where each line applies at once.
    #[serde(default)]
    pub commit: Option<String>,
    /// Regex the commit's output must contain for the commit to count as done (Junos:
    /// `commit complete`); without it, only the error patterns judge the commit.
    #[serde(default)]
    pub commit_ok: Option<String>,
    /// What to send when a line or the commit fails, instead of [`exit`](Self::exit): throw
    /// the candidate away and leave (IOS-XR: `abort`; Junos: `rollback 0`, then
    /// `exit configuration-mode`). Empty: `exit`.
    #[serde(default)]
    pub discard: Vec<String>,
}

fn default_pager_answer() -> String {
    " ".to_owned()
}

fn default_interrupt() -> String {
    "\u{3}".to_owned()
}

fn default_newline() -> String {
    "\n".to_owned()
}

fn default_identity_chars() -> usize {
    16
}

fn default_read_timeout() -> f64 {
    10.0
}

fn default_true() -> bool {
    true
}

/// One platform's CLI, as data. Every regex is Rust `regex` syntax; the ones about a prompt
/// are matched against the last line received, with terminal escape sequences removed and
/// backspaces applied.
///
/// `Debug`, `Serialize` and `Deserialize` show and read exactly these fields; the TOML form
/// is one table per platform (see the crate's `src/ssh/cli/platforms.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PlatformProfile {
    /// Other names that select this profile (Nornir/NAPALM's `ios`, `junos`, ...).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Shell (the default) or exec channels.
    #[serde(default)]
    pub session: SessionKind,
    /// The prompt: a regex for the last line when the device waits for a command, in any
    /// mode. A named group `base` captures the device's own name, which must stay the same
    /// while the mode changes (`R1>`, `R1#`, `R1(config)#`); without it, any match is a prompt.
    pub prompt: String,
    /// The first prompt after login, when it differs from [`prompt`](Self::prompt) until the
    /// [`setup`](Self::setup) commands ran (a Linux shell whose prompt they set). Defaults to
    /// `prompt`.
    #[serde(default)]
    pub login_prompt: Option<String>,
    /// How many characters of the learned `base` identify the device: IOS cuts its name
    /// short in configuration mode. Defaults to 16, as netmiko does.
    #[serde(default = "default_identity_chars")]
    pub identity_chars: usize,
    /// Regex telling a privileged prompt (`#\s*$`): [`enable`](Self::enable) is run only from
    /// a prompt that does not match it.
    #[serde(default)]
    pub privileged_prompt: Option<String>,
    /// Regex telling a configuration-mode prompt (`\)#\s*$`), checked after entering it.
    #[serde(default)]
    pub config_prompt: Option<String>,
    /// Commands run once after login, before the paging-off commands (a Linux shell's prompt).
    #[serde(default)]
    pub setup: Vec<String>,
    /// Commands that turn paging off (`terminal length 0`). One that fails is logged and the
    /// pager is answered instead.
    #[serde(default)]
    pub paging_off: Vec<String>,
    /// Regex for a pager waiting at the end of the last line (`--More--`), answered with
    /// [`pager_answer`](Self::pager_answer) and removed from the output.
    #[serde(default)]
    pub pager: Option<String>,
    /// What answers the pager. Defaults to a space.
    #[serde(default = "default_pager_answer")]
    pub pager_answer: String,
    /// Regexes for lines that mean a command failed (`^\s*% Invalid input`); matched line by
    /// line against the output, so `^` is the start of a line.
    #[serde(default)]
    pub error_patterns: Vec<String>,
    /// Regexes for context lines the device prints just above its prompt (Junos' `[edit]`),
    /// removed from the end of the output.
    #[serde(default)]
    pub context_lines: Vec<String>,
    /// How to enter privileged mode, when the params give a `secret`.
    #[serde(default)]
    pub enable: Option<EnableSettings>,
    /// How to enter, commit and leave configuration mode.
    #[serde(default)]
    pub config: Option<ConfigSettings>,
    /// Sent to interrupt a command whose prompt does not come back. Defaults to Ctrl-C.
    #[serde(default = "default_interrupt")]
    pub interrupt: String,
    /// Sent after each command. Defaults to `\n`.
    #[serde(default = "default_newline")]
    pub newline: String,
    /// Whether the device echoes what it is sent (a PTY does); the output starts after the
    /// echo, so late output of an earlier command is never taken for this one's. Default true.
    #[serde(default = "default_true")]
    pub echo: bool,
    /// Seconds a command may take until its prompt comes back, when the params' extras give
    /// no `read_timeout`. Defaults to 10, as netmiko's `read_timeout`.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: f64,
}

impl PlatformProfile {
    /// A shell profile with this prompt regex and every other field at its default.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            aliases: Vec::new(),
            session: SessionKind::Shell,
            prompt: prompt.into(),
            login_prompt: None,
            identity_chars: default_identity_chars(),
            privileged_prompt: None,
            config_prompt: None,
            setup: Vec::new(),
            paging_off: Vec::new(),
            pager: None,
            pager_answer: default_pager_answer(),
            error_patterns: Vec::new(),
            context_lines: Vec::new(),
            enable: None,
            config: None,
            interrupt: default_interrupt(),
            newline: default_newline(),
            echo: true,
            read_timeout: default_read_timeout(),
        }
    }
}

/// A profile that could not be used: a regex that does not compile, a file that cannot be
/// read or parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// A regex of a profile does not compile.
    #[error("platform {platform}: {field} is not a valid regex: {source}")]
    Regex {
        /// The platform's name.
        platform: String,
        /// The field holding the regex.
        field: &'static str,
        /// What the regex engine said.
        #[source]
        source: regex::Error,
    },
    /// A value that cannot be used (a negative timeout, an empty command).
    #[error("platform {platform}: {message}")]
    Invalid {
        /// The platform's name.
        platform: String,
        /// What is wrong.
        message: String,
    },
    /// The profile file is not valid TOML for profiles.
    #[error("platform profiles {origin}: {source}")]
    Parse {
        /// The file, or `text` for a string.
        origin: String,
        /// What the parser said.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The profile file cannot be read.
    #[error("platform profiles {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// A profile with its regexes compiled, as sessions use it.
#[derive(Debug)]
pub(crate) struct Platform {
    pub(crate) name: String,
    pub(crate) profile: PlatformProfile,
    pub(crate) prompt: Regex,
    pub(crate) login_prompt: Option<Regex>,
    pub(crate) privileged: Option<Regex>,
    pub(crate) config_prompt: Option<Regex>,
    pub(crate) pager: Option<Regex>,
    pub(crate) errors: Vec<Regex>,
    pub(crate) context: Vec<Regex>,
    pub(crate) password_prompt: Option<Regex>,
    pub(crate) commit_ok: Option<Regex>,
}

impl Platform {
    fn compile(name: &str, profile: PlatformProfile) -> Result<Self, ProfileError> {
        let regex = |field: &'static str, text: &str| {
            Regex::new(text).map_err(|source| ProfileError::Regex {
                platform: name.to_owned(),
                field,
                source,
            })
        };
        let optional = |field: &'static str, text: &Option<String>| {
            text.as_deref().map(|text| regex(field, text)).transpose()
        };
        let invalid = |message: &str| ProfileError::Invalid {
            platform: name.to_owned(),
            message: message.to_owned(),
        };
        if !(profile.read_timeout.is_finite() && profile.read_timeout > 0.0) {
            return Err(invalid("read_timeout must be a positive number of seconds"));
        }
        if profile.newline.is_empty() {
            return Err(invalid("newline must not be empty"));
        }
        if let Some(config) = &profile.config
            && (config.enter.trim().is_empty() || config.exit.trim().is_empty())
        {
            return Err(invalid("config.enter and config.exit must be commands"));
        }
        Ok(Self {
            name: name.to_owned(),
            prompt: regex("prompt", &profile.prompt)?,
            login_prompt: optional("login_prompt", &profile.login_prompt)?,
            privileged: optional("privileged_prompt", &profile.privileged_prompt)?,
            config_prompt: optional("config_prompt", &profile.config_prompt)?,
            pager: optional("pager", &profile.pager)?,
            errors: profile
                .error_patterns
                .iter()
                .map(|text| regex("error_patterns", text))
                .collect::<Result<_, _>>()?,
            context: profile
                .context_lines
                .iter()
                .map(|text| regex("context_lines", text))
                .collect::<Result<_, _>>()?,
            password_prompt: profile
                .enable
                .as_ref()
                .map(|enable| regex("enable.password_prompt", &enable.password_prompt))
                .transpose()?,
            commit_ok: profile
                .config
                .as_ref()
                .and_then(|config| config.commit_ok.as_deref())
                .map(|text| regex("config.commit_ok", text))
                .transpose()?,
            profile,
        })
    }

    /// The default time a command may take.
    pub(crate) fn read_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.profile.read_timeout)
    }
}

/// The platform profiles a connection chooses from by its params' `platform`: the built-in
/// ones ([`builtin`](Self::builtin), the default) plus the user's own.
///
/// A `platform` that names no profile (nor an alias) keeps the plain exec behaviour.
///
/// ```
/// use connection_supervisor::ssh::{PlatformProfile, Platforms};
///
/// let mut platforms = Platforms::builtin();
/// let mut profile = PlatformProfile::new(r"^(?P<base>[\w.-]+)(\(conf[^)]*\))?[>#]\s*$");
/// profile.paging_off = vec!["terminal pager 0".into()];
/// profile.error_patterns = vec![r"^\s*ERROR:".into()];
/// platforms.insert("cisco_asa", profile)?;
/// assert!(platforms.get("cisco_asa").is_some());
/// assert!(platforms.get("ios").is_some()); // an alias of cisco_ios
/// # Ok::<(), connection_supervisor::ssh::ProfileError>(())
/// ```
#[derive(Clone)]
pub struct Platforms {
    by_name: BTreeMap<String, Entry>,
    aliases: BTreeMap<String, String>,
}

/// A profile and its compiled form, made on first use for the built-ins (building every
/// regex of every platform takes a while, seconds in a debug build, and most programs use one
/// or two platforms) and at once for the user's (so that a bad regex fails `insert`).
#[derive(Clone)]
struct Entry {
    name: String,
    profile: Arc<PlatformProfile>,
    compiled: Arc<OnceLock<Option<Arc<Platform>>>>,
}

impl Entry {
    fn compiled(&self) -> Option<Arc<Platform>> {
        self.compiled
            .get_or_init(|| {
                match Platform::compile(&self.name, PlatformProfile::clone(&self.profile)) {
                    Ok(platform) => Some(Arc::new(platform)),
                    Err(error) => {
                        tracing::error!(%error, "platform profile unusable; exec channels instead");
                        None
                    }
                }
            })
            .clone()
    }
}

impl Platforms {
    /// The profiles shipped with the crate: `cisco_ios`, `cisco_nxos`, `cisco_xr`,
    /// `arista_eos`, `juniper_junos`, `linux` (exec channels) and `linux_shell` (a PTY shell).
    pub fn builtin() -> Self {
        // Parsed once per process and shared, compiled per platform on first use: every
        // `SshOptions::default()` starts from these.
        static BUILTIN_PLATFORMS: OnceLock<Platforms> = OnceLock::new();
        BUILTIN_PLATFORMS
            .get_or_init(|| {
                let mut platforms = Self::empty();
                // The embedded file is checked by a unit test: a broken entry fails the
                // crate's tests, never a user's program, which then gets no built-ins.
                match toml::from_str::<BTreeMap<String, PlatformProfile>>(BUILTIN) {
                    Ok(profiles) => {
                        for (name, profile) in profiles {
                            platforms.add(name, profile, None);
                        }
                    }
                    Err(error) => tracing::error!(%error, "built-in platform profiles"),
                }
                platforms
            })
            .clone()
    }

    /// No profiles at all: every connection uses exec channels.
    pub fn empty() -> Self {
        Self {
            by_name: BTreeMap::new(),
            aliases: BTreeMap::new(),
        }
    }

    /// Adds `profile` under `name` (and its aliases), replacing any profile of that name;
    /// fails if one of its regexes does not compile.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        profile: PlatformProfile,
    ) -> Result<&mut Self, ProfileError> {
        let name = name.into();
        let platform = Platform::compile(&name, profile.clone())?;
        self.add(name, profile, Some(Arc::new(platform)));
        Ok(self)
    }

    fn add(&mut self, name: String, profile: PlatformProfile, compiled: Option<Arc<Platform>>) {
        for alias in &profile.aliases {
            self.aliases.insert(alias.clone(), name.clone());
        }
        // A name of its own wins over an alias of another profile.
        self.aliases.remove(&name);
        let cell = OnceLock::new();
        if let Some(compiled) = compiled {
            let _ = cell.set(Some(compiled));
        }
        let entry = Entry {
            name: name.clone(),
            profile: Arc::new(profile),
            compiled: Arc::new(cell),
        };
        self.by_name.insert(name, entry);
    }

    /// Adds every profile of a TOML text (one table per platform, as `platforms.toml`),
    /// replacing those of the same name. Nothing is added if one of them is invalid.
    pub fn from_toml_str(mut self, text: &str) -> Result<Self, ProfileError> {
        self.load_str(text, "text")?;
        Ok(self)
    }

    /// [`from_toml_str`](Self::from_toml_str) with a file's content.
    pub fn load_file(self, path: impl AsRef<Path>) -> Result<Self, ProfileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut platforms = self;
        platforms.load_str(&text, &path.display().to_string())?;
        Ok(platforms)
    }

    fn load_str(&mut self, text: &str, origin: &str) -> Result<(), ProfileError> {
        let profiles: BTreeMap<String, PlatformProfile> =
            toml::from_str(text).map_err(|source| ProfileError::Parse {
                origin: origin.to_owned(),
                source: Box::new(source),
            })?;
        let mut staged = self.clone();
        for (name, profile) in profiles {
            staged.insert(name, profile)?;
        }
        *self = staged;
        Ok(())
    }

    /// The profile for a platform name or alias.
    pub fn get(&self, platform: &str) -> Option<&PlatformProfile> {
        self.entry(platform).map(|entry| &*entry.profile)
    }

    /// The names of the profiles, sorted (aliases not included).
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    /// The compiled profile for a platform name or alias.
    pub(crate) fn resolve(&self, platform: &str) -> Option<Arc<Platform>> {
        self.entry(platform).and_then(Entry::compiled)
    }

    fn entry(&self, platform: &str) -> Option<&Entry> {
        self.by_name.get(platform).or_else(|| {
            self.aliases
                .get(platform)
                .and_then(|name| self.by_name.get(name))
        })
    }
}

impl Default for Platforms {
    /// [`Platforms::builtin`].
    fn default() -> Self {
        Self::builtin()
    }
}

impl PartialEq for Platforms {
    fn eq(&self, other: &Self) -> bool {
        self.aliases == other.aliases
            && self.by_name.len() == other.by_name.len()
            && self
                .by_name
                .iter()
                .zip(&other.by_name)
                .all(|((a, pa), (b, pb))| a == b && pa.profile == pb.profile)
    }
}

impl fmt::Debug for Platforms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.by_name.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_profile_loads() {
        let mut platforms = Platforms::empty();
        platforms.load_str(BUILTIN, "built-in").unwrap();
        let names = platforms.names();
        for name in [
            "arista_eos",
            "cisco_ios",
            "cisco_nxos",
            "cisco_xr",
            "juniper_junos",
            "linux",
            "linux_shell",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        assert_eq!(platforms, Platforms::builtin());
        assert_eq!(
            platforms.get("junos"),
            platforms.get("juniper_junos"),
            "alias"
        );
        assert_eq!(platforms.get("linux").unwrap().session, SessionKind::Exec);
    }

    #[test]
    fn builtin_prompts_match_what_devices_print() {
        let platforms = Platforms::builtin();
        let cases = [
            ("cisco_ios", "R1>", Some("R1")),
            ("cisco_ios", "R1#", Some("R1")),
            ("cisco_ios", "R1(config-if)#", Some("R1")),
            ("cisco_ios", "show version", None),
            ("cisco_ios", "Password:", None),
            (
                "cisco_xr",
                "RP/0/RSP0/CPU0:xr1(config)#",
                Some("RP/0/RSP0/CPU0:xr1"),
            ),
            ("juniper_junos", "admin@vmx1> ", Some("admin@vmx1")),
            ("juniper_junos", "admin@vmx1# ", Some("admin@vmx1")),
            ("juniper_junos", "[edit]", None),
            ("linux_shell", "cs-shell$ ", Some("cs-shell")),
        ];
        for (name, line, base) in cases {
            let platform = platforms.resolve(name).unwrap();
            let found = platform
                .prompt
                .captures(line)
                .and_then(|c| c.name("base"))
                .map(|m| m.as_str());
            assert_eq!(found, base, "{name}: {line:?}");
        }
    }

    #[test]
    fn user_profiles_are_checked_and_override_builtins() {
        let bad = PlatformProfile::new("(unclosed");
        let error = Platforms::builtin().insert("mine", bad).err().unwrap();
        assert!(error.to_string().contains("mine: prompt"), "{error}");

        let text = r#"
            [cisco_ios]
            prompt = '^(?P<base>\w+)[>#]$'
            paging_off = ["terminal length 0"]
            [huawei_vrp]
            aliases = ["huawei"]
            prompt = '^[<\[](?P<base>[\w.-]+)[>\]]$'
            paging_off = ["screen-length 0 temporary"]
        "#;
        let platforms = Platforms::builtin().from_toml_str(text).unwrap();
        assert_eq!(platforms.get("cisco_ios").unwrap().paging_off.len(), 1);
        assert!(platforms.get("huawei").is_some());

        let broken = "[x]\nprompt = '('\n[y]\nprompt = 'ok'\n";
        assert!(Platforms::empty().from_toml_str(broken).is_err());
        let unknown_field = "[x]\nprompt = 'ok'\npromt = 'typo'\n";
        assert!(Platforms::empty().from_toml_str(unknown_field).is_err());
    }
}
