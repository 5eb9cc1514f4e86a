#!/bin/sh
# Checks that includes run one way, down the layers:
#
#   workers/  (the executable, the pool, the worker process and its loop)
#     -> dlq/, retry/, saga/  (dead-lettering, alerts, replay; backoff, delay
#                              topology; saga compensation plans)
#       -> framework/  (the primitives)
#         -> include/compworker/  (the public headers)
#
# Nothing in framework/ may include retry/, dlq/, saga/ or workers/; nothing
# in retry/, dlq/ or saga/ may include workers/; the public headers include only each
# other. Exits 0 when the tree keeps to it, 1 naming each include that
# climbs.
#
#   layer_check.sh SOURCE_DIR
set -u

src=${1:?usage: layer_check.sh SOURCE_DIR}
[ -d "$src/framework" ] || { echo "layer_check: no $src/framework" >&2; exit 1; }

failed=0
# check DIR PATTERN: every #include "..." in DIR's sources matching PATTERN climbs.
check() {
    dir=$1
    pattern=$2
    for f in "$src/$dir"/*.c "$src/$dir"/*.h "$src/$dir"/*/*.c "$src/$dir"/*/*.h; do
        [ -f "$f" ] || continue
        grep -nE "^[[:space:]]*#[[:space:]]*include[[:space:]]*\"($pattern)/" "$f" |
        while IFS= read -r hit; do
            echo "layer_check: ${f#"$src"/}:${hit%%:*}: $dir/ includes a higher layer: ${hit#*:}"
        done
    done
}

out=$( {
    check framework 'retry|dlq|saga|workers'
    check retry 'workers'
    check dlq 'workers'
    check saga 'workers'
    check include/compworker 'framework|retry|dlq|saga|workers'
} )
if [ -n "$out" ]; then
    printf '%s\n' "$out" >&2
    failed=1
fi
[ $failed -eq 0 ] && echo "layer_check: includes run one way, down"
exit $failed
