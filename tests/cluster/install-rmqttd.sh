#!/usr/bin/env bash
# Installs rmqttd (crates.io, MQTT 3.1.1/5 broker with a raft cluster), the
# cluster the issue-15 tests run sealmq against, when it is missing.
#
# Prints the path of the rmqttd binary on stdout (everything else goes to
# stderr), so callers can do `RMQTTD=$(tests/cluster/install-rmqttd.sh)`.
#
# The build is long (rmqttd pulls its plugins, raft, grpc, ...): it is niced,
# uses its own target dir (not the workspace's) and installs under a cache
# dir that survives between runs:
#   SEALMQ_CLUSTER_CACHE  (default: ${XDG_CACHE_HOME:-$HOME/.cache}/sealmq-cluster)
#   RMQTTD_VERSION        (default: 0.24.0, the version the scripts were written against)
#   RMQTTD                (an rmqttd binary to use instead; nothing is built)
set -euo pipefail

version="${RMQTTD_VERSION:-0.24.0}"
cache="${SEALMQ_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sealmq-cluster}"

if [ -n "${RMQTTD:-}" ]; then
  [ -x "$RMQTTD" ] || { echo "install-rmqttd: RMQTTD=$RMQTTD is not executable" >&2; exit 1; }
  echo "$RMQTTD"
  exit 0
fi

root="$cache/rmqttd-$version"
bin="$root/bin/rmqttd"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
command -v cargo >/dev/null || { echo "install-rmqttd: cargo is missing" >&2; exit 1; }
# rmqttd links librdkafka (its Kafka bridge plugins, always compiled in),
# built from source by rdkafka-sys with CMake; OpenSSL through pkg-config;
# its gRPC crates (handy-grpc) run protoc at build time.
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v c++ >/dev/null || missing+=(g++)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-rmqttd: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

mkdir -p "$root"
echo "install-rmqttd: building rmqttd $version into $root (slow: many crates)" >&2
start=$(date +%s)
# --locked: the crate's own Cargo.lock, the versions its authors tested.
# A target dir of its own so the workspace's is neither polluted nor reused;
# it is deleted afterwards (only the binary is kept).
CARGO_TARGET_DIR="$cache/target-rmqttd" \
  nice -n 10 cargo install rmqttd --version "=$version" --locked --root "$root" >&2
rm -rf "$cache/target-rmqttd"
echo "install-rmqttd: built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
