#!/usr/bin/env bash
# Archive speed (issue 14): `sealmq archive` writing a C2SP tlog-tiles
# directory from a log of N records, the check it makes of what it wrote,
# and `sealmq audit verify --archive` of the result; plus what is left in
# SQLite per archived record (tree hashes, blocks, kept leaves).
#
#   tests/bench/archive.sh [--records N]
#
# The log is made with `sealmq audit load --unsigned` (64 appending devices,
# 64-byte payloads, blocks of 4096 records) and archived whole. "Live" is
# SQLite's page_count - freelist_count times the page size: what the data
# occupies (a VACUUM would give the free pages back to the file system).
# Run it under `flock /tmp/bench.lock` on a machine that is otherwise idle.
set -euo pipefail
cd "$(dirname "$0")/../.."

records=1000000
while [ $# -gt 0 ]; do
  case "$1" in
    --records) records="$2"; shift ;;
    *) echo "usage: $0 [--records N]" >&2; exit 2 ;;
  esac
  shift
done

cargo build --release --locked --quiet --bin sealmq
sealmq=${CARGO_TARGET_DIR:-target}/release/sealmq
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
data="$scratch/data"
archive="$scratch/archive"

live_bytes() {
  python3 - "$1/log.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
print(pages * db.execute("PRAGMA page_size").fetchone()[0])
PY
}

"$sealmq" --data "$data" audit load --records "$records" --unsigned >/dev/null 2>&1
before=$(live_bytes "$data")
out=$("$sealmq" --data "$data" archive --below "$records" "$archive")
echo "$out" >&2
after=$(live_bytes "$data")
started=$(date +%s.%N)
verify=$("$sealmq" --data "$data" audit verify --archive "$archive")
ended=$(date +%s.%N)
echo "$verify" >&2
archive_bytes=$(du -sb "$archive" | cut -f1)

write=$(sed -n 's/.*written (\([0-9.]*\) s, \([0-9]*\) records\/s, \([0-9.]*\) MB\/s).*/\2 records\/s, \3 MB\/s (\1 s)/p' <<<"$out")
check=$(sed -n 's/^checked .*(\([0-9.]*\) s, \([0-9]*\) records\/s, \([0-9.]*\) MB\/s).*/\2 records\/s, \3 MB\/s of entries (\1 s)/p' <<<"$out")
verify_s=$(echo "$ended - $started" | bc)
verify_rate=$(echo "$records / $verify_s" | bc)

echo "| records | archive write | check of the written archive | audit verify --archive | archive on disk | SQLite live before → after | left per archived record |"
echo "|--:|--|--|--|--:|--:|--:|"
echo "| $records | $write | $check | $verify_rate records/s (${verify_s%??????} s) | $((archive_bytes / 1000000)) MB | $((before / 1000000)) MB → $((after / 1000000)) MB | $((after / records)) bytes |"
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD)"
