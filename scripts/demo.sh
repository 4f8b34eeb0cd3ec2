#!/usr/bin/env bash
# The demo: installs everything, starts a private cluster under the repo (as an
# unprivileged user when run as root), loads the Debian corpus with pgvector embeddings,
# and runs a hybrid query in one SQL statement: the query text embedded in the database,
# pgvector and full-text candidates fused, the top 100 reranked by the cross-encoder.
#   PG_RERANK_MODEL=name   use another model under the model directory
#   PG_RERANK_MODEL_DIR=d  use your own model directory (e.g. an exported HF cross-encoder)
#   PG_MAJOR=18 (or 17)    run it on that PostgreSQL (installed by scripts/setup.sh)
source "$(dirname "$0")/lib.sh"
cd "$REPO"
bash scripts/setup.sh
STATE="$(state_dir)"
if [ "$PG_MAJOR" = 15 ]; then
    CLUSTER="$STATE/demo-cluster"
    PORT="${PG_RERANK_DEMO_PORT:-54330}"
else
    # PG_MAJOR=18 (or 17): a cluster of its own, beside 15's.
    CLUSTER="$STATE/demo-cluster-pg$PG_MAJOR"
    PORT="${PG_RERANK_DEMO_PORT:-544$PG_MAJOR}"
fi
export PATH="$PG_BIN:$PATH"
start_cluster "$CLUSTER" "$PORT"
export PGHOST=127.0.0.1 PGPORT="$PORT" PGUSER=postgres
psql -q -d postgres -tc "SELECT 1 FROM pg_database WHERE datname = 'demo'" | grep -q 1 || psql -q -d postgres -c "CREATE DATABASE demo"
if [ -n "${PG_RERANK_MODEL_DIR:-}" ]; then
    psql -q -d postgres -c "ALTER SYSTEM SET pg_rerank.model_dir = '$PG_RERANK_MODEL_DIR'" -c "SELECT pg_reload_conf()" >/dev/null
fi
# The extension as just built and installed, not the objects of an older build (a demo
# database from an earlier run keeps its data: only the extension's functions change).
psql -q -d demo -c "DROP EXTENSION IF EXISTS pg_rerank CASCADE" -c "CREATE EXTENSION pg_rerank"
log "loading the corpus (first run only: about a minute or two)"
.venv/bin/python scripts/load_corpus.py "dbname=demo" "$SHARED/data/debian"

QUERY="${1:-lossless data compression library}"
log "hybrid search for: $QUERY (model: ${PG_RERANK_MODEL:-minilm-debian})"
psql -d demo -v ON_ERROR_STOP=1 -v query="$QUERY" \
     -c "SET pg_rerank.model = '${PG_RERANK_MODEL:-minilm-debian}'" -c '\timing on' -f examples/hybrid_search.sql
log "the cluster keeps running: psql -h 127.0.0.1 -p $PORT -U postgres demo   (stop: $PG_BIN/pg_ctl -D $CLUSTER/pgdata stop, as $(pg_user))"
