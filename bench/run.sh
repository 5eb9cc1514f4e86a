#!/usr/bin/env bash
# compworker's benchmark (`make bench`): throughput as a ratio to the broker's
# own limit measured in the same run, latency, retry-delay accuracy, memory,
# and the store under a large history. Never a timed test.
#
#   bench/run.sh BUILD_DIR
#   N=100000 RUNS=3 PREFETCH=1000 QUEUE_TYPES="classic quorum" WORKERS="1 2" \
#     SECTIONS="throughput latency retry rss store pg pgstore" STORE_RECORDS=10000000 bench/run.sh build
#   LATENCY_RATE=12000 SECTIONS=latency bench/run.sh build   (the latency at a pace given, tasks/s,
#                                                             not at half the measured capacity)
#
# The baseline, the denominator of every ratio, is bench/cwbench.c's bare
# rabbitmq-c consumer: manual acks, the same prefetch, the same persistent
# messages on the same queue, no work. compworker runs the no-op handler of
# bench/noop_plugin.c with its SQLite store on and durable (synchronous=full).
# Both rates are (messages - 1) / (last delivery or handler start - first).
#
# The section "threads" runs handlers that wait SLEEP_MS (50 ms, a payment
# gateway) on 2 workers at [pool] concurrency 1, 8, 32, 64, as tasks/s against
# the ceiling (workers x concurrency / 50 ms), and Celery 5 (Debian's
# python3-celery) with its threads and gevent pools at the same concurrency,
# on the same broker in the same run.
#
# The section "pg" runs the same compworker on the PostgreSQL store (a
# throwaway PostgreSQL 15 on port ${BENCH_PG_PORT:-5691}, synchronous_commit
# on) beside the SQLite store and the bare consumer, on a quorum queue, and
# measures the store's sweep of a large expired history while it works.
#
# The section "pgstore" is the "store" section's comparison on the
# PostgreSQL store: PG_STORE_RECORDS (default STORE_RECORDS) done records
# written into a schema in bulk, then the rate against an empty schema.
#
# The run ends with the targets of the per-message cost (quorum >= 0.6 of the
# bare consumer and 2 workers >= 1, classic >= 0.9, 10 M records >= 0.85 of
# an empty store on either backend, p99 latency <= 20 ms), each read off the
# medians of the sections this run had, and said met or NOT met.
#
# Message IDs (of every task the benchmark publishes, and of the large
# histories) are what compworker's publishers make: time-ordered UUIDv7.
# IDS=random makes them random UUIDv4, as some other publishers do, to
# measure what that costs a store (its own 10 M store file is kept apart).
#
# The section "relay" runs compworker relay on an outbox table of that
# PostgreSQL: the time from a publisher's COMMIT (one task enqueued with
# cw_outbox_enqueue()) to the task's delivery, one at a time, beside a
# task published straight to the broker (cw_client_publish()) in the same
# run. Target: p50 under 10 ms.
#
# Starts a throwaway RabbitMQ node on port ${BENCH_PORT:-5690}; prints tables
# and writes BUILD_DIR/bench.json. The 10-million-record store is built once
# (a minute or two) and kept as BUILD_DIR/bench-store-<N>.db.
set -euo pipefail
build=$(cd "${1:?usage: bench/run.sh BUILD_DIR}" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-100000}
RUNS=${RUNS:-3}
PREFETCH=${PREFETCH:-1000}
QUEUE_TYPES=${QUEUE_TYPES:-classic quorum}
WORKERS=${WORKERS:-1 2}
SECTIONS=${SECTIONS:-throughput latency retry rss store pg pgstore threads relay}
RELAY_N=${RELAY_N:-500}
CONCURRENCY=${CONCURRENCY:-1 8 32 64}
SLEEP_MS=${SLEEP_MS:-50}
PYTHON=${PYTHON:-/usr/bin/python3} # Debian's, where python3-celery installs
PG_SWEEP_RECORDS=${PG_SWEEP_RECORDS:-200000}
STORE_RECORDS=${STORE_RECORDS:-10000000}
PG_STORE_RECORDS=${PG_STORE_RECORDS:-$STORE_RECORDS}
IDS=${IDS:-v7}
case $IDS in
v7) ;;
random) export CWBENCH_IDS=random ;;
*) echo "bench: IDS must be v7 or random, not '$IDS'" >&2; exit 2 ;;
esac
port=${BENCH_PORT:-5690}
url=amqp://guest:guest@127.0.0.1:$port/
work=$(mktemp -d /tmp/cw-bench.XXXXXX)
bench=$build/bench/cwbench
exe=$build/compworker
pool=""
json=()
declare -A target=() # what the targets at the end are read from

die() { echo "bench: $*" >&2; exit 1; }
pg_port=${BENCH_PG_PORT:-5691}
pg_url=""
cleanup() {
    [ -n "$pool" ] && kill -TERM "$pool" 2>/dev/null && wait "$pool" 2>/dev/null
    "$src/tests/harness/rabbitmq.sh" stop "$work/broker" || true
    [ -z "$pg_url" ] || "$src/tests/harness/postgres.sh" stop "$work/pg" || true
    rm -rf "$work"
}
trap cleanup EXIT
for tool in bc sqlite3; do command -v $tool >/dev/null || die "needs $tool (scripts/deps.sh installs it)"; done
"$src/tests/harness/rabbitmq.sh" start "$work/broker" "$port"

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# "MIN MEDIAN MAX" of the numbers on stdin
spread() { sort -g | awk '{a[NR]=$1} END {print a[1], a[int((NR+1)/2)], a[NR]}'; }
# percentile P of the numbers on stdin (nearest rank)
pct() { sort -g | awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p/100+0.999); if(i<1)i=1; print a[i]}'; }
wait_empty() { # queue
    while [ "$("$bench" depth "$url" "$1")" != 0 ]; do sleep 0.02; done
}
# pg_sql SQL: one value from the bench's PostgreSQL server.
pg_sql() { psql -X -q -A -t -d "$pg_url" -c "$1"; }
# done_after STORE BASE: done records after row BASE of a SQLite file, or of
# a PostgreSQL schema when STORE is "pg:SCHEMA".
done_after() {
    case $1 in
    pg:*) pg_sql "SELECT count(*) FROM \"${1#pg:}\".cw_tasks WHERE id > $2 AND state = 2" ;;
    *) sqlite3 "$1" ".timeout 5000" "SELECT count(*) FROM tasks WHERE id > $2 AND state = 2" ;;
    esac
}
# wait_done STORE BASE N DIR: until the store holds N done records after row BASE
# (the queue's ready count reaches 0 while the last prefetch window still runs).
wait_done() {
    local i n=0
    for i in $(seq 6000); do
        n=$(done_after "$1" "$2")
        [ "$n" -ge "$3" ] && return 0
        sleep 0.05
    done
    die "only $n of $3 tasks done after 5 minutes; see $4/worker.log"
}
# CPU time (clock ticks, user + system) of processes; of the bench's broker node.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
broker_pid() { pgrep -f "beam.smp.*$work/broker" | head -1; }
hz=$(getconf CLK_TCK)
us_per_msg() { echo "$1 * 1000000 / $hz / $2" | bc -l; } # TICKS MESSAGES
# The pids of a running pool's workers, from its log (DIR/worker.log): the
# supervisor's other child, the monitor, is not one of them.
workers_of() { # DIR
    sed -n 's/.*msg="worker [0-9]* started (pid \([0-9]*\))".*/\1/p' "$1/worker.log" | tr '\n' ' '
}

# start_pool DIR QTYPE WORKERS [STORE]: starts `compworker run` on queue
# cw.bench-QTYPE and waits until all its workers consume. STORE is a SQLite
# file (default DIR/store.db) or "pg:SCHEMA" for the PostgreSQL store.
start_pool() {
    local dir=$1 qtype=$2 nw=$3 store=${4:-$1/store.db} store_lines
    mkdir -p "$dir/stats"
    case $store in
    pg:*) store_lines="backend = postgresql
url = $pg_url
schema = ${store#pg:}
retention = ${RETENTION:-7d}" ;;
    *) store_lines="backend = sqlite
path = $store
synchronous = full" ;;
    esac
    cat >"$dir/pool.ini" <<INI
[broker]
url = $url
${POOL_PREFETCH-prefetch = $PREFETCH}
[pool]
name = bench-$qtype
queue_type = $qtype
workers = $nw
concurrency = ${POOL_CONCURRENCY:-1}
plugins = $build/bench/bench_noop.so
[store]
$store_lines
[log]
level = info
[plugin bench-noop]
stats = $dir/stats
sleep_ms = ${HANDLER_SLEEP_MS:-0}
INI
    "$exe" run -c "$dir/pool.ini" 2>"$dir/worker.log" &
    pool=$!
    local i
    for i in $(seq 600); do
        [ "$(cat "$dir/worker.log" 2>/dev/null | grep -c 'consuming from')" -ge "$nw" ] && break
        kill -0 "$pool" 2>/dev/null || die "compworker did not start; see $dir/worker.log"
        sleep 0.05
    done
    [ "$(grep -c 'consuming from' "$dir/worker.log")" -ge "$nw" ] || die "workers did not start"
}

stop_pool() { # DIR
    kill -TERM "$pool"
    wait "$pool" || true
    pool=""
}

# The handler-start rate over every worker of a stopped pool: (calls - 1) /
# (last start - first start). Prints "RATE CALLS".
pool_rate() { # DIR
    cat "$1"/stats/*.txt | awk '$1 == "calls" && $4 > 0 {
        if (!f || $2 < f) f = $2; if ($3 > l) l = $3; n += $4 }
        END { if (n < 2 || l <= f) print 0, n; else printf "%.1f %d\n", (n - 1) / ((l - f) / 1e9), n }'
}

# One compworker run over N tasks already in the queue: the workers start,
# pause, the queue fills, they go on until the store holds every task done.
# Prints "RATE WORKER_CPU_US BROKER_CPU_US" (CPU time per task).
compworker_rate() { # QTYPE WORKERS TAG [STORE_FILE]
    local qtype=$1 nw=$2 dir=$work/cw-$1-$2w-$3 base=0
    case ${4:-} in
    "") ;;
    pg:*) base=$(pg_sql "SELECT coalesce(max(id), 0) FROM \"${4#pg:}\".cw_tasks" 2>/dev/null || echo 0) ;;
    *) base=$(sqlite3 "$4" 'SELECT coalesce(max(id), 0) FROM tasks') ;;
    esac
    start_pool "$dir" "$qtype" "$nw" "${4:-}"
    local ws b0 b1 w0 w1
    ws=$(workers_of "$dir")
    # shellcheck disable=SC2086
    kill -STOP $ws
    "$bench" fill "$url" "cw.bench-$qtype" "$N" >/dev/null
    # shellcheck disable=SC2086
    w0=$(ticks $ws)
    b0=$(ticks "$(broker_pid)")
    # shellcheck disable=SC2086
    kill -CONT $ws
    wait_done "${4:-$dir/store.db}" "$base" "$N" "$dir"
    b1=$(ticks "$(broker_pid)")
    # shellcheck disable=SC2086
    w1=$(ticks $ws)
    stop_pool
    local rate calls
    read -r rate calls < <(pool_rate "$dir")
    if [ "$calls" != "$N" ]; then
        cp "$dir/worker.log" "$build/bench-worker.log"
        die "compworker applied $calls tasks, not $N; see $build/bench-worker.log"
    fi
    echo "$rate $(us_per_msg $((w1 - w0)) "$N") $(us_per_msg $((b1 - b0)) "$N")"
}

# Prints "RATE CONSUMER_CPU_US BROKER_CPU_US".
baseline_rate() { # QTYPE (the queue exists: compworker declared it)
    "$bench" fill "$url" "cw.bench-$1" "$N" >/dev/null
    local b0 b1 out
    b0=$(ticks "$(broker_pid)")
    out=$("$bench" drain "$url" "cw.bench-$1" "$N" "$PREFETCH")
    b1=$(ticks "$(broker_pid)")
    echo "$out $(us_per_msg $((b1 - b0)) "$N")"
}

# ---- throughput ------------------------------------------------------------
cap_rate=""
throughput() {
    echo "== throughput: tasks/s, ratio to the bare rabbitmq-c consumer of the same run;"
    echo "   CPU time per task (us) of the consumer (compworker's workers, or the bare one) and of the broker"
    printf '%-8s %-7s %-4s %11s %11s %7s %9s %9s %9s %9s\n' queue workers run baseline/s \
        compworker/s ratio base_cpu base_brk cw_cpu cw_brk
    local qtype nw i b bc bb c cc cb r
    for qtype in $QUEUE_TYPES; do
        declare -A ratios=()
        for i in $(seq "$RUNS"); do
            for nw in $WORKERS; do
                read -r c cc cb < <(compworker_rate "$qtype" "$nw" "$i")
                read -r b bc bb < <(baseline_rate "$qtype")
                r=$(echo "$c / $b" | bc -l)
                ratios[$nw]+="$r "
                printf '%-8s %-7s %-4s %11.0f %11.0f %7.2f %9.1f %9.1f %9.1f %9.1f\n' "$qtype" "$nw" "$i" \
                    "$b" "$c" "$r" "$bc" "$bb" "$cc" "$cb"
                json+=("{\"section\":\"throughput\",\"queue_type\":\"$qtype\",\"workers\":$nw,\"run\":$i,\"baseline\":$b,\"compworker\":$c,\"ratio\":$r,\"baseline_cpu_us\":$bc,\"baseline_broker_cpu_us\":$bb,\"compworker_cpu_us\":$cc,\"compworker_broker_cpu_us\":$cb}")
                if [ "$qtype" = classic ] && [ "$nw" = 1 ]; then cap_rate+="$c "; fi
            done
        done
        for nw in $WORKERS; do
            local min max med
            # shellcheck disable=SC2086
            read -r min med max < <(printf '%s\n' ${ratios[$nw]} | spread)
            printf '%-8s %-7s ratio min %.2f  median %.2f  max %.2f\n' "$qtype" "$nw" "$min" "$med" "$max"
            target[$qtype-$nw]=$med
            json+=("{\"section\":\"throughput_summary\",\"queue_type\":\"$qtype\",\"workers\":$nw,\"min\":$min,\"median\":$med,\"max\":$max}")
        done
        unset ratios
    done
    echo "(N=$N per run, prefetch $PREFETCH, SQLite store synchronous=full, no-op handler)"
}

# ---- latency at half the capacity -----------------------------------------
latency() {
    local cap rate dir=$work/latency secs=${LATENCY_SECONDS:-10}
    if [ -n "${LATENCY_RATE:-}" ]; then
        cap=$((LATENCY_RATE * 2)) # a pace given: compare builds at the same one
        start_pool "$work/latency-topology" classic 1 # declares the queue
        stop_pool
    elif [ -n "$cap_rate" ]; then
        # shellcheck disable=SC2086
        cap=$(printf '%s\n' $cap_rate | median)
    else
        read -r cap _ < <(compworker_rate classic 1 cap)
    fi
    rate=$(echo "$cap / 2" | bc)
    echo "== latency: publish to handler start at $rate tasks/s (half of $cap/s), ${secs} s, 1 worker, classic, $RUNS runs;"
    echo "   beside it the bare consumer's, publish to receipt, at the same pace (the broker's share)"
    printf '%-4s %8s %9s %9s %9s %9s\n' run samples p50_ms p99_ms bare_p50 bare_p99
    local r p99s=()
    for r in $(seq "$RUNS"); do
        # The baseline first: the bare consumer on the same queue at the same pace.
        local bare=$work/latency-bare-$r.txt bp50 bp99
        "$bench" latency "$url" cw.bench-classic "$(echo "$rate * $secs" | bc | cut -d. -f1)" \
            "$PREFETCH" >"$bare" &
        local lpid=$!
        sleep 0.5
        "$bench" pace "$url" cw.bench-classic "$rate" "$secs" >/dev/null
        wait "$lpid"
        bp50=$(awk '$1 == "latency_us" {print $2 / 1000}' "$bare" | pct 50)
        bp99=$(awk '$1 == "latency_us" {print $2 / 1000}' "$bare" | pct 99)
        start_pool "$dir-$r" classic 1
        "$bench" pace "$url" cw.bench-classic "$rate" "$secs" >/dev/null
        wait_empty cw.bench-classic
        sleep 1
        stop_pool
        local p50 p99 n
        n=$(cat "$dir-$r"/stats/*.txt | grep -c '^latency_us ' || true)
        [ "$n" -gt 0 ] || die "no latency samples; see $dir-$r/worker.log"
        p50=$(awk '$1 == "latency_us" {print $2 / 1000}' "$dir-$r"/stats/*.txt | pct 50)
        p99=$(awk '$1 == "latency_us" {print $2 / 1000}' "$dir-$r"/stats/*.txt | pct 99)
        printf '%-4s %8d %9.2f %9.2f %9.2f %9.2f\n' "$r" "$n" "$p50" "$p99" "$bp50" "$bp99"
        p99s+=("$p99")
        json+=("{\"section\":\"latency\",\"run\":$r,\"rate\":$rate,\"samples\":$n,\"p50_ms\":$p50,\"p99_ms\":$p99,\"bare_p50_ms\":$bp50,\"bare_p99_ms\":$bp99}")
    done
    local min med max
    read -r min med max < <(printf '%s\n' "${p99s[@]}" | spread)
    printf 'compworker p99: min %.2f  median %.2f  max %.2f ms\n' "$min" "$med" "$max"
    target[latency]=$med
}

# ---- retry delay accuracy --------------------------------------------------
retry() {
    local dir=$work/retry delay n
    echo "== retry delay: asked vs actual (from the failure to the next attempt's start)"
    start_pool "$dir" classic 1
    for delay in 1000 10000; do
        "$bench" pace "$url" cw.bench-classic 20 5 "$delay" >/dev/null
    done
    sleep 13 # the last 10 s retries come back
    wait_empty cw.bench-classic
    sleep 1
    stop_pool
    printf '%-10s %8s %14s %14s\n' asked_ms samples actual_p50_ms actual_p99_ms
    for delay in 1000 10000; do
        n=$(awk -v d=$delay '$1 == "retry" && $2 == d' "$dir"/stats/*.txt | wc -l)
        [ "$n" = 100 ] || die "$n of 100 retries after $delay ms came back; see $dir/worker.log"
        local p50 p99
        p50=$(awk -v d=$delay '$1 == "retry" && $2 == d {print $3}' "$dir"/stats/*.txt | pct 50)
        p99=$(awk -v d=$delay '$1 == "retry" && $2 == d {print $3}' "$dir"/stats/*.txt | pct 99)
        printf '%-10s %8d %14d %14d\n' "$delay" "$n" "$p50" "$p99"
        json+=("{\"section\":\"retry\",\"asked_ms\":$delay,\"samples\":$n,\"p50_ms\":$p50,\"p99_ms\":$p99}")
    done
}

# ---- memory ----------------------------------------------------------------
rss() {
    local dir=$work/rss rounds=${RSS_ROUNDS:-5} per=$((N / 5)) i w kb first="" series=()
    echo "== worker memory: RSS after each round of $per tasks (1 worker, classic)"
    start_pool "$dir" classic 1
    w=$(workers_of "$dir")
    for i in $(seq "$rounds"); do
        "$bench" fill "$url" cw.bench-classic "$per" >/dev/null
        wait_empty cw.bench-classic
        sleep 0.5
        kb=$(awk '/^VmRSS/ {print $2}' "/proc/${w%% *}/status")
        [ -n "$first" ] || first=$kb
        series+=("$kb")
        printf 'after %7d tasks: %6d KiB\n' $((i * per)) "$kb"
    done
    stop_pool
    local growth=$((series[-1] - series[0]))
    printf 'growth from the first round to the last: %d KiB\n' "$growth"
    json+=("{\"section\":\"rss\",\"tasks_per_round\":$per,\"rss_kib\":[$(IFS=,; echo "${series[*]}")],\"growth_kib\":$growth}")
}

# ---- the store under a large history --------------------------------------
store() {
    local big=$build/bench-store-$STORE_RECORDS-$IDS.db dir=$work/store ids
    if [ ! -s "$big" ]; then
        echo "== building a store with $STORE_RECORDS done records (once: $big)"
        # compworker creates the schema; the records are written in bulk.
        mkdir -p "$dir"
        start_pool "$dir/init" classic 1 "$big.tmp"
        stop_pool
        local now
        now=$(($(date +%s) * 1000))
        # UUIDv7 IDs as if published over the retention week before now, in
        # arrival order; or random UUIDv4 ones.
        if [ "$IDS" = v7 ]; then
            ids="printf('%08x-%04x-7%03x-%04x-%012x', ($now - 604800000 + i * 604800000 / $STORE_RECORDS) >> 16,
       ($now - 604800000 + i * 604800000 / $STORE_RECORDS) & 65535, random() & 4095,
       32768 + (random() & 16383), random() & 281474976710655)"
        else
            ids="lower(printf('%s-%s-4%s-%x%s-%s', hex(randomblob(4)), hex(randomblob(2)),
       substr(hex(randomblob(2)), 2), 8 + (random() & 3), substr(hex(randomblob(2)), 2),
       hex(randomblob(6))))"
        fi
        sqlite3 "$big.tmp" >/dev/null <<SQL
PRAGMA cache_size = -2000000;
PRAGMA synchronous = OFF;
BEGIN;
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $STORE_RECORDS)
INSERT INTO tasks (message_id, state, owner, attempts, deliveries, unsettled, saga_id, type,
                   first_seen, last_seen, settled_at)
SELECT $ids, 2, 'bench', 1, 1, 0, 'saga-bench', 'bench.noop',
       $now, $now, $now FROM c;
COMMIT;
PRAGMA wal_checkpoint(TRUNCATE);
SQL
        [ "$(sqlite3 "$big.tmp" 'SELECT count(*) FROM tasks')" = "$STORE_RECORDS" ] ||
            die "building $big failed"
        mv "$big.tmp" "$big"
        rm -rf "$big.tmp-wal" "$big.tmp-shm" "$big.tmp.crash"
    fi
    echo "== the store under a large history: tasks/s with $STORE_RECORDS done records vs an empty store (1 worker, classic)"
    printf '%-4s %14s %14s %8s\n' run empty/s large/s ratio
    local i e l r rs=""
    for i in $(seq "$RUNS"); do
        read -r e _ < <(compworker_rate classic 1 "empty$i")
        mkdir -p "$dir"
        cp "$big" "$dir/large.db"
        # The copy's 1.4 GB of dirty page cache is not the store's work: on
        # disk before the run, not written back by its first checkpoint.
        sync "$dir/large.db"
        read -r l _ < <(compworker_rate classic 1 "large$i" "$dir/large.db")
        rm -rf "$dir"/large.db*
        r=$(echo "$l / $e" | bc -l)
        printf '%-4s %14.0f %14.0f %8.2f\n' "$i" "$e" "$l" "$r"
        json+=("{\"section\":\"store\",\"records\":$STORE_RECORDS,\"run\":$i,\"empty\":$e,\"large\":$l,\"ratio\":$r}")
        rs+="$r "
    done
    # shellcheck disable=SC2086
    target[store]=$(printf '%s\n' $rs | median)
}

# ---- the PostgreSQL store under a large history ----------------------------
pgstore() {
    pg_start
    local schema=bench_big_$$ i e l r rs="" n=$PG_STORE_RECORDS now ids
    echo "== the PostgreSQL store under a large history: tasks/s with $n done records vs an" \
         "empty schema (1 worker, classic)"
    start_pool "$work/pgbig-init" classic 1 "pg:$schema"
    stop_pool
    now=$(($(date +%s) * 1000))
    # The records in bulk (a few minutes for 10 million), their IDs as the
    # SQLite store's.
    if [ "$IDS" = v7 ]; then
        ids="lpad(to_hex(t >> 16), 8, '0') || '-' || lpad(to_hex(t & 65535), 4, '0') || '-7' ||
             lpad(to_hex((random() * 4095)::int), 3, '0') || '-' ||
             to_hex(32768 + (random() * 16383)::int) || '-' ||
             lpad(to_hex((random() * 281474976710655)::bigint), 12, '0')"
    else
        ids="gen_random_uuid()::text"
    fi
    pg_sql "INSERT INTO \"$schema\".cw_tasks (message_id, state, owner, attempts, deliveries,
            unsettled, saga_id, type, first_seen, last_seen, settled_at)
            SELECT $ids, 2, 'bench', 1, 1, 0, 'saga-bench', 'bench.noop', $now, $now, $now
            FROM generate_series(1, $n) i,
                 LATERAL (SELECT $now - 604800000 + i::bigint * 604800000 / $n AS t) ts" >/dev/null
    pg_sql "VACUUM ANALYZE \"$schema\".cw_tasks" >/dev/null
    printf '%-4s %14s %14s %8s\n' run empty/s large/s ratio
    for i in $(seq "$RUNS"); do
        read -r e _ < <(compworker_rate classic 1 "pgempty$i" "pg:bench_empty_${i}_$$")
        read -r l _ < <(compworker_rate classic 1 "pgbig$i" "pg:$schema")
        r=$(echo "$l / $e" | bc -l)
        printf '%-4s %14.0f %14.0f %8.2f\n' "$i" "$e" "$l" "$r"
        json+=("{\"section\":\"pgstore\",\"records\":$n,\"run\":$i,\"empty\":$e,\"large\":$l,\"ratio\":$r}")
        rs+="$r "
    done
    # shellcheck disable=SC2086
    target[pgstore]=$(printf '%s\n' $rs | median)
}

# The issue's targets, from the medians of this run.
targets() {
    local any=0
    check() { # LABEL VALUE OP LIMIT
        [ -n "$2" ] || return 0
        any=1
        local ok
        ok=$(echo "$2 $3 $4" | bc -l)
        printf '%-52s %8.2f  %s %s  %s\n' "$1" "$2" "$3" "$4" "$([ "$ok" = 1 ] && echo met || echo 'NOT met')"
        json+=("{\"section\":\"target\",\"what\":\"$1\",\"value\":$2,\"limit\":$4,\"met\":$([ "$ok" = 1 ] && echo true || echo false)}")
    }
    echo "== targets (medians of this run)"
    check "quorum, 1 worker / bare consumer" "${target[quorum-1]:-}" ">=" 0.6
    if [ -n "${target[quorum-1]:-}" ] && [ -n "${target[quorum-2]:-}" ]; then
        check "quorum, 2 workers / 1 worker" "$(echo "${target[quorum-2]} / ${target[quorum-1]}" | bc -l)" ">=" 1
    fi
    check "classic, 1 worker / bare consumer" "${target[classic-1]:-}" ">=" 0.9
    check "classic, 2 workers / bare consumer" "${target[classic-2]:-}" ">=" 0.9
    check "$STORE_RECORDS records retained / empty (SQLite)" "${target[store]:-}" ">=" 0.85
    check "$PG_STORE_RECORDS records retained / empty (PostgreSQL)" "${target[pgstore]:-}" ">=" 0.85
    check "latency p99 at half capacity (ms, median)" "${target[latency]:-}" "<=" 20
    [ $any = 1 ] || echo "(no section of this run has a target)"
}

# ---- the PostgreSQL store -------------------------------------------------
pg_start() {
    [ -n "$pg_url" ] && return 0
    "$src/tests/harness/postgres.sh" start "$work/pg" "$pg_port" >/dev/null
    pg_url=$("$src/tests/harness/postgres.sh" url "$work/pg")
}

pg() {
    pg_start
    echo "== the PostgreSQL store (PostgreSQL $(pg_sql 'SHOW server_version'), synchronous_commit" \
         "$(pg_sql 'SHOW synchronous_commit'), same machine): tasks/s on a quorum queue beside the" \
         "SQLite store and the bare consumer of the same run"
    printf '%-7s %-4s %11s %11s %11s %8s %8s %9s %9s\n' workers run baseline/s sqlite/s pg/s \
        pg/base pg/sqlite sqlite_cpu pg_cpu
    local nw i b s sc p pc
    for i in $(seq "$RUNS"); do
        for nw in $WORKERS; do
            read -r s sc _ < <(compworker_rate quorum "$nw" "sq$i")
            read -r p pc _ < <(compworker_rate quorum "$nw" "pg$i" "pg:bench_${nw}_${i}_$$")
            read -r b _ _ < <(baseline_rate quorum)
            printf '%-7s %-4s %11.0f %11.0f %11.0f %8.2f %8.2f %9.1f %9.1f\n' "$nw" "$i" "$b" "$s" "$p" \
                "$(echo "$p / $b" | bc -l)" "$(echo "$p / $s" | bc -l)" "$sc" "$pc"
            json+=("{\"section\":\"pg\",\"workers\":$nw,\"run\":$i,\"baseline\":$b,\"sqlite\":$s,\"pg\":$p,\"pg_ratio\":$(echo "$p / $b" | bc -l),\"pg_to_sqlite\":$(echo "$p / $s" | bc -l),\"sqlite_cpu_us\":$sc,\"pg_cpu_us\":$pc}")
        done
    done
    # Retention: a history of expired done records, swept while the pool works.
    local schema=bench_sweep_$$ old now dir=$work/pgsweep t0 t1 left e w
    echo "== the PostgreSQL store's sweep: $PG_SWEEP_RECORDS expired done records while 1 worker works"
    start_pool "$dir/init" quorum 1 "pg:$schema"
    stop_pool
    now=$(($(date +%s) * 1000))
    old=$((now - 2 * 86400 * 1000))
    pg_sql "INSERT INTO \"$schema\".cw_tasks (message_id, state, owner, attempts, deliveries, unsettled,
            saga_id, type, first_seen, last_seen, settled_at)
            SELECT md5(i::text), 2, 'bench', 1, 1, 0, 'saga-bench', 'bench.noop', $old, $old, $old
            FROM generate_series(1, $PG_SWEEP_RECORDS) i" >/dev/null
    pg_sql "VACUUM ANALYZE \"$schema\".cw_tasks" >/dev/null
    read -r e _ < <(compworker_rate quorum 1 "pgnosweep" "pg:bench_nosweep_$$")
    t0=$(date +%s.%N)
    read -r w _ < <(RETENTION=1d compworker_rate quorum 1 "pgsweep" "pg:$schema")
    # The sweep goes on between batches; wait until the history is gone.
    RETENTION=1d start_pool "$dir/rest" quorum 1 "pg:$schema"
    for _ in $(seq 1200); do
        left=$(pg_sql "SELECT count(*) FROM \"$schema\".cw_tasks WHERE first_seen = $old")
        [ "$left" = 0 ] && break
        sleep 0.5
    done
    t1=$(date +%s.%N)
    stop_pool
    printf 'swept %d records in %.1f s (%.0f/s, one sweeper, chunks of 2000); tasks/s meanwhile %.0f vs %.0f without a history: %.2f\n' \
        $((PG_SWEEP_RECORDS - left)) "$(echo "$t1 - $t0" | bc -l)" \
        "$(echo "($PG_SWEEP_RECORDS - $left) / ($t1 - $t0)" | bc -l)" "$w" "$e" "$(echo "$w / $e" | bc -l)"
    json+=("{\"section\":\"pg_sweep\",\"records\":$PG_SWEEP_RECORDS,\"left\":$left,\"seconds\":$(echo "$t1 - $t0" | bc -l),\"rate_during\":$w,\"rate_without\":$e}")
}

# ---- handler threads against the ceiling and Celery ------------------------
# celery_rate POOL C N: Celery's rate with 2 worker processes of pool POOL
# (threads, gevent) at concurrency C over N tasks of SLEEP_MS.
celery_rate() {
    local pool_kind=$1 c=$2 n=$3 dir=$work/celery-$1-$2 pids=() i
    mkdir -p "$dir"
    export CELERY_BENCH_URL="amqp://guest:guest@127.0.0.1:$port//" CELERY_BENCH_DIR=$dir \
        CELERY_BENCH_SLEEP_MS=$SLEEP_MS PYTHONPATH=$src/bench
    for i in 1 2; do
        "$PYTHON" -m celery -A celery_bench worker -P "$pool_kind" -c "$c" -Q cwbench.celery \
            -n "w$i@bench" --without-gossip --without-mingle --without-heartbeat -l warning \
            >"$dir/worker$i.log" 2>&1 &
        pids+=($!)
    done
    sleep 3
    "$PYTHON" "$src/bench/celery_bench.py" publish "$n"
    local got=0
    for i in $(seq 6000); do
        got=$(cat "$dir"/*.txt 2>/dev/null | wc -l)
        [ "$got" -ge "$n" ] && break
        sleep 0.05
    done
    sleep $((SLEEP_MS / 1000 + 1))
    kill -TERM "${pids[@]}" 2>/dev/null
    wait "${pids[@]}" 2>/dev/null || true
    [ "$got" -ge "$n" ] || die "Celery ($pool_kind, $c) ran $got of $n tasks; see $dir"
    cat "$dir"/*.txt | sort -n | awk -v n="$n" 'NR == 1 {f = $1} {l = $1} END {printf "%.1f\n", (n - 1) / ((l - f) / 1e9)}'
}

threads() {
    local c n ceiling r rt rg have_celery=1
    "$PYTHON" -c 'import celery, gevent' 2>/dev/null || have_celery=0
    echo "== handler threads: handlers that wait $SLEEP_MS ms, 2 workers, tasks/s against the" \
         "ceiling (2 x concurrency / $SLEEP_MS ms) and Celery $("$PYTHON" -c 'import celery; print(celery.__version__)' 2>/dev/null || echo '(not installed)') on the same broker"
    printf '%-11s %9s %9s %14s %11s %9s %11s %9s\n' concurrency ceiling/s cw/s cw/ceiling \
        celery-thr/s cw/thr celery-gev/s cw/gev
    for c in $CONCURRENCY; do
        ceiling=$(echo "2 * $c * 1000 / $SLEEP_MS" | bc -l)
        # About 8 s of work at the ceiling, at least 200 tasks.
        n=$(echo "x = $ceiling * 8; if (x < 200) 200 else x" | bc | cut -d. -f1)
        local saved_n=$N
        N=$n
        read -r r _ < <(POOL_CONCURRENCY=$c HANDLER_SLEEP_MS=$SLEEP_MS POOL_PREFETCH="" \
            compworker_rate classic 2 "threads$c")
        N=$saved_n
        rt=0 rg=0
        if [ $have_celery = 1 ]; then
            rt=$(celery_rate threads "$c" "$n")
            rg=$(celery_rate gevent "$c" "$n")
        fi
        printf '%-11s %9.0f %9.0f %14.2f %11.0f %9.2f %11.0f %9.2f\n' "$c" "$ceiling" "$r" \
            "$(echo "$r / $ceiling" | bc -l)" "$rt" "$(echo "if ($rt > 0) $r / $rt else 0" | bc -l)" \
            "$rg" "$(echo "if ($rg > 0) $r / $rg else 0" | bc -l)"
        json+=("{\"section\":\"threads\",\"concurrency\":$c,\"tasks\":$n,\"ceiling\":$ceiling,\"compworker\":$r,\"celery_threads\":$rt,\"celery_gevent\":$rg}")
    done
    [ $have_celery = 1 ] || echo "(Celery not installed: apt-get install python3-celery python3-gevent)"
}

relay() {
    pg_start
    local dir=$work/relay table=bench_outbox_$$
    mkdir -p "$dir"
    printf '[relay]\nurl = %s\ntable = %s\n[broker]\nurl = %s\nexchange = cw.bench.relay\n[log]\nlevel = warn\n' \
        "$pg_url" "$table" "$url" >"$dir/relay.ini"
    "$exe" relay init -c "$dir/relay.ini" >/dev/null || die "relay init failed"
    "$exe" relay -c "$dir/relay.ini" >"$dir/relay.log" 2>&1 &
    local rpid=$!
    local p50 p99 d50 d99
    read -r p50 p99 d50 d99 < <("$build/bench/relay_bench" "$pg_url" "$table" "$url" \
        cw.bench.relay "cw.bench.relay.$$" "$RELAY_N" 5) || die "relay_bench failed"
    kill -TERM "$rpid"
    wait "$rpid" || true
    pg_sql "DROP TABLE $table" >/dev/null
    echo "== the outbox relay: from a publisher's COMMIT to the task's delivery, $RELAY_N tasks" \
         "one at a time (PostgreSQL $(pg_sql 'SHOW server_version'), LISTEN/NOTIFY), beside a" \
         "task published straight to the broker"
    printf '%-22s %9s %9s\n' path p50_ms p99_ms
    printf '%-22s %9s %9s\n' "outbox + relay" "$p50" "$p99"
    printf '%-22s %9s %9s\n' "cw_client_publish" "$d50" "$d99"
    printf 'target: outbox p50 under 10 ms: %s\n' \
        "$(echo "$p50 < 10" | bc -l | sed 's/1/met/; s/0/NOT met/')"
    json+=("{\"section\":\"relay\",\"tasks\":$RELAY_N,\"p50_ms\":$p50,\"p99_ms\":$p99,\"direct_p50_ms\":$d50,\"direct_p99_ms\":$d99}")
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)," \
     "$(uname -r); RabbitMQ $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo '?')"
for s in $SECTIONS; do
    case $s in
    throughput | latency | retry | rss | store | pg | pgstore | threads | relay) $s ;;
    *) die "unknown section '$s' (throughput latency retry rss store pg pgstore threads relay)" ;;
    esac
done
targets
( IFS=,; echo "{\"n\":$N,\"prefetch\":$PREFETCH,\"results\":[${json[*]}]}" ) >"$build/bench.json"
echo "JSON: $build/bench.json"
