//! SSH at scale: thousands of embedded SSH devices opened through the supervisor (the SSH
//! plugin under `ConnectionManager`) with one command run on each, against a raw russh client
//! holding as many sessions, and the SSH plugin driven without the supervisor in between.
//!
//! Wall time and memory are measured in child processes of this one, one per phase, so that no
//! phase inherits another's heap:
//!
//! - **devices**: one child runs every device (`testing::SshTestServer`); the client phases
//!   connect to it, so their memory is the client's alone. Each client phase is a child of its
//!   own: `raw` (russh `client::Handle`s, tests/raw_ssh), `plugin` (`ssh::SshConnection`
//!   opened and used directly: the plugin and its russh session without the supervisor) and
//!   `supervisor` (`ConnectionManager::open_connection`, then `ConnectionHandle::execute_command`).
//!   `supervisor` minus `plugin` is what the supervisor's actor costs per connection; `plugin`
//!   minus `raw` is what the plugin adds to russh. `actor` spawns one idle ractor actor per
//!   device and nothing else: the part of the supervisor's cost that is ractor's own.
//! - **in one process**: `raw` and `supervisor` again, each child starting its own devices, as
//!   the issue asks (devices, client and supervisor in one process). Their memory includes the
//!   devices' server-side sessions, which are the same in both. A device holds its listener and
//!   two descriptors per session (it keeps a duplicate to drop sessions on demand), so this
//!   takes four descriptors per device: the open-files limit is raised as far as the process
//!   may, and where its hard limit is lower (20,000 on the machine the report was made on, no
//!   `CAP_SYS_RESOURCE`) these phases run with as many devices as fit, and say so.
//!
//! In each client phase: everything fixed is set up first (runtime, devices, supervisor), then
//! the allocator is trimmed (`malloc_trim`) and memory read; every device is opened (at most
//! the supervisor's open bound at once, the raw client held to the same bound) and runs
//! `echo scale`; once all have answered, with every session still open, the allocator is
//! trimmed and memory read again. Per connection = (after - before) / devices.
//!
//! Settings (environment): `SSH_SCALE_DEVICES` (default 500: `cargo bench --no-run` only builds
//! it; scripts/bench-report.sh runs 5,000), `SSH_SCALE_BOUNDS` (open bounds of the supervisor
//! phase, comma-separated, default `32`, the supervisor's default; the first is the headline,
//! the others a sweep). Writes `ssh-scale.json` into `$BENCH_REPORT_DIR` (default the
//! workspace's `target/bench-report`). With feature `metrics` the supervisor phases also report
//! the supervisor's open-slot wait histogram.

#[path = "ssh_scale/measure.rs"]
mod measure;
// The raw russh client the library's own tests use (tests/raw_ssh), from the root package.
#[path = "../../tests/raw_ssh/mod.rs"]
mod raw_ssh;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connection_supervisor::ssh::{self, HostKeyPolicy, PLUGIN_NAME, SshConnection, SshOptions};
use connection_supervisor::testing::{
    DEFAULT_PASSWORD, DEFAULT_USERNAME, SshTestServer, SshTestServerConfig, write_known_hosts,
};
use connection_supervisor::{
    Connection, ConnectionKey, ConnectionManager, ResolvedConnectionParams, SupervisorConfig,
};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

#[global_allocator]
static ALLOCATOR: measure::Counting = measure::Counting;

const DEFAULT_DEVICES: usize = 500;
const COMMAND: &str = "echo scale";
/// A phase's result line on its stdout.
const RESULT: &str = "RESULT ";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(dir) = flag("--serve-devices") {
        serve_devices(&PathBuf::from(dir), devices_from_env());
    } else if let Some(phase) = flag("--phase") {
        let phase = Phase::parse(&phase).unwrap_or_else(|| fail(&format!("no phase {phase}")));
        let bound = flag("--bound").and_then(|b| b.parse().ok()).unwrap_or(32);
        let result = run_phase(phase, flag("--devices-dir").map(PathBuf::from), bound);
        println!("{RESULT}{result}");
        // Every session is still open: exiting drops them all at once, which the devices see as
        // the client going away, instead of 5,000 polite goodbyes no figure depends on.
        std::process::exit(0);
    } else if args.iter().any(|a| a == "--bench") {
        orchestrate();
    } else {
        // `cargo test --benches` runs bench targets without `--bench`: nothing to check here.
        println!("ssh_scale: run it with `cargo bench --bench ssh_scale`");
    }
}

fn fail(message: &str) -> ! {
    eprintln!("ssh_scale: {message}");
    std::process::exit(1);
}

fn devices_from_env() -> usize {
    std::env::var("SSH_SCALE_DEVICES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_DEVICES)
}

fn bounds_from_env() -> Vec<usize> {
    let bounds: Vec<usize> = std::env::var("SSH_SCALE_BOUNDS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|b| b.trim().parse().ok())
        .filter(|&b| b > 0)
        .collect();
    if bounds.is_empty() { vec![32] } else { bounds }
}

/// Per device: its listener, the client's socket, and the device's session socket and the
/// duplicate it keeps to drop sessions on demand; plus what the runtime and files take.
fn files_needed(devices: usize) -> u64 {
    (devices as u64) * 4 + 1024
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("tokio runtime: {e}")))
}

// ---------------------------------------------------------------------------------------------
// The devices process

/// Starts `devices` embedded devices, writes `dir/known_hosts` and `dir/ports`, says `ready`,
/// then answers `sessions` (how many sessions the devices hold) until its stdin closes.
fn serve_devices(dir: &Path, devices: usize) {
    let (_, nofile) = measure::raise_nofile(files_needed(devices));
    let rt = runtime();
    rt.block_on(async {
        let lab = start_devices(devices, dir).await;
        let ports: String = lab.iter().map(|d| format!("{}\n", d.port())).collect();
        std::fs::write(dir.join("ports"), ports)
            .unwrap_or_else(|e| fail(&format!("{}: {e}", dir.display())));
        println!("ready nofile={nofile}");
        let mut lines =
            tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == "sessions" {
                let sessions: usize = lab.iter().map(SshTestServer::session_count).sum();
                println!("{sessions}");
            }
        }
    });
}

async fn start_devices(count: usize, dir: &Path) -> Vec<SshTestServer> {
    let mut devices = Vec::with_capacity(count);
    for i in 0..count {
        let device = SshTestServer::start(SshTestServerConfig {
            hostname: format!("device-{i:05}"),
            ..SshTestServerConfig::default()
        })
        .await
        .unwrap_or_else(|e| fail(&format!("embedded device {i}: {e}")));
        devices.push(device);
    }
    write_known_hosts(&dir.join("known_hosts"), &devices)
        .unwrap_or_else(|e| fail(&format!("known_hosts in {}: {e}", dir.display())));
    devices
}

/// The devices child, driven through its stdin and stdout.
struct DevicesProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl DevicesProcess {
    fn start(dir: &Path, devices: usize) -> Self {
        let mut child = Command::new(current_exe())
            .args(["--serve-devices", &dir.display().to_string()])
            .env("SSH_SCALE_DEVICES", devices.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| fail(&format!("devices process: {e}")));
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            fail("devices process without pipes");
        };
        let mut process = Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let ready = process.line();
        if !ready.starts_with("ready") {
            fail(&format!("devices process said {ready:?}"));
        }
        eprintln!("ssh_scale: {devices} devices up in their own process ({ready})");
        process
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(n) if n > 0 => line.trim().to_owned(),
            _ => fail("the devices process ended"),
        }
    }

    /// Waits (at most a minute) until the previous phase's sessions are gone from the devices,
    /// so that the next phase does not share the CPU with their teardown.
    fn wait_idle(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let _ = writeln!(self.stdin, "sessions");
            let _ = self.stdin.flush();
            let sessions: usize = self.line().parse().unwrap_or(usize::MAX);
            if sessions == 0 {
                return;
            }
            if Instant::now() > deadline {
                fail(&format!("{sessions} sessions still open on the devices"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(self) {
        let Self {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        let _ = child.wait();
    }
}

fn current_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|e| fail(&format!("own executable: {e}")))
}

// ---------------------------------------------------------------------------------------------
// The orchestrator

fn orchestrate() {
    let devices = devices_from_env();
    let bounds = bounds_from_env();
    let report_dir = std::env::var_os("BENCH_REPORT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report"));
    let work = std::env::temp_dir().join(format!("cs-ssh-scale-{}", std::process::id()));
    for dir in [&report_dir, &work] {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| fail(&format!("{}: {e}", dir.display())));
    }
    let (nofile_before, nofile) = measure::raise_nofile(files_needed(devices));
    eprintln!(
        "ssh_scale: {devices} devices, open bounds {bounds:?}, RLIMIT_NOFILE {nofile_before} -> {nofile}"
    );

    // Client-only memory: devices in their own process, one child per client phase.
    let mut lab = DevicesProcess::start(&work, devices);
    let mut separate = serde_json::Map::new();
    let mut sweep = Vec::new();
    for (phase, bound) in [
        (Phase::Raw, bounds[0]),
        (Phase::Plugin, bounds[0]),
        (Phase::Actor, bounds[0]),
    ]
    .into_iter()
    .chain(bounds.iter().map(|&b| (Phase::Supervisor, b)))
    {
        lab.wait_idle();
        let result = phase_child(phase, Some(&work), bound, devices);
        if phase == Phase::Supervisor && bound != bounds[0] {
            sweep.push(result);
        } else {
            separate.insert(phase.name().to_owned(), result);
        }
    }
    lab.wait_idle();
    lab.stop();

    // Everything in one process, as a user would run it: as many devices as the open-files
    // limit allows there (each device holds its listener and two descriptors per session).
    let together_devices = devices.min((nofile.saturating_sub(1024) / 4) as usize);
    if together_devices < devices {
        eprintln!(
            "ssh_scale: in one process, {together_devices} devices: RLIMIT_NOFILE is {nofile} and \
             cannot be raised further here"
        );
    }
    let mut together = serde_json::Map::new();
    for phase in [Phase::Raw, Phase::Supervisor] {
        let result = phase_child(phase, None, bounds[0], together_devices);
        together.insert(phase.name().to_owned(), result);
    }
    let _ = std::fs::remove_dir_all(&work);

    let ratio = |phases: &serde_json::Map<String, Value>, what: &str| {
        let per = |p: &str| phases.get(p).and_then(|r| r[what].as_f64());
        match (per("supervisor"), per("raw")) {
            (Some(s), Some(r)) if r > 0.0 => json!(s / r),
            _ => Value::Null,
        }
    };
    let report = json!({
        "devices": devices,
        "open_bound": bounds[0],
        "command": COMMAND,
        "rlimit_nofile": { "before": nofile_before, "raised_to": nofile },
        "client_only": {
            "phases": separate,
            "rss_ratio": ratio(&separate, "rss_per_connection"),
            "heap_ratio": ratio(&separate, "heap_per_connection"),
        },
        "one_process": {
            "devices": together_devices,
            "phases": together,
            "rss_ratio": ratio(&together, "rss_per_connection"),
            "heap_ratio": ratio(&together, "heap_per_connection"),
        },
        "bound_sweep": sweep,
    });
    let path = report_dir.join("ssh-scale.json");
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    if let Err(e) = std::fs::write(&path, text) {
        fail(&format!("{}: {e}", path.display()));
    }
    summary(&report);
    eprintln!("ssh_scale: wrote {}", path.display());
}

/// Runs one phase in a child process and returns its result.
fn phase_child(phase: Phase, devices_dir: Option<&Path>, bound: usize, devices: usize) -> Value {
    let mut command = Command::new(current_exe());
    command
        .args(["--phase", phase.name(), "--bound", &bound.to_string()])
        .env("SSH_SCALE_DEVICES", devices.to_string())
        .stdout(Stdio::piped());
    if let Some(dir) = devices_dir {
        command.args(["--devices-dir", &dir.display().to_string()]);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| fail(&format!("{} phase: {e}", phase.name())));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix(RESULT)) else {
        fail(&format!(
            "{} phase ({}) gave no result: {stdout}",
            phase.name(),
            output.status
        ));
    };
    serde_json::from_str(line).unwrap_or_else(|e| fail(&format!("{} phase: {e}", phase.name())))
}

fn summary(report: &Value) {
    println!(
        "\nSSH at scale: {} devices, open bound {}",
        report["devices"], report["open_bound"]
    );
    println!(
        "{:<36} {:>9} {:>9} {:>12} {:>12} {:>9} {:>6}",
        "phase", "wall s", "opens/s", "RSS/conn", "heap/conn", "blocks", "fails"
    );
    let rows = |label: &str, phases: &Value| {
        if let Some(phases) = phases.as_object() {
            for (name, r) in phases {
                println!(
                    "{:<36} {:>9.2} {:>9.0} {:>10.1} K {:>10.1} K {:>9.1} {:>6}",
                    format!("{label}: {name} (bound {})", r["bound"]),
                    r["wall_secs"].as_f64().unwrap_or(f64::NAN),
                    r["opens_per_sec"].as_f64().unwrap_or(f64::NAN),
                    r["rss_per_connection"].as_f64().unwrap_or(f64::NAN) / 1024.0,
                    r["heap_per_connection"].as_f64().unwrap_or(f64::NAN) / 1024.0,
                    r["blocks_per_connection"].as_f64().unwrap_or(f64::NAN),
                    r["failures"],
                );
            }
        }
    };
    rows("client only", &report["client_only"]["phases"]);
    for r in report["bound_sweep"].as_array().into_iter().flatten() {
        rows("client only, sweep", &json!({ "supervisor": r }));
    }
    println!("one process: {} devices", report["one_process"]["devices"]);
    rows("one process", &report["one_process"]["phases"]);
    println!(
        "supervisor / raw russh per connection: RSS {:.2}x, heap {:.2}x (client only); RSS {:.2}x (one process)",
        report["client_only"]["rss_ratio"]
            .as_f64()
            .unwrap_or(f64::NAN),
        report["client_only"]["heap_ratio"]
            .as_f64()
            .unwrap_or(f64::NAN),
        report["one_process"]["rss_ratio"]
            .as_f64()
            .unwrap_or(f64::NAN),
    );
}

// ---------------------------------------------------------------------------------------------
// A client phase

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// russh `client::Handle`s, no plugin, no actors.
    Raw,
    /// `SshConnection`s opened and used directly, without the supervisor.
    Plugin,
    /// `ConnectionManager::open_connection`, then `ConnectionHandle::execute_command`.
    Supervisor,
    /// No SSH at all: one idle ractor actor per device, to size what any actor costs.
    Actor,
}

impl Phase {
    fn parse(name: &str) -> Option<Self> {
        [Self::Raw, Self::Plugin, Self::Supervisor, Self::Actor]
            .into_iter()
            .find(|p| p.name() == name)
    }

    fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Plugin => "plugin",
            Self::Supervisor => "supervisor",
            Self::Actor => "actor",
        }
    }
}

/// Where the devices are and how to trust them.
struct Targets {
    addrs: Vec<SocketAddr>,
    known_hosts: PathBuf,
}

impl Targets {
    fn params(&self, i: usize) -> ResolvedConnectionParams {
        ResolvedConnectionParams {
            hostname: "127.0.0.1".into(),
            port: Some(self.addrs[i].port()),
            username: Some(DEFAULT_USERNAME.into()),
            password: Some(DEFAULT_PASSWORD.into()),
            ..ResolvedConnectionParams::default()
        }
    }

    fn ssh_options(&self) -> SshOptions {
        SshOptions::default().host_key_policy(HostKeyPolicy::Strict(self.known_hosts.clone()))
    }
}

/// What one device's open and command left behind: whatever keeps its session open.
type Held = Box<dyn Send>;

/// One device: open (timed), then the command. `Err` names what failed.
type Outcome = Result<(Held, Duration), String>;

fn run_phase(phase: Phase, devices_dir: Option<PathBuf>, bound: usize) -> Value {
    let devices = devices_from_env();
    let (_, nofile) = measure::raise_nofile(files_needed(devices));
    #[cfg(feature = "metrics")]
    if phase == Phase::Supervisor {
        measure::slots::install();
    }
    let rt = runtime();
    rt.block_on(async move {
        // In one process: this phase's own devices, started (and idle) before the first reading.
        let own_dir = std::env::temp_dir().join(format!(
            "cs-ssh-scale-{}-{}",
            std::process::id(),
            phase.name()
        ));
        let (targets, own_devices) = match devices_dir {
            Some(dir) => {
                let ports = std::fs::read_to_string(dir.join("ports"))
                    .unwrap_or_else(|e| fail(&format!("{}: {e}", dir.display())));
                let addrs = ports
                    .lines()
                    .filter_map(|p| p.parse::<u16>().ok())
                    .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
                    .collect();
                let known_hosts = dir.join("known_hosts");
                (Targets { addrs, known_hosts }, Vec::new())
            }
            None => {
                std::fs::create_dir_all(&own_dir)
                    .unwrap_or_else(|e| fail(&format!("{}: {e}", own_dir.display())));
                let lab = start_devices(devices, &own_dir).await;
                let addrs = lab.iter().map(SshTestServer::addr).collect();
                let known_hosts = own_dir.join("known_hosts");
                (Targets { addrs, known_hosts }, lab)
            }
        };
        let targets = Arc::new(targets);
        let count = targets.addrs.len();
        let manager = match phase {
            Phase::Supervisor => {
                let config = SupervisorConfig::default()
                    .factory(ssh::factory(targets.ssh_options()))
                    .max_concurrent_opens(bound);
                Some(
                    ConnectionManager::spawn(config)
                        .await
                        .unwrap_or_else(|e| fail(&format!("supervisor: {e}"))),
                )
            }
            _ => None,
        };
        let plugin_options = Arc::new(targets.ssh_options());
        let limit = Arc::new(Semaphore::new(bound));
        // Idle devices and an idle client: whatever is still settling from start-up settles
        // before the reading.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = measure::read();

        let start = Instant::now();
        let tasks: Vec<_> = (0..count)
            .map(|i| {
                let (targets, manager) = (targets.clone(), manager.clone());
                let (limit, options) = (limit.clone(), plugin_options.clone());
                tokio::spawn(async move {
                    match phase {
                        Phase::Raw => raw_device(&targets, i, &limit).await,
                        Phase::Plugin => plugin_device(&targets, i, &limit, options).await,
                        Phase::Supervisor => match manager {
                            Some(manager) => supervisor_device(&targets, i, &manager).await,
                            None => Err("no supervisor".to_owned()),
                        },
                        Phase::Actor => idle_actor().await,
                    }
                })
            })
            .collect();
        let mut held = Vec::with_capacity(count);
        let mut open_latency = Vec::with_capacity(count);
        let mut failures = Vec::new();
        for task in tasks {
            match task.await {
                Ok(Ok((kept, opened))) => {
                    held.push(kept);
                    open_latency.push(opened.as_secs_f64());
                }
                Ok(Err(error)) => failures.push(error),
                Err(error) => failures.push(format!("task: {error}")),
            }
        }
        let wall = start.elapsed();
        // Every session open and idle again (commands done, their channels closed).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = measure::read();
        let open = held.len().max(1) as f64;
        let result = json!({
            "phase": phase.name(),
            "devices": count,
            "in_one_process": !own_devices.is_empty(),
            "bound": bound,
            "rlimit_nofile": nofile,
            "open_files": open_files(),
            "wall_secs": wall.as_secs_f64(),
            "opens_per_sec": held.len() as f64 / wall.as_secs_f64(),
            "open_ms": measure::percentiles_ms(&mut open_latency),
            "open": held.len(),
            "failures": failures.len(),
            "first_failure": failures.first(),
            "rss_before": before.rss,
            "rss_after": after.rss,
            "rss_per_connection": after.rss.saturating_sub(before.rss) as f64 / open,
            "heap_per_connection": (after.heap - before.heap) as f64 / open,
            "blocks_per_connection": (after.blocks - before.blocks) as f64 / open,
            "allocations_per_connection": (after.allocations - before.allocations) as f64 / open,
            "supervisor_metrics": slot_metrics(),
        });
        drop(held);
        // The process exits without unwinding: its known_hosts file goes now.
        let _ = std::fs::remove_dir_all(&own_dir);
        result
    })
}

/// File descriptors this process holds now.
fn open_files() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

#[cfg(feature = "metrics")]
fn slot_metrics() -> Value {
    measure::slots::report()
}

#[cfg(not(feature = "metrics"))]
fn slot_metrics() -> Value {
    Value::Null
}

async fn raw_device(targets: &Targets, i: usize, limit: &Semaphore) -> Outcome {
    let started = Instant::now();
    let conn = {
        let _permit = limit.acquire().await.map_err(|e| e.to_string())?;
        let check = raw_ssh::HostKeyCheck::KnownHosts {
            host: "127.0.0.1".into(),
            port: targets.addrs[i].port(),
            path: targets.known_hosts.clone(),
        };
        let mut conn = raw_ssh::connect(targets.addrs[i], check)
            .await
            .map_err(|e| format!("device {i}: {e}"))?;
        if !raw_ssh::auth_password(&mut conn, DEFAULT_USERNAME, DEFAULT_PASSWORD).await {
            return Err(format!("device {i}: login refused"));
        }
        conn
    };
    let opened = started.elapsed();
    let out = raw_ssh::exec(&conn.handle, COMMAND).await;
    if out.exit_status != Some(0) {
        return Err(format!("device {i}: {COMMAND} gave {out:?}"));
    }
    Ok((Box::new(conn), opened))
}

async fn plugin_device(
    targets: &Targets,
    i: usize,
    limit: &Semaphore,
    options: Arc<SshOptions>,
) -> Outcome {
    let started = Instant::now();
    let mut connection = SshConnection::new(options);
    {
        let _permit = limit.acquire().await.map_err(|e| e.to_string())?;
        connection
            .open(&targets.params(i))
            .await
            .map_err(|e| format!("device {i}: {e}"))?;
    }
    let opened = started.elapsed();
    let Some((runner, _)) = connection.command_runner() else {
        return Err(format!("device {i}: no command runner"));
    };
    let out = runner
        .run(COMMAND)
        .await
        .map_err(|e| format!("device {i}: {e}"))?;
    if out.exit_status != Some(0) {
        return Err(format!("device {i}: {COMMAND} gave {out:?}"));
    }
    Ok((Box::new(connection), opened))
}

async fn supervisor_device(targets: &Targets, i: usize, manager: &ConnectionManager) -> Outcome {
    let key = ConnectionKey::new(format!("device-{i:05}"), PLUGIN_NAME);
    let started = Instant::now();
    let handle = manager
        .open_connection(&key, &targets.params(i))
        .await
        .map_err(|e| format!("device {i}: {e}"))?
        .ok_or_else(|| format!("device {i}: no plugin for {key}"))?;
    let opened = started.elapsed();
    let out = handle
        .execute_command(COMMAND)
        .await
        .map_err(|e| format!("device {i}: {e}"))?;
    if out != "scale\n" {
        return Err(format!("device {i}: {COMMAND} gave {out:?}"));
    }
    // The supervisor holds the connection; the handle is what a caller keeps.
    Ok((Box::new(handle), opened))
}

/// An actor that does nothing: what ractor itself costs per actor.
struct Idle;

enum Nothing {}

// Without ractor's blanket impl (its `cluster` feature), every message type needs its own.
#[cfg(feature = "cluster")]
impl ractor::Message for Nothing {}

impl ractor::Actor for Idle {
    type Msg = Nothing;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ractor::ActorRef<Nothing>,
        _: (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }
}

async fn idle_actor() -> Outcome {
    let started = Instant::now();
    let (actor, _) = ractor::Actor::spawn(None, Idle, ())
        .await
        .map_err(|e| format!("idle actor: {e}"))?;
    Ok((Box::new(actor), started.elapsed()))
}
