-- Fails with the candidates that got no score.
select pair_id from {{ ref('candidates') }}
except
select pair_id from {{ ref('reranked') }}
