//! The fleet binary on network devices (issue 12): a CLI job from the built-in lab and from an
//! inventory with `platform` and `secret`, `--output`, `--show`, and `--per-host` on exec
//! channels.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use connection_supervisor::testing::{
    CliDevice, CliPlatform, DEFAULT_PASSWORD, DEFAULT_SECRET, DEFAULT_USERNAME, SshTestServer,
    SshTestServerConfig, write_known_hosts,
};
use serde_json::Value;

/// A directory of this test's own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fleet-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the fleet binary (off the runtime, which may serve the devices).
async fn fleet(args: Vec<String>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleet"));
    command.args(args);
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the fleet task")
        .expect("the fleet binary runs")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| (*a).to_owned()).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("the --output file")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON object per line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inventory_with_platform_and_secret_runs_a_cli_job_into_json_lines() {
    let device = SshTestServer::start(SshTestServerConfig {
        hostname: "R1".into(),
        cli: Some(CliDevice::new(CliPlatform::CiscoIos)),
        ..SshTestServerConfig::default()
    })
    .await
    .expect("device");
    let scratch = Scratch::new("inventory");
    let known_hosts = scratch.0.join("known_hosts");
    write_known_hosts(&known_hosts, [&device]).expect("known_hosts");
    let inventory = scratch.0.join("inventory.toml");
    std::fs::write(
        &inventory,
        format!(
            "[defaults]\nuser = \"{DEFAULT_USERNAME}\"\npassword = \"{DEFAULT_PASSWORD}\"\n\
             known_hosts = \"{}\"\nssh_config = \"none\"\nplatform = \"cisco_ios\"\n\n\
             [[hosts]]\nname = \"core-r1\"\nhost = \"127.0.0.1\"\nport = {}\n\
             secret = \"{DEFAULT_SECRET}\"\n",
            known_hosts.display(),
            device.port()
        ),
    )
    .expect("inventory");
    let output = scratch.0.join("results.jsonl");
    let commands = ["show version", "show privilege", "echo one two"];
    let out = fleet(vec![
        "--inventory".into(),
        inventory.display().to_string(),
        "--rounds".into(),
        "2".into(),
        "--commands".into(),
        commands.join(","),
        "--output".into(),
        output.display().to_string(),
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let records = json_lines(&output);
    assert_eq!(records.len(), 2 * commands.len(), "{records:?}");
    // A CLI session runs them one at a time, in the list's order.
    for (record, command) in records.iter().zip(commands.iter().cycle()) {
        assert_eq!(record["host"], "core-r1", "{record}");
        assert_eq!(record["command"], *command, "{record}");
        assert_eq!(record["ok"], true, "{record}");
        assert!(record["error"].is_null(), "{record}");
        assert!(
            record["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{record}"
        );
    }
    let output_of = |i: usize| records[i]["output"].as_str().unwrap_or_default();
    assert!(
        output_of(0).starts_with("Test cisco_ios Software") && output_of(0).contains("R1 uptime"),
        "{}",
        output_of(0)
    );
    // The secret reached the device: the session is in privileged mode.
    assert_eq!(output_of(1), "Current privilege level is 15\n");
    assert_eq!(output_of(2), "one two\n");
    let state = device.cli().expect("a CLI device");
    assert_eq!(state.shells_opened(), 1, "one session for the whole job");
    assert_eq!(state.enables(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_imitates_a_platform_and_show_groups_the_outputs_by_host() {
    let out = fleet(args(&[
        "--platform",
        "cisco_ios",
        "--hosts",
        "2",
        "--rounds",
        "1",
        "--no-chaos",
        "--commands",
        "show privilege,bogus command",
        "--show",
    ]))
    .await;
    let stdout = text(&out.stdout);
    // The bogus command fails on every device, once: a rejected command is not tried again.
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("2 commands ok, 2 failed, 0 tries retried"),
        "{stdout}"
    );
    let blocks: Vec<&str> = stdout.split("* device-").skip(1).collect();
    assert_eq!(blocks.len(), 2, "{stdout}");
    for (index, block) in blocks.iter().enumerate() {
        assert!(
            block.starts_with(&format!("00{index} ** 1 ok, 1 failed")),
            "{block}"
        );
        let privilege = block.find("vvvv show privilege ** INFO").expect(block);
        let level = block.find("Current privilege level is 15").expect(block);
        let end = block.find("^^^^ END show privilege").expect(block);
        let bogus = block.find("vvvv bogus command ** ERROR").expect(block);
        let invalid = block.find("% Invalid input").expect(block);
        assert!(
            privilege < level && level < end && end < bogus && bogus < invalid,
            "{block}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_host_runs_that_many_exec_commands_at_once_on_one_device() {
    const PER_HOST: usize = 3;
    let device = SshTestServer::start(SshTestServerConfig {
        hostname: "r1".into(),
        ..SshTestServerConfig::default()
    })
    .await
    .expect("device");
    let scratch = Scratch::new("per-host");
    let known_hosts = scratch.0.join("known_hosts");
    write_known_hosts(&known_hosts, [&device]).expect("known_hosts");
    let inventory = scratch.0.join("inventory.toml");
    std::fs::write(
        &inventory,
        format!(
            "[defaults]\nuser = \"{DEFAULT_USERNAME}\"\npassword = \"{DEFAULT_PASSWORD}\"\n\
             known_hosts = \"{}\"\nssh_config = \"none\"\n\n\
             [[hosts]]\nname = \"r1\"\nhost = \"127.0.0.1\"\nport = {}\n",
            known_hosts.display(),
            device.port()
        ),
    )
    .expect("inventory");
    // Commands that outlast the test: it stops the binary once it has seen them running.
    let commands = ["sleep 600000"; PER_HOST + 2].join(",");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(["--rounds", "1", "--command-timeout", "900", "--per-host"])
        .arg(PER_HOST.to_string())
        .arg("--commands")
        .arg(&commands)
        .arg("--inventory")
        .arg(&inventory)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the fleet binary starts");

    let mut most = 0;
    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let running = device.running_command_count();
            most = most.max(running);
            if running >= PER_HOST {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Give a command beyond the limit the chance to start, were the limit not kept.
    for _ in 0..50 {
        most = most.max(device.running_command_count());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.is_ok(),
        "never {PER_HOST} commands running at once (at most {most})"
    );
    assert_eq!(most, PER_HOST, "more commands in flight than --per-host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_platform_or_secret_is_one_line_and_exit_code_2() {
    let scratch = Scratch::new("wrong");
    let inventory = scratch.0.join("inventory.toml");
    for (defaults, host, needle) in [
        ("", "platform = \"cisco-ios\"", "`platform` \"cisco-ios\""),
        ("platform = \"\"", "", "`platform` \"\""),
        ("", "secret = \"\"", "`secret` is empty"),
        ("", "secret = 15", "`secret`"),
    ] {
        std::fs::write(
            &inventory,
            format!(
                "[defaults]\nuser = \"u\"\npassword = \"p\"\nssh_config = \"none\"\n{defaults}\n\n\
                 [[hosts]]\nname = \"r1\"\nhost = \"10.0.0.1\"\n{host}\n"
            ),
        )
        .expect("inventory");
        let out = fleet(vec!["--inventory".into(), inventory.display().to_string()]).await;
        let stderr = text(&out.stderr);
        let case = format!("{defaults}{host}");
        assert_eq!(out.status.code(), Some(2), "{case}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{case}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{case}: {needle:?} missing: {stderr}"
        );
    }
    // The lab's --platform names a platform it imitates, and is not for an inventory.
    let out = fleet(args(&["--platform", "cisco_asa"])).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr).trim().lines().count(), 1);
    let out = fleet(vec![
        "--platform".into(),
        "cisco_ios".into(),
        "--inventory".into(),
        inventory.display().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("set `platform` there"),
        "{}",
        text(&out.stderr)
    );
}
