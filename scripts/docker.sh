#!/usr/bin/env bash
# Builds the pg_rerank container image (docker/Dockerfile: PostgreSQL 15 + pgvector +
# pg_rerank + ONNX Runtime) and tests it. As root, on Debian 12.
#   bash scripts/docker.sh build   package the extension, stage the build context, build
#   bash scripts/docker.sh test    build, then run the image on loopback (--network host)
#                                  with the shared models mounted, CREATE EXTENSION,
#                                  rerank, check the worker, remove the container
# Installs docker.io and debootstrap when missing, starts dockerd when none is running
# (no bridge, no iptables: containers use --network host; stopped again at the end when
# this script started it), and makes the base image debian:bookworm-slim with debootstrap
# from this machine's own Debian mirror when it is missing (no registry is needed).
#   PG_RERANK_IMAGE        the image's name (default pg_rerank:<default_version>, also
#                          tagged pg_rerank:latest)
#   PG_RERANK_DOCKER_PORT  first loopback port tried for the test (default 54360)
# The image is for PostgreSQL 15 (Debian bookworm's packages), whatever PG_MAJOR says.
export PG_MAJOR=15
source "$(dirname "$0")/lib.sh"
cd "$REPO"

ACTION="${1:-test}"
case "$ACTION" in build|test) ;; *) echo "usage: $0 [build|test]" >&2; exit 2 ;; esac
START=$(date +%s)
VERSION="$(awk -F"'" '/^default_version/{print $2}' pg_rerank.control)"
IMAGE="${PG_RERANK_IMAGE:-pg_rerank:$VERSION}"
BASE_IMAGE="$(awk '/^FROM /{print $2; exit}' docker/Dockerfile)"
WORK="${CARGO_TARGET_DIR:-$REPO/target}/docker"
DOCKERD_LOG=/var/log/pg_rerank-dockerd.log
# The client of Debian's docker.io, which matches its dockerd (another one may come first in PATH).
DOCKER=docker; [ -x /usr/bin/docker ] && DOCKER=/usr/bin/docker
mkdir -p "$WORK"
# log, with the seconds since the start.
step() { log "[$(( $(date +%s) - START )) s] $*"; }

# This machine's Debian mirror and its security mirror, if any (lib.sh).
MIRROR="$(debian_mirror)"
SECURITY_MIRROR="$(security_mirror)"

install_tools() {
    if command -v dockerd >/dev/null && command -v debootstrap >/dev/null; then return; fi
    step "installing docker.io and debootstrap"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends
               -o DPkg::Lock::Timeout=600 docker.io debootstrap)
    as_root "${apt[@]}" >/dev/null || { as_root apt-get update -q >/dev/null && as_root "${apt[@]}" >/dev/null; }
}

STARTED_DOCKERD=""
start_dockerd() {
    if "$DOCKER" info >/dev/null 2>&1; then return; fi
    step "starting dockerd (no bridge, no iptables; log: $DOCKERD_LOG)"
    setsid dockerd --bridge=none --iptables=false --ip-masq=false >"$DOCKERD_LOG" 2>&1 < /dev/null &
    STARTED_DOCKERD=$!
    local i
    for i in $(seq 1 60); do
        if "$DOCKER" info >/dev/null 2>&1; then return; fi
        if ! kill -0 "$STARTED_DOCKERD" 2>/dev/null; then tail -20 "$DOCKERD_LOG" >&2; exit 1; fi
        sleep 1
    done
    echo "dockerd did not answer within 60 s" >&2; tail -20 "$DOCKERD_LOG" >&2; exit 1
}

stop_dockerd() {
    if [ -n "$STARTED_DOCKERD" ] && kill -0 "$STARTED_DOCKERD" 2>/dev/null; then
        kill "$STARTED_DOCKERD"
        local i
        for i in $(seq 1 30); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || return 0; sleep 1; done
    fi
}

# debian:bookworm-slim without a registry: debootstrap's minbase, with the slim image's
# dpkg excludes (no manuals, docs or translations), imported as that tag.
base_image() {
    if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then return; fi
    step "making $BASE_IMAGE with debootstrap from $MIRROR"
    local root="$WORK/rootfs"
    rm -rf "$root"
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
    cat > "$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
    echo 'APT::Install-Recommends "false";' > "$root/etc/apt/apt.conf.d/docker-no-recommends"
    # What those excludes would have left out of debootstrap's own packages, and its caches.
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log \
        "$root"/usr/share/locale/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian/*
    tar -C "$root" -c . | "$DOCKER" import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
}

# pgvector for PostgreSQL 15 from Debian trixie's source package, installed into a staging
# tree (kept in $WORK for the next build), fetched by lib.sh's fetch_debian_source.
build_pgvector() {
    local dest="$WORK/pgvector"
    if [ -f "$dest/usr/lib/postgresql/15/lib/vector.so" ]; then return; fi
    step "building pgvector for the image (Debian trixie's source package)"
    local work; work="$(mktemp -d)"
    fetch_debian_source trixie pgvector "$work/src"
    make -C "$work/src" PG_CONFIG="$PG_CONFIG" -j2 >/dev/null
    rm -rf "$dest"
    make -C "$work/src" PG_CONFIG="$PG_CONFIG" install DESTDIR="$dest.tmp" >/dev/null
    rm -rf "$dest.tmp/usr/include"          # headers: for building against pgvector only
    mv "$dest.tmp" "$dest"
    rm -rf "$work"
}

# The build context: only what the image needs (a few tens of MB), not the repository.
stage_context() {
    step "packaging pg_rerank (cargo pgrx package) and staging the build context"
    cargo pgrx package --pg-config "$PG_CONFIG" >"$WORK/package.log" 2>&1 \
        || { tail -30 "$WORK/package.log" >&2; exit 1; }
    local pkg="${CARGO_TARGET_DIR:-$REPO/target}/release/pg_rerank-pg15"
    local ctx="$WORK/context"
    rm -rf "$ctx" && mkdir -p "$ctx/onnxruntime"
    cp -r "$pkg" "$ctx/pg_rerank"
    # The frozen install scripts of earlier versions (CREATE EXTENSION ... VERSION, upgrades).
    install -m 0644 sql/pg_rerank--*.sql "$ctx/pg_rerank/usr/share/postgresql/15/extension/"
    cp -r "$WORK/pgvector" "$ctx/pgvector"
    install -m 0755 "$ORT_LIB" "$ctx/onnxruntime/"
    install -m 0755 docker/docker-entrypoint.sh "$ctx/"
    cp docker/Dockerfile "$ctx/"
    chmod -R u+rwX,go+rX,go-w "$ctx"
}

build_image() {
    step "building $IMAGE (context $(du -sh "$WORK/context" | cut -f1))"
    "$DOCKER" build --network host -q -t "$IMAGE" -t "${IMAGE%%:*}:latest" \
        --build-arg DEBIAN_MIRROR="$MIRROR" --build-arg DEBIAN_SECURITY_MIRROR="$SECURITY_MIRROR" \
        --build-arg ORT_VERSION="$ORT_VERSION" "$WORK/context" >/dev/null
    step "image $IMAGE: $("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
}

free_port() {
    local p="${PG_RERANK_DOCKER_PORT:-54360}" last
    last=$((p + 40))
    while [ "$p" -le "$last" ]; do
        if ! (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
        p=$((p + 1))
    done
    echo "no free port in ${PG_RERANK_DOCKER_PORT:-54360}..$last" >&2; exit 1
}

CONTAINER=""
cleanup() {
    if [ -n "$CONTAINER" ]; then "$DOCKER" rm -f -v "$CONTAINER" >/dev/null 2>&1 || true; fi
    stop_dockerd
}

# Fails with the container's log.
die() { echo "docker test: $*" >&2; "$DOCKER" logs --tail 50 "$CONTAINER" >&2 || true; exit 1; }

test_image() {
    local port; port="$(free_port)"
    CONTAINER="pg_rerank-test-$$"
    step "testing $IMAGE: container $CONTAINER on 127.0.0.1:$port, models $SHARED/models (read-only)"
    export PGPASSWORD="test-$$-$RANDOM"
    "$DOCKER" run -d --name "$CONTAINER" --network host \
        -e POSTGRES_PASSWORD="$PGPASSWORD" -e PGPORT="$port" \
        -e PG_RERANK_MODEL=minilm-debian -e PG_RERANK_WORKER_THREADS=2 \
        -v "$SHARED/models:/models:ro" "$IMAGE" -c listen_addresses=127.0.0.1 >/dev/null
    local q=("$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -X -v ON_ERROR_STOP=1 -qAt)
    local i
    for i in $(seq 1 120); do
        if "${q[@]}" -c 'SELECT 1' >/dev/null 2>&1; then break; fi
        [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$CONTAINER")" = true ] || die "the container stopped"
        [ "$i" -lt 120 ] || die "postgres did not accept connections within 60 s"
        sleep 0.5
    done
    # Password authentication over TCP is on: a wrong password is refused.
    if PGPASSWORD=wrong "${q[@]}" -c 'SELECT 1' >/dev/null 2>&1; then die "a wrong password was accepted"; fi

    "${q[@]}" -c 'CREATE EXTENSION vector' -c 'CREATE EXTENSION pg_rerank' || die "CREATE EXTENSION failed"
    # A small hybrid query: pgvector's candidates, reranked in the worker by the default
    # model (PG_RERANK_MODEL), joined back to their rows.
    local top
    top="$("${q[@]}" <<'SQL'
SET pg_rerank.execution = worker;
CREATE TABLE docs (id int PRIMARY KEY, body text, emb vector(3));
INSERT INTO docs VALUES
  (1, 'GNU Chess is a chess-playing program', '[1,0,0]'),
  (2, 'zlib is a library implementing the deflate compression method found in gzip', '[0.9,0.1,0]'),
  (3, 'a collection of desktop wallpapers', '[0.8,0.2,0]');
WITH cand AS (SELECT id, body FROM docs ORDER BY emb <-> '[1,0,0]' LIMIT 3),
     arr AS (SELECT array_agg(id ORDER BY id) AS ids, array_agg(body ORDER BY id) AS bodies FROM cand)
SELECT d.id FROM arr CROSS JOIN LATERAL rerank('lossless compression library', arr.bodies) r
JOIN docs d ON d.id = arr.ids[r.idx]
ORDER BY r.score DESC LIMIT 1;
SQL
)" || die "the rerank query failed"
    [ "$top" = 2 ] || die "the top result is document $top, expected 2 (zlib)"
    local worker
    worker="$("${q[@]}" -c "SELECT state || ',' || (pid IS NOT NULL) || ',' || device FROM pg_rerank_worker()")"
    [ "$worker" = "ready,true,cpu" ] || die "pg_rerank_worker() says '$worker', expected ready,true,cpu"
    local requests
    requests="$("${q[@]}" -c "SELECT requests FROM pg_rerank_stats WHERE model = 'minilm-debian'")"
    [ "${requests:-0}" -ge 1 ] || die "the worker served no request of minilm-debian (pg_rerank_stats: '$requests')"
    step "container test passed: pgvector + rerank (top: zlib), worker ready, $requests request(s) served"
    "$DOCKER" stop -t 30 "$CONTAINER" >/dev/null
    "$DOCKER" rm -v "$CONTAINER" >/dev/null
    CONTAINER=""
}

trap cleanup EXIT
install_tools
start_dockerd
base_image
build_pgvector
stage_context
build_image
[ "$ACTION" = build ] || test_image
step "docker $ACTION done"
