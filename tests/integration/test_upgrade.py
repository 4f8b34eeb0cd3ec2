"""Upgrades: a database on the previous version, updated with ALTER EXTENSION pg_rerank
UPDATE, has exactly the objects of a fresh install of the current version, and every
function works after the update.

The frozen install script of each earlier version is sql/pg_rerank--X.sql; each schema
change ships sql/pg_rerank--A--B.sql. scripts/setup.sh installs both kinds."""
import re
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]
# Every released version, oldest first: each is installed and updated to the current one.
PREVIOUS = ("0.1.0", "0.2.0", "0.3.0")

# Everything the extension owns, described by what a user can observe: signatures with
# argument names and defaults, results, volatility, strictness, parallel safety, the C
# symbol or SQL body, privileges, comments, view definitions and aggregate wiring.
CATALOG = """
SELECT 'function', p.oid::regprocedure::text,
       concat_ws(' | ', pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),
                 p.prokind, p.provolatile, p.proisstrict, p.proparallel, p.prosrc,
                 p.proacl::text, obj_description(p.oid, 'pg_proc'))
FROM pg_proc p
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_rerank'
UNION ALL
SELECT 'aggregate', a.aggfnoid::regprocedure::text,
       concat_ws(' | ', a.aggtransfn, a.aggfinalfn, a.aggfinalextra, a.aggfinalmodify,
                 a.aggtranstype::regtype)
FROM pg_aggregate a
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = a.aggfnoid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_rerank'
UNION ALL
SELECT 'view', c.oid::regclass::text,
       concat_ws(' | ', pg_get_viewdef(c.oid), c.relacl::text, obj_description(c.oid, 'pg_class'))
FROM pg_class c
JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_rerank'
ORDER BY 1, 2
"""


def current_version():
    control = (REPO / "pg_rerank.control").read_text()
    return re.search(r"default_version\s*=\s*'([^']+)'", control).group(1)


@pytest.fixture(scope="module")
def databases(dsn):
    names = ("pg_rerank_upgraded", "pg_rerank_fresh")
    with psycopg.connect(dsn, autocommit=True) as c:
        for name in names:
            c.execute(f"DROP DATABASE IF EXISTS {name}")
            c.execute(f"CREATE DATABASE {name}")
    yield {name: psycopg.conninfo.make_conninfo(dsn, dbname=name) for name in names}
    with psycopg.connect(dsn, autocommit=True) as c:
        for name in names:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_every_version_has_an_upgrade_path(conn):
    versions = {r[0] for r in conn.execute(
        "SELECT version FROM pg_available_extension_versions WHERE name = 'pg_rerank'")}
    assert current_version() in versions
    chain = [*PREVIOUS, current_version()]
    for i, previous in enumerate(PREVIOUS):
        assert previous in versions, (
            f"pg_rerank--{previous}.sql is not installed: scripts/setup.sh installs the frozen "
            "install scripts of sql/")
        path = conn.execute(
            "SELECT path FROM pg_extension_update_paths('pg_rerank') WHERE source = %s AND target = %s",
            (previous, current_version())).fetchone()
        assert path and path[0] == "--".join(chain[i:])


@pytest.mark.parametrize("previous", PREVIOUS)
def test_an_update_gives_what_a_fresh_install_gives(databases, previous):
    with psycopg.connect(databases["pg_rerank_upgraded"], autocommit=True) as old:
        old.execute("DROP EXTENSION IF EXISTS pg_rerank")
        old.execute(f"CREATE EXTENSION pg_rerank VERSION '{previous}'")
        # Between installing the new library and the update, the previous version's
        # functions run on the new library where their arguments did not change; where
        # they did, the call is an error, never a crash.
        q, doc = "lossless compression library", "zlib implements the deflate compression method"
        rows = "(VALUES (1, 'GNU Chess is a chess-playing program'), (2, %s)) AS t(id, body)"
        assert old.execute(f"SELECT rerank_topk(%s, id, body, 1) FROM {rows}", (q, doc)).fetchone()[0] == [2]
        # rerank gained min_score in 0.2.0; rerank, rerank_score and rerank_pairs gained
        # instruction in 0.3.0.
        if previous in ("0.1.0", "0.2.0"):
            with pytest.raises(psycopg.errors.InternalError_, match="min_score" if previous == "0.1.0" else "instruction"):
                old.execute("SELECT * FROM rerank(%s, ARRAY[%s], 'minilm-debian')", (q, doc))
            with pytest.raises(psycopg.errors.InternalError_, match="instruction"):
                old.execute("SELECT rerank_score(%s, %s, 'minilm-debian')", (q, doc))
        else:
            assert old.execute("SELECT idx FROM rerank(%s, ARRAY[%s], 'minilm-debian')", (q, doc)).fetchall() == [(1,)]
        # Functions whose result columns changed refuse to run under the old declaration
        # (Postgres would read the new values by the old columns' types and crash).
        changed = {"0.1.0": ["pg_rerank_worker()", "pg_rerank_stats", "rerank_models()"],
                   "0.2.0": ["pg_rerank_worker()", "pg_rerank_stats"]}.get(previous, [])
        for source in changed:
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
                old.execute(f"SELECT * FROM {source}")
            assert "ALTER EXTENSION pg_rerank UPDATE" in e.value.diag.message_hint
        assert old.execute("SELECT 1").fetchone() == (1,)
        before = old.execute(CATALOG).fetchall()
        old.execute("ALTER EXTENSION pg_rerank UPDATE")
        version = old.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_rerank'").fetchone()[0]
        upgraded = old.execute(CATALOG).fetchall()
    with psycopg.connect(databases["pg_rerank_fresh"], autocommit=True) as new:
        new.execute("CREATE EXTENSION IF NOT EXISTS pg_rerank")
        fresh = new.execute(CATALOG).fetchall()

    assert version == current_version()
    assert before != fresh, "the previous version should differ from the current one"
    missing = sorted(set(fresh) - set(upgraded))
    extra = sorted(set(upgraded) - set(fresh))
    assert not missing and not extra, (
        "ALTER EXTENSION UPDATE does not give a fresh install's objects: a schema change "
        f"needs its sql/pg_rerank--A--B.sql.\nmissing after the update: {missing}\n"
        f"left over after the update: {extra}")


def test_every_function_works_after_the_update(databases):
    with psycopg.connect(databases["pg_rerank_upgraded"], autocommit=True) as c:
        c.execute("SET pg_rerank.model = 'minilm-debian'")
        q = "lossless compression library"
        docs = ["GNU Chess is a chess-playing program",
                "zlib implements the deflate compression method"]
        assert c.execute("SELECT idx FROM rerank(%s, %s::text[], min_score => 0.2)", (q, docs)).fetchall() == [(2,)]
        one = c.execute("SELECT rerank_score(%s, %s)", (q, docs[1])).fetchone()[0]
        assert one > 0.2
        assert c.execute("SELECT rerank_pairs(ARRAY[%s, %s], %s::text[])", (q, q, docs)).fetchone()[0][1] == pytest.approx(one, abs=1e-5)
        assert c.execute("SELECT rerank_score(%s, %s, 'tiny/qwen3', instruction => 'Find packages')",
                         (q, docs[1])).fetchone()[0] is not None
        rows = "(VALUES (1, %s), (2, %s)) AS t(id, body)"
        assert c.execute(f"SELECT rerank_topk(%s, id, body, 1) FROM {rows}", (q, *docs)).fetchone()[0] == [2]
        assert c.execute(f"SELECT rerank_topk(%s, id, body, 2, NULL, 0.2) FROM {rows}",
                         (q, *docs)).fetchone()[0] == [2]
        scores = c.execute(f"SELECT rerank_topk_scores(%s, id, body, 2, 'minilm-debian', NULL) FROM {rows}",
                           (q, *docs)).fetchone()[0]
        assert scores[0] == pytest.approx(one, abs=1e-5)
        vec = c.execute("SELECT embed(%s, 'all-minilm-l6-v2')", (q,)).fetchone()[0]
        assert len(vec) == 384
        batch = c.execute("SELECT count(*) FROM embed_batch(%s::text[], 'all-minilm-l6-v2')", (docs,)).fetchone()[0]
        assert batch == 2
        assert c.execute("SELECT array_agg(id) FROM rrf(ARRAY[1, 2], ARRAY[2, 3])").fetchone()[0] == [2, 1, 3]
        kinds = dict(c.execute("SELECT name, kind FROM rerank_models()").fetchall())
        assert kinds["minilm-debian"] == "cross-encoder" and kinds["all-minilm-l6-v2"] == "bi-encoder"
        assert c.execute("SELECT state FROM pg_rerank_worker()").fetchone()[0] == "ready"
        assert c.execute("SELECT count(*) FROM pg_rerank_stats WHERE model = 'minilm-debian'").fetchone()[0] == 1
        c.execute("SELECT count(*) FROM pg_rerank_progress").fetchone()
        c.execute("SELECT pg_rerank_stats_reset()")
        c.execute("SELECT pg_rerank_cache_reset()")
        assert c.execute("SELECT cache_capacity > 0 FROM pg_rerank_worker()").fetchone()[0]
        # The same pair twice after the reset: one miss, then one hit (issue 20, item 10:
        # this asserted cache_hits >= 0, which no count can fail).
        c.execute("SET pg_rerank.cache = on")
        again = [c.execute("SELECT rerank_score(%s, %s)", (q, docs[1])).fetchone()[0] for _ in range(2)]
        assert again[0] == again[1]
        hits, misses = c.execute(
            "SELECT cache_hits, cache_misses FROM pg_rerank_stats WHERE model = 'minilm-debian'").fetchone()
        assert (hits, misses) == (1, 1)


def test_the_update_from_0_3_0_keeps_privileges(dsn):
    """Issue 20, item 8: an update that drops and recreates a function resets its
    privileges to PUBLIC. A REVOKE and a GRANT on rerank() made under 0.3.0 survive the
    update to the current version unchanged."""
    name = "pg_rerank_acl"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
        for role in ("rerank_acl_reader", "rerank_acl_other"):
            c.execute(f"DROP ROLE IF EXISTS {role}")
            c.execute(f"CREATE ROLE {role}")
    acl = """SELECT p.oid::regprocedure::text, p.proacl::text FROM pg_proc p
             WHERE p.proname IN ('rerank', 'rerank_score', 'rerank_pairs') ORDER BY 1"""
    try:
        with psycopg.connect(psycopg.conninfo.make_conninfo(dsn, dbname=name), autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_rerank VERSION '0.3.0'")
            for (fn,) in c.execute("SELECT oid::regprocedure::text FROM pg_proc WHERE proname = 'rerank'").fetchall():
                c.execute(f"REVOKE EXECUTE ON FUNCTION {fn} FROM PUBLIC")
                c.execute(f"GRANT EXECUTE ON FUNCTION {fn} TO rerank_acl_reader")
            c.execute("REVOKE EXECUTE ON FUNCTION rerank_score(text, text, text, boolean, text) FROM PUBLIC")
            before = c.execute(acl).fetchall()
            revoked = [a.strip("{}").split(",") for f, a in before if f.startswith("rerank(")]
            assert revoked and all(any(e.startswith("rerank_acl_reader=X/") for e in a)
                                   and not any(e.startswith("=") for e in a) for a in revoked), before
            c.execute("ALTER EXTENSION pg_rerank UPDATE")
            assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_rerank'").fetchone()[0] \
                == current_version()
            assert c.execute(acl).fetchall() == before
            # Still enforced: the role granted may call rerank(), another may not.
            c.execute("SET ROLE rerank_acl_reader")
            assert c.execute("SELECT count(*) FROM rerank('q', ARRAY['d'], 'tiny/bert')").fetchone()[0] == 1
            c.execute("SET ROLE rerank_acl_other")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT count(*) FROM rerank('q', ARRAY['d'], 'tiny/bert')")
            c.execute("RESET ROLE")
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            for role in ("rerank_acl_reader", "rerank_acl_other"):
                c.execute(f"DROP ROLE IF EXISTS {role}")


def test_drop_extension_leaves_the_server_wide_worker_running(conn, databases):
    before = conn.execute("SELECT pid, starts FROM pg_rerank_worker()").fetchone()
    with psycopg.connect(databases["pg_rerank_fresh"], autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_rerank")
        c.execute("DROP EXTENSION pg_rerank")
        left = c.execute(
            "SELECT count(*) FROM pg_proc WHERE proname LIKE ANY (ARRAY['rerank%', 'pg_rerank%', 'embed%', 'rrf'])"
        ).fetchone()[0]
        assert left == 0
    # The worker belongs to the server: other databases keep being served by the same one.
    assert conn.execute("SELECT pid, starts FROM pg_rerank_worker()").fetchone() == before
    score = conn.execute(
        "SELECT rerank_score('lossless compression library', 'zlib implements the deflate "
        "compression method', 'minilm-debian')").fetchone()[0]
    assert score > 0.2
