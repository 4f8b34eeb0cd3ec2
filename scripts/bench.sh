#!/usr/bin/env bash
# Benchmarks (not tests): starts a private cluster with pg_rerank preloaded, loads the
# shared corpus, and runs the benchmark named by $1 (concurrency, head_to_head, sql_overhead, flagship, end_to_end, recipes,
# cascade, bulk, embed, long_documents, cache, latency, soak). Results
# go to benches/results/, plots to docs/img/. Run nothing else meanwhile: the figures are
# ratios measured in one run, but a busy machine still skews them.
source "$(dirname "$0")/lib.sh"
cd "$REPO"
bash scripts/setup.sh
.venv/bin/pip install -q 'matplotlib==3.9.*' "onnxruntime==$ORT_VERSION" 'onnx==1.*' 'sympy==1.*' 'tokenizers==0.*'
if [ "${1:-}" = head_to_head ] || [ "${1:-}" = embed ]; then
    # PyTorch's PyPI wheel brings its CUDA libraries: about 6 GB on disk. embed compares
    # embed_batch() with sentence-transformers too.
    .venv/bin/pip install -q 'torch==2.15.*' 'sentence-transformers==6.2.*'
fi
STATE="$(state_dir)"
CLUSTER="$STATE/bench-cluster"
PORT="${PG_RERANK_BENCH_PORT:-54332}"
start_cluster "$CLUSTER" "$PORT"
trap 'stop_cluster "$CLUSTER"' EXIT
export PGHOST=127.0.0.1 PGPORT="$PORT" PGUSER=postgres
# The Python reference reads a document up to the model's window: the benchmarks' sessions
# do the same work (pg_rerank.long_documents = truncate), except the long-document one.
[ "${1:-}" = long_documents ] || [ "${1:-}" = flagship ] || export PGOPTIONS="-c pg_rerank.long_documents=truncate"
# The benchmarks measure the model's work: the score cache would answer the inputs they
# repeat (rounds, warm-ups, the cascade's second stage). The cache benchmark measures it.
[ "${1:-}" = cache ] || export PGOPTIONS="${PGOPTIONS:-} -c pg_rerank.cache=off"
psql -q -d postgres -tc "SELECT 1 FROM pg_database WHERE datname = 'bench'" | grep -q 1 || psql -q -d postgres -c "CREATE DATABASE bench"
# The extension as just built and installed, not one left from an older build.
psql -q -d bench -c "DROP EXTENSION IF EXISTS pg_rerank CASCADE" -c "CREATE EXTENSION pg_rerank"
mkdir -p benches/results docs/img
DSN="host=127.0.0.1 port=$PORT user=postgres dbname=bench"
# The engine alone, for the benchmarks that compare SQL with it.
ENGINE=target/release/examples/bench_engine
build_engine() { cargo build --release -q -p pg_rerank_engine --example bench_engine; }
case "${1:-concurrency}" in
    concurrency)
        .venv/bin/python benches/concurrency.py "$DSN" \
            "$SHARED/data/debian/corpus.jsonl" benches/results/concurrency.json docs/img/concurrency.png \
            "${PG_RERANK_BENCH_SECONDS:-10}"
        ;;
    head_to_head | sql_overhead)
        # sql_overhead: head_to_head's engine and SQL only, with more rounds and no plot.
        if [ "$1" = head_to_head ]; then plot=docs/img/head_to_head.png rounds=3 only=all
        else plot=/dev/null rounds=8 only=sql; fi
        build_engine
        ORT_DYLIB_PATH="$ORT_LIB" .venv/bin/python benches/head_to_head.py "$SHARED" "$DSN" "$ENGINE" \
            "benches/results/$1.json" "$plot" \
            "${PG_RERANK_BENCH_QUERIES:-5}" "${PG_RERANK_BENCH_REPEAT:-$rounds}" "$only"
        ;;
    flagship)
        cargo build --release -q -p pg_rerank_engine --example windows
        .venv/bin/python scripts/load_corpus.py "$DSN" "$SHARED/data/debian"
        PGOPTIONS="-c pg_rerank.cache=off" .venv/bin/python benches/flagship.py "$SHARED" "$DSN" \
            target/release/examples/windows benches/results/flagship.json docs/img/flagship.png \
            "${PG_RERANK_BENCH_QUERIES:-20}" "${PG_RERANK_BENCH_THREADS:-2}"
        ;;
    end_to_end)
        .venv/bin/python scripts/load_corpus.py "$DSN" "$SHARED/data/debian"
        .venv/bin/python benches/end_to_end.py "$SHARED" "$DSN" \
            benches/results/end_to_end.json docs/img/end_to_end.png \
            "${PG_RERANK_BENCH_QUERIES:-20}" "${PG_RERANK_BENCH_REPEAT:-3}"
        ;;
    bulk)
        build_engine
        ORT_DYLIB_PATH="$ORT_LIB" .venv/bin/python benches/bulk.py "$SHARED" "$DSN" "$ENGINE" \
            benches/results/bulk.json "${PG_RERANK_BENCH_PAIRS:-100000}" "${PG_RERANK_BENCH_VARIANT-int8}" "${PG_RERANK_BENCH_MODES:-worker}"
        ;;
    recipes)
        .venv/bin/python scripts/load_corpus.py "$DSN" "$SHARED/data/debian"
        .venv/bin/python benches/recipes.py "$SHARED" "$DSN" \
            benches/results/recipes.json docs/img/recipes.png \
            "${PG_RERANK_BENCH_QUERIES:-100}" "${PG_RERANK_BENCH_TIMED:-10}"
        ;;
    cascade)
        .venv/bin/python benches/cascade.py "$SHARED" "$DSN" benches/results/cascade.json docs/img/cascade.png \
            "${PG_RERANK_BENCH_QUERIES:-50}" "${PG_RERANK_BENCH_REPEAT:-1}"
        ;;
    embed)
        .venv/bin/python benches/embed.py "$SHARED" "$DSN" benches/results/embed.json \
            "${PG_RERANK_BENCH_TEXTS:-2000}" "${PG_RERANK_BENCH_THREADS:-2}"
        ;;
    long_documents)
        .venv/bin/python benches/long.py "$SHARED" "$DSN" benches/results/long_documents.json \
            "${PG_RERANK_BENCH_QUERIES:-20}"
        ;;
    cache)
        .venv/bin/python scripts/load_corpus.py "$DSN" "$SHARED/data/debian"
        install_dbt_venv
        .venv/bin/python benches/cache.py "$SHARED" "$DSN" benches/results/cache.json \
            "${PG_RERANK_BENCH_QUERIES:-20}" .venv-dbt/bin/dbt
        ;;
    latency)
        .venv/bin/python benches/service.py latency "$DSN" "$SHARED/data/debian/corpus.jsonl" \
            benches/results/latency.json "${PG_RERANK_BENCH_PAIRS:-8192}"
        ;;
    soak)
        .venv/bin/python benches/service.py soak "$DSN" "$SHARED/data/debian/corpus.jsonl" \
            benches/results/soak.json docs/img/soak.png "${PG_RERANK_BENCH_SECONDS:-1800}"
        ;;
    *) echo "unknown benchmark: $1" >&2; exit 2 ;;
esac
