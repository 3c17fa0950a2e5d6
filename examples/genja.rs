//! genja's own runner on the supervisor.
//!
//! Twelve embedded SSH devices (`connection_supervisor::testing::SshTestServer`) on loopback,
//! described by a genja inventory (hosts, groups and defaults YAML, written to a temporary
//! directory and loaded by genja-core's own loader). genja's `ThreadedRunnerPlugin` runs a
//! genja task (`show version` over connection plugin `ssh`) on every host three times,
//! through `SupervisedResolver`. Before the second run, three devices go down with their
//! sessions; they come back while that run waits for them. It prints genja's `TaskResults`
//! for each run, then the supervisor's counters and reconnects, and exits non-zero if any
//! host's task failed.
//!
//! Run with `cargo run --all-features --example genja`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use connection_supervisor::genja::SupervisedResolver;
use connection_supervisor::ssh::{self, HostKeyPolicy, SshOptions};
use connection_supervisor::testing::{
    DEFAULT_PASSWORD, DEFAULT_USERNAME, SshTestServer, SshTestServerConfig, write_known_hosts,
};
use connection_supervisor::{
    Backoff, ConnectionKey, ConnectionManager, ConnectionPolicy, EventKind, SupervisorConfig,
};
use genja::genja_plugin_manager::plugin_types::PluginRunner;
use genja::plugins::ThreadedRunnerPlugin;
use genja_core::genja_task;
use genja_core::inventory::{Host, Hosts, Inventory};
use genja_core::settings::{InventoryConfig, OptionsConfig, RunnerConfig};
use genja_core::task::{
    HostTaskResult, TaskConnectionResolver, TaskDefinition, TaskError, TaskFailure, TaskResults,
    TaskRunOptions, TaskRuntimeContext, TaskSuccess,
};

const DEVICES: usize = 12;
const DROPPED: [usize; 3] = [2, 6, 10];

/// A genja task as a genja user writes it: `show version` on the task's connection.
struct ShowVersion;

#[genja_task(name = "show_version", connection_plugin_name = "ssh")]
impl ShowVersion {
    async fn start_async(
        &self,
        _host: &Host,
        context: &TaskRuntimeContext,
    ) -> Result<HostTaskResult, TaskError> {
        let Some(connection) = context.connection() else {
            return Ok(failed("no connection".into()));
        };
        let output = connection
            .lock()
            .await
            .execute_command("show version")
            .await;
        Ok(match output {
            Ok(output) => HostTaskResult::passed(
                TaskSuccess::new().with_result(serde_json::json!({ "show version": output })),
            ),
            Err(error) => failed(error),
        })
    }
}

fn failed(message: String) -> HostTaskResult {
    HostTaskResult::failed(TaskFailure::new(std::io::Error::other(message)))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<bool, String> {
    let dir = std::env::temp_dir().join(format!("cs-genja-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let outcome = run_in(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn run_in(dir: &std::path::Path) -> Result<bool, String> {
    let mut devices = Vec::new();
    let mut names = Vec::new();
    let mut hosts_yaml = String::new();
    for index in 0..DEVICES {
        let name = format!("router-{index:02}");
        let device = SshTestServer::start(SshTestServerConfig {
            hostname: name.clone(),
            ..SshTestServerConfig::default()
        })
        .await
        .map_err(|e| format!("starting {name}: {e}"))?;
        hosts_yaml.push_str(&format!(
            "{name}:\n  hostname: 127.0.0.1\n  port: {}\n  groups:\n    - routers\n",
            device.port()
        ));
        devices.push(device);
        names.push(name);
    }
    let groups_yaml = "routers:\n  platform: embedded\n";
    let defaults_yaml = format!("username: {DEFAULT_USERNAME}\npassword: {DEFAULT_PASSWORD}\n");
    let write = |name: &str, text: &str| -> Result<String, String> {
        let path: PathBuf = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path.display().to_string())
    };
    let options = OptionsConfig::builder()
        .hosts_file(write("hosts.yaml", &hosts_yaml)?)
        .groups_file(write("groups.yaml", groups_yaml)?)
        .defaults_file(write("defaults.yaml", &defaults_yaml)?)
        .build();
    let (hosts, groups, defaults) = InventoryConfig::builder()
        .options(options)
        .build()
        .load_inventory_files()
        .map_err(|e| format!("loading the genja inventory: {e}"))?;
    let mut inventory = Inventory::builder().hosts(hosts.clone());
    if let Some(groups) = groups {
        inventory = inventory.groups(groups);
    }
    if let Some(defaults) = defaults {
        inventory = inventory.defaults(defaults);
    }
    let inventory = Arc::new(inventory.build());
    let known_hosts = dir.join("known_hosts");
    write_known_hosts(&known_hosts, &devices).map_err(|e| format!("known_hosts: {e}"))?;
    println!(
        "genja inventory: {} hosts from {}",
        inventory.hosts().len(),
        dir.display()
    );

    let options = SshOptions::default().host_key_policy(HostKeyPolicy::Strict(known_hosts));
    let policy = ConnectionPolicy::default().backoff(
        Backoff::default()
            .initial(Duration::from_millis(200))
            .max(Duration::from_secs(1)),
    );
    let manager = ConnectionManager::spawn(
        SupervisorConfig::default()
            .factory(ssh::factory(options))
            .policy(policy),
    )
    .await
    .map_err(|e| format!("starting the supervisor: {e}"))?;
    let resolver: Arc<dyn TaskConnectionResolver> =
        Arc::new(SupervisedResolver::new(manager.clone(), inventory.clone()));
    let mut events = manager.subscribe().await.map_err(|e| e.to_string())?;

    let mut all_passed = true;
    for round in 1..=3 {
        if round == 2 {
            println!("\n-- taking {} devices down", DROPPED.len());
            for index in DROPPED {
                devices[index].stop().await;
            }
            let mut down: Vec<ConnectionKey> = DROPPED
                .iter()
                .map(|&index| ConnectionKey::new(names[index].clone(), "ssh"))
                .collect();
            while !down.is_empty() {
                let lost = events
                    .wait_for(Duration::from_secs(10), |e| {
                        matches!(e.kind, EventKind::Lost { .. }) && down.contains(&e.key)
                    })
                    .await
                    .map_err(|e| format!("waiting for the drops to be noticed: {e}"))?;
                println!("   {} lost", lost.key);
                down.retain(|key| *key != lost.key);
            }
        }
        let running = {
            let (hosts, resolver) = (hosts.clone(), resolver.clone());
            tokio::spawn(async move { run_once(&hosts, resolver).await })
        };
        if round == 2 {
            println!("-- run 2 started; bringing them back");
            for index in DROPPED {
                devices[index]
                    .restart()
                    .await
                    .map_err(|e| format!("restarting {}: {e}", names[index]))?;
            }
        }
        let results = running
            .await
            .map_err(|e| format!("run {round}: {e}"))?
            .map_err(|e| format!("run {round}: {e}"))?;
        all_passed &= print_results(round, &names, &results);
    }

    let counters = manager
        .connection_counters_for("ssh")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no ssh connection was ever created")?;
    println!(
        "\nsupervisor counters (ssh): created {}, opened {}, closed {}, failed opens {}, \
         losses {}, reconnects {}",
        counters.create_calls,
        counters.open_calls,
        counters.close_calls,
        counters.failed_open_calls,
        counters.losses,
        counters.reconnects
    );
    let reconnected = counters.reconnects >= DROPPED.len();
    if !reconnected {
        println!("expected at least {} reconnects", DROPPED.len());
    }
    manager.shutdown().await.map_err(|e| e.to_string())?;
    Ok(all_passed && reconnected)
}

async fn run_once(
    hosts: &Hosts,
    resolver: Arc<dyn TaskConnectionResolver>,
) -> Result<TaskResults, genja_core::GenjaError> {
    let runner_config = RunnerConfig::builder().worker_count(8).build();
    ThreadedRunnerPlugin
        .run_task(
            &TaskDefinition::new(ShowVersion),
            hosts,
            Some(resolver),
            &runner_config,
            TaskRunOptions::new(1),
        )
        .await
}

/// Prints genja's results for one run, a line per host; whether every host passed.
fn print_results(round: usize, names: &[String], results: &TaskResults) -> bool {
    println!(
        "\n== run {round}: genja TaskResults for task '{}' ({})",
        results.task_name(),
        results.duration_display().unwrap_or_default()
    );
    let mut all_passed = true;
    for name in names {
        let Some(result) = results.host_result(name) else {
            println!("   {name:<10} no result");
            all_passed = false;
            continue;
        };
        let first_line = result
            .success()
            .and_then(|success| success.result())
            .and_then(|value| value.get("show version"))
            .and_then(|value| value.as_str())
            .and_then(|text| text.lines().next())
            .unwrap_or_default()
            .to_owned();
        if result.is_passed() {
            println!("   {name:<10} passed  {first_line}");
        } else {
            all_passed = false;
            println!("   {name:<10} FAILED  {result:?}");
        }
    }
    all_passed
}
