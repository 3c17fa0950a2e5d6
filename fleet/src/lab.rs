//! The built-in lab: embedded SSH devices on loopback (imitating a platform's command line
//! with `--platform`), the known_hosts file that trusts exactly their keys, and the chaos
//! that takes some of them down half-way.

use std::path::PathBuf;
use std::time::Duration;

use connection_supervisor::ssh::PLUGIN_NAME;
use connection_supervisor::ssh::cli::SECRET_EXTRA;
use connection_supervisor::testing::{
    CliDevice, CliPlatform, DEFAULT_PASSWORD, DEFAULT_SECRET, DEFAULT_USERNAME, SshTestServer,
    SshTestServerConfig, write_known_hosts,
};
use connection_supervisor::{ConnectionKey, Extras, ResolvedConnectionParams};

use crate::OUTAGE;
use crate::inventory::Target;

/// The platforms the embedded devices can imitate, by their profile names.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum LabPlatform {
    #[value(name = "cisco_ios")]
    CiscoIos,
    #[value(name = "cisco_nxos")]
    CiscoNxos,
    #[value(name = "cisco_xr")]
    CiscoXr,
    #[value(name = "arista_eos")]
    AristaEos,
    #[value(name = "juniper_junos")]
    JuniperJunos,
    #[value(name = "linux_shell")]
    LinuxShell,
}

impl LabPlatform {
    fn device(self) -> CliPlatform {
        match self {
            Self::CiscoIos => CliPlatform::CiscoIos,
            Self::CiscoNxos => CliPlatform::CiscoNxos,
            Self::CiscoXr => CliPlatform::CiscoXr,
            Self::AristaEos => CliPlatform::AristaEos,
            Self::JuniperJunos => CliPlatform::JuniperJunos,
            Self::LinuxShell => CliPlatform::LinuxShell,
        }
    }
}

/// Embedded devices and the known_hosts file that trusts exactly their keys.
pub(crate) struct Lab {
    devices: Vec<SshTestServer>,
    dir: PathBuf,
}

impl Lab {
    pub(crate) async fn start(
        hosts: u32,
        latency: Duration,
        platform: Option<LabPlatform>,
    ) -> Result<(Self, Vec<Target>), String> {
        let dir = std::env::temp_dir().join(format!("cs-fleet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut devices = Vec::with_capacity(hosts as usize);
        let mut targets = Vec::with_capacity(hosts as usize);
        for index in 0..hosts {
            let name = format!("device-{index:03}");
            let device = SshTestServer::start(SshTestServerConfig {
                hostname: name.clone(),
                latency,
                cli: platform.map(|p| CliDevice::new(p.device())),
                ..SshTestServerConfig::default()
            })
            .await
            .map_err(|e| format!("starting embedded device {name}: {e}"))?;
            // Every field is set today; the update keeps this compiling when the params gain one.
            #[allow(clippy::needless_update)]
            targets.push(Target {
                key: ConnectionKey::new(name, PLUGIN_NAME),
                params: ResolvedConnectionParams {
                    hostname: "127.0.0.1".into(),
                    port: Some(device.port()),
                    username: Some(DEFAULT_USERNAME.into()),
                    password: Some(DEFAULT_PASSWORD.into()),
                    platform: platform.map(|p| p.device().profile_name().to_owned()),
                    extras: platform.map(|_| {
                        let mut extras = Extras::new();
                        extras.insert(SECRET_EXTRA.to_owned(), DEFAULT_SECRET.into());
                        extras
                    }),
                    ..ResolvedConnectionParams::default()
                },
            });
            devices.push(device);
        }
        let lab = Self { devices, dir };
        write_known_hosts(&lab.known_hosts(), &lab.devices)
            .map_err(|e| format!("{}: {e}", lab.known_hosts().display()))?;
        Ok((lab, targets))
    }

    pub(crate) fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// Takes every tenth device (at least two) down with its sessions, keeps it down for
    /// [`OUTAGE`], and brings it back on the same port with the same host key.
    pub(crate) async fn chaos(&self, say: impl Fn(String)) -> Result<(), String> {
        let victims: Vec<usize> = {
            let count = (self.devices.len() / 10).max(2).min(self.devices.len());
            let step = self.devices.len() / count;
            (0..count).map(|i| i * step).collect()
        };
        let names = victims
            .iter()
            .map(|&i| format!("device-{i:03}"))
            .collect::<Vec<_>>()
            .join(", ");
        say(format!(
            "chaos: taking {} devices down for {OUTAGE:?}: {names}",
            victims.len()
        ));
        futures::future::join_all(victims.iter().map(|&i| self.devices[i].stop())).await;
        tokio::time::sleep(OUTAGE).await;
        say("chaos: bringing them back".to_owned());
        for &i in &victims {
            self.devices[i]
                .restart()
                .await
                .map_err(|e| format!("restarting device-{i:03}: {e}"))?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
