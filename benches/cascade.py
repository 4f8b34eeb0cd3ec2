"""Cascades (issue 13): rerank_cascade() with the int8 model on all 100 candidates and the
fp32 model on the best K, against the fp32 model alone and the int8 model alone, on the
50 reference dev queries (dev_reference.tsv: 100 first-stage candidates each).

Every system runs in SQL through the worker, as deployed (the bench cluster preloads
pg_rerank). For each query the systems run in a rotating order, so a slow minute of a
shared machine falls on all of them; the figures are NDCG@10 (qrels_dev.tsv), candidates
per second (100 per call / call time), and the speed-up over the fp32 model alone, all
from the same run.

    python benches/cascade.py SHARED DSN OUT_JSON OUT_PNG [queries] [rounds (1)]
"""
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import psycopg

import devset

SHARED, DSN, OUT_JSON, OUT_PNG = sys.argv[1:5]
QUERIES = int(sys.argv[5]) if len(sys.argv) > 5 else 50
ROUNDS = int(sys.argv[6]) if len(sys.argv) > 6 else 1
DATA = Path(SHARED) / "data" / "debian"
STRONG, FAST = "minilm-debian", "minilm-debian:int8"
CUTS = (10, 20, 30, 50)

SYSTEMS = {"fp32 alone": ("SELECT idx FROM rerank(%s, %s::text[], %s, raw => true)", (STRONG,)),
           "int8 alone": ("SELECT idx FROM rerank(%s, %s::text[], %s, raw => true)", (FAST,))}
for k in CUTS:
    SYSTEMS[f"int8 100 -> fp32 {k}"] = (
        "SELECT idx FROM rerank_cascade(%s, %s::text[], %s, %s, %s, raw => true)", (FAST, k, STRONG))


def load():
    cands = devset.reference(DATA)
    texts = devset.texts(DATA, (d for c in cands.values() for _, d, _ in c))
    queries, qrels = devset.queries(DATA), devset.qrels(DATA)
    qids = sorted(cands)[:QUERIES]
    return [(queries[q], [d for _, d, _ in cands[q]], qrels.get(q, {})) for q in qids], texts


def main():
    items, texts = load()
    names = list(SYSTEMS)
    seconds = {n: 0.0 for n in names}
    ndcg = {n: [] for n in names}
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("SET pg_rerank.long_documents = truncate")
        for n in names:  # warm-up: load both models in the worker
            sql, extra = SYSTEMS[n]
            conn.execute(sql, (items[0][0], [texts[d] for d in items[0][1]], *extra)).fetchall()
        for r in range(ROUNDS):
            for i, (q, ids, rel) in enumerate(items):
                docs = [texts[d] for d in ids]
                shift = (i + r) % len(names)
                for n in names[shift:] + names[:shift]:
                    sql, extra = SYSTEMS[n]
                    t0 = time.perf_counter()
                    rows = conn.execute(sql, (q, docs, *extra)).fetchall()
                    seconds[n] += time.perf_counter() - t0
                    if r == 0:
                        ndcg[n].append(devset.ndcg10([ids[idx - 1] for (idx,) in rows], rel))
    calls = ROUNDS * len(items)
    out = {}
    for n in names:
        cut = int(n.rsplit(" ", 1)[1]) if "->" in n else None
        out[n] = {
            "ndcg10": sum(ndcg[n]) / len(ndcg[n]),
            "candidates_per_s": 100 * calls / seconds[n],
            "model_pairs_per_call": 100 + (cut or 0),
            "speedup_vs_fp32": seconds["fp32 alone"] / seconds[n],
        }
        print(f"{n:22s} NDCG@10 {out[n]['ndcg10']:.4f}  {out[n]['candidates_per_s']:6.1f} candidates/s"
              f"  {out[n]['speedup_vs_fp32']:.2f}x fp32 alone")
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "queries": len(items), "rounds": ROUNDS, "candidates": 100, "cpus": os.cpu_count(),
            "machine": platform.machine(), "execution": "worker (preloaded), default settings",
            "long_documents": "truncate"}
    Path(OUT_JSON).write_text(json.dumps({"meta": meta, "systems": out}, indent=1) + "\n")
    plot(out)


def plot(out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    placed = []
    for n, v in out.items():
        x, y = v["candidates_per_s"], v["ndcg10"]
        ax.scatter(x, y, s=40, color="tab:blue" if "->" in n else "tab:gray")
        # Points on top of each other (fp32 alone and a cut that keeps its order) get
        # their labels one under the other.
        below = sum(abs(x - px) < 1.5 and abs(y - py) < 0.0005 for px, py in placed)
        placed.append((x, y))
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(6, 4 - 11 * below), fontsize=8)
    ax.set_xlabel("candidates reranked per second (100 per call, worker, 2 cores)")
    ax.set_ylabel("NDCG@10, 50 dev queries")
    ax.set_title("Cascade: int8 on 100 candidates, fp32 on the best K")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT_PNG, dpi=120)


if os.environ.get("PG_RERANK_BENCH_PLOT_ONLY"):  # redraw from OUT_JSON
    plot(json.loads(Path(OUT_JSON).read_text())["systems"])
else:
    main()
