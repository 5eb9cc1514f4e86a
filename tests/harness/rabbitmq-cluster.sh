#!/usr/bin/env bash
# A throwaway three-node RabbitMQ cluster on this machine, for failover tests.
#
#   tests/harness/rabbitmq-cluster.sh start DIR [PORT]   # nodes on PORT, PORT+1, PORT+2 (default 5676)
#   tests/harness/rabbitmq-cluster.sh stop DIR           # stops every node
#   tests/harness/rabbitmq-cluster.sh stop-node DIR N    # stops node N (1..3), as a failure would
#   tests/harness/rabbitmq-cluster.sh start-node DIR N   # starts node N again (it rejoins)
#
# Each node is a tests/harness/rabbitmq.sh node with its own data directory
# (DIR/node1..3) and port, all with one Erlang cookie; nodes 2 and 3 join node 1
# with rabbitmqctl join_cluster. `start` begins from an empty DIR every time,
# so a run never inherits the membership of an earlier one. Quorum queues
# declared on it get a member on every node, so the cluster keeps serving them
# with any one node down.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
node_sh=$here/rabbitmq.sh
bin=/usr/lib/rabbitmq/bin
cmd=${1:?usage: rabbitmq-cluster.sh start|stop|stop-node|start-node DIR [PORT|N]}
dir=${2:?usage: rabbitmq-cluster.sh start|stop|stop-node|start-node DIR [PORT|N]}

ctl_node() { # ctl_node N ARGS...: rabbitmqctl against node N, with its cookie
    local n=$1 port
    shift
    port=$(cat "$dir/node$n/port")
    HOME="$dir/node$n/home" ERL_EPMD_ADDRESS=127.0.0.1 \
        "$bin/rabbitmqctl" -n "cw-test-$port@localhost" "$@"
}

case "$cmd" in
start)
    base=${3:-5676}
    "$0" stop "$dir" >/dev/null 2>&1 || true
    rm -rf "$dir"
    mkdir -p "$dir"
    head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z' > "$dir/erlang.cookie"
    echo "$base" > "$dir/port"
    pids=()
    for n in 1 2 3; do
        mkdir -p "$dir/node$n"
        cp "$dir/erlang.cookie" "$dir/node$n/erlang.cookie"
        "$node_sh" start "$dir/node$n" $((base + n - 1)) > "$dir/node$n.start.out" 2>&1 &
        pids+=($!)
    done
    for n in 1 2 3; do
        if ! wait "${pids[$((n - 1))]}"; then
            echo "rabbitmq-cluster.sh: node $n did not start; see $dir/node$n.start.out" >&2
            cat "$dir/node$n.start.out" >&2
            exit 1
        fi
    done
    first="cw-test-$base@localhost"
    for n in 2 3; do
        { ctl_node "$n" stop_app && ctl_node "$n" join_cluster "$first" && ctl_node "$n" start_app &&
              ctl_node "$n" await_startup --timeout 60; } > "$dir/node$n.join.out" 2>&1 || {
            echo "rabbitmq-cluster.sh: node $n could not join $first; see $dir/node$n.join.out" >&2
            cat "$dir/node$n.join.out" >&2
            exit 1
        }
    done
    running=$(ctl_node 1 eval 'length(rabbit_nodes:all_running()).' 2>/dev/null | tr -dc '0-9')
    if [ "$running" != 3 ]; then
        echo "rabbitmq-cluster.sh: node 1 sees ${running:-no} running nodes, not 3" >&2
        exit 1
    fi
    ;;
stop)
    for n in 1 2 3; do
        [ -d "$dir/node$n" ] && "$node_sh" stop "$dir/node$n" &
    done
    wait
    ;;
stop-node)
    n=${3:?usage: rabbitmq-cluster.sh stop-node DIR N}
    "$node_sh" stop "$dir/node$n"
    ;;
start-node)
    n=${3:?usage: rabbitmq-cluster.sh start-node DIR N}
    base=$(cat "$dir/port")
    "$node_sh" start "$dir/node$n" $((base + n - 1))
    ;;
*)
    echo "rabbitmq-cluster.sh: unknown command '$cmd' (start, stop, stop-node, start-node)" >&2
    exit 2
    ;;
esac
