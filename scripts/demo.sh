#!/usr/bin/env bash
# The demo: installs everything, starts a private cluster under the repo (as an
# unprivileged user when run as root), loads the Debian corpus with pgvector embeddings,
# and runs a hybrid pgvector + full-text query whose top 100 is reranked in SQL.
#   PG_RERANK_MODEL=name   use another model under the model directory
#   PG_RERANK_MODEL_DIR=d  use your own model directory (e.g. an exported HF cross-encoder)
source "$(dirname "$0")/lib.sh"
cd "$REPO"
bash scripts/setup.sh
STATE="$(state_dir)"
CLUSTER="$STATE/demo-cluster"
PORT="${PG_RERANK_DEMO_PORT:-54330}"
start_cluster "$CLUSTER" "$PORT"
export PGHOST=127.0.0.1 PGPORT="$PORT" PGUSER=postgres
psql -q -d postgres -tc "SELECT 1 FROM pg_database WHERE datname = 'demo'" | grep -q 1 || psql -q -d postgres -c "CREATE DATABASE demo"
if [ -n "${PG_RERANK_MODEL_DIR:-}" ]; then
    psql -q -d postgres -c "ALTER SYSTEM SET pg_rerank.model_dir = '$PG_RERANK_MODEL_DIR'" -c "SELECT pg_reload_conf()" >/dev/null
fi
log "loading the corpus (first run only: about a minute or two)"
.venv/bin/python scripts/load_corpus.py "dbname=demo" "$SHARED/data/debian"

QUERY="${1:-lossless data compression library}"
# The query embedding comes from the shared dev set when the text is one of its queries;
# otherwise the nearest document's embedding to the full-text best match stands in.
EMB=$(.venv/bin/python - "$QUERY" "$SHARED/data/debian" <<'PY'
import json, sys, numpy as np
q, data = sys.argv[1], sys.argv[2]
texts = [json.loads(l)["text"] for l in open(f"{data}/queries_dev.jsonl")]
if q in texts:
    e = np.load(f"{data}/query_emb_dev.npy")[texts.index(q)]
    print("[" + ",".join(f"{x:.6g}" for x in e) + "]")
PY
)
if [ -z "$EMB" ]; then
    EMB=$(psql -d demo -Atc "SELECT emb::text FROM packages, websearch_to_tsquery('english', \$\$$QUERY\$\$) q WHERE tsv @@ q ORDER BY ts_rank_cd(tsv, q) DESC LIMIT 1")
fi
log "hybrid search for: $QUERY (model: ${PG_RERANK_MODEL:-minilm-debian})"
psql -d demo -v ON_ERROR_STOP=1 -v query="$QUERY" -v query_emb="$EMB" \
     -c "SET pg_rerank.model = '${PG_RERANK_MODEL:-minilm-debian}'" -c '\timing on' -f examples/hybrid_search.sql
log "the cluster keeps running: psql -h 127.0.0.1 -p $PORT -U postgres demo   (stop: $PG_BIN/pg_ctl -D $CLUSTER/pgdata stop, as $(pg_user))"
