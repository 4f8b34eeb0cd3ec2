-- Fails where the batched score of a pair differs from scoring that pair alone
-- (checked on the first three candidates of each query).
select c.pair_id, r.score, rerank_score(c.query, c.body) as alone
from {{ ref('candidates') }} as c
join {{ ref('reranked') }} as r using (pair_id)
where c.fts_rank <= 3 and abs(r.score - rerank_score(c.query, c.body)) > 1e-5
