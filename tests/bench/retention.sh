#!/usr/bin/env bash
# Disk bytes per message with a 7-day payload retention (issue 14).
#
#   tests/bench/retention.sh [--per-day N] [--days D] [--signed]
#
# For 64-byte and 1 KiB payloads: `sealmq audit load` appends D days'
# worth of synthetic traffic (N messages a day, received_ms spread evenly
# over the D days ending now: --span-days) into a fresh data directory,
# then one erasure pass with a 7-day max_age runs (`sealmq erase --topic
# '#' --older-than 7d`, the same `Log::erase` a [[retention.rules]] pass
# runs). One appender, so records arrive in time order as at a broker (an
# erasure pass stops at the first record newer than its bound). Before and after, it reports the database file's size and the
# bytes in use, (page_count - freelist_count) * page_size: SQLite keeps
# the freed pages in the file and reuses them for new records, so the
# bytes in use are what a log at steady state occupies. Per message:
# divided by the records in the log. Run it under `flock /tmp/bench.lock`.
#
# SEALMQ_BIN: the binary to measure (default: a release build of this
# checkout). Bytes do not depend on the build; the times shown do.
set -euo pipefail
cd "$(dirname "$0")/../.."

per_day=43200
days=8
signed=--unsigned
while [ $# -gt 0 ]; do
  case "$1" in
    --per-day) per_day="$2"; shift ;;
    --days) days="$2"; shift ;;
    --signed) signed="" ;;
    *) echo "usage: $0 [--per-day N] [--days D] [--signed]" >&2; exit 2 ;;
  esac
  shift
done

if [ -z "${SEALMQ_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin sealmq
  SEALMQ_BIN=target/release/sealmq
fi
sealmq=$SEALMQ_BIN
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# "file_bytes used_bytes" of a quiescent log (its WAL checkpointed first).
sizes() {
  local db="$1/log.db"
  sqlite3 "$db" 'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null
  local pages free size
  pages=$(sqlite3 -readonly "$db" 'PRAGMA page_count;')
  free=$(sqlite3 -readonly "$db" 'PRAGMA freelist_count;')
  size=$(sqlite3 -readonly "$db" 'PRAGMA page_size;')
  echo "$(stat -c %s "$db") $(( (pages - free) * size ))"
}

records=$(( per_day * days ))
echo "| payload | records ($days days) | file B/msg before | in use B/msg before | payloads erased | erase s | file B/msg after | in use B/msg after | B freed per erased payload |"
echo "|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
for payload in 64 1024; do
  data="$scratch/p$payload"
  "$sealmq" audit --data "$data" load --records "$records" $signed --payload-size "$payload" \
    --span-days "$days" --concurrency 1 --batch 256 >/dev/null 2>&1
  read -r file_before used_before < <(sizes "$data")
  started=$(date +%s.%N)
  out=$("$sealmq" --data "$data" erase --topic '#' --older-than 7d | tail -1)
  took=$(echo "$(date +%s.%N) - $started" | bc)
  erased=$(sed -n 's/^erased \([0-9]*\) payloads.*/\1/p' <<<"$out")
  read -r file_after used_after < <(sizes "$data")
  total=$(sqlite3 -readonly "$data/log.db" 'SELECT count(*) FROM records;')
  "$sealmq" audit --data "$data" verify 2>/dev/null | grep -q '^ok:' || { echo "verify failed for $payload" >&2; exit 1; }
  printf '| %s B | %s | %d | %d | %s | %.1f | %d | %d | %d |\n' "$payload" "$total" \
    $(( file_before / total )) $(( used_before / total )) "$erased" "$took" \
    $(( file_after / total )) $(( used_after / total )) $(( (used_before - used_after) / (erased > 0 ? erased : 1) ))
  rm -rf "$data"
done
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD), $per_day messages a day, ${signed:-signed}"
