"""The demo's hybrid query, one statement from query text to reranked rows: embedded in
SQL, pgvector HNSW + full-text GIN, fused with rrf(), top 100 reranked."""
from pathlib import Path

SQL = (Path(__file__).resolve().parents[2] / "examples" / "hybrid_search.sql").read_text()


def as_psycopg(sql):
    # The example is written for psql variables; bind them as parameters here.
    return sql.replace(":'query'", "%(query)s")


def test_hybrid_query_finds_the_relevant_package(conn, queries, qrels):
    hits = 0
    checked = 0
    for qid in list(queries)[:20]:
        rows = conn.execute(as_psycopg(SQL), {"query": queries[qid]}).fetchall()
        assert 1 <= len(rows) <= 10
        ranks = [r[0] for r in rows]
        scores = [float(r[2]) for r in rows]
        assert ranks == list(range(1, len(rows) + 1))
        assert scores == sorted(scores, reverse=True)
        checked += 1
        hits += any(r[1] in qrels.get(qid, {}) for r in rows)
    # The fine-tuned cross-encoder puts the relevant package in the top 10 for most queries.
    assert hits >= checked * 0.6, f"{hits}/{checked}"


def test_indexes_are_used(conn):
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + as_psycopg(SQL), {"query": "chess engine"}))
    assert "packages_emb_hnsw" in plan and "packages_tsv_gin" in plan, plan
    conn.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN SELECT id FROM packages WHERE tsv @@ websearch_to_tsquery('english', 'chess engine')"))
    assert "packages_tsv_gin" in plan
    assert conn.execute("SELECT count(*) FROM packages").fetchone()[0] == 58018
