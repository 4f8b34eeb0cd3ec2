"""The flagship query (issue 18): examples/hybrid_search.sql (embed the query, pgvector and
full-text top 100, rrf(), rerank the fused top 100 with rerank_topk), uncached, through
the worker, on the demo query and the first QUERIES dev queries, with per-stage times from
pg_rerank_stages(), against

  - today's path: the same statement with pg_rerank.chunk_select = 0 (every window of a
    long document scored, as in 0.3.0),
  - the Python stack a user would write instead: the same first stage in SQL, then
    onnxruntime (the model as given, the `tokenizers` package, batches of 32 in input
    order as sentence-transformers' CrossEncoder runs them) on every window of the same
    candidates (the engine's own windows, from crates/engine/examples/windows.rs; the
    splitting is not timed, in Python's favour),

and `rerank()` of the same 100 candidates, both settings. The systems run in a rotating
order per query, after a warm-up, so that a slow minute of a shared machine falls on all.

    python benches/flagship.py SHARED DSN WINDOWS_BIN OUT_JSON OUT_PNG [queries (20)] [threads (2)]
    python benches/flagship.py SHARED DSN WINDOWS_BIN OUT_JSON OUT_PNG --plot   (redraw from OUT_JSON)
"""
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psycopg
from tokenizers import Tokenizer

from feeds import padded

SHARED, DSN, WINDOWS_BIN, OUT_JSON, OUT_PNG = sys.argv[1:6]
QUERIES = int(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[6] != "--plot" else 20
THREADS = int(sys.argv[7]) if len(sys.argv) > 7 and sys.argv[7] != "--plot" else 2
DATA = Path(SHARED) / "data" / "debian"
MODEL = Path(SHARED) / "models" / "minilm-debian"
REPO = Path(__file__).resolve().parents[1]
HYBRID = (REPO / "examples" / "hybrid_search.sql").read_text().replace(":'query'", "%(query)s")
CANDIDATES = HYBRID[:HYBRID.index("SELECT r.rank")] + "SELECT id, body FROM candidates"
DEMO = "image viewer for the terminal"


def stages(conn):
    return {s: ms for s, ms in conn.execute("SELECT stage, ms FROM pg_rerank_stages()")}


def sql_system(conn, select):
    def run(query):
        conn.execute(f"SET pg_rerank.chunk_select = {select}")
        t = time.perf_counter()
        top = [r[1] for r in conn.execute(HYBRID, {"query": query}).fetchall()]
        ms = (time.perf_counter() - t) * 1000
        return ms, stages(conn), top
    return run


def rerank_call(conn, select):
    def run(query, docs):
        conn.execute(f"SET pg_rerank.chunk_select = {select}")
        t = time.perf_counter()
        conn.execute("SELECT idx, score FROM rerank(%s, %s) ORDER BY score DESC", (query, docs)).fetchall()
        return (time.perf_counter() - t) * 1000, stages(conn)
    return run


def python_system(conn):
    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    tok.enable_truncation(512)
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(MODEL / "model.onnx"), so, providers=["CPUExecutionProvider"])

    def run(query):
        t = time.perf_counter()
        rows = conn.execute(CANDIDATES, {"query": query}).fetchall()
        first = (time.perf_counter() - t) * 1000
        lines = "".join(json.dumps({"query": query, "doc": body}) + "\n" for _, body in rows)
        windows = [json.loads(x) for x in subprocess.run(
            [WINDOWS_BIN, str(MODEL), "0"], input=lines, capture_output=True, text=True, check=True).stdout.splitlines()]
        t = time.perf_counter()
        pairs = [(query, w) for ws in windows for w in ws]
        encs = tok.encode_batch(pairs)
        tokenize = (time.perf_counter() - t) * 1000
        logits = np.zeros(len(encs), np.float32)
        for i in range(0, len(encs), 32):
            idx = list(range(i, min(i + 32, len(encs))))
            logits[idx] = sess.run(None, padded(encs, idx))[0][:, 0]
        model = (time.perf_counter() - t) * 1000 - tokenize
        best, k = [], 0
        for ws in windows:
            best.append(float(logits[k:k + len(ws)].max()))
            k += len(ws)
        top = [rows[i][0] for i in np.argsort(-np.array(best), kind="stable")[:10]]
        return first + tokenize + model, {"first stage (SQL)": first, "tokenize": tokenize, "model": model,
                                          "pairs": len(pairs)}, top
    return run


def main():
    queries = [DEMO] + [json.loads(line)["text"] for line in open(DATA / "queries_dev.jsonl")][:QUERIES]
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("SET pg_rerank.execution = worker")
        conn.execute("SET pg_rerank.cache = off")
        default = int(conn.execute("SELECT reset_val FROM pg_settings WHERE name = 'pg_rerank.chunk_select'")
                      .fetchone()[0])
        systems = {"pg_rerank, today's path (chunk_select = 0)": sql_system(conn, 0),
                   f"pg_rerank, default (chunk_select = {default})": sql_system(conn, default),
                   "Python onnxruntime, every window": python_system(conn)}
        calls = {"rerank(), chunk_select = 0": rerank_call(conn, 0),
                 f"rerank(), chunk_select = {default}": rerank_call(conn, default)}
        for run in systems.values():  # warm-up: models loaded
            run(queries[0])
        results = {name: [] for name in list(systems) + list(calls)}
        for i, q in enumerate(queries):
            names = list(systems)
            names = names[i % len(names):] + names[:i % len(names)]
            for name in names:
                ms, st, top = systems[name](q)
                results[name].append({"query": q, "ms": ms, "stages": st, "top10": top})
            docs = [b for _, b in conn.execute(CANDIDATES, {"query": q}).fetchall()]
            for name, run in calls.items():
                ms, st = run(q, docs)
                results[name].append({"query": q, "ms": ms, "stages": st})
            print(q, {n: round(r[-1]["ms"]) for n, r in results.items()}, flush=True)
    summary = {}
    for name, rows in results.items():
        st_names = sorted({k for r in rows for k in r["stages"]})
        summary[name] = {
            "p50_ms": statistics.median(r["ms"] for r in rows),
            "mean_ms": statistics.mean(r["ms"] for r in rows),
            "stage_median_ms": {k: statistics.median(r["stages"].get(k, 0.0) for r in rows) for k in st_names},
        }
    base = f"pg_rerank, default (chunk_select = {default})"
    same = [a["top10"] == b["top10"] for a, b in zip(results[base], results["pg_rerank, today's path (chunk_select = 0)"])]
    out = {"queries": len(queries), "threads": THREADS, "default_chunk_select": default,
           "same_top10_as_today": sum(same), "summary": summary, "calls": results}
    json.dump(out, open(OUT_JSON, "w"), indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "calls"}, indent=1))
    plot(out)


def plot(out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [n for n in out["summary"] if not n.startswith("rerank()")]
    fig, ax = plt.subplots(figsize=(9, 3))
    order = ["sql", "first stage (SQL)", "embed", "cache", "split", "queue", "worker", "backend", "tokenize", "model"]
    colour = {k: f"C{i}" for i, k in enumerate(order)}
    colour["model"] = colour["worker"]  # the model's work, in both stacks
    for y, name in enumerate(names):
        left = 0.0
        st = out["summary"][name]["stage_median_ms"]
        for k in order:
            v = st.get(k, 0.0)
            if v > 0:
                ax.barh([y], [v], left=left, label=k, color=colour[k])
                left += v
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="lower right")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel(f"ms, median per stage over {out['queries']} queries ({out['threads']} threads)")
    ax.set_title("The flagship hybrid query, uncached: where the time goes")
    fig.tight_layout()
    fig.savefig(OUT_PNG, dpi=110)


if __name__ == "__main__":
    if sys.argv[-1] == "--plot":  # redraw OUT_PNG from OUT_JSON
        plot(json.load(open(OUT_JSON)))
    else:
        main()
