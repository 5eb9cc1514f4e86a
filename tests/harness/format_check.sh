#!/bin/sh
# Checks that every C source and header of the project is laid out as
# .clang-format says (clang-format --dry-run -Werror). Skips, passing, when
# clang-format is not installed or is not of the major version the layout was
# fixed with (14, Debian 12's): another version formats some lines otherwise.
#
#   format_check.sh SOURCE_DIR
set -u
src=${1:?usage: format_check.sh SOURCE_DIR}
cf=${CLANG_FORMAT:-clang-format}
if ! command -v "$cf" >/dev/null 2>&1; then
    echo "format_check: $cf is not installed: skipped"
    exit 0
fi
major=$("$cf" --version | sed -n 's/.*version \([0-9][0-9]*\)\..*/\1/p')
if [ "$major" != 14 ]; then
    echo "format_check: $cf is version ${major:-unknown}, not 14: skipped"
    exit 0
fi
cd "$src" || exit 1
# Many files a process, a process a core: clang-format names each file that
# differs in its errors ("FILE:LINE:COL: error: code should be
# clang-formatted").
log=$(mktemp) || exit 1
trap 'rm -f "$log"' EXIT INT TERM
{ git ls-files '*.c' '*.h' 2>/dev/null || find framework retry dlq workers include tests bench examples -name '*.[ch]'; } |
    xargs -P "$(nproc 2>/dev/null || echo 2)" -n 25 "$cf" --dry-run -Werror >/dev/null 2>"$log"
status=$?
bad=$(sed -n 's/^\([^:]*\):[0-9]*:[0-9]*: error: .*/\1/p' "$log" | sort -u)
if [ -n "$bad" ]; then
    for f in $bad; do
        echo "format_check: $f is not formatted: run $cf -i $f" >&2
    done
    exit 1
fi
if [ $status -ne 0 ]; then
    echo "format_check: $cf failed:" >&2
    head -20 "$log" >&2
    exit 1
fi
echo "format_check: every file is formatted"
exit 0
