#!/usr/bin/env bash
# Throughput of compworker as a ratio to the broker's own limit, measured in
# the same run: the baseline is bench/cwbench.c's bare rabbitmq-c consumer
# (manual acks, the same prefetch, the same persistent messages, no work).
#
#   bench/run.sh BUILD_DIR                 (make bench runs it)
#   N=100000 RUNS=3 PREFETCH=1000 QUEUE_TYPES="classic quorum" bench/run.sh build
#
# Starts a throwaway RabbitMQ node on port ${BENCH_PORT:-5690}; prints a table
# and writes BUILD_DIR/bench.json.
set -euo pipefail
build=$(cd "${1:?usage: bench/run.sh BUILD_DIR}" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-100000}
RUNS=${RUNS:-3}
PREFETCH=${PREFETCH:-1000}
QUEUE_TYPES=${QUEUE_TYPES:-classic quorum}
port=${BENCH_PORT:-5690}
url=amqp://guest:guest@127.0.0.1:$port/
work=$(mktemp -d /tmp/cw-bench.XXXXXX)
bench=$build/bench/cwbench
exe=$build/compworker
worker=""

cleanup() {
    [ -n "$worker" ] && kill -TERM "$worker" 2>/dev/null && wait "$worker" 2>/dev/null
    "$src/tests/harness/rabbitmq.sh" stop "$work/broker" || true
    rm -rf "$work"
}
trap cleanup EXIT
"$src/tests/harness/rabbitmq.sh" start "$work/broker" "$port"

now() { date +%s.%N; }
wait_empty() { # queue
    while [ "$("$bench" depth "$url" "$1")" != 0 ]; do sleep 0.02; done
}

# One compworker run over N tasks already in the queue: start it, let it
# declare the topology and connect, pause it, fill the queue, release it and
# time until the queue is empty.
compworker_rate() { # qtype run
    local qtype=$1 i=$2 dir=$work/cw-$1-$2
    mkdir -p "$dir"
    cat >"$dir/pool.ini" <<INI
[broker]
url = $url
prefetch = $PREFETCH
[pool]
name = bench-$qtype
queue_type = $qtype
plugins = $build/bench/bench_noop.so
[store]
backend = sqlite
path = $dir/store.db
synchronous = full
[log]
level = info
INI
    "$exe" run -c "$dir/pool.ini" 2>"$dir/worker.log" &
    worker=$!
    # The topology exists once the worker consumes: its queue then answers.
    for _ in $(seq 200); do "$bench" depth "$url" "cw.bench-$qtype" >/dev/null 2>&1 && break; sleep 0.05; done
    sleep 0.3
    kill -STOP "$worker"
    "$bench" fill "$url" "cw.bench-$qtype" "$N" >/dev/null
    local t0 t1
    t0=$(now)
    kill -CONT "$worker"
    wait_empty "cw.bench-$qtype"
    t1=$(now)
    kill -TERM "$worker"; wait "$worker" || true; worker=""
    # Every task went through the pipeline: the worker says how many it applied.
    local applied
    applied=$(sed -n 's/.*stopped: [0-9]* received, \([0-9]*\) applied.*/\1/p' "$dir/worker.log")
    if [ "$applied" != "$N" ]; then
        echo "bench: the worker applied ${applied:-?} tasks, not $N; see $dir/worker.log" >&2
        cp "$dir/worker.log" "$build/bench-worker.log"
        exit 1
    fi
    echo "$N / ($t1 - $t0)" | bc -l
}

# The baseline on the same queue (its arguments are compworker's: it exists).
baseline_rate() { # qtype
    "$bench" fill "$url" "cw.bench-$1" "$N" >/dev/null
    "$bench" drain "$url" "cw.bench-$1" "$N" "$PREFETCH"
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

results=()
printf '%-8s %-4s %12s %12s %8s\n' queue run baseline/s compworker/s ratio
for qtype in $QUEUE_TYPES; do
    ratios=()
    for i in $(seq "$RUNS"); do
        c=$(compworker_rate "$qtype" "$i")
        b=$(baseline_rate "$qtype")
        r=$(echo "$c / $b" | bc -l)
        ratios+=("$r")
        printf '%-8s %-4s %12.0f %12.0f %8.2f\n' "$qtype" "$i" "$b" "$c" "$r"
        results+=("{\"queue_type\":\"$qtype\",\"run\":$i,\"baseline\":$b,\"compworker\":$c,\"ratio\":$r}")
    done
    min=$(printf '%s\n' "${ratios[@]}" | sort -g | head -1)
    max=$(printf '%s\n' "${ratios[@]}" | sort -g | tail -1)
    med=$(printf '%s\n' "${ratios[@]}" | median)
    printf '%-8s ratio min %.2f  median %.2f  max %.2f   (N=%d, prefetch %d, store sqlite synchronous=full, 1 worker)\n' \
        "$qtype" "$min" "$med" "$max" "$N" "$PREFETCH"
done
( IFS=,; echo "{\"n\":$N,\"prefetch\":$PREFETCH,\"runs\":[${results[*]}]}" ) >"$build/bench.json"
echo "JSON: $build/bench.json"
