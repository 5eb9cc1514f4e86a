#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang, AddressSanitizer and
# UBSan (in build-fuzz/), and runs each for SECONDS over a copy of its seed
# corpus and past crash inputs. Fails when a target finds a crash, a leak, a
# timeout or runs out of memory, and prints the input that reproduces it.
#
#   scripts/fuzz.sh [--merge] [-j N] [SECONDS] [TARGET...]
#
#   SECONDS   per target; default 60 (what CI runs). A long run by hand:
#             scripts/fuzz.sh 3600
#   TARGET    envelope, headers, parse, config, dlq_import (default: all)
#   -j N      run N targets at once (default 1)
#   --merge   afterwards, add the inputs that reached new coverage to
#             tests/fuzz/corpus/TARGET (minimized by libFuzzer's -merge=1),
#             to be reviewed and committed. Without it the source tree is
#             never written.
#
# Each run works in build-fuzz/run/TARGET/ (corpus, crash inputs, fuzz.log),
# started afresh every time.
set -euo pipefail
cd "$(dirname "$0")/.."

all=(envelope headers parse config dlq_import)
seconds=60
jobs=1
merge=0
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
    --merge) merge=1 ;;
    -j) jobs=$2; shift ;;
    -j*) jobs=${1#-j} ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    [0-9]*) seconds=$1 ;;
    *)
        if [[ " ${all[*]} " != *" $1 "* ]]; then
            echo "fuzz.sh: unknown target '$1' (one of: ${all[*]})" >&2
            exit 2
        fi
        targets+=("$1")
        ;;
    esac
    shift
done
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

# Longest input each target is given: what its format needs, no more.
declare -A max_len=([envelope]=16384 [headers]=2048 [parse]=256 [config]=8192
                    [dlq_import]=16384)

scripts/deps.sh
dir=build-fuzz
cmake -S . -B "$dir" -DCMAKE_C_COMPILER=clang -DCW_FUZZ=ON -DCW_BUILD_TESTS=OFF \
    -DCW_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$dir" -j2 --target "${targets[@]/#/fuzz_}"

export UBSAN_OPTIONS=print_stacktrace=1
export ASAN_OPTIONS=detect_leaks=1

run_one() {
    local t=$1
    local work=$dir/run/$t
    rm -rf "$work"
    mkdir -p "$work/corpus" "$work/artifacts"
    cp -r tests/fuzz/corpus/"$t"/. "$work/corpus/"
    if [ -d tests/fuzz/regressions/"$t" ]; then
        cp -r tests/fuzz/regressions/"$t"/. "$work/corpus/"
    fi
    local dict=()
    [ -f tests/fuzz/dict/"$t".dict ] && dict=(-dict=tests/fuzz/dict/"$t".dict)
    local rc=0
    "$dir/tests/fuzz/fuzz_$t" "$work/corpus" "${dict[@]}" -max_total_time="$seconds" \
        -max_len="${max_len[$t]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$work/artifacts/" >"$work/fuzz.log" 2>&1 || rc=$?
    if [ $rc -ne 0 ]; then
        local input
        input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$work/fuzz.log" | tail -1)
        echo "fuzz: $t FAILED (exit $rc); log: $work/fuzz.log" >&2
        grep -E '^(==[0-9]+==ERROR|SUMMARY|fuzz check failed|.*runtime error)' \
            "$work/fuzz.log" | head -5 >&2 || true
        if [ -n "$input" ]; then
            echo "fuzz: $t: reproduce with $dir/tests/fuzz/fuzz_$t $input" >&2
            echo "fuzz: $t: once fixed, keep it: cp $input tests/fuzz/regressions/$t/" >&2
        fi
        return 1
    fi
    # "#N DONE cov: C ft: F corp: K/S exec/s: E rss: R"
    local done_line
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$work/fuzz.log" | tail -1 |
        sed -E 's/^#([0-9]+)[[:space:]]+DONE +/\1 runs, /')
    echo "fuzz: $t ok in ${seconds}s: $done_line"
    if [ $merge -eq 1 ]; then
        "$dir/tests/fuzz/fuzz_$t" -merge=1 -max_len="${max_len[$t]}" tests/fuzz/corpus/"$t" \
            "$work/corpus" >"$work/merge.log" 2>&1
        echo "fuzz: $t: $(grep -E 'MERGE-OUTER: [0-9]+ new files' "$work/merge.log" |
            sed 's/.*MERGE-OUTER: //') in tests/fuzz/corpus/$t"
    fi
}

fail=0
running=0
for t in "${targets[@]}"; do
    if [ "$jobs" -le 1 ]; then
        run_one "$t" || fail=1
        continue
    fi
    run_one "$t" &
    running=$((running + 1))
    if [ $running -ge "$jobs" ]; then
        wait -n || fail=1
        running=$((running - 1))
    fi
done
while [ $running -gt 0 ]; do
    wait -n || fail=1
    running=$((running - 1))
done
[ $fail -eq 0 ] && echo "fuzz: all ${#targets[@]} targets ran ${seconds}s each without a finding"
exit $fail
