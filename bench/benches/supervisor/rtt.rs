//! Benchmark 6, `rtt_fleet` (built with the bench's `metrics` feature): the SSH fleet over a
//! link with a 20 ms round trip, where loopback's free round trips no longer flatter anyone.
//!
//! Every device gets the link through `SshTestServer::set_round_trip` (a delay line between
//! its socket and its SSH session; the kernel here has no netem, see `ssh_server/delay.rs`).
//! A pass is a whole fleet run from nothing: every host opened and `commands` run on each, at
//! most [`PER_HOST`] in flight per host, timed until the last command answered. Variants:
//!
//! - *supervisor*: `open_connection`, then `ConnectionHandle::execute_command` (one channel per
//!   command, up to 8 at once per connection); opens bounded by `max_concurrent_opens`, the
//!   default 32 and a wider 256.
//! - *lock-based baseline*: upstream genja's design (`baseline.rs`) around the same SSH plugin:
//!   opens unbounded, and each command holds the host's mutex, so a host runs one at a time.
//! - *connect per command*: raw russh, connect + log in + exec + disconnect per command, at
//!   most [`CONNECT_LIMIT_RTT`] at once.
//!
//! Passes alternate variant by variant, [`ROUNDS`] times (order reversed every other round), so
//! the machine's drift lands on all of them; the figures are per-variant medians. The
//! supervisor's passes also keep the library's own `open_slot_wait_seconds` and
//! `open_duration_seconds` samples (through `samples.rs`), and the first shape's last round is
//! drawn as a timeline of the fan-out.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use connection_supervisor::ssh::{self, HostKeyPolicy, SshOptions};
use connection_supervisor::{
    Connection, ConnectionManager, ResolvedConnectionParams, SupervisorConfig,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tokio::sync::{Mutex, Semaphore};

use crate::baseline::{BaselineConnection, BaselineFactory, BaselineManager, Shared};
use crate::samples;
use crate::{Lab, PER_HOST, Report, raw_ssh};

/// The link's round trip.
pub const RTT: Duration = Duration::from_millis(20);
/// (hosts, commands per host): the 1,000-host fan-out, and a fleet small enough that round
/// trips rather than the two cores' crypto decide its time.
pub const SHAPES: [(usize, usize); 2] = [(1_000, 5), (100, 20)];
const ROUNDS: usize = 3;
/// Opens at once in the wide supervisor variant: about what two cores' handshakes per second
/// (~1,000) times a handshake's time over this link (~0.2 s) keeps busy.
const WIDE_OPENS: usize = 256;
/// Connect-per-command's bound on connects at once, sized the same way (32, as on loopback,
/// would cap it at ~200 commands/s on round trips alone).
pub const CONNECT_LIMIT_RTT: usize = 256;
const DEFAULT_OPENS: usize = 32;

#[derive(Clone, Copy)]
enum Variant {
    Supervisor(usize),
    Baseline,
    ConnectPerCommand,
}

impl Variant {
    fn name(self) -> String {
        match self {
            Variant::Supervisor(opens) => format!("supervisor, {opens} opens at a time"),
            Variant::Baseline => "lock-based baseline".to_owned(),
            Variant::ConnectPerCommand => "connect per command".to_owned(),
        }
    }
}

const VARIANTS: [Variant; 4] = [
    Variant::Supervisor(DEFAULT_OPENS),
    Variant::Supervisor(WIDE_OPENS),
    Variant::Baseline,
    Variant::ConnectPerCommand,
];

/// What one pass measured; times are from the pass's start.
#[derive(Default)]
struct Pass {
    total: Duration,
    /// Process CPU time (client and devices together) over the pass, in seconds.
    cpu_secs: Option<f64>,
    latencies: Vec<Duration>,
    /// (done at, took): each open as its caller saw it (slot wait included).
    opens: Vec<(Duration, Duration)>,
    /// (granted at, waited): the library's open_slot_wait_seconds samples.
    slot_waits: Vec<(Duration, f64)>,
    /// (ended at, took): the library's open_duration_seconds samples.
    open_durations: Vec<(Duration, f64)>,
}

/// One host's open (done at, took; none when connecting per command) and command latencies.
type HostResult = (Option<(Duration, Duration)>, Vec<Duration>);

/// The SSH plugin's connection inside upstream's lock: one command at a time per host.
struct LockedSsh(Box<dyn Connection>);

#[async_trait]
impl BaselineConnection for LockedSsh {
    fn is_alive(&self) -> bool {
        self.0.is_alive()
    }

    async fn open(&mut self, params: &ResolvedConnectionParams) -> Result<(), String> {
        self.0.open(params).await.map_err(|e| e.to_string())
    }

    async fn execute_command(&mut self, command: &str) -> Result<String, String> {
        self.0
            .execute_command(command)
            .await
            .map_err(|e| e.to_string())
    }

    // Upstream's close is synchronous; the session ends when the connection is dropped.
    fn close(&mut self) {}
}

fn ssh_options(lab: &Lab) -> SshOptions {
    SshOptions::default().host_key_policy(HostKeyPolicy::Strict(lab.known_hosts.clone()))
}

fn baseline_factory(lab: &Lab) -> Arc<BaselineFactory> {
    let plugin = ssh::factory(ssh_options(lab));
    Arc::new(move |key| {
        plugin(key).map(|connection| Arc::new(Mutex::new(LockedSsh(connection))) as Shared)
    })
}

/// Runs `commands` commands of one host, [`PER_HOST`] at a time; returns their latencies.
async fn host_commands<F, Fut>(commands: usize, command: F) -> Vec<Duration>
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    futures::stream::iter(0..commands)
        .map(|_| {
            let run = command();
            async move {
                let started = Instant::now();
                run.await;
                started.elapsed()
            }
        })
        .buffer_unordered(PER_HOST)
        .collect()
        .await
}

async fn pass(lab: Arc<Lab>, variant: Variant, hosts: usize, commands: usize) -> Pass {
    let since = |start: Instant, at: Instant| at.saturating_duration_since(start);
    let mut pass = Pass::default();
    if let Some((wait, open)) = samples::series() {
        wait.take();
        open.take();
    }
    let cpu_before = process_cpu_secs();
    let start;
    let results: Vec<HostResult> = match variant {
        Variant::Supervisor(opens) => {
            let config = SupervisorConfig::default()
                .factory(ssh::factory(ssh_options(&lab)))
                .max_concurrent_opens(opens);
            let manager = ConnectionManager::spawn(config).await.expect("supervisor");
            start = Instant::now();
            let tasks: Vec<_> = (0..hosts)
                .map(|i| {
                    let (manager, lab) = (manager.clone(), lab.clone());
                    tokio::spawn(async move {
                        let asked = Instant::now();
                        let handle = manager
                            .open_connection(&Lab::key(i), &lab.params(i))
                            .await
                            .expect("open through the supervisor")
                            .expect("an ssh key");
                        let open = (since(start, Instant::now()), asked.elapsed());
                        let latencies = host_commands(commands, || {
                            let handle = handle.clone();
                            async move {
                                // A failed command must not pass for a fast one.
                                let out = handle.execute_command("echo fleet").await;
                                assert_eq!(out.expect("command through the supervisor"), "fleet\n");
                            }
                        })
                        .await;
                        (Some(open), latencies)
                    })
                })
                .collect();
            let results = futures::future::join_all(tasks).await;
            pass.total = start.elapsed();
            pass.cpu_secs = cpu_since(cpu_before);
            manager.shutdown().await.expect("shutdown");
            results.into_iter().map(|r| r.expect("host task")).collect()
        }
        Variant::Baseline => {
            let baseline = Arc::new(BaselineManager::with_connection_factory(baseline_factory(
                &lab,
            )));
            start = Instant::now();
            let tasks: Vec<_> = (0..hosts)
                .map(|i| {
                    let (baseline, lab) = (baseline.clone(), lab.clone());
                    tokio::spawn(async move {
                        let key = Lab::key(i);
                        let asked = Instant::now();
                        baseline
                            .open_connection(&key, &lab.params(i))
                            .await
                            .expect("baseline open")
                            .expect("an ssh key");
                        let open = (since(start, Instant::now()), asked.elapsed());
                        let latencies = host_commands(commands, || {
                            let (baseline, key) = (baseline.clone(), key.clone());
                            async move {
                                let out = baseline.execute_command(&key, "echo fleet").await;
                                assert_eq!(out.expect("command through the baseline"), "fleet\n");
                            }
                        })
                        .await;
                        (Some(open), latencies)
                    })
                })
                .collect();
            let results = futures::future::join_all(tasks).await;
            pass.total = start.elapsed();
            pass.cpu_secs = cpu_since(cpu_before);
            // Dropping the pool drops every session (upstream's close is synchronous and
            // would only drop them too).
            drop(baseline);
            results.into_iter().map(|r| r.expect("host task")).collect()
        }
        Variant::ConnectPerCommand => {
            let limit = Arc::new(Semaphore::new(CONNECT_LIMIT_RTT));
            start = Instant::now();
            let tasks: Vec<_> = (0..hosts)
                .map(|host| {
                    let (lab, limit) = (lab.clone(), limit.clone());
                    tokio::spawn(async move {
                        let latencies = host_commands(commands, || {
                            let (lab, limit) = (lab.clone(), limit.clone());
                            async move {
                                let _permit = limit.acquire().await.expect("connect limit");
                                let conn = lab.raw_login(host).await;
                                let out = raw_ssh::exec(&conn.handle, "echo fleet").await;
                                assert_eq!(out.exit_status, Some(0), "connect per command");
                                raw_ssh::disconnect(&conn.handle).await;
                            }
                        })
                        .await;
                        (None, latencies)
                    })
                })
                .collect();
            let results = futures::future::join_all(tasks).await;
            pass.total = start.elapsed();
            pass.cpu_secs = cpu_since(cpu_before);
            results.into_iter().map(|r| r.expect("host task")).collect()
        }
    };
    for (open, latencies) in results {
        pass.opens.extend(open);
        pass.latencies.extend(latencies);
    }
    if let (Variant::Supervisor(_), Some((wait, open))) = (variant, samples::series()) {
        pass.slot_waits = wait
            .take()
            .into_iter()
            .map(|(at, v)| (since(start, at), v))
            .collect();
        pass.open_durations = open
            .take()
            .into_iter()
            .map(|(at, v)| (since(start, at), v))
            .collect();
    }
    pass
}

/// User + system CPU time of this process so far, from /proc/self/stat (clock ticks of 10 ms).
fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

fn cpu_since(before: Option<f64>) -> Option<f64> {
    Some(process_cpu_secs()? - before?)
}

/// The value at fraction `p` of `sorted`.
fn at(sorted: &[f64], p: f64) -> Option<f64> {
    let i = (sorted.len().saturating_sub(1) as f64 * p).round() as usize;
    sorted.get(i).copied()
}

fn summary(mut values: Vec<f64>) -> Value {
    values.sort_by(f64::total_cmp);
    json!({
        "count": values.len(),
        "p50": at(&values, 0.5),
        "p90": at(&values, 0.9),
        "p99": at(&values, 0.99),
        "max": values.last(),
    })
}

pub fn rtt_fleet(rt: &Runtime, lab: &Arc<Lab>, report: &mut Report) {
    for device in &lab.devices {
        device.set_round_trip(RTT);
    }
    let mut shapes = Vec::new();
    for (shape_index, &(hosts, commands)) in SHAPES.iter().enumerate() {
        let mut totals: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
        let mut last: Vec<Option<Pass>> = (0..VARIANTS.len()).map(|_| None).collect();
        for round in 0..ROUNDS {
            let mut order: Vec<usize> = (0..VARIANTS.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for v in order {
                let lab = lab.clone();
                let variant = VARIANTS[v];
                let measured = rt.block_on(async move {
                    tokio::spawn(pass(lab, variant, hosts, commands))
                        .await
                        .expect("rtt pass")
                });
                eprintln!(
                    "rtt_fleet {hosts} hosts x {commands}: {} round {round}: {:.3} s",
                    variant.name(),
                    measured.total.as_secs_f64()
                );
                totals[v].push(measured.total.as_secs_f64());
                cpu[v].extend(measured.cpu_secs);
                last[v] = Some(measured);
            }
        }
        let mut variants = serde_json::Map::new();
        for (v, variant) in VARIANTS.iter().enumerate() {
            let mut secs = totals[v].clone();
            secs.sort_by(f64::total_cmp);
            let Some(pass) = last[v].as_ref() else {
                continue;
            };
            let ms = |d: &Duration| d.as_secs_f64() * 1e3;
            variants.insert(
                variant.name(),
                json!({
                    "secs": totals[v],
                    "median_secs": at(&secs, 0.5),
                    "cpu_secs": cpu[v],
                    "commands_per_sec": at(&secs, 0.5).map(|s| (hosts * commands) as f64 / s),
                    "latency_ms": summary(pass.latencies.iter().map(ms).collect()),
                    "open_ms": summary(pass.opens.iter().map(|(_, took)| ms(took)).collect()),
                    "slot_wait_ms": summary(pass.slot_waits.iter().map(|(_, v)| v * 1e3).collect()),
                    "open_duration_ms": summary(pass.open_durations.iter().map(|(_, v)| v * 1e3).collect()),
                }),
            );
        }
        if shape_index == 0 {
            let drawn: Vec<(String, &Pass)> = VARIANTS
                .iter()
                .zip(&last)
                .filter(|(v, _)| !matches!(v, Variant::ConnectPerCommand))
                .filter_map(|(v, p)| p.as_ref().map(|p| (v.name(), p)))
                .collect();
            if let Err(error) = plot_fanout(&report.dir.join("fanout-rtt.svg"), hosts, &drawn) {
                eprintln!("could not draw the fan-out plot: {error}");
            }
        }
        shapes.push(json!({
            "hosts": hosts,
            "commands": commands,
            "rounds": ROUNDS,
            "variants": variants,
        }));
    }
    for device in &lab.devices {
        device.set_round_trip(Duration::ZERO);
    }
    report.set(
        "rtt_fleet",
        json!({
            "rtt_ms": RTT.as_secs_f64() * 1e3,
            "per_host": PER_HOST,
            "connect_limit": CONNECT_LIMIT_RTT,
            "shapes": shapes,
        }),
    );
}

/// Each open of the fan-out on a timeline: when it ended (x) and how long it took or waited
/// (y, log scale). The supervisor's points are the library's own samples (slot wait, recorded
/// when the slots were granted; the plugin's open, recorded when it ended); the baseline's,
/// timed around its `open_connection` (no slot: it starts every open at once).
fn plot_fanout(
    path: &Path,
    hosts: usize,
    passes: &[(String, &Pass)],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (name, pass) in passes {
        if pass.slot_waits.is_empty() {
            series.push((
                format!("{name}: open, as its caller saw it"),
                pass.opens
                    .iter()
                    .map(|(at, took)| (ms(at), ms(took)))
                    .collect(),
            ));
        } else {
            series.push((
                format!("{name}: slot wait"),
                pass.slot_waits
                    .iter()
                    .map(|(at, v)| (ms(at), v * 1e3))
                    .collect(),
            ));
            series.push((
                format!("{name}: open (plugin)"),
                pass.open_durations
                    .iter()
                    .map(|(at, v)| (ms(at), v * 1e3))
                    .collect(),
            ));
        }
    }
    // Waits of zero have no place on a log axis: they are drawn at its floor.
    let floor = 0.01;
    let right = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let top = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Opening {hosts} SSH hosts over a {} ms round trip: each open's slot wait and duration",
                RTT.as_millis()
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..right * 1.02, (floor..top * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("ms since the fan-out began (when the wait ended / the open ended)")
        .y_desc("ms (log scale)")
        .draw()?;
    let colors = [
        RGBColor(150, 150, 150),
        BLUE,
        RGBColor(255, 160, 0),
        RGBColor(0, 150, 0),
        RED,
    ];
    for ((name, points), color) in series.iter().zip(colors.iter().cycle()) {
        let color = *color;
        chart
            .draw_series(
                points
                    .iter()
                    .map(move |&(x, y)| Circle::new((x, y.max(floor)), 2, color.filled())),
            )?
            .label(name.as_str())
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
