#!/usr/bin/env bash
# Installs the Debian packages compworker needs to build, test and run its demo.
# Installs only what is missing; needs root (or sudo) when something is.
set -euo pipefail

pkgs=(build-essential cmake pkg-config
      librabbitmq-dev libjson-c-dev uuid-dev libsqlite3-dev libpq-dev libinih-dev libcmocka-dev
      libcurl4-openssl-dev libmicrohttpd-dev libssl-dev libsystemd-dev openssl
      rabbitmq-server postgresql-15 sqlite3 bc valgrind clang clang-format libclang-rt-14-dev)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# The package's own service must not start: compworker's scripts start a
# throwaway node of their own.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
