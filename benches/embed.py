"""embed_batch() against the Python stack on the same model, inputs and threads (issue 12).

Inputs: the first N documents of the corpus, embedded as documents by all-MiniLM-L6-v2 (the
bi-encoder that made doc_emb.npy). Systems, all in this one run, each twice in alternation
(the faster of the two rounds counts):
  - `SELECT idx, embedding FROM embed_batch(texts, 'all-minilm-l6-v2')` through psycopg
    in chunks of 256 texts, in backend mode (pg_rerank.threads = THREADS) and in worker
    mode (the bench cluster's worker: worker_threads = 2, one single-threaded session per
    thread),
  - Python onnxruntime on the same model.onnx (intra-op threads = THREADS), tokenized with
    the `tokenizers` package from the same tokenizer.json, sorted by length and padded per
    batch of 32 as sentence-transformers' encode() does, mean-pooled and normalised in
    numpy,
  - sentence-transformers (PyTorch, torch threads = THREADS) when it is installed.
Every system's vectors are checked against doc_emb.npy before it counts. Reports texts/s
and the ratio of each against Python onnxruntime.

    python benches/embed.py SHARED DSN OUT_JSON [texts] [threads]
"""
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psycopg
from tokenizers import Tokenizer

SHARED, DSN, OUT_JSON = sys.argv[1:4]
N = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
THREADS = int(sys.argv[5]) if len(sys.argv) > 5 else 2
MODEL = Path(SHARED) / "models" / "all-minilm-l6-v2"
DATA = Path(SHARED) / "data" / "debian"
CHUNK = 256


def texts():
    out = []
    with open(DATA / "corpus.jsonl") as f:
        for line in f:
            out.append(json.loads(line)["text"])
            if len(out) == N:
                break
    return out


def check(name, vecs, ref):
    vecs = np.asarray(vecs, dtype=np.float32)
    cos = (vecs * ref).sum(1) / np.linalg.norm(vecs, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999, f"{name}: min cosine {cos.min()}"
    return float(cos.min())


def sql_embed(docs, execution):
    with psycopg.connect(DSN, autocommit=True) as c:
        c.execute(f"SET pg_rerank.execution = {execution}")
        c.execute(f"SET pg_rerank.threads = {THREADS}")
        c.execute("SELECT embed('warm up', 'all-minilm-l6-v2')")
        t0 = time.perf_counter()
        out = []
        for i in range(0, len(docs), CHUNK):
            rows = c.execute("SELECT embedding FROM embed_batch(%s, 'all-minilm-l6-v2') ORDER BY idx",
                             (docs[i:i + CHUNK],)).fetchall()
            out.extend(r[0] for r in rows)
        return time.perf_counter() - t0, out


def python_onnxruntime(docs):
    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(MODEL / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    sess.run(None, {n: np.ones((1, 4), dtype=np.int64) for n in names})
    t0 = time.perf_counter()
    enc = tok.encode_batch([d.strip() for d in docs])
    order = sorted(range(len(docs)), key=lambda i: -len(enc[i].ids))
    out = [None] * len(docs)
    for b in range(0, len(order), 32):
        rows = order[b:b + 32]
        width = max(len(enc[i].ids) for i in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, i in enumerate(rows):
            n = len(enc[i].ids)
            ids[r, :n] = enc[i].ids
            mask[r, :n] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = sess.run(None, {n: feed[n] for n in names})[0]
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
        for r, i in enumerate(rows):
            out[i] = pooled[r]
    return time.perf_counter() - t0, out


def sentence_transformers(docs):
    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(THREADS)
    model = SentenceTransformer(str(MODEL), device="cpu")
    model.encode(["warm up"])
    t0 = time.perf_counter()
    out = model.encode(docs, batch_size=32, normalize_embeddings=True)
    return time.perf_counter() - t0, list(out)


def main():
    docs = texts()
    ref = np.load(DATA / "doc_emb.npy")[:len(docs)].astype(np.float32)
    systems = {
        "embed_batch() in SQL, backend": lambda: sql_embed(docs, "backend"),
        "embed_batch() in SQL, worker": lambda: sql_embed(docs, "worker"),
        "Python onnxruntime": lambda: python_onnxruntime(docs),
    }
    try:
        import sentence_transformers as _  # noqa: F401
        systems["sentence-transformers (PyTorch)"] = lambda: sentence_transformers(docs)
    except ImportError:
        print("sentence-transformers is not installed: skipped")
    best, cosine = {}, {}
    for _ in range(2):
        for name, run in systems.items():
            seconds, vecs = run()
            cosine[name] = check(name, vecs, ref)
            best[name] = min(best.get(name, seconds), seconds)
            print(f"{name}: {len(docs) / seconds:.1f} texts/s", flush=True)
    base = len(docs) / best["Python onnxruntime"]
    results = {
        name: {"texts_per_s": round(len(docs) / s, 1), "vs_python_onnxruntime": round(len(docs) / s / base, 3),
               "min_cosine_vs_doc_emb": round(cosine[name], 7)}
        for name, s in best.items()
    }
    out = {
        "benchmark": "embed", "texts": len(docs), "threads": THREADS, "model": "all-minilm-l6-v2",
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "onnxruntime": ort.__version__},
        "date": time.strftime("%Y-%m-%d"), "results": results,
    }
    Path(OUT_JSON).write_text(json.dumps(out, indent=2) + "\n")
    for name, r in results.items():
        print(f"{name:36s} {r['texts_per_s']:8.1f} texts/s  {r['vs_python_onnxruntime']:.3f}x Python onnxruntime")


if __name__ == "__main__":
    main()
