-- Does the reranker help? First stage, reranked and diversified runs compared in one
-- query, with trec_eval's metrics computed in SQL (ndcg_at_k, reciprocal_rank,
-- recall_at_k, precision_at_k: equal to pytrec_eval's to 1e-6), and the recall of the
-- candidate list: the most the reranker could have found.
-- Tables:
--   qrels(qid text, doc_id text, grade int)   relevance judgments (grade 0: judged not relevant)
--   candidates(qid text, doc_id text, first_stage_rank int, score real)
--       each query's first-stage top 100 with the cross-encoder's score, e.g.
--       INSERT INTO candidates SELECT q.qid, c.id, c.rank, r.score
--       FROM queries q, LATERAL (<first stage of examples/hybrid_search.sql for q.text>) c,
--            LATERAL rerank_score(q.text, c.body) AS r(score);
--       tests/integration/test_evaluate.py fills it from the dev set's reference logits.
--   packages(id text, emb vector): the documents' embeddings, for diversify().
-- A run is (qid, doc_id, score), higher first; a run given as ranks uses score = -rank.
-- Each metric takes one query's rows of the run FULL JOINed to the qrels (a row without a
-- score: relevant but not retrieved); runs are compared by joining each to all the qrels.
-- A query gets NULL when it is missing from the run or from the qrels, so avg() over the
-- queries is trec_eval's mean over the queries of both. GROUP BY a query column (a query
-- type, a language) in the outer query gives the figures by group.
WITH runs AS (
    SELECT 'first stage' AS run, qid, doc_id, -first_stage_rank::float8 AS score FROM candidates
    UNION ALL
    SELECT 'reranked', qid, doc_id, score FROM candidates
    UNION ALL
    SELECT 'diversified', x.qid, d.doc_id, -d.rank::float8
    FROM (SELECT c.qid, diversify(c.doc_id, c.score, p.emb::real[], 10
                                  ORDER BY c.score DESC, c.first_stage_rank) AS ids
          FROM candidates c JOIN packages p ON p.id = c.doc_id
          GROUP BY c.qid) x,
         unnest(x.ids) WITH ORDINALITY AS d(doc_id, rank)
), judged AS (
    SELECT n.run, q.qid, q.doc_id, q.grade FROM (SELECT DISTINCT run FROM runs) n, qrels q
), per_query AS (
    SELECT run, qid,
           ndcg_at_k(doc_id, score, grade, 10) AS ndcg10,
           reciprocal_rank(doc_id, score, grade) AS rr,
           recall_at_k(doc_id, score, grade, 10) AS recall10,
           precision_at_k(doc_id, score, grade, 10) AS p10,
           recall_at_k(doc_id, score, grade, 100) AS recall100
    FROM runs FULL JOIN judged USING (run, qid, doc_id)
    GROUP BY run, qid
)
SELECT run, count(ndcg10) AS queries,
       round(avg(ndcg10)::numeric, 4) AS "nDCG@10",
       round(avg(rr)::numeric, 4) AS "MRR",
       round(avg(recall10)::numeric, 4) AS "R@10",
       round(avg(p10)::numeric, 4) AS "P@10",
       -- For the first stage: the candidate list's recall, the reranker's ceiling.
       round(avg(recall100)::numeric, 4) AS "R@100"
FROM per_query
GROUP BY run
ORDER BY min(CASE run WHEN 'first stage' THEN 1 WHEN 'reranked' THEN 2 ELSE 3 END);
