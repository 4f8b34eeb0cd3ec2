"""The score cache (issue 13): what a repeat costs with and without it.

1. A repeated rerank() of the same 100 candidates (a user paging through results): for
   each of the first N reference dev queries (dev_reference.tsv, 100 first-stage
   candidates each) the cache is emptied (pg_rerank_cache_reset()), then the same
   rerank() runs twice; both calls are timed from the client, and the second's rows must
   equal the first's bit for bit.
2. A second `dbt build` of examples/dbt over unchanged rows: the cache is emptied, the
   project is built twice; the figures are the `reranked` model's execution time from
   dbt's run_results.json (the model that calls rerank_pairs()) and the whole build's wall
   time (dbt's own start-up, seed and tests included).

Worker mode (the bench cluster preloads pg_rerank), default settings, MiniLM-L6 fp32,
pg_rerank.long_documents = truncate as the other benchmarks. Ratios are first / second
time from the same run.

    python benches/cache.py SHARED DSN OUT_JSON [queries (20)] [dbt executable or "none"]
"""
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

import devset

SHARED, DSN, OUT_JSON = sys.argv[1:4]
QUERIES = int(sys.argv[4]) if len(sys.argv) > 4 else 20
DBT = sys.argv[5] if len(sys.argv) > 5 else "none"
DATA = Path(SHARED) / "data" / "debian"
PROJECT = Path(__file__).resolve().parents[1] / "examples" / "dbt"
MODEL = "minilm-debian"


def candidates():
    cands = devset.reference(DATA)
    texts = devset.texts(DATA, (d for c in cands.values() for _, d, _ in c))
    queries = devset.queries(DATA)
    return [(queries[q], [texts[d] for _, d, _ in cands[q]]) for q in sorted(cands)[:QUERIES]]


def counts(conn):
    return conn.execute("SELECT cache_hits, cache_misses FROM pg_rerank_stats WHERE model = %s",
                        (MODEL,)).fetchone()


def repeated_rerank(conn):
    sql = "SELECT idx, score FROM rerank(%s, %s::text[], %s)"
    conn.execute(sql, ("warm-up", ["the model loads"], MODEL)).fetchall()
    first, second = [], []
    h0, m0 = counts(conn)
    for q, docs in candidates():
        conn.execute("SELECT pg_rerank_cache_reset()")
        t0 = time.perf_counter()
        a = conn.execute(sql, (q, docs, MODEL)).fetchall()
        t1 = time.perf_counter()
        b = conn.execute(sql, (q, docs, MODEL)).fetchall()
        t2 = time.perf_counter()
        assert a == b, "a cached score differs from the computed one"
        first.append(t1 - t0)
        second.append(t2 - t1)
    h1, m1 = counts(conn)
    out = {
        "queries": len(first), "candidates": 100,
        "first_ms_median": 1000 * statistics.median(first),
        "repeat_ms_median": 1000 * statistics.median(second),
        "speedup_total": sum(first) / sum(second),
        "speedup_median": statistics.median(f / s for f, s in zip(first, second)),
        "cache_hits": h1 - h0, "cache_misses": m1 - m0,
    }
    print(f"repeated rerank() of 100: first {out['first_ms_median']:.0f} ms, repeat "
          f"{out['repeat_ms_median']:.1f} ms (medians), {out['speedup_total']:.0f}x in total; "
          f"hits {out['cache_hits']}, misses {out['cache_misses']}")
    return out


def dbt_build(conn, target):
    info = conn.info
    env = dict(os.environ, PGHOST=info.host, PGPORT=str(info.port), PGUSER=info.user,
               PGDATABASE=info.dbname, DBT_SCHEMA="rerank_cache_bench", DBT_SEND_ANONYMOUS_USAGE_STATS="false")
    t0 = time.perf_counter()
    out = subprocess.run([DBT, "build", "--project-dir", str(PROJECT), "--profiles-dir", str(PROJECT),
                          "--target-path", str(target), "--log-path", str(target / "logs"), "--no-version-check"],
                         env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    results = json.loads((target / "run_results.json").read_text())["results"]
    model = next(r for r in results if r["unique_id"].endswith(".reranked"))
    return wall, model["execution_time"]


def second_dbt_build(conn):
    with tempfile.TemporaryDirectory() as tmp:
        conn.execute("SELECT pg_rerank_cache_reset()")
        h0, m0 = counts(conn)
        wall1, model1 = dbt_build(conn, Path(tmp) / "first")
        h1, m1 = counts(conn)
        wall2, model2 = dbt_build(conn, Path(tmp) / "second")
        h2, m2 = counts(conn)
    pairs = conn.execute("SELECT count(*) FROM rerank_cache_bench.reranked").fetchone()[0]
    out = {
        "pairs": pairs,
        "first": {"reranked_model_s": model1, "build_s": wall1, "cache_hits": h1 - h0, "cache_misses": m1 - m0},
        "second": {"reranked_model_s": model2, "build_s": wall2, "cache_hits": h2 - h1, "cache_misses": m2 - m1},
        "speedup_reranked_model": model1 / model2,
        "speedup_build": wall1 / wall2,
    }
    print(f"dbt build over {pairs} pairs: reranked model {model1:.2f} s -> {model2:.3f} s "
          f"({out['speedup_reranked_model']:.0f}x), whole build {wall1:.1f} s -> {wall2:.1f} s "
          f"({out['speedup_build']:.1f}x)")
    return out


def main():
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("SET pg_rerank.execution = worker")
        capacity = conn.execute("SELECT cache_capacity FROM pg_rerank_worker()").fetchone()[0]
        assert capacity > 0, "the bench cluster has no score cache (pg_rerank.cache_size = 0)"
        result = {"repeated_rerank": repeated_rerank(conn)}
        if DBT != "none":
            result["second_dbt_build"] = second_dbt_build(conn)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "machine": platform.machine(), "model": MODEL,
            "execution": "worker (preloaded), default settings", "cache_capacity": capacity,
            "long_documents": "truncate"}
    Path(OUT_JSON).write_text(json.dumps({"meta": meta, **result}, indent=1) + "\n")


main()
