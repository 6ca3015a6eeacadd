#!/usr/bin/env bash
# Shrinks corpus/<target> to at most N files (default 40) after new inputs
# were copied in: `cargo fuzz cmin`, then the seeds (seed-*, spec-*) plus,
# greedily, the files that add the most not-yet-covered edges. Needs python3.
# usage: fuzz/trim-corpus.sh <target> [N]
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
target=$1
max=${2:-40}
dir=corpus/$target
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cp "$dir"/seed-* "$dir"/spec-* "$work"/ 2>/dev/null || true # cmin may drop seeds; keep them
cargo fuzz cmin "$target" "$dir" >"$work/cmin.log" 2>&1
cp "$work"/seed-* "$work"/spec-* "$dir"/ 2>/dev/null || true

# Each file's edges, alone: a merge of that one file into an empty directory.
bin=target/x86_64-unknown-linux-gnu/release/$target
: >"$work/cov"
for f in "$dir"/*; do
    rm -rf "$work/one" "$work/into" "$work/ctl"
    mkdir "$work/one" "$work/into"
    cp "$f" "$work/one/"
    ASAN_OPTIONS=detect_leaks=0 "$bin" -merge=1 -use_counters=0 -merge_control_file="$work/ctl" \
        "$work/into" "$work/one" >/dev/null 2>&1 || true
    echo "$(basename "$f") $(grep '^COV' "$work/ctl" | cut -d' ' -f3-)" >>"$work/cov"
done

python3 - "$work/cov" "$max" "$dir" <<'PY'
import os, sys
cov_file, cap, corpus = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cov = {}
for line in open(cov_file):
    name, *edges = line.split()
    cov[name] = set(map(int, edges))
every = set().union(*cov.values())
keep = sorted(n for n in cov if n.startswith(("seed-", "spec-")))
covered = set().union(*(cov[n] for n in keep))
while len(keep) < cap:
    rest = [n for n in cov if n not in keep]
    if not rest:
        break
    best = max(rest, key=lambda n: (len(cov[n] - covered), -os.path.getsize(os.path.join(corpus, n))))
    if not cov[best] - covered:
        break
    keep.append(best)
    covered |= cov[best]
for n in cov:
    if n not in keep:
        os.remove(os.path.join(corpus, n))
print(f"{corpus}: kept {len(keep)} of {len(cov)} files, {len(covered)} of {len(every)} edges")
PY
