-- rrf(): reciprocal rank fusion of two ranked id lists.
CREATE EXTENSION IF NOT EXISTS pg_rerank;
-- 2 is second in a and first in b: it wins; ids in one list only follow, by rank.
SELECT id, round(score::numeric, 6) AS score FROM rrf(ARRAY[1, 2, 3], ARRAY[2, 4]);
-- k changes the weights; NULL ids are skipped; an empty or NULL list counts for nothing.
SELECT id, round(score::numeric, 4) AS score FROM rrf(ARRAY['x', NULL, 'y'], ARRAY['y'], k => 1);
SELECT count(*) FROM rrf(ARRAY[]::int[], ARRAY[7]);
SELECT count(*) FROM rrf(NULL::int[], ARRAY[7, 8]);
-- Lists of different types do not mix.
SELECT * FROM rrf(ARRAY[1], ARRAY['a']);
