"""Integration tests against a live cluster started by scripts/test.sh: PostgreSQL 15 with
pgvector and pg_rerank, the shared Debian corpus loaded by scripts/load_corpus.py."""
import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from psycopg import sql

DSN = os.environ.get("PG_RERANK_DSN", "")
SHARED = Path(os.environ.get("PG_RERANK_SHARED", Path(__file__).resolve().parents[3] / "shared"))
DATA = SHARED / "data" / "debian"


@pytest.fixture(scope="session")
def dsn():
    if not DSN:
        pytest.fail("PG_RERANK_DSN is not set: run the tests through scripts/test.sh")
    return DSN


@pytest.fixture(scope="module")
def no_score_cache():
    """Every connection of the module (libpq reads PGOPTIONS) with the score cache off: the
    module tests the worker's own work, and it scores the same documents again."""
    before = os.environ.get("PGOPTIONS")
    os.environ["PGOPTIONS"] = f"{before or ''} -c pg_rerank.cache=off".strip()
    yield
    if before is None:
        del os.environ["PGOPTIONS"]
    else:
        os.environ["PGOPTIONS"] = before


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


# Helpers of the worker tests (the test cluster preloads pg_rerank).

def worker(conn):
    cur = conn.execute("SELECT * FROM pg_rerank_worker()")
    return dict(zip([c.name for c in cur.description], cur.fetchone()))


def stats(conn, model="minilm-debian"):
    cur = conn.execute("SELECT * FROM pg_rerank_stats WHERE model = %s", (model,))
    row = cur.fetchone()
    return dict(zip([c.name for c in cur.description], row)) if row else None


def wait_for(check, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def reload(conn, **settings):
    """ALTER SYSTEM the settings (None resets), reload, and wait until the worker applied it."""
    before = worker(conn)["reloads"]
    for name, value in settings.items():
        if value is None:
            conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(f"pg_rerank.{name}")))
        else:
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(
                sql.Identifier(f"pg_rerank.{name}"), sql.Literal(str(value))))
    conn.execute("SELECT pg_reload_conf()")
    wait_for(lambda: worker(conn)["reloads"] > before, "the worker to reload")


def sample(conn, n, offset=0, repeat=1):
    return [(r[0] + " ") * repeat
            for r in conn.execute("SELECT body FROM packages ORDER BY id LIMIT %s OFFSET %s", (n, offset))]


@pytest.fixture()
def wconn(dsn):
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET pg_rerank.execution = worker")
        yield c


def in_thread(fn):
    out = {}

    def run():
        try:
            out["value"] = fn()
        except Exception as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, out


@pytest.fixture()
def swap_dir():
    root = Path(os.environ.get("PG_RERANK_STATE", "/tmp")) / "swap-models"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    os.system(f"chmod -R a+rwX {root}")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def put_model(root, name, source):
    dest = root / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(SHARED / "models" / source, dest)
    os.system(f"chmod -R a+rwX {root}")


# Helpers of the tests that start a second server beside the test cluster.

def free_port(start=54332):
    for port in range(start, start + 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port for a second server")


def primary_server(conn):
    """The test server's binaries (those of its running postmaster) and the OS user owning it."""
    data = Path(conn.execute("SHOW data_directory").fetchone()[0])
    owner = pwd.getpwuid(data.stat().st_uid).pw_name
    pid = int((data / "postmaster.pid").read_text().split("\n")[0])
    bindir = Path(os.readlink(f"/proc/{pid}/exe")).parent
    assert (bindir / "pg_basebackup").is_file(), bindir
    return bindir, owner


def run(cmd, owner, **kw):
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", owner, "--", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 300), **kw)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}:\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
    return out


@contextlib.contextmanager
def second_server(dsn, name, first_port=54332):
    """The place of a second server beside the test cluster, run by the test server's
    binaries and OS user: a free port, `root` (STATE/name-port, owned by that user) with
    `sock`, the socket directory, and `data`, the data directory the caller fills and
    starts with `start`. The server is stopped and the directory removed afterwards, also
    when a test fails (its log is printed then)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        bindir, owner = primary_server(c)
    port = free_port(first_port)
    root = Path(os.environ.get("PG_RERANK_STATE", "/tmp")) / f"{name}-{port}"
    data, sock, pg_ctl = root / "pgdata", root / "sock", str(bindir / "pg_ctl")

    def start(options=()):
        # Without RUST_BACKTRACE, as start_cluster starts the test cluster.
        run(["env", "-u", "RUST_BACKTRACE", "-u", "RUST_LIB_BACKTRACE", pg_ctl, "-D", str(data),
             "-l", str(root / "server.log"), "-w", "-t", "60", *options, "start"], owner)

    def stop_and_remove():
        if (data / "postmaster.pid").exists():
            subprocess.run((["runuser", "-u", owner, "--"] if os.geteuid() == 0 else [])
                           + [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)

    stop_and_remove()  # one left by a killed run
    try:
        root.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(root, owner)
        run(["mkdir", "-m", "700", str(sock)], owner)
        yield SimpleNamespace(bindir=bindir, owner=owner, port=port, root=root, data=data, sock=sock, start=start)
    except BaseException:
        log = root / "server.log"
        if log.exists():
            print(f"{name} server.log:\n" + log.read_text()[-4000:])
        raise
    finally:
        stop_and_remove()

