#!/usr/bin/env python3
"""Static int8 quantisation of a BERT-style cross-encoder, with calibrated activation scales.

Dynamic quantisation (model_int8.onnx) computes each activation's scale over the whole
batch, padding included, so a pair's score depends on what else is in its batch. Here
every activation scale is fixed once, from a calibration set, so a pair gets the same
logit alone or in any batch.

    python scripts/quantize_static.py SRC_MODEL_DIR OUT_MODEL_DIR [--corpus corpus.jsonl]
        [--exclude dev_reference.tsv qrels_dev.tsv] [--variant int8s] [--pairs 256]
        [--moving-average] [--link]

Writes OUT_MODEL_DIR/model_<variant>.onnx; with --link, also links every other file of
SRC_MODEL_DIR (model.onnx, tokenizer.json, ...) into OUT_MODEL_DIR so that it is a model
directory that pg_rerank loads as `<name>:<variant>`.

Choices (measured on minilm-debian, docs/performance.md "int8 with static quantization"):
- only the MatMuls with a weight operand, weights int8 per output channel, activations
  uint8 per tensor (the U8S8 path of the AVX-512 VNNI kernels); the attention MatMuls
  (activation x activation), the pooler/classifier Gemms, Add, LayerNorm, Softmax, GELU
  stay fp32, as in the dynamic model;
- calibration pairs from the corpus only, none of the dev evaluation's documents or
  queries: a synthetic query (the document's first words) with its own document and with
  a random other document, each pair run alone (no padding), MinMax ranges (onnxruntime's
  Percentile and Entropy calibrators need every calibration input of one shape, that is
  padding, and the padding's activations would enter the histograms);
- QDQ format with the MatMul outputs left fp32, one Q/DQ pair per quantised consumer:
  onnxruntime fuses each DequantizeLinear pair + MatMul into MatMulIntegerToFloat.
The output is deterministic: the same inputs give the same file.
"""
import argparse
import hashlib
import json
import os
import random
import sys
import tempfile

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from tokenizers import Tokenizer


def calibration_pairs(corpus, exclude, n, seed):
    """`n` (query, document) pairs: half a synthetic query with its own document, half with
    a random other one. Documents named in the `exclude` files (the dev evaluation) and
    their synopses are never used."""
    banned = set()
    for path in exclude:
        with open(path) as f:
            for line in f:
                banned.update(w for w in line.split() if w.startswith("d") and w[1:].isdigit())
    docs = []
    with open(corpus) as f:
        for line in f:
            d = json.loads(line)
            if d["id"] not in banned and len(d["text"].split()) >= 12:
                docs.append(d["text"])
    rng = random.Random(seed)
    picked = rng.sample(docs, n)
    pairs = []
    for i, text in enumerate(picked):
        words = text.split()
        query = " ".join(words[: rng.randint(4, 10)]).rstrip(".,;:")
        doc = text if i % 2 == 0 else rng.choice(docs)
        pairs.append((query, doc))
    return pairs


class Reader(CalibrationDataReader):
    """One pair per batch: calibration sees no padding."""

    def __init__(self, tokenizer, pairs, names):
        self.items = []
        for q, d in pairs:
            e = tokenizer.encode(q, d)
            row = {
                "input_ids": np.array([e.ids], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids], dtype=np.int64),
            }
            self.items.append({k: v for k, v in row.items() if k in names})
        self.it = iter(self.items)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        self.it = iter(self.items)


def weight_matmuls(model):
    """Names of the MatMuls whose second input is a weight (an initializer)."""
    inits = {i.name for i in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and (n.input[1] in inits or n.input[1] in consts)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="model directory with model.onnx and tokenizer.json")
    ap.add_argument("out", help="directory to write model_<variant>.onnx into")
    ap.add_argument("--corpus", required=True, help="corpus.jsonl ({id, text} per line)")
    ap.add_argument("--exclude", nargs="*", default=[], help="files whose document ids calibration must not use")
    ap.add_argument("--variant", default="int8s")
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--moving-average", action="store_true", help="MinMax: average the per-pair ranges")
    ap.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor, not per channel")
    ap.add_argument("--link", action="store_true", help="link the source's other files into OUT")
    args = ap.parse_args()

    src_onnx = os.path.join(args.src, "model.onnx")
    model = onnx.load(src_onnx)
    names = {i.name for i in model.graph.input}
    nodes = weight_matmuls(model)
    tokenizer = Tokenizer.from_file(os.path.join(args.src, "tokenizer.json"))
    tokenizer.no_padding()
    pairs = calibration_pairs(args.corpus, args.exclude, args.pairs, args.seed)

    os.makedirs(args.out, exist_ok=True)
    if args.link:
        for f in sorted(os.listdir(args.src)):
            dst = os.path.join(args.out, f)
            if not os.path.lexists(dst) and f != f"model_{args.variant}.onnx":
                os.symlink(os.path.abspath(os.path.join(args.src, f)), dst)
    target = os.path.join(args.out, f"model_{args.variant}.onnx")
    # Written beside the target and renamed: the file appears complete or not at all.
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        partial = os.path.join(tmp, "model.onnx")
        quantize_static(
            src_onnx,
            partial,
            Reader(tokenizer, pairs, names),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=nodes,
            per_channel=not args.per_tensor,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                # MatMul outputs stay fp32 (DequantizeLinear x2 -> MatMul fuses into
                # MatMulIntegerToFloat, as in the dynamic model): quantising them too
                # (QLinearMatMul) put the FFN outputs, range up to 190, on a 0.77 grid.
                "OpTypesToExcludeOutputQuantization": ["MatMul"],
                # A Q/DQ pair for each quantised consumer only: the residual Adds and
                # LayerNorms that read the same tensor keep its fp32 value (with one
                # shared pair they read the quantised one, and 24 DequantizeLinear stay
                # in the optimised graph).
                "DedicatedQDQPair": True,
                **({"CalibMovingAverage": True} if args.moving_average else {}),
            },
        )
        os.replace(partial, target)
    digest = hashlib.sha256(open(target, "rb").read()).hexdigest()[:16]
    print(json.dumps({"wrote": target, "quantized_matmuls": len(nodes), "calibration_pairs": len(pairs),
                      "moving_average": args.moving_average, "sha256_16": digest}))


if __name__ == "__main__":
    sys.exit(main())
