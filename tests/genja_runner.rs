//! genja's own runner on the supervisor: `ThreadedRunnerPlugin` runs a genja task with
//! connection plugin `ssh` over a genja inventory (hosts, groups and defaults YAML, loaded by
//! genja-core) of embedded SSH devices, through `SupervisedResolver`; and session verification
//! through `replace_task_connection`.
#![cfg(all(feature = "genja", feature = "ssh", feature = "testing"))]

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use connection_supervisor::genja::{SupervisedConnection, SupervisedResolver};
use connection_supervisor::ssh::{self, HostKeyPolicy, SshOptions};
use connection_supervisor::testing::{
    DEFAULT_PASSWORD, DEFAULT_USERNAME, SshTestServer, SshTestServerConfig, write_known_hosts,
};
use connection_supervisor::{
    Backoff, ConnectionHandle, ConnectionKey, ConnectionManager, ConnectionPolicy, ConnectionState,
    EventKind, SupervisorConfig,
};
use genja::genja_plugin_manager::plugin_types::PluginRunner;
use genja::plugins::ThreadedRunnerPlugin;
use genja_core::genja_task;
use genja_core::inventory::{Host, Hosts, Inventory};
use genja_core::settings::{InventoryConfig, OptionsConfig, RunnerConfig};
use genja_core::task::{
    HostTaskResult, Task, TaskConnectionResolver, TaskDefinition, TaskError, TaskFailure,
    TaskResults, TaskRunOptions, TaskRuntimeContext, TaskSuccess,
};
use tokio::sync::Mutex;

/// `show version` on the task's connection, as a genja user writes a task.
struct ShowVersion;

#[genja_task(name = "show_version", connection_plugin_name = "ssh")]
impl ShowVersion {
    async fn start_async(
        &self,
        _host: &Host,
        context: &TaskRuntimeContext,
    ) -> Result<HostTaskResult, TaskError> {
        run_on(context, "show version", false).await
    }
}

/// A task that reports a change, so genja verifies the session afterwards.
struct ChangeSomething;

#[genja_task(
    name = "change_something",
    connection_plugin_name = "ssh",
    session_verification(max_attempts = 1, delay_ms = 0)
)]
impl ChangeSomething {
    async fn start_async(
        &self,
        _host: &Host,
        context: &TaskRuntimeContext,
    ) -> Result<HostTaskResult, TaskError> {
        run_on(context, "hostname", true).await
    }
}

async fn run_on(
    context: &TaskRuntimeContext,
    command: &str,
    changed: bool,
) -> Result<HostTaskResult, TaskError> {
    let Some(connection) = context.connection() else {
        return Ok(failed("no connection".to_string()));
    };
    let output = connection.lock().await.execute_command(command).await;
    Ok(match output {
        Ok(output) => HostTaskResult::passed(
            TaskSuccess::new()
                .with_result(serde_json::json!({ "output": output }))
                .with_changed(changed),
        ),
        Err(error) => failed(error),
    })
}

fn failed(message: String) -> HostTaskResult {
    HostTaskResult::failed(TaskFailure::new(std::io::Error::other(message)))
}

/// Embedded devices and a genja inventory of them in YAML, loaded by genja-core.
struct Lab {
    devices: Vec<SshTestServer>,
    names: Vec<String>,
    hosts: Hosts,
    inventory: Arc<Inventory>,
    dir: PathBuf,
}

impl Lab {
    async fn start(count: usize, tag: &str) -> Lab {
        let dir = std::env::temp_dir().join(format!("cs-genja-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut devices = Vec::new();
        let mut names = Vec::new();
        let mut hosts_yaml = String::new();
        for index in 0..count {
            let name = format!("router-{index:02}");
            let device = SshTestServer::start(SshTestServerConfig {
                hostname: name.clone(),
                ..SshTestServerConfig::default()
            })
            .await
            .unwrap();
            hosts_yaml.push_str(&format!(
                "{name}:\n  hostname: 127.0.0.1\n  port: {}\n  groups:\n    - routers\n",
                device.port()
            ));
            devices.push(device);
            names.push(name);
        }
        // Credentials from the defaults, the platform from the group: genja-core's own
        // inheritance decides what each host's params are.
        let groups_yaml = "routers:\n  platform: embedded\n  connection_options:\n    ssh:\n      extras:\n        keepalive: true\n";
        let defaults_yaml = format!("username: {DEFAULT_USERNAME}\npassword: {DEFAULT_PASSWORD}\n");
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let options = OptionsConfig::builder()
            .hosts_file(file("hosts.yaml", &hosts_yaml))
            .groups_file(file("groups.yaml", groups_yaml))
            .defaults_file(file("defaults.yaml", &defaults_yaml))
            .build();
        let (hosts, groups, defaults) = InventoryConfig::builder()
            .options(options)
            .build()
            .load_inventory_files()
            .unwrap();
        let mut builder = Inventory::builder().hosts(hosts.clone());
        if let Some(groups) = groups {
            builder = builder.groups(groups);
        }
        if let Some(defaults) = defaults {
            builder = builder.defaults(defaults);
        }
        write_known_hosts(&dir.join("known_hosts"), &devices).unwrap();
        Lab {
            devices,
            names,
            hosts,
            inventory: Arc::new(builder.build()),
            dir,
        }
    }

    async fn manager(&self) -> ConnectionManager {
        let options = SshOptions::default()
            .host_key_policy(HostKeyPolicy::Strict(self.dir.join("known_hosts")));
        let policy = ConnectionPolicy::default().backoff(
            Backoff::default()
                .initial(Duration::from_millis(100))
                .max(Duration::from_millis(500)),
        );
        ConnectionManager::spawn(
            SupervisorConfig::default()
                .factory(ssh::factory(options))
                .policy(policy),
        )
        .await
        .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn run(lab: &Lab, resolver: &SupervisedResolver, task: impl Task + 'static) -> TaskResults {
    let resolver: Arc<dyn TaskConnectionResolver> = Arc::new(resolver.clone());
    let runner_config = RunnerConfig::builder().worker_count(8).build();
    ThreadedRunnerPlugin
        .run_task(
            &TaskDefinition::new(task),
            &lab.hosts,
            Some(resolver),
            &runner_config,
            TaskRunOptions::new(1),
        )
        .await
        .unwrap()
}

fn assert_all_passed(results: &TaskResults, lab: &Lab) {
    for name in &lab.names {
        let result = results
            .host_result(name)
            .unwrap_or_else(|| panic!("no result for {name}"));
        assert!(result.is_passed(), "{name}: {result:?}");
    }
}

fn handle_of(connection: &Arc<Mutex<dyn genja_core::inventory::Connection>>) -> ConnectionHandle {
    let guard = connection.try_lock().unwrap();
    let any: &dyn Any = &*guard;
    any.downcast_ref::<SupervisedConnection>()
        .and_then(SupervisedConnection::handle)
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genja_s_runner_runs_over_twenty_devices_that_drop_and_come_back() {
    let lab = Lab::start(20, "runner").await;
    let manager = lab.manager().await;
    let resolver = SupervisedResolver::new(manager.clone(), lab.inventory.clone());

    let first = run(&lab, &resolver, ShowVersion).await;
    assert_all_passed(&first, &lab);
    let output = first
        .host_result("router-03")
        .unwrap()
        .success()
        .unwrap()
        .result();
    assert!(format!("{output:?}").contains("router-03"), "{output:?}");

    // Half-way, five devices go down with their sessions...
    let mut events = manager.subscribe().await.unwrap();
    let dropped: Vec<usize> = vec![1, 5, 9, 13, 17];
    for &index in &dropped {
        lab.devices[index].stop().await;
    }
    let mut down: Vec<ConnectionKey> = dropped
        .iter()
        .map(|&index| ConnectionKey::new(lab.names[index].clone(), "ssh"))
        .collect();
    while !down.is_empty() {
        let lost = events
            .wait_for(Duration::from_secs(10), |e| {
                matches!(e.kind, EventKind::Lost { .. }) && down.contains(&e.key)
            })
            .await
            .unwrap();
        down.retain(|key| *key != lost.key);
    }
    // ...the second run starts while they are down, and they come back during it.
    let second = {
        let (lab_hosts, resolver) = (lab.hosts.clone(), resolver.clone());
        tokio::spawn(async move {
            let resolver: Arc<dyn TaskConnectionResolver> = Arc::new(resolver);
            let runner_config = RunnerConfig::builder().worker_count(8).build();
            ThreadedRunnerPlugin
                .run_task(
                    &TaskDefinition::new(ShowVersion),
                    &lab_hosts,
                    Some(resolver),
                    &runner_config,
                    TaskRunOptions::new(1),
                )
                .await
        })
    };
    for &index in &dropped {
        lab.devices[index].restart().await.unwrap();
    }
    let second = second.await.unwrap().unwrap();
    assert_all_passed(&second, &lab);

    let counters = manager
        .connection_counters_for("ssh")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counters.create_calls, 20, "{counters:?}");
    assert!(counters.losses >= dropped.len(), "{counters:?}");
    assert!(counters.reconnects >= dropped.len(), "{counters:?}");
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_verification_replaces_the_connection_and_resolves_get_the_new_one() {
    let lab = Lab::start(3, "verify").await;
    let manager = lab.manager().await;
    let resolver = SupervisedResolver::new(manager.clone(), lab.inventory.clone());

    // Through genja's runner: a task that reports a change gets its session verified.
    let results = run(&lab, &resolver, ChangeSomething).await;
    assert_all_passed(&results, &lab);
    let counters = manager
        .connection_counters_for("ssh")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            counters.create_calls,
            counters.open_calls,
            counters.close_calls
        ),
        (6, 6, 3),
        "one replacement per host: {counters:?}"
    );

    // Directly: the replacement is a new instance, and resolves racing it get that one.
    let host = lab.names[0].as_str();
    let old = resolver
        .resolve_task_connection(&ShowVersion, host)
        .await
        .unwrap()
        .unwrap();
    let old = handle_of(&old);
    let replacing = {
        let (resolver, host) = (resolver.clone(), host.to_string());
        tokio::spawn(async move { resolver.replace_task_connection(&ShowVersion, &host).await })
    };
    old.wait_for_status(Duration::from_secs(5), |s| s.state != ConnectionState::Open)
        .await
        .unwrap();
    let resolves: Vec<_> = (0..5)
        .map(|_| {
            let (resolver, host) = (resolver.clone(), host.to_string());
            tokio::spawn(async move { resolver.resolve_task_connection(&ShowVersion, &host).await })
        })
        .collect();
    let new = handle_of(&replacing.await.unwrap().unwrap().unwrap());
    assert!(!new.same_connection(&old));
    for resolve in resolves {
        let got = handle_of(&resolve.await.unwrap().unwrap().unwrap());
        assert!(got.same_connection(&new), "a resolve got another instance");
    }
    let after = manager
        .connection_counters_for("ssh")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            after.create_calls - counters.create_calls,
            after.open_calls - counters.open_calls,
            after.close_calls - counters.close_calls
        ),
        (1, 1, 1)
    );
    // The genja connection the old resolve returned follows to the new session.
    assert_eq!(
        old.execute_command("hostname").await.unwrap().trim(),
        lab.names[0]
    );
    manager.shutdown().await.unwrap();
}
