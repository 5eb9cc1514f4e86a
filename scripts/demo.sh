#!/usr/bin/env bash
# The order-saga demo, end to end, from a fresh checkout:
#
#   scripts/demo.sh
#
# Installs what is missing, builds, starts a throwaway RabbitMQ node when none
# answers on 127.0.0.1:5672 (set CW_AMQP_URL to use another broker), runs a
# pool of 2 worker processes with the example plugins (their supervisor
# serves /metrics), publishes the compensations of 50
# failed orders (with duplicates and three tasks that must fail) and checks
# that each was applied exactly once and the failures were dead-lettered.
# The ledger the compensations are applied to lives in the store's own
# SQLite file, and the plugins write it through cw_task_sqlite(), in the
# transaction of each task's done record: the demo SIGKILLs one worker while
# the compensations are being applied, and still finds none applied twice.
# Exits with the report's status: 0 when everything matched. ORDERS=N
# publishes N orders instead of 50.
#
#   scripts/demo.sh --fleet
#
# runs the same saga on two pools of one pool name -- two "hosts", each with
# its own directory and pool file (var/demo/host-a, var/demo/host-b) -- that
# share one PostgreSQL store (a throwaway server on 127.0.0.1:5433, in
# var/demo-pg, unless CW_STORE_URL names one), as a pool spread over several
# hosts must. There the ledger is a SQLite file of its own beside the store
# (the plugins commit to it themselves), and no worker is killed: exactly once
# holds there while workers live, at least once through a kill.
#
#   scripts/demo.sh --outbox      (with or without --fleet)
#
# publishes through the transactional outbox instead: the publisher plays the
# order service, and enqueues each compensation in the outbox table of its
# PostgreSQL database (the throwaway server above) in the transaction that
# marks its order, with cw_outbox_enqueue(); `compworker relay` publishes
# what committed.
set -euo pipefail

fleet=0
outbox=0
for arg in "$@"; do
    case "$arg" in
    --fleet) fleet=1 ;;
    --outbox) outbox=1 ;;
    *) echo "usage: scripts/demo.sh [--fleet] [--outbox]" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
root=$(pwd)
demo=$root/var/demo
build=$root/build
saga=$build/examples/order-saga
orders=${ORDERS:-50}

say() { printf '\n==> %s\n' "$*"; }

say "installing dependencies (scripts/deps.sh)"
scripts/deps.sh

say "building in build/"
cmake -S . -B build -DCW_BUILD_EXAMPLES=ON >/dev/null
cmake --build build -j2

pool_pids=()
relay_pid=""
broker_dir=""
pg_dir=""
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    for pid in $relay_pid "${pool_pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [ -n "$broker_dir" ]; then
        echo "demo: stopping the throwaway RabbitMQ node" >&2
        tests/harness/rabbitmq.sh stop "$broker_dir" || true
    fi
    if [ -n "$pg_dir" ]; then
        echo "demo: stopping the throwaway PostgreSQL server" >&2
        tests/harness/postgres.sh stop "$pg_dir" || true
    fi
}
trap cleanup EXIT

amqp_answers() {
    timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672' 2>/dev/null
}

if [ -n "${CW_AMQP_URL:-}" ]; then
    url=$CW_AMQP_URL
    say "using the broker of CW_AMQP_URL"
else
    url=amqp://guest:guest@127.0.0.1:5672/
    if amqp_answers; then
        say "using the broker already listening on 127.0.0.1:5672"
    else
        say "starting a throwaway RabbitMQ node on 127.0.0.1:5672 (var/demo-broker)"
        broker_dir=$root/var/demo-broker
        rm -rf "$broker_dir"
        tests/harness/rabbitmq.sh start "$broker_dir" 5672
    fi
fi

store_lines="backend = sqlite
path = $demo/orders.db"
# The ledger: in the store's file (ledger = store), or one of its own.
ledger=$demo/orders.db
ledger_setting=store
# A throwaway PostgreSQL server, once: the fleet's store, the outbox's database.
pg_url=""
start_pg() {
    [ -n "$pg_url" ] && return 0
    say "starting a throwaway PostgreSQL server on 127.0.0.1:5433 (var/demo-pg)"
    pg_dir=$root/var/demo-pg
    rm -rf "$pg_dir"
    tests/harness/postgres.sh start "$pg_dir" 5433
    pg_url=$(tests/harness/postgres.sh url "$pg_dir")
}
if [ $fleet = 1 ]; then
    if [ -n "${CW_STORE_URL:-}" ]; then
        say "using the PostgreSQL store of CW_STORE_URL"
        store_url=$CW_STORE_URL
    else
        start_pg
        store_url=$pg_url
    fi
    store_lines="backend = postgresql
url = $store_url
schema = demo_orders"
    ledger=$demo/ledger.db
    ledger_setting=$ledger
fi
ledger_rel=${ledger#"$root"/}

say "preparing var/demo"
rm -rf "$demo"
mkdir -p "$demo"
# pool_file DIR: the pool file of one host.
pool_file() {
cat >"$1/pool.ini" <<INI
; Written by scripts/demo.sh; see examples/order-saga/pool.ini for every key.
[broker]
url = amqp://guest:guest@127.0.0.1:5672/
exchange = cw.tasks
heartbeat = 30s

[pool]
name = orders
queue = cw.orders
queue_type = quorum
plugins = $saga/refund.so $saga/restock.so $saga/cancel_shipment.so
max_body_size = 64KiB
workers = 2
concurrency = 4
shutdown_timeout = 30s
metrics_listen = 127.0.0.1:0
; This pool also takes saga compensation plans (cw.saga.plan).
saga_plans = true

[store]
$store_lines
lease = 1m
retention = 1d
synchronous = full

[retry]
max_attempts = 5
interval = 500ms
backoff_rate = 2.0
max_delay = 30s
jitter = equal

[log]
level = info

; "store": the ledger's tables are in the store's file, written in the
; transaction of each task's done record (cw_task_sqlite).
[plugin refund]
ledger = $ledger_setting
; Each call to the payment gateway takes this long.
latency_ms = 25
; The payment gateway times out on the first refund of these payments: a
; transient failure, retried with backoff ([retry]) until it succeeds.
gateway_timeouts = pay-0004 pay-0011

[plugin restock]
ledger = $ledger_setting
latency_ms = 25

[plugin cancel-shipment]
ledger = $ledger_setting
latency_ms = 25
INI
}
if [ $fleet = 1 ]; then
    hosts=("$demo/host-a" "$demo/host-b")
else
    hosts=("$demo")
fi
for h in "${hosts[@]}"; do
    mkdir -p "$h"
    pool_file "$h"
done
pool_ini=${hosts[0]}/pool.ini
# Tasks left in the queues by an interrupted run must not count in this one.
"$saga/order-saga-report" --purge --url "$url" --dlq cw.dlq.orders --queue cw.orders

for h in "${hosts[@]}"; do
    log=${h#"$root"/}/worker.log
    if [ $fleet = 1 ]; then
        say "starting a pool of 2 workers x 4 handler threads on \"host\" $(basename "$h") (log: $log)"
        "$build/compworker" config check -c "$h/pool.ini" | grep '^; store:'
    else
        say "starting a pool of 2 workers x 4 handler threads (log: $log)"
    fi
    # CW_AMQP_URL, when set, overrides the url of the pool file.
    "$build/compworker" run -c "$h/pool.ini" >"$h/worker.log" 2>&1 &
    pool_pids+=($!)
done
for i in "${!hosts[@]}"; do
    h=${hosts[$i]}
    consuming() { grep -c 'msg="consuming' "$h/worker.log" || true; }
    for _ in $(seq 1 60); do
        [ "$(consuming)" -ge 2 ] && break
        if ! kill -0 "${pool_pids[$i]}" 2>/dev/null; then
            wait "${pool_pids[$i]}" || true
            echo "demo: the pool exited during start:" >&2
            tail -20 "$h/worker.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    if [ "$(consuming)" -lt 2 ]; then
        echo "demo: the pool's 2 workers are not consuming after 30 s:" >&2
        tail -20 "$h/worker.log" >&2
        exit 1
    fi
done

publish_via=()
if [ $outbox = 1 ]; then
    start_pg
    cat >"$demo/relay.ini" <<INI
; Written by scripts/demo.sh: the outbox relay of the order service's database.
[relay]
url = $pg_url
table = cw_outbox
[broker]
url = amqp://guest:guest@127.0.0.1:5672/
exchange = cw.tasks
[log]
level = info
INI
    say "creating the order service's outbox table and starting the relay (log: var/demo/relay.log)"
    "$build/compworker" relay init -c "$demo/relay.ini"
    "$build/compworker" relay -c "$demo/relay.ini" >"$demo/relay.log" 2>&1 &
    relay_pid=$!
    publish_via=(--outbox "$pg_url")
    say "enqueueing the compensations of $orders failed orders in the outbox, each in the" \
        "transaction that marks its order compensating"
else
    say "publishing the compensations of $orders failed orders"
fi
"$saga/order-saga-publish" --url "$url" --exchange cw.tasks --ledger "$ledger" \
    --orders "$orders" "${publish_via[@]}" &
publisher=$!

# One worker SIGKILLed while the compensations are being applied (single
# host: the ledger is in the store's file, so this is what it must survive):
# once about a third of them are in the ledger.
killed=""
if [ $fleet = 0 ]; then
    victim=$(grep -o 'worker 1 started (pid [0-9]*' "$demo/worker.log" | tail -1 | grep -o '[0-9]*$')
    at=0
    for _ in $(seq 1 600); do
        at=$(sqlite3 "$ledger" "SELECT count(*) FROM effects" 2>/dev/null || echo 0)
        [ "$at" -ge "$orders" ] && break
        sleep 0.05
    done
    if [ -n "$victim" ] && kill -KILL "$victim" 2>/dev/null; then
        killed="worker pid $victim SIGKILLed with $at of about $((orders * 3)) compensations applied"
        say "$killed (the supervisor starts another; the broker redelivers what it held)"
    fi
fi
wait "$publisher"
unique=$(sed -n 's/.*"unique": *\([0-9]*\).*/\1/p' "$ledger.expected.json" | head -1)

say "waiting for the pool, then reporting"
status=0
"$saga/order-saga-report" --url "$url" --ledger "$ledger" --dlq cw.dlq.orders \
    --queue cw.orders --wait 60 || status=$?

say "transient failures retried (from the worker logs)"
cat "${hosts[@]/%//worker.log}" | grep 'retrying in' |
    sed -e 's/^.*msg="//' -e 's/" message_id=/  message_id=/' || echo "  (none)"

metrics=$(grep -o 'serving metrics at http://[^ "]*' "${hosts[0]}/worker.log" | head -1 | sed 's/^serving metrics at //')
if [ -n "$metrics" ]; then
    say "the pool's counters, from $metrics"
    if command -v curl >/dev/null; then
        curl -s "$metrics" | grep -E '^compworker_(tasks_(succeeded|duplicates_skipped|retried)_total|workers|worker_restarts_total)[{]|^compworker_tasks_dead_lettered_total[{].*permanent' || true
    else
        echo "  (curl is not installed)"
    fi
fi

say "fixing the causes and replaying the dead-lettered tasks (compworker dlq)"
cw() { "$build/compworker" "$@"; }
cw dlq stats -c "$pool_ini" || status=1
# The two refunds name payments with a stray "-x": correct each body as it is
# replayed (--edit runs $EDITOR on the body; here a scripted one).
for id in $(cw dlq list -c "$pool_ini" --grep "unknown payment" --json |
            sed -n 's/^{"message_id":"\([^"]*\)".*/\1/p'); do
    EDITOR='sed -i -e s/-x"/"/' cw dlq replay -c "$pool_ini" --edit "$id" || status=1
done
# The shipment was recorded as delivered by mistake: correct the ledger, then
# replay the cancel as it was.
sqlite3 "$ledger" "UPDATE shipments SET status = 'booked' WHERE status = 'delivered'"
cw dlq replay -c "$pool_ini" --type shipment.cancel || status=1
for _ in $(seq 1 60); do
    applied=$(sqlite3 "$ledger" "SELECT count(*) FROM effects")
    [ "$applied" = "$unique" ] && break
    sleep 0.5
done
twice=$(sqlite3 "$ledger" \
    "SELECT count(*) FROM (SELECT message_id FROM effects GROUP BY message_id HAVING count(*) > 1)")
left=$(cw dlq list -c "$pool_ini" --json | grep -c message_id || true)
echo "after the replay: $applied of $unique unique compensations applied, $twice applied twice," \
     "$left left in the dead-letter queue"
if [ "$applied" != "$unique" ] || [ "$twice" != 0 ] || [ "$left" != 0 ]; then
    echo "demo: the replay did not bring every task through exactly once" >&2
    status=1
elif [ -n "$killed" ]; then
    echo "0 applied twice, even under kill ($killed): each compensation was written in the" \
         "transaction of its done record"
fi

say "one more order's compensations as a saga plan: cancel the shipment, then restock, then refund"
# A fresh order in the ledger: its payment taken, its stock reserved, its
# shipment booked. The refund names its payment with a stray "-x".
sqlite3 "$ledger" "INSERT OR REPLACE INTO payments VALUES ('pay-plan-1', 'ord-plan-1', 4200, 0);
                   INSERT OR REPLACE INTO shipments VALUES ('shp-plan-1', 'ord-plan-1', 'booked');
                   INSERT OR IGNORE INTO stock VALUES ('SKU-PLAN', 0);"
plan='{"steps":[{"type":"shipment.cancel","body":{"order_id":"ord-plan-1","shipment_id":"shp-plan-1"}},
 {"type":"inventory.restock","body":{"order_id":"ord-plan-1","sku":"SKU-PLAN","qty":3}},
 {"type":"payment.refund","body":{"order_id":"ord-plan-1","payment_id":"pay-plan-1-x","amount_cents":4200}}],
 "deadline":"5m"}'
cw publish -c "$pool_ini" --type cw.saga.plan --saga-id saga-ord-plan-1 \
    --message-id "plan-ord-plan-1-$(date +%s)" --data "$plan" >/dev/null || status=1
saga_state() {
    cw saga show -c "$pool_ini" --json saga-ord-plan-1 2>/dev/null |
        sed -n 's/^{"saga_id":"[^"]*","plan_id":"[^"]*","state":"\([a-z]*\)".*/\1/p'
}
for _ in $(seq 1 100); do
    [ "$(saga_state)" = stuck ] && break
    sleep 0.2
done
cw saga show -c "$pool_ini" saga-ord-plan-1 || status=1
say "fixing the refund's payment ID and replaying it (compworker dlq replay --edit): the plan goes on"
for id in $(cw dlq list -c "$pool_ini" --grep "pay-plan-1-x" --json |
            sed -n 's/^{"message_id":"\([^"]*\)".*/\1/p'); do
    EDITOR='sed -i -e s/-x"/"/' cw dlq replay -c "$pool_ini" --edit "$id" >/dev/null || status=1
done
for _ in $(seq 1 100); do
    [ "$(saga_state)" = done ] && break
    sleep 0.2
done
cw saga show -c "$pool_ini" saga-ord-plan-1 | head -1
order=$(sqlite3 "$ledger" "SELECT group_concat(kind, ' -> ') FROM (SELECT kind FROM effects
                           WHERE order_id = 'ord-plan-1' ORDER BY id)")
echo "ord-plan-1's compensations, in the order they were applied: $order"
if [ "$(saga_state)" != done ] || [ "$order" != "cancel -> restock -> refund" ]; then
    echo "demo: the saga plan did not finish in order" >&2
    status=1
fi

if [ -n "$relay_pid" ]; then
    say "the outbox relay (from var/demo/relay.log and the table)"
    sent=$(psql -X -q -A -t -d "$pg_url" -c "SELECT count(*) FROM cw_outbox WHERE sent_at IS NOT NULL")
    pending=$(psql -X -q -A -t -d "$pg_url" -c "SELECT count(*) FROM cw_outbox WHERE sent_at IS NULL")
    echo "  $sent rows published and marked sent, $pending pending or failed"
    [ "$pending" = 0 ] || status=1
    kill -TERM "$relay_pid" && wait "$relay_pid" || { echo "demo: the relay exited with an error" >&2; status=1; }
    relay_pid=""
fi

say "stopping the pool (SIGTERM: in-flight tasks settle, then exit 0)"
for i in "${!hosts[@]}"; do
    pid=${pool_pids[$i]}
    worker_status=0
    if kill -TERM "$pid" 2>/dev/null; then
        wait "$pid" || worker_status=$?
    else
        wait "$pid" || worker_status=$?
        echo "demo: the pool had already exited (status $worker_status); the end of its log:" >&2
        tail -5 "${hosts[$i]}/worker.log" >&2
        [ "$worker_status" -ne 0 ] || worker_status=1
    fi
    if [ "$worker_status" -ne 0 ]; then
        echo "demo: the pool exited with status $worker_status" >&2
        [ "$status" -ne 0 ] || status=1
    fi
done
pool_pids=()
if [ $fleet = 1 ]; then
    say "what each host did (from its workers' last lines)"
    for h in "${hosts[@]}"; do
        sed -n 's/.*msg="stopped: \([0-9]*\) received, \([0-9]*\) applied, \([0-9]*\) duplicates.*/\1 \2 \3/p' \
            "$h/worker.log" | awk -v host="$(basename "$h")" \
            '{r+=$1; a+=$2; d+=$3} END {printf "  %s: %d deliveries, %d applied, %d duplicates skipped\n", host, r, a, d}'
    done
fi

cat <<EOF

Logs and state are in var/demo:
  worker log     $(printf '%s ' "${hosts[@]/%//worker.log}" | sed "s#$root/##g")
  ledger         $ledger_rel   (sqlite3 $ledger_rel 'SELECT * FROM effects')
  expectations   $ledger_rel.expected.json
EOF
if [ $fleet = 1 ]; then
    echo "  store          the PostgreSQL server's schema demo_orders"
else
    echo "  store          var/demo/orders.db (the ledger's tables are in it too)"
fi
[ -z "$broker_dir" ] || echo "  broker log     var/demo-broker/log"
exit "$status"
