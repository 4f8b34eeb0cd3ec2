-- Fails with scores outside [0, 1] (the sigmoid of the logit).
select pair_id, score from {{ ref('reranked') }} where score < 0 or score > 1
