#!/usr/bin/env bash
# Build a minimal Debian bookworm base image with Python 3.11, without any container registry.
#
#   docker/make_base_image.sh [--force] [TAG]        (TAG defaults to kd-base:local)
#
# debootstrap (variant minbase) pulls the packages from the Debian mirror this machine's apt
# already uses (read from /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; override
# with DEBIAN_MIRROR=URI), and `docker import` turns the root file system into an image.
# Bookworm ships Python 3.11, so wheels downloaded for cp311 on the host install in it.
# Does nothing when TAG already exists, unless --force. Needs root, debootstrap and a running
# engine (docker/install_engine.sh provides both).
set -euo pipefail

SUITE=bookworm
FORCE=0
TAG=kd-base:local
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        -*) echo "make_base_image.sh: unknown option $arg" >&2; exit 2 ;;
        *) TAG=$arg ;;
    esac
done

die() { echo "make_base_image.sh: $*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker not found. Fix: docker/install_engine.sh"
docker info >/dev/null 2>&1 || die "the Docker engine is not running. Fix: docker/install_engine.sh"
command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found. Fix: docker/install_engine.sh (or apt-get install -y debootstrap)"
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root: run it as root (sudo $0)"

if [ "$FORCE" -eq 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "base image $TAG exists (use --force to rebuild)"
    exit 0
fi

# The Debian mirror apt uses for $SUITE: deb822 .sources first, then the one-line format.
find_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$SUITE" '
            function flush() { if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uri != "") { print uri; found = 1; exit } types = ""; suites = ""; uri = "" }
            /^[ \t]*$/ { flush(); next }
            /^Types:/  { sub(/^Types:[ \t]*/, ""); types = $0 }
            /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
            /^URIs:/   { sub(/^URIs:[ \t]*/, ""); split($0, u, /[ \t]+/); uri = u[1] }
            END { if (!found) flush() }
        ' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [options] URI SUITE COMPONENTS...
        sed -E 's/\[[^]]*\]//' "$f" | awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2 }'
    done
}

MIRROR=${DEBIAN_MIRROR:-$(find_mirror | head -n 1)}
[ -n "$MIRROR" ] || die "no Debian mirror for '$SUITE' in /etc/apt/sources.list(.d). Fix: DEBIAN_MIRROR=http://YOUR-MIRROR/debian $0"

ROOTFS=$(mktemp -d /tmp/kd-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "debootstrap $SUITE from $MIRROR into $ROOTFS ..."
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
    || { tail -20 "$ROOTFS.log" >&2; die "debootstrap failed (full log: $ROOTFS.log)"; }
rm -f "$ROOTFS.log"
# Shrink: downloaded .debs and package lists are not needed in the image.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/*.log

tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $SUITE + python3" - "$TAG" >/dev/null

version=$(docker run --rm --network none "$TAG" python3 --version)
case "$version" in
    "Python 3.11."*) ;;
    *) die "$TAG has $version, expected Python 3.11 (wheels are downloaded for cp311)" ;;
esac
echo "built $TAG ($version, $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
