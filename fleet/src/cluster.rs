//! `fleet node` and `fleet --cluster` (feature `cluster`): the fleet's keys sharded across
//! nodes with `connection_supervisor::cluster`.
//!
//! A node loads its own inventory (credentials stay on it), runs its own supervisor and owns
//! the keys rendezvous hashing gives it. `--cluster ADDR` joins the node at ADDR as a client
//! (it owns nothing) and sends every command there; the node routes it to the key's owner.
//! The client reads the inventory only for the host names.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use connection_supervisor::cluster::{
    ClusterError, ClusterEvent, ClusterNode, Cookie, FailureKind, NodeConfig,
};
use connection_supervisor::ssh::{self, HostKeyPolicy, SshOptions};
use connection_supervisor::{
    Backoff, ConnectionKey, ConnectionManager, ConnectionPolicy, ConnectionState,
    ResolvedConnectionParams, SupervisorConfig,
};
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::inventory::{Target, load_inventory};
use crate::results::{Tally, Try, print_report, run_with_retries};
use crate::{Cli, genja_inventory};

/// `fleet --cluster ADDR --cookie-file PATH`, flattened into the fleet's own flags.
#[derive(clap::Args, Debug)]
pub(crate) struct ClusterArgs {
    /// Run the job through the cluster node at ADDR (see `fleet node --help`); needs
    /// --cookie-file and --inventory (host names only: the nodes hold the credentials).
    #[arg(long, value_name = "ADDR", requires = "cookie_file")]
    pub(crate) cluster: Option<SocketAddr>,
    /// The cluster's cookie, with --cluster.
    #[arg(long, value_name = "PATH")]
    pub(crate) cookie_file: Option<PathBuf>,
}

/// `fleet node`: starts a node and runs until killed.
#[derive(Parser, Debug)]
#[command(
    name = "fleet node",
    about = "Start a cluster node owning a share of the inventory's hosts"
)]
struct NodeArgs {
    /// Address to listen on for other nodes and clients (a fixed port).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// File holding the cluster's cookie (its whole content; never printed).
    #[arg(long, value_name = "PATH")]
    cookie_file: PathBuf,
    /// A node to join (repeatable); the others are found through it.
    #[arg(long, value_name = "ADDR")]
    join: Vec<SocketAddr>,
    /// This node's hosts and credentials (TOML, or genja/Nornir YAML).
    #[arg(long, value_name = "FILE")]
    inventory: PathBuf,
    /// The node's name, stable across restarts [default: the listen address].
    #[arg(long)]
    name: Option<String>,
    /// Seconds for TCP connect, SSH banner and key exchange together.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    connect_timeout: f64,
}

/// Hosts and SSH settings from an inventory file of either kind.
fn load(
    path: &std::path::Path,
    cli_groups: Option<&std::path::Path>,
    cli_defaults: Option<&std::path::Path>,
) -> Result<(Vec<Target>, HostKeyPolicy, Option<ssh::SshConfigFile>), String> {
    match genja_inventory::load(path, cli_groups, cli_defaults)? {
        Some((hosts, policy)) => Ok((
            hosts
                .into_iter()
                .map(|(key, params)| Target { key, params })
                .collect(),
            policy,
            None,
        )),
        None => {
            let loaded = load_inventory(path)?;
            Ok((loaded.targets, loaded.host_keys, loaded.ssh_config))
        }
    }
}

/// Runs `fleet node ARGS` (the arguments after `node`).
pub(crate) fn node_main(args: impl Iterator<Item = String>) -> ExitCode {
    let args = match NodeArgs::try_parse_from(args) {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("fleet node: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_node(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fleet node: {error}");
            ExitCode::from(2)
        }
    }
}

async fn run_node(args: NodeArgs) -> Result<(), String> {
    let cookie = Cookie::from_file(&args.cookie_file).map_err(|e| e.to_string())?;
    let (targets, host_keys, ssh_config) = load(&args.inventory, None, None)?;
    let policy = ConnectionPolicy::default().backoff(
        Backoff::default()
            .initial(Duration::from_millis(250))
            .max(Duration::from_secs(2)),
    );
    let mut options = SshOptions::default()
        .host_key_policy(host_keys)
        .connect_timeout(Duration::from_secs_f64(args.connect_timeout));
    options.ssh_config = ssh_config;
    for target in &targets {
        options = options.jump_host(target.key.hostname.clone(), target.params.clone());
    }
    let (factory, link) = ssh::factory_with_link(options);
    let manager =
        ConnectionManager::spawn(SupervisorConfig::default().factory(factory).policy(policy))
            .await
            .map_err(|e| format!("starting the supervisor: {e}"))?;
    link.bind(&manager);
    let keys: Vec<ConnectionKey> = targets.iter().map(|t| t.key.clone()).collect();
    let params: HashMap<ConnectionKey, ResolvedConnectionParams> = targets
        .into_iter()
        .map(|target| (target.key, target.params))
        .collect();
    let resolver = Arc::new(move |key: &ConnectionKey| params.get(key).cloned());
    let name = args.name.unwrap_or_else(|| args.listen.to_string());
    let mut config = NodeConfig::member(name, args.listen, cookie);
    config.join = args.join;
    config.takeover_keys = keys;
    let node = ClusterNode::start(config, Some(manager), Some(resolver))
        .await
        .map_err(|e| e.to_string())?;
    let mut events = node.events();
    println!("node {} listening on {}", node.name(), args.listen);
    println!("members {}", node.members().join(","));
    loop {
        match events.recv().await {
            Ok(event) => {
                match event {
                    ClusterEvent::PeerUp { name } => println!("peer up {name}"),
                    ClusterEvent::PeerDown { name } => println!("peer down {name}"),
                    ClusterEvent::TookOver {
                        from,
                        keys,
                        failed,
                        elapsed,
                    } => println!(
                        "took over {keys} keys of {} in {:.1} ms ({failed} failed)",
                        from.join(","),
                        elapsed.as_secs_f64() * 1e3
                    ),
                    ClusterEvent::Refused { peer_addr } => {
                        println!(
                            "refused a session from {peer_addr} (wrong cookie, or not a node of this cluster)"
                        )
                    }
                    _ => {}
                }
                println!("members {}", node.members().join(","));
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// Runs the job of `cli` through the cluster node at `entry`: the report and the exit code are
/// those of a local run.
pub(crate) async fn run_job(
    cli: &Cli,
    commands: Arc<[String]>,
    entry: SocketAddr,
) -> Result<bool, String> {
    let cookie_file = cli
        .cluster
        .cookie_file
        .as_ref()
        .ok_or("--cluster needs --cookie-file")?;
    let cookie = Cookie::from_file(cookie_file).map_err(|e| e.to_string())?;
    let inventory = cli.inventory.as_ref().ok_or(
        "--cluster needs --inventory (for the host names; the nodes hold the credentials)",
    )?;
    let (targets, _, _) = load(inventory, cli.groups.as_deref(), cli.defaults.as_deref())?;
    let targets: Vec<Arc<Target>> = targets.into_iter().map(Arc::new).collect();
    // Any free port: members may connect back to it, but nothing depends on them doing so.
    let listen = std::net::TcpListener::bind((entry.ip(), 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("a local port for the cluster client: {e}"))?;
    let name = format!("fleet-{}", std::process::id());
    let config = NodeConfig::client(name, listen, cookie, entry);
    let node = Arc::new(
        ClusterNode::start(config, None, None)
            .await
            .map_err(|e| e.to_string())?,
    );
    let budget = Duration::from_secs_f64(cli.command_timeout);
    println!(
        "{} hosts x {} commands x {} rounds, {} in flight at most, through the cluster at {entry}",
        targets.len(),
        commands.len(),
        cli.rounds,
        cli.concurrency
    );
    let start = Instant::now();
    let limit = Arc::new(Semaphore::new(cli.concurrency as usize));
    let keep = cli.output.is_some() || cli.show;
    let workers: Vec<_> = targets
        .iter()
        .map(|target| {
            let (node, limit, target, commands) = (
                node.clone(),
                limit.clone(),
                target.clone(),
                commands.clone(),
            );
            let (rounds, per_host) = (cli.rounds, cli.per_host as usize);
            tokio::spawn(async move {
                let list: Vec<String> =
                    (0..rounds).flat_map(|_| commands.iter().cloned()).collect();
                let mut tally = Tally::default();
                let mut results = futures::stream::iter(list)
                    .map(|command| {
                        let (node, limit, key) = (node.clone(), limit.clone(), target.key.clone());
                        async move {
                            run_with_retries(command, &limit, keep, |command| {
                                let (node, key) = (node.clone(), key.clone());
                                async move { try_command(&node, &key, &command, budget).await }
                            })
                            .await
                        }
                    })
                    .buffered(per_host);
                while let Some(Some((record, failed_tries))) = results.next().await {
                    tally.failed_tries += failed_tries;
                    match &record.error {
                        None => {
                            tally.ok += 1;
                            tally.latencies.push(record.duration);
                        }
                        Some(error) => {
                            tally.gave_up += 1;
                            tally.last_error = Some(format!("`{}`: {error}", record.command));
                        }
                    }
                    tally.records.push(record);
                }
                tally
            })
        })
        .collect();
    let mut tallies = Vec::with_capacity(workers.len());
    for worker in workers {
        tallies.push(worker.await.map_err(|e| format!("a worker failed: {e}"))?);
    }
    eprintln!("done in {:.2?}", start.elapsed());
    let mut states = Vec::with_capacity(targets.len());
    for target in &targets {
        // Open-if-not-alive on the owner: a key taken over after its last command is
        // opening or open there; one that cannot be opened is reported closed.
        let state = match node.open(&target.key, budget).await {
            Ok(()) => ConnectionState::Open,
            Err(_) => ConnectionState::Closed,
        };
        states.push(state);
    }
    let by_host = || {
        targets
            .iter()
            .zip(&tallies)
            .map(|(target, tally)| (target.key.hostname.as_str(), tally.records.as_slice()))
    };
    if cli.show {
        println!();
        crate::results::show(by_host());
    }
    if let Some(path) = &cli.output {
        crate::results::write_json_lines(path, by_host())?;
    }
    print_report(&targets, &mut tallies, &states, &HashMap::new(), None);
    let members = node.member_counters(budget).await;
    for (member, c) in &members {
        println!(
            "cluster[{member}]: open {} received {} served {} forwarded {} waited {} released {} refused {}",
            c.open_keys,
            c.received,
            c.served_locally,
            c.forwarded,
            c.waited_for_owner,
            c.released,
            c.refused
        );
    }
    let all_open = states.iter().all(|s| *s == ConnectionState::Open);
    let all_ok = tallies.iter().all(|t| t.gave_up == 0);
    if !all_open {
        println!("FAIL: not every device ended up open");
    }
    if !all_ok {
        println!("FAIL: some commands never succeeded");
    }
    if let Ok(node) = Arc::try_unwrap(node) {
        node.shutdown().await;
    }
    Ok(all_open && all_ok)
}

/// One try of `command` on `key` through the cluster (the node already waits for a new
/// owner within the budget).
async fn try_command(
    node: &ClusterNode,
    key: &ConnectionKey,
    command: &str,
    budget: Duration,
) -> Try {
    match node.run_command(key, command, budget).await {
        Ok(output) => Try::Ran(output),
        Err(
            error @ ClusterError::Request {
                kind: FailureKind::Command | FailureKind::UnknownKey,
                ..
            },
        ) => Try::Failed(error.to_string()),
        Err(error) => Try::Again(error.to_string()),
    }
}
