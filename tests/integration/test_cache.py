"""The score cache (issue 13): in worker mode a repeated document is answered from shared
memory with exactly the score the worker computed; anything that changes a score (the
model, raw, an instruction, the long-document settings, the files after a reload) misses it; a session can
turn it off; pg_rerank_cache_reset() empties it; a tiny cache evicts and stays correct."""
import time

import psycopg
import pytest
from psycopg import errors

from conftest import put_model, reload, run, sample, second_server, stats, wait_for, worker

Q = "lossless data compression library"


def counts(conn, model="minilm-debian"):
    s = stats(conn, model) or {"cache_hits": 0, "cache_misses": 0}
    return s["cache_hits"], s["cache_misses"]


def scores(conn, docs, model="minilm-debian", raw=False, query=Q):
    rows = conn.execute("SELECT idx, score FROM rerank(%s, %s::text[], %s, raw => %s)",
                        (query, docs, model, raw)).fetchall()
    return [s for _, s in sorted(rows)]


def delta(conn, before, model="minilm-debian"):
    after = counts(conn, model)
    return after[0] - before[0], after[1] - before[1]


@pytest.fixture()
def cconn(wconn):
    """A worker-mode session with an empty cache."""
    wconn.execute("SELECT pg_rerank_cache_reset()")
    assert worker(wconn)["cache_capacity"] > 0
    return wconn


def test_a_repeat_is_answered_from_the_cache_with_the_same_bits(cconn):
    docs = sample(cconn, 30)
    before = counts(cconn)
    first = scores(cconn, docs)
    assert delta(cconn, before) == (0, 30)
    before = counts(cconn)
    second = scores(cconn, docs)
    assert delta(cconn, before) == (30, 0)
    assert second == first  # bit for bit: float4 reaches Python exactly
    # The same documents in another order, another call shape, and mixed with new ones.
    before = counts(cconn)
    assert scores(cconn, docs[::-1]) == first[::-1]
    one = cconn.execute("SELECT rerank_score(%s, %s)", (Q, docs[7])).fetchone()[0]
    assert one == first[7]
    mixed = scores(cconn, docs[:10] + sample(cconn, 5, offset=500))
    assert mixed[:10] == first[:10]
    assert delta(cconn, before) == (30 + 1 + 10, 5)


def test_cached_scores_equal_computed_ones(cconn):
    docs = sample(cconn, 24, offset=100)
    cold = scores(cconn, docs)
    hot = scores(cconn, docs)
    cconn.execute("SET pg_rerank.cache = off")
    try:
        before = counts(cconn)
        off = scores(cconn, docs)
        assert delta(cconn, before) == (0, 0), "pg_rerank.cache = off neither reads nor counts"
    finally:
        cconn.execute("RESET pg_rerank.cache")
    assert hot == cold == off


def test_every_call_shape_reads_the_cache(cconn):
    docs = sample(cconn, 12, offset=200)
    first = scores(cconn, docs)
    before = counts(cconn)
    rows = ", ".join(f"({i}, %s)" for i in range(len(docs)))
    topk = cconn.execute(f"SELECT rerank_topk_scores(%s, id, body, 12) FROM (VALUES {rows}) AS t(id, body)",
                         (Q, *docs)).fetchone()[0]
    assert sorted(topk, reverse=True) == sorted(first, reverse=True)
    pairs = cconn.execute("SELECT rerank_pairs(%s::text[], %s::text[])", ([Q] * len(docs), docs)).fetchone()[0]
    assert pairs == first
    assert delta(cconn, before) == (24, 0)


def test_what_changes_a_score_misses_the_cache(cconn):
    docs = sample(cconn, 8, offset=300)
    probabilities = scores(cconn, docs)
    before = counts(cconn)
    logits = scores(cconn, docs, raw=True)
    assert delta(cconn, before) == (0, 8)
    assert logits != probabilities
    # Another model, another query.
    before = counts(cconn, "minilm-debian:int8")
    scores(cconn, docs, model="minilm-debian:int8")
    assert delta(cconn, before, "minilm-debian:int8") == (0, 8)
    before = counts(cconn)
    scores(cconn, docs, query=Q + " for zip files")
    assert delta(cconn, before) == (0, 8)
    # The long-document settings: mode, overlap, most windows, windows preselected.
    long_docs = [d * 12 for d in docs[:3]]
    chunked = scores(cconn, long_docs)
    for setting, value in [("long_documents", "truncate"), ("chunk_overlap", "8"), ("max_chunks", "2"),
                           ("chunk_select", "1")]:
        cconn.execute(f"SET pg_rerank.{setting} = {value}")
        try:
            before = counts(cconn)
            again = scores(cconn, long_docs)
            assert delta(cconn, before) == (0, 3), setting
            assert len(again) == 3
        finally:
            cconn.execute(f"RESET pg_rerank.{setting}")
    before = counts(cconn)
    assert scores(cconn, long_docs) == chunked
    assert delta(cconn, before) == (3, 0)


def test_an_instruction_reaches_the_worker_and_is_part_of_the_key(dsn, cconn):
    docs = ["GNU Chess is a chess-playing program", "zlib implements deflate", "a mail filter"]
    sql = "SELECT idx, score FROM rerank('chess', %s::text[], 'tiny/qwen3', raw => true, instruction => %s)"

    def run(c, instruction):
        return [s for _, s in sorted(c.execute(sql, (docs, instruction)).fetchall())]

    default = run(cconn, None)
    before = counts(cconn, "tiny/qwen3")
    given = run(cconn, "Find the Debian package")
    assert delta(cconn, before, "tiny/qwen3") == (0, 3), "another instruction misses"
    assert given != default
    before = counts(cconn, "tiny/qwen3")
    assert run(cconn, "Find the Debian package") == given
    assert run(cconn, "") != given
    assert delta(cconn, before, "tiny/qwen3") == (3, 3)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET pg_rerank.execution = backend")
        here = run(c, "Find the Debian package")
    assert max(abs(a - b) for a, b in zip(given, here)) < 1e-5


def test_backend_mode_has_no_cache(dsn, cconn):
    docs = sample(cconn, 5, offset=400)
    scores(cconn, docs)
    before = counts(cconn)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET pg_rerank.execution = backend")
        scores(c, docs)
    assert delta(cconn, before) == (0, 0)


def test_reset_and_reload_empty_the_cache(cconn):
    docs = sample(cconn, 6, offset=600)
    first = scores(cconn, docs)
    cconn.execute("SELECT pg_rerank_cache_reset()")
    before = counts(cconn)
    assert scores(cconn, docs) == first
    assert delta(cconn, before) == (0, 6)
    invalidations = worker(cconn)["cache_invalidations"]
    reload(cconn)
    assert worker(cconn)["cache_invalidations"] > invalidations
    before = counts(cconn)
    assert scores(cconn, docs) == first
    assert delta(cconn, before) == (0, 6)


def test_swapped_files_are_served_only_after_the_reload(dsn, cconn, swap_dir):
    put_model(swap_dir, "cache-swap", "tiny/bert")
    cconn.execute("SELECT set_config('pg_rerank.model_dir', %s, false)", (str(swap_dir),))
    docs = ["a document", "another document"]
    # Loading a model empties the cache, so the scores of the call that loads it are not
    # stored; the next call's are.
    bert = scores(cconn, docs, model="cache-swap", raw=True)
    assert scores(cconn, docs, model="cache-swap", raw=True) == bert
    before = counts(cconn, "cache-swap")
    assert scores(cconn, docs, model="cache-swap", raw=True) == bert
    assert delta(cconn, before, "cache-swap") == (2, 0)
    put_model(swap_dir, "cache-swap", "tiny/xlm-roberta")
    # The worker scores with the session it loaded until the reload, and so does the cache.
    assert scores(cconn, docs, model="cache-swap", raw=True) == bert
    reload(cconn)
    before = counts(cconn, "cache-swap")
    xlmr = scores(cconn, docs, model="cache-swap", raw=True)
    assert delta(cconn, before, "cache-swap") == (0, 2)
    assert all(abs(a - b) > 1e-3 for a, b in zip(xlmr, bert))
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET pg_rerank.execution = backend")
        c.execute("SELECT set_config('pg_rerank.model_dir', %s, false)", (str(swap_dir),))
        here = scores(c, docs, model="cache-swap", raw=True)
    assert max(abs(a - b) for a, b in zip(xlmr, here)) < 1e-5


def test_only_a_superuser_sizes_or_resets_the_cache(dsn, conn):
    conn.execute("DROP ROLE IF EXISTS cache_user")
    conn.execute("CREATE ROLE cache_user LOGIN")
    try:
        with psycopg.connect(dsn, user="cache_user", autocommit=True) as c:
            c.execute("SET pg_rerank.cache = off")  # a session's own choice
            with pytest.raises(errors.CantChangeRuntimeParam):
                c.execute("SET pg_rerank.cache_size = '1GB'")
            with pytest.raises(errors.InsufficientPrivilege):
                c.execute("SELECT pg_rerank_cache_reset()")
    finally:
        conn.execute("DROP ROLE cache_user")


@pytest.fixture(scope="module")
def tiny_cache_server(dsn):
    """A second server beside the test cluster, preloading pg_rerank with a 1 kB score
    cache (3 sets of 8 scores), stopped and removed afterwards."""
    with psycopg.connect(dsn, autocommit=True) as c:
        settings = {name: c.execute(f"SHOW {name}").fetchone()[0]
                    for name in ("pg_rerank.model_dir", "pg_rerank.onnxruntime")}
    with second_server(dsn, "tiny-cache", 54380) as s:
        run([str(s.bindir / "initdb"), "-D", str(s.data), "-U", "postgres", "-A", "trust", "--no-sync"], s.owner)
        conf = {
            "port": s.port, "listen_addresses": "'127.0.0.1'", "unix_socket_directories": f"'{s.sock}'",
            "shared_preload_libraries": "'pg_rerank'", "pg_rerank.cache_size": "'1kB'",
            "pg_rerank.model_dir": f"'{settings['pg_rerank.model_dir']}'",
            "pg_rerank.onnxruntime": f"'{settings['pg_rerank.onnxruntime']}'",
            "pg_rerank.model": "'minilm-debian'", "pg_rerank.worker_threads": 1,
            "shared_buffers": "'16MB'", "max_connections": 10, "fsync": "off",
        }
        with open(s.data / "postgresql.conf", "a") as f:
            f.writelines(f"{k} = {v}\n" for k, v in conf.items())
        s.start()
        yield f"host=127.0.0.1 port={s.port} user=postgres dbname=postgres"


def test_a_tiny_cache_evicts_and_stays_correct(conn, tiny_cache_server):
    docs = sample(conn, 40, offset=700)
    with psycopg.connect(tiny_cache_server, autocommit=True) as c:
        c.execute("CREATE EXTENSION pg_rerank")
        c.execute("SET pg_rerank.execution = worker")
        wait_for(lambda: worker(c)["state"] == "ready", "the second server's worker")
        assert worker(c)["cache_capacity"] == 24
        t0 = time.monotonic()
        first = scores(c, docs)
        second = scores(c, docs)
        hits, misses = counts(c)
        w = worker(c)
        print(f"\ntiny cache: 40 documents twice in {time.monotonic() - t0:.1f} s: "
              f"{hits} hits, {misses} misses, {w['cache_evictions']} evictions")
    # 40 documents cannot all stay in 24 entries: the second pass misses at least 16.
    assert misses >= 40 + 16 and hits <= 24
    assert w["cache_evictions"] >= 16
    assert second == first
