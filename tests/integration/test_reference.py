"""Reranking in SQL reproduces the Python reference: every logit of the 50 fixed
candidate lists within 1e-4, and the dev-set NDCG@10 of dev_reference.txt (with
pg_rerank.long_documents = truncate, as the reference reads documents)."""
import math
import re

from conftest import DATA

RERANK_SQL = """
    SELECT r.idx, r.score
    FROM rerank(%s, (SELECT array_agg(p.body ORDER BY c.ord)
                     FROM unnest(%s::text[]) WITH ORDINALITY c(id, ord)
                     JOIN packages p ON p.id = c.id), raw => true) r
"""


def ndcg10(ranked, rel):
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sorted(rel.values(), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def expected_figures():
    text = (DATA / "dev_reference.txt").read_text()
    first, reranked = re.search(r"first-stage order ([0-9]+\.[0-9]+), reranked ([0-9]+\.[0-9]+)", text).groups()
    return float(first), float(reranked)


def test_logits_and_ndcg_match_reference(conn, queries, reference, qrels):
    # The reference reads a document up to the model's window, as truncate does.
    conn.execute("SET pg_rerank.long_documents = truncate")
    worst = 0.0
    before, after = [], []
    for qid, cands in reference.items():
        ids = [d for d, _, _ in cands]
        rows = conn.execute(RERANK_SQL, (queries[qid], ids)).fetchall()
        assert len(rows) == len(cands) == 100
        got = {idx: score for idx, score in rows}
        for i, (did, _, want) in enumerate(cands, start=1):
            worst = max(worst, abs(got[i] - want))
            assert abs(got[i] - want) < 1e-4, f"{qid}/{did}: {got[i]} vs reference {want}"
        # Rows come best first; ties broken by first-stage rank, as in the reference.
        order = [idx for idx, _ in rows]
        assert order == sorted(order, key=lambda i: (-got[i], i))
        before.append(ndcg10(ids, qrels.get(qid, {})))
        after.append(ndcg10([ids[i - 1] for i in order], qrels.get(qid, {})))
    first_ref, reranked_ref = expected_figures()
    first, reranked = sum(before) / len(before), sum(after) / len(after)
    print(f"\n{len(reference)} queries x 100 candidates: max |logit - reference| = {worst:.2e}; "
          f"NDCG@10 first stage {first:.4f} (reference {first_ref}), reranked {reranked:.4f} (reference {reranked_ref})")
    assert len(reference) == 50
    assert abs(first - first_ref) < 0.002
    assert abs(reranked - reranked_ref) < 0.002
    assert reranked > first


def test_rerank_topk_agrees_with_rerank(conn, queries, reference):
    qid, cands = next(iter(reference.items()))
    ids = [d for d, _, _ in cands]
    topk_ids, topk_scores = conn.execute(
        "SELECT rerank_topk(%(q)s, p.id, p.body, 10), rerank_topk_scores(%(q)s, p.id, p.body, 10) "
        "FROM packages p WHERE p.id = ANY(%(ids)s)",
        {"q": queries[qid], "ids": ids},
    ).fetchone()
    rows = conn.execute(RERANK_SQL + " LIMIT 10", (queries[qid], ids)).fetchall()
    assert topk_ids == [ids[idx - 1] for idx, _ in rows]
    logits = [s for _, s in rows]
    assert all(abs(p - 1 / (1 + math.exp(-l))) < 1e-5 for p, l in zip(topk_scores, logits))
