"""The background worker (the test cluster preloads pg_rerank): same scores as the
backend, requests of several connections batched together, the bounded queue, cancel and
statement_timeout while queued and while running, SIGHUP reloads, CUDA that cannot start,
and recovery after kill -9. The kill test runs last: it restarts every connection."""
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg import errors

from conftest import in_thread, put_model, reload, sample, stats, wait_for, worker

QUERY = "SELECT array_agg(idx ORDER BY idx), array_agg(score ORDER BY idx) FROM rerank(%s, %s, raw => true)"


@pytest.fixture(scope="module")
def dsn(dsn):
    """These tests count pairs and requests: documents are read up to the model's window
    (pg_rerank.long_documents = truncate), one pair each, and the score cache, which would
    answer documents scored again, is off (test_long.py covers windows, test_cache.py the
    cache)."""
    return dsn + " options='-c pg_rerank.long_documents=truncate -c pg_rerank.cache=off'"


def test_worker_is_ready(wconn):
    w = worker(wconn)
    assert w["state"] == "ready" and w["pid"], w
    assert w["device"] == "cpu"


def test_worker_scores_match_backend(dsn, wconn, queries, reference):
    worst = 0.0
    with psycopg.connect(dsn, autocommit=True) as back:
        back.execute("SET pg_rerank.execution = backend")
        for qid, cands in list(reference.items())[:10]:
            docs = [r[0] for r in wconn.execute(
                "SELECT p.body FROM unnest(%s::text[]) WITH ORDINALITY c(id, ord) JOIN packages p ON p.id = c.id "
                "ORDER BY c.ord", ([d for d, _, _ in cands],))]
            i1, s1 = wconn.execute(QUERY, (queries[qid], docs)).fetchone()
            i2, s2 = back.execute(QUERY, (queries[qid], docs)).fetchone()
            assert i1 == i2 == list(range(1, 101))
            worst = max(worst, max(abs(a - b) for a, b in zip(s1, s2)))
            # And both agree with the Python reference.
            assert max(abs(a - c[2]) for a, c in zip(s1, cands)) < 1e-4
    print(f"\nworker vs backend, 10 queries x 100 candidates: max |logit diff| = {worst:.2e}")
    assert worst < 1e-5


def test_eight_connections_share_batches(dsn, wconn):
    wconn.execute("SELECT pg_rerank_stats_reset()")
    jobs = [(f"library for {w}", sample(wconn, 50, 50 * i))
            for i, w in enumerate(["audio", "images", "fonts", "python", "games", "networking", "science", "kernel"])]
    with psycopg.connect(dsn, autocommit=True) as back:
        back.execute("SET pg_rerank.execution = backend")
        serial = [back.execute(QUERY, job).fetchone() for job in jobs]

    def run(job):
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("SET pg_rerank.execution = worker")
            return [c.execute(QUERY, job).fetchone() for _ in range(5)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, jobs))
    for want, got in zip(serial, results):
        for idx, scores in got:
            assert idx == want[0]
            assert max(abs(a - b) for a, b in zip(scores, want[1])) < 1e-5
    st = stats(wconn)
    print(f"\n8 connections x 5 requests x 50 pairs: {st['batches']} batches, "
          f"{st['shared_batches']} with pairs of several requests, mean {st['mean_batch_pairs']:.1f} pairs")
    assert st["requests"] == 40 and st["pairs"] == 2000
    assert st["shared_batches"] > 0, st
    # Batches are full: 4 pairs, the CPU's limit (pg_rerank.max_batch_pairs = 0).
    assert st["mean_batch_pairs"] > 3.5, st
    assert st["queue_wait_p99_ms"] is not None and st["inference_p99_ms"] >= st["inference_mean_ms"] * 0.8


def test_bulk_pairs_go_to_the_worker_in_bounded_requests(dsn, wconn):
    """rerank_pairs() over 9,000 pairs of three queries: requests of at most 1,024 pairs,
    the same scores as in the backend, NULL pairs left out."""
    wconn.execute("SELECT pg_rerank_stats_reset()")
    docs = sample(wconn, 3000)
    topics = ["audio library", "fonts for the desktop", "python module"]
    qs = [topics[i % 3] for i in range(9000)] + [None]
    ds = [docs[i // 3] for i in range(9000)] + ["orphan document"]
    bulk = "SELECT rerank_pairs(%s, %s, model => 'tiny/bert', raw => true)"
    got = wconn.execute(bulk, (qs, ds)).fetchone()[0]
    st = stats(wconn, "tiny/bert")
    assert (st["requests"], st["bulk_requests"], st["pairs"]) == (9, 9, 9000), st
    with psycopg.connect(dsn, autocommit=True) as back:
        back.execute("SET pg_rerank.execution = backend")
        want = back.execute(bulk, (qs, ds)).fetchone()[0]
    assert len(got) == 9001 and got[-1] is None and want[-1] is None
    assert max(abs(a - b) for a, b in zip(got[:-1], want[:-1])) < 1e-5
    # Pair i really is (qs[i], ds[i]): spot-check against single-pair calls.
    for i in [0, 1, 2, 1023, 1024, 8999]:
        alone = wconn.execute("SELECT rerank_score(%s, %s, model => 'tiny/bert', raw => true)", (qs[i], ds[i])).fetchone()[0]
        assert abs(alone - got[i]) < 1e-5, i


def long_request(dsn, docs, pid_box=None, timeout_ms=0):
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET pg_rerank.execution = worker")
        c.execute(f"SET statement_timeout = {int(timeout_ms)}")
        if pid_box is not None:
            pid_box.append(c.execute("SELECT pg_backend_pid()").fetchone()[0])
        return c.execute("SELECT count(*) FROM rerank('compression', %s)", (docs,)).fetchone()[0]


def test_queue_full_is_an_error_not_a_hang(dsn, wconn):
    docs = sample(wconn, 300, repeat=8)
    reload(wconn, max_queued_pairs=300)
    try:
        wait_for(lambda: wconn.execute("SHOW pg_rerank.max_queued_pairs").fetchone()[0] == "300", "the backend setting")
        t, out = in_thread(lambda: long_request(dsn, docs))
        wait_for(lambda: worker(wconn)["queued_pairs"] >= 300, "the long request to be queued")
        wconn.execute("SET pg_rerank.queue_timeout = '100ms'")
        t0 = time.monotonic()
        with pytest.raises(errors.InsufficientResources) as e:
            wconn.execute("SELECT count(*) FROM rerank('q', %s)", (sample(wconn, 50),))
        waited = time.monotonic() - t0
        assert "queue is full" in str(e.value)
        assert waited < 5.0, waited
        t.join()
        assert out.get("value") == 300, out
    finally:
        reload(wconn, max_queued_pairs=None)


@pytest.mark.parametrize("how", ["cancel", "statement_timeout"])
def test_interrupt_while_queued_and_while_running(dsn, wconn, how):
    docs = sample(wconn, 1000, repeat=8)
    wconn.execute("SELECT pg_rerank_stats_reset()")
    pid = []
    timeout_s = 2.0 if how == "statement_timeout" else 0
    started = time.monotonic()
    t, out = in_thread(lambda: long_request(dsn, docs, pid, timeout_s * 1000))
    wait_for(lambda: worker(wconn)["queued_pairs"] >= 1000, "the long request to be running")

    # Queued: this request (seconds of work) is interrupted while it waits or runs.
    wconn.execute("SET statement_timeout = '300ms'")
    t0 = time.monotonic()
    with pytest.raises(errors.QueryCanceled):
        wconn.execute("SELECT count(*) FROM rerank('q', %s)", (sample(wconn, 200, repeat=8),))
    queued_late = time.monotonic() - t0 - 0.3
    wconn.execute("RESET statement_timeout")

    # Running: interrupt the long request itself (its own timeout, or a cancel).
    if how == "cancel":
        t0 = time.monotonic()
        assert wconn.execute("SELECT pg_cancel_backend(%s)", (pid[0],)).fetchone()[0]
    else:
        t0 = started + timeout_s
        assert stats(wconn)["requests"] == 0, "the long request was still running at its timeout"
    t.join()
    running_late = time.monotonic() - t0
    assert isinstance(out.get("error"), errors.QueryCanceled), out
    print(f"\n{how}: queued request returned {queued_late * 1000:.0f} ms after its timeout, "
          f"running request {running_late * 1000:.0f} ms after the cancel")
    assert queued_late < 1.0 and running_late < 1.0
    # The worker drops the withdrawn pairs: the queue empties and nothing was counted
    # as a finished request (the short one counts as cancelled if the worker had taken it).
    wait_for(lambda: worker(wconn)["queued_pairs"] == 0, "the queue to empty")
    st = stats(wconn)
    assert st["requests"] == 0 and st["cancelled"] in (1, 2), st
    assert wconn.execute("SELECT count(*) FROM rerank('q', ARRAY['a'])").fetchone()[0] == 1


def test_statement_timeout_in_worker_mode(wconn):
    docs = sample(wconn, 1000, repeat=8)
    wconn.execute("SET statement_timeout = '300ms'")
    t0 = time.monotonic()
    with pytest.raises(errors.QueryCanceled):
        wconn.execute("SELECT count(*) FROM rerank('compression', %s)", (docs,))
    assert time.monotonic() - t0 < 1.5
    wconn.execute("RESET statement_timeout")
    wait_for(lambda: worker(wconn)["queued_pairs"] == 0, "the queue to empty")


def test_sighup_reloads_models(dsn, wconn, swap_dir):
    loads = (stats(wconn, "swap") or {"loads": 0})["loads"]
    put_model(swap_dir, "swap", "tiny/bert")
    wconn.execute("SELECT set_config('pg_rerank.model_dir', %s, false)", (str(swap_dir),))
    q = "SELECT score FROM rerank('a query', ARRAY['a document'], model => 'swap', raw => true)"

    def backend_score():
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("SET pg_rerank.execution = backend")
            c.execute("SELECT set_config('pg_rerank.model_dir', %s, false)", (str(swap_dir),))
            return c.execute(q).fetchone()[0]

    bert = wconn.execute(q).fetchone()[0]
    assert abs(bert - backend_score()) < 1e-5
    put_model(swap_dir, "swap", "tiny/xlm-roberta")
    # Still the loaded session until the reload...
    assert wconn.execute(q).fetchone()[0] == bert
    reload(wconn)
    xlmr = wconn.execute(q).fetchone()[0]
    assert abs(xlmr - backend_score()) < 1e-5
    assert abs(xlmr - bert) > 1e-3
    assert stats(wconn, "swap")["loads"] == loads + 2


def test_failed_model_does_not_stop_the_worker(wconn, swap_dir):
    pid = worker(wconn)["pid"]
    put_model(swap_dir, "broken", "tiny/bert")
    (swap_dir / "broken" / "model.onnx").write_bytes(b"not an onnx file")
    wconn.execute("SELECT set_config('pg_rerank.model_dir', %s, false)", (str(swap_dir),))
    for _ in range(3):
        with pytest.raises(errors.DataCorrupted) as e:
            wconn.execute("SELECT * FROM rerank('q', ARRAY['d'], model => 'broken')")
        assert "could not load" in str(e.value)
    w = worker(wconn)
    assert w["pid"] == pid and w["state"] == "ready"
    assert "broken" in (w["status"] or "")
    wconn.execute("RESET pg_rerank.model_dir")
    assert wconn.execute("SELECT count(*) FROM rerank('q', ARRAY['d'])").fetchone()[0] == 1


def test_a_200_byte_model_name_has_its_own_statistics(wconn, swap_dir):
    # Issue 20, item 9: the statistics kept 120 bytes of a name (and progress 64) where a
    # name may hold 200: such a model was counted under a clipped name, its backends
    # never found that entry (cache hits went uncounted), and names of the same first 120
    # bytes shared one.
    name = "m" * 199 + "a"
    assert len(name.encode()) == 200
    put_model(swap_dir, name, "tiny/bert")
    wconn.execute("SELECT set_config('pg_rerank.model_dir', %s, false)", (str(swap_dir),))
    wconn.execute("SET pg_rerank.cache = on")
    q = "SELECT count(*) FROM rerank('q', ARRAY['a', 'b', 'c'], model => %s)"
    try:
        # The model loads (which empties the score cache: these scores are not kept).
        assert wconn.execute(q, (name,)).fetchone()[0] == 3
        wconn.execute("SELECT pg_rerank_stats_reset()")
        assert wconn.execute(q, (name,)).fetchone()[0] == 3
        # The same call again: answered from the score cache, counted on the model's entry.
        assert wconn.execute(q, (name,)).fetchone()[0] == 3
    finally:
        wconn.execute("RESET pg_rerank.model_dir")
        wconn.execute("RESET pg_rerank.cache")
    row = stats(wconn, name)
    assert row is not None, [r[0][:12] + "..." for r in wconn.execute("SELECT model FROM pg_rerank_stats")]
    assert row["pairs"] == 3 and row["requests"] == 1, row
    assert row["cache_hits"] == 3 and row["cache_misses"] == 3, row


def test_progress_and_status_follow_pg_stat_activity_rules(dsn, wconn, swap_dir):
    # Issue 20, item 7: any role saw every role's requests in pg_rerank_progress (pids and
    # models) and the worker's last problem with the server's file paths. Now a role sees
    # its own requests, and pg_read_all_stats (or a superuser) everything.
    roles = {"alice": "", "bob": "", "carol": " IN ROLE pg_read_all_stats"}
    for r, extra in roles.items():
        wconn.execute(f"DROP ROLE IF EXISTS rerank_{r}")
        wconn.execute(f"CREATE ROLE rerank_{r} LOGIN{extra}")
    as_role = {r: psycopg.conninfo.make_conninfo(dsn, user=f"rerank_{r}") for r in roles}
    put_model(swap_dir, "broken-acl", "tiny/bert")
    (swap_dir / "broken-acl" / "model.onnx").write_bytes(b"not an onnx file")
    try:
        docs = sample(wconn, 1000, repeat=8)
        box = []

        def alice():
            # pg_rerank.execution is a superuser's setting: auto goes to the worker.
            with psycopg.connect(as_role["alice"], autocommit=True) as c:
                box.append(c.execute("SELECT pg_backend_pid()").fetchone()[0])
                return c.execute("SELECT count(*) FROM rerank('compression', %s)", (docs,)).fetchone()[0]

        t, out = in_thread(alice)
        wait_for(lambda: box or out, "alice's backend to start")
        assert box, out
        # The view grants nothing to PUBLIC; the function under it is PUBLIC's to call.
        progress = "SELECT pid FROM pg_rerank_progress_raw()"
        wait_for(lambda: (box[0],) in wconn.execute(progress).fetchall(), "alice's request to show")
        # A model that fails to load: the worker's status names its files (a later load
        # that works clears it, so after alice's model is in).
        wconn.execute("SELECT set_config('pg_rerank.model_dir', %s, false)", (str(swap_dir),))
        with pytest.raises(errors.DataCorrupted):
            wconn.execute("SELECT * FROM rerank('q', ARRAY['d'], model => 'broken-acl')")
        wconn.execute("RESET pg_rerank.model_dir")
        seen = {}
        for r in roles:
            with psycopg.connect(as_role[r], autocommit=True) as c:
                seen[r] = ([p for (p,) in c.execute(progress)],
                           c.execute("SELECT status FROM pg_rerank_worker()").fetchone()[0])
        assert box[0] in seen["alice"][0], seen
        assert seen["bob"][0] == [], seen
        assert box[0] in seen["carol"][0], seen
        assert "broken-acl" in (seen["carol"][1] or ""), seen
        assert seen["bob"][1] == "<insufficient privilege>", seen
        assert seen["alice"][1] == "<insufficient privilege>", seen
        assert wconn.execute("SELECT pg_cancel_backend(%s)", (box[0],)).fetchone()[0]
        t.join(timeout=30)
        assert not t.is_alive() and isinstance(out.get("error"), errors.QueryCanceled), out
    finally:
        wconn.execute("RESET pg_rerank.model_dir")
        for r in roles:
            wconn.execute(f"DROP ROLE IF EXISTS rerank_{r}")


def test_cuda_that_cannot_start(wconn):
    # CI's ONNX Runtime is the CPU build: CUDA cannot start there.
    try:
        reload(wconn, device="cuda")
        with pytest.raises(errors.ConfigFileError) as e:
            wconn.execute("SELECT * FROM rerank('q', ARRAY['d'])")
        assert "CUDA" in str(e.value)
        assert "device_fallback" in (e.value.diag.message_hint or "")
        reload(wconn, device_fallback="on")
        assert wconn.execute("SELECT count(*) FROM rerank('q', ARRAY['d'])").fetchone()[0] == 1
        assert stats(wconn)["device"] == "cpu"
        assert "CUDA" in (worker(wconn)["status"] or "")
    finally:
        reload(wconn, device=None, device_fallback=None)
    assert wconn.execute("SELECT count(*) FROM rerank('q', ARRAY['d'])").fetchone()[0] == 1


def test_slots_of_a_terminated_worker_are_reaped(dsn, wconn):
    # Issue 20, item 10: reaped_slots was never asserted. A worker ended by SIGTERM (no
    # crash: the postmaster restarts it alone, after a second) leaves the request it was running; its
    # backend fails with the worker gone and marks the slot cancelled, and the next worker
    # reaps it.
    before = worker(wconn)
    docs = sample(wconn, 1000, repeat=8)
    t, out = in_thread(lambda: long_request(dsn, docs))
    wait_for(lambda: wconn.execute(
        "SELECT count(*) FROM pg_rerank_progress WHERE state = 'running'").fetchone()[0] >= 1,
        "the long request to be running")
    # SIGTERM from outside: the worker joins no database, so pg_terminate_backend() does
    # not know it.
    os.kill(before["pid"], signal.SIGTERM)
    t.join(timeout=60)
    assert not t.is_alive()
    err = out.get("error")
    assert isinstance(err, psycopg.Error) and err.sqlstate == "58000", out
    assert "exited before it finished this request" in str(err)
    w = wait_for(lambda: (lambda w: w["state"] == "ready" and w["pid"] != before["pid"]
                          and w["reaped_slots"] > before["reaped_slots"] and w)(worker(wconn)),
                 "a new worker that reaped the slot", timeout=60)
    assert w["reaped_slots"] == before["reaped_slots"] + 1
    assert w["queued_pairs"] == 0
    assert wconn.execute("SELECT count(*) FROM rerank('q', ARRAY['a', 'b'])").fetchone()[0] == 2


def test_kill_9_of_the_worker_then_recovery(dsn, wconn):
    old = worker(wconn)["pid"]
    docs = sample(wconn, 1000, repeat=8)
    t, out = in_thread(lambda: long_request(dsn, docs))
    wait_for(lambda: worker(wconn)["queued_pairs"] >= 1000, "the long request to be running")
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    t.join(timeout=30)
    assert not t.is_alive()
    # Issue 20, item 10: this accepted any error. A worker killed with -9 is a crash of a
    # process attached to shared memory: the postmaster ends every backend and restarts.
    # The waiting backend either sees the worker gone first (58000, pg_rerank's error) or
    # is ended by the postmaster (its connection closes); nothing else is right.
    err = out.get("error")
    assert isinstance(err, psycopg.Error), out
    crash = isinstance(err, psycopg.OperationalError) and (
        err.sqlstate == "57P02" or "server closed the connection unexpectedly" in str(err)
        or "terminating connection because of crash of another server process" in str(err))
    gone = err.sqlstate == "58000" and "exited before it finished this request" in str(err)
    assert crash or gone, f"{type(err).__name__} {err.sqlstate}: {err}"
    print(f"\nkill -9: the waiting request failed after {time.monotonic() - t0:.2f} s: "
          f"{str(out['error']).splitlines()[0]}")

    def recovered():
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("SET pg_rerank.execution = worker")
                n = c.execute("SELECT count(*) FROM rerank('q', ARRAY['a', 'b'])").fetchone()[0]
                return n == 2 and worker(c)
        except psycopg.Error:
            return None

    w = wait_for(recovered, "the server and its worker to come back", timeout=60)
    assert w["pid"] != old and w["state"] == "ready"
