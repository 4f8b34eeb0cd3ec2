"""Bulk scoring through SQL (issue 4): N (query, document) pairs stored in a table and
scored the way the dbt example does it (examples/dbt/macros/rerank_scores.sql: chunks of
10,000 rows aggregated into arrays, one rerank_pairs() call per chunk, CREATE TABLE AS),
against the engine alone scoring the same pairs in the same chunks with the same number
of threads and the worker's session layout (one single-threaded session per thread), in
one run. Pair k is (dev query k mod 500, corpus document 7919 k mod
58018), so queries and documents mix as in a relevance-labelling job.

    python benches/bulk.py SHARED DSN ENGINE_BIN OUT_JSON [pairs] [model variant] [modes]

modes: comma-separated pg_rerank.execution values to measure (default worker, the
deployment README.md recommends; worker,backend adds scoring in the backend).
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

SHARED, DSN, ENGINE, OUT_JSON = sys.argv[1:5]
PAIRS = int(sys.argv[5]) if len(sys.argv) > 5 else 100_000
VARIANT = sys.argv[6] if len(sys.argv) > 6 else "int8"
MODES = (sys.argv[7] if len(sys.argv) > 7 else "worker").split(",")
THREADS = 2
CHUNK = 10_000
DATA = Path(SHARED) / "data" / "debian"
MODEL = "minilm-debian" + (f":{VARIANT}" if VARIANT else "")
ONNX_FILE = f"model_{VARIANT}.onnx" if VARIANT else "model.onnx"

SCORE_SQL = f"""
CREATE TABLE bulk_scored AS
WITH numbered AS (
    SELECT id AS k, query AS q, doc AS d, (row_number() OVER (ORDER BY id) - 1) / {CHUNK} AS chunk
    FROM bulk_pairs
),
chunks AS (
    SELECT array_agg(k ORDER BY k) AS ids, array_agg(q ORDER BY k) AS qs, array_agg(d ORDER BY k) AS ds
    FROM numbered GROUP BY chunk
)
SELECT s.k AS id, s.score
FROM chunks, unnest(chunks.ids, rerank_pairs(chunks.qs, chunks.ds, model => '{MODEL}', raw => true)) AS s(k, score)
"""


def pairs():
    docs = [json.loads(line)["text"] for line in open(DATA / "corpus.jsonl")]
    queries = [json.loads(line)["text"] for line in open(DATA / "queries_dev.jsonl")]
    return [(queries[k % len(queries)], docs[(7919 * k) % len(docs)]) for k in range(PAIRS)]


def engine(path):
    # Laid out as the worker runs on the CPU: one single-threaded session per thread.
    env = dict(os.environ, BENCH_SESSIONS=str(THREADS))
    out = subprocess.run([ENGINE, SHARED, ONNX_FILE, str(THREADS), "--pairs", str(path), str(CHUNK)],
                         check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out)


def sql(conn, execution):
    conn.execute(f"SET pg_rerank.execution = {execution}")
    conn.execute(f"SET pg_rerank.threads = {THREADS}")
    conn.execute("DROP TABLE IF EXISTS bulk_scored")
    # Load the model first, as the engine's figure excludes its load.
    conn.execute("SELECT rerank_pairs(ARRAY['q'], ARRAY['d'], model => %s)", (MODEL,))
    t0 = time.perf_counter()
    conn.execute(SCORE_SQL)
    wall = time.perf_counter() - t0
    n = conn.execute("SELECT count(*) FROM bulk_scored WHERE score IS NOT NULL").fetchone()[0]
    assert n == PAIRS, (n, PAIRS)
    return {"system": f"SQL rerank_pairs ({execution})", "pairs": n, "seconds": wall, "pairs_per_s": n / wall}


def main():
    data = pairs()
    results = {"pairs": PAIRS, "chunk": CHUNK, "threads": THREADS, "model": MODEL}
    with psycopg.connect(DSN, autocommit=True) as conn, tempfile.TemporaryDirectory() as tmp:
        conn.execute("DROP TABLE IF EXISTS bulk_pairs")
        conn.execute("CREATE TABLE bulk_pairs (id int PRIMARY KEY, query text NOT NULL, doc text NOT NULL)")
        with conn.cursor().copy("COPY bulk_pairs (id, query, doc) FROM STDIN") as copy:
            for k, (q, d) in enumerate(data):
                copy.write_row((k, q, d))
        path = Path(tmp) / "pairs.jsonl"
        with open(path, "w") as f:
            for p in data:
                f.write(json.dumps(p) + "\n")
        results["engine"] = engine(path)
        print(json.dumps(results["engine"]), flush=True)
        for execution in MODES:
            r = sql(conn, execution)
            r["fraction_of_engine"] = r["pairs_per_s"] / results["engine"]["pairs_per_s"]
            results[f"sql_{execution}"] = r
            print(json.dumps(r), flush=True)
        conn.execute("DROP TABLE IF EXISTS bulk_scored")
        conn.execute("DROP TABLE IF EXISTS bulk_pairs")
    json.dump(results, open(OUT_JSON, "w"), indent=1)


if __name__ == "__main__":
    main()
