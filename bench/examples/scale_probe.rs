//! 100,000 mock connections in a fresh process: creation + open, `close_all_connections`, then
//! `shutdown` of what is left (or, with `shutdown` as second argument, `shutdown` of all of
//! them), each timed by the wall clock and by this process's CPU time (user + system, as
//! getrusage reports it), with the heap allocations each phase made per connection.
//!
//! ```text
//! cargo run --release -p connection-supervisor-bench --example scale_probe [-- N [shutdown]]
//! cargo run --release -p connection-supervisor-bench --features jemalloc --example scale_probe
//! ```
//!
//! Every run is a first pass: nothing else has run in the process, as for a fleet tool that
//! starts, opens its inventory and exits. The criterion benchmark (`scale` in
//! benches/supervisor.rs) repeats the creation in one process and so measures a warm one.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use connection_supervisor::{
    Connection, ConnectionKey, ConnectionManager, OpenError, ResolvedConnectionParams,
    SupervisorConfig,
};

/// The allocator underneath: the system's (glibc's), or with the `jemalloc` feature jemalloc,
/// the one docs/benchmarks-analysis.md recommends for programs holding 100k connections.
#[cfg(not(feature = "jemalloc"))]
static INNER: std::alloc::System = std::alloc::System;
#[cfg(feature = "jemalloc")]
static INNER: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The allocator underneath, counting calls: allocations are what a connection costs most.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on unchanged to the allocator underneath.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { INNER.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { INNER.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { INNER.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { INNER.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Mock(bool);

#[async_trait]
impl Connection for Mock {
    fn is_alive(&self) -> bool {
        self.0
    }

    async fn open(&mut self, _: &ResolvedConnectionParams) -> Result<(), OpenError> {
        self.0 = true;
        Ok(())
    }

    async fn close(&mut self) {
        self.0 = false;
    }
}

/// This process's CPU time so far (user + system), from /proc/self/stat in clock ticks.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    match (fields.get(11), fields.get(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => 0.0,
    }
}

/// Wall time, CPU time and allocations of one phase.
struct Phase {
    wall: Instant,
    cpu: f64,
    allocations: u64,
    bytes: u64,
}

impl Phase {
    /// Starts timing the phase `name`; under `perf record --control fifo:CTL -D -1`, with
    /// `PROBE_PERF_CTL=CTL PROBE_PROFILE=name`, perf records this phase alone.
    fn start(name: &str) -> Self {
        perf_control(name, "enable");
        Self {
            wall: Instant::now(),
            cpu: cpu_secs(),
            allocations: ALLOCATIONS.load(Ordering::Relaxed),
            bytes: BYTES.load(Ordering::Relaxed),
        }
    }

    fn report(self, name: &str, n: usize) -> Duration {
        let wall = self.wall.elapsed();
        perf_control(name, "disable");
        let cpu = cpu_secs() - self.cpu;
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - self.allocations;
        let bytes = BYTES.load(Ordering::Relaxed) - self.bytes;
        let n = n as f64;
        println!(
            "{name:>12}: {:7.3} s wall ({:6.0}/s), {:6.2} s CPU ({:5.1} µs/conn), {:5.1} allocs/conn ({:5.0} B/conn)",
            wall.as_secs_f64(),
            n / wall.as_secs_f64(),
            cpu,
            cpu * 1e6 / n,
            allocations as f64 / n,
            bytes as f64 / n,
        );
        wall
    }
}

/// Tells perf (through its control fifo) to start or stop recording, if `phase` is the one to
/// profile.
fn perf_control(phase: &str, command: &str) {
    let wanted = std::env::var("PROBE_PROFILE").is_ok_and(|p| p == phase);
    if let (true, Ok(fifo)) = (wanted, std::env::var("PROBE_PERF_CTL")) {
        let _ = std::fs::write(fifo, format!("{command}\n"));
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let shutdown_only = std::env::args().nth(2).as_deref() == Some("shutdown");
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        eprintln!("no tokio runtime");
        std::process::exit(1);
    };
    let outcome = rt.block_on(async move {
        tokio::spawn(async move { run(n, shutdown_only).await })
            .await
            .map_err(|e| e.to_string())?
    });
    if let Err(message) = outcome {
        eprintln!("{message}");
        std::process::exit(1);
    }
}

async fn run(n: usize, shutdown_only: bool) -> Result<(), String> {
    let factory = Arc::new(|_: &ConnectionKey| Some(Box::new(Mock(false)) as Box<dyn Connection>));
    let manager = ConnectionManager::spawn(SupervisorConfig::default().factory(factory))
        .await
        .map_err(|e| e.to_string())?;
    let params = Arc::new(ResolvedConnectionParams::new("x"));
    let keys: Vec<ConnectionKey> = (0..n)
        .map(|i| ConnectionKey::new(format!("h{i}"), "mock"))
        .collect();
    let keys = Arc::new(keys);
    // 1,000 callers, each opening every thousandth key.
    let phase = Phase::start("create+open");
    let callers: Vec<_> = (0..1000)
        .map(|c| {
            let (manager, params, keys) = (manager.clone(), params.clone(), keys.clone());
            tokio::spawn(async move {
                for key in keys.iter().skip(c).step_by(1000) {
                    match manager.open_connection(key, &params).await {
                        Ok(Some(_)) => {}
                        Ok(None) => return Err(format!("{key}: no connection")),
                        Err(error) => return Err(error.to_string()),
                    }
                }
                Ok(())
            })
        })
        .collect();
    for caller in callers {
        caller.await.map_err(|e| e.to_string())??;
    }
    phase.report("create+open", n);
    if shutdown_only {
        let phase = Phase::start("shutdown");
        manager.shutdown().await.map_err(|e| e.to_string())?;
        phase.report("shutdown", n);
    } else {
        let phase = Phase::start("close_all");
        manager
            .close_all_connections()
            .await
            .map_err(|e| e.to_string())?;
        phase.report("close_all", n);
        let phase = Phase::start("shutdown(0)");
        manager.shutdown().await.map_err(|e| e.to_string())?;
        phase.report("shutdown(0)", n);
    }
    Ok(())
}
