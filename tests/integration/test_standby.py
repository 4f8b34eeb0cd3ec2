"""Reranking on a streaming hot standby: pg_basebackup of the test cluster (over a
replication connection on loopback, -R so it follows the primary), started on a free port
with its own socket directory. The configuration comes with the base backup, so the
standby preloads pg_rerank and runs its own worker. rerank() in worker mode, rerank_topk
and embed() on the standby give the primary's results. The standby is stopped and removed
afterwards, also when a test fails."""
import time

import psycopg
import pytest

from conftest import run, second_server, stats, wait_for, worker

@pytest.fixture(scope="module")
def standby(dsn):
    with psycopg.connect(dsn, autocommit=True) as primary:
        primary_port = primary.info.port
        dbname = primary.info.dbname
    with second_server(dsn, "standby") as s:
        t0 = time.monotonic()
        # A replication connection over 127.0.0.1 (initdb -A trust allows it); -R writes
        # primary_conninfo and standby.signal; -c fast: do not wait for a checkpoint.
        run([str(s.bindir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary_port), "-U", "postgres",
             "-D", str(s.data), "-R", "-X", "stream", "-c", "fast", "--no-sync"], s.owner)
        t1 = time.monotonic()
        conf = (s.data / "postgresql.conf").read_text()
        assert "shared_preload_libraries = 'pg_rerank'" in conf
        # Its own port and socket directory; everything else (preload, model settings) as
        # the primary's configuration says.
        s.start(["-o", f"-c port={s.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={s.sock}"])
        print(f"standby on port {s.port}: base backup {t1 - t0:.1f} s, start {time.monotonic() - t1:.1f} s")
        yield f"host=127.0.0.1 port={s.port} user=postgres dbname={dbname}"


@pytest.fixture()
def sconn(standby):
    with psycopg.connect(standby, autocommit=True) as c:
        yield c


def test_standby_streams_and_replays(dsn, sconn):
    assert sconn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
    status = wait_for(lambda: sconn.execute(
        "SELECT status, sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'").fetchone(),
        "the standby's WAL receiver to stream")
    with psycopg.connect(dsn, autocommit=True) as primary:
        assert status[1] == primary.info.port
        # A WAL record written on the primary now is replayed on the standby.
        lsn = primary.execute("SELECT pg_logical_emit_message(false, 'pg_rerank', 'standby test')").fetchone()[0]
        n = primary.execute("SELECT count(*) FROM packages").fetchone()[0]
    wait_for(lambda: sconn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0],
             "the standby to replay the primary's WAL")
    assert sconn.execute("SELECT count(*) FROM packages").fetchone()[0] == n
    # Read-only, as a hot standby is.
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        sconn.execute("CREATE TABLE standby_write (x int)")


def test_rerank_in_worker_mode_on_standby(dsn, sconn):
    # The standby runs its own worker (started with the postmaster, in recovery).
    wait_for(lambda: worker(sconn)["state"] == "ready", "the standby's worker to be ready")
    w = worker(sconn)
    assert w["pid"] and w["device"] == "cpu", w
    before = stats(sconn) or {"requests": 0, "pairs": 0}
    sql = """SELECT idx, score FROM rerank(%s, ARRAY(SELECT body FROM packages
                                                     WHERE tsv @@ websearch_to_tsquery('english', 'mail')
                                                     ORDER BY id LIMIT 20))"""
    query = "mail notifier"
    sconn.execute("SET pg_rerank.execution = 'worker'")
    got = sconn.execute(sql, (query,)).fetchall()
    after = stats(sconn)
    assert after["requests"] == before["requests"] + 1, (before, after)
    # Every document at least once (a long one as several windows), by the standby's worker.
    assert after["pairs"] >= before["pairs"] + 20, (before, after)
    assert worker(sconn)["pid"] == w["pid"]
    with psycopg.connect(dsn, autocommit=True) as primary:
        primary.execute("SET pg_rerank.execution = 'worker'")
        want = primary.execute(sql, (query,)).fetchall()
    assert len(got) == 20
    assert [i for i, _ in got] == [i for i, _ in want]
    assert max(abs(a[1] - b[1]) for a, b in zip(got, want)) < 1e-5, (got, want)
    assert got[0][1] > 0.5  # a real ranking, not all zeros


def test_rerank_topk_and_embed_on_standby(dsn, sconn):
    sql = """SELECT rerank_topk(%(q)s, id, body, 3), rerank_topk_scores(%(q)s, id, body, 3),
                    embed(%(q)s, 'all-minilm-l6-v2')
             FROM (SELECT id, body FROM packages WHERE tsv @@ websearch_to_tsquery('english', 'chess')
                   ORDER BY id LIMIT 10) c"""
    sconn.execute("SET pg_rerank.execution = 'worker'")
    ids, scores, emb = sconn.execute(sql, {"q": "chess engine"}).fetchone()
    with psycopg.connect(dsn, autocommit=True) as primary:
        primary.execute("SET pg_rerank.execution = 'worker'")
        want_ids, want_scores, want_emb = primary.execute(sql, {"q": "chess engine"}).fetchone()
    assert len(ids) == 3 and ids == want_ids
    assert max(abs(a - b) for a, b in zip(scores, want_scores)) < 1e-5
    assert len(emb) == 384 and max(abs(a - b) for a, b in zip(emb, want_emb)) < 1e-5
