#!/bin/sh
# Builds the image without Docker Hub or download.pytorch.org: the base image comes from
# Debian's own packages (debootstrap), the CPU torch wheel from a local file served over
# HTTP, everything else from PyPI and deb.debian.org (or the plant's mirrors of them).
#   TORCH_WHEEL=/path/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl \
#       docker/build-offline.sh [extra build args...]
# Settings (environment): ENGINE (podman), IMAGE (plant-twin:latest, the name compose uses),
# PYTHON_IMAGE (localhost/python:3.11-debian), DEBIAN_MIRROR, PYPI_INDEX_URL,
# EXTRA_CA_DIR (CA certificates a TLS-inspecting proxy needs inside the build), WHEEL_PORT.
set -eu
ENGINE="${ENGINE:-podman}"
IMAGE="${IMAGE:-plant-twin:latest}"
PYTHON_IMAGE="${PYTHON_IMAGE:-localhost/python:3.11-debian}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PYPI_INDEX_URL="${PYPI_INDEX_URL:-https://pypi.org/simple}"
EXTRA_CA_DIR="${EXTRA_CA_DIR:-/usr/local/share/ca-certificates}"
WHEEL_PORT="${WHEEL_PORT:-8765}"
: "${TORCH_WHEEL:?set TORCH_WHEEL to the CPU torch 2.13.0 cp311 wheel}"

cd "$(dirname "$0")/.."
work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

if ! "$ENGINE" image inspect "$PYTHON_IMAGE" >/dev/null 2>&1; then
    # Debian bookworm's python3 is 3.11, the version pyproject.toml requires.
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$work/root" "$DEBIAN_MIRROR"
    if ls "$EXTRA_CA_DIR"/*.crt >/dev/null 2>&1; then
        cp "$EXTRA_CA_DIR"/*.crt "$work/root/usr/local/share/ca-certificates/"
        chroot "$work/root" update-ca-certificates
    fi
    rm -rf "$work"/root/var/cache/apt/archives/*.deb "$work"/root/var/lib/apt/lists/*
    tar -C "$work/root" -c . | "$ENGINE" import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' - "$PYTHON_IMAGE"
    rm -rf "$work/root"
fi

# Only the torch wheel on the find-links page, so nothing else is taken from the local disk.
mkdir "$work/wheels"
cp "$TORCH_WHEEL" "$work/wheels/"
python3 -m http.server --bind 127.0.0.1 --directory "$work/wheels" "$WHEEL_PORT" \
    >"$work/http.log" 2>&1 &
server_pid=$!
sleep 1

# The host network lets the build reach the wheel server on 127.0.0.1.
"$ENGINE" build --network host -t "$IMAGE" \
    --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" \
    --build-arg BUILD_EXTRA_PACKAGES=python3-dev \
    --build-arg TORCH_INDEX_URL="$PYPI_INDEX_URL" \
    --build-arg TORCH_FIND_LINKS="http://127.0.0.1:$WHEEL_PORT/" \
    "$@" .
