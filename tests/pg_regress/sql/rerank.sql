-- rerank(), rerank_score() and rerank_models() on the MiniLM cross-encoder.
CREATE EXTENSION IF NOT EXISTS pg_rerank;
SET pg_rerank.model = 'minilm-debian';

-- Rows come best first; idx is the 1-based position in docs.
SELECT idx, round(score::numeric, 4) AS score
FROM rerank('lossless compression library',
            ARRAY['GNU Chess is a chess-playing program',
                  'zlib is a library implementing the deflate compression method found in gzip',
                  'a collection of desktop wallpapers']);

-- top_n keeps the best n; NULL elements are skipped; raw returns logits.
SELECT idx, round(score::numeric, 3) AS logit
FROM rerank('lossless compression library',
            ARRAY[NULL, 'zlib is a library implementing the deflate compression method found in gzip',
                  'GNU Chess is a chess-playing program'], top_n => 1, raw => true);

-- Empty and NULL arrays give no rows.
SELECT count(*) FROM rerank('q', ARRAY[]::text[]);
SELECT count(*) FROM rerank('q', NULL);
SELECT count(*) FROM rerank('q', ARRAY[NULL, NULL]::text[]);

-- One pair; NULL in, NULL out.
SELECT round(rerank_score('chess', 'GNU Chess is a chess-playing program')::numeric, 4);
SELECT rerank_score(NULL, 'doc') IS NULL AS is_null, rerank_score('q', NULL) IS NULL AS is_null;

-- The same score through every entry point.
SELECT abs(r.score - rerank_score('chess', 'GNU Chess is a chess-playing program')) < 1e-6 AS same
FROM rerank('chess', ARRAY['GNU Chess is a chess-playing program']) r;

-- A named model, nested names included.
SELECT count(*) FROM rerank('q', ARRAY['a', 'b'], model => 'tiny/bert');

-- A 1 MB document is truncated to the model's max length, not refused.
SELECT count(*) FROM rerank('compression', ARRAY[repeat('compression library ', 52429)]);

-- The models under pg_rerank.model_dir.
SELECT name, family, max_length FROM rerank_models() ORDER BY name;

-- Volatility: scores depend on the loaded model, so nothing is IMMUTABLE.
SELECT proname, provolatile FROM pg_proc
WHERE proname IN ('rerank', 'rerank_score', 'rerank_topk_sfunc', 'rerank_topk_final') ORDER BY proname;

-- min_score keeps the documents scoring at least that, on the scale returned.
SELECT idx FROM rerank('lossless compression library',
                       ARRAY['GNU Chess is a chess-playing program',
                             'zlib is a library implementing the deflate compression method found in gzip'],
                       min_score => 0.05);
SELECT idx FROM rerank('lossless compression library',
                       ARRAY['GNU Chess is a chess-playing program',
                             'zlib is a library implementing the deflate compression method found in gzip'],
                       raw => true, min_score => -5);
SELECT count(*) FROM rerank('lossless compression library', ARRAY['GNU Chess is a chess-playing program'],
                            min_score => 1.5);
