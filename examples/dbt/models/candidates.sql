-- First stage: the 30 best full-text matches of each query (any of its words), in the
-- order ts_rank_cd gives them.
select q.query_id || ':' || c.id as pair_id,
       q.query_id,
       q.query,
       c.id as doc_id,
       c.body,
       c.fts_rank
from {{ ref('search_queries') }} as q
cross join lateral (
    select p.id, p.body,
           row_number() over (order by ts_rank_cd(p.tsv, tq) desc, p.id) as fts_rank
    from {{ source('corpus', 'packages') }} as p,
         to_tsquery('english', replace(plainto_tsquery('english', q.query)::text, '&', '|')) as tq
    where p.tsv @@ tq
    order by ts_rank_cd(p.tsv, tq) desc, p.id
    limit 30
) as c
