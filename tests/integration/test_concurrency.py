"""Several connections at once, cancel and statement_timeout in the middle of a long
rerank, and broken models: every failure is an error with its SQLSTATE and the backend
lives on. Each runs with the model in the backend and in the background worker."""
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from conftest import SHARED

# The score cache would answer documents these tests score again.
pytestmark = pytest.mark.usefixtures("no_score_cache")

QUERY = "SELECT array_agg(idx ORDER BY idx), array_agg(score ORDER BY idx) FROM rerank(%s, %s)"


@pytest.fixture(params=["backend", "worker"])
def mconn(request, conn):
    conn.execute(f"SET pg_rerank.execution = {request.param}")
    return conn


def corpus_sample(conn, n, offset=0):
    return [r[0] for r in conn.execute("SELECT body FROM packages ORDER BY id LIMIT %s OFFSET %s", (n, offset))]


def test_eight_connections_agree_with_serial(dsn, conn):
    jobs = [(f"library for {w}", corpus_sample(conn, 50, 50 * i))
            for i, w in enumerate(["audio", "images", "fonts", "python", "games", "networking", "science", "kernel"])]
    serial = [conn.execute(QUERY, job).fetchone() for job in jobs]

    def run(job):
        with psycopg.connect(dsn) as c:
            return c.execute(QUERY, job).fetchone()

    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(run, jobs))
    for (i1, s1), (i2, s2) in zip(serial, parallel):
        assert i1 == i2
        assert max(abs(a - b) for a, b in zip(s1, s2)) < 1e-5


def long_docs(conn):
    # 1000 candidates of full model length: several seconds of inference on one thread.
    return [(b + " ") * 8 for b in corpus_sample(conn, 1000)]


def test_statement_timeout_stops_a_long_rerank(mconn):
    conn = mconn
    docs = long_docs(conn)
    conn.execute("SET pg_rerank.max_batch_tokens = 2048")
    conn.execute("SET statement_timeout = '300ms'")
    t0 = time.monotonic()
    with pytest.raises(errors.QueryCanceled):
        conn.execute("SELECT count(*) FROM rerank('compression', %s)", (docs,))
    elapsed = time.monotonic() - t0
    conn.execute("RESET statement_timeout")
    assert elapsed < 3.0, f"stopped {elapsed:.2f} s after start, timeout 0.3 s"
    assert conn.execute("SELECT count(*) FROM rerank('q', ARRAY['a'])").fetchone()[0] == 1


def test_cancel_from_another_connection(dsn, mconn):
    conn = mconn
    docs = long_docs(conn)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    conn.execute("SET pg_rerank.max_batch_tokens = 2048")
    canceled_at = []

    def cancel():
        time.sleep(0.5)
        with psycopg.connect(dsn, autocommit=True) as other:
            canceled_at.append(time.monotonic())
            assert other.execute("SELECT pg_cancel_backend(%s)", (pid,)).fetchone()[0]

    t = threading.Thread(target=cancel)
    t.start()
    with pytest.raises(errors.QueryCanceled):
        conn.execute("SELECT count(*) FROM rerank('compression', %s)", (docs,))
    stopped = time.monotonic()
    t.join()
    assert stopped - canceled_at[0] < 2.0, "cancel honoured between batches"
    assert conn.execute("SELECT 1").fetchone()[0] == 1


@pytest.fixture()
def broken_models():
    root = Path(os.environ.get("PG_RERANK_STATE", "/tmp")) / "broken-models"
    shutil.rmtree(root, ignore_errors=True)
    good = SHARED / "models" / "tiny" / "bert"
    for name in ["truncated", "garbage", "no-onnx", "bad-tokenizer", "ok"]:
        (root / name).mkdir(parents=True)
        if name != "no-onnx":
            shutil.copy(good / "model.onnx", root / name / "model.onnx")
        shutil.copy(good / "tokenizer.json", root / name / "tokenizer.json")
        shutil.copy(good / "config.json", root / name / "config.json")
    onnx = (good / "model.onnx").read_bytes()
    (root / "truncated" / "model.onnx").write_bytes(onnx[: len(onnx) // 2])
    (root / "garbage" / "model.onnx").write_bytes(b"not an onnx file")
    (root / "bad-tokenizer" / "tokenizer.json").write_text("{ broken")
    os.system(f"chmod -R a+rwX {root}")
    return root


@pytest.mark.parametrize("model,sqlstate,message", [
    ("truncated", "XX001", "could not load"),
    ("garbage", "XX001", "could not load"),
    ("no-onnx", "58P01", "has no model.onnx"),
    ("bad-tokenizer", "XX001", "could not load"),
    ("missing", "42704", "does not exist"),
])
def test_broken_models(mconn, broken_models, model, sqlstate, message):
    conn = mconn
    conn.execute("SELECT set_config('pg_rerank.model_dir', %s, false)", (str(broken_models),))
    with pytest.raises(psycopg.Error) as e:
        conn.execute("SELECT * FROM rerank('q', ARRAY['doc'], model => %s)", (model,))
    assert e.value.sqlstate == sqlstate
    assert message in str(e.value)
    # The backend lives on and a good model still works in the same session.
    assert conn.execute("SELECT count(*) FROM rerank('q', ARRAY['doc'], model => 'ok')").fetchone()[0] == 1
