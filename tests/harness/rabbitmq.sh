#!/usr/bin/env bash
# Start or stop a throwaway RabbitMQ node on its own port and data directory.
#
#   tests/harness/rabbitmq.sh start DIR [PORT]   # prints nothing; returns when the node accepts AMQP
#   tests/harness/rabbitmq.sh stop DIR
#   tests/harness/rabbitmq.sh restart-app DIR    # stop_app/start_app: drops every connection
#
# The node is named cw-test-PORT@localhost, keeps everything under DIR and listens on
# 127.0.0.1:PORT (default 5673) only, with its distribution port at PORT+20000.
set -euo pipefail

cmd=${1:?usage: rabbitmq.sh start|stop|restart-app DIR [PORT]}
dir=${2:?usage: rabbitmq.sh start|stop|restart-app DIR [PORT]}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

bin=/usr/lib/rabbitmq/bin
[ -x "$bin/rabbitmq-server" ] || { echo "rabbitmq.sh: rabbitmq-server is not installed (apt-get install rabbitmq-server)" >&2; exit 1; }

if [ "$cmd" = start ]; then
    port=${3:-5673}
    echo "$port" > "$dir/port"
else
    port=$(cat "$dir/port" 2>/dev/null || echo 5673)
fi

export HOME="$dir/home"
export RABBITMQ_NODENAME="cw-test-$port@localhost"
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT="$port"
export RABBITMQ_DIST_PORT=$((port + 20000))
export RABBITMQ_MNESIA_BASE="$dir/mnesia"
export RABBITMQ_LOG_BASE="$dir/log"
export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
export RABBITMQ_CONFIG_FILE="$dir/rabbitmq"
export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
export ERL_EPMD_ADDRESS=127.0.0.1

ctl() { "$bin/rabbitmqctl" -n "$RABBITMQ_NODENAME" "$@"; }

case "$cmd" in
start)
    mkdir -p "$HOME" "$RABBITMQ_LOG_BASE" "$RABBITMQ_MNESIA_BASE"
    [ -f "$HOME/.erlang.cookie" ] || { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z' > "$HOME/.erlang.cookie"; chmod 400 "$HOME/.erlang.cookie"; }
    echo '[].' > "$RABBITMQ_ENABLED_PLUGINS_FILE"
    echo '[].' > "$RABBITMQ_ADVANCED_CONFIG_FILE"
    cat > "$RABBITMQ_CONFIG_FILE.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$port
loopback_users = none
log.console = false
log.file.level = warning
disk_free_limit.absolute = 50MB
vm_memory_high_watermark.relative = 0.6
CONF
    "$bin/rabbitmq-server" > "$dir/server.out" 2>&1 &
    echo $! > "$dir/server.shellpid"
    for _ in $(seq 1 120); do
        if ctl await_startup --timeout 1 >/dev/null 2>&1; then exit 0; fi
        if ! kill -0 "$(cat "$dir/server.shellpid")" 2>/dev/null; then
            echo "rabbitmq.sh: the node exited during start; see $dir/server.out and $dir/log" >&2
            tail -20 "$dir/server.out" >&2
            exit 1
        fi
        sleep 1
    done
    echo "rabbitmq.sh: the node did not start within 120 s; see $dir/log" >&2
    exit 1
    ;;
stop)
    ctl stop >/dev/null 2>&1 || true
    if [ -f "$dir/server.shellpid" ]; then
        pid=$(cat "$dir/server.shellpid")
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    ;;
restart-app)
    ctl stop_app >/dev/null
    ctl start_app >/dev/null
    ctl await_startup --timeout 60 >/dev/null
    ;;
*)
    echo "rabbitmq.sh: unknown command '$cmd' (start, stop, restart-app)" >&2
    exit 2
    ;;
esac
