// Hybrid search reranked in PostgreSQL, from Node.js (node-postgres).
//
//   node hybrid_search.js "postgres://user@localhost/mydb" "tool to compress files" [-k 10] [--arrays]
//
// The DSN is a postgres:// URL or a libpq "key=value" string ("host=localhost dbname=mydb").
//
// The query text is embedded in the database (embed()), pgvector's HNSW index and full-text
// search each return their top 100, rrf() fuses the two lists and a cross-encoder reranks
// the fused top 100. Only the query text travels to the server; the rows come back joined
// to the table, best first.
//
// Two ways to call the reranker, same results:
//   default   one statement, rerank_topk() over the candidate subquery (one round trip);
//   --arrays  the application holds the candidates (ids and texts, here fetched by the same
//             hybrid query without reranking, in practice from any search engine) and sends
//             them as two arrays to rerank(query, docs[]); rows are joined back by position.
//
// Table layout (see scripts/load_corpus.py): packages(id text, body text, packages text[],
// emb vector(384), tsv tsvector). Set hnsw.ef_search to 100 or more for 100 dense candidates.
'use strict';

const { Client } = require('pg');

// The bi-encoder that embedded the table's `emb` column: the query must use the same one.
const EMBED_MODEL = 'all-minilm-l6-v2';

// The fused candidates: (id, body) of the best 100 by reciprocal rank fusion of the dense
// (pgvector) and sparse (full text, any of the query's words) top 100. $1 is the query
// text, $2 the embedding model; the query vector is computed once.
const CANDIDATES = `
WITH q AS (
    SELECT embed($1::text, $2::text)::vector AS v,
           (SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery
            FROM unnest(to_tsvector('english', $1::text))) AS words
), dense AS (
    SELECT array_agg(id ORDER BY dist) AS ids
    FROM (SELECT id, emb <=> (SELECT v FROM q) AS dist
          FROM packages
          ORDER BY emb <=> (SELECT v FROM q)
          LIMIT 100) d
), sparse AS (
    SELECT array_agg(id ORDER BY rank DESC, id) AS ids
    FROM (SELECT id, ts_rank_cd(tsv, (SELECT words FROM q)) AS rank
          FROM packages
          WHERE tsv @@ (SELECT words FROM q)
          ORDER BY rank DESC, id
          LIMIT 100) s
)
SELECT p.id, p.body
FROM dense, sparse, rrf(dense.ids, sparse.ids) f
JOIN packages p ON p.id = f.id
ORDER BY f.score DESC
LIMIT 100`;

// Default: one statement ($3 = k). rerank_topk and rerank_topk_scores share one transition
// state, so the model scores each candidate once; the ids come back joined to the table.
const RERANKED = `
WITH candidates AS (${CANDIDATES})
SELECT r.rank, p.id, r.score, p.packages, p.body
FROM (SELECT rerank_topk($1::text, id, body, $3::int) AS ids,
             rerank_topk_scores($1::text, id, body, $3::int) AS scores
      FROM candidates) t,
     unnest(t.ids, t.scores) WITH ORDINALITY AS r(id, score, rank)
JOIN packages p ON p.id = r.id
ORDER BY r.rank`;

// --arrays: $1 query, $2 the documents' texts, $3 k, $4 their ids. rerank() returns the
// 1-based position of each document in docs (idx) with its score, best first; the ids
// array, unnested with its positions, joins each position back to its row.
const RERANK_ARRAYS = `
SELECT row_number() OVER (ORDER BY r.score DESC, r.idx) AS rank, p.id, r.score, p.packages, p.body
FROM rerank($1::text, $2::text[], top_n => $3::int) r
JOIN unnest($4::text[]) WITH ORDINALITY AS c(id, idx) ON c.idx = r.idx
JOIN packages p ON p.id = c.id
ORDER BY rank`;

// The top k as {rank, id, score, packages, body}, in one statement.
async function search(client, query, k = 10) {
  const res = await client.query(RERANKED, [query, EMBED_MODEL, k]);
  return res.rows;
}

// Reranks candidates the application already holds: ids and their texts, as arrays.
async function rerankCandidates(client, query, ids, docs, k = 10) {
  const res = await client.query(RERANK_ARRAYS, [query, docs, k, ids]);
  return res.rows;
}

async function searchArrays(client, query, k = 10) {
  const cands = (await client.query(CANDIDATES, [query, EMBED_MODEL])).rows;
  return rerankCandidates(client, query, cands.map((c) => c.id), cands.map((c) => c.body), k);
}

// node-postgres takes postgres:// URLs; this also accepts libpq's "key=value" strings.
function clientConfig(dsn) {
  if (dsn.includes('://')) return { connectionString: dsn };
  const names = { dbname: 'database', host: 'host', hostaddr: 'host', port: 'port', user: 'user', password: 'password' };
  const config = {};
  for (const m of dsn.matchAll(/(\w+)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S+))/g)) {
    const value = m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : m[3];
    if (names[m[1]]) config[names[m[1]]] = m[1] === 'port' ? Number(value) : value;
  }
  return config;
}

async function main(argv) {
  const args = argv.filter((a) => a !== '--arrays');
  const arrays = args.length !== argv.length;
  let k = 10;
  const ki = args.indexOf('-k');
  if (ki >= 0) k = Number(args.splice(ki, 2)[1]);
  if (args.length !== 2 || !Number.isInteger(k) || k < 1) {
    console.error('usage: node hybrid_search.js DSN QUERY [-k N] [--arrays]');
    return 2;
  }
  const [dsn, query] = args;

  const client = new Client(clientConfig(dsn));
  await client.connect();
  let rows;
  try {
    // HNSW returns at most ef_search rows: search 100 wide for 100 dense candidates.
    await client.query('SET hnsw.ef_search = 100');
    rows = await (arrays ? searchArrays : search)(client, query, k);
  } finally {
    await client.end();
  }

  if (rows.length === 0) {
    console.error('no results');
    return 1;
  }
  console.log(`${'rank'.padStart(4)}  ${'score'.padStart(7)}  ${'id'.padEnd(8)}  ${'packages'.padEnd(30)}  description`);
  for (const r of rows) {
    let pkgs = r.packages.join(',');
    if (pkgs.length > 30) pkgs = pkgs.slice(0, 27) + '...';
    const desc = r.body.split(/\s+/).filter(Boolean).join(' ').slice(0, 70);
    console.log(`${String(r.rank).padStart(4)}  ${r.score.toFixed(4).padStart(7)}  ${r.id.padEnd(8)}  ${pkgs.padEnd(30)}  ${desc}`);
  }
  return 0;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => { process.exitCode = code; },
    (err) => { console.error(err.message); process.exitCode = 1; },
  );
}

module.exports = { search, rerankCandidates, searchArrays, clientConfig };
