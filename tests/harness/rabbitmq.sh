#!/usr/bin/env bash
# Start or stop a throwaway RabbitMQ node on its own port and data directory.
#
#   tests/harness/rabbitmq.sh start DIR [PORT [TLS_PORT]]   # returns when the node accepts AMQP
#   tests/harness/rabbitmq.sh stop DIR
#   tests/harness/rabbitmq.sh restart-app DIR    # stop_app/start_app: drops every connection
#   tests/harness/rabbitmq.sh stop-app DIR       # stop_app: connections dropped, ports closed
#   tests/harness/rabbitmq.sh start-app DIR      # start_app, returns when the node is back
#
# The node is named cw-test-PORT@localhost, keeps everything under DIR and listens on
# 127.0.0.1:PORT (default 5673) only, with its distribution port at PORT+20000.
#
# With TLS_PORT it also listens for AMQP over TLS on 127.0.0.1:TLS_PORT, with
# certificates made by openssl under DIR/tls: ca.pem (the CA that signed
# them), server.pem/server.key (for "localhost" only), client.pem/
# client.key (a client certificate, verified when one is sent), and
# other-ca.pem (a CA that signed nothing here, to see verification fail).
# An existing DIR/erlang.cookie is used as the node's cookie (a cluster
# shares one).
set -euo pipefail

cmd=${1:?usage: rabbitmq.sh start|stop|restart-app DIR [PORT]}
dir=${2:?usage: rabbitmq.sh start|stop|restart-app DIR [PORT]}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

bin=/usr/lib/rabbitmq/bin
[ -x "$bin/rabbitmq-server" ] || { echo "rabbitmq.sh: rabbitmq-server is not installed (apt-get install rabbitmq-server)" >&2; exit 1; }

if [ "$cmd" = start ]; then
    port=${3:-5673}
    tls_port=${4:-}
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
    if [ -f "$dir/erlang.cookie" ] && [ ! -f "$HOME/.erlang.cookie" ]; then
        cp "$dir/erlang.cookie" "$HOME/.erlang.cookie"; chmod 400 "$HOME/.erlang.cookie"
    fi
    [ -f "$HOME/.erlang.cookie" ] || { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z' > "$HOME/.erlang.cookie"; chmod 400 "$HOME/.erlang.cookie"; }
    echo '[].' > "$RABBITMQ_ENABLED_PLUGINS_FILE"
    # A quorum queue's at-least-once dead-letter worker that finds its
    # dead-letter exchange missing holds the message and tries again only
    # after dead_letter_worker_publisher_confirm_timeout (180 s by default).
    # After a restart a level of the delay topology can start before the
    # exchange below it is recovered: a retry expiring then would wait 3
    # minutes (the chaos run restarts the node under load). 5 s here.
    echo '[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}].' \
        > "$RABBITMQ_ADVANCED_CONFIG_FILE"
    cat > "$RABBITMQ_CONFIG_FILE.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$port
loopback_users = none
log.console = false
log.file.level = warning
disk_free_limit.absolute = 50MB
vm_memory_high_watermark.relative = 0.6
CONF
    if [ -n "$tls_port" ]; then
        command -v openssl >/dev/null || { echo "rabbitmq.sh: openssl is not installed" >&2; exit 1; }
        tls="$dir/tls"
        if [ ! -f "$tls/client.pem" ]; then
            mkdir -p "$tls"
            (
                cd "$tls"
                ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
                # shellcheck disable=SC2086
                openssl req -x509 $ec -keyout ca.key -out ca.pem -days 30 -subj "/CN=compworker test CA"
                # shellcheck disable=SC2086
                openssl req -x509 $ec -keyout other-ca.key -out other-ca.pem -days 30 -subj "/CN=another CA"
                for who in server client; do
                    # shellcheck disable=SC2086
                    openssl req $ec -keyout "$who.key" -out "$who.csr" -subj "/CN=$who"
                done
                printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
                printf 'extendedKeyUsage=clientAuth\n' > client.ext
                for who in server client; do
                    openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
                        -out "$who.pem" -days 30 -extfile "$who.ext"
                done
                chmod 644 ./*.key
            ) >"$dir/tls.out" 2>&1 || { echo "rabbitmq.sh: making certificates failed; see $dir/tls.out" >&2; exit 1; }
        fi
        cat >> "$RABBITMQ_CONFIG_FILE.conf" <<CONF
listeners.ssl.1 = 127.0.0.1:$tls_port
ssl_options.cacertfile = $tls/ca.pem
ssl_options.certfile = $tls/server.pem
ssl_options.keyfile = $tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
CONF
    fi
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
stop-app)
    ctl stop_app >/dev/null
    ;;
start-app)
    ctl start_app >/dev/null
    ctl await_startup --timeout 60 >/dev/null
    ;;
*)
    echo "rabbitmq.sh: unknown command '$cmd' (start, stop, restart-app, stop-app, start-app)" >&2
    exit 2
    ;;
esac
