"""pg_rerank_stages(): where the session's last statement spent its time, stage by stage,
in the worker and in the backend; and window preselection (pg_rerank.chunk_select) as
the stages and the worker's statistics count it."""
import re
import uuid

import psycopg
import pytest

from conftest import stats

PASSAGE = "zlib is a library implementing the deflate compression method found in gzip and PKZIP."
# The passage buried after 400 words of unrelated text: four windows of MiniLM's 256 tokens.
LONG = ("GNU Chess is a chess-playing program that plays against a human. " * 40 + "\n\n" + PASSAGE + "\n\n"
        + "A collection of desktop wallpapers for the GNOME desktop. " * 10)
QUERY = "lossless compression library"


def field(detail, name):
    return int(re.search(rf"(?:^|; ){name}: (\d+)", detail).group(1))


def stages(conn):
    cur = conn.execute("SELECT stage, calls, items, ms, detail FROM pg_rerank_stages()")
    return {r[0]: dict(zip(["calls", "items", "ms", "detail"], r[1:])) for r in cur.fetchall()}


@pytest.mark.parametrize("execution", ["worker", "backend"])
def test_the_stages_of_a_statement_add_up_to_it(conn, execution):
    conn.execute(f"SET pg_rerank.execution = {execution}")
    conn.execute("SET pg_rerank.cache = off")
    conn.execute("SET pg_rerank.chunk_select = 0")
    docs = ["zlib", "GNU Chess", LONG]
    rows = conn.execute("SELECT idx FROM rerank(%s, %s) ORDER BY score DESC", (QUERY, docs)).fetchall()
    assert rows[0][0] in (1, 3)
    st = stages(conn)
    model = "worker" if execution == "worker" else "backend"
    expected = {"split", model, "sql", "statement"} | ({"queue"} if execution == "worker" else set())
    assert set(st) == expected, st
    windows = field(st["split"]["detail"], "windows")
    assert st["split"]["items"] == 1 and windows >= 3, st["split"]
    # Every window of the long document is scored, and the two short documents.
    assert st[model]["items"] == windows + 2, st
    inside = sum(v["ms"] for k, v in st.items() if k not in ("sql", "statement"))
    assert abs(inside + st["sql"]["ms"] - st["statement"]["ms"]) < 1.0, st
    assert st[model]["ms"] > 0 and st["statement"]["ms"] >= st[model]["ms"]
    assert field(st[model]["detail"], "pairs") == windows + 2 and field(st[model]["detail"], "tokens") > 256

    # A new statement starts a new record: the stages are that statement's only.
    conn.execute("SELECT rerank_score(%s, 'zlib')", (QUERY,)).fetchone()
    st = stages(conn)
    assert "split" in st and st[model]["items"] == 1, st


def test_stages_count_embeddings_and_cache_hits(conn):
    conn.execute("SET pg_rerank.execution = worker")
    conn.execute("RESET pg_rerank.cache")
    doc = f"a text for the cache test of stages {uuid.uuid4()}"
    conn.execute("SELECT rerank_score(%s, %s)", (QUERY, doc)).fetchone()
    conn.execute("SELECT rerank_score(%s, %s), embed(%s, 'all-minilm-l6-v2')", (QUERY, doc, QUERY)).fetchone()
    st = stages(conn)
    assert st["cache"]["items"] == 1 and "worker" not in st, st
    assert st["embed"]["calls"] == 1 and st["embed"]["items"] == 1, st


def test_chunk_select_scores_only_the_best_windows(conn):
    conn.execute("SET pg_rerank.execution = worker")
    conn.execute("SET pg_rerank.cache = off")
    passage = conn.execute("SELECT rerank_score(%s, %s)", (QUERY, PASSAGE)).fetchone()[0]
    before = stats(conn)
    conn.execute("SET pg_rerank.chunk_select = 1")
    one = conn.execute("SELECT rerank_score(%s, %s)", (QUERY, LONG)).fetchone()[0]
    st = stages(conn)
    after = stats(conn)
    # The window that shares the query's words is the passage's: it is the one scored.
    assert abs(one - passage) < 1e-4, (one, passage)
    assert field(st["split"]["detail"], "windows scored") == 1 and st["worker"]["items"] == 1, st
    assert after["windows"] - before["windows"] == 1 and after["split_documents"] - before["split_documents"] == 1
    # Every window read gives the same best window.
    conn.execute("SET pg_rerank.chunk_select = 0")
    every = conn.execute("SELECT rerank_score(%s, %s)", (QUERY, LONG)).fetchone()[0]
    assert abs(every - one) < 1e-5
    assert field(stages(conn)["split"]["detail"], "windows") >= 3


def test_chunk_select_is_part_of_the_score_cache_key(conn):
    conn.execute("SET pg_rerank.execution = worker")
    conn.execute("RESET pg_rerank.cache")
    doc = LONG + f" (cache key test {uuid.uuid4()})"
    for select in (0, 1):
        conn.execute(f"SET pg_rerank.chunk_select = {select}")
        conn.execute("SELECT rerank_score('lossless data compression', %s)", (doc,)).fetchone()
        assert "cache" not in stages(conn) or stages(conn)["cache"]["items"] == 0, select
    conn.execute("SELECT rerank_score('lossless data compression', %s)", (doc,)).fetchone()
    assert stages(conn)["cache"]["items"] == 1
    conn.execute("RESET pg_rerank.chunk_select")


def test_stages_are_per_session(dsn, conn):
    conn.execute("SELECT rerank_score(%s, 'zlib')", (QUERY,)).fetchone()
    with psycopg.connect(dsn, autocommit=True) as other:
        assert other.execute("SELECT count(*) FROM pg_rerank_stages()").fetchone()[0] == 0
