#!/usr/bin/env bash
# Benchmarks (not tests): starts a private cluster with pg_rerank preloaded, loads the
# shared corpus, and runs the benchmark named by $1 (concurrency). Results go to
# benches/results/, plots to docs/img/.
source "$(dirname "$0")/lib.sh"
cd "$REPO"
bash scripts/setup.sh
.venv/bin/pip install -q 'matplotlib==3.9.*'
STATE="$(state_dir)"
CLUSTER="$STATE/bench-cluster"
PORT="${PG_RERANK_BENCH_PORT:-54332}"
start_cluster "$CLUSTER" "$PORT"
trap 'stop_cluster "$CLUSTER"' EXIT
export PGHOST=127.0.0.1 PGPORT="$PORT" PGUSER=postgres
psql -q -d postgres -tc "SELECT 1 FROM pg_database WHERE datname = 'bench'" | grep -q 1 || psql -q -d postgres -c "CREATE DATABASE bench"
psql -q -d bench -c "CREATE EXTENSION IF NOT EXISTS pg_rerank"
mkdir -p benches/results docs/img
case "${1:-concurrency}" in
    concurrency)
        .venv/bin/python benches/concurrency.py "host=127.0.0.1 port=$PORT user=postgres dbname=bench" \
            "$SHARED/data/debian/corpus.jsonl" benches/results/concurrency.json docs/img/concurrency.png \
            "${PG_RERANK_BENCH_SECONDS:-10}"
        ;;
    *) echo "unknown benchmark: $1" >&2; exit 2 ;;
esac
