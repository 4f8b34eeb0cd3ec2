"""Hybrid search reranked in PostgreSQL, from Python (psycopg 3).

    python hybrid_search.py "host=localhost dbname=mydb" "tool to compress files" [-k 10] [--arrays]

The query text is embedded in the database (embed()), pgvector's HNSW index and full-text
search each return their top 100, rrf() fuses the two lists and a cross-encoder reranks the
fused top 100. Only the query text travels to the server; the rows come back joined to the
table, best first.

Two ways to call the reranker, same results:
  default   one statement, rerank_topk() over the candidate subquery (one round trip);
  --arrays  the application holds the candidates (ids and texts, here fetched by the same
            hybrid query without reranking, in practice from any search engine) and sends
            them as two arrays to rerank(query, docs[]); rows are joined back by position.

Table layout (see scripts/load_corpus.py): packages(id text, body text, packages text[],
emb vector(384), tsv tsvector). Set hnsw.ef_search to 100 or more for 100 dense candidates.
"""
import argparse
import sys

import psycopg

# The bi-encoder that embedded the table's `emb` column: the query must use the same one.
EMBED_MODEL = "all-minilm-l6-v2"

# The fused candidates: (id, body) of the best 100 by reciprocal rank fusion of the dense
# (pgvector) and sparse (full text, any of the query's words) top 100. %(query)s is bound
# once as a parameter; the query vector is a scalar subquery, computed once.
CANDIDATES = """
WITH q AS (
    SELECT embed(%(query)s::text, %(embed_model)s)::vector AS v,
           (SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery
            FROM unnest(to_tsvector('english', %(query)s::text))) AS words
), dense AS (
    SELECT array_agg(id ORDER BY dist) AS ids
    FROM (SELECT id, emb <=> (SELECT v FROM q) AS dist
          FROM packages
          ORDER BY emb <=> (SELECT v FROM q)
          LIMIT 100) d
), sparse AS (
    SELECT array_agg(id ORDER BY rank DESC, id) AS ids
    FROM (SELECT id, ts_rank_cd(tsv, (SELECT words FROM q)) AS rank
          FROM packages
          WHERE tsv @@ (SELECT words FROM q)
          ORDER BY rank DESC, id
          LIMIT 100) s
)
SELECT p.id, p.body
FROM dense, sparse, rrf(dense.ids, sparse.ids) f
JOIN packages p ON p.id = f.id
ORDER BY f.score DESC
LIMIT 100
"""

# Default: one statement. rerank_topk and rerank_topk_scores share one transition state,
# so the model scores each candidate once; the ids come back joined to the table.
RERANKED = f"""
WITH candidates AS ({CANDIDATES})
SELECT r.rank, p.id, r.score, p.packages, p.body
FROM (SELECT rerank_topk(%(query)s::text, id, body, %(k)s) AS ids,
             rerank_topk_scores(%(query)s::text, id, body, %(k)s) AS scores
      FROM candidates) t,
     unnest(t.ids, t.scores) WITH ORDINALITY AS r(id, score, rank)
JOIN packages p ON p.id = r.id
ORDER BY r.rank
"""

# --arrays: the candidates are sent as arrays. rerank() returns the 1-based position of
# each document in docs (idx) with its score, best first; the ids array, unnested with its
# positions, joins each position back to its row.
RERANK_ARRAYS = """
SELECT row_number() OVER (ORDER BY r.score DESC, r.idx) AS rank, p.id, r.score, p.packages, p.body
FROM rerank(%(query)s::text, %(docs)s::text[], top_n => %(k)s) r
JOIN unnest(%(ids)s::text[]) WITH ORDINALITY AS c(id, idx) ON c.idx = r.idx
JOIN packages p ON p.id = c.id
ORDER BY rank
"""


def search(conn, query, k=10):
    """The top k as (rank, id, score, packages, body), in one statement."""
    return conn.execute(RERANKED, {"query": query, "embed_model": EMBED_MODEL, "k": k}).fetchall()


def rerank_candidates(conn, query, ids, docs, k=10):
    """Reranks candidates the application already holds: ids and their texts, as arrays."""
    return conn.execute(RERANK_ARRAYS, {"query": query, "ids": list(ids), "docs": list(docs), "k": k}).fetchall()


def search_arrays(conn, query, k=10):
    candidates = conn.execute(CANDIDATES, {"query": query, "embed_model": EMBED_MODEL}).fetchall()
    return rerank_candidates(conn, query, [c[0] for c in candidates], [c[1] for c in candidates], k)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dsn", help='libpq connection string, e.g. "host=localhost dbname=mydb"')
    ap.add_argument("query", help="the search text")
    ap.add_argument("-k", type=int, default=10, help="results to print (default 10)")
    ap.add_argument("--arrays", action="store_true", help="send the candidates to rerank() as arrays")
    args = ap.parse_args(argv)

    with psycopg.connect(args.dsn) as conn:
        # HNSW returns at most ef_search rows: search 100 wide for 100 dense candidates.
        conn.execute("SET hnsw.ef_search = 100")
        rows = (search_arrays if args.arrays else search)(conn, args.query, args.k)

    if not rows:
        print("no results", file=sys.stderr)
        return 1
    print(f"{'rank':>4}  {'score':>7}  {'id':<8}  {'packages':<30}  description")
    for rank, doc_id, score, packages, body in rows:
        pkgs = ",".join(packages)
        pkgs = pkgs if len(pkgs) <= 30 else pkgs[:27] + "..."
        desc = " ".join(body.split())[:70]
        print(f"{rank:>4}  {score:>7.4f}  {doc_id:<8}  {pkgs:<30}  {desc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
