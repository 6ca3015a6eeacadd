#!/usr/bin/env bash
# CI for the fuzz targets (called from .ci/run): builds every target, then runs
# each once over its committed corpus (libFuzzer -runs=0: the corpus as a
# regression test, no fuzzing). A few minutes from scratch on 2 cores; seconds
# when fuzz/target is warm.
#
# Only stable Rust is installed. cargo-fuzz passes nightly -Z flags (sanitizer,
# coverage instrumentation); RUSTC_BOOTSTRAP=1 lets stable rustc and cargo
# accept them.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cargo fmt --check
cargo fuzz build
for target in $(cargo fuzz list); do
    cargo fuzz run "$target" "corpus/$target" -- -runs=0
done
