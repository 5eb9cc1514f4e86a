#!/bin/sh
# Checks that every public header compiles alone, first in its translation
# unit, as C11 with -pedantic -Werror (and as C++ when a C++ compiler exists,
# since the headers promise extern "C").
#
#   header_check.sh SOURCE_DIR
#
# Exits 0 when all compile, 1 naming each header that does not.
set -u

src=${1:?usage: header_check.sh SOURCE_DIR}
inc="$src/include"
cc=${CC:-cc}
cxx=${CXX:-c++}
jsonc=$(pkg-config --cflags json-c 2>/dev/null || true)

[ -d "$inc/compworker" ] || { echo "header_check: no $inc/compworker" >&2; exit 1; }

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM

failed=0
checked=0
have_cxx=0
command -v "$cxx" >/dev/null 2>&1 && have_cxx=1

for h in "$inc"/compworker/*.h; do
    name=compworker/$(basename "$h")
    # The typedef keeps a header of macros only (export.h) from leaving an
    # empty translation unit, which -pedantic refuses.
    printf '#include <%s>\ntypedef int cw_header_check_unit;\n' "$name" >"$tmp/unit.c"
    # shellcheck disable=SC2086
    if ! "$cc" -std=c11 -pedantic -Werror -Wall -Wextra -fsyntax-only -I"$inc" $jsonc \
            -x c "$tmp/unit.c" 2>"$tmp/err"; then
        echo "FAIL (C11): $name does not compile alone:" >&2
        cat "$tmp/err" >&2
        failed=1
    fi
    if [ "$have_cxx" = 1 ]; then
        # shellcheck disable=SC2086
        if ! "$cxx" -std=c++11 -pedantic -Werror -Wall -Wextra -fsyntax-only -I"$inc" $jsonc \
                -x c++ "$tmp/unit.c" 2>"$tmp/err"; then
            echo "FAIL (C++11): $name does not compile alone:" >&2
            cat "$tmp/err" >&2
            failed=1
        fi
    fi
    checked=$((checked + 1))
done

if [ "$checked" = 0 ]; then
    echo "header_check: no headers in $inc/compworker" >&2
    exit 1
fi
[ "$failed" = 0 ] && echo "header_check: $checked public headers compile alone"
exit "$failed"
