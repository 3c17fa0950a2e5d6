//! What one open connects to and with which settings: the params and their extras first, then
//! the OpenSSH client config (when [`SshOptions::ssh_config`] names one), then the options.

use std::path::PathBuf;
use std::time::Duration;

use crate::connection::{FailureKind, OpenError, ResolvedConnectionParams};

use super::algorithms::AlgorithmPolicy;
use super::options::{HostKeyPolicy, SshOptions, effective_keepalive};
use super::ssh_config::{SshHostConfig, StrictHostKeyChecking};

/// The extras key of a host's connect timeout, in seconds.
pub(super) const CONNECT_TIMEOUT: &str = "connect_timeout";

/// The longest connect timeout taken from extras: far beyond any open timeout, and small
/// enough that adding it to the clock cannot overflow.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(86_400 * 365);

/// One open's destination and settings, resolved.
pub(super) struct Target {
    /// The name or address to connect to: the config's `HostName`, or the params' hostname.
    pub(super) host: String,
    pub(super) port: u16,
    /// The params, with `username` from the config when they give none.
    pub(super) params: ResolvedConnectionParams,
    /// Bound on TCP connect, banner and key exchange together; `None`: unbounded here.
    pub(super) connect_timeout: Option<Duration>,
    /// What russh is given (zero is off, huge is capped).
    pub(super) keepalive_interval: Option<Duration>,
    pub(super) host_key_policy: HostKeyPolicy,
    /// The algorithms before the host's extras: the ssh config's lists (applied to the modern
    /// defaults, as `ssh` applies them to its own), else the options'.
    pub(super) algorithms: AlgorithmPolicy,
    /// What the ssh config says about the host, `None` without a config: its `IdentityFile`s
    /// go to authentication, its `ProxyJump` and algorithm lists to their own stages.
    pub(super) ssh_config: Option<SshHostConfig>,
}

impl Target {
    /// Resolves `params` against the ssh config (read now, so an edited file applies to the
    /// next open, as for `ssh`) and `options`.
    pub(super) fn resolve(
        options: &SshOptions,
        params: &ResolvedConnectionParams,
    ) -> Result<Self, OpenError> {
        let config = match &options.ssh_config {
            Some(file) => match file.load()? {
                Some(config) => Some(config.host(&params.hostname)?),
                None => None,
            },
            None => None,
        };
        let from_config = |get: fn(&SshHostConfig) -> Option<_>| config.as_ref().and_then(get);
        let mut resolved = params.clone();
        if resolved.username.is_none() {
            resolved.username = config.as_ref().and_then(|c| c.user.clone());
        }
        Ok(Self {
            host: config
                .as_ref()
                .and_then(|c| c.host_name.clone())
                .unwrap_or_else(|| params.hostname.clone()),
            port: params
                .port
                .or(config.as_ref().and_then(|c| c.port))
                .unwrap_or(options.port),
            params: resolved,
            connect_timeout: extras_seconds(params, CONNECT_TIMEOUT)?
                .or(from_config(|c| c.connect_timeout))
                .or(options.connect_timeout),
            keepalive_interval: effective_keepalive(
                from_config(|c| c.server_alive_interval).or(options.keepalive_interval),
            ),
            host_key_policy: match &config {
                Some(config) => host_key_policy(&options.host_key_policy, config),
                None => options.host_key_policy.clone(),
            },
            algorithms: match &config {
                Some(config) => config_algorithms(config, &params.hostname)?
                    .unwrap_or_else(|| options.algorithms.clone()),
                None => options.algorithms.clone(),
            },
            ssh_config: config,
        })
    }
}

/// The options' policy with the config's `StrictHostKeyChecking` and `UserKnownHostsFile`
/// applied: the file replaces the options' known_hosts, the keyword the kind of check.
fn host_key_policy(base: &HostKeyPolicy, config: &SshHostConfig) -> HostKeyPolicy {
    let base_file = match base {
        HostKeyPolicy::Strict(file) | HostKeyPolicy::AcceptNew(file) => Some(file.clone()),
        HostKeyPolicy::AcceptAny => None,
    };
    let file = || -> PathBuf {
        config
            .user_known_hosts_file
            .clone()
            .or_else(|| base_file.clone())
            .unwrap_or_else(|| match HostKeyPolicy::default() {
                HostKeyPolicy::Strict(file) | HostKeyPolicy::AcceptNew(file) => file,
                HostKeyPolicy::AcceptAny => PathBuf::new(),
            })
    };
    match config.strict_host_key_checking {
        Some(StrictHostKeyChecking::Yes | StrictHostKeyChecking::Ask) => {
            HostKeyPolicy::Strict(file())
        }
        Some(StrictHostKeyChecking::AcceptNew) => HostKeyPolicy::AcceptNew(file()),
        Some(StrictHostKeyChecking::No) => HostKeyPolicy::AcceptAny,
        None => match base {
            HostKeyPolicy::Strict(_) => HostKeyPolicy::Strict(file()),
            HostKeyPolicy::AcceptNew(_) => HostKeyPolicy::AcceptNew(file()),
            HostKeyPolicy::AcceptAny => HostKeyPolicy::AcceptAny,
        },
    }
}

/// The ssh config's `KexAlgorithms`, `Ciphers`, `MACs` and `HostKeyAlgorithms`, if it sets any.
fn config_algorithms(
    config: &SshHostConfig,
    hostname: &str,
) -> Result<Option<AlgorithmPolicy>, OpenError> {
    AlgorithmPolicy::from_openssh(
        config.kex_algorithms.as_deref(),
        config.ciphers.as_deref(),
        config.macs.as_deref(),
        config.host_key_algorithms.as_deref(),
    )
    .map_err(|error| {
        OpenError::new(
            FailureKind::Config,
            format!("the ssh config's algorithms for {hostname}: {error}"),
        )
    })
}

/// A number of seconds (fractions allowed) in the host's extras; `None` when absent or null.
fn extras_seconds(
    params: &ResolvedConnectionParams,
    name: &str,
) -> Result<Option<Duration>, OpenError> {
    let Some(value) = params.extras.as_ref().and_then(|extras| extras.get(name)) else {
        return Ok(None);
    };
    if value.is_null() {
        return Ok(None);
    }
    match value.as_f64() {
        Some(seconds) if seconds > 0.0 && seconds <= MAX_CONNECT_TIMEOUT.as_secs_f64() => {
            Ok(Some(Duration::from_secs_f64(seconds)))
        }
        _ => Err(OpenError::new(
            FailureKind::Config,
            format!(
                "extras.{name} of {} must be a number of seconds above 0 (at most a year), \
                 not {value}",
                params.hostname
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(extras: serde_json::Value) -> ResolvedConnectionParams {
        ResolvedConnectionParams {
            hostname: "r1".into(),
            extras: serde_json::from_value(extras).ok(),
            ..ResolvedConnectionParams::default()
        }
    }

    #[test]
    fn connect_timeout_from_extras_is_checked() {
        let seconds = |value| extras_seconds(&params(serde_json::json!({ "t": value })), "t");
        assert_eq!(
            seconds(serde_json::json!(2.5)),
            Ok(Some(Duration::from_millis(2500)))
        );
        assert_eq!(seconds(serde_json::json!(null)), Ok(None));
        for bad in [
            serde_json::json!(0),
            serde_json::json!(-1),
            serde_json::json!("5"),
            serde_json::json!(1e30),
        ] {
            let error = seconds(bad.clone()).expect_err("refused");
            assert_eq!(error.kind(), FailureKind::Config);
            assert!(error.message().contains("extras.t of r1"), "{error}");
        }
    }

    #[test]
    fn the_config_sets_the_kind_of_check_and_the_file() {
        let strict = HostKeyPolicy::Strict("/opts/known".into());
        let mut config = SshHostConfig::default();
        assert_eq!(host_key_policy(&strict, &config), strict);
        config.user_known_hosts_file = Some("/cfg/known".into());
        assert_eq!(
            host_key_policy(&strict, &config),
            HostKeyPolicy::Strict("/cfg/known".into())
        );
        config.strict_host_key_checking = Some(StrictHostKeyChecking::AcceptNew);
        assert_eq!(
            host_key_policy(&HostKeyPolicy::AcceptAny, &config),
            HostKeyPolicy::AcceptNew("/cfg/known".into())
        );
        config.strict_host_key_checking = Some(StrictHostKeyChecking::No);
        assert_eq!(host_key_policy(&strict, &config), HostKeyPolicy::AcceptAny);
    }
}
