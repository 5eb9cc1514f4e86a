#!/usr/bin/env bash
# Installs the build into a scratch prefix, builds examples/minimal/hello.c
# against it with pkg-config alone (and the order-saga example with
# find_package), then runs the installed compworker with that plugin on the
# test broker and checks the task was applied.
#   out_of_tree.sh SOURCE_DIR BUILD_DIR     (CW_TEST_AMQP_URL names the broker)
set -euo pipefail
src=$1 build=$2
url=${CW_TEST_AMQP_URL:?CW_TEST_AMQP_URL is not set}
work=$(mktemp -d /tmp/cw-oot.XXXXXX)
worker=""
cleanup() {
    [ -n "$worker" ] && kill -TERM "$worker" 2>/dev/null && wait "$worker" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

cmake --install "$build" --prefix "$work/prefix" >/dev/null
libdir=$(ls -d "$work"/prefix/lib*/pkgconfig | head -1)
export PKG_CONFIG_PATH=$libdir
export LD_LIBRARY_PATH=$(dirname "$libdir")

# pkg-config alone, as a plugin author outside the tree would.
cc -std=c11 -Wall -Wextra -Werror -shared -fPIC -o "$work/hello.so" "$src/examples/minimal/hello.c" \
    $(pkg-config --cflags --libs compworker)
# find_package, as a CMake project would.
cmake -S "$src/examples/order-saga" -B "$work/saga" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/saga" -j2 >/dev/null
ls "$work"/saga/*.so >/dev/null

pool="oot-$$"
cat > "$work/pool.ini" <<INI
[broker]
url = $url
[pool]
name = $pool
queue_type = classic
plugins = hello.so
[store]
path = store.db
[plugin hello]
out = $work/hello.out
INI
exe="$work/prefix/bin/compworker"
"$exe" run -c "$work/pool.ini" 2> "$work/worker.log" &
worker=$!
for _ in $(seq 1 100); do grep -q "consuming from" "$work/worker.log" && break; sleep 0.1; done
grep -q "consuming from" "$work/worker.log" || { cat "$work/worker.log" >&2; exit 1; }
id=$("$exe" publish -c "$work/pool.ini" --type greeting.undo --saga-id saga-oot --data '{"name":"world"}')
for _ in $(seq 1 100); do [ -s "$work/hello.out" ] && break; sleep 0.1; done
kill -TERM "$worker"; wait "$worker"; worker=""
if ! grep -q "^$id saga-oot world$" "$work/hello.out"; then
    echo "out_of_tree: the task was not applied by the out-of-tree plugin" >&2
    cat "$work/worker.log" >&2
    exit 1
fi
echo "out_of_tree: plugin built with pkg-config loaded and applied task $id"
