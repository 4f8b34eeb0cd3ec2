"""Statically quantised int8 (scripts/quantize_static.py; scripts/test.sh builds it into
PG_RERANK_STATIC_INT8_DIR) through the background worker: a pair gets the same score
alone, in a request of many pairs, and while other connections' requests share its
batches (the worker batches pairs of several requests together). With the dynamically
quantised model_int8.onnx the score moves with the other pairs of the batch."""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from conftest import sample, stats

# The score cache would answer documents these tests score again.
pytestmark = pytest.mark.usefixtures("no_score_cache")

STATIC = "minilm-debian:int8s"
QUERY = "SELECT array_agg(score ORDER BY idx) FROM rerank(%s, %s, model => %s, raw => true)"


@pytest.fixture(scope="module")
def static_dir():
    d = os.environ.get("PG_RERANK_STATIC_INT8_DIR")
    if not d:
        pytest.fail("PG_RERANK_STATIC_INT8_DIR is not set: scripts/test.sh builds the static int8 model")
    if not os.path.isfile(os.path.join(d, "minilm-debian", "model_int8s.onnx")):
        pytest.fail(f"PG_RERANK_STATIC_INT8_DIR={d} holds no minilm-debian/model_int8s.onnx")
    return d


def connect(dsn, model_dir):
    c = psycopg.connect(dsn, autocommit=True)
    c.execute("SET pg_rerank.execution = worker")
    c.execute("SET pg_rerank.long_documents = truncate")
    c.execute("SELECT set_config('pg_rerank.model_dir', %s, false)", (model_dir,))
    return c


def alone_and_alongside(dsn, model_dir, model, query, docs, others):
    """Each document scored alone (one pair per request), then all of them in one request,
    five times, while six other connections send requests of mixed lengths."""
    with connect(dsn, model_dir) as c:
        alone = [c.execute(QUERY, (query, [d], model)).fetchone()[0][0] for d in docs]
        c.execute("SELECT pg_rerank_stats_reset()")
        stop = threading.Event()

        def traffic(k):
            with connect(dsn, model_dir) as o:
                n = 0
                while not stop.is_set() or n < 3:
                    o.execute(QUERY, (f"tools for {k}", others[k], model))
                    n += 1

        with ThreadPoolExecutor(6) as pool:
            busy = [pool.submit(traffic, k) for k in range(6)]
            together = [c.execute(QUERY, (query, docs, model)).fetchone()[0] for _ in range(5)]
            stop.set()
            for b in busy:
                b.result()
        st = stats(c, model)
    worst = max(abs(a - s) for run in together for a, s in zip(alone, run))
    return worst, st


def test_static_int8_score_does_not_depend_on_other_requests(dsn, static_dir):
    with psycopg.connect(dsn, autocommit=True) as c:
        docs = sample(c, 12, 100)
        others = [sample(c, 9, 300 + 40 * k, repeat=1 + k % 3) for k in range(6)]
    docs[3] = docs[3] * 8  # one long document (truncated to 256 tokens) among short ones
    worst, st = alone_and_alongside(dsn, static_dir, STATIC, "library for audio processing", docs, others)
    print(f"\nstatic int8 through the worker: max |logit alone - beside other requests| = {worst:.2e}; {st}")
    assert st is not None and st["shared_batches"] > 0, f"no batch mixed several requests: {st}"
    assert worst <= 1e-6, worst


def test_dynamic_int8_score_depends_on_other_requests(dsn, static_dir):
    """Evidence for the test above: the same traffic moves the dynamic model's logits."""
    with psycopg.connect(dsn, autocommit=True) as c:
        docs = sample(c, 12, 100)
        others = [sample(c, 9, 300 + 40 * k, repeat=1 + k % 3) for k in range(6)]
    docs[3] = docs[3] * 8
    worst, _ = alone_and_alongside(dsn, static_dir, "minilm-debian:int8", "library for audio processing", docs, others)
    print(f"\ndynamic int8 through the worker: max |logit alone - beside other requests| = {worst:.2e}")
    assert worst > 1e-3, worst
