#!/usr/bin/env bash
# Install and start a Docker engine on a Debian machine (idempotent).
#
#   docker/install_engine.sh
#
# - installs docker.io and debootstrap with apt-get when `dockerd` / `debootstrap` are missing
#   (debootstrap builds the offline base image, see docker/make_base_image.sh);
# - starts `dockerd` in the background (setsid, log in /tmp/dockerd.log) when `docker info`
#   cannot reach a daemon, then waits up to 60 s for it;
# - prints the server version.
# Needs root (or sudo) for the install and to start the daemon. Used by .ci/run and README.
set -euo pipefail

LOG=${DOCKERD_LOG:-/tmp/dockerd.log}
WAIT_S=${DOCKERD_WAIT_S:-60}

die() { echo "install_engine.sh: $*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "run as root (or install sudo): apt-get and dockerd need it"
    SUDO="sudo"
fi

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 \
        || die "apt-get not found: install ${missing[*]} with your package manager"
    echo "installing ${missing[*]} ..."
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v docker >/dev/null 2>&1 || die "the docker client is missing after the install: apt-get install docker.io"

if ! docker info >/dev/null 2>&1; then
    if pgrep -x dockerd >/dev/null 2>&1; then
        echo "dockerd is running but not answering yet; waiting ..."
    else
        echo "starting dockerd (log: $LOG) ..."
        $SUDO setsid dockerd >"$LOG" 2>&1 < /dev/null &
    fi
    for _ in $(seq 1 "$WAIT_S"); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 \
        || die "dockerd did not become ready within ${WAIT_S}s: see $LOG (tail -50 $LOG)"
fi

echo "Docker engine ready: server $(docker version --format '{{.Server.Version}}')"
