-- rerank_pairs(): bulk scoring of (query, document) pairs, and model variants.
CREATE EXTENSION IF NOT EXISTS pg_rerank;
SET pg_rerank.model = 'minilm-debian';

-- Element i is the score of pair i, whatever its query; a NULL query or doc gives NULL.
SELECT i, round(s::numeric, 4) AS score
FROM unnest(rerank_pairs(
    ARRAY['lossless compression library', 'chess', NULL, 'chess'],
    ARRAY['zlib is a library implementing the deflate compression method found in gzip',
          'GNU Chess is a chess-playing program', 'x', NULL])) WITH ORDINALITY u(s, i);

-- Empty arrays give an empty array, a NULL array gives NULL.
SELECT rerank_pairs(ARRAY[]::text[], ARRAY[]::text[]);
SELECT rerank_pairs(NULL, ARRAY['a']) IS NULL AS is_null;

-- Not bounded by pg_rerank.max_docs: it is meant for whole tables.
SET pg_rerank.max_docs = 2;
SELECT cardinality(rerank_pairs(ARRAY['q', 'q', 'q'], ARRAY['a', 'b', 'c']));
RESET pg_rerank.max_docs;

-- A table scored in one statement: aggregate the rows into arrays, score them in one
-- call, and unnest the scores beside the ids (the pattern of the dbt example).
CREATE TEMP TABLE pairs AS
SELECT i AS id,
       (ARRAY['chess engine', 'compression library', 'desktop wallpapers'])[1 + i % 3] AS query,
       (ARRAY['GNU Chess is a chess-playing program',
              'zlib is a library implementing the deflate compression method found in gzip',
              'a collection of desktop wallpapers',
              'Stockfish is a free UCI chess engine'])[1 + i % 4] AS doc
FROM generate_series(1, 300) i;

CREATE TEMP TABLE scored AS
WITH batch AS (
    SELECT array_agg(id ORDER BY id) AS ids, array_agg(query ORDER BY id) AS qs,
           array_agg(doc ORDER BY id) AS ds
    FROM pairs
)
SELECT s.id, s.score FROM batch, unnest(batch.ids, rerank_pairs(batch.qs, batch.ds)) AS s(id, score);

-- Every row is scored, and each matches rerank_score() on the same pair.
SELECT count(*) AS rows, max(abs(s.score - rerank_score(p.query, p.doc))) < 1e-5 AS same_as_rerank_score
FROM pairs p JOIN scored s USING (id);
-- The best document of each query.
SELECT DISTINCT ON (p.query) p.query, p.doc, round(s.score::numeric, 4) AS score
FROM pairs p JOIN scored s USING (id) ORDER BY p.query, s.score DESC;

-- Variants: model_int8.onnx beside model.onnx is the model minilm-debian:int8.
SELECT name, family, max_length, regexp_replace(path, '^.*/', '') AS file
FROM rerank_models() WHERE name LIKE 'minilm%' ORDER BY name;
-- The quantized graph orders these documents as the fp32 one does, with scores close to it.
WITH fp32 AS (SELECT idx, score FROM rerank('chess engine',
                ARRAY['GNU Chess is a chess-playing program', 'a collection of desktop wallpapers',
                      'Stockfish is a free UCI chess engine'])),
     int8 AS (SELECT idx, score FROM rerank('chess engine',
                ARRAY['GNU Chess is a chess-playing program', 'a collection of desktop wallpapers',
                      'Stockfish is a free UCI chess engine'], model => 'minilm-debian:int8'))
SELECT array_agg(f.idx ORDER BY f.score DESC) = array_agg(i.idx ORDER BY i.score DESC) AS same_order,
       max(abs(f.score - i.score)) < 0.05 AS close
FROM fp32 f JOIN int8 i USING (idx);
