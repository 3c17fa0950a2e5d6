//! The handle-call benchmark, as one short pass for the metrics on/off comparison: the same
//! calls as `hot_path`'s handle rows, in a process built without the library's `metrics`
//! feature or with it and a real recorder (metrics-exporter-prometheus's, without its HTTP
//! listener, its upkeep run every 5 s as the exporter's own listener does). A process can
//! only be one build, so scripts/bench-report.sh runs the two builds' passes alternately, many
//! times, and compares them pass by pass (drift cancels, as in the fleet's paired ratio).
//!
//! Selected by `BENCH_METRICS_AB=FILE`: appends one JSON line to FILE and runs nothing else.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use connection_supervisor::{ConnectionManager, SupervisorConfig};
use serde_json::json;
use tokio::runtime::Runtime;

use crate::{CALLERS, KEYS, drive, in_task, mock, mock_params};

/// Samples per case; the median is kept.
const SAMPLES: usize = 21;
/// About how long one sample runs.
const SAMPLE_TIME: Duration = Duration::from_millis(40);

/// Installs the Prometheus recorder when the library records (nothing to install otherwise).
fn install_recorder() {
    #[cfg(feature = "metrics")]
    {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder");
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                handle.run_upkeep();
            }
        });
    }
}

pub fn run(rt: &Runtime, out: &Path) {
    install_recorder();
    let keys = Arc::new(mock::keys(KEYS));
    let params = mock_params();
    let (managers, handles) = rt.block_on(async {
        let mut managers = Vec::new();
        let mut handles = Vec::new();
        for concurrent in [false, true] {
            let config = SupervisorConfig::default().factory(mock::factory(concurrent));
            let manager = ConnectionManager::spawn(config).await.expect("supervisor");
            let mut opened = Vec::with_capacity(KEYS);
            for key in keys.iter() {
                let handle = manager.open_connection(key, &params).await;
                opened.push(handle.expect("open").expect("mock key"));
            }
            managers.push(manager);
            handles.push(Arc::new(opened));
        }
        (managers, handles)
    });
    let mut results = serde_json::Map::new();
    for callers in [1, CALLERS] {
        let label = if callers == 1 {
            "1 caller"
        } else {
            "64 callers"
        };
        for (name, h) in [
            ("handle execute_command", &handles[0]),
            ("handle execute_command, concurrent plugin", &handles[1]),
        ] {
            let h = h.clone();
            let call = Arc::new(move |i: usize| {
                let h = h.clone();
                async move {
                    let out = h[i % KEYS].execute_command("x").await;
                    std::hint::black_box(out.expect("command"));
                }
            });
            // Warm up, and size the samples from it.
            let probe = 2_000u64;
            let took = in_task(rt, drive(probe, callers, call.clone()));
            let per_call = took.as_secs_f64() / probe as f64;
            let iters = ((SAMPLE_TIME.as_secs_f64() / per_call) as u64).max(1_000);
            let mut ns: Vec<f64> = (0..SAMPLES)
                .map(|_| {
                    let took = in_task(rt, drive(iters, callers, call.clone()));
                    took.as_secs_f64() * 1e9 / iters as f64
                })
                .collect();
            ns.sort_by(f64::total_cmp);
            results.insert(format!("{name}/{label}"), json!(ns[ns.len() / 2]));
        }
    }
    rt.block_on(async {
        for manager in managers {
            manager.shutdown().await.expect("shutdown");
        }
    });
    let line = json!({ "metrics": cfg!(feature = "metrics"), "ns_per_call": results });
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .and_then(|mut file| writeln!(file, "{line}"));
    if let Err(error) = written {
        eprintln!("could not write {}: {error}", out.display());
    }
}
