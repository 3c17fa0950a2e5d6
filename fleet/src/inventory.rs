//! The inventory file of `--inventory`: real hosts, their credentials and the host-key policy.
//!
//! Every per-host setting reaches the SSH plugin as the params' fields or as `extras` under the
//! plugin's names: `private_key_path`, `private_key_passphrase`, `agent`, `algorithms`, `jump`,
//! `connect_timeout` and `secret`; `platform` becomes the params' `platform`. A value that cannot be used is refused here, with one line naming the
//! file, the entry and the key, before anything connects.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use connection_supervisor::ssh::cli::SECRET_EXTRA;
use connection_supervisor::ssh::{
    AlgorithmPolicy, HostKeyPolicy, PLUGIN_NAME, Platforms, SshConfigFile,
};
use connection_supervisor::{ConnectionKey, Extras, ResolvedConnectionParams};
use serde::Deserialize;
use serde_json::Value;

/// The longest connect timeout accepted: a year.
const MAX_CONNECT_TIMEOUT_S: f64 = 86_400.0 * 365.0;

/// The keys an `algorithms` table may have.
const ALGORITHM_KINDS: [&str; 4] = ["kex", "ciphers", "macs", "host_key_algorithms"];

/// The inventory file: an optional `[defaults]` table and one `[[hosts]]` table per host.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Inventory {
    #[serde(default)]
    defaults: HostDefaults,
    hosts: Vec<InventoryHost>,
}

/// What every host gets unless it says otherwise: the [`Settings`] fields, and what applies
/// to the whole inventory.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct HostDefaults {
    port: Option<u16>,
    user: Option<String>,
    password: Option<String>,
    key: Option<PathBuf>,
    passphrase: Option<String>,
    agent: Option<bool>,
    algorithms: Option<toml::Value>,
    jump: Option<String>,
    connect_timeout: Option<toml::Value>,
    platform: Option<String>,
    secret: Option<String>,
    /// `strict` (the default), `accept-new` or `accept-any`.
    host_key_policy: Option<String>,
    /// known_hosts file for `strict` and `accept-new`; defaults to ~/.ssh/known_hosts.
    known_hosts: Option<PathBuf>,
    /// OpenSSH client config to apply; defaults to ~/.ssh/config where it exists, `"none"`
    /// reads none (as `ssh -F none`).
    ssh_config: Option<String>,
}

/// One host: its name and address, and the [`Settings`] fields.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct InventoryHost {
    /// Name shown in the report and used as the connection key; defaults to `host`.
    name: Option<String>,
    host: String,
    port: Option<u16>,
    user: Option<String>,
    password: Option<String>,
    key: Option<PathBuf>,
    passphrase: Option<String>,
    agent: Option<bool>,
    algorithms: Option<toml::Value>,
    jump: Option<String>,
    connect_timeout: Option<toml::Value>,
    platform: Option<String>,
    secret: Option<String>,
    /// Refused with a clear line: one ssh config serves the whole inventory.
    ssh_config: Option<toml::Value>,
}

/// The settings a host and `[defaults]` share. Both tables list the fields themselves: serde's
/// `flatten` does not work with `deny_unknown_fields`, which turns a misspelt key into an error.
#[derive(Debug, Default, Clone)]
struct Settings {
    port: Option<u16>,
    user: Option<String>,
    password: Option<String>,
    key: Option<PathBuf>,
    /// Passphrase of an encrypted `key`.
    passphrase: Option<String>,
    /// Use the keys of the ssh-agent at `SSH_AUTH_SOCK`.
    agent: Option<bool>,
    /// `"modern"`, `"legacy"` or a table of lists (`kex`, `ciphers`, `macs`,
    /// `host_key_algorithms`), each an OpenSSH-syntax string or an array of names.
    algorithms: Option<toml::Value>,
    /// The name of another entry to reach this one through; `"none"`: directly, whatever
    /// [defaults] says.
    jump: Option<String>,
    /// Seconds for TCP connect, banner and key exchange together.
    connect_timeout: Option<toml::Value>,
    /// A platform profile name or alias of the SSH plugin (`cisco_ios`, `junos`, ...): the
    /// params' `platform`.
    platform: Option<String>,
    /// The enable password of a CLI platform: the extras' `secret`.
    secret: Option<String>,
}

impl From<&HostDefaults> for Settings {
    fn from(d: &HostDefaults) -> Self {
        Self {
            port: d.port,
            user: d.user.clone(),
            password: d.password.clone(),
            key: d.key.clone(),
            passphrase: d.passphrase.clone(),
            agent: d.agent,
            algorithms: d.algorithms.clone(),
            jump: d.jump.clone(),
            connect_timeout: d.connect_timeout.clone(),
            platform: d.platform.clone(),
            secret: d.secret.clone(),
        }
    }
}

impl From<&InventoryHost> for Settings {
    fn from(h: &InventoryHost) -> Self {
        Self {
            port: h.port,
            user: h.user.clone(),
            password: h.password.clone(),
            key: h.key.clone(),
            passphrase: h.passphrase.clone(),
            agent: h.agent,
            algorithms: h.algorithms.clone(),
            jump: h.jump.clone(),
            connect_timeout: h.connect_timeout.clone(),
            platform: h.platform.clone(),
            secret: h.secret.clone(),
        }
    }
}

impl Settings {
    /// `self`, with what it leaves unset taken from `defaults`.
    fn or(self, defaults: &Self) -> Self {
        let d = defaults.clone();
        Self {
            port: self.port.or(d.port),
            user: self.user.or(d.user),
            password: self.password.or(d.password),
            key: self.key.or(d.key),
            passphrase: self.passphrase.or(d.passphrase),
            agent: self.agent.or(d.agent),
            algorithms: self.algorithms.or(d.algorithms),
            jump: match self.jump {
                Some(none) if none == "none" => None,
                jump => jump.or(d.jump),
            },
            connect_timeout: self.connect_timeout.or(d.connect_timeout),
            platform: self.platform.or(d.platform),
            secret: self.secret.or(d.secret),
        }
    }
}

/// What `--inventory` runs on.
pub(crate) struct Loaded {
    pub(crate) targets: Vec<Target>,
    pub(crate) host_keys: HostKeyPolicy,
    pub(crate) ssh_config: Option<SshConfigFile>,
}

/// One line saying what is wrong with the inventory file.
pub(crate) fn load_inventory(path: &Path) -> Result<Loaded, String> {
    let where_ = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{where_}: {e}"))?;
    let inventory: Inventory = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let line = text[..span.start].matches('\n').count() + 1;
                // The key the line sets, never its value (it may be a password).
                let key = text
                    .lines()
                    .nth(line - 1)
                    .and_then(|line| line.split_once('='))
                    .map(|(key, _)| key.trim())
                    .filter(|key| !key.is_empty() && !key.starts_with('['))
                    .map(|key| format!(", `{key}`"))
                    .unwrap_or_default();
                format!(" (line {line}{key})")
            })
            .unwrap_or_default();
        format!("{where_}{at}: {}", e.message().trim())
    })?;
    if inventory.hosts.is_empty() {
        return Err(format!("{where_}: no [[hosts]] entries"));
    }
    let defaults = inventory.defaults;
    let policy = match (
        defaults.host_key_policy.as_deref().unwrap_or("strict"),
        defaults.known_hosts.clone(),
    ) {
        ("strict", Some(file)) => HostKeyPolicy::Strict(file),
        ("strict", None) => HostKeyPolicy::default(),
        ("accept-new", Some(file)) => HostKeyPolicy::AcceptNew(file),
        ("accept-new", None) => match HostKeyPolicy::default() {
            HostKeyPolicy::Strict(file) => HostKeyPolicy::AcceptNew(file),
            other => other,
        },
        ("accept-any", _) => HostKeyPolicy::AcceptAny,
        (other, _) => {
            return Err(format!(
                "{where_}: host_key_policy must be \"strict\", \"accept-new\" or \"accept-any\", not {other:?}"
            ));
        }
    };
    let in_defaults = format!("{where_}: [defaults]");
    let default_settings = Settings::from(&defaults);
    check_settings(&default_settings, &in_defaults)?;
    let ssh_config = match defaults.ssh_config.as_deref() {
        None => Some(SshConfigFile::User),
        Some(none) if none.eq_ignore_ascii_case("none") => None,
        Some("") => {
            return Err(format!(
                "{in_defaults}: `ssh_config` is empty (\"none\" reads none)"
            ));
        }
        Some(file) => Some(SshConfigFile::Path(file.into())),
    };
    let config = match &ssh_config {
        Some(file) => file
            .load()
            .map_err(|e| format!("{in_defaults}: `ssh_config`: {e}"))?,
        None => None,
    };

    let mut seen = HashMap::new();
    let mut entries = Vec::with_capacity(inventory.hosts.len());
    for (index, host) in inventory.hosts.into_iter().enumerate() {
        let name = host.name.clone().unwrap_or_else(|| host.host.clone());
        let entry = format!("{where_}: host {name:?} (entry {})", index + 1);
        if host.host.trim().is_empty() {
            return Err(format!("{entry}: `host` is empty"));
        }
        if let Some(first) = seen.insert(name.clone(), index + 1) {
            return Err(format!("{entry}: the name is also used by entry {first}"));
        }
        if host.ssh_config.is_some() {
            return Err(format!(
                "{entry}: `ssh_config` is only allowed in [defaults] (one config for the whole inventory)"
            ));
        }
        let settings = Settings::from(&host);
        check_settings(&settings, &entry)?;
        let settings = settings.or(&default_settings);
        entries.push((name, entry, host.host, settings));
    }
    check_jumps(&entries, &seen)?;

    let mut targets = Vec::with_capacity(entries.len());
    for (name, entry, hostname, settings) in entries {
        let from_config = match &config {
            Some(config) => Some(
                config
                    .host(&hostname)
                    .map_err(|e| format!("{entry}: {e}"))?,
            ),
            None => None,
        };
        let config_user = from_config.as_ref().and_then(|c| c.user.clone());
        let config_keys = from_config
            .as_ref()
            .is_some_and(|c| !c.identity_files.is_empty());
        if settings.user.is_none() && config_user.is_none() {
            return Err(format!(
                "{entry}: no `user` (here, in [defaults] or in the ssh config)"
            ));
        }
        let agent = settings.agent.unwrap_or(false);
        if settings.password.is_none() && settings.key.is_none() && !agent && !config_keys {
            return Err(format!(
                "{entry}: no `password`, `key` or `agent = true` (here or in [defaults]), and no IdentityFile in the ssh config"
            ));
        }
        if let Some(key) = &settings.key
            && !key.is_file()
        {
            return Err(format!("{entry}: key file {} not found", key.display()));
        }
        if settings.passphrase.is_some() && settings.key.is_none() && !config_keys {
            return Err(format!(
                "{entry}: `passphrase` without a `key` (here or in [defaults]) or an IdentityFile in the ssh config"
            ));
        }
        // Every field is set today; the update keeps this compiling when the params gain one.
        #[allow(clippy::needless_update)]
        targets.push(Target {
            key: ConnectionKey::new(name, PLUGIN_NAME),
            params: ResolvedConnectionParams {
                hostname,
                // Unset, so the ssh config's Port (or 22) applies.
                port: settings.port,
                username: settings.user.clone(),
                password: settings.password.clone(),
                platform: settings.platform.clone(),
                extras: extras(&settings),
                ..ResolvedConnectionParams::default()
            },
        });
    }
    Ok(Loaded {
        targets,
        host_keys: policy,
        ssh_config,
    })
}

/// The plugin's extras for one host's settings; `None` when there are none.
fn extras(settings: &Settings) -> Option<Extras> {
    let mut extras = Extras::new();
    let mut put = |name: &str, value: Value| {
        extras.insert(name.to_owned(), value);
    };
    if let Some(key) = &settings.key {
        put("private_key_path", Value::String(key.display().to_string()));
    }
    if let Some(passphrase) = &settings.passphrase {
        put("private_key_passphrase", Value::String(passphrase.clone()));
    }
    if let Some(agent) = settings.agent {
        put("agent", Value::Bool(agent));
    }
    if let Some(algorithms) = &settings.algorithms {
        put("algorithms", toml_to_json(algorithms));
    }
    if let Some(jump) = &settings.jump {
        put("jump", Value::String(jump.clone()));
    }
    if let Some(seconds) = settings.connect_timeout.as_ref().and_then(seconds) {
        put(
            "connect_timeout",
            serde_json::Number::from_f64(seconds).map_or(Value::Null, Value::Number),
        );
    }
    if let Some(secret) = &settings.secret {
        put(SECRET_EXTRA, Value::String(secret.clone()));
    }
    (!extras.is_empty()).then_some(extras)
}

/// Checks the values of one entry (or of [defaults]); `entry` names it in the message.
fn check_settings(settings: &Settings, entry: &str) -> Result<(), String> {
    if let Some(value) = &settings.connect_timeout
        && seconds(value).is_none()
    {
        return Err(format!(
            "{entry}: `connect_timeout` must be a number of seconds above 0 (at most a year), not {value}"
        ));
    }
    if let Some(algorithms) = &settings.algorithms {
        check_algorithms(algorithms)
            .map_err(|problem| format!("{entry}: `algorithms` {problem}"))?;
        // The plugin's own reading: an algorithm it does not know is refused here, before any
        // connection, rather than at every open.
        AlgorithmPolicy::from_extra(&toml_to_json(algorithms))
            .map_err(|problem| format!("{entry}: `algorithms`: {problem}"))?;
    }
    if let Some(jump) = &settings.jump
        && jump.trim().is_empty()
    {
        return Err(format!("{entry}: `jump` is empty"));
    }
    if let Some(passphrase) = &settings.passphrase
        && passphrase.is_empty()
    {
        return Err(format!("{entry}: `passphrase` is empty"));
    }
    if let Some(platform) = &settings.platform {
        let platforms = Platforms::builtin();
        // The plugin keeps exec channels for a name it has no profile for: a misspelt
        // platform would otherwise send show commands to a device that refuses exec.
        if platforms.get(platform).is_none() {
            return Err(format!(
                "{entry}: `platform` {platform:?} is not a platform profile (one of: {})",
                platforms.names().join(", ")
            ));
        }
    }
    if let Some(secret) = &settings.secret
        && secret.is_empty()
    {
        return Err(format!("{entry}: `secret` is empty"));
    }
    Ok(())
}

/// A positive number of seconds, at most a year.
fn seconds(value: &toml::Value) -> Option<f64> {
    let seconds = match value {
        toml::Value::Integer(n) => *n as f64,
        toml::Value::Float(f) => *f,
        _ => return None,
    };
    (seconds > 0.0 && seconds <= MAX_CONNECT_TIMEOUT_S).then_some(seconds)
}

/// `"modern"`, `"legacy"`, or a table whose keys are [`ALGORITHM_KINDS`] and whose values are
/// non-empty strings or non-empty arrays of non-empty strings. The names themselves are the
/// plugin's to judge.
fn check_algorithms(value: &toml::Value) -> Result<(), String> {
    match value {
        toml::Value::String(name) if name == "modern" || name == "legacy" => Ok(()),
        toml::Value::String(other) => Err(format!(
            "must be \"modern\", \"legacy\" or a table of lists, not {other:?}"
        )),
        toml::Value::Table(table) => {
            if table.is_empty() {
                return Err(format!(
                    "table is empty (keys: {})",
                    ALGORITHM_KINDS.join(", ")
                ));
            }
            for (kind, list) in table {
                if !ALGORITHM_KINDS.contains(&kind.as_str()) {
                    return Err(format!(
                        "has an unknown key {kind:?} (keys: {})",
                        ALGORITHM_KINDS.join(", ")
                    ));
                }
                let ok = match list {
                    toml::Value::String(text) => !text.trim().is_empty(),
                    toml::Value::Array(names) => {
                        !names.is_empty()
                            && names
                                .iter()
                                .all(|name| name.as_str().is_some_and(|n| !n.trim().is_empty()))
                    }
                    _ => false,
                };
                if !ok {
                    return Err(format!(
                        "{kind} must be an OpenSSH list (\"a,b\", \"+a\", \"-a\", \"^a\") or an array of names, not {list}"
                    ));
                }
            }
            Ok(())
        }
        other => Err(format!(
            "must be \"modern\", \"legacy\" or a table of lists, not {other}"
        )),
    }
}

fn toml_to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(n) => Value::from(*n),
        toml::Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// Every `jump` names another entry, and no chain of jumps comes back to where it started.
fn check_jumps(
    entries: &[(String, String, String, Settings)],
    index_of: &HashMap<String, usize>,
) -> Result<(), String> {
    let jump_of = |name: &str| {
        index_of
            .get(name)
            .and_then(|&number| entries.get(number - 1))
            .and_then(|(_, _, _, settings)| settings.jump.as_deref())
    };
    for (name, entry, _, settings) in entries {
        let Some(first) = settings.jump.as_deref() else {
            continue;
        };
        let mut chain = vec![name.as_str()];
        let mut next = Some(first);
        while let Some(hop) = next {
            if !index_of.contains_key(hop) {
                return Err(format!(
                    "{entry}: `jump` names {hop:?}, which is not an entry of the inventory"
                ));
            }
            if chain.contains(&hop) {
                chain.push(hop);
                return Err(format!(
                    "{entry}: `jump` chain loops: {} (a jump host that takes `jump` from [defaults] needs `jump = \"none\"`)",
                    chain.join(" -> ")
                ));
            }
            chain.push(hop);
            next = jump_of(hop);
        }
    }
    Ok(())
}

/// One host to work on.
pub(crate) struct Target {
    pub(crate) key: ConnectionKey,
    pub(crate) params: ResolvedConnectionParams,
}

#[cfg(test)]
mod tests;
