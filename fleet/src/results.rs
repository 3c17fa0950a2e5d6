//! What `--output` and `--show` make of the command results: JSON Lines, and the outputs
//! grouped by host the way Nornir's `print_result` prints them.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

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
