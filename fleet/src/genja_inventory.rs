//! genja/Nornir inventories for the fleet: `--inventory hosts.yaml [--groups groups.yaml]
//! [--defaults defaults.yaml]`, or `--inventory DIR` holding `hosts.yaml` (and optionally
//! `groups.yaml`, `defaults.yaml`; `.yml` and `.json` too). Loaded by genja-core's own loader
//! and resolved by its own inheritance (defaults, then groups, then the host, then
//! `connection_options.ssh`), so the fleet reads what genja reads: `hostname`, `port`,
//! `username`, `password`, `platform`, `groups` and `connection_options.ssh.extras`
//! (`private_key_path` among them, which the SSH plugin uses).
//!
//! Host keys: `connection_options.ssh.extras.host_key_policy` (`strict`, the default,
//! `accept-new` or `accept-any`) and `known_hosts`, the same for every host (put them in the
//! defaults).

use std::path::Path;
#[cfg(feature = "genja")]
use std::path::PathBuf;

#[cfg(not(feature = "genja"))]
pub use without_genja::load;

#[cfg(feature = "genja")]
use connection_supervisor::genja::genja_core::inventory::Inventory;
#[cfg(feature = "genja")]
use connection_supervisor::genja::genja_core::settings::{InventoryConfig, OptionsConfig};
#[cfg(feature = "genja")]
use connection_supervisor::genja::params_from_genja;
use connection_supervisor::ssh::HostKeyPolicy;
#[cfg(feature = "genja")]
use connection_supervisor::ssh::PLUGIN_NAME;
use connection_supervisor::{ConnectionKey, ResolvedConnectionParams};

/// Hosts to run on, by key, with their params, and the host-key policy.
pub type Loaded = (
    Vec<(ConnectionKey, ResolvedConnectionParams)>,
    HostKeyPolicy,
);

/// The genja inventory at `path` (a hosts file or a directory), or `None` when `path` is not
/// one (a TOML inventory, for the fleet's own loader). Errors are one line naming the file.
#[cfg(feature = "genja")]
pub fn load(
    path: &Path,
    groups: Option<&Path>,
    defaults: Option<&Path>,
) -> Result<Option<Loaded>, String> {
    let (hosts, groups, defaults) = if path.is_dir() {
        let hosts = find(path, "hosts")
            .ok_or_else(|| format!("{}: no hosts.yaml, hosts.yml or hosts.json", path.display()))?;
        (
            hosts,
            groups
                .map(Path::to_path_buf)
                .or_else(|| find(path, "groups")),
            defaults
                .map(Path::to_path_buf)
                .or_else(|| find(path, "defaults")),
        )
    } else if is_genja_file(path) {
        (
            path.to_path_buf(),
            groups.map(Path::to_path_buf),
            defaults.map(Path::to_path_buf),
        )
    } else if groups.is_some() || defaults.is_some() {
        return Err(format!(
            "{}: --groups and --defaults go with a genja hosts file (.yaml, .yml or .json)",
            path.display()
        ));
    } else {
        return Ok(None);
    };
    let mut options = OptionsConfig::builder().hosts_file(hosts.display().to_string());
    if let Some(groups) = &groups {
        options = options.groups_file(groups.display().to_string());
    }
    if let Some(defaults) = &defaults {
        options = options.defaults_file(defaults.display().to_string());
    }
    let (hosts, groups, defaults) = InventoryConfig::builder()
        .options(options.build())
        .build()
        .load_inventory_files()
        .map_err(|error| error.to_string())?;
    let mut inventory = Inventory::builder().hosts(hosts);
    if let Some(groups) = groups {
        inventory = inventory.groups(groups);
    }
    if let Some(defaults) = defaults {
        inventory = inventory.defaults(defaults);
    }
    let inventory = inventory.build();
    resolve(&inventory, path).map(Some)
}

#[cfg(feature = "genja")]
fn resolve(inventory: &Inventory, path: &Path) -> Result<Loaded, String> {
    let where_ = path.display();
    let mut targets = Vec::new();
    let mut policy: Option<(String, HostKeyPolicy)> = None;
    for (name, _) in inventory.hosts().iter() {
        let name = name.to_string();
        let entry = format!("{where_}: host {name:?}");
        let resolved = inventory
            .resolve_connection_params(&name, PLUGIN_NAME)
            .ok_or_else(|| format!("{entry}: could not be resolved"))?;
        let mut params = params_from_genja(&resolved);
        if params.hostname.trim().is_empty() {
            // As Nornir does: a host without a hostname is reached by its name.
            params.hostname = name.clone();
        }
        params.port = params.port.or(Some(22));
        if params.username.is_none() {
            return Err(format!("{entry}: no `username` (host, groups or defaults)"));
        }
        let has_key = params
            .extras
            .as_ref()
            .is_some_and(|extras| extras.contains_key("private_key_path"));
        if params.password.is_none() && !has_key {
            return Err(format!(
                "{entry}: neither `password` nor connection_options.ssh.extras.private_key_path"
            ));
        }
        let host_policy = host_key_policy(&params).map_err(|e| format!("{entry}: {e}"))?;
        match &policy {
            None => policy = Some((name.clone(), host_policy)),
            Some((first, chosen)) if format!("{chosen:?}") != format!("{host_policy:?}") => {
                return Err(format!(
                    "{entry}: its host-key policy differs from host {first:?}'s; set it once, in the defaults"
                ));
            }
            Some(_) => {}
        }
        targets.push((ConnectionKey::new(name, PLUGIN_NAME), params));
    }
    let Some((_, policy)) = policy else {
        return Err(format!("{where_}: no hosts"));
    };
    Ok((targets, policy))
}

#[cfg(feature = "genja")]
fn host_key_policy(params: &ResolvedConnectionParams) -> Result<HostKeyPolicy, String> {
    let extra = |name: &str| {
        params
            .extras
            .as_ref()
            .and_then(|extras| extras.get(name))
            .and_then(|value| value.as_str())
            .map(str::to_owned)
    };
    let known_hosts = extra("known_hosts").map(PathBuf::from);
    Ok(
        match (
            extra("host_key_policy").as_deref().unwrap_or("strict"),
            known_hosts,
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
                    "host_key_policy must be \"strict\", \"accept-new\" or \"accept-any\", not {other:?}"
                ));
            }
        },
    )
}

fn is_genja_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

#[cfg(feature = "genja")]
fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    ["yaml", "yml", "json"]
        .iter()
        .map(|ext| dir.join(format!("{stem}.{ext}")))
        .find(|path| path.is_file())
}

/// Built without genja-core: a TOML path goes to the fleet's own loader, a genja one is refused.
#[cfg(not(feature = "genja"))]
mod without_genja {
    use std::path::Path;

    use super::{Loaded, is_genja_file};

    pub fn load(
        path: &Path,
        groups: Option<&Path>,
        defaults: Option<&Path>,
    ) -> Result<Option<Loaded>, String> {
        if path.is_dir() || is_genja_file(path) || groups.is_some() || defaults.is_some() {
            return Err(format!(
                "{}: genja inventories need the fleet's `genja` feature (on by default)",
                path.display()
            ));
        }
        Ok(None)
    }
}

#[cfg(all(test, feature = "genja"))]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn a_directory_of_genja_yaml_resolves_through_groups_and_defaults() {
        let dir = std::env::temp_dir().join(format!("fleet-genja-inv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write(
            &dir,
            "hosts.yaml",
            "r1:\n  hostname: 10.0.0.1\n  groups: [core]\nr2:\n  port: 2222\n  password: own\n",
        );
        write(
            &dir,
            "groups.yaml",
            "core:\n  platform: ios\n  connection_options:\n    ssh:\n      extras:\n        private_key_path: /keys/core\n        host_key_policy: accept-any\n",
        );
        write(
            &dir,
            "defaults.yaml",
            "username: admin\npassword: fromdefaults\nconnection_options:\n  ssh:\n    extras:\n      host_key_policy: accept-any\n",
        );
        let (targets, policy) = load(&dir, None, None).unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(policy, HostKeyPolicy::AcceptAny));
        let (k1, p1) = &targets[0];
        assert_eq!(k1.hostname, "r1");
        assert_eq!(p1.hostname, "10.0.0.1");
        assert_eq!(p1.port, Some(22));
        assert_eq!(p1.username.as_deref(), Some("admin"));
        assert_eq!(p1.platform.as_deref(), Some("ios"));
        assert!(p1.extras.as_ref().unwrap().contains_key("private_key_path"));
        let (k2, p2) = &targets[1];
        assert_eq!(k2.hostname, "r2");
        assert_eq!(p2.hostname, "r2");
        assert_eq!(p2.port, Some(2222));
        assert_eq!(p2.password.as_deref(), Some("own"));
    }

    #[test]
    fn a_toml_file_is_left_to_the_fleet_s_own_loader() {
        assert!(
            load(Path::new("inventory.toml"), None, None)
                .unwrap()
                .is_none()
        );
    }
}
