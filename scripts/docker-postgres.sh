#!/usr/bin/env bash
# Build (or reuse) alpro-postgres:local, a local drop-in for the official postgres image made from Debian
# bookworm's PostgreSQL 15 packages, for machines that cannot pull from a registry (CI). Prints the tag (one
# line on stdout); progress goes to stderr:
#   POSTGRES_IMAGE="$(scripts/docker-postgres.sh)"
# Two steps, each skipped when its result exists and its inputs are unchanged:
#   1. the base, local/postgres-base:15-bookworm: a Debian root file system with postgresql-15 and
#      ca-certificates, made by mmdebstrap from Debian's archive and `docker import`ed; labelled with a hash
#      of its recipe (suite, packages, mirrors);
#   2. the image: docker/postgres/Dockerfile on that base (entrypoint, PATH, volume, port, STOPSIGNAL);
#      labelled with a hash of docker/postgres/* and the base's image id.
# Environment: POSTGRES_IMAGE_TAG (alpro-postgres:local), POSTGRES_BASE_IMAGE (use this base instead of
# building one, e.g. debian:bookworm-slim where a registry is reachable), REBUILD=1 (build both again),
# DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONTEXT="$ROOT/docker/postgres"
TAG="${POSTGRES_IMAGE_TAG:-alpro-postgres:local}"
PG_MAJOR=15
SUITE=bookworm
BASE_TAG="${LOCAL_POSTGRES_BASE_IMAGE:-local/postgres-base:$PG_MAJOR-$SUITE}"
PACKAGES="postgresql-$PG_MAJOR,ca-certificates"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
LABEL_BASE=org.alpro.postgres-base.recipe
LABEL_IMAGE=org.alpro.postgres.inputs

log() { echo "docker-postgres: $*" >&2; }
label_of() { docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }
image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
# Remove an image this script has just replaced under its tag, when nothing else uses it (no other tag, no
# container, no child image: `docker image rm` refuses those, and that is fine).
drop_replaced() {
    local old="$1" tag="$2"
    if [[ -n "$old" && "$old" != "$(image_id "$tag")" ]]; then
        docker image rm "$old" >/dev/null 2>&1 && log "removed the image $tag replaced (${old:7:12})" || true
    fi
}

command -v docker >/dev/null || { log "docker is missing"; exit 1; }
docker info >/dev/null 2>&1 || { log "the Docker engine is not reachable (docker info fails)"; exit 1; }

# 1. The base.
if [[ -n "${POSTGRES_BASE_IMAGE:-}" ]]; then
    BASE="$POSTGRES_BASE_IMAGE"
    log "using the base $BASE (POSTGRES_BASE_IMAGE)"
    docker image inspect "$BASE" >/dev/null 2>&1 || docker pull "$BASE" >&2
else
    BASE="$BASE_TAG"
    recipe="mmdebstrap --variant=minbase --include=$PACKAGES $SUITE | $MIRROR $SUITE $SUITE-updates | $SECURITY_MIRROR $SUITE-security | no main cluster, no docs/man/locales | v1"
    recipe_hash="$(printf '%s' "$recipe" | sha256sum | cut -c1-16)"
    if [[ "${REBUILD:-0}" != 1 && "$(label_of "$BASE" "$LABEL_BASE")" == "$recipe_hash" ]]; then
        log "$BASE is up to date: reusing it"
    else
        old_base_id="$(image_id "$BASE")"
        command -v mmdebstrap >/dev/null || { log "mmdebstrap is missing (apt-get install mmdebstrap)"; exit 1; }
        tmp="$(mktemp -d)"
        trap 'rm -rf "$tmp"' EXIT
        log "building $BASE with mmdebstrap (about a minute)"
        start=$SECONDS
        # createcluster.d: the package makes no cluster of its own (the entrypoint makes the only one, in
        # $PGDATA). Documentation, man pages and translations are left out, as in Debian's slim images.
        mmdebstrap --variant=minbase --include="$PACKAGES" \
            --aptopt='Acquire::Retries "3"' \
            --setup-hook='mkdir -p "$1/etc/postgresql-common/createcluster.d"' \
            --setup-hook='echo "create_main_cluster = false" > "$1/etc/postgresql-common/createcluster.d/docker.conf"' \
            --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/info/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --customize-hook='test -x "$1/usr/lib/postgresql/'"$PG_MAJOR"'/bin/postgres"' \
            --customize-hook='test ! -e "$1/var/lib/postgresql/'"$PG_MAJOR"'/main"' \
            --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/apt/* "$1"/var/log/dpkg.log' \
            "$SUITE" "$tmp/base.tar" \
            "deb $MIRROR $SUITE main" \
            "deb $MIRROR $SUITE-updates main" \
            "deb $SECURITY_MIRROR $SUITE-security main" >&2
        # `docker import` keeps no environment: give the image a PATH and locale.
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change "LABEL $LABEL_BASE=$recipe_hash" \
            --change 'CMD ["/bin/bash"]' \
            --message "mmdebstrap --variant=minbase --include=$PACKAGES $SUITE" \
            "$tmp/base.tar" "$BASE" >&2
        rm -rf "$tmp"
        trap - EXIT
        log "built $BASE in $((SECONDS - start)) s"
    fi
fi

# 2. The image.
base_id="$(docker image inspect --format '{{.Id}}' "$BASE")"
inputs_hash="$(
    cd "$CONTEXT"
    {
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        echo "base $base_id pg $PG_MAJOR"
    } | sha256sum | cut -c1-16
)"
if [[ "${REBUILD:-0}" != 1 && "$(label_of "$TAG" "$LABEL_IMAGE")" == "$inputs_hash" ]]; then
    log "$TAG is up to date: reusing it"
else
    old_id="$(image_id "$TAG")"
    log "building $TAG on $BASE"
    start=$SECONDS
    docker build \
        --build-arg BASE_IMAGE="$BASE" \
        --build-arg PG_MAJOR="$PG_MAJOR" \
        --label "$LABEL_IMAGE=$inputs_hash" \
        -t "$TAG" "$CONTEXT" >&2
    log "built $TAG in $((SECONDS - start)) s"
    drop_replaced "$old_id" "$TAG"
fi
drop_replaced "${old_base_id:-}" "$BASE"
echo "$TAG"
