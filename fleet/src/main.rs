//! `fleet`: the job connection-supervisor is for, end to end. Runs commands on a fleet of
//! SSH devices through the supervisor, survives devices going away half-way, and reports what
//! happened.
//!
//! ```text
//! cargo run --release -p fleet                      # 50 embedded devices, with chaos
//! cargo run --release -p fleet -- --hosts 200 --concurrency 64
//! cargo run --release -p fleet -- --no-chaos --commands "show version,hostname"
//! cargo run --release -p fleet -- --inventory fleet/inventory.sample.toml
//! cargo run --release -p fleet -- --platform cisco_ios --show --output results.jsonl
//! cargo install --locked --path fleet               # then: fleet --help
//! ```
//!
//! Without `--inventory` it starts `--hosts` embedded SSH devices
//! (`connection_supervisor::testing::SshTestServer`) on loopback, each with its own host key,
//! writes their keys to a temporary known_hosts file and checks them strictly. Every device runs
//! `--commands` for `--rounds` rounds, at most `--concurrency` commands in flight across the
//! fleet, and at most `--per-host` on one device. With `--platform` the devices imitate that
//! platform's command line (prompt, pager, `enable` behind the lab's secret), and the commands
//! run in one CLI session per device, one at a time. Half-way through, a tenth of the devices (at least two) go down with their sessions
//! and come back on the same port a moment later: the live lines show the losses, the backoff
//! and the reconnects the supervisor does on its own. A command that fails because its session
//! died under it is tried again (it then waits, bounded, for the reconnect).
//!
//! `--output FILE` writes one JSON object per command result (JSON Lines), `--show` prints the
//! outputs grouped by host, as Nornir's `print_result` does.
//!
//! The exit code is 0 only when every device ends up open and every command succeeded in the
//! end; 1 otherwise; 2 when the job could not run at all (bad flags, a bad inventory file, a
//! device that would not start), with one line on stderr saying why.

#[cfg(feature = "cluster")]
mod cluster;
mod genja_inventory;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use connection_supervisor::ssh::cli::SessionKind;
use connection_supervisor::ssh::{self, HostKeyPolicy, PLUGIN_NAME, Platforms, SshOptions};
use connection_supervisor::{
    Backoff, CommandError, ConnectionHandle, ConnectionKey, ConnectionManager, ConnectionPolicy,
    ConnectionState, Error, EventKind, EventStream, SupervisorConfig, Timeouts,
};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{Semaphore, mpsc};

mod inventory;
mod lab;
mod results;

use inventory::{Target, load_inventory};
use lab::{Lab, LabPlatform};
use results::{Record, Tally, Try, print_report, run_with_retries};

/// What an open is given beyond the connect timeout, for authentication.
const AUTH_ALLOWANCE: Duration = Duration::from_secs(20);
/// How long the chaos keeps devices down.
pub(crate) const OUTAGE: Duration = Duration::from_millis(1500);

#[derive(Parser, Debug)]
#[command(about = "Run commands on a fleet of SSH devices through the connection supervisor")]
struct Cli {
    /// Embedded devices to start (ignored with --inventory).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=2000))]
    hosts: u32,
    /// Commands to run on every device, comma-separated [default: show version,hostname,echo
    /// fleet-check; with --platform: show version,show privilege,echo fleet-check].
    #[arg(long, value_delimiter = ',')]
    commands: Option<Vec<String>>,
    /// Make the embedded devices imitate this platform's command line (with the lab's enable
    /// secret), and run the commands in a CLI session with that platform profile (not with
    /// --inventory: set `platform` there). --latency-ms does not apply to CLI sessions.
    #[arg(long, value_enum, value_name = "NAME")]
    platform: Option<LabPlatform>,
    /// Commands in flight at once on one device (exec channels, further bounded by the SSH
    /// plugin's 8 channels per connection). A CLI session (a `platform` with a shell profile)
    /// runs its commands one at a time whatever this says.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    per_host: u32,
    /// Write one JSON object per command result to FILE (JSON Lines): host, command, ok,
    /// output, error, duration_ms.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Print every device's outputs grouped by device, as Nornir's print_result does.
    #[arg(long)]
    show: bool,
    /// Times each device runs the whole command list.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    rounds: u32,
    /// Commands in flight at once across the fleet.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// Don't take devices down half-way.
    #[arg(long)]
    no_chaos: bool,
    /// Latency each embedded device adds to every command, in milliseconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    latency_ms: u64,
    /// Run against the real hosts listed in this TOML file instead of embedded devices
    /// (see fleet/inventory.sample.toml), or in a genja/Nornir hosts YAML file or directory.
    /// Chaos is off: we cannot take them down.
    #[arg(long, value_name = "FILE")]
    inventory: Option<PathBuf>,
    /// Seconds a command may take (also the bound on waiting for a reconnect to run it).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = positive_seconds)]
    command_timeout: f64,
    /// Seconds for TCP connect, SSH banner and key exchange together, unless the inventory or
    /// the ssh config sets `connect_timeout` / `ConnectTimeout` for a host.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = positive_seconds)]
    connect_timeout: f64,
    /// genja/Nornir groups file, with a YAML --inventory.
    #[arg(long, value_name = "FILE")]
    groups: Option<PathBuf>,
    /// genja/Nornir defaults file, with a YAML --inventory.
    #[arg(long, value_name = "FILE")]
    defaults: Option<PathBuf>,
    /// Serve the supervisor's metrics in Prometheus' text format on http://ADDR/metrics for
    /// the whole run (e.g. 127.0.0.1:9898).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    #[cfg(feature = "cluster")]
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
}

/// Whether the plugin runs `target`'s commands in a shell session, one at a time.
fn is_cli(target: &Target) -> bool {
    target.params.platform.as_deref().is_some_and(|name| {
        Platforms::builtin()
            .get(name)
            .is_some_and(|profile| profile.session == SessionKind::Shell)
    })
}

/// The open timeout: the default 30 s, or longer when a connect timeout leaves less than
/// [`AUTH_ALLOWANCE`] of it for authentication, so the stage's own message is what a user sees.
fn open_timeout(cli_connect_timeout: f64, targets: &[Arc<Target>]) -> Duration {
    let longest = targets
        .iter()
        .filter_map(|target| {
            target
                .params
                .extras
                .as_ref()?
                .get("connect_timeout")?
                .as_f64()
        })
        .fold(cli_connect_timeout, f64::max);
    Timeouts::default()
        .open
        .max(Duration::from_secs_f64(longest) + AUTH_ALLOWANCE)
}

/// A number of seconds above 0, at most a year.
fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds <= 86_400.0 * 365.0 => Ok(seconds),
        _ => Err(format!(
            "{text:?} is not a number of seconds above 0 (at most a year)"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// The fleet

/// How a host's work is run.
#[derive(Clone)]
struct Job {
    commands: Arc<[String]>,
    rounds: u32,
    /// Commands in flight at once on one host.
    per_host: usize,
    /// Keep the outputs, for `--output` and `--show`.
    keep_output: bool,
}

/// Runs every round of `commands` on one host, up to `per_host` at once (one at a time on a
/// CLI session), each holding a permit of the fleet-wide `limit` while in flight.
async fn work_on(
    manager: ConnectionManager,
    target: Arc<Target>,
    job: Job,
    limit: Arc<Semaphore>,
    done: mpsc::UnboundedSender<()>,
) -> Tally {
    let mut tally = Tally::default();
    let list: Vec<String> = (0..job.rounds)
        .flat_map(|_| job.commands.iter().cloned())
        .collect();
    let handle = match open(&manager, &target).await {
        Ok(handle) => handle,
        Err(error) => {
            let error = error.to_string();
            for command in list {
                tally.gave_up += 1;
                tally.records.push(Record {
                    command,
                    output: None,
                    error: Some(format!("open failed: {error}")),
                    duration: Duration::ZERO,
                });
                let _ = done.send(());
            }
            tally.open_error = Some(error);
            return tally;
        }
    };
    // A shell session queues what it is given: more in flight would only count the queueing
    // in each command's duration.
    let per_host = if is_cli(&target) { 1 } else { job.per_host };
    let keep_output = job.keep_output;
    let mut results = futures::stream::iter(list)
        .map(|command| {
            let (handle, limit) = (handle.clone(), limit.clone());
            async move {
                run_with_retries(command, &limit, keep_output, |command| {
                    let handle = handle.clone();
                    async move { try_command(&handle, &command).await }
                })
                .await
            }
        })
        .buffered(per_host);
    while let Some(outcome) = results.next().await {
        let Some((record, failed_tries)) = outcome else {
            return tally;
        };
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
        let _ = done.send(());
    }
    tally
}

/// One try of `command` on `handle`.
async fn try_command(handle: &ConnectionHandle, command: &str) -> Try {
    match handle.execute_command(command).await {
        Ok(output) => Try::Ran(output),
        // A command that ran and failed fails the same way again: no retry. `Other` is also
        // what a CLI session says of a command the device rejected, or one whose prompt did
        // not come back (running it again would wait as long again).
        Err(
            error @ Error::Command {
                source: CommandError::ExitStatus { .. } | CommandError::Other(_),
                ..
            },
        ) => Try::Failed(error.to_string()),
        // The session died under it, or the reconnect is not done yet: the next try waits
        // for the reconnect (bounded by the request timeout).
        Err(error) => Try::Again(error.to_string()),
    }
}

async fn open(manager: &ConnectionManager, target: &Target) -> Result<ConnectionHandle, Error> {
    manager
        .open_connection(&target.key, &target.params)
        .await?
        .ok_or_else(|| Error::InvalidConfig(format!("no plugin serves {}", target.key)))
}

/// Prints the lifecycle events worth a line and counts reconnects per host, until the
/// supervisor shuts down.
async fn watch(
    mut events: EventStream,
    bar: ProgressBar,
    start: Instant,
) -> HashMap<ConnectionKey, u32> {
    let mut reconnects = HashMap::new();
    while let Some(event) = events.next().await {
        let what = match &event.kind {
            EventKind::Lost { reason } => format!("lost ({reason})"),
            EventKind::Reconnecting { attempt, delay } => {
                format!("reconnect attempt {attempt} in {delay:.0?}")
            }
            EventKind::OpenFailed { failure, attempt } => {
                format!("attempt {attempt} failed: {}", failure.message)
            }
            EventKind::Reconnected { attempts } => {
                *reconnects.entry(event.key.clone()).or_insert(0) += 1;
                format!("reconnected after {attempts} attempt(s)")
            }
            EventKind::GaveUp { failure } => format!("gave up: {}", failure.message),
            EventKind::Restarted { reason, .. } => format!("actor restarted: {reason}"),
            EventKind::Quarantined { duration, .. } => format!("quarantined for {duration:?}"),
            _ => continue,
        };
        let line = format!(
            "{:>7.2}s  {:<12} {what}",
            start.elapsed().as_secs_f64(),
            event.key.hostname
        );
        bar.suspend(|| println!("{line}"));
    }
    reconnects
}

async fn run(cli: Cli) -> Result<bool, String> {
    if cli.platform.is_some() && cli.inventory.is_some() {
        return Err(
            "--platform is for the embedded devices: with --inventory, set `platform` there".into(),
        );
    }
    let default_commands = match cli.platform {
        Some(_) => "show version,show privilege,echo fleet-check",
        None => "show version,hostname,echo fleet-check",
    };
    let given = cli
        .commands
        .clone()
        .unwrap_or_else(|| default_commands.split(',').map(str::to_owned).collect());
    let commands: Arc<[String]> = given
        .iter()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .collect::<Vec<_>>()
        .into();
    if commands.is_empty() {
        return Err("--commands: no command given".into());
    }
    #[cfg(feature = "cluster")]
    if let Some(entry) = cli.cluster.cluster {
        return cluster::run_job(&cli, commands, entry).await;
    }

    let (lab, targets, host_keys, ssh_config) = match &cli.inventory {
        Some(path) => {
            let (groups, defaults) = (cli.groups.as_deref(), cli.defaults.as_deref());
            match genja_inventory::load(path, groups, defaults)? {
                // A genja/Nornir inventory carries its SSH settings in connection_options.
                Some((hosts, policy)) => {
                    let targets = hosts
                        .into_iter()
                        .map(|(key, params)| Target { key, params });
                    (None, targets.collect(), policy, None)
                }
                None => {
                    let loaded = load_inventory(path)?;
                    (None, loaded.targets, loaded.host_keys, loaded.ssh_config)
                }
            }
        }
        None => {
            let (lab, targets) = Lab::start(
                cli.hosts,
                Duration::from_millis(cli.latency_ms),
                cli.platform,
            )
            .await?;
            let host_keys = HostKeyPolicy::Strict(lab.known_hosts());
            // The lab's devices are ours: no ssh config of the user's applies to them.
            (Some(lab), targets, host_keys, None)
        }
    };
    let chaos = lab.as_ref().filter(|_| !cli.no_chaos);
    let targets: Vec<Arc<Target>> = targets.into_iter().map(Arc::new).collect();

    // Quick first retries so the demo shows the backoff within its outage.
    let policy = ConnectionPolicy::default()
        .backoff(
            Backoff::default()
                .initial(Duration::from_millis(250))
                .max(Duration::from_secs(2)),
        )
        .timeouts(
            Timeouts::default()
                .request(Duration::from_secs_f64(cli.command_timeout))
                .open(open_timeout(cli.connect_timeout, &targets)),
        );
    let mut options = SshOptions::default()
        .host_key_policy(host_keys)
        .connect_timeout(Duration::from_secs_f64(cli.connect_timeout));
    options.ssh_config = ssh_config;
    // Every entry can be another's `jump`: as a jump host it is the same supervised
    // connection (same key) as the entry itself, so its session is shared.
    for target in &targets {
        options = options.jump_host(target.key.hostname.clone(), target.params.clone());
    }
    let (factory, link) = ssh::factory_with_link(options);
    let config = SupervisorConfig::default().factory(factory).policy(policy);
    // Before the supervisor: its series are registered with the recorder installed then.
    if let Some(addr) = cli.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| format!("--metrics {addr}: {e}"))?;
        eprintln!("metrics: http://{addr}/metrics");
    }
    let manager = ConnectionManager::spawn(config)
        .await
        .map_err(|e| format!("starting the supervisor: {e}"))?;
    link.bind(&manager);
    let events = manager
        .subscribe()
        .await
        .map_err(|e| format!("subscribing to events: {e}"))?;

    let total = targets.len() as u64 * commands.len() as u64 * u64::from(cli.rounds);
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} commands {msg}")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    let start = Instant::now();
    println!(
        "{} hosts x {} commands x {} rounds, {} in flight at most{}",
        targets.len(),
        commands.len(),
        cli.rounds,
        cli.concurrency,
        if chaos.is_some() {
            ", chaos half-way"
        } else {
            ""
        }
    );
    let watcher = tokio::spawn(watch(events, bar.clone(), start));

    let limit = Arc::new(Semaphore::new(cli.concurrency as usize));
    let job = Job {
        commands: commands.clone(),
        rounds: cli.rounds,
        per_host: cli.per_host as usize,
        keep_output: cli.output.is_some() || cli.show,
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let workers: Vec<_> = targets
        .iter()
        .map(|target| {
            tokio::spawn(work_on(
                manager.clone(),
                target.clone(),
                job.clone(),
                limit.clone(),
                done_tx.clone(),
            ))
        })
        .collect();
    drop(done_tx);

    // Count completions as they come; start the chaos once half the job is done.
    let mut finished = 0u64;
    let mut chaos_task = None;
    while done_rx.recv().await.is_some() {
        finished += 1;
        bar.inc(1);
        if finished * 2 >= total
            && chaos_task.is_none()
            && let Some(lab) = chaos
        {
            let say = {
                let bar = bar.clone();
                move |line: String| {
                    let line = format!("{:>7.2}s  {line}", start.elapsed().as_secs_f64());
                    bar.suspend(|| println!("{line}"));
                }
            };
            chaos_task = Some(lab.chaos(say));
            // Run the chaos alongside the rest of the job.
            break;
        }
    }
    let chaos_result = match chaos_task {
        Some(chaos) => {
            let drain = async {
                while done_rx.recv().await.is_some() {
                    bar.inc(1);
                }
            };
            let (result, ()) = tokio::join!(chaos, drain);
            result
        }
        None => Ok(()),
    };
    let mut tallies = Vec::with_capacity(workers.len());
    for worker in workers {
        tallies.push(worker.await.map_err(|e| format!("a worker failed: {e}"))?);
    }
    bar.finish_with_message(format!("in {:.2?}", start.elapsed()));
    chaos_result?;

    let mut states = Vec::with_capacity(targets.len());
    for target in &targets {
        let state = manager
            .connection_status(&target.key)
            .await
            .map_err(|e| format!("status of {}: {e}", target.key))?
            .map(|s| s.state)
            .unwrap_or(ConnectionState::Closed);
        states.push(state);
    }
    manager
        .close_all_connections()
        .await
        .map_err(|e| format!("closing the connections: {e}"))?;
    let counters = manager
        .connection_counters_for(PLUGIN_NAME)
        .await
        .map_err(|e| format!("counters: {e}"))?;
    manager
        .shutdown()
        .await
        .map_err(|e| format!("shutting down: {e}"))?;
    let reconnects = watcher
        .await
        .map_err(|e| format!("the event watcher failed: {e}"))?;
    let by_host = || {
        targets
            .iter()
            .zip(&tallies)
            .map(|(target, tally)| (target.key.hostname.as_str(), tally.records.as_slice()))
    };
    if cli.show {
        println!();
        results::show(by_host());
    }
    if let Some(path) = &cli.output {
        results::write_json_lines(path, by_host())?;
    }
    print_report(&targets, &mut tallies, &states, &reconnects, counters);

    let all_open = states.iter().all(|s| *s == ConnectionState::Open);
    let all_ok = tallies.iter().all(|t| t.gave_up == 0);
    if !all_open {
        println!("FAIL: not every device ended up open");
    }
    if !all_ok {
        println!("FAIL: some commands never succeeded");
    }
    Ok(all_open && all_ok)
}

fn main() -> ExitCode {
    #[cfg(feature = "cluster")]
    if std::env::args().nth(1).as_deref() == Some("node") {
        return cluster::node_main(std::env::args().skip(1));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                let _ = error.print();
                return ExitCode::SUCCESS;
            }
            // clap's first line says what is wrong; the usage after it is noise here.
            let text = error.render().to_string();
            eprintln!("fleet: {}", text.lines().next().unwrap_or("bad arguments"));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("fleet: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("fleet: {error}");
            ExitCode::from(2)
        }
    }
}
