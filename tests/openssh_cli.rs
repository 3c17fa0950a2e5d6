//! The `linux_shell` platform profile against OpenSSH (issue 12): bash on a PTY, with the
//! prompt the profile sets, gives the same outputs as the same commands on exec channels. The
//! fixture is `scripts/sshd-fixture.sh start`'s sshd, found through
//! `${SSHD_FIXTURE_DIR:-/tmp/cs-sshd-fixture}/fixture.env`; without it the test prints a note
//! and passes, unless `CI` is set.
//!
//! `ssh` itself is run with the same options (exec, and a shell on `-tt`), so the plugin is
//! shown to succeed where OpenSSH's client does.

#![cfg(all(feature = "ssh", feature = "testing"))]

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use connection_supervisor::ssh::{self, HostKeyPolicy, SshOptions};
use connection_supervisor::{ConnectionKey, ConnectionManager, Extras, ResolvedConnectionParams};

struct Fixture {
    host: String,
    port: u16,
    user: String,
    key: PathBuf,
    known_hosts: PathBuf,
}

/// The fixture, or `None` (skip) when it is not running and `CI` is not set.
fn fixture() -> Option<Fixture> {
    let dir: PathBuf = match std::env::var_os("SSHD_FIXTURE_DIR") {
        Some(dir) if !dir.is_empty() => dir.into(),
        _ => "/tmp/cs-sshd-fixture".into(),
    };
    let path = dir.join("fixture.env");
    let Ok(text) = std::fs::read_to_string(&path) else {
        assert!(
            std::env::var_os("CI").is_none_or(|ci| ci.is_empty()),
            "{} missing: the OpenSSH fixture is not running",
            path.display()
        );
        eprintln!("OpenSSH fixture not running: run scripts/sshd-fixture.sh start");
        return None;
    };
    let vars: HashMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let var = |name: &str| vars.get(name).copied().unwrap_or_default().to_owned();
    Some(Fixture {
        host: var("SSHD_HOST"),
        port: var("SSHD_PORT").parse().ok()?,
        user: var("SSHD_USER"),
        key: var("SSHD_KEY").into(),
        known_hosts: var("SSHD_KNOWN_HOSTS").into(),
    })
}

impl Fixture {
    fn params(&self, platform: Option<&str>) -> ResolvedConnectionParams {
        let mut extras = Extras::new();
        extras.insert(
            "private_key_path".into(),
            self.key.display().to_string().into(),
        );
        ResolvedConnectionParams {
            hostname: self.host.clone(),
            port: Some(self.port),
            username: Some(self.user.clone()),
            platform: platform.map(str::to_owned),
            extras: Some(extras),
            ..ResolvedConnectionParams::default()
        }
    }

    /// `ssh` with the same key, port and known_hosts, `extra` options, and the remote
    /// `command` if any.
    fn ssh(&self, extra: &[&str], command: Option<&str>, input: &str) -> std::process::Output {
        let mut child = Command::new("ssh")
            .args([
                "-i",
                &self.key.display().to_string(),
                "-p",
                &self.port.to_string(),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                &format!("UserKnownHostsFile={}", self.known_hosts.display()),
                "-o",
                "ConnectTimeout=10",
            ])
            .args(extra)
            .arg(format!("{}@{}", self.user, self.host))
            .args(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ssh runs");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).expect("ssh takes input");
        }
        child.wait_with_output().expect("ssh ends")
    }
}

const COMMANDS: [&str; 9] = [
    "echo hello",
    "printf 'a\\nb\\n'",
    "uname -s",
    "seq 1 3000",
    "printf 'no newline at the end'",
    "printf 'tab\\there  two spaces  \\n'",
    "echo $((6 * 7)) $HOME",
    // `ls` lays out columns on a terminal: -1 asks for what it prints to a pipe.
    "ls -1d /etc /usr",
    "echo ''",
];

#[tokio::test]
async fn the_linux_shell_profile_over_a_pty_gives_what_exec_gives() {
    let Some(fx) = fixture() else { return };

    // OpenSSH's client, same options: exec, and a PTY shell fed the same commands.
    let by_exec = fx.ssh(&["-T"], Some("echo exec-ok"), "");
    assert!(by_exec.status.success(), "ssh exec: {by_exec:?}");
    let by_shell = fx.ssh(&["-tt"], None, "echo shell-$((1+1))-ok\nexit\n");
    assert!(by_shell.status.success(), "ssh -tt: {by_shell:?}");
    assert!(String::from_utf8_lossy(&by_shell.stdout).contains("shell-2-ok"));

    let options =
        SshOptions::default().host_key_policy(HostKeyPolicy::Strict(fx.known_hosts.clone()));
    let manager = ConnectionManager::with_connection_factory(ssh::factory(options))
        .await
        .unwrap();
    let shell = manager
        .open_connection(
            &ConnectionKey::new("shell", ssh::PLUGIN_NAME),
            &fx.params(Some("linux_shell")),
        )
        .await
        .unwrap()
        .unwrap();
    let exec = manager
        .open_connection(
            &ConnectionKey::new("exec", ssh::PLUGIN_NAME),
            &fx.params(None),
        )
        .await
        .unwrap()
        .unwrap();
    for command in COMMANDS {
        let over_exec = exec.execute_command(command).await.unwrap();
        let over_shell = shell.execute_command(command).await.unwrap();
        assert_eq!(over_shell, over_exec, "{command}");
    }
    // Still in step after all of that, and one at a time from many callers.
    let runs = (0..10).map(|n| {
        let shell = shell.clone();
        async move { (n, shell.execute_command(&format!("echo caller {n}")).await) }
    });
    for (n, output) in futures::future::join_all(runs).await {
        assert_eq!(output.unwrap(), format!("caller {n}\n"));
    }
    manager.shutdown().await.unwrap();
}
