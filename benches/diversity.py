"""Diversity against relevance on the 50 reference dev queries (issue 19): for each lambda
of MMR, the near-duplicate pairs (cosine >= 0.9 of doc_emb.npy) in the top 10 and the mean
NDCG@10 (binary qrels), and the same for the first-stage order and for collapsing
near-duplicates at 0.9 without MMR.

    .venv/bin/python benches/diversity.py ../shared [--json benches/results/diversity.json]

Relevance is the reference logit of minilm-debian (dev_reference.tsv: what rerank() gives),
similarity the cosine of the documents' all-MiniLM-L6-v2 embeddings (doc_emb.npy, row i =
line i of corpus.jsonl). mmr() below is the Python reference of the engine's
diversity::mmr (tests/integration/test_diversity.py checks that diversify() in SQL picks
the same documents); no model runs and no database is needed.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import devset  # noqa: E402

LAMBDAS = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
DUPLICATE = 0.9
K = 10


def _sum(x):
    """Sequential float64 sum, in the engine's order (cumsum adds one by one; a @ b may not)."""
    return float(np.cumsum(x)[-1]) if len(x) else 0.0


def cosine(a, b):
    """The engine's cosine: float64 arithmetic on float32 components, rounded to float32."""
    a, b = np.asarray(a, np.float32).astype(np.float64), np.asarray(b, np.float32).astype(np.float64)
    na, nb = _sum(a * a), _sum(b * b)
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.float32(_sum(a * b) / (math.sqrt(na) * math.sqrt(nb))))


def mmr(scores, vectors, k, lam, threshold=None):
    """Indices picked by MMR, in order: lam * min-max normalised score - (1 - lam) * the
    largest cosine to a picked one; ties to the higher score, then the earlier index; a
    candidate at or above `threshold` cosine to a picked one is dropped."""
    # The engine's arithmetic: float32 inputs (scores, lambda, threshold), float64 sums.
    scores = [float(np.float32(s)) for s in scores]
    lam = float(np.float32(lam))
    threshold = None if threshold is None else float(np.float32(threshold))
    n = len(scores)
    lo, hi = min(scores), max(scores)
    rel = [(s - lo) / (hi - lo) if hi > lo else 1.0 for s in scores]
    max_sim = [None] * n
    left = [True] * n
    picked = []
    while len(picked) < k:
        best = None
        for i in range(n):
            if not left[i]:
                continue
            v = lam * rel[i] - (1.0 - lam) * (max_sim[i] if max_sim[i] is not None else 0.0)
            if best is None or v > best[1] or (v == best[1] and scores[i] > scores[best[0]]):
                best = (i, v)
        if best is None:
            break
        p = best[0]
        left[p] = False
        picked.append(p)
        for i in range(n):
            if left[i]:
                s = cosine(vectors[i], vectors[p])
                max_sim[i] = s if max_sim[i] is None else max(max_sim[i], s)
                if threshold is not None and s >= threshold:
                    left[i] = False
    return picked


def duplicate_pairs(vectors, threshold=DUPLICATE):
    return sum(1 for i in range(len(vectors)) for j in range(i + 1, len(vectors))
               if cosine(vectors[i], vectors[j]) >= threshold)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shared", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    data = args.shared / "data" / "debian"
    qrels = devset.qrels(data)
    ref = devset.reference(data)
    with open(data / "corpus.jsonl") as f:
        row = {json.loads(line)["id"]: i for i, line in enumerate(f)}
    emb = np.load(data / "doc_emb.npy").astype(np.float32)

    def measure(name, pick, raw):
        pairs, ndcg, lengths = [], [], []
        for q, cands in ref.items():
            ids = [d for _, d, _ in cands]
            vecs = [emb[row[d]] for d in ids]
            logits = np.array([s for _, _, s in cands], np.float32)
            scores = logits if raw else np.float32(1) / (np.float32(1) + np.exp(-logits))
            top = pick(list(scores), vecs)[:K]
            pairs.append(duplicate_pairs([vecs[i] for i in top]))
            binary = {d: 1 for d, g in qrels.get(q, {}).items() if g > 0}
            ndcg.append(devset.ndcg10([ids[i] for i in top], binary))
            lengths.append(len(top))
        return {"run": name, "scores": "logit" if raw else "sigmoid", "queries": len(ref), "duplicate_pairs": int(sum(pairs)),
                "queries_with_duplicates": sum(1 for p in pairs if p), "ndcg10": float(np.mean(ndcg)),
                "mean_length": float(np.mean(lengths))}

    out = {}
    # rerank() and rerank_topk_scores() give the logit's sigmoid unless raw => true.
    for raw in (False, True):
        kind = "logit" if raw else "sigmoid"
        rows = [measure("first stage", lambda s, v: list(range(len(s))), raw)]
        for lam in LAMBDAS:
            rows.append(measure(f"mmr lambda={lam}", lambda s, v, lam=lam: mmr(s, v, K, lam), raw))
        rows.append(measure(f"collapse >= {DUPLICATE} (lambda=1)", lambda s, v: mmr(s, v, K, 1.0, DUPLICATE), raw))
        base = rows[1]["ndcg10"]
        ok = [r for r in rows[1:1 + len(LAMBDAS)] if base - r["ndcg10"] <= 0.01]
        default = min(ok, key=lambda r: (r["duplicate_pairs"], -r["ndcg10"]))
        print(f"scores: {kind}")
        print(f"{'run':32} {'dup pairs':>9} {'queries':>7} {'NDCG@10':>8} {'vs rerank':>9}")
        for r in rows:
            print(f"{r['run']:32} {r['duplicate_pairs']:9d} {r['queries_with_duplicates']:7d} "
                  f"{r['ndcg10']:8.4f} {r['ndcg10'] - base:+9.4f}")
        print(f"default: {default['run']} (most diverse within 0.01 NDCG@10 of lambda=1)\n")
        out[kind] = {"rows": rows, "default": default["run"]}
    # One default for both kinds of score: the smallest lambda (the most diverse) within
    # 0.01 NDCG@10 of lambda = 1 for each.
    within = [lam for lam in LAMBDAS if all(
        out[kind]["rows"][1]["ndcg10"] - next(r for r in out[kind]["rows"] if r["run"] == f"mmr lambda={lam}")["ndcg10"]
        <= 0.01 for kind in out)]
    out["default_lambda"] = min(within)
    print(f"default for both: lambda={out['default_lambda']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
