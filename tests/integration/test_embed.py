"""embed() and embed_batch() with all-MiniLM-L6-v2 against the corpus vectors: the 500 dev
queries and a sample of documents embedded in SQL match query_emb_dev.npy and doc_emb.npy;
the worker and the backend give the same vectors; a pgvector search ordered by
`emb <=> embed(...)::vector` uses the HNSW index; cancel and statement_timeout stop a bulk
embedding in the worker without leaving anything queued; the kinds of models are checked."""
import json
import shutil
import time

import numpy as np
import psycopg
import pytest
from psycopg import errors

from conftest import DATA, put_model, stats, wait_for, worker

MODEL = "all-minilm-l6-v2"


def vectors(conn, texts, kind="document"):
    """embed_batch() of texts without NULLs, as an array of rows."""
    rows = conn.execute(
        "SELECT idx, embedding FROM embed_batch(%s, %s, %s) ORDER BY idx", (texts, MODEL, kind)).fetchall()
    assert [r[0] for r in rows] == list(range(1, len(texts) + 1))
    return np.array([r[1] for r in rows], dtype=np.float32)


def cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def corpus_sample():
    """Every 116th document of the corpus (500 of them), with its row of doc_emb.npy."""
    rows = []
    with open(DATA / "corpus.jsonl") as f:
        for i, line in enumerate(f):
            if i % 116 == 0:
                rows.append((i, json.loads(line)["text"]))
    return rows


def test_dev_queries_match_the_reference(conn, queries):
    """Each dev query embedded by embed() (interactive, one call per query) against
    query_emb_dev.npy (sentence-transformers, PyTorch)."""
    texts = list(queries.values())
    assert len(texts) == 500
    ref = np.load(DATA / "query_emb_dev.npy").astype(np.float32)
    rows = conn.execute(
        "SELECT embed(q, %s) FROM unnest(%s::text[]) WITH ORDINALITY u(q, n) ORDER BY n", (MODEL, texts)).fetchall()
    got = np.array([r[0] for r in rows], dtype=np.float32)
    assert got.shape == ref.shape == (500, 384)
    cos = cosines(got, ref)
    diff = np.abs(got - ref).max()
    print(f"\n500 dev queries, embed() vs query_emb_dev.npy: min cosine {cos.min():.7f}, max |diff| {diff:.2e}")
    assert cos.min() >= 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_documents_match_the_reference(conn, corpus_sample):
    """500 corpus documents (kind document, embed_batch) against doc_emb.npy, which is
    float16: within its precision."""
    ref = np.load(DATA / "doc_emb.npy")[[i for i, _ in corpus_sample]].astype(np.float32)
    got = vectors(conn, [t for _, t in corpus_sample])
    cos = cosines(got, ref)
    diff = np.abs(got - ref).max()
    # float16 keeps 11 significant bits: |x| < 0.5 is rounded by at most 2^-13 = 1.2e-4.
    half_ulp = np.abs(got - got.astype(np.float16).astype(np.float32)).max()
    print(f"\n500 documents, embed_batch() vs doc_emb.npy (float16): min cosine {cos.min():.7f}, "
          f"max |diff| {diff:.2e} (float16 rounding of our own vectors: {half_ulp:.2e})")
    assert cos.min() >= 0.9999
    assert diff < 5e-4


def test_worker_and_backend_give_the_same_vectors(dsn, queries, corpus_sample):
    texts = [t for _, t in corpus_sample[:200]]
    qs = list(queries.values())[:20]
    out = {}
    for mode in ("worker", "backend"):
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"SET pg_rerank.execution = {mode}")
            docs = vectors(c, texts)
            one = np.array([c.execute("SELECT embed(%s, %s)", (q, MODEL)).fetchone()[0] for q in qs], dtype=np.float32)
            out[mode] = (docs, one)
    d_docs = np.abs(out["worker"][0] - out["backend"][0]).max()
    d_one = np.abs(out["worker"][1] - out["backend"][1]).max()
    print(f"\nworker vs backend: 200 documents (embed_batch) max |diff| {d_docs:.2e}, "
          f"20 queries (embed) max |diff| {d_one:.2e}")
    assert d_docs < 1e-6 and d_one < 1e-6


def test_worker_counts_embeddings(wconn):
    wconn.execute("SELECT pg_rerank_stats_reset()")
    wconn.execute("SELECT embed('zlib', %s)", (MODEL,))
    rows = wconn.execute("SELECT embedding FROM embed_batch(ARRAY['a', 'b', NULL, 'c'], %s)", (MODEL,)).fetchall()
    assert [r[0] is None for r in rows] == [False, False, True, False]
    st = wait_for(lambda: stats(wconn, MODEL), "statistics of the embedding model")
    print(f"\nworker statistics of {MODEL}: {st['requests']} requests, {st['pairs']} texts, {st['batches']} batches")
    assert (st["interactive_requests"], st["bulk_requests"], st["pairs"]) == (1, 1, 4)
    assert worker(wconn)["queued_pairs"] == 0


def test_pgvector_search_with_embed(conn, queries, qrels):
    """ORDER BY emb <=> embed(...)::vector: the HNSW index serves it (embed() is STABLE),
    and it finds what the reference query vectors find."""
    conn.execute("SELECT set_config('pg_rerank.embedding_model', %s, false)", (MODEL,))
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN SELECT id FROM packages ORDER BY emb <=> embed('audio player')::vector LIMIT 10"))
    assert "packages_emb_hnsw" in plan, plan
    ref = np.load(DATA / "query_emb_dev.npy").astype(np.float32)
    ids = list(queries)
    same, found = 0, 0
    for n in range(0, 500, 25):
        qid = ids[n]
        got = [r[0] for r in conn.execute(
            "SELECT id FROM packages ORDER BY emb <=> embed(%s)::vector LIMIT 10", (queries[qid],))]
        want = [r[0] for r in conn.execute(
            "SELECT id FROM packages ORDER BY emb <=> %s::vector LIMIT 10", (str(ref[n].tolist()),))]
        same += len(set(got) & set(want))
        found += any(d in qrels.get(qid, {}) for d in got)
    print(f"\npgvector with embed(): {same} of 200 neighbours as with the reference vectors, "
          f"relevant document in the top 10 for {found} of 20 queries")
    assert same >= 198
    assert found >= 10
    # real[] casts to a vector of the column's width.
    assert conn.execute("SELECT vector_dims(embed('x')::vector(384))").fetchone()[0] == 384


def test_statement_timeout_stops_a_bulk_embedding_in_the_worker(wconn, corpus_sample):
    texts = [t for _, t in corpus_sample] * 6
    wconn.execute("SET statement_timeout = '300ms'")
    start = time.monotonic()
    with pytest.raises(errors.QueryCanceled):
        vectors(wconn, texts)
    took = time.monotonic() - start
    wconn.execute("RESET statement_timeout")
    print(f"\nembed_batch() of {len(texts)} documents in the worker, statement_timeout 300 ms: stopped after {took:.2f} s")
    assert took < 1.3
    wait_for(lambda: worker(wconn)["queued_pairs"] == 0, "the queue to empty")
    assert wconn.execute("SELECT count(*) FROM pg_rerank_progress").fetchone()[0] == 0
    assert len(vectors(wconn, ["still served"])[0]) == 384


@pytest.mark.parametrize("mode", ["worker", "backend"])
def test_a_model_of_the_other_kind_is_refused(dsn, mode):
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"SET pg_rerank.execution = {mode}")
        with pytest.raises(errors.WrongObjectType, match="is a cross-encoder, not a bi-encoder"):
            c.execute("SELECT embed('x', 'minilm-debian')")
        with pytest.raises(errors.WrongObjectType, match="is a bi-encoder, not a cross-encoder"):
            c.execute("SELECT * FROM rerank('q', ARRAY['a'], %s)", (MODEL,))
        with pytest.raises(errors.InvalidParameterValue, match="invalid embedding kind"):
            c.execute("SELECT embed('x', %s, 'passage')", (MODEL,))
        # Still fine.
        assert len(c.execute("SELECT embed('x', %s)", (MODEL,)).fetchone()[0]) == 384


def test_a_model_that_states_no_width_is_asked(dsn, swap_dir):
    """A bi-encoder whose pooling configuration does not state its width: the backend
    reserves no room, the worker answers with the width, and the request is sent again."""
    put_model(swap_dir, "bi", MODEL)
    cfg = swap_dir / "bi" / "1_Pooling" / "config.json"
    pooling = json.loads(cfg.read_text())
    del pooling["word_embedding_dimension"]
    cfg.write_text(json.dumps(pooling))
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET pg_rerank.execution = worker")
        want = c.execute("SELECT embed('zlib compression', %s)", (MODEL,)).fetchone()[0]
        c.execute("SELECT set_config('pg_rerank.model_dir', %s, false)", (str(swap_dir),))
        assert c.execute("SELECT dimensions FROM rerank_models() WHERE name = 'bi'").fetchone()[0] is None
        got = c.execute("SELECT embed('zlib compression', 'bi')").fetchone()[0]
        again = c.execute("SELECT embed('zlib compression', 'bi')").fetchone()[0]
    assert got == want and again == want
    shutil.rmtree(swap_dir / "bi")
