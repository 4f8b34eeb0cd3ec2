"""pg_rerank against the Python stack on the same inputs, model and threads (issue 4).

Inputs: the 100 first-stage candidates of each dev query (dev_reference.tsv), one call
per query, as a reranking service receives them. Systems, all in this one run:
  - the pg_rerank engine alone (crates/engine/examples/bench_engine.rs),
  - `SELECT idx, score FROM rerank(q, docs)` through psycopg (backend mode),
  - Python onnxruntime on the model as given, tokenized with the `tokenizers` package
    from the same tokenizer.json, padded per batch of 32 (sentence-transformers'
    CrossEncoder default),
  - Python onnxruntime on the model rewritten by onnxruntime's transformer optimizer.
Reports the median time per 100-pair call and pairs/s, and ratios against Python
onnxruntime on the model as given. sentence-transformers is not measured: it needs
PyTorch, whose PyPI wheels pull in gigabytes of CUDA libraries.

    python benches/head_to_head.py SHARED DSN ENGINE_BIN OUT_JSON OUT_PNG [queries] [repeat]
"""
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psycopg
from tokenizers import Tokenizer

SHARED, DSN, ENGINE, OUT_JSON, OUT_PNG = sys.argv[1:6]
QUERIES = int(sys.argv[6]) if len(sys.argv) > 6 else 5
REPEAT = int(sys.argv[7]) if len(sys.argv) > 7 else 1
MODEL = Path(SHARED) / "models" / "minilm-debian"
DATA = Path(SHARED) / "data" / "debian"


def inputs():
    corpus = {d["id"]: d["text"] for d in map(json.loads, open(DATA / "corpus.jsonl"))}
    qtext = {q["id"]: q["text"] for q in map(json.loads, open(DATA / "queries_dev.jsonl"))}
    cands = {}
    with open(DATA / "dev_reference.tsv") as f:
        next(f)
        for line in f:
            q, d, rank, _ = line.rstrip("\n").split("\t")
            cands.setdefault(q, []).append((int(rank), d))
    out = []
    for q, c in list(cands.items())[:QUERIES]:
        out.append((qtext[q], [corpus[d] for _, d in sorted(c)]))
    return out


def timed(fn, calls):
    fn(*calls[0])  # warm-up
    lat = []
    t0 = time.perf_counter()
    for _ in range(REPEAT):
        for args in calls:
            s = time.perf_counter()
            fn(*args)
            lat.append((time.perf_counter() - s) * 1000)
    wall = time.perf_counter() - t0
    pairs = REPEAT * sum(len(d) for _, d in calls)
    return {"calls": len(lat), "median_ms": statistics.median(lat), "pairs_per_s": pairs / wall}


def python_ort(path, threads):
    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def score(query, docs):
        out = []
        for i in range(0, len(docs), 32):
            enc = tok.encode_batch([(query, d) for d in docs[i:i + 32]])
            width = max(len(e.ids) for e in enc)
            ids = np.zeros((len(enc), width), np.int64)
            mask = np.zeros_like(ids)
            types = np.zeros_like(ids)
            for r, e in enumerate(enc):
                n = len(e.ids)
                ids[r, :n], mask[r, :n], types[r, :n] = e.ids, 1, e.type_ids
            out.append(sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0][:, 0])
        return np.concatenate(out)
    return score


def optimized(path, dest):
    from onnxruntime.transformers import optimizer
    cfg = json.load(open(MODEL / "config.json"))
    m = optimizer.optimize_model(str(path), model_type="bert", num_heads=cfg["num_attention_heads"],
                                 hidden_size=cfg["hidden_size"], opt_level=0)
    m.save_model_to_file(str(dest))
    return dest


def sql(threads):
    conn = psycopg.connect(DSN, autocommit=True)
    conn.execute("SET pg_rerank.execution = backend")
    conn.execute(f"SET pg_rerank.threads = {threads}")
    return lambda q, docs: conn.execute("SELECT idx, score FROM rerank(%s, %s)", (q, docs)).fetchall()


def engine(file, threads):
    out = subprocess.run([ENGINE, SHARED, file, str(threads), str(QUERIES), str(REPEAT)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


GEMM = """
import os, time, numpy as np
a = np.random.rand(4096, 384).astype(np.float32); b = np.random.rand(384, 1536).astype(np.float32)
a @ b
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < 3:
    a @ b; n += 1
print(2 * 4096 * 384 * 1536 * n / (time.perf_counter() - t0))
"""


def gemm_rate(threads):
    """fp32 GEMM FLOP/s of this machine at the model's shapes (numpy's OpenBLAS)."""
    env = {"OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin"}
    return float(subprocess.run([sys.executable, "-c", GEMM], env=env, check=True, capture_output=True,
                                text=True).stdout)


def flops_per_token(seq_len):
    """Multiply-adds x 2 of one token through the encoder: Q, K, V, output and the two
    feed-forward projections, plus attention scores and weighted sum over seq_len."""
    cfg = json.load(open(MODEL / "config.json"))
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    return layers * 2 * (4 * h * h + 2 * h * i + 2 * seq_len * h)


def main():
    calls = inputs()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        opt = optimized(MODEL / "model.onnx", Path(tmp) / "model_opt.onnx")
        for threads in [1, 2]:
            for file in ["model.onnx", "model_int8.onnx"]:
                row = {"threads": threads, "file": file}
                row["engine"] = engine(file, threads)
                row["python_ort"] = timed(python_ort(MODEL / file, threads), calls)
                if file == "model.onnx":
                    row["python_ort_optimized"] = timed(python_ort(opt, threads), calls)
                    row["sql"] = timed(sql(threads), calls)
                base = row["python_ort"]["median_ms"]
                for k in ["engine", "python_ort_optimized", "sql"]:
                    if k in row:
                        row[k]["speedup_vs_python_ort"] = base / row[k]["median_ms"]
                results.append(row)
                print(json.dumps(row), flush=True)
    by = {(r["threads"], r["file"]): r for r in results}
    for t in [1, 2]:
        fp, i8 = by[(t, "model.onnx")], by[(t, "model_int8.onnx")]
        fp["int8_engine_speedup_vs_fp32_engine"] = fp["engine"]["median_ms"] / i8["engine"]["median_ms"]
        fp["sql_over_engine"] = fp["sql"]["median_ms"] / fp["engine"]["median_ms"]
        tokens = fp["engine"]["tokens_per_pair"]
        fp["model_flops_per_pair"] = tokens * flops_per_token(tokens)
        fp["gemm_flops_per_s"] = gemm_rate(t)
        fp["engine_fraction_of_gemm"] = fp["engine"]["pairs_per_s"] * fp["model_flops_per_pair"] / fp["gemm_flops_per_s"]
        print(f"{t} thread(s): {tokens:.0f} tokens/pair, {fp['model_flops_per_pair'] / 1e9:.2f} GFLOP/pair, "
              f"GEMM {fp['gemm_flops_per_s'] / 1e9:.1f} GFLOP/s, engine sustains "
              f"{100 * fp['engine_fraction_of_gemm']:.0f}%", flush=True)
    json.dump({"queries": QUERIES, "repeat": REPEAT, "results": results}, open(OUT_JSON, "w"), indent=1)
    plot(results)


def plot(results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    systems = [("engine", "pg_rerank engine"), ("sql", "rerank() in SQL"), ("python_ort", "Python onnxruntime"),
               ("python_ort_optimized", "Python onnxruntime, optimized graph")]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    groups = [(r["threads"], r["file"]) for r in results]
    width = 0.2
    for k, (key, label) in enumerate(systems):
        xs, ys = [], []
        for g, r in enumerate(results):
            if key in r:
                xs.append(g + (k - 1.5) * width)
                ys.append(r[key]["pairs_per_s"])
        ax.bar(xs, ys, width, label=label)
    ax.set_xticks(range(len(groups)), [f"{f.replace('.onnx', '')}\n{t} thread{'s' if t > 1 else ''}" for t, f in groups])
    ax.set_ylabel("pairs/s (higher is better)")
    ax.set_title("MiniLM-L6 cross-encoder, 100 candidates per call, same inputs and threads")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT_PNG, dpi=110)


if __name__ == "__main__":
    main()
