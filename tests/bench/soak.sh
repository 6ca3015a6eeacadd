#!/usr/bin/env bash
# The memory soak (issue 5): sealmq under steady load for N minutes, its RSS
# sampled every 10 s; is it flat? Writes the result between
# <!-- soak:begin --> and <!-- soak:end --> in BENCHMARKS.md.
#
#   tests/bench/soak.sh [--minutes N] [--rate R] [--out DIR] [--no-write] [--report-only]
#
# Load: 10 publishers → 10 subscribers (pairs), QoS 1, 256 B, R messages/s
# per publisher (default 500, so 5,000/s in all), unsigned, every message
# durable in the log; broker pinned to core 0 and load tool to core 1 when
# there are two. Flat means: after two minutes of warming up (allocator,
# SQLite page cache, session queues and buffers at their working sizes),
# the mean RSS of the last minute is within 10 % of the third minute's.
# --report-only rebuilds the result from an earlier run's --out directory.
set -euo pipefail

minutes=10
rate=500
out=""
write=1
report_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift ;;
    --rate) rate="$2"; shift ;;
    --out) out="$2"; shift ;;
    --no-write) write=0 ;;
    --report-only) report_only=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

root=$(cd "$(dirname "$0")/../.." && pwd)
target="${CARGO_TARGET_DIR:-$root/target}"
out="${out:-$(mktemp -d /tmp/sealmq-soak.XXXXXX)}"
mkdir -p "$out"
cd "$root"

if [ "$report_only" -eq 0 ]; then
cargo build --release -p sealmq -p sealmq-bench --bins >&2
sealmq="$target/release/sealmq"
bench="$target/release/sealmq-bench"
if [ "$(nproc)" -ge 2 ]; then
  pin_broker=(taskset -c 0)
  pin_tool=(taskset -c 1)
  pinning="broker pinned to core 0, load tool to core 1"
else
  pin_broker=()
  pin_tool=()
  pinning="one core, shared"
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
data="$out/data"
printf '[limits]\nmax_publish_rate = 0\n' > "$out/sealmq.toml"
"${pin_broker[@]}" "$sealmq" --data "$data" serve --config "$out/sealmq.toml" \
  --listen "127.0.0.1:$port" --http 127.0.0.1:0 >"$out/broker.out" 2>"$out/broker.err" &
broker=$!
trap 'kill "$broker" 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q vkey "$out/broker.out" 2>/dev/null && break; sleep 0.1; done

seconds=$((minutes * 60))
(
  start=$(date +%s)
  while kill -0 "$broker" 2>/dev/null; do
    rss=$(awk '/VmRSS/ { print $2 }' "/proc/$broker/status" 2>/dev/null || true)
    [ -n "$rss" ] && echo "$(( $(date +%s) - start )) $rss"
    sleep 10
  done
) > "$out/rss.txt" &
sampler=$!

command=(sealmq-bench -p 10 -s 10 --pattern pairs --qos 1 --payload 256 --rate "$rate" --warmup 5 --duration "$seconds")
"${pin_tool[@]}" "$bench" --host "127.0.0.1:$port" --broker-pid "$broker" \
  -p 10 -s 10 --pattern pairs --qos 1 --payload 256 --rate "$rate" --warmup 5 --duration "$seconds" \
  --json "$out/bench.json" | tee "$out/bench.txt" >&2
kill -TERM "$broker"
wait "$broker" || true
kill "$sampler" 2>/dev/null || true
trap - EXIT
echo "$pinning" > "$out/pinning.txt"
echo "${command[*]}" > "$out/command.txt"
fi
pinning=$(cat "$out/pinning.txt")
command=("$(cat "$out/command.txt")")

python3 - "$out" "$minutes" "$rate" "$pinning" "$write" "$root/BENCHMARKS.md" "${command[*]}" <<'EOF'
import json, subprocess, sys
out, minutes, rate, pinning, write, benchmarks, command = sys.argv[1:]
samples = [tuple(map(int, line.split())) for line in open(f"{out}/rss.txt") if line.strip()]
def mib(kib): return f"{kib / 1024:.1f} MiB"
def window(lo, hi):
    values = [kib for t, kib in samples if lo <= t < hi]
    return sum(values) / len(values) if values else None
end = samples[-1][0]
# The reference minute: the third (after two of warming up), or the second
# in runs shorter than four minutes.
ref_start = 120 if end >= 240 else 60
second, last = window(ref_start, ref_start + 60), window(max(ref_start + 60, end - 60), end + 1)
ref_name = "3rd minute" if ref_start == 120 else "2nd minute"
bench = json.load(open(f"{out}/bench.json"))
lost, dups = bench.get("lost", "?"), bench.get("duplicated", "?")
delivered = bench.get("delivered_per_s") or bench.get("delivered", {})
flat = second is not None and last is not None and last <= second * 1.10
growth = (last - second) / second * 100 if second and last else float("nan")
machine = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
lines = [
    f"Soak of {minutes} min, {subprocess.run(['date', '-u', '-r', f'{out}/bench.json', '+%Y-%m-%d %H:%M UTC'], capture_output=True, text=True).stdout.strip()}: "
    f"{machine}, {pinning}. Load: `{command}` (10 → 10 pairs, QoS 1, 256 B, {int(rate) * 10:,} messages/s in all, "
    f"every one durable), broker RSS sampled every 10 s (`tests/bench/soak.sh --minutes {minutes} --rate {rate}`).",
    "",
    f"| RSS at 1 min | mean, {ref_name} | mean, last minute | max | change, {ref_name} → last minute | lost / duplicated | flat? |",
    "|--:|--:|--:|--:|--:|--:|:-:|",
    f"| {mib(window(55, 66) or samples[0][1])} | {mib(second)} | {mib(last)} | {mib(max(k for _, k in samples))} "
    f"| {growth:+.1f} % | {lost} / {dups} | {'yes' if flat else 'NO'} |",
]
text = "\n".join(lines) + "\n"
print(text)
open(f"{out}/soak.md", "w").write(text)
if write == "1":
    doc = open(benchmarks).read()
    begin, end_marker = "<!-- soak:begin -->", "<!-- soak:end -->"
    if begin in doc and end_marker in doc:
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end_marker, 1)
        open(benchmarks, "w").write(head + begin + "\n" + text + end_marker + tail)
    else:
        print(f"{benchmarks} has no soak markers; left alone", file=sys.stderr)
sys.exit(0 if flat and lost == 0 and dups == 0 else 1)
EOF
