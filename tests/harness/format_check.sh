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
failed=0
for f in $(git ls-files '*.c' '*.h' 2>/dev/null || find framework retry dlq workers include tests bench examples -name '*.[ch]'); do
    if ! "$cf" --dry-run -Werror "$f" >/dev/null 2>&1; then
        echo "format_check: $f is not formatted: run $cf -i $f" >&2
        failed=1
    fi
done
[ $failed -eq 0 ] && echo "format_check: every file is formatted"
exit $failed
