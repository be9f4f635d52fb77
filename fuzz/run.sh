#!/usr/bin/env bash
# Runs the fuzz targets one after another, each for a given time in a single process, and
# reports executions, speed, corpus size and crashes per target.
#
# Usage: fuzz/run.sh [TARGET...] [--seconds N] [--no-build]
#   (default: every target, 600 s each; --no-build runs the last build)
#
# Needs nightly Rust and cargo-fuzz (`cargo install cargo-fuzz`). Seeds a target's corpus
# first when it is empty (fuzz/seeds.sh). Corpora grow in fuzz/corpus/TARGET, crashing
# inputs land in fuzz/artifacts/TARGET, logs in fuzz/logs/TARGET.log (all ignored by git).
# The parsers are built with AddressSanitizer (cargo-fuzz's default); jit_vs_interp without
# a sanitizer and without compare tracing, in fuzz/target/fast: its time goes to Cranelift,
# where the traced compares took 40% of a profile (8 exec/s with ASan; over 100 without),
# and the JIT's own code is not instrumented anyway. Reproduce a crash with the same flags from fuzz/:
#   cargo +nightly fuzz run TARGET artifacts/TARGET/crash-...
#   cargo +nightly fuzz run -s none --no-trace-compares --target-dir target/fast \
#       jit_vs_interp artifacts/jit_vs_interp/crash-...
# and shrink it with `cargo +nightly fuzz tmin` (same flags); with GRADLIFT_FUZZ_PRINT=1,
# jit_vs_interp prints each graph as IR text (and its input seed and options) before it runs
# it. Exit status 1 when any target crashed.
set -euo pipefail
fuzz="$(cd "$(dirname "$0")" && pwd)"
cd "$fuzz"
all=(ir_parse json_load checkpoint_load idx_read onnx_import jit_vs_interp)
seconds=600
build=1
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --seconds=*) seconds="${1#*=}"; shift ;;
        --no-build) build=0; shift ;;
        -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

mkdir -p logs
summary=()
failed=0
for t in "${targets[@]}"; do
    if [ -z "$(ls -A "corpus/$t" 2>/dev/null)" ]; then
        ./seeds.sh "$t"
    fi
    mkdir -p "artifacts/$t"
    before=$(ls "artifacts/$t" | wc -l)
    flags=()
    dir=target
    if [ "$t" = jit_vs_interp ]; then
        flags=(-s none --no-trace-compares --target-dir target/fast)
        dir=target/fast
    fi
    if [ "$build" = 1 ]; then
        cargo +nightly fuzz build "${flags[@]}" "$t"
    fi
    bin="$dir/x86_64-unknown-linux-gnu/release/$t"
    echo "fuzzing $t for $seconds s (log: fuzz/logs/$t.log)"
    start=$(date +%s)
    status=0
    # one process, one job; -timeout reports an input that runs longer than 60 s
    "$bin" -artifact_prefix="artifacts/$t/" -max_total_time="$seconds" -timeout=60 \
        -print_final_stats=1 "corpus/$t" >"logs/$t.log" 2>&1 || status=$?
    wall=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "logs/$t.log" | tail -1)
    corpus=$(ls "corpus/$t" | wc -l)
    crashes=$(($(ls "artifacts/$t" | wc -l) - before))
    if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        failed=1
        grep -m1 -E "^(==[0-9]+==ERROR|thread '.*' panicked)" "logs/$t.log" || true
    fi
    line="$t: ${wall} s, ${execs:-?} executions, ${rate:-?} exec/s, corpus ${corpus} files, ${crashes} crashes (exit ${status})"
    echo "$line"
    summary+=("$line")
done
echo
printf '%s\n' "${summary[@]}"
exit "$failed"
