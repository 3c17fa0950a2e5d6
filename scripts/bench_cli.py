#!/usr/bin/env python3
"""Issue 12's CLI benchmark: one job (every device runs the same show commands once) through
the fleet tool over CLI sessions, through the fleet tool over exec channels, and through
netmiko the way Nornir runs it (a thread pool; ConnectHandler, enable, send_command), against
the same embedded devices (fleet/examples/cli_lab.rs, started by scripts/bench-cli.sh).

Reports commands per second (wall time of the whole job, logins included), per-command latency
p50/p99, and the client's CPU time (user + system) for each.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor


def commands(count):
    # What both the CLI imitation and the exec command set answer.
    kinds = ["show version", "echo bench-{}"]
    return [kinds[i % len(kinds)].format(i) for i in range(count)]


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[round((len(values) - 1) * p)]


def row(name, total, ok, wall, latencies_ms, cpu):
    print(
        f"{name:<26} {ok:>5}/{total:<5} {ok / wall:>9.0f} cmd/s  wall {wall:6.2f} s  "
        f"p50 {percentile(latencies_ms, 0.5):7.2f} ms  p99 {percentile(latencies_ms, 0.99):7.2f} ms  "
        f"client CPU {cpu:6.2f} s",
        flush=True,
    )


def run_fleet(name, fleet, inventory, cmds, per_host, hosts):
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
        argv = [
            fleet, "--inventory", inventory, "--rounds", "1", "--commands", ",".join(cmds),
            "--concurrency", str(hosts * max(per_host, 1)), "--per-host", str(per_host),
            "--output", out.name,
        ]
        started = time.perf_counter()
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            print(f"{name}: fleet exited {status}: {child.stderr.read().decode()}", file=sys.stderr)
        records = [json.loads(line) for line in open(out.name)]
    latencies = [r["duration_ms"] for r in records if r["ok"]]
    row(name, len(records), len(latencies), wall, latencies, usage.ru_utime + usage.ru_stime)


def run_netmiko(lab, cmds, workers):
    from netmiko import ConnectHandler

    def job(host):
        latencies = []
        conn = ConnectHandler(
            device_type="cisco_ios", host="127.0.0.1", port=host["port"],
            username=lab["username"], password=lab["password"], secret=lab["secret"],
        )
        try:
            conn.enable()
            for cmd in cmds:
                started = time.perf_counter()
                conn.send_command(cmd)
                latencies.append((time.perf_counter() - started) * 1e3)
        finally:
            conn.disconnect()
        return latencies

    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    latencies, failed = [], 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(job, host) for host in lab["hosts"]]:
            try:
                latencies.extend(future.result())
            except Exception as error:  # a device the job could not finish
                failed += 1
                print(f"netmiko: {error!r}", file=sys.stderr)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    total = len(lab["hosts"]) * len(cmds)
    row(f"netmiko ({workers} workers)", total, len(latencies), wall, latencies, cpu)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lab", required=True, help="the directory cli_lab wrote")
    parser.add_argument("--fleet", required=True, help="the fleet binary")
    parser.add_argument("--commands", type=int, default=20)
    parser.add_argument("--workers", type=int, action="append", help="netmiko thread pool sizes")
    args = parser.parse_args()
    lab = json.load(open(os.path.join(args.lab, "hosts.json")))
    cmds = commands(args.commands)
    hosts = len(lab["hosts"])
    print(f"{hosts} embedded cisco_ios devices x {len(cmds)} commands, one login each")
    run_fleet("fleet CLI sessions", args.fleet, os.path.join(args.lab, "cli.toml"), cmds, 1, hosts)
    run_fleet("fleet exec, per-host 1", args.fleet, os.path.join(args.lab, "exec.toml"), cmds, 1, hosts)
    run_fleet("fleet exec, per-host 8", args.fleet, os.path.join(args.lab, "exec.toml"), cmds, 8, hosts)
    for workers in args.workers or [20]:
        run_netmiko(lab, cmds, workers)


if __name__ == "__main__":
    main()
