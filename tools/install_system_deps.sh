#!/usr/bin/env bash
# System packages the tests need: the Docker engine (docker.io) and debootstrap for the
# offline image build, and Chromium for the report screenshot test. Debian/Ubuntu, as root.
# Idempotent; starts dockerd when it is not running. Without root or apt, it says what is
# missing and leaves it to you (the Docker tests then fail in CI and skip loudly elsewhere).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "install_system_deps: missing ${need[*]}; install them (apt-get install ${need[*]}) as root" >&2
        exit 0
    fi
    echo "install_system_deps: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ "$(id -u)" -eq 0 ]; then
    bash "$here/docker/install_engine.sh"
fi
