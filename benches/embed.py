"""embed_batch() against the Python stack on the same model, inputs and threads (issue 12).

Inputs: the first N documents of the corpus, embedded as documents by all-MiniLM-L6-v2 (the
bi-encoder that made doc_emb.npy), sorted by token count, longest first (as
sentence-transformers' encode() orders a list, so that the calls of 256 texts, a multiple
of its batch of 32, give the Python systems the batches one encode() of all the texts
would run; the engine sorts each call anyway), in calls of 256 texts. Every system gets
the same calls, interleaved: for each call, every system embeds it in turn, in an order
that rotates from one call to the next, and the whole is done twice (ROUNDS), so that a
slow minute of a shared machine falls on all systems alike. A system's texts/s is all its
texts over all its time; the tables' ratios are those of these totals. Systems (each set
up and warmed up once, before the timed calls):
  - `SELECT idx, embedding FROM embed_batch(texts, 'all-minilm-l6-v2')` through psycopg
    (one connection each), in backend mode (pg_rerank.threads = THREADS) and in worker
    mode (the bench cluster's worker: worker_threads = 2, one single-threaded session per
    thread),
  - Python onnxruntime on the same model.onnx (intra-op threads = THREADS), tokenized with
    the `tokenizers` package from the same tokenizer.json (inside the timing), each call's
    texts sorted by length and padded per batch of 32 as sentence-transformers' encode()
    does, mean-pooled and normalised in numpy,
  - sentence-transformers' SentenceTransformer.encode() of each call's texts (PyTorch on
    the CPU, torch.set_num_threads(THREADS), batches of 32, normalize_embeddings=True)
    when it is installed. The shared model directory is in sentence-transformers' layout
    (modules.json: Transformer -> Pooling (mean) -> Normalize, max_seq_length 256) but
    holds only the ONNX graph, no PyTorch weights: the run rebuilds the PyTorch BertModel
    from model.onnx's weights (benches/onnx_to_torch.py's mapping, strict load, no
    pooler: the graph has none) into a temporary copy of the directory, with the same
    sentence-transformers and tokenizer files, and loads that. (Its ONNX backend,
    backend="onnx", would run the same graph in onnxruntime again, and needs
    optimum-onnx, which pins transformers < 4.58 and tokenizers 0.22: not installed.)
Every system's vectors are checked against doc_emb.npy before it counts. Reports texts/s
(overall and per round) and the ratio of each against Python onnxruntime.

    python benches/embed.py SHARED DSN OUT_JSON [texts] [threads]
"""
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psycopg
from tokenizers import Tokenizer

from feeds import padded

SHARED, DSN, OUT_JSON = sys.argv[1:4]
N = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
THREADS = int(sys.argv[5]) if len(sys.argv) > 5 else 2
MODEL = Path(SHARED) / "models" / "all-minilm-l6-v2"
DATA = Path(SHARED) / "data" / "debian"
CHUNK = 256
ROUNDS = 2


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


def sql_embed(execution):
    c = psycopg.connect(DSN, autocommit=True)
    c.execute(f"SET pg_rerank.execution = {execution}")
    c.execute(f"SET pg_rerank.threads = {THREADS}")
    c.execute("SELECT embed('warm up', 'all-minilm-l6-v2')")

    def run(docs):
        rows = c.execute("SELECT embedding FROM embed_batch(%s, 'all-minilm-l6-v2') ORDER BY idx", (docs,)).fetchall()
        return [r[0] for r in rows]
    return run


def python_onnxruntime():
    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(MODEL / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    sess.run(None, {n: np.ones((1, 4), dtype=np.int64) for n in names})

    def run(docs):
        enc = tok.encode_batch([d.strip() for d in docs])
        order = sorted(range(len(docs)), key=lambda i: -len(enc[i].ids))
        out = [None] * len(docs)
        for b in range(0, len(order), 32):
            rows = order[b:b + 32]
            # One text each: its token_type_ids are zeros.
            feed = padded(enc, rows)
            mask = feed["attention_mask"]
            hidden = sess.run(None, {n: feed[n] for n in names})[0]
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
            for r, i in enumerate(rows):
                out[i] = pooled[r]
        return out
    return run


def torch_model_dir(out):
    """A copy of the shared sentence-transformers directory with PyTorch weights rebuilt
    from its model.onnx (the directory has no others)."""
    from transformers import AutoConfig, AutoModel

    from onnx_to_torch import state_dict
    config = AutoConfig.from_pretrained(MODEL)
    model = AutoModel.from_config(config, add_pooling_layer=False)
    model.load_state_dict(state_dict(MODEL / "model.onnx"), strict=True)
    model.eval()
    model.save_pretrained(out)
    for f in MODEL.iterdir():
        if f.is_dir():
            shutil.copytree(f, out / f.name)
        elif f.name not in ("model.onnx", "config.json"):
            shutil.copy(f, out / f.name)
    return out


def sentence_transformers(model_dir):
    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(THREADS)
    # The graph has no pooler (sentence-transformers does not use one): none is built.
    model = SentenceTransformer(str(model_dir), device="cpu", model_kwargs={"add_pooling_layer": False})
    assert model.max_seq_length == 256, model.max_seq_length
    model.encode(["warm up"])

    def run(docs):
        return list(model.encode(docs, batch_size=32, normalize_embeddings=True))
    return run


def main():
    load_start = os.getloadavg()
    docs = texts()
    ref = np.load(DATA / "doc_emb.npy")[:len(docs)].astype(np.float32)
    versions = {"onnxruntime": ort.__version__}
    tmp = tempfile.TemporaryDirectory()
    systems = {
        "embed_batch() in SQL, backend": sql_embed("backend"),
        "embed_batch() in SQL, worker": sql_embed("worker"),
        "Python onnxruntime": python_onnxruntime(),
    }
    try:
        import sentence_transformers as st
        import torch
        versions.update({"sentence_transformers": st.__version__, "torch": torch.__version__})
        systems["sentence-transformers (PyTorch)"] = sentence_transformers(torch_model_dir(Path(tmp.name) / "model"))
    except ImportError:
        print("sentence-transformers is not installed: skipped")
    names = list(systems)
    # The texts longest first, as encode() orders a list: calls of 256 (a multiple of 32) of
    # them give the Python systems the batches one encode() of all the texts would run.
    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    tok.enable_truncation(256)
    lengths = [len(e.ids) for e in tok.encode_batch([d.strip() for d in docs])]
    order = sorted(range(len(docs)), key=lambda i: -lengths[i])
    calls = [order[i:i + CHUNK] for i in range(0, len(docs), CHUNK)]
    seconds = {n: [0.0] * ROUNDS for n in names}
    vecs = {n: [None] * len(docs) for n in names}
    for r in range(ROUNDS):
        for k, idxs in enumerate(calls):
            chunk = [docs[i] for i in idxs]
            shift = (k + r) % len(names)
            for n in names[shift:] + names[:shift]:
                t0 = time.perf_counter()
                out = systems[n](chunk)
                seconds[n][r] += time.perf_counter() - t0
                assert len(out) == len(chunk), n
                for i, v in zip(idxs, out):
                    vecs[n][i] = v
        print(f"round {r + 1}: " + ", ".join(f"{n} {len(docs) / seconds[n][r]:.1f}" for n in names) + " texts/s",
              flush=True)
    cosine = {n: check(n, vecs[n], ref) for n in names}
    base = sum(seconds["Python onnxruntime"])
    results = {
        n: {"texts_per_s": round(ROUNDS * len(docs) / sum(seconds[n]), 1),
            "vs_python_onnxruntime": round(base / sum(seconds[n]), 3),
            "texts_per_s_by_round": [round(len(docs) / s, 1) for s in seconds[n]],
            "vs_python_onnxruntime_by_round": [round(b / s, 3) for b, s in zip(seconds["Python onnxruntime"], seconds[n])],
            "min_cosine_vs_doc_emb": round(cosine[n], 7)}
        for n in names
    }
    out = {
        "benchmark": "embed", "texts": len(docs), "threads": THREADS, "model": "all-minilm-l6-v2",
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), **versions},
        "date": time.strftime("%Y-%m-%d"),
        # The machine's 1-minute load average when the run started and ended (2 cores: above
        # 2, other processes shared them).
        "load_average": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "method": f"texts sorted by token count, longest first, in calls of {CHUNK}; every system on each call "
                  f"in a rotating order, {ROUNDS} rounds; texts/s over all rounds",
        "python_batch": 32,
        "results": results,
    }
    if "sentence-transformers (PyTorch)" in systems:
        out["sentence_transformers_weights"] = (
            "PyTorch BertModel rebuilt from the shared model.onnx's weights (strict load, no pooler), in a "
            "copy of the shared sentence-transformers directory; encode(batch_size=32, "
            "normalize_embeddings=True), torch.set_num_threads(threads)")
    tmp.cleanup()
    Path(OUT_JSON).write_text(json.dumps(out, indent=2) + "\n")
    for n, r in results.items():
        print(f"{n:36s} {r['texts_per_s']:8.1f} texts/s  {r['vs_python_onnxruntime']:.3f}x Python onnxruntime "
              f"(rounds: {', '.join(f'{x:.3f}' for x in r['vs_python_onnxruntime_by_round'])})")


if __name__ == "__main__":
    main()
