#!/usr/bin/env bash
# Issue 12's CLI benchmark: HOSTS (default 100) embedded Cisco IOS imitations x 20 show
# commands, through the fleet tool (CLI sessions, then exec channels) and through netmiko run
# the Nornir way, side by side in one run. Figures, not assertions: see scripts/bench_cli.py.
#
#   bash scripts/bench-cli.sh [HOSTS] [NETMIKO_WORKERS...]
#
# netmiko comes from PyPI into a venv ($BENCH_VENV, default /tmp/cs-bench-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
hosts=${1:-100}
shift || true
venv=${BENCH_VENV:-/tmp/cs-bench-venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q netmiko
fi
cargo build --release -p fleet --bin fleet --example cli_lab
lab=$(mktemp -d /tmp/cs-cli-lab.XXXXXX)
exec 3> >(exec target/release/examples/cli_lab "$hosts" "$lab" > "$lab/lab.log" 2>&1)
# Devices are up once the lab has written its inventories.
for _ in $(seq 1 600); do
    grep -q ready "$lab/lab.log" 2>/dev/null && break
    sleep 0.1
done
grep -q ready "$lab/lab.log" || { cat "$lab/lab.log"; exit 1; }
workers=()
for w in "${@:-20}"; do workers+=(--workers "$w"); done
"$venv/bin/python" scripts/bench_cli.py --lab "$lab" --fleet target/release/fleet "${workers[@]}"
exec 3>&-
rm -rf "$lab"
