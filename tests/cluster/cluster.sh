#!/usr/bin/env bash
# A 3-node rmqtt cluster (rmqttd with its raft cluster plugin) on loopback,
# for sealmq's cluster tests and benchmarks.
#
#   tests/cluster/cluster.sh start DIR   start 3 nodes under DIR (created), wait until
#                                        each node delivers to subscribers on every other;
#                                        writes DIR/env (NODE1..3 = host:port, NODES, PIDS)
#   tests/cluster/cluster.sh check DIR   cross-node delivery with mosquitto_pub/sub, again
#   tests/cluster/cluster.sh kill DIR N  SIGKILL node N (1..3), as a crash would
#   tests/cluster/cluster.sh stop DIR    stop every node still running (SIGTERM, then SIGKILL)
#   tests/cluster/cluster.sh up          start in a temp dir, check, keep running until
#                                        Ctrl-C (then stop and delete it; logs are printed as kept)
#
# Each node's configuration, log (rmqttd.log) and pid stay in DIR/nodeN.
# RMQTTD names the binary; by default tests/cluster/install-rmqttd.sh
# finds it (or builds it, once; slow).
#
# The configuration follows rmqtt 0.24's own (rmqtt-conf, rmqtt-cluster-raft):
# - rmqtt.toml: `node.id`, `rpc.server_addr` (the node's gRPC, which the
#   cluster uses to forward publishes and session take-overs between nodes),
#   `plugins.dir` and `plugins.default_startups`, `listener.tcp.<name>.*`;
# - plugins/rmqtt-cluster-raft.toml: `node_grpc_addrs` and `raft_peer_addrs`,
#   lists of "ID@host:port" for all nodes (the same on every node), and
#   `leader_id`: the node that leads at start (others wait for it).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
NODES=3

die() { echo "cluster.sh: $*" >&2; exit 1; }

# Free loopback ports, chosen by the kernel (bound then released; a race
# with another process is possible but unlikely within a second).
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

need_mosquitto_clients() {
  if ! command -v mosquitto_pub >/dev/null || ! command -v mosquitto_sub >/dev/null; then
    echo "cluster.sh: installing mosquitto-clients" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends mosquitto-clients >&2
  fi
}

write_config() {
  local dir="$1" n="$2" mqtt="$3" grpc_list="$4" raft_list="$5" grpc="$6" raft="$7"
  mkdir -p "$dir/node$n/plugins"
  cat >"$dir/node$n/rmqtt.toml" <<EOF
node.id = $n
# The load-average check refuses connections on a busy machine: the tests
# share two cores with builds, so it would refuse at random.
node.busy.check_enable = false
rpc.server_addr = "127.0.0.1:$grpc"
log.to = "console"
log.level = "info"
log.dir = "$dir/node$n"
plugins.dir = "$dir/node$n/plugins"
# Retained messages kept by the cluster; \$share/ groups across nodes.
plugins.default_startups = ["rmqtt-cluster-raft", "rmqtt-retainer", "rmqtt-shared-subscription"]
# On by default in rmqttd: the HTTP API binds 0.0.0.0:6060 on every node
# (three nodes on one host would clash), and no ACL is wanted here.
plugins.disabled_default_startups = ["rmqtt-http-api", "rmqtt-acl", "rmqtt-counter"]
listener.tcp.external.addr = "127.0.0.1:$mqtt"
listener.tcp.external.allow_anonymous = true
listener.tcp.external.nodelay = true
# Defaults are 16 in flight and 1000 queued per session: a gateway's
# upstream connection carries every client's traffic, so it gets room.
listener.tcp.external.max_inflight = 1024
listener.tcp.external.max_mqueue_len = 1000000
listener.tcp.external.max_packet_size = "1m"
listener.tcp.external.session_expiry_interval = "5m"
listener.tcp.external.message_expiry_interval = "5m"
EOF
  cat >"$dir/node$n/plugins/rmqtt-cluster-raft.toml" <<EOF
node_grpc_addrs = [$grpc_list]
raft_peer_addrs = [$raft_list]
laddr = "127.0.0.1:$raft"
leader_id = 1
worker_threads = 2
EOF
}

start_node() {
  local dir="$1" n="$2"
  # rmqttd also reads ./rmqtt.toml: run it in its own directory.
  (cd "$dir/node$n" && exec "$RMQTTD" -f "$dir/node$n/rmqtt.toml" >>"$dir/node$n/rmqttd.log" 2>&1) &
  echo $! >"$dir/node$n/pid"
}

# Publishes on node $from, expects it on node $to (QoS 1, retried).
probe() {
  local from="$1" to="$2" topic="probe/$RANDOM$RANDOM" out
  for _ in $(seq 1 20); do
    out=$( (timeout 3 mosquitto_sub -V mqttv5 -h 127.0.0.1 -p "${to#*:}" -t "$topic" -q 1 -C 1 -W 3 2>/dev/null || true) &
           sleep 0.5
           mosquitto_pub -V mqttv5 -h 127.0.0.1 -p "${from#*:}" -t "$topic" -q 1 -m "from-${from}" 2>/dev/null || true
           wait)
    [ "$out" = "from-${from}" ] && return 0
    sleep 0.5
  done
  return 1
}

check() {
  local dir="$1" addrs=() i j
  # shellcheck disable=SC1091
  . "$dir/env"
  IFS=',' read -r -a addrs <<<"$NODES"
  for i in "${!addrs[@]}"; do
    for j in "${!addrs[@]}"; do
      [ "$i" = "$j" ] && continue
      alive "$dir" $((i + 1)) && alive "$dir" $((j + 1)) || continue
      probe "${addrs[$i]}" "${addrs[$j]}" || die "node $((i + 1)) -> node $((j + 1)): not delivered (logs: $dir/node*/rmqttd.log)"
      echo "cluster.sh: node $((i + 1)) -> node $((j + 1)): delivered" >&2
    done
  done
}

alive() { kill -0 "$(cat "$1/node$2/pid" 2>/dev/null)" 2>/dev/null; }

start() {
  local dir="$1"
  need_mosquitto_clients
  RMQTTD="$("$here/install-rmqttd.sh")"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  read -r -a ports <<<"$(free_ports $((NODES * 3)))"
  local grpc_list="" raft_list="" nodes="" n
  for n in $(seq 1 $NODES); do
    grpc_list+="${grpc_list:+, }\"$n@127.0.0.1:${ports[$((NODES + n - 1))]}\""
    raft_list+="${raft_list:+, }\"$n@127.0.0.1:${ports[$((2 * NODES + n - 1))]}\""
    nodes+="${nodes:+,}127.0.0.1:${ports[$((n - 1))]}"
  done
  for n in $(seq 1 $NODES); do
    write_config "$dir" "$n" "${ports[$((n - 1))]}" "$grpc_list" "$raft_list" \
      "${ports[$((NODES + n - 1))]}" "${ports[$((2 * NODES + n - 1))]}"
  done
  # The leader first: the others join it.
  start_node "$dir" 1
  wait_listening "$dir" 1 "${ports[0]}"
  for n in $(seq 2 $NODES); do start_node "$dir" "$n"; done
  for n in $(seq 2 $NODES); do wait_listening "$dir" "$n" "${ports[$((n - 1))]}"; done
  {
    for n in $(seq 1 $NODES); do echo "NODE$n=127.0.0.1:${ports[$((n - 1))]}"; done
    echo "NODES=$nodes"
    echo "PIDS=\"$(for n in $(seq 1 $NODES); do cat "$dir/node$n/pid"; done | xargs)\""
  } >"$dir/env"
  check "$dir"
  echo "cluster.sh: 3 nodes up: $nodes (logs in $dir/node*/rmqttd.log)" >&2
}

wait_listening() {
  local dir="$1" n="$2" port="$3"
  for _ in $(seq 1 600); do
    alive "$dir" "$n" || { tail -20 "$dir/node$n/rmqttd.log" >&2; die "node $n exited"; }
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.5)" 2>/dev/null && return 0
    sleep 0.1
  done
  tail -20 "$dir/node$n/rmqttd.log" >&2
  die "node $n does not listen on $port after 60 s"
}

stop() {
  local dir="$1" n pid
  for n in $(seq 1 $NODES); do
    pid="$(cat "$dir/node$n/pid" 2>/dev/null)" || continue
    kill -TERM "$pid" 2>/dev/null || true
  done
  for n in $(seq 1 $NODES); do
    pid="$(cat "$dir/node$n/pid" 2>/dev/null)" || continue
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$dir/node$n/pid"
  done
}

case "${1:-}" in
  start) [ -n "${2:-}" ] || die "usage: $0 start DIR"; start "$2" ;;
  check) [ -n "${2:-}" ] || die "usage: $0 check DIR"; need_mosquitto_clients; check "$2" ;;
  kill)
    [ -n "${3:-}" ] || die "usage: $0 kill DIR N"
    kill -KILL "$(cat "$2/node$3/pid")"
    echo "cluster.sh: node $3 killed (SIGKILL)" >&2 ;;
  stop) [ -n "${2:-}" ] || die "usage: $0 stop DIR"; stop "$2" ;;
  up)
    dir="$(mktemp -d "${TMPDIR:-/tmp}/sealmq-cluster.XXXXXX")"
    trap 'stop "$dir"; echo "cluster.sh: stopped; logs kept in $dir" >&2' EXIT
    start "$dir"
    cat "$dir/env"
    echo "cluster.sh: running; Ctrl-C stops it" >&2
    while :; do sleep 3600; done ;;
  *) die "usage: $0 start DIR | check DIR | kill DIR N | stop DIR | up" ;;
esac
