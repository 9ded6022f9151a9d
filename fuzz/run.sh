#!/usr/bin/env bash
# fuzz/run.sh [SECONDS]: build every fuzz target and run each for SECONDS (default 60).
#
# With nightly and cargo-fuzz (`cargo install cargo-fuzz --locked`): builds all targets once,
# then fuzzes them FUZZ_JOBS at a time (default: all at once, so the wall time is SECONDS),
# each for SECONDS, each starting from its committed seeds (fuzz/seeds/<target>) plus whatever
# fuzz/corpus/<target> already holds. Exits non-zero if any target finds a failure and names
# the reproducer in fuzz/artifacts/.
# Without them: builds the targets on stable and replays the seeds and corpus through each
# (libFuzzer's main runs a fixed set of inputs without coverage), and says what it skipped.
#
# Settings (environment):
#   FUZZ_SANITIZER     none (default; the crates are safe Rust) or address, to also catch
#                      memory errors in dependencies' unsafe code at ~2x the cost.
#   FUZZ_OPT_LEVEL     optimisation of the fuzz build (default 1). The build, not the run,
#                      dominates a short CI run: measured on the 2-core dev box, the server's
#                      dependency tree costs 4.4 CPU-minutes at opt-level 3 with 1 codegen
#                      unit (cargo-fuzz's default) and 3.8 at opt-level 1 with 16 units, which
#                      then fuzzes the connection target at about a third of the speed.
#                      For long runs: FUZZ_OPT_LEVEL=3 FUZZ_CODEGEN_UNITS=1.
#   FUZZ_CODEGEN_UNITS codegen units for the fuzz build (default 16; cargo-fuzz's own default
#                      is 1, the fastest code and the slowest build).
#   FUZZ_JOBS          targets fuzzed at once (default: all of them).
#   FUZZ_TARGET_DIR    cargo target directory (default fuzz/target).
#   FUZZ_REPLAY_ONLY   set to 1 to skip fuzzing and only replay the seeds on stable, as when
#                      nightly or cargo-fuzz is missing.
set -euo pipefail

secs="${1:-60}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: fuzz/run.sh [SECONDS]   (SECONDS per target, a whole number >= 1; got '$secs')" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
targets=(decode_request decode_response roundtrip connection)
sanitizer="${FUZZ_SANITIZER:-none}"
cgu="${FUZZ_CODEGEN_UNITS:-16}"
jobs="${FUZZ_JOBS:-${#targets[@]}}"
target_dir="${FUZZ_TARGET_DIR:-$here/target}"
# cargo reads this for both the build and each run, so the runs reuse the build.
export CARGO_PROFILE_RELEASE_OPT_LEVEL="${FUZZ_OPT_LEVEL:-1}"
mkdir -p corpus artifacts logs

replay_on_stable() {
    echo "fuzz: $1; building the targets on stable and replaying the seeds instead (no fuzzing)"
    CARGO_TARGET_DIR="$target_dir/stable" cargo build --bins --quiet
    local t files
    for t in "${targets[@]}"; do
        mkdir -p "seeds/$t" "corpus/$t"
        mapfile -t files < <(find "seeds/$t" "corpus/$t" -type f | sort)
        if [ "${#files[@]}" -eq 0 ]; then
            echo "fuzz: $t: built; no seeds to replay"
            continue
        fi
        if ! "$target_dir/stable/debug/$t" "${files[@]}" >"logs/$t.log" 2>&1; then
            echo "fuzz: $t FAILED replaying its seeds; see fuzz/logs/$t.log" >&2
            tail -n 30 "logs/$t.log" >&2
            exit 1
        fi
        echo "fuzz: $t: replayed ${#files[@]} inputs, all passed"
    done
    echo "fuzz: SKIPPED coverage-guided fuzzing ($1)"
}

if [ "${FUZZ_REPLAY_ONLY:-0}" = 1 ]; then
    replay_on_stable "FUZZ_REPLAY_ONLY=1"
    exit 0
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    replay_on_stable "no nightly toolchain"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    replay_on_stable "cargo-fuzz is not installed (cargo install cargo-fuzz --locked)"
    exit 0
fi

build=(--sanitizer "$sanitizer" --codegen-units "$cgu" --target-dir "$target_dir")
start=$SECONDS
cargo +nightly fuzz build "${build[@]}"
echo "fuzz: built ${#targets[@]} targets in $((SECONDS - start)) s (sanitizer $sanitizer, opt-level $CARGO_PROFILE_RELEASE_OPT_LEVEL, $cgu codegen units)"

run_one() {
    local t="$1"
    mkdir -p "corpus/$t" "seeds/$t" "artifacts/$t"
    cargo +nightly fuzz run "${build[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 -max_len=4096 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"logs/$t.log" 2>&1
}

failed=()
pids=()
names=()
flush() {
    local i
    for i in "${!pids[@]}"; do
        if ! wait "${pids[$i]}"; then
            failed+=("${names[$i]}")
        fi
    done
    pids=()
    names=()
}
for t in "${targets[@]}"; do
    run_one "$t" &
    pids+=($!)
    names+=("$t")
    if [ "${#pids[@]}" -ge "$jobs" ]; then
        flush
    fi
done
flush

for t in "${targets[@]}"; do
    runs=$(grep -m1 'stat::number_of_executed_units' "logs/$t.log" | awk '{print $2}' || true)
    rate=$(grep -m1 'stat::average_exec_per_sec' "logs/$t.log" | awk '{print $2}' || true)
    echo "fuzz: $t: ${runs:-?} runs in ${secs} s (${rate:-?}/s), corpus $(find "corpus/$t" -type f | wc -l) inputs"
done
if [ "${#failed[@]}" -gt 0 ]; then
    for t in "${failed[@]}"; do
        echo "fuzz: $t FOUND A FAILURE; reproducer in fuzz/artifacts/$t/, log fuzz/logs/$t.log" >&2
        grep -m1 -A 12 -E 'panicked|ERROR: libFuzzer|SUMMARY' "logs/$t.log" >&2 || tail -n 30 "logs/$t.log" >&2
        echo "fuzz: reproduce with: cargo +nightly fuzz run $t fuzz/artifacts/$t/<file>" >&2
    done
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${secs} s each without a failure"
