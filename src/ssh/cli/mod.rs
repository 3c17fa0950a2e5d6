//! # Network devices
//!
//! Most network devices (Cisco IOS and NX-OS, Arista EOS, Junos, ...) refuse or mishandle SSH
//! `exec` requests: they serve a PTY shell with a prompt, a pager, a privileged mode behind
//! `enable` and a configuration mode. The params' `platform` (genja's and Nornir's host
//! attribute, netmiko's `device_type`) selects a [`PlatformProfile`] from
//! [`SshOptions::platforms`](super::SshOptions::platforms); with a shell profile, the
//! connection opens one PTY shell after authentication and every command runs in it, one at a
//! time:
//!
//! - **Login**: the first prompt is found and learned (a banner line that looks like a prompt
//!   is not taken for one: the prompt must come back the same after an empty line), the
//!   profile's setup commands run, privileged mode is entered when the params' extras give a
//!   `secret` (never logged; `ResolvedConnectionParams`'s `Debug` shows only the extras'
//!   names), and paging is turned off.
//! - **Reading**: a command's output ends at the device's prompt, found after the command's
//!   echo, not by waiting: the prompt may change with the mode (`R1#`, `R1(config-if)#`) but
//!   must name the same device. The echo and the prompt are removed; a `--More--` pager is
//!   answered and removed; a line matching the profile's error patterns (`% Invalid input`)
//!   fails the command with the device's text.
//! - **A prompt that does not come back** within the read timeout (the profile's, 10 s, or
//!   the params' extras `read_timeout` in seconds) fails the command with the last lines
//!   received. The command is then interrupted (Ctrl-C) until the prompt comes back; if it
//!   does not, the session is reported lost and the supervisor reconnects it.
//! - **Reconnects** log in again the same way, so privileged mode is entered again. A command
//!   in flight when the session dropped fails with `ConnectionLost` and is not re-run.
//! - **Configuration**: [`send_config`] enters configuration mode, sends each line, stops at
//!   the first line the device rejects and reports it, commits where the platform needs it
//!   (IOS-XR, Junos) and leaves; a failed set is discarded where the platform has a candidate.
//!
//! ```no_run
//! use connection_supervisor::{ConnectionKey, ConnectionManager, Extras, ResolvedConnectionParams};
//! use connection_supervisor::ssh::{self, SshOptions, cli};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = ConnectionManager::with_connection_factory(ssh::factory(SshOptions::default())).await?;
//! let mut extras = Extras::new();
//! extras.insert("secret".into(), "enable-secret".into());
//! let params = ResolvedConnectionParams {
//!     hostname: "10.0.0.1".into(),
//!     username: Some("admin".into()),
//!     password: Some("admin-password".into()),
//!     platform: Some("cisco_ios".into()),
//!     extras: Some(extras),
//!     ..Default::default()
//! };
//! let router = manager
//!     .open_connection(&ConnectionKey::new("r1", ssh::PLUGIN_NAME), &params)
//!     .await?
//!     .expect("the ssh factory serves plugin \"ssh\"");
//! println!("{}", router.execute_command("show ip interface brief").await?);
//! cli::send_config(&router, ["interface Gi0/1", "description uplink"]).await?;
//! # Ok(()) }
//! ```
//!
//! Shipped profiles: `cisco_ios`, `cisco_nxos`, `cisco_xr`, `arista_eos`, `juniper_junos`,
//! `linux` (exec channels, as without a platform) and `linux_shell` (a PTY shell whose prompt
//! is set to `cs-shell$ `), with NAPALM's names as aliases (`ios`, `nxos`, `iosxr`, `eos`,
//! `junos`). Add or override platforms with [`Platforms::insert`] or [`Platforms::load_file`]
//! (the TOML of `src/ssh/cli/platforms.toml`). A `platform` no profile names keeps exec
//! channels.
//!
//! Limits: commands run one at a time per shell session (the runner's parallelism is 1); the
//! output is what the terminal shows (stdout and stderr merged, no exit status); a command
//! that asks a question (`[confirm]`) runs into the read timeout and is interrupted.

mod config;
mod login;
mod profile;
mod runner;
mod shell;
mod text;

pub use config::{ConfigError, send_config};
pub use profile::{
    ConfigSettings, EnableSettings, PlatformProfile, Platforms, ProfileError, SessionKind,
};
pub(super) use runner::CliSession;
pub use runner::{READ_TIMEOUT_EXTRA, SECRET_EXTRA};
