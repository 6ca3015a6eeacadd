#!/usr/bin/env bash
# Throughput and latency through the 3-node rmqtt cluster against one
# gateway alone (issue 15's closing note), measured by `sealmq-bench`:
#
#   alone         one sealmq gateway, routing in process (no cluster)
#   cluster-same  one gateway in front of the cluster; publishers and
#                 subscribers on it (gateway -> node -> gateway)
#   cluster-cross two gateways on different nodes; publishers on one,
#                 subscribers on the other (gateway A -> node 1 -> node 2 -> gateway B)
#   rmqtt-cross   the cluster alone, no gateway: publishers on node 1,
#                 subscribers on node 2 (what the cluster costs by itself)
#
# each with the scenarios below (QoS 1, 64 B, unsigned publishers).
#
#   tests/cluster/bench.sh [--quick] [--out DIR]
#
# Writes DIR/runs/*.json (sealmq-bench's JSON), DIR/results.json and
# DIR/table.md (default DIR: $CARGO_TARGET_DIR/bench-cluster). Takes the
# machine's benchmark lock (/tmp/bench.lock) so no two benchmarks overlap.
# Nothing is pinned: 3 nodes, up to 2 gateways and the load tool share the
# cores, so the figures say what one machine does with all of it running.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

quick=0
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
target="${CARGO_TARGET_DIR:-$root/target}"
out="${out:-$target/bench-cluster}"
say() { echo "bench.sh: $*" >&2; }

exec 9>/tmp/bench.lock
say "waiting for /tmp/bench.lock"
flock 9

rmqttd="$(tests/cluster/install-rmqttd.sh)"
export RMQTTD="$rmqttd"
say "building (cargo build --release)"
cargo build --release --locked -p sealmq -p sealmq-bench --bins >&2
sealmq="$target/release/sealmq"
bench="$target/release/sealmq-bench"

if [ "$quick" -eq 1 ]; then
  timing=(--warmup 1 --duration 5)
else
  timing=(--warmup 2 --duration 15)
fi
# name|label|sealmq-bench arguments. Fixed rates first: the cross-node
# setups cannot keep up with the max-rate scenarios (rmqtt forwards
# between nodes at about 8,000-10,000 msgs/s here), and what a run leaves
# queued in the cluster would skew the next; each setup also gets a fresh
# cluster.
scenarios=(
  "a-1k|1 → 1, QoS 1, 64 B at 1,000 msgs/s (latency)|-p 1 -s 1 --qos 1 --payload 64 --rate 1000"
  "b-5k|1 → 1, QoS 1, 64 B at 5,000 msgs/s|-p 1 -s 1 --qos 1 --payload 64 --rate 5000"
  "c-1to1|1 → 1, QoS 1, 64 B, max rate|-p 1 -s 1 --qos 1 --payload 64"
  "d-10to10|10 → 10 (pairs), QoS 1, 64 B, max rate|-p 10 -s 10 --pattern pairs --qos 1 --payload 64"
)
setups=(alone cluster-same cluster-cross rmqtt-cross)

rm -rf "$out"
mkdir -p "$out/runs"
work=$(mktemp -d "${TMPDIR:-/tmp}/sealmq-bench-cluster.XXXXXX")
cleanup() {
  stop_gateways
  [ -f "$work/cluster/env" ] && tests/cluster/cluster.sh stop "$work/cluster" || true
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Same settings as tests/bench/compare.sh's sealmq (no publish rate limit,
# a deep per-client queue), plus the upstream when in front of the cluster.
sealmq_toml='[limits]
max_publish_rate = 0
max_queued_messages = 1000000'

# Starts a gateway with data dir $1 and extra TOML $2; prints its MQTT
# address. Called as `$(start_gateway …)`, a subshell: the pid goes to
# $1.pid, where stop_gateways finds it.
start_gateway() {
  local data="$1" extra="$2" pid
  mkdir -p "$data"
  printf '%s\n%s\n' "$sealmq_toml" "$extra" >"$data.toml"
  "$sealmq" --data "$data" serve --config "$data.toml" --listen 127.0.0.1:0 --http 127.0.0.1:0 \
    >"$data.out" 2>"$data.err" &
  pid=$!
  echo "$pid" >"$data.pid"
  for _ in $(seq 600); do
    if grep -qE '^ +mqtt +' "$data.out" 2>/dev/null; then
      awk '$1 == "mqtt" { print $2; exit }' "$data.out"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  say "gateway $data did not start:"; cat "$data.err" >&2; return 1
}

stop_gateways() {
  local f pid
  for f in "$work"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
    # Not our child (started in a subshell): wait by polling.
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$f"
  done
}

# `[upstream]` for a gateway trying the nodes $@ in turn.
upstream() {
  local list="" n
  for n in "$@"; do list+="${list:+, }\"$n\""; done
  printf '[upstream]\naddresses = [%s]\n' "$list"
}

run_bench() {
  local name="$1" label="$2" pub="$3" sub="$4" pidargs=()
  shift 4
  # One gateway does all of the work (alone, cluster-same): its CPU per
  # delivered message is what the cluster costs a gateway.
  if [ "$pub" = "$sub" ] && [ -e "$work/$name.pid" ]; then pidargs=(--broker-pid "$(cat "$work/$name.pid")"); fi
  say "$name ($pub -> $sub)"
  # shellcheck disable=SC2068
  "$bench" --host "$pub" --sub-host "$sub" --label "$label" ${timing[@]} ${pidargs[@]} "$@" \
    --json "$out/runs/$name.json" >"$out/runs/$name.txt" 2>&1 || say "$name: sealmq-bench failed (see $out/runs/$name.txt)"
}

echo "rmqttd: $("$rmqttd" --version 2>/dev/null | head -1)" >"$out/versions.txt"

for setup in "${setups[@]}"; do
  if [ "$setup" != alone ]; then
    [ -f "$work/cluster/env" ] && tests/cluster/cluster.sh stop "$work/cluster" >&2
    rm -rf "$work/cluster"
    tests/cluster/cluster.sh start "$work/cluster" >&2
    # shellcheck disable=SC1091
    . "$work/cluster/env"
  fi
  for entry in "${scenarios[@]}"; do
    IFS='|' read -r sname slabel sargs <<<"$entry"
    # Fresh gateways per run: each log starts empty, as in compare.sh.
    case "$setup" in
      alone)
        g=$(start_gateway "$work/$setup-$sname" "")
        pub=$g; sub=$g ;;
      cluster-same)
        g=$(start_gateway "$work/$setup-$sname" "$(upstream "$NODE1" "$NODE2" "$NODE3")")
        pub=$g; sub=$g ;;
      cluster-cross)
        pub=$(start_gateway "$work/$setup-$sname-a" "$(upstream "$NODE1" "$NODE2" "$NODE3")")
        sub=$(start_gateway "$work/$setup-$sname-b" "$(upstream "$NODE2" "$NODE3" "$NODE1")")
        ;;
      rmqtt-cross)
        pub=$NODE1; sub=$NODE2 ;;
    esac
    # shellcheck disable=SC2086
    run_bench "$setup-$sname" "$setup: $slabel" "$pub" "$sub" $sargs
    stop_gateways
  done
done

python3 - "$out" "${setups[@]}" <<'EOF'
import json, os, sys
out, setups = sys.argv[1], sys.argv[2:]
runs = {}
for f in sorted(os.listdir(os.path.join(out, "runs"))):
    if f.endswith(".json"):
        runs[f[:-5]] = json.load(open(os.path.join(out, "runs", f)))
json.dump(runs, open(os.path.join(out, "results.json"), "w"), indent=2)
rows = ["| setup | scenario | delivered/s | latency p50 / p99 ms | lost | dup | gateway CPU µs/msg |",
        "|---|---|--:|--:|--:|--:|--:|"]
for name, r in runs.items():
    setup = next(s for s in setups if name.startswith(s + "-"))
    lat = r.get("latency_ms") or {}
    cpu = (r.get("broker") or {}).get("cpu_us_per_delivered")
    rows.append("| {} | {} | {:,.0f} | {} / {} | {} | {} | {} |".format(
        setup, r["label"].split(": ", 1)[-1], r.get("delivered_per_s") or 0,
        lat.get("p50", "-"), lat.get("p99", "-"), r.get("lost"), r.get("duplicated"),
        "-" if cpu is None else cpu))
table = "\n".join(rows) + "\n"
open(os.path.join(out, "table.md"), "w").write(table)
print(table)
EOF
say "results in $out (results.json, table.md, runs/)"
