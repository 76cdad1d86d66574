#!/usr/bin/env bash
# Build the component image (tag read from components/image.py).
#
#   docker/build.sh [--offline] [--gpu] [--tag TAG] [--force] [--no-cache]
#
#   (default)   docker build from python:3.11-slim-bookworm, packages from PyPI.
#   --offline   no registry and no network inside the build: builds kd-base:local with
#               debootstrap (docker/make_base_image.sh) if it is missing, downloads the pinned
#               wheels on the host into .wheelhouse/ (reused on repeat runs, the pip cache makes
#               refreshes fast), then `docker build --network none` from kd-base:local.
#   --gpu       tensorflow[and-cuda] at the pinned TF version; default tag gets a -gpu suffix.
#   --tag TAG   image tag (default: IMAGE from components/image.py).
#   --force     build even when the image exists and its inputs did not change.
#   --no-cache  passed to docker build.
#   --reuse-existing  keep an existing image whose sources (the files below and the variant)
#               are unchanged, whichever way (online or offline) it was built.
#
# The image carries a label kd.inputs-hash (Dockerfile, .dockerignore, requirements, pyproject,
# kd/, components/, local_runner/, pipeline.py, submit.py, parameters.py, variant, base image); when the
# existing image has the same hash the build is skipped. A second label, kd.source-hash, leaves
# out how it was built (offline, base image): --reuse-existing compares that one.
# Environment: PYTHON (interpreter for pip download, default .venv/bin/python or python3),
# BASE_TAG (offline base image, default kd-base:local).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

die() { echo "build.sh: $*" >&2; exit 1; }

OFFLINE=0
VARIANT=cpu
TAG=""
FORCE=0
REUSE=0
NO_CACHE=()
while [ $# -gt 0 ]; do
    case "$1" in
        --offline) OFFLINE=1 ;;
        --gpu) VARIANT=gpu ;;
        --tag) [ $# -ge 2 ] || die "--tag needs a value, e.g. --tag kd-pipeline:dev"; TAG=$2; shift ;;
        --tag=*) TAG=${1#--tag=} ;;
        --force) FORCE=1 ;;
        --reuse-existing) REUSE=1 ;;
        --no-cache) NO_CACHE=(--no-cache) ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) die "unknown argument '$1'. Usage: docker/build.sh [--offline] [--gpu] [--tag TAG] [--force] [--no-cache] [--reuse-existing]" ;;
    esac
    shift
done

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY=$(command -v python3 || true)
fi
[ -n "$PY" ] || die "python3 not found (needed to read components/image.py). Fix: install python3 or set PYTHON=/path/to/python3"

# The image name lives in components/image.py only (run as a file: no package import needed).
read -r IMAGE_NAME IMAGE_TAG < <("$PY" -c "
import runpy
ns = runpy.run_path('components/image.py')
print(ns['IMAGE_NAME'], ns['IMAGE_TAG'])
") || die "cannot read IMAGE_NAME/IMAGE_TAG from components/image.py"
if [ -z "$TAG" ]; then
    TAG="$IMAGE_NAME:$IMAGE_TAG"
    [ "$VARIANT" = gpu ] && TAG="$TAG-gpu"
fi

command -v docker >/dev/null 2>&1 \
    || die "docker not found. Fix: docker/install_engine.sh (Debian) or install Docker Engine"
docker info >/dev/null 2>&1 \
    || die "the Docker engine is not running (or this user cannot reach it). Fix: docker/install_engine.sh"

sources_hash() {  # the files the image is made of, and the variant
    echo "variant=$VARIANT"
    local f
    {
        for f in docker/Dockerfile .dockerignore requirements.txt pyproject.toml README.md \
                 pipeline.py submit.py parameters.py; do
            [ -f "$f" ] && echo "$f"
        done
        find kd components local_runner -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
            ! -name '*.pyo' 2>/dev/null
    } | LC_ALL=C sort | while read -r f; do sha256sum "$f"; done
}
SOURCE_HASH=$(sources_hash | sha256sum | cut -d' ' -f1)
if [ "$REUSE" -eq 1 ] && [ "$FORCE" -eq 0 ]; then
    current=$(docker image inspect -f '{{ index .Config.Labels "kd.source-hash" }}' "$TAG" 2>/dev/null || true)
    if [ "$current" = "$SOURCE_HASH" ]; then
        echo "$TAG is up to date (sources hash ${SOURCE_HASH:0:12}, however it was built); use --force to rebuild"
        exit 0
    fi
fi
BASE_TAG=${BASE_TAG:-kd-base:local}
BUILD_ARGS=(--build-arg "VARIANT=$VARIANT")
if [ "$OFFLINE" -eq 1 ]; then
    "$ROOT/docker/make_base_image.sh" "$BASE_TAG"
    BUILD_ARGS+=(--network none --build-arg "BASE_IMAGE=$BASE_TAG" --build-arg "WHEELHOUSE=.wheelhouse")
fi

inputs_hash() {
    {
        echo "offline=$OFFLINE"
        if [ "$OFFLINE" -eq 1 ]; then
            echo "base=$(docker image inspect -f '{{.Id}}' "$BASE_TAG")"
        fi
        sources_hash
    } | sha256sum | cut -d' ' -f1
}

HASH=$(inputs_hash)
if [ "$FORCE" -eq 0 ]; then
    current=$(docker image inspect -f '{{ index .Config.Labels "kd.inputs-hash" }}' "$TAG" 2>/dev/null || true)
    if [ "$current" = "$HASH" ]; then
        echo "$TAG is up to date (inputs hash ${HASH:0:12}); use --force to rebuild"
        exit 0
    fi
fi

if [ "$OFFLINE" -eq 1 ]; then
    WH="$ROOT/.wheelhouse"
    mkdir -p "$WH"
    "$PY" - "$(docker info -f '{{.Architecture}}')" <<'EOF' || die "pip download needs a host Python 3.11 on the engine's architecture (the image installs cp311 wheels). Fix: PYTHON=/path/to/python3.11 docker/build.sh --offline"
import platform, sys
arch = {"aarch64": "arm64", "x86_64": "amd64"}
engine = sys.argv[1]
ok = sys.version_info[:2] == (3, 11) and arch.get(platform.machine(), platform.machine()) == arch.get(engine, engine)
sys.exit(0 if ok else 1)
EOF
    REQ="$ROOT/requirements.txt"
    if [ "$VARIANT" = gpu ]; then
        # Same swap as the Dockerfile: the pins stay in requirements.txt.
        REQ="$WH/.requirements-gpu.txt"
        sed -E 's/^tensorflow-cpu==/tensorflow[and-cuda]==/' "$ROOT/requirements.txt" > "$REQ"
    fi
    STAMP="$WH/.stamp-$VARIANT"
    want=$(cat "$REQ" | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]; then
        echo "downloading wheels for $VARIANT into .wheelhouse/ ..."
        log=$(mktemp)
        "$PY" -m pip download --disable-pip-version-check -r "$REQ" setuptools wheel -d "$WH" >"$log" 2>&1 \
            || { grep -v 'is ignored: it is neither a file nor a directory' "$log" | tail -30 >&2; rm -f "$log";
                 die "pip download failed (see above). Fix: check that PyPI is reachable from this host"; }
        # sdists (kfp_server_api) become wheels here, so the image build needs no build step.
        for sdist in "$WH"/*.tar.gz "$WH"/*.zip; do
            [ -f "$sdist" ] || continue
            base=$(basename "$sdist"); base=${base%.tar.gz}; base=${base%.zip}
            name=$(echo "${base%-*}" | tr 'A-Z.-' 'a-z__'); version=${base##*-}
            if ! compgen -G "$WH/${name}-${version}-*.whl" >/dev/null; then
                echo "building a wheel for $(basename "$sdist") ..."
                "$PY" -m pip wheel --disable-pip-version-check -q --no-deps -w "$WH" "$sdist" >"$log" 2>&1 \
                    || { tail -30 "$log" >&2; rm -f "$log"; die "pip wheel $(basename "$sdist") failed"; }
            fi
        done
        rm -f "$log"
        echo "$want" > "$STAMP"
    fi
    echo "wheelhouse: $(ls "$WH"/*.whl | wc -l) wheels, $(du -sh "$WH" | cut -f1)"
fi

echo "building $TAG ($VARIANT, $([ "$OFFLINE" -eq 1 ] && echo "offline from $BASE_TAG" || echo "online")) ..."
start=$(date +%s)
docker build -f docker/Dockerfile "${BUILD_ARGS[@]}" "${NO_CACHE[@]}" \
    --label "kd.inputs-hash=$HASH" --label "kd.source-hash=$SOURCE_HASH" -t "$TAG" . \
    || die "docker build failed (see above)"
elapsed=$(( $(date +%s) - start ))
size=$(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.2f GB", $1/1e9}')
echo "built $TAG in ${elapsed}s, $size"
