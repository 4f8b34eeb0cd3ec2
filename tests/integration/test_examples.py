"""The application examples (examples/python with psycopg 3, examples/node with
node-postgres) run against the test cluster as a user would run them: a subprocess given
the DSN and a query text, printing the reranked hybrid results. A dev-set query whose
relevant package the reranker puts first: each program, in both of its modes (one
statement with rerank_topk; candidate ids and texts sent as arrays to rerank()), must
print that package first, with the score the server gives it, and a well-formed ranking."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON_EXAMPLE = REPO / "examples" / "python" / "hybrid_search.py"
NODE_DIR = REPO / "examples" / "node"

# "Mail notifier for Blackbox/Fluxbox": its one relevant package, bbmail (d01157), is the
# reranked top hit (0.997; the second scores 0.04).
QUERY_ID = "q01148"
K = 5
ROW = re.compile(r"^\s*(\d+)\s+(-?\d+\.\d{4})\s+(d\d+)\s+(\S+)\s+(.*)$")


def as_root(cmd):
    return cmd if os.geteuid() == 0 else ["sudo", "-n", *cmd]


def ensure_node():
    """node and npm, installed from Debian's packages when missing (fails if it cannot)."""
    if not (shutil.which("node") and shutil.which("npm")):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nodejs", "npm"]):
            out = subprocess.run(as_root(cmd), env=env, capture_output=True, text=True, timeout=600)
            assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm are not on PATH after installing Debian's nodejs and npm"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert int(version.lstrip("v").split(".")[0]) >= 18, f"node {version}: the example needs 18 or later"
    return node, npm


@pytest.fixture(scope="module")
def node():
    node, npm = ensure_node()
    # The pinned node-postgres of package-lock.json, as CI and users install it.
    out = subprocess.run([npm, "ci", "--prefer-offline", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"npm ci failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
    assert (NODE_DIR / "node_modules" / "pg" / "package.json").is_file()
    return node


@pytest.fixture(scope="module")
def expected(dsn, queries, qrels):
    """The query, its relevant document and the score the server gives that pair."""
    import psycopg

    query = queries[QUERY_ID]
    (relevant,) = qrels[QUERY_ID]
    with psycopg.connect(dsn, autocommit=True) as conn:
        score = conn.execute(
            "SELECT rerank_score(%s, body) FROM packages WHERE id = %s", (query, relevant)).fetchone()[0]
    return query, relevant, score


def run_example(cmd, cwd):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{cmd[:2]} exited {out.returncode}:\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
    lines = out.stdout.splitlines()
    assert lines and lines[0].split()[:4] == ["rank", "score", "id", "packages"], out.stdout
    rows = []
    for line in lines[1:]:
        m = ROW.match(line)
        assert m, f"unexpected output line: {line!r}"
        rows.append((int(m[1]), float(m[2]), m[3], m[4], m[5]))
    return rows


def check(rows, expected):
    query, relevant, score = expected
    assert [r[0] for r in rows] == list(range(1, K + 1)), rows
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True), rows
    assert len({r[2] for r in rows}) == K, rows
    top = rows[0]
    assert top[2] == relevant, f"top result {top[2]} ({top[3]}), expected {relevant}: {rows}"
    assert top[3] == "bbmail" and "mail notifier" in top[4], top
    # The printed score is the server's score of that pair (printed to 4 decimals).
    assert abs(top[1] - score) < 1e-4, (top[1], score)
    assert rows[1][1] < score - 0.5, rows


@pytest.mark.parametrize("mode", ["statement", "arrays"])
def test_python_example(dsn, expected, mode):
    cmd = [sys.executable, str(PYTHON_EXAMPLE), dsn, expected[0], "-k", str(K)]
    if mode == "arrays":
        cmd.append("--arrays")
    check(run_example(cmd, PYTHON_EXAMPLE.parent), expected)


@pytest.mark.parametrize("mode", ["statement", "arrays"])
def test_node_example(dsn, expected, node, mode):
    cmd = [node, "hybrid_search.js", dsn, expected[0], "-k", str(K)]
    if mode == "arrays":
        cmd.append("--arrays")
    check(run_example(cmd, NODE_DIR), expected)


def test_node_example_takes_urls(node):
    """node-postgres takes postgres:// URLs; the example also parses libpq's key=value form."""
    script = ("const { clientConfig } = require('./hybrid_search.js');"
              "console.log(JSON.stringify([clientConfig(process.argv[1]), clientConfig(process.argv[2])]));")
    out = subprocess.run(
        [node, "-e", script, "host=127.0.0.1 port=54331 user=postgres dbname='my db' password='a\\'b'",
         "postgres://u@h:1/d"], cwd=NODE_DIR, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        '[{"host":"127.0.0.1","port":54331,"user":"postgres","database":"my db","password":"a\'b"},'
        '{"connectionString":"postgres://u@h:1/d"}]')
