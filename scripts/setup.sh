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

install_pgvector() {
    if [ -f /usr/share/postgresql/15/extension/vector.control ]; then return; fi
    log "building pgvector from Debian trixie's source package"
    local work; work="$(mktemp -d)"
    mkdir -p "$work/lists/partial"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" > "$work/trixie.list"
    local opts=(-o "Dir::Etc::SourceList=$work/trixie.list" -o Dir::Etc::SourceParts=/dev/null
                -o "Dir::State::Lists=$work/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
    apt-get "${opts[@]}" update -q >/dev/null
    (cd "$work" && apt-get "${opts[@]}" source --download-only pgvector >/dev/null && dpkg-source -x pgvector_*.dsc src >/dev/null)
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
    if ! grep -q '^pg15' "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null; then
        cargo pgrx init --pg15 "$PG_CONFIG"
    fi
}

install_user() {
    if is_root && ! id "$PG_RUNAS_USER" >/dev/null 2>&1; then
        log "creating the unprivileged user $PG_RUNAS_USER for test servers"
        useradd --create-home --shell /bin/bash "$PG_RUNAS_USER"
    fi
}

install_venv() {
    if [ -x "$REPO/.venv/bin/python" ] && "$REPO/.venv/bin/python" -c "import psycopg, numpy, pytest, onnx" 2>/dev/null; then return; fi
    log "creating the Python environment in .venv"
    python3 -m venv "$REPO/.venv"
    "$REPO/.venv/bin/pip" install -q --upgrade pip
    "$REPO/.venv/bin/pip" install -q "psycopg[binary]==3.2.*" "numpy<3" "pytest<9" "onnx==1.*"
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
install_pgvector
install_onnxruntime
install_pgrx
install_user
install_venv
[ "${1:-}" = "--no-build" ] || build_extension
log "setup done"
