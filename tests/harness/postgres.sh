#!/usr/bin/env bash
# Start or stop a throwaway PostgreSQL server on its own port and data directory.
#
#   tests/harness/postgres.sh start DIR [PORT]   # returns when the server accepts connections
#   tests/harness/postgres.sh stop DIR
#   tests/harness/postgres.sh restart DIR        # a fast shutdown and a start: drops every session
#   tests/harness/postgres.sh stop-server DIR    # stops it (connections refused until start-server)
#   tests/harness/postgres.sh start-server DIR
#   tests/harness/postgres.sh url DIR            # prints the test role's connection URI
#
# The server (Debian's postgresql-15) keeps everything under DIR/data, listens
# on 127.0.0.1:PORT (default 5690) only, and has its Unix socket in DIR/run
# (see below for when DIR cannot be used). It
# has a role `cw` with a password and a database `cw_test` it owns; TCP
# connections must give the password (scram-sha-256), so that tests see
# credentials travel and stay out of logs. The server refuses to run as root:
# as root the script runs it as the `postgres` user (DIR/data and DIR/run are
# given to that user), otherwise as the calling user.
set -euo pipefail

cmd=${1:?usage: postgres.sh start|stop|restart|stop-server|start-server|url DIR [PORT]}
dir=${2:?usage: postgres.sh start|stop|restart|stop-server|start-server|url DIR [PORT]}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

bin=
for v in 15 16 17 14; do
    if [ -x "/usr/lib/postgresql/$v/bin/postgres" ]; then bin=/usr/lib/postgresql/$v/bin; break; fi
done
[ -n "$bin" ] || { echo "postgres.sh: PostgreSQL is not installed (apt-get install postgresql-15)" >&2; exit 1; }

if [ "$cmd" = start ]; then
    port=${3:-5690}
    echo "$port" > "$dir/port"
else
    port=$(cat "$dir/port" 2>/dev/null || echo 5690)
fi
password=cw-test-secret
# The server's files must be reachable by the user it runs as: as root, when
# DIR lies below a directory the postgres user cannot enter (/root/...), they
# go to a directory of their own under /tmp, named after DIR.
home="$dir"
if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$dir" 2>/dev/null; then
    home="${TMPDIR:-/tmp}/cw-pg-$(printf '%s' "$dir" | md5sum | cut -c1-12)"
    mkdir -p "$home"
    chown postgres "$home"
fi
data="$home/data"
run="$home/run"

# as_server CMD...: runs CMD as the user the server runs as.
as_server() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pgctl() { as_server "$bin/pg_ctl" -D "$data" -l "$home/server.log" -w -t 60 "$@"; }

admin_sql() {
    as_server "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$run" -p "$port" -d postgres -c "$1"
}

case "$cmd" in
start)
    if [ ! -f "$data/PG_VERSION" ]; then
        rm -rf "$data"
        mkdir -p "$data" "$run"
        [ "$(id -u)" -eq 0 ] && chown postgres "$home" "$data" "$run"
        chmod 700 "$data"
        as_server "$bin/initdb" -D "$data" -U postgres -A trust --no-sync -E UTF8 --locale=C.UTF-8 \
            > "$dir/initdb.log" 2>&1 ||
            { echo "postgres.sh: initdb failed; see $dir/initdb.log" >&2; tail -20 "$dir/initdb.log" >&2; exit 1; }
        cat >> "$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$run'
max_connections = 200
shared_buffers = 64MB
fsync = on
synchronous_commit = on
log_min_messages = warning
log_connections = off
CONF
        cat > "$data/pg_hba.conf" <<HBA
local all all trust
host all all 127.0.0.1/32 scram-sha-256
HBA
        created=1
    fi
    [ "$(id -u)" -eq 0 ] && chown postgres "$home"
    touch "$home/server.log"
    [ "$(id -u)" -eq 0 ] && chown postgres "$home/server.log"
    pgctl start >/dev/null ||
        { echo "postgres.sh: the server did not start; see $home/server.log" >&2; tail -20 "$home/server.log" >&2; exit 1; }
    if [ "${created:-0}" = 1 ]; then
        admin_sql "CREATE ROLE cw LOGIN PASSWORD '$password'"
        admin_sql "CREATE DATABASE cw_test OWNER cw"
    fi
    ;;
stop)
    [ -f "$data/postmaster.pid" ] && pgctl -m fast stop >/dev/null 2>&1 || true
    ;;
restart)
    pgctl -m fast restart >/dev/null
    ;;
stop-server)
    pgctl -m fast stop >/dev/null
    ;;
start-server)
    pgctl start >/dev/null
    ;;
url)
    echo "postgresql://cw:$password@127.0.0.1:$port/cw_test"
    ;;
*)
    echo "postgres.sh: unknown command '$cmd' (start, stop, restart, stop-server, start-server, url)" >&2
    exit 2
    ;;
esac
