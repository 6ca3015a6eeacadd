#!/usr/bin/env bash
# What rules cost (issue 12): the log's append rate with 0, 10 and 1,000
# installed rules, and `sealmq audit replay`'s rate over the logs made.
#
#   tests/bench/rules.sh [--records N] [--rounds R]
#
# Each run is `sealmq audit load --unsigned --rules N` on a fresh data
# directory (64 appending devices, one record per append: the sequencer's
# group commit as the broker drives it), with the rule engine following
# the log as in the broker. The synthetic rules (sealmq_rules::synthetic)
# listen on load/+/<k>, so each record is evaluated by one rule in eight of
# those installed, and about 1 % of records fire one action. Rounds
# interleave the configurations so that a noisy neighbour skews them alike;
# the table shows each round's numbers. Run it under
# `flock /tmp/bench.lock` on a machine that is otherwise idle.
set -euo pipefail
cd "$(dirname "$0")/../.."

records=100000
rounds=2
while [ $# -gt 0 ]; do
  case "$1" in
    --records) records="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    *) echo "usage: $0 [--records N] [--rounds R]" >&2; exit 2 ;;
  esac
  shift
done

cargo build --release --locked --quiet --bin sealmq
sealmq=target/release/sealmq
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

echo "| round | rules | appended records/s | actions (% of records) | replay records/s |"
echo "|--:|--:|--:|--:|--:|"
for round in $(seq 1 "$rounds"); do
  for rules in 0 10 1000; do
    data="$scratch/r$round-$rules"
    load=$("$sealmq" audit --data "$data" load --records "$records" --unsigned --rules "$rules" 2>&1)
    rate=$(sed -n 's/.*(\([0-9]*\) records\/s).*/\1/p' <<<"$load")
    fired=$(sed -n 's/.* fired \([0-9]*\) actions (\([0-9.]*\) %.*/\1 (\2 %)/p' <<<"$load")
    replay=$("$sealmq" audit --data "$data" replay 2>&1 | tail -1)
    replay_rate=$(sed -n 's/.*, \([0-9]*\) records\/s).*/\1/p' <<<"$replay")
    echo "| $round | $rules | $rate | ${fired:-0} | $replay_rate |"
    rm -rf "$data"
  done
done
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD)"
