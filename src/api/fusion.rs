//! `rrf(a, b, k)`: reciprocal rank fusion of two ranked id lists, the usual way to merge
//! a pgvector and a full-text candidate list before reranking.

use pgrx::prelude::*;

extension_sql!(
    r#"
CREATE FUNCTION rrf(a anyarray, b anyarray, k integer DEFAULT 60)
RETURNS TABLE(id anyelement, score double precision)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT u.id, sum(1.0 / (k + u.r))::double precision AS score
    FROM (SELECT x, r FROM unnest(a) WITH ORDINALITY AS t(x, r)
          UNION ALL
          SELECT x, r FROM unnest(b) WITH ORDINALITY AS t(x, r)) AS u(id, r)
    WHERE u.id IS NOT NULL
    GROUP BY u.id
    ORDER BY score DESC, min(u.r), u.id
$$;
COMMENT ON FUNCTION rrf(anyarray, anyarray, integer) IS
'Reciprocal rank fusion of two ranked id lists (best first): each id scores the sum of 1 / (k + its 1-based rank) over the lists it is in; rows come best first.';
"#,
    name = "rrf",
);
