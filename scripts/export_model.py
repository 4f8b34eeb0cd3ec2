#!/usr/bin/env python3
"""Export a Hugging Face reranker directory to the layout pg_rerank loads.

Two kinds of model:

* cross-encoders (a sequence-classification head with 1 or 2 labels: BERT, RoBERTa /
  XLM-R, DeBERTa-v2, ModernBERT, ...): model.onnx takes input_ids, attention_mask (and
  token_type_ids when the model has them) and returns logits [batch, labels];
* Qwen3-Reranker-style causal LMs (--qwen3, automatic for *ForCausalLM configs):
  model.onnx takes input_ids and attention_mask (left padded; position ids are
  cumsum(mask) - 1 inside the graph) and returns logits [batch, 1] =
  logit("yes") - logit("no") at the last position; reranker_prompt.json holds the prompt.

Written to OUT: model.onnx (opset 17, dynamic batch and sequence axes), tokenizer.json
(the fast tokenizer, with the truncation pg_rerank uses: the document only for
cross-encoders, the whole prompt from the right for LLM rerankers, at --max-length),
config.json and tokenizer_config.json (and special_tokens_map.json,
generation_config.json when present), model_int8.onnx with --int8 (onnxruntime
quantize_dynamic, QInt8, per-channel weights), reference.jsonl (the check pairs with the
token ids and the score PyTorch computed) and export_report.json.

The export is then checked: onnxruntime runs the graph on a few (query, document) pairs,
one at a time and as one padded batch, and its scores are compared with PyTorch running
the original model; the export fails when they differ by more than --tolerance.

Needs torch, transformers, onnx and onnxruntime (scripts/test.sh installs them into
.venv-export). Example:

    .venv-export/bin/python scripts/export_model.py ./ms-marco-MiniLM-L-6-v2 \\
        /srv/models/minilm --int8
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

OPSET = 17
# ONNX's protobuf limit: bigger graphs keep their weights in model.onnx.data beside them.
PROTOBUF_LIMIT = 1_900_000_000
COPIED = ["config.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]

# Qwen3-Reranker's prompt (https://huggingface.co/Qwen/Qwen3-Reranker-0.6B); newlines in
# the template are written as the two characters backslash and n, as pg_rerank reads it.
QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_TEMPLATE = "{prefix}<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}{suffix}"
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

# Pairs the export is checked on: short and long, related and not, one document longer
# than any maximum length (truncated), non-ASCII text.
CHECK_PAIRS = [
    ("chess engine", "GNU Chess is a chess-playing program that accepts moves in algebraic notation."),
    ("chess engine", "A library for reading and writing PNG image files."),
    ("how do I compress files", "gzip reduces the size of the named files using Lempel-Ziv coding (LZ77)."),
    ("python web framework", "Flask is a lightweight WSGI web application framework. " * 3),
    ("postgres extension for vectors", "pgvector: open-source vector similarity search for PostgreSQL."),
    ("Übersetzung Wörterbuch", "Ein deutsch-englisches Wörterbuch für die Kommandozeile: dict, ding."),
    ("what is rust", "Rust is a systems programming language focused on safety, speed and concurrency."),
    ("very long document", " ".join(f"word{i} filler text about nothing in particular." for i in range(600))),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="export_model.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", type=Path, help="Hugging Face model directory (config.json, weights, tokenizer files)")
    p.add_argument("out", type=Path, help="directory to write (created; existing files are replaced)")
    p.add_argument("--int8", action="store_true", help="also write model_int8.onnx (dynamic int8, per-channel)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--qwen3", dest="qwen3", action="store_true", default=None,
                      help="export as a Qwen3-Reranker-style yes/no LLM reranker (default: when config.json "
                           "names a *ForCausalLM architecture)")
    kind.add_argument("--cross-encoder", dest="qwen3", action="store_false",
                      help="export as a cross-encoder even if the config looks like a causal LM")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per input, special tokens included (default: the tokenizer's model_max_length, "
                        "at most the position table; 512 / 8192 when neither says)")
    p.add_argument("--instruction", default=QWEN3_INSTRUCTION, help="Qwen3: the <Instruct> line of the prompt")
    p.add_argument("--yes-token", default="yes", help="Qwen3: the token whose logit says relevant (default yes)")
    p.add_argument("--no-token", default="no", help="Qwen3: the token whose logit says not relevant (default no)")
    p.add_argument("--pairs", type=Path, default=None,
                   help="JSON lines with query and doc to check the export on (default: built-in pairs)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest |PyTorch - onnxruntime| score difference accepted (default 1e-4)")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    return p.parse_args(argv)


def log(msg):
    print(f"export_model: {msg}", file=sys.stderr, flush=True)


def is_causal(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    if archs:
        return any(a.endswith("ForCausalLM") for a in archs)
    return getattr(config, "model_type", "") in ("qwen3", "qwen2")


def choose_max_length(tokenizer, config, qwen3: bool, wanted: int | None) -> int:
    positions = getattr(config, "max_position_embeddings", None)
    if positions and getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2  # RoBERTa-style position tables reserve the padding index and one more
    n = wanted
    if n is None:
        m = getattr(tokenizer, "model_max_length", None)
        n = int(m) if m and 8 <= m <= 1_048_576 else (8192 if qwen3 else 512)
    if positions:
        n = min(n, positions)
    return n


# ---------------------------------------------------------------------------------------
# Graphs


def encoder_inputs(tokenizer, model) -> list[str]:
    import inspect

    names = ["input_ids", "attention_mask"]
    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
    if takes_types and "token_type_ids" in tokenizer.model_input_names:
        names.append("token_type_ids")
    return names


def make_encoder_wrapper(model, input_names):
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kw = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            return self.model(**kw).logits

    return Encoder()


def make_qwen3_wrapper(model, yes_id: int, no_id: int):
    import torch

    class YesNo(torch.nn.Module):
        """logit(yes) - logit(no) at the last position of left-padded rows."""

        def __init__(self):
            super().__init__()
            self.body = model.model
            self.lm_head = model.lm_head
            self.register_buffer("pick", torch.tensor([yes_id, no_id], dtype=torch.long), persistent=False)

        def forward(self, input_ids, attention_mask):
            position_ids = torch.cumsum(attention_mask, dim=1) - 1
            hidden = self.body(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids, use_cache=False).last_hidden_state
            logits = self.lm_head(hidden[:, -1, :])
            yes_no = logits.index_select(1, self.pick)
            return (yes_no[:, 0] - yes_no[:, 1]).unsqueeze(1)

    return YesNo()


def export_graph(wrapper, example: dict, input_names: list[str], path: Path, opset: int):
    """Legacy (TorchScript) exporter: one graph with dynamic batch and sequence axes."""
    import onnx
    import torch

    args = tuple(example[n] for n in input_names)
    axes = {n: {0: "batch", 1: "sequence"} for n in input_names}
    axes["logits"] = {0: "batch"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(
                wrapper, args, str(tmp_path), input_names=input_names, output_names=["logits"],
                dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        graph = onnx.load(str(tmp_path))
        for old in (path, path.with_name(path.name + ".data")):
            old.unlink(missing_ok=True)
        big = graph.ByteSize() > PROTOBUF_LIMIT
        onnx.save_model(graph, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
                        location=path.name + ".data")
    return big


# ---------------------------------------------------------------------------------------
# The prompt of LLM rerankers, as pg_rerank renders it (crates/engine/src/config.rs)


def prompt_file(instruction: str, yes_id: int, no_id: int) -> dict:
    return {
        "prefix": QWEN3_PREFIX,
        "suffix": QWEN3_SUFFIX,
        "instruction": instruction,
        "yes_token_id": yes_id,
        "no_token_id": no_id,
        "score": "logit(yes) - logit(no) at last position; position_ids = cumsum(mask)-1; left padding",
        "template": QWEN3_TEMPLATE,
    }


def render(prompt: dict, query: str, doc: str) -> str:
    field = lambda k: prompt.get(k, "").replace("\\n", "\n")  # noqa: E731
    t = field("template").replace("{prefix}", field("prefix")).replace("{suffix}", field("suffix"))
    t = t.replace("{instruction}", field("instruction"))
    before, _, after = t.partition("{doc}")
    return before.replace("{query}", query) + doc + after.replace("{query}", query)


# ---------------------------------------------------------------------------------------
# Checking


def tokenize(tokenizer, pairs, max_length: int, prompt: dict | None) -> list[dict]:
    rows = []
    for q, d in pairs:
        if prompt is not None:
            enc = tokenizer(render(prompt, q, d), truncation=True, max_length=max_length)
        else:
            enc = tokenizer(q, d, truncation="only_second", max_length=max_length)
        rows.append({k: list(v) for k, v in enc.items()})
    return rows


def pad(rows: list[dict], names: list[str], pad_id: int, left: bool):
    import numpy as np

    width = max(len(r["input_ids"]) for r in rows)
    out = {}
    for n in names:
        fill = pad_id if n == "input_ids" else 0
        a = np.full((len(rows), width), fill, dtype=np.int64)
        for i, r in enumerate(rows):
            v = r[n]
            if left:
                a[i, width - len(v):] = v
            else:
                a[i, : len(v)] = v
        out[n] = a
    return out


def raw_scores(logits, num_labels: int, positive: int):
    """One score per row, as pg_rerank computes it from the graph's logits."""
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    if num_labels == 1:
        return logits[:, 0]
    return logits[:, positive] - logits[:, 1 - positive]


def positive_label(config) -> int:
    for idx, name in (getattr(config, "id2label", None) or {}).items():
        if str(name).lower() in ("relevant", "positive", "entailment", "yes", "true"):
            return int(idx)
    return 1


def torch_scores(model, rows, names, qwen3: bool, yes_id: int, no_id: int, num_labels: int, positive: int):
    """The reference: the original Hugging Face model, one unpadded pair at a time."""
    import torch

    out = []
    with torch.no_grad():
        for r in rows:
            kw = {n: torch.tensor([r[n]], dtype=torch.long) for n in names}
            logits = model(**kw).logits
            if qwen3:
                last = logits[0, -1]
                out.append(float(last[yes_id] - last[no_id]))
            else:
                out.append(float(raw_scores(logits.numpy(), num_labels, positive)[0]))
    return out


def ort_scores(path: Path, rows, names, pad_id: int, left: bool, num_labels: int, positive: int, batched: bool):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph_inputs = [i.name for i in sess.get_inputs()]
    assert graph_inputs == names, f"graph inputs {graph_inputs}, expected {names}"
    groups = [rows] if batched else [[r] for r in rows]
    out = []
    for g in groups:
        feed = pad(g, names, pad_id, left)
        (logits,) = sess.run(["logits"], feed)
        out.extend(float(x) for x in raw_scores(logits, num_labels, positive))
    return out


def max_diff(a, b) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


def spearman(a, b) -> float:
    import numpy as np

    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


# ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    import numpy as np
    import onnxruntime
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    src, out = args.source.resolve(), args.out.resolve()
    if not (src / "config.json").is_file():
        sys.exit(f"export_model: {src} has no config.json: give a Hugging Face model directory")
    config = AutoConfig.from_pretrained(src, local_files_only=True)
    qwen3 = is_causal(config) if args.qwen3 is None else args.qwen3
    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
        sys.exit("export_model: no fast tokenizer (tokenizer.json) could be made for this model")
    max_length = choose_max_length(tokenizer, config, qwen3, args.max_length)
    family = config.model_type
    log(f"{src} -> {out}: {family}, {'yes/no LLM reranker' if qwen3 else 'cross-encoder'}, max_length {max_length}")

    load = AutoModelForCausalLM if qwen3 else AutoModelForSequenceClassification
    model = load.from_pretrained(src, local_files_only=True, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    params = sum(p.numel() for p in model.parameters())

    if qwen3:
        vocab = tokenizer.get_vocab()
        missing = [t for t in (args.yes_token, args.no_token) if t not in vocab]
        if missing:
            sys.exit(f"export_model: the tokenizer has no token {missing[0]!r} (see --yes-token/--no-token)")
        yes_id, no_id = vocab[args.yes_token], vocab[args.no_token]
        names = ["input_ids", "attention_mask"]
        wrapper = make_qwen3_wrapper(model, yes_id, no_id)
        num_labels, positive, left = 1, 0, True
        prompt = prompt_file(args.instruction, yes_id, no_id)
        strategy = "longest_first"
    else:
        yes_id = no_id = -1
        names = encoder_inputs(tokenizer, model)
        wrapper = make_encoder_wrapper(model, names)
        num_labels = int(config.num_labels)
        if num_labels not in (1, 2):
            sys.exit(f"export_model: {num_labels} labels: a reranker has 1 (relevance logit) or 2")
        positive = positive_label(config) if num_labels == 2 else 0
        left, prompt, strategy = False, None, "only_second"
    wrapper.eval()

    pad_id = config.pad_token_id if getattr(config, "pad_token_id", None) is not None else tokenizer.pad_token_id
    pad_id = int(pad_id if pad_id is not None else 0)

    if args.pairs:
        with open(args.pairs) as f:
            pairs = [(p["query"], p["doc"]) for p in map(json.loads, filter(str.strip, f))]
    else:
        pairs = CHECK_PAIRS
    rows = tokenize(tokenizer, pairs, max_length, prompt)

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    example = pad(rows[:2], names, pad_id, left)
    big = export_graph(wrapper, {k: torch.from_numpy(v) for k, v in example.items()}, names,
                       out / "model.onnx", args.opset)
    export_s = time.monotonic() - t0
    log(f"model.onnx written in {export_s:.1f} s{' (weights in model.onnx.data)' if big else ''}")

    # tokenizer.json: the fast tokenizer with the truncation pg_rerank applies, no padding.
    backend = tokenizer.backend_tokenizer
    backend.no_padding()
    backend.enable_truncation(max_length=max_length, strategy=strategy, direction="right")
    backend.save(str(out / "tokenizer.json"))
    for name in COPIED:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    patch_configs(out, qwen3, max_length)
    if prompt is not None:
        (out / "reranker_prompt.json").write_text(json.dumps(prompt, indent=1, ensure_ascii=False) + "\n")

    # Check: PyTorch on the original model against onnxruntime, per pair and batched.
    ref = torch_scores(model, rows, names, qwen3, yes_id, no_id, num_labels, positive)
    single = ort_scores(out / "model.onnx", rows, names, pad_id, left, num_labels, positive, batched=False)
    batch = ort_scores(out / "model.onnx", rows, names, pad_id, left, num_labels, positive, batched=True)
    d_single, d_batch = max_diff(ref, single), max_diff(ref, batch)
    print(f"max |torch - onnxruntime| = {d_single:.3g} (one pair at a time), {d_batch:.3g} (padded batch)")

    report = {
        "family": family,
        "kind": "yes/no LLM reranker" if qwen3 else "cross-encoder",
        "source": str(src),
        "exporter": f"torch.onnx legacy (TorchScript), opset {args.opset}",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "export_s": round(export_s, 1),
        "onnx_inputs": names,
        "pairs": len(rows),
        "max_abs_diff_torch_vs_ort": d_single,
        "max_abs_diff_torch_vs_ort_padded_batch": d_batch,
        "tolerance": args.tolerance,
        "score_std": float(np.std(ref)),
        "score_range": [min(ref), max(ref)],
        "max_length": max_length,
        "params": params,
    }
    if args.int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        t0 = time.monotonic()
        quantize_dynamic(str(out / "model.onnx"), str(out / "model_int8.onnx"), weight_type=QuantType.QInt8,
                         per_channel=True, use_external_data_format=big)
        q = ort_scores(out / "model_int8.onnx", rows, names, pad_id, left, num_labels, positive, batched=True)
        report["int8"] = {
            "quantize_s": round(time.monotonic() - t0, 1),
            "quantization": "onnxruntime quantize_dynamic, QInt8, per_channel=True",
            "max_abs_diff_fp32_vs_int8": max_diff(batch, q),
            "rank_correlation_fp32_vs_int8": spearman(batch, q),
        }
        print(f"int8: max |fp32 - int8| = {report['int8']['max_abs_diff_fp32_vs_int8']:.3g}, rank correlation "
              f"{report['int8']['rank_correlation_fp32_vs_int8']:.3f} on {len(rows)} pairs")
        log("model_int8.onnx written")

    with open(out / "reference.jsonl", "w") as f:
        for (qtext, dtext), r, s, o, b in zip(pairs, rows, ref, single, batch):
            line = {"query": qtext, "doc": dtext}
            if prompt is not None:
                line["text"] = render(prompt, qtext, dtext)
            line.update({n: r[n] for n in names})
            line.update({"score_torch": s, "score_ort": o, "score_ort_padded_batch": b})
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    report["files"] = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    (out / "export_report.json").write_text(json.dumps(report, indent=1) + "\n")

    worst = max(d_single, d_batch)
    if not math.isfinite(worst) or worst > args.tolerance:
        print(f"FAILED: onnxruntime differs from PyTorch by {worst:.3g} > {args.tolerance:g}", file=sys.stderr)
        return 1
    log(f"done in {time.monotonic() - t_start:.1f} s: {out}")
    return 0


def patch_configs(out: Path, qwen3: bool, max_length: int):
    """What pg_rerank reads from the copied configs must describe the exported graph."""
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text()) if tc_path.is_file() else {}
    tc["model_max_length"] = max_length
    if qwen3:
        tc["padding_side"] = "left"  # the graph reads the last position
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
    if qwen3:
        # The graph returns one score per row: no label table may say otherwise.
        c_path = out / "config.json"
        c = json.loads(c_path.read_text())
        for k in ("id2label", "label2id", "num_labels"):
            c.pop(k, None)
        c_path.write_text(json.dumps(c, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
