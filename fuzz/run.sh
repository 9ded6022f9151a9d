#!/usr/bin/env bash
# fuzz/run.sh SECONDS: coverage-guided fuzzing of every target for SECONDS each, on stable Rust.
#
# Engine AFL++ (the default) through cargo-afl from crates.io:
#   1. installs cargo-afl if it is missing, at the version Cargo.lock pins for the `afl` crate
#      (the two must match; `cargo install` also builds AFL++ itself), within
#      FUZZ_INSTALL_TIMEOUT seconds;
#   2. builds the four targets once (`cargo afl build --features afl`);
#   3. fuzzes each target for SECONDS with afl-fuzz, FUZZ_JOBS targets at a time, starting
#      from its committed inputs (hand-made fuzz/seeds/<target> and fuzz/found/<target>, the
#      minimised queue of the last long run) plus the local corpus of earlier runs
#      (fuzz/corpus/<target>, not committed; every run adds its queue to it);
#   4. prints per target: executions and execs/s, corpus size and paths found this run,
#      stability, crashes and hangs; exits non-zero on any crash or hang (copied to
#      fuzz/artifacts/<target>/) or if a fuzzer failed to run.
# Wall time: build + ceil(4 / FUZZ_JOBS) * (SECONDS + ~3 s of start-up).
#
# Settings (environment):
#   FUZZ_ENGINE          afl (default); libfuzzer (needs nightly and cargo-fuzz: `cargo +nightly
#                        fuzz run`, same targets and seeds); replay (no fuzzing: builds the
#                        libFuzzer entry points on stable and runs the seeds and corpus once).
#   FUZZ_JOBS            targets fuzzed at once (default: the number of CPUs, at most 4).
#   FUZZ_TARGETS         space-separated subset of the targets (default: all four).
#   FUZZ_TARGET_DIR      cargo target directory (default fuzz/target).
#   AFL_OPT_LEVEL        opt-level of the fuzz build (cargo-afl's setting; default here 1,
#                        cargo-afl's own is 3: see fuzz/README.md for what each costs in build
#                        time and buys in execs/s). A long run: AFL_OPT_LEVEL=3.
#   FUZZ_INSTALL_TIMEOUT seconds allowed for `cargo install cargo-afl` (default 600).
set -euo pipefail

secs="${1:-}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: fuzz/run.sh SECONDS   (seconds per target, a whole number >= 1; got '$secs')" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
all_targets=(decode_request decode_response roundtrip connection)
read -r -a targets <<<"${FUZZ_TARGETS:-${all_targets[*]}}"
for t in "${targets[@]}"; do
    if ! [[ " ${all_targets[*]} " == *" $t "* ]]; then
        echo "fuzz: unknown target '$t' (targets: ${all_targets[*]})" >&2
        exit 2
    fi
done
engine="${FUZZ_ENGINE:-afl}"
cpus="$(nproc 2>/dev/null || echo 2)"
jobs="${FUZZ_JOBS:-$((cpus < 4 ? cpus : 4))}"
target_dir="${FUZZ_TARGET_DIR:-$here/target}"
mkdir -p corpus artifacts logs

# Runs `run_one TARGET` for every target, FUZZ_JOBS at a time; records the failed ones.
failed=()
run_all() {
    local pids=() names=() i t
    flush() {
        for i in "${!pids[@]}"; do
            wait "${pids[$i]}" || failed+=("${names[$i]}")
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
}

# ---------------------------------------------------------------------------------------------
# replay: no fuzzing, every seed and corpus input through the libFuzzer entry points once.
if [ "$engine" = replay ]; then
    CARGO_TARGET_DIR="$target_dir/stable" cargo build --bins --quiet
    for t in "${targets[@]}"; do
        mkdir -p "seeds/$t" "corpus/$t"
        mapfile -t files < <(find "seeds/$t" "found/$t" "corpus/$t" -type f 2>/dev/null | sort)
        if ! "$target_dir/stable/debug/$t" "${files[@]}" >"logs/$t.log" 2>&1; then
            echo "fuzz: $t FAILED replaying its inputs; see fuzz/logs/$t.log" >&2
            tail -n 30 "logs/$t.log" >&2
            exit 1
        fi
        echo "fuzz: $t: replayed ${#files[@]} inputs, all passed"
    done
    echo "fuzz: replay only, NO coverage-guided fuzzing (FUZZ_ENGINE=replay)"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# libfuzzer: cargo-fuzz on nightly, for whoever has it.
if [ "$engine" = libfuzzer ]; then
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
        echo "fuzz: FUZZ_ENGINE=libfuzzer needs nightly and cargo-fuzz (cargo install cargo-fuzz)" >&2
        exit 1
    fi
    build=(--sanitizer none --target-dir "$target_dir")
    cargo +nightly fuzz build "${build[@]}"
    run_one() {
        local t="$1"
        mkdir -p "corpus/$t" "seeds/$t" "artifacts/$t"
        cargo +nightly fuzz run "${build[@]}" "$t" "corpus/$t" "seeds/$t" -- \
            -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 -max_len=4096 \
            -dict=wire.dict -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
            >"logs/$t.log" 2>&1
    }
    run_all
    for t in "${targets[@]}"; do
        rate=$(grep -m1 'stat::average_exec_per_sec' "logs/$t.log" | awk '{print $2}' || true)
        echo "fuzz: $t: ${rate:-?} execs/s, corpus $(find "corpus/$t" -type f | wc -l) inputs"
    done
    if [ "${#failed[@]}" -gt 0 ]; then
        echo "fuzz: FAILED: ${failed[*]}; reproducers in fuzz/artifacts/, logs in fuzz/logs/" >&2
        exit 1
    fi
    exit 0
fi

if [ "$engine" != afl ]; then
    echo "fuzz: FUZZ_ENGINE must be afl, libfuzzer or replay (got '$engine')" >&2
    exit 2
fi

# ---------------------------------------------------------------------------------------------
# afl: cargo-afl on stable.
start=$SECONDS
afl_version="$(awk '/^name = "afl"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)"
if [ -z "$afl_version" ]; then
    echo "fuzz: Cargo.lock names no version of the afl crate" >&2
    exit 1
fi
have="$(cargo afl --version 2>/dev/null || true)"
if [[ "$have" != "cargo-afl $afl_version"* ]]; then
    limit="${FUZZ_INSTALL_TIMEOUT:-600}"
    echo "fuzz: installing cargo-afl $afl_version (found: '${have:-none}'): cargo install from" \
        "crates.io, which also builds AFL++; about 1 minute on 2 cores, at most $limit s"
    if ! timeout "$limit" cargo install cargo-afl --locked --version "=$afl_version" --force \
        >logs/install.log 2>&1; then
        echo "fuzz: could NOT install cargo-afl $afl_version within $limit s; see" \
            "fuzz/logs/install.log. Nothing was fuzzed. Without crates.io," \
            "FUZZ_ENGINE=replay at least replays the seeds." >&2
        tail -n 20 logs/install.log >&2
        exit 1
    fi
    have="$(cargo afl --version)"
fi
# AFL++ lives beside the rustc it was built for; a new toolchain needs it built again.
if [[ "$have" != *"AFL++ version"* ]]; then
    echo "fuzz: building AFL++ for this toolchain (cargo afl config --build)"
    timeout "${FUZZ_INSTALL_TIMEOUT:-600}" cargo afl config --build --force >logs/install.log 2>&1 || {
        echo "fuzz: could NOT build AFL++; see fuzz/logs/install.log" >&2
        exit 1
    }
fi
installed=$((SECONDS - start))

start=$SECONDS
# --target keeps cargo-afl's RUSTFLAGS (coverage passes, opt-level, one codegen unit) off build
# scripts and proc macros, which then build as in any debug build: 2.5 instead of 3.5
# CPU-minutes cold (fuzz/README.md). opt-level 1 rather than cargo-afl's 3: a cheaper build
# for 12% fewer execs/s on the connection target (measured, fuzz/README.md).
export AFL_OPT_LEVEL="${AFL_OPT_LEVEL:-1}"
host="$(rustc -vV | awk '/^host:/ { print $2 }')"
CARGO_TARGET_DIR="$target_dir/afl" CARGO_PROFILE_DEV_DEBUG=0 \
    cargo afl build --locked --target "$host" --no-default-features --features afl --bins --quiet
built=$((SECONDS - start))
bin="$target_dir/afl/$host/debug"
echo "fuzz: cargo-afl ready in ${installed} s; built the targets in ${built} s" \
    "(opt-level $AFL_OPT_LEVEL)"

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
# The machine is shared: do not fail when every core is busy, and do not pin.
export AFL_NO_AFFINITY=1
run_one() {
    local t="$1" in="out/$t.in" f
    rm -rf "out/$t" "$in"
    mkdir -p "$in" "corpus/$t" "artifacts/$t"
    cp seeds/"$t"/* "$in"/
    find "found/$t" "corpus/$t" -type f -exec cp -t "$in" {} + 2>/dev/null || true
    # afl-fuzz stops itself after -V seconds; `timeout` only guards against it never starting.
    timeout --kill-after=10 $((secs + 120)) \
        cargo afl fuzz -i "$in" -o "out/$t" -V "$secs" -t 10000 -x wire.dict \
        "$bin/$t" >"logs/$t.log" 2>&1 || return 1
    # Keep what this run found for the next local run (content-named, so no duplicates).
    for f in "out/$t"/default/queue/id:*; do
        [ -f "$f" ] && cp "$f" "corpus/$t/$(sha1sum "$f" | cut -c1-16)"
    done
    for f in "out/$t"/default/crashes/id:* "out/$t"/default/hangs/id:*; do
        [ -f "$f" ] && cp "$f" "artifacts/$t/"
    done
    return 0
}
run_all

afl_stat() { awk -F' *: *' -v k="$2" '$1 == k { print $2 }' "out/$1/default/fuzzer_stats" 2>/dev/null; }
printf '%-16s %10s %9s %8s %7s %10s %8s %6s\n' target execs execs/s corpus found stability \
    crashes hangs | tee logs/summary.txt
for t in "${targets[@]}"; do
    if [ ! -f "out/$t/default/fuzzer_stats" ]; then
        printf '%-16s did not run; see fuzz/logs/%s.log\n' "$t" "$t" | tee -a logs/summary.txt
        [[ " ${failed[*]} " == *" $t "* ]] || failed+=("$t")
        continue
    fi
    crashes=$(afl_stat "$t" saved_crashes)
    hangs=$(afl_stat "$t" saved_hangs)
    printf '%-16s %10s %9s %8s %7s %10s %8s %6s\n' "$t" "$(afl_stat "$t" execs_done)" \
        "$(afl_stat "$t" execs_per_sec)" "$(afl_stat "$t" corpus_count)" "$(afl_stat "$t" corpus_found)" \
        "$(afl_stat "$t" stability)" "$crashes" "$hangs" | tee -a logs/summary.txt
    if [ "${crashes:-0}" != 0 ] || [ "${hangs:-0}" != 0 ]; then
        [[ " ${failed[*]} " == *" $t "* ]] || failed+=("$t")
    fi
done
echo "(corpus: inputs in the queue at the end, seeds included; found: new paths this run)"

if [ "${#failed[@]}" -gt 0 ]; then
    for t in "${failed[@]}"; do
        echo "fuzz: $t FAILED: afl-fuzz log fuzz/logs/$t.log; findings in fuzz/artifacts/$t/" >&2
        found_any=0
        for f in "out/$t"/default/crashes/id:* "out/$t"/default/hangs/id:*; do
            [ -f "$f" ] || continue
            found_any=1
            kept="$here/artifacts/$t/$(basename "$f")"
            echo "fuzz: input $kept, in hex:" >&2
            od -An -tx1 -v "$f" | head -n 8 >&2
            # Outside afl-fuzz the binary reads one input from stdin: show the panic.
            echo "fuzz: replayed with: $bin/$t < '$kept'" >&2
            (timeout 20 "$bin/$t" <"$f" 2>&1; true) 2>/dev/null | grep -v '^$' | head -n 6 \
                | sed 's/^/    /' >&2 || true
        done
        if [ "$found_any" = 0 ]; then
            grep -m1 -A8 'PROGRAM ABORT' "logs/$t.log" >&2 || tail -n 20 "logs/$t.log" >&2
        fi
    done
    exit 1
fi
echo "fuzz: ${#targets[@]} targets fuzzed ${secs} s each under AFL++, no crash, no hang"
