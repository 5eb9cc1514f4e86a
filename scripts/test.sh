#!/usr/bin/env bash
# README's second command: installs what is missing, builds, and runs every
# test (unit tests, then the integration tests against a throwaway RabbitMQ
# node that the test harness starts on port 5673 and stops afterwards).
#
#   scripts/test.sh              plain build in build/
#   scripts/test.sh --sanitize   AddressSanitizer + UBSan build in build-asan/ (the chaos run
#                                shorter; not the cluster, nor chaos on PostgreSQL)
#   scripts/test.sh --valgrind   unit tests and fuzz replays under valgrind (the plain build/)
#   scripts/test.sh --tsan       ThreadSanitizer build in build-tsan/: the unit tests and the
#                                worker's tests (handler threads, the pipeline, the pool,
#                                the chaos run); fails on any report
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-plain}
scripts/deps.sh

jobs=$(nproc 2>/dev/null || echo 2)
case "$mode" in
plain)
    dir=build
    cmake -S . -B "$dir" -DCW_SANITIZE=OFF -DCW_BUILD_TESTS=ON -DCW_BUILD_EXAMPLES=ON >/dev/null
    ;;
--sanitize)
    dir=build-asan
    cmake -S . -B "$dir" -DCW_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug -DCW_BUILD_TESTS=ON \
        -DCW_BUILD_EXAMPLES=ON >/dev/null
    ;;
--tsan)
    dir=build-tsan
    cmake -S . -B "$dir" -DCW_TSAN=ON -DCMAKE_BUILD_TYPE=Debug -DCW_BUILD_TESTS=ON \
        -DCW_BUILD_EXAMPLES=ON >/dev/null
    ;;
--valgrind)
    # The plain build's own binaries (CI builds them first): valgrind needs
    # no build of its own.
    dir=build
    cmake -S . -B "$dir" -DCW_SANITIZE=OFF -DCW_BUILD_TESTS=ON -DCW_BUILD_EXAMPLES=ON >/dev/null
    ;;
*)
    echo "usage: scripts/test.sh [--sanitize|--valgrind|--tsan]" >&2
    exit 2
    ;;
esac
cmake --build "$dir" -j"$jobs"

cd "$dir"
if [ "$mode" = --valgrind ]; then
    fail=0
    # Unit tests only: the integration tests need the broker fixture.
    for src in ../tests/unit/test_*.c; do
        t=tests/$(basename "$src" .c)
        if ! valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect \
            --error-exitcode=1 "$t" >"$t.valgrind.log" 2>&1; then
            echo "valgrind: $t failed; see $dir/$t.valgrind.log" >&2
            tail -30 "$t.valgrind.log" >&2
            fail=1
        fi
    done
    # The fuzz targets' replays of their seed corpus and past crash inputs:
    # valgrind sees the uninitialised reads the sanitizers do not.
    for src in ../tests/fuzz/fuzz_*.c; do
        name=$(basename "$src" .c)
        t=tests/fuzz/$name
        inputs=(../tests/fuzz/corpus/"${name#fuzz_}")
        [ -d ../tests/fuzz/regressions/"${name#fuzz_}" ] && inputs+=(../tests/fuzz/regressions/"${name#fuzz_}")
        if ! valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect \
            --error-exitcode=1 "$t" "${inputs[@]}" >"$t.valgrind.log" 2>&1; then
            echo "valgrind: $t failed; see $dir/$t.valgrind.log" >&2
            tail -30 "$t.valgrind.log" >&2
            fail=1
        fi
    done
    [ $fail -eq 0 ] && echo "valgrind: all unit tests and fuzz replays clean"
    exit $fail
fi
if [ "$mode" = --tsan ]; then
    # Reports go to files (a worker that met a race would otherwise be
    # restarted by its supervisor, and the test pass): any file fails.
    rm -rf tsan && mkdir -p tsan
    status=0
    ctest --output-on-failure -j"$jobs" -L unit -LE source || status=1
    CW_CHAOS_TASKS=${CW_CHAOS_TASKS:-10000} ctest --output-on-failure \
        -R 'test_concurrency|test_pipeline|integration.test_pool$|chaos.test_chaos$' || status=1
    if ls tsan/report.* >/dev/null 2>&1; then
        echo "tsan: ThreadSanitizer reported (build-tsan/tsan/):" >&2
        head -60 tsan/report.* >&2
        status=1
    fi
    [ $status -eq 0 ] && echo "tsan: the unit tests and the worker's tests ran without a report"
    exit $status
fi
# The source checks (layers, format, headers) read the tree, not the build:
# once, in the plain run, is enough. Under the sanitizers the chaos run is
# half as long (CW_CHAOS_TASKS), and what the plain run covers with little
# of its own to find there is left out: the chaos run on the PostgreSQL
# store and the two-host test (the worker and store code of the other
# tests), the three-node cluster, and the 400 processes of the bad-config
# test (the configuration reader is fuzzed under ASan and UBSan instead).
if [ "$mode" = plain ]; then
    ctest --output-on-failure -j"$jobs"
else
    CW_CHAOS_TASKS=${CW_CHAOS_TASKS:-10000} ctest --output-on-failure -j"$jobs" -LE source \
        -E 'chaos\.test_chaos_pg|cluster\.|integration\.test_(failover|fleet)$|unit\.test_bad_config$'
fi
