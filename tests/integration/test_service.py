"""The worker as a shared service (the test cluster preloads pg_rerank): nothing leaks
when backends die the way Postgres kills them (pg_terminate_backend, parallel workers
stopped by their leader, the worker itself exiting), interactive calls finish while a bulk
job runs, bad model names cannot fill its caches, huge documents and NaN scores have a
defined result, and its model memory stays under pg_rerank.worker_memory."""
import math
import os
import signal
import threading
import time

import psycopg
import pytest
from psycopg import errors

from conftest import in_thread, put_model, reload, sample, stats, wait_for, worker


@pytest.fixture(scope="module")
def dsn(dsn):
    """These tests count pairs and requests: documents are read up to the model's window
    (pg_rerank.long_documents = truncate), one pair each, and the score cache, which would
    answer documents scored again, is off (test_long.py covers windows, test_cache.py the
    cache)."""
    return dsn + " options='-c pg_rerank.long_documents=truncate -c pg_rerank.cache=off'"


def progress(conn):
    cur = conn.execute("SELECT * FROM pg_rerank_progress ORDER BY queued_at")
    return [dict(zip([c.name for c in cur.description], r)) for r in cur.fetchall()]


def queue_empties(conn, timeout=15.0):
    wait_for(lambda: worker(conn)["queued_pairs"] == 0 and not progress(conn), "the queue to empty", timeout)


def still_serves(conn):
    assert conn.execute("SELECT count(*) FROM rerank('zlib', ARRAY['a', 'b', 'c'])").fetchone()[0] == 3


def pids_waiting(conn):
    return {r["pid"] for r in progress(conn)}


@pytest.fixture(autouse=True)
def no_leftovers(dsn):
    """Whatever a test leaves running (it failed half way) is terminated after it, so one
    failure cannot hold up the worker for the tests after it."""
    yield
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("""SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()
                       AND backend_type = 'client backend'""")


def test_terminated_backends_give_their_queue_room_back(dsn, wconn):
    """pg_terminate_backend ends a waiting backend with FATAL, which does not unwind: its
    exit callback (or else the worker's reaper) must free its slot and its pairs."""
    docs = sample(wconn, 1000, repeat=8)
    pids, threads = [], []
    for _ in range(6):
        box = []
        t, out = in_thread(lambda box=box: long_request(dsn, docs, box))
        threads.append((t, out))
        wait_for(lambda box=box: box, "the backend to start")
        pids.append(box[0])
    # A backend reserves its pairs before its request is written and shows as queued.
    wait_for(lambda: set(pids) <= pids_waiting(wconn), "the 6 requests to be queued")
    assert worker(wconn)["queued_pairs"] >= 6000
    for pid in pids:
        assert wconn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
    for t, out in threads:
        t.join(timeout=30)
        assert not t.is_alive()
        assert isinstance(out.get("error"), psycopg.OperationalError), out
    queue_empties(wconn)
    print(f"\n6 backends terminated while waiting on 6,000 pairs: queued_pairs back to 0, "
          f"{worker(wconn)['reaped_slots']} slots reaped by the worker")
    still_serves(wconn)


def long_request(dsn, docs, pid_box, priority="auto"):
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET pg_rerank.execution = worker")
        c.execute(f"SET pg_rerank.priority = {priority}")
        pid_box.append(c.execute("SELECT pg_backend_pid()").fetchone()[0])
        return c.execute("SELECT count(*) FROM rerank('compression', %s)", (docs,)).fetchone()[0]


def conn_version(conn):
    return int(conn.execute("SHOW server_version_num").fetchone()[0])


def test_parallel_workers_stopped_by_statement_timeout(dsn, wconn):
    """The functions are PARALLEL SAFE: with a forced parallel plan the calls run in
    parallel workers, which their leader terminates when it hits statement_timeout."""
    leader = wconn.execute("SELECT pg_backend_pid()").fetchone()[0]
    force = "debug_parallel_query" if conn_version(wconn) >= 160000 else "force_parallel_mode"
    for s in [f"{force} = on", "parallel_setup_cost = 0", "parallel_tuple_cost = 0",
              "min_parallel_table_scan_size = 0", "max_parallel_workers_per_gather = 2"]:
        wconn.execute(f"SET {s}")
    sql = "SELECT sum(rerank_score('compression', repeat(body, 8))) FROM packages"
    plan = "\n".join(r[0] for r in wconn.execute("EXPLAIN " + sql))
    assert "Gather" in plan, plan
    seen = set()
    stop = threading.Event()

    def watch():
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.is_set():
                seen.update(pids_waiting(c))
                time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        wconn.execute("SET statement_timeout = '2s'")
        with pytest.raises(errors.QueryCanceled):
            wconn.execute(sql)
    finally:
        stop.set()
        watcher.join()
        wconn.execute("RESET statement_timeout")
        wconn.execute(f"RESET {force}")
    assert seen - {leader}, f"no parallel worker queued a request (saw {seen}, leader {leader})"
    queue_empties(wconn)
    still_serves(wconn)


def test_the_worker_exits_with_requests_in_flight(dsn, wconn):
    old = worker(wconn)["pid"]
    docs = sample(wconn, 1000, repeat=8)
    box = []
    t, out = in_thread(lambda: long_request(dsn, docs, box))
    wait_for(lambda: any(r["state"] == "running" for r in progress(wconn)), "the request to run")
    os.kill(old, signal.SIGTERM)
    t0 = time.monotonic()
    t.join(timeout=30)
    assert isinstance(out.get("error"), errors.SystemError), out
    assert "exited before it finished" in str(out["error"])
    print(f"\nworker SIGTERM: the running request failed after {time.monotonic() - t0:.2f} s")
    # Auto mode waits for the restarting worker instead of loading a private copy.
    wconn.execute("SET pg_rerank.execution = auto")
    still_serves(wconn)
    assert not wconn.execute("SELECT bool_or(loaded) FROM rerank_models()").fetchone()[0]
    w = worker(wconn)
    assert w["pid"] != old and w["state"] == "ready"
    queue_empties(wconn)


def test_interactive_call_finishes_while_a_bulk_job_runs(dsn, wconn):
    """Ordering, not timing: a search that arrives while rerank_pairs() scores 2,048 pairs
    is answered while the bulk job is still in the progress view, part done."""
    wconn.execute("SELECT pg_rerank_stats_reset()")
    docs = sample(wconn, 2048)
    qs = ["graphics library"] * len(docs)
    box = []

    def bulk():
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("SET pg_rerank.execution = worker")
            box.append(c.execute("SELECT pg_backend_pid()").fetchone()[0])
            return c.execute("SELECT cardinality(rerank_pairs(%s, %s))", (qs, docs)).fetchone()[0]

    t, out = in_thread(bulk)
    wait_for(lambda: any(r["priority"] == "bulk" and r["pairs_scored"] > 0 for r in progress(wconn)),
             "the bulk job to score its first pairs")
    got = wconn.execute("SELECT count(*) FROM rerank('compression library', %s)", (sample(wconn, 20),)).fetchone()[0]
    assert got == 20
    rows = [r for r in progress(wconn) if r["priority"] == "bulk"]
    assert rows, "the bulk job finished before the search: nothing was asserted"
    assert rows[0]["pairs_total"] == 2048 and 0 < rows[0]["pairs_scored"] < 2048, rows
    assert stats(wconn)["interactive_requests"] == 1
    print(f"\nsearch of 20 answered with the bulk job at {rows[0]['pairs_scored']} / 2048 pairs")
    wconn.execute("SELECT pg_cancel_backend(%s)", (box[0],))
    t.join(timeout=30)
    assert isinstance(out.get("error"), errors.QueryCanceled), out
    queue_empties(wconn)


def test_unknown_and_long_model_names_do_not_fill_the_worker(wconn):
    pid = worker(wconn)["pid"]
    wconn.execute("""
        CREATE OR REPLACE FUNCTION pg_temp.errors_of(names text[]) RETURNS text[] LANGUAGE plpgsql AS $$
        DECLARE n text; out text[] := '{}';
        BEGIN
            FOREACH n IN ARRAY names LOOP
                BEGIN
                    PERFORM rerank_score('q', 'd', model => n);
                    out := out || 'no error'::text;
                EXCEPTION WHEN OTHERS THEN
                    out := out || SQLSTATE;
                END;
            END LOOP;
            RETURN out;
        END $$""")
    unknown = [f"no-such-model-{i}" for i in range(400)]
    codes = wconn.execute("SELECT pg_temp.errors_of(%s)", (unknown,)).fetchone()[0]
    assert set(codes) == {"42704"}, set(codes)
    long_names = ["x" * 300, "a/" * 2000 + "b", "é" * 5000]
    codes = wconn.execute("SELECT pg_temp.errors_of(%s)", (long_names,)).fetchone()[0]
    assert set(codes) == {"42602"}, codes
    w = worker(wconn)
    assert w["pid"] == pid and w["state"] == "ready"
    assert w["failures_cached"] == 0, w
    named = {r[0] for r in wconn.execute("SELECT model FROM pg_rerank_stats")}
    assert not any(n.startswith("no-such-model") for n in named), named
    still_serves(wconn)


def test_models_are_evicted_under_worker_memory(wconn):
    names = ["tiny/bert", "tiny/xlm-roberta"]
    q = "SELECT score FROM rerank('a query', ARRAY['a document'], model => %s, raw => true)"
    want = {n: wconn.execute(q, (n,)).fetchone()[0] for n in names}
    try:
        reload(wconn, worker_memory="1MB")
        for _ in range(2):
            for n in names:
                assert abs(wconn.execute(q, (n,)).fetchone()[0] - want[n]) < 1e-6
                assert worker(wconn)["models_loaded"] == 1
        evictions = {n: stats(wconn, n)["evictions"] for n in names}
        assert all(e >= 1 for e in evictions.values()), evictions
    finally:
        reload(wconn, worker_memory=None)
    still_serves(wconn)


def test_a_200_mb_document_in_rerank_topk(wconn):
    huge = "repeat('zlib is a lossless data compression library. ', 4000000)"  # 204 MB
    sql = f"""SELECT rerank_topk('compression library', id, doc, 2), rerank_topk_scores('compression library', id, doc, 2)
              FROM (VALUES (1, 'GNU Chess is a chess-playing program'), (2, {huge}),
                           (3, 'a font for the desktop')) v(id, doc)"""
    for mode in ["worker", "backend"]:
        wconn.execute(f"SET pg_rerank.execution = {mode}")
        ids, scores = wconn.execute(sql).fetchone()
        assert ids[0] == 2 and scores[0] > 0.5, (mode, ids, scores)
    got = wconn.execute(f"SELECT idx FROM rerank('compression library', ARRAY['chess', {huge}]) LIMIT 1").fetchone()[0]
    assert got == 2


def make_nan_model(root):
    """A model whose score is sqrt(sum of the input ids - 20000): NaN for short inputs."""
    import onnx
    from onnx import TensorProto, helper

    put_model(root, "nan", "tiny/bert")
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["f", "axes"], ["s"], keepdims=1),
        helper.make_node("Sub", ["s", "k"], ["d"]),
        helper.make_node("Sqrt", ["d"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "nan",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1]), helper.make_tensor("k", TensorProto.FLOAT, [], [20000.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(root / "nan" / "model.onnx"))
    os.system(f"chmod -R a+rwX {root}")


def test_nan_scores_rank_last(wconn, swap_dir):
    make_nan_model(swap_dir)
    wconn.execute("SELECT set_config('pg_rerank.model_dir', %s, false)", (str(swap_dir),))
    long_doc = "compression library for data streams " * 20
    docs = ["a", long_doc, "b"]
    for mode in ["worker", "backend"]:
        wconn.execute(f"SET pg_rerank.execution = {mode}")
        rows = wconn.execute("SELECT idx, score FROM rerank('q', %s, model => 'nan', raw => true)", (docs,)).fetchall()
        assert rows[0][0] == 2 and not math.isnan(rows[0][1]), (mode, rows)
        assert [r[0] for r in rows[1:]] == [1, 3] and all(math.isnan(r[1]) for r in rows[1:]), (mode, rows)
        wconn.execute("SET pg_rerank.model = 'nan'")
        top = wconn.execute(
            "SELECT rerank_topk('q', id, doc, 1) FROM unnest(%s::text[]) WITH ORDINALITY d(doc, id)", (docs,)).fetchone()[0]
        wconn.execute("RESET pg_rerank.model")
        assert top == [2], (mode, top)
        assert math.isnan(wconn.execute("SELECT rerank_score('q', 'a', model => 'nan')").fetchone()[0])
    wconn.execute("RESET pg_rerank.model_dir")
