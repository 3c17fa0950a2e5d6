//! Embedded CLI devices that stay up for another process to drive: the device side of
//! scripts/bench-cli.sh, which runs the same job through the fleet tool (CLI sessions and exec
//! channels) and through netmiko.
//!
//! ```text
//! cargo run --release -p fleet --example cli_lab -- 100 /tmp/lab
//! ```
//!
//! Starts `HOSTS` devices imitating Cisco IOS on loopback, writes into `DIR` their
//! `known_hosts`, `cli.toml` (a fleet inventory with `platform` and `secret`), `exec.toml` (the
//! same devices without a platform: exec channels) and `hosts.json` (for Python clients), then
//! prints `ready` and serves until its standard input closes.

use std::io::Read;
use std::path::PathBuf;

use connection_supervisor::testing::{
    CliDevice, CliPlatform, DEFAULT_PASSWORD, DEFAULT_SECRET, DEFAULT_USERNAME, SshTestServer,
    SshTestServerConfig, write_known_hosts,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let hosts: usize = args.next().as_deref().unwrap_or("100").parse()?;
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/cs-cli-lab".into()));
    std::fs::create_dir_all(&dir)?;
    let mut devices = Vec::with_capacity(hosts);
    for index in 0..hosts {
        devices.push(
            SshTestServer::start(SshTestServerConfig {
                hostname: format!("R{index:03}"),
                cli: Some(CliDevice::new(CliPlatform::CiscoIos)),
                ..SshTestServerConfig::default()
            })
            .await?,
        );
    }
    let known_hosts = dir.join("known_hosts");
    write_known_hosts(&known_hosts, &devices)?;
    let defaults = format!(
        "[defaults]\nuser = \"{DEFAULT_USERNAME}\"\npassword = \"{DEFAULT_PASSWORD}\"\n\
         known_hosts = \"{}\"\nssh_config = \"none\"\n",
        known_hosts.display()
    );
    let mut cli = format!("{defaults}platform = \"cisco_ios\"\nsecret = \"{DEFAULT_SECRET}\"\n");
    let mut exec = defaults.clone();
    let mut json = Vec::with_capacity(hosts);
    for (index, device) in devices.iter().enumerate() {
        let entry = format!(
            "\n[[hosts]]\nname = \"R{index:03}\"\nhost = \"127.0.0.1\"\nport = {}\n",
            device.port()
        );
        cli.push_str(&entry);
        exec.push_str(&entry);
        json.push(serde_json::json!({ "name": format!("R{index:03}"), "port": device.port() }));
    }
    std::fs::write(dir.join("cli.toml"), cli)?;
    std::fs::write(dir.join("exec.toml"), exec)?;
    let lab = serde_json::json!({
        "username": DEFAULT_USERNAME,
        "password": DEFAULT_PASSWORD,
        "secret": DEFAULT_SECRET,
        "hosts": json,
    });
    std::fs::write(dir.join("hosts.json"), lab.to_string())?;
    println!("ready");
    // Serve until the driver closes our standard input.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    Ok(())
}
