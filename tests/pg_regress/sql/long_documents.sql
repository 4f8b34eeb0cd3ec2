-- Long documents: by default (pg_rerank.long_documents = chunk) a document longer than the
-- model's window is scored in windows that fit beside the query, and gets its best
-- window's score; truncate reads only its beginning.
CREATE EXTENSION IF NOT EXISTS pg_rerank;
SET pg_rerank.model = 'minilm-debian';
CREATE FUNCTION pg_temp.err(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
SHOW pg_rerank.long_documents;
SHOW pg_rerank.max_chunks;
SHOW pg_rerank.chunk_overlap;

-- The relevant passage comes after 400 words of unrelated text, as its own paragraph.
CREATE TEMP TABLE long_doc AS
SELECT repeat('GNU Chess is a chess-playing program that plays against a human. ', 40)
       || E'\n\n' || 'zlib is a library implementing the deflate compression method found in gzip and PKZIP.'
       || E'\n\n' || repeat('A collection of desktop wallpapers for the GNOME desktop. ', 10) AS body;

-- Chunked, the passage is found; truncated, the document reads as chess.
SELECT rerank_score('lossless compression library', body) > 0.1 AS chunk_finds_it FROM long_doc;
SELECT round(rerank_score('lossless compression library', body)::numeric, 4) =
       round(rerank_score('lossless compression library',
                          'zlib is a library implementing the deflate compression method found in gzip and PKZIP.')::numeric, 4)
       AS scored_like_the_passage_alone
FROM long_doc;
SET pg_rerank.long_documents = truncate;
SELECT rerank_score('lossless compression library', body) < 0.01 AS truncate_misses_it FROM long_doc;
RESET pg_rerank.long_documents;

-- The same in rerank() and the aggregate: the long document ranks first.
SELECT idx FROM rerank('lossless compression library',
                       ARRAY['GNU Chess is a chess-playing program', (SELECT body FROM long_doc)], top_n => 1);
SELECT rerank_topk('lossless compression library', n, d, 1)
FROM (VALUES (1, 'GNU Chess is a chess-playing program'), (2, (SELECT body FROM long_doc))) v(n, d);

-- With one window only, text beyond it is not read: the passage is lost again.
SET pg_rerank.max_chunks = 1;
SELECT rerank_score('lossless compression library', body) < 0.01 AS one_window_misses_it FROM long_doc;
RESET pg_rerank.max_chunks;

-- Window preselection: with pg_rerank.chunk_select = 1 the model reads only the window
-- that shares the most words with the query. Here that is the passage, so the score is
-- the passage's, as when every window is read; pg_rerank_stages() shows the split.
SHOW pg_rerank.chunk_select;
SET pg_rerank.cache = off;
SET pg_rerank.chunk_select = 1;
SELECT round(rerank_score('lossless compression library', body)::numeric, 4) =
       round(rerank_score('lossless compression library',
                          'zlib is a library implementing the deflate compression method found in gzip and PKZIP.')::numeric, 4)
       AS one_window_is_the_passage
FROM long_doc;
SELECT rerank_score('lossless compression library', body) > 0.1 AS found FROM long_doc;
SELECT stage, calls, detail FROM pg_rerank_stages() WHERE stage IN ('split', 'sql', 'statement');
SELECT bool_and(ms >= 0) AS times_are_durations FROM pg_rerank_stages();
-- A document with no more windows than chunk_select scores as with every window read.
SET pg_rerank.chunk_select = 64;
CREATE TEMP TABLE selected AS SELECT rerank_score('lossless compression library', body) AS s FROM long_doc;
SET pg_rerank.chunk_select = 0;
SELECT s = rerank_score('lossless compression library', body) AS same_as_every_window FROM long_doc, selected;
SELECT pg_temp.err($$SET pg_rerank.chunk_select = -1$$);
RESET pg_rerank.chunk_select;
RESET pg_rerank.cache;

-- A short document is one window, whatever the settings; a query longer than the window
-- leaves no room and the document is scored once, truncated.
SELECT rerank_score('compression', 'zlib') = rerank_score('compression', 'zlib') AS same;
SELECT rerank_score(repeat('compression ', 400), body) IS NOT NULL AS scored FROM long_doc;

-- Settings: the values allowed, and max_chunks is the superuser's.
SELECT pg_temp.err($$SET pg_rerank.long_documents = summarize$$);
SELECT pg_temp.err($$SET pg_rerank.max_chunks = 0$$);
SELECT pg_temp.err($$SET pg_rerank.chunk_overlap = -1$$);
CREATE ROLE rerank_long_user;
SET ROLE rerank_long_user;
SELECT pg_temp.err($$SET pg_rerank.max_chunks = 1024$$);
SELECT pg_temp.err($$SET pg_rerank.long_documents = truncate$$);
SELECT pg_temp.err($$SET pg_rerank.chunk_overlap = 0$$);
SELECT pg_temp.err($$SET pg_rerank.chunk_select = 2$$);
RESET ROLE;
DROP ROLE rerank_long_user;
