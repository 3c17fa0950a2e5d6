//! CLI sessions of the SSH plugin (issue 12) against the embedded server's device imitations:
//! every shipped profile, the pager, enable, error markers, a missing prompt, a wedged shell,
//! reconnects in the middle of a command list, and configuration sets. Every wait for a state
//! is a wait for an event or a bounded condition.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use connection_supervisor::ssh::cli::{self, ConfigError};
use connection_supervisor::ssh::{self, HostKeyPolicy, Platforms, SshOptions};
use connection_supervisor::testing::{
    CliDevice, CliPlatform, DEFAULT_PASSWORD, DEFAULT_SECRET, DEFAULT_USERNAME, SshTestServer,
    SshTestServerConfig, write_known_hosts,
};
use connection_supervisor::{
    CommandError, ConnectionHandle, ConnectionKey, ConnectionManager, Error, EventKind,
    EventStream, Extras, FailureKind, ResolvedConnectionParams,
};

const WAIT: Duration = Duration::from_secs(20);

const ALL: [CliPlatform; 6] = [
    CliPlatform::CiscoIos,
    CliPlatform::CiscoNxos,
    CliPlatform::CiscoXr,
    CliPlatform::AristaEos,
    CliPlatform::JuniperJunos,
    CliPlatform::LinuxShell,
];

fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cs-ssh-cli-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn device(platform: CliPlatform) -> SshTestServer {
    SshTestServer::start(SshTestServerConfig {
        hostname: "R1".into(),
        cli: Some(CliDevice::new(platform)),
        ..SshTestServerConfig::default()
    })
    .await
    .unwrap()
}

fn params(
    server: &SshTestServer,
    platform: &str,
    extras: &[(&str, serde_json::Value)],
) -> ResolvedConnectionParams {
    let mut all = Extras::new();
    all.insert("secret".into(), DEFAULT_SECRET.into());
    for (name, value) in extras {
        all.insert((*name).into(), value.clone());
    }
    ResolvedConnectionParams {
        hostname: "127.0.0.1".into(),
        port: Some(server.port()),
        username: Some(DEFAULT_USERNAME.into()),
        password: Some(DEFAULT_PASSWORD.into()),
        platform: Some(platform.into()),
        extras: Some(all),
    }
}

async fn manager(
    servers: &[&SshTestServer],
    platforms: Platforms,
) -> (ConnectionManager, EventStream) {
    let known_hosts = scratch_dir().join("known_hosts");
    write_known_hosts(&known_hosts, servers.iter().copied()).unwrap();
    let options = SshOptions::default()
        .host_key_policy(HostKeyPolicy::Strict(known_hosts))
        .platforms(platforms);
    let manager = ConnectionManager::with_connection_factory(ssh::factory(options))
        .await
        .unwrap();
    let events = manager.subscribe().await.unwrap();
    (manager, events)
}

async fn open(
    manager: &ConnectionManager,
    key: &ConnectionKey,
    params: &ResolvedConnectionParams,
) -> ConnectionHandle {
    manager.open_connection(key, params).await.unwrap().unwrap()
}

fn key(name: &str) -> ConnectionKey {
    ConnectionKey::new(name, ssh::PLUGIN_NAME)
}

/// Waits (bounded) until `condition` holds.
async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn show_version(platform: CliPlatform) -> String {
    format!(
        "Test {} Software, Version 1.0.0 (connection-supervisor SshTestServer)\nR1 uptime is 0 minutes\nModel number: TEST-CLI-1\n",
        platform.profile_name()
    )
}

/// The device's text for an unknown command, as each platform words it.
fn invalid_text(platform: CliPlatform) -> &'static str {
    match platform {
        CliPlatform::CiscoIos | CliPlatform::CiscoXr => "% Invalid input detected at '^' marker.",
        CliPlatform::CiscoNxos => "% Invalid command at '^' marker.",
        CliPlatform::AristaEos => "% Invalid input",
        CliPlatform::JuniperJunos => "syntax error, expecting <command>.",
        _ => "command not found",
    }
}

#[tokio::test]
async fn every_profile_runs_commands_on_its_device() {
    for platform in ALL {
        let server = device(platform).await;
        let (manager, _events) = manager(&[&server], Platforms::builtin()).await;
        let key = key("r1");
        let router = open(
            &manager,
            &key,
            &params(&server, platform.profile_name(), &[]),
        )
        .await;
        let name = platform.profile_name();

        if platform == CliPlatform::LinuxShell {
            assert_eq!(
                router.execute_command("echo hello  world").await.unwrap(),
                "hello  world\n"
            );
            // No error patterns for a shell: the text is the output, as exec's stderr would be.
            assert_eq!(
                router.execute_command("frobnicate").await.unwrap(),
                "bash: frobnicate: command not found\n"
            );
        } else {
            // The echo and the prompt are stripped; the banner's prompt-like line was not
            // taken for the prompt (every command would run into the read timeout).
            assert_eq!(
                router.execute_command("show version").await.unwrap(),
                show_version(platform),
                "{name}"
            );
            let output = router.run_command("show privilege").await.unwrap();
            assert_eq!(
                output.stdout, "Current privilege level is 15\n",
                "{name}: privileged"
            );
            assert_eq!(output.exit_status, None);
            // Paging was turned off: all of it, no pager.
            let config = router.execute_command("show running-config").await.unwrap();
            assert_eq!(config.lines().count(), 83, "{name}: {config}");
            assert!(
                !config.contains("More") && !config.contains("more"),
                "{name}: {config}"
            );
            match router.execute_command("show bogus").await.unwrap_err() {
                Error::Command {
                    source: CommandError::Other(text),
                    ..
                } => {
                    assert!(text.contains(invalid_text(platform)), "{name}: {text}");
                    assert!(text.contains("show bogus"), "{name}: {text}");
                }
                other => panic!("{name}: {other:?}"),
            }
            // The session is still in step after the error.
            assert_eq!(
                router.execute_command("echo still here").await.unwrap(),
                "still here\n",
                "{name}"
            );
        }
        let state = server.cli().unwrap();
        assert_eq!(state.shells_opened(), 1, "{name}: one shell per connection");
        let expected_enables = u64::from(matches!(
            platform,
            CliPlatform::CiscoIos | CliPlatform::AristaEos
        ));
        assert_eq!(state.enables(), expected_enables, "{name}");
        manager.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn without_a_secret_the_session_stays_unprivileged() {
    let server = device(CliPlatform::CiscoIos).await;
    let (manager, _events) = manager(&[&server], Platforms::builtin()).await;
    let mut params = params(&server, "ios", &[]);
    params.extras = None;
    let router = open(&manager, &key("r1"), &params).await;
    assert_eq!(
        router.execute_command("show privilege").await.unwrap(),
        "Current privilege level is 1\n"
    );
    assert_eq!(server.cli().unwrap().enables(), 0);
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_wrong_secret_fails_the_open_as_auth_without_showing_it() {
    let server = device(CliPlatform::CiscoIos).await;
    let (manager, _events) = manager(&[&server], Platforms::builtin()).await;
    let params = params(
        &server,
        "cisco_ios",
        &[("secret", "not-the-secret-42".into())],
    );
    let error = manager
        .open_connection(&key("r1"), &params)
        .await
        .unwrap_err();
    assert_eq!(error.failure_kind(), Some(FailureKind::Auth), "{error:?}");
    let shown = format!("{error} {error:?}");
    assert!(shown.contains("enable"), "{shown}");
    assert!(!shown.contains("not-the-secret-42"), "{shown}");
    assert!(!format!("{params:?}").contains("not-the-secret-42"));
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_pager_is_answered_when_paging_stays_on() {
    for platform in [CliPlatform::CiscoIos, CliPlatform::JuniperJunos] {
        let server = device(platform).await;
        // The shipped profile without its paging-off commands: the device keeps paging.
        let name = platform.profile_name();
        let mut profile = Platforms::builtin().get(name).unwrap().clone();
        profile.paging_off.clear();
        let mut platforms = Platforms::builtin();
        platforms.insert(name, profile).unwrap();
        let (manager, _events) = manager(&[&server], platforms).await;
        let router = open(&manager, &key("r1"), &params(&server, name, &[])).await;
        let config = router.execute_command("show running-config").await.unwrap();
        let mut expected = vec![
            "! test device configuration".to_owned(),
            "hostname R1".to_owned(),
        ];
        for n in 0..40 {
            expected.push(format!("interface Ethernet{n}"));
            expected.push(format!(" description port {n}"));
        }
        expected.push("end".to_owned());
        assert_eq!(config.lines().collect::<Vec<_>>(), expected, "{name}");
        assert_eq!(
            router.execute_command("show version").await.unwrap(),
            show_version(platform)
        );
        manager.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_missing_prompt_fails_with_the_last_lines_and_the_shell_recovers() {
    let server = device(CliPlatform::CiscoIos).await;
    let (manager, _events) = manager(&[&server], Platforms::builtin()).await;
    let key = key("r1");
    let params = params(&server, "cisco_ios", &[("read_timeout", 0.5.into())]);
    let router = open(&manager, &key, &params).await;
    assert_eq!(
        router.execute_command("echo before").await.unwrap(),
        "before\n"
    );
    let error = router.execute_command("hang").await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("did not come back") && text.contains("`hang`"),
        "{text}"
    );
    assert!(
        text.contains("received:\nhang"),
        "the last lines received: {text}"
    );
    assert!(text.contains("back at its prompt"), "{text}");
    // Interrupted and in step again, on the same session.
    assert_eq!(
        router.execute_command("echo after").await.unwrap(),
        "after\n"
    );
    let error = router.execute_command("echo a\necho b").await.unwrap_err();
    assert!(error.to_string().contains("one line"), "{error}");
    assert_eq!(
        router.execute_command("show privilege").await.unwrap(),
        "Current privilege level is 15\n"
    );
    assert_eq!(server.cli().unwrap().shells_opened(), 1);
    assert_eq!(
        manager
            .connection_counters_for("ssh")
            .await
            .unwrap()
            .unwrap()
            .reconnects,
        0
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_wedged_shell_is_reported_lost_and_reconnected_in_privileged_mode() {
    let server = device(CliPlatform::AristaEos).await;
    let (manager, mut events) = manager(&[&server], Platforms::builtin()).await;
    let key = key("r1");
    let params = params(&server, "arista_eos", &[("read_timeout", 0.5.into())]);
    let router = open(&manager, &key, &params).await;
    let error = router.execute_command("wedge").await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("did not come back") && text.contains("reconnected"),
        "{text}"
    );
    events
        .wait_for_key(&key, WAIT, |kind| {
            matches!(kind, EventKind::Reconnected { .. })
        })
        .await
        .unwrap();
    assert_eq!(
        router.execute_command("show privilege").await.unwrap(),
        "Current privilege level is 15\n"
    );
    let state = server.cli().unwrap();
    assert_eq!((state.shells_opened(), state.enables()), (2, 2));
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_reconnect_in_the_middle_of_a_command_list_comes_back_privileged() {
    let server = device(CliPlatform::CiscoIos).await;
    let (manager, mut events) = manager(&[&server], Platforms::builtin()).await;
    let key = key("r1");
    let router = open(&manager, &key, &params(&server, "cisco_ios", &[])).await;
    for n in 0..3 {
        assert_eq!(
            router.execute_command(&format!("echo {n}")).await.unwrap(),
            format!("{n}\n")
        );
    }
    // A command in flight when the device drops: it fails, and is not re-run.
    let state = server.cli().unwrap();
    let received = state.commands_received();
    let in_flight = tokio::spawn({
        let router = router.clone();
        async move { router.execute_command("sleep 10000").await }
    });
    until("the sleep to reach the device", || {
        state.commands_received() > received
    })
    .await;
    server.drop_all_sessions().await;
    let error = in_flight.await.unwrap().unwrap_err();
    assert!(error.to_string().contains("lost"), "{error}");
    // The rest of the list waits for the reconnect and runs in privileged mode again.
    for n in 3..6 {
        assert_eq!(
            router.execute_command(&format!("echo {n}")).await.unwrap(),
            format!("{n}\n")
        );
    }
    assert_eq!(
        router.execute_command("show privilege").await.unwrap(),
        "Current privilege level is 15\n"
    );
    events
        .wait_for_key(&key, WAIT, |kind| {
            matches!(kind, EventKind::Reconnected { .. })
        })
        .await
        .unwrap();
    assert_eq!((state.shells_opened(), state.enables()), (2, 2));
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn commands_from_many_callers_take_turns_in_the_one_shell() {
    let server = device(CliPlatform::CiscoNxos).await;
    let (manager, _events) = manager(&[&server], Platforms::builtin()).await;
    let router = open(&manager, &key("r1"), &params(&server, "nxos", &[])).await;
    let runs = (0..20).map(|n| {
        let router = router.clone();
        async move { (n, router.execute_command(&format!("echo caller {n}")).await) }
    });
    for (n, output) in futures::future::join_all(runs).await {
        assert_eq!(output.unwrap(), format!("caller {n}\n"));
    }
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn config_sets_stop_at_a_rejected_line_and_commit_where_needed() {
    // IOS: lines apply one by one; the set stops at the bad line, which is reported.
    let ios = device(CliPlatform::CiscoIos).await;
    let xr = device(CliPlatform::CiscoXr).await;
    let junos = device(CliPlatform::JuniperJunos).await;
    let (manager, _events) = manager(&[&ios, &xr, &junos], Platforms::builtin()).await;

    let router = open(&manager, &key("ios"), &params(&ios, "cisco_ios", &[])).await;
    let lines = [
        "interface Ethernet1",
        "description uplink",
        "bogus line",
        "ntp server 10.0.0.9",
    ];
    match cli::send_config(&router, lines).await.unwrap_err() {
        ConfigError::Rejected {
            number,
            line,
            output,
            ..
        } => {
            assert_eq!((number, line.as_str()), (3, "bogus line"));
            assert!(output.contains("% Invalid input"), "{output}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ios.cli().unwrap().running_config(),
        ["interface Ethernet1", " description uplink"]
    );
    // Out of configuration mode again: an exec command works.
    assert_eq!(
        router.execute_command("show privilege").await.unwrap(),
        "Current privilege level is 15\n"
    );
    cli::send_config(&router, ["ntp server 10.0.0.9"])
        .await
        .unwrap();
    assert!(
        ios.cli()
            .unwrap()
            .running_config()
            .contains(&"ntp server 10.0.0.9".to_owned())
    );

    // IOS-XR: a candidate, committed; a failed commit and a rejected line apply nothing.
    let router = open(&manager, &key("xr"), &params(&xr, "cisco_xr", &[])).await;
    match cli::send_config(&router, ["interface Gi0/0/0/1", "description commit-fail"])
        .await
        .unwrap_err()
    {
        ConfigError::Commit { output, .. } => {
            assert!(output.contains("Failed to commit"), "{output}")
        }
        other => panic!("{other:?}"),
    }
    let error = cli::send_config(&router, ["ntp server 10.0.0.1", "frobnicate"])
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConfigError::Rejected { number: 2, .. }),
        "{error:?}"
    );
    assert!(xr.cli().unwrap().running_config().is_empty());
    cli::send_config(&router, ["interface Gi0/0/0/1", "description core"])
        .await
        .unwrap();
    assert_eq!(
        xr.cli().unwrap().running_config(),
        ["interface Gi0/0/0/1", " description core"]
    );
    assert_eq!(
        router.execute_command("show privilege").await.unwrap(),
        "Current privilege level is 15\n"
    );

    // Junos: `set` lines, committed ("commit complete" required), rolled back on failure.
    let router = open(&manager, &key("junos"), &params(&junos, "junos", &[])).await;
    let error = cli::send_config(&router, ["set system ntp server 10.0.0.1", "sett typo"])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ConfigError::Rejected { number: 2, output, .. } if output.contains("syntax error")),
        "{error:?}"
    );
    let output = cli::send_config(&router, ["set system ntp server 10.0.0.1"])
        .await
        .unwrap();
    assert!(output.contains("commit complete"), "{output}");
    assert_eq!(
        junos.cli().unwrap().running_config(),
        ["set system ntp server 10.0.0.1"]
    );
    assert_eq!(
        router.execute_command("show version").await.unwrap(),
        show_version(CliPlatform::JuniperJunos)
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn exec_platforms_and_unknown_platforms_keep_exec_channels() {
    let server = device(CliPlatform::CiscoIos).await;
    let (manager, _events) = manager(&[&server], Platforms::builtin()).await;
    for (name, platform) in [("a", "linux"), ("b", "no-such-platform")] {
        let router = open(&manager, &key(name), &params(&server, platform, &[])).await;
        let output = router.run_command("exit 3").await.unwrap();
        assert_eq!(
            output.exit_status,
            Some(3),
            "{platform}: exec reports exit statuses"
        );
        let error = cli::send_config(&router, ["ntp server 10.0.0.1"])
            .await
            .unwrap_err();
        assert!(matches!(error, ConfigError::NotCli { .. }), "{error:?}");
    }
    assert_eq!(server.cli().unwrap().shells_opened(), 0);
    manager.shutdown().await.unwrap();
}

/// Sessions dropped at random while several callers run command lists on several devices:
/// every command either returns its own output or fails (lost, or timed out waiting for the
/// reconnect), never another command's output, and every device ends up privileged again.
#[tokio::test]
async fn under_chaos_outputs_never_cross_and_sessions_come_back_privileged() {
    const DEVICES: usize = 3;
    const CALLERS: usize = 3;
    /// Each caller's commands run until the chaos is over, at least this many.
    const AT_LEAST: usize = 20;
    let mut servers = Vec::new();
    for _ in 0..DEVICES {
        servers.push(device(CliPlatform::CiscoIos).await);
    }
    let refs: Vec<&SshTestServer> = servers.iter().collect();
    let (manager, _events) = manager(&refs, Platforms::builtin()).await;
    let mut routers = Vec::new();
    for (n, server) in servers.iter().enumerate() {
        let params = params(server, "cisco_ios", &[("read_timeout", 2.0.into())]);
        routers.push(open(&manager, &key(&format!("r{n}")), &params).await);
    }
    let finished = std::sync::Arc::new(AtomicUsize::new(0));
    // Callers keep going until the drops are done, so every drop lands among running commands
    // however fast or slow the machine is.
    let chaos_over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut work = tokio::task::JoinSet::new();
    for (d, router) in routers.iter().enumerate() {
        for c in 0..CALLERS {
            let router = router.clone();
            let (finished, chaos_over) = (finished.clone(), chaos_over.clone());
            work.spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                for n in 0.. {
                    if n >= AT_LEAST && chaos_over.load(Ordering::SeqCst) {
                        break;
                    }
                    let text = format!("d{d} c{c} n{n}");
                    match router
                        .execute_command_within(&format!("echo {text}"), Duration::from_secs(5))
                        .await
                    {
                        Ok(output) => {
                            assert_eq!(output, format!("{text}\n"), "an output crossed over");
                            ok += 1;
                        }
                        Err(error) => {
                            let shown = error.to_string();
                            assert!(
                                shown.contains("lost") || shown.contains("timed out"),
                                "{text}: {shown}"
                            );
                            failed += 1;
                        }
                    }
                }
                finished.fetch_add(1, Ordering::SeqCst);
                (ok, failed)
            });
        }
    }
    // Drop every device's sessions a few times while the callers run, each drop after the
    // device has taken a few more commands.
    for round in 0..4 {
        for server in &servers {
            let state = server.cli().unwrap();
            let seen = state.commands_received();
            until(&format!("more commands (round {round})"), || {
                state.commands_received() >= seen + 5
            })
            .await;
            server.drop_all_sessions().await;
        }
    }
    chaos_over.store(true, Ordering::SeqCst);
    let mut total_ok = 0;
    while let Some(result) = work.join_next().await {
        let (ok, _failed) = result.unwrap();
        total_ok += ok;
    }
    assert!(total_ok > 0);
    for (server, router) in servers.iter().zip(&routers) {
        assert_eq!(
            router.execute_command("show privilege").await.unwrap(),
            "Current privilege level is 15\n"
        );
        let state = server.cli().unwrap();
        assert_eq!(
            state.enables(),
            state.shells_opened(),
            "enable after every login"
        );
    }
    manager.shutdown().await.unwrap();
}
