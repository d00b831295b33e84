#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on loopback for the metadata tests (Debian's package) and print
# the SQLAlchemy URL to use as ALPRO_TEST_POSTGRES_URL. Usage: eval "$(bash scripts/postgres.sh start)"
#                                                               bash scripts/postgres.sh stop
set -euo pipefail
PORT="${ALPRO_PG_PORT:-55432}"
DIR="${ALPRO_PG_DIR:-/tmp/alpro-pg}"
run_as_pg() { if [[ "$(id -u)" == 0 ]]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

case "${1:-start}" in
start)
    if [[ -z "$(bindir)" ]]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) >&2
    fi
    BIN="$(bindir)"
    if [[ ! -f "$DIR/PG_VERSION" ]]; then
        mkdir -p "$DIR"
        [[ "$(id -u)" == 0 ]] && chown postgres:postgres "$DIR"
        run_as_pg "$BIN/initdb -D $DIR -U postgres --auth=trust >/dev/null"
    fi
    if ! run_as_pg "$BIN/pg_ctl -D $DIR status >/dev/null 2>&1"; then
        run_as_pg "$BIN/pg_ctl -D $DIR -l $DIR/server.log -w -o \"-p $PORT -k /tmp -c listen_addresses=127.0.0.1\" start >/dev/null"
    fi
    psql -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname='alpro'" | grep -q 1 \
        || psql -h 127.0.0.1 -p "$PORT" -U postgres -qc "CREATE ROLE alpro LOGIN PASSWORD 'alpro' CREATEDB" >&2
    psql -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='alpro_test'" | grep -q 1 \
        || psql -h 127.0.0.1 -p "$PORT" -U postgres -qc "CREATE DATABASE alpro_test OWNER alpro" >&2
    echo "export ALPRO_TEST_POSTGRES_URL=postgresql+psycopg://alpro:alpro@127.0.0.1:$PORT/alpro_test"
    ;;
stop)
    BIN="$(bindir)"
    run_as_pg "$BIN/pg_ctl -D $DIR -m fast stop >/dev/null" || true
    ;;
esac
