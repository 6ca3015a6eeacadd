#!/usr/bin/env bash
# What busy connections cost the broker's memory (issue 11): two loads on
# a fresh broker (the comparison's limits: no publish rate limit, a queue
# of 1,000,000), each reporting the broker's RSS from /proc.
#
#   tests/bench/footprint.sh [--fanout PAYLOAD] [--burst]
#
# --fanout PAYLOAD (default 500000): `sealmq-bench -p 1 -s 200 --pattern
#     fanout --qos 1 --payload PAYLOAD`, 1 s warm-up, 3 s measured; prints
#     the delivered rate, the broker's CPU per delivered message and its
#     peak RSS (VmHWM): what a window of large deliveries to each of 200
#     subscribers holds.
# --burst: 100 retained messages of 1,000 bytes, then 1,000 subscribers
#     to `#` connect one after the other (MQTT 3.1.1, QoS 0), each getting
#     all 100 at once on SUBSCRIBE and staying connected; prints the RSS
#     growth per subscriber once they are idle.
# Neither given: both.
#
# SEALMQ_BIN: the broker to measure (default: a release build of this
# checkout); the load tool is this checkout's `sealmq-bench`. Run it on an
# otherwise idle machine, under `flock /tmp/bench.lock`.
set -euo pipefail
cd "$(dirname "$0")/../.."

fanout=""
burst=0
while [ $# -gt 0 ]; do
  case "$1" in
    --fanout) fanout="$2"; shift ;;
    --burst) burst=1 ;;
    *) echo "usage: $0 [--fanout PAYLOAD] [--burst]" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$fanout" ] && [ "$burst" -eq 0 ]; then
  fanout=500000
  burst=1
fi

cargo build --release --locked --quiet -p sealmq-bench
if [ -z "${SEALMQ_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin sealmq
  SEALMQ_BIN=target/release/sealmq
fi
bench=target/release/sealmq-bench

work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# Starts a fresh broker; sets pid and host.
start() {
  rm -rf "$work/data"
  printf '[limits]\nmax_publish_rate = 0\nmax_connections = 20000\nmax_queued_messages = 1000000\n' >"$work/sealmq.toml"
  "$SEALMQ_BIN" --data "$work/data" serve --config "$work/sealmq.toml" --listen 127.0.0.1:0 --http 127.0.0.1:0 \
    >"$work/out" 2>"$work/err" &
  pid=$!
  for _ in $(seq 100); do grep -qE '^ +mqtt +' "$work/out" && break; sleep 0.1; done
  host=$(awk '$1 == "mqtt" { print $2; exit }' "$work/out")
  [ -n "$host" ] || { cat "$work/err" >&2; exit 1; }
}

stop() {
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
}

status_kib() { awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"; }

if [ -n "$fanout" ]; then
  start
  "$bench" --host "$host" --mqtt 5 --broker-pid "$pid" -p 1 -s 200 --pattern fanout --qos 1 \
    --payload "$fanout" --warmup 1 --duration 3 | grep -E "delivered |CPU per delivered"
  echo "fan-out of $fanout B to 200 subscribers: peak RSS $(status_kib "$pid" VmHWM) KiB"
  stop
fi

if [ "$burst" -eq 1 ]; then
  start
  python3 - "${host%:*}" "${host##*:}" "$pid" <<'EOF'
import socket, struct, sys, time

host, port, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
RETAINED, SIZE, SUBSCRIBERS = 100, 1000, 1000


def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


def remaining_length(n):
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def packet(first, body):
    return bytes([first]) + remaining_length(len(body)) + body


def string(s):
    return struct.pack(">H", len(s)) + s


def connect(client_id):
    conn = socket.create_connection((host, port))
    conn.sendall(packet(0x10, string(b"MQTT") + bytes([4, 2]) + struct.pack(">H", 60) + string(client_id)))
    assert conn.recv(4)[0] == 0x20, "no CONNACK"
    return conn


publisher = connect(b"retainer")
for n in range(RETAINED):
    # QoS 0, retained.
    publisher.sendall(packet(0x31, string(b"home/%d" % n) + bytes(SIZE)))
time.sleep(1)
before = rss_kib()
subscribers = []
for s in range(SUBSCRIBERS):
    conn = connect(b"hub-%d" % s)
    conn.sendall(packet(0x82, struct.pack(">H", 1) + string(b"#") + b"\x00"))
    conn.settimeout(10)
    # The SUBACK, then every retained PUBLISH.
    want = 5 + sum(len(packet(0x31, string(b"home/%d" % n) + bytes(SIZE))) for n in range(RETAINED))
    got = 0
    while got < want:
        data = conn.recv(1 << 20)
        if not data:
            break
        got += len(data)
    subscribers.append(conn)
time.sleep(2)
after = rss_kib()
print(f"{SUBSCRIBERS} subscribers each sent {RETAINED} retained messages of {SIZE} B, then idle: "
      f"RSS {before} -> {after} KiB, {(after - before) / SUBSCRIBERS:.1f} KiB per subscriber")
EOF
  stop
fi
