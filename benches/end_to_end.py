"""End to end in SQL (issue 4): the demo's hybrid query (examples/hybrid_search.sql:
pgvector HNSW top 100 + full-text top 100, fused, 100 candidates reranked by
rerank_topk) against the worker, its latency split into the first stage, the wait in the
worker's queue, tokenization, inference, and the rest (SQL and the round trip to the
worker). The first stage is timed alone on the same queries; the worker's share comes
from pg_rerank_stats around the runs; the rest is what remains of the whole query.

    python benches/end_to_end.py SHARED DSN OUT_JSON OUT_PNG [queries] [repeat]
"""
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

SHARED, DSN, OUT_JSON, OUT_PNG = sys.argv[1:5]
QUERIES = int(sys.argv[5]) if len(sys.argv) > 5 else 20
REPEAT = int(sys.argv[6]) if len(sys.argv) > 6 else 3
DATA = Path(SHARED) / "data" / "debian"
REPO = Path(__file__).resolve().parents[1]
HYBRID = (REPO / "examples" / "hybrid_search.sql").read_text()
# The same query up to its candidates, fetching their texts as the reranker would.
FIRST_STAGE = HYBRID[:HYBRID.index("SELECT r.rank")] + "SELECT count(*), sum(length(body)) FROM candidates"


def bind(sql):
    return sql.replace(":'query_emb'", "%(query_emb)s").replace(":'query'", "%(query)s")


def worker_totals(conn):
    row = conn.execute(
        "SELECT requests, pairs, queue_wait_mean_ms, inference_mean_ms, tokenize_mean_ms FROM pg_rerank_stats "
        "WHERE model = 'minilm-debian'").fetchone()
    if row is None:
        return {"requests": 0, "pairs": 0, "queue_ms": 0.0, "inference_ms": 0.0, "tokenize_ms": 0.0}
    n, pairs, q, inf, tok = row
    return {"requests": n, "pairs": pairs, "queue_ms": (q or 0) * n, "inference_ms": (inf or 0) * n,
            "tokenize_ms": (tok or 0) * n}


def timed(conn, sql, params):
    t0 = time.perf_counter()
    conn.execute(sql, params).fetchall()
    return (time.perf_counter() - t0) * 1000


def main():
    queries = [json.loads(line)["text"] for line in open(DATA / "queries_dev.jsonl")][:QUERIES]
    emb = np.load(DATA / "query_emb_dev.npy")
    params = [{"query": q, "query_emb": "[" + ",".join(f"{x:.6g}" for x in emb[i]) + "]"}
              for i, q in enumerate(queries)]
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("SET pg_rerank.execution = worker")
        for p in params[:2]:  # warm-up: model loaded, caches filled
            conn.execute(bind(HYBRID), p).fetchall()
        first, total = [], []
        before = worker_totals(conn)
        for _ in range(REPEAT):
            for p in params:
                first.append(timed(conn, bind(FIRST_STAGE), p))
                total.append(timed(conn, bind(HYBRID), p))
        after = worker_totals(conn)
    n = after["requests"] - before["requests"]
    assert n == len(total), (n, len(total))
    per = {k: (after[k] - before[k]) / n for k in ["queue_ms", "inference_ms", "tokenize_ms"]}
    split = {
        "first_stage_ms": statistics.mean(first),
        "queue_wait_ms": per["queue_ms"],
        "tokenize_ms": per["tokenize_ms"],
        "inference_ms": per["inference_ms"] - per["tokenize_ms"],
    }
    split["sql_and_round_trip_ms"] = statistics.mean(total) - sum(split.values())
    result = {
        "queries": QUERIES, "repeat": REPEAT, "calls": len(total),
        "pairs_per_call": (after["pairs"] - before["pairs"]) / n,
        "total_mean_ms": statistics.mean(total), "total_median_ms": statistics.median(total),
        "first_stage_median_ms": statistics.median(first), "split_mean_ms": split,
        "split_fraction": {k: v / statistics.mean(total) for k, v in split.items()},
    }
    print(json.dumps(result, indent=1))
    json.dump(result, open(OUT_JSON, "w"), indent=1)
    plot(result)


def plot(result):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = {"first_stage_ms": "first stage (pgvector + full text)", "queue_wait_ms": "queue wait",
              "tokenize_ms": "tokenize", "inference_ms": "inference", "sql_and_round_trip_ms": "SQL + round trip"}
    fig, ax = plt.subplots(figsize=(9, 2.6))
    left = 0.0
    for key, label in labels.items():
        v = result["split_mean_ms"][key]
        ax.barh([0], [v], left=left, label=f"{label}: {v:.1f} ms")
        left += v
    ax.set_yticks([])
    ax.set_xlabel("ms per query (mean)")
    ax.set_title(f"Hybrid query + rerank of {result['pairs_per_call']:.0f} candidates, MiniLM-L6 fp32, worker, 2 threads")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT_PNG, dpi=110)


if __name__ == "__main__":
    main()
