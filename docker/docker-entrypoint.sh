#!/usr/bin/env bash
# Entrypoint of the pg_rerank image: creates the cluster on first start (as user
# postgres), writes pg_rerank's settings from the environment on every start, and runs
# postgres in the foreground. The environment, like the official postgres image's:
#   POSTGRES_PASSWORD          password of POSTGRES_USER; connections over TCP then
#                              need it (scram-sha-256)
#   POSTGRES_HOST_AUTH_METHOD  trust: no password at all (only for tests and private
#                              networks); one of the two is required on first start
#   POSTGRES_USER              the superuser (default postgres)
#   POSTGRES_DB                a database created on first start (default POSTGRES_USER)
#   POSTGRES_INITDB_ARGS       more initdb arguments
#   PGDATA                     the cluster (default /var/lib/postgresql/data)
#   PGPORT                     the port postgres listens on (default 5432)
# and pg_rerank's (written to $PGDATA/pg_rerank.docker.conf at each start; ALTER SYSTEM
# still overrides them):
#   PG_RERANK_MODEL_DIR        pg_rerank.model_dir: where model directories are mounted (/models)
#   PG_RERANK_MODEL            pg_rerank.model: the default model's name (none by default)
#   PG_RERANK_ONNXRUNTIME      pg_rerank.onnxruntime: the ONNX Runtime library
#   PG_RERANK_DEVICE           pg_rerank.device: cpu (default), cuda or cuda:N
#   PG_RERANK_WORKER_THREADS   pg_rerank.worker_threads (default 0: one per CPU core)
# Scripts in /docker-entrypoint-initdb.d (*.sql, *.sql.gz, *.sh) run once, after initdb,
# in POSTGRES_DB.
set -Eeuo pipefail

: "${PGDATA:=/var/lib/postgresql/data}" "${PGPORT:=5432}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
export PGDATA PGPORT POSTGRES_USER POSTGRES_DB

fail() { echo "docker-entrypoint: $*" >&2; exit 1; }

# docker run IMAGE -c name=value ...: options for postgres.
if [ "${1:-}" != "" ] && [ "${1:0:1}" = "-" ]; then set -- postgres "$@"; fi
# Anything else (bash, psql, ...) runs as given.
if [ "${1:-}" != postgres ]; then exec "$@"; fi

# As root: own the data and socket directories, then come back as postgres.
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

# Settings from the environment, rewritten at every start.
write_env_conf() {
    local f="$PGDATA/pg_rerank.docker.conf"
    {
        echo "# Written by docker-entrypoint.sh at each start from the container's environment."
        echo "pg_rerank.model_dir = '${PG_RERANK_MODEL_DIR:-/models}'"
        echo "pg_rerank.onnxruntime = '${PG_RERANK_ONNXRUNTIME:-/usr/local/lib/onnxruntime/libonnxruntime.so}'"
        if [ -n "${PG_RERANK_MODEL:-}" ]; then echo "pg_rerank.model = '$PG_RERANK_MODEL'"; fi
        if [ -n "${PG_RERANK_DEVICE:-}" ]; then echo "pg_rerank.device = '$PG_RERANK_DEVICE'"; fi
        if [ -n "${PG_RERANK_WORKER_THREADS:-}" ]; then echo "pg_rerank.worker_threads = $PG_RERANK_WORKER_THREADS"; fi
    } > "$f"
}

init_cluster() {
    local method
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        method="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
    elif [ "${POSTGRES_HOST_AUTH_METHOD:-}" = trust ]; then
        method=trust
    else
        fail "the cluster is not initialised and no superuser password is set: pass
    -e POSTGRES_PASSWORD=... (connections over TCP need it), or
    -e POSTGRES_HOST_AUTH_METHOD=trust to allow every connection without a password
    (only for tests and private networks)."
    fi
    echo "docker-entrypoint: initdb in $PGDATA (user $POSTGRES_USER, host auth $method)"
    # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of arguments
    local args=(-D "$PGDATA" --username="$POSTGRES_USER" --auth-local=trust --auth-host="$method"
                --encoding=UTF8 --locale=C.UTF-8 ${POSTGRES_INITDB_ARGS:-})
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        initdb "${args[@]}" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") >/dev/null
    else
        initdb "${args[@]}" >/dev/null
    fi
    echo "host all all all $method" >> "$PGDATA/pg_hba.conf"
    cat >> "$PGDATA/postgresql.conf" <<'CONF'

# pg_rerank image
listen_addresses = '*'
shared_preload_libraries = 'pg_rerank'
include_if_exists = 'pg_rerank.docker.conf'
CONF
    write_env_conf

    # POSTGRES_DB and the init scripts, on a server reachable only by its Unix socket.
    pg_ctl -D "$PGDATA" -w -t 120 -o "-c listen_addresses='' -p $PGPORT" start >/dev/null
    local psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc -q -h /var/run/postgresql -U "$POSTGRES_USER")
    if [ "$POSTGRES_DB" != postgres ]; then
        "${psql[@]}" -d postgres -v db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    local f
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh) echo "docker-entrypoint: running $f"; . "$f" ;;
            *.sql) echo "docker-entrypoint: running $f"; "${psql[@]}" -d "$POSTGRES_DB" -f "$f" ;;
            *.sql.gz) echo "docker-entrypoint: running $f"; gunzip -c "$f" | "${psql[@]}" -d "$POSTGRES_DB" ;;
            *) ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "docker-entrypoint: cluster ready"
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    shopt -s nullglob
    init_cluster
    shopt -u nullglob
else
    write_env_conf
fi

# postgres takes its port from PGPORT.
exec "$@"
