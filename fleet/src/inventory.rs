//! The inventory file of `--inventory`: real hosts, their credentials and the host-key policy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use connection_supervisor::ssh::{HostKeyPolicy, PLUGIN_NAME};
use connection_supervisor::{ConnectionKey, Extras, ResolvedConnectionParams};
use serde::Deserialize;

/// The inventory file: an optional `[defaults]` table and one `[[hosts]]` table per host.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Inventory {
    #[serde(default)]
    defaults: HostDefaults,
    hosts: Vec<InventoryHost>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct HostDefaults {
    port: Option<u16>,
    user: Option<String>,
    password: Option<String>,
    key: Option<PathBuf>,
    /// `strict` (the default), `accept-new` or `accept-any`.
    host_key_policy: Option<String>,
    /// known_hosts file for `strict` and `accept-new`; defaults to ~/.ssh/known_hosts.
    known_hosts: Option<PathBuf>,
}

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
}

/// One line saying what is wrong with the inventory file.
pub(crate) fn load_inventory(path: &Path) -> Result<(Vec<Target>, HostKeyPolicy), String> {
    let where_ = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{where_}: {e}"))?;
    let inventory: Inventory = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let line = text[..span.start].matches('\n').count() + 1;
                format!(" (line {line})")
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
        defaults.known_hosts,
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
    let mut seen = HashMap::new();
    let mut targets = Vec::with_capacity(inventory.hosts.len());
    for (index, host) in inventory.hosts.into_iter().enumerate() {
        let name = host.name.unwrap_or_else(|| host.host.clone());
        let entry = format!("{where_}: host {name:?} (entry {})", index + 1);
        if host.host.trim().is_empty() {
            return Err(format!("{entry}: `host` is empty"));
        }
        if let Some(first) = seen.insert(name.clone(), index + 1) {
            return Err(format!("{entry}: the name is also used by entry {first}"));
        }
        let user = host.user.or_else(|| defaults.user.clone());
        let password = host.password.or_else(|| defaults.password.clone());
        let key = host.key.or_else(|| defaults.key.clone());
        if user.is_none() {
            return Err(format!("{entry}: no `user` (here or in [defaults])"));
        }
        if password.is_none() && key.is_none() {
            return Err(format!(
                "{entry}: neither `password` nor `key` (here or in [defaults])"
            ));
        }
        if let Some(key) = &key
            && !key.is_file()
        {
            return Err(format!("{entry}: key file {} not found", key.display()));
        }
        let extras: Option<Extras> = key.map(|key| {
            [(
                "private_key_path".to_owned(),
                serde_json::Value::String(key.display().to_string()),
            )]
            .into()
        });
        targets.push(Target {
            key: ConnectionKey::new(name, PLUGIN_NAME),
            params: ResolvedConnectionParams {
                hostname: host.host,
                port: Some(host.port.or(defaults.port).unwrap_or(22)),
                username: user,
                password,
                extras,
                ..ResolvedConnectionParams::default()
            },
        });
    }
    Ok((targets, policy))
}

/// One host to work on.
pub(crate) struct Target {
    pub(crate) key: ConnectionKey,
    pub(crate) params: ResolvedConnectionParams,
}
