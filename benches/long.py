"""Long-document reranking throughput (issue 12): rerank() in SQL through the worker on
long_dev.jsonl, the 100 first-stage candidates of the reference dev queries each buried
between unrelated corpus documents (150-450 words before, 0-300 after), read in windows
(pg_rerank.long_documents = chunk, the default) and truncated to the model's window
(= truncate), against the same candidates unburied (their corpus text, as in
dev_reference.tsv) read both ways.

The first QUERIES queries of long_dev.jsonl in id order (as tests/integration/test_long.py
takes them), 100 candidates a call, minilm-debian fp32, worker mode with the cluster's
settings, score cache off. For each query the four systems run in a rotating order (so a
slow minute of a shared machine falls on all of them), after one warm-up call each.
Around every call the model's row of pg_rerank_stats is read, so each system's pairs
(model windows), split documents, windows and tokens are the worker's own counts for
that system's calls.

Figures: NDCG@10 (qrels_dev.tsv), documents/s (100 per call / call time), model pairs
per document, pairs/s, tokens per pair and tokens/s (pg_rerank_stats' tokens), windows
per split document, and the ratios of documents/s, pairs/s and tokens/s against the
unburied candidates read truncated (the reference's reading). Beside them, the NDCG@10
of the reference logits of the same queries' unburied candidates (dev_reference.tsv,
ties in first-stage order).

    python benches/long.py SHARED DSN OUT_JSON [queries (20)]
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

SHARED, DSN, OUT_JSON = sys.argv[1:4]
QUERIES = int(sys.argv[4]) if len(sys.argv) > 4 else 20
DATA = Path(SHARED) / "data" / "debian"
MODEL = "minilm-debian"
COUNTERS = ("requests", "pairs", "tokens", "truncated", "split_documents", "windows")
# name: (which texts, pg_rerank.long_documents)
SYSTEMS = {
    "buried, chunk": ("buried", "chunk"),
    "buried, truncate": ("buried", "truncate"),
    "unburied, truncate": ("unburied", "truncate"),
    "unburied, chunk": ("unburied", "chunk"),
}
BASE = "unburied, truncate"


def load():
    """[(query text, [doc id], {buried: [text], unburied: [text]}, qrels)], and the
    reference NDCG@10 of the same queries' unburied candidates."""
    buried = {}
    with open(DATA / "long_dev.jsonl") as f:
        for row in map(json.loads, f):
            buried.setdefault(row["query_id"], []).append((row["first_stage_rank"], row["doc_id"], row["text"]))
    reference = devset.reference(DATA)
    assert len(buried) == 50 and all(len(c) == 100 for c in buried.values())
    qids = sorted(buried)[:QUERIES]
    corpus = devset.texts(DATA, [d for q in qids for _, d, _ in buried[q]])
    queries, qrels = devset.queries(DATA), devset.qrels(DATA)
    items, ref_ndcg = [], 0.0
    for q in qids:
        cands = sorted(buried[q])
        ids = [d for _, d, _ in cands]
        # The same candidates in the same first-stage order as dev_reference.tsv.
        assert ids == [d for _, d, _ in reference[q]], q
        texts = {"buried": [t for _, _, t in cands], "unburied": [corpus[d] for d in ids]}
        items.append((queries[q], ids, texts, qrels.get(q, {})))
        ranked = sorted(reference[q], key=lambda c: (-c[2], c[0]))
        ref_ndcg += devset.ndcg10([d for _, d, _ in ranked], qrels.get(q, {}))
    return items, ref_ndcg / len(qids)


def counters(conn):
    cur = conn.execute(f"SELECT {', '.join(COUNTERS)} FROM pg_rerank_stats WHERE model = %s", (MODEL,))
    row = cur.fetchone()
    return dict(zip(COUNTERS, row)) if row else dict.fromkeys(COUNTERS, 0)


def call(conn, name, q, texts):
    """The call's result rows and its time (the SET before it is not timed)."""
    which, mode = SYSTEMS[name]
    conn.execute(f"SET pg_rerank.long_documents = {mode}")
    t0 = time.perf_counter()
    rows = conn.execute("SELECT idx FROM rerank(%s, %s::text[], %s)", (q, texts[which], MODEL)).fetchall()
    return rows, time.perf_counter() - t0


def main():
    load_start = os.getloadavg()
    items, ref_ndcg = load()
    names = list(SYSTEMS)
    seconds = dict.fromkeys(names, 0.0)
    ndcg = {n: [] for n in names}
    counts = {n: dict.fromkeys(COUNTERS, 0) for n in names}
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("SET pg_rerank.execution = worker")
        # Every call is scored by the model: no score cache (where the build has one).
        if conn.execute("SELECT 1 FROM pg_settings WHERE name = 'pg_rerank.cache'").fetchone():
            conn.execute("SET pg_rerank.cache = off")
        settings = {s: conn.execute(f"SHOW pg_rerank.{s}").fetchone()[0]
                    for s in ("worker_threads", "max_chunks", "chunk_overlap", "max_batch_pairs", "max_batch_tokens")}
        for n in names:  # warm-up: the worker's model loaded, one call of each kind
            call(conn, n, items[0][0], {k: v[:10] for k, v in items[0][2].items()})
        for i, (q, ids, texts, rel) in enumerate(items):
            shift = i % len(names)
            for n in names[shift:] + names[:shift]:
                before = counters(conn)
                rows, took = call(conn, n, q, texts)
                seconds[n] += took
                after = counters(conn)
                for k in COUNTERS:
                    counts[n][k] += after[k] - before[k]
                ndcg[n].append(devset.ndcg10([ids[idx - 1] for (idx,) in rows], rel))
            line = "  ".join(f"{n} {ndcg[n][-1]:.3f}" for n in names)
            print(f"query {i + 1}/{len(items)}: NDCG@10 {line}", flush=True)
    docs = 100 * len(items)
    out = {}
    for n in names:
        c = counts[n]
        # Every document is one pair unless it was split, then one per window.
        assert c["pairs"] - c["windows"] == docs - c["split_documents"], (n, c)
        out[n] = {
            "texts": SYSTEMS[n][0], "long_documents": SYSTEMS[n][1],
            "ndcg10": round(sum(ndcg[n]) / len(ndcg[n]), 4),
            "seconds": round(seconds[n], 1),
            "documents_per_s": round(docs / seconds[n], 2),
            "pairs_per_document": round(c["pairs"] / docs, 3),
            "pairs_per_s": round(c["pairs"] / seconds[n], 2),
            "split_documents": c["split_documents"],
            "windows_per_split_document": round(c["windows"] / c["split_documents"], 2) if c["split_documents"] else None,
            "tokens_per_pair": round(c["tokens"] / c["pairs"], 1),
            "tokens_per_s": round(c["tokens"] / seconds[n], 1),
            "truncated": c["truncated"],
            "worker_requests": c["requests"],
        }
    for n in names:
        out[n]["documents_per_s_vs_unburied_truncate"] = round(seconds[BASE] / seconds[n], 3)
        out[n]["pairs_per_s_vs_unburied_truncate"] = round(out[n]["pairs_per_s"] / out[BASE]["pairs_per_s"], 3)
        out[n]["tokens_per_s_vs_unburied_truncate"] = round(out[n]["tokens_per_s"] / out[BASE]["tokens_per_s"], 3)
        r = out[n]
        print(f"{n:20s} NDCG@10 {r['ndcg10']:.4f}  {r['documents_per_s']:6.2f} documents/s "
              f"({r['documents_per_s_vs_unburied_truncate']:.3f}x)  {r['pairs_per_document']:5.2f} pairs/document  "
              f"{r['pairs_per_s']:6.2f} pairs/s ({r['pairs_per_s_vs_unburied_truncate']:.3f}x)")
    print(f"reference logits of the unburied candidates (dev_reference.tsv): NDCG@10 {ref_ndcg:.4f}")
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "queries": len(items), "candidates": 100, "documents_per_system": docs, "model": MODEL + " (fp32)",
            "execution": "worker (preloaded)", "score_cache": "off", "settings": settings, "cpus": os.cpu_count(),
            "machine": platform.machine(),
            # 1-minute load average at the start and the end (2 cores: above 2, shared).
            "load_average": [round(load_start[0], 2), round(os.getloadavg()[0], 2)], "order": "systems rotate per query; one warm-up call each",
            "unburied_reference_logits_ndcg10": round(ref_ndcg, 4),
            "ratios_against": BASE}
    Path(OUT_JSON).write_text(json.dumps({"meta": meta, "systems": out}, indent=1) + "\n")


if __name__ == "__main__":
    main()
