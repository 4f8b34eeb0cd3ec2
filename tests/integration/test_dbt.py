"""The example dbt project (examples/dbt) builds against the test cluster: its seed, the
full-text candidates, every candidate scored in batches by rerank_pairs(), and its data
tests. Then the reranked table is checked against the relevance judgements."""
import math
import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROJECT = REPO / "examples" / "dbt"
DBT = Path(os.environ.get("PG_RERANK_DBT", REPO / ".venv-dbt" / "bin" / "dbt"))


def ndcg10(ranked, relevant):
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in relevant)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(10, len(relevant))))
    return dcg / idcg if idcg else 0.0


def test_dbt_build(conn, qrels, tmp_path):
    env = dict(os.environ, PGDATABASE=conn.info.dbname, DBT_SCHEMA="rerank_example",
               DBT_SEND_ANONYMOUS_USAGE_STATS="false")
    out = subprocess.run(
        [str(DBT), "build", "--project-dir", str(PROJECT), "--profiles-dir", str(PROJECT),
         "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs"), "--no-version-check"],
        env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    done = re.search(r"Done\. PASS=(\d+) WARN=(\d+) ERROR=(\d+) SKIP=(\d+).*TOTAL=(\d+)", out.stdout)
    assert done, out.stdout[-3000:]
    passed, warn, error, skip, total = map(int, done.groups())
    # 1 seed, 2 models, 2 + 2 + 4 column tests, 3 singular tests.
    assert (passed, warn, error, skip, total) == (14, 0, 0, 0, 14), out.stdout[-3000:]

    candidates, queries = conn.execute(
        "SELECT count(*), count(DISTINCT query_id) FROM rerank_example.candidates").fetchone()
    assert queries == 12 and candidates > 200
    scored = conn.execute("SELECT count(*) FROM rerank_example.reranked").fetchone()[0]
    assert scored == candidates

    rows = conn.execute(
        "SELECT query_id, doc_id, fts_rank, rerank_rank FROM rerank_example.reranked").fetchall()
    by_query = {}
    for q, d, fts, rr in rows:
        by_query.setdefault(q, []).append((d, fts, rr))
    before, after = [], []
    for q, cands in by_query.items():
        rel = qrels.get(q, {})
        before.append(ndcg10([d for d, fts, _ in sorted(cands, key=lambda c: c[1])], rel))
        after.append(ndcg10([d for d, _, rr in sorted(cands, key=lambda c: c[2])], rel))
    b, a = sum(before) / len(before), sum(after) / len(after)
    print(f"dbt example: {scored} pairs, NDCG@10 full-text {b:.4f}, reranked {a:.4f}")
    # The cross-encoder's order is a real improvement over the full-text order.
    assert a > b + 0.05, (b, a)
