//! What becomes of the command results: the per-device report, and for `--output` and `--show`
//! JSON Lines and the outputs grouped by host the way Nornir's `print_result` prints them.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connection_supervisor::{ConnectionCounters, ConnectionKey, ConnectionState};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::inventory::Target;

/// How one command ended on one host, after its retries.
pub(crate) struct Record {
    pub(crate) command: String,
    /// The output when it succeeded, and `--output` or `--show` wants it.
    pub(crate) output: Option<String>,
    pub(crate) error: Option<String>,
    /// From its first try to its result, retries and the wait for a reconnect included.
    pub(crate) duration: Duration,
}

impl Record {
    fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Tries per command: the first, plus retries after the session died under it.
const TRIES: u32 = 4;

/// How one try of a command ended.
pub(crate) enum Try {
    /// It ran: its output.
    Ran(String),
    /// It ran and failed, and would fail the same way again: no retry.
    Failed(String),
    /// It did not get to run (the session died under it, a reconnect or a new owner is not
    /// there yet): the next try waits for that, within its own bound.
    Again(String),
}

/// Runs `command` by `attempt` up to [`TRIES`] times while a try ends in [`Try::Again`]; the
/// record and the number of failed tries, or `None` when the fleet-wide limit is gone. The
/// local run and the cluster run differ only in what a try is.
pub(crate) async fn run_with_retries<F, Fut>(
    command: String,
    limit: &Semaphore,
    keep_output: bool,
    attempt: F,
) -> Option<(Record, u32)>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Try>,
{
    let _permit = limit.acquire().await.ok()?;
    let started = Instant::now();
    let mut failed_tries = 0;
    let mut last_error = None;
    for _ in 0..TRIES {
        match attempt(command.clone()).await {
            Try::Ran(output) => {
                let record = Record {
                    command,
                    output: keep_output.then_some(output),
                    error: None,
                    duration: started.elapsed(),
                };
                return Some((record, failed_tries));
            }
            Try::Failed(error) => {
                last_error = Some(error);
                break;
            }
            Try::Again(error) => {
                failed_tries += 1;
                last_error = Some(error);
            }
        }
    }
    let record = Record {
        command,
        output: None,
        error: Some(last_error.unwrap_or_else(|| "not run".to_owned())),
        duration: started.elapsed(),
    };
    Some((record, failed_tries))
}

/// Writes one JSON object per record, host by host, to `path`.
pub(crate) fn write_json_lines<'a>(
    path: &Path,
    hosts: impl IntoIterator<Item = (&'a str, &'a [Record])>,
) -> Result<(), String> {
    let failed = |e: std::io::Error| format!("--output {}: {e}", path.display());
    let file = std::fs::File::create(path).map_err(failed)?;
    let mut out = std::io::BufWriter::new(file);
    for (host, records) in hosts {
        for record in records {
            let line = json!({
                "host": host,
                "command": record.command,
                "ok": record.ok(),
                "output": record.output,
                "error": record.error,
                "duration_ms": record.duration.as_secs_f64() * 1e3,
            });
            writeln!(out, "{line}").map_err(failed)?;
        }
    }
    out.flush().map_err(failed)
}

/// A header line as Nornir draws them: `text`, then `fill` up to 80 columns.
fn banner(text: &str, fill: char) -> String {
    let pad = 80usize.saturating_sub(text.chars().count() + 1).max(4);
    format!("{text} {}", fill.to_string().repeat(pad))
}

/// Prints every host's results: a `* host` header with its tally, then each command between
/// `vvvv` and `^^^^` lines with its output, or its error.
pub(crate) fn show<'a>(hosts: impl IntoIterator<Item = (&'a str, &'a [Record])>) {
    for (host, records) in hosts {
        let failed = records.iter().filter(|r| !r.ok()).count();
        println!(
            "{}",
            banner(
                &format!("* {host} ** {} ok, {failed} failed", records.len() - failed),
                '*'
            )
        );
        for record in records {
            let level = if record.ok() { "INFO" } else { "ERROR" };
            println!(
                "{}",
                banner(&format!("vvvv {} ** {level}", record.command), 'v')
            );
            match (&record.output, &record.error) {
                (_, Some(error)) => println!("{error}"),
                (Some(output), None) => println!("{}", output.trim_end_matches('\n')),
                (None, None) => {}
            }
            println!("{}", banner(&format!("^^^^ END {}", record.command), '^'));
        }
    }
}

/// What one device did.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) ok: u32,
    pub(crate) failed_tries: u32,
    pub(crate) gave_up: u32,
    pub(crate) last_error: Option<String>,
    pub(crate) latencies: Vec<Duration>,
    pub(crate) open_error: Option<String>,
    /// Every command's result, in the order of the command list.
    pub(crate) records: Vec<Record>,
}

fn percentile(latencies: &mut [Duration], p: f64) -> Option<Duration> {
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    let index = ((latencies.len() - 1) as f64 * p).round() as usize;
    Some(latencies[index])
}

/// The per-device table, the fleet's totals and the plugin's counters.
pub(crate) fn print_report(
    targets: &[Arc<Target>],
    tallies: &mut [Tally],
    states: &[ConnectionState],
    reconnects: &HashMap<ConnectionKey, u32>,
    counters: Option<ConnectionCounters>,
) {
    println!();
    println!(
        "{:<14} {:<10} {:>6} {:>7} {:>8} {:>11} {:>9}",
        "device", "state", "ok", "failed", "retried", "reconnects", "p50 ms"
    );
    for ((target, tally), state) in targets.iter().zip(tallies.iter_mut()).zip(states) {
        let p50 = percentile(&mut tally.latencies, 0.5)
            .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<14} {:<10} {:>6} {:>7} {:>8} {:>11} {:>9}",
            target.key.hostname,
            format!("{state:?}"),
            tally.ok,
            tally.gave_up,
            tally.failed_tries,
            reconnects.get(&target.key).copied().unwrap_or(0),
            p50
        );
        if let Some(error) = &tally.open_error {
            println!("    open failed: {error}");
        } else if tally.gave_up > 0
            && let Some(error) = &tally.last_error
        {
            println!("    last failure: {error}");
        }
    }
    let mut all: Vec<Duration> = tallies
        .iter()
        .flat_map(|t| t.latencies.iter().copied())
        .collect();
    let p50 = percentile(&mut all, 0.5).unwrap_or_default();
    let p99 = percentile(&mut all, 0.99).unwrap_or_default();
    println!();
    println!(
        "fleet: {} commands ok, {} failed, {} tries retried; latency p50 {:.1} ms, p99 {:.1} ms",
        tallies.iter().map(|t| t.ok).sum::<u32>(),
        tallies.iter().map(|t| t.gave_up).sum::<u32>(),
        tallies.iter().map(|t| t.failed_tries).sum::<u32>(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    match counters {
        Some(c) => println!(
            "counters[ssh]: create {} open {} failed-open {} close {} losses {} reconnects {} crashes {} restarts {} quarantines {}",
            c.create_calls,
            c.open_calls,
            c.failed_open_calls,
            c.close_calls,
            c.losses,
            c.reconnects,
            c.crashes,
            c.restarts,
            c.quarantines
        ),
        None => println!("counters[ssh]: none (no connection was created)"),
    }
}
