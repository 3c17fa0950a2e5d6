//! The fleet binary with `--inventory`: the issue-11 keys end to end, against embedded devices
//! and a port that accepts TCP and never speaks.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use connection_supervisor::testing::{
    DEFAULT_PASSWORD, DEFAULT_USERNAME, SshTestServer, SshTestServerConfig, write_known_hosts,
};
use tokio::net::TcpListener;

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fleet-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Runs the fleet binary on `inventory` (off the runtime, which serves the devices).
async fn fleet(inventory: &Path, extra: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleet"));
    command
        .args(["--rounds", "1", "--commands", "hostname", "--inventory"])
        .arg(inventory)
        .args(extra);
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the fleet task")
        .expect("the fleet binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_config_alias_reaches_its_device_and_a_silent_port_names_the_banner() {
    let device = SshTestServer::start(SshTestServerConfig {
        hostname: "core-sw1".into(),
        ..SshTestServerConfig::default()
    })
    .await
    .expect("device");
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_port = silent.local_addr().expect("address").port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let dir = scratch_dir("config");
    let known_hosts = dir.join("known_hosts");
    write_known_hosts(&known_hosts, [&device]).expect("known_hosts");
    let config = dir.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host core-*\n    HostName 127.0.0.1\n    Port {}\n    User {DEFAULT_USERNAME}\n",
            device.port()
        ),
    )
    .expect("ssh config");
    let inventory = dir.join("inventory.toml");
    let write = |hosts: &str| {
        std::fs::write(
            &inventory,
            format!(
                "[defaults]\npassword = \"{DEFAULT_PASSWORD}\"\nknown_hosts = \"{}\"\n\
                 ssh_config = \"{}\"\n\n{hosts}",
                known_hosts.display(),
                config.display()
            ),
        )
        .expect("inventory")
    };

    write("[[hosts]]\nhost = \"core-sw1\"\n");
    let out = fleet(&inventory, &[]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    write(&format!(
        "[[hosts]]\nhost = \"core-sw1\"\n\n[[hosts]]\nname = \"silent\"\nhost = \"127.0.0.1\"\n\
         port = {silent_port}\nuser = \"admin\"\nconnect_timeout = 0.5\n"
    ));
    let out = fleet(&inventory, &["--command-timeout", "5"]).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!(
            "no SSH banner from 127.0.0.1:{silent_port} within 0.5 s"
        )),
        "{stdout}"
    );
    holder.abort();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_value_is_one_line_on_stderr_and_exit_code_2() {
    let dir = scratch_dir("wrong");
    let inventory = dir.join("inventory.toml");
    for (hosts, needle) in [
        ("connect_timeout = -3", "`connect_timeout`"),
        ("jump = \"ghost\"", "`jump` names \"ghost\""),
        ("algorithms = \"ancient\"", "`algorithms`"),
    ] {
        std::fs::write(
            &inventory,
            format!(
                "[defaults]\nuser = \"u\"\npassword = \"p\"\nssh_config = \"none\"\n\n\
                 [[hosts]]\nname = \"r1\"\nhost = \"10.0.0.1\"\n{hosts}\n"
            ),
        )
        .expect("inventory");
        let out = fleet(&inventory, &[]).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{hosts}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{hosts}: {stderr}");
        assert!(stderr.contains("host \"r1\" (entry 1)"), "{stderr}");
        assert!(stderr.contains(needle), "{needle:?} missing: {stderr}");
    }
    let out = fleet(&inventory, &["--command-timeout", "0"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--command-timeout"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}
