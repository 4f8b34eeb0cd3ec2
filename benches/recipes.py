"""Candidate recipes for reranking (issue 12): which first stage gives the best NDCG@10
after the cross-encoder (minilm-debian) for its cost in pairs per query, on the dev
queries. Every recipe runs in SQL as the product would: the query is embedded in the
database (embed(q, 'all-minilm-l6-v2')::vector), pgvector's HNSW index and full-text GIN
search return their top k, rrf() fuses, and rerank() scores the candidates' bodies.

Recipes (k = the depth of each list):
  rrf100 / rrf50     dense top 100 + full text top 100 (websearch_to_tsquery, ts_rank_cd),
                     fused by rrf(), cut at 100 (the demo's recipe before issue 12) or 50
  union50 / union100 dense top k + full text top k, no cut: up to 2k candidates, the
                     cross-encoder fuses (first-stage order: rrf() of the two lists)
  dense50 / dense100 dense only
  fts_and100         full text only, websearch_to_tsquery (AND of the terms; " - word"
                     becomes NOT word, "(a or b)" an OR)
  fts_or100          full text only, an OR of the query's lexemes (to_tsvector)
  fts_plain100       full text only, plainto_tsquery (AND, no operators): a diagnostic
                     that separates AND from websearch's operators
  rrf_or100 / union_or100
                     as rrf100 / union100 with the OR full-text list

Per recipe: NDCG@10 of the first-stage order and after reranking, recall (the fraction of
queries with a relevant document among the candidates), pairs per query, and the wall
time of the first stage (every query) and of the rerank (the first TIMED queries).

Reranking: one rerank() per query scores the union of all recipes' candidates, and each
recipe's reranked order is its candidates sorted by that score (ties: first-stage rank);
the cross-encoder scores each pair alone, so the orders are those of a rerank() of each
recipe's own candidates, at a third of the pairs. On the first TIMED queries each
recipe's own rerank() is also run and timed, and its top 10 checked against the shared
scores (`check` in the output).

    python benches/recipes.py SHARED DSN OUT_JSON OUT_PNG [queries] [timed]
"""
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

import devset
from devset import ndcg10

SHARED, DSN, OUT_JSON, OUT_PNG = sys.argv[1:5]
QUERIES = int(sys.argv[5]) if len(sys.argv) > 5 else 100
TIMED = int(sys.argv[6]) if len(sys.argv) > 6 else 10
DATA = Path(SHARED) / "data" / "debian"
REPO = Path(__file__).resolve().parents[1]
EF_SEARCH = 200  # >= the deepest dense list

# The query vector in a scalar subquery: computed once (an InitPlan) and still an HNSW
# index scan. Written inline, as in examples/hybrid_search.sql, the select list's embed()
# runs again for every row returned (STABLE, not cached): DEMO_DENSE, timed beside it.
DENSE = """(SELECT coalesce(array_agg(id ORDER BY dist), '{{}}') FROM (
    SELECT id, emb <=> (SELECT embed(%(q)s, 'all-minilm-l6-v2')::vector) AS dist FROM packages
    ORDER BY emb <=> (SELECT embed(%(q)s, 'all-minilm-l6-v2')::vector) LIMIT {k}) d)"""
DEMO_DENSE = """SELECT array_agg(id ORDER BY dist) FROM (
    SELECT id, emb <=> embed(%(q)s, 'all-minilm-l6-v2')::vector AS dist FROM packages
    ORDER BY emb <=> embed(%(q)s, 'all-minilm-l6-v2')::vector LIMIT 100) d"""
# Full text top k for a tsquery expression over %(q)s; no match gives an empty list.
SPARSE = """(SELECT coalesce(array_agg(id ORDER BY rank DESC, id), '{{}}') FROM (
    SELECT id, ts_rank_cd(tsv, q) AS rank FROM packages, {tsq} AS t(q)
    WHERE tsv @@ q ORDER BY rank DESC, id LIMIT {k}) s)"""
WEB = "websearch_to_tsquery('english', %(q)s)"
PLAIN = "plainto_tsquery('english', %(q)s)"
# OR of the query's lexemes, as to_tsvector stems them (no NOT, no phrase operators).
OR = "(SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery FROM unnest(to_tsvector('english', %(q)s)))"


def fused(k_dense, k_sparse, cut=None, tsq=WEB):
    where = f"WHERE f.ord <= {cut}" if cut else ""
    return f"""SELECT coalesce(array_agg(f.id ORDER BY f.ord), '{{}}')
    FROM rrf({DENSE.format(k=k_dense)}, {SPARSE.format(tsq=tsq, k=k_sparse)})
         WITH ORDINALITY AS f(id, score, ord) {where}"""


RECIPES = {
    "rrf100": ("RRF top 100", fused(100, 100, 100)),
    "rrf50": ("RRF top 50", fused(100, 100, 50)),
    "union50": ("union dense 50 + FTS 50", fused(50, 50)),
    "union100": ("union dense 100 + FTS 100", fused(100, 100)),
    "dense50": ("dense top 50", "SELECT " + DENSE.format(k=50)),
    "dense100": ("dense top 100", "SELECT " + DENSE.format(k=100)),
    "fts_and100": ("FTS AND (websearch) top 100", "SELECT " + SPARSE.format(tsq=WEB, k=100)),
    "fts_or100": ("FTS OR top 100", "SELECT " + SPARSE.format(tsq=OR, k=100)),
    "fts_plain100": ("FTS AND (plainto) top 100", "SELECT " + SPARSE.format(tsq=PLAIN, k=100)),
    "rrf_or100": ("RRF top 100, FTS OR", fused(100, 100, 100, OR)),
    "union_or100": ("union dense 100 + FTS OR 100", fused(100, 100, None, OR)),
}

RERANK = """SELECT r.idx, r.score FROM rerank(%(q)s, (
    SELECT array_agg(p.body ORDER BY c.ord) FROM unnest(%(ids)s::text[]) WITH ORDINALITY c(id, ord)
    JOIN packages p ON p.id = c.id), raw => true) r"""


def timed(conn, sql, params):
    t0 = time.perf_counter()
    rows = conn.execute(sql, params).fetchall()
    return rows, (time.perf_counter() - t0) * 1000


def rerank(conn, q, ids):
    """Logits by id, and the wall time of the rerank() statement."""
    if not ids:
        return {}, 0.0
    rows, ms = timed(conn, RERANK, {"q": q, "ids": ids})
    assert len(rows) == len(ids), (len(rows), len(ids))
    return {ids[i - 1]: s for i, s in rows}, ms


def reranked(ids, scores):
    rank = {d: i for i, d in enumerate(ids)}
    return sorted(ids, key=lambda d: (-scores[d], rank[d]))


def machine(conn):
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), None)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    ext = dict(conn.execute("SELECT extname, extversion FROM pg_extension").fetchall())
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(), "cpu": cpu, "platform": platform.platform(),
        "postgres": conn.execute("SHOW server_version").fetchone()[0],
        "pgvector": ext.get("vector"), "pg_rerank": ext.get("pg_rerank"),
        "commit": commit, "working_tree_modified": dirty,
        "settings": dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name LIKE 'pg_rerank.%' OR name = 'hnsw.ef_search'").fetchall()),
    }


def bootstrap_diff(a, b, rounds=2000, seed=0):
    """Mean paired difference a - b and a 95% bootstrap interval over queries."""
    d = np.asarray(a) - np.asarray(b)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (rounds, len(d)))].mean(axis=1)
    return float(d.mean()), [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def main():
    queries = [json.loads(line) for line in open(DATA / "queries_dev.jsonl")][:QUERIES]
    qrels = devset.qrels(DATA)
    per = {name: {"first": [], "after": [], "hit": [], "recall": [], "pairs": [], "first_ms": []} for name in RECIPES}
    rerank_ms = {name: [] for name in RECIPES}
    check = {"queries": 0, "top10_equal": 0, "max_abs_logit_diff": 0.0}
    union_pairs, union_ms = [], []
    demo_dense_ms, dense_ms = [], []
    load_before = os.getloadavg()
    t_start = time.time()
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("SET pg_rerank.execution = worker")
        conn.execute(f"SET hnsw.ef_search = {EF_SEARCH}")
        info = machine(conn)
        for q in [x["text"] for x in queries[:2]]:  # warm-up: both models loaded, caches filled
            for _, sql in RECIPES.values():
                conn.execute(sql, {"q": q}).fetchall()
            conn.execute(RERANK, {"q": q, "ids": ["d00040"]}).fetchall()
        for n, query in enumerate(queries):
            q, rel = query["text"], qrels.get(query["id"], {})
            cands = {}
            for name, (_, sql) in RECIPES.items():
                rows, ms = timed(conn, sql, {"q": q})
                cands[name] = list(rows[0][0])
                per[name]["first_ms"].append(ms)
            union = sorted({d for ids in cands.values() for d in ids})
            scores, ms = rerank(conn, q, union)
            union_pairs.append(len(union))
            union_ms.append(ms)
            for name, ids in cands.items():
                r = per[name]
                assert len(ids) == len(set(ids)), name
                r["first"].append(ndcg10(ids, rel))
                r["after"].append(ndcg10(reranked(ids, scores), rel))
                found = sum(1 for d in ids if d in rel)
                r["hit"].append(1.0 if found else 0.0)
                r["recall"].append(found / len(rel) if rel else 0.0)
                r["pairs"].append(len(ids))
            if n < TIMED:  # each recipe's own rerank(), timed and checked against the shared scores
                check["queries"] += 1
                rows, ms = timed(conn, DEMO_DENSE, {"q": q})
                assert list(rows[0][0]) == cands["dense100"]
                demo_dense_ms.append(ms)
                dense_ms.append(per["dense100"]["first_ms"][-1])
                for name, ids in cands.items():
                    own, ms = rerank(conn, q, ids)
                    rerank_ms[name].append(ms)
                    if ids:
                        check["max_abs_logit_diff"] = max(check["max_abs_logit_diff"],
                                                          max(abs(own[d] - scores[d]) for d in ids))
                    check["top10_equal"] += reranked(ids, own)[:10] == reranked(ids, scores)[:10]
            print(f"{n + 1}/{len(queries)} {len(union)} pairs {union_ms[-1]:.0f} ms, {time.time() - t_start:.0f} s",
                  file=sys.stderr, flush=True)
    check["recipe_queries"] = check["queries"] * len(RECIPES)
    base = per["rrf100"]["after"]
    recipes = {}
    for name, (label, sql) in RECIPES.items():
        r = per[name]
        fs, rr = statistics.mean(r["first_ms"]), statistics.mean(rerank_ms[name]) if rerank_ms[name] else None
        diff, ci = bootstrap_diff(r["after"], base)
        recipes[name] = {
            "label": label,
            "ndcg10_first_stage": statistics.mean(r["first"]),
            "ndcg10_reranked": statistics.mean(r["after"]),
            "ndcg10_reranked_stderr": statistics.stdev(r["after"]) / math.sqrt(len(r["after"])) if len(r["after"]) > 1 else 0.0,
            "reranked_minus_rrf100": diff, "reranked_minus_rrf100_ci95": ci,
            "recall_any": statistics.mean(r["hit"]), "recall": statistics.mean(r["recall"]),
            "pairs_mean": statistics.mean(r["pairs"]), "pairs_max": max(r["pairs"]),
            "queries_without_candidates": sum(1 for p in r["pairs"] if p == 0),
            "first_stage_ms_mean": fs, "first_stage_ms_median": statistics.median(r["first_ms"]),
            "rerank_ms_mean": rr, "total_ms_mean": fs + rr if rr is not None else None,
            "sql": sql,
        }
    result = {
        "machine": info, "queries": len(queries), "timed_queries": check["queries"],
        "model": "minilm-debian", "bi_encoder": "all-minilm-l6-v2", "hnsw_ef_search": EF_SEARCH,
        "rrf_k": 60, "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "seconds": time.time() - t_start,
        "union_rerank": {"pairs_mean": statistics.mean(union_pairs), "ms_mean": statistics.mean(union_ms),
                         "ms_per_pair": sum(union_ms) / sum(union_pairs)},
        "check": check,
        "dense100_ms_embed_once_vs_per_row": {
            "queries": len(dense_ms), "embed_once_ms_mean": statistics.mean(dense_ms),
            "embed_per_row_ms_mean": statistics.mean(demo_dense_ms),
            "per_row_sql": DEMO_DENSE},
        "recipes": recipes,
    }
    for name, r in recipes.items():
        print(f"{name:13s} first {r['ndcg10_first_stage']:.4f} reranked {r['ndcg10_reranked']:.4f} "
              f"recall {r['recall_any']:.3f} pairs {r['pairs_mean']:6.1f} first {r['first_stage_ms_mean']:6.1f} ms "
              f"rerank {r['rerank_ms_mean'] or 0:7.0f} ms")
    print(json.dumps({k: v for k, v in result.items() if k != "recipes"}, indent=1))
    json.dump(result, open(OUT_JSON, "w"), indent=1)
    plot(result)


def plot(result):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recipes = result["recipes"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, r in recipes.items():
        x, y = r["pairs_mean"], r["ndcg10_reranked"]
        color = "C4" if name.startswith(("rrf_or", "union_or")) else "C0" if name.startswith(("rrf", "union")) else "C1" if name.startswith("dense") else "C2"
        ax.plot([x, x], [r["ndcg10_first_stage"], y], color=color, lw=0.8, alpha=0.4)
        ax.plot([x], [r["ndcg10_first_stage"]], "o", mfc="none", color=color, alpha=0.5, ms=5)
        ax.errorbar([x], [y], yerr=[r["ndcg10_reranked_stderr"]], fmt="o", color=color, capsize=3)
    # Each point labelled beside it: to the left where another column of points is close
    # on the right; labels of one column pushed apart vertically.
    xs = [r["pairs_mean"] for r in recipes.values()]
    placed = []
    for name, r in sorted(recipes.items(), key=lambda kv: -kv[1]["ndcg10_reranked"]):
        x, y = r["pairs_mean"], r["ndcg10_reranked"]
        left = x > 25 and any(x + 20 < o < x + 80 for o in xs)
        ty = y
        for px, side, py in placed:
            if side == left and abs(px - x) < 20 and ty > py - 0.02:
                ty = py - 0.02
        placed.append((x, left, ty))
        ax.annotate(f"{r['label']}: {y:.3f}", (x, y), xytext=(x - 8 if left else x + 8, ty), fontsize=7,
                    va="center", ha="right" if left else "left",
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.6"})
    ax.plot([], [], "o", color="0.3", label="after reranking (± 1 s.e.)")
    ax.plot([], [], "o", mfc="none", color="0.3", alpha=0.5, label="first-stage order")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("pairs reranked per query (mean)")
    ax.set_ylabel("NDCG@10")
    ax.set_xlim(-25, max(xs) * 1.45)
    ax.set_title(f"Candidate recipes, minilm-debian cross-encoder, {result['queries']} Debian dev queries")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT_PNG, dpi=110)


if __name__ == "__main__":
    main()
