"""Integration tests against a live cluster started by scripts/test.sh: PostgreSQL 15 with
pgvector and pg_rerank, the shared Debian corpus loaded by scripts/load_corpus.py."""
import json
import os
from pathlib import Path

import psycopg
import pytest

DSN = os.environ.get("PG_RERANK_DSN", "")
SHARED = Path(os.environ.get("PG_RERANK_SHARED", Path(__file__).resolve().parents[3] / "shared"))
DATA = SHARED / "data" / "debian"


@pytest.fixture(scope="session")
def dsn():
    if not DSN:
        pytest.fail("PG_RERANK_DSN is not set: run the tests through scripts/test.sh")
    return DSN


@pytest.fixture()
def conn(dsn):
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture(scope="session")
def queries():
    with open(DATA / "queries_dev.jsonl") as f:
        return {q["id"]: q["text"] for q in map(json.loads, f)}


@pytest.fixture(scope="session")
def reference():
    """{query id: [(doc id, first-stage rank, reference logit)]} in first-stage order."""
    out = {}
    with open(DATA / "dev_reference.tsv") as f:
        next(f)
        for line in f:
            q, d, rank, logit = line.rstrip("\n").split("\t")
            out.setdefault(q, []).append((d, int(rank), float(logit)))
    for cands in out.values():
        cands.sort(key=lambda c: c[1])
    return out


@pytest.fixture(scope="session")
def qrels():
    rel = {}
    with open(DATA / "qrels_dev.tsv") as f:
        for line in f:
            q, d, g = line.split()
            rel.setdefault(q, {})[d] = int(g)
    return rel
