//! What the actor design costs and what it buys, side by side with the alternatives, in one run.
//!
//! 1. `hot_path`: calls on alive connections over 1,000 keys, one caller and 64 at once:
//!    `ConnectionManager::open_connection`, a direct `ConnectionHandle` call, and the lock-based
//!    baseline (`supervisor/baseline.rs`, upstream genja's design) doing the same.
//! 2. `ssh_fleet`: 100 embedded SSH devices x 20 commands through the supervisor, through raw
//!    russh (one handle per host, no actors), and connecting per command.
//! 3. `open_fanout`: opening 1,000 devices through the supervisor (bounded opens) against 1,000
//!    unbounded concurrent raw russh connects.
//! 4. `reconnect`: every session of 100 devices dropped at once, until all are open again.
//! 5. `scale`: 100,000 mock connections created and opened.
//! 6. `rtt_fleet` (`supervisor/rtt.rs`, built with the bench's `metrics` feature only): the
//!    fleet over a 20 ms round trip, supervisor against the lock-based baseline and
//!    connecting per command, with the 1,000-host fan-out's slot waits and open times.
//!
//! With `BENCH_METRICS_AB=FILE` it runs only the handle-call pass of the metrics on/off
//! comparison (`supervisor/ab.rs`).
//!
//! Besides criterion's own output it writes, to `$BENCH_REPORT_DIR` (default the workspace's
//! `target/bench-report`): `extras.json` (memory per connection, close time, latency
//! percentiles, the machine) and `fleet-latency.svg` (the fleet latency distribution).
//! `scripts/bench-report.sh` turns both into docs/benchmarks.md.
//!
//! Every timing is taken inside a runtime task: calls from outside the runtime (criterion's
//! `block_on`) would add 10-30 µs of wake-up cost that no real caller pays.

#[path = "supervisor/ab.rs"]
mod ab;
#[path = "supervisor/baseline.rs"]
mod baseline;
#[path = "supervisor/mock.rs"]
mod mock;
#[cfg(feature = "metrics")]
#[path = "supervisor/rtt.rs"]
mod rtt;
#[cfg(feature = "metrics")]
#[path = "supervisor/samples.rs"]
mod samples;
// The raw russh client the library's own tests use (tests/raw_ssh), from the root package.
#[path = "../../tests/raw_ssh/mod.rs"]
mod raw_ssh;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connection_supervisor::ssh::{self, HostKeyPolicy, PLUGIN_NAME, SshOptions};
use connection_supervisor::testing::{
    DEFAULT_PASSWORD, DEFAULT_USERNAME, SshTestServer, SshTestServerConfig, write_known_hosts,
};
use connection_supervisor::{
    Backoff, ConnectionHandle, ConnectionKey, ConnectionManager, ConnectionPolicy, EventKind,
    ResolvedConnectionParams, SupervisorConfig,
};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

use baseline::BaselineManager;

const KEYS: usize = 1_000;
const CALLERS: usize = 64;
const FLEET_HOSTS: usize = 100;
const FLEET_COMMANDS: usize = 20;
/// Commands in flight per host, in every fleet variant: the SSH plugin's default channel limit.
const PER_HOST: usize = 8;
/// Alternating supervisor / raw russh fleet passes for the drift-free ratio.
const PAIRED_ROUNDS: usize = 30;
const FANOUT_HOSTS: usize = 1_000;
const RECONNECT_HOSTS: usize = 100;
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
const RECONNECT_JITTER: f64 = 0.2;
const SCALE: usize = 100_000;
/// Connects at once in the connect-per-command variant: the supervisor's default open bound,
/// so that variant is not slowed by handshake contention the other two never see.
const CONNECT_LIMIT: usize = 32;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs `work` in a runtime task and returns what it measured.
fn in_task<F>(rt: &Runtime, work: F) -> Duration
where
    F: Future<Output = Duration> + Send + 'static,
{
    rt.block_on(async { tokio::spawn(work).await.expect("benchmark task") })
}

fn mock_params() -> ResolvedConnectionParams {
    ResolvedConnectionParams {
        hostname: "bench".into(),
        ..ResolvedConnectionParams::default()
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Hot path

/// An actor that answers at once: what one ractor request/reply costs with nothing behind it.
struct EchoActor;

enum Echo {
    Ping(usize, ractor::RpcReplyPort<usize>),
}

// Without ractor's blanket impl (its `cluster` feature), every message type needs its own.
#[cfg(feature = "cluster")]
impl ractor::Message for Echo {}

impl ractor::Actor for EchoActor {
    type Msg = Echo;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ractor::ActorRef<Echo>,
        _args: (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ractor::ActorRef<Echo>,
        message: Echo,
        _state: &mut (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        let Echo::Ping(value, reply) = message;
        let _ = reply.send(value);
        Ok(())
    }
}

/// `iters` calls of `call(i)`, from one task or spread over `callers` tasks.
async fn drive<F, Fut>(iters: u64, callers: usize, call: Arc<F>) -> Duration
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let start = Instant::now();
    if callers == 1 {
        for i in 0..iters as usize {
            call(i).await;
        }
        return start.elapsed();
    }
    let per_caller = (iters as usize).div_ceil(callers);
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let call = call.clone();
            tokio::spawn(async move {
                // Callers start on different keys so they do not move in lock-step.
                let offset = caller * (KEYS / callers);
                for i in 0..per_caller {
                    call(offset + i).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("caller task");
    }
    start.elapsed()
}

/// Benchmarks `call` on key `i % KEYS` from `callers` tasks, timed inside the runtime.
fn bench_calls<F, Fut>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    rt: &Runtime,
    callers: usize,
    call: F,
) where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let call = Arc::new(call);
    group.bench_function(id, |b| {
        b.iter_custom(|iters| in_task(rt, drive(iters, callers, call.clone())))
    });
}

fn hot_path(c: &mut Criterion, rt: &Runtime) {
    let keys: Arc<Vec<ConnectionKey>> = Arc::new(mock::keys(KEYS));
    let params = Arc::new(mock_params());
    let open_all = |concurrent: bool| {
        let (keys, params) = (keys.clone(), params.clone());
        async move {
            let config = SupervisorConfig::default().factory(mock::factory(concurrent));
            let manager = ConnectionManager::spawn(config).await.expect("supervisor");
            let mut handles = Vec::with_capacity(KEYS);
            for key in keys.iter() {
                let handle = manager.open_connection(key, &params).await;
                handles.push(handle.expect("open").expect("mock key"));
            }
            (manager, Arc::new(handles))
        }
    };
    let (manager, handles, concurrent, concurrent_handles, baseline) = rt.block_on(async {
        let (manager, handles) = open_all(false).await;
        let (concurrent, concurrent_handles) = open_all(true).await;
        let baseline = BaselineManager::with_connection_factory(mock::baseline_factory());
        for key in keys.iter() {
            baseline.open_connection(key, &params).await.expect("open");
        }
        (
            manager,
            handles,
            concurrent,
            concurrent_handles,
            Arc::new(baseline),
        )
    });

    let (echo, _) = rt
        .block_on(ractor::Actor::spawn(None, EchoActor, ()))
        .expect("echo actor");

    let mut group = c.benchmark_group("hot_path");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for callers in [1, CALLERS] {
        let label = if callers == 1 {
            "1 caller"
        } else {
            "64 callers"
        };
        let id = |what: &str| BenchmarkId::new(what, label);

        let (m, k, p) = (manager.clone(), keys.clone(), params.clone());
        bench_calls(
            &mut group,
            id("supervisor open_connection"),
            rt,
            callers,
            move |i: usize| {
                let (m, k, p) = (m.clone(), k.clone(), p.clone());
                async move {
                    let handle = m.open_connection(&k[i % KEYS], &p).await;
                    std::hint::black_box(handle.expect("open_connection"));
                }
            },
        );
        for (name, h) in [
            ("handle execute_command", handles.clone()),
            (
                "handle execute_command, concurrent plugin",
                concurrent_handles.clone(),
            ),
        ] {
            bench_calls(&mut group, id(name), rt, callers, move |i: usize| {
                let h = h.clone();
                async move {
                    let out = h[i % KEYS].execute_command("x").await;
                    std::hint::black_box(out.expect("command"));
                }
            });
        }
        let h = handles.clone();
        bench_calls(
            &mut group,
            id("handle is_alive"),
            rt,
            callers,
            move |i: usize| {
                let h = h.clone();
                async move {
                    let out = h[i % KEYS].is_alive().await;
                    std::hint::black_box(out.expect("is_alive"));
                }
            },
        );
        let e = echo.clone();
        bench_calls(
            &mut group,
            id("bare ractor call_t (the floor)"),
            rt,
            callers,
            move |i: usize| {
                let e = e.clone();
                async move {
                    let out = ractor::call_t!(e, Echo::Ping, 20_000, i);
                    std::hint::black_box(out.expect("echo"));
                }
            },
        );
        let (b, k, p) = (baseline.clone(), keys.clone(), params.clone());
        bench_calls(
            &mut group,
            id("baseline open_connection"),
            rt,
            callers,
            move |i: usize| {
                let (b, k, p) = (b.clone(), k.clone(), p.clone());
                async move {
                    let connection = b.open_connection(&k[i % KEYS], &p).await;
                    std::hint::black_box(connection.expect("open_connection"));
                }
            },
        );
        let (b, k) = (baseline.clone(), keys.clone());
        bench_calls(
            &mut group,
            id("baseline execute_command"),
            rt,
            callers,
            move |i: usize| {
                let (b, k) = (b.clone(), k.clone());
                async move {
                    let out = b.execute_command(&k[i % KEYS], "x").await;
                    std::hint::black_box(out.expect("command"));
                }
            },
        );
    }
    group.finish();
    echo.stop(None);
    rt.block_on(async {
        manager.shutdown().await.expect("shutdown");
        concurrent.shutdown().await.expect("shutdown");
        // Upstream's close-all blocks on each connection's mutex: off the worker threads.
        let closing = baseline.clone();
        tokio::task::spawn_blocking(move || closing.close_all_connections())
            .await
            .expect("baseline close-all");
    });
    let counters = baseline.connection_counters_snapshot();
    let mock = counters.get(mock::PLUGIN).copied().unwrap_or_default();
    assert_eq!(
        (mock.create_calls, mock.open_calls, mock.close_calls),
        (KEYS, KEYS, KEYS),
        "the baseline kept its contract"
    );
}

// ---------------------------------------------------------------------------------------------
// SSH devices

/// Embedded SSH devices and a known_hosts file that trusts exactly their keys.
struct Lab {
    devices: Vec<SshTestServer>,
    known_hosts: PathBuf,
}

impl Lab {
    async fn start(count: usize, dir: &Path) -> Self {
        let mut devices = Vec::with_capacity(count);
        for i in 0..count {
            let device = SshTestServer::start(SshTestServerConfig {
                hostname: format!("device-{i:04}"),
                ..SshTestServerConfig::default()
            })
            .await
            .expect("embedded device");
            devices.push(device);
        }
        let known_hosts = dir.join("known_hosts");
        write_known_hosts(&known_hosts, &devices).expect("known_hosts");
        Self {
            devices,
            known_hosts,
        }
    }

    fn key(i: usize) -> ConnectionKey {
        ConnectionKey::new(format!("device-{i:04}"), PLUGIN_NAME)
    }

    fn params(&self, i: usize) -> ResolvedConnectionParams {
        ResolvedConnectionParams {
            hostname: "127.0.0.1".into(),
            port: Some(self.devices[i].port()),
            username: Some(DEFAULT_USERNAME.into()),
            password: Some(DEFAULT_PASSWORD.into()),
            ..ResolvedConnectionParams::default()
        }
    }

    fn check(&self, i: usize) -> raw_ssh::HostKeyCheck {
        raw_ssh::HostKeyCheck::KnownHosts {
            host: "127.0.0.1".into(),
            port: self.devices[i].port(),
            path: self.known_hosts.clone(),
        }
    }

    /// A supervisor with the SSH plugin, strict host keys against this lab's file.
    async fn manager(&self, backoff: Backoff) -> ConnectionManager {
        let options =
            SshOptions::default().host_key_policy(HostKeyPolicy::Strict(self.known_hosts.clone()));
        let config = SupervisorConfig::default()
            .factory(ssh::factory(options))
            .policy(ConnectionPolicy::default().backoff(backoff));
        ConnectionManager::spawn(config).await.expect("supervisor")
    }

    /// Opens devices `0..count` through `manager`, all at once (the supervisor bounds them).
    async fn open_all(
        self: &Arc<Self>,
        manager: &ConnectionManager,
        count: usize,
    ) -> Vec<ConnectionHandle> {
        let tasks: Vec<_> = (0..count)
            .map(|i| {
                let (manager, lab) = (manager.clone(), self.clone());
                tokio::spawn(async move {
                    manager
                        .open_connection(&Lab::key(i), &lab.params(i))
                        .await
                        .expect("open through the supervisor")
                        .expect("an ssh key")
                })
            })
            .collect();
        let mut handles = Vec::with_capacity(count);
        for task in tasks {
            handles.push(task.await.expect("open task"));
        }
        handles
    }

    /// Logs in to device `i` with a raw russh client, checking its host key.
    async fn raw_login(&self, i: usize) -> raw_ssh::Connection {
        let mut conn = raw_ssh::connect(self.devices[i].addr(), self.check(i))
            .await
            .expect("raw connect");
        let accepted = raw_ssh::auth_password(&mut conn, DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
        assert!(accepted, "raw login refused");
        conn
    }
}

fn fast_backoff() -> Backoff {
    Backoff::default()
        .initial(RECONNECT_BACKOFF)
        .max(Duration::from_secs(1))
        .multiplier(2.0)
        .jitter(RECONNECT_JITTER)
}

// ---------------------------------------------------------------------------------------------
// 2. SSH fleet

/// How the fleet's commands reach the devices.
#[derive(Clone)]
enum Route {
    Supervisor(Arc<Vec<ConnectionHandle>>),
    Raw(Arc<Vec<raw_ssh::Connection>>),
    ConnectPerCommand(Arc<Lab>, Arc<Semaphore>),
}

impl Route {
    async fn command(&self, host: usize, command: &str) {
        match self {
            Route::Supervisor(handles) => {
                let out = handles[host]
                    .execute_command(command)
                    .await
                    .expect("command through the supervisor");
                debug_assert_eq!(out, "fleet\n");
            }
            Route::Raw(conns) => {
                let out = raw_ssh::exec(&conns[host].handle, command).await;
                debug_assert_eq!(out.exit_status, Some(0));
            }
            Route::ConnectPerCommand(lab, limit) => {
                let _permit = limit.acquire().await.expect("connect limit");
                let conn = lab.raw_login(host).await;
                let out = raw_ssh::exec(&conn.handle, command).await;
                debug_assert_eq!(out.exit_status, Some(0));
                raw_ssh::disconnect(&conn.handle).await;
            }
        }
    }

    /// Every host runs [`FLEET_COMMANDS`] commands, [`PER_HOST`] at a time; returns each
    /// command's latency when `record` is set.
    async fn run(self, record: bool) -> (Duration, Vec<Duration>) {
        let start = Instant::now();
        let tasks: Vec<_> = (0..FLEET_HOSTS)
            .map(|host| {
                let route = self.clone();
                tokio::spawn(async move {
                    futures::stream::iter(0..FLEET_COMMANDS)
                        .map(|_| {
                            let route = route.clone();
                            async move {
                                let started = Instant::now();
                                route.command(host, "echo fleet").await;
                                started.elapsed()
                            }
                        })
                        .buffer_unordered(PER_HOST)
                        .collect::<Vec<_>>()
                        .await
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            let host = task.await.expect("host task");
            if record {
                latencies.extend(host);
            }
        }
        (start.elapsed(), latencies)
    }
}

fn ssh_fleet(c: &mut Criterion, rt: &Runtime, lab: &Arc<Lab>, report: &mut Report) {
    let (manager, handles, raw) = rt.block_on(async {
        let manager = lab.manager(Backoff::default()).await;
        let handles = lab.open_all(&manager, FLEET_HOSTS).await;
        let mut raw = Vec::with_capacity(FLEET_HOSTS);
        for i in 0..FLEET_HOSTS {
            raw.push(lab.raw_login(i).await);
        }
        (manager, Arc::new(handles), Arc::new(raw))
    });
    let routes = [
        ("supervisor", Route::Supervisor(handles)),
        ("raw russh", Route::Raw(raw.clone())),
        (
            "connect per command",
            Route::ConnectPerCommand(lab.clone(), Arc::new(Semaphore::new(CONNECT_LIMIT))),
        ),
    ];

    let mut group = c.benchmark_group("ssh_fleet");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements((FLEET_HOSTS * FLEET_COMMANDS) as u64));
    for (name, route) in &routes {
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let route = route.clone();
                in_task(rt, async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += route.clone().run(false).await.0;
                    }
                    total
                })
            })
        });
    }
    group.finish();

    // Criterion runs each variant's samples back to back, so a drift in the machine's speed
    // (seen here: ±20% between runs minutes apart) lands on one variant. Passes alternating
    // supervisor and raw russh, the order swapped every round, give a ratio that drift cancels.
    let (supervisor, raw_route) = (routes[0].1.clone(), routes[1].1.clone());
    let (mut ratios, mut supervisor_ms, mut raw_ms) = (Vec::new(), Vec::new(), Vec::new());
    let pass = |route: &Route| {
        let route = route.clone();
        async move { tokio::spawn(route.run(false)).await.expect("pass").0 }
    };
    rt.block_on(async {
        for round in 0..PAIRED_ROUNDS {
            let (s, r) = if round % 2 == 0 {
                let s = pass(&supervisor).await;
                (s, pass(&raw_route).await)
            } else {
                let r = pass(&raw_route).await;
                (pass(&supervisor).await, r)
            };
            // Throughput ratio: the raw pass's time over the supervisor's.
            ratios.push(r.as_secs_f64() / s.as_secs_f64());
            supervisor_ms.push(s.as_secs_f64() * 1e3);
            raw_ms.push(r.as_secs_f64() * 1e3);
        }
    });
    ratios.sort_by(f64::total_cmp);
    report.set(
        "fleet_paired",
        json!({
            "rounds": PAIRED_ROUNDS,
            "median_ratio": ratios[ratios.len() / 2],
            "ratios": ratios,
            "supervisor_ms": supervisor_ms,
            "raw_ms": raw_ms,
        }),
    );

    // One more pass of each, recording every command's latency for the distribution.
    let mut distributions = Vec::new();
    for (name, route) in &routes {
        let route = route.clone();
        let (_, mut latencies) =
            rt.block_on(async { tokio::spawn(route.run(true)).await.expect("latency pass") });
        latencies.sort_unstable();
        report.fleet_latency(name, &latencies);
        distributions.push((*name, latencies));
    }
    if let Err(error) = plot_latencies(&report.dir.join("fleet-latency.svg"), &distributions) {
        eprintln!("could not draw the latency plot: {error}");
    }
    rt.block_on(async {
        for conn in raw.iter() {
            raw_ssh::disconnect(&conn.handle).await;
        }
        manager.shutdown().await.expect("shutdown");
    });
}

/// The cumulative distribution of each variant's command latencies, log-scaled in time.
fn plot_latencies(
    path: &Path,
    series: &[(&str, Vec<Duration>)],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let lowest = series
        .iter()
        .filter_map(|(_, l)| l.first().map(ms))
        .fold(f64::INFINITY, f64::min)
        .max(0.01);
    let highest = series
        .iter()
        .filter_map(|(_, l)| l.last().map(ms))
        .fold(0.0, f64::max)
        .max(lowest * 10.0);
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "SSH fleet: {FLEET_HOSTS} hosts x {FLEET_COMMANDS} commands, latency per command"
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((lowest * 0.8..highest * 1.2).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of commands")
        .draw()?;
    let colors = [BLUE, RED, GREEN];
    for ((name, latencies), color) in series.iter().zip(colors) {
        let n = latencies.len().max(1) as f64;
        chart
            .draw_series(LineSeries::new(
                latencies
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (ms(d), (i + 1) as f64 / n)),
                color.stroke_width(2),
            ))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
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

// ---------------------------------------------------------------------------------------------
// 3. Open fan-out

fn open_fanout(c: &mut Criterion, rt: &Runtime, lab: &Arc<Lab>) {
    let mut group = c.benchmark_group("open_fanout");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    group.bench_function("supervisor (32 opens at a time)", |b| {
        b.iter_custom(|iters| {
            let lab = lab.clone();
            in_task(rt, async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let manager = lab.manager(Backoff::default()).await;
                    let start = Instant::now();
                    let handles = lab.open_all(&manager, FANOUT_HOSTS).await;
                    total += start.elapsed();
                    drop(handles);
                    manager.shutdown().await.expect("shutdown");
                }
                total
            })
        })
    });
    group.bench_function("raw russh (unbounded)", |b| {
        b.iter_custom(|iters| {
            let lab = lab.clone();
            in_task(rt, async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..FANOUT_HOSTS)
                        .map(|i| {
                            let lab = lab.clone();
                            tokio::spawn(async move { lab.raw_login(i).await })
                        })
                        .collect();
                    let mut conns = Vec::with_capacity(FANOUT_HOSTS);
                    for task in tasks {
                        conns.push(task.await.expect("login task"));
                    }
                    total += start.elapsed();
                    futures::future::join_all(
                        conns.iter().map(|conn| raw_ssh::disconnect(&conn.handle)),
                    )
                    .await;
                }
                total
            })
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. Reconnect

fn reconnect(c: &mut Criterion, rt: &Runtime, lab: &Arc<Lab>) {
    let manager = rt.block_on(async {
        let manager = lab.manager(fast_backoff()).await;
        lab.open_all(&manager, RECONNECT_HOSTS).await;
        manager
    });
    let mut group = c.benchmark_group("reconnect");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("100 hosts dropped at once", |b| {
        b.iter_custom(|iters| {
            let (lab, manager) = (lab.clone(), manager.clone());
            in_task(rt, async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut events = manager.subscribe().await.expect("subscribe");
                    let start = Instant::now();
                    futures::future::join_all(
                        lab.devices[..RECONNECT_HOSTS]
                            .iter()
                            .map(SshTestServer::drop_all_sessions),
                    )
                    .await;
                    let mut back = 0;
                    while back < RECONNECT_HOSTS {
                        events
                            .wait_for(Duration::from_secs(30), |event| {
                                matches!(event.kind, EventKind::Reconnected { .. })
                            })
                            .await
                            .expect("every host reconnects");
                        back += 1;
                    }
                    total += start.elapsed();
                }
                total
            })
        })
    });
    group.finish();
    rt.block_on(async {
        manager.shutdown().await.expect("shutdown");
    });
}

// ---------------------------------------------------------------------------------------------
// 5. Scale

/// Creates and opens `count` mock connections from [`CALLERS`] tasks; returns how long it took.
async fn create_and_open(manager: &ConnectionManager, count: usize) -> Duration {
    let params = Arc::new(mock_params());
    let start = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (manager, params) = (manager.clone(), params.clone());
            tokio::spawn(async move {
                for i in (caller..count).step_by(CALLERS) {
                    let key = ConnectionKey::new(format!("h{i}"), mock::PLUGIN);
                    let handle = manager
                        .open_connection(&key, &params)
                        .await
                        .expect("open")
                        .expect("mock key");
                    drop(handle);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("creator task");
    }
    start.elapsed()
}

fn scale_manager() -> SupervisorConfig {
    SupervisorConfig::default().factory(mock::factory(false))
}

/// Resident memory of this process, in bytes.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// One measured pass, before anything else has run in this process (so freed memory of other
/// benchmarks cannot hide the cost): resident memory per idle connection and close-all time.
fn scale_memory(rt: &Runtime, report: &mut Report) {
    let figures = rt.block_on(async {
        tokio::spawn(async {
            let manager = ConnectionManager::spawn(scale_manager())
                .await
                .expect("supervisor");
            let before = rss_bytes();
            let create = create_and_open(&manager, SCALE).await;
            let after = rss_bytes();
            let start = Instant::now();
            manager.close_all_connections().await.expect("close all");
            let close = start.elapsed();
            manager.shutdown().await.expect("shutdown");
            (before, after, create, close)
        })
        .await
        .expect("scale pass")
    });
    let (before, after, create, close) = figures;
    let per_connection = match (before, after) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before) as f64 / SCALE as f64),
        _ => None,
    };
    report.set(
        "scale",
        json!({
            "connections": SCALE,
            "rss_bytes_per_connection": per_connection,
            "rss_before_bytes": before,
            "rss_after_bytes": after,
            "first_pass_create_open_secs": create.as_secs_f64(),
            "close_all_secs": close.as_secs_f64(),
        }),
    );
}

fn scale(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("scale");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(SCALE as u64));
    group.bench_function("100k mock connections created and opened", |b| {
        b.iter_custom(|iters| {
            in_task(rt, async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let manager = ConnectionManager::spawn(scale_manager())
                        .await
                        .expect("supervisor");
                    total += create_and_open(&manager, SCALE).await;
                    manager.shutdown().await.expect("shutdown");
                }
                total
            })
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Report extras

/// Figures criterion does not keep, written as JSON for scripts/bench-report.sh.
struct Report {
    dir: PathBuf,
    extras: serde_json::Map<String, Value>,
}

impl Report {
    fn new() -> Self {
        let dir = std::env::var_os("BENCH_REPORT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report")
            });
        std::fs::create_dir_all(&dir).expect("report directory");
        let mut extras = serde_json::Map::new();
        extras.insert(
            "constants".into(),
            json!({
                "keys": KEYS,
                "callers": CALLERS,
                "fleet_hosts": FLEET_HOSTS,
                "fleet_commands": FLEET_COMMANDS,
                "per_host": PER_HOST,
                "connect_limit": CONNECT_LIMIT,
                "fanout_hosts": FANOUT_HOSTS,
                "reconnect_hosts": RECONNECT_HOSTS,
                "reconnect_backoff_ms": RECONNECT_BACKOFF.as_secs_f64() * 1e3,
                "reconnect_jitter": RECONNECT_JITTER,
                "scale": SCALE,
            }),
        );
        Self { dir, extras }
    }

    fn set(&mut self, name: &str, value: Value) {
        self.extras.insert(name.to_owned(), value);
    }

    fn fleet_latency(&mut self, variant: &str, sorted: &[Duration]) {
        let at = |p: f64| {
            let i = ((sorted.len().saturating_sub(1)) as f64 * p).round() as usize;
            sorted.get(i).map(|d| d.as_secs_f64() * 1e3)
        };
        let entry = self
            .extras
            .entry("fleet_latency_ms")
            .or_insert_with(|| json!({}));
        entry[variant] = json!({
            "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0), "count": sorted.len(),
        });
    }

    fn write(&self) {
        // The metrics build runs other groups (rtt_fleet); its figures go beside the main run's.
        let name = if cfg!(feature = "metrics") {
            "extras-metrics.json"
        } else {
            "extras.json"
        };
        let path = self.dir.join(name);
        let text = serde_json::to_string_pretty(&self.extras).expect("json");
        if let Err(error) = std::fs::write(&path, text) {
            eprintln!("could not write {}: {error}", path.display());
        }
    }
}

/// Whether the benchmarks of group `name` may be selected: no filter was given, or a filter
/// names the group (`ssh_fleet/raw`) or is part of its name (`fleet`). Criterion's own filters
/// are regexes on the full ids; this only skips set-up no selected benchmark needs.
fn selected(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty()
        || filters
            .iter()
            .any(|f| f.contains(name) || name.contains(f.as_str()))
}

fn main() {
    let rt = runtime();
    if let Some(out) = std::env::var_os("BENCH_METRICS_AB") {
        ab::run(&rt, Path::new(&out));
        return;
    }
    // Before any supervisor starts: the library takes its metric handles then.
    #[cfg(feature = "metrics")]
    if !samples::install() {
        eprintln!("another metrics recorder was installed first: no open samples");
    }
    let mut c = Criterion::default().configure_from_args();
    let mut report = Report::new();

    if selected("scale") {
        scale_memory(&rt, &mut report);
    }
    hot_path(&mut c, &rt);
    let rtt_selected = cfg!(feature = "metrics") && selected("rtt_fleet");
    if selected("ssh_fleet") || selected("open_fanout") || selected("reconnect") || rtt_selected {
        let dir = report.dir.clone();
        let lab = Arc::new(rt.block_on(Lab::start(FANOUT_HOSTS, &dir)));
        // Each only when selected: their set-up (and the fleet's paired rounds) is not free.
        if selected("ssh_fleet") {
            ssh_fleet(&mut c, &rt, &lab, &mut report);
        }
        if selected("open_fanout") {
            open_fanout(&mut c, &rt, &lab);
        }
        if selected("reconnect") {
            reconnect(&mut c, &rt, &lab);
        }
        #[cfg(feature = "metrics")]
        if rtt_selected {
            rtt::rtt_fleet(&rt, &lab, &mut report);
        }
    }
    scale(&mut c, &rt);

    report.write();
    c.final_summary();
}
