#!/usr/bin/env bash
# Runs the benchmarks (bench/benches/supervisor.rs) and writes docs/benchmarks.md from what they
# measured: criterion's estimates (target/criterion) and the figures the benchmark keeps itself
# (target/bench-report/extras.json, fleet-latency.svg). Every number in the page comes from
# this run; the analysis under "What the numbers say" is kept in docs/benchmarks-analysis.md
# and copied in.
#
#   scripts/bench-report.sh            run everything (about 5 minutes on 2 cores), then write
#   scripts/bench-report.sh --no-run   only rewrite the page from the last run's results
#
# Needs python3 (for the page) and nothing else beyond the Rust toolchain.

set -euo pipefail
cd "$(dirname "$0")/.."

# The workspace's target/ (the benchmarks are the bench/ package; criterion asks cargo for the
# workspace target directory, so its results land in target/criterion here too).
readonly REPORT_DIR=target/bench-report
readonly PAGE=docs/benchmarks.md
readonly PLOT=docs/benchmarks/fleet-latency.svg

if [[ ${1:-} != --no-run ]]; then
    rm -rf target/criterion "$REPORT_DIR"
    mkdir -p "$REPORT_DIR"
    BENCH_REPORT_DIR=$PWD/$REPORT_DIR cargo bench -p connection-supervisor-bench --bench supervisor 2>&1 |
        tee "$REPORT_DIR/bench.log"
    # --- SSH at scale (bench/benches/ssh_scale.rs; issue 14, item 4) -------------------------
    # Its own target: 5,000 embedded devices, each phase in a child process (about 3 minutes).
    # `metrics` lets it read the supervisor's open-slot waits. Writes $REPORT_DIR/ssh-scale.json.
    SSH_SCALE_DEVICES=${SSH_SCALE_DEVICES:-5000} BENCH_REPORT_DIR=$PWD/$REPORT_DIR \
        cargo bench -p connection-supervisor-bench --bench ssh_scale --features metrics 2>&1 |
        tee "$REPORT_DIR/ssh-scale.log"
    # --- end SSH at scale --------------------------------------------------------------------
fi

# ---- begin: bench-latency block (issue 14: 20 ms round-trip fleet, fan-out plot, metrics on/off)
# The 20 ms fleet needs the library's open samples, so it runs in a build with the bench's
# `metrics` feature (`rtt_fleet`, writes extras-metrics.json and fanout-rtt.svg). The metrics
# on/off comparison runs the handle-call pass (BENCH_METRICS_AB) of both builds alternately,
# AB_ROUNDS times, order swapped every round: one process is one build, and alternating cancels
# the machine's drift. `--no-run` keeps the last results of both.
readonly AB_ROUNDS=${AB_ROUNDS:-8}
readonly FANOUT_PLOT=docs/benchmarks/fanout-rtt.svg

# The path of the bench executable built with `--features "$1"` (empty: the default build).
bench_exe() {
    cargo bench -p connection-supervisor-bench ${1:+--features "$1"} --bench supervisor \
        --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "supervisor" and m.get("executable"):
        print(m["executable"])'
}

if [[ ${1:-} != --no-run ]]; then
    BENCH_REPORT_DIR=$PWD/$REPORT_DIR cargo bench -p connection-supervisor-bench --features metrics \
        --bench supervisor -- rtt_fleet 2>&1 | tee "$REPORT_DIR/bench-metrics.log"
    off=$(bench_exe "")
    on=$(bench_exe metrics)
    [[ -x $off && -x $on ]] || {
        echo "bench-report: could not find both bench executables ($off, $on)" >&2
        exit 1
    }
    rm -f "$REPORT_DIR/metrics-ab.jsonl"
    for ((round = 0; round < AB_ROUNDS; round++)); do
        if ((round % 2 == 0)); then pair=("$off" "$on"); else pair=("$on" "$off"); fi
        for exe in "${pair[@]}"; do
            BENCH_METRICS_AB=$PWD/$REPORT_DIR/metrics-ab.jsonl "$exe"
        done
        echo "bench-report: metrics on/off round $((round + 1))/$AB_ROUNDS done"
    done
fi
if [[ -s $REPORT_DIR/fanout-rtt.svg ]]; then
    mkdir -p "$(dirname "$FANOUT_PLOT")"
    cp "$REPORT_DIR/fanout-rtt.svg" "$FANOUT_PLOT"
fi
# ---- end: bench-latency block

[[ -s $REPORT_DIR/extras.json ]] || {
    echo "bench-report: no $REPORT_DIR/extras.json; run without --no-run first" >&2
    exit 1
}
mkdir -p "$(dirname "$PLOT")"
if [[ -s $REPORT_DIR/fleet-latency.svg ]]; then
    cp "$REPORT_DIR/fleet-latency.svg" "$PLOT"
fi

python3 - "$REPORT_DIR/extras.json" "$PAGE" docs/benchmarks-analysis.md "$(rustc --version)" <<'PY'
import glob, json, os, platform, sys, datetime

extras_path, page, analysis_path, rustc = sys.argv[1:5]
extras = json.load(open(extras_path))
const = extras["constants"]

# criterion: target/criterion/<group>/<function>/<value>/new/{benchmark,estimates}.json
results = {}
for path in glob.glob("target/criterion/**/new/benchmark.json", recursive=True):
    bench = json.load(open(path))
    estimates = json.load(open(os.path.join(os.path.dirname(path), "estimates.json")))
    results[bench["full_id"]] = estimates["median"]["point_estimate"]  # ns per iteration

def ns(full_id):
    if full_id not in results:
        raise SystemExit(f"bench-report: no result for {full_id!r}; did every benchmark run?")
    return results[full_id]

def fmt_time(value_ns):
    if value_ns < 1e3:
        return f"{value_ns:.0f} ns"
    if value_ns < 1e6:
        return f"{value_ns / 1e3:.2f} µs"
    if value_ns < 1e9:
        return f"{value_ns / 1e6:.1f} ms"
    return f"{value_ns / 1e9:.2f} s"

def fmt_rate(per_second):
    if per_second >= 1e6:
        return f"{per_second / 1e6:.2f} M/s"
    if per_second >= 1e3:
        return f"{per_second / 1e3:.1f} k/s"
    return f"{per_second:.0f}/s"

def fmt_ratio(time_ratio):
    if time_ratio >= 1:
        return f"{time_ratio:.1f}× slower"
    return f"{1 / time_ratio:.1f}× faster"

def verdict(ok):
    return "met" if ok else "**missed**"

def targets(rows):
    """A table of (target, measured, met?) rows; met? None leaves the verdict empty."""
    w("| target | measured | |")
    w("| --- | --- | --- |")
    for target, measured, ok in rows:
        cell = "" if ok is None else f" {verdict(ok)}"
        w(f"| {target} | {measured} |{cell} |")
    w("")

def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"

def memory_gib():
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return "unknown"

out = []
w = out.append
w("# Benchmarks")
w("")
w("Written by `scripts/bench-report.sh` from one run of")
w("`cargo bench -p connection-supervisor-bench --bench supervisor` (bench/benches/supervisor.rs);")
w("rerun the script to refresh every number on this page.")
w("")
# When the benchmark wrote its results, not when this page was written (--no-run rewrites it).
run_at = datetime.datetime.fromtimestamp(os.path.getmtime(extras_path), datetime.timezone.utc)
w(f"- Run: {run_at:%Y-%m-%d %H:%M} UTC")
w(f"- Machine: {os.cpu_count()} cores ({cpu_model()}), {memory_gib()} RAM, "
  f"{platform.system()} {platform.release()}")
w(f"- Toolchain: {rustc}; release profile; tokio multi-thread runtime with 2 workers")
w("- Figures are criterion medians. Timings are taken inside a runtime task.")
w("")

# 1. Hot path -------------------------------------------------------------------------------
w("## 1. Hot path on alive connections")
w("")
w(f"Calls over {const['keys']:,} keys of a mock plugin that answers at once, from one caller and "
  f"from {const['callers']} callers at once. *handle execute_command* goes to the connection's "
  "actor (a plugin that runs one command at a time); *concurrent plugin* is the same mock "
  "handing out a `CommandRunner`, as the SSH plugin does, so the handle runs the command "
  "without messaging the actor. The baseline is upstream genja's lock-based design "
  "re-implemented in bench/benches/supervisor/baseline.rs: a DashMap of "
  "`Arc<tokio::sync::Mutex<dyn Connection>>`, factory called inside the map entry, same counters.")
w("")
w("| operation | 1 caller | 64 callers (per call) | 64 callers (throughput) | vs baseline, 1 caller | vs baseline, 64 callers |")
w("| --- | --- | --- | --- | --- | --- |")
rows = [
    ("supervisor open_connection", "baseline open_connection"),
    ("handle execute_command", "baseline execute_command"),
    ("handle execute_command, concurrent plugin", "baseline execute_command"),
    ("handle is_alive", None),
    ("bare ractor call_t (the floor)", None),
    ("baseline open_connection", None),
    ("baseline execute_command", None),
]
for name, base in rows:
    one = ns(f"hot_path/{name}/1 caller")
    many = ns(f"hot_path/{name}/64 callers")
    if base:
        r1 = fmt_ratio(one / ns(f'hot_path/{base}/1 caller'))
        r64 = fmt_ratio(many / ns(f'hot_path/{base}/64 callers'))
    else:
        r1 = r64 = ""
    w(f"| `{name}` | {fmt_time(one)} | {fmt_time(many)} | {fmt_rate(1e9 / many)} | {r1} | {r64} |")
w("")
handle1 = ns("hot_path/handle execute_command/1 caller")
open1 = ns("hot_path/supervisor open_connection/1 caller")
handle64 = ns("hot_path/handle execute_command/64 callers")
open64 = ns("hot_path/supervisor open_connection/64 callers")
direct1 = ns("hot_path/handle execute_command, concurrent plugin/1 caller")
direct64 = ns("hot_path/handle execute_command, concurrent plugin/64 callers")
targets([
    ("handle call ≤ 1 µs median, 1 caller (through the actor)", fmt_time(handle1), handle1 <= 1e3),
    ("handle call ≤ 1 µs median, 1 caller (concurrent plugin, no actor hop)", fmt_time(direct1), direct1 <= 1e3),
    ("`open_connection` ≤ 2 µs median, 1 caller", fmt_time(open1), open1 <= 2e3),
    ("≥ 1 M ops/s with 64 callers (handle call through the actor)", fmt_rate(1e9 / handle64), 1e9 / handle64 >= 1e6),
    ("≥ 1 M ops/s with 64 callers (handle call, concurrent plugin)", fmt_rate(1e9 / direct64), 1e9 / direct64 >= 1e6),
    ("≥ 1 M ops/s with 64 callers (`open_connection`)", fmt_rate(1e9 / open64), 1e9 / open64 >= 1e6),
])

# 2. SSH fleet ------------------------------------------------------------------------------
commands = const["fleet_hosts"] * const["fleet_commands"]
w("## 2. SSH fleet on embedded devices")
w("")
w(f"{const['fleet_hosts']} embedded SSH devices (`testing::SshTestServer`, in the same process) "
  f"× {const['fleet_commands']} commands each (`echo fleet`), at most {const['per_host']} in "
  "flight per host in every variant. *supervisor*: `ConnectionHandle::execute_command` on "
  "connections opened beforehand. *raw russh*: one `client::Handle` per host, no actors. "
  "*connect per command*: connect, authenticate, exec, disconnect for every command (at most "
  f"{const['connect_limit']} handshakes at once, so it is not slowed by handshake contention).")
w("")
w("| variant | time for all commands | commands/s | p50 latency | p90 | p99 |")
w("| --- | --- | --- | --- | --- | --- |")
lat = extras.get("fleet_latency_ms", {})
rates = {}
for name in ["supervisor", "raw russh", "connect per command"]:
    t = ns(f"ssh_fleet/{name}")
    rates[name] = commands / (t / 1e9)
    l = lat.get(name, {})
    cell = lambda k: f"{l[k]:.2f} ms" if l.get(k) is not None else "-"
    w(f"| {name} | {fmt_time(t)} | {rates[name]:,.0f} | {cell('p50')} | {cell('p90')} | {cell('p99')} |")
w("")
vs_raw = rates["supervisor"] / rates["raw russh"]
vs_cpc = rates["supervisor"] / rates["connect per command"]
paired = extras.get("fleet_paired")
if paired:
    ratios = paired["ratios"]
    spread = f"{ratios[len(ratios) // 10]:.2f}-{ratios[len(ratios) * 9 // 10]:.2f}"
    w(f"The machine's speed drifts by up to ±20% over minutes, and criterion runs each variant's "
      f"samples back to back, so the table's two rates can disagree by that much from run to "
      f"run. The target is judged on {paired['rounds']} more rounds that alternate a "
      "supervisor pass and a raw russh pass (order swapped every round): the median of the "
      "per-round ratios, which drift cancels.")
    w("")
if paired:
    median = paired["median_ratio"]
    fleet_rows = [
        (f"≥ 0.95 × raw russh's commands/s (median of {paired['rounds']} alternating pairs; "
         f"middle 80%: {spread})", f"{median:.2f}×", median >= 0.95),
        ("(the same from the table above, variants run back to back)", f"{vs_raw:.2f}×", None),
    ]
else:
    fleet_rows = [("≥ 0.95 × raw russh's commands/s", f"{vs_raw:.2f}×", vs_raw >= 0.95)]
targets(fleet_rows + [("≥ 8 × connect-per-command", f"{vs_cpc:.1f}×", vs_cpc >= 8)])
if os.path.exists("docs/benchmarks/fleet-latency.svg"):
    w("Latency of every command in one extra pass of each variant (cumulative, log time axis):")
    w("")
    w("![fleet latency distribution](benchmarks/fleet-latency.svg)")
    w("")

# 3. Fan-out --------------------------------------------------------------------------------
w(f"## 3. Opening {const['fanout_hosts']:,} hosts at once")
w("")
w("Connect, key exchange, strict host-key check against a known_hosts file listing every device, "
  "password authentication. The supervisor bounds opens in progress (default 32); the raw "
  "variant starts all of them at once.")
w("")
sup = ns("open_fanout/supervisor (32 opens at a time)")
raw = ns("open_fanout/raw russh (unbounded)")
w("| variant | time until all are open | opens/s |")
w("| --- | --- | --- |")
w(f"| supervisor, 32 opens at a time | {fmt_time(sup)} | {const['fanout_hosts'] / (sup / 1e9):,.0f} |")
w(f"| raw russh, unbounded | {fmt_time(raw)} | {const['fanout_hosts'] / (raw / 1e9):,.0f} |")
w("")
targets([
    ("≤ 1.5 s", fmt_time(sup), sup <= 1.5e9),
    ("faster than unbounded", f"{raw / sup:.2f}× as fast", sup < raw),
])

# 4. Reconnect ------------------------------------------------------------------------------
backoff = const["reconnect_backoff_ms"]
jitter = const["reconnect_jitter"]
bound_ms = backoff * (1 + jitter) + 200
t = ns("reconnect/100 hosts dropped at once")
w(f"## 4. Reconnecting {const['reconnect_hosts']} hosts")
w("")
w(f"Every session of {const['reconnect_hosts']} open devices is killed at once (TCP reset, no SSH "
  "goodbye); timed until the supervisor has reported all of them `Reconnected`. The first "
  f"backoff step is {backoff:.0f} ms ± {jitter:.0%}.")
w("")
w("| measured | target: first backoff step (at most) + 200 ms | |")
w("| --- | --- | --- |")
w(f"| {fmt_time(t)} | {bound_ms:.0f} ms | {verdict(t / 1e6 <= bound_ms)} |")
w("")

# 5. Scale ----------------------------------------------------------------------------------
scale = extras.get("scale", {})
n = const["scale"]
t = ns("scale/100k mock connections created and opened")
rate = n / (t / 1e9)
w(f"## 5. Scale: {n:,} mock connections")
w("")
w(f"{n:,} keys created and opened through `ConnectionManager::open_connection` from "
  f"{const['callers']} tasks, each key its own actor. Memory and close time are from one pass "
  "run first in the process, before anything else could leave freed memory behind.")
w("")
per = scale.get("rss_bytes_per_connection")
close = scale.get("close_all_secs")
w("| measure | value | target | |")
w("| --- | --- | --- | --- |")
w(f"| creations + opens per second | {rate:,.0f} | ≥ 50,000 | {verdict(rate >= 50000)} |")
if per is not None:
    w(f"| resident memory per idle connection | {per / 1024:.1f} KiB | ≤ 10 KB | {verdict(per <= 10000)} |")
first = scale.get("first_pass_create_open_secs")
if first is not None:
    w(f"| creations + opens per second, first pass in a fresh process | {n / first:,.0f} | ≥ 50,000 | {verdict(n / first >= 50000)} |")
if close is not None:
    w(f"| `close_all_connections` for all of them | {close:.2f} s | | |")
w("")

# ---- begin: bench-latency block (issue 14: 20 ms round-trip fleet, fan-out plot, metrics on/off)
report_dir = os.path.dirname(extras_path)
metrics_extras = os.path.join(report_dir, "extras-metrics.json")
rtt = json.load(open(metrics_extras)).get("rtt_fleet") if os.path.exists(metrics_extras) else None
if rtt:
    w(f"## 6. The fleet over a {rtt['rtt_ms']:.0f} ms round trip")
    w("")
    w(f"Loopback has no round-trip time. Here every device's link delays each byte by half of "
      f"{rtt['rtt_ms']:.0f} ms in each direction, from the TCP handshake on "
      "(`SshTestServerConfig::round_trip`: a delay line between the device's socket and its SSH "
      "session; this kernel has no netem). A pass is a whole fleet run from nothing: every host "
      f"opened, then its commands (`echo fleet`), at most {rtt['per_host']} in flight per host; "
      "timed until the last answer. *supervisor*: `open_connection`, then "
      "`ConnectionHandle::execute_command` (a channel per command, up to 8 at once per "
      "connection), opens bounded by `max_concurrent_opens` (the default 32, and 256). "
      "*lock-based baseline*: upstream genja's design (baseline.rs) around the same SSH plugin: "
      "opens unbounded, and a command holds its host's mutex, so each host runs one at a time. "
      "*connect per command*: raw russh, connect + log in + exec + disconnect per command, at "
      f"most {rtt['connect_limit']} at once. The variants' passes alternate, order swapped every "
      "round; times are the median of the rounds, latencies from the last round; CPU is the "
      "process's user + system time over each pass, client and devices together (2 cores: at "
      "most twice the wall time). Built with the "
      "bench's `metrics` feature (the library records into a small in-process recorder).")
    w("")
    for shape in rtt["shapes"]:
        hosts, cmds, variants = shape["hosts"], shape["commands"], shape["variants"]
        w(f"**{hosts:,} hosts × {cmds} commands** ({hosts * cmds:,} commands, {shape['rounds']} rounds)")
        w("")
        w("| variant | time for all (median) | each round | CPU per round | commands/s | vs lock-based baseline | command p50 | command p99 | open p50 (caller) | open p99 (caller) |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        base = variants.get("lock-based baseline", {}).get("median_secs")
        for name, v in variants.items():
            t = v["median_secs"]
            ratio = fmt_ratio(t / base) if base and name != "lock-based baseline" else ""
            rounds = ", ".join(f"{x:.2f}" for x in v["secs"])
            lat, op = v["latency_ms"], v["open_ms"]
            ms = lambda d, k: f"{d[k]:.0f} ms" if d.get(k) is not None else "-"
            cpu = ", ".join(f"{x:.2f}" for x in v.get("cpu_secs", [])) or "-"
            w(f"| {name} | {fmt_time(t * 1e9)} | {rounds} s | {cpu} s | {v['commands_per_sec']:,.0f} | {ratio} | "
              f"{ms(lat, 'p50')} | {ms(lat, 'p99')} | {ms(op, 'p50')} | {ms(op, 'p99')} |")
        w("")
    first = rtt["shapes"][0]
    w(f"The {first['hosts']:,}-host fan-out as the library records it (`open_slot_wait_seconds`, "
      "`open_duration_seconds`, last round):")
    w("")
    w("| supervisor variant | slot wait p50 | p90 | p99 | max | open (plugin) p50 | p99 | max |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, v in first["variants"].items():
        sw, od = v["slot_wait_ms"], v["open_duration_ms"]
        if not sw.get("count"):
            continue
        f = lambda d, k: f"{d[k]:.0f} ms" if d.get(k) is not None else "-"
        w(f"| {name} | {f(sw, 'p50')} | {f(sw, 'p90')} | {f(sw, 'p99')} | {f(sw, 'max')} | "
          f"{f(od, 'p50')} | {f(od, 'p99')} | {f(od, 'max')} |")
    w("")
    if os.path.exists("docs/benchmarks/fanout-rtt.svg"):
        w("Each open of the fan-out on a timeline (the lock-based baseline's as its caller timed "
          "it; it has no slots):")
        w("")
        w("![open latency and slot wait during the 1,000-host fan-out](benchmarks/fanout-rtt.svg)")
        w("")

ab_path = os.path.join(report_dir, "metrics-ab.jsonl")
ab = [json.loads(l) for l in open(ab_path) if l.strip()] if os.path.exists(ab_path) else []
if len(ab) >= 2:
    pairs = [(ab[i], ab[i + 1]) for i in range(0, len(ab) - 1, 2)]
    pairs = [(a, b) if b["metrics"] else (b, a) for a, b in pairs if a["metrics"] != b["metrics"]]
    w("## 7. Handle calls with metrics on and off")
    w("")
    w("The handle-call benchmark (the hot path's handle rows: 1,000 mock keys, through the actor "
      "and on the direct route of a concurrent plugin) in a build without the library's "
      "`metrics` feature and in one with it and metrics-exporter-prometheus's recorder installed "
      "(no HTTP listener; its upkeep run every 5 s, as the exporter's listener does). One process "
      f"is one build, so the script runs a pass of each alternately, {len(pairs)} pairs, order "
      "swapped every pair; each pass keeps the median of 21 samples. The ratio is the median of "
      "the per-pair ratios, which the machine's drift cancels.")
    w("")
    w("| call | metrics off (median of passes) | metrics on | on / off (median of pairs; middle 80%) | target: under +10% |")
    w("| --- | --- | --- | --- | --- |")
    for case in pairs[0][1]["ns_per_call"]:
        on = sorted(p[0]["ns_per_call"][case] for p in pairs)
        off = sorted(p[1]["ns_per_call"][case] for p in pairs)
        ratios = sorted(p[0]["ns_per_call"][case] / p[1]["ns_per_call"][case] for p in pairs)
        mid = ratios[len(ratios) // 2]
        spread = f"{ratios[len(ratios) // 10]:.2f}-{ratios[min(len(ratios) - 1, len(ratios) * 9 // 10)]:.2f}"
        w(f"| `{case}` | {fmt_time(off[len(off) // 2])} | {fmt_time(on[len(on) // 2])} | "
          f"{mid:.3f} ({spread}) | {verdict(mid < 1.10)} |")
    w("")
# ---- end: bench-latency block
# --- SSH at scale (bench/benches/ssh_scale.rs; issue 14, item 4) -----------------------------
ssh_scale_path = os.path.join(os.path.dirname(extras_path), "ssh-scale.json")
if os.path.exists(ssh_scale_path):
    sc = json.load(open(ssh_scale_path))
    n = sc["devices"]
    w(f"## 8. SSH at scale: {n:,} devices")
    w("")
    w(f"{n:,} embedded SSH devices (`testing::SshTestServer`), each opened (strict host-key check "
      f"against one known_hosts file listing all {n:,}, password login) and running `{sc['command']}` "
      f"once, at most {sc['open_bound']} opens at a time (the supervisor's default bound; the raw "
      "client is held to the same). *supervisor*: `ConnectionManager::open_connection` then "
      "`ConnectionHandle::execute_command`; *plugin*: `ssh::SshConnection` opened and used "
      "without the supervisor; *raw russh*: a `client::Handle` per device (tests/raw_ssh). "
      "Each phase runs in a child process of its own (bench/benches/ssh_scale.rs). Memory per "
      "connection is (after - before) / devices, read after `malloc_trim` with every session open "
      "and idle, before = devices started and idle, client set up. *Client only*: the devices run "
      "in a separate process, so the figure is the client's alone. *One process*: devices, "
      "client and supervisor in one process, as the issue asks; its memory includes the devices' "
      "server-side sessions, the same in both rows (run with as many devices as the open-files "
      "limit allows: four descriptors per device there). *heap* counts the bytes of live heap blocks "
      "(a counting allocator), *RSS* what is resident.")
    w("")
    w("| where | variant | time to open + run on all | opens/s | RSS per connection | heap per connection | heap blocks per connection | failed |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- |")
    labels = {"supervisor": "supervisor", "plugin": "plugin, no supervisor", "raw": "raw russh",
              "actor": "an idle ractor actor, no SSH"}
    together = sc["one_process"].get("devices", n)
    together_title = "one process" if together == n else f"one process, {together:,} devices"
    for where, title in [("client_only", "client only"), ("one_process", together_title)]:
        phases = sc[where]["phases"]
        for name in ["supervisor", "plugin", "raw", "actor"]:
            r = phases.get(name)
            if r is None:
                continue
            w(f"| {title} | {labels[name]} | {r['wall_secs']:.2f} s | {r['opens_per_sec']:,.0f} | "
              f"{r['rss_per_connection'] / 1024:.1f} KiB | {r['heap_per_connection'] / 1024:.1f} KiB | "
              f"{r['blocks_per_connection']:.0f} | {r['failures']} |")
    w("")
    rss_ratio = sc["client_only"]["rss_ratio"]
    heap_ratio = sc["client_only"]["heap_ratio"]
    one_ratio = sc["one_process"]["rss_ratio"]
    targets([
        ("resident memory per connection ≤ 1.2 × raw russh's (client only)", f"{rss_ratio:.2f}×", rss_ratio <= 1.2),
        ("(heap bytes per connection, client only)", f"{heap_ratio:.2f}×", None),
        ("(resident memory per connection, one process, devices' sessions included)", f"{one_ratio:.2f}×", None),
    ])
    sup = sc["client_only"]["phases"].get("supervisor", {}).get("supervisor_metrics")
    if sup:
        wait, opened = sup["slot_wait_ms"], sup["open_duration_ms"]
        w(f"Open slots (supervisor, client only; the `metrics` feature's histograms): the open "
          f"itself took {opened['p50']:.0f} ms at the median ({opened['p99']:.0f} ms p99); the wait "
          f"for a slot {wait['p50'] / 1e3:.1f} s at the median and {wait['max'] / 1e3:.1f} s at most, "
          f"with up to {sup['peak_waiting']:,.0f} opens waiting at once. Every device has its own "
          "address, so the per-address handshake limit never binds here; the global bound queues "
          "the rest, and the wait counts against the open timeout (30 s by default).")
        w("")
    sweep = sc.get("bound_sweep") or []
    if sweep:
        w("| open bound (supervisor, client only) | time | opens/s | slot wait p50 | slot wait max | open itself p50 | p99 |")
        w("| --- | --- | --- | --- | --- | --- | --- |")
        for r in [sc["client_only"]["phases"]["supervisor"]] + sweep:
            m = r.get("supervisor_metrics") or {}
            sw, od = m.get("slot_wait_ms") or {}, m.get("open_duration_ms") or {}
            secs = lambda v: f"{v / 1e3:.1f} s" if v is not None else "-"
            ms = lambda v: f"{v:.0f} ms" if v is not None else "-"
            w(f"| {r['bound']} | {r['wall_secs']:.2f} s | {r['opens_per_sec']:,.0f} | {secs(sw.get('p50'))} | "
              f"{secs(sw.get('max'))} | {ms(od.get('p50'))} | {ms(od.get('p99'))} |")
        w("")
# --- end SSH at scale ------------------------------------------------------------------------

if os.path.exists(analysis_path):
    w(open(analysis_path).read().rstrip())
    w("")

open(page, "w").write("\n".join(out))
print(f"bench-report: wrote {page}")
PY
