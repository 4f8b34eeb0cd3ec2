"""ONNX Runtime inputs from `tokenizers` encodings, as the Python references of the
benchmarks build them. Imported by the benchmark scripts, which run from benches/."""
import numpy as np


def padded(encs, rows):
    """The inputs of one batch: the encodings `rows` of `encs`, right-padded with zeros to
    the longest (input_ids, attention_mask, token_type_ids)."""
    width = max(len(encs[r].ids) for r in rows)
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for k, r in enumerate(rows):
        e = encs[r]
        n = len(e.ids)
        ids[k, :n], mask[k, :n], types[k, :n] = e.ids, 1, e.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
