{#
  Scores every row of `relation` with pg_rerank in batches of `chunk_rows` pairs: the
  rows of a chunk are aggregated into arrays, scored by one rerank_pairs() call (which
  batches across queries by length), and the scores are unnested beside the key.
  Returns one row per input row whose query and document are not NULL: (key, score).
#}
{% macro rerank_scores(relation, key, query, doc, model=none, chunk_rows=10000) %}
with _rerank_numbered as (
    select {{ key }} as k, {{ query }} as q, {{ doc }} as d,
           (row_number() over (order by {{ key }}) - 1) / {{ chunk_rows }} as chunk
    from {{ relation }}
),
_rerank_chunks as (
    select array_agg(k order by k) as ids, array_agg(q order by k) as qs, array_agg(d order by k) as ds
    from _rerank_numbered
    group by chunk
)
select s.k as {{ key }}, s.score
from _rerank_chunks,
     unnest(_rerank_chunks.ids,
            rerank_pairs(_rerank_chunks.qs, _rerank_chunks.ds{% if model %}, model => '{{ model }}'{% endif %}))
         as s(k, score)
where s.score is not null
{% endmacro %}
