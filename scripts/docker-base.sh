#!/usr/bin/env bash
# Print (one line on stdout) the base image the Dockerfiles should build from:
#   - python:3.11-slim-bookworm, the public default, when it is present locally or `docker pull` gets it;
#   - otherwise local/python:3.11-bookworm, a Debian bookworm root file system with python3, python3-venv and
#     ca-certificates built by mmdebstrap from Debian's packages and `docker import`ed (once; an existing
#     tag is reused). Set REBUILD=1 to build it again.
# Progress goes to stderr, so `BASE=$(scripts/docker-base.sh)` works:
#   docker build -f docker/Dockerfile --build-arg BASE_IMAGE="$(scripts/docker-base.sh)" -t alpro-search:cpu .
set -euo pipefail

PUBLIC="${PUBLIC_BASE_IMAGE:-python:3.11-slim-bookworm}"
LOCAL="${LOCAL_BASE_IMAGE:-local/python:3.11-bookworm}"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

log() { echo "docker-base: $*" >&2; }

if docker image inspect "$PUBLIC" >/dev/null 2>&1; then
    log "using $PUBLIC (present locally)"
    echo "$PUBLIC"
    exit 0
fi
if docker pull --quiet "$PUBLIC" >/dev/null 2>&1; then
    log "using $PUBLIC (pulled)"
    echo "$PUBLIC"
    exit 0
fi
log "cannot pull $PUBLIC: using a local Debian $SUITE base, $LOCAL"

if [[ "${REBUILD:-0}" != 1 ]] && docker image inspect "$LOCAL" >/dev/null 2>&1; then
    log "$LOCAL exists: reusing it"
    echo "$LOCAL"
    exit 0
fi

command -v mmdebstrap >/dev/null || { log "mmdebstrap is missing (apt-get install mmdebstrap)"; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
log "building $LOCAL with mmdebstrap (about a minute)"
# The release, its point updates and the security archive, as the official Debian images have.
mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    --aptopt='Acquire::Retries "3"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "$SUITE" "$tmp/base.tar" \
    "deb $MIRROR $SUITE main" \
    "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY_MIRROR $SUITE-security main" >&2
# `docker import` keeps no environment: give the image the PATH and locale the official images have.
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates $SUITE" \
    "$tmp/base.tar" "$LOCAL" >&2
log "built $LOCAL"
echo "$LOCAL"
