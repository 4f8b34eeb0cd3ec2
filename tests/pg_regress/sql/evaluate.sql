-- ndcg_at_k, recall_at_k, precision_at_k, reciprocal_rank: trec_eval's metrics over a run
-- FULL JOINed to its qrels; no model.
CREATE EXTENSION IF NOT EXISTS pg_rerank;
CREATE TEMP TABLE run(qid text, doc text, score float8);
CREATE TEMP TABLE qrels(qid text, doc text, grade int);
-- q1: a (grade 0), b (2), c (not judged), d (1) retrieved; e (1) not retrieved.
-- q2: x and y tie on score (ties go to the doc id, descending: y first); x is relevant.
-- q3 is in the qrels only, q4 in the run only: neither has a value.
INSERT INTO run VALUES ('q1', 'a', 4), ('q1', 'b', 3), ('q1', 'c', 2), ('q1', 'd', 1),
                       ('q2', 'x', 1), ('q2', 'y', 1), ('q4', 'z', 1);
INSERT INTO qrels VALUES ('q1', 'a', 0), ('q1', 'b', 2), ('q1', 'd', 1), ('q1', 'e', 1),
                         ('q2', 'x', 1), ('q3', 'w', 1);
SELECT qid,
       round(ndcg_at_k(doc, score, grade, 10)::numeric, 6) AS ndcg10,
       round(ndcg_at_k(doc, score, grade, 2)::numeric, 6) AS ndcg2,
       round(reciprocal_rank(doc, score, grade)::numeric, 6) AS rr,
       round(recall_at_k(doc, score, grade, 2)::numeric, 6) AS recall2,
       round(recall_at_k(doc, score, grade, 10)::numeric, 6) AS recall10,
       round(precision_at_k(doc, score, grade, 2)::numeric, 6) AS p2,
       round(precision_at_k(doc, score, grade, 10)::numeric, 6) AS p10
FROM run FULL JOIN qrels USING (qid, doc)
GROUP BY qid ORDER BY qid;
-- By hand, q1: DCG@10 = 2/log2(3) + 1/log2(5), ideal 2 + 1/log2(3) + 1/log2(4).
SELECT round(((2 / log(2, 3) + 1 / log(2, 5)) / (2 + 1 / log(2, 3) + 1 / log(2, 4)))::numeric, 6) AS q1_ndcg10;
-- Averaged over the queries that have a value (avg() skips NULL, as trec_eval evaluates
-- the queries of both the run and the qrels): MRR = (0.5 + 0.5) / 2.
SELECT round(avg(rr)::numeric, 6) AS mrr, count(rr) AS queries
FROM (SELECT qid, reciprocal_rank(doc, score, grade) AS rr
      FROM run FULL JOIN qrels USING (qid, doc) GROUP BY qid) per_query;
-- A run given as ranks: score = -rank.
SELECT round(reciprocal_rank(doc, -r, grade)::numeric, 6)
FROM (VALUES ('a', 1), ('b', 2)) AS t(doc, r) FULL JOIN (VALUES ('b', 1)) AS q(doc, grade) USING (doc);
-- Errors: k <= 0, NULL k, a document twice in a run, NaN.
SELECT ndcg_at_k(doc, score, grade, 0) FROM run FULL JOIN qrels USING (qid, doc) GROUP BY qid;
SELECT precision_at_k(doc, score, grade, NULL) FROM run FULL JOIN qrels USING (qid, doc) GROUP BY qid;
SELECT ndcg_at_k(doc, score, 1, 10) FROM (VALUES ('a', 1.0), ('a', 0.5)) AS t(doc, score);
SELECT reciprocal_rank(doc, score, 1) FROM (VALUES ('a', 'NaN'::float8)) AS t(doc, score);
