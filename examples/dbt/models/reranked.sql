-- Second stage: every candidate pair scored by the cross-encoder (pg_rerank.model), all
-- queries batched together, and the candidates of each query ranked by that score.
with scores as (
    {{ rerank_scores(ref('candidates'), 'pair_id', 'query', 'body') }}
)
select c.pair_id,
       c.query_id,
       c.doc_id,
       c.fts_rank,
       s.score,
       row_number() over (partition by c.query_id order by s.score desc, c.fts_rank) as rerank_rank
from {{ ref('candidates') }} as c
join scores as s using (pair_id)
