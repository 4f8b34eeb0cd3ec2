-- An instruction for instruction-following rerankers (Qwen3-Reranker style): it takes the
-- place of the one in the model's reranker_prompt.json; other models refuse one.
CREATE EXTENSION IF NOT EXISTS pg_rerank;
CREATE FUNCTION pg_temp.err(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

-- tiny/qwen3's own instruction, spelled out, gives the default score; NULL is the default.
SELECT rerank_score('chess', 'GNU Chess', 'tiny/qwen3', true)
     = rerank_score('chess', 'GNU Chess', 'tiny/qwen3', true,
                    'Given a web search query, retrieve relevant passages that answer the query') AS own_is_default,
       rerank_score('chess', 'GNU Chess', 'tiny/qwen3', true)
     = rerank_score('chess', 'GNU Chess', 'tiny/qwen3', true, NULL) AS null_is_default;

-- Another instruction (an empty one too) changes the scores, the same way in every function.
SELECT rerank_score('chess', 'GNU Chess', 'tiny/qwen3', true, 'Find Debian packages')
    <> rerank_score('chess', 'GNU Chess', 'tiny/qwen3', true) AS changes_the_score,
       rerank_score('chess', 'GNU Chess', 'tiny/qwen3', true, '')
    <> rerank_score('chess', 'GNU Chess', 'tiny/qwen3', true) AS empty_is_an_instruction;
WITH r AS (
    SELECT idx, score FROM rerank('chess', ARRAY['GNU Chess', 'zlib', 'a chess engine'], 'tiny/qwen3',
                                  raw => true, instruction => 'Find Debian packages')
)
SELECT r.idx,
       r.score = rerank_score('chess', d.doc, 'tiny/qwen3', true, 'Find Debian packages') AS as_rerank_score,
       r.score = (rerank_pairs(ARRAY['chess', 'chess', 'chess'], ARRAY['GNU Chess', 'zlib', 'a chess engine'],
                               'tiny/qwen3', true, 'Find Debian packages'))[r.idx] AS as_rerank_pairs
FROM r JOIN unnest(ARRAY['GNU Chess', 'zlib', 'a chess engine']) WITH ORDINALITY AS d(doc, i) ON d.i = r.idx
ORDER BY r.idx;

-- Models without a prompt refuse an instruction (22023), in every function.
\set VERBOSITY terse
SELECT pg_temp.err($$SELECT rerank_score('chess', 'GNU Chess', 'tiny/bert', instruction => 'Find packages')$$);
SELECT pg_temp.err($$SELECT * FROM rerank('chess', ARRAY['GNU Chess'], 'tiny/bert', instruction => 'x')$$);
SELECT pg_temp.err($$SELECT rerank_pairs(ARRAY['q'], ARRAY['d'], 'tiny/bert', instruction => 'x')$$);
\set VERBOSITY default
SELECT * FROM rerank('chess', ARRAY['GNU Chess'], 'tiny/bert', instruction => 'x');

-- An instruction over 16 KiB is refused at once (54000), before any pair is read, in every
-- function: 400 MB of one (issue 20) made a call that could not be cancelled.
SET statement_timeout = '60s';
\set VERBOSITY terse
SELECT pg_temp.err($$SELECT * FROM rerank('q', array_fill('d'::text, ARRAY[1000]), 'tiny/qwen3', instruction => repeat(chr(1), 400000000))$$);
SELECT pg_temp.err($$SELECT rerank_score('q', 'd', 'tiny/qwen3', instruction => repeat('x', 16385))$$);
SELECT pg_temp.err($$SELECT rerank_pairs(ARRAY['q'], ARRAY['d'], 'tiny/qwen3', instruction => repeat('x', 16385))$$);
SELECT rerank_score('q', 'd', 'tiny/qwen3', instruction => repeat('x', 16384)) IS NOT NULL AS at_the_limit;
\set VERBOSITY default
SELECT * FROM rerank('q', ARRAY['d'], 'tiny/qwen3', instruction => repeat('é', 8193));
RESET statement_timeout;
