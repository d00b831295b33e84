#!/usr/bin/env bash
# Entrypoint of alpro-postgres:local, a drop-in for the official postgres image's interface:
#   POSTGRES_PASSWORD  password of the superuser (required unless POSTGRES_HOST_AUTH_METHOD=trust)
#   POSTGRES_USER      superuser made on the first start (default postgres)
#   POSTGRES_DB        database made on the first start (default: $POSTGRES_USER)
#   POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD (default scram-sha-256), PGDATA
#   (each of the first four may be given as VAR_FILE, a path to read it from)
#   /docker-entrypoint-initdb.d/*.sh, *.sql, *.sql.gz run once after the first initialisation.
# On an empty data directory it runs initdb, lets every host in over TCP with $POSTGRES_HOST_AUTH_METHOD,
# listens on all addresses, makes $POSTGRES_DB, then execs the server as the postgres user (PID 1, so
# `docker stop` sends SIGINT, the image's STOPSIGNAL, straight to it: a fast shutdown). A later start with
# the same data directory skips all of that. Logs go to stderr.
# Any other command (`docker run --rm IMAGE psql ...`) runs as given.
set -Eeuo pipefail

log() { echo "entrypoint: $*" >&2; }
die() { log "error: $*"; exit 1; }

# VAR or VAR_FILE (not both), else the default.
file_env() {
    local var="$1" def="${2:-}" fvar="${1}_FILE" val
    if [[ -n "${!var:-}" && -n "${!fvar:-}" ]]; then
        die "both $var and $fvar are set (they are exclusive)"
    fi
    val="$def"
    if [[ -n "${!var:-}" ]]; then
        val="${!var}"
    elif [[ -n "${!fvar:-}" ]]; then
        val="$(<"${!fvar}")"
    fi
    export "$var"="$val"
    unset "$fvar"
}

# `docker run IMAGE -c shared_buffers=256MB` means the server with those options.
if [[ $# -eq 0 || "${1:0:1}" == - ]]; then
    set -- postgres "$@"
fi
if [[ "$1" != postgres ]]; then
    exec "$@"
fi

export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
PG_MAJOR="${PG_MAJOR:-15}"

# As root: make the data and socket directories the postgres user's, then run this script again as
# postgres (setpriv execs, so nothing stays behind as root).
if [[ "$(id -u)" == 0 ]]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    if [[ "$(stat -c %U "$PGDATA")" != postgres ]]; then
        log "giving $PGDATA to the postgres user"
        chown -R postgres:postgres "$PGDATA"
    fi
    chmod 700 "$PGDATA"
    chown postgres:postgres /var/run/postgresql
    chmod 2777 /var/run/postgresql
    export HOME=/var/lib/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups -- "${BASH_SOURCE[0]}" "$@"
fi

file_env POSTGRES_PASSWORD
file_env POSTGRES_USER postgres
file_env POSTGRES_DB "$POSTGRES_USER"
file_env POSTGRES_INITDB_ARGS
export POSTGRES_HOST_AUTH_METHOD="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"

marker="$PGDATA/.entrypoint-init-incomplete"
if [[ -f "$marker" ]]; then
    die "the first start's initialisation of $PGDATA was interrupted; remove the volume and start again"
fi

if [[ -s "$PGDATA/PG_VERSION" ]]; then
    version="$(<"$PGDATA/PG_VERSION")"
    if [[ "$version" != "$PG_MAJOR" ]]; then
        die "$PGDATA holds a PostgreSQL $version cluster; this image runs PostgreSQL $PG_MAJOR"
    fi
    log "PostgreSQL $PG_MAJOR: reusing the cluster in $PGDATA"
else
    if [[ -z "$POSTGRES_PASSWORD" && "$POSTGRES_HOST_AUTH_METHOD" != trust ]]; then
        die "the data directory is empty and POSTGRES_PASSWORD is not set (set it, or POSTGRES_HOST_AUTH_METHOD=trust to let anyone in)"
    fi
    if [[ -n "$(ls -A "$PGDATA")" ]]; then
        die "$PGDATA is not empty but holds no cluster (no PG_VERSION): not initialising over it"
    fi
    log "initialising a PostgreSQL $PG_MAJOR cluster in $PGDATA (superuser $POSTGRES_USER, database $POSTGRES_DB)"
    umask 077
    initdb_args=(--username="$POSTGRES_USER" --auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD")
    pwfile=""
    if [[ -n "$POSTGRES_PASSWORD" ]]; then
        pwfile="$(mktemp)"
        printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
        initdb_args+=(--pwfile="$pwfile")
    fi
    # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a word list, as in the official image
    if ! initdb "${initdb_args[@]}" $POSTGRES_INITDB_ARGS >&2; then
        [[ -z "$pwfile" ]] || rm -f "$pwfile"
        die "initdb failed"
    fi
    [[ -z "$pwfile" ]] || rm -f "$pwfile"
    : >"$marker"
    {
        echo
        echo "# Added by docker-entrypoint.sh: other containers connect over TCP."
        echo "host all all all $POSTGRES_HOST_AUTH_METHOD"
    } >>"$PGDATA/pg_hba.conf"
    {
        echo
        echo "# Added by docker-entrypoint.sh"
        echo "listen_addresses = '*'"
    } >>"$PGDATA/postgresql.conf"

    # A private server (no TCP, its socket in a private directory, so the healthcheck's pg_isready
    # cannot report it ready) makes the database and runs the init scripts.
    sockdir="$(mktemp -d)"
    stop_temp() { pg_ctl -D "$PGDATA" -m fast -w stop >&2 || true; }
    trap 'stop_temp; exit 1' INT TERM
    pg_ctl -D "$PGDATA" -w -t 60 -o "-c listen_addresses='' -c unix_socket_directories=$sockdir" start >&2
    export PGHOST="$sockdir" PGPORT=5432 PGUSER="$POSTGRES_USER"
    psql=(psql --no-psqlrc -v ON_ERROR_STOP=1 --quiet)
    "${psql[@]}" --dbname=postgres -v db="$POSTGRES_DB" >&2 <<'SQL'
SELECT format('CREATE DATABASE %I', :'db')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
    export PGDATABASE="$POSTGRES_DB"
    shopt -s nullglob
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh)
                if [[ -x "$f" ]]; then log "running $f"; "$f"
                else log "sourcing $f"; . "$f"; fi ;;
            *.sql) log "running $f"; "${psql[@]}" -f "$f" >&2 ;;
            *.sql.gz) log "running $f"; gunzip -c "$f" | "${psql[@]}" >&2 ;;
            *) log "ignoring $f" ;;
        esac
    done
    shopt -u nullglob
    unset PGHOST PGPORT PGUSER PGDATABASE
    pg_ctl -D "$PGDATA" -m fast -w stop >&2
    trap - INT TERM
    rmdir "$sockdir" 2>/dev/null || true
    rm -f "$marker"
    umask 022
    log "initialisation complete"
fi

log "starting PostgreSQL $PG_MAJOR"
exec "$@"
